//! The leafnode protocol between a hub and a leaf server, as nats-server speaks it: the
//! connection is bound to one account on each side, so interest (`LS+ subject [queue weight]`,
//! `LS- subject [queue]`) and messages (`LMSG subject [reply | + reply queues | | queues] size`,
//! `HMSG ... hdr_size total_size`) carry no account. Also the leaf CONNECT and INFO documents.

use serde::{Deserialize, Serialize};

use crate::parse::{parse_size, trim, Args, ParseError, Parsed};
use crate::route::{control_line, message_body};

/// One operation from the other server, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LeafOp<'a> {
    Info(&'a [u8]),
    Connect(&'a [u8]),
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
    /// `LS+ subject [queue weight]`.
    Sub {
        subject: &'a [u8],
        queue: Option<(&'a [u8], u32)>,
    },
    /// `LS- subject [queue]`.
    Unsub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
    },
    /// `LMSG` or `HMSG`: a message for the bound account's subscribers of `subject`; `queues`
    /// lists the queue groups the sender picked this server for (empty: none).
    Msg {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        queues: &'a [u8],
        headers: Option<&'a [u8]>,
        payload: &'a [u8],
    },
}

/// Parses one operation from the front of `buf`.
pub fn parse_leaf_op(buf: &[u8], max_payload: usize) -> Result<Parsed<LeafOp<'_>>, ParseError> {
    let Some((name, args, after)) = control_line(buf)? else {
        return Ok(Parsed::Incomplete { total: None });
    };
    let is = |n: &[u8]| n.eq_ignore_ascii_case(name);
    let op = if is(b"PING") {
        LeafOp::Ping
    } else if is(b"PONG") {
        LeafOp::Pong
    } else if is(b"+OK") {
        LeafOp::Ok
    } else if is(b"-ERR") {
        LeafOp::Err(trim(args))
    } else if is(b"INFO") {
        LeafOp::Info(trim(args))
    } else if is(b"CONNECT") {
        LeafOp::Connect(trim(args))
    } else if is(b"LS+") {
        let a: Vec<&[u8]> = Args::new(args).collect();
        match a.as_slice() {
            [subject] => LeafOp::Sub {
                subject,
                queue: None,
            },
            [subject, queue, weight] => {
                let w = parse_size(weight).ok_or(ParseError::BadArgs("bad queue weight"))?;
                LeafOp::Sub {
                    subject,
                    queue: Some((queue, w.min(u32::MAX as usize) as u32)),
                }
            }
            _ => return Err(ParseError::BadArgs("wrong number of arguments to LS+")),
        }
    } else if is(b"LS-") {
        let a: Vec<&[u8]> = Args::new(args).collect();
        match a.as_slice() {
            [subject] => LeafOp::Unsub {
                subject,
                queue: None,
            },
            [subject, queue] => LeafOp::Unsub {
                subject,
                queue: Some(queue),
            },
            _ => return Err(ParseError::BadArgs("wrong number of arguments to LS-")),
        }
    } else if is(b"LMSG") || is(b"HMSG") {
        let with_headers = name[0].eq_ignore_ascii_case(&b'H');
        return parse_msg(buf, args, after, max_payload, with_headers);
    } else {
        return Err(ParseError::UnknownOp);
    };
    Ok(Parsed::Op { op, len: after })
}

/// `subject [reply] [hdr] size`, or `subject (+ reply | |) q1 q2.. [hdr] size`.
fn parse_msg<'a>(
    buf: &'a [u8],
    args: &'a [u8],
    after: usize,
    max_payload: usize,
    with_headers: bool,
) -> Result<Parsed<LeafOp<'a>>, ParseError> {
    let bad = || ParseError::BadArgs("bad leaf message arguments");
    let a: Vec<&'a [u8]> = Args::new(args).collect();
    let sizes = if with_headers { 2 } else { 1 };
    if a.len() < 1 + sizes {
        return Err(bad());
    }
    let subject = a[0];
    let total = parse_size(a[a.len() - 1]).ok_or_else(bad)?;
    let hdr = if with_headers {
        Some(parse_size(a[a.len() - 2]).ok_or_else(bad)?)
    } else {
        None
    };
    let middle = &a[1..a.len() - sizes];
    let (reply, queues): (Option<&[u8]>, &[u8]) = match middle {
        [] => (None, b""),
        [r] => (Some(r), b""),
        [ind, rest @ ..] if *ind == b"+" => {
            let (r, qs) = rest.split_first().ok_or_else(bad)?;
            (Some(*r), span(args, qs))
        }
        [ind, qs @ ..] if *ind == b"|" => (None, span(args, qs)),
        _ => return Err(bad()),
    };
    let (data, needed) = match message_body(buf, after, total, hdr, max_payload, bad)? {
        Parsed::Op { op, len } => (op, len),
        Parsed::Incomplete { total } => return Ok(Parsed::Incomplete { total }),
    };
    let (headers, payload) = match hdr {
        Some(h) => (Some(&data[..h]), &data[h..]),
        None => (None, data),
    };
    Ok(Parsed::Op {
        op: LeafOp::Msg {
            subject,
            reply,
            queues,
            headers,
            payload,
        },
        len: needed,
    })
}

