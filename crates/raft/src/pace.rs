//! When a node campaigns and when, leading, it sends heartbeats. openraft 0.9's own timer is
//! not used for either: it ties the AppendEntries deadline, the heartbeat and a tick of 1.5 heartbeats together.
//!
//! openraft 0.9 gives each AppendEntries a deadline equal to its heartbeat interval and checks
//! elections on a tick of 1.5 heartbeat intervals, and a follower that knows a leader waits its
//! leader lease (the longest election timeout) plus an election timeout before it campaigns.
//! A heartbeat long enough for a slow link (a few hundred ms of delay each way) then means
//! failovers of several seconds. Here openraft's interval is only the AppendEntries deadline
//! (`GroupConfig::append_timeout`) and its tick never campaigns (`enable_elect: false`): this
//! pacer sends heartbeats every `GroupConfig::heartbeat` and campaigns after a random time in
//! `election_min..election_max` without word from a leader. docs/REPLICATION.md, "Timing".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use parking_lot::Mutex;

use crate::log::LogStore;
use crate::{NodeId, TypeConfig};

/// After a vote request this node refused because its own log is longer, it campaigns within
/// this range (the candidate cannot win; this node can).
const URGENT: (u64, u64) = (10, 60);
/// Campaigns in a row at the urgent pace (the first one may meet the shorter candidate's vote
/// of the same term; the next one is a term above it).
const URGENT_TRIES: u8 = 3;
/// How often the pacer looks (at most).
const STEP_MAX: Duration = Duration::from_millis(25);
/// A group just formed here (this node made its first membership, and campaigned at once):
/// while no leader has been heard, it campaigns again after this long, doubling each time,
/// until the wait reaches the election timeout. Its first campaign fails when its peers have
/// not opened the group yet (they answer "not open"); only this node holds the membership,
/// so nobody else can campaign, and before this it waited a whole election timeout.
const FORMING_FIRST: Duration = Duration::from_millis(50);

/// The pacer's state, shared by the group (which reports contacts) and its task.
pub(crate) struct Pacer {
    heartbeat: Duration,
    election: (Duration, Duration),
    /// openraft's leader lease: a vote request within it of a leader's word is refused.
    lease: Duration,
    /// Campaigning allowed (off while stepping down).
    pub(crate) campaign: AtomicBool,
    /// Heartbeats allowed (off while stepping down).
    pub(crate) heartbeats: AtomicBool,
    st: Mutex<PaceState>,
}

struct PaceState {
    /// The last word from a leader (or a vote granted, or this node leading).
    contact: Instant,
    next_campaign: Instant,
    urgent: u8,
    /// The next wait between campaigns while the group forms (none: not forming).
    forming: Option<Duration>,
    last_heartbeat: Instant,
    rng: u64,
}

impl Pacer {
    pub(crate) fn new(
        id: NodeId,
        heartbeat: Duration,
        election: (Duration, Duration),
        lease: Duration,
    ) -> Arc<Pacer> {
        let now = Instant::now();
        let seed = id
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let mut st = PaceState {
            contact: now,
            next_campaign: now,
            urgent: 0,
            forming: None,
            last_heartbeat: now,
            rng: seed | 1,
        };
        st.next_campaign = now + st.between(election.0, election.1);
        Arc::new(Pacer {
            heartbeat,
            election,
            lease,
            campaign: AtomicBool::new(true),
            heartbeats: AtomicBool::new(true),
            st: Mutex::new(st),
        })
    }

    /// A leader was heard (an AppendEntries accepted) or a vote granted: the election timer
    /// starts again.
    pub(crate) fn heard_leader(&self) {
        let mut st = self.st.lock();
        let now = Instant::now();
        st.contact = now;
        st.urgent = 0;
        st.forming = None;
        st.next_campaign = now + st.between(self.election.0, self.election.1);
    }

    /// This node has just made the group's first membership and campaigned: until a leader is
    /// heard, it campaigns again soon (`FORMING_FIRST`, doubling) rather than after an election
    /// timeout.
    pub(crate) fn forming(&self) {
        let mut st = self.st.lock();
        let now = Instant::now();
        st.next_campaign = now + FORMING_FIRST;
        st.forming = Some(FORMING_FIRST * 2);
    }

    /// A candidate with a shorter log than this node's asked for its vote: the leader is gone
    /// (no leader was heard for a lease), and this node, which can win, campaigns soon.
    pub(crate) fn shorter_candidate_seen(&self) {
        let mut st = self.st.lock();
        let now = Instant::now();
        if now.duration_since(st.contact) <= self.lease {
            return;
        }
        let soon = now + st.between_ms(URGENT.0, URGENT.1);
        st.next_campaign = st.next_campaign.min(soon);
        st.urgent = URGENT_TRIES;
    }
}

impl PaceState {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn between(&mut self, a: Duration, b: Duration) -> Duration {
        self.between_ms(a.as_millis() as u64, b.as_millis() as u64)
    }

    fn between_ms(&mut self, a: u64, b: u64) -> Duration {
        let span = b.saturating_sub(a).max(1);
        Duration::from_millis(a + self.next() % span)
    }
}

/// Runs the pacer of one group until the group shuts down.
pub(crate) async fn run(
    id: NodeId,
    raft: openraft::Raft<TypeConfig>,
    pacer: Arc<Pacer>,
    log: LogStore,
) {
    let step = (pacer.heartbeat / 2).min(STEP_MAX);
    let mut metrics = raft.metrics();
    loop {
        tokio::time::sleep(step).await;
        if metrics.has_changed().is_err() {
            return;
        }
        let (state, voter, sole_voter) = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() {
                return;
            }
            let members = m.membership_config.membership();
            let voter = members.voter_ids().any(|v| v == id);
            let sole = voter && members.voter_ids().count() == 1;
            (m.state, voter, sole)
        };
        let now = Instant::now();
        match state {
            ServerState::Shutdown => return,
            ServerState::Leader => {
                let due = {
                    let mut st = pacer.st.lock();
                    st.contact = now;
                    st.urgent = 0;
                    st.forming = None;
                    let due = now.duration_since(st.last_heartbeat) >= pacer.heartbeat;
                    if due {
                        st.last_heartbeat = now;
                    }
                    due
                };
                if due && pacer.heartbeats.load(Ordering::Acquire) {
                    let _ = raft.trigger().heartbeat().await;
                }
            }
            ServerState::Learner => pacer.heard_leader(),
            ServerState::Follower | ServerState::Candidate => {
                if !voter || !pacer.campaign.load(Ordering::Acquire) || log.vote_guarded() {
                    continue;
                }
                let go = {
                    let mut st = pacer.st.lock();
                    if sole_voter && state == ServerState::Follower {
                        // Alone: nobody to wait for.
                        true
                    } else if now >= st.next_campaign {
                        let forming = st.forming.filter(|w| *w < pacer.election.0);
                        st.next_campaign = if st.urgent > 0 {
                            st.urgent -= 1;
                            now + st.between_ms(URGENT.0 * 10, URGENT.1 * 5)
                        } else if let Some(wait) = forming {
                            // Jittered a little: the round trip of a vote on a loaded machine.
                            st.forming = Some(wait * 2);
                            let ms = wait.as_millis() as u64;
                            now + st.between_ms(ms, ms + ms / 4)
                        } else {
                            now + st.between(pacer.election.0, pacer.election.1)
                        };
                        true
                    } else {
                        false
                    }
                };
                if go {
                    tracing::debug!("raft node {id:016x}: no leader heard, campaigning");
                    let _ = raft.trigger().elect().await;
                }
            }
        }
    }
}
