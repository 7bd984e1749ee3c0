//! Simulated power loss: reads the undo journal the LD_PRELOAD shim (`shim/powerloss.c`) keeps
//! for a process, and after that process was killed, undoes every change no sync made durable.
//!
//! The shim journals, before each change to a file under the tracked root, what it destroys (old
//! bytes and size; a replaced or unlinked file is hard-linked aside). A data change is durable
//! once its file is fsynced after it; a created, renamed or removed name once its directory is.
//! `apply` walks the journal from the newest record back and undoes the rest. The format is
//! described at the top of `shim/powerloss.c`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the shim library was built (by `build.rs`).
pub const SHIM: &str = env!("NATRIUM_POWERLOSS_SHIM");

/// The environment a process needs to run under the shim: the library, the tracked root and
/// the journal (which must live outside the root, on the same file system).
pub fn env(root: &Path, journal: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), SHIM.into()),
        (
            "NATRIUM_POWERLOSS_ROOT".into(),
            root.to_string_lossy().into_owned(),
        ),
        (
            "NATRIUM_POWERLOSS_JOURNAL".into(),
            journal.to_string_lossy().into_owned(),
        ),
    ]
}

const MAGIC: &[u8; 8] = b"NPLJRNL1";

/// One journal record (see the shim for their meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Write {
        ino: u64,
        old_size: u64,
        offset: u64,
        old: Vec<u8>,
    },
    Sync {
        ino: u64,
        upto: u64,
    },
    SyncAll {
        upto: u64,
    },
    Create {
        dir: u64,
        ino: u64,
        path: PathBuf,
    },
    Mkdir {
        dir: u64,
        ino: u64,
        path: PathBuf,
    },
    Rename {
        old_dir: u64,
        new_dir: u64,
        ino: u64,
        old: PathBuf,
        new: PathBuf,
        aside: Option<PathBuf>,
    },
    Unlink {
        dir: u64,
        ino: u64,
        path: PathBuf,
        aside: Option<PathBuf>,
    },
    Rmdir {
        dir: u64,
        ino: u64,
        path: PathBuf,
    },
    Cancel {
        at: u64,
    },
    Unsupported(String),
}

/// A journal as read: records with their offsets, oldest first.
#[derive(Debug, Default)]
pub struct Journal {
    pub records: Vec<(u64, Record)>,
    /// The last record was cut short (the process died while appending it; the change it
    /// describes had not started).
    pub torn_tail: bool,
}

/// What `apply` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub records: usize,
    /// Records whose change a later sync made durable (kept).
    pub durable: usize,
    /// Data changes undone, and the bytes they had written past the old end or over old bytes.
    pub writes_undone: usize,
    pub bytes_cut: u64,
    pub bytes_restored: u64,
    /// Name changes undone.
    pub files_removed: usize,
    pub dirs_removed: usize,
    pub renames_undone: usize,
    pub unlinks_undone: usize,
    pub rmdirs_undone: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerLossError {
    #[error("power-loss journal {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("power-loss journal {0}: not a journal (bad magic)")]
    BadMagic(PathBuf),
    #[error("power-loss journal {0}: bad record at offset {1}: {2}")]
    BadRecord(PathBuf, u64, &'static str),
    #[error("power-loss journal {0}: the process did something the journal cannot model: {1}")]
    Unsupported(PathBuf, String),
    #[error("undoing {what} on {path}: {err}")]
    Undo {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u64(&mut self) -> Option<u64> {
        let s = self.b.get(self.at..self.at + 8)?;
        self.at += 8;
        Some(u64::from_le_bytes(s.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        let s = self.b.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_le_bytes(s.try_into().ok()?))
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn path(&mut self) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let n = self.u32()? as usize;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(self.bytes(n)?)))
    }
    fn opt_path(&mut self) -> Option<Option<PathBuf>> {
        let p = self.path()?;
        Some(if p.as_os_str().is_empty() {
            None
        } else {
            Some(p)
        })
    }
}

fn parse_record(kind: u8, body: &[u8]) -> Option<Record> {
    let mut c = Cursor { b: body, at: 0 };
    let r = match kind {
        b'W' => {
            let ino = c.u64()?;
            let old_size = c.u64()?;
            let offset = c.u64()?;
            let n = usize::try_from(c.u64()?).ok()?;
            Record::Write {
                ino,
                old_size,
                offset,
                old: c.bytes(n)?.to_vec(),
            }
        }
        b'S' => Record::Sync {
            ino: c.u64()?,
            upto: c.u64()?,
        },
        b'A' => Record::SyncAll { upto: c.u64()? },
        b'C' => Record::Create {
            dir: c.u64()?,
            ino: c.u64()?,
            path: c.path()?,
        },
        b'M' => Record::Mkdir {
            dir: c.u64()?,
            ino: c.u64()?,
            path: c.path()?,
        },
        b'R' => Record::Rename {
            old_dir: c.u64()?,
            new_dir: c.u64()?,
            ino: c.u64()?,
            old: c.path()?,
            new: c.path()?,
            aside: c.opt_path()?,
        },
        b'U' => Record::Unlink {
            dir: c.u64()?,
            ino: c.u64()?,
            path: c.path()?,
            aside: c.opt_path()?,
        },
        b'D' => Record::Rmdir {
            dir: c.u64()?,
            ino: c.u64()?,
            path: c.path()?,
        },
        b'K' => Record::Cancel { at: c.u64()? },
        b'Z' => {
            let n = c.u32()? as usize;
            Record::Unsupported(String::from_utf8_lossy(c.bytes(n)?).into_owned())
        }
        _ => return None,
    };
    (c.at == body.len()).then_some(r)
}

/// Reads a journal file.
pub fn read(path: &Path) -> Result<Journal, PowerLossError> {
    let b = fs::read(path).map_err(|e| PowerLossError::Io(path.into(), e))?;
    parse(path, &b)
}

fn parse(path: &Path, b: &[u8]) -> Result<Journal, PowerLossError> {
    if b.get(..8) != Some(MAGIC.as_slice()) {
        return Err(PowerLossError::BadMagic(path.into()));
    }
    let mut j = Journal::default();
    let mut at = 8usize;
    while at < b.len() {
        let Some(len) = b
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            j.torn_tail = true;
            break;
        };
        let len = len as usize;
        if len < 5 {
            return Err(PowerLossError::BadRecord(path.into(), at as u64, "length"));
        }
        let Some(rec) = b.get(at..at + len) else {
            j.torn_tail = true;
            break;
        };
        let r = parse_record(rec[4], &rec[5..]).ok_or(PowerLossError::BadRecord(
            path.into(),
            at as u64,
            "fields",
        ))?;
        j.records.push((at as u64, r));
        at += len;
    }
    Ok(j)
}

