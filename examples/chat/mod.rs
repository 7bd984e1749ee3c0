//! The chat back end (seed 003): back-end pods with pod-specific subjects and a broadcast
//! fallback, the workflow service as a queue group, request-reply health checks with
//! timeouts, the work-queue stream with a shared durable consumer, and reconnecting through a
//! server restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Request, RequestErrorKind};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::common::{poll, pull, say, wait_until, Checks, Conn, Natrium, Seen};

/// The server configuration this example runs on (also `natrium -c` for `--url`).
pub const CONFIG: &str = include_str!("natrium.conf");

const SYSTEM: &str = "chat";

pub const WORK_QUEUE: &str = "WORKFLOW_REQUESTS";
pub const PROCESSOR: &str = "workflow-processor";
pub const WORKERS_GROUP: &str = "workflow-workers";
/// Response chunks per request (the last one `is_final`).
pub const CHUNKS: usize = 4;
/// The health check's timeout (the seed waits 2 s; a hung pod costs the example this long).
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a request handed to a workflow instance may go unacknowledged before it is
/// delivered again (nats-server's default is 30 s; scaled down, so a request whose ack was lost
/// with a node comes back in seconds; a workflow that runs longer sends progress acks).
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// Which pod holds each session's SSE connection.
const SESSIONS: [(&str, &str); 4] = [
    ("sess_1", "pod-1"),
    ("sess_2", "pod-1"),
    ("sess_3", "pod-2"),
    ("sess_4", "pod-2"),
];
/// Sessions the connection registry (Redis/DB in the seed) has lost: answered by broadcast.
const UNREGISTERED: &str = "sess_4";

/// What the workflow service shares between its instances: the connection registry, and the
/// requests it processed (to prove each was processed once).
#[derive(Default)]
struct Shared {
    registry: Mutex<HashMap<String, String>>,
    processed: Mutex<Vec<String>>,
}

impl Shared {
    fn processed(&self) -> usize {
        self.processed.lock().len()
    }
    fn unique(&self) -> usize {
        self.processed.lock().iter().collect::<HashSet<_>>().len()
    }
}

