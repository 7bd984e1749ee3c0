//! Scenarios: a cluster, a stream, the publishing workload, and a loop of faults, each iteration
//! bounded in time; then everything healed, every replica read and checked, and a report.
//!
//! | scenario | each iteration |
//! |---|---|
//! | `leader-kill` | kill -9 of the stream leader, next PubAck timed, the node restarted and caught up |
//! | `follower-kill` | kill -9 of a replica that does not lead, restarted |
//! | `pause` | SIGSTOP of the leader or a follower (in turn) for a while, then SIGCONT |
//! | `partition` | the leader cut off, cut one way, or slowed (in turn), then healed; or a follower cut off |
//! | `power-loss` | every node loses power at once (unsynced writes undone), all restarted |
//! | `corruption` | a minority node stopped, bits flipped or files cut in its store, restarted |
//! | `core` | (core NATS, no JetStream; see `core`) link faults and node kills under pub/sub |
//!
//! With one replica (R1), a kill is followed by a restart before the next PubAck can come, and
//! corruption hits the only copy: losses the store detected and reported are allowed, serving
//! damaged data never is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::checker;
use crate::cluster::{Cluster, ClusterConfig, NodeState};
use crate::corrupt::{self, CorruptConfig};
use crate::replica;
use crate::report::{Percentiles, Report};
use crate::workload::{self, History, Workload, WorkloadConfig};

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    LeaderKill,
    FollowerKill,
    Pause,
    Partition,
    PowerLoss,
    Corruption,
    Core,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::LeaderKill => "leader-kill",
            Kind::FollowerKill => "follower-kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::PowerLoss => "power-loss",
            Kind::Corruption => "corruption",
            Kind::Core => "core",
        }
    }
}

/// A run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub kind: Kind,
    pub iterations: usize,
    pub nodes: usize,
    pub replicas: usize,
    pub binary: PathBuf,
    pub dir: Option<PathBuf>,
    pub keep: bool,
    pub seed: u64,
    pub workload: WorkloadConfig,
    /// Publishing between two faults.
    pub interval: Duration,
    /// How long a fault lasts (pauses, partitions).
    pub fault_time: Duration,
    /// The most one iteration may wait for a PubAck, a restart or a catch-up.
    pub iteration_timeout: Duration,
    pub corrupt: CorruptConfig,
    /// Print a line per iteration on stderr.
    pub progress: bool,
    /// Extra configuration lines for every node.
    pub extra_config: String,
    /// Power-loss runs: every fsync takes this much longer (a slow disk).
    pub slow_sync: Option<Duration>,
}

impl RunConfig {
    pub fn new(kind: Kind, binary: impl Into<PathBuf>) -> RunConfig {
        RunConfig {
            kind,
            iterations: 3,
            nodes: 3,
            replicas: 3,
            binary: binary.into(),
            dir: None,
            keep: false,
            seed: 1,
            workload: WorkloadConfig::default(),
            interval: Duration::from_millis(300),
            fault_time: Duration::from_secs(2),
            iteration_timeout: Duration::from_secs(30),
            corrupt: CorruptConfig::default(),
            progress: false,
            extra_config: String::new(),
            slow_sync: None,
        }
    }
}

/// The stream every JetStream scenario publishes to.
pub const STREAM: &str = "FAULTS";

/// How long a replicated stream must stay healthy before the next fault.
const SETTLE: Duration = Duration::from_secs(1);

/// An ack that comes this soon after a fault was in flight before it (from the old leader).
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(25);

struct Ctx {
    cfg: RunConfig,
    cluster: Cluster,
    admin: async_nats::Client,
    wl: Option<Workload>,
    rng: fastrand::Rng,
    report: Report,
    failovers: Vec<Duration>,
    started: Instant,
    /// Sequences a store reported damaged when it was reopened after corruption (a later
    /// reopen may no longer see a loss it reported once).
    detected: std::collections::BTreeSet<u64>,
}

