//! Byte forms: log records (`len u32 LE | crc32c u32 LE | body`, the body a bincode entry) and
//! the RPC messages the transport carries (bincode). Decoding never panics on bad input.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of a record's frame before its body.
pub(crate) const FRAME: usize = 8;

/// Largest record body accepted when reading (a bad length field must not allocate gigabytes).
pub(crate) const MAX_RECORD: usize = 256 * 1024 * 1024;

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::deserialize(b).map_err(|e| e.to_string())
}

/// Appends `body` framed as a record to `out`.
pub(crate) fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// What reading a record at the start of `buf` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed<'a> {
    /// An intact record: its body and the bytes it takes with its frame.
    Record(&'a [u8], usize),
    /// Not enough bytes for the frame or the body it announces (a torn tail).
    Short,
    /// The checksum does not match, or the length is impossible.
    Bad,
}

pub(crate) fn unframe(buf: &[u8]) -> Framed<'_> {
    let (Some(len), Some(crc)) = (buf.get(0..4), buf.get(4..8)) else {
        return Framed::Short;
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if len > MAX_RECORD {
        return Framed::Bad;
    }
    let Some(body) = buf.get(FRAME..FRAME + len) else {
        return Framed::Short;
    };
    if crc32c::crc32c(body) != crc {
        return Framed::Bad;
    }
    Framed::Record(body, FRAME + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_seen() {
        let mut buf = Vec::new();
        frame(&mut buf, b"hello");
        frame(&mut buf, b"world!");
        let Framed::Record(body, n) = unframe(&buf) else {
            panic!("first record")
        };
        assert_eq!(body, b"hello");
        assert_eq!(unframe(&buf[n..]), Framed::Record(b"world!", 14));
        assert_eq!(unframe(&buf[..n - 1]), Framed::Short);
        let mut flipped = buf.clone();
        flipped[10] ^= 0x04;
        assert_eq!(unframe(&flipped), Framed::Bad);
        let mut huge = buf.clone();
        huge[3] = 0xff;
        assert_eq!(unframe(&huge), Framed::Bad);
    }
}
