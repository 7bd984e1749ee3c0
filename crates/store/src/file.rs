//! The file store: block files and delete records under the stream's directory, recovery (sealed
//! blocks from their summaries, the tail read and checked whole: torn tails, checksums, resync
//! past corruption, the index cross-check), group commit, and the background scrub.
//!
//! Files: `<start:020>.blk` (records, see `record`; sealed blocks end with their index and
//! summary, see `seal`), `<start:020>.dlt` (12-byte delete records: `seq u64 | crc32c(seq) u32`,
//! little-endian), `index` (a cache of block lengths, see `docs/STORE.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rustc_hash::FxHashSet;

use crate::block::{Block, Local};
use crate::durable::{Durable, IoHook, Mark, SyncStats};
use crate::engine::{Backend, CacheStats, Engine, Parts};
use crate::record;
use crate::scan::{self, Scanned, MAX_LOST};
use crate::scrub::{self, ScrubCtl};
use crate::seal::{self, Summary};
use crate::shared::Shared;
use crate::subjects::Subjects;
use crate::DocFile;
use crate::{Corruption, Limits, Result, StoreError, SyncPolicy};

/// How the background scrub re-reads sealed blocks to find damage that happened at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrub {
    /// Bytes per second, shared by every store of the process.
    pub rate: u64,
    /// Wait after opening before the first pass.
    pub delay: Duration,
    /// Wait between the end of one pass and the start of the next.
    pub interval: Duration,
}

impl Default for Scrub {
    fn default() -> Self {
        Scrub {
            rate: 32 << 20,
            delay: Duration::from_secs(30),
            interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where and how a file store keeps a stream.
#[derive(Clone)]
pub struct FileStoreConfig {
    /// The stream's own directory (created if missing).
    pub dir: PathBuf,
    /// Target bytes per block file (clamped to 4 KiB ..= 1 GiB).
    pub block_size: u64,
    pub sync: SyncPolicy,
    /// Observes (or holds back) each data sync; for tests.
    pub io_hook: Option<Arc<dyn IoHook>>,
    /// Sealed blocks whose record index stays in memory (least recently used are dropped).
    pub cache_blocks: usize,
    /// The background scrub; None: none (damage is then found when a message is read).
    pub scrub: Option<Scrub>,
    /// Keep a high-water mark (`hwm.0`/`hwm.1`): the last sequence made durable, written with
    /// the sync that makes it so. At open, sequences up to it that the blocks no longer hold
    /// are reported lost and never handed out again. Off for a store whose messages are also
    /// kept elsewhere (a replica's store, refilled from its Raft log).
    pub high_water_mark: bool,
}

impl FileStoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStoreConfig {
            dir: dir.into(),
            block_size: 8 << 20,
            sync: SyncPolicy::Always,
            io_hook: None,
            cache_blocks: 8,
            scrub: Some(Scrub::default()),
            high_water_mark: true,
        }
    }
}

/// What opening the store found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub corruption: Vec<Corruption>,
    /// A torn last record was cut off: (file, new length, bytes removed).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// The index was missing or unreadable and was rebuilt from the blocks.
    pub index_rebuilt: bool,
    /// Blocks read whole on open (the unsealed tail, and blocks without a usable summary).
    pub blocks_scanned: usize,
    /// Blocks opened from their summary alone.
    pub blocks_summarized: usize,
}

/// A durable stream store in a directory of block files.
pub struct FileStore {
    shared: Arc<Shared<FileBackend>>,
    recovery: Recovery,
    syncer: Mutex<Option<JoinHandle<()>>>,
    scrub: Arc<ScrubCtl>,
    scrubber: Mutex<Option<JoinHandle<()>>>,
}

const INDEX: &str = "index";
/// The high-water mark's document (`hwm.0`, `hwm.1`).
pub(crate) const MARK: &str = "hwm";
const INDEX_MAGIC: &[u8; 8] = b"NTRIDX01";
const DLT_ENTRY: usize = 12;

fn io_err(store: &Arc<str>, what: &'static str, e: io::Error) -> StoreError {
    StoreError::Io {
        store: store.clone(),
        what,
        error: Arc::from(e.to_string()),
    }
}

pub(crate) fn blk_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.blk"))
}

fn dlt_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.dlt"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, syncing the directory that holds each one made: a new
/// directory's entry survives a power loss only then.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        create_dir_durable(p)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent.unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

