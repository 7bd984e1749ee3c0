//! One consumer: its delivery cursor, pending acks, redelivery schedule and waiting pull requests,
//! driven by one task that wakes on new messages, acks, pull requests and timers. State changes are
//! persisted (fsynced) before the deliveries and ack confirmations they cause leave the server, so
//! an acknowledged message is never redelivered as new after a crash.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use natrium_store::{DocFile, StoreError, StoredMsg, StreamStore};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::consumer_config::{AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy};
use super::rfc3339;
use super::stream::Stream;
use crate::router::{InternalClient, Msg};
use crate::util::fs::write_atomic;

/// Deliveries decided per tick; the task publishes them and comes back for more.
const TICK_MSGS: usize = 1024;

/// A message handed to a delivery or inbox subject after the state that records it is durable.
struct Outgoing {
    route: Arc<str>,
    subject: bytes::Bytes,
    reply: Option<String>,
    headers: Option<bytes::Bytes>,
    payload: bytes::Bytes,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Pending {
    dseq: u64,
    /// When the message is due for redelivery (not persisted; reset to now + ack_wait on restart).
    #[serde(skip, default = "Instant::now")]
    deadline: Instant,
}

#[derive(Debug)]
struct PullRequest {
    reply: Arc<str>,
    batch: u64,
    max_bytes: u64,
    expires: Option<Instant>,
    no_wait: bool,
    heartbeat: Option<Duration>,
    next_heartbeat: Option<Instant>,
    delivered: u64,
}

/// Pull request options (`$JS.API.CONSUMER.MSG.NEXT` body or `+NXT` argument).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NextRequest {
    batch: u64,
    expires: u64,
    no_wait: bool,
    max_bytes: u64,
    idle_heartbeat: u64,
}

/// What is persisted of a consumer's progress.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    sseq: u64,
    dseq: u64,
    floor_s: u64,
    floor_d: u64,
    pending: Vec<(u64, u64)>,
    deliveries: Vec<(u64, u64)>,
    start_list: Vec<u64>,
}

#[derive(Debug)]
struct State {
    /// Stream sequence of the last message delivered for the first time.
    sseq: u64,
    /// Consumer sequence of the last delivery.
    dseq: u64,
    floor_s: u64,
    floor_d: u64,
    pending: BTreeMap<u64, Pending>,
    /// Deliveries so far of each pending message.
    deliveries: FxHashMap<u64, u64>,
    /// Pending messages due for redelivery, by stream sequence.
    redeliver: BTreeSet<u64>,
    /// For `last_per_subject`: the sequences to deliver before continuing after `sseq`.
    start_list: VecDeque<u64>,
    waiting: VecDeque<PullRequest>,
    num_pending: u64,
    last_active: Instant,
    last_delivery: Instant,
    /// Earliest time the next delivery may leave (rate limit, original replay).
    not_before: Option<Instant>,
    /// Original replay: (timestamp of the last message sent, when it was sent).
    replay_mark: Option<(i64, Instant)>,
    delivered_since_fc: u64,
    fc_seq: u64,
    dirty: bool,
    /// Deliveries were made since the state was last synced: the next save is fsynced before
    /// they leave (a delivery is never forgotten, so no message comes back as new after a crash).
    unsynced_deliveries: bool,
    /// A tick stopped at `TICK_MSGS` with more to deliver: run another after publishing.
    more: bool,
    sync_replies: Vec<String>,
    paused_until: Option<SystemTime>,
    /// Messages that ran out of deliveries during a tick: (stream seq, deliveries), handled
    /// (advisory, dead letter, retention) after the state lock is released.
    exhausted: Vec<(u64, u64)>,
    /// Messages acked during a tick, for retention once the lock is released.
    acked: Vec<u64>,
}

pub(crate) struct Consumer {
    pub name: String,
    pub stream_name: String,
    config: RwLock<ConsumerConfig>,
    pub created: SystemTime,
    store: Arc<dyn StreamStore>,
    stream: Weak<Stream>,
    client: InternalClient,
    state: Mutex<State>,
    wake: Notify,
    stop: Notify,
    stopped: AtomicBool,
    /// Where meta.json and the state slots live; `None` for consumers that are not persisted.
    dir: Option<PathBuf>,
    /// The state document (`state.0`/`state.1`), opened at the first save.
    state_file: Arc<Mutex<Option<DocFile>>>,
    /// The stream's default `dead_letter_subject` (from its metadata).
    stream_dlq: Option<String>,
    work_queue: bool,
    /// The ack subscription (a handler run in the acking client's task).
    acks: Mutex<Option<crate::router::internal::HandlerSubscription>>,
}

