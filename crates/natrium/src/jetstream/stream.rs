//! One stream: its config, its store, and the ingest task that turns publishes on its subjects
//! into stored messages. A PubAck is published only from the store's durability callback, so it
//! never leaves before the sync that covers the message (group commit keeps that cheap).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use natrium_protocol::headers::HeaderView;
use natrium_store::{StoreError, StreamStore};
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::sync::Notify;

use super::config::{Retention, StreamConfig};
use super::consumer::Consumer;
use super::errors::ApiError;
use crate::router::{InternalClient, InternalMsg, InternalSubscription};

/// Messages waiting for a stream's ingest task before new ones are dropped (the publisher then
/// sees no PubAck and retries; nothing acknowledged is ever dropped).
const INGEST_QUEUE: usize = 64 * 1024;

pub(crate) use crate::util::time::now_nanos;

/// Recent `Nats-Msg-Id`s within the duplicate window.
#[derive(Default)]
struct Dedupe {
    ids: HashMap<String, u64>,
    order: VecDeque<(i64, String)>,
    last_id: Option<String>,
}

impl Dedupe {
    fn expire(&mut self, now: i64, window: Duration) {
        let horizon = now - window.as_nanos() as i64;
        while self.order.front().is_some_and(|(ts, _)| *ts < horizon) {
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }
}

pub(crate) struct Stream {
    pub name: String,
    /// Swapped whole by an update; ingest takes a cheap `Arc` clone per message.
    config: RwLock<Arc<StreamConfig>>,
    pub created: SystemTime,
    pub store: Arc<dyn StreamStore>,
    client: InternalClient,
    dedupe: Mutex<Dedupe>,
    stop: Notify,
    stopped: AtomicBool,
    pub(crate) consumers: RwLock<std::collections::BTreeMap<String, Arc<Consumer>>>,
    /// Acknowledge on write rather than after the covering sync (lazy `sync_interval` mode).
    ack_before_sync: bool,
    /// `{"stream":<name>,"seq":` (the name JSON-escaped once): a PubAck is this plus the sequence.
    ack_prefix: String,
    /// The ingest subscription's subjects, changed in place by a stream update.
    ingest: Mutex<Option<Arc<crate::router::internal::SubControl>>>,
}

impl Stream {
    pub(crate) fn new(
        config: StreamConfig,
        created: SystemTime,
        store: Arc<dyn StreamStore>,
        client: InternalClient,
        ack_before_sync: bool,
    ) -> Arc<Stream> {
        let ack_prefix = format!(
            "{{\"stream\":{},\"seq\":",
            serde_json::Value::from(config.name.as_str())
        );
        Arc::new(Stream {
            ack_prefix,
            name: config.name.clone(),
            config: RwLock::new(Arc::new(config)),
            created,
            store,
            client,
            dedupe: Mutex::new(Dedupe::default()),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            consumers: RwLock::new(std::collections::BTreeMap::new()),
            ingest: Mutex::new(None),
            ack_before_sync,
        })
    }

    pub(crate) fn client(&self) -> &InternalClient {
        &self.client
    }

    pub(crate) fn remove_consumer(&self, name: &str) -> Option<Arc<Consumer>> {
        self.consumers.write().remove(name)
    }

    /// A consumer is done with message `seq`: work queues drop it at once, interest streams once
    /// no consumer needs it any more.
    pub(crate) fn acked(&self, seq: u64, work_queue: bool) {
        if work_queue {
            let _ = self.store.remove_msg(seq);
            return;
        }
        if self.config.read().retention != Retention::Interest {
            return;
        }
        let Ok(m) = self.store.load_msg(seq) else {
            return;
        };
        if !self
            .consumers
            .read()
            .values()
            .any(|c| c.needs(seq, &m.subject))
        {
            let _ = self.store.remove_msg(seq);
        }
    }

