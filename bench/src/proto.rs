//! The client side of the NATS text protocol, as much as the generator needs: a scanner for frames
//! the server sends and encoders for the frames the generator sends.
//!
//! No I/O and no allocation per frame: [`scan`] borrows from the caller's read buffer and tells
//! "need more bytes" (`Ok(None)`) apart from "this is not NATS" (`Err`).

use std::fmt;

/// Longest control line we accept before calling the stream broken (INFO can carry a few KiB of
/// `connect_urls`; nats-server's own client limit is 4 KiB, ours is generous).
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// One frame sent by the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `MSG` or `HMSG`; for `HMSG` the payload is the header block followed by the body.
    Msg {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
    Info(&'a [u8]),
}

/// The bytes cannot be a server frame.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn invalid(what: &str, line: &[u8]) -> ProtocolError {
    let shown = &line[..line.len().min(80)];
    ProtocolError(format!("{what}: {:?}", String::from_utf8_lossy(shown)))
}

/// Scans one frame from the front of `buf`.
///
/// Returns the frame and how many bytes it took, `Ok(None)` if `buf` holds only part of a frame,
/// or an error if the bytes are not a server frame.
pub fn scan(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(invalid("control line too long", buf));
        }
        return Ok(None);
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let body_at = nl + 1;
    let (op, rest) = split_op(line);
    match op.len() {
        3 if op.eq_ignore_ascii_case(b"MSG") => scan_msg(buf, line, rest, body_at, false),
        4 if op.eq_ignore_ascii_case(b"HMSG") => scan_msg(buf, line, rest, body_at, true),
        4 if op.eq_ignore_ascii_case(b"PING") => Ok(Some((Frame::Ping, body_at))),
        4 if op.eq_ignore_ascii_case(b"PONG") => Ok(Some((Frame::Pong, body_at))),
        4 if op.eq_ignore_ascii_case(b"INFO") => Ok(Some((Frame::Info(rest), body_at))),
        3 if op.eq_ignore_ascii_case(b"+OK") => Ok(Some((Frame::Ok, body_at))),
        4 if op.eq_ignore_ascii_case(b"-ERR") => Ok(Some((Frame::Err(rest), body_at))),
        _ => Err(invalid("unknown operation", line)),
    }
}

