//! What a block carries at its end once it is sealed: two marker records (see `record`), so that
//! opening a store and finding a message never has to read a sealed block's messages.
//!
//! - the **index record**: where each record starts and, when the block holds more than one
//!   subject, which of the block's subjects each record has;
//! - the **summary record** (last in the file): the block's sequence range, message bytes,
//!   timestamps, sequences lost to damage, and per subject its name, count and first/last sequence,
//!   plus where the index record starts and the summary record's own length, so that it can be
//!   found from the end of the file.
//!
//! Both are ordinary checksummed records with an empty subject (markers), so a reader that does not
//! know them skips them. Counts cover every message record of the block that was intact when it was
//! sealed, removed ones included: removals are in the block's delete records. Pure functions on
//! bytes; all integers little-endian, varints are LEB128.
//!
//! Summary record payload: `"NTRSUM01" | start u64 | count u32 | msg_bytes u64 | first_ts i64 |
//! last_ts i64 | index_at u32 | n_lost u32 | n_lost × (first u64, last u64) | n_subjects u32 |
//! n_subjects × (varint name_len, name, varint count, varint first - start, varint last - first)
//! | own_len u32`. Index record payload: `"NTRBIX01" | start u64 | count u32 | end u32 | lw u8 |
//! count × offset u32 | count × local subject as lw bytes (0: every record has local subject 0;
//! else 1, 2 or 4)`.

use std::sync::Arc;

use crate::record;

const SUMMARY_MAGIC: &[u8; 8] = b"NTRSUM01";
const INDEX_MAGIC: &[u8; 8] = b"NTRBIX01";

/// One subject of a sealed block, in the block's local numbering (first appearance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectSum {
    pub name: Arc<[u8]>,
    pub count: u32,
    pub first: u64,
    pub last: u64,
}

/// The summary record's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub start: u64,
    /// Records in the block (sequences `start .. start + count`), lost ones included.
    pub count: u32,
    /// Bytes of the intact message records (as `msg_size` counts them).
    pub msg_bytes: u64,
    /// Timestamp of the record at `start` (`i64::MIN` if it was lost).
    pub first_ts: i64,
    /// Newest timestamp of an intact record.
    pub last_ts: i64,
    /// Offset of the index record in the block.
    pub index_at: u32,
    /// Sequence ranges (inclusive) lost to damage, possibly past `start + count` when the block's
    /// tail was lost.
    pub lost: Vec<(u64, u64)>,
    pub subjects: Vec<SubjectSum>,
}

/// The index record's content: record offsets and, for blocks of several subjects, each
/// record's local subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexRec {
    pub start: u64,
    pub offsets: Vec<u32>,
    /// Empty when every record has local subject 0.
    pub locals: Vec<u32>,
    /// End of the last message record.
    pub end: u32,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a payload; every read fails (None) past the end.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

impl Summary {
    /// Append the summary record (`seq`/`ts`: the block's last sequence and newest time).
    pub fn encode(&self, out: &mut Vec<u8>, seq: u64, ts: i64) {
        let mut p = Vec::with_capacity(64 + self.subjects.len() * 32);
        p.extend_from_slice(SUMMARY_MAGIC);
        p.extend_from_slice(&self.start.to_le_bytes());
        p.extend_from_slice(&self.count.to_le_bytes());
        p.extend_from_slice(&self.msg_bytes.to_le_bytes());
        p.extend_from_slice(&self.first_ts.to_le_bytes());
        p.extend_from_slice(&self.last_ts.to_le_bytes());
        p.extend_from_slice(&self.index_at.to_le_bytes());
        p.extend_from_slice(&(self.lost.len() as u32).to_le_bytes());
        for (a, b) in &self.lost {
            p.extend_from_slice(&a.to_le_bytes());
            p.extend_from_slice(&b.to_le_bytes());
        }
        p.extend_from_slice(&(self.subjects.len() as u32).to_le_bytes());
        for s in &self.subjects {
            put_varint(&mut p, s.name.len() as u64);
            p.extend_from_slice(&s.name);
            put_varint(&mut p, u64::from(s.count));
            put_varint(&mut p, s.first.wrapping_sub(self.start));
            put_varint(&mut p, s.last.wrapping_sub(s.first));
        }
        // The record's own length closes the payload, so it can be found from the file's end.
        let own = (record::OVERHEAD + p.len() + 4) as u32;
        p.extend_from_slice(&own.to_le_bytes());
        record::encode(out, seq, ts, b"", b"", &p);
    }

