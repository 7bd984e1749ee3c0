//! `Consumer`, the handle the API and the stream hold (its state machine under a lock, fed acks,
//! pull requests, new messages), and `Consumers`, the stream's set: its only link to the stream.

mod start;
mod state;
mod task;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use natrium_store::{DocFile, StreamStore};
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::sync::Notify;

use super::config::Retention;
use super::consumer_config::ConsumerConfig;
use super::errors::ApiError;
use crate::router::internal::HandlerSubscription;
use crate::router::InternalClient;
pub(crate) use start::parse_time;
use state::{ConsumerState, Identity};
pub(crate) use state::{Delta, LogProgress, Progress};
use wire::{parse_ack, Command};

/// How often a push consumer looks whether its deliver subject has interest without being told:
/// a safety net, since the router wakes it when a matching subscription comes or goes.
pub(crate) const INTEREST_POLL: Duration = Duration::from_secs(1);

/// Resolves once an appended entry is committed (to whether it was).
pub(crate) type Committed = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A replicated stream's log as its consumers (which run on the stream's leader) see it.
pub(crate) trait ConsumerLog: Send + Sync {
    /// Appends a progress change of consumer `name` (created at `created_ns`) to the log, in
    /// call order; `None` when this server can not (no longer the leader).
    fn append(
        &self,
        name: &str,
        created_ns: i64,
        delta: Delta,
    ) -> Pin<Box<dyn Future<Output = Option<Committed>> + Send + '_>>;
    /// Whether a replicated consumer still needs message `seq` on `subject` (interest
    /// retention), by the progress the log holds: every replica decides alike.
    fn needed(&self, seq: u64, subject: &[u8]) -> bool;
    /// An ephemeral consumer expired on the leader: its record goes through the log.
    fn expired(&self, name: &str);
}

/// The consumers of one stream, and what their stream's retention does with the messages they
/// are done with.
pub(crate) struct Consumers {
    stream: String,
    store: Arc<dyn StreamStore>,
    client: InternalClient,
    retention: Retention,
    map: RwLock<BTreeMap<String, Arc<Consumer>>>,
    /// A replicated stream's log: consumers' progress goes through it, and retention is
    /// decided when it is applied (on every replica), not by the consumers running here.
    log: OnceLock<Arc<dyn ConsumerLog>>,
    /// Push consumers' interest poll (`INTEREST_POLL` unless a test changes it).
    interest_poll: Duration,
}

impl Consumers {
    pub(crate) fn new(
        stream: &str,
        store: Arc<dyn StreamStore>,
        client: InternalClient,
        retention: Retention,
        interest_poll: Duration,
    ) -> Arc<Consumers> {
        Arc::new(Consumers {
            stream: stream.to_string(),
            store,
            client,
            retention,
            map: RwLock::new(BTreeMap::new()),
            log: OnceLock::new(),
            interest_poll,
        })
    }

    /// Makes this a replicated stream's set (before any consumer is made).
    pub(crate) fn set_log(&self, log: Arc<dyn ConsumerLog>) {
        let _ = self.log.set(log);
    }

