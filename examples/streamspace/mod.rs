//! StreamSpace (seed 004): the API publishes session and application events on platform
//! subjects, the Kubernetes and Docker controllers act on them and publish status events and
//! heartbeats, failures are retried with exponential backoff and then dead-lettered to
//! `streamspace.dlq.<subject>`, and a controller outage is noticed by the API (its circuit
//! breaker) and made up for by replay. The server runs as the seed's compose file starts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, AckKind, Context as Js};
use futures::StreamExt;
use natrium::Options;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::common::{check_replicas, poll, pull, say, wait_until, Checks, Conn, Natrium};

const SYSTEM: &str = "streamspace";

/// The compose file's `command: ["--jetstream", "--store_dir", "/data"]` and its monitoring
/// port, as natrium flags.
pub const COMPOSE_FLAGS: [&str; 5] = ["--jetstream", "--store_dir", "/data", "-m", "8222"];

pub const EVENTS: &str = "STREAMSPACE_EVENTS";
pub const DLQ: &str = "STREAMSPACE_DLQ";
pub const API_STATUS: &str = "api-status";
/// The seed retries 10 times, 1 s doubling to 5 min; the example scales that down so it runs in
/// seconds: 5 deliveries, 40 ms doubling.
pub const MAX_DELIVER: i64 = 5;
pub const BACKOFF_BASE: Duration = Duration::from_millis(40);
const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// The seed's `HEARTBEAT_INTERVAL=30s`, scaled down.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a delivered event may go unacknowledged before it is delivered again.
pub const ACK_WAIT: Duration = Duration::from_secs(2);
/// Missed heartbeats after which the API stops routing to a controller.
const MISSED: u32 = 3;

/// The options `natrium --jetstream --store_dir /data -m 8222` runs with.
pub fn compose_options() -> Options {
    let cli = natrium::cli::Cli::parse(COMPOSE_FLAGS.iter().map(|s| s.to_string()))
        .expect("the compose flags parse");
    cli.options().expect("the compose flags are valid").0
}

/// The delay before retry `attempt` (1-based): the base doubling, capped.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(BACKOFF_MAX)
}

/// A platform controller's durable consumer and the subjects it takes.
fn controller_consumer(platform: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(format!("{platform}-controller")),
        filter_subjects: vec![
            format!("streamspace.session.create.{platform}"),
            format!("streamspace.session.delete.{platform}"),
            format!("streamspace.app.install.{platform}"),
            // The broadcast create: every controller sees it and acts if the platform matches.
            "streamspace.session.create".into(),
        ],
        ack_policy: consumer::AckPolicy::Explicit,
        // A controller that dies holding an event gets it back this soon (scaled down too).
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        metadata: HashMap::from([(
            "dead_letter_subject".into(),
            "streamspace.dlq.{subject}".into(),
        )]),
        ..Default::default()
    }
}