    /// Decode a summary record's payload.
    pub fn decode(payload: &[u8]) -> Option<Summary> {
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        if r.take(8)? != SUMMARY_MAGIC {
            return None;
        }
        let start = r.u64()?;
        let count = r.u32()?;
        let msg_bytes = r.u64()?;
        let first_ts = r.i64()?;
        let last_ts = r.i64()?;
        let index_at = r.u32()?;
        let n_lost = r.u32()? as usize;
        let mut lost = Vec::with_capacity(n_lost.min(payload.len() / 16));
        for _ in 0..n_lost {
            lost.push((r.u64()?, r.u64()?));
        }
        let n_subj = r.u32()? as usize;
        let mut subjects = Vec::with_capacity(n_subj.min(payload.len() / 5));
        for _ in 0..n_subj {
            let len = usize::try_from(r.varint()?).ok()?;
            let name: Arc<[u8]> = Arc::from(r.take(len)?);
            let count = u32::try_from(r.varint()?).ok()?;
            let first = start.checked_add(r.varint()?)?;
            let last = first.checked_add(r.varint()?)?;
            subjects.push(SubjectSum {
                name,
                count,
                first,
                last,
            });
        }
        r.u32()?;
        (r.at == payload.len()).then_some(Summary {
            start,
            count,
            msg_bytes,
            first_ts,
            last_ts,
            index_at,
            lost,
            subjects,
        })
    }
}

/// Offset, from the start of the index record, of its first record offset: the record header
/// (26 bytes, no subject or headers) and the payload's magic, start, count, end and width.
pub(crate) const OFFSETS_AT: u32 = 26 + 8 + 8 + 4 + 4 + 1;
/// Offset, from the start of the index record, of `end` (where the block's records end).
pub(crate) const END_AT: u32 = 26 + 8 + 8 + 4;

impl IndexRec {
    /// Append the index record: each record's offset as a fixed `u32` (so one of them can be read
    /// on its own), then local subjects as 1, 2 or 4 bytes each when there are several.
    pub fn encode(&self, out: &mut Vec<u8>, seq: u64, ts: i64) {
        let max_local = self.locals.iter().copied().max().unwrap_or(0);
        let lw: u8 = match (self.locals.is_empty(), max_local) {
            (true, _) => 0,
            (false, 0..=0xff) => 1,
            (false, 0x100..=0xffff) => 2,
            _ => 4,
        };
        let n = self.offsets.len();
        let mut p = Vec::with_capacity(25 + n * (4 + usize::from(lw)));
        p.extend_from_slice(INDEX_MAGIC);
        p.extend_from_slice(&self.start.to_le_bytes());
        p.extend_from_slice(&(n as u32).to_le_bytes());
        p.extend_from_slice(&self.end.to_le_bytes());
        p.push(lw);
        for o in &self.offsets {
            p.extend_from_slice(&o.to_le_bytes());
        }
        for &l in &self.locals {
            p.extend_from_slice(l.to_le_bytes().get(..usize::from(lw)).unwrap_or_default());
        }
        record::encode(out, seq, ts, b"", b"", &p);
    }

    pub fn decode(payload: &[u8]) -> Option<IndexRec> {
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        if r.take(8)? != INDEX_MAGIC {
            return None;
        }
        let start = r.u64()?;
        let count = r.u32()? as usize;
        let end = r.u32()?;
        let lw = usize::from(*r.take(1)?.first()?);
        if !matches!(lw, 0 | 1 | 2 | 4) {
            return None;
        }
        let raw_offsets = r.take(count.checked_mul(4)?)?;
        let raw_locals = r.take(count.checked_mul(lw)?)?;
        if r.at != payload.len() {
            return None;
        }
        let le = |c: &[u8]| c.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
        let offsets: Vec<u32> = raw_offsets.chunks_exact(4).map(le).collect();
        let locals: Vec<u32> = match lw {
            0 => Vec::new(),
            1 => raw_locals.iter().map(|b| u32::from(*b)).collect(),
            2 => raw_locals
                .chunks_exact(2)
                .map(|c| {
                    c.try_into()
                        .map(u16::from_le_bytes)
                        .map_or(u32::MAX, u32::from)
                })
                .collect(),
            _ => raw_locals.chunks_exact(4).map(le).collect(),
        };
        // Offsets only grow and stay within the block's records.
        let sorted = offsets.windows(2).all(|w| matches!(w, [a, b] if a <= b));
        (sorted && offsets.last().is_none_or(|o| *o <= end)).then_some(IndexRec {
            start,
            offsets,
            locals,
            end,
        })
    }
}