fn status(code: &str, extra: &[(&str, String)]) -> Vec<u8> {
    let mut h = format!("NATS/1.0 {code}\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

impl Consumer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        stream: &Arc<Stream>,
        config: ConsumerConfig,
        created: SystemTime,
        dir: Option<PathBuf>,
        saved: Option<Vec<u8>>,
    ) -> Arc<Consumer> {
        let store = stream.store.clone();
        let scfg = stream.config();
        let mut state = State {
            sseq: 0,
            dseq: 0,
            floor_s: 0,
            floor_d: 0,
            pending: BTreeMap::new(),
            deliveries: FxHashMap::default(),
            redeliver: BTreeSet::new(),
            start_list: VecDeque::new(),
            waiting: VecDeque::new(),
            num_pending: 0,
            last_active: Instant::now(),
            last_delivery: Instant::now(),
            not_before: None,
            replay_mark: None,
            delivered_since_fc: 0,
            fc_seq: 0,
            dirty: false,
            unsynced_deliveries: false,
            more: false,
            sync_replies: Vec::new(),
            paused_until: config.pause_until.as_deref().and_then(parse_time),
            exhausted: Vec::new(),
            acked: Vec::new(),
        };
        let restored = saved.and_then(|b| serde_json::from_slice::<SavedState>(&b).ok());
        match restored {
            Some(s) => {
                let deadline = Instant::now() + config.ack_wait();
                state.sseq = s.sseq;
                state.dseq = s.dseq;
                state.floor_s = s.floor_s;
                state.floor_d = s.floor_d;
                state.pending = s
                    .pending
                    .into_iter()
                    .map(|(sseq, dseq)| (sseq, Pending { dseq, deadline }))
                    .collect();
                state.deliveries = s.deliveries.into_iter().collect();
                state.start_list = s.start_list.into();
            }
            None => init_cursor(&mut state, &config, store.as_ref()),
        }
        let filters = config.filters();
        state.num_pending =
            count_pending(store.as_ref(), &filters, state.sseq) + state.start_list.len() as u64;
        let stream_dlq = scfg
            .metadata
            .as_ref()
            .and_then(|m| m.get("dead_letter_subject").cloned());
        Arc::new(Consumer {
            name,
            stream_name: stream.name.clone(),
            config: RwLock::new(config),
            created,
            store,
            stream: Arc::downgrade(stream),
            client: stream.client().clone(),
            state: Mutex::new(state),
            wake: Notify::new(),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            dir,
            state_file: Arc::new(Mutex::new(None)),
            stream_dlq,
            work_queue: scfg.retention == super::config::Retention::WorkQueue,
            acks: Mutex::new(None),
        })
    }

    pub(crate) fn config(&self) -> ConsumerConfig {
        self.config.read().clone()
    }

    pub(crate) fn set_config(&self, c: ConsumerConfig) {
        self.state.lock().paused_until = c.pause_until.as_deref().and_then(parse_time);
        *self.config.write() = c;
        self.wake.notify_one();
    }

    /// Subscribes to its ack subject and starts its task. Acks are applied in the acking
    /// client's own task, so anything that client sends afterwards (a consumer info request, say)
    /// sees them, as with nats-server.
    pub(crate) fn start(self: &Arc<Self>) -> Result<(), super::errors::ApiError> {
        let me = Arc::downgrade(self);
        let acks = self
            .client
            .subscribe_handler(
                &format!("$JS.ACK.{}.{}.>", self.stream_name, self.name),
                Box::new(move |subject, reply, payload| {
                    if let Some(c) = me.upgrade() {
                        c.process_ack(subject, reply, payload);
                    }
                }),
            )
            .map_err(|e| super::errors::ApiError::consumer_create(e.to_string()))?;
        *self.acks.lock() = Some(acks);
        tokio::spawn(self.clone().run());
        Ok(())
    }

    pub(crate) fn shutdown(&self) {
        self.acks.lock().take();
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_one();
        self.wake.notify_one();
    }

    /// Stops it and tells waiting pull requests it is gone.
    pub(crate) fn delete(&self) {
        let waiting: Vec<PullRequest> = self.state.lock().waiting.drain(..).collect();
        for r in waiting {
            self.publish_status(&r.reply, &status("409 Consumer Deleted", &[]));
        }
        self.shutdown();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn matches_filter(&self, subject: &[u8]) -> bool {
        let c = self.config.read();
        match (&c.filter_subject, c.filter_subjects.is_empty()) {
            (Some(f), _) => natrium_subjects::matches(f.as_bytes(), subject),
            (None, true) => true,
            (None, false) => c
                .filter_subjects
                .iter()
                .any(|f| natrium_subjects::matches(f.as_bytes(), subject)),
        }
    }

    /// Called by the stream after it stored a message.
    pub(crate) fn on_new_message(&self, subject: &[u8]) {
        if self.matches_filter(subject) {
            self.state.lock().num_pending += 1;
            self.wake.notify_one();
        }
    }

    /// Called after purges and other bulk removals: recounts what is pending.
    pub(crate) fn recount(&self) {
        let filters = self.config.read().filters();
        let mut st = self.state.lock();
        let start = st.start_list.len() as u64;
        st.num_pending = count_pending(self.store.as_ref(), &filters, st.sseq) + start;
        let first = self.store.state().first_seq;
        // Pending messages that are gone can no longer be acked or redelivered.
        let gone: Vec<u64> = st.pending.keys().copied().filter(|s| *s < first).collect();
        for s in gone {
            st.pending.remove(&s);
            st.redeliver.remove(&s);
            st.deliveries.remove(&s);
        }
        update_floor(&mut st);
        st.dirty = true;
        drop(st);
        self.wake.notify_one();
    }

    /// Whether this consumer still needs message `seq` on `subject` (interest retention).
    pub(crate) fn needs(&self, seq: u64, subject: &[u8]) -> bool {
        if !self.matches_filter(subject) {
            return false;
        }
        let st = self.state.lock();
        if seq <= st.floor_s {
            return false;
        }
        seq > st.sseq || st.pending.contains_key(&seq) || st.start_list.contains(&seq)
    }

    /// Queues a pull request (`$JS.API.CONSUMER.MSG.NEXT`).
    pub(crate) fn pull(&self, reply: Option<&str>, payload: &[u8]) {
        let Some(reply) = reply else { return };
        let req = parse_next(payload);
        let cfg = self.config.read().clone();
        if !cfg.is_pull() {
            return self.publish_status(reply, &status("409 Consumer is push based", &[]));
        }
        let batch = req.batch.max(1);
        if cfg.max_batch > 0 && batch > cfg.max_batch as u64 {
            return self.publish_status(
                reply,
                &status(
                    &format!("409 Exceeded MaxRequestBatch of {}", cfg.max_batch),
                    &[],
                ),
            );
        }
        if cfg.max_bytes > 0 && req.max_bytes > cfg.max_bytes as u64 {
            return self.publish_status(
                reply,
                &status(
                    &format!("409 Exceeded MaxRequestMaxBytes of {}", cfg.max_bytes),
                    &[],
                ),
            );
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        st.last_active = now;
        if st.waiting.len() as i64 >= cfg.max_waiting.max(1) {
            drop(st);
            return self.publish_status(reply, &status("409 Exceeded MaxWaiting", &[]));
        }
        let heartbeat = (req.idle_heartbeat > 0).then(|| Duration::from_nanos(req.idle_heartbeat));
        st.waiting.push_back(PullRequest {
            reply: Arc::from(reply),
            batch,
            max_bytes: req.max_bytes,
            expires: (req.expires > 0).then(|| now + Duration::from_nanos(req.expires)),
            no_wait: req.no_wait,
            heartbeat,
            next_heartbeat: heartbeat.map(|h| now + h),
            delivered: 0,
        });
        drop(st);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.stop.notified() => return,
                _ = sleep_until(deadline) => {}
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            if self.expired_by_inactivity() {
                if let Some(stream) = self.stream.upgrade() {
                    stream.remove_consumer(&self.name);
                }
                self.delete();
                if let Some(stream) = self.stream.upgrade() {
                    stream.release_unneeded();
                }
                return;
            }
            let out = self.tick();
            self.persist().await;
            let (replies, exhausted, acked) = {
                let mut st = self.state.lock();
                (
                    std::mem::take(&mut st.sync_replies),
                    std::mem::take(&mut st.exhausted),
                    std::mem::take(&mut st.acked),
                )
            };
            let stream = self.stream.upgrade();
            for (seq, delivered) in exhausted {
                self.advisory(
                    "MAX_DELIVERIES",
                    json!({"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream_seq": seq, "deliveries": delivered}),
                );
                self.dead_letter(seq, delivered, "max_deliveries");
                if let Some(s) = &stream {
                    s.acked(seq, self.work_queue);
                }
            }
            if let Some(s) = &stream {
                for seq in acked {
                    s.acked(seq, self.work_queue);
                }
            }
            for r in replies {
                let _ = self.client.publish(&r, None, None, b"");
            }
            // Consecutive messages to one route (a push consumer's subject, one pull request's
            // inbox) go as one batch.
            let mut lagging = Vec::new();
            for run in out.chunk_by(|a, b| a.route == b.route) {
                let (_, lag) = self.client.publish_batch(
                    &run[0].route,
                    run.iter().map(|o| Msg {
                        subject: &o.subject,
                        reply: o.reply.as_deref().map(str::as_bytes),
                        headers: o.headers.as_deref(),
                        payload: &o.payload,
                    }),
                );
                lagging.extend(lag);
            }
            // A receiver that fell behind is waited for (while it makes progress) before more.
            for l in lagging {
                l.wait().await;
            }
            if std::mem::take(&mut self.state.lock().more) {
                self.wake.notify_one();
                // Let the receivers' writers send this batch before the next one is made.
                tokio::task::yield_now().await;
            }
        }
    }

    fn expired_by_inactivity(&self) -> bool {
        let cfg = self.config.read();
        if cfg.is_durable() || cfg.inactive_threshold <= 0 {
            return false;
        }
        let threshold = Duration::from_nanos(cfg.inactive_threshold as u64);
        let mut st = self.state.lock();
        let active = match &cfg.deliver_subject {
            Some(d) => self.client.has_interest(d),
            None => !st.waiting.is_empty(),
        };
        if active {
            st.last_active = Instant::now();
            return false;
        }
        st.last_active.elapsed() > threshold
    }

    /// The earliest timer the task must wake for.
    fn next_deadline(&self) -> Option<Instant> {
        let cfg = self.config.read();
        let st = self.state.lock();
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some((_, p)) = st
            .pending
            .iter()
            .filter(|(s, _)| !st.redeliver.contains(s))
            .min_by_key(|(_, p)| p.deadline)
        {
            min(p.deadline);
        }
        for r in &st.waiting {
            if let Some(e) = r.expires {
                min(e);
            }
            if let Some(h) = r.next_heartbeat {
                min(h);
            }
        }
        if let Some(nb) = st.not_before {
            min(nb);
        }
        if cfg.idle_heartbeat > 0 {
            min(st.last_delivery + Duration::from_nanos(cfg.idle_heartbeat as u64));
        }
        if !cfg.is_durable() && cfg.inactive_threshold > 0 {
            min(Instant::now()
                + Duration::from_nanos(cfg.inactive_threshold as u64).min(Duration::from_secs(1)));
        }
        if cfg.deliver_subject.is_some() {
            // Push consumers poll for interest appearing on their delivery subject.
            min(Instant::now() + Duration::from_millis(100));
        }
        if let Some(p) = st.paused_until {
            if let Ok(d) = p.duration_since(SystemTime::now()) {
                min(Instant::now() + d);
            }
        }
        t
    }

    fn publish_status(&self, reply: &str, hdr: &[u8]) {
        let _ = self.client.publish(reply, None, Some(hdr), b"");
    }

    fn process_ack(&self, subject: &[u8], reply: Option<&[u8]>, body: &[u8]) {
        // $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        let Some(sseq) = subject
            .split(|c| *c == b'.')
            .nth(5)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        let reply = reply.map(|r| String::from_utf8_lossy(r).into_owned());
        let (verb, arg) = match body.iter().position(|c| *c == b' ') {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, &b""[..]),
        };
        let cfg = self.config.read().clone();
        let mut st = self.state.lock();
        st.last_active = Instant::now();
        match verb {
            b"" | b"+ACK" => {
                self.ack(&mut st, &cfg, sseq);
                if let Some(r) = &reply {
                    st.sync_replies.push(r.clone());
                }
            }
            b"+NXT" => {
                self.ack(&mut st, &cfg, sseq);
                if let Some(r) = reply {
                    drop(st);
                    self.pull(Some(&r), arg);
                }
            }
            b"-NAK" => {
                let delay = serde_json::from_slice::<Value>(arg)
                    .ok()
                    .and_then(|v| v["delay"].as_u64())
                    .map(Duration::from_nanos);
                if let Some(p) = st.pending.get_mut(&sseq) {
                    match delay {
                        Some(d) if !d.is_zero() => p.deadline = Instant::now() + d,
                        _ => {
                            st.redeliver.insert(sseq);
                        }
                    }
                    let deliveries = st.deliveries.get(&sseq).copied().unwrap_or(1);
                    let dseq = st.pending.get(&sseq).map_or(0, |p| p.dseq);
                    drop(st);
                    self.advisory(
                        "MSG_NAKED",
                        json!({"type": "io.nats.jetstream.advisory.v1.nak", "consumer_seq": dseq, "stream_seq": sseq, "deliveries": deliveries}),
                    );
                    self.wake.notify_one();
                }
            }
            b"+WPI" => {
                if let Some(p) = st.pending.get_mut(&sseq) {
                    p.deadline = Instant::now() + cfg.ack_wait();
                }
            }
            b"+TERM" => {
                if let Some(p) = st.pending.remove(&sseq) {
                    st.redeliver.remove(&sseq);
                    let deliveries = st.deliveries.remove(&sseq).unwrap_or(1);
                    update_floor(&mut st);
                    st.dirty = true;
                    if let Some(r) = &reply {
                        st.sync_replies.push(r.clone());
                    }
                    drop(st);
                    let reason = String::from_utf8_lossy(arg).trim().to_string();
                    self.advisory(
                        "MSG_TERMINATED",
                        json!({"type": "io.nats.jetstream.advisory.v1.terminated", "consumer_seq": p.dseq, "stream_seq": sseq, "deliveries": deliveries, "reason": reason}),
                    );
                    let why = if reason.is_empty() {
                        "terminated".to_string()
                    } else {
                        format!("terminated: {reason}")
                    };
                    self.dead_letter(sseq, deliveries, &why);
                    self.after_done(sseq);
                }
            }
            _ => {}
        }
    }

    /// Records an acknowledgement (all up to `sseq` under `AckPolicy::All`).
    fn ack(&self, st: &mut State, cfg: &ConsumerConfig, sseq: u64) {
        let acked: Vec<u64> = match cfg.ack_policy {
            AckPolicy::All => st.pending.range(..=sseq).map(|(s, _)| *s).collect(),
            _ => st
                .pending
                .contains_key(&sseq)
                .then_some(sseq)
                .into_iter()
                .collect(),
        };
        for s in &acked {
            st.pending.remove(s);
            st.redeliver.remove(s);
            st.deliveries.remove(s);
        }
        if !acked.is_empty() {
            update_floor(st);
            st.dirty = true;
            // Retention runs after the lock is released (it asks every consumer, this one too).
            st.acked.extend(acked);
            self.wake.notify_one();
        }
    }

    /// A message this consumer is done with without an ack (terminated, max deliveries).
    fn after_done(&self, sseq: u64) {
        if let Some(stream) = self.stream.upgrade() {
            stream.acked(sseq, self.work_queue);
        }
        self.wake.notify_one();
    }

    fn advisory(&self, kind: &str, mut body: Value) {
        body["id"] = json!(format!("{:016x}", fastrand::u64(..)));
        body["timestamp"] = json!(rfc3339(SystemTime::now()));
        body["stream"] = json!(self.stream_name);
        body["consumer"] = json!(self.name);
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.{kind}.{}.{}",
            self.stream_name, self.name
        );
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    /// Publishes a copy of message `sseq` to the dead-letter subject, when one is configured.
    fn dead_letter(&self, sseq: u64, deliveries: u64, reason: &str) {
        let cfg = self.config.read();
        let template = cfg
            .metadata
            .as_ref()
            .and_then(|m| m.get("dead_letter_subject").cloned())
            .or_else(|| self.stream_dlq.clone());
        drop(cfg);
        let Some(template) = template else { return };
        let Ok(msg) = self.store.load_msg(sseq) else {
            return;
        };
        let subject = template
            .replace("{stream}", &self.stream_name)
            .replace("{consumer}", &self.name)
            .replace("{subject}", &String::from_utf8_lossy(&msg.subject));
        let mut h = match &msg.headers {
            Some(orig) => {
                let text = String::from_utf8_lossy(orig);
                let body = text.trim_end_matches("\r\n");
                format!("{body}\r\n")
            }
            None => "NATS/1.0\r\n".to_string(),
        };
        h.push_str(&format!(
            "Nats-DLQ-Stream: {}\r\nNats-DLQ-Consumer: {}\r\nNats-DLQ-Sequence: {sseq}\r\nNats-DLQ-Deliveries: {deliveries}\r\nNats-DLQ-Reason: {reason}\r\n\r\n",
            self.stream_name, self.name
        ));
        if self
            .client
            .publish(&subject, None, Some(h.as_bytes()), &msg.payload)
            .is_err()
        {
            tracing::warn!(
                "consumer {}/{}: dead-letter subject {subject:?} is not a valid subject",
                self.stream_name,
                self.name
            );
        }
    }

    /// Decides what to deliver now; updates state; returns the messages to publish once persisted.
    fn tick(&self) -> Vec<Outgoing> {
        let cfg = self.config.read().clone();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut st = self.state.lock();
        // Ack deadlines that passed: due for redelivery.
        if cfg.ack_policy != AckPolicy::None {
            let due: Vec<u64> = st
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(s, _)| *s)
                .collect();
            for s in due {
                let deliveries = st.deliveries.get(&s).copied().unwrap_or(1);
                if cfg.max_deliver > 0 && deliveries as i64 >= cfg.max_deliver {
                    // Its last allowed delivery went unacknowledged: it is done.
                    st.pending.remove(&s);
                    st.deliveries.remove(&s);
                    st.exhausted.push((s, deliveries));
                    update_floor(&mut st);
                    st.dirty = true;
                    continue;
                }
                st.redeliver.insert(s);
                if let Some(p) = st.pending.get_mut(&s) {
                    p.deadline = now + Duration::from_secs(3600);
                }
            }
        }
        // Pull requests that expired or need a heartbeat.
        let mut i = 0;
        while i < st.waiting.len() {
            let r = &mut st.waiting[i];
            if r.expires.is_some_and(|e| e <= now) {
                let r = st.waiting.remove(i).expect("index checked");
                let pending = st.num_pending;
                out.push(status_msg(
                    &r.reply,
                    status(
                        "408 Request Timeout",
                        &[
                            ("Nats-Pending-Messages", pending.to_string()),
                            ("Nats-Pending-Bytes", "0".into()),
                        ],
                    ),
                ));
                continue;
            }
            if let (Some(h), Some(nh)) = (r.heartbeat, r.next_heartbeat) {
                if nh <= now {
                    r.next_heartbeat = Some(now + h);
                    let reply = r.reply.clone();
                    out.push(status_msg(&reply, status("100 Idle Heartbeat", &[])));
                }
            }
            i += 1;
        }
        let paused = st.paused_until.is_some_and(|p| p > SystemTime::now());
        if !paused {
            self.deliver(&mut st, &cfg, now, &mut out);
        }
        // Idle heartbeat for push consumers.
        if cfg.idle_heartbeat > 0 {
            if let Some(d) = &cfg.deliver_subject {
                if now.duration_since(st.last_delivery)
                    >= Duration::from_nanos(cfg.idle_heartbeat as u64)
                {
                    st.last_delivery = now;
                    let hdr = status(
                        "100 Idle Heartbeat",
                        &[
                            ("Nats-Last-Consumer", st.dseq.to_string()),
                            ("Nats-Last-Stream", st.sseq.to_string()),
                        ],
                    );
                    out.push(status_msg(d, hdr));
                }
            }
        }
        out
    }

    fn deliver(&self, st: &mut State, cfg: &ConsumerConfig, now: Instant, out: &mut Vec<Outgoing>) {
        let filters = cfg.filters();
        // Push: interest in the delivery subject, checked once per tick.
        let push_route: Option<Arc<str>> = match &cfg.deliver_subject {
            Some(d) if !self.client.has_interest(d) => return,
            Some(d) => Some(Arc::from(d.as_str())),
            None => None,
        };
        // `$JS.ACK.<stream>.<consumer>.`, completed per delivery.
        let ack_prefix = format!("$JS.ACK.{}.{}.", self.stream_name, self.name);
        let mut sent = 0;
        loop {
            if sent == TICK_MSGS {
                // Publish these first (and let a lagging receiver catch up); the task comes
                // straight back for the rest.
                st.more = true;
                return;
            }
            if cfg.ack_policy != AckPolicy::None
                && cfg.max_ack_pending > 0
                && st.pending.len() as i64 >= cfg.max_ack_pending
            {
                // Redeliveries of already-pending messages may still go.
                if st.redeliver.is_empty() {
                    return;
                }
            }
            if st.not_before.is_some_and(|t| t > now) {
                return;
            }
            // Where to?
            let route = match &push_route {
                Some(d) => d.clone(),
                None => {
                    let Some(r) = st.waiting.front() else { return };
                    r.reply.clone()
                }
            };
            // What?
            let (msg, redelivery) = match self.next_message(st, &filters) {
                Some(x) => x,
                None => {
                    // Nothing to deliver: no_wait requests end here.
                    if cfg.is_pull() {
                        if let Some(r) = st.waiting.front() {
                            if r.no_wait {
                                let r = st.waiting.pop_front().expect("front exists");
                                let hdr = if r.delivered == 0 {
                                    status("404 No Messages", &[])
                                } else {
                                    status(
                                        "408 Request Timeout",
                                        &[
                                            ("Nats-Pending-Messages", "0".into()),
                                            ("Nats-Pending-Bytes", "0".into()),
                                        ],
                                    )
                                };
                                out.push(status_msg(&r.reply, hdr));
                                continue;
                            }
                        }
                    }
                    return;
                }
            };
            let size =
                msg.payload.len() + msg.headers.as_ref().map_or(0, |h| h.len()) + msg.subject.len();
            if let Some(r) = st.waiting.front() {
                if cfg.is_pull() && r.max_bytes > 0 && size as u64 > r.max_bytes {
                    let r = st.waiting.pop_front().expect("front exists");
                    out.push(status_msg(
                        &r.reply,
                        status("409 Message Size Exceeds MaxBytes", &[]),
                    ));
                    if redelivery {
                        st.redeliver.insert(msg.seq);
                    } else {
                        // Not delivered after all: step the cursor back.
                        st.sseq = msg.seq - 1;
                        st.num_pending += 1;
                    }
                    continue;
                }
            }
            let acked = cfg.ack_policy != AckPolicy::None;
            let deliveries = if acked {
                st.deliveries.get(&msg.seq).copied().unwrap_or(0) + 1
            } else {
                1
            };
            if cfg.max_deliver > 0 && deliveries as i64 > cfg.max_deliver {
                // Exhausted: no more deliveries; advisory and dead letter.
                st.pending.remove(&msg.seq);
                st.deliveries.remove(&msg.seq);
                update_floor(st);
                st.dirty = true;
                st.exhausted.push((msg.seq, deliveries - 1));
                continue;
            }
            st.dseq += 1;
            sent += 1;
            let dseq = st.dseq;
            if !acked {
                st.floor_s = st.floor_s.max(msg.seq);
                st.floor_d = dseq;
            } else {
                st.deliveries.insert(msg.seq, deliveries);
                st.pending.insert(
                    msg.seq,
                    Pending {
                        dseq,
                        deadline: now + cfg.redelivery_delay(deliveries),
                    },
                );
            }
            st.dirty = true;
            st.unsynced_deliveries |= cfg.ack_policy != AckPolicy::None;
            st.last_delivery = now;
            let ack_reply = ack_subject(
                &ack_prefix,
                [
                    deliveries,
                    msg.seq,
                    dseq,
                    msg.ts.max(0) as u64,
                    st.num_pending,
                ],
            );
            let (headers, payload) = if cfg.headers_only {
                let mut h = match &msg.headers {
                    Some(orig) => {
                        String::from_utf8_lossy(orig)
                            .trim_end_matches("\r\n")
                            .to_string()
                            + "\r\n"
                    }
                    None => "NATS/1.0\r\n".to_string(),
                };
                h.push_str(&format!("Nats-Msg-Size: {}\r\n\r\n", msg.payload.len()));
                (Some(bytes::Bytes::from(h)), bytes::Bytes::new())
            } else {
                (msg.headers.clone(), msg.payload.clone())
            };
            out.push(Outgoing {
                route,
                subject: msg.subject.clone(),
                reply: Some(ack_reply),
                headers,
                payload,
            });
            // Pacing: rate limit and original replay.
            if cfg.rate_limit_bps > 0 {
                let secs = (size as f64 * 8.0) / cfg.rate_limit_bps as f64;
                st.not_before = Some(now + Duration::from_secs_f64(secs));
            }
            if cfg.replay_policy == ReplayPolicy::Original && !redelivery {
                if let Some((last_ts, at)) = st.replay_mark {
                    let gap = Duration::from_nanos((msg.ts - last_ts).max(0) as u64);
                    let due = at + gap;
                    if due > now {
                        // Take it back; it goes when its time comes.
                        out.pop();
                        st.dseq -= 1;
                        st.pending.remove(&msg.seq);
                        st.deliveries.remove(&msg.seq);
                        st.sseq = msg.seq - 1;
                        st.num_pending += 1;
                        st.not_before = Some(due);
                        return;
                    }
                }
                st.replay_mark = Some((msg.ts, now));
            }
            if cfg.flow_control {
                st.delivered_since_fc += 1;
                if st.delivered_since_fc >= 512 {
                    st.delivered_since_fc = 0;
                    st.fc_seq += 1;
                    let fc_reply =
                        format!("$JS.FC.{}.{}.{}", self.stream_name, self.name, st.fc_seq);
                    let mut m = status_msg(
                        out.last().map_or("", |o| &*o.route),
                        status("100 FlowControl Request", &[]),
                    );
                    m.reply = Some(fc_reply);
                    out.push(m);
                }
            }
            if cfg.is_pull() {
                if let Some(r) = st.waiting.front_mut() {
                    r.delivered += 1;
                    r.batch -= 1;
                    if r.max_bytes > 0 {
                        r.max_bytes = r.max_bytes.saturating_sub(size as u64);
                    }
                    if let (Some(h), Some(_)) = (r.heartbeat, r.next_heartbeat) {
                        r.next_heartbeat = Some(now + h);
                    }
                    if r.batch == 0 {
                        st.waiting.pop_front();
                    }
                }
            }
            if st.not_before.is_some() {
                return;
            }
        }
    }

    /// The next message to deliver: a due redelivery first, then the start list, then new ones.
    fn next_message(&self, st: &mut State, filters: &[String]) -> Option<(StoredMsg, bool)> {
        while let Some(seq) = st.redeliver.pop_first() {
            if !st.pending.contains_key(&seq) {
                continue;
            }
            match self.store.load_msg(seq) {
                Ok(m) => return Some((m, true)),
                Err(_) => {
                    // Gone from the stream (limits, purge): nothing left to redeliver.
                    st.pending.remove(&seq);
                    st.deliveries.remove(&seq);
                    update_floor(st);
                    st.dirty = true;
                }
            }
        }
        while let Some(seq) = st.start_list.pop_front() {
            st.num_pending = st.num_pending.saturating_sub(1);
            if let Ok(m) = self.store.load_msg(seq) {
                st.sseq = st.sseq.max(seq);
                return Some((m, false));
            }
        }
        let m = next_matching(self.store.as_ref(), filters, st.sseq + 1)?;
        st.sseq = m.seq;
        st.num_pending = st.num_pending.saturating_sub(1);
        Some((m, false))
    }

    /// Saves the consumer's state if it changed. It is fsynced (on a blocking thread) when it
    /// records deliveries about to leave or an ack whose sender waits for the answer; other
    /// changes (plain acks, ack-none cursors) are written without a sync: they survive the
    /// process being killed, and a power loss can only bring a message back as a redelivery.
    async fn persist(&self) {
        let (body, sync) = {
            let mut st = self.state.lock();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            if self.dir.is_none() {
                st.unsynced_deliveries = false;
                return;
            }
            let sync = std::mem::take(&mut st.unsynced_deliveries) || !st.sync_replies.is_empty();
            let saved = SavedState {
                sseq: st.sseq,
                dseq: st.dseq,
                floor_s: st.floor_s,
                floor_d: st.floor_d,
                pending: st.pending.iter().map(|(s, p)| (*s, p.dseq)).collect(),
                deliveries: st.deliveries.iter().map(|(s, d)| (*s, *d)).collect(),
                start_list: st.start_list.iter().copied().collect(),
            };
            (serde_json::to_vec(&saved).unwrap_or_default(), sync)
        };
        let Some(dir) = self.dir.clone() else { return };
        let file = self.state_file.clone();
        let write = move || -> std::io::Result<()> {
            let mut f = file.lock();
            if f.is_none() {
                *f = Some(DocFile::open(&dir, "state")?.0);
            }
            f.as_mut().expect("opened above").write(&body, sync)
        };
        let res = if sync {
            tokio::task::spawn_blocking(write)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        } else {
            write()
        };
        if let Err(e) = res {
            tracing::error!(
                "consumer {}/{}: saving state failed: {e}",
                self.stream_name,
                self.name
            );
        }
    }

    /// (num_pending, num_ack_pending, num_redelivered, num_waiting) for monitoring.
    pub(crate) fn lag(&self) -> (u64, u64, u64, u64) {
        let st = self.state.lock();
        let redelivered = st.deliveries.values().filter(|d| **d > 1).count() as u64;
        (
            st.num_pending,
            st.pending.len() as u64,
            redelivered,
            st.waiting.len() as u64,
        )
    }

    /// The consumer info document (`consumer_info_response` minus `type`).
    pub(crate) fn info(&self, server_name: &str) -> Value {
        let cfg = self.config();
        let st = self.state.lock();
        let redelivered = st.deliveries.values().filter(|d| **d > 1).count();
        let mut v = json!({
            "stream_name": self.stream_name,
            "name": self.name,
            "created": rfc3339(self.created),
            "config": cfg,
            "delivered": {"consumer_seq": st.dseq, "stream_seq": st.sseq},
            "ack_floor": {"consumer_seq": st.floor_d, "stream_seq": st.floor_s},
            "num_ack_pending": st.pending.len(),
            "num_redelivered": redelivered,
            "num_waiting": st.waiting.len(),
            "num_pending": st.num_pending,
            "cluster": {"leader": server_name},
            "ts": rfc3339(SystemTime::now()),
        });
        if let Some(d) = &cfg.deliver_subject {
            v["push_bound"] = json!(self.client.has_interest(d));
        }
        if let Some(p) = st.paused_until {
            if p > SystemTime::now() {
                v["paused"] = json!(true);
                v["pause_remaining"] = json!(p
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_nanos() as u64));
            }
        }
        v
    }

    /// Saves config and creation time (durable consumers of file streams).
    pub(crate) fn save_meta(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        std::fs::create_dir_all(dir)?;
        let created_ns = crate::util::time::unix_nanos(self.created);
        let body = json!({"name": self.name, "config": self.config(), "created_ns": created_ns});
        write_atomic(&dir.join("meta.json"), body.to_string().as_bytes())
    }
}