/// The bytes of `args` from the first to the last of `parts` (slices of `args`).
fn span<'a>(args: &'a [u8], parts: &[&'a [u8]]) -> &'a [u8] {
    match (parts.first(), parts.last()) {
        (Some(f), Some(l)) => {
            let base = args.as_ptr() as usize;
            let start = f.as_ptr() as usize - base;
            let end = l.as_ptr() as usize - base + l.len();
            &args[start..end]
        }
        _ => b"",
    }
}

/// Appends `LS+ subject[ queue weight]\r\n`.
pub fn sub(out: &mut Vec<u8>, subject: &[u8], queue: Option<(&[u8], u32)>) {
    out.extend_from_slice(b"LS+ ");
    out.extend_from_slice(subject);
    if let Some((q, weight)) = queue {
        out.push(b' ');
        out.extend_from_slice(q);
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(weight).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `LS- subject[ queue]\r\n`.
pub fn unsub(out: &mut Vec<u8>, subject: &[u8], queue: Option<&[u8]>) {
    out.extend_from_slice(b"LS- ");
    out.extend_from_slice(subject);
    if let Some(q) = queue {
        out.push(b' ');
        out.extend_from_slice(q);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a message for the other server: `LMSG subject [reply] size` (`HMSG ... hdr total`
/// with headers); with queue groups `+ reply q1 q2` or `| q1 q2` stands where the reply would.
pub fn msg<'q>(
    out: &mut Vec<u8>,
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: impl IntoIterator<Item = &'q [u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let mut num = itoa::Buffer::new();
    let hlen = headers.map_or(0, <[u8]>::len);
    out.reserve(subject.len() + hlen + payload.len() + 48);
    out.extend_from_slice(if headers.is_some() {
        b"HMSG "
    } else {
        b"LMSG "
    });
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
    if let Some(h) = headers {
        out.extend_from_slice(num.format(h.len()).as_bytes());
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

/// The CONNECT a leaf sends to its hub.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeafConnect {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pass: String,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The leaf declares itself the hub (the accepting side becomes the spoke).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_hub: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headers: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jetstream: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_pub: Vec<String>,
    /// A client's CONNECT names its language; a leaf's never does (wrong port detection).
    #[serde(default, skip_serializing)]
    pub lang: String,
    /// Set by a gateway that dialled the leafnode port by mistake.
    #[serde(default, skip_serializing)]
    pub gateway: String,
}

/// The INFO a hub sends on a leafnode connection (first with a nonce, then again after
/// CONNECT with `connect_info` and the account the leaf is bound to).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeafInfo {
    pub server_id: String,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub proto: i32,
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
    pub max_payload: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(default, skip_serializing_if = "is_zero", rename = "client_id")]
    pub cid: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Where the hub's cluster accepts leafnodes; a server's client port sends none, which is
    /// how a leaf tells it dialled the wrong port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leafnode_urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_account: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub info_on_connect: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connect_info: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(buf: &[u8]) -> LeafOp<'_> {
        match parse_leaf_op(buf, 1 << 20).expect("parses") {
            Parsed::Op { op, .. } => op,
            Parsed::Incomplete { .. } => panic!("incomplete"),
        }
    }

    #[test]
    fn interest_lines() {
        assert_eq!(
            op(b"LS+ foo.>\r\n"),
            LeafOp::Sub {
                subject: b"foo.>",
                queue: None
            }
        );
        assert_eq!(
            op(b"LS+ foo q 3\r\n"),
            LeafOp::Sub {
                subject: b"foo",
                queue: Some((b"q", 3))
            }
        );
        assert_eq!(
            op(b"LS- foo q\r\n"),
            LeafOp::Unsub {
                subject: b"foo",
                queue: Some(b"q")
            }
        );
        assert!(parse_leaf_op(b"LS+ a b\r\n", 10).is_err());
        let mut v = Vec::new();
        sub(&mut v, b"foo", Some((b"q", 12)));
        unsub(&mut v, b"foo", None);
        assert_eq!(v, b"LS+ foo q 12\r\nLS- foo\r\n");
    }

    #[test]
    fn messages_round_trip() {
        type Case<'a> = (Option<&'a [u8]>, Vec<&'a [u8]>, Option<&'a [u8]>);
        let cases: [Case<'_>; 5] = [
            (None, vec![], None),
            (Some(b"_INBOX.x"), vec![], None),
            (Some(b"r"), vec![b"q1", b"q2"], None),
            (None, vec![b"q1"], Some(b"NATS/1.0\r\nA: b\r\n\r\n")),
            (Some(b"r"), vec![], Some(b"NATS/1.0\r\n\r\n")),
        ];
        for (reply, queues, headers) in cases {
            let mut v = Vec::new();
            msg(
                &mut v,
                b"a.b",
                reply,
                queues.iter().copied(),
                headers,
                b"hello",
            );
            match op(&v) {
                LeafOp::Msg {
                    subject,
                    reply: r,
                    queues: q,
                    headers: h,
                    payload,
                } => {
                    assert_eq!(subject, b"a.b");
                    assert_eq!(r, reply);
                    assert_eq!(q, queues.join(&b' ').as_slice());
                    assert_eq!(h, headers);
                    assert_eq!(payload, b"hello");
                }
                other => panic!("{other:?}"),
            }
        }
        // Incomplete until the payload is there; the sizes are checked.
        assert!(matches!(
            parse_leaf_op(b"LMSG a 5\r\nhe", 100),
            Ok(Parsed::Incomplete { total: Some(17) })
        ));
        assert!(parse_leaf_op(b"LMSG a 500\r\n", 100).is_err());
        assert!(parse_leaf_op(b"HMSG a 6 5\r\n", 100).is_err());
        assert!(parse_leaf_op(b"LMSG a x y 5\r\n", 100).is_err());
    }
}