/// Runs a scenario to its end and reports. Harness failures are in `Report::errors`.
pub async fn run(cfg: RunConfig) -> Report {
    let mut report = Report {
        scenario: cfg.kind.name().into(),
        nodes: cfg.nodes,
        replicas: if cfg.kind == Kind::Core {
            0
        } else {
            cfg.replicas
        },
        ..Report::default()
    };
    if let Err(e) = validate(&cfg) {
        report.errors.push(e);
        return report;
    }
    if cfg.kind == Kind::Core {
        return crate::core::run(cfg, report).await;
    }
    let started = Instant::now();
    let mut ccfg = ClusterConfig::new(cfg.nodes, &cfg.binary);
    ccfg.powerloss = cfg.kind == Kind::PowerLoss;
    ccfg.slow_sync = cfg.slow_sync;
    ccfg.dir = cfg.dir.clone();
    ccfg.keep = cfg.keep;
    ccfg.extra = cfg.extra_config.clone();
    let cluster = match Cluster::start(ccfg).await {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(format!("start: {e}"));
            return report;
        }
    };
    let admin = match workload::connect(&cluster.client_urls()).await {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(format!("connect: {e}"));
            return report;
        }
    };
    let mut ctx = Ctx {
        rng: fastrand::Rng::with_seed(cfg.seed),
        cfg,
        cluster,
        admin,
        wl: None,
        report,
        failovers: Vec::new(),
        started,
        detected: Default::default(),
    };
    if let Err(e) = ctx.body().await {
        ctx.report.errors.push(e);
    }
    ctx.finish().await
}

/// Whether a replica in a stream info's `cluster.replicas` is caught up: online, and `current`
/// or, with the leader busy, at most `window` entries behind and heard from within a second.
/// (`current` alone may stay false under steady publishing, when some entries are always in
/// flight.)
fn replica_caught_up(r: &Value, window: u64) -> bool {
    if r["offline"].as_bool() == Some(true) {
        return false;
    }
    if r["current"].as_bool() == Some(true) {
        return true;
    }
    // Not current with no lag shown: its lag is unknown (never heard from, or long ago).
    let Some(lag) = r["lag"].as_u64() else {
        return false;
    };
    let active = r["active"].as_u64().unwrap_or(0);
    lag <= window && (1..1_000_000_000).contains(&active)
}

/// Whether a `STREAM.CREATE` error may pass while a cluster forms: JetStream temporarily
/// unavailable (no meta leader yet, 10008) or too few peers online yet (10005). Any other
/// error is the server's answer (e.g. 10074, no replicated streams in this build).
fn create_may_succeed_later(error: &Value) -> bool {
    matches!(error["err_code"].as_u64(), Some(10008 | 10005))
}

fn validate(cfg: &RunConfig) -> Result<(), String> {
    if !(1..=5).contains(&cfg.nodes) {
        return Err("--nodes must be 1 to 5".into());
    }
    if cfg.kind != Kind::Core && !(1..=cfg.nodes).contains(&cfg.replicas) {
        return Err(format!("--replicas must be 1 to {} (the nodes)", cfg.nodes));
    }
    let needs_followers = matches!(cfg.kind, Kind::FollowerKill);
    if needs_followers && cfg.replicas < 2 {
        return Err(format!("{} needs --replicas 2 or more", cfg.kind.name()));
    }
    if matches!(cfg.kind, Kind::Partition | Kind::Core) && cfg.nodes < 2 {
        return Err(format!("{} needs --nodes 2 or more", cfg.kind.name()));
    }
    if cfg.replicas == 1 && cfg.nodes > 1 && cfg.kind != Kind::Core {
        return Err("an R1 stream is run on one node (--nodes 1)".into());
    }
    Ok(())
}

impl Ctx {
    fn progress(&self, s: &str) {
        if self.cfg.progress {
            eprintln!("[{:>7.1}s] {s}", self.started.elapsed().as_secs_f64());
        }
    }

    fn fault(&mut self, s: String) {
        self.progress(&s);
        self.report
            .fault(format!("{:.1}s {s}", self.started.elapsed().as_secs_f64()));
    }

    fn history(&self) -> Arc<History> {
        self.wl.as_ref().expect("workload running").history.clone()
    }

