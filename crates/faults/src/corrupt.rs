//! Corruption injection into the files of a stopped node: single-bit flips at random offsets and
//! truncations, in the message blocks, the Raft groups' files, or every file of its store
//! directory, chosen by a seeded generator so a run can be repeated.

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Which files are damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The stream's message blocks (`*.blk`) only.
    MessageBlocks,
    /// Every regular file under the store directory (metadata, indexes, consumer state, Raft
    /// logs and snapshots).
    AllFiles,
    /// The files of the Raft groups only: everything under a directory named `raft` (segments,
    /// vote and log metadata, snapshot) or `meta` of `jetstream-cluster` (the meta group).
    RaftLog,
}

/// How much damage to do.
#[derive(Clone, Copy, Debug)]
pub struct CorruptConfig {
    pub target: Target,
    /// Single-bit flips.
    pub flips: usize,
    /// Files cut short.
    pub truncations: usize,
    /// Bytes at the end of each file left alone. A lone replica cannot tell damage to the last
    /// record of its last block from a write torn by a crash (docs/STORE.md), so the R1
    /// scenario spares it; replicated streams need not.
    pub spare_tail: u64,
}

impl Default for CorruptConfig {
    fn default() -> Self {
        CorruptConfig {
            target: Target::MessageBlocks,
            flips: 1,
            truncations: 0,
            spare_tail: 0,
        }
    }
}

/// One change made to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    BitFlip { file: PathBuf, offset: u64, bit: u8 },
    Truncate { file: PathBuf, from: u64, to: u64 },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::BitFlip { file, offset, bit } => {
                write!(f, "flipped bit {bit} at {offset} in {}", file.display())
            }
            Damage::Truncate { file, from, to } => {
                write!(f, "cut {} from {from} to {to} bytes", file.display())
            }
        }
    }
}

/// The non-empty regular files under `dir` that `target` selects, sorted.
pub fn files(dir: &Path, target: Target) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                break;
            }
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() > 0 {
                let pick = match target {
                    Target::MessageBlocks => p.extension().is_some_and(|x| x == "blk"),
                    // The store directory lock holds no data.
                    Target::AllFiles => !p.file_name().is_some_and(|n| n == "LOCK" || n == "lock"),
                    Target::RaftLog => in_raft_group(dir, &p),
                };
                if pick {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether `file` (under `root`) belongs to a Raft group's directory: a `raft` directory, or
/// the meta group's (`jetstream-cluster/meta`).
fn in_raft_group(root: &Path, file: &Path) -> bool {
    let Ok(rel) = file.strip_prefix(root) else {
        return false;
    };
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let dirs = &parts[..parts.len().saturating_sub(1)];
    dirs.iter().any(|d| *d == "raft")
        || dirs
            .windows(2)
            .any(|w| w[0] == "jetstream-cluster" && w[1] == "meta")
}

/// Damages `files` as `cfg` asks, choosing files and offsets with `rng`.
pub fn inject(
    rng: &mut fastrand::Rng,
    files: &[PathBuf],
    cfg: &CorruptConfig,
) -> std::io::Result<Vec<Damage>> {
    let mut done = Vec::new();
    if files.is_empty() {
        return Ok(done);
    }
    for _ in 0..cfg.flips {
        let file = &files[rng.usize(..files.len())];
        let f = OpenOptions::new().read(true).write(true).open(file)?;
        let len = f.metadata()?.len().saturating_sub(cfg.spare_tail);
        if len == 0 {
            continue;
        }
        let offset = rng.u64(..len);
        let bit = rng.u8(..8);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset)?;
        b[0] ^= 1 << bit;
        f.write_all_at(&b, offset)?;
        f.sync_all()?;
        done.push(Damage::BitFlip {
            file: file.clone(),
            offset,
            bit,
        });
    }
    for _ in 0..cfg.truncations {
        let file = &files[rng.usize(..files.len())];
        let f = OpenOptions::new().write(true).open(file)?;
        let from = f.metadata()?.len();
        if from <= cfg.spare_tail {
            continue;
        }
        let to = rng.u64(..from - cfg.spare_tail);
        f.set_len(to)?;
        f.sync_all()?;
        done.push(Damage::Truncate {
            file: file.clone(),
            from,
            to,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_exactly_one_bit_per_flip_and_truncates_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("s/msgs");
        std::fs::create_dir_all(&sub).unwrap();
        let blk = sub.join("1.blk");
        std::fs::write(&blk, vec![0u8; 4096]).unwrap();
        std::fs::write(sub.join("index"), vec![7u8; 100]).unwrap();
        std::fs::write(sub.join("empty.blk"), b"").unwrap();
        assert_eq!(files(dir.path(), Target::MessageBlocks), vec![blk.clone()]);
        assert_eq!(files(dir.path(), Target::AllFiles).len(), 2);
        let mut rng = fastrand::Rng::with_seed(7);
        let cfg = CorruptConfig {
            target: Target::MessageBlocks,
            flips: 3,
            truncations: 0,
            spare_tail: 0,
        };
        let d = inject(&mut rng, std::slice::from_ref(&blk), &cfg).unwrap();
        assert_eq!(d.len(), 3);
        let ones: u32 = std::fs::read(&blk)
            .unwrap()
            .iter()
            .map(|b| b.count_ones())
            .sum();
        // Three flips, unless two hit the same bit (then one is undone).
        assert!(ones == 3 || ones == 1, "{ones}");
        let cfg = CorruptConfig {
            target: Target::MessageBlocks,
            flips: 0,
            truncations: 1,
            spare_tail: 0,
        };
        let d = inject(&mut rng, std::slice::from_ref(&blk), &cfg).unwrap();
        let Damage::Truncate { from, to, .. } = d[0] else {
            panic!()
        };
        assert_eq!(from, 4096);
        assert_eq!(std::fs::metadata(&blk).unwrap().len(), to);
        assert!(to < from);
    }

    #[test]
    fn the_raft_target_picks_group_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stream = root.join("jetstream-cluster/streams/$G/S");
        let write = |rel: &Path| {
            std::fs::create_dir_all(rel.parent().unwrap()).unwrap();
            std::fs::write(rel, b"x").unwrap();
        };
        let seg = stream.join("raft/0000000000000001.seg");
        let meta_seg = root.join("jetstream-cluster/meta/0000000000000001.seg");
        write(&seg);
        write(&meta_seg);
        write(&stream.join("msgs/1.blk"));
        write(&stream.join("meta.json"));
        let mut want = vec![meta_seg, seg];
        want.sort();
        assert_eq!(files(root, Target::RaftLog), want);
        assert_eq!(files(root, Target::MessageBlocks).len(), 1);
    }
}
