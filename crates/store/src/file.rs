//! The file store: block files and delete records under the stream's directory, recovery (torn
//! tails, checksum verification, resync past corruption, the index cross-check) and group commit.
//!
//! Files: `<start:020>.blk` (records, see `record`), `<start:020>.dlt` (12-byte delete records:
//! `seq u64 | crc32c(seq) u32`, little-endian), `index` (a cache of block lengths, see `docs/STORE.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use rustc_hash::FxHashSet;

use crate::durable::{Durable, IoHook, SyncStats};
use crate::engine::{Backend, Block, Engine, Parts, NO_SUBJECT};
use crate::record::{self, DecodeError, OVERHEAD};
use crate::shared::Shared;
use crate::subjects::Subjects;
use crate::{Limits, Result, StoreError, SyncPolicy};

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
}

impl FileStoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStoreConfig {
            dir: dir.into(),
            block_size: 8 << 20,
            sync: SyncPolicy::Always,
            io_hook: None,
        }
    }
}

/// Damage found on recovery. Sequences `first_seq ..= last_seq` (none when `first_seq >
/// last_seq`) are lost: loading them returns `StoreError::Corrupt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub file: PathBuf,
    pub offset: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub reason: String,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {} (messages {}..={})",
            self.file.display(),
            self.offset,
            self.reason,
            self.first_seq,
            self.last_seq
        )
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
}

/// A durable stream store in a directory of block files.
pub struct FileStore {
    shared: Shared<FileBackend>,
    recovery: Recovery,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

const INDEX: &str = "index";
const INDEX_MAGIC: &[u8; 8] = b"NTRIDX01";
const DLT_ENTRY: usize = 12;
/// Sequences listed one by one per damaged range (a crafted file name could claim billions).
const MAX_LOST: usize = 1 << 20;

fn io_err(store: &Arc<str>, what: &'static str, e: io::Error) -> StoreError {
    StoreError::Io {
        store: store.clone(),
        what,
        error: Arc::from(e.to_string()),
    }
}

fn blk_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.blk"))
}

fn dlt_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.dlt"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
}

impl Backend for FileBackend {
    fn name(&self) -> &Arc<str> {
        &self.name
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
        self.files.clear();
        self.dirty.clear();
    }

    fn destroy(&mut self) -> Result<()> {
        *self.ahead.get_mut() = None;
        self.files.clear();
        self.dirty.clear();
        fs::remove_dir_all(&self.dir).map_err(self.err("remove stream directory"))
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

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = buf.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Block start → (bytes, next sequence), if the index is present and intact.
fn read_index(dir: &Path) -> Option<BTreeMap<u64, (u64, u64)>> {
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
    let mut out = FxHashSet::default();
    for e in buf.chunks_exact(DLT_ENTRY) {
        let (s, c) = e.split_at(8);
        if crc32c::crc32c(s).to_le_bytes() == c {
            out.insert(u64_at(s, 0));
        } else {
            tracing::warn!(store = %name, file = %path.display(), "bad delete record ignored");
        }
    }
    Ok(out)
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

/// Everything recovery learns from one block.
struct Scanned {
    block: Block,
    bytes: u64,
    /// (seq, ts) of the newest record, message or marker.
    last: Option<(u64, i64)>,
    sealed: bool,
    bad_tail: bool,
    torn_at: Option<usize>,
}

struct Scanner<'a> {
    path: &'a Path,
    subjects: &'a mut Subjects,
    lost: &'a mut BTreeSet<u64>,
    corruption: &'a mut Vec<Corruption>,
}

impl Scanner<'_> {
    fn report(&mut self, offset: usize, first: u64, last: u64, reason: &str) {
        let c = Corruption {
            file: self.path.to_path_buf(),
            offset: offset as u64,
            first_seq: first,
            last_seq: last,
            reason: reason.to_string(),
        };
        tracing::warn!(corruption = %c, "stream store damaged");
        self.lost.extend((first..=last).take(MAX_LOST));
        self.corruption.push(c);
    }

    fn scan(
        &mut self,
        start: u64,
        buf: &[u8],
        dead: &FxHashSet<u64>,
        is_last: bool,
        next_start: Option<u64>,
    ) -> Scanned {
        let mut s = Scanned {
            block: Block::new(start),
            bytes: 0,
            last: None,
            sealed: false,
            bad_tail: false,
            torn_at: None,
        };
        let mut pos = 0usize;
        while let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) {
            let expected = s.block.next_seq();
            let mut incomplete = false;
            let why = match record::decode(rest) {
                Ok(r) if r.is_marker() => {
                    s.last = s.last.max(Some((r.seq, r.ts)));
                    pos += r.len;
                    s.block.len = pos as u32;
                    s.sealed = s.block.count() > 0 && pos == buf.len();
                    continue;
                }
                Ok(r) if r.seq == expected => {
                    let live = !dead.contains(&r.seq);
                    let id = if live {
                        self.subjects.add(r.subject, r.seq)
                    } else {
                        NO_SUBJECT
                    };
                    s.block.push(pos as u32, id, r.len as u32, r.ts, live);
                    if live {
                        s.bytes += r.len as u64;
                    }
                    s.last = s.last.max(Some((r.seq, r.ts)));
                    s.sealed = false;
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
            let torn_like = incomplete || rest.iter().all(|b| *b == 0);
            match resync(buf, pos, expected) {
                None if is_last && torn_like => {
                    s.torn_at = Some(pos);
                    break;
                }
                None => {
                    let upto = next_start.map_or(expected, |n| (n - 1).max(expected));
                    self.report(pos, expected, upto, why);
                    s.bad_tail = true;
                    s.block.len = buf.len() as u32;
                    break;
                }
                Some((p, resume)) => {
                    self.report(pos, expected, resume.saturating_sub(1), why);
                    for _ in expected..resume {
                        s.block.push_lost(pos as u32);
                    }
                    pos = p;
                }
            }
        }
        if s.bad_tail {
            // The damaged record's sequence was assigned: never reuse it.
            let ts = s.last.map_or(0, |l| l.1);
            s.last = s.last.max(Some((s.block.next_seq(), ts)));
        }
        let tail_lost = next_start.filter(|n| *n > s.block.next_seq());
        if let (Some(n), false, false) = (tail_lost, s.sealed, s.bad_tail) {
            if s.block.count() > 0 {
                let first = s.block.next_seq();
                self.report(
                    buf.len(),
                    first,
                    n - 1,
                    "block ends without its seal record",
                );
            }
        }
        s
    }
}

/// Read every block, verify every record, and build the engine's parts.
fn recover(dir: &Path, name: &Arc<str>) -> Result<(Parts, Recovery, BTreeMap<u64, BlockFiles>)> {
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
    let (mut bytes, mut last) = (0u64, (0u64, 0i64));
    let mut roll = false;
    let mut buf = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let path = blk_path(dir, start);
        let is_last = k + 1 == starts.len();
        let next_start = starts.get(k + 1).copied();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err("open block"))?;
        buf.clear();
        f.read_to_end(&mut buf).map_err(err("read block"))?;
        if buf.is_empty() && !is_last {
            obsolete.push(start);
            continue;
        }
        if buf.is_empty() {
            // A new block not yet written to still tells the next sequence.
            last.0 = last.0.max(start.saturating_sub(1));
        }
        // A marker first in a block is a purge floor: every older block is gone.
        if matches!(record::decode(&buf), Ok(r) if r.is_marker()) {
            obsolete.extend(blocks.drain(..).map(|b| b.start));
            files.clear();
            subjects.clear();
            lost.clear();
            rec.corruption.clear();
            bytes = 0;
        }
        let dead = read_dlt(dir, start, name)?;
        let mut sc = Scanner {
            path: &path,
            subjects: &mut subjects,
            lost: &mut lost,
            corruption: &mut rec.corruption,
        };
        let s = sc.scan(start, &buf, &dead, is_last, next_start);
        if let Some(at) = s.torn_at {
            tracing::warn!(file = %path.display(), at, "cutting off a torn last record");
            f.set_len(at as u64).map_err(err("truncate torn tail"))?;
            f.sync_data().map_err(err("sync block"))?;
            rec.torn_tail = Some((path.clone(), at as u64, (buf.len() - at) as u64));
        }
        if let Some(l) = s.last {
            last = last.max(l);
        }
        bytes += s.bytes;
        roll = s.sealed || s.bad_tail;
        files.insert(
            start,
            BlockFiles {
                blk: Arc::new(f),
                dlt: None,
            },
        );
        blocks.push(s.block);
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
            tracing::warn!(corruption = %c, "stream store damaged");
            lost.extend((c.first_seq..=c.last_seq).take(MAX_LOST));
            last.0 = last.0.max(c.last_seq);
            rec.corruption.push(c);
        }
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
    Ok((parts, rec, files))
}