    async fn body(&mut self) -> Result<(), String> {
        if self.cfg.nodes > 1 {
            self.cluster
                .wait_routes(self.cfg.iteration_timeout)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.create_stream().await?;
        self.wait_healthy().await?;
        let mut wcfg = self.cfg.workload.clone();
        wcfg.subject_prefix = "faults".into();
        self.wl = Some(Workload::start(&self.cluster.client_urls(), wcfg).await);
        let wl = self.wl.as_ref().expect("just set");
        if !wl.wait_acks(1, self.cfg.iteration_timeout).await {
            return Err(format!(
                "no PubAck within {:?} of starting the workload",
                self.cfg.iteration_timeout
            ));
        }
        for it in 0..self.cfg.iterations {
            tokio::time::sleep(self.cfg.interval).await;
            self.iteration(it).await?;
            self.report.iterations = it + 1;
            self.progress(&format!(
                "iteration {} done, {} acked",
                it + 1,
                self.history().acks()
            ));
        }
        tokio::time::sleep(self.cfg.interval).await;
        Ok(())
    }

    async fn create_stream(&mut self) -> Result<(), String> {
        let cfg = json!({
            "name": STREAM,
            "subjects": ["faults.>"],
            "num_replicas": self.cfg.replicas,
            "storage": "file",
            "retention": "limits",
            "discard": "old",
            "duplicate_window": 120_000_000_000u64,
        });
        let end = Instant::now() + self.cfg.iteration_timeout;
        loop {
            let r = self
                .admin
                .request(
                    format!("$JS.API.STREAM.CREATE.{STREAM}"),
                    cfg.to_string().into(),
                )
                .await;
            let last = match r {
                Ok(m) => match serde_json::from_slice::<Value>(&m.payload) {
                    Ok(v) if v.get("error").is_none() => return Ok(()),
                    Ok(v) if !create_may_succeed_later(&v["error"]) => {
                        return Err(format!("stream create refused: {}", v["error"]))
                    }
                    Ok(v) => v["error"].to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > end {
                return Err(format!("stream create: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The stream's info through any node (bounded retries).
    async fn info(&self) -> Result<Value, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match replica::stream_info(&self.admin, STREAM).await {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// The index of the stream's leader, waiting (bounded) until there is one that is up.
    async fn leader(&self) -> Result<usize, String> {
        let end = Instant::now() + self.cfg.iteration_timeout;
        let mut last: String;
        loop {
            match self.info().await {
                Ok(v) => {
                    let name = v["cluster"]["leader"].as_str().unwrap_or("");
                    match self.cluster.index_of(name) {
                        Some(i) if self.cluster.node(i).state() == NodeState::Running => {
                            return Ok(i)
                        }
                        _ => last = format!("leader {name:?}"),
                    }
                }
                Err(e) => last = e,
            }
            if Instant::now() > end {
                return Err(format!("no stream leader: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stream's replicas other than its leader, as node indices.
    async fn followers(&self, leader: usize) -> Vec<usize> {
        let Ok(v) = self.info().await else {
            return Vec::new();
        };
        let mut out: Vec<usize> = v["cluster"]["replicas"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["name"].as_str())
                    .filter_map(|n| self.cluster.index_of(n))
                    .collect()
            })
            .unwrap_or_default();
        out.retain(|&i| i != leader);
        out
    }

    /// Entries the workload may have in flight at once: a replica this close behind a busy
    /// leader is caught up.
    fn in_flight_window(&self) -> u64 {
        (self.cfg.workload.publishers * self.cfg.workload.inflight.max(1)) as u64 + 8
    }

    /// Waits until the stream has a leader and every replica is caught up (R1: it answers).
    async fn wait_healthy(&self) -> Result<(), String> {
        let end = Instant::now() + self.cfg.iteration_timeout;
        let mut last: String;
        let mut healthy_since: Option<Instant> = None;
        loop {
            match self.info().await {
                Ok(v) => {
                    if self.cfg.replicas == 1 {
                        return Ok(());
                    }
                    let c = &v["cluster"];
                    let leader = c["leader"].as_str().unwrap_or("");
                    let reps = c["replicas"].as_array().cloned().unwrap_or_default();
                    let window = self.in_flight_window();
                    let current = reps.iter().all(|r| replica_caught_up(r, window));
                    if !leader.is_empty() && reps.len() + 1 == self.cfg.replicas && current {
                        // Held for a while, so that a node just restarted has settled (its
                        // catch-up done, its groups' damage guards lifted) before the next fault.
                        let since = *healthy_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= SETTLE {
                            return Ok(());
                        }
                    } else {
                        healthy_since = None;
                    }
                    last = c.to_string();
                }
                Err(e) => {
                    healthy_since = None;
                    last = e
                }
            }
            if Instant::now() > end {
                return Err(format!("stream not healthy in time: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Times the next PubAck after `t` (ns since the workload start).
    async fn time_next_ack(&mut self, t: u64, is_failover: bool) {
        let h = self.history();
        let wl = self.wl.as_ref().expect("workload running");
        let after = t + IN_FLIGHT_GRACE.as_nanos() as u64;
        match wl.wait_ack_after(after, self.cfg.iteration_timeout).await {
            Some(at) => {
                let d = Duration::from_nanos(at.saturating_sub(t));
                if is_failover {
                    self.failovers.push(d);
                }
                self.progress(&format!(
                    "next PubAck after {:.0} ms",
                    d.as_secs_f64() * 1e3
                ));
            }
            None => {
                self.report.unavailable += 1;
                let _ = h;
                self.fault(format!(
                    "no PubAck within {:?} of the fault",
                    self.cfg.iteration_timeout
                ));
            }
        }
    }

    async fn start(&mut self, i: usize) -> Result<(), String> {
        self.cluster
            .start_node(i)
            .await
            .map_err(|e| format!("restart {}: {e}", self.cluster.node(i).name))
    }

    async fn iteration(&mut self, it: usize) -> Result<(), String> {
        match self.cfg.kind {
            Kind::LeaderKill => {
                let leader = self.leader().await?;
                let t = self.history().now();
                self.cluster.kill(leader).map_err(|e| e.to_string())?;
                let name = self.cluster.node(leader).name.clone();
                self.fault(format!("kill -9 {name} (leader)"));
                if self.cfg.replicas == 1 {
                    self.start(leader).await?;
                }
                self.time_next_ack(t, true).await;
                if self.cfg.replicas > 1 {
                    self.start(leader).await?;
                }
                self.wait_healthy().await
            }
            Kind::FollowerKill => {
                let leader = self.leader().await?;
                let followers = self.followers(leader).await;
                if followers.is_empty() {
                    return Err("no follower to kill".into());
                }
                let victim = followers[self.rng.usize(..followers.len())];
                let t = self.history().now();
                self.cluster.kill(victim).map_err(|e| e.to_string())?;
                let name = self.cluster.node(victim).name.clone();
                self.fault(format!("kill -9 {name} (follower)"));
                tokio::time::sleep(self.cfg.interval).await;
                self.time_next_ack(t, false).await;
                self.start(victim).await?;
                self.wait_healthy().await
            }
            Kind::Pause => {
                let leader = self.leader().await?;
                let followers = self.followers(leader).await;
                let (victim, role) = if it.is_multiple_of(2) || followers.is_empty() {
                    (leader, "leader")
                } else {
                    (followers[self.rng.usize(..followers.len())], "follower")
                };
                let t = self.history().now();
                self.cluster.pause(victim).map_err(|e| e.to_string())?;
                let name = self.cluster.node(victim).name.clone();
                self.fault(format!(
                    "SIGSTOP {name} ({role}) for {:?}",
                    self.cfg.fault_time
                ));
                tokio::time::sleep(self.cfg.fault_time).await;
                self.cluster.resume(victim).map_err(|e| e.to_string())?;
                self.fault(format!("SIGCONT {name}"));
                self.time_next_ack(t, role == "leader").await;
                self.wait_healthy().await
            }
            Kind::Partition => {
                let leader = self.leader().await?;
                let n = self.cluster.len();
                let others: Vec<usize> = (0..n).filter(|&j| j != leader).collect();
                let name = self.cluster.node(leader).name.clone();
                let t = self.history().now();
                let leader_fault = match it % 4 {
                    0 => {
                        self.cluster.net.isolate(leader);
                        self.fault(format!(
                            "partition: {name} (leader) cut off from the others"
                        ));
                        true
                    }
                    1 => {
                        for &j in &others {
                            self.cluster.net.drop_one_way(leader, j);
                        }
                        self.fault(format!(
                            "one-way: bytes from {name} (leader) to the others dropped"
                        ));
                        true
                    }
                    2 => {
                        let d = Duration::from_millis(50 + self.rng.u64(..250));
                        for &j in &others {
                            self.cluster.net.delay(leader, j, d);
                        }
                        self.fault(format!(
                            "delay: {d:?} each way on every link of {name} (leader)"
                        ));
                        false
                    }
                    _ => {
                        let followers = self.followers(leader).await;
                        let victim = if followers.is_empty() {
                            others[self.rng.usize(..others.len())]
                        } else {
                            followers[self.rng.usize(..followers.len())]
                        };
                        self.cluster.net.isolate(victim);
                        let vname = self.cluster.node(victim).name.clone();
                        self.fault(format!(
                            "partition: {vname} (follower) cut off from the others"
                        ));
                        false
                    }
                };
                tokio::time::sleep(self.cfg.fault_time).await;
                self.time_next_ack(t, leader_fault).await;
                self.cluster.net.heal();
                self.fault("healed".into());
                self.wait_healthy().await
            }
            Kind::PowerLoss => {
                let t = self.history().now();
                let applied = self.cluster.power_loss_all().map_err(|e| e.to_string())?;
                self.report.power_losses += 1;
                let undone: usize = applied.iter().map(|a| a.writes_undone).sum();
                let cut: u64 = applied.iter().map(|a| a.bytes_cut).sum();
                let names: usize = applied
                    .iter()
                    .map(|a| {
                        a.files_removed
                            + a.dirs_removed
                            + a.renames_undone
                            + a.unlinks_undone
                            + a.rmdirs_undone
                    })
                    .sum();
                self.report.writes_undone += undone;
                self.report.bytes_cut += cut;
                self.report.names_undone += names;
                self.fault(format!(
                    "power loss of every node: {undone} unsynced writes undone ({cut} bytes), {names} names"
                ));
                self.cluster
                    .start_all()
                    .await
                    .map_err(|e| format!("restart after power loss: {e}"))?;
                self.time_next_ack(t, true).await;
                self.wait_healthy().await
            }
            Kind::Corruption => {
                let victim = if self.cfg.replicas == 1 {
                    0
                } else {
                    let leader = self.leader().await?;
                    let f = self.followers(leader).await;
                    if f.is_empty() {
                        return Err("no follower to damage".into());
                    }
                    f[self.rng.usize(..f.len())]
                };
                let name = self.cluster.node(victim).name.clone();
                let t = self.history().now();
                self.cluster.kill(victim).map_err(|e| e.to_string())?;
                let files = corrupt::files(
                    self.cluster.node(victim).store_dir(),
                    self.cfg.corrupt.target,
                );
                let done = corrupt::inject(&mut self.rng, &files, &self.cfg.corrupt)
                    .map_err(|e| format!("inject: {e}"))?;
                for d in &done {
                    self.report.damage.push(format!("{name}: {d}"));
                }
                self.fault(format!(
                    "kill -9 {name}, {} change(s) to its files: {}",
                    done.len(),
                    done.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                for dir in replica::find_stream_dirs(self.cluster.node(victim).store_dir(), STREAM)
                {
                    if let Ok(found) = replica::recovery_findings(&dir) {
                        for f in found {
                            if f.first_seq <= f.last_seq {
                                self.detected.extend(f.first_seq..=f.last_seq);
                            }
                            let line = format!("{name}: {}", f.text);
                            if !self.report.damage_findings.contains(&line) {
                                self.report.damage_findings.push(line);
                            }
                        }
                    }
                }
                self.start(victim).await?;
                self.time_next_ack(t, false).await;
                self.wait_healthy().await
            }
            Kind::Core => unreachable!("core runs in crate::core"),
        }
    }

    /// Heals, restarts, stops the workload, reads and checks every replica.
    async fn finish(mut self) -> Report {
        self.cluster.net.heal();
        for i in 0..self.cluster.len() {
            match self.cluster.node(i).state() {
                NodeState::Paused => {
                    let _ = self.cluster.resume(i);
                }
                NodeState::Down => {
                    if let Err(e) = self.start(i).await {
                        self.report.errors.push(e);
                    }
                }
                NodeState::Running => {}
            }
        }
        if self.wl.is_some() {
            if let Err(e) = self.wait_healthy().await {
                self.report.errors.push(format!("after healing: {e}"));
            }
        }
        let history = match self.wl.take() {
            Some(wl) => Some(wl.stop(self.cfg.workload.ack_timeout).await),
            None => None,
        };
        self.report.failover = Percentiles::of(&self.failovers);
        self.report.detected_loss_allowed =
            self.cfg.kind == Kind::Corruption && self.cfg.replicas == 1;
        if let Some(h) = history {
            let logs: Vec<workload::PublisherLog> =
                h.publishers.iter().map(|p| p.lock().clone()).collect();
            self.report.acked = h.acks();
            self.report.publish_failures = logs.iter().map(|l| l.failures).sum();
            self.report.last_publish_errors = logs
                .iter()
                .flat_map(|l| l.errors.iter().rev().take(2).cloned())
                .collect();
            let wcfg = &h.cfg;
            // What clients see, through the API...
            match replica::read_via_api(&self.admin, STREAM, "API").await {
                Ok(mut r) => {
                    r.reported_lost.extend(self.detected.iter().copied());
                    self.report.verdicts.push(checker::check(wcfg, &logs, &r))
                }
                Err(e) => {
                    // A stream the cluster no longer knows lost every acknowledged message.
                    if e.contains("\"err_code\":10059") {
                        let gone = checker::ReplicaContents {
                            source: "API (no stream)".into(),
                            ..Default::default()
                        };
                        self.report
                            .verdicts
                            .push(checker::check(wcfg, &logs, &gone));
                    }
                    self.report
                        .errors
                        .push(format!("read through the API: {e}"))
                }
            }
            // ... and each node's own copy, from its files once it has stopped.
            for i in 0..self.cluster.len() {
                if let Err(e) = self.cluster.stop(i).await {
                    self.report.errors.push(format!("stop: {e}"));
                }
            }
            let mut copies = Vec::new();
            for n in self.cluster.nodes() {
                for dir in replica::find_stream_dirs(n.store_dir(), STREAM) {
                    match replica::read_offline(&dir, &format!("{} store", n.name)) {
                        Ok(mut r) => {
                            r.reported_lost.extend(self.detected.iter().copied());
                            copies.push(r)
                        }
                        Err(e) => self.report.errors.push(format!("{}: {e}", n.name)),
                    }
                }
            }
            if copies.len() != self.cfg.replicas {
                self.report.errors.push(format!(
                    "{} copies of the stream on disk, expected {}",
                    copies.len(),
                    self.cfg.replicas
                ));
                // A copy gone from disk lost every acknowledged message.
                for k in copies.len()..self.cfg.replicas {
                    copies.push(checker::ReplicaContents {
                        source: format!("missing copy {}", k + 1),
                        ..Default::default()
                    });
                }
            }
            for r in &copies {
                self.report.verdicts.push(checker::check(wcfg, &logs, r));
            }
            for r in copies.iter().skip(1) {
                self.report
                    .divergence
                    .extend(checker::compare(&copies[0], r));
            }
        }
        self.report.crashes = self.cluster.crashes();
        self.report.elapsed_s = self.started.elapsed().as_secs_f64();
        if !self.report.passed() || self.cfg.keep {
            self.cluster.keep();
            self.report.kept = Some(self.cluster.dir().display().to_string());
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_caught_up_when_current_or_close_behind_and_heard_from() {
        let up = |v: Value| replica_caught_up(&v, 12);
        assert!(up(
            json!({"name": "n1", "current": true, "active": 5_000_000})
        ));
        assert!(up(
            json!({"name": "n1", "current": false, "lag": 4, "active": 2_000_000})
        ));
        assert!(!up(
            json!({"name": "n1", "current": false, "lag": 13, "active": 2_000_000})
        ));
        assert!(!up(
            json!({"name": "n1", "current": false, "lag": 1, "active": 3_000_000_000u64})
        ));
        assert!(!up(
            json!({"name": "n1", "current": false, "active": 0, "offline": true})
        ));
        assert!(!up(json!({"name": "n1", "current": true, "offline": true})));
        assert!(!up(json!({"name": "n1", "current": false})));
        assert!(!up(json!({"name": "n1", "current": false, "active": 0})));
        assert!(!up(
            json!({"name": "n1", "current": false, "lag": 2, "active": 0})
        ));
    }

    #[test]
    fn only_a_forming_cluster_is_waited_for_at_stream_create() {
        let e = |code: u64| json!({"code": 503, "err_code": code, "description": "x"});
        assert!(create_may_succeed_later(&e(10008)));
        assert!(create_may_succeed_later(&e(10005)));
        assert!(!create_may_succeed_later(&e(10074)));
        assert!(!create_may_succeed_later(&json!({"code": 500})));
    }
}
