//! Repair of a replica whose store lost messages: damage `FileStore::open` found, or ranges a
//! snapshot's catch-up could not fetch (kept in `<replica>/lost.json`). Its group is not opened
//! (it neither votes nor serves; requests go to the leader) until a copy of its store, with the
//! lost ranges fetched from its peers, has replaced it; fetches are retried with backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use natrium_store::{FileStore, StoreError, StreamStore};

use super::catchup::advance;
use super::meta::StreamAssignment;
use super::replica::open_file_store;
use super::JsCluster;
use crate::jetstream::config::Storage;

/// Ranges of sequences a catch-up could not fetch, to fetch when the replica opens next.
const LOST: &str = "lost.json";

/// First and longest wait between two repair attempts.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Sorted, merged inclusive ranges.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|(a, z)| a <= z && *a > 0);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, z) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(z),
            _ => out.push((a, z)),
        }
    }
    out
}

/// Records that sequences `from..=to` of the replica in `dir` are missing from its store.
pub(super) fn note_lost(dir: &Path, from: u64, to: u64) -> std::io::Result<()> {
    let mut ranges = read_lost(dir);
    ranges.push((from, to));
    let body = serde_json::to_vec(&merge(ranges)).map_err(std::io::Error::other)?;
    crate::util::fs::write_atomic(&dir.join(LOST), &body)
}

fn read_lost(dir: &Path) -> Vec<(u64, u64)> {
    std::fs::read(dir.join(LOST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// A store found damaged, with what it lost.
pub(super) struct Damaged {
    store: FileStore,
    lost: Vec<(u64, u64)>,
}

/// Before a replica opens: finishes or undoes a swap a crash interrupted, then opens its file
/// store and returns it when it lost messages (damage found at open, or ranges noted lost).
pub(super) fn check(sa: &StreamAssignment, dir: &Path) -> Result<Option<Damaged>, String> {
    if sa.config.storage != Storage::File {
        return Ok(None);
    }
    let (msgs, fresh, old) = paths(dir);
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(|e| e.to_string())?;
    }
    if old.exists() {
        if msgs.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| e.to_string())?;
        } else {
            std::fs::rename(&old, &msgs).map_err(|e| e.to_string())?;
        }
    }
    if !msgs.exists() {
        return Ok(None);
    }
    let store = open_file_store(&sa.config, &msgs).map_err(|e| e.to_string())?;
    let mut lost: Vec<(u64, u64)> = store
        .recovery()
        .corruption
        .iter()
        .map(|c| (c.first_seq, c.last_seq))
        .collect();
    lost.extend(store.state().lost.iter().map(|s| (*s, *s)));
    lost.extend(read_lost(dir));
    let lost = merge(lost);
    if lost.is_empty() {
        store.stop().map_err(|e| e.to_string())?;
        return Ok(None);
    }
    Ok(Some(Damaged { store, lost }))
}

/// The store's directory, its repaired copy while it is made, and the damaged one while they
/// are swapped.
fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("msgs"),
        dir.join("msgs.repair"),
        dir.join("msgs.damaged"),
    )
}

impl JsCluster {
    /// Closes this server's replica of a stream (its files kept) and opens it again: a store
    /// that lost messages is repaired first.
    pub(super) async fn reopen(self: &Arc<Self>, account: &str, name: &str) {
        let Some(sa) = self.assignment(account, name) else {
            return;
        };
        self.drop_replica(&sa, false).await;
        if let Some(sa) = self.assignment(account, name) {
            self.ensure_replica(&sa).await;
        }
    }