/// Splits the operation name from its arguments (leading blanks of the arguments removed).
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], trim_start(&line[i..])),
        None => (line, &[]),
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[skip..]
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <hdr_size> <total_size>`.
fn scan_msg<'a>(
    buf: &'a [u8],
    line: &[u8],
    args: &'a [u8],
    body_at: usize,
    headers: bool,
) -> Result<Option<(Frame<'a>, usize)>, ProtocolError> {
    let mut tokens: [&[u8]; 5] = [&[]; 5];
    let mut n = 0;
    for token in args
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|t| !t.is_empty())
    {
        if n == tokens.len() {
            return Err(invalid("too many arguments", line));
        }
        tokens[n] = token;
        n += 1;
    }
    let sized = if headers { 2 } else { 1 };
    let reply = match n.checked_sub(sized) {
        Some(2) => None,
        Some(3) => Some(tokens[2]),
        _ => return Err(invalid("wrong number of arguments", line)),
    };
    let size = parse_size(tokens[n - 1]).ok_or_else(|| invalid("bad size", line))?;
    let end = body_at
        .checked_add(size)
        .and_then(|e| e.checked_add(2))
        .ok_or_else(|| invalid("size overflows", line))?;
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err(invalid("payload not followed by CRLF", line));
    }
    let frame = Frame::Msg {
        subject: tokens[0],
        reply,
        payload: &buf[body_at..end - 2],
    };
    Ok(Some((frame, end)))
}

fn parse_size(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + usize::from(d - b'0'))
    })
}

/// A decimal number of at most 19 digits (no sign, nothing else).
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// Appends the decimal form of `n`.
pub fn push_usize(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The CONNECT line every generator connection sends: no verbose `+OK`, no pedantic checks.
/// With `headers` the connection also asks for a no-responders status (`HMSG` with
/// `NATS/1.0 503`) when a request finds nobody subscribed, which JetStream API requests use to
/// tell "JetStream is not up (yet)" from a slow answer.
pub fn connect_line(name: &str, headers: bool) -> Vec<u8> {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"name\":\"{name}\",\
         \"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\"echo\":true,\
         \"headers\":{headers},\"no_responders\":{headers}}}\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// Appends `PUB <subject> [reply] <len>\r\n<payload>\r\n`.
pub fn push_pub(out: &mut Vec<u8>, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.push(b' ');
    if let Some(reply) = reply {
        out.extend_from_slice(reply);
        out.push(b' ');
    }
    push_usize(out, payload.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `SUB <subject> [queue] <sid>\r\n`.
pub fn push_sub(out: &mut Vec<u8>, subject: &[u8], queue: Option<&[u8]>, sid: usize) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject);
    out.push(b' ');
    if let Some(queue) = queue {
        out.extend_from_slice(queue);
        out.push(b' ');
    }
    push_usize(out, sid);
    out.extend_from_slice(b"\r\n");
}

/// A payload of `size` printable bytes.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A buffer of identical PUB frames, built once and written many times: as many whole frames as fit
/// in `target_bytes` (at least one). Returns the buffer and the frame count.
pub struct PubBatch {
    pub bytes: Vec<u8>,
    pub frames: u64,
    pub frame_len: usize,
}

impl PubBatch {
    pub fn new(subject: &[u8], size: usize, target_bytes: usize) -> PubBatch {
        let mut frame = Vec::new();
        push_pub(&mut frame, subject, None, &payload(size));
        let frames = (target_bytes / frame.len()).max(1);
        PubBatch {
            bytes: frame.repeat(frames),
            frames: frames as u64,
            frame_len: frame.len(),
        }
    }

    /// The first `n` frames (`n` at most [`PubBatch::frames`]).
    pub fn first(&self, n: u64) -> &[u8] {
        &self.bytes[..n as usize * self.frame_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_msg_without_and_with_reply() {
        let buf = b"MSG foo.bar 9 5\r\nhello\r\nMSG a 1 _INBOX.x 2\r\nhi\r\n";
        let (f, n) = scan(buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Msg {
                subject: b"foo.bar",
                reply: None,
                payload: b"hello"
            }
        );
        let (f, m) = scan(&buf[n..]).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Msg {
                subject: b"a",
                reply: Some(b"_INBOX.x"),
                payload: b"hi"
            }
        );
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let buf = b"MSG foo 1 5\r\nhello\r\n";
        for cut in 0..buf.len() {
            assert_eq!(scan(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(scan(buf).unwrap().is_some());
    }

    #[test]
    fn payload_may_contain_crlf() {
        let buf = b"MSG foo 1 4\r\n\r\n\r\n\r\n";
        let (f, n) = scan(buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert!(matches!(
            f,
            Frame::Msg {
                payload: b"\r\n\r\n",
                ..
            }
        ));
    }

    #[test]
    fn scans_hmsg_as_one_payload() {
        let buf = b"HMSG foo 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        let (f, n) = scan(buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert!(matches!(f, Frame::Msg { reply: Some(b"r"), payload, .. } if payload.len() == 14));
    }

    #[test]
    fn scans_control_frames() {
        assert_eq!(scan(b"PING\r\n"), Ok(Some((Frame::Ping, 6))));
        assert_eq!(scan(b"pong\r\n"), Ok(Some((Frame::Pong, 6))));
        assert_eq!(scan(b"+OK\r\n"), Ok(Some((Frame::Ok, 5))));
        assert_eq!(
            scan(b"-ERR 'Slow Consumer'\r\n"),
            Ok(Some((Frame::Err(b"'Slow Consumer'"), 22)))
        );
        assert_eq!(
            scan(b"INFO {\"a\":1}\r\n"),
            Ok(Some((Frame::Info(b"{\"a\":1}"), 14)))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(scan(b"HELLO\r\n").is_err());
        assert!(scan(b"MSG foo 1 x\r\n").is_err());
        assert!(scan(b"MSG foo 5\r\n").is_err());
        assert!(scan(b"MSG foo 1 2\r\nhiXX").is_err());
        assert!(scan(&vec![b'x'; MAX_CONTROL_LINE + 1]).is_err());
    }

    #[test]
    fn encodes_frames() {
        let mut out = Vec::new();
        push_pub(&mut out, b"a.b", Some(b"r"), b"xyz");
        push_sub(&mut out, b"a.*", Some(b"q"), 42);
        push_usize(&mut out, 0);
        assert_eq!(out, b"PUB a.b r 3\r\nxyz\r\nSUB a.* q 42\r\n0");
    }

    #[test]
    fn batch_holds_whole_frames() {
        let batch = PubBatch::new(b"s", 10, 100);
        assert_eq!(batch.frame_len, b"PUB s 10\r\n".len() + 12);
        assert_eq!(batch.frames, 100 / 22);
        assert_eq!(batch.first(2).len(), 44);
        assert_eq!(PubBatch::new(b"s", 1000, 100).frames, 1);
    }
}
