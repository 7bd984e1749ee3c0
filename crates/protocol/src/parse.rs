//! Zero-copy parser for client-to-server operations (CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG).
//! `parse_op` looks at the front of a buffer and returns one operation borrowing from it, a request
//! for more bytes, or an error; it keeps no state, so a caller simply retries after the next read.

use memchr::memchr;

/// Limits the parser enforces before it waits for a payload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest control line accepted, including the op name (nats-server: 4096).
    pub max_control_line: usize,
    /// Largest payload (headers included) accepted in PUB/HPUB (nats-server: 1 MiB).
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_line: 4096,
            max_payload: 1024 * 1024,
        }
    }
}

/// One client operation, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT {json}`; the JSON text is not yet decoded.
    Connect(&'a [u8]),
    /// `PUB` or `HPUB`. For PUB `headers` is empty; for HPUB it is the whole `NATS/1.0` block.
    Pub {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        headers: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    /// `SUB subject [queue] sid`.
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    /// `UNSUB sid [max]`.
    Unsub {
        sid: &'a [u8],
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// `+OK`, `-ERR ...` and `INFO {...}` sent by a client; accepted and ignored as nats-server does.
    Ignored,
}

/// What a parser found at the front of the buffer (`parse_op`: a client op; `route`: a peer's).
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<O> {
    /// A complete operation occupying the first `len` bytes.
    Op { op: O, len: usize },
    /// The buffer holds only part of an operation. `total`, when known, is the full length it needs.
    Incomplete { total: Option<usize> },
}

/// Why a client's bytes cannot be parsed. The `Display` text is what nats-server puts in `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Unknown Protocol Operation")]
    UnknownOp,
    #[error("Maximum Control Line Exceeded")]
    ControlLineTooLong,
    #[error("Maximum Payload Violation")]
    MaxPayload { size: usize, max: usize },
    /// Wrong number or form of arguments; nats-server reports these as a protocol error too.
    #[error("Unknown Protocol Operation")]
    BadArgs(&'static str),
    /// The payload was not followed by CRLF.
    #[error("Unknown Protocol Operation")]
    BadTerminator,
}

/// Parses one client operation from the front of `buf`.
pub fn parse_op<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<ClientOp<'a>>, ParseError> {
    let Some(nl) = memchr(b'\n', buf) else {
        if buf.len() > limits.max_control_line {
            return Err(ParseError::ControlLineTooLong);
        }
        // An op name we can already reject need not wait for the rest of its line.
        if !could_start_op(trim_start(buf)) {
            return Err(ParseError::UnknownOp);
        }
        return Ok(Parsed::Incomplete { total: None });
    };
    if nl > limits.max_control_line {
        return Err(ParseError::ControlLineTooLong);
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &buf[..line_end];
    let after = nl + 1;
    let line = trim_start(line);
    let kind = op_kind(line).ok_or(ParseError::UnknownOp)?;
    let args = &line[kind.name_len()..];
    // The op name must be followed by whitespace or the end of the line.
    if kind == Kind::Ignored {
        return Ok(Parsed::Op {
            op: ClientOp::Ignored,
            len: after,
        });
    }
    if let Some(&c) = args.first() {
        if !is_space(c) {
            return Err(ParseError::UnknownOp);
        }
    }
    let op = match kind {
        Kind::Ping => ClientOp::Ping,
        Kind::Pong => ClientOp::Pong,
        Kind::Ignored => ClientOp::Ignored, // returned above
        Kind::Connect => ClientOp::Connect(trim(args)),
        Kind::Sub => {
            let mut it = Args::new(args);
            let (subject, a2, a3) = (it.next(), it.next(), it.next());
            if it.next().is_some() {
                return Err(ParseError::BadArgs("too many arguments to SUB"));
            }
            match (subject, a2, a3) {
                (Some(subject), Some(sid), None) => ClientOp::Sub {
                    subject,
                    queue: None,
                    sid,
                },
                (Some(subject), Some(queue), Some(sid)) => ClientOp::Sub {
                    subject,
                    queue: Some(queue),
                    sid,
                },
                _ => return Err(ParseError::BadArgs("too few arguments to SUB")),
            }
        }
        Kind::Unsub => {
            let mut it = Args::new(args);
            let (sid, max) = (it.next(), it.next());
            if it.next().is_some() {
                return Err(ParseError::BadArgs("too many arguments to UNSUB"));
            }
            let sid = sid.ok_or(ParseError::BadArgs("missing sid in UNSUB"))?;
            // As nats-server, a max that is not a number (or has more than 9 digits) is no
            // max: the subscription ends now.
            let max = max.and_then(parse_size).map(|m| m as u64);
            ClientOp::Unsub { sid, max }
        }
        Kind::Pub | Kind::HPub => {
            let mut it = Args::new(args);
            let mut a = [&[][..]; 4];
            let mut n = 0;
            for arg in it.by_ref() {
                if n == 4 {
                    return Err(ParseError::BadArgs("too many arguments to PUB"));
                }
                a[n] = arg;
                n += 1;
            }
            let headers_arg = kind == Kind::HPub;
            let (subject, reply, hdr_len, total) = match (headers_arg, n) {
                (false, 2) => (a[0], None, None, a[1]),
                (false, 3) => (a[0], Some(a[1]), None, a[2]),
                (true, 3) => (a[0], None, Some(a[1]), a[2]),
                (true, 4) => (a[0], Some(a[1]), Some(a[2]), a[3]),
                _ => return Err(ParseError::BadArgs("wrong number of arguments to PUB")),
            };
            let total = parse_size(total).ok_or(ParseError::BadArgs("bad PUB size"))?;
            if total > limits.max_payload {
                return Err(ParseError::MaxPayload {
                    size: total,
                    max: limits.max_payload,
                });
            }
            let hdr_len = match hdr_len {
                Some(h) => {
                    let h = parse_size(h).ok_or(ParseError::BadArgs("bad HPUB header size"))?;
                    if h > total {
                        return Err(ParseError::BadArgs("HPUB header size exceeds total"));
                    }
                    Some(h)
                }
                None => None,
            };
            let (body, needed) = match framed_body(buf, after, total)? {
                Parsed::Op { op, len } => (op, len),
                Parsed::Incomplete { total } => return Ok(Parsed::Incomplete { total }),
            };
            let (headers, payload) = match hdr_len {
                Some(h) => (Some(&body[..h]), &body[h..]),
                None => (None, body),
            };
            return Ok(Parsed::Op {
                op: ClientOp::Pub {
                    subject,
                    reply,
                    headers,
                    payload,
                },
                len: needed,
            });
        }
    };
    Ok(Parsed::Op { op, len: after })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pub,
    HPub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Connect,
    Ignored,
}

impl Kind {
    fn name_len(self) -> usize {
        match self {
            Kind::Pub | Kind::Sub => 3,
            Kind::HPub | Kind::Ping | Kind::Pong => 4,
            Kind::Unsub => 5,
            Kind::Connect => 7,
            Kind::Ignored => 0,
        }
    }
}

const OP_NAMES: [&[u8]; 10] = [
    b"PUB ",
    b"HPUB ",
    b"SUB ",
    b"UNSUB ",
    b"PING",
    b"PONG",
    b"CONNECT ",
    b"+OK",
    b"-ERR",
    b"INFO ",
];

/// Whether a partial line could still become a known operation (checked before its newline).
fn could_start_op(partial: &[u8]) -> bool {
    partial.is_empty()
        || OP_NAMES.iter().any(|name| {
            let n = partial.len().min(name.len());
            partial[..n]
                .iter()
                .zip(&name[..n])
                .all(|(a, b)| a.to_ascii_uppercase() == *b || (*b == b' ' && is_space(*a)))
        })
}

/// Recognises the op name at the start of a line, case-insensitively.
fn op_kind(line: &[u8]) -> Option<Kind> {
    let upper = |i: usize| line.get(i).map(|c| c.to_ascii_uppercase());
    let starts = |name: &[u8]| {
        line.len() >= name.len()
            && line[..name.len()]
                .iter()
                .zip(name)
                .all(|(a, b)| a.to_ascii_uppercase() == *b)
    };
    match upper(0)? {
        b'P' => match upper(1)? {
            b'U' if starts(b"PUB") => Some(Kind::Pub),
            b'I' if starts(b"PING") => Some(Kind::Ping),
            b'O' if starts(b"PONG") => Some(Kind::Pong),
            _ => None,
        },
        b'H' if starts(b"HPUB") => Some(Kind::HPub),
        b'S' if starts(b"SUB") => Some(Kind::Sub),
        b'U' if starts(b"UNSUB") => Some(Kind::Unsub),
        b'C' if starts(b"CONNECT") => Some(Kind::Connect),
        b'+' if starts(b"+OK") => Some(Kind::Ignored),
        b'-' if starts(b"-ERR") => Some(Kind::Ignored),
        b'I' if starts(b"INFO") => Some(Kind::Ignored),
        _ => None,
    }
}

#[inline]
pub(crate) fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

pub(crate) fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| is_space(**c)).count();
    &s[n..]
}

pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let s = trim_start(s);
    let n = s.iter().rev().take_while(|c| is_space(**c)).count();
    &s[..s.len() - n]
}

/// Whitespace-separated arguments of a control line.
pub(crate) struct Args<'a> {
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    pub(crate) fn new(rest: &'a [u8]) -> Self {
        Args { rest }
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = trim_start(self.rest);
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let end = s.iter().position(|c| is_space(*c)).unwrap_or(s.len());
        self.rest = &s[end..];
        Some(&s[..end])
    }
}

/// Parses a decimal size with no sign and at most 9 digits, as nats-server does; `None` on any
/// other byte or when longer.
pub fn parse_size(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    let mut n: usize = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as usize;
    }
    Some(n)
}

/// A message's body: `total` bytes from `after`, then CRLF. The op is the body; its length
/// ends past the CRLF. Shared by the client, route and leaf parsers.
#[inline]
pub(crate) fn framed_body(
    buf: &[u8],
    after: usize,
    total: usize,
) -> Result<Parsed<&[u8]>, ParseError> {
    let end = after + total;
    let needed = end + 2;
    if buf.len() < needed {
        return Ok(Parsed::Incomplete {
            total: Some(needed),
        });
    }
    if &buf[end..needed] != b"\r\n" {
        return Err(ParseError::BadTerminator);
    }
    Ok(Parsed::Op {
        op: &buf[after..end],
        len: needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> (ClientOp<'_>, usize) {
        match parse_op(buf, &Limits::default()) {
            Ok(Parsed::Op { op, len }) => (op, len),
            other => panic!(
                "expected an op from {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(one(b"PING\r\n"), (ClientOp::Ping, 6));
        assert_eq!(one(b"pong\r\n"), (ClientOp::Pong, 6));
        assert_eq!(one(b"PiNg\n"), (ClientOp::Ping, 5));
        assert_eq!(
            one(b"CONNECT {\"verbose\":false}\r\n").0,
            ClientOp::Connect(b"{\"verbose\":false}")
        );
        assert_eq!(
            one(b"SUB foo.* 1\r\n").0,
            ClientOp::Sub {
                subject: b"foo.*",
                queue: None,
                sid: b"1"
            }
        );
        assert_eq!(
            one(b"sub foo  workers\t22\r\n").0,
            ClientOp::Sub {
                subject: b"foo",
                queue: Some(b"workers"),
                sid: b"22"
            }
        );
        assert_eq!(
            one(b"UNSUB 7 10\r\n").0,
            ClientOp::Unsub {
                sid: b"7",
                max: Some(10)
            }
        );
        assert_eq!(
            one(b"UNSUB 7\r\n").0,
            ClientOp::Unsub {
                sid: b"7",
                max: None
            }
        );
        // A max that is not a number is no max, as nats-server has it.
        for bad in [
            &b"UNSUB 7 abc\r\n"[..],
            b"UNSUB 7 -5\r\n",
            b"UNSUB 7 1234567890\r\n",
        ] {
            assert_eq!(
                one(bad).0,
                ClientOp::Unsub {
                    sid: b"7",
                    max: None
                }
            );
        }
        assert_eq!(
            one(b"PUB a.b _INBOX.x 5\r\nhello\r\n"),
            (
                ClientOp::Pub {
                    subject: b"a.b",
                    reply: Some(b"_INBOX.x"),
                    headers: None,
                    payload: b"hello"
                },
                27
            )
        );
        assert_eq!(
            one(b"PUB a 0\r\n\r\n").0,
            ClientOp::Pub {
                subject: b"a",
                reply: None,
                headers: None,
                payload: b""
            }
        );
        let h = b"NATS/1.0\r\nA: b\r\n\r\n";
        let mut msg = format!("HPUB s r {} {}\r\n", h.len(), h.len() + 2).into_bytes();
        msg.extend_from_slice(h);
        msg.extend_from_slice(b"hi\r\n");
        assert_eq!(
            one(&msg).0,
            ClientOp::Pub {
                subject: b"s",
                reply: Some(b"r"),
                headers: Some(h),
                payload: b"hi"
            }
        );
        assert_eq!(one(b"+OK\r\n").0, ClientOp::Ignored);
    }

    #[test]
    fn rejects_bad_input() {
        let l = Limits::default();
        assert_eq!(parse_op(b"FOO bar\r\n", &l), Err(ParseError::UnknownOp));
        assert_eq!(parse_op(b"PUBX a 1\r\n", &l), Err(ParseError::UnknownOp));
        assert_eq!(parse_op(b"HELLO WORLD", &l), Err(ParseError::UnknownOp));
        assert!(matches!(
            parse_op(b"PUB a\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_op(b"PUB a b c d\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_op(b"PUB a x\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_op(b"PUB a -1\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_op(b"HPUB a 5 3\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_op(b"SUB a\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_op(b"SUB a b c d\r\n", &l),
            Err(ParseError::BadArgs(_))
        ));
        assert_eq!(
            parse_op(b"PUB a 2\r\nabc\r\n", &l),
            Err(ParseError::BadTerminator)
        );
        assert_eq!(
            parse_op(b"PUB a 2000000\r\n", &l),
            Err(ParseError::MaxPayload {
                size: 2_000_000,
                max: 1 << 20
            })
        );
        let long = vec![b'P'; 5000];
        assert_eq!(parse_op(&long, &l), Err(ParseError::ControlLineTooLong));
        let mut long = b"SUB ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        long.extend_from_slice(b" 1\r\n");
        assert_eq!(parse_op(&long, &l), Err(ParseError::ControlLineTooLong));
    }

    #[test]
    fn error_text_is_nats_wording() {
        assert_eq!(
            ParseError::UnknownOp.to_string(),
            "Unknown Protocol Operation"
        );
        assert_eq!(
            ParseError::MaxPayload { size: 2, max: 1 }.to_string(),
            "Maximum Payload Violation"
        );
        assert_eq!(
            ParseError::ControlLineTooLong.to_string(),
            "Maximum Control Line Exceeded"
        );
    }

    /// Every prefix of a valid stream is either incomplete or yields exactly the ops the whole
    /// stream yields, never an error; this is what lets the reader retry after each read.
    #[test]
    fn split_at_every_offset() {
        let stream: &[u8] = b"CONNECT {\"echo\":true}\r\nSUB foo q 1\r\nPUB foo reply 11\r\nhello world\r\nHPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 1 5\r\nPING\r\nPONG\r\n";
        let whole = collect_ops(stream);
        assert_eq!(whole.len(), 7);
        for cut in 0..=stream.len() {
            // Feed `cut` bytes, consume what parses, then add the rest.
            let mut ops = Vec::new();
            let mut buf = stream[..cut].to_vec();
            let mut start = 0;
            while let Parsed::Op { op, len } =
                parse_op(&buf[start..], &Limits::default()).expect("valid prefix")
            {
                ops.push(format!("{op:?}"));
                start += len;
            }
            buf.drain(..start);
            buf.extend_from_slice(&stream[cut..]);
            ops.extend(collect_ops(&buf));
            assert_eq!(ops, whole, "cut at {cut}");
        }
    }

    fn collect_ops(mut buf: &[u8]) -> Vec<String> {
        let mut ops = Vec::new();
        while let Parsed::Op { op, len } = parse_op(buf, &Limits::default()).expect("valid") {
            ops.push(format!("{op:?}"));
            buf = &buf[len..];
        }
        assert!(
            buf.is_empty(),
            "leftover {:?}",
            String::from_utf8_lossy(buf)
        );
        ops
    }

    #[test]
    fn incomplete_payload_reports_total() {
        assert_eq!(
            parse_op(b"PUB a 10\r\nhel", &Limits::default()),
            Ok(Parsed::Incomplete { total: Some(22) })
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_op(&data, &Limits { max_control_line: 64, max_payload: 64 });
        }
    }
}
