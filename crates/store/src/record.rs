//! The record format both stores write into blocks: encode, and decode with checksum verification.
//! Pure functions on bytes, no I/O; `Incomplete` (need more bytes) is distinct from `Invalid`.
//!
//! Layout, all integers little-endian:
//! `len u32 | seq u64 | ts i64 | subj_len u16 | hdr_len u32 | subject | headers | payload | crc u32`
//! where `len` counts the whole record and `crc` is CRC32C of every byte before it. A record with
//! `subj_len == 0` is a marker: it carries the stream's last sequence and time, no message.

/// Highest sequence a record may carry (keeps every `seq + n` in range).
pub const MAX_SEQ: u64 = 1 << 62;

/// Bytes of framing around subject, headers and payload.
pub const OVERHEAD: usize = HEADER + 4;
const HEADER: usize = 4 + 8 + 8 + 2 + 4;

/// A decoded record borrowing the block's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub ts: i64,
    pub subject: &'a [u8],
    pub headers: &'a [u8],
    pub payload: &'a [u8],
    /// Total bytes of the record.
    pub len: usize,
}

impl Record<'_> {
    pub fn is_marker(&self) -> bool {
        self.subject.is_empty()
    }
}

/// Why bytes do not hold a good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the record does.
    Incomplete,
    /// Impossible lengths or a checksum mismatch.
    Invalid(&'static str),
}

/// Append one record to `out`. The caller guarantees `subject.len() <= u16::MAX` and that the
/// whole record fits in a `u32`.
pub fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    ts: i64,
    subject: &[u8],
    headers: &[u8],
    payload: &[u8],
) {
    let len = OVERHEAD + subject.len() + headers.len() + payload.len();
    let start = out.len();
    out.reserve(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    out.extend_from_slice(subject);
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Append a marker record recording the stream's last sequence and time.
pub fn encode_marker(out: &mut Vec<u8>, last_seq: u64, last_ts: i64) {
    encode(out, last_seq, last_ts, b"", b"", b"");
}

fn le<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = buf.get(at..at + N) {
        a.copy_from_slice(s);
    }
    a
}

/// The record length field at the start of `buf`, if there are four bytes.
pub fn peek_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| u32::from_le_bytes(le(buf, 0)) as usize)
}

/// The sequence field, if the header is there (not verified).
pub fn peek_seq(buf: &[u8]) -> Option<u64> {
    (buf.len() >= 12).then(|| u64::from_le_bytes(le(buf, 4)))
}

/// Decode and verify the record at the start of `buf`; bytes after it are ignored.
pub fn decode(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    if buf.len() < HEADER {
        return Err(DecodeError::Incomplete);
    }
    let len = u32::from_le_bytes(le(buf, 0)) as usize;
    if len < OVERHEAD {
        return Err(DecodeError::Invalid("record length too small"));
    }
    let subj_len = u16::from_le_bytes(le(buf, 20)) as usize;
    let hdr_len = u32::from_le_bytes(le(buf, 22)) as usize;
    if subj_len + hdr_len > len - OVERHEAD {
        return Err(DecodeError::Invalid("field lengths exceed record length"));
    }
    if buf.len() < len {
        return Err(DecodeError::Incomplete);
    }
    let body = buf.get(..len - 4).unwrap_or_default();
    let stored = u32::from_le_bytes(le(buf, len - 4));
    if crc32c::crc32c(body) != stored {
        return Err(DecodeError::Invalid("checksum mismatch"));
    }
    let seq = u64::from_le_bytes(le(buf, 4));
    if seq > MAX_SEQ {
        return Err(DecodeError::Invalid("sequence out of range"));
    }
    let subj_end = HEADER + subj_len;
    let hdr_end = subj_end + hdr_len;
    Ok(Record {
        seq,
        ts: i64::from_le_bytes(le(buf, 12)),
        subject: body.get(HEADER..subj_end).unwrap_or_default(),
        headers: body.get(subj_end..hdr_end).unwrap_or_default(),
        payload: body.get(hdr_end..).unwrap_or_default(),
        len,
    })
}

/// Offsets of (subject, headers, payload) within a record that decoded successfully.
pub(crate) fn field_ranges(rec: &Record<'_>) -> [(usize, usize); 3] {
    let s = HEADER;
    let h = s + rec.subject.len();
    let p = h + rec.headers.len();
    [
        (s, rec.subject.len()),
        (h, rec.headers.len()),
        (p, rec.payload.len()),
    ]
}

/// Rewrite `rec` (a whole, valid record) with subject, headers and payload zeroed and the checksum
/// recomputed, for `erase_msg`.
pub(crate) fn erased(rec: &[u8]) -> Vec<u8> {
    let mut out = rec.to_vec();
    if out.len() < OVERHEAD {
        return out;
    }
    let body_end = out.len() - 4;
    if let Some(b) = out.get_mut(HEADER..body_end) {
        b.fill(0);
    }
    let crc = crc32c::crc32c(out.get(..body_end).unwrap_or_default());
    if let Some(c) = out.get_mut(body_end..) {
        c.copy_from_slice(&crc.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, -3, b"a.b", b"NATS/1.0\r\n\r\n", b"hello");
        let r = decode(&buf).unwrap();
        assert_eq!(
            (r.seq, r.ts, r.subject, r.payload),
            (7, -3, &b"a.b"[..], &b"hello"[..])
        );
        assert_eq!(r.len, buf.len());
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]),
                Err(DecodeError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 2, b"s", b"", b"payload");
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "bit {i} not detected");
        }
    }

    #[test]
    fn erased_record_is_valid_and_empty() {
        let mut buf = Vec::new();
        encode(&mut buf, 9, 1, b"s.x", b"h", b"secret");
        let e = erased(&buf);
        let r = decode(&e).unwrap();
        assert_eq!(r.seq, 9);
        assert!(r.payload.iter().all(|b| *b == 0));
    }
}
