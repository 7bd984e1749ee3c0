//! Wegweiser (seeds 000 and 001): tenants as accounts, agents on
//! `tenant.{tenant}.device.{device}.*`, the always-on receiver as a queue group on a durable
//! consumer, command/response with a timeout, live metrics kept in a stream capped per subject
//! (instead of Redis ring buffers), dead letters, replay after a receiver outage and after a
//! server restart, and refused, audited cross-tenant attempts.

pub mod parts;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv, stream, Context as Js};
use futures::StreamExt;
use serde_json::json;

use crate::common::{check_replicas, logs, poll, say, wait_until, Checks, Conn, Natrium};
use parts::{Agent, Db, Receiver};

/// The server configuration this example runs on (also `natrium -c` for `--url`).
pub const CONFIG: &str = include_str!("natrium.conf");

const SYSTEM: &str = "wegweiser";

/// The durable consumer of the always-on receiver, in every tenant's stream.
pub const RECEIVER: &str = "receiver";
/// The queue group the receiver's instances share.
pub const RECEIVER_GROUP: &str = "weg-receivers";
/// Device connectivity (last heartbeat per device), a key-value bucket per tenant.
pub const CONNECTIVITY_BUCKET: &str = "device_connectivity";
/// The live metrics: the ring buffers of seed 001, as a stream.
pub const METRICS_STREAM: &str = "DEMO_METRICS";
/// Points kept per device and metric (`METRICS_MAX_POINTS`) and for how long (`METRICS_TTL_SECONDS`).
pub const METRICS_MAX_POINTS: i64 = 300;
const METRICS_TTL: Duration = Duration::from_secs(900);
/// Where the receiver's poison messages are parked.
pub const DLQ_STREAM: &str = "DEAD_LETTERS";
/// Deliveries before a message is dead-lettered.
pub const MAX_DELIVER: i64 = 3;

const HEARTBEATS: usize = 10;
const OUTAGE_HEARTBEATS: usize = 15;
const RESTART_HEARTBEATS: usize = 5;
const METRIC_POINTS: usize = 320;
const METRICS: [&str; 2] = ["cpu_percent", "memory_percent"];
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const RECEIVER_INSTANCES: usize = 2;

/// A tenant as `natrium.conf` configures it.
pub struct Tenant {
    pub uuid: &'static str,
    pub agent_password: &'static str,
    pub svc_password: &'static str,
    /// The UI's password (its user subscribes to live metrics over WebSocket only).
    pub ui_password: &'static str,
    /// Devices whose agent runs.
    pub devices: [&'static str; 2],
    /// A registered device whose agent is not running.
    pub offline: &'static str,
}

pub static TENANTS: [Tenant; 2] = [
    Tenant {
        uuid: "4f6c8a2e-1b3d-4c5e-9f70-8a1b2c3d4e5f",
        agent_password: "agent-secret-4f6c",
        svc_password: "svc-secret-4f6c",
        ui_password: "ui-secret-4f6c",
        devices: [
            "a1000000-0000-4000-8000-000000000001",
            "a1000000-0000-4000-8000-000000000002",
        ],
        offline: "a1000000-0000-4000-8000-000000000003",
    },
    Tenant {
        uuid: "9b2e7d41-6c8f-4a3b-b5d2-e1f0a9c8b7d6",
        agent_password: "agent-secret-9b2e",
        svc_password: "svc-secret-9b2e",
        ui_password: "ui-secret-9b2e",
        devices: [
            "b2000000-0000-4000-8000-000000000001",
            "b2000000-0000-4000-8000-000000000002",
        ],
        offline: "b2000000-0000-4000-8000-000000000003",
    },
];

impl Tenant {
    pub fn account(&self) -> String {
        format!("TENANT_{}", self.uuid)
    }
    pub fn agent_user(&self) -> String {
        format!("tenant_{}", self.uuid)
    }
    pub fn svc_user(&self) -> String {
        format!("weg-nats-svc_{}", self.uuid)
    }
    pub fn ui_user(&self) -> String {
        format!("ui_{}", self.uuid)
    }
    /// `TENANT_{tenant_uuid}_DEVICES`, as seed 000 names it.
    pub fn stream(&self) -> String {
        format!("TENANT_{}_DEVICES", self.uuid)
    }
    /// `tenant.{tenant}.device.{device}.{kind}`.
    pub fn subject(&self, device: &str, kind: &str) -> String {
        format!("tenant.{}.device.{device}.{kind}", self.uuid)
    }
}

/// One tenant's running parts.
struct Side {
    tenant: &'static Tenant,
    /// The back end (Flask app) connection: provisioning, commands, the UI's reads.
    app: Conn,
    js: Js,
    agents: Vec<Agent>,
    receivers: Vec<Receiver>,
    db: Arc<Db>,
}

impl Side {
    fn acked(&self) -> usize {
        self.db.processed.lock().len()
    }

