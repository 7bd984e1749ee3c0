//! Reading a whole block and checking every record: its checksum and that it holds the expected
//! sequence. Builds the block's index, and finds torn tails and damage (resynchronising past
//! it). Pure functions over bytes, plus a chunked reader for files that keeps memory small.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::block::{Index, Local};
use crate::record::{self, DecodeError, Record, OVERHEAD};
use crate::seal::{self, Summary};

/// Sequences listed one by one per damaged range (a crafted file could claim billions).
pub(crate) const MAX_LOST: u64 = 1 << 20;

/// Damage found in a block: sequences `first_seq ..= last_seq` (none when `first_seq >
/// last_seq`) are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub offset: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub reason: String,
}

/// Everything a scan learns from one block.
pub(crate) struct Scanned {
    /// Locals carry names only (`NO_SUBJECT` ids); removed and lost records are dead.
    pub index: Index,
    pub live: u32,
    pub live_bytes: u64,
    /// Timestamp of the record at `start` (`i64::MIN` if lost or absent).
    pub first_ts: i64,
    pub last_ts: i64,
    /// (seq, ts) of the newest record, message or marker.
    pub last: Option<(u64, i64)>,
    /// Bytes of the block that hold records (up to a torn tail).
    pub len: u32,
    /// The block ends with a marker after at least one record.
    pub sealed: bool,
    /// Damage runs to the end of the block: appends must not continue in it.
    pub bad_tail: bool,
    /// The last block ends in a torn write at this offset: cut it off there.
    pub torn_at: Option<usize>,
    pub findings: Vec<Finding>,
    /// The seal's summary and its offset, when the block ends with one.
    pub summary: Option<(Summary, u64)>,
}

impl Scanned {
    /// Sequences lost in this block, as inclusive ranges.
    pub fn lost(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.findings
            .iter()
            .filter(|f| f.first_seq <= f.last_seq)
            .map(|f| (f.first_seq, f.last_seq))
    }
}

/// Accumulates the index from records known to be intact.
struct Builder<'a> {
    start: u64,
    index: Index,
    by_name: FxHashMap<&'a [u8], u32>,
    /// Names first seen in records that do not outlive their chunk (`scan_file`).
    owned: Option<FxHashMap<Arc<[u8]>, u32>>,
    last_subject: Option<(&'a [u8], u32)>,
    live: u32,
    live_bytes: u64,
    first_ts: i64,
    last_ts: i64,
    last: Option<(u64, i64)>,
}

impl<'a> Builder<'a> {
    fn new(start: u64, names: &'a [Arc<[u8]>]) -> Self {
        let mut index = Index::default();
        let mut by_name = FxHashMap::default();
        for (l, n) in names.iter().enumerate() {
            by_name.insert(&n[..], l as u32);
            index.locals.push(Local {
                name: n.clone(),
                id: crate::block::NO_SUBJECT,
            });
        }
        Builder {
            start,
            index,
            by_name,
            owned: None,
            last_subject: None,
            live: 0,
            live_bytes: 0,
            first_ts: i64::MIN,
            last_ts: i64::MIN,
            last: None,
        }
    }

    fn next_seq(&self) -> u64 {
        self.start + self.index.count() as u64
    }

    fn local(&mut self, subject: &'a [u8]) -> u32 {
        if let Some((s, l)) = self.last_subject {
            if s == subject {
                return l;
            }
        }
        let l = match self.by_name.get(subject) {
            Some(&l) => l,
            None => {
                let l = self.index.locals.len() as u32;
                self.by_name.insert(subject, l);
                self.index.locals.push(Local {
                    name: Arc::from(subject),
                    id: crate::block::NO_SUBJECT,
                });
                l
            }
        };
        self.last_subject = Some((subject, l));
        l
    }

