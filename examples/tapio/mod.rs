//! Tapio (seed 002): Kubernetes, systemd and eBPF collectors publish events into
//! `tapio.events.>` with asynchronous acknowledgements; the correlation engine and the SIEM
//! exporter read durable consumers; each service has its own user; an outage of the engine is
//! caught up, and a second engine version replays the whole history (the seed's A/B testing).

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream, Context as Js};
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::common::{logs, poll, pull, say, wait_until, Checks, Conn, Natrium};

/// The server configuration this example runs on (also `natrium -c` for `--url`).
pub const CONFIG: &str = include_str!("natrium.conf");

const SYSTEM: &str = "tapio";

pub const EVENTS: &str = "TAPIO_EVENTS";
pub const CORRELATIONS: &str = "TAPIO_CORRELATIONS";
pub const ENGINE: &str = "correlation";
pub const ENGINE_V2: &str = "correlation-v2";
pub const SIEM: &str = "siem-export";

/// How long an event handed to an engine may go unacknowledged before it is delivered again.
pub const ACK_WAIT: Duration = Duration::from_secs(5);
/// PubAcks a collector waits for at most at once.
const IN_FLIGHT: usize = 256;

/// A collector: its name, how many events it sends in each round, and the subject builder
/// of seed 002 (`buildSubject`).
struct Collector {
    source: &'static str,
    noise: [usize; 2],
}

const COLLECTORS: [Collector; 3] = [
    Collector {
        source: "k8s-collector",
        noise: [300, 100],
    },
    Collector {
        source: "systemd-collector",
        noise: [100, 50],
    },
    Collector {
        source: "ebpf-collector",
        noise: [1_600, 350],
    },
];

/// Incidents (one event from each collector, correlated into a cascading failure) per round;
/// the third round is the one through a node's loss, on a cluster.
const INCIDENTS: [std::ops::Range<u32>; 3] = [0..5, 5..7, 7..9];

impl Collector {
    /// The subject and event for `n`-th noise event, or for incident `incident`.
    fn event(&self, n: usize, incident: Option<u32>) -> (String, Value) {
        let (subject, kind, severity) = match (self.source, incident) {
            ("k8s-collector", None) => ("tapio.events.k8s.default.pods.created", "pods", "info"),
            ("k8s-collector", Some(_)) => (
                "tapio.events.k8s.production.services.unhealthy",
                "services",
                "critical",
            ),
            ("systemd-collector", None) => {
                ("tapio.events.systemd.kubelet.started", "kubelet", "info")
            }
            ("systemd-collector", Some(_)) => {
                ("tapio.events.systemd.nginx.failed", "nginx", "critical")
            }
            (_, None) => ("tapio.events.ebpf.network.info", "network", "info"),
            (_, Some(_)) => (
                "tapio.events.ebpf.network.high_latency",
                "network",
                "warning",
            ),
        };
        let event = json!({
            "id": format!("{}-{n}", self.source),
            "source": self.source,
            "type": kind,
            "severity": severity,
            "incident": incident,
        });
        (subject.to_string(), event)
    }
}