    async fn start_receivers(&mut self, n: &Natrium) -> anyhow::Result<()> {
        for i in 1..=RECEIVER_INSTANCES {
            let r = Receiver::start(n, self.tenant, i, self.db.clone()).await?;
            self.receivers.push(r);
        }
        Ok(())
    }

    async fn stop_receivers(&mut self) {
        for r in self.receivers.drain(..) {
            r.stop().await;
        }
    }

    /// Waits until the receivers have processed `count` messages in all.
    async fn wait_acked(&self, count: usize) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(10), || {
            (self.acked() >= count).then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "tenant {}: receivers processed {} of {count}",
                self.tenant.uuid,
                self.acked()
            )
        })
    }

    async fn receiver_info(&self) -> anyhow::Result<consumer::Info> {
        let s = self.js.get_stream(self.tenant.stream()).await?;
        Ok(s.consumer_info(RECEIVER).await?)
    }

    /// Waits until the receiver's consumer has nothing unacknowledged (callers first wait for
    /// the receivers to have processed what was sent). Its `num_pending` is not asked: Natrium
    /// can overcount it by one (examples/README.md, "Gaps found").
    async fn wait_drained(&self) -> anyhow::Result<consumer::Info> {
        let r = poll(Duration::from_secs(10), || async {
            let i = self.receiver_info().await?;
            Ok((i.num_ack_pending == 0).then_some(i))
        })
        .await?;
        r.context("the receiver's consumer did not drain")
    }
}

/// Runs the scenario against `n`.
pub async fn run(n: &mut Natrium) -> anyhow::Result<Checks> {
    let mut c = Checks::new(SYSTEM);
    let mut sides = Vec::new();
    for t in &TENANTS {
        let app = Conn::open(
            n,
            &format!("wegweiser-app {}", t.uuid),
            Some((&t.svc_user(), t.svc_password)),
        )
        .await?;
        let js = jetstream::new(app.client.clone());
        provision(&js, t, n.replicas()).await?;
        if n.is_cluster() {
            let streams = [
                t.stream(),
                METRICS_STREAM.to_string(),
                DLQ_STREAM.to_string(),
                format!("KV_{CONNECTIVITY_BUCKET}"),
            ];
            check_replicas(
                &mut c,
                &format!("tenant {} streams and bucket replicated", t.uuid),
                &js,
                &streams,
                n.replicas(),
            )
            .await?;
        }
        say(SYSTEM, format!("tenant {}: streams {}, {METRICS_STREAM}, {DLQ_STREAM}, bucket {CONNECTIVITY_BUCKET}, durable consumer {RECEIVER}", t.uuid, t.stream()));
        let mut agents = Vec::new();
        for d in t.devices {
            agents.push(Agent::start(n, t, d).await?);
        }
        let mut side = Side {
            tenant: t,
            app,
            js,
            agents,
            receivers: Vec::new(),
            db: Arc::new(Db::default()),
        };
        side.start_receivers(n).await?;
        sides.push(side);
    }

    heartbeats(&mut c, &sides).await?;
    commands(&mut c, &sides).await?;
    ring_buffer(&mut c, &sides[0]).await?;
    live_charts(&mut c, n, &sides).await?;
    dead_letters(&mut c, &sides[0]).await?;
    receiver_outage(&mut c, n, &mut sides).await?;
    if n.is_embedded() {
        server_restart(&mut c, n, &mut sides).await?;
    } else {
        say(
            SYSTEM,
            "(--url: the server restart is skipped; restart yours by hand to see it)",
        );
    }
    cross_tenant(&mut c, n, &sides).await?;
    per_tenant_metrics(&mut c, n, &sides).await?;

    for s in sides {
        for a in s.agents {
            a.stop();
        }
        for r in s.receivers {
            r.stop().await;
        }
    }
    Ok(c)
}

