//! Short runs of the fault harness (crates/faults, docs/FAULTS.md) against the real binary:
//! kill -9, SIGSTOP, simulated power loss and corruption of a JetStream node, and link faults
//! and kills in a routed cluster under core NATS. Each asserts the checker's verdict: every
//! acknowledged message present once, in order, intact, on every copy. One runs at a time (they
//! start processes); the long runs are `natrium-faults run`. `NATRIUM_FAULTS_BIN` runs them
//! against another build of the server (e.g. a branch's).

use std::time::Duration;

use natrium_faults::scenario::{self, Kind, RunConfig};
use parking_lot::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

/// The most one short run may take.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The fault runs take the machine's attention: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(kind: Kind, nodes: usize, replicas: usize, iterations: usize) -> RunConfig {
    let bin = std::env::var_os("NATRIUM_FAULTS_BIN").unwrap_or_else(|| BIN.into());
    let mut c = RunConfig::new(kind, bin);
    c.nodes = nodes;
    c.replicas = replicas;
    c.iterations = iterations;
    c.interval = Duration::from_millis(300);
    c.fault_time = Duration::from_secs(1);
    c.iteration_timeout = Duration::from_secs(30);
    c.workload.publishers = 2;
    c.workload.inflight = 2;
    c.workload.ack_timeout = Duration::from_millis(750);
    c
}

