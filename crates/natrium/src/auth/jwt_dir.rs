//! The directory resolver's files: account JWTs kept as `<dir>/<account key>.jwt`, read when the
//! trust is built (start, reload) and written or removed when a claims request changes them.

use std::path::{Path, PathBuf};

use crate::util::fs::write_atomic;

const EXT: &str = ".jwt";

/// Every `<key>.jwt` in `dir` whose name is an account public key, with its text or the read
/// error. A missing directory holds nothing.
pub fn read_dir(dir: &Path) -> Vec<(String, std::io::Result<String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let key = name.strip_suffix(EXT)?;
            is_account_key(key).then(|| (key.to_string(), std::fs::read_to_string(e.path())))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Whether `key` is an account's public key (`A...`).
pub fn is_account_key(key: &str) -> bool {
    key.starts_with('A') && nkeys::KeyPair::from_public_key(key).is_ok()
}

/// Where the JWT of account `key` lives.
pub fn path_for(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}{EXT}"))
}

/// Writes `jwt` as the account's file, atomically: a crash leaves the old JWT or the new one,
/// never a torn file. Returns false when the file already holds exactly this JWT.
pub fn store(dir: &Path, key: &str, jwt: &str) -> std::io::Result<bool> {
    let path = path_for(dir, key);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == jwt) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    write_atomic(&path, jwt.as_bytes())?;
    Ok(true)
}

/// Removes the account's JWT: renamed to `.jwt.deleted`, or deleted with `hard`. A missing
/// file is not an error.
pub fn remove(dir: &Path, key: &str, hard: bool) -> std::io::Result<()> {
    let path = path_for(dir, key);
    let r = if hard {
        std::fs::remove_file(&path)
    } else {
        std::fs::rename(&path, path.with_extension("jwt.deleted"))
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
