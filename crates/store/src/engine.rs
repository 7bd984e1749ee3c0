//! The engine both stores share: the compact in-memory index (per block: record offsets, subject
//! ids, a deleted bitmap), per-subject state, limits, purge and compact, over a `Backend` of blocks.
//!
//! Invariants: there is always at least one block and the last one takes appends; block `k` holds
//! the records of sequences `start_k ..` contiguously, so a record's index is `seq - start`; a block
//! whose messages are all removed is dropped whole unless it is the last; `first_seq` is the first
//! live sequence (or `last_seq + 1` when empty); the backend is told before memory changes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::record::{self, OVERHEAD};
use crate::subjects::{is_all, Subjects};
use crate::{Discard, Limits, Result, StoreError, StoredMsg, StreamState};

/// Where blocks of records live: memory or files.
pub(crate) trait Backend: Send {
    /// Name of the store for errors (its directory, or "memory").
    fn name(&self) -> &Arc<str>;
    /// Create an empty block starting at `start`; it becomes the one appended to.
    fn create_block(&mut self, start: u64) -> Result<()>;
    /// Append `rec` at byte `at` (the block's current length) of block `start`.
    fn write(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()>;
    /// Bytes `at .. at + len` of block `start`.
    fn read(&self, start: u64, at: u32, len: u32) -> Result<Bytes>;
    /// Overwrite bytes in place (erase).
    fn overwrite(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()>;
    /// Record that `seq` in block `start` is removed.
    fn note_deleted(&mut self, start: u64, seq: u64) -> Result<()>;
    /// Remove a block and its delete records.
    fn remove_block(&mut self, start: u64) -> Result<()>;
    /// Make block `start` durable; called before the engine moves appends to a new block.
    fn seal(&mut self, start: u64) -> Result<()>;
    /// Messages up to `seq` were written to the last block.
    fn written(&mut self, seq: u64);
    /// Make removals durable: `explicit` for user operations (honouring the sync policy),
    /// otherwise unconditionally.
    fn sync_meta(&mut self, explicit: bool) -> Result<()>;
    /// Make everything durable; `through` is the last sequence written.
    fn sync_all(&mut self, through: u64) -> Result<()>;
    /// Closing: record the block summary `(start, bytes, next_seq)` for the next open.
    fn close(&mut self, blocks: Vec<(u64, u64, u64)>);
    /// Remove all stored data.
    fn destroy(&mut self) -> Result<()>;
}

pub(crate) const NO_SUBJECT: u32 = u32::MAX;

/// Index of one block.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub start: u64,
    /// Byte offset of each record, by `seq - start`.
    pub offsets: Vec<u32>,
    /// Subject id of each record (`NO_SUBJECT` for records lost to corruption).
    pub subj: Vec<u32>,
    /// Bitmap of removed (or lost) records.
    pub dead: Vec<u64>,
    pub live: u32,
    /// End of the last message record.
    pub end: u32,
    /// Bytes written, markers included.
    pub len: u32,
    /// Newest timestamp in the block.
    pub last_ts: i64,
}

impl Block {
    pub fn new(start: u64) -> Self {
        Block {
            start,
            last_ts: i64::MIN,
            ..Block::default()
        }
    }

    pub fn count(&self) -> usize {
        self.offsets.len()
    }

    /// Sequence after the block's last record.
    pub fn next_seq(&self) -> u64 {
        self.start + self.count() as u64
    }

    pub fn is_dead(&self, i: usize) -> bool {
        self.dead
            .get(i / 64)
            .is_none_or(|w| w & (1 << (i % 64)) != 0)
    }

