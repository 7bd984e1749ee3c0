//! How a replicated stream's group forms and who answers for it: a new R3 stream's group
//! elects its first leader at once (the first peer campaigns when the group is formed, not
//! after an election timeout), also when the whole cluster restarts; publishes committed
//! under a new leader after the old one went away are acknowledged by the new leader.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::replication::{cluster, connect, wait};

/// Creates `n` R3 streams one after the other through `js` and returns each create's time.
async fn create_times(js: &jetstream::Context, prefix: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        js.create_stream(stream::Config {
            name: format!("{prefix}{i}"),
            subjects: vec![format!("{prefix}.{i}.>")],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("created");
        times.push(t.elapsed());
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The figure of docs/REPLICATION.md ("A new group's first election"): 50 R3 stream creates,
/// one at a time, through async-nats on a 3-node cluster, p50 / p99 / max of each create's
/// round trip. A measurement, not a check: run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn measure_r3_stream_create_latency() {
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc.clone());
    let mut times = create_times(&js, "LAT", 50).await;
    times.sort();
    println!(
        "R3 stream create x{}: p50 {:?} p99 {:?} max {:?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().expect("times")
    );
    c.shutdown().await;
}

/// Three `natrium` processes on loopback (n2 and n3 routed to n1), killed with SIGKILL on drop.
struct Procs {
    dir: tempfile::TempDir,
    /// (process, client port) of n1..n3; `None` once killed.
    nodes: Vec<Option<(std::process::Child, u16)>>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (p, _) in self.nodes.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Procs {
    fn start() -> Procs {
        let mut p = Procs {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: Vec::new(),
        };
        let (c1, r1) = p.spawn("n1", &[]);
        p.nodes[0].as_mut().expect("n1").1 = c1;
        p.spawn("n2", &[r1]);
        p.spawn("n3", &[r1]);
        p
    }

    /// Starts server `name` routed to `routes`; returns its client and route ports.
    fn spawn(&mut self, name: &str, routes: &[u16]) -> (u16, u16) {
        let routes: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let conf = self.dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:-1\njetstream {{ store_dir: {:?} }}\ncluster {{ name: c1, listen: 127.0.0.1:-1, routes: [{}] }}\n",
                self.dir.path().join(name),
                routes.join(", ")
            ),
        )
        .expect("config");
        let log = self.dir.path().join(format!("{name}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_natrium"))
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        // Pushed first, so the process is killed if reading its ports fails.
        self.nodes.push(Some((child, 0)));
        let client = read_port(&log, "Listening for client connections on");
        let route = read_port(&log, "Listening for route connections on");
        self.nodes
            .last_mut()
            .and_then(Option::as_mut)
            .expect("node")
            .1 = client;
        (client, route)
    }

    fn client_port(&self, name: &str) -> u16 {
        self.nodes[index(name)].as_ref().expect("running").1
    }

    fn kill(&mut self, name: &str) {
        if let Some((mut p, _)) = self.nodes[index(name)].take() {
            unsafe { libc::kill(p.id() as i32, libc::SIGKILL) };
            let _ = p.wait();
        }
    }
}

fn index(name: &str) -> usize {
    name[1..].parse::<usize>().expect("n<i>") - 1
}