impl FileStore {
    /// Open (or create) the store in `cfg.dir`, recovering what is there, then apply `limits`.
    pub fn open(cfg: FileStoreConfig, limits: Limits) -> Result<FileStore> {
        let name: Arc<str> = Arc::from(cfg.dir.display().to_string());
        fs::create_dir_all(&cfg.dir).map_err(|e| io_err(&name, "create directory", e))?;
        let (parts, recovery, files) = recover(&cfg.dir, &name)?;
        // Whatever survived in the page cache becomes durable before anything is served.
        for f in files.values() {
            f.blk
                .sync_data()
                .map_err(|e| io_err(&name, "sync block", e))?;
        }
        let last_seq = parts.last_seq;
        let durable = Arc::new(Durable::new(
            name.clone(),
            cfg.io_hook.clone(),
            cfg.sync,
            last_seq,
        ));
        let active = files.keys().next_back().copied().unwrap_or(0);
        let backend = FileBackend {
            dir: cfg.dir.clone(),
            name: name.clone(),
            policy: cfg.sync,
            durable: durable.clone(),
            files,
            active,
            last_written: last_seq,
            dirty: Vec::new(),
            dir_dirty: true,
            ahead: Mutex::new(None),
        };
        let block_size = cfg.block_size.clamp(4 << 10, 1 << 30);
        let mut engine = Engine::new(backend, limits, block_size, parts)?;
        engine.backend.sync_meta(false)?;
        write_index(&cfg.dir, &engine.block_summary())
            .map_err(|e| io_err(&name, "write index", e))?;
        let d = durable.clone();
        let policy = cfg.sync;
        let syncer = std::thread::Builder::new()
            .name("natrium-store-sync".into())
            .spawn(move || d.run(policy))
            .map_err(|e| io_err(&name, "start syncer thread", e))?;
        Ok(FileStore {
            shared: Shared {
                engine: parking_lot::Mutex::new(engine),
                durable: Some(durable),
            },
            recovery,
            syncer: Mutex::new(Some(syncer)),
        })
    }

    /// What recovery found when this store was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Syncs done so far and how far they reach.
    pub fn sync_stats(&self) -> SyncStats {
        self.shared
            .durable
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default()
    }

    fn join_syncer(&self) {
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
        self.join_syncer();
    }
}

crate::shared::forward_stream_store!(FileStore, shared);
