//! The application's [`StateMachine`] as openraft sees it: committed entries applied in order,
//! membership kept beside, snapshots built from the application's state and kept in one
//! checksummed file (`snapshot`), restored into the application when the group opens.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, StorageError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Framed};
use crate::log::LogStore;
use crate::{NodeId, Peer, Reply, SnapshotBytes, TypeConfig};

/// The replicated state of a group, supplied by the application.
pub trait StateMachine: Send + 'static {
    /// Applies the committed entry at `index`. Every member applies the same entries in the
    /// same order and must reach the same state; the returned bytes go back to the proposer.
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8>;

    /// Applies as [`StateMachine::apply`]. `inherited`: this node leads the group and the
    /// entry was proposed in an earlier term (by a leader gone since, or by this node before it
    /// lost the lead); nobody here waits for its answer, so an application that answers
    /// clients for its entries answers this one itself (nats-server's leader answers the
    /// reply a stored message's entry carries when it applies it).
    fn apply_entry(&mut self, index: u64, data: &[u8], inherited: bool) -> Vec<u8> {
        let _ = inherited;
        self.apply(index, data)
    }

    /// The state as of the last applied entry, made durable first: the log up to it may be
    /// dropped afterwards.
    fn snapshot(&mut self) -> Result<Vec<u8>, String>;

    /// Takes the state of a snapshot (the leader's, or this node's own when the group opens).
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;

    /// Takes a snapshot a leader sent (this node was behind its log); by default as
    /// [`StateMachine::restore`].
    fn install(&mut self, data: &[u8]) -> Result<(), String> {
        self.restore(data)
    }
}

/// The snapshot file's content.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, Peer>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

struct Shared<S> {
    app: S,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Peer>,
    current: Option<Arc<SnapshotFile>>,
    /// Snapshots built so far (names them).
    built: u64,
    /// This node's log and id: whether it leads a later term than an entry's.
    leader_probe: Option<(LogStore, NodeId)>,
}

/// The openraft state machine over an application's.
pub(crate) struct SmStore<S: StateMachine> {
    shared: Arc<Mutex<Shared<S>>>,
    dir: PathBuf,
}

impl<S: StateMachine> Clone for SmStore<S> {
    fn clone(&self) -> Self {
        SmStore {
            shared: self.shared.clone(),
            dir: self.dir.clone(),
        }
    }
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        io::Error::other(e.to_string()),
    )
}

fn write_snapshot(dir: &Path, file: &SnapshotFile) -> io::Result<()> {
    let body = codec::encode(file).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(body.len() + codec::FRAME);
    codec::frame(&mut framed, &body);
    let tmp = dir.join(".snapshot.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&framed)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("snapshot"))?;
    std::fs::File::open(dir)?.sync_all()
}

impl<S: StateMachine> SmStore<S> {
    /// Lets applies tell entries this node took over as a later term's leader (see
    /// [`StateMachine::apply_entry`]).
    pub(crate) fn set_leader_probe(&self, log: LogStore, me: NodeId) {
        self.shared.lock().leader_probe = Some((log, me));
    }

    /// Restores `app` from the snapshot in `dir`, if there is one. A snapshot that fails its
    /// checksum is an error: the group must not start from a state it can not trust.
    pub(crate) fn open(dir: &Path, app: S) -> Result<SmStore<S>, String> {
        let path = dir.join("snapshot");
        let mut shared = Shared {
            app,
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
            built: 0,
            leader_probe: None,
        };
        match std::fs::read(&path) {
            Ok(buf) => {
                let Framed::Record(body, _) = codec::unframe(&buf) else {
                    return Err(format!("snapshot {} is damaged", path.display()));
                };
                let file: SnapshotFile =
                    codec::decode(body).map_err(|e| format!("snapshot {}: {e}", path.display()))?;
                shared.app.restore(&file.data)?;
                shared.last_applied = file.meta.last_log_id;
                shared.membership = file.meta.last_membership.clone();
                shared.current = Some(Arc::new(file));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("snapshot {}: {e}", path.display())),
        }
        Ok(SmStore {
            shared: Arc::new(Mutex::new(shared)),
            dir: dir.to_path_buf(),
        })
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for SmStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (file, data) = {
            let mut sh = self.shared.lock();
            let data = sh
                .app
                .snapshot()
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            sh.built += 1;
            let id = match sh.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, sh.built),
                None => format!("0-0-{}", sh.built),
            };
            let meta = SnapshotMeta {
                last_log_id: sh.last_applied,
                last_membership: sh.membership.clone(),
                snapshot_id: id,
            };
            (
                SnapshotFile {
                    meta,
                    data: data.clone(),
                },
                data,
            )
        };
        write_snapshot(&self.dir, &file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let meta = file.meta.clone();
        self.shared.lock().current = Some(Arc::new(file));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotBytes(data)),
        })
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for SmStore<S> {
    type SnapshotBuilder = SmStore<S>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Peer>), StorageError<NodeId>> {
        let sh = self.shared.lock();
        Ok((sh.last_applied, sh.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut sh = self.shared.lock();
        let mut out = Vec::new();
        for e in entries {
            sh.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Reply::default()),
                EntryPayload::Normal(d) => {
                    let term = e.log_id.leader_id.term;
                    let inherited = sh
                        .leader_probe
                        .as_ref()
                        .is_some_and(|(log, me)| log.leads_after(*me, term));
                    let r = sh.app.apply_entry(e.log_id.index, &d.0, inherited);
                    out.push(Reply(r));
                }
                EntryPayload::Membership(m) => {
                    sh.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Reply::default());
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotBytes>, StorageError<NodeId>> {
        Ok(Box::new(SnapshotBytes::default()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), StorageError<NodeId>> {
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot.0,
        };
        write_snapshot(&self.dir, &file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let mut sh = self.shared.lock();
        sh.app
            .install(&file.data)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        sh.last_applied = meta.last_log_id;
        sh.membership = meta.last_membership.clone();
        sh.current = Some(Arc::new(file));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let sh = self.shared.lock();
        Ok(sh.current.as_ref().map(|f| Snapshot {
            meta: f.meta.clone(),
            snapshot: Box::new(SnapshotBytes(f.data.clone())),
        }))
    }
}