struct BlockFiles {
    blk: Arc<File>,
    dlt: Option<Arc<File>>,
}

pub(crate) struct FileBackend {
    dir: PathBuf,
    name: Arc<str>,
    policy: SyncPolicy,
    durable: Arc<Durable>,
    files: BTreeMap<u64, BlockFiles>,
    active: u64,
    last_written: u64,
    dirty: Vec<Arc<File>>,
    dir_dirty: bool,
    /// The bytes last read ahead from one block, so that reading messages in order (a consumer
    /// catching up) costs one `pread` per `READ_AHEAD` bytes rather than one per message.
    ahead: Mutex<Option<ReadAhead>>,
    scrub: Arc<ScrubCtl>,
}

/// Bytes `at .. at + data.len()` of block `start`, as they were on disk when read. Appends land
/// after them and erasing or removing the block drops them, so they never go stale.
struct ReadAhead {
    start: u64,
    at: u32,
    data: Bytes,
}

/// How much one read-ahead fetches; records this large or larger are read on their own.
const READ_AHEAD: usize = 128 * 1024;

impl FileBackend {
    /// Forgets what was read ahead from block `start`.
    fn drop_ahead(&self, start: u64) {
        let mut ahead = self.ahead.lock();
        if ahead.as_ref().is_some_and(|a| a.start == start) {
            *ahead = None;
        }
    }

    fn err(&self, what: &'static str) -> impl Fn(io::Error) -> StoreError + '_ {
        move |e| io_err(&self.name, what, e)
    }

    fn blk(&self, start: u64) -> Result<&Arc<File>> {
        self.files
            .get(&start)
            .map(|f| &f.blk)
            .ok_or_else(|| io_err(&self.name, "block", io::ErrorKind::NotFound.into()))
    }

    /// The open file of block `start` (for the scrub, which reads it without the store's lock).
    pub(crate) fn block_file(&self, start: u64) -> Option<Arc<File>> {
        self.files.get(&start).map(|f| f.blk.clone())
    }
}

impl Backend for FileBackend {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn block_path(&self, start: u64) -> PathBuf {
        blk_path(&self.dir, start)
    }

    fn create_block(&mut self, start: u64) -> Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(blk_path(&self.dir, start))
            .map_err(self.err("create block"))?;
        sync_dir(&self.dir).map_err(self.err("sync directory"))?;
        let blk = Arc::new(f);
        self.files.insert(start, BlockFiles { blk, dlt: None });
        self.active = start;
        Ok(())
    }