/// What a controller did.
#[derive(Default)]
struct ControllerStats {
    created: AtomicUsize,
    ignored: AtomicUsize,
    installed: AtomicUsize,
    /// When each attempt of each failing install was delivered.
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

/// A platform controller: acts on its platform's events, publishes status events and
/// heartbeats.
struct Controller {
    id: String,
    conn: Conn,
    stats: Arc<ControllerStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    async fn start(n: &Natrium, platform: &'static str) -> anyhow::Result<Controller> {
        let id = format!("{platform}-controller-1");
        let conn = Conn::open(n, &id, None).await?;
        let client = conn.client.clone();
        let js = jetstream::new(client.clone());
        let consumer: consumer::PullConsumer = js
            .get_stream(EVENTS)
            .await?
            .get_consumer(&format!("{platform}-controller"))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut messages = pull::messages(n, &consumer).await?;
        let stats = Arc::new(ControllerStats::default());
        let st = stats.clone();
        let work = tokio::spawn(async move {
            while let Some(m) = pull::next(platform, &mut messages).await {
                let ev: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                let subject = m.subject.to_string();
                let delivered = m.info().map(|i| i.delivered).unwrap_or(1) as u32;
                if subject.starts_with("streamspace.session.create") {
                    if ev["platform"] != platform {
                        st.ignored.fetch_add(1, Ordering::Relaxed);
                        let _ = m.ack().await;
                        continue;
                    }
                    let status = json!({
                        "session_id": ev["session_id"],
                        "status": "running",
                        "phase": "Running",
                        "url": format!("https://{}-{}.streamspace.local", ev["user_id"].as_str().unwrap_or("user"), ev["template_id"].as_str().unwrap_or("app")),
                        "message": format!("Session started on {platform}"),
                    });
                    if publish_acked(&js, "streamspace.session.status", status).await {
                        st.created.fetch_add(1, Ordering::Relaxed);
                        let _ = m.ack().await;
                    }
                } else if subject.starts_with("streamspace.app.install") {
                    let install = ev["install_id"].as_str().unwrap_or_default().to_string();
                    if !ev["manifest"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("kind: Template")
                    {
                        // The operation failed: retry later, waiting longer each time; after
                        // the last delivery the server dead-letters the event.
                        st.attempts
                            .lock()
                            .entry(install)
                            .or_default()
                            .push(Instant::now());
                        let _ = m.ack_with(AckKind::Nak(Some(backoff(delivered)))).await;
                        continue;
                    }
                    let status = json!({
                        "install_id": install,
                        "status": "ready",
                        "template_name": ev["template_name"],
                        "message": "Template created successfully",
                    });
                    if publish_acked(&js, "streamspace.app.status", status).await {
                        st.installed.fetch_add(1, Ordering::Relaxed);
                        let _ = m.ack().await;
                    }
                } else {
                    let _ = m.ack().await;
                }
            }
        });
        let beat_id = id.clone();
        let beat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let hb = json!({
                    "controller_id": beat_id,
                    "platform": platform,
                    "status": "healthy",
                    "version": "1.0.0",
                    "capabilities": ["sessions", "templates", "nodes"],
                });
                let _ = client
                    .publish("streamspace.controller.heartbeat", hb.to_string().into())
                    .await;
            }
        });
        Ok(Controller {
            id,
            conn,
            stats,
            tasks: vec![work, beat],
        })
    }

    async fn stop(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let _ = self.conn.client.drain().await;
    }
}