    fn set_dead(&mut self, i: usize) {
        if let Some(w) = self.dead.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// Add a record at byte `at`, `size` bytes long, live or already removed.
    pub fn push(&mut self, at: u32, subj: u32, size: u32, ts: i64, live: bool) {
        let i = self.count();
        if i & 63 == 0 {
            self.dead.push(0);
        }
        self.offsets.push(at);
        self.subj.push(subj);
        if live {
            self.live += 1;
        } else {
            self.set_dead(i);
        }
        self.end = at + size;
        self.len = self.len.max(self.end);
        self.last_ts = self.last_ts.max(ts);
    }

    /// Add a record lost to corruption, occupying no bytes at `at`.
    pub fn push_lost(&mut self, at: u32) {
        self.push(at, NO_SUBJECT, 0, i64::MIN, false);
    }

    /// Mark record `i` removed (it must be live).
    pub fn kill(&mut self, i: usize) {
        self.set_dead(i);
        self.live = self.live.saturating_sub(1);
    }

    /// (offset, length) of record `i`.
    pub fn range(&self, i: usize) -> (u32, u32) {
        let at = self.offsets.get(i).copied().unwrap_or(0);
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.end);
        (at, end.saturating_sub(at))
    }

    fn subject(&self, i: usize) -> u32 {
        self.subj.get(i).copied().unwrap_or(NO_SUBJECT)
    }
}

pub(crate) struct Engine<B: Backend> {
    pub backend: B,
    pub limits: Limits,
    block_size: u64,
    blocks: VecDeque<Block>,
    subjects: Subjects,
    msgs: u64,
    bytes: u64,
    first_seq: u64,
    last_seq: u64,
    last_ts: i64,
    first_ts: Option<i64>,
    lost: BTreeSet<u64>,
    buf: Vec<u8>,
    pub closed: bool,
}

/// What recovery hands the engine.
pub(crate) struct Parts {
    pub blocks: Vec<Block>,
    pub subjects: Subjects,
    pub bytes: u64,
    pub last_seq: u64,
    pub last_ts: i64,
    pub lost: BTreeSet<u64>,
    /// Start a new block for appends at `last_seq + 1` (the last one is sealed or damaged).
    pub roll: bool,
}

impl<B: Backend> Engine<B> {
    /// An engine over recovered blocks (`parts.blocks` may be empty: a first block is created).
    pub fn new(mut backend: B, limits: Limits, block_size: u64, parts: Parts) -> Result<Self> {
        let mut blocks: VecDeque<Block> = parts.blocks.into();
        if blocks.is_empty() || parts.roll {
            let start = parts.last_seq + 1;
            backend.create_block(start)?;
            blocks.push_back(Block::new(start));
        }
        // Blocks left with no messages are dropped whole (the last one takes appends).
        let mut k = 0;
        while k + 1 < blocks.len() {
            match blocks.get(k) {
                Some(b) if b.live == 0 => {
                    backend.remove_block(b.start)?;
                    blocks.remove(k);
                }
                _ => k += 1,
            }
        }
        let msgs = blocks.iter().map(|b| u64::from(b.live)).sum();
        let mut e = Engine {
            backend,
            limits,
            block_size: block_size.max(OVERHEAD as u64),
            blocks,
            subjects: parts.subjects,
            msgs,
            bytes: parts.bytes,
            first_seq: 0,
            last_seq: parts.last_seq,
            last_ts: parts.last_ts,
            first_ts: None,
            lost: parts.lost,
            buf: Vec::new(),
            closed: false,
        };
        e.first_seq = e
            .scan_fwd(0, e.last_seq, |_| true)
            .unwrap_or(e.empty_first());
        e.enforce_all()?;
        Ok(e)
    }

    fn empty_first(&self) -> u64 {
        if self.last_seq == 0 {
            0
        } else {
            self.last_seq + 1
        }
    }