fn run(cfg: RunConfig) -> natrium_faults::report::Report {
    let _one = SERIAL.lock();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Every wait inside a run is bounded; this bounds the whole (dropping the run kills its
    // processes).
    let report = rt
        .block_on(async { tokio::time::timeout(RUN_LIMIT, scenario::run(cfg)).await })
        .unwrap_or_else(|_| panic!("the fault run took longer than {RUN_LIMIT:?}"));
    eprintln!("{}", report.render());
    report
}

/// The report passed and the run did what it says (faults injected, messages acknowledged
/// before and after them, every copy read).
fn assert_passed(r: &natrium_faults::report::Report, iterations: usize, copies: usize) {
    assert!(r.passed(), "{}", r.render());
    assert_eq!(r.iterations, iterations, "{}", r.render());
    assert!(r.faults_total >= iterations);
    assert_eq!(r.verdicts.len(), copies + 1, "API plus each copy on disk");
    for v in &r.verdicts {
        assert_eq!(v.acked, r.acked, "{}", r.render());
        assert!(v.acked > 50, "{}", r.render());
    }
}

#[test]
fn r1_kill_9_loop_loses_and_duplicates_no_acknowledged_message() {
    // Before the de-dup window was rebuilt at restart, client retries of messages whose PubAck
    // the kill swallowed were stored twice.
    let r = run(config(Kind::LeaderKill, 1, 1, 4));
    assert_passed(&r, 4, 1);
    assert_eq!(r.failover.as_ref().map(|f| f.count), Some(4));
}

#[test]
fn r1_power_loss_loop_keeps_every_acknowledged_message() {
    // Before the stream's directories were created durably, the first power loss took the
    // whole stream with it (their entries in unsynced parent directories).
    let r = run(config(Kind::PowerLoss, 1, 1, 4));
    assert_passed(&r, 4, 1);
    assert_eq!(r.power_losses, 4);
}

#[test]
fn r1_corruption_is_detected_and_never_served() {
    let mut c = config(Kind::Corruption, 1, 1, 3);
    c.corrupt.flips = 3;
    c.corrupt.spare_tail = 1024;
    let r = run(c);
    assert!(r.detected_loss_allowed);
    assert_passed(&r, 3, 1);
    assert_eq!(r.damage.len(), 9);
    assert!(!r.damage_findings.is_empty(), "{}", r.render());
    for v in &r.verdicts {
        assert_eq!(v.corrupted, 0);
        assert_eq!(v.lost, v.lost_detected);
    }
}

#[test]
fn r1_a_cut_last_block_is_reported_and_its_sequences_are_not_given_again() {
    // The last block cut at rest while the node was down (after a kill -9, so the index still
    // held the length of the previous open): before the store kept a high-water mark, the cut
    // looked like a torn write, the acknowledged messages vanished unreported and new
    // messages took their sequences (reused > 0).
    let mut c = config(Kind::Corruption, 1, 1, 3);
    c.corrupt.flips = 0;
    c.corrupt.truncations = 1;
    c.corrupt.spare_tail = 0;
    let r = run(c);
    assert!(r.detected_loss_allowed);
    assert_passed(&r, 3, 1);
    for v in &r.verdicts {
        assert_eq!(v.seq_reused, 0, "{}", r.render());
        assert_eq!(v.lost, v.lost_detected, "{}", r.render());
        assert_eq!(v.corrupted, 0);
    }
}

#[test]
fn r1_pauses_lose_nothing() {
    let r = run(config(Kind::Pause, 1, 1, 2));
    assert_passed(&r, 2, 1);
}

#[test]
fn core_nats_across_routes_survives_link_faults_and_kills() {
    // One of each: a cut pair, an isolated node, a one-way drop, a delay, a kill -9.
    let mut c = config(Kind::Core, 3, 0, 5);
    c.iteration_timeout = Duration::from_secs(40);
    let r = run(c);
    assert!(r.passed(), "{}", r.render());
    assert_eq!(r.iterations, 5);
    let core = r.core.as_ref().expect("core verdict");
    assert!(core.delivered > 1000, "{}", r.render());
}

/// Whether the run stopped because this build refuses replicated streams (10074), before any
/// fault: then that refusal is all it reports.
fn refused_replicas(r: &natrium_faults::report::Report) -> bool {
    let refused = r
        .errors
        .iter()
        .any(|e| e.contains("stream create refused") && e.contains("10074"));
    if refused {
        assert_eq!(r.errors.len(), 1, "{}", r.render());
        assert_eq!(r.iterations, 0);
        assert_eq!(r.faults_total, 0);
        assert!(r.verdicts.is_empty());
        // A failed run keeps its files for a look; this one has nothing to show.
        if let Some(dir) = &r.kept {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    refused
}

#[test]
fn r3_leader_kill_loop_once_streams_replicate() {
    // Until replicated JetStream lands, the server refuses the R3 stream (10074) and the harness
    // reports exactly that; once it lands, this is the leader kill -9 loop on three processes.
    let r = run(config(Kind::LeaderKill, 3, 3, 3));
    if refused_replicas(&r) {
        return;
    }
    assert_passed(&r, 3, 3);
    assert_eq!(r.failover.as_ref().map(|f| f.count), Some(3));
}

#[test]
fn r3_partitions_once_streams_replicate() {
    // The leader cut off, its outgoing bytes dropped, its links slowed, a follower cut off.
    let mut c = config(Kind::Partition, 3, 3, 4);
    c.iteration_timeout = Duration::from_secs(40);
    // A publisher on each node: those on a node cut off from the leader get no PubAck until
    // the cut heals (as with any server: a client keeps its connection), the others must.
    c.workload.publishers = 3;
    let r = run(c);
    if refused_replicas(&r) {
        return;
    }
    assert_passed(&r, 4, 3);
    // Every fault must leave the stream available, the 214 ms of delay each way on the
    // leader's links included: openraft 0.9 gives an AppendEntries its heartbeat interval as
    // deadline, and with a 150 ms heartbeat nothing committed until the delay healed (no
    // PubAck for 40 s). The deadline is now `GroupConfig::append_timeout` (1 s).
    assert_eq!(r.unavailable, 0, "{}", r.render());
    assert!(
        !r.faults.iter().any(|f| f.contains("no PubAck")),
        "{}",
        r.render()
    );
}

#[test]
fn r3_power_loss_of_every_node_keeps_the_meta_group_and_the_stream() {
    // Before the cluster's directories (`jetstream-cluster`, `meta`, the replica's directory,
    // each group's `raft/log`) were created with their parents synced, the first power loss of
    // every node took the meta group and the stream (every acknowledged message) with them.
    let r = run(config(Kind::PowerLoss, 3, 3, 3));
    assert_passed(&r, 3, 3);
    assert_eq!(r.power_losses, 3);
}

#[test]
fn r3_a_node_back_with_damaged_raft_logs_is_repaired_and_nothing_is_lost() {
    // Bits flipped and files cut in one node's Raft files (the stream's group and the meta
    // group: segments, vote, metadata). Before openraft's `loosen-follower-log-revert` was
    // enabled, the leader panicked when the damaged follower answered with a log shorter than
    // it had acknowledged, and the stream took no publish again.
    let mut c = config(Kind::Corruption, 3, 3, 3);
    c.corrupt.target = natrium_faults::corrupt::Target::RaftLog;
    c.corrupt.flips = 2;
    c.corrupt.truncations = 1;
    let r = run(c);
    assert_passed(&r, 3, 3);
    assert!(!r.damage.is_empty(), "{}", r.render());
    assert!(r.crashes.is_empty(), "{}", r.render());
    for v in &r.verdicts {
        assert_eq!(v.lost, 0, "{}", r.render());
    }
}
