//! The route protocol between servers of one cluster, as nats-server speaks it: parsing what a
//! peer sends (`INFO`, `CONNECT`, `PING`/`PONG`, `RS+`/`RS-`, `LS+`/`LS-`, `RMSG`/`HMSG`/`LMSG`,
//! `+OK`/`-ERR`) and encoding interest and messages for a peer. On a dedicated per-account route
//! the account is implied and left out of `RS+`/`RS-`/`RMSG`/`HMSG` (an empty account when
//! encoding, `parse_route_op_in` when parsing). Zero-copy and stateless like `parse`: a caller
//! retries after the next read when more bytes are needed.

use memchr::memchr;
use serde::{Deserialize, Serialize};

use crate::parse::{is_space, parse_size, trim, trim_start, Args, ParseError, Parsed};

/// Longest control line accepted from a peer: a route INFO carries every connect URL of the
/// cluster, so it is allowed far more than a client's 4 KiB.
pub const MAX_ROUTE_CONTROL_LINE: usize = 1024 * 1024;

/// One operation from a peer, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteOp<'a> {
    Info(&'a [u8]),
    Connect(&'a [u8]),
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
    /// `RS+ account subject [queue weight]`, or `LS+ origin account subject [queue weight]`
    /// (interest on behalf of a leafnode cluster `origin`).
    Sub {
        origin: Option<&'a [u8]>,
        account: &'a [u8],
        subject: &'a [u8],
        queue: Option<(&'a [u8], u32)>,
    },
    /// `RS- account subject [queue]`, or `LS- [origin] account subject [queue]`.
    Unsub {
        origin: Option<&'a [u8]>,
        account: &'a [u8],
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
    },
    /// `RMSG`, `HMSG` or `LMSG`: a message for `account`'s subscribers of `subject`. `queues` is
    /// the space-separated list of queue groups the sender chose this server for (empty: none).
    Msg {
        origin: Option<&'a [u8]>,
        account: &'a [u8],
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        queues: &'a [u8],
        headers: Option<&'a [u8]>,
        payload: &'a [u8],
    },
}

/// The queue group names of a routed message.
pub fn queue_names(queues: &[u8]) -> impl Iterator<Item = &[u8]> {
    Args::new(queues)
}

/// Parses one peer operation from the front of `buf`.
pub fn parse_route_op(buf: &[u8], max_payload: usize) -> Result<Parsed<RouteOp<'_>>, ParseError> {
    parse_route_op_in(buf, max_payload, false)
}

/// Parses one peer operation; with `implied_account` (a dedicated per-account route) the
/// account is not in the protocol and comes back empty.
pub fn parse_route_op_in(
    buf: &[u8],
    max_payload: usize,
    implied_account: bool,
) -> Result<Parsed<RouteOp<'_>>, ParseError> {
    let Some((name, args, after)) = control_line(buf)? else {
        return Ok(Parsed::Incomplete { total: None });
    };
    let upper = |n: &[u8]| n.eq_ignore_ascii_case(name);
    let op = if upper(b"PING") {
        RouteOp::Ping
    } else if upper(b"PONG") {
        RouteOp::Pong
    } else if upper(b"+OK") {
        RouteOp::Ok
    } else if upper(b"-ERR") {
        RouteOp::Err(trim(args))
    } else if upper(b"INFO") {
        RouteOp::Info(trim(args))
    } else if upper(b"CONNECT") {
        RouteOp::Connect(trim(args))
    } else if upper(b"RS+") || upper(b"LS+") {
        let leaf = name[0].eq_ignore_ascii_case(&b'L');
        let mut a: Vec<&[u8]> = Args::new(args).collect();
        let origin = if leaf {
            Some(take_first(&mut a)?)
        } else {
            None
        };
        if implied_account {
            a.insert(0, b"");
        }
        match a.as_slice() {
            [account, subject] => RouteOp::Sub {
                origin,
                account,
                subject,
                queue: None,
            },
            [account, subject, queue, weight] => {
                let w = parse_size(weight).ok_or(ParseError::BadArgs("bad queue weight"))?;
                RouteOp::Sub {
                    origin,
                    account,
                    subject,
                    queue: Some((queue, w.min(u32::MAX as usize) as u32)),
                }
            }
            _ => return Err(ParseError::BadArgs("wrong number of arguments to RS+")),
        }
    } else if upper(b"RS-") || upper(b"LS-") {
        let leaf = name[0].eq_ignore_ascii_case(&b'L');
        let a: Vec<&[u8]> = Args::new(args).collect();
        // Older servers send LS- without the origin; the account is then first.
        let (origin, rest) = match (leaf, a.len()) {
            (true, 3) | (true, 4) if a.len() == 4 || !is_subject_like(a[1]) => {
                (Some(a[0]), &a[1..])
            }
            _ => (None, &a[..]),
        };
        let mut with_account: Vec<&[u8]> = Vec::new();
        let rest = if implied_account {
            with_account.push(b"");
            with_account.extend_from_slice(rest);
            &with_account[..]
        } else {
            rest
        };
        match rest {
            [account, subject] => RouteOp::Unsub {
                origin,
                account,
                subject,
                queue: None,
            },
            [account, subject, queue] => RouteOp::Unsub {
                origin,
                account,
                subject,
                queue: Some(queue),
            },
            _ => return Err(ParseError::BadArgs("wrong number of arguments to RS-")),
        }
    } else if upper(b"RMSG") || upper(b"HMSG") || upper(b"LMSG") {
        return parse_msg(buf, name, args, after, max_payload, implied_account);
    } else {
        return Err(ParseError::UnknownOp);
    };
    Ok(Parsed::Op { op, len: after })
}