/// A back-end pod: SSE connections for its sessions, its response subject, the broadcast
/// fallback, and its health responder.
struct Pod {
    id: &'static str,
    conn: Conn,
    /// Chunks routed to this pod's SSE connections, per session.
    routed: Arc<Mutex<HashMap<String, usize>>>,
    /// Broadcast chunks for sessions this pod does not hold.
    ignored: Arc<AtomicUsize>,
    /// While false the health responder hangs (never answers).
    responsive: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pod {
    async fn start(n: &Natrium, id: &'static str) -> anyhow::Result<Pod> {
        let conn = Conn::open(n, id, Some((id, &format!("{id}-secret")))).await?;
        let owned: Arc<HashSet<&str>> = Arc::new(
            SESSIONS
                .iter()
                .filter(|(_, p)| *p == id)
                .map(|(s, _)| *s)
                .collect(),
        );
        let routed = Arc::new(Mutex::new(HashMap::new()));
        let ignored = Arc::new(AtomicUsize::new(0));
        let responsive = Arc::new(AtomicBool::new(true));
        let mut tasks = Vec::new();

        // Pod-specific responses.
        let mut direct = conn
            .client
            .subscribe(format!("chat.pod.{id}.response"))
            .await?;
        let r = routed.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = direct.next().await {
                let chunk: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                let s = chunk["session_id"].as_str().unwrap_or_default().to_string();
                *r.lock().entry(s).or_default() += 1;
            }
        }));
        // The broadcast fallback: every pod hears it, only the session's holder routes it.
        let mut broadcast = conn.client.subscribe("chat.session.*.broadcast").await?;
        let (r, ign, own) = (routed.clone(), ignored.clone(), owned.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(m) = broadcast.next().await {
                let chunk: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                let s = chunk["session_id"].as_str().unwrap_or_default();
                if own.contains(s) {
                    *r.lock().entry(s.to_string()).or_default() += 1;
                } else {
                    ign.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        // Health: request-reply.
        let mut health = conn
            .client
            .subscribe(format!("chat.pod.{id}.health"))
            .await?;
        let (client, up, r) = (conn.client.clone(), responsive.clone(), routed.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(m) = health.next().await {
                let (Some(reply), true) = (m.reply, up.load(Ordering::Relaxed)) else {
                    continue;
                };
                let body = json!({
                    "pod_id": id,
                    "status": "healthy",
                    "active_connections": r.lock().len(),
                });
                let _ = client.publish(reply, body.to_string().into()).await;
            }
        }));
        Ok(Pod {
            id,
            conn,
            routed,
            ignored,
            responsive,
            tasks,
        })
    }

    /// Publishes a workflow request for `session`: core NATS, as the seed's pods do, or, with
    /// `acked`, into the work-queue stream with a PubAck (retried until one comes, the request's
    /// id as `Nats-Msg-Id`), as a pod must on a cluster where the stream's leader can be
    /// between elections.
    async fn request(&self, session: &str, message_id: &str, acked: bool) -> anyhow::Result<()> {
        if acked {
            return publish_acked(self.conn.client.clone(), session, message_id).await;
        }
        let req = request_body(session, message_id);
        self.conn
            .client
            .publish(
                format!("chat.workflow.execute.{session}"),
                req.to_string().into(),
            )
            .await?;
        Ok(())
    }

    fn routed_total(&self) -> usize {
        self.routed.lock().values().sum()
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// How long a pod retries a request the work-queue stream did not acknowledge.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Publishes a request into the work-queue stream and waits for its PubAck, retrying (with the
/// same `Nats-Msg-Id`, so a retry of a stored request is a duplicate) for up to `RETRY_FOR`.
async fn publish_acked(
    client: async_nats::Client,
    session: &str,
    message_id: &str,
) -> anyhow::Result<()> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    let body = request_body(session, message_id).to_string();
    let until = Instant::now() + RETRY_FOR;
    loop {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", message_id);
        let r = match js
            .publish_with_headers(
                format!("chat.workflow.execute.{session}"),
                h,
                body.clone().into(),
            )
            .await
        {
            Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= until => {
                anyhow::bail!("{message_id}: no PubAck within {RETRY_FOR:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A WorkflowRequest of the seed.
fn request_body(session: &str, message_id: &str) -> Value {
    json!({
            "message_id": message_id,
            "session_id": session,
            "user_id": "user_789",
            "message": "What is the weather today?",
            "context": {"ai_provider": "openai", "model": "gpt-4"},
            "correlation_id": format!("corr_{message_id}"),
    })
}

/// How a workflow instance takes requests.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A core queue subscription in `workflow-workers`.
    QueueGroup,
    /// The shared durable pull consumer of the work-queue stream.
    WorkQueue,
}

/// One workflow service instance.
struct Worker {
    conn: Conn,
    processed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Worker {
    async fn start(
        n: &Natrium,
        i: usize,
        mode: Mode,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Worker> {
        let conn = Conn::open(
            n,
            &format!("workflow-{i}"),
            Some(("workflow", "workflow-secret")),
        )
        .await?;
        let client = conn.client.clone();
        let processed = Arc::new(AtomicUsize::new(0));
        let count = processed.clone();
        let task = match mode {
            Mode::QueueGroup => {
                let mut sub = client
                    .queue_subscribe("chat.workflow.execute.*", WORKERS_GROUP.into())
                    .await?;
                tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        if execute(&client, &shared, &m.payload).await {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            }
            Mode::WorkQueue => {
                let js = jetstream::new(client.clone());
                let consumer: consumer::PullConsumer = js
                    .get_stream(WORK_QUEUE)
                    .await?
                    .get_consumer(PROCESSOR)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                let mut messages = pull::messages(n, &consumer).await?;
                tokio::spawn(async move {
                    while let Some(m) = pull::next("workflow", &mut messages).await {
                        if execute(&client, &shared, &m.payload).await && m.ack().await.is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            }
        };
        Ok(Worker {
            conn,
            processed,
            task,
        })
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = self.conn.client.drain().await;
    }
}

/// Runs one workflow request: streams its chunks to the session's pod, or broadcasts them to
/// every pod when the registry does not know the session. Returns whether it ran.
async fn execute(client: &async_nats::Client, shared: &Shared, payload: &[u8]) -> bool {
    let Ok(req) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    let session = req["session_id"].as_str().unwrap_or_default().to_string();
    let pod = shared.registry.lock().get(&session).cloned();
    let subject = match pod {
        Some(pod) => format!("chat.pod.{pod}.response"),
        None => format!("chat.session.{session}.broadcast"),
    };
    for chunk_id in 0..CHUNKS {
        let chunk = json!({
            "session_id": session,
            "message_id": req["message_id"],
            "chunk_id": chunk_id,
            "chunk": if chunk_id + 1 == CHUNKS { "" } else { " weather" },
            "chunk_type": "content",
            "is_final": chunk_id + 1 == CHUNKS,
            "correlation_id": req["correlation_id"],
        });
        if client
            .publish(subject.clone(), chunk.to_string().into())
            .await
            .is_err()
        {
            return false;
        }
    }
    shared
        .processed
        .lock()
        .push(req["message_id"].as_str().unwrap_or_default().to_string());
    true
}

struct Back {
    pods: Vec<Pod>,
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    /// Pods publish requests with PubAcks (on a cluster, once the work-queue stream exists).
    acked: bool,
}

impl Back {
    fn pod(&self, id: &str) -> &Pod {
        self.pods.iter().find(|p| p.id == id).expect("pod")
    }

    async fn start_workers(&mut self, n: &Natrium, mode: Mode) -> anyhow::Result<()> {
        for i in 1..=2 {
            self.workers
                .push(Worker::start(n, i, mode, self.shared.clone()).await?);
        }
        Ok(())
    }

    /// On a cluster, waits until every node knows each pod's subscriptions (its health
    /// subscription is its last, and a connection's subscriptions reach a node in order).
    async fn wait_reachable(&self, n: &Natrium) -> anyhow::Result<()> {
        for p in &self.pods {
            n.wait_interest("$G", &format!("chat.pod.{}.health", p.id))
                .await?;
        }
        Ok(())
    }

    async fn stop_workers(&mut self) {
        for w in self.workers.drain(..) {
            w.stop().await;
        }
    }

    /// Publishes `per_session` requests for every session from the pod that holds it, then
    /// waits until `expect` requests in all were processed.
    async fn send(&self, tag: &str, per_session: usize) -> anyhow::Result<()> {
        for (session, pod) in SESSIONS {
            for k in 0..per_session {
                self.pod(pod)
                    .request(session, &format!("msg_{tag}_{session}_{k}"), self.acked)
                    .await?;
            }
        }
        for p in &self.pods {
            p.conn.client.flush().await?;
        }
        Ok(())
    }

    async fn wait_processed(&self, expect: usize) -> anyhow::Result<()> {
        self.wait_processed_within(expect, Duration::from_secs(10))
            .await
    }

    async fn wait_processed_within(&self, expect: usize, limit: Duration) -> anyhow::Result<()> {
        wait_until(limit, || (self.shared.processed() >= expect).then_some(()))
            .await
            .with_context(|| format!("processed {} of {expect}", self.shared.processed()))
    }

    /// Chunks routed by each pod (pod-1, pod-2) and broadcasts ignored by pod-1.
    fn deliveries(&self) -> (usize, usize, usize) {
        (
            self.pod("pod-1").routed_total(),
            self.pod("pod-2").routed_total(),
            self.pod("pod-1").ignored.load(Ordering::Relaxed),
        )
    }

    /// Waits until the pods have routed (and ignored) what `want` says.
    async fn wait_deliveries(&self, want: (usize, usize, usize)) -> (usize, usize, usize) {
        wait_until(Duration::from_secs(5), || {
            let d = self.deliveries();
            (d == want).then_some(d)
        })
        .await
        .unwrap_or_else(|| self.deliveries())
    }
}

/// Runs the scenario against `n`.
pub async fn run(n: &mut Natrium) -> anyhow::Result<Checks> {
    let mut c = Checks::new(SYSTEM);
    let admin = Conn::open(n, "chat-admin", Some(("chat-admin", "chat-admin-secret"))).await?;
    let js = jetstream::new(admin.client.clone());
    let _ = js.delete_stream(WORK_QUEUE).await;

    let mut back = Back {
        pods: vec![Pod::start(n, "pod-1").await?, Pod::start(n, "pod-2").await?],
        workers: Vec::new(),
        shared: Arc::new(Shared::default()),
        acked: false,
    };
    for (session, pod) in SESSIONS {
        if session != UNREGISTERED {
            back.shared
                .registry
                .lock()
                .insert(session.into(), pod.into());
        }
    }

    back.wait_reachable(n).await?;

    // 1. Core NATS: the workflow service as a queue group, responses to the session's pod,
    //    broadcast when the registry does not know the session.
    back.start_workers(n, Mode::QueueGroup).await?;
    n.wait_interest("$G", "chat.workflow.execute.sess_1")
        .await?;
    let per_session = 5;
    let requests = SESSIONS.len() * per_session;
    back.send("a", per_session).await?;
    back.wait_processed(requests).await?;
    let split: Vec<usize> = back
        .workers
        .iter()
        .map(|w| w.processed.load(Ordering::Relaxed))
        .collect();
    say(
        SYSTEM,
        format!("queue group {WORKERS_GROUP}: instances processed {split:?}"),
    );
    // On a cluster a server hands a queue group's message to a member connected to it when
    // there is one (as nats-server does): which instances share depends on where they landed.
    c.that(
        "queue group: each request processed once, by both instances",
        back.shared.processed() == requests
            && back.shared.unique() == requests
            && (split.iter().all(|k| *k > 0) || n.is_cluster()),
        format!(
            "{} processed, {} unique, split {split:?}",
            back.shared.processed(),
            back.shared.unique()
        ),
    );
    let want = (
        2 * per_session * CHUNKS,
        2 * per_session * CHUNKS,
        per_session * CHUNKS,
    );
    let got = back.wait_deliveries(want).await;
    c.eq(
        "chunks routed to pod-1, to pod-2 (sess_4 by broadcast), broadcasts pod-1 ignored",
        got,
        want,
    );

    // A request published while no workflow instance runs is lost with core NATS.
    back.stop_workers().await;
    back.pod("pod-1")
        .request("sess_1", "msg_lost", false)
        .await?;
    back.pod("pod-1").conn.client.flush().await?;
    back.start_workers(n, Mode::QueueGroup).await?;
    n.wait_interest("$G", "chat.workflow.execute.sess_1")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = !back.shared.processed.lock().iter().any(|m| m == "msg_lost");
    c.that(
        "core NATS: a request sent while no worker runs is lost",
        lost,
        "msg_lost never processed",
    );
    back.stop_workers().await;

    // 2. Health checks, request-reply with a timeout.
    health(&mut c, n, &back).await?;

    // 3. The work-queue stream: requests wait for the workers, each is processed once by one
    //    of the instances sharing the durable consumer, and leaves the stream when acknowledged.
    js.create_stream(stream::Config {
        name: WORK_QUEUE.into(),
        subjects: vec!["chat.workflow.execute.*".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        max_age: Duration::from_secs(24 * 3600),
        storage: stream::StorageType::File,
        // The seed says nothing of replicas; on a cluster, what a 3-node deployment configures.
        num_replicas: n.replicas(),
        ..Default::default()
    })
    .await?
    .create_consumer(consumer::pull::Config {
        durable_name: Some(PROCESSOR.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        ..Default::default()
    })
    .await?;
    back.acked = n.is_cluster();
    let before = back.shared.processed();
    let d0 = back.deliveries();
    let per_session = 3;
    let queued = SESSIONS.len() * per_session;
    back.send("b", per_session).await?;
    let stored = wait_stream(&js, queued as u64).await?;
    c.eq("requests kept while no worker runs", stored, queued as u64);
    back.start_workers(n, Mode::WorkQueue).await?;
    back.wait_processed(before + queued).await?;
    let left = poll(Duration::from_secs(5), || async {
        let m = js
            .get_stream(WORK_QUEUE)
            .await?
            .get_info()
            .await?
            .state
            .messages;
        Ok((m == 0).then_some(m))
    })
    .await?;
    let split: Vec<usize> = back
        .workers
        .iter()
        .map(|w| w.processed.load(Ordering::Relaxed))
        .collect();
    say(
        SYSTEM,
        format!("work queue {WORK_QUEUE}: instances processed {split:?}"),
    );
    c.that(
        "work queue: each request processed once, then removed from the stream",
        back.shared.processed() - before == queued
            && back.shared.unique() == back.shared.processed()
            && left == Some(0),
        format!(
            "{} processed, {} unique in all, stream left {left:?}",
            back.shared.processed() - before,
            back.shared.unique()
        ),
    );
    let want = (
        d0.0 + 2 * per_session * CHUNKS,
        d0.1 + 2 * per_session * CHUNKS,
        d0.2 + per_session * CHUNKS,
    );
    c.eq(
        "work queue: chunks routed",
        back.wait_deliveries(want).await,
        want,
    );

    // 4. Reconnect handling: the server restarts under the running pods and workers; on a
    //    cluster, one node also goes away on its own.
    if n.is_embedded() {
        reconnect(&mut c, n, &back).await?;
        if n.is_cluster() {
            node_loss(&mut c, n, &back, &js).await?;
        }
    } else {
        say(
            SYSTEM,
            "(--url: the server restart is skipped; restart yours by hand to see the reconnects)",
        );
    }

    back.stop_workers().await;
    for p in back.pods {
        p.stop();
    }
    Ok(c)
}

async fn wait_stream(js: &jetstream::Context, count: u64) -> anyhow::Result<u64> {
    let got = poll(Duration::from_secs(5), || async {
        let m = js
            .get_stream(WORK_QUEUE)
            .await?
            .get_info()
            .await?
            .state
            .messages;
        Ok((m >= count).then_some(m))
    })
    .await?;
    got.context("requests did not reach the work-queue stream")
}

/// The monitoring service asks each pod for its health with a timeout.
async fn health(c: &mut Checks, n: &Natrium, back: &Back) -> anyhow::Result<()> {
    let mon = Conn::open(n, "monitoring", Some(("monitoring", "monitoring-secret"))).await?;
    let ask = |pod: &str| {
        let client = mon.client.clone();
        let subject = format!("chat.pod.{pod}.health");
        async move {
            let t = Instant::now();
            let r = client
                .send_request(subject, Request::new().timeout(Some(HEALTH_TIMEOUT)))
                .await;
            (r, t.elapsed())
        }
    };
    let (ok, _) = ask("pod-1").await;
    let body: Value = match &ok {
        Ok(m) => serde_json::from_slice(&m.payload)?,
        Err(_) => Value::Null,
    };
    say(SYSTEM, format!("health pod-1: {body}"));
    c.eq(
        "healthy pod answers",
        body["status"].clone(),
        json!("healthy"),
    );

    back.pod("pod-2").responsive.store(false, Ordering::Relaxed);
    let (hung, waited) = ask("pod-2").await;
    back.pod("pod-2").responsive.store(true, Ordering::Relaxed);
    let hung = hung.err().map(|e| e.kind());
    say(
        SYSTEM,
        format!("health pod-2 (hung): {hung:?} after {waited:?}"),
    );
    c.that(
        "hung pod times out",
        hung == Some(RequestErrorKind::TimedOut) && waited >= HEALTH_TIMEOUT,
        format!("{hung:?} after {waited:?}"),
    );

    let (gone, _) = ask("pod-9").await;
    let gone = gone.err().map(|e| e.kind());
    say(SYSTEM, format!("health pod-9 (not running): {gone:?}"));
    c.eq(
        "missing pod: no responders",
        gone,
        Some(RequestErrorKind::NoResponders),
    );
    Ok(())
}

/// Restarts the embedded server: every client reconnects on its own and resubscribes;
/// requests published during the outage are buffered by the client and processed after; the
/// work-queue stream and its consumer survive.
async fn reconnect(c: &mut Checks, n: &mut Natrium, back: &Back) -> anyhow::Result<()> {
    let before = back.shared.processed();
    let d0 = back.deliveries();
    say(SYSTEM, "stopping the server ...");
    n.stop().await?;
    // Published while the server is down: the client keeps them until it reconnects (on a
    // cluster the pod also waits for their PubAcks, retrying, as the stream's leader is elected
    // again after the restart: a core publish arriving before that is lost).
    let mut outage = Vec::new();
    for k in 0..2 {
        let id = format!("msg_outage_{k}");
        if back.acked {
            let client = back.pod("pod-1").conn.client.clone();
            outage.push(tokio::spawn(async move {
                publish_acked(client, "sess_1", &id).await
            }));
        } else {
            back.pod("pod-1").request("sess_1", &id, false).await?;
        }
    }
    n.start_again().await?;
    for t in outage {
        t.await??;
    }
    say(SYSTEM, "... started again");
    for p in &back.pods {
        p.conn.wait_connected().await?;
    }
    for w in &back.workers {
        w.conn.wait_connected().await?;
    }
    back.wait_reachable(n).await?;
    let drops: Vec<usize> = back
        .pods
        .iter()
        .map(|p| p.conn.count(&Seen::Disconnected))
        .collect();
    c.that(
        "pods saw the disconnect and reconnected",
        drops.iter().all(|d| *d >= 1),
        format!("disconnects {drops:?}"),
    );
    back.send("c", 1).await?;
    let expect = 2 + SESSIONS.len();
    back.wait_processed(before + expect).await?;
    let outage_done = back
        .shared
        .processed
        .lock()
        .iter()
        .filter(|m| m.starts_with("msg_outage_"))
        .count();
    c.eq(
        "requests published during the outage processed",
        outage_done,
        2,
    );
    let want = (d0.0 + (2 + 2) * CHUNKS, d0.1 + 2 * CHUNKS, d0.2 + CHUNKS);
    c.eq(
        "after the restart: chunks routed",
        back.wait_deliveries(want).await,
        want,
    );
    Ok(())
}

/// The work-queue stream's leader and its followers as (leader, [(follower, current)]), asked
/// through `js` (`None` while the answer does not come, as during a reconnect).
async fn work_queue_peers(
    js: &jetstream::Context,
) -> Option<(Option<String>, Vec<(String, bool)>)> {
    let info = js
        .get_stream(WORK_QUEUE)
        .await
        .ok()?
        .get_info()
        .await
        .ok()?;
    let cl = info.cluster?;
    Some((
        cl.leader,
        cl.replicas
            .into_iter()
            .map(|p| (p.name, p.current))
            .collect(),
    ))
}

/// On an embedded cluster: the node leading the work-queue stream goes away while the pods
/// publish and the workers (two instances on the shared durable consumer) process; every
/// request is processed, the work queue ends empty, the stream gets a new leader, and the node
/// that comes back is current again.
async fn node_loss(
    c: &mut Checks,
    n: &mut Natrium,
    back: &Back,
    js: &jetstream::Context,
) -> anyhow::Result<()> {
    let old = work_queue_peers(js)
        .await
        .and_then(|p| p.0)
        .context("the work queue has no leader")?;
    let node = n
        .node_index(&old)
        .with_context(|| format!("no node named {old}"))?;
    let before = back.shared.processed();
    back.send("d", 2).await?;
    say(
        SYSTEM,
        format!("stopping {old}, the leader of {WORK_QUEUE} ..."),
    );
    n.stop_node(node).await?;
    back.send("e", 3).await?;
    back.wait_reachable(n).await?;
    let sent = SESSIONS.len() * (2 + 3);
    back.wait_processed_within(before + sent, Duration::from_secs(30))
        .await?;
    let new = poll(Duration::from_secs(20), || async {
        Ok(work_queue_peers(js)
            .await
            .and_then(|p| p.0)
            .filter(|l| *l != old))
    })
    .await?;
    // An ack lost with the node leaves its request to be delivered again after ACK_WAIT.
    let left = poll(ACK_WAIT * 3, || async {
        let m = match js.get_stream(WORK_QUEUE).await {
            Ok(s) => s.get_info().await.ok().map(|i| i.state.messages),
            Err(_) => None,
        };
        Ok(m.filter(|m| *m == 0))
    })
    .await?;
    let state = match js.get_stream(WORK_QUEUE).await {
        Ok(s) => {
            let i = s.get_info().await?;
            let ci = s.consumer_info(PROCESSOR).await?;
            format!(
                "{} messages (first {}, last {}); {PROCESSOR}: ack floor {}, delivered {}, num_pending {}, num_ack_pending {}",
                i.state.messages,
                i.state.first_sequence,
                i.state.last_sequence,
                ci.ack_floor.stream_sequence,
                ci.delivered.stream_sequence,
                ci.num_pending,
                ci.num_ack_pending
            )
        }
        Err(e) => e.to_string(),
    };
    say(SYSTEM, format!("{WORK_QUEUE} after the loss: {state}"));
    let processed = back.shared.processed.lock().clone();
    let missing: Vec<String> = SESSIONS
        .iter()
        .flat_map(|(s, _)| {
            (0..2)
                .map(move |k| format!("msg_d_{s}_{k}"))
                .chain((0..3).map(move |k| format!("msg_e_{s}_{k}")))
        })
        .filter(|id| !processed.contains(id))
        .collect();
    let again = processed.len() - before - (sent - missing.len());
    say(
        SYSTEM,
        format!("{WORK_QUEUE}: new leader {new:?}; {sent} requests sent, {} missing, {again} processed again (redelivered across the loss)", missing.len()),
    );
    c.that(
        "node loss: every request processed, the work queue empty after",
        missing.is_empty() && left == Some(0),
        format!("missing {missing:?}, processed again {again}, stream left {left:?}"),
    );
    n.start_node(node).await?;
    let back_again = poll(Duration::from_secs(20), || async {
        Ok(work_queue_peers(js)
            .await
            .filter(|(_, f)| f.iter().any(|(name, current)| *name == old && *current)))
    })
    .await?;
    say(SYSTEM, format!("{old} back: {back_again:?}"));
    c.that(
        "work queue: 3 replicas, a new leader, the returning node current again",
        new.is_some() && back_again.as_ref().is_some_and(|(_, f)| f.len() == 2),
        format!("old leader {old}, new {new:?}, after the return {back_again:?}"),
    );
    Ok(())
}
