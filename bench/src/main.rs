//! `natrium-bench`: a load generator for NATS servers, modelled on `nats bench`, speaking the NATS
//! text protocol over raw tokio sockets so that the generator, not a client library, decides how
//! hard the server is pushed.
//!
//! Modes: `pub` (throughput, optional fan-out or queue subscribers), `req` (request-reply
//! latency), `conns` (idle connections and subscriptions, server RSS), `connect-rate`, `js-pub`
//! (JetStream publishing with PubAcks), `js-consume` (pull, push and ordered consumers) and `js-info` (a stream's state, waiting for a restarted
//! server), and `pump` / `sink` (the loopback ceiling with no server at all). Each prints one line, or one JSON
//! object with `--json`. Exit status: 0 complete, 2 ran but incomplete (lost messages, errors),
//! 1 could not run.

mod conn;
mod conns;
mod js;
mod jsconsume;
mod propagate;
mod proto;
mod pubsub;
mod pump;
mod report;
mod reqrep;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "natrium-bench",
    version,
    about = "Load generator for NATS servers"
)]
struct Cli {
    /// Print one JSON object instead of a line of text.
    #[arg(long, global = true)]
    json: bool,
    /// Runtime worker threads; default: the CPUs this process may run on (1 gives a
    /// single-threaded runtime).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Publish throughput, optionally with subscribers (fan-out or one queue group).
    Pub(PubArgs),
    /// Request-reply latency and rate.
    Req(ReqArgs),
    /// Idle connections with subscriptions; server RSS before and after.
    Conns(ConnsArgs),
    /// Open and close connections as fast as possible.
    ConnectRate(ConnectRateArgs),
    /// JetStream: (re)create a stream, publish to it with a reply inbox per message, count
    /// PubAcks; check the stream's message count at the end.
    JsPub(JsPubArgs),
    /// JetStream: fill a stream (or publish while consuming, --pubs) and read it with pull, push
    /// or ordered consumers, ack none or explicit.
    JsConsume(JsConsumeArgs),
    /// JetStream: ask for a stream's state, retrying (connect and request) until it holds
    /// --wait-msgs messages.
    JsInfo(JsInfoArgs),
    /// The loopback ceiling: PUB-sized frames to a sink that discards them.
    Pump(PumpArgs),
    /// The discarding end of `pump`, run as its own process (pinned like a server).
    Sink(SinkArgs),
    /// A cluster: subscribe to --subs subjects on one server, then time until another server
    /// delivers a message to the last of them (every subscription has crossed the cluster).
    Propagate(PropagateArgs),
}

#[derive(Args)]
struct PropagateArgs {
    /// The server the messages are published on.
    #[command(flatten)]
    server: ServerArg,
    /// The server the subscriptions are made on.
    #[arg(long)]
    sub_server: String,
    /// Distinct subjects subscribed to.
    #[arg(long, default_value_t = 100_000)]
    subs: usize,
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Args)]
struct ServerArg {
    /// Server address, host:port or nats://host:port.
    #[arg(short, long, default_value = "127.0.0.1:4222")]
    server: String,
}

impl ServerArg {
    fn addr(&self) -> String {
        self.server
            .strip_prefix("nats://")
            .unwrap_or(&self.server)
            .to_string()
    }
}

#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Messages to publish, across all publishers.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    msgs: u64,
    /// Payload size in bytes (suffix k for KiB).
    #[arg(long, default_value = "128", value_parser = parse_size)]
    size: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Subscribing connections.
    #[arg(long, default_value_t = 0)]
    subs: usize,
    /// Put the subscribers in this queue group (each message reaches one of them).
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, default_value = "bench.pub")]
    subject: String,
    /// Give up (and report what arrived) after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Also report the CPU this process (the server) used during the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connect the subscribers to these servers instead (comma separated, round robin): other
    /// nodes of the publisher's cluster.
    #[arg(long, value_delimiter = ',')]
    sub_servers: Vec<String>,
    /// With --sub-servers: seconds to let the subscribers' interest reach the publisher's server.
    #[arg(long, default_value_t = 0.5)]
    settle: f64,
}

