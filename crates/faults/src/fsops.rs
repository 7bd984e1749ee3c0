//! A tiny file-operation interpreter (`natrium-faults fsops <root>`), run as a child under the
//! power-loss shim by the shim's own tests: each stdin line is one operation on a path under
//! `<root>`, answered `ok` or `err <text>` on stdout, so a test knows exactly what ran before
//! it kills the process.
//!
//! Operations: `write <f> <off> <text>`, `append <f> <text>`, `fsync <f>`, `fdatasync <f>`,
//! `truncate <f> <len>`, `create <f> <text>` (O_TRUNC), `rename <a> <b>`, `unlink <f>`,
//! `mkdir <d>`, `fsyncdir <d>`, `rmdir <d>`, `sync`; and on a natrium file store (lazy sync, so
//! only `store-sync` makes appends durable): `store-open <d>`, `store-append <n>`, `store-sync`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Default)]
struct State {
    files: HashMap<String, File>,
    store: Option<natrium_store::FileStore>,
}

fn store_op(root: &Path, st: &mut State, op: &str, a: &str) -> std::io::Result<()> {
    use natrium_store::{FileStore, FileStoreConfig, Limits, StreamStore, SyncPolicy};
    let err = |e: natrium_store::StoreError| std::io::Error::other(e.to_string());
    match op {
        "store-open" => {
            let cfg = FileStoreConfig {
                sync: SyncPolicy::Interval(std::time::Duration::from_secs(3600)),
                ..FileStoreConfig::new(root.join(a))
            };
            st.store = Some(FileStore::open(cfg, Limits::default()).map_err(err)?);
            Ok(())
        }
        "store-append" => {
            let s = st
                .store
                .as_ref()
                .ok_or_else(|| std::io::Error::other("no store"))?;
            let n: u64 = a.parse().map_err(|_| std::io::Error::other("count"))?;
            for i in 0..n {
                s.store_msg(b"t", None, format!("m{i}").as_bytes(), 0)
                    .map_err(err)?;
            }
            Ok(())
        }
        _ => {
            let s = st
                .store
                .as_ref()
                .ok_or_else(|| std::io::Error::other("no store"))?;
            s.sync().map_err(err)
        }
    }
}

fn run_one(root: &Path, st: &mut State, line: &str) -> std::io::Result<()> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad arguments");
    let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
    let (a, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if op.starts_with("store-") {
        return store_op(root, st, op, a);
    }
    let files = &mut st.files;
    let mut open = |name: &str| -> std::io::Result<File> {
        if let Some(f) = files.get(name) {
            return f.try_clone();
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(name))?;
        files.insert(name.to_string(), f.try_clone()?);
        Ok(f)
    };
    match op {
        "write" => {
            let (off, text) = rest.split_once(' ').ok_or_else(bad)?;
            open(a)?.write_all_at(text.as_bytes(), off.parse().map_err(|_| bad())?)
        }
        "append" => {
            let f = open(a)?;
            let end = f.metadata()?.len();
            f.write_all_at(rest.as_bytes(), end)
        }
        "fsync" => open(a)?.sync_all(),
        "fdatasync" => open(a)?.sync_data(),
        "truncate" => open(a)?.set_len(rest.parse().map_err(|_| bad())?),
        "create" => {
            files.remove(a);
            File::create(root.join(a))?.write_all(rest.as_bytes())
        }
        "rename" => {
            files.remove(a);
            files.remove(rest);
            std::fs::rename(root.join(a), root.join(rest))
        }
        "unlink" => {
            files.remove(a);
            std::fs::remove_file(root.join(a))
        }
        "mkdir" => std::fs::create_dir(root.join(a)),
        "rmdir" => std::fs::remove_dir(root.join(a)),
        "fsyncdir" => File::open(root.join(a))?.sync_all(),
        "sync" => {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// Runs the interpreter on stdin until it closes.
pub fn main(root: &Path) -> std::io::Result<()> {
    let mut st = State::default();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        match run_one(root, &mut st, line.trim_end()) {
            Ok(()) => writeln!(out, "ok")?,
            Err(e) => writeln!(out, "err {e}")?,
        }
        out.flush()?;
    }
    Ok(())
}