/// Runs the scenario against `n`.
pub async fn run(n: &mut Natrium) -> anyhow::Result<Checks> {
    let mut c = Checks::new(SYSTEM);
    let admin = Conn::open(
        n,
        "tapio-admin",
        Some(("tapio-admin", "tapio-admin-secret")),
    )
    .await?;
    let js = jetstream::new(admin.client.clone());
    if !provision(&mut c, n, &js).await? {
        // On a cluster the seed's 3 replicas are not optional: nothing more to show.
        return Ok(c);
    }

    // The engine and the exporter run; the collectors send the first round.
    let exported = Arc::new(Mutex::new(Vec::new()));
    let siem = Siem::start(n, exported.clone()).await?;
    let engine = Engine::start(n, ENGINE, true).await?;
    let first = publish_round(n, 0).await?;
    let sent1: usize =
        COLLECTORS.iter().map(|c| c.noise[0]).sum::<usize>() + 3 * INCIDENTS[0].len();
    check_acks(&mut c, "round 1", &first, sent1, 0);
    engine.wait_processed(sent1).await?;
    wait_exported(&exported, INCIDENTS[0].len()).await?;
    c.eq(
        "correlations found and exported to the SIEM",
        exported.lock().len(),
        INCIDENTS[0].len(),
    );

    // Per-service users: each service keeps to its subjects.
    permissions(&mut c, n).await?;

    // The engine is down while the collectors send the second round; it catches up.
    engine.stop().await;
    let second = publish_round(n, 1).await?;
    let sent2: usize =
        COLLECTORS.iter().map(|c| c.noise[1]).sum::<usize>() + 3 * INCIDENTS[1].len();
    check_acks(&mut c, "round 2", &second, sent2, sent1 as u64);
    let events = js.get_stream(EVENTS).await?;
    let info = events.consumer_info(ENGINE).await?;
    if info.num_ack_pending > 0 {
        say(SYSTEM, format!("{} of them went to the stopped engine's last pull request; they come back after ack_wait ({ACK_WAIT:?})", info.num_ack_pending));
    }
    // Not yet acknowledged by the engine: everything after its ack floor.
    let last = events.get_info().await?.state.last_sequence;
    say(
        SYSTEM,
        format!(
            "consumer {ENGINE} during the outage: num_pending {}, num_ack_pending {}, ack floor {}",
            info.num_pending, info.num_ack_pending, info.ack_floor.stream_sequence
        ),
    );
    c.eq(
        "events waiting for the engine during its outage",
        (last - info.ack_floor.stream_sequence) as usize,
        sent2,
    );
    let engine = Engine::start(n, ENGINE, true).await?;
    engine.wait_processed(sent2).await?;
    let total_incidents = INCIDENTS[0].len() + INCIDENTS[1].len();
    wait_exported(&exported, total_incidents).await?;
    let v1: BTreeSet<String> = exported
        .lock()
        .iter()
        .map(|v: &Value| v["correlation_id"].as_str().unwrap_or_default().to_string())
        .collect();
    c.eq(
        "caught up after the outage: every correlation exported once",
        (exported.lock().len(), v1.len()),
        (total_incidents, total_incidents),
    );

    // A second engine version replays the whole history from its own durable consumer.
    let v2 = Engine::start(n, ENGINE_V2, false).await?;
    let total = sent1 + sent2;
    v2.wait_processed(total).await?;
    let v2_found: BTreeSet<String> = v2.stats.found.lock().iter().cloned().collect();
    say(
        SYSTEM,
        format!(
            "{ENGINE_V2} replayed {} events, found {} correlations",
            v2.stats.processed.load(Ordering::Relaxed),
            v2_found.len()
        ),
    );
    c.eq("replayed history gives the same correlations", v2_found, v1);
    let floor = poll(Duration::from_secs(5), || async {
        let i = events.consumer_info(ENGINE_V2).await?;
        let f = (i.delivered.stream_sequence, i.ack_floor.stream_sequence);
        Ok((f.1 >= total as u64).then_some(f))
    })
    .await?;
    c.eq(
        "replay complete (v2 delivered, acknowledged)",
        floor,
        Some((total as u64, total as u64)),
    );

    // On a cluster: the stream leader's node goes away while the collectors publish.
    let total = if n.is_embedded() && n.is_cluster() {
        total + leader_loss(&mut c, n, &js, &v2, &exported, total).await?
    } else {
        total
    };

    metrics(&mut c, n, total).await?;
    engine.stop().await;
    v2.stop().await;
    siem.stop().await;
    Ok(c)
}

