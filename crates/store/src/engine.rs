//! The engine both stores share: blocks (a few figures each, always in memory, and a record index
//! loaded on demand into a bounded cache), per-subject state, limits, purge and compact, over a
//! `Backend` of blocks.
//!
//! Invariants: there is always at least one block and the last one takes appends (its index is
//! always loaded); block `k` holds the records of sequences `start_k ..` contiguously, so a
//! record's index is `seq - start`; a block whose messages are all removed is dropped whole unless
//! it is the last; a block's `first_live` is exactly its first live sequence; `first_seq` is the
//! first live sequence (or `last_seq + 1` when empty); the backend is told before memory changes.
//! Only sealed blocks (ending with their index and summary records) are ever evicted: their index
//! can be read back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::block::{Block, Index, NO_SUBJECT};
use crate::record::{self, OVERHEAD};
use crate::scan::{self, MAX_LOST};
use crate::seal::{self, IndexRec, SubjectSum, Summary};
use crate::subjects::{is_all, Subjects};
use crate::{Corruption, Discard, Limits, Result, StoreError, StoredMsg, StreamState};

/// Where blocks of records live: memory or files.
pub(crate) trait Backend: Send {
    /// Name of the store for errors (its directory, or "memory").
    fn name(&self) -> &Arc<str>;
    /// The file holding block `start`, for damage reports.
    fn block_path(&self, start: u64) -> PathBuf;
    /// Create an empty block starting at `start`; it becomes the one appended to.
    fn create_block(&mut self, start: u64) -> Result<()>;
    /// Append `rec` at byte `at` (the block's current length) of block `start`.
    fn write(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()>;
    /// Bytes `at .. at + len` of block `start` (a message, read ahead for sequential reads).
    fn read(&self, start: u64, at: u32, len: u32) -> Result<Bytes>;
    /// Bytes `at .. at + len` of block `start`, read on their own (seal records, verification).
    fn read_raw(&self, start: u64, at: u32, len: u32) -> Result<Bytes>;
    /// Overwrite bytes in place (erase).
    fn overwrite(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()>;
    /// Record that `seq` in block `start` is removed.
    fn note_deleted(&mut self, start: u64, seq: u64) -> Result<()>;
    /// The removed sequences of block `start`, from its delete records.
    fn deleted_in(&self, start: u64) -> Result<FxHashSet<u64>>;
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
    /// Whether the index of a sealed block may be dropped (and read back from the block).
    fn evictable(&self) -> bool;
    /// A read of block `start` failed its checksum: check the whole block soon.
    fn note_suspect(&self, _start: u64) {}
}

/// Unloaded blocks remember up to this many subject ids, to skip them in filtered scans.
const FEW_MAX: usize = 16;

pub(crate) struct Engine<B: Backend> {
    pub backend: B,
    pub limits: Limits,
    block_size: u64,
    /// Sealed blocks whose index stays loaded (the last block's is always loaded).
    cache_blocks: usize,
    blocks: VecDeque<Block>,
    subjects: Subjects,
    msgs: u64,
    bytes: u64,
    first_seq: u64,
    last_seq: u64,
    last_ts: i64,
    first_ts: Option<i64>,
    lost: BTreeSet<u64>,
    /// Damage found since open (by a read, verification or the scrub).
    damage: Vec<Corruption>,
    buf: Vec<u8>,
    tick: u64,
    /// (global id, local) of the last append, for the next one on the same subject.
    last_local: Option<(u32, u32)>,
    /// Index loads since open (for tests and stats).
    loads: u64,
    /// The block `block_for` found last.
    hint: std::cell::Cell<usize>,
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

/// Cache and verification figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub blocks: usize,
    /// Blocks whose record index is in memory (the last one included).
    pub loaded: usize,
    /// Heap bytes of the loaded indexes.
    pub index_bytes: usize,
    /// Indexes read back from blocks since open.
    pub loads: u64,
    /// Sealed blocks whose every record was checked since open.
    pub verified: usize,
}

/// The first set bit at or after `from` in a dead bitmap's complement: the first live record.
fn first_live_in(idx: &Index, from: usize) -> Option<usize> {
    (from..idx.count()).find(|i| !idx.is_dead(*i))
}

impl<B: Backend> Engine<B> {
    /// An engine over recovered blocks (`parts.blocks` may be empty: a first block is created).
    pub fn new(
        mut backend: B,
        limits: Limits,
        block_size: u64,
        cache_blocks: usize,
        parts: Parts,
    ) -> Result<Self> {
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
            cache_blocks,
            blocks,
            subjects: parts.subjects,
            msgs,
            bytes: parts.bytes,
            first_seq: 0,
            last_seq: parts.last_seq,
            last_ts: parts.last_ts,
            first_ts: None,
            lost: parts.lost,
            damage: Vec::new(),
            buf: Vec::new(),
            tick: 0,
            last_local: None,
            loads: 0,
            hint: std::cell::Cell::new(0),
            closed: false,
        };
        e.first_seq = e
            .next_live(0, e.last_seq)?
            .unwrap_or_else(|| e.empty_first());
        // Blocks that are neither sealed nor the last (damaged, or written by an older version)
        // get their index and summary now, so that they need not stay in memory.
        for bi in 0..e.blocks.len().saturating_sub(1) {
            if e.blocks.get(bi).is_some_and(|b| !b.sealed() && b.count > 0) {
                e.seal_block(bi, None)?;
            }
        }
        e.evict_over(usize::MAX);
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

    /// The last block starting at or before `seq` (None: `seq` is before every block). The
    /// block found last time is tried first: reads in order stay in one block for a long time.
    fn block_for(&self, seq: u64) -> Option<usize> {
        let h = self.hint.get();
        if let Some(b) = self.blocks.get(h) {
            if b.start <= seq && self.blocks.get(h + 1).is_none_or(|n| seq < n.start) {
                return Some(h);
            }
        }
        let bi = self
            .blocks
            .partition_point(|b| b.start <= seq)
            .checked_sub(1)?;
        self.hint.set(bi);
        Some(bi)
    }

    /// (block index, record index) of `seq` if it is in some block.
    fn locate(&self, seq: u64) -> Option<(usize, usize)> {
        let bi = self.block_for(seq)?;
        let b = self.blocks.get(bi)?;
        let i = (seq - b.start) as usize;
        (i < b.count as usize).then_some((bi, i))
    }

    fn index_of(&self, bi: usize) -> Result<&Index> {
        self.blocks
            .get(bi)
            .and_then(|b| b.index.as_deref())
            .ok_or(StoreError::NotFound)
    }

    fn live(&mut self, seq: u64) -> Result<Option<(usize, usize)>> {
        let Some((bi, i)) = self.locate(seq) else {
            return Ok(None);
        };
        match self.blocks.get(bi) {
            Some(b) if b.live > 0 && seq >= b.first_live => {}
            _ => return Ok(None),
        }
        self.ensure(bi)?;
        Ok((!self.index_of(bi)?.is_dead(i)).then_some((bi, i)))
    }

    /// Load block `bi`'s index if it is not in memory, and mark it used.
    fn ensure(&mut self, bi: usize) -> Result<()> {
        self.tick += 1;
        let tick = self.tick;
        let Some(b) = self.blocks.get_mut(bi) else {
            return Err(StoreError::NotFound);
        };
        b.used = tick;
        if b.index.is_some() {
            return Ok(());
        }
        self.loads += 1;
        if let Err(why) = self.read_index(bi) {
            let start = self.blocks.get(bi).map_or(0, |b| b.start);
            tracing::warn!(store = %self.backend.name(), block = start, why, "block index unreadable; verifying the block");
            self.verify_block_at(bi)?;
        }
        self.evict_over(bi);
        Ok(())
    }

    /// Read a sealed block's index back from its index and summary records.
    fn read_index(&mut self, bi: usize) -> std::result::Result<(), &'static str> {
        let b = self.blocks.get(bi).ok_or("no such block")?;
        let (start, count, seal_at, len) = (b.start, b.count, b.seal_at, b.len);
        if seal_at == 0 || seal_at >= len {
            return Err("block is not sealed");
        }
        let raw = self
            .backend
            .read_raw(start, seal_at, len - seal_at)
            .map_err(|_| "reading the seal failed")?;
        let ilen = record::peek_len(&raw).ok_or("index record cut short")?;
        let irec = raw
            .get(..ilen)
            .and_then(seal::decode_index)
            .ok_or("index record damaged")?;
        let summary = raw
            .get(ilen..)
            .and_then(|r| record::decode(r).ok())
            .and_then(|r| Summary::decode(r.payload))
            .ok_or("summary record damaged")?;
        if irec.start != start
            || summary.start != start
            || irec.offsets.len() != count as usize
            || summary.count != count
        {
            return Err("seal does not match the block");
        }
        let next = start + u64::from(count);
        let lost_here = self.lost.range(start..next).count() as u64;
        // Delete records are read only if some message of the block was removed.
        let dead = if u64::from(b.live) + lost_here < u64::from(count) {
            self.backend
                .deleted_in(start)
                .map_err(|_| "reading the delete records failed")?
        } else {
            FxHashSet::default()
        };
        let mut idx = Index {
            offsets: irec.offsets,
            subj: crate::block::LocalIds::from_vec(irec.locals),
            locals: summary
                .subjects
                .iter()
                .map(|s| crate::block::Local {
                    id: self.subjects.id(&s.name).unwrap_or(NO_SUBJECT),
                    name: self.subjects_name(&s.name),
                })
                .collect(),
            dead: vec![0; (count as usize).div_ceil(64)],
            end: irec.end,
            appends: None,
        };
        for seq in dead.iter().chain(self.lost.range(start..next)) {
            if (start..next).contains(seq) {
                idx.set_dead((seq - start) as usize);
            }
        }
        let first = first_live_in(&idx, 0);
        let b = self.blocks.get_mut(bi).ok_or("no such block")?;
        // The block's figures and its index agree (checked in tests; the count costs a pass).
        let (live, live_bytes) = if cfg!(debug_assertions) {
            (0..count as usize)
                .filter(|i| !idx.is_dead(*i))
                .fold((0u32, 0u64), |(n, bytes), i| {
                    (n + 1, bytes + u64::from(idx.range(i).1))
                })
        } else {
            (b.live, b.live_bytes)
        };
        debug_assert_eq!((live, live_bytes), (b.live, b.live_bytes), "block {start}");
        if (live, live_bytes) != (b.live, b.live_bytes) {
            tracing::warn!(
                block = start,
                live,
                was = b.live,
                "block index disagrees with the block's figures"
            );
            self.msgs = (self.msgs + u64::from(live)).saturating_sub(u64::from(b.live));
            self.bytes = (self.bytes + live_bytes).saturating_sub(b.live_bytes);
            (b.live, b.live_bytes) = (live, live_bytes);
        }
        b.first_live = first.map_or(next, |i| start + i as u64);
        b.index = Some(Box::new(idx));
        b.few = None;
        Ok(())
    }

    /// The global table's copy of a subject name, so loaded blocks share it.
    fn subjects_name(&self, name: &Arc<[u8]>) -> Arc<[u8]> {
        self.subjects
            .id(name)
            .and_then(|id| self.subjects.get(id))
            .map_or_else(|| name.clone(), |s| s.name.clone())
    }

    /// Drop the least recently used sealed indexes beyond the cache size (never `keep`).
    fn evict_over(&mut self, keep: usize) {
        if !self.backend.evictable() {
            return;
        }
        loop {
            let last = self.blocks.len().saturating_sub(1);
            let mut n = 0;
            let mut victim: Option<(u64, usize)> = None;
            for (k, b) in self.blocks.iter().enumerate() {
                if k == last || b.index.is_none() || !b.sealed() {
                    continue;
                }
                n += 1;
                if k != keep && victim.is_none_or(|(u, _)| b.used < u) {
                    victim = Some((b.used, k));
                }
            }
            let Some((_, v)) = victim.filter(|_| n > self.cache_blocks) else {
                return;
            };
            if let Some(b) = self.blocks.get_mut(v) {
                if let Some(idx) = b.index.take() {
                    b.few = (idx.locals.len() <= FEW_MAX)
                        .then(|| idx.locals.iter().map(|l| l.id).collect());
                }
            }
        }
    }

    /// Whether block `bi` may hold a live record whose subject satisfies `pred`.
    fn may_match(&self, bi: usize, pred: &mut impl FnMut(u32) -> bool) -> bool {
        match self.blocks.get(bi) {
            Some(b) if b.live == 0 => false,
            Some(b) if b.index.is_some() => true,
            Some(b) => match &b.few {
                Some(ids) if !ids.is_empty() => ids.iter().any(|id| *id != NO_SUBJECT && pred(*id)),
                _ => true,
            },
            None => false,
        }
    }

    /// First live sequence in `from ..= to`, any subject.
    fn next_live(&mut self, from: u64, to: u64) -> Result<Option<u64>> {
        let mut bi = self.block_for(from).unwrap_or(0);
        while let Some(b) = self.blocks.get(bi) {
            if b.start > to {
                return Ok(None);
            }
            if b.live > 0 && from < b.next_seq() {
                if from <= b.first_live {
                    return Ok((b.first_live <= to).then_some(b.first_live));
                }
                self.ensure(bi)?;
                let idx = self.index_of(bi)?;
                let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
                if let Some(i) = first_live_in(idx, (from - b.start) as usize) {
                    let seq = b.start + i as u64;
                    return Ok((seq <= to).then_some(seq));
                }
            }
            bi += 1;
        }
        Ok(None)
    }

    /// First live sequence in `from ..= to` whose subject id satisfies `pred`.
    fn scan_fwd(
        &mut self,
        from: u64,
        to: u64,
        mut pred: impl FnMut(u32) -> bool,
    ) -> Result<Option<u64>> {
        let mut bi = self.block_for(from).unwrap_or(0);
        while let Some(b) = self.blocks.get(bi) {
            if b.start > to {
                return Ok(None);
            }
            let lo_seq = from.max(b.first_live);
            if lo_seq < b.next_seq() && self.may_match(bi, &mut pred) {
                self.ensure(bi)?;
                let idx = self.index_of(bi)?;
                let start = self.blocks.get(bi).map_or(0, |b| b.start);
                let lo = (lo_seq - start) as usize;
                let hi = ((to - start) as usize).saturating_add(1).min(idx.count());
                for i in lo..hi {
                    if !idx.is_dead(i) && pred(idx.subject(i)) {
                        return Ok(Some(start + i as u64));
                    }
                }
            }
            bi += 1;
        }
        Ok(None)
    }

    /// Last live sequence in `from ..= to` whose subject id satisfies `pred`.
    fn scan_back(
        &mut self,
        from: u64,
        to: u64,
        mut pred: impl FnMut(u32) -> bool,
    ) -> Result<Option<u64>> {
        let Some(mut bi) = self.block_for(to) else {
            return Ok(None);
        };
        loop {
            let Some(b) = self.blocks.get(bi) else {
                return Ok(None);
            };
            if b.next_seq() <= from {
                return Ok(None);
            }
            if self.may_match(bi, &mut pred) {
                self.ensure(bi)?;
                let idx = self.index_of(bi)?;
                let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
                let lo = from.max(b.first_live).saturating_sub(b.start) as usize;
                let hi = ((to - b.start) as usize).saturating_add(1).min(idx.count());
                for i in (lo..hi).rev() {
                    if !idx.is_dead(i) && pred(idx.subject(i)) {
                        return Ok(Some(b.start + i as u64));
                    }
                }
            }
            let Some(prev) = bi.checked_sub(1) else {
                return Ok(None);
            };
            bi = prev;
        }
    }

    /// Tighten and return the first sequence of subject `id`.
    fn subject_first(&mut self, id: u32) -> Result<Option<u64>> {
        let Some(s) = self.subjects.get(id) else {
            return Ok(None);
        };
        let (from, to) = (s.first.max(self.first_seq), s.last);
        let seq = self.scan_fwd(from, to, |x| x == id)?;
        if let (Some(q), Some(s)) = (seq, self.subjects.get_mut(id)) {
            s.first = q;
        }
        Ok(seq)
    }

    /// Tighten and return the last sequence of subject `id`.
    fn subject_last(&mut self, id: u32) -> Result<Option<u64>> {
        let Some(s) = self.subjects.get(id) else {
            return Ok(None);
        };
        let (from, to) = (s.first.max(self.first_seq), s.last);
        let seq = self.scan_back(from, to, |x| x == id)?;
        if let (Some(q), Some(s)) = (seq, self.subjects.get_mut(id)) {
            s.last = q;
        }
        Ok(seq)
    }

    fn read_at(&mut self, bi: usize, i: usize) -> Result<StoredMsg> {
        let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
        let seq = b.start + i as u64;
        let (start, sealed) = (b.start, b.sealed());
        let (at, len) = self.index_of(bi)?.range(i);
        let raw = self.backend.read(start, at, len)?;
        let why = match record::decode(&raw) {
            Ok(r) if r.seq == seq && !r.is_marker() => {
                let [s, h, p] = record::field_ranges(&r);
                let ts = r.ts;
                let part = |(at, len): (usize, usize)| raw.slice(at..at + len);
                return Ok(StoredMsg {
                    seq,
                    ts,
                    subject: part(s),
                    headers: (h.1 > 0).then(|| part(h)),
                    payload: part(p),
                });
            }
            Ok(_) => "record holds another sequence",
            Err(record::DecodeError::Incomplete) => "record truncated",
            Err(record::DecodeError::Invalid(why)) => why,
        };
        if sealed {
            if let Some(b) = self.blocks.get_mut(bi) {
                b.suspect = true;
                b.verified = false;
            }
            self.backend.note_suspect(start);
        }
        Err(self.err_corrupt(seq, why))
    }

    pub fn load(&mut self, seq: u64) -> Result<StoredMsg> {
        self.check_open()?;
        if self.lost.contains(&seq) {
            return Err(self.err_corrupt(seq, "lost on recovery"));
        }
        if seq > self.last_seq || seq == 0 && self.last_seq == 0 {
            return Err(StoreError::Eof);
        }
        self.load_seq(seq)
    }

    fn load_seq(&mut self, seq: u64) -> Result<StoredMsg> {
        if let Some(m) = self.point_read(seq) {
            return Ok(m);
        }
        self.load_found(seq)
    }

    /// Read `seq`, which a scan just found live (its block's index is loaded).
    fn load_found(&mut self, seq: u64) -> Result<StoredMsg> {
        let (bi, i) = self.live(seq)?.ok_or(StoreError::NotFound)?;
        self.read_at(bi, i)
    }

    /// A message of a sealed block whose index is not loaded and from which nothing was removed,
    /// read on its own: its offset from the index record, then the record. None when that does
    /// not apply, or the record does not check out (the caller then loads the index, which is
    /// checksummed as a whole, and reads it again).
    fn point_read(&mut self, seq: u64) -> Option<StoredMsg> {
        let (bi, i) = self.locate(seq)?;
        let b = self.blocks.get(bi)?;
        if b.index.is_some() || !b.sealed() || self.lost.contains(&seq) {
            return None;
        }
        let lost_here = self.lost.range(b.start..b.next_seq()).count() as u64;
        if u64::from(b.live) + lost_here != u64::from(b.count) {
            return None;
        }
        let (start, seal_at, count) = (b.start, b.seal_at, b.count as usize);
        let u32_at = |raw: &Bytes, k: usize| {
            raw.get(k..k + 4)
                .and_then(|x| x.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let pos = seal_at.checked_add(seal::OFFSETS_AT + 4 * i as u32)?;
        let two = i + 1 < count;
        let raw = self
            .backend
            .read_raw(start, pos, if two { 8 } else { 4 })
            .ok()?;
        let at = u32_at(&raw, 0)?;
        let end = if two {
            u32_at(&raw, 4)?
        } else {
            // The last record ends where the index record says its records end.
            let raw = self
                .backend
                .read_raw(start, seal_at + seal::END_AT, 4)
                .ok()?;
            u32_at(&raw, 0)?
        };
        if end <= at || end > seal_at {
            return None;
        }
        let raw = self.backend.read(start, at, end - at).ok()?;
        match record::decode(&raw) {
            Ok(r) if r.seq == seq && !r.is_marker() => {
                let [s, h, p] = record::field_ranges(&r);
                let ts = r.ts;
                let part = |(at, len): (usize, usize)| raw.slice(at..at + len);
                Some(StoredMsg {
                    seq,
                    ts,
                    subject: part(s),
                    headers: (h.1 > 0).then(|| part(h)),
                    payload: part(p),
                })
            }
            _ => None,
        }
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
            self.scan_back(self.first_seq, self.last_seq, |_| true)?
        } else {
            let mut best = None;
            for id in self.matching(filter) {
                best = best.max(self.subject_last(id)?);
            }
            best
        };
        self.load_found(seq.ok_or(StoreError::NotFound)?)
    }

    pub fn load_next(&mut self, filter: &[u8], start: u64) -> Result<StoredMsg> {
        self.check_open()?;
        let start = start.max(self.first_seq);
        if self.msgs == 0 || start > self.last_seq {
            return Err(StoreError::Eof);
        }
        let seq = if is_all(filter) {
            self.next_live(start, self.last_seq)?
        } else {
            match self.matching(filter).as_slice() {
                [] => None,
                [id] => {
                    let id = *id;
                    let first = self.subject_first(id)?.unwrap_or(u64::MAX);
                    let last = self.subjects.get(id).map_or(0, |s| s.last);
                    self.scan_fwd(start.max(first), last, |x| x == id)?
                }
                _ => {
                    let mask = self.subjects.match_mask(filter);
                    let hit = |x: u32| mask.get(x as usize).copied().unwrap_or(false);
                    self.scan_fwd(start, self.last_seq, hit)?
                }
            }
        };
        self.load_found(seq.ok_or(StoreError::Eof)?)
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
            .is_some_and(|b| b.count > 0 && u64::from(b.len) + size > self.block_size);
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
        let name = self.subjects.get(id).map(|s| &s.name);
        let Some(b) = self.blocks.back_mut() else {
            return Err(StoreError::Closed);
        };
        let Some(idx) = b.index.as_deref_mut() else {
            return Err(StoreError::Closed);
        };
        let local = match (self.last_local, name) {
            (Some((gid, l)), Some(n))
                if gid == id
                    && idx
                        .locals
                        .get(l as usize)
                        .is_some_and(|x| Arc::ptr_eq(&x.name, n)) =>
            {
                l
            }
            (_, Some(n)) => idx.local_for(n, id),
            (_, None) => 0,
        };
        self.last_local = Some((id, local));
        idx.push(at, local, size as u32, false);
        if b.live == 0 {
            b.first_live = seq;
        }
        if b.count == 0 {
            b.first_ts = ts;
        }
        b.count += 1;
        b.len = b.len.max(at + size as u32);
        b.live += 1;
        b.live_bytes += size;
        b.last_ts = b.last_ts.max(ts);
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
            let mut freed = 0;
            if let Some(id) = id.filter(|_| at_subject_limit) {
                if let Some(first) = self.subject_first(id)? {
                    if let Some((bi, i)) = self.live(first)? {
                        freed = u64::from(self.index_of(bi)?.range(i).1);
                    }
                }
            }
            if self.bytes + size - freed > l.max_bytes as u64 {
                return Err(StoreError::MaxBytes);
            }
        }
        Ok(())
    }

    /// The summary and index records of block `bi`, whose index is loaded; `upto`: the first
    /// sequence after the block's range (its lost tail included).
    fn seal_records(&self, bi: usize, upto: u64) -> Result<(Summary, IndexRec)> {
        let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
        let idx = self.index_of(bi)?;
        let start = b.start;
        let lost: Vec<u64> = self.lost.range(start..upto.max(start)).copied().collect();
        let mut lost_ranges: Vec<(u64, u64)> = Vec::new();
        for &q in &lost {
            match lost_ranges.last_mut() {
                Some((_, hi)) if *hi + 1 == q => *hi = q,
                _ => lost_ranges.push((q, q)),
            }
        }
        let mut subjects: Vec<SubjectSum> = idx
            .locals
            .iter()
            .map(|l| SubjectSum {
                name: l.name.clone(),
                count: 0,
                first: 0,
                last: 0,
            })
            .collect();
        let mut msg_bytes = 0u64;
        let mut lost_it = lost.iter().peekable();
        for i in 0..idx.count() {
            let seq = start + i as u64;
            while lost_it.peek().is_some_and(|q| **q < seq) {
                lost_it.next();
            }
            if lost_it.peek() == Some(&&seq) {
                continue;
            }
            msg_bytes += u64::from(idx.range(i).1);
            if let Some(s) = subjects.get_mut(idx.local(i) as usize) {
                if s.count == 0 {
                    s.first = seq;
                }
                s.count += 1;
                s.last = seq;
            }
        }
        let summary = Summary {
            start,
            count: b.count,
            msg_bytes,
            first_ts: if lost.first() == Some(&start) {
                i64::MIN
            } else {
                b.first_ts
            },
            last_ts: b.last_ts,
            index_at: b.len,
            lost: lost_ranges,
            subjects,
        };
        let irec = IndexRec {
            start,
            offsets: idx.offsets.clone(),
            locals: idx.subj.to_vec(),
            end: idx.end,
        };
        Ok((summary, irec))
    }

    /// Write block `bi`'s index and summary records at its end and make it durable; `upto` is
    /// the next block's start (default: the block's own end).
    fn seal_block(&mut self, bi: usize, upto: Option<u64>) -> Result<()> {
        let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
        let upto = upto
            .or_else(|| self.blocks.get(bi + 1).map(|n| n.start))
            .unwrap_or(b.next_seq())
            .max(b.next_seq());
        let (start, at, ts) = (b.start, b.len, b.last_ts.max(0));
        let (summary, irec) = self.seal_records(bi, upto)?;
        let mut buf = Vec::new();
        irec.encode(&mut buf, upto - 1, ts);
        let index_len = buf.len();
        summary.encode(&mut buf, upto - 1, ts);
        if u64::from(at) + buf.len() as u64 > u64::from(u32::MAX) {
            return Err(StoreError::Io {
                store: self.backend.name().clone(),
                what: "seal block",
                error: Arc::from("block too large"),
            });
        }
        self.backend.write(start, at, &buf)?;
        self.backend.seal(start)?;
        debug_assert!(index_len > 0);
        if let Some(b) = self.blocks.get_mut(bi) {
            b.len = at + buf.len() as u32;
            b.seal_at = at;
            if let Some(idx) = b.index.as_deref_mut() {
                idx.appends = None;
            }
        }
        Ok(())
    }

    /// Seal the last block and start a new one at `seq`.
    fn roll(&mut self, seq: u64) -> Result<()> {
        let Some(bi) = self.blocks.len().checked_sub(1) else {
            return Ok(());
        };
        let Some(old) = self.blocks.get(bi) else {
            return Ok(());
        };
        let (start, live, at) = (old.start, old.live, old.len);
        if self.backend.evictable() {
            self.seal_block(bi, Some(seq))?;
            if let Some(b) = self.blocks.get_mut(bi) {
                // Written in this run, but not read back: the scrub checks it like any other.
                b.verified = false;
            }
        } else {
            // Blocks that are never evicted (memory) need no index: a plain seal marker.
            let mut buf = Vec::new();
            record::encode_marker(&mut buf, self.last_seq, self.last_ts);
            self.backend.write(start, at, &buf)?;
            self.backend.seal(start)?;
            if let Some(b) = self.blocks.get_mut(bi) {
                b.len += buf.len() as u32;
                if let Some(idx) = b.index.as_deref_mut() {
                    idx.appends = None;
                }
            }
        }
        self.backend.create_block(seq)?;
        self.blocks.push_back(Block::new(seq));
        self.last_local = None;
        if live == 0 {
            self.backend.remove_block(start)?;
            self.blocks.remove(bi);
        }
        self.evict_over(usize::MAX);
        Ok(())
    }

    fn enforce_subject(&mut self, id: u32) -> Result<()> {
        let max = self.limits.max_msgs_per_subject;
        if max <= 0 {
            return Ok(());
        }
        while self.subjects.get(id).is_some_and(|s| s.msgs > max as u64) {
            let Some(first) = self.subject_first(id)? else {
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
        let Some((bi, i)) = self.live(seq)? else {
            return Ok(false);
        };
        let last_block = bi + 1 == self.blocks.len();
        let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
        let idx = self.index_of(bi)?;
        let (start, (at, len), id) = (b.start, idx.range(i), idx.subject(i));
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
            if let Some(idx) = b.index.as_deref_mut() {
                idx.set_dead(i);
                if seq == b.first_live {
                    b.first_live =
                        first_live_in(idx, i + 1).map_or(b.next_seq(), |k| start + k as u64);
                }
            }
            b.live = b.live.saturating_sub(1);
            b.live_bytes = b.live_bytes.saturating_sub(u64::from(len));
        }
        self.forget(seq, id, u64::from(len))?;
        Ok(true)
    }

    /// Account for a removed message in the totals and subject state.
    fn forget(&mut self, seq: u64, id: u32, size: u64) -> Result<()> {
        self.msgs -= 1;
        self.bytes = self.bytes.saturating_sub(size);
        self.subjects.remove(id, seq);
        if seq == self.first_seq {
            self.first_ts = None;
            self.first_seq = if self.msgs == 0 {
                self.last_seq + 1
            } else {
                self.next_live(seq, self.last_seq)?
                    .unwrap_or(self.last_seq + 1)
            };
        }
        Ok(())
    }

    /// Remove block `bi` whole (never the last); returns the live messages it held.
    fn drop_block(&mut self, bi: usize) -> Result<u64> {
        self.ensure(bi)?;
        let Some(b) = self.blocks.get(bi) else {
            return Ok(0);
        };
        self.backend.remove_block(b.start)?;
        let Some(b) = self.blocks.remove(bi) else {
            return Ok(0);
        };
        let mut n = 0;
        if let Some(idx) = b.index.as_deref() {
            for i in 0..idx.count() {
                if !idx.is_dead(i) {
                    n += 1;
                    let seq = b.start + i as u64;
                    self.msgs -= 1;
                    self.bytes = self.bytes.saturating_sub(u64::from(idx.range(i).1));
                    self.subjects.remove(idx.subject(i), seq);
                }
            }
        }
        if (b.start..b.next_seq()).contains(&self.first_seq) {
            self.first_ts = None;
            self.first_seq = self
                .next_live(b.next_seq(), self.last_seq)?
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
                if let Some(idx) = b.index.as_deref_mut() {
                    idx.end = b.len;
                }
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
        self.last_local = None;
        if let Some(idx) = self.blocks.back_mut().and_then(|b| b.index.as_deref_mut()) {
            for l in &mut idx.locals {
                l.id = NO_SUBJECT;
            }
        }
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
            let Some(s) = self.scan_fwd(from, last, hit)? else {
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
            let known = self
                .locate(self.first_seq)
                .and_then(|(bi, i)| self.blocks.get(bi).filter(|_| i == 0))
                .map(|b| b.first_ts)
                .filter(|ts| *ts != i64::MIN);
            self.first_ts = match known {
                Some(ts) => Some(ts),
                None => self.load_seq(self.first_seq).ok().map(|m| m.ts),
            };
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

    pub fn deleted(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        if self.msgs == 0 {
            return out;
        }
        let mut seq = self.first_seq;
        while seq <= self.last_seq {
            let Some((bi, i)) = self.locate(seq) else {
                out.push(seq);
                seq += 1;
                continue;
            };
            let Some(b) = self.blocks.get(bi) else {
                break;
            };
            let (start, count, whole) = (b.start, b.count as usize, b.live == b.count);
            let hi = ((self.last_seq - start) as usize + 1).min(count);
            if !whole {
                match self.ensure(bi).and_then(|()| self.index_of(bi)) {
                    Ok(idx) => out.extend(
                        (i..hi)
                            .filter(|j| idx.is_dead(*j))
                            .map(|j| start + j as u64),
                    ),
                    Err(e) => {
                        tracing::warn!(store = %self.backend.name(), block = start, error = %e, "deleted sequences of a block unknown");
                    }
                }
            }
            seq = start + hi as u64;
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

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            blocks: self.blocks.len(),
            loaded: self.blocks.iter().filter(|b| b.index.is_some()).count(),
            index_bytes: self
                .blocks
                .iter()
                .filter_map(|b| b.index.as_deref())
                .map(Index::heap_bytes)
                .sum(),
            loads: self.loads,
            verified: self
                .blocks
                .iter()
                .filter(|b| b.sealed() && b.verified)
                .count(),
        }
    }

    /// Damage found since the store was opened.
    pub fn damage(&self) -> &[Corruption] {
        &self.damage
    }

    /// The next sealed block to verify (suspects first, or only): its start and length.
    pub fn scrub_next(&self, suspects_only: bool) -> Option<(u64, u32)> {
        let last = self.blocks.len().saturating_sub(1);
        let candidates = || {
            self.blocks
                .iter()
                .take(last)
                .filter(|b| b.sealed() && !b.verified)
        };
        candidates()
            .find(|b| b.suspect)
            .or_else(|| candidates().find(|_| !suspects_only))
            .map(|b| (b.start, b.len))
    }

    /// The scrub could not read block `start`: leave it for the next pass.
    pub fn skip_scrub(&mut self, start: u64) {
        if let Some(b) = self.blocks.iter_mut().find(|b| b.start == start) {
            b.verified = true;
            b.suspect = false;
        }
    }

    /// The scrub read block `start` (`len` bytes): `clean` if every record checked out.
    /// Otherwise it is verified here, under the lock, and what it finds is applied.
    pub fn scrub_done(&mut self, start: u64, len: u32, clean: bool) -> Result<()> {
        let Some(bi) = self.blocks.iter().position(|b| b.start == start) else {
            return Ok(());
        };
        let Some(b) = self.blocks.get_mut(bi) else {
            return Ok(());
        };
        if clean && b.len == len {
            b.verified = true;
            b.suspect = false;
            return Ok(());
        }
        self.verify_block_at(bi)
    }

    /// Start a new scrub pass: every sealed block is checked again.
    pub fn unverify_all(&mut self) {
        for b in &mut self.blocks {
            b.verified = false;
        }
    }

    /// Read block `bi` whole and check every record; records found damaged become lost (never
    /// served), and the totals and per-subject counts drop by the live messages they held.
    fn verify_block_at(&mut self, bi: usize) -> Result<()> {
        if self.blocks.get(bi).is_some_and(|b| b.index.is_none()) {
            // What the block held before (from its seal), to know which subjects lose messages.
            let _ = self.read_index(bi);
        }
        let b = self.blocks.get(bi).ok_or(StoreError::NotFound)?;
        let (start, len, count) = (b.start, b.len, b.count);
        let next = start + u64::from(count);
        let next_start = self.blocks.get(bi + 1).map(|n| n.start);
        let raw = self.backend.read_raw(start, 0, len)?;
        let dead = self.backend.deleted_in(start)?;
        let mut sc = scan::scan(start, &raw, &dead, false, next_start);
        drop(raw);
        // The index as it stands: live messages per subject before this check.
        let before: Option<FxHashMap<u32, u64>> = b.index.as_deref().map(|idx| {
            let mut m = FxHashMap::default();
            for i in 0..idx.count() {
                if !idx.is_dead(i) {
                    *m.entry(idx.subject(i)).or_insert(0) += 1;
                }
            }
            m
        });
        // Damage not seen before.
        let mut fresh = Vec::new();
        for f in &sc.findings {
            let new_seqs = (f.first_seq..=f.last_seq)
                .take(MAX_LOST as usize)
                .filter(|q| !self.lost.contains(q))
                .count();
            let path = self.backend.block_path(start);
            let known = self
                .damage
                .iter()
                .any(|d| d.file == path && d.offset == f.offset);
            if new_seqs > 0 || !known {
                fresh.push(Corruption {
                    file: path,
                    offset: f.offset,
                    first_seq: f.first_seq,
                    last_seq: f.last_seq,
                    reason: f.reason.clone(),
                });
            }
        }
        let ranges: Vec<(u64, u64)> = sc.lost().collect();
        for (a, z) in ranges {
            self.lost.extend((a..=z).take(MAX_LOST as usize));
        }
        // Pad a block whose tail was lost, so its sequences stay in it (dead).
        while sc.index.count() < count as usize {
            let at = sc.index.end;
            sc.index.push(at, 0, 0, true);
        }
        for q in self.lost.range(start..next) {
            sc.index.set_dead((q - start) as usize);
        }
        for l in &mut sc.index.locals {
            if let Some(id) = self.subjects.id(&l.name) {
                l.id = id;
                l.name = self.subjects_name(&l.name);
            }
        }
        let mut live = 0u32;
        let mut live_bytes = 0u64;
        let mut after: FxHashMap<u32, u64> = FxHashMap::default();
        for i in 0..sc.index.count() {
            if !sc.index.is_dead(i) {
                live += 1;
                live_bytes += u64::from(sc.index.range(i).1);
                *after.entry(sc.index.subject(i)).or_insert(0) += 1;
            }
        }
        let b = self.blocks.get_mut(bi).ok_or(StoreError::NotFound)?;
        self.msgs = (self.msgs + u64::from(live)).saturating_sub(u64::from(b.live));
        self.bytes = (self.bytes + live_bytes).saturating_sub(b.live_bytes);
        match &before {
            Some(before) => {
                for (&id, &n) in before {
                    let now = after.get(&id).copied().unwrap_or(0);
                    if now < n && id != NO_SUBJECT {
                        self.subjects.remove_n(id, n - now);
                    }
                }
            }
            None if live < b.live => {
                tracing::warn!(store = %self.backend.name(), block = start, "per-subject counts of the damaged block are not known; they may be too high");
            }
            None => {}
        }
        b.live = live;
        b.live_bytes = live_bytes;
        b.first_live = first_live_in(&sc.index, 0).map_or(next, |i| start + i as u64);
        if sc.summary.is_none() {
            // Its seal is unreadable: the index stays in memory from now on.
            b.seal_at = 0;
        }
        b.index = Some(Box::new(sc.index));
        b.few = None;
        b.verified = true;
        b.suspect = false;
        for c in &fresh {
            tracing::warn!(corruption = %c, "stream store damaged");
        }
        self.damage.extend(fresh);
        if self.first_seq >= start && self.first_seq < next && !self.lost.is_empty() {
            self.first_ts = None;
            self.first_seq = self
                .next_live(start, self.last_seq)?
                .unwrap_or(self.last_seq + 1);
        }
        Ok(())
    }

    /// Verify every sealed block now (for tests and the offline path), returning what was found.
    pub fn verify_all(&mut self) -> Result<Vec<Corruption>> {
        let before = self.damage.len();
        let last = self.blocks.len().saturating_sub(1);
        for bi in 0..last {
            if self.blocks.get(bi).is_some_and(|b| b.sealed()) {
                self.verify_block_at(bi)?;
            }
        }
        self.evict_over(usize::MAX);
        Ok(self.damage.get(before..).unwrap_or_default().to_vec())
    }
}