/// Creates (afresh) the tenant's device stream, metrics stream, dead-letter stream,
/// connectivity bucket and the receiver's durable consumer, each with `replicas` replicas
/// (3 on a cluster: the seeds say "NATS clustering for high availability" and nothing of
/// replicas, so what a 3-node deployment would configure).
async fn provision(js: &Js, t: &Tenant, replicas: usize) -> anyhow::Result<()> {
    for s in [t.stream(), METRICS_STREAM.into(), DLQ_STREAM.into()] {
        let _ = js.delete_stream(&s).await;
    }
    let _ = js.delete_key_value(CONNECTIVITY_BUCKET).await;
    // Seed 000's stream, as it configures it.
    let devices = js
        .create_stream(stream::Config {
            name: t.stream(),
            subjects: vec![format!("tenant.{}.device.>", t.uuid)],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(86_400),
            max_messages: 10_000,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    // Seed 001's Redis ring buffers (LPUSH + LTRIM to METRICS_MAX_POINTS + EXPIRE), as a
    // stream that keeps the newest points of each subject.
    js.create_stream(stream::Config {
        name: METRICS_STREAM.into(),
        subjects: vec!["demo.system.>".into()],
        max_messages_per_subject: METRICS_MAX_POINTS,
        max_age: METRICS_TTL,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    js.create_stream(stream::Config {
        name: DLQ_STREAM.into(),
        subjects: vec!["dlq.>".into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    js.create_key_value(kv::Config {
        bucket: CONNECTIVITY_BUCKET.into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    // Phase 2 of seed 001: a durable consumer per tenant, its instances a queue group, dead
    // letters after max redeliveries (Natrium's built-in DLQ: the metadata key below).
    devices
        .create_consumer(consumer::push::Config {
            durable_name: Some(RECEIVER.into()),
            deliver_subject: format!("_weg.receiver.{}", t.uuid),
            deliver_group: Some(RECEIVER_GROUP.into()),
            filter_subjects: ["status.heartbeat", "response", "monitoring"]
                .iter()
                .map(|k| t.subject("*", k))
                .collect(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            max_deliver: MAX_DELIVER,
            metadata: HashMap::from([("dead_letter_subject".into(), "dlq.{subject}".into())]),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Agents send heartbeats and a monitoring sample; both receiver instances share the work; the
/// UI sees connectivity in the key-value bucket (the offline device has no entry).
async fn heartbeats(c: &mut Checks, sides: &[Side]) -> anyhow::Result<()> {
    for s in sides {
        for a in &s.agents {
            for i in 0..HEARTBEATS {
                a.heartbeat(i).await?;
            }
            a.monitoring().await?;
            a.flush().await?;
        }
    }
    let per_tenant = 2 * (HEARTBEATS + 1);
    for s in sides {
        s.wait_acked(per_tenant).await?;
        let split: Vec<usize> = s
            .receivers
            .iter()
            .map(|r| r.stats.acked.load(Ordering::Relaxed))
            .collect();
        say(
            SYSTEM,
            format!(
                "tenant {}: receiver instances processed {split:?}",
                s.tenant.uuid
            ),
        );
        c.eq(
            &format!(
                "tenant {} heartbeats and monitoring processed",
                s.tenant.uuid
            ),
            s.acked(),
            per_tenant,
        );
        c.that(
            &format!("tenant {} queue group shares the work", s.tenant.uuid),
            split.iter().all(|n| *n > 0),
            format!("{split:?}"),
        );
        let kv = s.js.get_key_value(CONNECTIVITY_BUCKET).await?;
        let mut online = 0;
        for d in s.tenant.devices {
            if let Some(v) = kv.get(d).await? {
                let hb: serde_json::Value = serde_json::from_slice(&v)?;
                online += usize::from(hb["status"] == "online");
            }
        }
        let offline = kv.get(s.tenant.offline).await?.is_none();
        c.eq(
            &format!(
                "tenant {} devices online (last heartbeat in KV)",
                s.tenant.uuid
            ),
            (online, offline),
            (2, true),
        );
    }
    Ok(())
}

/// The back end sends a command to a running agent and to an offline device; the first
/// answers (the receiver records the response), the second times out.
async fn commands(c: &mut Checks, sides: &[Side]) -> anyhow::Result<()> {
    for s in sides {
        let mut answered = 0;
        let mut timed_out = 0;
        for (i, device) in [s.tenant.devices[0], s.tenant.offline]
            .into_iter()
            .enumerate()
        {
            let id = format!("cmd-{}-{i}", &s.tenant.uuid[..4]);
            let body = json!({"command_id": id, "command": "osquery: SELECT * FROM uptime"});
            s.app
                .client
                .publish(s.tenant.subject(device, "command"), body.to_string().into())
                .await?;
            let got = wait_until(COMMAND_TIMEOUT, || s.db.responses.lock().get(&id).cloned()).await;
            match got {
                Some(r) => {
                    answered += 1;
                    say(SYSTEM, format!("command {id} to {device}: {}", r["result"]));
                }
                None => {
                    timed_out += 1;
                    say(SYSTEM, format!("command {id} to {device}: no response within {COMMAND_TIMEOUT:?} (device offline)"));
                }
            }
        }
        c.eq(
            &format!("tenant {} commands answered / timed out", s.tenant.uuid),
            (answered, timed_out),
            (1, 1),
        );
    }
    Ok(())
}

/// The live charts: points kept per device and metric, the oldest dropped, read back by the UI
/// as Redis would have served them.
async fn ring_buffer(c: &mut Checks, s: &Side) -> anyhow::Result<()> {
    let agent = &s.agents[0];
    for i in 0..METRIC_POINTS {
        for m in METRICS {
            agent.metric(m, i).await?;
        }
    }
    agent.flush().await?;
    let stream = s.js.get_stream(METRICS_STREAM).await?;
    let total = (METRIC_POINTS * METRICS.len()) as u64;
    let info = poll(Duration::from_secs(10), || {
        let stream = stream.clone();
        async move {
            let i = stream.get_info().await?;
            Ok((i.state.last_sequence >= total).then_some(i))
        }
    })
    .await?
    .context("the metrics stream did not receive every point")?;
    let per_subject = stream
        .info_with_subjects(format!("demo.system.{}.>", agent.device))
        .await?
        .fold(HashMap::new(), |mut m, r| async move {
            if let Ok((k, v)) = r {
                m.insert(k, v);
            }
            m
        })
        .await;
    c.eq(
        "metrics kept per device and metric",
        per_subject.values().copied().collect::<Vec<_>>(),
        vec![METRICS_MAX_POINTS as usize; METRICS.len()],
    );
    c.eq(
        "metrics stream messages",
        info.state.messages,
        METRICS_MAX_POINTS as u64 * METRICS.len() as u64,
    );
    // The UI's window: the points of one chart, oldest first.
    let subject = format!("demo.system.{}.cpu_percent", agent.device);
    let window = read_subject(&stream, &subject).await?;
    let first = window.first().map(|v| v["n"].clone());
    let last = window.last().map(|v| v["n"].clone());
    say(
        SYSTEM,
        format!(
            "UI window for {subject}: {} points, n={} ..= {}",
            window.len(),
            first.clone().unwrap_or_default(),
            last.clone().unwrap_or_default()
        ),
    );
    c.eq(
        "UI window is the newest points",
        (window.len(), first, last),
        (
            METRICS_MAX_POINTS as usize,
            Some(json!(METRIC_POINTS - METRICS_MAX_POINTS as usize)),
            Some(json!(METRIC_POINTS - 1)),
        ),
    );
    Ok(())
}

/// Seed 001's "WebSocket push from backend to UI": each tenant's browser subscribes to its live
/// metrics over WebSocket (nats.ws in a real browser; async-nats over `ws://` here) and sees its
/// own devices' points as they are published, and nothing of the other tenant's; the UI's user
/// cannot publish and cannot log in over the NATS port.
async fn live_charts(c: &mut Checks, n: &Natrium, sides: &[Side]) -> anyhow::Result<()> {
    let Some(ws) = n.websocket() else {
        say(
            SYSTEM,
            "(no WebSocket URL: the browser's live charts are skipped; give --websocket)",
        );
        return Ok(());
    };
    let mut uis = Vec::new();
    for s in sides {
        let t = s.tenant;
        let ui = Conn::open_url(
            &ws,
            &format!("wegweiser-ui {}", t.uuid),
            Some((&t.ui_user(), t.ui_password)),
        )
        .await?;
        let sub = ui.client.subscribe("demo.system.>").await?;
        ui.client.flush().await?;
        uis.push((ui, sub));
    }
    if n.is_cluster() {
        // The browser's subscription reaches the other nodes over the routes a moment later;
        // its interest can not be told from the metrics stream's (also `demo.system.>`), so
        // the points wait a little.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    const POINTS: [usize; 2] = [20, 5];
    for (s, points) in sides.iter().zip(POINTS) {
        let agent = &s.agents[0];
        for i in 0..points {
            agent.metric("cpu_percent", METRIC_POINTS + i).await?;
        }
        agent.flush().await?;
    }
    let mut got = Vec::new();
    for ((s, (_, sub)), points) in sides.iter().zip(uis.iter_mut()).zip(POINTS) {
        let mut devices = Vec::new();
        // Exactly `points` arrive: the wait for one more ends after a pause.
        while let Ok(Some(m)) = tokio::time::timeout(
            Duration::from_millis(if devices.len() < points { 5_000 } else { 300 }),
            sub.next(),
        )
        .await
        {
            let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
            devices.push(v["device_uuid"].as_str().unwrap_or_default().to_string());
        }
        let own = devices.iter().all(|d| d == s.agents[0].device.as_str());
        say(
            SYSTEM,
            format!(
                "tenant {}'s browser (WebSocket) received {} live points, all its own: {own}",
                s.tenant.uuid,
                devices.len()
            ),
        );
        got.push((devices.len(), own));
    }
    c.eq(
        "browsers receive their own tenant's live points over WebSocket",
        got,
        POINTS.iter().map(|p| (*p, true)).collect(),
    );
    let (ui, _) = &uis[0];
    ui.client
        .publish(
            format!("demo.system.{}.cpu_percent", sides[0].agents[0].device),
            "{}".into(),
        )
        .await?;
    ui.client.flush().await?;
    let err = ui.wait_server_error("Publish to").await?;
    c.that(
        "the UI's user cannot publish",
        err.starts_with("Permissions Violation for Publish to"),
        err,
    );
    let t = sides[0].tenant;
    let tcp = Conn::open(n, "ui over tcp", Some((&t.ui_user(), t.ui_password))).await;
    let login = match &tcp {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.root_cause().to_string(),
    };
    c.that(
        "the UI's user is refused on the NATS port (WebSocket only)",
        tcp.is_err() && login.contains("authorization violation"),
        login,
    );
    for (ui, _) in uis {
        ui.client.drain().await?;
    }
    Ok(())
}

/// Every message of `subject` in `stream`, oldest first, through an ordered consumer.
async fn read_subject(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let m = m?;
        out.push(serde_json::from_slice(&m.payload)?);
        if m.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// A malformed heartbeat: the receivers refuse it until the server dead-letters it.
async fn dead_letters(c: &mut Checks, s: &Side) -> anyhow::Result<()> {
    let agent = &s.agents[1];
    let naks_before: usize = s
        .receivers
        .iter()
        .map(|r| r.stats.naks.load(Ordering::Relaxed))
        .sum();
    agent
        .publish("status.heartbeat", "<<truncated>>".into())
        .await?;
    agent.flush().await?;
    let dlq = s.js.get_stream(DLQ_STREAM).await?;
    let msg = poll(Duration::from_secs(10), || {
        let dlq = dlq.clone();
        async move {
            let i = dlq.get_info().await?;
            if i.state.messages == 0 {
                return Ok(None);
            }
            Ok(Some(dlq.get_raw_message(i.state.last_sequence).await?))
        }
    })
    .await?
    .context("nothing arrived in the dead-letter stream")?;
    let naks: usize = s
        .receivers
        .iter()
        .map(|r| r.stats.naks.load(Ordering::Relaxed))
        .sum();
    let header = |k: &str| {
        msg.headers
            .get(k)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    say(
        SYSTEM,
        format!(
            "dead letter on {}: reason {}, {} deliveries, from {} seq {}",
            msg.subject,
            header("Nats-DLQ-Reason"),
            header("Nats-DLQ-Deliveries"),
            header("Nats-DLQ-Stream"),
            header("Nats-DLQ-Sequence")
        ),
    );
    c.eq(
        "malformed heartbeat refused by the receivers",
        naks - naks_before,
        MAX_DELIVER as usize,
    );
    c.eq(
        "dead letter subject and headers",
        (
            msg.subject.to_string(),
            header("Nats-DLQ-Reason"),
            header("Nats-DLQ-Deliveries"),
            header("Nats-DLQ-Stream"),
            msg.payload.to_vec(),
        ),
        (
            format!(
                "dlq.{}",
                s.tenant.subject(&agent.device, "status.heartbeat")
            ),
            "max_deliveries".to_string(),
            MAX_DELIVER.to_string(),
            s.tenant.stream(),
            b"<<truncated>>".to_vec(),
        ),
    );
    s.wait_drained().await?;
    Ok(())
}

/// The receivers go away (a deploy, a crash) while agents keep sending; when they come back
/// the durable consumer replays exactly what they missed.
async fn receiver_outage(c: &mut Checks, n: &Natrium, sides: &mut [Side]) -> anyhow::Result<()> {
    for s in sides.iter_mut() {
        s.wait_drained().await?;
        s.stop_receivers().await;
    }
    for s in sides.iter() {
        for a in &s.agents {
            for i in 0..OUTAGE_HEARTBEATS {
                a.heartbeat(HEARTBEATS + i).await?;
            }
            a.flush().await?;
        }
    }
    let missed = 2 * OUTAGE_HEARTBEATS;
    for s in sides.iter_mut() {
        let pending = poll(Duration::from_secs(5), || async {
            let i = s.receiver_info().await?;
            Ok((i.num_pending as usize >= missed).then_some(i.num_pending))
        })
        .await?
        .unwrap_or_default();
        c.that(
            &format!(
                "tenant {} heartbeats waiting during the outage",
                s.tenant.uuid
            ),
            pending as usize >= missed,
            format!("num_pending {pending}, sent {missed}"),
        );
        let before = s.acked();
        s.start_receivers(n).await?;
        s.wait_acked(before + missed).await?;
        s.wait_drained().await?;
        c.eq(
            &format!(
                "tenant {} replayed after the outage, each once",
                s.tenant.uuid
            ),
            (s.acked() - before, s.db.duplicates()),
            (missed, 0),
        );
    }
    Ok(())
}

/// The server itself goes down and comes back (embedded only): streams, the consumer's
/// acknowledgements, the bucket and the dead letters survive; the clients reconnect; only what
/// is new is delivered.
async fn server_restart(c: &mut Checks, n: &mut Natrium, sides: &mut [Side]) -> anyhow::Result<()> {
    let mut before = Vec::new();
    for s in sides.iter_mut() {
        s.wait_drained().await?;
        s.stop_receivers().await;
        let st = s.js.get_stream(s.tenant.stream()).await?.get_info().await?;
        let ci = s.receiver_info().await?;
        before.push((st.state.messages, ci.ack_floor.stream_sequence));
    }
    say(SYSTEM, "stopping the server ...");
    n.stop().await?;
    n.start_again().await?;
    say(SYSTEM, "... started again on the same port and store");
    for (s, (msgs, floor)) in sides.iter_mut().zip(before) {
        s.app.wait_connected().await?;
        for a in &s.agents {
            a.conn.wait_connected().await?;
        }
        let st = s.js.get_stream(s.tenant.stream()).await?.get_info().await?;
        let ci = s.receiver_info().await?;
        let dlq = s.js.get_stream(DLQ_STREAM).await?.get_info().await?;
        let kv = s.js.get_key_value(CONNECTIVITY_BUCKET).await?;
        let online = kv.get(s.tenant.devices[0]).await?.is_some();
        c.eq(
            &format!(
                "tenant {} state after the restart (messages, ack floor, KV, unacknowledged)",
                s.tenant.uuid
            ),
            (
                st.state.messages,
                ci.ack_floor.stream_sequence,
                online,
                ci.num_ack_pending,
            ),
            (msgs, floor, true, 0),
        );
        if s.tenant.uuid == TENANTS[0].uuid {
            c.eq("dead letter kept across the restart", dlq.state.messages, 1);
        }
        for a in &s.agents {
            for i in 0..RESTART_HEARTBEATS {
                a.heartbeat(100 + i).await?;
            }
            a.flush().await?;
        }
        let acked = s.acked();
        s.start_receivers(n).await?;
        let fresh = 2 * RESTART_HEARTBEATS;
        s.wait_acked(acked + fresh).await?;
        s.wait_drained().await?;
        c.eq(
            &format!(
                "tenant {} delivered after the restart: only the new, each once",
                s.tenant.uuid
            ),
            (s.acked() - acked, s.db.duplicates()),
            (fresh, 0),
        );
    }
    Ok(())
}

/// Tenant A's agent tries tenant B's subjects and credentials: refused, counted and logged;
/// tenant A's unscoped back-end user reaches nothing of B either (the account is the wall).
async fn cross_tenant(c: &mut Checks, n: &Natrium, sides: &[Side]) -> anyhow::Result<()> {
    // The log is the process's: runs in one process (the tests) take turns here, so the lines
    // after the mark are this run's.
    static AUDIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = AUDIT.lock().await;
    let mark = logs::mark();
    let (a, b) = (&sides[0], &sides[1]);
    let violations = |acc: String| async move {
        Ok::<_, anyhow::Error>(match n.monitor() {
            // Each server counts its own clients: summed over a cluster.
            Some(_) => n
                .metric_sum(
                    "natrium_account_permission_violations_total",
                    &[("account", &acc)],
                )
                .await?
                .unwrap_or(0.0),
            None => 0.0,
        })
    };
    let failures = |acc: String| async move {
        Ok::<_, anyhow::Error>(match n.monitor() {
            Some(_) => n
                .metric_sum("natrium_account_auth_failures_total", &[("account", &acc)])
                .await?
                .unwrap_or(0.0),
            None => 0.0,
        })
    };
    let v0 = violations(a.tenant.account()).await?;
    let f0 = failures(b.tenant.account()).await?;
    let b_commands: usize = b
        .agents
        .iter()
        .map(|x| x.commands_run.load(Ordering::Relaxed))
        .sum();
    let b_stream_before =
        b.js.get_stream(b.tenant.stream())
            .await?
            .get_info()
            .await?
            .state
            .messages;

    let intruder = &a.agents[0];
    let target = b.tenant.subject(b.tenant.devices[0], "command");
    let forged = json!({"command_id": "forged", "command": "rm -rf /"}).to_string();
    intruder
        .conn
        .client
        .publish(target.clone(), forged.clone().into())
        .await?;
    let _eavesdrop = intruder.conn.client.subscribe("tenant.>").await?;
    intruder.flush().await?;
    let pub_err = intruder.conn.wait_server_error("Publish to").await?;
    let sub_err = intruder.conn.wait_server_error("Subscription to").await?;
    say(
        SYSTEM,
        format!("agent of tenant A was told: {pub_err:?} and {sub_err:?}"),
    );
    c.eq(
        "cross-tenant publish refused",
        pub_err,
        format!("Permissions Violation for Publish to \"{target}\""),
    );
    c.eq(
        "cross-tenant subscribe refused",
        sub_err,
        "Permissions Violation for Subscription to \"tenant.>\"".to_string(),
    );
    // Tenant A's back end is not scoped inside A, yet its publish stays in A's account.
    a.app.client.publish(target.clone(), forged.into()).await?;
    a.app.client.flush().await?;
    // A's agent logs in with B's user name.
    let stolen = Conn::open(
        n,
        "intruder",
        Some((&b.tenant.agent_user(), a.tenant.agent_password)),
    )
    .await;
    let login = match &stolen {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.root_cause().to_string(),
    };
    say(
        SYSTEM,
        format!("login as tenant B's agent with tenant A's password: {login}"),
    );
    c.that(
        "login with another tenant's user refused",
        stolen.is_err() && login.contains("authorization violation"),
        login,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_commands_after: usize = b
        .agents
        .iter()
        .map(|x| x.commands_run.load(Ordering::Relaxed))
        .sum();
    let b_stream_after =
        b.js.get_stream(b.tenant.stream())
            .await?
            .get_info()
            .await?
            .state
            .messages;
    c.eq(
        "tenant B received nothing from tenant A (commands run, stream messages)",
        (b_commands_after, b_stream_after),
        (b_commands, b_stream_before),
    );
    if n.monitor().is_some() {
        let got = poll(Duration::from_secs(5), || async {
            let v = violations(a.tenant.account()).await? - v0;
            let f = failures(b.tenant.account()).await? - f0;
            Ok((v >= 2.0 && f >= 1.0).then_some((v, f)))
        })
        .await?
        .unwrap_or_default();
        c.eq(
            "audited in /metrics (A's permission violations, B's auth failures)",
            got,
            (2.0, 1.0),
        );
        // Summed over the nodes (each counts its own clients').
        let mut pv = None;
        for i in 0..n.monitors().len() {
            let accountz = n
                .monitor_json_on(i, &format!("/accountz?acc={}", a.tenant.account()))
                .await?;
            if let Some(v) = accountz["account_detail"]["permission_violations"].as_u64() {
                *pv.get_or_insert(0) += v;
            }
        }
        c.that(
            "audited in /accountz",
            pv.is_some_and(|v| v >= 2),
            format!("permission_violations: {pv:?}"),
        );
    }
    if n.is_embedded() {
        let lines = logs::matching_since(mark, &["Permissions Violation", &a.tenant.agent_user()]);
        for l in &lines {
            say(SYSTEM, format!("server log: {l}"));
        }
        let auth = logs::matching_since(mark, &["authentication error", &b.tenant.account()]);
        for l in &auth {
            say(SYSTEM, format!("server log: {l}"));
        }
        c.eq(
            "audited in the server log (violations, failed login)",
            (lines.len(), auth.len()),
            (2, 1),
        );
    }
    Ok(())
}

/// Each tenant's traffic as /metrics reports it (what the Grafana dashboard plots).
async fn per_tenant_metrics(c: &mut Checks, n: &Natrium, sides: &[Side]) -> anyhow::Result<()> {
    if n.monitor().is_none() {
        return Ok(());
    }
    for s in sides {
        let acc = s.tenant.account();
        let in_msgs = n
            .metric_sum("natrium_account_in_msgs_total", &[("account", &acc)])
            .await?
            .unwrap_or(0.0);
        let node = n.stream_node(&s.js, &s.tenant.stream()).await?;
        let stored = n
            .metric_on(
                node,
                "natrium_jetstream_stream_messages",
                &[("account", &acc), ("stream", &s.tenant.stream())],
            )
            .await?;
        say(
            SYSTEM,
            format!(
                "/metrics for {acc}: in_msgs {in_msgs}, {} messages {stored:?}",
                s.tenant.stream()
            ),
        );
        // Everything the tenant's devices sent and were sent, and nothing of the other
        // tenant's: heartbeats, monitoring, two commands, one response (and tenant A's
        // malformed heartbeat).
        let restart = if n.is_embedded() {
            RESTART_HEARTBEATS
        } else {
            0
        };
        let mut expect = 2 * (HEARTBEATS + 1 + OUTAGE_HEARTBEATS + restart) + 2 + 1;
        if s.tenant.uuid == TENANTS[0].uuid {
            expect += 1;
        }
        c.that(
            &format!("tenant {} traffic in /metrics", s.tenant.uuid),
            in_msgs > 0.0 && stored == Some(expect as f64),
            format!("in_msgs {in_msgs} (since the server started), stream messages {stored:?}, expected {expect}"),
        );
    }
    Ok(())
}