    fn err_corrupt(&self, seq: u64, reason: &str) -> StoreError {
        tracing::warn!(store = %self.backend.name(), seq, reason, "corrupt message not served");
        StoreError::Corrupt {
            store: self.backend.name().clone(),
            seq,
            reason: Arc::from(reason),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// (block index, record index) of `seq` if it is in some block.
    fn locate(&self, seq: u64) -> Option<(usize, usize)> {
        let bi = self
            .blocks
            .partition_point(|b| b.start <= seq)
            .checked_sub(1)?;
        let b = self.blocks.get(bi)?;
        let i = (seq - b.start) as usize;
        (i < b.count()).then_some((bi, i))
    }

    fn live(&self, seq: u64) -> Option<(usize, usize)> {
        let (bi, i) = self.locate(seq)?;
        let b = self.blocks.get(bi)?;
        (!b.is_dead(i)).then_some((bi, i))
    }

    /// First live sequence in `from ..= to` whose subject id satisfies `pred`.
    fn scan_fwd(&self, from: u64, to: u64, mut pred: impl FnMut(u32) -> bool) -> Option<u64> {
        let mut bi = self
            .blocks
            .partition_point(|b| b.start <= from)
            .saturating_sub(1);
        while let Some(b) = self.blocks.get(bi) {
            if b.start > to {
                return None;
            }
            if b.live > 0 {
                let lo = from.saturating_sub(b.start) as usize;
                let hi = ((to - b.start) as usize).saturating_add(1).min(b.count());
                for i in lo..hi {
                    if !b.is_dead(i) && pred(b.subject(i)) {
                        return Some(b.start + i as u64);
                    }
                }
            }
            bi += 1;
        }
        None
    }

    /// Last live sequence in `from ..= to` whose subject id satisfies `pred`.
    fn scan_back(&self, from: u64, to: u64, mut pred: impl FnMut(u32) -> bool) -> Option<u64> {
        let mut bi = self
            .blocks
            .partition_point(|b| b.start <= to)
            .checked_sub(1)?;
        loop {
            let b = self.blocks.get(bi)?;
            if b.next_seq() <= from {
                return None;
            }
            if b.live > 0 {
                let lo = from.saturating_sub(b.start) as usize;
                let hi = ((to - b.start) as usize).saturating_add(1).min(b.count());
                for i in (lo..hi).rev() {
                    if !b.is_dead(i) && pred(b.subject(i)) {
                        return Some(b.start + i as u64);
                    }
                }
            }
            bi = bi.checked_sub(1)?;
        }
    }

    /// Tighten and return the first sequence of subject `id`.
    fn subject_first(&mut self, id: u32) -> Option<u64> {
        let s = self.subjects.get(id)?;
        let seq = self.scan_fwd(s.first.max(self.first_seq), s.last, |x| x == id)?;
        if let Some(s) = self.subjects.get_mut(id) {
            s.first = seq;
        }
        Some(seq)
    }

    /// Tighten and return the last sequence of subject `id`.
    fn subject_last(&mut self, id: u32) -> Option<u64> {
        let s = self.subjects.get(id)?;
        let seq = self.scan_back(s.first.max(self.first_seq), s.last, |x| x == id)?;
        if let Some(s) = self.subjects.get_mut(id) {
            s.last = seq;
        }
        Some(seq)
    }

    fn read_at(&self, bi: usize, i: usize) -> Result<StoredMsg> {
        let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
        let seq = b.start + i as u64;
        let (at, len) = b.range(i);
        let raw = self.backend.read(b.start, at, len)?;
        let (ts, ranges) = match record::decode(&raw) {
            Ok(r) if r.seq == seq && !r.is_marker() => (r.ts, record::field_ranges(&r)),
            Ok(_) => return Err(self.err_corrupt(seq, "record holds another sequence")),
            Err(record::DecodeError::Incomplete) => {
                return Err(self.err_corrupt(seq, "record truncated"))
            }
            Err(record::DecodeError::Invalid(why)) => return Err(self.err_corrupt(seq, why)),
        };
        let part = |(at, len): (usize, usize)| raw.slice(at..at + len);
        let [s, h, p] = ranges;
        Ok(StoredMsg {
            seq,
            ts,
            subject: part(s),
            headers: (h.1 > 0).then(|| part(h)),
            payload: part(p),
        })
    }

    pub fn load(&self, seq: u64) -> Result<StoredMsg> {
        self.check_open()?;
        if self.lost.contains(&seq) {
            return Err(self.err_corrupt(seq, "lost on recovery"));
        }
        if seq > self.last_seq || seq == 0 && self.last_seq == 0 {
            return Err(StoreError::Eof);
        }
        let (bi, i) = self.live(seq).ok_or(StoreError::NotFound)?;
        self.read_at(bi, i)
    }

    fn load_seq(&self, seq: u64) -> Result<StoredMsg> {
        let (bi, i) = self.live(seq).ok_or(StoreError::NotFound)?;
        self.read_at(bi, i)
    }

    /// Ids of subjects matching a (non-"all") filter.
    fn matching(&self, filter: &[u8]) -> Vec<u32> {
        if natrium_subjects::is_literal(filter) {
            self.subjects.id(filter).into_iter().collect()
        } else {
            self.subjects.matching(filter)
        }
    }

    pub fn load_last(&mut self, filter: &[u8]) -> Result<StoredMsg> {
        self.check_open()?;
        let seq = if is_all(filter) {
            self.scan_back(self.first_seq, self.last_seq, |_| true)
        } else {
            let ids = self.matching(filter);
            ids.into_iter().filter_map(|id| self.subject_last(id)).max()
        };
        self.load_seq(seq.ok_or(StoreError::NotFound)?)
    }

    pub fn load_next(&mut self, filter: &[u8], start: u64) -> Result<StoredMsg> {
        self.check_open()?;
        let start = start.max(self.first_seq);
        if self.msgs == 0 || start > self.last_seq {
            return Err(StoreError::Eof);
        }
        let seq = if is_all(filter) {
            self.scan_fwd(start, self.last_seq, |_| true)
        } else {
            match self.matching(filter).as_slice() {
                [] => None,
                [id] => {
                    let id = *id;
                    let first = self.subject_first(id).unwrap_or(u64::MAX);
                    let last = self.subjects.get(id).map_or(0, |s| s.last);
                    self.scan_fwd(start.max(first), last, |x| x == id)
                }
                _ => {
                    let mask = self.subjects.match_mask(filter);
                    let hit = |x: u32| mask.get(x as usize).copied().unwrap_or(false);
                    self.scan_fwd(start, self.last_seq, hit)
                }
            }
        };
        self.load_seq(seq.ok_or(StoreError::Eof)?)
    }

    pub fn store(
        &mut self,
        subject: &[u8],
        headers: Option<&[u8]>,
        payload: &[u8],
        ts: i64,
    ) -> Result<u64> {
        self.check_open()?;
        if subject.is_empty() || subject.len() > usize::from(u16::MAX) {
            return Err(StoreError::InvalidSubject);
        }
        let hdr = headers.unwrap_or_default();
        let l = &self.limits;
        if l.max_msg_size > 0 && (hdr.len() + payload.len()) as u64 > l.max_msg_size as u64 {
            return Err(StoreError::MsgTooLarge);
        }
        let size = crate::msg_size(subject, headers, payload);
        if size > u64::from(u32::MAX) / 2 {
            return Err(StoreError::MsgTooLarge);
        }
        if self.limits.discard == Discard::New {
            self.check_discard_new(subject, size)?;
        }
        let seq = self.last_seq + 1;
        let needs_roll = self
            .blocks
            .back()
            .is_some_and(|b| b.count() > 0 && u64::from(b.len) + size > self.block_size);
        if needs_roll {
            self.roll(seq)?;
        }
        let Some(b) = self.blocks.back() else {
            return Err(StoreError::Closed);
        };
        let (start, at) = (b.start, b.len);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        record::encode(&mut buf, seq, ts, subject, hdr, payload);
        let res = self.backend.write(start, at, &buf);
        self.buf = buf;
        res?;
        let id = self.subjects.add(subject, seq);
        if let Some(b) = self.blocks.back_mut() {
            b.push(at, id, size as u32, ts, true);
        }
        self.msgs += 1;
        self.bytes += size;
        self.last_seq = seq;
        self.last_ts = ts;
        if self.msgs == 1 {
            self.first_seq = seq;
            self.first_ts = Some(ts);
        }
        self.backend.written(seq);
        self.enforce_subject(id)?;
        self.enforce_totals()?;
        Ok(seq)
    }

    fn check_discard_new(&mut self, subject: &[u8], size: u64) -> Result<()> {
        let l = self.limits.clone();
        let id = self.subjects.id(subject);
        let at_subject_limit = l.max_msgs_per_subject > 0
            && id
                .and_then(|id| self.subjects.get(id))
                .is_some_and(|s| s.msgs >= l.max_msgs_per_subject as u64);
        if at_subject_limit && l.discard_new_per_subject {
            return Err(StoreError::MaxMsgsPerSubject);
        }
        // At the subject limit the new message replaces that subject's oldest one.
        if l.max_msgs > 0 && self.msgs >= l.max_msgs as u64 && !at_subject_limit {
            return Err(StoreError::MaxMsgs);
        }
        if l.max_bytes > 0 && self.bytes + size > l.max_bytes as u64 {
            let freed = match id.filter(|_| at_subject_limit) {
                Some(id) => self
                    .subject_first(id)
                    .and_then(|s| self.live(s))
                    .and_then(|(bi, i)| self.blocks.get(bi).map(|b| u64::from(b.range(i).1)))
                    .unwrap_or(0),
                None => 0,
            };
            if self.bytes + size - freed > l.max_bytes as u64 {
                return Err(StoreError::MaxBytes);
            }
        }
        Ok(())
    }

    /// Seal the last block and start a new one at `seq`.
    fn roll(&mut self, seq: u64) -> Result<()> {
        let Some(old) = self.blocks.back() else {
            return Ok(());
        };
        let (start, at, live) = (old.start, old.len, old.live);
        let mut buf = Vec::new();
        record::encode_marker(&mut buf, self.last_seq, self.last_ts);
        self.backend.write(start, at, &buf)?;
        if let Some(b) = self.blocks.back_mut() {
            b.len += buf.len() as u32;
        }
        self.backend.seal(start)?;
        self.backend.create_block(seq)?;
        self.blocks.push_back(Block::new(seq));
        if live == 0 {
            self.backend.remove_block(start)?;
            let n = self.blocks.len();
            self.blocks.remove(n - 2);
        }
        Ok(())
    }

    fn enforce_subject(&mut self, id: u32) -> Result<()> {
        let max = self.limits.max_msgs_per_subject;
        if max <= 0 {
            return Ok(());
        }
        while self.subjects.get(id).is_some_and(|s| s.msgs > max as u64) {
            let Some(first) = self.subject_first(id) else {
                break;
            };
            if !self.remove(first, false)? {
                break;
            }
        }
        Ok(())
    }

    fn enforce_totals(&mut self) -> Result<()> {
        let (max_msgs, max_bytes) = (self.limits.max_msgs, self.limits.max_bytes);
        while max_msgs > 0 && self.msgs > max_msgs as u64
            || max_bytes > 0 && self.bytes > max_bytes as u64
        {
            if !self.remove(self.first_seq, false)? {
                break;
            }
        }
        Ok(())
    }

    /// Apply every limit but age (after recovery and on config updates).
    fn enforce_all(&mut self) -> Result<()> {
        if self.limits.max_msgs_per_subject > 0 {
            let max = self.limits.max_msgs_per_subject as u64;
            let over: Vec<u32> = self
                .subjects
                .matching(b"")
                .into_iter()
                .filter(|id| self.subjects.get(*id).is_some_and(|s| s.msgs > max))
                .collect();
            for id in over {
                self.enforce_subject(id)?;
            }
        }
        self.enforce_totals()
    }

    /// Remove one live message; the backend is told first.
    pub fn remove(&mut self, seq: u64, erase: bool) -> Result<bool> {
        self.check_open()?;
        let Some((bi, i)) = self.live(seq) else {
            return Ok(false);
        };
        let last_block = bi + 1 == self.blocks.len();
        let Some(b) = self.blocks.get(bi) else {
            return Ok(false);
        };
        let (start, (at, len), id) = (b.start, b.range(i), b.subject(i));
        if b.live == 1 && !last_block {
            return self.drop_block(bi).map(|n| n > 0);
        }
        self.backend.note_deleted(start, seq)?;
        if erase {
            let raw = self.backend.read(start, at, len)?;
            if record::decode(&raw).is_ok() {
                self.backend.overwrite(start, at, &record::erased(&raw))?;
            }
        }
        if let Some(b) = self.blocks.get_mut(bi) {
            b.kill(i);
        }
        self.forget(seq, id, u64::from(len));
        Ok(true)
    }

    /// Account for a removed message in the totals and subject state.
    fn forget(&mut self, seq: u64, id: u32, size: u64) {
        self.msgs -= 1;
        self.bytes = self.bytes.saturating_sub(size);
        self.subjects.remove(id, seq);
        if seq == self.first_seq {
            self.first_ts = None;
            self.first_seq = if self.msgs == 0 {
                self.last_seq + 1
            } else {
                self.scan_fwd(seq, self.last_seq, |_| true)
                    .unwrap_or(self.last_seq + 1)
            };
        }
    }

    /// Remove block `bi` whole (never the last); returns the live messages it held.
    fn drop_block(&mut self, bi: usize) -> Result<u64> {
        let Some(b) = self.blocks.get(bi) else {
            return Ok(0);
        };
        self.backend.remove_block(b.start)?;
        let Some(b) = self.blocks.remove(bi) else {
            return Ok(0);
        };
        let mut n = 0;
        for i in 0..b.count() {
            if !b.is_dead(i) {
                n += 1;
                let seq = b.start + i as u64;
                self.msgs -= 1;
                self.bytes = self.bytes.saturating_sub(u64::from(b.range(i).1));
                self.subjects.remove(b.subject(i), seq);
            }
        }
        if (b.start..b.next_seq()).contains(&self.first_seq) {
            self.first_ts = None;
            self.first_seq = self
                .scan_fwd(b.next_seq(), self.last_seq, |_| true)
                .unwrap_or(self.last_seq + 1);
        }
        Ok(n)
    }

    pub fn compact(&mut self, seq: u64) -> Result<u64> {
        self.check_open()?;
        if seq == 0 || seq > self.last_seq {
            return self.reset_to(seq.max(self.last_seq + 1));
        }
        let mut purged = 0;
        while self.blocks.len() > 1 && self.blocks.front().is_some_and(|b| b.next_seq() <= seq) {
            purged += self.drop_block(0)?;
        }
        while self.msgs > 0 && self.first_seq < seq {
            if !self.remove(self.first_seq, false)? {
                break;
            }
            purged += 1;
        }
        self.lost = self.lost.split_off(&seq);
        self.backend.sync_meta(true)?;
        Ok(purged)
    }

    /// Remove everything; the next message gets `floor` (> last_seq). A marker at the start of the
    /// new block makes this atomic on disk: recovery ignores blocks before such a block.
    fn reset_to(&mut self, floor: u64) -> Result<u64> {
        let purged = self.msgs;
        let reuse = self.blocks.back().is_some_and(|b| b.start == floor);
        let mut buf = Vec::new();
        record::encode_marker(&mut buf, floor - 1, self.last_ts);
        if !reuse {
            self.backend.create_block(floor)?;
            self.blocks.push_back(Block::new(floor));
        }
        if self.blocks.back().is_some_and(|b| b.len == 0) {
            self.backend.write(floor, 0, &buf)?;
            if let Some(b) = self.blocks.back_mut() {
                b.len = buf.len() as u32;
            }
        }
        self.backend.seal(floor)?;
        while self.blocks.len() > 1 {
            if let Some(b) = self.blocks.front() {
                self.backend.remove_block(b.start)?;
            }
            self.blocks.pop_front();
        }
        self.backend.sync_meta(true)?;
        self.subjects.clear();
        self.lost.clear();
        self.msgs = 0;
        self.bytes = 0;
        self.last_seq = floor - 1;
        self.first_seq = floor;
        self.first_ts = None;
        Ok(purged)
    }

    pub fn purge_ex(&mut self, filter: &[u8], seq: u64, keep: u64) -> Result<u64> {
        self.check_open()?;
        if seq > 1 && keep > 0 {
            return Err(StoreError::PurgeArgMismatch);
        }
        if is_all(filter) {
            return if seq > 1 {
                self.compact(seq)
            } else if keep == 0 {
                self.compact(0)
            } else if keep >= self.msgs {
                Ok(0)
            } else {
                self.compact(self.last_seq - keep + 1)
            };
        }
        let ids = self.matching(filter);
        let total: u64 = ids
            .iter()
            .filter_map(|id| self.subjects.get(*id))
            .map(|s| s.msgs)
            .sum();
        if total == 0 || keep >= total {
            return Ok(0);
        }
        let to_remove = total - keep;
        let first = ids
            .iter()
            .filter_map(|id| self.subjects.get(*id))
            .map(|s| s.first)
            .min()
            .unwrap_or(self.first_seq);
        let last = if seq > 1 { seq - 1 } else { self.last_seq };
        let mut mask = vec![false; ids.iter().max().map_or(0, |m| *m as usize + 1)];
        for id in &ids {
            if let Some(m) = mask.get_mut(*id as usize) {
                *m = true;
            }
        }
        let hit = |x: u32| mask.get(x as usize).copied().unwrap_or(false);
        let mut victims = Vec::new();
        let mut from = first;
        while (victims.len() as u64) < to_remove {
            let Some(s) = self.scan_fwd(from, last, hit) else {
                break;
            };
            victims.push(s);
            from = s + 1;
        }
        let mut purged = 0;
        for s in victims {
            if self.remove(s, false)? {
                purged += 1;
            }
        }
        self.backend.sync_meta(true)?;
        Ok(purged)
    }

    pub fn first_ts(&mut self) -> Option<i64> {
        if self.msgs == 0 {
            return None;
        }
        if self.first_ts.is_none() {
            self.first_ts = self.load_seq(self.first_seq).ok().map(|m| m.ts);
        }
        self.first_ts
    }

    pub fn expire(&mut self, now: i64) -> Result<u64> {
        self.check_open()?;
        let max_age = i64::try_from(self.limits.max_age.as_nanos()).unwrap_or(i64::MAX);
        if max_age == 0 {
            return Ok(0);
        }
        let cutoff = now.saturating_sub(max_age);
        let mut n = 0;
        while self.msgs > 0 {
            if self.blocks.len() > 1 && self.blocks.front().is_some_and(|b| b.last_ts <= cutoff) {
                n += self.drop_block(0)?;
                continue;
            }
            match self.first_ts() {
                Some(ts) if ts <= cutoff => {
                    if !self.remove(self.first_seq, false)? {
                        break;
                    }
                    n += 1;
                }
                _ => break,
            }
        }
        Ok(n)
    }

    pub fn state(&mut self) -> StreamState {
        let first_ts = self.first_ts().unwrap_or(0);
        let num_deleted = if self.msgs == 0 {
            0
        } else {
            (self.last_seq - self.first_seq + 1).saturating_sub(self.msgs)
        };
        StreamState {
            msgs: self.msgs,
            bytes: self.bytes,
            first_seq: if self.msgs == 0 {
                self.empty_first()
            } else {
                self.first_seq
            },
            first_ts,
            last_seq: self.last_seq,
            last_ts: if self.last_seq == 0 { 0 } else { self.last_ts },
            num_subjects: self.subjects.len() as u64,
            num_deleted,
            lost: self.lost.iter().copied().collect(),
        }
    }

    pub fn deleted(&self) -> Vec<u64> {
        let mut out = Vec::new();
        if self.msgs == 0 {
            return out;
        }
        let mut seq = self.first_seq;
        while seq <= self.last_seq {
            match self.locate(seq) {
                Some((bi, i)) => {
                    if let Some(b) = self.blocks.get(bi) {
                        let hi = ((self.last_seq - b.start) as usize + 1).min(b.count());
                        out.extend(
                            (i..hi)
                                .filter(|j| b.is_dead(*j))
                                .map(|j| b.start + j as u64),
                        );
                        seq = b.start + hi as u64;
                    }
                }
                None => {
                    out.push(seq);
                    seq += 1;
                }
            }
        }
        out
    }

    pub fn subjects_state(&self, filter: &[u8]) -> BTreeMap<Vec<u8>, u64> {
        let ids = if is_all(filter) {
            self.subjects.matching(b"")
        } else {
            self.matching(filter)
        };
        ids.into_iter()
            .filter_map(|id| self.subjects.get(id))
            .map(|s| (s.name.to_vec(), s.msgs))
            .collect()
    }

    pub fn update_limits(&mut self, limits: Limits) -> Result<()> {
        self.check_open()?;
        self.backend.sync_meta(false)?;
        self.limits = limits;
        self.enforce_all()?;
        self.backend.sync_meta(true)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// (start, bytes, next sequence) of every block, for the file store's index.
    pub fn block_summary(&self) -> Vec<(u64, u64, u64)> {
        self.blocks
            .iter()
            .map(|b| (b.start, u64::from(b.len), b.next_seq()))
            .collect()
    }
}