/// Heuristic for an old-style `LS- account subject queue`: an account name has no dot, a
/// subject usually has one. Only used to tell the two three-argument forms apart.
/// A control line's operation name, its arguments, and the offset just past the line.
pub(crate) type ControlLine<'a> = (&'a [u8], &'a [u8], usize);

/// The control line at the front of a peer's (route's or leaf's) bytes: its operation name,
/// its arguments and where the line ends; `None` while the line is incomplete.
pub(crate) fn control_line(buf: &[u8]) -> Result<Option<ControlLine<'_>>, ParseError> {
    let Some(nl) = memchr(b'\n', buf) else {
        if buf.len() > MAX_ROUTE_CONTROL_LINE {
            return Err(ParseError::ControlLineTooLong);
        }
        return Ok(None);
    };
    if nl > MAX_ROUTE_CONTROL_LINE {
        return Err(ParseError::ControlLineTooLong);
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = trim_start(&buf[..line_end]);
    let name_end = line.iter().position(|c| is_space(*c)).unwrap_or(line.len());
    let (name, args) = line.split_at(name_end);
    Ok(Some((name, args, nl + 1)))
}

/// The body of a routed message (RMSG/HMSG/LMSG): `total` bytes from `after`, `hdr` of them
/// headers, then CRLF; checked against `max_payload` and its header size (`bad` otherwise).
/// The op's length is the body's end past its CRLF.
pub(crate) fn message_body(
    buf: &[u8],
    after: usize,
    total: usize,
    hdr: Option<usize>,
    max_payload: usize,
    bad: impl Fn() -> ParseError,
) -> Result<Parsed<&[u8]>, ParseError> {
    if total > max_payload {
        return Err(ParseError::MaxPayload {
            size: total,
            max: max_payload,
        });
    }
    if hdr.is_some_and(|h| h > total) {
        return Err(bad());
    }
    crate::parse::framed_body(buf, after, total)
}

fn is_subject_like(s: &[u8]) -> bool {
    s.contains(&b'.')
}

fn take_first<'a>(a: &mut Vec<&'a [u8]>) -> Result<&'a [u8], ParseError> {
    if a.is_empty() {
        return Err(ParseError::BadArgs("missing origin"));
    }
    Ok(a.remove(0))
}