    /// Whether progress and retention go through a replicated stream's log.
    pub(crate) fn replicated(&self) -> bool {
        self.log.get().is_some()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Consumer>> {
        self.map.read().get(name).cloned()
    }

    pub(crate) fn insert(&self, c: Arc<Consumer>) {
        self.map.write().insert(c.name.clone(), c);
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Consumer>> {
        self.map.write().remove(name)
    }

    /// Removes them all (the stream is being deleted).
    pub(crate) fn take_all(&self) -> Vec<Arc<Consumer>> {
        std::mem::take(&mut *self.map.write())
            .into_values()
            .collect()
    }

    /// All of them, by name.
    pub(crate) fn list(&self) -> Vec<Arc<Consumer>> {
        self.map.read().values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().len()
    }

    /// The stream stored message `seq` on `subject`: consumers it is for wake up; under interest
    /// retention a message no consumer needs is removed at once (acknowledged, not kept).
    pub(crate) fn on_stored(&self, seq: u64, subject: &[u8]) {
        let map = self.map.read();
        for c in map.values() {
            c.on_stored(seq, subject);
        }
        if self.retention != Retention::Interest {
            return;
        }
        let needed = match self.log.get() {
            Some(log) => {
                drop(map);
                log.needed(seq, subject)
            }
            None => map.values().any(|c| c.needs(seq, subject)),
        };
        if !needed {
            let _ = self.store.remove_msg(seq);
        }
    }

    /// A consumer is done with message `seq`: work queues drop it at once, interest streams once
    /// no consumer needs it any more.
    pub(crate) fn release(&self, seq: u64) {
        if self.replicated() {
            // Replicated consumers release through the log.
            return;
        }
        match self.retention {
            Retention::Limits => {}
            Retention::WorkQueue => {
                let _ = self.store.remove_msg(seq);
            }
            Retention::Interest => {
                let Ok(m) = self.store.load_msg(seq) else {
                    return;
                };
                if !self.map.read().values().any(|c| c.needs(seq, &m.subject)) {
                    let _ = self.store.remove_msg(seq);
                }
            }
        }
    }

    /// Interest streams, after a consumer went away: removes the messages no remaining consumer
    /// needs (all of them when none is left), as nats-server does on consumer delete.
    pub(crate) fn release_unneeded(&self) {
        if self.retention != Retention::Interest || self.replicated() {
            // Replicated: the consumer's deletion, applied from the log, does this.
            return;
        }
        let map = self.map.read();
        let mut seq = self.store.state().first_seq;
        while let Ok(m) = self.store.load_next_msg(b">", seq) {
            if !map.values().any(|c| c.needs(m.seq, &m.subject)) {
                let _ = self.store.remove_msg(m.seq);
            }
            seq = m.seq + 1;
        }
    }

    /// Messages were removed from the front of the stream (limits, max age, a rollup of all):
    /// consumers whose cursor is below `first_seq` recount (cheaply: everything left is after
    /// their cursor); the others lost nothing they had pending.
    pub(crate) fn removed_front(&self, first_seq: u64) {
        for c in self.map.read().values() {
            c.state.lock().removed_front(first_seq, self.store.as_ref());
        }
    }

    /// Messages were removed from inside the stream (per-subject limits, a subject rollup, a
    /// delete): consumers recount what they have pending before they next deliver or report.
    pub(crate) fn removed_inside(&self) {
        for c in self.map.read().values() {
            c.state.lock().mark_stale();
        }
    }

    /// After purges and other bulk removals, consumers recount what they have pending.
    pub(crate) fn recount(&self) {
        for c in self.map.read().values() {
            c.recount();
        }
    }

    /// Stops every consumer's task (the stream is stopping).
    pub(crate) fn shutdown(&self) {
        for c in self.map.read().values() {
            c.shutdown();
        }
    }
}

/// One consumer: its state machine and what connects it to the server (ack subscription, task,
/// state files).
pub(crate) struct Consumer {
    pub name: String,
    pub stream_name: String,
    pub created: SystemTime,
    /// The set it belongs to (retention, removal when an ephemeral consumer expires).
    set: Weak<Consumers>,
    store: Arc<dyn StreamStore>,
    client: InternalClient,
    state: Mutex<ConsumerState>,
    /// Wakes the task: events, and (for a push consumer) subscriptions matching its deliver
    /// subject coming or going (the task's `SubjectWatch`).
    wake: Arc<Notify>,
    stop: Notify,
    stopped: AtomicBool,
    /// Where meta.json and the state slots live; `None` for consumers that are not persisted.
    dir: Option<PathBuf>,
    /// The state document (`state.0`/`state.1`), opened at the first save.
    state_file: Arc<Mutex<Option<DocFile>>>,
    /// The ack subscription (a handler run in the acking client's task).
    acks: Mutex<Option<HandlerSubscription>>,
    /// A replicated stream's log, which its progress goes to.
    log: Option<Arc<dyn ConsumerLog>>,
    /// Held from taking a delta to its place in the log, so deltas go in the order taken.
    log_order: tokio::sync::Mutex<()>,
    interest_poll: Duration,
}

impl Consumer {
    /// A consumer of the stream `set` belongs to, restored from `saved` (its state document) or
    /// new. `stream_dead_letter` is the stream's `dead_letter_subject` metadata.
    pub(crate) fn new(
        name: String,
        set: &Arc<Consumers>,
        stream_dead_letter: Option<String>,
        config: ConsumerConfig,
        created: SystemTime,
        dir: Option<PathBuf>,
        saved: Option<Vec<u8>>,
    ) -> Arc<Consumer> {
        let id = Identity {
            stream: &set.stream,
            name: &name,
            retention: set.retention,
            dead_letter: stream_dead_letter,
            persisted: dir.is_some(),
            replicated: set.replicated(),
        };
        let state = ConsumerState::new(
            id,
            config,
            set.store.as_ref(),
            saved.as_deref(),
            Instant::now(),
        );
        Arc::new(Consumer {
            stream_name: set.stream.clone(),
            name,
            created,
            set: Arc::downgrade(set),
            store: set.store.clone(),
            client: set.client.clone(),
            state: Mutex::new(state),
            wake: Arc::new(Notify::new()),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            dir,
            state_file: Arc::new(Mutex::new(None)),
            acks: Mutex::new(None),
            log: set.log.get().cloned(),
            log_order: tokio::sync::Mutex::new(()),
            interest_poll: set.interest_poll,
        })
    }

    pub(crate) fn config(&self) -> ConsumerConfig {
        ConsumerConfig::clone(self.state.lock().config())
    }

    pub(crate) fn set_config(&self, c: ConsumerConfig) {
        self.state.lock().set_config(c);
        self.wake.notify_one();
    }

    /// Its config and figures, read together.
    pub(crate) fn snapshot(&self) -> (Arc<ConsumerConfig>, Progress) {
        let mut st = self.state.lock();
        st.refresh(self.store.as_ref());
        (st.config().clone(), st.progress())
    }

    /// Its state document's body now.
    pub(crate) fn state_body(&self) -> Vec<u8> {
        self.state.lock().encode()
    }

    /// Its figures.
    pub(crate) fn progress(&self) -> Progress {
        let mut st = self.state.lock();
        st.refresh(self.store.as_ref());
        st.progress()
    }

    /// Whether a client subscribes to `subject` (a push consumer's deliver subject).
    pub(crate) fn has_interest(&self, subject: &str) -> bool {
        self.client.has_interest(subject)
    }

    /// Subscribes to its ack subject and starts its task. Acks are applied in the acking
    /// client's own task, so anything that client sends afterwards (a consumer info request, say)
    /// sees them, as with nats-server.
    pub(crate) fn start(self: &Arc<Self>) -> Result<(), ApiError> {
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
            .map_err(|e| ApiError::consumer_create(e.to_string()))?;
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

    /// Stops it, tells waiting pull requests it is gone and removes its files.
    pub(crate) fn delete(&self) {
        let cmds = self.state.lock().close();
        self.execute(cmds);
        self.shutdown();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn on_stored(&self, seq: u64, subject: &[u8]) {
        if self.state.lock().on_stored(seq, subject) {
            self.wake.notify_one();
        }
    }

    fn needs(&self, seq: u64, subject: &[u8]) -> bool {
        self.state.lock().needs(seq, subject)
    }

    /// Called after purges and other bulk removals: recounts what is pending.
    fn recount(&self) {
        self.state.lock().recount(self.store.as_ref());
        self.wake.notify_one();
    }

    /// Queues a pull request (`$JS.API.CONSUMER.MSG.NEXT`).
    pub(crate) fn pull(&self, reply: Option<&str>, payload: &[u8]) {
        let Some(reply) = reply else { return };
        let cmds = self.state.lock().pull(reply, payload, Instant::now());
        self.execute(cmds);
    }

    /// `$JS.API.CONSUMER.UNPIN` for one of its priority groups.
    pub(crate) fn unpin(&self, group: &str) {
        let cmds = self.state.lock().unpin(group);
        self.execute(cmds);
    }

    /// `$JS.API.CONSUMER.RESET`: starts over at stream sequence `seq` (0: past the ack floor).
    /// The sequence it restarts from.
    pub(crate) fn reset(&self, seq: u64) -> Result<u64, ApiError> {
        let r = self
            .state
            .lock()
            .reset(seq, self.store.as_ref())
            .map_err(ApiError::consumer_invalid_reset)?;
        if let Some(set) = self.set.upgrade() {
            set.release_unneeded();
        }
        self.wake.notify_one();
        Ok(r)
    }

    /// An ack on `$JS.ACK.<stream>.<consumer>.…`, in the acking client's task.
    fn process_ack(&self, subject: &[u8], reply: Option<&[u8]>, body: &[u8]) {
        let Some((sseq, kind)) = parse_ack(subject, body) else {
            return;
        };
        let reply = reply.map(String::from_utf8_lossy);
        let cmds = self
            .state
            .lock()
            .ack(sseq, kind, reply.as_deref(), Instant::now());
        self.execute(cmds);
    }

    /// Saves config and creation time (durable consumers of file streams).
    pub(crate) fn save_meta(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        crate::util::fs::create_dir_all_durable(dir)?;
        let created_ns = crate::util::time::unix_nanos(self.created);
        let body = json!({"name": self.name, "config": self.config(), "created_ns": created_ns});
        crate::util::fs::write_atomic(&dir.join("meta.json"), body.to_string().as_bytes())
    }

    /// Runs commands outside the task (from an event): statuses are published one by one.
    fn execute(&self, cmds: Vec<Command>) {
        for cmd in cmds {
            match cmd {
                Command::Deliver { msg, .. } => {
                    self.client.publish_as(
                        &msg.route,
                        &msg.subject,
                        msg.reply.as_deref(),
                        msg.headers.as_deref(),
                        &msg.payload,
                    );
                }
                Command::Status(msg) => {
                    let _ = self.client.publish(
                        &msg.route,
                        msg.reply.as_deref(),
                        msg.headers.as_deref(),
                        &msg.payload,
                    );
                }
                other => self.side_effect(&other),
            }
        }
    }
}

/// A fresh ephemeral consumer name (8 characters, as nats-server makes them).
pub(crate) fn ephemeral_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}
