//! One stream: its config, store and consumers, the tasks that feed it (ingest, sources and
//! mirror, timers), and the operations on its messages the API asks for (purge, delete).
//! Ingest is in `ingest.rs` (decisions in `check.rs`), atomic batches in `batch.rs`, sources
//! and mirrors in `source.rs`, age, TTL and schedules in `timers.rs`.

mod batch;
pub(crate) mod check;
pub(crate) mod headers;
mod hook;
mod ingest;
mod replicated;
mod source;
mod timers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use natrium_store::StreamStore;
use natrium_subjects::SubjectTransform;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::config::{Storage, StreamConfig};
use super::consumer::Consumers;
use super::errors::ApiError;
use crate::router::internal::SubControl;
use crate::router::{InternalClient, InternalSubscription};
pub(crate) use hook::{Proposal, Replication};
use ingest::IngestState;
pub(crate) use replicated::{
    decode_batch, encode_batch, replay_over, replayed_through, Entry, LeaderBatches, Replay,
};
use source::Source;
use timers::Timers;

/// A config's compiled transforms.
#[derive(Default)]
struct Transforms {
    /// `subject_transform`: applied to published subjects before anything else.
    input: Option<SubjectTransform>,
    /// `republish`.
    republish: Option<SubjectTransform>,
}

impl Transforms {
    fn of(cfg: &StreamConfig) -> Arc<Transforms> {
        Arc::new(Transforms {
            input: cfg.input_transform(),
            republish: cfg.republish_transform(),
        })
    }
}

/// Messages waiting for a stream's ingest task before new ones are dropped (the publisher then
/// sees no PubAck and retries; nothing acknowledged is ever dropped).
const INGEST_QUEUE: usize = 64 * 1024;

pub(crate) struct Stream {
    pub name: String,
    /// Swapped whole by an update; ingest takes a cheap `Arc` clone per message.
    config: RwLock<Arc<StreamConfig>>,
    pub created: SystemTime,
    pub store: Arc<dyn StreamStore>,
    pub consumers: Arc<Consumers>,
    client: InternalClient,
    stop: Notify,
    stopped: AtomicBool,
    /// Acknowledge on write rather than after the covering sync (lazy `sync_interval` mode).
    ack_before_sync: bool,
    /// `{"stream":<name>,"seq":` (the name JSON-escaped once): a PubAck is this plus the sequence.
    ack_prefix: String,
    /// The ingest subscription's subjects, changed in place by a stream update.
    ingest: Mutex<Option<Arc<SubControl>>>,
    transforms: RwLock<Arc<Transforms>>,
    /// Held by whoever stores a message: the stream has one writer at a time.
    ingest_state: Mutex<IngestState>,
    timers: Timers,
    /// The running mirror or sources.
    sources: Mutex<Vec<Arc<Source>>>,
    /// The account's byte limit, asked before each message is stored (set by the catalog when
    /// the account has one).
    account_gate: OnceLock<AccountGate>,
    /// Set on a replica of a replicated stream: whether it leads, and the way to its leader's
    /// proposals (timed work and sources are decided there).
    replication: OnceLock<Arc<dyn Replication>>,
}

/// Whether the account has room for a message of this many bytes in a stream of this storage.
pub(crate) type AccountGate = Box<dyn Fn(Storage, u64) -> bool + Send + Sync>;

impl Stream {
    pub(crate) fn new(
        config: StreamConfig,
        created: SystemTime,
        store: Arc<dyn StreamStore>,
        client: InternalClient,
        ack_before_sync: bool,
        interest_poll: std::time::Duration,
    ) -> Arc<Stream> {
        let ack_prefix = format!(
            "{{\"stream\":{},\"seq\":",
            serde_json::Value::from(config.name.as_str())
        );
        let consumers = Consumers::new(
            &config.name,
            store.clone(),
            client.clone(),
            config.retention,
            interest_poll,
        );
        Arc::new(Stream {
            ack_prefix,
            name: config.name.clone(),
            transforms: RwLock::new(Transforms::of(&config)),
            ingest_state: Mutex::new(IngestState::default()),
            timers: Timers::default(),
            sources: Mutex::new(Vec::new()),
            ack_before_sync: ack_before_sync || config.async_persist(),
            config: RwLock::new(Arc::new(config)),
            created,
            store,
            consumers,
            client,
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            ingest: Mutex::new(None),
            account_gate: OnceLock::new(),
            replication: OnceLock::new(),
        })
    }

    /// Sets the account's byte limit check (once).
    pub(crate) fn set_account_gate(&self, gate: AccountGate) {
        let _ = self.account_gate.set(gate);
    }

    /// Memory or file.
    pub(crate) fn storage(&self) -> Storage {
        self.config.read().storage
    }

    pub(crate) fn config(&self) -> StreamConfig {
        StreamConfig::clone(&self.config.read())
    }

    /// The config in force (a cheap shared copy).
    pub(crate) fn config_arc(&self) -> Arc<StreamConfig> {
        Arc::clone(&self.config.read())
    }