    /// Interest streams, after a consumer went away: removes the messages no remaining consumer
    /// needs (all of them when none is left), as nats-server does on consumer delete.
    pub(crate) fn release_unneeded(&self) {
        if self.config.read().retention != Retention::Interest {
            return;
        }
        let consumers = self.consumers.read();
        let mut seq = self.store.state().first_seq;
        while let Ok(m) = self.store.load_next_msg(b">", seq) {
            if !consumers.values().any(|c| c.needs(m.seq, &m.subject)) {
                let _ = self.store.remove_msg(m.seq);
            }
            seq = m.seq + 1;
        }
    }

    /// After purges and other bulk removals, consumers recount what they have pending.
    pub(crate) fn recount_consumers(&self) {
        for c in self.consumers.read().values() {
            c.recount();
        }
    }

    pub(crate) fn config(&self) -> StreamConfig {
        StreamConfig::clone(&self.config.read())
    }

    /// Applies a new config; the ingest subscription follows a change of subjects in place.
    pub(crate) fn set_config(&self, c: StreamConfig) -> Result<(), ApiError> {
        if let Some(ctl) = self.ingest.lock().as_ref() {
            ctl.set_subjects(&c.subjects)
                .map_err(|e| ApiError::update_failed(e.to_string()))?;
        }
        *self.config.write() = Arc::new(c);
        Ok(())
    }

    /// Subscribes to the stream's subjects and starts its ingest and expiry tasks.
    pub(crate) fn start(self: &Arc<Self>) -> Result<(), ApiError> {
        let subjects = self.config.read().subjects.clone();
        let mut sub: Option<InternalSubscription> = None;
        for s in &subjects {
            match sub.as_mut() {
                None => {
                    sub = Some(
                        self.client
                            .subscribe(s, None, INGEST_QUEUE)
                            .map_err(|e| ApiError::create_failed(e.to_string()))?,
                    )
                }
                Some(existing) => existing
                    .also(s, None)
                    .map_err(|e| ApiError::create_failed(e.to_string()))?,
            }
        }
        let Some(sub) = sub else {
            return Err(ApiError::invalid_config("stream has no subjects"));
        };
        *self.ingest.lock() = Some(sub.control());
        tokio::spawn(self.clone().ingest(sub));
        tokio::spawn(self.clone().expire_loop());
        Ok(())
    }

    /// Stops ingest and expiry; the store stays open for the caller to stop or delete.
    pub(crate) fn shutdown(&self) {
        for c in self.consumers.read().values() {
            c.shutdown();
        }
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    async fn ingest(self: Arc<Self>, mut sub: InternalSubscription) {
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = self.stop.notified() => None,
            };
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(msg) = msg else { return };
            self.process(msg);
        }
    }