async fn publish_acked(js: &Js, subject: &'static str, body: Value) -> bool {
    match js.publish(subject, body.to_string().into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// The API's view: controllers by heartbeat, sessions and installs by status event.
#[derive(Default)]
struct ApiState {
    heartbeats: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, String>>,
    installs: Mutex<HashMap<String, String>>,
}

impl ApiState {
    /// The circuit breaker: healthy while the last heartbeat is recent.
    fn healthy(&self, controller: &str) -> bool {
        self.heartbeats
            .lock()
            .get(controller)
            .is_some_and(|t| t.elapsed() < HEARTBEAT * MISSED)
    }
    fn running(&self) -> usize {
        self.sessions
            .lock()
            .values()
            .filter(|s| *s == "running")
            .count()
    }
}

/// Runs the scenario against `n`.
pub async fn run(n: &mut Natrium) -> anyhow::Result<Checks> {
    let mut c = Checks::new(SYSTEM);
    let api = Conn::open(n, "streamspace-api", None).await?;
    let js = jetstream::new(api.client.clone());
    provision(&js, n.replicas()).await?;
    if n.is_cluster() {
        check_replicas(
            &mut c,
            "event and dead-letter streams replicated",
            &js,
            &[EVENTS.to_string(), DLQ.to_string()],
            n.replicas(),
        )
        .await?;
    }

    // The API: heartbeats (core NATS) and status events (its durable consumer).
    let state = Arc::new(ApiState::default());
    let mut hb = api
        .client
        .subscribe("streamspace.controller.heartbeat")
        .await?;
    let st = state.clone();
    let hb_task = tokio::spawn(async move {
        while let Some(m) = hb.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            if let Some(id) = v["controller_id"].as_str() {
                st.heartbeats.lock().insert(id.to_string(), Instant::now());
            }
        }
    });
    let status: consumer::PullConsumer = js
        .get_stream(EVENTS)
        .await?
        .get_consumer(API_STATUS)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut statuses = pull::messages(n, &status).await?;
    let st = state.clone();
    let status_task = tokio::spawn(async move {
        while let Some(m) = pull::next("api", &mut statuses).await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let s = v["status"].as_str().unwrap_or_default().to_string();
            if let Some(id) = v["session_id"].as_str() {
                st.sessions.lock().insert(id.to_string(), s);
            } else if let Some(id) = v["install_id"].as_str() {
                st.installs.lock().insert(id.to_string(), s);
            }
            let _ = m.ack().await;
        }
    });

    let k8s = Controller::start(n, "kubernetes").await?;
    let mut docker = Controller::start(n, "docker").await?;
    let both = wait_until(Duration::from_secs(5), || {
        (state.healthy(&k8s.id) && state.healthy(&docker.id)).then_some(())
    })
    .await;
    c.that(
        "controllers registered by heartbeat",
        both.is_some(),
        format!("{} and {}", k8s.id, docker.id),
    );

    // Sessions on each platform, one through the broadcast subject, and two installs.
    for i in 0..4 {
        create_session(&js, &format!("k8s-{i}"), "kubernetes", true).await?;
    }
    for i in 0..2 {
        create_session(&js, &format!("docker-{i}"), "docker", true).await?;
    }
    create_session(&js, "docker-broadcast", "docker", false).await?;
    install(
        &js,
        "install-firefox",
        "apiVersion: stream.space/v1alpha1\nkind: Template\n",
    )
    .await?;
    install(
        &js,
        "install-broken",
        "apiVersion: stream.space/v1alpha1\nkind: Nonsense\n",
    )
    .await?;

    let running = wait_until(Duration::from_secs(10), || {
        (state.running() >= 7).then_some(())
    })
    .await;
    c.that(
        "sessions running (status events)",
        running.is_some(),
        format!("{} of 7", state.running()),
    );
    let took = || {
        (
            k8s.stats.created.load(Ordering::Relaxed),
            k8s.stats.ignored.load(Ordering::Relaxed),
            docker.stats.created.load(Ordering::Relaxed),
        )
    };
    let took = wait_until(Duration::from_secs(5), || {
        Some(took()).filter(|t| *t == (4, 1, 3))
    })
    .await
    .unwrap_or_else(took);
    c.eq(
        "each controller took its platform (k8s created, ignored broadcast; docker created)",
        took,
        (4, 1, 3),
    );
    let ready = wait_until(Duration::from_secs(5), || {
        state.installs.lock().get("install-firefox").cloned()
    })
    .await;
    c.eq("application installed", ready, Some("ready".to_string()));

    dead_letter(&mut c, &js, &k8s, &state).await?;

    // The Docker controller goes away: the API's circuit breaker opens; events for Docker wait
    // in the stream and are replayed when it is back.
    let docker_id = docker.id.clone();
    docker.stop().await;
    let opened = wait_until(Duration::from_secs(5), || {
        (!state.healthy(&docker_id)).then_some(())
    })
    .await;
    c.that(
        "API marks the silent controller unhealthy",
        opened.is_some(),
        format!("after {MISSED} missed heartbeats"),
    );
    for i in 0..2 {
        create_session(&js, &format!("docker-late-{i}"), "docker", true).await?;
    }
    let events = js.get_stream(EVENTS).await?;
    let waiting = poll(Duration::from_secs(5), || async {
        let i = events.consumer_info("docker-controller").await?;
        let w = (i.num_pending, i.num_ack_pending as u64);
        Ok((w.0 + w.1 >= 2).then_some(w))
    })
    .await?;
    if let Some((_, handed)) = waiting.filter(|w| w.1 > 0) {
        say(SYSTEM, format!("{handed} of them went to the stopped controller's pull request and come back after ack_wait ({ACK_WAIT:?})"));
    }
    c.that(
        "events waiting for the Docker controller",
        waiting.is_some(),
        format!("(num_pending, num_ack_pending) {waiting:?}, sent 2"),
    );
    docker = Controller::start(n, "docker").await?;
    let back = wait_until(Duration::from_secs(10), || {
        (state.healthy(&docker_id)
            && state.running() >= 9
            && docker.stats.created.load(Ordering::Relaxed) >= 2)
            .then_some(())
    })
    .await;
    c.that(
        "Docker controller back: healthy again, missed sessions created",
        back.is_some() && docker.stats.created.load(Ordering::Relaxed) == 2,
        format!(
            "{} running, replayed {}",
            state.running(),
            docker.stats.created.load(Ordering::Relaxed)
        ),
    );

    monitoring(&mut c, n, &js).await?;

    k8s.stop().await;
    docker.stop().await;
    hb_task.abort();
    status_task.abort();
    Ok(c)
}