    /// Starts a replica's timer task (its leader ingests; `replication` says who leads).
    pub(crate) fn start_replica(self: &Arc<Self>, replication: Arc<dyn Replication>) {
        let _ = self.replication.set(replication);
        tokio::spawn(self.clone().timer_loop());
    }

    /// Whether this server decides for the stream: always for R1, the leader for a replica.
    fn leads(&self) -> bool {
        self.replication.get().is_none_or(|r| r.leads())
    }

    /// Message `seq` was stored: the consumers hear of it. A replica's set decides interest
    /// retention by the replicated consumers' progress (the same on every replica); a follower
    /// whose set is not linked to its log yet skips it: it runs no consumer, would find none
    /// needing the message and drop it (a new leader's consumers then had nothing to deliver).
    pub(crate) fn stored(&self, seq: u64, subject: &[u8]) {
        if self.leads() || self.consumers.replicated() {
            self.consumers.on_stored(seq, subject);
        }
    }

    /// The stream's default dead-letter subject (`dead_letter_subject` in its metadata), which
    /// consumers created now take.
    pub(crate) fn dead_letter(&self) -> Option<String> {
        self.config
            .read()
            .metadata
            .as_ref()
            .and_then(|m| m.get("dead_letter_subject").cloned())
    }

    /// Applies a new config; the ingest subscription follows a change of subjects in place,
    /// sources start and stop, a promoted mirror starts taking messages.
    pub(crate) fn set_config(self: &Arc<Self>, c: StreamConfig) -> Result<(), ApiError> {
        let has_ingest = self.ingest.lock().is_some();
        if has_ingest {
            if let Some(ctl) = self.ingest.lock().as_ref() {
                ctl.set_subjects(&c.subjects)
                    .map_err(|e| ApiError::update_failed(e.to_string()))?;
            }
        } else if !c.subjects.is_empty() && self.replication.get().is_none() {
            self.subscribe_ingest(&c.subjects)
                .map_err(|e| ApiError::update_failed(e.description))?;
        }
        *self.transforms.write() = Transforms::of(&c);
        *self.config.write() = Arc::new(c.clone());
        self.sync_sources(&c);
        Ok(())
    }

    /// Applies a new config to a replica of a replicated stream: no ingest here (its leader
    /// takes messages through the group), no sources.
    pub(crate) fn set_replicated_config(&self, c: StreamConfig) {
        *self.transforms.write() = Transforms::of(&c);
        *self.config.write() = Arc::new(c);
    }

    /// Subscribes to the stream's subjects and starts its ingest, timer and source tasks.
    pub(crate) fn start(self: &Arc<Self>) -> Result<(), ApiError> {
        let cfg = self.config();
        if !cfg.subjects.is_empty() {
            self.subscribe_ingest(&cfg.subjects)?;
        } else if cfg.mirror.is_none() && cfg.sources.is_none() {
            return Err(ApiError::invalid_config("stream has no subjects"));
        }
        self.rebuild_timers();
        tokio::spawn(self.clone().timer_loop());
        self.sync_sources(&cfg);
        Ok(())
    }

    fn subscribe_ingest(self: &Arc<Self>, subjects: &[String]) -> Result<(), ApiError> {
        let mut sub: Option<InternalSubscription> = None;
        for s in subjects {
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
        Ok(())
    }

    /// Stops its consumers, ingest and expiry; the store stays open for the caller to stop or
    /// delete.
    pub(crate) fn shutdown(&self) {
        self.stop_sources();
        self.consumers.shutdown();
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    /// Purges all messages, those on `filter`, those below `seq`, or all but the newest `keep`
    /// (as `StreamStore::purge_ex`); how many went.
    pub(crate) fn purge(&self, filter: Option<&str>, seq: u64, keep: u64) -> Result<u64, ApiError> {
        let cfg = Arc::clone(&self.config.read());
        if cfg.sealed {
            return Err(ApiError::sealed());
        }
        if cfg.deny_purge {
            return Err(ApiError::purge_failed("stream purge not permitted"));
        }
        let purged = match (filter, seq, keep) {
            (None, 0, 0) => self.store.purge(),
            (filter, seq, keep) => self
                .store
                .purge_ex(filter.unwrap_or("").as_bytes(), seq, keep),
        }
        .map_err(|e| ApiError::purge_failed(e.to_string()))?;
        self.consumers.recount();
        Ok(purged)
    }

    /// Removes message `seq` (overwriting its bytes unless `no_erase`).
    pub(crate) fn delete_msg(&self, seq: u64, no_erase: bool) -> Result<(), ApiError> {
        let cfg = Arc::clone(&self.config.read());
        if cfg.sealed {
            return Err(ApiError::sealed());
        }
        if cfg.deny_delete {
            return Err(ApiError::msg_delete_failed("message delete not permitted"));
        }
        let removed = if no_erase {
            self.store.remove_msg(seq)
        } else {
            self.store.erase_msg(seq)
        }
        .map_err(|e| ApiError::msg_delete_failed(e.to_string()))?;
        if !removed {
            return Err(ApiError::msg_delete_failed("no message found"));
        }
        self.consumers.removed_inside();
        Ok(())
    }
}