/// `RMSG acc subj [reply] size`, `RMSG acc subj (+ reply | |) q1 q2.. size`; HMSG and LMSG end
/// with `hdr_size total_size` and LMSG starts with the origin cluster.
fn parse_msg<'a>(
    buf: &'a [u8],
    name: &[u8],
    args: &'a [u8],
    after: usize,
    max_payload: usize,
    implied_account: bool,
) -> Result<Parsed<RouteOp<'a>>, ParseError> {
    let bad = || ParseError::BadArgs("bad routed message arguments");
    let leaf = name[0].eq_ignore_ascii_case(&b'L');
    let with_headers = leaf || name[0].eq_ignore_ascii_case(&b'H');
    let mut rest = trim(args);
    let next = |rest: &mut &'a [u8]| -> Option<&'a [u8]> {
        let s = trim_start(rest);
        if s.is_empty() {
            return None;
        }
        let end = s.iter().position(|c| is_space(*c)).unwrap_or(s.len());
        *rest = &s[end..];
        Some(&s[..end])
    };
    let origin = if leaf {
        Some(next(&mut rest).ok_or_else(bad)?)
    } else {
        None
    };
    let account: &[u8] = if implied_account {
        b""
    } else {
        next(&mut rest).ok_or_else(bad)?
    };
    let subject = next(&mut rest).ok_or_else(bad)?;
    // The sizes are the last one or two arguments.
    let body = trim(rest);
    let mut tail = body;
    let last = |t: &mut &'a [u8]| -> Option<&'a [u8]> {
        let t2 = trim(t);
        let start = t2.iter().rposition(|c| is_space(*c)).map_or(0, |i| i + 1);
        *t = &t2[..start];
        (!t2.is_empty()).then(|| &t2[start..])
    };
    let total = parse_size(last(&mut tail).ok_or_else(bad)?).ok_or_else(bad)?;
    let hdr = if with_headers {
        Some(parse_size(last(&mut tail).ok_or_else(bad)?).ok_or_else(bad)?)
    } else {
        None
    };
    let middle = trim(tail);
    // What is left: nothing, a reply, or `+ reply queues..` / `| queues..`.
    let (reply, queues) = match middle.first() {
        None => (None, &middle[..0]),
        Some(b'+') if middle.get(1).is_none_or(|c| is_space(*c)) => {
            let mut r = &middle[1..];
            let reply = next(&mut r).ok_or_else(bad)?;
            (Some(reply), trim(r))
        }
        Some(b'|') if middle.get(1).is_none_or(|c| is_space(*c)) => (None, trim(&middle[1..])),
        Some(_) => {
            if middle.iter().any(|c| is_space(*c)) {
                return Err(bad());
            }
            (Some(middle), &middle[..0])
        }
    };
    let (data, needed) = match message_body(buf, after, total, hdr, max_payload, bad)? {
        Parsed::Op { op, len } => (op, len),
        Parsed::Incomplete { total } => return Ok(Parsed::Incomplete { total }),
    };
    let (headers, payload) = match hdr {
        // LMSG always carries a header size, 0 when there is none.
        Some(0) if leaf => (None, data),
        Some(h) => (Some(&data[..h]), &data[h..]),
        None => (None, data),
    };
    Ok(Parsed::Op {
        op: RouteOp::Msg {
            origin,
            account,
            subject,
            reply,
            queues,
            headers,
            payload,
        },
        len: needed,
    })
}

