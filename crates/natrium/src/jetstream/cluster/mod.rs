//! Replicated JetStream on this node: the Raft transport over routes (`transport`), the
//! JetStream servers it knows (`peers`), the meta group and its state (`meta`), this node's
//! replicas of replicated streams (`replica`), and the API as a cluster serves it (`api`:
//! forwarding to the meta leader or a stream's leader). R1 streams do not come here.
//!
//! Files: `<store_dir>/jetstream-cluster/meta/` (the meta group) and
//! `<store_dir>/jetstream-cluster/streams/<account>/<stream>/` (a replica: `msgs/`, `raft/`).

mod api;
mod catchup;
mod consumers;
mod convert;
mod locate;
mod meta;
mod peers;
mod repair;
mod replica;
mod transport;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use natrium_raft::{node_id, Group, GroupConfig, NodeId, Peer, Role};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::JetStream;
use crate::router::InternalClient;
use crate::util::time::rfc3339;
use meta::{MetaEvent, MetaSm, MetaState, StreamAssignment};
use peers::{Hello, Peers, HELLO};
pub(crate) use replica::Replica;
use transport::Hub;

/// Subject on which stream leaders announce themselves (system account).
const LEADERS: &str = "$NRX.SL";

/// Name of the meta group.
const META: &str = "_meta_";

/// A replica counts as current for this long after an answer showed it held everything
/// committed (several round trips: a replica that stops keeping up is not current for long).
const CAUGHT_UP: Duration = Duration::from_secs(1);

/// How long a server moved off a stream keeps its replica for the group's leader to take it
/// out of the group.
const REMOVAL_WAIT: Duration = Duration::from_secs(60);

/// How this server takes part in a JetStream cluster.
#[derive(Clone)]
pub(crate) struct ClusterSettings {
    /// The cluster's name.
    pub cluster: String,
    /// `server_tags`.
    pub tags: Vec<String>,
    /// Servers expected when the meta group first forms (those the explicit routes name, this
    /// one included), as known now.
    pub expected: Arc<dyn Fn() -> usize + Send + Sync>,
    /// A client in the system account.
    pub system: InternalClient,
}

/// Leader announcements: a replica's leader by stream key.
#[derive(Default)]
struct Leaders {
    map: HashMap<String, String>,
    /// The group's voters as its leader last announced them.
    voters: HashMap<String, Vec<String>>,
}