    fn write(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()> {
        self.blk(start)?
            .write_all_at(rec, u64::from(at))
            .map_err(self.err("write block"))
    }

    fn read(&self, start: u64, at: u32, len: u32) -> Result<Bytes> {
        let mut ahead = self.ahead.lock();
        if let Some(a) = ahead.as_ref() {
            let from = at.wrapping_sub(a.at) as usize;
            if a.start == start && at >= a.at && from + len as usize <= a.data.len() {
                return Ok(a.data.slice(from..from + len as usize));
            }
        }
        let blk = self.blk(start)?;
        if len as usize >= READ_AHEAD / 2 {
            let mut buf = vec![0; len as usize];
            blk.read_exact_at(&mut buf, u64::from(at))
                .map_err(self.err("read block"))?;
            return Ok(Bytes::from(buf));
        }
        // Read at least the record, and as much after it as one read returns.
        let mut buf = vec![0; READ_AHEAD];
        let mut filled = 0;
        while filled < len as usize {
            let dst = buf.get_mut(filled..).unwrap_or_default();
            match blk.read_at(dst, u64::from(at) + filled as u64) {
                Ok(0) => {
                    return Err(io_err(
                        &self.name,
                        "read block",
                        io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&self.name, "read block", e)),
            }
        }
        buf.truncate(filled);
        let data = Bytes::from(buf);
        let rec = data.slice(..len as usize);
        *ahead = Some(ReadAhead { start, at, data });
        Ok(rec)
    }

    fn read_raw(&self, start: u64, at: u32, len: u32) -> Result<Bytes> {
        let mut buf = vec![0; len as usize];
        self.blk(start)?
            .read_exact_at(&mut buf, u64::from(at))
            .map_err(self.err("read block"))?;
        Ok(Bytes::from(buf))
    }

    fn overwrite(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()> {
        self.drop_ahead(start);
        self.write(start, at, rec)?;
        let blk = self.blk(start)?.clone();
        if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &blk)) {
            self.dirty.push(blk);
        }
        Ok(())
    }

    fn note_deleted(&mut self, start: u64, seq: u64) -> Result<()> {
        let dir = self.dir.clone();
        let name = self.name.clone();
        let Some(files) = self.files.get_mut(&start) else {
            return Ok(());
        };
        let dlt = match &files.dlt {
            Some(f) => f.clone(),
            None => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dlt_path(&dir, start))
                    .map_err(|e| io_err(&name, "open delete records", e))?;
                self.dir_dirty = true;
                files.dlt.insert(Arc::new(f)).clone()
            }
        };
        let mut entry = [0u8; DLT_ENTRY];
        let (s, c) = entry.split_at_mut(8);
        s.copy_from_slice(&seq.to_le_bytes());
        c.copy_from_slice(&crc32c::crc32c(&seq.to_le_bytes()).to_le_bytes());
        (&*dlt)
            .write_all(&entry)
            .map_err(|e| io_err(&name, "write delete record", e))?;
        if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &dlt)) {
            self.dirty.push(dlt.clone());
            if matches!(self.policy, SyncPolicy::Interval(_)) {
                self.durable.note_meta(&dlt);
            }
        }
        Ok(())
    }

    fn deleted_in(&self, start: u64) -> Result<FxHashSet<u64>> {
        match fs::read(dlt_path(&self.dir, start)) {
            Ok(buf) => Ok(parse_dlt(&buf, &self.name, &dlt_path(&self.dir, start))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FxHashSet::default()),
            Err(e) => Err(io_err(&self.name, "read delete records", e)),
        }
    }

    fn remove_block(&mut self, start: u64) -> Result<()> {
        self.drop_ahead(start);
        if let Some(files) = self.files.remove(&start) {
            if let Some(d) = files.dlt {
                self.dirty.retain(|f| !Arc::ptr_eq(f, &d));
            }
        }
        fs::remove_file(blk_path(&self.dir, start)).map_err(self.err("remove block"))?;
        match fs::remove_file(dlt_path(&self.dir, start)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(&self.name, "remove delete records", e))
            }
            _ => {}
        }
        self.dir_dirty = true;
        Ok(())
    }

    fn seal(&mut self, start: u64) -> Result<()> {
        let blk = self.blk(start)?.clone();
        self.durable.sync_file(&blk, self.last_written)
    }

    fn written(&mut self, seq: u64) {
        self.last_written = seq;
        if let Some(f) = self.files.get(&self.active) {
            self.durable.note_written(seq, &f.blk);
        }
    }

    fn sync_meta(&mut self, explicit: bool) -> Result<()> {
        if explicit && self.policy != SyncPolicy::Always {
            return Ok(());
        }
        for f in std::mem::take(&mut self.dirty) {
            f.sync_data().map_err(self.err("sync delete records"))?;
        }
        if std::mem::take(&mut self.dir_dirty) {
            sync_dir(&self.dir).map_err(self.err("sync directory"))?;
        }
        Ok(())
    }

    fn sync_all(&mut self, through: u64) -> Result<()> {
        let blk = self.blk(self.active)?.clone();
        self.durable.sync_file(&blk, through)?;
        self.sync_meta(false)
    }

    fn close(&mut self, blocks: Vec<(u64, u64, u64)>) {
        if let Err(e) = write_index(&self.dir, &blocks) {
            tracing::warn!(store = %self.name, error = %e, "writing the index failed");
        }
        if let Err(e) = self.durable.sync_mark() {
            tracing::warn!(store = %self.name, error = %e, "syncing the high-water mark failed");
        }
        self.files.clear();
        self.dirty.clear();
    }

    fn destroy(&mut self) -> Result<()> {
        *self.ahead.get_mut() = None;
        self.files.clear();
        self.dirty.clear();
        fs::remove_dir_all(&self.dir).map_err(self.err("remove stream directory"))
    }

    fn evictable(&self) -> bool {
        true
    }

    fn note_suspect(&self, _start: u64) {
        self.scrub.kick();
    }
}

