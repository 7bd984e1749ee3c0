//! The offline verifier: reads every file of a store directory (read only, nothing is repaired)
//! and reports damage: records that fail their checksum or hold the wrong sequence, blocks cut
//! short, seals (index and summary records) that disagree with the records, bad delete records,
//! and consumer state files with no intact slot.
//!
//! `verify_dir` takes a stream's message directory, a stream, an account, or the whole JetStream
//! store directory: every directory below that holds blocks or consumer state is checked.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::FxHashSet;

use crate::durable::Mark;
use crate::file::{blk_path, parse_dlt, read_index, MARK};
use crate::record;
use crate::scan::{self, Scanned};
use crate::seal;

/// One finding. Sequences `first_seq ..= last_seq` are affected (none when `first_seq >
/// last_seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub offset: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.offset > 0 {
            write!(f, " at byte {}", self.offset)?;
        }
        write!(f, ": {}", self.what)?;
        if self.first_seq <= self.last_seq {
            write!(f, " (messages {}..={})", self.first_seq, self.last_seq)?;
        }
        Ok(())
    }
}

/// What one directory of blocks (a stream's messages) or of consumer state holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    pub dir: PathBuf,
    pub blocks: usize,
    /// Blocks ending with their index and summary records.
    pub sealed: usize,
    /// Records read (messages, removed ones included, and lost ones).
    pub records: u64,
    /// Messages not removed and intact.
    pub messages: u64,
    /// Bytes of those messages (as `msg_size` counts them).
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Consumer state documents checked (`state.0`/`state.1` pairs).
    pub consumer_states: usize,
    /// Damage: data that is lost or that the store would refuse.
    pub problems: Vec<Problem>,
    /// Left by a crash or an older version and handled when the store opens (a torn last write,
    /// a partial delete record, a missing index or seal, a damaged older consumer state slot).
    pub notes: Vec<Problem>,
}

/// The result of `verify_dir`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub stores: Vec<StreamReport>,
}

impl Report {
    /// No damage found (notes are not damage).
    pub fn is_clean(&self) -> bool {
        self.stores.iter().all(|s| s.problems.is_empty())
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.stores.iter().flat_map(|s| s.problems.iter())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.stores {
            if s.blocks > 0 {
                writeln!(
                    f,
                    "{}: {} block(s) ({} sealed), {} message(s), {} bytes, sequences {}..={}",
                    s.dir.display(),
                    s.blocks,
                    s.sealed,
                    s.messages,
                    s.bytes,
                    s.first_seq,
                    s.last_seq
                )?;
            }
            if s.consumer_states > 0 {
                writeln!(
                    f,
                    "{}: {} consumer state(s)",
                    s.dir.display(),
                    s.consumer_states
                )?;
            }
            for p in &s.problems {
                writeln!(f, "  DAMAGE: {p}")?;
            }
            for n in &s.notes {
                writeln!(f, "  note: {n}")?;
            }
        }
        let damaged: usize = self.stores.iter().map(|s| s.problems.len()).sum();
        if damaged == 0 {
            write!(f, "no damage found in {} store(s)", self.stores.len())
        } else {
            write!(f, "{damaged} damaged place(s) found")
        }
    }
}

/// Check every block, delete record, index and consumer state file under `path` without
/// changing anything.
pub fn verify_dir(path: &Path) -> io::Result<Report> {
    let mut report = Report::default();
    walk(path, &mut report)?;
    Ok(report)
}

fn walk(dir: &Path, report: &mut Report) -> io::Result<()> {
    let mut subdirs = Vec::new();
    let (mut blocks, mut states) = (false, false);
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if e.file_type()?.is_dir() {
            subdirs.push(e.path());
        } else if name.ends_with(".blk") {
            blocks = true;
        } else if name == "state.0" || name == "state.1" {
            states = true;
        } else if name == "hwm.0" || name == "hwm.1" {
            // A store whose every block is gone still has its high-water mark.
            blocks = true;
        }
    }
    if blocks {
        report.stores.push(verify_blocks(dir)?);
    }
    if states {
        report.stores.push(verify_states(dir)?);
    }
    for d in subdirs {
        walk(&d, report)?;
    }
    Ok(())
}

fn problem(file: &Path, offset: u64, seqs: (u64, u64), what: impl Into<String>) -> Problem {
    Problem {
        file: file.to_path_buf(),
        offset,
        first_seq: seqs.0,
        last_seq: seqs.1,
        what: what.into(),
    }
}

const NONE: (u64, u64) = (1, 0);

