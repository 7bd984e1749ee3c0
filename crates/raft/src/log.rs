//! A group's Raft log on disk: segment files of checksummed records (one entry each), the vote
//! and the log's metadata (last purged id, damage guard) in checksummed document slots. Appends
//! are written at once and made durable by a syncer thread (group commit: one fdatasync covers
//! everything written before it); openraft is told an append is flushed only after its sync.
//!
//! Recovery reads every segment: a torn record at the very end (a write the crash cut short,
//! never acknowledged) is cut off; a bad record with intact data after it, or a vote or
//! metadata slot that fails its check, is damage: the log is cut at the damage and the node
//! keeps a guard that stops it from voting until its log, synced, again holds everything a
//! leader may have counted on it for (see [`LogStore::leader_matched`]). The ids and places of
//! the entries between the last purge (snapshot) and the end stay in memory, their bodies only
//! for the newest [`CACHE_BYTES`]: older ones are read back from their segment.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use natrium_store::DocFile;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, StorageError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Framed};
use crate::{NodeId, TypeConfig};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Bodies of the newest entries kept in memory, in encoded bytes: followers replicate and
/// everyone applies from the tail. Between snapshots a group holds up to ~20,000 entries, so
/// with all of them in memory a stream of 128 KiB object-store chunks held 2.5 GiB per node.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Errors opening a log.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("raft log {dir}: {what}")]
    Invalid { dir: PathBuf, what: String },
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries read back intact.
    pub entries: u64,
    /// Bytes of a torn last record cut off.
    pub torn_bytes: u64,
    /// Damage found (a bad record before good data, or an unreadable vote): the index the log
    /// was cut at.
    pub damaged_at: Option<u64>,
}

/// The log's metadata document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    last_purged: Option<LogId<NodeId>>,
    /// Damage guard: (highest term the node may have known before the damage, `u64::MAX`
    /// when its vote was unreadable; the index the log was cut at). The node refuses to vote
    /// until its synced log holds an entry of a later term than `.0`, or matches a leader's
    /// up to that leader's commit index (see `Mem::repair_to`).
    guard: Option<(u64, u64)>,
}

struct Mem {
    /// Index of `ids[0]` (meaningful when non-empty).
    first: u64,
    /// Every entry's id, from `first` to the end.
    ids: VecDeque<LogId<NodeId>>,
    /// Where each entry is: (segment number, offset of its record, body length).
    pos: VecDeque<(u64, u64, u32)>,
    /// The newest entries themselves (the last `cache.len()` of `ids`), and their body bytes.
    cache: VecDeque<Entry<TypeConfig>>,
    cache_bytes: usize,
    cache_limit: usize,
    meta: Meta,
    vote: Option<Vote<NodeId>>,
    /// A vote was saved since the log opened (`vote` is not the one found on disk).
    voted_here: bool,
    committed: Option<LogId<NodeId>>,
    /// The last entry known to be synced (kept while guarded).
    synced: Option<LogId<NodeId>>,
    /// While guarded: the highest commit index a leader announced, and the highest index up
    /// to which this log is known to match a leader's (a successful AppendEntries).
    repair_to: Option<u64>,
    matched: Option<u64>,
}

impl Mem {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.ids.back().copied().or(self.meta.last_purged)
    }

    /// Index after the last entry.
    fn end(&self) -> u64 {
        self.first + self.ids.len() as u64
    }

    /// Index of `cache[0]`.
    fn cache_first(&self) -> u64 {
        self.end() - self.cache.len() as u64
    }

    fn push(&mut self, e: Entry<TypeConfig>, at: (u64, u64, u32)) {
        if self.ids.is_empty() {
            self.first = e.log_id.index;
        }
        self.ids.push_back(e.log_id);
        self.pos.push_back(at);
        self.cache.push_back(e);
        self.cache_bytes += at.2 as usize;
        while self.cache_bytes > self.cache_limit {
            let i = self.ids.len() - self.cache.len();
            if self.cache.pop_front().is_none() {
                break;
            }
            self.cache_bytes -= self.pos.get(i).map_or(0, |p| p.2 as usize);
        }
    }

    /// Keeps the first `keep` entries.
    fn truncate(&mut self, keep: usize) {
        let drop = self.ids.len().saturating_sub(keep);
        for _ in 0..drop.min(self.cache.len()) {
            self.cache.pop_back();
            let i = self.ids.len() - 1;
            self.cache_bytes -= self.pos.get(i).map_or(0, |p| p.2 as usize);
            self.ids.pop_back();
            self.pos.pop_back();
        }
        self.ids.truncate(keep);
        self.pos.truncate(keep);
    }

    /// Forgets the first entry.
    fn pop_front(&mut self) {
        if self.cache.len() == self.ids.len() && self.cache.pop_front().is_some() {
            self.cache_bytes -= self.pos.front().map_or(0, |p| p.2 as usize);
        }
        self.ids.pop_front();
        self.pos.pop_front();
        self.first += 1;
    }
}

