//! Encoding of server-to-client operations (MSG, HMSG, INFO, PING/PONG, +OK, -ERR) by appending
//! to a caller's buffer; the publish path calls these once per delivery, so none allocates.

/// Appends `MSG <subject> <sid> [reply] <len>\r\n<payload>\r\n`, or the HMSG form when `headers`
/// is given (`HMSG <subject> <sid> [reply] <hdr_len> <total_len>`).
#[inline]
pub fn msg(
    out: &mut Vec<u8>,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let mut num = itoa::Buffer::new();
    let hlen = headers.map_or(0, <[u8]>::len);
    out.reserve(
        subject.len() + sid.len() + reply.map_or(0, <[u8]>::len) + hlen + payload.len() + 48,
    );
    out.extend_from_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
    out.extend_from_slice(subject);
    out.push(b' ');
    out.extend_from_slice(sid);
    out.push(b' ');
    if let Some(reply) = reply {
        out.extend_from_slice(reply);
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

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";
pub const OK: &[u8] = b"+OK\r\n";

/// Appends `-ERR '<text>'\r\n`.
pub fn err(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"-ERR '");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"'\r\n");
}

/// Appends `INFO <json>\r\n`.
pub fn info(out: &mut Vec<u8>, json: &[u8]) {
    out.extend_from_slice(b"INFO ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_msg_and_hmsg() {
        let mut out = Vec::new();
        msg(&mut out, b"a.b", b"7", None, None, b"hello");
        assert_eq!(out, b"MSG a.b 7 5\r\nhello\r\n");
        out.clear();
        msg(
            &mut out,
            b"a",
            b"1",
            Some(b"r"),
            Some(b"NATS/1.0\r\n\r\n"),
            b"hi",
        );
        assert_eq!(out, b"HMSG a 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        out.clear();
        err(&mut out, "Authorization Violation");
        assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
    }
}
