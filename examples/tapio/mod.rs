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

/// Incidents (one event from each collector, correlated into a cascading failure) per round.
const INCIDENTS: [std::ops::Range<u32>; 2] = [0..5, 5..7];

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
    provision(&js).await?;

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

    metrics(&mut c, n, total).await?;
    engine.stop().await;
    v2.stop().await;
    siem.stop().await;
    Ok(c)
}

/// Creates (afresh) the event and correlation streams and the services' durable consumers.
async fn provision(js: &Js) -> anyhow::Result<()> {
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
        Ok(_) => say(SYSTEM, format!("{EVENTS} created with 3 replicas")),
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
    Ok(())
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
        let mut messages = pull::messages(&consumer).await?;
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
        let mut messages = pull::messages(&consumer).await?;
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
            Some(_) => n
                .metric(
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
    let stored = n
        .metric("natrium_jetstream_stream_messages", &[("stream", EVENTS)])
        .await?;
    let unacked = poll(Duration::from_secs(5), || async {
        let l = n
            .metric(
                "natrium_jetstream_consumer_num_ack_pending",
                &[("stream", EVENTS), ("consumer", ENGINE)],
            )
            .await?;
        Ok((l == Some(0.0)).then_some(l))
    })
    .await?
    .flatten();
    let lag = n
        .metric(
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