/// The port a server's log names after `what` (waits up to 20 s for the line).
fn read_port(log: &std::path::Path, what: &str) -> u16 {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().rev().find(|l| l.contains(what)) {
            return line
                .rsplit(':')
                .next()
                .and_then(|p| p.trim().parse().ok())
                .expect("port");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {what:?} in {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stream leader killed (SIGKILL) while a client publishes asynchronously through another
/// server. Entries the old leader appended on its followers and never learned committed are
/// committed by the new leader, which answers their PubAcks when it applies them (as
/// nats-server's leader answers the reply a stored message's entry carries); before, those
/// messages were stored and never acknowledged. Every PubAck names the sequence holding that
/// very message. The client waits up to 30 s for a PubAck and the check gives up after 20 s:
/// what it counts are answers, not timeouts.
///
/// PubAcks of messages published before the kill that arrive more than 0.5 s after it come
/// from the new leader (the old one is dead, and no leader is elected before an election
/// timeout, 1.1 s): before, there were none. A round may have nothing to inherit (every entry
/// on the followers committed by the old leader; those it committed and died before answering
/// are answered by nobody, as with nats-server): it is run again, at most 3 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_when_the_leader_dies_are_acknowledged_by_the_next() {
    for round in 1..=3 {
        let r = leader_killed_round().await;
        println!(
            "round {round}: {} held, {} of them not acknowledged, {} acknowledged by the new leader",
            r.held, r.unanswered, r.answered_since
        );
        if r.answered_since > 0 {
            return;
        }
    }
    panic!("in 3 rounds the new leader answered no message it took over");
}

struct Round {
    held: usize,
    /// Held messages never acknowledged (within the check's 20 s).
    unanswered: usize,
    /// Messages published before the kill, acknowledged more than 0.5 s after it.
    answered_since: usize,
}

async fn leader_killed_round() -> Round {
    use std::sync::Arc;

    const N: usize = 1500;
    let mut procs = Procs::start();
    let url = |p: u16| format!("nats://127.0.0.1:{p}");
    let admin = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(url(procs.client_port("n1")))
        .await
        .expect("connect");
    // The meta group forms first: the create is retried (bounded).
    let started = Instant::now();
    let info = loop {
        // No answer (the meta group still forming on a loaded machine) is retried too.
        let body = serde_json::json!({"name": "INFL", "subjects": ["infl.>"], "num_replicas": 3});
        let v: serde_json::Value = match admin
            .request("$JS.API.STREAM.CREATE.INFL", body.to_string().into())
            .await
        {
            Ok(m) => serde_json::from_slice(&m.payload).expect("api json"),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        if v.get("error").is_none() {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let leader = info["cluster"]["leader"]
        .as_str()
        .expect("leader")
        .to_string();
    let other = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower");
    let nc = async_nats::connect(url(procs.client_port(other)))
        .await
        .expect("connect");
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .build(nc.clone());
    // Message i's outcome: its PubAck's sequence, or the error.
    let outcomes: Arc<parking_lot::Mutex<HashMap<usize, Result<u64, String>>>> = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (js, outcomes, sent) = (js.clone(), outcomes.clone(), sent.clone());
        tokio::spawn(async move {
            let mut waiting = tokio::task::JoinSet::new();
            for i in 0..N {
                let outcomes = outcomes.clone();
                let published = js.publish("infl.x", format!("{i}").into()).await;
                sent.store(i + 1, std::sync::atomic::Ordering::Release);
                match published {
                    Ok(ack) => {
                        waiting.spawn(async move {
                            let r = ack
                                .await
                                .map(|a| {
                                    assert_eq!(a.stream, "INFL");
                                    a.sequence
                                })
                                .map_err(|e| e.to_string());
                            outcomes.lock().insert(i, r);
                        });
                    }
                    Err(e) => {
                        outcomes.lock().insert(i, Err(e.to_string()));
                    }
                }
            }
            waiting
        })
    };
    // Mid-stream: the leader dies with publishes in flight.
    wait(Duration::from_secs(30), "the first PubAcks", || {
        outcomes.lock().values().filter(|r| r.is_ok()).count() >= 200
    })
    .await;
    procs.kill(&leader);
    let sent_before = sent.load(std::sync::atomic::Ordering::Acquire);
    // PubAcks the dead leader sent are in by now; no new leader is elected this early.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_early: std::collections::HashSet<usize> = outcomes
        .lock()
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    let mut waiting = publisher.await.expect("publisher");
    // The stream's messages, read through the new leader (its info answers once it serves).
    let reader = jetstream::new(nc.clone());
    let mut held: HashMap<u64, usize> = HashMap::new();
    let started = Instant::now();
    loop {
        if let Ok(mut s) = reader.get_stream("INFL").await {
            if let Ok(info) = s.info().await {
                let last = info.state.last_sequence;
                let next = held.keys().max().map_or(1, |m| m + 1);
                for seq in next..=last {
                    let Ok(m) = s.get_raw_message(seq).await else {
                        break;
                    };
                    let i: usize = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|p| p.parse().ok())
                        .expect("payload is the message's index");
                    held.insert(seq, i);
                }
                let complete = !held.is_empty() && held.len() as u64 == last;
                let outcomes = outcomes.lock();
                let all_answered = held
                    .values()
                    .all(|i| matches!(outcomes.get(i), Some(Ok(_))));
                if complete && all_answered {
                    break;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcomes = outcomes.lock().clone();
    waiting.abort_all();
    // Each PubAck names the sequence holding that message; each message is held once.
    for (i, r) in &outcomes {
        if let Ok(seq) = r {
            assert_eq!(held.get(seq), Some(i), "PubAck of message {i}: seq {seq}");
        }
    }
    let mut seen = std::collections::HashSet::new();
    for i in held.values() {
        assert!(seen.insert(*i), "message {i} held twice");
    }
    assert!(held.len() >= 200, "held {}", held.len());
    let answered_since = (0..sent_before)
        .filter(|i| !acked_early.contains(i) && matches!(outcomes.get(i), Some(Ok(_))))
        .count();
    let unanswered = held
        .values()
        .filter(|i| !matches!(outcomes.get(i), Some(Ok(_))))
        .count();
    drop(procs);
    Round {
        held: held.len(),
        unanswered,
        answered_since,
    }
}