/// Appends `RS+ account subject[ queue weight]\r\n` (no account when `account` is empty).
pub fn sub(out: &mut Vec<u8>, account: &[u8], subject: &[u8], queue: Option<(&[u8], u32)>) {
    out.extend_from_slice(b"RS+ ");
    push_account(out, account);
    out.extend_from_slice(subject);
    if let Some((q, weight)) = queue {
        out.push(b' ');
        out.extend_from_slice(q);
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(weight).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `RS- account subject[ queue]\r\n` (no account when `account` is empty).
pub fn unsub(out: &mut Vec<u8>, account: &[u8], subject: &[u8], queue: Option<&[u8]>) {
    out.extend_from_slice(b"RS- ");
    push_account(out, account);
    out.extend_from_slice(subject);
    if let Some(q) = queue {
        out.push(b' ');
        out.extend_from_slice(q);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `LS+ origin account subject[ queue weight]\r\n`: interest of a leaf of this server
/// that belongs to leafnode cluster `origin` (no account when `account` is empty).
pub fn leaf_sub(
    out: &mut Vec<u8>,
    origin: &[u8],
    account: &[u8],
    subject: &[u8],
    queue: Option<(&[u8], u32)>,
) {
    let at = out.len();
    sub(out, account, subject, queue);
    out.splice(at..at + 4, b"LS+ ".iter().copied());
    out.splice(at + 4..at + 4, origin.iter().copied().chain([b' ']));
}

/// Appends `LS- [origin ]account subject[ queue]\r\n` (the origin only for a peer whose INFO
/// has `lnocu`; no account when `account` is empty).
pub fn leaf_unsub(
    out: &mut Vec<u8>,
    origin: Option<&[u8]>,
    account: &[u8],
    subject: &[u8],
    queue: Option<&[u8]>,
) {
    let at = out.len();
    unsub(out, account, subject, queue);
    out.splice(at..at + 4, b"LS- ".iter().copied());
    if let Some(o) = origin {
        out.splice(at + 4..at + 4, o.iter().copied().chain([b' ']));
    }
}

/// The account and its separator; nothing on a per-account route (empty `account`).
fn push_account(out: &mut Vec<u8>, account: &[u8]) {
    if !account.is_empty() {
        out.extend_from_slice(account);
        out.push(b' ');
    }
}

/// Appends a routed message (no account when `account` is empty): `RMSG account subject [reply] size` (or `HMSG ... hdr total` with
/// headers); with queue groups `+ reply q1 q2` or `| q1 q2` stands where the reply would be.
/// A message that entered the cluster from leafnode cluster `origin` is
/// `LMSG origin account subject ... hdr total`, with a header size (0 without headers) always.
#[allow(clippy::too_many_arguments)]
pub fn msg<'q>(
    out: &mut Vec<u8>,
    origin: Option<&[u8]>,
    account: &[u8],
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: impl IntoIterator<Item = &'q [u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let mut num = itoa::Buffer::new();
    let hlen = headers.map_or(0, <[u8]>::len);
    out.reserve(account.len() + subject.len() + hlen + payload.len() + 64);
    match origin {
        Some(o) => {
            out.extend_from_slice(b"LMSG ");
            out.extend_from_slice(o);
            out.push(b' ');
        }
        None if headers.is_some() => out.extend_from_slice(b"HMSG "),
        None => out.extend_from_slice(b"RMSG "),
    }
    push_account(out, account);
    out.extend_from_slice(subject);
    out.push(b' ');
    let mut queues = queues.into_iter().peekable();
    if queues.peek().is_some() {
        match reply {
            Some(r) => {
                out.extend_from_slice(b"+ ");
                out.extend_from_slice(r);
                out.push(b' ');
            }
            None => out.extend_from_slice(b"| "),
        }
        for q in queues {
            out.extend_from_slice(q);
            out.push(b' ');
        }
    } else if let Some(r) = reply {
        out.extend_from_slice(r);
        out.push(b' ');
    }
    if headers.is_some() || origin.is_some() {
        out.extend_from_slice(num.format(hlen).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(num.format(hlen + payload.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(h) = headers {
        out.extend_from_slice(h);
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The pool connection that carries `account` (interest and messages) between two servers
/// pooling `pool_size` connections: FNV-1a (32 bits) of the name, modulo the size, as
/// nats-server computes it, so that both ends of a mixed cluster agree.
pub fn pool_index(pool_size: usize, account: &str) -> usize {
    if pool_size <= 1 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in account.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % pool_size as u32) as usize
}

/// The INFO a server sends on a route connection (and forwards to gossip about peers).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteInfo {
    pub server_id: String,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub go: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub headers: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    #[serde(default)]
    pub max_payload: usize,
    #[serde(default)]
    pub proto: i32,
    /// `nats-route://host:port/` for gossip, when the server advertises an address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_dynamic: bool,
    /// The clients' URLs of the sending server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ws_connect_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jetstream: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// Leafnode origin cluster support (`LS+`/`LMSG`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lnoc: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lnocu: bool,
    /// Route pooling (nats-server 2.10): absent or 0 from a server that does not pool.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub route_pool_size: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub route_pool_idx: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_account: String,
    /// Route compression mode (nats-server 2.10); absent from servers without compression.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compression: String,
    /// Lame duck mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ldm: bool,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The CONNECT a server sends on a route it solicited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteConnect {
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub verbose: bool,
    #[serde(default)]
    pub pedantic: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default)]
    pub headers: bool,
    /// The soliciting server's id.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_dynamic: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lnoc: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lnocu: bool,
    /// Set by clients (never by servers): a client that dialled the cluster port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Set by gateways, which must not use the cluster port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> (RouteOp<'_>, usize) {
        match parse_route_op(buf, 1 << 20) {
            Ok(Parsed::Op { op, len }) => (op, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn per_account_routes_leave_the_account_out() {
        let parse = |b: &'static [u8]| match parse_route_op_in(b, 1 << 20, true).expect("valid") {
            Parsed::Op { op, .. } => op,
            Parsed::Incomplete { .. } => panic!("incomplete"),
        };
        assert_eq!(
            parse(b"RS+ foo.bar q 3\r\n"),
            RouteOp::Sub {
                origin: None,
                account: b"",
                subject: b"foo.bar",
                queue: Some((b"q", 3))
            }
        );
        assert_eq!(
            parse(b"RS- foo.bar\r\n"),
            RouteOp::Unsub {
                origin: None,
                account: b"",
                subject: b"foo.bar",
                queue: None
            }
        );
        match parse(b"RMSG foo reply 2\r\nhi\r\n") {
            RouteOp::Msg {
                account,
                subject,
                reply,
                payload,
                ..
            } => {
                assert_eq!(
                    (account, subject, reply, payload),
                    (&b""[..], &b"foo"[..], Some(&b"reply"[..]), &b"hi"[..])
                );
            }
            op => panic!("{op:?}"),
        }
        // With the account in the protocol the same RS+ means account `foo.bar`, subject `q`.
        assert!(parse_route_op_in(b"RS+ foo.bar q 3\r\n", 1 << 20, false).is_err());
        let mut out = Vec::new();
        sub(&mut out, b"", b"foo", None);
        unsub(&mut out, b"", b"foo", Some(b"q"));
        msg(&mut out, None, b"", b"foo", None, [], None, b"x");
        assert_eq!(out, b"RS+ foo\r\nRS- foo q\r\nRMSG foo 1\r\nx\r\n");
    }

    #[test]
    fn pool_index_is_fnv1a_modulo_the_size() {
        // FNV-1a 32 test vectors: "a" is 0xe40c292c, "foobar" 0xbf9cf968; "" the offset basis.
        assert_eq!(pool_index(1000, "a"), (0xe40c_292cu32 % 1000) as usize);
        assert_eq!(pool_index(977, "foobar"), (0xbf9c_f968u32 % 977) as usize);
        assert_eq!(pool_index(3, ""), (0x811c_9dc5u32 % 3) as usize);
        assert_eq!(pool_index(3, "$G"), 2);
        assert_eq!(pool_index(1, "anything"), 0);
        assert_eq!(pool_index(0, "anything"), 0);
        let spread: std::collections::BTreeSet<usize> =
            ["A", "B", "C", "D", "E", "F", "$G", "$SYS"]
                .iter()
                .map(|a| pool_index(3, a))
                .collect();
        assert!(
            spread.len() > 1,
            "accounts spread over the pool: {spread:?}"
        );
    }

    #[test]
    fn interest_lines() {
        assert_eq!(
            one(b"RS+ $G foo.bar\r\n").0,
            RouteOp::Sub {
                origin: None,
                account: b"$G",
                subject: b"foo.bar",
                queue: None
            }
        );
        assert_eq!(
            one(b"RS+ ACC jobs workers 3\r\n").0,
            RouteOp::Sub {
                origin: None,
                account: b"ACC",
                subject: b"jobs",
                queue: Some((b"workers", 3))
            }
        );
        assert_eq!(
            one(b"RS- ACC jobs workers\r\n").0,
            RouteOp::Unsub {
                origin: None,
                account: b"ACC",
                subject: b"jobs",
                queue: Some(b"workers")
            }
        );
        assert_eq!(
            one(b"LS+ edge $G sensors.>\r\n").0,
            RouteOp::Sub {
                origin: Some(b"edge"),
                account: b"$G",
                subject: b"sensors.>",
                queue: None
            }
        );
        assert_eq!(
            one(b"LS- edge $G sensors.>\r\n").0,
            RouteOp::Unsub {
                origin: Some(b"edge"),
                account: b"$G",
                subject: b"sensors.>",
                queue: None
            }
        );
        let mut out = Vec::new();
        leaf_sub(&mut out, b"edge", b"$G", b"jobs", Some((b"w", 2)));
        leaf_sub(&mut out, b"edge", b"", b"x.>", None);
        leaf_unsub(&mut out, Some(b"edge"), b"$G", b"jobs", Some(b"w"));
        leaf_unsub(&mut out, None, b"$G", b"x.>", None);
        assert_eq!(
            out,
            b"LS+ edge $G jobs w 2\r\nLS+ edge x.>\r\nLS- edge $G jobs w\r\nLS- $G x.>\r\n"
        );
        assert_eq!(
            one(b"LS+ edge $G jobs w 2\r\n").0,
            RouteOp::Sub {
                origin: Some(b"edge"),
                account: b"$G",
                subject: b"jobs",
                queue: Some((b"w", 2))
            }
        );
        assert!(parse_route_op(b"RS+ only\r\n", 1024).is_err());
        assert!(parse_route_op(b"RS+ a b q notanumber\r\n", 1024).is_err());
        assert!(parse_route_op(b"BOGUS x\r\n", 1024).is_err());
    }

    #[test]
    fn messages_in_every_form() {
        let (op, len) = one(b"RMSG $G foo 5\r\nhello\r\nPING\r\n");
        assert_eq!(len, 22);
        assert_eq!(
            op,
            RouteOp::Msg {
                origin: None,
                account: b"$G",
                subject: b"foo",
                reply: None,
                queues: b"",
                headers: None,
                payload: b"hello"
            }
        );
        let RouteOp::Msg { reply, queues, .. } = one(b"RMSG $G foo _INBOX.1 2\r\nhi\r\n").0 else {
            panic!()
        };
        assert_eq!((reply, queues), (Some(&b"_INBOX.1"[..]), &b""[..]));
        let RouteOp::Msg { reply, queues, .. } = one(b"RMSG $G foo + _INBOX.1 q1 q2 2\r\nhi\r\n").0
        else {
            panic!()
        };
        assert_eq!(reply, Some(&b"_INBOX.1"[..]));
        assert_eq!(
            queue_names(queues).collect::<Vec<_>>(),
            vec![&b"q1"[..], &b"q2"[..]]
        );
        let RouteOp::Msg { reply, queues, .. } = one(b"RMSG $G foo | q1 2\r\nhi\r\n").0 else {
            panic!()
        };
        assert_eq!((reply, queues), (None, &b"q1"[..]));
        let RouteOp::Msg {
            headers, payload, ..
        } = one(b"HMSG $G foo r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n").0
        else {
            panic!()
        };
        assert_eq!(headers, Some(&b"NATS/1.0\r\n\r\n"[..]));
        assert_eq!(payload, b"hi");
        let RouteOp::Msg {
            origin, headers, ..
        } = one(b"LMSG edge $G foo 0 2\r\nhi\r\n").0
        else {
            panic!()
        };
        assert_eq!((origin, headers), (Some(&b"edge"[..]), None));
        assert_eq!(
            parse_route_op(b"RMSG $G foo 5\r\nhel", 1024),
            Ok(Parsed::Incomplete { total: Some(22) })
        );
        assert!(parse_route_op(b"RMSG $G foo 5\r\nhelloXX", 1024).is_err());
        assert!(parse_route_op(b"RMSG $G foo 2000\r\n", 1024).is_err());
        assert!(parse_route_op(b"HMSG $G foo 9 2\r\n", 1024).is_err());
    }

    #[test]
    fn encoded_forms_parse_back() {
        let mut b = Vec::new();
        sub(&mut b, b"A", b"x.*", None);
        sub(&mut b, b"A", b"jobs", Some((b"w", 7)));
        unsub(&mut b, b"A", b"jobs", Some(b"w"));
        msg(
            &mut b,
            None,
            b"A",
            b"x.y",
            Some(b"r"),
            [&b"w"[..], b"v"],
            None,
            b"data",
        );
        msg(
            &mut b,
            None,
            b"A",
            b"x.y",
            None,
            std::iter::empty(),
            Some(b"NATS/1.0\r\n\r\n"),
            b"d",
        );
        // From leafnode cluster `edge`: the origin first, a header size always.
        msg(
            &mut b,
            Some(b"edge"),
            b"A",
            b"x.y",
            Some(b"r"),
            std::iter::empty(),
            None,
            b"d",
        );
        msg(
            &mut b,
            Some(b"edge"),
            b"B",
            b"x.y",
            None,
            [&b"w"[..]],
            Some(b"NATS/1.0\r\n\r\n"),
            b"d",
        );
        assert!(String::from_utf8_lossy(&b).contains("LMSG edge A x.y r 0 1\r\nd\r\n"));
        assert!(String::from_utf8_lossy(&b).contains("LMSG edge B x.y | w 12 13\r\n"));
        // On a route dedicated to the account, without it.
        let mut d = Vec::new();
        msg(&mut d, Some(b"edge"), b"", b"x.y", None, [], None, b"d");
        assert_eq!(d, b"LMSG edge x.y 0 1\r\nd\r\n");
        match parse_route_op_in(&d, 1 << 20, true) {
            Ok(Parsed::Op {
                op:
                    RouteOp::Msg {
                        origin,
                        subject,
                        payload,
                        ..
                    },
                ..
            }) => assert_eq!(
                (origin, subject, payload),
                (Some(&b"edge"[..]), &b"x.y"[..], &b"d"[..])
            ),
            other => panic!("{other:?}"),
        }
        let mut ops = Vec::new();
        let mut rest = &b[..];
        while !rest.is_empty() {
            let (op, len) = one(rest);
            ops.push(format!("{op:?}"));
            rest = &rest[len..];
        }
        assert_eq!(ops.len(), 7, "{ops:?}");
        assert!(String::from_utf8_lossy(&b).contains("RMSG A x.y + r w v 4\r\ndata\r\n"));
        assert!(String::from_utf8_lossy(&b).contains("HMSG A x.y 12 13\r\n"));
    }

    #[test]
    fn info_and_connect_round_trip_and_ignore_unknown_fields() {
        let i: RouteInfo = serde_json::from_slice(
            br#"{"server_id":"NABC","server_name":"n1","version":"2.9.10","host":"0.0.0.0","port":6222,"headers":true,"cluster":"c","connect_urls":["127.0.0.1:4222"],"import":{"allow":["x"]},"lnoc":true}"#,
        )
        .expect("parses");
        assert_eq!(i.server_id, "NABC");
        assert_eq!(i.connect_urls, vec!["127.0.0.1:4222"]);
        assert_eq!(i.route_pool_size, 0);
        let c = RouteConnect {
            name: "NABC".into(),
            cluster: "c".into(),
            headers: true,
            ..RouteConnect::default()
        };
        let json = serde_json::to_string(&c).expect("serialises");
        assert!(!json.contains("lang"), "{json}");
        assert_eq!(
            serde_json::from_str::<RouteConnect>(&json).expect("back"),
            c
        );
    }

    proptest::proptest! {
        /// Any bytes (biased towards route-protocol text): ops, a request for more, or an
        /// error, never a panic; lengths in bounds; a prefix never contradicts the whole.
        #[test]
        fn never_panics_and_prefixes_agree(
            data in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"RSMGLHINFOCTPQ+-|$ 0123456789.*>\r\n".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..200,
            )
        ) {
            let mut rest = &data[..];
            while let Ok(Parsed::Op { op, len }) = parse_route_op(rest, 64) {
                proptest::prop_assert!(len > 0 && len <= rest.len());
                if let RouteOp::Msg { payload, queues, .. } = op {
                    proptest::prop_assert!(payload.len() <= 64);
                    proptest::prop_assert!(queue_names(queues).all(|q| !q.is_empty()));
                }
                rest = &rest[len..];
            }
            let cut = data.len() / 2;
            if let Ok(Parsed::Op { len, .. }) = parse_route_op(&data[..cut], 64) {
                match parse_route_op(&data, 64) {
                    Ok(Parsed::Op { len: whole, .. }) => proptest::prop_assert_eq!(len, whole),
                    other => proptest::prop_assert!(false, "prefix parsed, whole gave {other:?}"),
                }
            }
        }
    }
}