fn verify_blocks(dir: &Path) -> io::Result<StreamReport> {
    let mut r = StreamReport {
        dir: dir.to_path_buf(),
        ..StreamReport::default()
    };
    let name: Arc<str> = Arc::from(dir.display().to_string());
    let mut starts = Vec::new();
    for e in fs::read_dir(dir)? {
        let fname = e?.file_name();
        if let Some(stem) = fname.to_string_lossy().strip_suffix(".blk") {
            match (stem.len(), stem.parse::<u64>()) {
                (20, Ok(s)) if (1..=record::MAX_SEQ).contains(&s) => starts.push(s),
                _ => r.notes.push(problem(
                    &dir.join(&fname),
                    0,
                    NONE,
                    "not a block file name; ignored",
                )),
            }
        }
    }
    starts.sort_unstable();
    let index = read_index(dir);
    if index.is_none() {
        r.notes.push(problem(
            &dir.join("index"),
            0,
            NONE,
            "index missing or damaged (rebuilt on open)",
        ));
    }
    // A block starting with a marker (a purge floor) makes every earlier block obsolete.
    let mut first_block = 0;
    for (k, &start) in starts.iter().enumerate() {
        let mut head = [0u8; record::OVERHEAD];
        let f = File::open(blk_path(dir, start))?;
        use std::os::unix::fs::FileExt;
        if f.read_exact_at(&mut head, 0).is_ok()
            && matches!(record::decode(&head), Ok(rec) if rec.is_marker())
        {
            first_block = k;
        }
    }
    for &start in starts.iter().take(first_block) {
        r.notes.push(problem(
            &blk_path(dir, start),
            0,
            NONE,
            "before a purge floor: obsolete, removed on open",
        ));
    }
    let live_starts = starts.get(first_block..).unwrap_or_default();
    let mut first_live = None;
    // The last sequence the blocks account for (held, or reported lost above).
    let mut end = 0;
    let mut tail = (dir.join(MARK), 0);
    for (k, &start) in live_starts.iter().enumerate() {
        let path = blk_path(dir, start);
        let buf = fs::read(&path)?;
        let is_last = k + 1 == live_starts.len();
        let next_start = live_starts.get(k + 1).copied();
        let dlt_file = dir.join(format!("{start:020}.dlt"));
        let dead = match fs::read(&dlt_file) {
            Ok(d) => {
                if d.len() % 12 != 0 {
                    r.notes.push(problem(
                        &dlt_file,
                        (d.len() / 12 * 12) as u64,
                        NONE,
                        "delete records end in a partial entry (cut off on open)",
                    ));
                }
                let whole = d.get(..d.len() / 12 * 12).unwrap_or_default();
                let set = parse_dlt(whole, &name, &dlt_file);
                if set.len() * 12 < whole.len() {
                    let bad = whole.len() / 12 - set.len();
                    r.problems.push(problem(
                        &dlt_file,
                        0,
                        NONE,
                        format!("{bad} delete record(s) fail their checksum or repeat (removed messages may come back)"),
                    ));
                }
                set
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => FxHashSet::default(),
            Err(e) => return Err(e),
        };
        let s = scan::scan(start, &buf, &dead, is_last, next_start);
        r.blocks += 1;
        r.records += s.index.count() as u64;
        r.messages += u64::from(s.live);
        r.bytes += s.live_bytes;
        if s.live > 0 && first_live.is_none() {
            first_live = (0..s.index.count())
                .find(|i| !s.index.is_dead(*i))
                .map(|i| start + i as u64);
        }
        if let Some(l) = s.last {
            r.last_seq = r.last_seq.max(l.0);
        }
        for f in &s.findings {
            r.problems.push(problem(
                &path,
                f.offset,
                (f.first_seq, f.last_seq),
                f.reason.clone(),
            ));
        }
        if let Some(at) = s.torn_at {
            r.notes.push(problem(
                &path,
                at as u64,
                NONE,
                format!(
                    "ends in a torn write of {} byte(s) (cut off on open)",
                    buf.len() - at
                ),
            ));
        }
        check_seal(&path, &buf, &s, is_last, &mut r);
        tail = (path.clone(), s.len as u64);
        if let Some(&(len, next)) = index.as_ref().and_then(|i| i.get(&start)) {
            let next_seq = start + s.index.count() as u64;
            if (s.len as u64) < len && next > next_seq && next <= record::MAX_SEQ {
                end = end.max(next - 1);
                r.problems.push(problem(
                    &path,
                    u64::from(s.len),
                    (next_seq, next - 1),
                    format!("block is {} bytes, the index recorded {len}", s.len),
                ));
            }
        }
    }
    end = end.max(r.last_seq);
    check_mark(dir, end, tail, &mut r)?;
    r.first_seq = first_live.unwrap_or(r.last_seq + 1);
    Ok(r)
}

/// The high-water mark (`hwm.0`/`hwm.1`, the last sequence a sync made durable) against where
/// the blocks end: sequences between are lost, as the store reports them when it opens.
fn check_mark(dir: &Path, end: u64, tail: (PathBuf, u64), r: &mut StreamReport) -> io::Result<()> {
    let mut newest: Option<(u64, Vec<u8>)> = None;
    let mut bad = Vec::new();
    for slot in ["hwm.0", "hwm.1"] {
        let p = dir.join(slot);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match crate::docfile::read_slot(&f)? {
            Some((g, body)) if newest.as_ref().is_none_or(|(n, _)| g > *n) => {
                newest = Some((g, body))
            }
            Some(_) => {}
            None if f.metadata()?.len() == 0 => {}
            None => bad.push(p),
        }
    }
    for p in bad {
        r.notes.push(problem(
            &p,
            0,
            NONE,
            "high-water mark slot damaged or torn (the other slot is used)",
        ));
    }
    let mark = newest.and_then(|(_, b)| Mark::parse(&b));
    if let Some(mark) = mark.filter(|m| *m > end && *m <= record::MAX_SEQ) {
        r.problems.push(problem(
            &tail.0,
            tail.1,
            (end + 1, mark),
            format!(
                "the blocks end at sequence {end}, sequences up to {mark} were stored and synced"
            ),
        ));
        r.last_seq = r.last_seq.max(mark);
    }
    Ok(())
}

/// A block's index and summary records must describe its records exactly.
fn check_seal(path: &Path, buf: &[u8], s: &Scanned, is_last: bool, r: &mut StreamReport) {
    let Some((sum, sum_at)) = &s.summary else {
        if s.sealed && s.index.count() > 0 {
            r.notes.push(problem(
                path,
                0,
                NONE,
                "sealed without an index and summary (an older version; added on open)",
            ));
        } else if !is_last && s.index.count() > 0 && s.findings.is_empty() {
            r.notes
                .push(problem(path, 0, NONE, "not sealed (summary added on open)"));
        }
        return;
    };
    r.sealed += 1;
    if !s.findings.is_empty() {
        // Already reported; the seal is expected to disagree with what is left.
        return;
    }
    let mut wrong = Vec::new();
    let count = s.index.count();
    if sum.count as usize != count {
        wrong.push(format!("{} records, the summary says {}", count, sum.count));
    }
    let index = buf
        .get(sum.index_at as usize..*sum_at as usize)
        .and_then(seal::decode_index);
    let Some(ix) = index else {
        wrong.push("the index record is damaged".into());
        report_seal(path, sum.index_at, wrong, r);
        return;
    };
    if ix.offsets != s.index.offsets {
        wrong.push("the index record's offsets disagree with the records".into());
    }
    // A removed message may have been erased (its subject zeroed): its subject is the one the
    // index record names. Every other record's subject must match it.
    let mut per = vec![0u32; sum.subjects.len()];
    let mut bytes = 0u64;
    let mut subjects_differ = false;
    for i in 0..count {
        let recorded = if ix.locals.is_empty() {
            0
        } else {
            ix.locals.get(i).copied().unwrap_or(u32::MAX)
        };
        if !s.index.is_dead(i) && s.index.local(i) != recorded {
            subjects_differ = true;
        }
        if let Some(n) = per.get_mut(recorded as usize) {
            *n += 1;
        }
        bytes += u64::from(s.index.range(i).1);
    }
    if subjects_differ {
        wrong.push("the index record's subjects disagree with the records".into());
    }
    if bytes != sum.msg_bytes {
        wrong.push(format!(
            "{bytes} message bytes, the summary says {}",
            sum.msg_bytes
        ));
    }
    for (x, n) in sum.subjects.iter().zip(&per) {
        if x.count != *n {
            wrong.push(format!(
                "{} message(s) on {}, the summary says {}",
                n,
                String::from_utf8_lossy(&x.name),
                x.count
            ));
        }
    }
    report_seal(path, sum.index_at, wrong, r);
}

fn report_seal(path: &Path, at: u32, wrong: Vec<String>, r: &mut StreamReport) {
    for w in wrong {
        r.problems
            .push(problem(path, u64::from(at), NONE, format!("seal: {w}")));
    }
}

fn verify_states(dir: &Path) -> io::Result<StreamReport> {
    let mut r = StreamReport {
        dir: dir.to_path_buf(),
        consumer_states: 1,
        ..StreamReport::default()
    };
    let mut intact = Vec::new();
    for slot in ["state.0", "state.1"] {
        let p = dir.join(slot);
        let Ok(f) = File::open(&p) else {
            continue;
        };
        let empty = f.metadata()?.len() == 0;
        match crate::docfile::read_slot(&f)? {
            Some((generation, _)) => intact.push((generation, slot)),
            None if empty => {}
            None => r.notes.push(problem(&p, 0, NONE, "slot damaged or torn")),
        }
    }
    if intact.is_empty() && !r.notes.is_empty() {
        r.notes.clear();
        r.problems.push(problem(
            dir,
            0,
            NONE,
            "no intact slot in state.0 or state.1: the consumer's state is lost",
        ));
    } else if let (Some(newest), false) = (intact.iter().max(), r.notes.is_empty()) {
        for n in &mut r.notes {
            n.what = format!("{} ({} generation {} is used)", n.what, newest.1, newest.0);
        }
    }
    Ok(r)
}