    async fn expire_loop(self: Arc<Self>) {
        loop {
            let max_age = self.config.read().max_age();
            let every = if max_age.is_zero() {
                Duration::from_secs(1)
            } else {
                (max_age / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.stop.notified() => return,
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            if !max_age.is_zero() {
                if let Err(e) = self.store.expire(now_nanos()) {
                    tracing::warn!("stream {}: expiring messages failed: {e}", self.name);
                }
            }
        }
    }

    fn reply_error(&self, reply: Option<&str>, e: ApiError) {
        if let Some(r) = reply {
            let body = json!({"stream": self.name, "error": e});
            let _ = self
                .client
                .publish(r, None, None, body.to_string().as_bytes());
        }
    }

    /// Stores one published message and arranges its PubAck.
    fn process(&self, msg: InternalMsg) {
        let cfg = Arc::clone(&self.config.read());
        let reply = if cfg.no_ack {
            None
        } else {
            msg.reply.as_deref()
        };
        if cfg.sealed {
            return self.reply_error(reply, ApiError::sealed());
        }
        let hdr = msg.headers.as_deref().and_then(HeaderView::parse);
        let get = |name: &[u8]| {
            hdr.as_ref()
                .and_then(|h| h.get(name))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let size = msg.payload.len() + msg.headers.as_ref().map_or(0, |h| h.len());
        if cfg.max_msg_size > 0 && size as i64 > cfg.max_msg_size {
            return self.reply_error(reply, ApiError::message_too_large());
        }
        if let Some(expected) = get(b"Nats-Expected-Stream") {
            if expected != self.name {
                return self.reply_error(reply, ApiError::expected_stream_mismatch());
            }
        }
        if let Some(v) = get(b"Nats-Expected-Last-Sequence") {
            let last = self.store.state().last_seq;
            if v.trim().parse::<u64>().ok() != Some(last) {
                return self.reply_error(reply, ApiError::wrong_last_sequence(last));
            }
        }
        if let Some(v) = get(b"Nats-Expected-Last-Subject-Sequence") {
            let last = match self.store.load_last_by_subject(msg.subject.as_bytes()) {
                Ok(m) => m.seq,
                Err(_) => 0,
            };
            if v.trim().parse::<u64>().ok() != Some(last) {
                return self.reply_error(reply, ApiError::wrong_last_sequence(last));
            }
        }
        let now = now_nanos();
        let msg_id = get(b"Nats-Msg-Id");
        {
            let mut d = self.dedupe.lock();
            d.expire(now, cfg.duplicate_window());
            if let Some(v) = get(b"Nats-Expected-Last-Msg-Id") {
                let last = d.last_id.clone().unwrap_or_default();
                if v != last {
                    return self.reply_error(reply, ApiError::wrong_last_msg_id(&last));
                }
            }
            if let Some(id) = &msg_id {
                if let Some(seq) = d.ids.get(id) {
                    if let Some(r) = reply {
                        let body = json!({"stream": self.name, "seq": seq, "duplicate": true});
                        let _ = self
                            .client
                            .publish(r, None, None, body.to_string().as_bytes());
                    }
                    return;
                }
            }
        }
        let rollup = get(b"Nats-Rollup");
        if rollup.is_some() && !cfg.allow_rollup_hdrs {
            return self.reply_error(reply, ApiError::rollup_failed("rollup not permitted"));
        }
        if let Some(r) = &rollup {
            if r != "sub" && r != "all" {
                return self.reply_error(
                    reply,
                    ApiError::rollup_failed(format!("rollup value invalid: {r:?}")),
                );
            }
        }
        let receipt = match self.store.store_msg(
            msg.subject.as_bytes(),
            msg.headers.as_deref(),
            &msg.payload,
            now,
        ) {
            Ok(r) => r,
            Err(e) => return self.reply_error(reply, store_error(&e)),
        };
        match rollup.as_deref() {
            Some("sub") => {
                let _ = self.store.purge_ex(msg.subject.as_bytes(), 0, 1);
            }
            Some("all") => {
                let _ = self.store.compact(receipt.seq);
            }
            _ => {}
        }
        {
            let mut d = self.dedupe.lock();
            if let Some(id) = msg_id {
                d.ids.insert(id.clone(), receipt.seq);
                d.order.push_back((now, id.clone()));
                d.last_id = Some(id);
            }
        }
        let consumers = self.consumers.read();
        for c in consumers.values() {
            c.on_new_message(msg.subject.as_bytes());
        }
        if cfg.retention == Retention::Interest
            && !consumers
                .values()
                .any(|c| c.needs(receipt.seq, msg.subject.as_bytes()))
        {
            // Nobody is interested: the message is acknowledged but not kept.
            let _ = self.store.remove_msg(receipt.seq);
        }
        drop(consumers);
        if let Some(r) = reply {
            let client = self.client.clone();
            let reply_to = r.to_string();
            let ack = format!("{}{}}}", self.ack_prefix, receipt.seq);
            if self.ack_before_sync {
                // Lazy mode (`sync_interval: <duration>`), as nats-server's default: the PubAck
                // leaves once the message is written, before the periodic sync covers it.
                let _ = client.publish(&reply_to, None, None, ack.as_bytes());
                return;
            }
            let name = self.name.clone();
            self.store.on_durable(
                receipt.sync_token,
                Box::new(move |res| {
                    let body = match res {
                        Ok(()) => ack,
                        Err(e) => json!({"stream": name, "error": store_error(&e)}).to_string(),
                    };
                    let _ = client.publish(&reply_to, None, None, body.as_bytes());
                }),
            );
        }
    }
}

/// Maps a store failure to the API error a publisher sees.
pub(crate) fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::MsgTooLarge => ApiError::message_too_large(),
        other => ApiError::store_failed(other.to_string()),
    }
}
