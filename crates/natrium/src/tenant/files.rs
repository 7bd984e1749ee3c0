//! File writes that never leave a torn or half-written file: a temporary file in the same
//! directory, written, fsynced, renamed over the target, and the directory fsynced. Secrets
//! (seeds, `.creds`) are created with mode 0600 and their directories 0700 from the start, so
//! they are never readable by others, not even for a moment.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Who may read a file we write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0600: seeds and credentials.
    Secret,
    /// 0644: JWTs.
    Public,
    /// 0640 with this group: configuration with password hashes, which the server's own user
    /// (group `natrium` in deploy/systemd) reads.
    Group(u32),
}

impl Mode {
    fn bits(self) -> u32 {
        match self {
            Mode::Secret => 0o600,
            Mode::Public => 0o644,
            Mode::Group(_) => 0o640,
        }
    }
}

/// A temporary file beside `path`, removed on drop unless committed.
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Staged {
    /// Writes `data` to a temporary file beside `path` and fsyncs it; `commit` renames it into
    /// place.
    pub fn new(path: &Path, data: &[u8], mode: Mode) -> Result<Staged> {
        let dir = parent(path);
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file path", path.display()))?
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let staged = Staged {
            tmp,
            path: path.to_path_buf(),
            done: false,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.bits())
            .open(&staged.tmp)
            .with_context(|| format!("can not create {}", staged.tmp.display()))?;
        if let Mode::Group(gid) = mode {
            std::os::unix::fs::fchown(&f, None, Some(gid))
                .with_context(|| format!("can not give {} to group {gid}", staged.tmp.display()))?;
        }
        // The umask may have taken bits away from a public file; a secret one keeps 0600.
        f.set_permissions(std::fs::Permissions::from_mode(mode.bits()))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("can not write {}", staged.tmp.display()))?;
        Ok(staged)
    }

    /// Renames the temporary file over the target and fsyncs the directory.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("can not replace {}", self.path.display()))?;
        self.done = true;
        sync_dir(parent(&self.path));
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `path` atomically.
pub fn write(path: &Path, data: &[u8], mode: Mode) -> Result<()> {
    Staged::new(path, data, mode)?.commit()
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("can not create directory {}", dir.display()))
}

/// Reads a secret file, refusing one that others can read (as ssh does with private keys).
pub fn read_secret(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("can not read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable by other users (mode {:o}): chmod 600 it first",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("can not read {}", path.display()))
}

pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_secret_write_and_abandoned_stage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.creds");
        write(&path, b"one", Mode::Secret).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_secret(&path).expect("read"), "one");
        // A stage that is dropped leaves the old content and no temporary file.
        drop(Staged::new(&path, b"two", Mode::Secret).expect("stage"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        Staged::new(&path, b"two", Mode::Secret)
            .expect("stage")
            .commit()
            .expect("commit");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        // Secrets others can read are refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(read_secret(&path)
            .unwrap_err()
            .to_string()
            .contains("readable by other users"));
        let public = dir.path().join("x.jwt");
        write(&public, b"jwt", Mode::Public).expect("write");
        assert_eq!(
            std::fs::metadata(&public)
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
    }
}