fn write_index(dir: &Path, blocks: &[(u64, u64, u64)]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 + blocks.len() * 24);
    buf.extend_from_slice(INDEX_MAGIC);
    buf.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for (start, len, next) in blocks {
        buf.extend_from_slice(&start.to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&next.to_le_bytes());
    }
    buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
    let tmp = dir.join("index.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(INDEX))?;
    sync_dir(dir)
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = buf.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Block start → (bytes, next sequence), if the index is present and intact.
pub(crate) fn read_index(dir: &Path) -> Option<BTreeMap<u64, (u64, u64)>> {
    let buf = fs::read(dir.join(INDEX)).ok()?;
    let body = buf.get(..buf.len().checked_sub(4)?)?;
    let crc = u32::from_le_bytes(buf.get(body.len()..)?.try_into().ok()?);
    if crc32c::crc32c(body) != crc || body.get(..8)? != INDEX_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?) as usize;
    if body.len() != 12 + n * 24 {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let at = 12 + i * 24;
                (
                    u64_at(body, at),
                    (u64_at(body, at + 8), u64_at(body, at + 16)),
                )
            })
            .collect(),
    )
}

/// The sequences in delete records (whole entries with a good checksum).
pub(crate) fn parse_dlt(buf: &[u8], name: &Arc<str>, path: &Path) -> FxHashSet<u64> {
    let mut out = FxHashSet::default();
    for e in buf.chunks_exact(DLT_ENTRY) {
        let (s, c) = e.split_at(8);
        if crc32c::crc32c(s).to_le_bytes() == c {
            out.insert(u64_at(s, 0));
        } else {
            tracing::warn!(store = %name, file = %path.display(), "bad delete record ignored");
        }
    }
    out
}

/// Sequences removed from a block, from its delete records; a torn last entry is cut off.
fn read_dlt(dir: &Path, start: u64, name: &Arc<str>) -> Result<FxHashSet<u64>> {
    let path = dlt_path(dir, start);
    let buf = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FxHashSet::default()),
        Err(e) => return Err(io_err(name, "read delete records", e)),
    };
    let whole = buf.len() / DLT_ENTRY * DLT_ENTRY;
    if whole != buf.len() {
        let f = OpenOptions::new().write(true).open(&path);
        f.and_then(|f| f.set_len(whole as u64))
            .map_err(|e| io_err(name, "truncate delete records", e))?;
    }
    Ok(parse_dlt(buf.get(..whole).unwrap_or_default(), name, &path))
}

/// A block's figures from its summary and delete records, without reading its messages (the
/// index record too when some of them were removed: it says which subject each one had).
/// A block file being opened: its first sequence, its length and the next block's start.
struct Opening<'a> {
    f: &'a File,
    start: u64,
    len: u64,
    next_start: Option<u64>,
}