/// This node's replicated JetStream.
pub(crate) struct JsCluster {
    pub(crate) name: String,
    pub(crate) id: NodeId,
    settings: ClusterSettings,
    dir: PathBuf,
    js: Weak<JetStream>,
    hub: Arc<Hub>,
    meta: Group,
    meta_state: Arc<RwLock<MetaState>>,
    peers: Mutex<Peers>,
    replicas: Mutex<HashMap<String, Arc<Replica>>>,
    leaders: Mutex<Leaders>,
    /// Catch-up fetches waiting for their answers.
    pending: catchup::Pending,
    /// Streams (by key) this server is making replicated, with the step each conversion is at:
    /// one task drives each (the reconciler takes up none of them).
    converting: Mutex<HashMap<String, convert::Progress>>,
    /// Streams (by key) whose replica is being opened here (one opening at a time).
    opening: Mutex<HashSet<String>>,
    /// A conversion paused by the test hook goes on when this is set.
    conversion_go: watch::Sender<bool>,
    /// Streams (by key) whose replica here is being repaired (not open meanwhile).
    repairing: Mutex<HashSet<String>>,
    /// Bumped whenever a stream leader is announced (waiters re-check).
    leader_news: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

/// A replica being opened: its key leaves the set when the opening ends, however it ends.
struct Opening<'a> {
    set: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

/// A server's peer id as `/jsz` and `SERVER.REMOVE` show and take it.
fn peer_id(name: &str) -> String {
    format!("{:08x}", node_id(name) as u32)
}

fn group_config(name: &str) -> GroupConfig {
    GroupConfig {
        name: name.to_string(),
        ..GroupConfig::default()
    }
}

impl JsCluster {
    /// Opens the meta group and starts discovery, the RPC hub and the reconciler.
    pub(crate) async fn start(
        js: &Arc<JetStream>,
        server_name: &str,
        settings: ClusterSettings,
    ) -> std::io::Result<Arc<JsCluster>> {
        let id = node_id(server_name);
        let dir = js.options().store_dir.join("jetstream-cluster");
        crate::util::fs::create_dir_all_durable(&dir.join("meta"))?;
        let hub = Hub::start(settings.system.clone(), id)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let meta_state = Arc::new(RwLock::new(MetaState::default()));
        let sm = MetaSm {
            state: meta_state.clone(),
            events: events_tx,
        };
        let meta = Group::open(
            id,
            &GroupConfig {
                member_marker: Some(dir.join("meta.member")),
                ..group_config(META)
            },
            &dir.join("meta"),
            sm,
            hub.transport(META),
        )
        .await
        .map_err(|e| std::io::Error::other(format!("meta group: {e}")))?;
        hub.register(META, meta.clone());
        let (stop, _) = watch::channel(false);
        let (leader_news, _) = watch::channel(0);
        let cl = Arc::new(JsCluster {
            name: server_name.to_string(),
            id,
            settings,
            dir,
            js: Arc::downgrade(js),
            hub,
            meta,
            meta_state,
            peers: Mutex::new(Peers::default()),
            replicas: Mutex::new(HashMap::new()),
            leaders: Mutex::new(Leaders::default()),
            pending: catchup::Pending::default(),
            converting: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashSet::new()),
            conversion_go: watch::channel(false).0,
            repairing: Mutex::new(HashSet::new()),
            leader_news,
            stop,
        });
        tracing::info!(
            "JetStream cluster: server {server_name} (node {id:016x}) in cluster {}",
            cl.settings.cluster
        );
        let sys = &cl.settings.system;
        let hellos = sys
            .subscribe(HELLO, None, 1024)
            .and_then(|mut s| s.also(LEADERS, None).map(|_| s))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let api = sys
            .subscribe(&api::forward_subject(id), None, 4096)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let stepdowns = sys
            .subscribe_local("$JS.API.META.LEADER.STEPDOWN", None, 64)
            .and_then(|mut s| s.also("$JS.API.SERVER.REMOVE", None).map(|_| s))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let fetches = sys
            .subscribe(&catchup::serve_subject(id), None, 256)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let answers = sys
            .subscribe(&format!("{}.*", catchup::answers_prefix(id)), None, 256)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let r1_asks = sys
            .subscribe(&locate::subject(id), None, 256)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tokio::spawn(locate::serve(Arc::downgrade(&cl), r1_asks));
        tokio::spawn(catchup::serve(Arc::downgrade(&cl), fetches));
        tokio::spawn(catchup::answers(Arc::downgrade(&cl), answers));
        tokio::spawn(meta_stepdowns(Arc::downgrade(&cl), stepdowns));
        tokio::spawn(discovery(Arc::downgrade(&cl), hellos));
        tokio::spawn(api::serve_forwarded(Arc::downgrade(&cl), api));
        tokio::spawn(reconcile(Arc::downgrade(&cl), events));
        tokio::spawn(meta_watch(Arc::downgrade(&cl)));
        Ok(cl)
    }

    /// The Raft settings of a replicated stream's group.
    fn stream_group_config(&self, name: &str) -> GroupConfig {
        let mut cfg = group_config(name);
        if let Some(n) = self
            .jetstream()
            .and_then(|js| js.options().raft_snapshot_every)
        {
            cfg.snapshot_every = n.max(1);
            cfg.keep_behind_snapshot = cfg.keep_behind_snapshot.min(n);
        }
        cfg
    }

    fn jetstream(&self) -> Option<Arc<JetStream>> {
        self.js.upgrade()
    }

    /// This node's hello.
    fn hello(&self) -> Hello {
        let st = self.meta.status();
        Hello {
            name: self.name.clone(),
            cluster: self.settings.cluster.clone(),
            tags: self.settings.tags.clone(),
            meta_initialized: self.meta.is_initialized(),
            meta_leader: st.leader.map(|l| l.1),
        }
    }

    fn say_hello(&self) {
        let body = serde_json::to_vec(&self.hello()).unwrap_or_default();
        let _ = self.settings.system.publish(HELLO, None, None, &body);
    }