/// Creates (afresh) the event and correlation streams and the services' durable consumers.
/// On a cluster the events stream must get its 3 replicas (false, with a failed check, when
/// refused); a single server refuses them (as nats-server outside a cluster) and the stream
/// keeps one.
async fn provision(c: &mut Checks, n: &Natrium, js: &Js) -> anyhow::Result<bool> {
    for s in [EVENTS, CORRELATIONS] {
        let _ = js.delete_stream(s).await;
    }
    // The seed's limits: 7 days, 10M messages, 10 GB, 1 MB messages, on file, 3 replicas.
    let mut events = stream::Config {
        name: EVENTS.into(),
        subjects: vec!["tapio.events.>".into()],
        max_age: Duration::from_secs(7 * 86_400),
        max_messages: 10_000_000,
        max_bytes: 10 * 1024 * 1024 * 1024,
        max_message_size: 1024 * 1024,
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    };
    match js.create_stream(events.clone()).await {
        Ok(mut s) => {
            let info = s.info().await?;
            let peers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
            say(
                SYSTEM,
                format!(
                    "{EVENTS} created with {} replicas (leader {:?}, {peers} followers)",
                    info.config.num_replicas,
                    info.cluster.as_ref().and_then(|c| c.leader.clone())
                ),
            );
            if n.is_cluster() {
                c.eq(
                    "events stream created with 3 replicas",
                    (info.config.num_replicas, peers),
                    (3, 2),
                );
            }
        }
        Err(e) if n.is_cluster() => {
            c.that(
                "events stream created with 3 replicas",
                false,
                format!("refused: {e}"),
            );
            return Ok(false);
        }
        Err(e) => {
            say(
                SYSTEM,
                format!("{EVENTS} with 3 replicas refused ({e}); this server keeps 1 replica"),
            );
            events.num_replicas = 1;
            js.create_stream(events).await?;
        }
    }
    let correlations = js
        .create_stream(stream::Config {
            name: CORRELATIONS.into(),
            subjects: vec!["tapio.correlations.>".into(), "tapio.alerts.>".into()],
            max_age: Duration::from_secs(7 * 86_400),
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            // The seed's `replicas: 3` is for its JetStream as a whole.
            num_replicas: n.replicas(),
            ..Default::default()
        })
        .await?;
    let events = js.get_stream(EVENTS).await?;
    for name in [ENGINE, ENGINE_V2] {
        events
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: "tapio.events.>".into(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
    }
    correlations
        .create_consumer(consumer::pull::Config {
            durable_name: Some(SIEM.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    say(
        SYSTEM,
        format!(
            "streams {EVENTS} and {CORRELATIONS}; durable consumers {ENGINE}, {ENGINE_V2}, {SIEM}"
        ),
    );
    Ok(true)
}

/// The PubAck sequences each collector got in one round.
struct Round {
    seqs: Vec<u64>,
    elapsed: Duration,
}

/// The three collectors, each on its own connection, publish round `r` concurrently with up to
/// `IN_FLIGHT` acknowledgements outstanding.
async fn publish_round(n: &Natrium, r: usize) -> anyhow::Result<Round> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, col) in COLLECTORS.iter().enumerate() {
        let conn = Conn::open(
            n,
            col.source,
            Some(("tapio-collectors", "collectors-secret")),
        )
        .await?;
        let incidents = INCIDENTS[r].clone();
        tasks.push(tokio::spawn(async move {
            let js = jetstream::new(conn.client.clone());
            let count = col.noise[r];
            let every = count / incidents.len().max(1);
            let mut inflight = FuturesUnordered::new();
            let mut seqs = Vec::new();
            let mut incident = incidents.clone();
            for k in 0..count + incidents.len() {
                // Incident events are spread through the noise, each collector at its own place.
                let at_incident = k % (every + 1) == (i * 7) % (every + 1);
                let inc = if at_incident { incident.next() } else { None };
                let (subject, event) = col.event(k, inc);
                let ack = js.publish(subject, event.to_string().into()).await?;
                inflight.push(ack.into_future());
                if inflight.len() >= IN_FLIGHT {
                    if let Some(a) = inflight.next().await {
                        seqs.push(a?.sequence);
                    }
                }
            }
            while let Some(a) = inflight.next().await {
                seqs.push(a?.sequence);
            }
            anyhow::ensure!(
                incident.next().is_none(),
                "{} left incidents unsent",
                col.source
            );
            Ok::<_, anyhow::Error>(seqs)
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await??);
    }
    Ok(Round {
        seqs,
        elapsed: start.elapsed(),
    })
}

/// Every event acknowledged once, with the stream sequences that follow `after`.
fn check_acks(c: &mut Checks, what: &str, r: &Round, sent: usize, after: u64) {
    let distinct: BTreeSet<u64> = r.seqs.iter().copied().collect();
    let contiguous = distinct.iter().copied().eq(after + 1..=after + sent as u64);
    say(
        SYSTEM,
        format!(
            "{what}: {} events acknowledged in {:?} ({:.0} events/s with async acks)",
            r.seqs.len(),
            r.elapsed,
            r.seqs.len() as f64 / r.elapsed.as_secs_f64()
        ),
    );
    c.that(
        &format!("{what}: every event acknowledged once, in sequence"),
        r.seqs.len() == sent && distinct.len() == sent && contiguous,
        format!(
            "{} acks, {} distinct, expected {sent} after {after}",
            r.seqs.len(),
            distinct.len()
        ),
    );
}

/// Correlation counts of one engine instance.
#[derive(Default)]
struct EngineStats {
    processed: AtomicUsize,
    found: Mutex<Vec<String>>,
}

/// The correlation engine: pulls its durable consumer, joins each incident's three events,
/// publishes a correlation (de-duplicated by `Nats-Msg-Id`) when `publish`, acknowledges.
struct Engine {
    conn: Conn,
    stats: Arc<EngineStats>,
    task: JoinHandle<()>,
}

impl Engine {
    async fn start(n: &Natrium, durable: &'static str, publish: bool) -> anyhow::Result<Engine> {
        let conn = Conn::open(
            n,
            durable,
            Some(("tapio-correlation", "correlation-secret")),
        )
        .await?;
        let js = jetstream::new(conn.client.clone());
        let consumer: consumer::PullConsumer = js
            .get_stream(EVENTS)
            .await?
            .get_consumer(durable)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut messages = pull::messages(n, &consumer).await?;
        let stats = Arc::new(EngineStats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let mut open: std::collections::HashMap<u64, BTreeSet<String>> = Default::default();
            while let Some(m) = pull::next(durable, &mut messages).await {
                let ev: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                if let Some(id) = ev["incident"].as_u64() {
                    let seen = open.entry(id).or_default();
                    seen.insert(ev["source"].as_str().unwrap_or_default().to_string());
                    if seen.len() == COLLECTORS.len() {
                        let cid = format!("incident-{id}");
                        if publish {
                            let body = json!({
                                "correlation_id": cid,
                                "type": "cascading_failure",
                                "confidence": "high",
                                "namespace": "production",
                                "root_cause": "services unhealthy, nginx failed, network latency",
                            });
                            let mut h = HeaderMap::new();
                            h.insert("Nats-Msg-Id", cid.as_str());
                            let acked: Result<(), String> = match js
                                .publish_with_headers(
                                    "tapio.correlations.high.cascading_failure",
                                    h,
                                    body.to_string().into(),
                                )
                                .await
                            {
                                Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
                                Err(e) => Err(e.to_string()),
                            };
                            if let Err(e) = acked {
                                eprintln!("[{durable}] correlation not stored: {e}");
                                // Not acknowledged: leave the event for redelivery.
                                continue;
                            }
                        }
                        st.found.lock().push(cid);
                    }
                }
                if m.ack().await.is_ok() {
                    st.processed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Engine { conn, stats, task })
    }

    async fn wait_processed(&self, count: usize) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(20), || {
            (self.stats.processed.load(Ordering::Relaxed) >= count).then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "{}: processed {} of {count}",
                self.conn.name,
                self.stats.processed.load(Ordering::Relaxed)
            )
        })
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = self.conn.client.drain().await;
    }
}

/// The SIEM exporter: pulls its durable consumer of correlations and alerts and exports each
/// (here into `exported`).
struct Siem {
    conn: Conn,
    task: JoinHandle<()>,
}

impl Siem {
    async fn start(n: &Natrium, exported: Arc<Mutex<Vec<Value>>>) -> anyhow::Result<Siem> {
        let conn = Conn::open(n, SIEM, Some(("tapio-consumers", "consumers-secret"))).await?;
        let js = jetstream::new(conn.client.clone());
        let consumer: consumer::PullConsumer = js
            .get_stream(CORRELATIONS)
            .await?
            .get_consumer(SIEM)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut messages = pull::messages(n, &consumer).await?;
        let task = tokio::spawn(async move {
            while let Some(m) = pull::next(SIEM, &mut messages).await {
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                exported.lock().push(v);
                let _ = m.ack().await;
            }
        });
        Ok(Siem { conn, task })
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = self.conn.client.drain().await;
    }
}

async fn wait_exported(exported: &Mutex<Vec<Value>>, count: usize) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(10), || {
        (exported.lock().len() >= count).then_some(())
    })
    .await
    .with_context(|| format!("exported {} of {count}", exported.lock().len()))
}

/// A collector may not publish correlations; the SIEM exporter may not read raw events.
async fn permissions(c: &mut Checks, n: &Natrium) -> anyhow::Result<()> {
    let violations = || async {
        Ok::<_, anyhow::Error>(match n.monitor() {
            // Each server counts its own clients' violations: summed over a cluster.
            Some(_) => n
                .metric_sum(
                    "natrium_account_permission_violations_total",
                    &[("account", "$G")],
                )
                .await?
                .unwrap_or(0.0),
            None => 0.0,
        })
    };
    let v0 = violations().await?;
    let collector = Conn::open(
        n,
        "rogue collector",
        Some(("tapio-collectors", "collectors-secret")),
    )
    .await?;
    collector
        .client
        .publish("tapio.correlations.high.fake", "{}".into())
        .await?;
    collector.client.flush().await?;
    let e1 = collector.wait_server_error("Publish to").await?;
    let siem = Conn::open(
        n,
        "curious siem",
        Some(("tapio-consumers", "consumers-secret")),
    )
    .await?;
    let _sub = siem.client.subscribe("tapio.events.>").await?;
    siem.client.flush().await?;
    let e2 = siem.wait_server_error("Subscription to").await?;
    say(SYSTEM, format!("refused: {e1:?}; {e2:?}"));
    c.eq(
        "per-service permissions refuse other services' subjects",
        (e1, e2),
        (
            "Permissions Violation for Publish to \"tapio.correlations.high.fake\"".to_string(),
            "Permissions Violation for Subscription to \"tapio.events.>\"".to_string(),
        ),
    );
    if n.monitor().is_some() {
        let d = poll(Duration::from_secs(5), || async {
            let d = violations().await? - v0;
            Ok((d >= 2.0).then_some(d))
        })
        .await?
        .unwrap_or_default();
        c.eq("violations counted in /metrics", d, 2.0);
    }
    if n.is_embedded() {
        let lines = logs::matching(&["Permissions Violation", "tapio.correlations.high.fake"]);
        c.that(
            "violation in the server log",
            !lines.is_empty(),
            lines.join(" | "),
        );
    }
    Ok(())
}

/// The stream and the consumers' lag as /metrics reports them (the Grafana dashboard's panels).
async fn metrics(c: &mut Checks, n: &Natrium, total: usize) -> anyhow::Result<()> {
    if n.monitor().is_none() {
        return Ok(());
    }
    // A replicated stream's consumers run on its leader: its node reports them.
    let admin = Conn::open(
        n,
        "tapio-admin",
        Some(("tapio-admin", "tapio-admin-secret")),
    )
    .await?;
    let node = n
        .stream_node(&jetstream::new(admin.client.clone()), EVENTS)
        .await?;
    let stored = n
        .metric_on(
            node,
            "natrium_jetstream_stream_messages",
            &[("stream", EVENTS)],
        )
        .await?;
    let unacked = poll(Duration::from_secs(5), || async {
        let l = n
            .metric_on(
                node,
                "natrium_jetstream_consumer_num_ack_pending",
                &[("stream", EVENTS), ("consumer", ENGINE)],
            )
            .await?;
        Ok((l == Some(0.0)).then_some(l))
    })
    .await?
    .flatten();
    let lag = n
        .metric_on(
            node,
            "natrium_jetstream_consumer_num_pending",
            &[("stream", EVENTS), ("consumer", ENGINE)],
        )
        .await?;
    say(
        SYSTEM,
        format!("/metrics: {EVENTS} messages {stored:?}, {ENGINE} num_pending {lag:?}, num_ack_pending {unacked:?}"),
    );
    c.eq(
        "/metrics: stream messages, engine's unacknowledged events",
        (stored, unacked),
        (Some(total as f64), Some(0.0)),
    );
    Ok(())
}

/// Events each collector publishes once it has seen the node go, in the round through the loss.
const AFTER_LOSS: usize = 100;
/// Events acknowledged in that round before the node is stopped.
const BEFORE_LOSS: usize = 200;
/// How long a collector keeps retrying an event that got no PubAck.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// The node holding the events stream's leader goes away while the collectors publish (on an
/// embedded cluster): every event acknowledged is in the stream once (the collectors retry
/// what got no PubAck, with `Nats-Msg-Id` so a retry of a stored event is a duplicate), both
/// engine versions correlate the round's incidents, the stream has a new leader, and the node
/// that comes back is current again. Returns the events the round stored.
async fn leader_loss(
    c: &mut Checks,
    n: &mut Natrium,
    js: &Js,
    v2: &Engine,
    exported: &Mutex<Vec<Value>>,
    before: usize,
) -> anyhow::Result<usize> {
    let info = js.get_stream(EVENTS).await?.get_info().await?;
    let old = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("the events stream has no leader")?;
    let node = n
        .node_index(&old)
        .with_context(|| format!("no node named {old}"))?;
    say(
        SYSTEM,
        format!("{EVENTS}: leader {old}; the collectors publish round 3 and {old} goes away"),
    );
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, col) in COLLECTORS.iter().enumerate() {
        let conn = Conn::open(
            n,
            col.source,
            Some(("tapio-collectors", "collectors-secret")),
        )
        .await?;
        tasks.push(tokio::spawn(collect_through_loss(
            conn,
            i,
            col,
            lost.clone(),
            acked.clone(),
            retries.clone(),
        )));
    }
    wait_until(Duration::from_secs(20), || {
        (acked.load(Ordering::Relaxed) >= BEFORE_LOSS).then_some(())
    })
    .await
    .context("round 3: the collectors got no PubAcks")?;
    let at = Instant::now();
    n.stop_node(node).await?;
    lost.store(true, Ordering::Relaxed);
    say(
        SYSTEM,
        format!(
            "{old} stopped after {} PubAcks of round 3",
            acked.load(Ordering::Relaxed)
        ),
    );
    let new = poll(Duration::from_secs(20), || async {
        let Ok(s) = js.get_stream(EVENTS).await else {
            return Ok(None);
        };
        let Ok(i) = s.get_info().await else {
            return Ok(None);
        };
        Ok(i.cluster
            .and_then(|c| c.leader)
            .filter(|l| *l != old)
            .map(|l| (l, i.config.num_replicas)))
    })
    .await?;
    say(
        SYSTEM,
        format!("{EVENTS}: new leader {new:?} after {:?}", at.elapsed()),
    );
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await??);
    }
    say(
        SYSTEM,
        format!(
            "round 3: {} events acknowledged, {} publishes retried",
            sent.len(),
            retries.load(Ordering::Relaxed)
        ),
    );
    n.start_node(node).await?;
    let current = poll(Duration::from_secs(20), || async {
        let Ok(s) = js.get_stream(EVENTS).await else {
            return Ok(None);
        };
        let Ok(i) = s.get_info().await else {
            return Ok(None);
        };
        Ok(i.cluster.and_then(|c| {
            c.replicas
                .iter()
                .find(|p| p.name == old && p.current)
                .map(|_| (c.leader, c.replicas.len()))
        }))
    })
    .await?;
    say(
        SYSTEM,
        format!("{old} back: {EVENTS} leader and followers {current:?}"),
    );
    c.that(
        "stream info: 3 replicas, a new leader, the returning node current again",
        matches!(&new, Some((l, 3)) if *l != old)
            && matches!(&current, Some((Some(l), 2)) if *l != old),
        format!("old leader {old}, new (leader, replicas) {new:?}, after the return (leader, followers) {current:?}"),
    );

    // Every acknowledged event once in the stream, nothing else.
    let stored = read_events(js, before as u64 + 1, sent.len()).await?;
    let mut count: std::collections::HashMap<&str, usize> = Default::default();
    for id in &stored {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let missing = sent
        .iter()
        .filter(|id| !count.contains_key(id.as_str()))
        .count();
    let twice = count.values().filter(|k| **k > 1).count();
    let distinct: BTreeSet<&String> = sent.iter().collect();
    c.that(
        "leader loss: every acknowledged event in the stream once",
        distinct.len() == sent.len() && stored.len() == sent.len() && missing == 0 && twice == 0,
        format!(
            "{} acknowledged ({} distinct), {} stored, {missing} missing, {twice} stored twice",
            sent.len(),
            distinct.len(),
            stored.len()
        ),
    );

    // Both engine versions get through the loss and correlate the round's incidents.
    let last = (before + sent.len()) as u64;
    for name in [ENGINE, ENGINE_V2] {
        let floor = poll(Duration::from_secs(30), || async {
            let Ok(s) = js.get_stream(EVENTS).await else {
                return Ok(None);
            };
            let Ok(i) = s.consumer_info(name).await else {
                return Ok(None);
            };
            Ok((i.ack_floor.stream_sequence >= last).then_some(i.ack_floor.stream_sequence))
        })
        .await?;
        c.eq(
            &format!("leader loss: {name} acknowledged every event"),
            floor,
            Some(last),
        );
    }
    let all = INCIDENTS.iter().map(|r| r.len()).sum::<usize>();
    wait_exported(exported, all).await?;
    let v1: BTreeSet<String> = exported
        .lock()
        .iter()
        .map(|v: &Value| v["correlation_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let v2: BTreeSet<String> = v2.stats.found.lock().iter().cloned().collect();
    c.that(
        "leader loss: both engines correlate every incident, each exported once",
        exported.lock().len() == all && v1.len() == all && v2 == v1,
        format!(
            "{} exported, {} distinct, v2 found {} of them",
            exported.lock().len(),
            v1.len(),
            v2.len()
        ),
    );
    Ok(sent.len())
}

/// One collector in the round through the node's loss: publishes with `Nats-Msg-Id` and up to
/// `IN_FLIGHT` PubAcks outstanding, retrying an event that got no PubAck (for up to
/// `RETRY_FOR`), until `AFTER_LOSS` events after it saw the node go. Returns the ids
/// acknowledged.
async fn collect_through_loss(
    conn: Conn,
    i: usize,
    col: &'static Collector,
    lost: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<String>> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(conn.client.clone());
    let mut incidents = INCIDENTS[2].clone();
    let mut inflight = FuturesUnordered::new();
    let mut ids = Vec::new();
    let mut after: Option<usize> = None;
    let mut k = 0;
    loop {
        if after.is_none() && lost.load(Ordering::Relaxed) {
            after = Some(k);
        }
        if after.is_some_and(|a| k >= a + AFTER_LOSS) {
            break;
        }
        anyhow::ensure!(k < 50_000, "{}: the node loss never came", col.source);
        // One incident before the loss, one after it.
        let inc = if k == 20 + 7 * i || after.is_some_and(|a| k == a + 10 + 7 * i) {
            incidents.next()
        } else {
            None
        };
        let (subject, mut event) = col.event(k, inc);
        let id = format!("{}-r3-{k}", col.source);
        event["id"] = json!(id);
        let (js, acked, retries) = (js.clone(), acked.clone(), retries.clone());
        inflight.push(async move {
            let until = Instant::now() + RETRY_FOR;
            let payload = event.to_string();
            loop {
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", id.as_str());
                let r = match js
                    .publish_with_headers(subject.clone(), h, payload.clone().into())
                    .await
                {
                    Ok(f) => f.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        return Ok::<_, anyhow::Error>(id);
                    }
                    Err(_) if Instant::now() < until => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => anyhow::bail!("{id}: no PubAck within {RETRY_FOR:?}: {e}"),
                }
            }
        });
        if inflight.len() >= IN_FLIGHT {
            if let Some(r) = inflight.next().await {
                ids.push(r?);
            }
        }
        k += 1;
    }
    while let Some(r) = inflight.next().await {
        ids.push(r?);
    }
    anyhow::ensure!(
        incidents.next().is_none(),
        "{} left incidents unsent",
        col.source
    );
    let _ = conn.client.drain().await;
    Ok(ids)
}

/// The ids of the `count` events stored from sequence `from` on, read with an ordered consumer.
async fn read_events(js: &Js, from: u64, count: usize) -> anyhow::Result<Vec<String>> {
    let consumer = js
        .get_stream(EVENTS)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut ids = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let m = m?;
        let v: Value = serde_json::from_slice(&m.payload)?;
        ids.push(v["id"].as_str().unwrap_or_default().to_string());
        let pending = m.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
        if pending == 0 && ids.len() >= count {
            break;
        }
    }
    Ok(ids)
}