struct Writer {
    /// Number of the active segment.
    seg: u64,
    file: Arc<File>,
    len: u64,
    buf: Vec<u8>,
}

type Flushed = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A queued sync: the file to sync and whom to tell.
type SyncRequest = (Arc<File>, Flushed);

struct Inner {
    dir: PathBuf,
    mem: Mutex<Mem>,
    writer: Mutex<Writer>,
    vote_doc: Mutex<DocFile>,
    meta_doc: Mutex<DocFile>,
    sync_tx: Mutex<Option<mpsc::Sender<SyncRequest>>>,
    /// The member marker still to write (at the first vote this log saves).
    marker: Mutex<Option<PathBuf>>,
}

/// A group's log; clones share it (openraft reads through a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.seg"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl LogStore {
    /// Opens (creating) the log in `dir` and reads it back.
    pub fn open(dir: &Path) -> Result<(LogStore, Recovered), LogStoreError> {
        Self::open_with_cache(dir, CACHE_BYTES)
    }

    /// [`LogStore::open`] keeping at most `cache_limit` bytes of entry bodies in memory.
    pub fn open_with_cache(
        dir: &Path,
        cache_limit: usize,
    ) -> Result<(LogStore, Recovered), LogStoreError> {
        let err = |source| LogStoreError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        // Made durably (each new level's parent synced): the log's entries are acknowledged
        // only once synced, and a directory entry lost to a power cut would take them along.
        natrium_store::create_dir_durable(dir).map_err(err)?;
        let (mut vote_doc, vote_body) = DocFile::open(dir, "vote").map_err(err)?;
        let (mut meta_doc, meta_body) = DocFile::open(dir, "meta").map_err(err)?;
        // A slot that held a document and fails its check now may have been the newest: the
        // other one is older (a vote of an earlier term, a guard not yet written).
        let vote_suspect = vote_doc.suspect();
        let meta_suspect = meta_doc.suspect();
        let meta: Meta = match meta_body {
            Some(b) => serde_json::from_slice(&b).map_err(|e| LogStoreError::Invalid {
                dir: dir.to_path_buf(),
                what: format!("metadata: {e}"),
            })?,
            None => Meta::default(),
        };
        // A vote document is a vote or `null` (none cast yet); anything else is unreadable.
        let vote: Result<Option<Vote<NodeId>>, _> = match &vote_body {
            Some(b) => serde_json::from_slice(b),
            None => Ok(None),
        };
        let vote_unreadable = vote.is_err();
        let vote = vote.unwrap_or_default();
        // Both slots of each document hold one from here on (the current one written again, a
        // `null` vote when none was cast): a slot cut to nothing is then always seen as damage
        // (`DocFile::suspect`), even beside a document written only once before.
        if !vote_suspect && !vote_unreadable {
            let body = serde_json::to_vec(&vote).unwrap_or_default();
            while vote_doc.generation() < 2 {
                vote_doc.write(&body, true).map_err(err)?;
            }
        }
        if !meta_suspect {
            let body = serde_json::to_vec(&meta).unwrap_or_default();
            while meta_doc.generation() < 2 {
                meta_doc.write(&body, true).map_err(err)?;
            }
        }
        let mut rec = Recovered::default();
        let mut mem = Mem {
            first: 0,
            ids: VecDeque::new(),
            pos: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_limit,
            meta: meta.clone(),
            vote,
            voted_here: false,
            committed: None,
            synced: None,
            repair_to: None,
            matched: None,
        };
        let segs = segments(dir).map_err(err)?;
        let purged = meta.last_purged.map(|l| l.index);
        let mut damage: Option<(u64, u64)> = None;
        let mut cut: Option<(u64, u64)> = None;
        'segs: for (i, &seg) in segs.iter().enumerate() {
            let mut buf = Vec::new();
            File::open(seg_path(dir, seg))
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(err)?;
            let last_seg = i + 1 == segs.len();
            let mut off = 0usize;
            while off < buf.len() {
                let rest = buf.get(off..).unwrap_or_default();
                // The first entry follows the purged ones; with none purged the log may start
                // at 0 (openraft's initial membership) or 1.
                let next_index = match (mem.ids.back(), purged) {
                    (Some(id), _) => Some(id.index + 1),
                    (None, Some(p)) => Some(p + 1),
                    (None, None) => None,
                };
                let mut bad = false;
                match codec::unframe(rest) {
                    Framed::Record(body, n) => {
                        let entry: Option<Entry<TypeConfig>> = codec::decode(body).ok();
                        match entry {
                            Some(e) if purged.is_some_and(|p| e.log_id.index <= p) => {}
                            Some(e) if next_index.is_none_or(|n| e.log_id.index == n) => {
                                mem.push(e, (seg, off as u64, body.len() as u32));
                                rec.entries += 1;
                            }
                            _ => bad = true,
                        }
                        if !bad {
                            off += n;
                            continue;
                        }
                    }
                    Framed::Short | Framed::Bad => {}
                }
                cut = Some((seg, off as u64));
                // At the end of the log (nothing intact after it): a write torn by a crash
                // (never acknowledged), or a complete record damaged since it was written
                // (perhaps synced and acknowledged).
                let tail = last_seg && !intact_after(&buf, off);
                match tail.then(|| tail_kind(&buf, off)) {
                    Some(Tail::Torn) => rec.torn_bytes = (buf.len() - off) as u64,
                    _ => damage = Some((next_index.unwrap_or(0), off as u64)),
                }
                break 'segs;
            }
        }
        if let Some((seg, off)) = cut {
            let f = open_rw(&seg_path(dir, seg)).map_err(err)?;
            f.set_len(off).map_err(err)?;
            f.sync_all().map_err(err)?;
            for later in segs.iter().filter(|s| **s > seg) {
                std::fs::remove_file(seg_path(dir, *later)).map_err(err)?;
            }
            sync_dir(dir).map_err(err)?;
        }
        let vote_lost = vote_suspect || vote_unreadable;
        if vote_lost || meta_suspect {
            // The vote was written and can not be read back (this node may have voted in a term
            // it no longer knows), or the log's metadata may be older than it was (a guard or
            // purge forgotten).
            damage = damage.or(Some((mem.last_log_id().map_or(1, |l| l.index + 1), 0)));
        }
        let mut meta = mem.meta.clone();
        if let Some((at, _)) = damage {
            rec.damaged_at = Some(at);
            // Every entry the node held came from a leader of a term its vote had reached: an
            // entry of a later term than the vote's can only come from a leader elected since.
            let term = if vote_lost {
                u64::MAX
            } else {
                let voted = mem.vote.map_or(0, |v| v.leader_id.term);
                voted.max(mem.last_log_id().map_or(0, |l| l.leader_id.term))
            };
            meta.guard = Some(match meta.guard {
                Some((t, i)) => (t.max(term), i.min(at)),
                None => (term, at),
            });
            let body = serde_json::to_vec(&meta).unwrap_or_default();
            meta_doc.write(&body, true).map_err(err)?;
            tracing::error!(
                "raft log {}: damaged at index {at}; not voting until a leader has repaired it",
                dir.display()
            );
        }
        mem.meta = meta;
        mem.synced = mem.last_log_id();
        let seg = segs
            .last()
            .copied()
            .unwrap_or(1)
            .max(cut.map_or(0, |c| c.0));
        let path = seg_path(dir, seg);
        let file = open_rw(&path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        if segs.is_empty() {
            sync_dir(dir).map_err(err)?;
        }
        // What was read back may be in the page cache only (a crash of the process, not of the
        // machine): synced now, it counts as durable (`Mem::synced`).
        file.sync_data().map_err(err)?;
        let file = Arc::new(file);
        let (tx, rx) = mpsc::channel::<SyncRequest>();
        let name = dir.display().to_string();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || syncer(rx, name))
            .map_err(err)?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            mem: Mutex::new(mem),
            writer: Mutex::new(Writer {
                seg,
                file,
                len,
                buf: Vec::new(),
            }),
            vote_doc: Mutex::new(vote_doc),
            meta_doc: Mutex::new(meta_doc),
            sync_tx: Mutex::new(Some(tx)),
            marker: Mutex::new(None),
        };
        Ok((
            LogStore {
                inner: Arc::new(inner),
            },
            rec,
        ))
    }

    /// The last entry's id (or the last purged one).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.inner.mem.lock().last_log_id()
    }

    /// The last index this node knows committed (kept in memory: after a restart, once a
    /// leader has said it again).
    pub fn committed_index(&self) -> Option<u64> {
        self.inner.mem.lock().committed.map(|c| c.index)
    }

    /// Whether node `me` is, by its last vote, a leader elected since the log opened, in a term
    /// later than `term` (it took over entries proposed in `term`).
    pub(crate) fn leads_after(&self, me: NodeId, term: u64) -> bool {
        let mem = self.inner.mem.lock();
        mem.voted_here
            && mem.vote.is_some_and(|v| {
                v.is_committed() && v.leader_id().voted_for() == Some(me) && v.leader_id.term > term
            })
    }

    /// Whether this node must refuse votes (its log was found damaged and no leader has
    /// repaired it yet).
    pub fn vote_guarded(&self) -> bool {
        self.inner.mem.lock().meta.guard.is_some()
    }

    /// Keeps a member marker at `path`, outside the log's directory: a file made (durably) when
    /// this log first saves a vote, i.e. once the node has taken part in the group (every
    /// leader's first AppendEntries to it and every vote it casts save one first). If the
    /// marker is there and the log is blank (no vote, no entry: its directory was lost whole,
    /// or its files cut to nothing), the node may have acknowledged entries or voted in a term
    /// it no longer knows: it is guarded like a damaged log, until a leader has caught it up.
    /// Returns whether that guard was set now.
    pub fn member_marker(&self, path: &Path) -> io::Result<bool> {
        let blank = {
            let mem = self.inner.mem.lock();
            mem.vote.is_none() && mem.last_log_id().is_none() && mem.meta.guard.is_none()
        };
        let exists = path.try_exists()?;
        if exists && blank {
            let meta = {
                let mut mem = self.inner.mem.lock();
                // No term is known: only matching a leader up to its commit index lifts it.
                mem.meta.guard = Some((u64::MAX, 0));
                mem.meta.clone()
            };
            self.write_meta(&meta, true)?;
            tracing::error!(
                "raft log {}: empty, but this node was a member ({} exists); not voting until \
                 a leader has caught it up",
                self.inner.dir.display(),
                path.display()
            );
            return Ok(true);
        }
        if !exists {
            if blank {
                *self.inner.marker.lock() = Some(path.to_path_buf());
            } else {
                write_marker(path)?;
            }
        }
        Ok(false)
    }

    /// Stops the syncer thread (after the syncs already asked for).
    pub fn close(&self) {
        self.inner.sync_tx.lock().take();
    }

    fn io_err(&self, verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
        StorageError::from_io_error(ErrorSubject::Logs, verb, e)
    }

    fn write_meta(&self, meta: &Meta, sync: bool) -> io::Result<()> {
        let body = serde_json::to_vec(meta).map_err(io::Error::other)?;
        self.inner.meta_doc.lock().write(&body, sync)
    }

    /// While guarded, a leader's AppendEntries succeeded here: this log matches the leader's
    /// up to `upto`, and the leader had committed up to `leader_commit`. Entries committed
    /// with this node's acknowledgements from before the damage are at or below a leader's
    /// commit index; once the log matches a leader's that far, synced, the guard is lifted.
    pub(crate) fn leader_matched(&self, upto: Option<u64>, leader_commit: Option<u64>) {
        {
            let mut mem = self.inner.mem.lock();
            if mem.meta.guard.is_none() {
                return;
            }
            // No commit announced yet: nothing is known to be required; wait for one.
            let Some(c) = leader_commit else { return };
            mem.repair_to = mem.repair_to.max(Some(c));
            mem.matched = mem.matched.max(upto);
        }
        self.maybe_clear_guard();
    }

    /// While guarded: the entries up to `last` are synced.
    fn synced_to(&self, last: LogId<NodeId>) {
        {
            let mut mem = self.inner.mem.lock();
            if mem.meta.guard.is_none() {
                return;
            }
            // A truncation since the append may have removed or replaced it.
            let at = last.index.checked_sub(mem.first).map(|i| i as usize);
            if at
                .and_then(|i| mem.ids.get(i))
                .is_some_and(|id| *id == last)
            {
                mem.synced = mem.synced.max(Some(last));
            }
        }
        self.maybe_clear_guard();
    }

    /// Clears the vote guard once the synced log holds an entry of a later term than the node
    /// knew before the damage, or matches a leader's up to that leader's commit index.
    fn maybe_clear_guard(&self) {
        let meta = {
            let mut mem = self.inner.mem.lock();
            let (Some((term, _)), Some(synced)) = (mem.meta.guard, mem.synced) else {
                return;
            };
            let later_term = synced.leader_id.term > term;
            let repaired = mem.repair_to.is_some_and(|target| {
                synced.index >= target && mem.matched.is_some_and(|m| m >= target)
            });
            if !later_term && !repaired {
                return;
            }
            mem.meta.guard = None;
            mem.repair_to = None;
            mem.matched = None;
            mem.meta.clone()
        };
        tracing::info!(
            "raft log {}: caught up past the damage; voting again",
            self.inner.dir.display()
        );
        if let Err(e) = self.write_meta(&meta, true) {
            tracing::error!("raft log {}: {e}", self.inner.dir.display());
        }
    }

    /// The entries of `range` that the log holds: the newest from memory, older ones read
    /// back from their segments (checked like at recovery).
    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry<TypeConfig>>> {
        let (lo, hi, on_disk, cached) = {
            let mem = self.inner.mem.lock();
            let (first, end) = (mem.first, mem.end());
            let lo = match range.start_bound() {
                Bound::Included(i) => *i,
                Bound::Excluded(i) => i + 1,
                Bound::Unbounded => first,
            }
            .max(first);
            let hi = match range.end_bound() {
                Bound::Included(i) => i + 1,
                Bound::Excluded(i) => *i,
                Bound::Unbounded => end,
            }
            .min(end);
            if lo >= hi {
                return Ok(Vec::new());
            }
            let cache_first = mem.cache_first();
            let on_disk: Vec<(u64, u64, u32)> = (lo..hi.min(cache_first))
                .filter_map(|i| mem.pos.get((i - first) as usize).copied())
                .collect();
            let from = lo.max(cache_first);
            let cached: Vec<Entry<TypeConfig>> = if from < hi {
                mem.cache
                    .range((from - cache_first) as usize..(hi - cache_first) as usize)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            (lo, hi, on_disk, cached)
        };
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let mut file: Option<(u64, File)> = None;
        for (i, (seg, off, len)) in on_disk.into_iter().enumerate() {
            if file.as_ref().is_none_or(|f| f.0 != seg) {
                file = Some((seg, File::open(seg_path(&self.inner.dir, seg))?));
            }
            let Some((_, f)) = file.as_ref() else {
                continue;
            };
            let mut buf = vec![0u8; codec::FRAME + len as usize];
            f.read_exact_at(&mut buf, off)?;
            let index = lo + i as u64;
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log entry {index} fails its check when read back"),
                )
            };
            let Framed::Record(body, _) = codec::unframe(&buf) else {
                return Err(bad());
            };
            let e: Entry<TypeConfig> = codec::decode(body).map_err(|_| bad())?;
            if e.log_id.index != index {
                return Err(bad());
            }
            out.push(e);
        }
        out.extend(cached);
        Ok(out)
    }

    /// Writes `entries` at the end of the log; the sync is queued. (openraft's error type is
    /// large; it is what the trait returns.)
    #[allow(clippy::result_large_err)]
    fn append_entries(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        done: Flushed,
    ) -> Result<(), StorageError<NodeId>> {
        let mut w = self.inner.writer.lock();
        if w.len >= SEGMENT_BYTES {
            // Close the full segment (synced whole) and start the next.
            w.file
                .sync_data()
                .map_err(|e| self.io_err(ErrorVerb::Write, e))?;
            let seg = w.seg + 1;
            let file = open_rw(&seg_path(&self.inner.dir, seg))
                .map_err(|e| self.io_err(ErrorVerb::Write, e))?;
            sync_dir(&self.inner.dir).map_err(|e| self.io_err(ErrorVerb::Write, e))?;
            w.seg = seg;
            w.file = Arc::new(file);
            w.len = 0;
        }
        let last = entries.last().map(|e| *e.get_log_id());
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let mut offsets = Vec::with_capacity(entries.len());
        for e in &entries {
            let body =
                codec::encode(e).map_err(|e| self.io_err(ErrorVerb::Write, io::Error::other(e)))?;
            offsets.push((w.len + buf.len() as u64, body.len() as u32));
            codec::frame(&mut buf, &body);
        }
        let res = w.file.write_all_at(&buf, w.len);
        if let Err(e) = res {
            w.buf = buf;
            return Err(self.io_err(ErrorVerb::Write, e));
        }
        w.len += buf.len() as u64;
        w.buf = buf;
        let seg = w.seg;
        let guarded = {
            let mut mem = self.inner.mem.lock();
            for (e, (off, len)) in entries.into_iter().zip(offsets) {
                mem.push(e, (seg, off, len));
            }
            mem.meta.guard.is_some()
        };
        let file = w.file.clone();
        drop(w);
        let done: Flushed = match last.filter(|_| guarded) {
            Some(last) => {
                let log = self.clone();
                Box::new(move |r: io::Result<()>| {
                    if r.is_ok() {
                        log.synced_to(last);
                    }
                    done(r)
                })
            }
            None => done,
        };
        match self.inner.sync_tx.lock().as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError((_, done))) = tx.send((file, done)) {
                    done(Err(io::Error::other("raft log closed")));
                }
            }
            None => done(Err(io::Error::other("raft log closed"))),
        }
        Ok(())
    }

    /// Removes the entries from `index` on.
    fn truncate_from(&self, index: u64) -> io::Result<()> {
        let mut w = self.inner.writer.lock();
        let mut mem = self.inner.mem.lock();
        if mem.ids.is_empty() || index >= mem.end() {
            return Ok(());
        }
        let keep = index.saturating_sub(mem.first) as usize;
        let Some(&(seg, off, _)) = mem.pos.get(keep) else {
            return Ok(());
        };
        mem.truncate(keep);
        if mem.synced.is_some_and(|s| s.index >= index) {
            mem.synced = mem.last_log_id();
        }
        if mem.matched.is_some_and(|m| m >= index) {
            mem.matched = index.checked_sub(1);
        }
        drop(mem);
        let dir = &self.inner.dir;
        if seg == w.seg {
            w.file.set_len(off)?;
            w.file.sync_all()?;
        } else {
            for s in segments(dir)?.into_iter().filter(|s| *s > seg) {
                std::fs::remove_file(seg_path(dir, s))?;
            }
            let f = open_rw(&seg_path(dir, seg))?;
            f.set_len(off)?;
            f.sync_all()?;
            sync_dir(dir)?;
            w.seg = seg;
            w.file = Arc::new(f);
        }
        w.len = off;
        Ok(())
    }

    /// Forgets the entries up to `upto` (they are in a snapshot) and removes whole segments.
    fn purge_upto(&self, upto: LogId<NodeId>) -> io::Result<()> {
        let meta = {
            let mut mem = self.inner.mem.lock();
            while mem.ids.front().is_some_and(|id| id.index <= upto.index) {
                mem.pop_front();
            }
            if mem.ids.is_empty() {
                mem.first = upto.index + 1;
                // A snapshot installed over the whole log: it is durable, and the log's state
                // as a guard sees it (what is synced) starts after it.
                mem.synced = mem.synced.max(Some(upto));
            }
            if mem.meta.last_purged.is_none_or(|p| p.index < upto.index) {
                mem.meta.last_purged = Some(upto);
            }
            mem.meta.clone()
        };
        self.write_meta(&meta, true)?;
        let oldest_kept = self.inner.mem.lock().pos.front().map(|p| p.0);
        let active = self.inner.writer.lock().seg;
        let dir = &self.inner.dir;
        let mut removed = false;
        for s in segments(dir)? {
            if s < oldest_kept.unwrap_or(active) && s != active {
                std::fs::remove_file(seg_path(dir, s))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Makes the member marker durably: the file, then the directory entry.
fn write_marker(path: &Path) -> io::Result<()> {
    File::create(path)?.sync_all()?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// What a bad record at the very end of the log is.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// A write the crash cut short: bytes missing past the end, or a sector that never reached
    /// the disk (zeros). Never synced, so never acknowledged.
    Torn,
    /// A complete record that fails its check (a flipped bit, a length field that names
    /// another length than the bytes its checksum covers): it was written whole, perhaps
    /// synced and acknowledged.
    Damaged,
}

/// Sectors a disk writes atomically: a torn write leaves whole sectors unwritten.
const SECTOR: usize = 512;

/// Tells a torn last write from damage, for the bad record at `off` with nothing intact after.
fn tail_kind(buf: &[u8], off: usize) -> Tail {
    let rest = buf.get(off..).unwrap_or_default();
    if rest.len() < codec::FRAME {
        return Tail::Torn;
    }
    // A sector of the record (clipped to the record's bytes) that holds only zeros was never
    // written: appends extend the file, and what they have not written yet reads as zeros.
    let mut at = off;
    while at < buf.len() {
        let end = ((at / SECTOR) + 1) * SECTOR;
        let window = buf.get(at..end.min(buf.len())).unwrap_or_default();
        if window.iter().all(|b| *b == 0) {
            return Tail::Torn;
        }
        at = end;
    }
    let (len, crc) = rest.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let body = rest.get(codec::FRAME..).unwrap_or_default();
    if len > body.len() && len <= codec::MAX_RECORD {
        // Bytes missing past the end: torn, unless the bytes there are a whole record by its
        // checksum (then the length field was damaged).
        return match crc32c::crc32c(body) == crc {
            true => Tail::Damaged,
            false => Tail::Torn,
        };
    }
    Tail::Damaged
}

/// Whether an intact record follows a bad one somewhere after `off` (then the bad record is
/// damage, not a torn tail).
fn intact_after(buf: &[u8], off: usize) -> bool {
    let mut i = off + 1;
    while i + codec::FRAME < buf.len() {
        if let Some(rest) = buf.get(i..) {
            if let Framed::Record(body, _) = codec::unframe(rest) {
                if codec::decode::<Entry<TypeConfig>>(body).is_ok() {
                    return true;
                }
            }
        }
        i += 1;
    }
    false
}

/// The syncer thread: takes every queued flush, syncs each file once, then reports.
fn syncer(rx: mpsc::Receiver<SyncRequest>, name: String) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut synced: Vec<(Arc<File>, Result<(), String>)> = Vec::new();
        for (file, done) in batch {
            let res = match synced.iter().find(|(f, _)| Arc::ptr_eq(f, &file)) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = file.sync_data().map_err(|e| e.to_string());
                    if let Err(e) = &r {
                        tracing::error!("raft log {name}: fdatasync failed: {e}");
                    }
                    synced.push((file.clone(), r.clone()));
                    r
                }
            };
            done(res.map_err(io::Error::other));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(range)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = self.inner.mem.lock();
        Ok(LogState {
            last_purged_log_id: mem.meta.last_purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let body = serde_json::to_vec(vote).map_err(|e| {
            StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, io::Error::other(e))
        })?;
        self.inner
            .vote_doc
            .lock()
            .write(&body, true)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        {
            let mut mem = self.inner.mem.lock();
            mem.vote = Some(*vote);
            mem.voted_here = true;
        }
        let marker = self.inner.marker.lock().take();
        if let Some(path) = marker {
            if let Err(e) = write_marker(&path) {
                *self.inner.marker.lock() = Some(path);
                return Err(StorageError::from_io_error(
                    ErrorSubject::Vote,
                    ErrorVerb::Write,
                    e,
                ));
            }
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.mem.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Kept in memory only: after a restart the leader tells the node again.
        self.inner.mem.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(None)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.append_entries(entries, Box::new(move |r| callback.log_io_completed(r)))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.truncate_from(log_id.index)
            .map_err(|e| self.io_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id)
            .map_err(|e| self.io_err(ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests;