/// Creates (afresh) the event stream, the dead-letter stream and the durable consumers, the
/// streams with `replicas` replicas (the seed runs one server; on a cluster, 3).
async fn provision(js: &Js, replicas: usize) -> anyhow::Result<()> {
    for s in [EVENTS, DLQ] {
        let _ = js.delete_stream(s).await;
    }
    // The event log of the seed's `event_log` table, kept by the server.
    let events = js
        .create_stream(stream::Config {
            name: EVENTS.into(),
            subjects: vec![
                "streamspace.session.>".into(),
                "streamspace.app.>".into(),
                "streamspace.template.>".into(),
                "streamspace.node.>".into(),
            ],
            max_age: Duration::from_secs(7 * 86_400),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    js.create_stream(stream::Config {
        name: DLQ.into(),
        subjects: vec!["streamspace.dlq.>".into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    for platform in ["kubernetes", "docker"] {
        events
            .create_consumer(controller_consumer(platform))
            .await?;
    }
    events
        .create_consumer(consumer::pull::Config {
            durable_name: Some(API_STATUS.into()),
            filter_subjects: vec![
                "streamspace.session.status".into(),
                "streamspace.app.status".into(),
            ],
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    say(SYSTEM, format!("streams {EVENTS} and {DLQ}; durable consumers kubernetes-controller, docker-controller, {API_STATUS}"));
    Ok(())
}

/// Publishes a session-create event on the platform's subject (or the broadcast one).
async fn create_session(
    js: &Js,
    session: &str,
    platform: &str,
    specific: bool,
) -> anyhow::Result<()> {
    let subject = if specific {
        format!("streamspace.session.create.{platform}")
    } else {
        "streamspace.session.create".to_string()
    };
    let ev = json!({
        "event_id": format!("ev-{session}"),
        "session_id": session,
        "user_id": "user1",
        "template_id": "firefox-browser",
        "platform": platform,
        "resources": {"memory": "2Gi", "cpu": "1000m"},
        "persistent_home": true,
        "idle_timeout": "30m",
    });
    js.publish(subject, ev.to_string().into()).await?.await?;
    Ok(())
}

async fn install(js: &Js, install_id: &str, manifest: &str) -> anyhow::Result<()> {
    let ev = json!({
        "event_id": format!("ev-{install_id}"),
        "install_id": install_id,
        "template_name": "firefox-browser",
        "display_name": "Firefox Web Browser",
        "manifest": manifest,
        "installed_by": "admin",
        "platform": "kubernetes",
    });
    js.publish("streamspace.app.install.kubernetes", ev.to_string().into())
        .await?
        .await?;
    Ok(())
}

/// The broken install: retried with growing delays, then parked on
/// `streamspace.dlq.streamspace.app.install.kubernetes`, where the API reads the failure.
async fn dead_letter(
    c: &mut Checks,
    js: &Js,
    k8s: &Controller,
    state: &ApiState,
) -> anyhow::Result<()> {
    let dlq = js.get_stream(DLQ).await?;
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
    .await?;
    let Some(msg) = msg else {
        let ci = js
            .get_stream(EVENTS)
            .await?
            .consumer_info("kubernetes-controller")
            .await?;
        let attempts: Vec<usize> = k8s.stats.attempts.lock().values().map(Vec::len).collect();
        anyhow::bail!(
            "nothing reached the dead-letter stream: the controller saw {attempts:?} attempts; its consumer: delivered {}, ack floor {}, num_ack_pending {}, num_redelivered {}, num_waiting {}",
            ci.delivered.stream_sequence,
            ci.ack_floor.stream_sequence,
            ci.num_ack_pending,
            ci.num_redelivered,
            ci.num_waiting
        );
    };
    let header = |k: &str| {
        msg.headers
            .get(k)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let ev: Value = serde_json::from_slice(&msg.payload)?;
    if let Some(id) = ev["install_id"].as_str() {
        state
            .installs
            .lock()
            .insert(id.to_string(), "failed".into());
    }
    say(
        SYSTEM,
        format!(
            "dead letter on {}: reason {}, after {} deliveries",
            msg.subject,
            header("Nats-DLQ-Reason"),
            header("Nats-DLQ-Deliveries")
        ),
    );
    c.eq(
        "dead letter: subject, reason, deliveries, install",
        (
            msg.subject.to_string(),
            header("Nats-DLQ-Reason"),
            header("Nats-DLQ-Deliveries"),
            ev["install_id"].clone(),
        ),
        (
            "streamspace.dlq.streamspace.app.install.kubernetes".to_string(),
            "max_deliveries".to_string(),
            MAX_DELIVER.to_string(),
            json!("install-broken"),
        ),
    );
    let attempts = k8s
        .stats
        .attempts
        .lock()
        .get("install-broken")
        .cloned()
        .unwrap_or_default();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    say(
        SYSTEM,
        format!("retries of install-broken came after {gaps:?}"),
    );
    let waited = gaps
        .iter()
        .enumerate()
        .all(|(i, g)| *g >= backoff(i as u32 + 1));
    c.that(
        "retried with exponential backoff before dead-lettering",
        attempts.len() == MAX_DELIVER as usize && waited,
        format!("{} attempts, gaps {gaps:?}", attempts.len()),
    );
    c.eq(
        "API shows the install failed",
        state.installs.lock().get("install-broken").cloned(),
        Some("failed".to_string()),
    );
    Ok(())
}

/// What the seed's operators watch on port 8222 (on every node of a cluster).
async fn monitoring(c: &mut Checks, n: &Natrium, js: &Js) -> anyhow::Result<()> {
    if n.monitor().is_none() {
        return Ok(());
    }
    let mut seen = Vec::new();
    let mut ok = true;
    for i in 0..n.monitors().len() {
        let jsz = n.monitor_json_on(i, "/jsz").await?;
        let healthz = n.monitor_json_on(i, "/healthz").await?;
        // On a cluster, every node is in the meta group of all of them.
        let size = jsz["meta_cluster"]["cluster_size"].as_u64().unwrap_or(1);
        ok &= jsz["config"]["store_dir"].is_string()
            && healthz["status"] == "ok"
            && size == n.nodes() as u64;
        seen.push(format!(
            "store_dir {}, meta cluster of {size}, healthz {}",
            jsz["config"]["store_dir"], healthz["status"]
        ));
    }
    say(SYSTEM, format!("/jsz and /healthz: {}", seen.join("; ")));
    c.that("/jsz and /healthz", ok, seen.join("; "));
    // Each stream's figures from the node that leads it (its consumers run there).
    let (dlq_node, events_node) = (
        n.stream_node(js, DLQ).await?,
        n.stream_node(js, EVENTS).await?,
    );
    let dlq = n
        .metric_on(
            dlq_node,
            "natrium_jetstream_stream_messages",
            &[("stream", DLQ)],
        )
        .await?;
    let unacked = poll(Duration::from_secs(5), || async {
        let l = n
            .metric_on(
                events_node,
                "natrium_jetstream_consumer_num_ack_pending",
                &[("stream", EVENTS), ("consumer", "docker-controller")],
            )
            .await?;
        Ok((l == Some(0.0)).then_some(l))
    })
    .await?
    .flatten();
    c.eq(
        "/metrics: dead letters, Docker controller's unacknowledged events",
        (dlq, unacked),
        (Some(1.0), Some(0.0)),
    );
    Ok(())
}