    /// Repairs the replica of `sa` in `dir` (its group not open meanwhile), then opens it.
    /// (A boxed future: opening a replica may start a repair, which opens the replica.)
    pub(super) fn repair(
        self: Arc<Self>,
        sa: StreamAssignment,
        dir: PathBuf,
        d: Damaged,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.repair_then_open(sa, dir, d))
    }

    async fn repair_then_open(self: Arc<Self>, sa: StreamAssignment, dir: PathBuf, d: Damaged) {
        let (account, name) = (sa.account.clone(), sa.config.name.clone());
        tracing::warn!(
            "JetStream cluster: stream '{account} > {name}': its store lost messages {:?}; fetching them from its peers before it serves",
            d.lost
        );
        let mut stop = self.stop.subscribe();
        let mut wait = RETRY_FIRST;
        let mut attempts = 0u32;
        loop {
            if *stop.borrow()
                || self
                    .assignment(&account, &name)
                    .is_none_or(|a| !a.peers.contains(&self.name))
            {
                let _ = d.store.stop();
                self.repairing.lock().remove(&sa.key());
                return;
            }
            attempts += 1;
            match self.rebuild(&sa, &dir, &d).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(
                    "JetStream cluster: stream '{account} > {name}': repair attempt {attempts} failed: {e}; again in {wait:?}"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
        let swapped = Self::swap(&dir, d.store);
        self.repairing.lock().remove(&sa.key());
        match swapped {
            Ok(()) => {
                tracing::info!(
                    "JetStream cluster: stream '{account} > {name}': store repaired from its peers ({attempts} attempt(s))"
                );
                let _ = std::fs::remove_file(dir.join(LOST));
                let sa = self.assignment(&account, &name).unwrap_or(sa);
                self.ensure_replica(&sa).await;
            }
            Err(e) => tracing::error!(
                "JetStream cluster: stream '{account} > {name}': replacing its damaged store: {e}"
            ),
        }
    }

    /// Makes a copy of the damaged store in `msgs.repair`: its own intact messages, and the
    /// lost ranges fetched from a peer, each at its sequence with its timestamp.
    async fn rebuild(&self, sa: &StreamAssignment, dir: &Path, d: &Damaged) -> Result<(), String> {
        let (_, fresh, _) = paths(dir);
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh).map_err(|e| e.to_string())?;
        }
        let to = open_file_store(&sa.config, &fresh).map_err(|e| e.to_string())?;
        let r = self.copy(sa, &d.store, &to, &d.lost).await;
        let r = r.and_then(|()| to.stop().map_err(|e| e.to_string()));
        if r.is_err() {
            drop(to);
            let _ = std::fs::remove_dir_all(&fresh);
        }
        r
    }

    async fn copy(
        &self,
        sa: &StreamAssignment,
        from: &FileStore,
        to: &FileStore,
        lost: &[(u64, u64)],
    ) -> Result<(), String> {
        let st = from.state();
        let last = st.last_seq.max(lost.last().map_or(0, |l| l.1));
        let mut at = st.first_seq.max(1);
        for &(a, z) in lost {
            if z < at {
                continue;
            }
            self.copy_local(sa, from, to, at, a.saturating_sub(1))
                .await?;
            self.fetch_range(sa, to, a.max(at), z).await?;
            at = z + 1;
        }
        self.copy_local(sa, from, to, at, last).await?;
        advance(to, last + 1, st.last_ts).map_err(|e| e.to_string())?;
        to.sync().map_err(|e| e.to_string())
    }

    /// Copies the intact messages `a..=z` of `from`; one that fails its check now is fetched.
    async fn copy_local(
        &self,
        sa: &StreamAssignment,
        from: &FileStore,
        to: &FileStore,
        mut a: u64,
        z: u64,
    ) -> Result<(), String> {
        while a <= z {
            match from.load_next_msg(b">", a) {
                Ok(m) if m.seq <= z => {
                    advance(to, m.seq, m.ts).map_err(|e| e.to_string())?;
                    to.store_msg(&m.subject, m.headers.as_deref(), &m.payload, m.ts)
                        .map_err(|e| e.to_string())?;
                    a = m.seq + 1;
                }
                Err(StoreError::Corrupt { seq, .. }) if seq >= a && seq <= z => {
                    self.fetch_range(sa, to, seq, seq).await?;
                    a = seq + 1;
                }
                Ok(_) | Err(StoreError::Eof | StoreError::NotFound) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Stores messages `a..=z` fetched from the stream's leader or another peer (what none of
    /// them holds in the range, removed there too, stays a gap).
    async fn fetch_range(
        &self,
        sa: &StreamAssignment,
        to: &FileStore,
        a: u64,
        z: u64,
    ) -> Result<(), String> {
        let (account, name) = (&sa.account, &sa.config.name);
        let mut peers: Vec<String> = self
            .leaders
            .lock()
            .map
            .get(&sa.key())
            .cloned()
            .into_iter()
            .collect();
        for p in &sa.peers {
            if !peers.contains(p) {
                peers.push(p.clone());
            }
        }
        peers.retain(|p| *p != self.name);
        let mut last = String::from("no peer to fetch from");
        for peer in peers {
            let from = a.max(to.state().last_seq + 1);
            if from > z {
                return Ok(());
            }
            let r = self
                .fetch(&peer, account, name, from, z, |m| {
                    advance(to, m.seq, m.ts).map_err(|e| e.to_string())?;
                    to.store_msg(&m.subject, m.headers.as_deref(), &m.payload, m.ts)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await;
            match r {
                Ok(()) => {
                    return advance(to, z + 1, to.state().last_ts).map_err(|e| e.to_string());
                }
                Err(e) => last = format!("{peer}: {e}"),
            }
        }
        Err(last)
    }

    /// Puts the repaired copy in the damaged store's place (the damaged one closed first).
    fn swap(dir: &Path, damaged: FileStore) -> Result<(), String> {
        let (msgs, fresh, old) = paths(dir);
        damaged.stop().map_err(|e| e.to_string())?;
        drop(damaged);
        std::fs::rename(&msgs, &old).map_err(|e| e.to_string())?;
        std::fs::rename(&fresh, &msgs).map_err(|e| e.to_string())?;
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        std::fs::remove_dir_all(&old).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(5, 7), (1, 2), (3, 3), (9, 8), (10, 12), (11, 20)]),
            vec![(1, 3), (5, 7), (10, 20)]
        );
        assert!(merge(vec![(0, 0), (4, 3)]).is_empty());
    }
}
