//! An exclusive lock on a store directory, so two processes never write one store: `flock` on
//! `<dir>/LOCK`, which holds the holder's pid (as text) for the error the next one gets.
//!
//! The lock belongs to the open file: it is released when the `StoreDirLock` is dropped or the
//! process dies (even by SIGKILL), never by a stale file. The file itself is left in place.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the locked directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why a store directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another open store in this one) holds the lock.
    #[error("store directory {} is in use by another process ({})", dir.display(), holder_text(*pid))]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("store directory {}: {what}: {error}", dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        error: io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_string(),
    }
}

/// Holds an exclusive lock on a directory until dropped.
#[derive(Debug)]
pub struct StoreDirLock {
    file: File,
    dir: PathBuf,
}

impl StoreDirLock {
    /// Creates `dir` if needed and takes the lock without waiting; `LockError::Held` names the
    /// holder's pid when another process has it.
    pub fn acquire(dir: &Path) -> Result<StoreDirLock, LockError> {
        let io = |what| {
            move |error| LockError::Io {
                dir: dir.to_path_buf(),
                what,
                error,
            }
        };
        // Durably: the lock is taken first, so this makes the store's top directory.
        crate::file::create_dir_durable(dir).map_err(io("create directory"))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io("open lock file"))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(io("lock")(e));
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(io("write pid to lock file"))?;
        Ok(StoreDirLock {
            file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for StoreDirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; unlocking first makes it explicit.
        // SAFETY: as in `acquire`.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let first = StoreDirLock::acquire(&dir).unwrap();
        assert_eq!(first.dir(), dir);
        // A second open file description conflicts even within one process (flock, not fcntl).
        match StoreDirLock::acquire(&dir) {
            Err(LockError::Held { dir: d, pid }) => {
                assert_eq!(d, dir);
                assert_eq!(pid, Some(std::process::id()));
                let text = LockError::Held { dir: d, pid }.to_string();
                assert!(text.contains(&dir.display().to_string()), "{text}");
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("second lock not refused: {other:?}"),
        }
        drop(first);
        let again = StoreDirLock::acquire(&dir).unwrap();
        let pid = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        drop(again);
    }

    #[test]
    fn a_stale_lock_file_does_not_block() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join(LOCK_FILE), "999999999\n").unwrap();
        let l = StoreDirLock::acquire(root.path()).unwrap();
        let pid = fs::read_to_string(root.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
        drop(l);
    }
}
