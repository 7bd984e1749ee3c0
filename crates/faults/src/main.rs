//! `natrium-faults`: runs a fault scenario against a cluster of natrium processes on loopback
//! and prints its report (`run`); `fsops` is a file-operation interpreter for the power-loss
//! shim's tests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use natrium_faults::corrupt::{CorruptConfig, Target};
use natrium_faults::scenario::{self, Kind, RunConfig};

#[derive(Parser)]
#[command(name = "natrium-faults", about = "Fault harness for Natrium clusters")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario and prints its report; exits 1 if any check failed.
    Run(RunArgs),
    /// Prints a power-loss journal (e.g. a node's `powerloss/last-applied`).
    Journal { file: PathBuf },
    /// Runs file operations read from stdin under `root` (for the power-loss shim's tests).
    #[command(hide = true)]
    Fsops { root: PathBuf },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: Kind,
    /// Faults to inject.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Stream replicas (1 runs on one node).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// The natrium binary (default: $NATRIUM_BIN, or next to this one).
    #[arg(long)]
    natrium: Option<PathBuf>,
    /// Put the cluster's files here (kept); default a temporary directory kept only on failure.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    keep: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Publishes in flight per publisher.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Milliseconds a publisher waits for a PubAck before it sends again (the failover times
    /// include up to one of these: the time a client needs to notice). Stock clients wait 5000
    /// (async-nats, nats-py, nats.go, nats.js); 1000 measures the server's failover more
    /// closely.
    #[arg(long, default_value_t = 1000)]
    ack_timeout_ms: u64,
    /// Milliseconds of publishing between faults.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    /// Milliseconds a pause or partition lasts.
    #[arg(long, default_value_t = 2000)]
    fault_ms: u64,
    /// Seconds an iteration may wait for a PubAck, a restart or a catch-up.
    #[arg(long, default_value_t = 30)]
    iteration_timeout_s: u64,
    /// Bit flips per corruption.
    #[arg(long, default_value_t = 1)]
    flips: usize,
    /// File truncations per corruption.
    #[arg(long, default_value_t = 0)]
    truncations: usize,
    /// Damage every file of the store (Raft logs, metadata), not only message blocks.
    #[arg(long, conflicts_with = "raft_log")]
    all_files: bool,
    /// Damage only the Raft groups' files (log segments, vote, snapshot) of the node.
    #[arg(long)]
    raft_log: bool,
    /// Bytes at the end of each file that corruption leaves alone (default: 1 KiB with one
    /// replica, whose store cannot tell a damaged last record from a torn write; else 0).
    #[arg(long)]
    spare_tail: Option<u64>,
    /// Power-loss runs: every fsync of the nodes takes this many milliseconds longer.
    #[arg(long)]
    slow_sync_ms: Option<u64>,
    /// Stop the whole run after this many seconds (its processes killed, exit 2).
    #[arg(long)]
    max_run_s: Option<u64>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A line per iteration on stderr.
    #[arg(long)]
    progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fsops { root } => match natrium_faults::fsops::main(&root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fsops: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run(a) => run(a),
        Cmd::Journal { file } => match natrium_faults::powerloss::read(&file) {
            Ok(j) => {
                for (at, r) in &j.records {
                    println!("{at:>10} {}", natrium_faults::powerloss::describe(r));
                }
                if j.torn_tail {
                    println!("(torn last record)");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(a: RunArgs) -> ExitCode {
    let Some(binary) = a
        .natrium
        .clone()
        .or_else(natrium_faults::cluster::natrium_binary)
    else {
        eprintln!("natrium-faults: no natrium binary: build it (cargo build -p natrium) or pass --natrium");
        return ExitCode::FAILURE;
    };
    let mut cfg = RunConfig::new(a.scenario, binary);
    cfg.iterations = a.iterations;
    cfg.nodes = a.nodes;
    cfg.replicas = a.replicas;
    cfg.dir = a.dir;
    cfg.keep = a.keep;
    cfg.seed = a.seed;
    cfg.workload.publishers = a.publishers;
    cfg.workload.inflight = a.inflight;
    cfg.workload.ack_timeout = Duration::from_millis(a.ack_timeout_ms);
    cfg.interval = Duration::from_millis(a.interval_ms);
    cfg.fault_time = Duration::from_millis(a.fault_ms);
    cfg.iteration_timeout = Duration::from_secs(a.iteration_timeout_s);
    cfg.corrupt = CorruptConfig {
        target: if a.all_files {
            Target::AllFiles
        } else if a.raft_log {
            Target::RaftLog
        } else {
            Target::MessageBlocks
        },
        flips: a.flips,
        truncations: a.truncations,
        spare_tail: a
            .spare_tail
            .unwrap_or(if a.replicas == 1 { 1024 } else { 0 }),
    };
    cfg.progress = a.progress;
    cfg.slow_sync = a.slow_sync_ms.map(Duration::from_millis);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natrium-faults: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = a.max_run_s.map(Duration::from_secs);
    let report = match rt.block_on(async {
        match limit {
            Some(l) => tokio::time::timeout(l, scenario::run(cfg)).await.ok(),
            None => Some(scenario::run(cfg).await),
        }
    }) {
        Some(r) => r,
        None => {
            eprintln!("natrium-faults: the run took longer than --max-run-s; stopped");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.render());
    if let Some(p) = a.json {
        match serde_json::to_vec_pretty(&report) {
            Ok(b) => {
                if let Err(e) = std::fs::write(&p, b) {
                    eprintln!("natrium-faults: {}: {e}", p.display());
                }
            }
            Err(e) => eprintln!("natrium-faults: json: {e}"),
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