#[derive(Args)]
struct ReqArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Measured requests, across all requesters.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    requests: u64,
    /// Unmeasured requests per requester before the clock starts.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    requesters: usize,
    /// Responders, all in one queue group.
    #[arg(long, default_value_t = 1)]
    responders: usize,
    /// Request (and reply) payload size in bytes (suffix k for KiB).
    #[arg(long, default_value = "128", value_parser = parse_size)]
    size: usize,
    #[arg(long, default_value = "bench.req")]
    subject: String,
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Also report the CPU this process (the server) used during the run.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct ConnsArgs {
    #[command(flatten)]
    server: ServerArg,
    #[arg(long, default_value_t = 1_000)]
    conns: usize,
    /// Subscriptions per connection, each on its own subject.
    #[arg(long, default_value_t = 1)]
    subs_per_conn: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Sample this process's VmRSS before opening and after --settle.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after the last PONG before sampling RSS.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds to keep the connections open after reporting readiness on stderr.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

#[derive(Args)]
struct ConnectRateArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Seconds to keep connecting.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Also report the CPU this process (the server) used during the run.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct JsPubArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Messages to publish, across all publishers.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    msgs: u64,
    /// Payload size in bytes (suffix k for KiB).
    #[arg(long, default_value = "128", value_parser = parse_size)]
    size: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// One publish outstanding per publisher (latency); otherwise --window of them.
    #[arg(long)]
    sync: bool,
    /// Publishes outstanding per publisher (without --sync).
    #[arg(long, default_value_t = 1000, conflicts_with = "sync")]
    window: usize,
    /// Stream to delete (if it exists) and create.
    #[arg(long, default_value = "BENCH")]
    stream: String,
    /// The stream's one subject, published to.
    #[arg(long, default_value = "bench.js")]
    subject: String,
    #[arg(long, default_value = "file", value_parser = ["file", "memory"])]
    storage: String,
    /// Copies of the stream (`num_replicas`; above 1 needs a JetStream cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Stop publishing after this many seconds, even if fewer than -n were sent.
    #[arg(long)]
    duration: Option<f64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Give up when no PubAck arrived for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    stall: f64,
    /// Also report the CPU this process (the server) used during the run.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct JsConsumeArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Messages in the stream; every consumer reads all of them.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    msgs: u64,
    /// Payload size in bytes (suffix k for KiB).
    #[arg(long, default_value = "128", value_parser = parse_size)]
    size: usize,
    #[arg(long, value_enum, default_value_t = jsconsume::Kind::Pull)]
    kind: jsconsume::Kind,
    /// Ack policy: none or explicit (every message acked with +ACK).
    #[arg(long, default_value = "none", value_parser = ["none", "explicit"])]
    ack: String,
    /// Messages per pull request (two requests are kept outstanding).
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Consumers, each reading every message on its own connection.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Publishers running while the consumers read (0: fill the stream first, unmeasured).
    #[arg(long, default_value_t = 0)]
    pubs: usize,
    /// PubAcks outstanding per publisher (with --pubs).
    #[arg(long, default_value_t = 1000)]
    window: usize,
    #[arg(long, default_value = "BENCH")]
    stream: String,
    /// The stream holds <subject>.>; publisher i publishes to <subject>.p<i>.
    #[arg(long, default_value = "bench.js")]
    subject: String,
    #[arg(long, default_value = "file", value_parser = ["file", "memory"])]
    storage: String,
    /// The stream's replicas (`num_replicas`; more than 1 needs a JetStream cluster).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Give up when a consumer received nothing for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    stall: f64,
    /// Also report the CPU this process (the server) used during the run.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct JsInfoArgs {
    #[command(flatten)]
    server: ServerArg,
    #[arg(long, default_value = "BENCH")]
    stream: String,
    /// Keep asking until the stream holds at least this many messages.
    #[arg(long, default_value_t = 0)]
    wait_msgs: u64,
    /// Milliseconds between attempts.
    #[arg(long, default_value_t = 5.0)]
    poll_ms: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

#[derive(Args)]
struct PumpArgs {
    /// Address of a running `natrium-bench sink`; without it a sink runs in this process.
    #[arg(long)]
    sink: Option<String>,
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    msgs: u64,
    #[arg(long, default_value = "128", value_parser = parse_size)]
    size: usize,
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Also report the CPU this process (the sink) used during the run.
    #[arg(long)]
    sink_pid: Option<u32>,
}

#[derive(Args)]
struct SinkArgs {
    #[arg(short, long, default_value = "127.0.0.1:4299")]
    listen: String,
}

/// `128`, `1k` (1024), `16k`, `1m` (MiB).
fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix(['k', 'm']) {
        Some(d) if lower.ends_with('k') => (d, 1024),
        Some(d) => (d, 1024 * 1024),
        None => (lower.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .map(|n| n * unit)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

fn seconds(s: f64) -> Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("bad number of seconds: {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natrium-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            eprintln!("natrium-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<ExitCode> {
    let json = cli.json;
    match &cli.mode {
        Mode::Propagate(a) => {
            let r = propagate::run(
                &a.server.addr(),
                a.sub_server
                    .strip_prefix("nats://")
                    .unwrap_or(&a.sub_server),
                a.subs,
                seconds(a.timeout)?,
            )
            .await?;
            emit(json, &r, &r.human(), r.complete)
        }
        Mode::Pub(a) => {
            let opts = pubsub::PubOpts {
                server: a.server.addr(),
                sub_servers: a
                    .sub_servers
                    .iter()
                    .map(|s| s.strip_prefix("nats://").unwrap_or(s).to_string())
                    .collect(),
                settle: seconds(a.settle)?,
                subject: a.subject.clone(),
                msgs: a.msgs,
                size: a.size,
                pubs: a.pubs,
                subs: a.subs,
                queue: a.queue.clone(),
                timeout: seconds(a.timeout)?,
                server_pid: a.server_pid,
            };
            let r = pubsub::run(&opts).await?;
            emit(json, &r, &r.human(), r.complete)
        }
        Mode::Req(a) => {
            let opts = reqrep::ReqOpts {
                server: a.server.addr(),
                subject: a.subject.clone(),
                requesters: a.requesters,
                responders: a.responders,
                requests: a.requests,
                warmup: a.warmup,
                size: a.size,
                timeout: seconds(a.timeout)?,
                server_pid: a.server_pid,
            };
            let r = reqrep::run(&opts).await?;
            emit(json, &r, &r.human(), r.complete)
        }
        Mode::Conns(a) => {
            let opts = conns::ConnsOpts {
                server: a.server.addr(),
                conns: a.conns,
                subs_per_conn: a.subs_per_conn,
                parallel: a.parallel,
                server_pid: a.server_pid,
                settle: seconds(a.settle)?,
                hold: seconds(a.hold)?,
            };
            let r = conns::run(&opts).await?;
            emit(json, &r, &r.human(), true)
        }
        Mode::ConnectRate(a) => {
            let opts = conns::ConnectRateOpts {
                server: a.server.addr(),
                duration: seconds(a.duration)?,
                parallel: a.parallel,
                server_pid: a.server_pid,
            };
            let r = conns::connect_rate(&opts).await?;
            emit(json, &r, &r.human(), r.failures == 0)
        }
        Mode::JsPub(a) => {
            let opts = js::JsPubOpts {
                server: a.server.addr(),
                stream: a.stream.clone(),
                subject: a.subject.clone(),
                storage: a.storage.clone(),
                replicas: a.replicas,
                msgs: a.msgs,
                size: a.size,
                pubs: a.pubs,
                window: a.window,
                sync: a.sync,
                duration: a.duration.map(seconds).transpose()?,
                timeout: seconds(a.timeout)?,
                stall: seconds(a.stall)?,
                server_pid: a.server_pid,
            };
            let r = js::run(&opts).await?;
            emit(json, &r, &r.human(), r.complete)
        }
        Mode::JsConsume(a) => {
            let opts = jsconsume::JsConsumeOpts {
                server: a.server.addr(),
                stream: a.stream.clone(),
                subject: a.subject.clone(),
                storage: a.storage.clone(),
                replicas: a.replicas,
                msgs: a.msgs,
                size: a.size,
                kind: a.kind,
                ack_explicit: a.ack == "explicit",
                batch: a.batch,
                consumers: a.consumers,
                pubs: a.pubs,
                window: a.window,
                timeout: seconds(a.timeout)?,
                stall: seconds(a.stall)?,
                server_pid: a.server_pid,
            };
            let r = jsconsume::run(&opts).await?;
            emit(json, &r, &r.human(), r.complete)
        }
        Mode::JsInfo(a) => {
            let opts = js::JsInfoOpts {
                server: a.server.addr(),
                stream: a.stream.clone(),
                wait_msgs: a.wait_msgs,
                poll: seconds(a.poll_ms / 1000.0)?,
                timeout: seconds(a.timeout)?,
            };
            let r = js::info(&opts).await?;
            emit(json, &r, &r.human(), true)
        }
        Mode::Pump(a) => {
            let opts = pump::PumpOpts {
                sink: a.sink.clone(),
                msgs: a.msgs,
                size: a.size,
                timeout: seconds(a.timeout)?,
                sink_pid: a.sink_pid,
            };
            let r = pump::pump(&opts).await?;
            emit(json, &r, &r.human(), true)
        }
        Mode::Sink(a) => {
            pump::sink(&a.listen).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn emit<R: Serialize>(json: bool, report: &R, human: &str, complete: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{human}");
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("16"), Ok(16));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("16K"), Ok(16 * 1024));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("x").is_err());
    }
}