fn summarized(
    o: Opening<'_>,
    summary: Summary,
    dead: &FxHashSet<u64>,
    subjects: &mut Subjects,
    lost: &mut BTreeSet<u64>,
) -> Option<(Block, u64)> {
    let Opening {
        f,
        start,
        len,
        next_start,
    } = o;
    let count = u64::from(summary.count);
    let next = start + count;
    if len > u64::from(u32::MAX) {
        return None;
    }
    // Lost ranges: sorted, apart, inside the block (or its lost tail, up to the next block).
    let limit = next_start.unwrap_or(next);
    let ranges_ok = summary
        .lost
        .iter()
        .all(|(a, z)| start <= *a && a <= z && *z < limit)
        && summary
            .lost
            .windows(2)
            .all(|w| matches!(w, [x, y] if x.1 < y.0));
    if !ranges_ok {
        return None;
    }
    let summary_lost = |q: u64| {
        let k = summary.lost.partition_point(|(_, z)| *z < q);
        summary.lost.get(k).is_some_and(|(a, _)| *a <= q)
    };
    let mut removed: Vec<u64> = dead
        .iter()
        .copied()
        .filter(|q| (start..next).contains(q) && !summary_lost(*q))
        .collect();
    removed.sort_unstable();
    let mut per_local: Vec<u64> = summary
        .subjects
        .iter()
        .map(|s| u64::from(s.count))
        .collect();
    let mut removed_bytes = 0u64;
    if !removed.is_empty() {
        let at = u64::from(summary.index_at);
        let summary_at = seal_start(f, len)?;
        let mut raw = vec![0; usize::try_from(summary_at.checked_sub(at)?).ok()?];
        f.read_exact_at(&mut raw, at).ok()?;
        let irec = seal::decode_index(&raw)?;
        if irec.offsets.len() as u64 != count {
            return None;
        }
        for q in &removed {
            let i = (q - start) as usize;
            let local = if irec.locals.is_empty() {
                0
            } else {
                *irec.locals.get(i)?
            };
            let n = per_local.get_mut(local as usize)?;
            *n = n.checked_sub(1)?;
            let from = *irec.offsets.get(i)?;
            let to = irec.offsets.get(i + 1).copied().unwrap_or(irec.end);
            removed_bytes += u64::from(to.checked_sub(from)?);
        }
    }
    let lost_count: u64 = summary
        .lost
        .iter()
        .map(|&(a, z)| {
            z.min(next.saturating_sub(1))
                .saturating_add(1)
                .saturating_sub(a.max(start))
        })
        .sum();
    let live = count.checked_sub(lost_count + removed.len() as u64)?;
    let live_bytes = summary.msg_bytes.checked_sub(removed_bytes)?;
    // The first sequence neither lost nor removed (each step passes a range or a removal).
    let mut first_live = start;
    while first_live < next {
        let k = summary.lost.partition_point(|(_, z)| *z < first_live);
        match summary.lost.get(k) {
            Some(&(a, z)) if a <= first_live => first_live = z + 1,
            _ if dead.contains(&first_live) => first_live += 1,
            _ => break,
        }
    }
    let mut budget = MAX_LOST as usize;
    for &(a, z) in &summary.lost {
        let n = usize::try_from(z - a + 1).unwrap_or(usize::MAX).min(budget);
        lost.extend((a..=z).take(n));
        budget -= n;
    }
    let mut few = Vec::new();
    subjects.reserve(summary.subjects.len());
    for (s, n) in summary.subjects.iter().zip(&per_local) {
        if *n > 0 {
            few.push(subjects.add_n(&s.name, *n, s.first, s.last));
        }
    }
    let last_assigned = summary
        .lost
        .iter()
        .map(|(_, z)| *z)
        .max()
        .unwrap_or(0)
        .max(next - 1);
    let block = Block {
        start,
        count: summary.count,
        len: len as u32,
        live: live as u32,
        live_bytes,
        first_live,
        first_ts: summary.first_ts,
        last_ts: summary.last_ts,
        seal_at: summary.index_at,
        verified: false,
        suspect: false,
        few: (few.len() <= 16).then_some(few),
        index: None,
        used: 0,
    };
    Some((block, last_assigned))
}

/// Where the summary record of a block of `len` bytes starts.
fn seal_start(f: &File, len: u64) -> Option<u64> {
    let mut tail = [0u8; 8];
    f.read_exact_at(&mut tail, len.checked_sub(8)?).ok()?;
    let own = u64::from(u32::from_le_bytes(tail.get(..4)?.try_into().ok()?));
    len.checked_sub(own)
}

/// A block read whole: its figures, with its subjects counted in `subjects`.
fn scanned_block(start: u64, mut s: Scanned, subjects: &mut Subjects) -> (Block, u64) {
    let count = s.index.count();
    // Live records per local subject, and their first and last sequences.
    let mut per: Vec<(u64, u64, u64)> = vec![(0, 0, 0); s.index.locals.len()];
    for i in 0..count {
        if !s.index.is_dead(i) {
            if let Some(p) = per.get_mut(s.index.local(i) as usize) {
                let seq = start + i as u64;
                if p.0 == 0 {
                    p.1 = seq;
                }
                p.0 += 1;
                p.2 = seq;
            }
        }
    }
    for (l, (n, first, last)) in s.index.locals.iter_mut().zip(per) {
        let id = if n > 0 {
            subjects.add_n(&l.name, n, first, last)
        } else {
            subjects.id(&l.name).unwrap_or(crate::block::NO_SUBJECT)
        };
        if let Some(x) = subjects.get(id) {
            *l = Local {
                name: x.name.clone(),
                id,
            };
        }
    }
    let first_live = (0..count)
        .find(|i| !s.index.is_dead(*i))
        .map_or(start + count as u64, |i| start + i as u64);
    let block = Block {
        start,
        count: count as u32,
        len: s.len,
        live: s.live,
        live_bytes: s.live_bytes,
        first_live,
        first_ts: s.first_ts,
        last_ts: s.last_ts,
        seal_at: 0,
        verified: true,
        suspect: false,
        few: None,
        index: Some(Box::new(std::mem::take(&mut s.index))),
        used: 0,
    };
    (block, s.live_bytes)
}