/// Every regular file and directory under `root`, by inode.
fn inodes(root: &Path) -> HashMap<u64, PathBuf> {
    let mut map = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            map.insert(m.ino(), p);
        }
    }
    map
}

fn ino_of(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.ino())
}

fn undo_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PowerLossError {
    let path = path.to_path_buf();
    move |err| PowerLossError::Undo { what, path, err }
}

/// Undoes, in `root`, every change journaled in `journal` that no sync made durable, newest
/// first. The process that wrote the journal must be dead.
pub fn apply(journal: &Path, root: &Path) -> Result<Applied, PowerLossError> {
    let j = read(journal)?;
    let mut out = Applied {
        records: j.records.len(),
        ..Applied::default()
    };
    let cancelled: HashSet<u64> = j
        .records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Cancel { at } => Some(*at),
            _ => None,
        })
        .collect();
    if let Some((_, Record::Unsupported(what))) = j
        .records
        .iter()
        .find(|(_, r)| matches!(r, Record::Unsupported(_)))
    {
        return Err(PowerLossError::Unsupported(journal.into(), what.clone()));
    }
    let mut paths = inodes(root);
    // The latest sync seen so far (walking back) per inode, and of everything.
    let mut synced: HashMap<u64, u64> = HashMap::new();
    let mut all = 0u64;
    let durable = |synced: &HashMap<u64, u64>, all: u64, ino: u64, at: u64| {
        all > at || synced.get(&ino).is_some_and(|&u| u > at)
    };
    for (at, r) in j.records.iter().rev() {
        let at = *at;
        if cancelled.contains(&at) {
            continue;
        }
        match r {
            Record::Sync { ino, upto } => {
                let e = synced.entry(*ino).or_default();
                *e = (*e).max(*upto);
            }
            Record::SyncAll { upto } => all = all.max(*upto),
            Record::Cancel { .. } | Record::Unsupported(_) => {}
            Record::Write {
                ino,
                old_size,
                offset,
                old,
            } => {
                if durable(&synced, all, *ino, at) {
                    out.durable += 1;
                    continue;
                }
                let Some(path) = paths.get(ino) else {
                    continue; // the file itself did not survive
                };
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(undo_err("open", path))?;
                let size = f.metadata().map_err(undo_err("stat", path))?.len();
                f.set_len(*old_size).map_err(undo_err("truncate", path))?;
                f.write_all_at(old, *offset)
                    .map_err(undo_err("write back", path))?;
                out.writes_undone += 1;
                out.bytes_cut += size.saturating_sub(*old_size);
                out.bytes_restored += old.len() as u64;
            }
            Record::Create { dir, ino, path } => {
                if durable(&synced, all, *dir, at) {
                    out.durable += 1;
                } else if ino_of(path) == Some(*ino) {
                    fs::remove_file(path).map_err(undo_err("remove created file", path))?;
                    paths.remove(ino);
                    out.files_removed += 1;
                }
            }
            Record::Mkdir { dir, ino, path } => {
                if durable(&synced, all, *dir, at) {
                    out.durable += 1;
                } else if ino_of(path) == Some(*ino) {
                    fs::remove_dir_all(path).map_err(undo_err("remove made directory", path))?;
                    paths.retain(|_, p| !p.starts_with(path));
                    out.dirs_removed += 1;
                }
            }
            Record::Rename {
                old_dir,
                new_dir,
                ino,
                old,
                new,
                aside,
            } => {
                if durable(&synced, all, *old_dir, at) && durable(&synced, all, *new_dir, at) {
                    out.durable += 1;
                } else if ino_of(new) == Some(*ino) {
                    fs::rename(new, old).map_err(undo_err("rename back", new))?;
                    paths.insert(*ino, old.clone());
                    if let Some(a) = aside {
                        fs::hard_link(a, new).map_err(undo_err("restore replaced file", new))?;
                        if let Some(i) = ino_of(new) {
                            paths.insert(i, new.clone());
                        }
                    }
                    out.renames_undone += 1;
                }
            }
            Record::Unlink {
                dir,
                ino,
                path,
                aside,
            } => {
                if durable(&synced, all, *dir, at) {
                    out.durable += 1;
                } else if let Some(a) = aside {
                    if ino_of(path).is_none() {
                        fs::hard_link(a, path).map_err(undo_err("restore unlinked file", path))?;
                        paths.insert(*ino, path.clone());
                        out.unlinks_undone += 1;
                    }
                }
            }
            Record::Rmdir { dir, ino: _, path } => {
                if durable(&synced, all, *dir, at) {
                    out.durable += 1;
                } else if ino_of(path).is_none() {
                    fs::create_dir(path).map_err(undo_err("restore removed directory", path))?;
                    if let Some(i) = ino_of(path) {
                        paths.insert(i, path.clone());
                    }
                    out.rmdirs_undone += 1;
                }
            }
        }
    }
    Ok(out)
}