/// `<prefix><n1>.<n2>...`: an ack subject, without `format!` (one allocation, sized up front).
fn ack_subject(prefix: &str, numbers: [u64; 5]) -> String {
    let mut s = String::with_capacity(prefix.len() + 5 * 21);
    s.push_str(prefix);
    let mut digits = [0u8; 20];
    for (i, mut n) in numbers.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[at..] {
            s.push(char::from(*d));
        }
    }
    s
}

fn status_msg(route: &str, hdr: Vec<u8>) -> Outgoing {
    Outgoing {
        route: Arc::from(route),
        subject: bytes::Bytes::copy_from_slice(route.as_bytes()),
        reply: None,
        headers: Some(bytes::Bytes::from(hdr)),
        payload: bytes::Bytes::new(),
    }
}

fn parse_next(payload: &[u8]) -> NextRequest {
    let text = String::from_utf8_lossy(payload);
    let t = text.trim();
    if t.is_empty() {
        return NextRequest {
            batch: 1,
            ..NextRequest::default()
        };
    }
    if let Ok(n) = t.parse::<u64>() {
        return NextRequest {
            batch: n,
            ..NextRequest::default()
        };
    }
    serde_json::from_str(t).unwrap_or(NextRequest {
        batch: 1,
        ..NextRequest::default()
    })
}

pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    if nanos <= 0 {
        return None;
    }
    Some(crate::util::time::from_unix_nanos(nanos as i64))
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending::<()>().await,
    }
}

/// Moves the ack floor up to just below the oldest pending message.
fn update_floor(st: &mut State) {
    match st.pending.iter().next() {
        Some((s, p)) => {
            st.floor_s = st.floor_s.max(s.saturating_sub(1));
            st.floor_d = st.floor_d.max(p.dseq.saturating_sub(1));
        }
        None => {
            st.floor_s = st.sseq;
            st.floor_d = st.dseq;
        }
    }
}

/// The first stored message at or after `start` matching any of `filters` (all if empty).
fn next_matching(store: &dyn StreamStore, filters: &[String], start: u64) -> Option<StoredMsg> {
    if filters.is_empty() {
        return load_next(store, b">", start);
    }
    filters
        .iter()
        .filter_map(|f| load_next(store, f.as_bytes(), start))
        .min_by_key(|m| m.seq)
}

fn load_next(store: &dyn StreamStore, filter: &[u8], start: u64) -> Option<StoredMsg> {
    let mut from = start;
    loop {
        match store.load_next_msg(filter, from) {
            Ok(m) => return Some(m),
            // A damaged message is skipped, never delivered.
            Err(StoreError::Corrupt { seq, .. }) => from = seq + 1,
            Err(_) => return None,
        }
    }
}

