//! A running Raft group on this node: open it over a directory (log, vote, snapshot), propose
//! entries, read its status (role, term, leader, each peer's progress), change its members, and
//! answer the RPCs its peers send through the transport.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError as OrRaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, VoteRequest, VoteResponse,
};
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use crate::log::LogStore;
use crate::net::{self, Contacts, NetFactory, RpcKind, Transport};
use crate::pace::{self, Pacer};
use crate::state::SmStore;
use crate::{codec, Data, NodeId, Peer, RaftError, StateMachine, TypeConfig};

/// Timing and compaction settings of a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Name of the group (for logs).
    pub name: String,
    /// How often a leader sends a heartbeat to its followers.
    pub heartbeat: Duration,
    /// How long a follower has to answer an AppendEntries (openraft 0.9's heartbeat interval,
    /// which is its only deadline for one; a late answer is a failed one). It must cover the
    /// slowest round trip plus a follower's fsync. A voter that heard a leader within about
    /// this long refuses its vote to another (openraft's leader lease).
    pub append_timeout: Duration,
    /// Elections start after a random time in this range without a leader's word; both above
    /// the lease (`append_timeout` + 50 ms).
    pub election_min: Duration,
    pub election_max: Duration,
    /// A snapshot is taken after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (a lagging peer catches up from them).
    pub keep_behind_snapshot: u64,
    /// Entries sent in one AppendEntries.
    pub max_batch: u64,
    /// How long a proposal may wait for its commit.
    pub propose_timeout: Duration,
    /// A file outside the group's directory that says this node has been a member (see
    /// [`LogStore::member_marker`]): a node whose Raft state is gone while it is there does
    /// not vote until a leader has caught it up.
    pub member_marker: Option<std::path::PathBuf>,
}

/// How much openraft's leader lease exceeds the AppendEntries deadline (openraft wants its
/// election timeouts above its heartbeat interval, and the lease is the longest of them).
const LEASE_OVER_APPEND: Duration = Duration::from_millis(50);

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            name: "group".into(),
            // Chosen by measurement (docs/REPLICATION.md, "Timing"): leader kills fail over
            // in 1.4 / 1.6 s (p50 / p99), and a link with 214 ms of delay each way still
            // commits.
            heartbeat: Duration::from_millis(250),
            append_timeout: Duration::from_secs(1),
            election_min: Duration::from_millis(1100),
            election_max: Duration::from_millis(1600),
            snapshot_every: 16 * 1024,
            keep_behind_snapshot: 4 * 1024,
            max_batch: 512,
            propose_timeout: Duration::from_secs(10),
            member_marker: None,
        }
    }
}

/// This node's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
    Learner,
    Stopped,
}

/// A peer as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: NodeId,
    pub name: String,
    /// The last index known to be on the peer (leader only).
    pub matched: Option<u64>,
    /// Committed entries the peer does not hold yet (leader only): what nats-server reports as
    /// a peer's lag. Entries past the commit index are in flight and do not count.
    pub lag: Option<u64>,
    /// Time since the peer last answered this node.
    pub last_contact: Option<Duration>,
    /// Time since the peer last held everything this leader had committed when it sent the
    /// request the peer answered (what it lacked then was in flight).
    pub caught_up: Option<Duration>,
    pub voter: bool,
}

/// What a group looks like from this node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    /// The leader's id and name, when known.
    pub leader: Option<(NodeId, String)>,
    pub last_log_index: u64,
    /// The last index known committed here.
    pub commit_index: u64,
    pub last_applied: u64,
    /// Every member but this node.
    pub peers: Vec<PeerProgress>,
    /// The log was found damaged and this node does not vote yet.
    pub vote_guarded: bool,
}

/// A Raft group member on this node. Cheap to clone.
#[derive(Clone)]
pub struct Group {
    id: NodeId,
    raft: openraft::Raft<TypeConfig>,
    log: LogStore,
    contacts: Contacts,
    propose_timeout: Duration,
    pacer: Arc<Pacer>,
}

