//! `NATS/1.0` header blocks: the status line (`NATS/1.0 503`) and `Key: Value` lines, read
//! without copying; plus the fixed blocks the server itself emits.

/// The header block of a no-responders status message.
pub const NO_RESPONDERS: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// A parsed view of a header block.
#[derive(Debug, PartialEq, Eq)]
pub struct HeaderView<'a> {
    /// Status code from the first line (`NATS/1.0 404 No Messages`), if any.
    pub status: Option<u16>,
    pub description: &'a [u8],
    block: &'a [u8],
}

impl<'a> HeaderView<'a> {
    /// Parses a block that starts with `NATS/1.0` and ends with an empty line; `None` if malformed.
    pub fn parse(block: &'a [u8]) -> Option<Self> {
        let rest = block.strip_prefix(b"NATS/1.0")?;
        let eol = find_crlf(rest)?;
        let first = trim(&rest[..eol]);
        let (status, description) = if first.is_empty() {
            (None, &first[..0])
        } else {
            let sp = first.iter().position(|c| *c == b' ').unwrap_or(first.len());
            let code = std::str::from_utf8(&first[..sp]).ok()?.parse().ok()?;
            (Some(code), trim(&first[sp..]))
        };
        Some(HeaderView {
            status,
            description,
            block: &rest[eol + 2..],
        })
    }

    /// Iterates `(name, value)` pairs in order; values are trimmed.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.block
            .split(|c| *c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter_map(|line| {
                let colon = line.iter().position(|c| *c == b':')?;
                Some((trim(&line[..colon]), trim(&line[colon + 1..])))
            })
    }

    /// The first value of header `name` (case-sensitive, as NATS headers are).
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

fn find_crlf(s: &[u8]) -> Option<usize> {
    s.windows(2).position(|w| w == b"\r\n")
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_headers() {
        let h = HeaderView::parse(b"NATS/1.0 404 No Messages\r\nA: 1\r\nNats-Msg-Id:  x \r\n\r\n")
            .expect("valid");
        assert_eq!(h.status, Some(404));
        assert_eq!(h.description, b"No Messages");
        assert_eq!(h.get(b"Nats-Msg-Id"), Some(&b"x"[..]));
        assert_eq!(h.get(b"A"), Some(&b"1"[..]));
        assert_eq!(h.get(b"B"), None);
        let h = HeaderView::parse(NO_RESPONDERS).expect("valid");
        assert_eq!(h.status, Some(503));
        assert!(HeaderView::parse(b"HTTP/1.1 200\r\n\r\n").is_none());
    }
}
