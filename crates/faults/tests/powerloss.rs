//! The power-loss mode itself: a child process runs file operations under the shim, is killed
//! with SIGKILL, and the journal is applied. Whatever no fsync covered is gone (appends,
//! overwrites, truncations, new names, renames, unlinks); whatever was synced is there.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use natrium_faults::powerloss;

const BIN: &str = env!("CARGO_BIN_EXE_natrium-faults");

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    root: PathBuf,
    journal: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn start() -> Proc {
        Proc::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let journal = dir.path().join("journal");
        let mut cmd = Command::new(BIN);
        cmd.arg("fsops")
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in powerloss::env(&root, &journal) {
            cmd.env(k, v);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Proc {
            child,
            stdin,
            stdout,
            root,
            journal,
            _dir: dir,
        }
    }

    fn run(&mut self, ops: &[&str]) {
        for op in ops {
            writeln!(self.stdin, "{op}").unwrap();
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            assert_eq!(line.trim_end(), "ok", "{op}");
        }
    }

    fn kill(&mut self) {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap();
    }

    /// kill -9, then the journal applied.
    fn power_loss(&mut self) -> powerloss::Applied {
        self.kill();
        powerloss::apply(&self.journal, &self.root).unwrap()
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(name)).ok()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[test]
fn unsynced_appends_are_lost_and_synced_ones_kept() {
    let mut p = Proc::start();
    p.run(&[
        "append a one",
        "fsync a",
        "fsyncdir .",
        "append a -two",
        "append a -three",
    ]);
    assert_eq!(p.read("a").as_deref(), Some("one-two-three"));
    let applied = p.power_loss();
    assert_eq!(p.read("a").as_deref(), Some("one"));
    assert_eq!(applied.writes_undone, 2);
    assert_eq!(applied.bytes_cut, 10);
}

#[test]
fn a_kill_without_power_loss_keeps_what_reached_the_page_cache() {
    let mut p = Proc::start();
    p.run(&["append a one", "fsync a", "fsyncdir .", "append a -two"]);
    p.kill();
    assert_eq!(p.read("a").as_deref(), Some("one-two"));
}

#[test]
fn fdatasync_counts_and_overwrites_in_place_are_undone() {
    let mut p = Proc::start();
    p.run(&[
        "append a AAAAAA",
        "fdatasync a",
        "fsyncdir .",
        "write a 1 BB",
        "fdatasync a",
        "write a 3 CC",
    ]);
    assert_eq!(p.read("a").as_deref(), Some("ABBCCA"));
    p.power_loss();
    assert_eq!(p.read("a").as_deref(), Some("ABBAAA"));
}

#[test]
fn an_unsynced_truncation_is_undone() {
    let mut p = Proc::start();
    p.run(&[
        "append a 0123456789",
        "fsync a",
        "fsyncdir .",
        "truncate a 4",
    ]);
    assert_eq!(p.read("a").as_deref(), Some("0123"));
    p.power_loss();
    assert_eq!(p.read("a").as_deref(), Some("0123456789"));
}

#[test]
fn opening_with_truncate_is_undone_too() {
    let mut p = Proc::start();
    p.run(&[
        "append a old-content",
        "fsync a",
        "fsyncdir .",
        "create a new",
    ]);
    assert_eq!(p.read("a").as_deref(), Some("new"));
    p.power_loss();
    assert_eq!(p.read("a").as_deref(), Some("old-content"));
}

#[test]
fn a_new_file_needs_its_directory_synced() {
    let mut p = Proc::start();
    p.run(&[
        "append kept x",
        "fsync kept",
        "fsyncdir .",
        "append synced-data-only y",
        "fsync synced-data-only",
    ]);
    let applied = p.power_loss();
    assert_eq!(p.read("kept").as_deref(), Some("x"));
    assert!(!p.path("synced-data-only").exists());
    assert_eq!(applied.files_removed, 1);
}

#[test]
fn renames_and_unlinks_need_their_directory_synced() {
    let mut p = Proc::start();
    p.run(&[
        "append meta v1",
        "fsync meta",
        "append gone bye",
        "fsync gone",
        "fsyncdir .",
        // The atomic-write pattern without the final directory sync...
        "append tmp v2",
        "fsync tmp",
        "rename tmp meta",
        "unlink gone",
    ]);
    assert_eq!(p.read("meta").as_deref(), Some("v2"));
    assert!(!p.path("gone").exists());
    let applied = p.power_loss();
    // ... comes back as it was: the old file, the temporary gone with its directory entry.
    assert_eq!(p.read("meta").as_deref(), Some("v1"));
    assert_eq!(p.read("gone").as_deref(), Some("bye"));
    assert!(!p.path("tmp").exists());
    assert_eq!(
        (applied.renames_undone, applied.unlinks_undone),
        (1, 1),
        "{applied:?}"
    );
}

#[test]
fn renames_and_unlinks_followed_by_a_directory_sync_hold() {
    let mut p = Proc::start();
    p.run(&[
        "append meta v1",
        "fsync meta",
        "append gone bye",
        "fsyncdir .",
        "append tmp v2",
        "fsync tmp",
        "rename tmp meta",
        "unlink gone",
        "fsyncdir .",
    ]);
    p.power_loss();
    assert_eq!(p.read("meta").as_deref(), Some("v2"));
    assert!(!p.path("gone").exists());
    assert!(!p.path("tmp").exists());
}

#[test]
fn a_directory_made_without_syncing_its_parent_goes_with_its_files() {
    let mut p = Proc::start();
    p.run(&[
        "mkdir e",
        "fsyncdir .",
        "rmdir e",
        "mkdir d",
        "append d/f data",
        "fsync d/f",
        "fsyncdir d",
    ]);
    p.power_loss();
    assert!(!p.path("d").exists());
    // The removal of `e` was not synced either: it comes back.
    assert!(p.path("e").is_dir());
}

#[test]
fn sync_makes_everything_durable() {
    let mut p = Proc::start();
    p.run(&["mkdir d", "append d/f data", "rename d/f d/g", "sync"]);
    let applied = p.power_loss();
    assert_eq!(p.read("d/g").as_deref(), Some("data"));
    assert_eq!(applied.writes_undone + applied.files_removed, 0);
}

#[test]
fn the_journal_is_cut_back_once_nothing_is_pending() {
    let mut p = Proc::start();
    p.run(&["append a one", "fsync a", "fsyncdir ."]);
    assert_eq!(std::fs::metadata(&p.journal).unwrap().len(), 8);
    p.run(&["append a two"]);
    assert!(std::fs::metadata(&p.journal).unwrap().len() > 8);
}

#[test]
fn files_outside_the_root_are_not_tracked() {
    let mut p = Proc::start();
    let outside = p.root.parent().unwrap().join("outside");
    p.run(&[&format!("append ../outside {}", "kept")]);
    p.power_loss();
    assert_eq!(std::fs::read_to_string(outside).unwrap(), "kept");
}

#[test]
fn a_store_with_lazy_sync_loses_exactly_its_unsynced_messages() {
    use natrium_store::{FileStore, FileStoreConfig, Limits, StreamStore};
    let mut p = Proc::start();
    p.run(&[
        "store-open s",
        "store-append 100",
        "store-sync",
        "fsyncdir .",
        "store-append 50",
    ]);
    let applied = p.power_loss();
    assert!(applied.writes_undone > 0, "{applied:?}");
    let s = FileStore::open(FileStoreConfig::new(p.path("s")), Limits::default()).unwrap();
    let st = s.state();
    assert_eq!((st.msgs, st.last_seq), (100, 100), "{st:?}");
    assert_eq!(&s.load_msg(100).unwrap().payload[..], b"m99");
    assert!(st.lost.is_empty());
}

#[test]
fn a_slow_disk_makes_each_sync_wait_and_still_makes_it_durable() {
    let mut p = Proc::start_with(&[("NATRIUM_POWERLOSS_SYNC_DELAY_MS", "300")]);
    p.run(&["append a one"]);
    let t = std::time::Instant::now();
    p.run(&["fsync a"]);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    p.run(&["fsyncdir .", "append a -two"]);
    p.power_loss();
    assert_eq!(p.read("a").as_deref(), Some("one"));
}

#[test]
fn a_file_store_made_in_new_directories_survives_a_power_loss() {
    // No fsync of any directory by the test: the store must make its own directories durable.
    use natrium_store::{FileStore, FileStoreConfig, Limits, StreamStore};
    let mut p = Proc::start();
    p.run(&["store-open a/b/s", "store-append 10", "store-sync"]);
    p.power_loss();
    assert!(p.path("a/b/s").is_dir());
    let s = FileStore::open(FileStoreConfig::new(p.path("a/b/s")), Limits::default()).unwrap();
    let st = s.state();
    assert_eq!((st.msgs, st.last_seq), (10, 10), "{st:?}");
}