/// What recovery hands `open`: the engine's parts, the report, the open block files and the
/// blocks that were read whole (not known to be synced).
struct Recovered {
    parts: Parts,
    recovery: Recovery,
    files: BTreeMap<u64, BlockFiles>,
    scanned: Vec<u64>,
    /// The index as read: start → (bytes, next sequence).
    index: Option<BTreeMap<u64, (u64, u64)>>,
}

/// Whether `index` (as read on open) lists exactly these blocks: then the store was closed
/// cleanly (or opened since) with every byte of them synced, and nothing is left to sync.
fn index_matches(index: Option<&BTreeMap<u64, (u64, u64)>>, blocks: &[(u64, u64, u64)]) -> bool {
    index.is_some_and(|i| {
        i.len() == blocks.len()
            && blocks
                .iter()
                .all(|(start, len, next)| i.get(start) == Some(&(*len, *next)))
    })
}

/// Open every block (sealed ones from their summary, the rest read whole) and build the
/// engine's parts.
fn recover(dir: &Path, name: &Arc<str>, mark: Option<u64>) -> Result<Recovered> {
    let err = |what| move |e| io_err(name, what, e);
    let (mut starts, mut dlts) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir).map_err(err("list directory"))? {
        let fname = entry.map_err(err("list directory"))?.file_name();
        let fname = fname.to_string_lossy();
        for (ext, list) in [(".blk", &mut starts), (".dlt", &mut dlts)] {
            if let Some(stem) = fname.strip_suffix(ext) {
                match (stem.len(), stem.parse::<u64>()) {
                    (20, Ok(start)) if (1..=record::MAX_SEQ).contains(&start) => list.push(start),
                    _ => {}
                }
            }
        }
    }
    starts.sort_unstable();
    dlts.sort_unstable();
    // Delete records whose block is gone (a crash between the two unlinks).
    for d in dlts.iter().filter(|d| starts.binary_search(d).is_err()) {
        fs::remove_file(dlt_path(dir, *d)).map_err(err("remove orphan delete records"))?;
    }
    let index = read_index(dir);
    let mut rec = Recovery {
        index_rebuilt: index.is_none(),
        ..Recovery::default()
    };
    let mut subjects = Subjects::default();
    let mut lost = BTreeSet::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut files = BTreeMap::new();
    let mut obsolete = Vec::new();
    let mut scanned = Vec::new();
    let (mut bytes, mut last) = (0u64, (0u64, 0i64));
    let mut roll = false;
    let report = |rec: &mut Recovery, lost: &mut BTreeSet<u64>, c: Corruption| {
        tracing::warn!(corruption = %c, "stream store damaged");
        lost.extend((c.first_seq..=c.last_seq).take(MAX_LOST as usize));
        rec.corruption.push(c);
    };
    for (k, &start) in starts.iter().enumerate() {
        let path = blk_path(dir, start);
        let is_last = k + 1 == starts.len();
        let next_start = starts.get(k + 1).copied();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err("open block"))?;
        let len = f.metadata().map_err(err("stat block"))?.len();
        if len == 0 && !is_last {
            obsolete.push(start);
            continue;
        }
        if len == 0 {
            // A new block not yet written to still tells the next sequence.
            last.0 = last.0.max(start.saturating_sub(1));
        }
        // A marker first in a block is a purge floor: every older block is gone.
        let mut head = [0u8; record::OVERHEAD];
        if len >= head.len() as u64
            && f.read_exact_at(&mut head, 0).is_ok()
            && matches!(record::decode(&head), Ok(r) if r.is_marker())
        {
            obsolete.extend(blocks.drain(..).map(|b| b.start));
            files.clear();
            subjects.clear();
            lost.clear();
            rec.corruption.clear();
            scanned.clear();
            bytes = 0;
        }
        let dead = if dlts.binary_search(&start).is_ok() {
            read_dlt(dir, start, name)?
        } else {
            FxHashSet::default()
        };
        let mut read = |at: u64, n: usize| {
            let mut v = vec![0; n];
            f.read_exact_at(&mut v, at).ok().map(|()| v)
        };
        let summary = seal::read_summary(len, &mut read).filter(|(s, _)| {
            s.start == start && next_start.is_none_or(|n| start + u64::from(s.count) <= n)
        });
        let opened = summary.and_then(|(s, _)| {
            let o = Opening {
                f: &f,
                start,
                len,
                next_start,
            };
            summarized(o, s, &dead, &mut subjects, &mut lost)
        });
        let block = match opened {
            Some((block, last_assigned)) => {
                rec.blocks_summarized += 1;
                bytes += block.live_bytes;
                last = last.max((last_assigned, block.last_ts));
                roll = true;
                block
            }
            None => {
                rec.blocks_scanned += 1;
                let s = scan::scan_file(&f, len, start, &dead, is_last, next_start)
                    .map_err(err("read block"))?;
                for x in &s.findings {
                    let c = Corruption {
                        file: path.clone(),
                        offset: x.offset,
                        first_seq: x.first_seq,
                        last_seq: x.last_seq,
                        reason: x.reason.clone(),
                    };
                    report(&mut rec, &mut lost, c);
                }
                if let Some(at) = s.torn_at {
                    tracing::warn!(file = %path.display(), at, "cutting off a torn last record");
                    f.set_len(at as u64).map_err(err("truncate torn tail"))?;
                    f.sync_data().map_err(err("sync block"))?;
                    rec.torn_tail = Some((path.clone(), at as u64, len - at as u64));
                }
                if let Some(l) = s.last {
                    last = last.max(l);
                }
                roll = s.sealed || s.bad_tail;
                scanned.push(start);
                let (block, live_bytes) = scanned_block(start, s, &mut subjects);
                bytes += live_bytes;
                block
            }
        };
        files.insert(
            start,
            BlockFiles {
                blk: Arc::new(f),
                dlt: None,
            },
        );
        blocks.push(block);
    }
    // The index remembers how long each block was when it was last written: a shorter block
    // lost records even if the cut fell exactly between two of them.
    for b in &blocks {
        let Some(&(len, next)) = index.as_ref().and_then(|i| i.get(&b.start)) else {
            continue;
        };
        let plausible = next <= record::MAX_SEQ && next > b.next_seq();
        if u64::from(b.len) < len && plausible && !lost.contains(&b.next_seq()) {
            let c = Corruption {
                file: blk_path(dir, b.start),
                offset: u64::from(b.len),
                first_seq: b.next_seq(),
                last_seq: next - 1,
                reason: format!("block is {} bytes, the index recorded {len}", b.len),
            };
            last.0 = last.0.max(c.last_seq);
            report(&mut rec, &mut lost, c);
        }
    }
    // The high-water mark is the last sequence a sync made durable (and that may have been
    // acknowledged): blocks that end before it lost records, cut at rest; their sequences are
    // lost, and new messages start after them.
    if let Some(mark) = mark.filter(|m| *m > last.0 && *m <= record::MAX_SEQ) {
        let (file, offset) = blocks.last().map_or((dir.join(MARK), 0), |b| {
            (blk_path(dir, b.start), u64::from(b.len))
        });
        let c = Corruption {
            file,
            offset,
            first_seq: last.0 + 1,
            last_seq: mark,
            reason: format!(
                "the blocks end at sequence {}, sequences up to {mark} were stored and synced",
                last.0
            ),
        };
        last.0 = mark;
        report(&mut rec, &mut lost, c);
    }
    for start in obsolete {
        for p in [blk_path(dir, start), dlt_path(dir, start)] {
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(io_err(name, "remove obsolete block", e));
                }
            }
        }
    }
    if let Some(b) = blocks.last() {
        roll |= b.next_seq() != last.0 + 1;
    }
    let parts = Parts {
        blocks,
        subjects,
        bytes,
        last_seq: last.0,
        last_ts: last.1,
        lost,
        roll,
    };
    Ok(Recovered {
        parts,
        recovery: rec,
        files,
        scanned,
        index,
    })
}

