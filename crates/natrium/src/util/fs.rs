//! Atomic file replacement (a crash leaves the old content or the new, never a torn file) and
//! durable directory creation (a new directory survives a power loss once it is made).

use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` through a temporary file beside it: written, fsynced, renamed over
/// `path`, then the directory fsynced so the rename itself is durable.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents durably: after each directory is made, the directory
/// holding it is fsynced (a new entry survives a power loss only then). The store crate's, so
/// that the store, the Raft log and the server make directories one way.
pub fn create_dir_all_durable(dir: &Path) -> std::io::Result<()> {
    natrium_store::create_dir_durable(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.json");
        write_atomic(&path, b"one").expect("first write");
        write_atomic(&path, b"two").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("meta.json")]);
    }

    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_all_durable(&deep).expect("created");
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).expect("again");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("file");
        assert!(create_dir_all_durable(&file.join("sub")).is_err());
    }
}