/// The summary at the end of a block of `len` bytes, reading through `read(at, len)`: the
/// summary and the offset of the summary record. None if the block does not end with one.
pub(crate) fn read_summary(
    len: u64,
    read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Option<(Summary, u64)> {
    if len < (record::OVERHEAD + 8) as u64 {
        return None;
    }
    let tail = read(len - 8, 8)?;
    let own = u64::from(u32::from_le_bytes(tail.get(..4)?.try_into().ok()?));
    if own < record::OVERHEAD as u64 + 8 || own > len {
        return None;
    }
    let at = len - own;
    let raw = read(at, own as usize)?;
    let rec = record::decode(&raw).ok()?;
    if !rec.is_marker() || rec.len as u64 != own {
        return None;
    }
    let s = Summary::decode(rec.payload)?;
    (u64::from(s.index_at) < at).then_some((s, at))
}

/// Decode the index record in `raw` (the bytes from the index record to the summary record).
pub(crate) fn decode_index(raw: &[u8]) -> Option<IndexRec> {
    let rec = record::decode(raw).ok()?;
    if !rec.is_marker() || rec.len != raw.len() {
        return None;
    }
    IndexRec::decode(rec.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Summary, IndexRec) {
        let s = Summary {
            start: 100,
            count: 3,
            msg_bytes: 120,
            first_ts: -5,
            last_ts: 77,
            index_at: 120,
            lost: vec![(101, 101)],
            subjects: vec![
                SubjectSum {
                    name: Arc::from(&b"a.b"[..]),
                    count: 1,
                    first: 100,
                    last: 100,
                },
                SubjectSum {
                    name: Arc::from(&b"c"[..]),
                    count: 1,
                    first: 102,
                    last: 102,
                },
            ],
        };
        let i = IndexRec {
            start: 100,
            offsets: vec![0, 40, 300],
            locals: vec![0, 0, 1],
            end: 340,
        };
        (s, i)
    }

    #[test]
    fn summary_and_index_round_trip_and_are_found_from_the_end() {
        let (s, i) = sample();
        let mut block = vec![7u8; 120];
        i.encode(&mut block, 102, 77);
        let summary_at = block.len() as u64;
        s.encode(&mut block, 102, 77);
        let mut read =
            |at: u64, n: usize| block.get(at as usize..at as usize + n).map(<[u8]>::to_vec);
        let (got, at) = read_summary(block.len() as u64, &mut read).unwrap();
        assert_eq!((got, at), (s, summary_at));
        let idx = decode_index(&block[120..summary_at as usize]).unwrap();
        assert_eq!(idx, i);
    }

    #[test]
    fn offsets_and_end_are_where_point_reads_look() {
        let (_, i) = sample();
        let mut rec = Vec::new();
        i.encode(&mut rec, 102, 77);
        let u32_at =
            |at: u32| u32::from_le_bytes(rec[at as usize..at as usize + 4].try_into().unwrap());
        for (k, o) in i.offsets.iter().enumerate() {
            assert_eq!(u32_at(OFFSETS_AT + 4 * k as u32), *o);
        }
        assert_eq!(u32_at(END_AT), i.end);
    }

    #[test]
    fn damaged_or_missing_summary_is_not_used() {
        let (s, i) = sample();
        let mut block = vec![7u8; 120];
        i.encode(&mut block, 102, 77);
        let summary_at = block.len();
        s.encode(&mut block, 102, 77);
        for k in 0..block.len() {
            let mut b = block.clone();
            b[k] ^= 0x20;
            let mut read =
                |at: u64, n: usize| b.get(at as usize..at as usize + n).map(<[u8]>::to_vec);
            let got = read_summary(b.len() as u64, &mut read).map(|(g, _)| g);
            // Damage before the summary record leaves it intact; damage in it is never used.
            let want = (k < summary_at).then(|| s.clone());
            assert_eq!(got, want, "byte {k}");
        }
        let plain = {
            let mut b = Vec::new();
            record::encode_marker(&mut b, 5, 5);
            b
        };
        let mut read =
            |at: u64, n: usize| plain.get(at as usize..at as usize + n).map(<[u8]>::to_vec);
        assert_eq!(read_summary(plain.len() as u64, &mut read), None);
    }
}