    /// An intact message record with the expected sequence at `pos`.
    fn message(&mut self, pos: usize, r: &Record<'a>, dead: &FxHashSet<u64>) {
        let live = !dead.contains(&r.seq);
        let local = self.local(r.subject);
        self.index.push(pos as u32, local, r.len as u32, !live);
        if live {
            self.live += 1;
            self.live_bytes += r.len as u64;
        }
        if r.seq == self.start {
            self.first_ts = r.ts;
        }
        self.last_ts = self.last_ts.max(r.ts);
        self.last = self.last.max(Some((r.seq, r.ts)));
    }

    fn marker(&mut self, r: &Record<'_>) {
        self.last = self.last.max(Some((r.seq, r.ts)));
    }

    /// A record lost to damage, occupying no bytes at `pos`.
    fn lost(&mut self, pos: usize) {
        let end = self.index.end;
        self.index.push(pos as u32, 0, 0, true);
        self.index.end = end.max(pos as u32);
    }

    fn finish(mut self, len: usize, sealed: bool) -> Scanned {
        if self.index.count() == 0 {
            self.index.end = len.min(u32::MAX as usize) as u32;
        }
        Scanned {
            index: self.index,
            live: self.live,
            live_bytes: self.live_bytes,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            last: self.last,
            len: len as u32,
            sealed,
            bad_tail: false,
            torn_at: None,
            findings: Vec::new(),
            summary: None,
        }
    }
}

/// Find where good records resume after a bad one at `bad` (expected sequence `expected`):
/// the offset and the first sequence not lost.
fn resync(buf: &[u8], bad: usize, expected: u64) -> Option<(usize, u64)> {
    let mut p = bad + 1;
    while p + OVERHEAD <= buf.len() {
        let rest = buf.get(p..)?;
        let len = record::peek_len(rest)?;
        let seq = record::peek_seq(rest)?;
        let max_seq = expected + ((p - bad) / OVERHEAD) as u64 + 1;
        if (OVERHEAD..=rest.len()).contains(&len)
            && seq.saturating_add(1) >= expected
            && seq <= max_seq
        {
            match record::decode(rest) {
                Ok(r) if r.is_marker() => return Some((p, (r.seq + 1).max(expected))),
                Ok(r) if r.seq >= expected => return Some((p, r.seq)),
                _ => {}
            }
        }
        p += 1;
    }
    None
}

fn summary_in(buf: &[u8]) -> Option<(Summary, u64)> {
    let mut read = |at: u64, n: usize| {
        buf.get(at as usize..(at as usize).checked_add(n)?)
            .map(<[u8]>::to_vec)
    };
    seal::read_summary(buf.len() as u64, &mut read)
}