    /// The meta leader's name, when there is one.
    pub(crate) fn meta_leader(&self) -> Option<String> {
        self.meta.status().leader.map(|l| l.1)
    }

    pub(crate) fn meta_initialized(&self) -> bool {
        self.meta.is_initialized()
    }

    pub(crate) fn is_meta_leader(&self) -> bool {
        self.meta.status().role == Role::Leader
    }

    /// Waits (at most `within`) until this server has applied every meta entry it knows to be
    /// committed (a leader just restarted applies its log again).
    pub(crate) async fn meta_applied(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            let st = self.meta.status();
            if st.last_applied >= st.commit_index || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The meta group's status (for monitoring and tests).
    pub(crate) fn meta_status(&self) -> natrium_raft::GroupStatus {
        self.meta.status()
    }

    /// The assignment of stream `name` in `account`, if it is replicated.
    pub(crate) fn assignment(&self, account: &str, name: &str) -> Option<StreamAssignment> {
        self.meta_state
            .read()
            .streams
            .get(&meta::key(account, name))
            .cloned()
    }

    /// The replicated streams of `account`.
    pub(crate) fn assignments(&self, account: &str) -> Vec<StreamAssignment> {
        self.meta_state
            .read()
            .streams
            .values()
            .filter(|sa| sa.account == account)
            .cloned()
            .collect()
    }

    /// This node's replica of a stream, if it has one.
    pub(crate) fn replica(&self, account: &str, name: &str) -> Option<Arc<Replica>> {
        self.replicas.lock().get(&meta::key(account, name)).cloned()
    }

    /// The leader of a replicated stream: as its group here says, else as announced; never a
    /// server this one has no route to any more.
    pub(crate) fn stream_leader(&self, account: &str, name: &str) -> Option<String> {
        let key = meta::key(account, name);
        let replica = self.replicas.lock().get(&key).cloned();
        let leader = match replica {
            Some(r) => r.group.status().leader.map(|l| l.1),
            None => self.leaders.lock().map.get(&key).cloned(),
        };
        leader.filter(|l| self.reachable(l))
    }

    /// Whether server `name` is this one or still has interest here (a route to it is up).
    fn reachable(&self, name: &str) -> bool {
        name == self.name || self.hub.reaches(node_id(name))
    }

    /// The leader of a replicated stream once it serves: it has subscribed to the stream's
    /// subjects and announced itself (a group leader still applying its barrier does not count).
    pub(crate) fn serving_leader(&self, account: &str, name: &str) -> Option<String> {
        let key = meta::key(account, name);
        let replica = self.replicas.lock().get(&key).cloned();
        if replica.as_ref().is_some_and(|r| r.is_leader()) {
            return Some(self.name.clone());
        }
        let announced = self.leaders.lock().map.get(&key).cloned()?;
        let agrees = match replica {
            Some(r) => r.group.status().leader.map(|l| l.1).as_ref() == Some(&announced),
            None => true,
        };
        (agrees && announced != self.name && self.reachable(&announced)).then_some(announced)
    }

    /// Waits (up to `within`) until the stream has a leader that serves.
    pub(crate) async fn wait_stream_leader(
        &self,
        account: &str,
        name: &str,
        within: Duration,
    ) -> Option<String> {
        self.wait_leader(within, || self.serving_leader(account, name))
            .await
    }

    async fn wait_leader(
        &self,
        within: Duration,
        leader: impl Fn() -> Option<String>,
    ) -> Option<String> {
        let mut news = self.leader_news.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = leader() {
                return Some(l);
            }
            tokio::select! {
                _ = news.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return leader(),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Forgets the announced leader of a stream that was deleted.
    fn forget_leader(&self, account: &str, name: &str) {
        self.leaders.lock().map.remove(&meta::key(account, name));
    }

    /// Announces that this node leads the stream, with its group's voters.
    fn announce_leader(&self, r: &Replica) {
        let (account, stream) = (&r.account, &r.name);
        let body = json!({"account": account, "stream": stream, "leader": self.name, "voters": r.voters()});
        let _ = self
            .settings
            .system
            .publish(LEADERS, None, None, body.to_string().as_bytes());
    }

    /// `/jsz`'s `meta_cluster`: the meta group as this server sees it, as nats-server's.
    pub(crate) fn meta_cluster_info(&self) -> Value {
        let st = self.meta.status();
        let mut v = json!({
            "name": self.settings.cluster,
            "cluster_size": st.peers.iter().filter(|p| p.voter).count()
                + usize::from(self.meta.is_initialized()),
            "pending": 0,
            "replicas": self.replicas_info(&st),
        });
        if let Some((_, l)) = st.leader {
            v["peer"] = json!(peer_id(&l));
            v["leader"] = json!(l);
        }
        v
    }

    /// Why this server's JetStream is not healthy as a cluster member (`/healthz`), as
    /// nats-server words it: no meta leader, or a replica of a stream assigned here that is
    /// not open or has no leader.
    pub(crate) fn health(&self) -> Result<(), String> {
        if !self.meta.is_initialized() || self.meta_leader().is_none() {
            return Err("JetStream has not established contact with a meta leader".into());
        }
        let assigned: Vec<StreamAssignment> = self
            .meta_state
            .read()
            .streams
            .values()
            .filter(|sa| sa.peers.contains(&self.name))
            .cloned()
            .collect();
        for sa in assigned {
            let current = self
                .replica(&sa.account, &sa.config.name)
                .is_some_and(|r| r.group.status().leader.is_some());
            if !current {
                return Err(format!(
                    "JetStream stream '{} > {}' is not current",
                    sa.account, sa.config.name
                ));
            }
        }
        Ok(())
    }

    /// The other members of a group as nats-server lists replicas.
    fn replicas_info(&self, st: &natrium_raft::GroupStatus) -> Vec<Value> {
        let now = Instant::now();
        let peers = self.peers.lock();
        st.peers
            .iter()
            .map(|p| {
                let active = p.last_contact.map_or(0, |d| d.as_nanos() as u64);
                let offline = !peers.is_online(&p.name, now);
                // Current when heard from lately and holding what the leader has applied (as
                // nats-server), or, under steady publishing, when its last answer showed it
                // held everything committed when the request left: what it lacks is in flight.
                let current = !offline
                    && p.last_contact.is_some_and(|d| d < Duration::from_secs(5))
                    && (p.matched.is_some_and(|m| m >= st.last_applied)
                        || p.caught_up.is_some_and(|d| d < CAUGHT_UP));
                let mut v = json!({"name": p.name, "current": current, "active": active});
                if let Some(l) = p.lag.filter(|l| *l > 0) {
                    v["lag"] = json!(l);
                }
                if offline {
                    v["offline"] = json!(true);
                }
                v
            })
            .collect()
    }

    /// The `cluster` object of a replicated stream's info on its leader, as nats-server's.
    pub(crate) fn stream_cluster_info(&self, account: &str, name: &str) -> Option<Value> {
        let r = self.replica(account, name)?;
        let st = r.group.status();
        let sa = self.assignment(account, name);
        let replicas = self.replicas_info(&st);
        let mut c = json!({"name": self.settings.cluster, "replicas": replicas});
        if let Some(sa) = &sa {
            c["raft_group"] = json!(sa.group);
        }
        if let Some(since) = r.leader_since() {
            c["leader_since"] = json!(rfc3339(since));
        }
        match st.leader {
            Some((_, l)) => c["leader"] = json!(l),
            None => {
                if let Some(sa) = sa {
                    c["replicas"] = json!(sa
                        .peers
                        .iter()
                        .map(|p| json!({"name": p, "current": false, "active": 0}))
                        .collect::<Vec<_>>());
                }
            }
        }
        Some(c)
    }

    /// Chooses `n` servers for a new stream: online and routed to, in the meta group, of the placement's
    /// cluster and with its tags, not removed and not in `exclude`; the least loaded first.
    /// nats-server's error when there are too few.
    fn place(
        &self,
        n: usize,
        placement: Option<&super::config::Placement>,
        exclude: &[String],
    ) -> Result<Vec<String>, super::errors::ApiError> {
        let now = Instant::now();
        let members: Vec<NodeId> = {
            let st = self.meta.status();
            std::iter::once(st.id)
                .chain(st.peers.iter().filter(|p| p.voter).map(|p| p.id))
                .collect()
        };
        let removed = self.meta_state.read().removed.clone();
        let load: HashMap<String, usize> = {
            let mut m = HashMap::new();
            for sa in self.meta_state.read().streams.values() {
                for p in &sa.peers {
                    *m.entry(p.clone()).or_insert(0) += 1;
                }
            }
            m
        };
        let peers = self.peers.lock();
        let mut missing_tags = Vec::new();
        let mut offline = false;
        let mut candidates: Vec<&Hello> = Vec::new();
        for id in members {
            let Some(k) = peers.known.get(&id) else {
                offline = true;
                continue;
            };
            let h = &k.hello;
            // Heard from lately, and still routed to: a server that shut down a moment ago is
            // not chosen (its group would have no quorum until it came back).
            if now.duration_since(k.seen) > peers::ONLINE || !self.reachable(&h.name) {
                offline = true;
                continue;
            }
            if removed.contains(&h.name) || exclude.contains(&h.name) {
                continue;
            }
            if let Some(p) = placement {
                if p.cluster
                    .as_ref()
                    .is_some_and(|c| !c.is_empty() && *c != h.cluster)
                {
                    continue;
                }
                let lacking: Vec<&String> = p.tags.iter().filter(|t| !h.tags.contains(t)).collect();
                if !lacking.is_empty() {
                    missing_tags.extend(lacking.into_iter().cloned());
                    continue;
                }
            }
            candidates.push(h);
        }
        if candidates.len() < n {
            let mut msg = String::from("no suitable peers for placement");
            if offline {
                msg.push_str(", peer offline");
            }
            if !missing_tags.is_empty() {
                missing_tags.sort();
                missing_tags.dedup();
                let t: Vec<String> = missing_tags.iter().map(|t| format!("'{t}'")).collect();
                msg.push_str(&format!(", tags not matched [{}]", t.join(", ")));
            }
            return Err(super::errors::ApiError::no_suitable_peers(msg));
        }
        fastrand::shuffle(&mut candidates);
        candidates.sort_by_key(|h| load.get(&h.name).copied().unwrap_or(0));
        Ok(candidates.iter().take(n).map(|h| h.name.clone()).collect())
    }

    /// Stops the meta group and every replica (conversions under way stop first, at the step
    /// they are at: nothing of theirs runs once the server is down).
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.conversions_stopped().await;
        let replicas: Vec<Arc<Replica>> = self.replicas.lock().drain().map(|(_, r)| r).collect();
        for r in replicas {
            r.stop().await;
        }
        self.meta.shutdown().await;
    }

    /// Opens this node's replica of `sa` (idempotent), taking up a conversion a restart left
    /// unfinished.
    async fn ensure_replica(self: &Arc<Self>, sa: &StreamAssignment) {
        self.open_replica(sa, true).await
    }

    /// Opens this node's replica of `sa` (idempotent, one opening at a time); with `resume`
    /// (the reconciler), a conversion left unfinished in its directory is taken up, and a
    /// stream a conversion task drives is left to it.
    async fn open_replica(self: &Arc<Self>, sa: &StreamAssignment, resume: bool) {
        if !sa.peers.contains(&self.name) || *self.stop.borrow() {
            return;
        }
        let key = sa.key();
        if self.replicas.lock().contains_key(&key)
            || (resume && self.converting.lock().contains_key(&key))
            || self.repairing.lock().contains(&key)
        {
            return;
        }
        if !self.opening.lock().insert(key.clone()) {
            return;
        }
        let _opening = Opening {
            set: &self.opening,
            key,
        };
        let Some(js) = self.jetstream() else { return };
        let Some(catalog) = js.catalog(&sa.account) else {
            tracing::error!(
                "replicated stream {:?}: JetStream is not enabled for account {:?} here",
                sa.config.name,
                sa.account
            );
            return;
        };
        let dir = self
            .dir
            .join("streams")
            .join(&sa.account)
            .join(&sa.config.name);
        // A store that lost messages is repaired from the peers before the replica opens.
        match repair::check(sa, &dir) {
            Ok(None) => {}
            Ok(Some(damaged)) => {
                self.repairing.lock().insert(sa.key());
                tokio::spawn(self.clone().repair(sa.clone(), dir, damaged));
                return;
            }
            Err(e) => {
                tracing::error!(
                    "replicated stream {:?} in account {:?}: can not check its store: {e}",
                    sa.config.name,
                    sa.account
                );
                return;
            }
        }
        let conversion = resume.then(|| self.pending_conversion(sa, &dir)).flatten();
        match Replica::open(self, &catalog, sa, &dir).await {
            Ok(r) => {
                if let Some(first) = sa.peers.first().filter(|p| **p == self.name) {
                    // The first peer forms the group; the others learn it from the leader.
                    let members: BTreeMap<NodeId, Peer> = sa
                        .peers
                        .iter()
                        .map(|p| (node_id(p), Peer { name: p.clone() }))
                        .collect();
                    if !r.group.is_initialized() {
                        if let Err(e) = r.group.initialize(members).await {
                            tracing::debug!("stream group {}: {e} ({first})", sa.group);
                        }
                    }
                }
                // Under the map's lock: a shutdown that began meanwhile finds it, or it stops
                // here.
                let stopped = {
                    let mut replicas = self.replicas.lock();
                    let stopped = *self.stop.borrow();
                    if !stopped {
                        replicas.insert(sa.key(), r.clone());
                    }
                    stopped
                };
                if stopped {
                    r.stop().await;
                    return;
                }
                if let Some((run, local)) = conversion {
                    tokio::spawn(self.clone().resume_conversion(run, local));
                }
            }
            Err(e) => {
                tracing::error!(
                    "replicated stream {:?} in account {:?}: can not open its replica: {e}",
                    sa.config.name,
                    sa.account
                );
                if let Some((run, local)) = conversion {
                    // Its task opens the replica again before each attempt.
                    tokio::spawn(self.clone().resume_conversion(run, local));
                }
            }
        }
    }

    /// Waits (bounded) until the stream's leader announces a group without this server.
    async fn wait_removed(&self, r: &Replica) {
        let key = meta::key(&r.account, &r.name);
        let deadline = Instant::now() + REMOVAL_WAIT;
        while Instant::now() < deadline {
            let removed = {
                let leaders = self.leaders.lock();
                leaders.map.get(&key).is_some_and(|l| *l != self.name)
                    && leaders
                        .voters
                        .get(&key)
                        .is_some_and(|v| !v.is_empty() && !v.contains(&self.name))
            };
            if removed || r.group.status().role == Role::Stopped {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(
            "stream '{} > {}': not taken out of its group in time; leaving it",
            r.account,
            r.name
        );
    }

    async fn drop_replica(&self, sa: &StreamAssignment, delete: bool) {
        let r = self.replicas.lock().remove(&sa.key());
        if let Some(r) = r {
            r.stop().await;
            if delete {
                r.destroy();
            }
        }
    }

    /// Publishes nats-server's quorum-lost advisory for a stream in its account (and, with the
    /// account named, in the system account).
    fn advise_quorum_lost(&self, r: &Replica, replicas: Vec<Value>) {
        tracing::warn!(
            "JetStream cluster stream '{} > {}' has NO quorum, stalled",
            r.account,
            r.name
        );
        let subject = format!("$JS.EVENT.ADVISORY.STREAM.QUORUM_LOST.{}", r.name);
        let mut body = json!({
            "type": "io.nats.jetstream.advisory.v1.stream_quorum_lost",
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": rfc3339(std::time::SystemTime::now()),
            "stream": r.name,
            "replicas": replicas,
        });
        let _ = r
            .client()
            .publish(&subject, None, None, body.to_string().as_bytes());
        body["account"] = json!(r.account);
        let _ = self
            .settings
            .system
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    /// The replicas of a group as nats-server lists them (for advisories).
    fn group_replicas(&self, r: &Replica) -> Vec<Value> {
        self.replicas_info(&r.group.status())
    }

    /// Publishes a leader-elected advisory for a stream in its account.
    fn advise_leader(&self, client: &InternalClient, stream: &str) {
        let body = json!({
            "type": "io.nats.jetstream.advisory.v1.stream_leader_elected",
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": rfc3339(std::time::SystemTime::now()),
            "stream": stream,
            "leader": self.name,
            "replicas": [],
        });
        let _ = client.publish(
            &format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}"),
            None,
            None,
            body.to_string().as_bytes(),
        );
    }
}

/// Hellos and leader announcements: keeps the peer table, forms the meta group when none
/// exists, and lets the meta leader add servers that are new to it.
async fn discovery(cl: Weak<JsCluster>, mut sub: crate::router::InternalSubscription) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_hello = Instant::now() - Duration::from_secs(60);
    let started = Instant::now();
    let mut stop = match cl.upgrade() {
        Some(c) => c.stop.subscribe(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = sub.next() => {
                let Some(m) = m else { return };
                let Some(cl) = cl.upgrade() else { return };
                if m.subject == LEADERS {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                    if let (Some(a), Some(s), Some(l)) = (v["account"].as_str(), v["stream"].as_str(), v["leader"].as_str()) {
                        let voters: Vec<String> = serde_json::from_value(v["voters"].clone()).unwrap_or_default();
                        let mut leaders = cl.leaders.lock();
                        leaders.map.insert(meta::key(a, s), l.to_string());
                        leaders.voters.insert(meta::key(a, s), voters);
                        drop(leaders);
                        cl.leader_news.send_modify(|n| *n += 1);
                    }
                    continue;
                }
                let Ok(h) = serde_json::from_slice::<Hello>(&m.payload) else { continue };
                if h.cluster != cl.settings.cluster {
                    continue;
                }
                let fresh = cl.peers.lock().heard(h, Instant::now());
                if fresh {
                    cl.say_hello();
                    last_hello = Instant::now();
                }
            }
            _ = tick.tick() => {
                let Some(cl) = cl.upgrade() else { return };
                let every = if started.elapsed() < Duration::from_secs(10) { Duration::from_secs(1) } else { Duration::from_secs(4) };
                if last_hello.elapsed() >= every {
                    cl.say_hello();
                    last_hello = Instant::now();
                }
                maybe_bootstrap(&cl).await;
                maybe_grow(&cl).await;
                republish_leaders(&cl);
            }
        }
    }
}

/// Forms the meta group when no server has one: the server with the smallest id among those
/// online forms it with all of them, once as many as expected have been seen and the set has
/// been stable for a second.
async fn maybe_bootstrap(cl: &Arc<JsCluster>) {
    if cl.meta.is_initialized() {
        return;
    }
    let now = Instant::now();
    let members: BTreeMap<NodeId, Peer> = {
        let peers = cl.peers.lock();
        let online = peers.online(now);
        if online.iter().any(|(_, h)| h.meta_initialized) {
            return;
        }
        if online.len() < (cl.settings.expected)().max(1)
            || online.first().map(|(id, _)| *id) != Some(cl.id)
            || peers
                .changed
                .is_none_or(|c| now.duration_since(c) < Duration::from_secs(1))
        {
            return;
        }
        online
            .iter()
            .map(|(id, h)| {
                (
                    *id,
                    Peer {
                        name: h.name.clone(),
                    },
                )
            })
            .collect()
    };
    let names: Vec<&str> = members.values().map(|p| p.name.as_str()).collect();
    tracing::info!("JetStream cluster: forming the meta group with {names:?}");
    if let Err(e) = cl.meta.initialize(members).await {
        tracing::warn!("JetStream cluster: forming the meta group: {e}");
    }
}

/// On the meta leader: adds online JetStream servers that are not members yet, one at a time.
async fn maybe_grow(cl: &Arc<JsCluster>) {
    let st = cl.meta.status();
    if st.role != Role::Leader {
        return;
    }
    let removed = cl.meta_state.read().removed.clone();
    let newcomer = {
        let peers = cl.peers.lock();
        peers
            .online(Instant::now())
            .into_iter()
            .filter(|(_, h)| !removed.contains(&h.name))
            .find(|(id, _)| *id != cl.id && !st.peers.iter().any(|p| p.id == *id && p.voter))
            .map(|(id, h)| (id, h.name.clone()))
    };
    if let Some((id, name)) = newcomer {
        tracing::info!("JetStream cluster: adding {name} to the meta group");
        let meta = cl.meta.clone();
        // Bounded: a server that does not catch up is tried again later.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            meta.add_member(id, Peer { name: name.clone() }),
        )
        .await;
        match r {
            Ok(Ok(())) => tracing::info!("JetStream cluster: {name} joined the meta group"),
            Ok(Err(e)) => tracing::warn!("JetStream cluster: adding {name}: {e}"),
            Err(_) => tracing::warn!("JetStream cluster: adding {name}: timed out"),
        }
    }
}

/// Leaders repeat their announcement every few seconds (servers that joined later learn it),
/// bring their group's members in line with the stream's assigned peers, and tell when they
/// have lost their quorum.
fn republish_leaders(cl: &Arc<JsCluster>) {
    let replicas: Vec<Arc<Replica>> = cl.replicas.lock().values().cloned().collect();
    for r in replicas {
        if !r.is_leader() {
            continue;
        }
        if r.announce_due() {
            cl.announce_leader(&r);
        }
        if let Some(sa) = cl.assignment(&r.account, &r.name) {
            if r.needs_reshape(&sa.peers) {
                tokio::spawn(r.clone().reshape(sa.peers));
            }
        }
        if r.quorum_lost() {
            cl.advise_quorum_lost(&r, cl.group_replicas(&r));
            // Its consumers are in its group: they lost their quorum with it.
            for c in r.consumer_names() {
                r.advise_consumer("QUORUM_LOST", &c);
            }
        }
    }
}

/// `$JS.API.META.LEADER.STEPDOWN` and `$JS.API.SERVER.REMOVE` from system-account clients of
/// this server.
async fn meta_stepdowns(cl: Weak<JsCluster>, mut sub: crate::router::InternalSubscription) {
    while let Some(m) = sub.next().await {
        let Some(cl) = cl.upgrade() else { return };
        if m.subject == "$JS.API.SERVER.REMOVE" {
            tokio::spawn(async move { cl.server_remove(m.reply.as_deref(), &m.payload).await });
        } else {
            tokio::spawn(async move { cl.meta_step_down(m.reply.as_deref()).await });
        }
    }
}

/// Logs meta leader changes.
async fn meta_watch(cl: Weak<JsCluster>) {
    let (mut changes, mut stop) = match cl.upgrade() {
        Some(c) => (c.meta.changes(), c.stop.subscribe()),
        None => return,
    };
    let mut last: Option<String> = None;
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let Some(cl) = cl.upgrade() else { return };
        let leader = cl.meta_leader();
        if leader != last {
            match &leader {
                Some(l) if *l == cl.name => {
                    tracing::info!("JetStream cluster: this server is the meta leader")
                }
                Some(l) => tracing::info!("JetStream cluster: meta leader is {l}"),
                None => tracing::warn!("JetStream cluster: no meta leader"),
            }
            last = leader;
            cl.say_hello();
        }
    }
}

/// Applies meta events to this node: opens, updates and removes replicas.
async fn reconcile(cl: Weak<JsCluster>, mut events: mpsc::UnboundedReceiver<MetaEvent>) {
    while let Some(e) = events.recv().await {
        let Some(cl) = cl.upgrade() else { return };
        match e {
            MetaEvent::Assigned(sa) => cl.ensure_replica(&sa).await,
            MetaEvent::Updated(sa) => {
                if sa.peers.contains(&cl.name) {
                    match cl.replica(&sa.account, &sa.config.name) {
                        Some(r) => r.update_config(sa.config.clone()),
                        None => cl.ensure_replica(&sa).await,
                    }
                } else if let Some(r) = cl.replica(&sa.account, &sa.config.name) {
                    // Moved off this server. A leader first hands its group to the new peers
                    // (new members caught up, leadership given away); a follower just leaves.
                    // It stays a member (and answers) until the group's leader has taken it
                    // out: the group keeps its quorum while it shrinks.
                    let cl = cl.clone();
                    tokio::spawn(async move {
                        if r.is_leader() {
                            r.clone().reshape(sa.peers.clone()).await;
                        }
                        cl.wait_removed(&r).await;
                        let back = cl
                            .assignment(&sa.account, &sa.config.name)
                            .is_some_and(|now| now.peers.contains(&cl.name));
                        if !back {
                            cl.drop_replica(&sa, true).await;
                        }
                    });
                }
            }
            MetaEvent::Deleted(sa) => {
                cl.forget_leader(&sa.account, &sa.config.name);
                cl.drop_replica(&sa, true).await
            }
        }
    }
}