impl FileStore {
    /// Open (or create) the store in `cfg.dir`, recovering what is there, then apply `limits`.
    pub fn open(cfg: FileStoreConfig, limits: Limits) -> Result<FileStore> {
        let name: Arc<str> = Arc::from(cfg.dir.display().to_string());
        create_dir_durable(&cfg.dir).map_err(|e| io_err(&name, "create directory", e))?;
        let mark = match cfg.high_water_mark {
            true => {
                let (doc, body) = DocFile::open(&cfg.dir, MARK)
                    .map_err(|e| io_err(&name, "open high-water mark", e))?;
                let value = body.as_deref().and_then(Mark::parse).unwrap_or(0);
                Some(Mark::new(doc, value))
            }
            false => None,
        };
        let Recovered {
            parts,
            recovery,
            files,
            scanned,
            index,
        } = recover(&cfg.dir, &name, mark.as_ref().map(|m| m.value))?;
        let recovered: Vec<(u64, u64, u64)> = parts
            .blocks
            .iter()
            .map(|b| (b.start, u64::from(b.len), b.next_seq()))
            .collect();
        let clean = index_matches(index.as_ref(), &recovered);
        // Whatever survived in the page cache becomes durable before anything is served (sealed
        // blocks were synced when they were sealed; after a clean close everything was).
        for start in scanned.into_iter().filter(|_| !clean) {
            if let Some(f) = files.get(&start) {
                f.blk
                    .sync_data()
                    .map_err(|e| io_err(&name, "sync block", e))?;
            }
        }
        let last_seq = parts.last_seq;
        let mut mark = mark;
        if let Some(m) = &mut mark {
            // Everything recovered is durable now (synced above, or by an earlier open).
            m.raise(last_seq, true)
                .map_err(|e| io_err(&name, "write high-water mark", e))?;
        }
        let durable = Arc::new(Durable::new(
            name.clone(),
            cfg.io_hook.clone(),
            cfg.sync,
            last_seq,
            mark,
        ));
        let active = files.keys().next_back().copied().unwrap_or(0);
        let ctl = Arc::new(ScrubCtl::default());
        let backend = FileBackend {
            dir: cfg.dir.clone(),
            name: name.clone(),
            policy: cfg.sync,
            durable: durable.clone(),
            files,
            active,
            last_written: last_seq,
            dirty: Vec::new(),
            dir_dirty: !clean,
            ahead: Mutex::new(None),
            scrub: ctl.clone(),
        };
        let block_size = cfg.block_size.clamp(4 << 10, 1 << 30);
        let mut engine = Engine::new(backend, limits, block_size, cfg.cache_blocks, parts)?;
        engine.backend.sync_meta(false)?;
        let summary = engine.block_summary();
        if !index_matches(index.as_ref(), &summary) {
            write_index(&cfg.dir, &summary).map_err(|e| io_err(&name, "write index", e))?;
        }
        let d = durable.clone();
        let policy = cfg.sync;
        let syncer = std::thread::Builder::new()
            .name("natrium-store-sync".into())
            .spawn(move || d.run(policy))
            .map_err(|e| io_err(&name, "start syncer thread", e))?;
        let shared = Arc::new(Shared {
            engine: parking_lot::Mutex::new(engine),
            durable: Some(durable),
        });
        let scrubber = match cfg.scrub {
            Some(policy) if policy.rate > 0 => {
                let (weak, ctl) = (Arc::downgrade(&shared), ctl.clone());
                Some(
                    std::thread::Builder::new()
                        .name("natrium-store-scrub".into())
                        .spawn(move || scrub::run(weak, ctl, policy))
                        .map_err(|e| io_err(&name, "start scrub thread", e))?,
                )
            }
            _ => None,
        };
        Ok(FileStore {
            shared,
            recovery,
            syncer: Mutex::new(Some(syncer)),
            scrub: ctl,
            scrubber: Mutex::new(scrubber),
        })
    }

    /// What recovery found when this store was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Damage found since open, by reads, verification or the scrub (not what `recovery` lists).
    pub fn damage(&self) -> Vec<Corruption> {
        self.shared.engine.lock().damage().to_vec()
    }

    /// Syncs done so far and how far they reach.
    pub fn sync_stats(&self) -> SyncStats {
        self.shared
            .durable
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default()
    }

    /// Blocks, loaded indexes and their memory, index loads, verified blocks.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.engine.lock().cache_stats()
    }

    /// Check every record of every sealed block now (what the scrub does over time); returns
    /// the damage found (also in `damage`).
    pub fn verify_now(&self) -> Result<Vec<Corruption>> {
        self.shared.engine.lock().verify_all()
    }

    fn join_threads(&self) {
        self.scrub.stop();
        if let Some(h) = self.scrubber.lock().take() {
            let _ = h.join();
        }
        if let Some(h) = self.syncer.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        use crate::StreamStore;
        if let Err(e) = self.shared.stop() {
            tracing::warn!(error = %e, "closing the file store failed");
        }
        self.join_threads();
    }
}

crate::shared::forward_stream_store!(FileStore, shared);