/// Scan a whole block held in `buf`. `dead`: its removed sequences; `is_last`: a torn write may
/// end it; `next_start`: the next block's first sequence (what a lost tail reaches up to).
pub(crate) fn scan(
    start: u64,
    buf: &[u8],
    dead: &FxHashSet<u64>,
    is_last: bool,
    next_start: Option<u64>,
) -> Scanned {
    let summary = summary_in(buf).filter(|(s, _)| s.start == start);
    let names: Vec<Arc<[u8]>> = summary
        .as_ref()
        .map(|(s, _)| s.subjects.iter().map(|x| x.name.clone()).collect())
        .unwrap_or_default();
    let mut b = Builder::new(start, &names);
    let mut findings = Vec::new();
    let mut report = |offset: usize, first: u64, last: u64, reason: &str| {
        findings.push(Finding {
            offset: offset as u64,
            first_seq: first,
            last_seq: last,
            reason: reason.to_string(),
        });
    };
    let (mut sealed, mut bad_tail, mut torn_at) = (false, false, None);
    let mut len = buf.len();
    let mut pos = 0usize;
    while let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) {
        let expected = b.next_seq();
        let mut incomplete = false;
        let why = match record::decode(rest) {
            Ok(r) if r.is_marker() => {
                b.marker(&r);
                pos += r.len;
                sealed = b.index.count() > 0 && pos == buf.len();
                continue;
            }
            Ok(r) if r.seq == expected => {
                b.message(pos, &r, dead);
                sealed = false;
                pos += r.len;
                continue;
            }
            Ok(_) => "record holds an unexpected sequence",
            Err(DecodeError::Incomplete) => {
                incomplete = true;
                "record truncated"
            }
            Err(DecodeError::Invalid(why)) => why,
        };
        let torn_like = incomplete || rest.iter().all(|x| *x == 0);
        match resync(buf, pos, expected) {
            None if is_last && torn_like => {
                torn_at = Some(pos);
                len = pos;
                break;
            }
            None => {
                // Up to the next block, which may start right here (the damage is in the seal).
                let upto = next_start.map_or(expected, |n| n.saturating_sub(1));
                report(pos, expected, upto, why);
                bad_tail = true;
                break;
            }
            Some((p, resume)) => {
                report(pos, expected, resume.saturating_sub(1), why);
                for _ in expected..resume {
                    b.lost(pos);
                }
                pos = p;
            }
        }
    }
    if bad_tail {
        // The damaged record's sequence was assigned: never reuse it.
        let ts = b.last.map_or(0, |l| l.1);
        b.last = b.last.max(Some((b.next_seq(), ts)));
    }
    let next = b.next_seq();
    let count = b.index.count();
    let tail_lost = next_start.filter(|n| *n > next);
    if let (Some(n), false, false) = (tail_lost, sealed, bad_tail) {
        if count > 0 {
            report(buf.len(), next, n - 1, "block ends without its seal record");
        }
    }
    let mut s = b.finish(len, sealed);
    s.bad_tail = bad_tail;
    s.torn_at = torn_at;
    s.findings = findings;
    s.summary = summary;
    s
}

/// Scan the block in `file` (`len` bytes) reading it in chunks, so memory stays small; a block
/// that is not entirely intact (or ends in a partial record) is read whole and scanned by `scan`.
pub(crate) fn scan_file(
    file: &File,
    len: u64,
    start: u64,
    dead: &FxHashSet<u64>,
    is_last: bool,
    next_start: Option<u64>,
) -> io::Result<Scanned> {
    let mut read = |at: u64, n: usize| {
        let mut v = vec![0; n];
        file.read_exact_at(&mut v, at).ok().map(|()| v)
    };
    let summary = seal::read_summary(len, &mut read).filter(|(s, _)| s.start == start);
    let names: Vec<Arc<[u8]>> = summary
        .as_ref()
        .map(|(s, _)| s.subjects.iter().map(|x| x.name.clone()).collect())
        .unwrap_or_default();
    let clean = {
        let mut b = Builder::new(start, &names);
        // Records borrow the chunk they were read in: the builder keeps owned names only.
        let mut ok = true;
        let mut sealed = false;
        let mut chunk = Chunked::new(file, len);
        while chunk.pos < len {
            let at = chunk.pos;
            let Some(r) = chunk.next_record()? else {
                ok = false;
                break;
            };
            if r.is_marker() {
                b.marker(&r);
                sealed = b.index.count() > 0 && at + r.len as u64 == len;
            } else if r.seq == b.next_seq() {
                b.message_owned(at as usize, &r, dead);
                sealed = false;
            } else {
                ok = false;
                break;
            }
        }
        ok.then(|| b.finish(len as usize, sealed))
    };
    match clean {
        Some(mut s) => {
            let next = s.index.count() as u64 + start;
            if let Some(n) = next_start.filter(|n| *n > next) {
                if !s.sealed && s.index.count() > 0 {
                    s.findings.push(Finding {
                        offset: len,
                        first_seq: next,
                        last_seq: n - 1,
                        reason: "block ends without its seal record".to_string(),
                    });
                }
            }
            s.summary = summary;
            Ok(s)
        }
        None => {
            let mut buf = vec![0; len as usize];
            file.read_exact_at(&mut buf, 0)?;
            Ok(scan(start, &buf, dead, is_last, next_start))
        }
    }
}