fn map_write_err(e: OrRaftError<NodeId, ClientWriteError<NodeId, Peer>>) -> RaftError {
    match e {
        OrRaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftError::NotLeader {
            leader: f
                .leader_id
                .map(|id| (id, f.leader_node.map(|n| n.name).unwrap_or_default())),
        },
        OrRaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftError::Membership(e.to_string())
        }
        OrRaftError::Fatal(f) => RaftError::Stopped(f.to_string()),
    }
}

impl Group {
    /// Opens the group stored in `dir` (created when new) as node `id`, with the application's
    /// state machine and the transport to its peers. A new group has no members until
    /// [`Group::initialize`] (on one node) or a leader adds this node.
    pub async fn open<S: StateMachine>(
        id: NodeId,
        cfg: &GroupConfig,
        dir: &Path,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Group, RaftError> {
        let (log, recovered) =
            LogStore::open(&dir.join("log")).map_err(|e| RaftError::Storage(e.to_string()))?;
        if recovered.torn_bytes > 0 {
            tracing::warn!(
                "raft group {}: cut {} bytes of a torn last log record",
                cfg.name,
                recovered.torn_bytes
            );
        }
        if let Some(marker) = &cfg.member_marker {
            log.member_marker(marker)
                .map_err(|e| RaftError::Storage(format!("member marker: {e}")))?;
        }
        let sm = SmStore::open(dir, sm).map_err(RaftError::Storage)?;
        // Entries of earlier terms applied while this node leads are flagged to the
        // application (`StateMachine::apply_entry`).
        sm.set_leader_probe(log.clone(), id);
        let lease = cfg.append_timeout + LEASE_OVER_APPEND;
        if cfg.election_min <= lease || cfg.election_max < cfg.election_min {
            return Err(RaftError::Storage(format!(
                "config: elections after {:?}..{:?} must start above the lease ({lease:?})",
                cfg.election_min, cfg.election_max
            )));
        }
        let config = Config {
            cluster_name: cfg.name.clone(),
            // openraft's heartbeat interval is the AppendEntries deadline; its heartbeats and
            // elections are the pacer's (`pace.rs`).
            heartbeat_interval: cfg.append_timeout.as_millis() as u64,
            election_timeout_min: cfg.append_timeout.as_millis() as u64 + 1,
            election_timeout_max: lease.as_millis() as u64,
            enable_elect: false,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            max_payload_entries: cfg.max_batch,
            install_snapshot_timeout: 10_000,
            ..Config::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| RaftError::Storage(format!("config: {e}")))?,
        );
        let contacts = Contacts::default();
        let factory = NetFactory {
            transport,
            contacts: contacts.clone(),
            log: log.clone(),
        };
        let raft = openraft::Raft::new(id, config, factory, log.clone(), sm)
            .await
            .map_err(|e| RaftError::Stopped(e.to_string()))?;
        // The pacer does not campaign while the log is damage-guarded (until a leader has
        // repaired it). A node that led the group when it stopped needs no campaign: openraft
        // starts it as the leader of its term (its saved vote is its own, committed).
        let pacer = Pacer::new(
            id,
            cfg.heartbeat,
            (cfg.election_min, cfg.election_max),
            lease,
        );
        tokio::spawn(pace::run(id, raft.clone(), pacer.clone(), log.clone()));
        Ok(Group {
            id,
            raft,
            log,
            contacts,
            propose_timeout: cfg.propose_timeout,
            pacer,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Makes `members` (this node among them) the group's first membership. Only one node
    /// initializes a group; the others learn of it from the leader. This node campaigns at
    /// once, and again soon (backing off) until a leader is heard: its peers may not have
    /// opened the group yet, and it alone can campaign (it alone knows the members).
    pub async fn initialize(&self, members: BTreeMap<NodeId, Peer>) -> Result<(), RaftError> {
        match self.raft.initialize(members).await {
            Ok(()) => {
                self.pacer.forming();
                Ok(())
            }
            Err(OrRaftError::APIError(_)) => Err(RaftError::AlreadyInitialized),
            Err(OrRaftError::Fatal(f)) => Err(RaftError::Stopped(f.to_string())),
        }
    }

    /// Whether the group has a membership (initialized here or learned from a leader).
    pub fn is_initialized(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().voter_ids().next().is_some()
    }

    /// Proposes `data`; on the leader, waits until it is committed (stored on a majority,
    /// synced) and applied here, and returns its index and what applying it returned.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(u64, Vec<u8>), RaftError> {
        let fut = self.raft.client_write(Data(data));
        match tokio::time::timeout(self.propose_timeout, fut).await {
            Ok(Ok(ClientWriteResponse { log_id, data, .. })) => Ok((log_id.index, data.0)),
            Ok(Err(e)) => Err(map_write_err(e)),
            Err(_) => Err(RaftError::Timeout),
        }
    }

    /// Queues `data` for proposal at once (in call order) and returns a future that resolves
    /// like [`Group::propose`]'s.
    pub async fn propose_queued(
        &self,
        data: Vec<u8>,
    ) -> Result<impl Future<Output = Result<(u64, Vec<u8>), RaftError>> + Send + 'static, RaftError>
    {
        let rx = self
            .raft
            .client_write_ff(Data(data))
            .await
            .map_err(|f| RaftError::Stopped(f.to_string()))?;
        let timeout = self.propose_timeout;
        Ok(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(r))) => Ok((r.log_id.index, r.data.0)),
                Ok(Ok(Err(e))) => Err(map_write_err(OrRaftError::APIError(e))),
                Ok(Err(_)) => Err(RaftError::Stopped("proposal dropped".into())),
                Err(_) => Err(RaftError::Timeout),
            }
        })
    }

    /// Adds `id` as a voting member (as a learner first, caught up, then promoted).
    pub async fn add_member(&self, id: NodeId, peer: Peer) -> Result<(), RaftError> {
        self.raft
            .add_learner(id, peer, true)
            .await
            .map_err(map_write_err)?;
        let mut add = BTreeSet::new();
        add.insert(id);
        self.raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(add), false)
            .await
            .map_err(map_write_err)?;
        Ok(())
    }

    /// Removes `id` from the group's members.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftError> {
        let mut rm = BTreeSet::new();
        rm.insert(id);
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(rm), false)
            .await
            .map_err(map_write_err)?;
        Ok(())
    }

    /// Starts an election on this node now.
    pub async fn campaign(&self) -> Result<(), RaftError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|f| RaftError::Stopped(f.to_string()))
    }

    /// Gives up leadership: this leader stops sending heartbeats and campaigning, so its
    /// followers' election timers run out and one of them is elected (openraft 0.9 has no
    /// leadership transfer). Returns the new leader; if none is elected `within`, this node
    /// leads on (heartbeats again) and the answer is `Timeout`. The caller stops proposing
    /// first: a proposal would reset the followers' timers.
    pub async fn step_down(&self, within: Duration) -> Result<(NodeId, String), RaftError> {
        let st = self.status();
        if st.role != Role::Leader {
            return Err(RaftError::NotLeader { leader: st.leader });
        }
        let rc = self.raft.runtime_config();
        rc.heartbeat(false);
        self.pacer.heartbeats.store(false, Ordering::Release);
        self.pacer.campaign.store(false, Ordering::Release);
        let mut changes = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + within;
        let result = loop {
            let now = self.status();
            if now.term > st.term {
                if let Some(l) = now.leader.filter(|l| l.0 != self.id) {
                    break Ok(l);
                }
            }
            tokio::select! {
                c = changes.changed() => if c.is_err() {
                    break Err(RaftError::Stopped("group stopped".into()));
                },
                _ = tokio::time::sleep_until(deadline) => break Err(RaftError::Timeout),
            }
        };
        rc.heartbeat(true);
        self.pacer.heartbeats.store(true, Ordering::Release);
        self.pacer.campaign.store(true, Ordering::Release);
        result
    }

    /// The group as this node sees it now.
    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match (&m.running_state, m.state) {
            (Err(_), _) => Role::Stopped,
            (_, ServerState::Leader) => Role::Leader,
            (_, ServerState::Candidate) => Role::Candidate,
            (_, ServerState::Follower) => Role::Follower,
            (_, ServerState::Learner) => Role::Learner,
            (_, ServerState::Shutdown) => Role::Stopped,
        };
        let membership = m.membership_config.membership();
        let name_of = |id: NodeId| {
            membership
                .get_node(&id)
                .map(|n| n.name.clone())
                .unwrap_or_default()
        };
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        // openraft saves the commit index before it applies: never behind what was applied.
        let commit = self.log.committed_index().unwrap_or(0).max(applied);
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let contacts = self.contacts.lock().clone();
        let now = Instant::now();
        let peers = membership
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map_or(0, |l| l.index));
                PeerProgress {
                    id: *id,
                    name: n.name.clone(),
                    matched,
                    lag: matched.map(|x| commit.saturating_sub(x)),
                    last_contact: contacts
                        .get(id)
                        .and_then(|c| c.answered)
                        .map(|t| now.duration_since(t)),
                    caught_up: contacts
                        .get(id)
                        .and_then(|c| c.caught_up)
                        .map(|t| now.duration_since(t)),
                    voter: voters.contains(id),
                }
            })
            .collect();
        GroupStatus {
            id: self.id,
            role,
            term: m.current_term,
            leader: m.current_leader.map(|id| (id, name_of(id))),
            last_log_index: last,
            commit_index: commit,
            last_applied: applied,
            peers,
            vote_guarded: self.log.vote_guarded(),
        }
    }

    /// A receiver that changes whenever openraft's view of the group does (role, term,
    /// leader, progress); read [`Group::status`] after each change.
    pub fn changes(&self) -> watch::Receiver<impl Sized + Send + Sync> {
        self.raft.metrics()
    }

    /// Answers a peer's RPC (the body as the peer's transport delivered it).
    pub async fn handle_rpc(&self, kind: RpcKind, body: &[u8]) -> Result<Vec<u8>, String> {
        match kind {
            RpcKind::Append => {
                let req: AppendEntriesRequest<TypeConfig> = codec::decode(body)?;
                let guarded = self.log.vote_guarded();
                let upto = req
                    .entries
                    .last()
                    .map(|e| e.log_id.index)
                    .or(req.prev_log_id.map(|p| p.index));
                let leader_commit = req.leader_commit.map(|c| c.index);
                let r = self.raft.append_entries(req).await;
                if matches!(&r, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    self.pacer.heard_leader();
                }
                if guarded && matches!(r, Ok(AppendEntriesResponse::Success)) {
                    // Damaged log: it now matches the leader's up to `upto` (see
                    // `LogStore::leader_matched`).
                    self.log.leader_matched(upto, leader_commit);
                }
                codec::encode(&r)
            }
            RpcKind::Vote => {
                let req: VoteRequest<NodeId> = codec::decode(body)?;
                if self.log.vote_guarded() {
                    // Damaged log: never help elect anyone until a leader has repaired it.
                    let m = self.raft.metrics().borrow().clone();
                    let r: Result<VoteResponse<NodeId>, OrRaftError<NodeId>> =
                        Ok(VoteResponse::new(m.vote, self.log.last_log_id(), false));
                    return codec::encode(&r);
                }
                let shorter = req.last_log_id;
                let r = self.raft.vote(req).await;
                match &r {
                    Ok(v) if v.vote_granted => self.pacer.heard_leader(),
                    Ok(v) if v.last_log_id > shorter => self.pacer.shorter_candidate_seen(),
                    _ => {}
                }
                codec::encode(&r)
            }
            RpcKind::Snapshot => {
                let (vote, snap) = net::snapshot_request(body)?;
                let r = self.raft.install_full_snapshot(vote, snap).await;
                codec::encode(&r)
            }
        }
    }

    /// Stops the group (the log's pending syncs finish).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.log.close();
    }
}