/// How many stored messages after `cursor` match `filters`.
fn count_pending(store: &dyn StreamStore, filters: &[String], cursor: u64) -> u64 {
    let st = store.state();
    if st.msgs == 0 || cursor >= st.last_seq {
        return 0;
    }
    if cursor < st.first_seq {
        if filters.is_empty() {
            return st.msgs;
        }
        return filters
            .iter()
            .map(|f| store.subjects_state(f.as_bytes()).values().sum::<u64>())
            .sum();
    }
    let mut n = 0;
    let mut from = cursor + 1;
    while let Some(m) = next_matching(store, filters, from) {
        n += 1;
        from = m.seq + 1;
    }
    n
}

/// Sets the starting cursor from the deliver policy.
fn init_cursor(st: &mut State, cfg: &ConsumerConfig, store: &dyn StreamStore) {
    let ss = store.state();
    let filters = cfg.filters();
    st.sseq = match cfg.deliver_policy {
        DeliverPolicy::All => ss.first_seq.saturating_sub(1),
        DeliverPolicy::New => ss.last_seq,
        DeliverPolicy::ByStartSequence => cfg.opt_start_seq.unwrap_or(1).saturating_sub(1),
        DeliverPolicy::Last => {
            let last = if filters.is_empty() {
                store
                    .load_last_by_subject(b">")
                    .map(|m| m.seq)
                    .unwrap_or(ss.last_seq)
            } else {
                filters
                    .iter()
                    .filter_map(|f| store.load_last_by_subject(f.as_bytes()).ok())
                    .map(|m| m.seq)
                    .max()
                    .unwrap_or(ss.last_seq)
            };
            last.saturating_sub(1)
        }
        DeliverPolicy::ByStartTime => {
            let t = cfg
                .opt_start_time
                .as_deref()
                .and_then(parse_time)
                .map_or(0, crate::util::time::unix_nanos);
            let mut from = ss.first_seq.max(1);
            let mut found = ss.last_seq;
            while let Some(m) = next_matching(store, &filters, from) {
                if m.ts >= t {
                    found = m.seq - 1;
                    break;
                }
                from = m.seq + 1;
            }
            found
        }
        DeliverPolicy::LastPerSubject => {
            let pats: Vec<String> = if filters.is_empty() {
                vec![">".to_string()]
            } else {
                filters.clone()
            };
            let mut seqs: Vec<u64> = pats
                .iter()
                .flat_map(|p| {
                    store
                        .subjects_state(p.as_bytes())
                        .into_keys()
                        .collect::<Vec<_>>()
                })
                .filter_map(|subj| store.load_last_by_subject(&subj).ok().map(|m| m.seq))
                .collect();
            seqs.sort_unstable();
            seqs.dedup();
            st.start_list = seqs.into();
            ss.last_seq
        }
    };
    st.floor_s = st.sseq;
}

/// A fresh ephemeral consumer name (8 characters, as nats-server makes them).
pub(crate) fn ephemeral_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::ack_subject;

    #[test]
    fn ack_subjects_are_written_like_format() {
        for nums in [
            [1, 1, 1, 0, 0],
            [3, 42, 17, 1_700_000_000_123_456_789, 9],
            [u64::MAX, 10, 100, 1000, 99_999],
        ] {
            let want = format!(
                "$JS.ACK.S.C.{}.{}.{}.{}.{}",
                nums[0], nums[1], nums[2], nums[3], nums[4]
            );
            assert_eq!(ack_subject("$JS.ACK.S.C.", nums), want);
        }
    }
}