impl Builder<'_> {
    /// `message` for a record whose bytes do not outlive this call.
    fn message_owned(&mut self, pos: usize, r: &Record<'_>, dead: &FxHashSet<u64>) {
        let live = !dead.contains(&r.seq);
        // A few subjects: compare with each (the common case, no hashing); many: look up.
        let locals = &self.index.locals;
        let found = if locals.len() <= 8 {
            locals.iter().rposition(|l| l.name[..] == *r.subject)
        } else {
            None
        };
        let local = match found {
            Some(l) => l as u32,
            None => self.owned_local(r.subject),
        };
        self.index.push(pos as u32, local, r.len as u32, !live);
        if live {
            self.live += 1;
            self.live_bytes += r.len as u64;
        }
        if r.seq == self.start {
            self.first_ts = r.ts;
        }
        self.last_ts = self.last_ts.max(r.ts);
        self.last = self.last.max(Some((r.seq, r.ts)));
    }

    fn owned_local(&mut self, subject: &[u8]) -> u32 {
        // The summary's names are borrowed for the whole scan; names first seen in a chunk are
        // copied.
        if let Some(&l) = self.by_name.get(subject) {
            return l;
        }
        let map = self.owned.get_or_insert_with(FxHashMap::default);
        if let Some(&l) = map.get(subject) {
            return l;
        }
        let l = self.index.locals.len() as u32;
        let name: Arc<[u8]> = Arc::from(subject);
        map.insert(name.clone(), l);
        self.index.locals.push(Local {
            name,
            id: crate::block::NO_SUBJECT,
        });
        l
    }
}

/// Reads a file's records in order through a bounded buffer.
struct Chunked<'f> {
    file: &'f File,
    len: u64,
    /// File offset after the last record returned.
    pos: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
    filled: usize,
}

const CHUNK: usize = 256 * 1024;

impl<'f> Chunked<'f> {
    fn new(file: &'f File, len: u64) -> Self {
        Chunked {
            file,
            len,
            pos: 0,
            buf: vec![0; CHUNK],
            base: 0,
            filled: 0,
        }
    }

    /// The next intact record, or None if the bytes there are not one.
    fn next_record(&mut self) -> io::Result<Option<Record<'_>>> {
        loop {
            let off = (self.pos - self.base) as usize;
            let avail = self.buf.get(off..self.filled).unwrap_or_default();
            match record::decode(avail) {
                Ok(_) => break,
                Err(DecodeError::Invalid(_)) => return Ok(None),
                Err(DecodeError::Incomplete) => {
                    let have = self.base + self.filled as u64;
                    if have >= self.len {
                        return Ok(None);
                    }
                    // Move what is left to the front, grow for a large record, read more.
                    let need = record::peek_len(avail).unwrap_or(OVERHEAD).max(CHUNK);
                    self.buf.copy_within(off..self.filled, 0);
                    self.filled -= off;
                    self.base = self.pos;
                    if self.buf.len() < need {
                        if need as u64 > self.len {
                            return Ok(None);
                        }
                        self.buf.resize(need, 0);
                    }
                    let want = (self.buf.len() - self.filled).min((self.len - have) as usize);
                    let dst = self
                        .buf
                        .get_mut(self.filled..self.filled + want)
                        .unwrap_or_default();
                    self.file.read_exact_at(dst, have)?;
                    self.filled += want;
                }
            }
        }
        let off = (self.pos - self.base) as usize;
        let avail = self.buf.get(off..self.filled).unwrap_or_default();
        match record::decode(avail) {
            Ok(r) => {
                self.pos += r.len as u64;
                Ok(Some(r))
            }
            Err(_) => Ok(None),
        }
    }
}