/// One line describing a record.
pub fn describe(r: &Record) -> String {
    match r {
        Record::Write {
            ino,
            old_size,
            offset,
            old,
        } => format!(
            "write     ino {ino} at {offset} (old size {old_size}, {} old bytes)",
            old.len()
        ),
        Record::Sync { ino, upto } => format!("sync      ino {ino} covers < {upto}"),
        Record::SyncAll { upto } => format!("sync all  covers < {upto}"),
        Record::Create { dir, ino, path } => {
            format!("create    {} (ino {ino}, dir {dir})", path.display())
        }
        Record::Mkdir { dir, ino, path } => {
            format!("mkdir     {} (ino {ino}, dir {dir})", path.display())
        }
        Record::Rename {
            old_dir,
            new_dir,
            ino,
            old,
            new,
            aside,
        } => format!(
            "rename    {} -> {} (ino {ino}, dirs {old_dir} {new_dir}{})",
            old.display(),
            new.display(),
            if aside.is_some() { ", replaced" } else { "" }
        ),
        Record::Unlink { dir, ino, path, .. } => {
            format!("unlink    {} (ino {ino}, dir {dir})", path.display())
        }
        Record::Rmdir { dir, ino, path } => {
            format!("rmdir     {} (ino {ino}, dir {dir})", path.display())
        }
        Record::Cancel { at } => format!("cancel    record at {at}"),
        Record::Unsupported(w) => format!("UNSUPPORTED {w}"),
    }
}

/// Removes a journal and its aside directory (after `apply`, or when the process stopped in a
/// way that loses nothing: a clean exit or a kill without power loss).
pub fn discard(journal: &Path) {
    let _ = fs::remove_file(journal);
    let mut aside = journal.as_os_str().to_owned();
    aside.push(".aside");
    let _ = fs::remove_dir_all(PathBuf::from(aside));
}

/// True if a journal file exists (the process ran under the shim).
pub fn exists(journal: &Path) -> bool {
    File::open(journal).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 5) as u32).to_le_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parses_records_and_stops_at_a_torn_tail() {
        let mut b = MAGIC.to_vec();
        let mut w = Vec::new();
        for v in [7u64, 100, 96, 2] {
            w.extend_from_slice(&v.to_le_bytes());
        }
        w.extend_from_slice(b"ab");
        b.extend(rec(b'W', &w));
        let mut s = Vec::new();
        s.extend_from_slice(&7u64.to_le_bytes());
        s.extend_from_slice(&50u64.to_le_bytes());
        b.extend(rec(b'S', &s));
        let full = b.len();
        b.extend(rec(b'S', &s));
        b.truncate(full + 7);
        let j = parse(Path::new("j"), &b).unwrap();
        assert!(j.torn_tail);
        assert_eq!(
            j.records,
            vec![
                (
                    8,
                    Record::Write {
                        ino: 7,
                        old_size: 100,
                        offset: 96,
                        old: b"ab".to_vec()
                    }
                ),
                (8 + 4 + 1 + 34, Record::Sync { ino: 7, upto: 50 }),
            ]
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            parse(Path::new("j"), b"NOTAJRNL"),
            Err(PowerLossError::BadMagic(_))
        ));
        let mut b = MAGIC.to_vec();
        b.extend(rec(b'?', b"xx"));
        assert!(matches!(
            parse(Path::new("j"), &b),
            Err(PowerLossError::BadRecord(..))
        ));
    }
}
