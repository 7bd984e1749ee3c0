//! An account's streams and their consumers: create, update and delete them with the account's
//! checks (subject overlap, limits, work-queue rules), persist their `meta.json`, recover them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use natrium_store::{FileStore, FileStoreConfig, MemStore, StoreError, StreamStore, SyncPolicy};
use parking_lot::RwLock;
use serde_json::{json, Value};

use super::config::{Retention, Storage, StreamConfig};
use super::consumer::{ephemeral_name, Consumer};
use super::consumer_config::{AckPolicy, ConsumerConfig};
use super::errors::ApiError;
use super::stream::Stream;
use super::AccountLimits;
use crate::router::InternalClient;
use crate::util::time::{from_unix_nanos, unix_nanos};

/// What a consumer create request wants when the consumer exists (`action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Create, or return the existing one if its config is the same, else update it.
    CreateOrUpdate,
    /// Create only.
    Create,
    /// Update only.
    Update,
}

pub(crate) struct Catalog {
    client: InternalClient,
    /// `<store_dir>/jetstream/<account>/streams`.
    dir: PathBuf,
    sync: SyncPolicy,
    /// Shared with the streams' account gates; replaced when the account's JWT changes.
    limits: Arc<RwLock<AccountLimits>>,
    /// Whether the account's limits were configured (then they are enforced; else only the
    /// stream count is).
    reservations: bool,
    /// Shared (weakly) with the streams' account gates, which add up the account's bytes.
    streams: Arc<RwLock<BTreeMap<String, Arc<Stream>>>>,
    /// Push consumers' interest poll (see `JetStreamOptions::push_interest_poll`).
    interest_poll: Duration,
}

impl Catalog {
    pub(crate) fn new(
        client: InternalClient,
        dir: PathBuf,
        sync: SyncPolicy,
        limits: AccountLimits,
        reservations: bool,
        interest_poll: Duration,
    ) -> Catalog {
        Catalog {
            client,
            dir,
            sync,
            limits: Arc::new(RwLock::new(limits)),
            reservations,
            streams: Arc::new(RwLock::new(BTreeMap::new())),
            interest_poll,
        }
    }

    /// Push consumers' interest poll, for the streams made here.
    pub(crate) fn interest_poll(&self) -> Duration {
        self.interest_poll
    }

    pub(crate) fn account(&self) -> &str {
        self.client.account()
    }

    /// The account's internal client.
    pub(crate) fn client(&self) -> &InternalClient {
        &self.client
    }

    /// Adds this node's replica of a replicated stream (its files live with the cluster's).
    pub(crate) fn insert_replicated(&self, s: Arc<Stream>) -> Result<(), ApiError> {
        let mut streams = self.streams.write();
        if streams.contains_key(&s.name) {
            return Err(ApiError::stream_name_exists());
        }
        streams.insert(s.name.clone(), s);
        Ok(())
    }

    /// Takes a replicated stream's replica out of the account (the cluster stops it).
    pub(crate) fn remove_replicated(&self, name: &str) {
        self.streams.write().remove(name);
    }

    pub(crate) fn limits(&self) -> AccountLimits {
        *self.limits.read()
    }

    /// New limits (the account's JWT changed).
    pub(crate) fn set_limits(&self, limits: AccountLimits) {
        *self.limits.write() = limits;
    }

    /// Whether PubAcks may leave before the sync (file streams in `sync_interval` mode).
    fn lazy(&self) -> bool {
        matches!(self.sync, SyncPolicy::Interval(_))
    }

    pub(crate) fn stream(&self, name: &str) -> Result<Arc<Stream>, ApiError> {
        self.streams
            .read()
            .get(name)
            .cloned()
            .ok_or_else(ApiError::stream_not_found)
    }

    pub(crate) fn consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<(Arc<Stream>, Arc<Consumer>), ApiError> {
        let s = self.stream(stream)?;
        let c = s
            .consumers
            .get(name)
            .ok_or_else(ApiError::consumer_not_found)?;
        Ok((s, c))
    }

    /// Every stream, by name.
    pub(crate) fn streams(&self) -> Vec<Arc<Stream>> {
        self.streams.read().values().cloned().collect()
    }

    /// Streams with a subject overlapping `filter` (all of them without one), by name.
    pub(crate) fn streams_matching(&self, filter: Option<&str>) -> Vec<Arc<Stream>> {
        self.streams
            .read()
            .values()
            .filter(|s| {
                filter.is_none_or(|f| {
                    s.config()
                        .subjects
                        .iter()
                        .any(|subj| natrium_subjects::overlaps(subj.as_bytes(), f.as_bytes()))
                })
            })
            .cloned()
            .collect()
    }

    fn open_store(
        &self,
        cfg: &StreamConfig,
        dir: &Path,
    ) -> Result<Arc<dyn StreamStore>, StoreError> {
        Ok(match cfg.storage {
            Storage::Memory => Arc::new(MemStore::new(cfg.limits())?),
            Storage::File => Arc::new(FileStore::open(
                FileStoreConfig {
                    sync: self.sync,
                    ..FileStoreConfig::new(dir.join("msgs"))
                },
                cfg.limits(),
            )?),
        })
    }

    /// Loads every stream found on disk, with its consumers.
    pub(crate) fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let meta = match std::fs::read(dir.join("meta.json")) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let parsed: Result<Value, _> = serde_json::from_slice(&meta);
            let Ok(v) = parsed else {
                tracing::error!(
                    "stream metadata {} is not valid JSON; stream skipped",
                    dir.display()
                );
                continue;
            };
            let Ok(mut cfg) = serde_json::from_value::<StreamConfig>(v["config"].clone()) else {
                tracing::error!(
                    "stream metadata {} has a bad config; stream skipped",
                    dir.display()
                );
                continue;
            };
            cfg.normalize();
            let created = v["created_ns"]
                .as_i64()
                .map_or(SystemTime::now(), from_unix_nanos);
            match self.open_store(&cfg, &dir) {
                Ok(store) => {
                    let st = store.state();
                    if !st.lost.is_empty() {
                        tracing::warn!(
                            "stream {}: {} corrupt or lost message(s) on recovery, first at sequence {}",
                            cfg.name,
                            st.lost.len(),
                            st.lost[0]
                        );
                    }
                    let s = Stream::new(
                        cfg.clone(),
                        created,
                        store,
                        self.client.clone(),
                        self.lazy(),
                        self.interest_poll,
                    );
                    self.gate(&s);
                    if let Err(e) = s.start() {
                        tracing::error!("stream {}: can not start: {}", cfg.name, e.description);
                        continue;
                    }
                    tracing::info!(
                        "Restored stream {:?} in account {:?}: {} messages, {} bytes",
                        cfg.name,
                        self.client.account(),
                        st.msgs,
                        st.bytes
                    );
                    self.recover_consumers(&s, &dir);
                    self.streams.write().insert(cfg.name.clone(), s);
                }
                Err(e) => tracing::error!("stream {}: can not open store: {e}", cfg.name),
            }
        }
    }

    /// Loads the persisted consumers of a recovered stream.
    fn recover_consumers(&self, s: &Arc<Stream>, stream_dir: &Path) {
        let Ok(entries) = std::fs::read_dir(stream_dir.join("obs")) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(meta) = std::fs::read(dir.join("meta.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&meta) else {
                continue;
            };
            let (Some(name), Ok(mut cfg)) = (
                v["name"].as_str().map(String::from),
                serde_json::from_value::<ConsumerConfig>(v["config"].clone()),
            ) else {
                tracing::error!(
                    "consumer metadata {} is unreadable; consumer skipped",
                    dir.display()
                );
                continue;
            };
            cfg.normalize();
            let created = v["created_ns"]
                .as_i64()
                .map_or(SystemTime::now(), from_unix_nanos);
            // The state slots; `state.json` is where versions before them kept it.
            let saved = match natrium_store::DocFile::open(&dir, "state") {
                Ok((_, Some(body))) => Some(body),
                Ok((_, None)) => std::fs::read(dir.join("state.json")).ok(),
                Err(e) => {
                    tracing::error!(
                        "consumer {name} in {}: reading its state failed: {e}",
                        dir.display()
                    );
                    continue;
                }
            };
            let c = Consumer::new(
                name,
                &s.consumers,
                s.dead_letter(),
                cfg,
                created,
                Some(dir),
                saved,
            );
            if c.start().is_ok() {
                s.consumers.insert(c);
            }
        }
    }

    fn check_overlap(&self, cfg: &StreamConfig) -> Result<(), ApiError> {
        for (other_name, other) in self.streams.read().iter() {
            if other_name == &cfg.name {
                continue;
            }
            let other = other.config();
            for a in &cfg.subjects {
                if other
                    .subjects
                    .iter()
                    .any(|b| natrium_subjects::overlaps(a.as_bytes(), b.as_bytes()))
                {
                    return Err(ApiError::subjects_overlap());
                }
            }
        }
        Ok(())
    }

    /// The account's stream count, consumer and byte limits, as nats-server checks them on a
    /// stream create or update: `max_bytes` required, each stream's `max_bytes` (a stream
    /// without one counts a byte) reserved against the memory or file limit.
    fn check_limits(&self, cfg: &StreamConfig, replacing: Option<&str>) -> Result<(), ApiError> {
        let streams = self.streams.read();
        let l = &self.limits();
        if l.no_tier {
            return Err(ApiError::no_limits());
        }
        if replacing.is_none() && l.max_streams > 0 && streams.len() as i64 >= l.max_streams {
            return Err(ApiError::max_streams());
        }
        if !self.reservations {
            return Ok(());
        }
        if l.max_bytes_required && cfg.max_bytes <= 0 {
            return Err(ApiError::max_bytes_required());
        }
        if cfg.max_consumers > 0 && l.max_consumers > 0 && cfg.max_consumers > l.max_consumers {
            return Err(ApiError::max_consumers());
        }
        let (limit, stream_max, exceeded): (i64, i64, fn() -> ApiError) = match cfg.storage {
            Storage::Memory => (
                l.max_memory,
                l.memory_max_stream_bytes,
                ApiError::memory_exceeded,
            ),
            Storage::File => (
                l.max_file,
                l.storage_max_stream_bytes,
                ApiError::storage_exceeded,
            ),
        };
        if stream_max > 0 && cfg.max_bytes > stream_max {
            return Err(ApiError::stream_max_bytes_exceeded());
        }
        if limit < 0 {
            return Ok(());
        }
        let reserved: i64 = streams
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != replacing)
            .map(|(_, s)| s.config())
            .filter(|c| c.storage == cfg.storage)
            .map(|c| c.max_bytes.max(0))
            .sum();
        let add = if cfg.max_bytes < 0 {
            1
        } else {
            cfg.max_bytes.max(1)
        };
        if reserved > limit || add > limit - reserved {
            return Err(exceeded());
        }
        Ok(())
    }

    /// Gives stream `s` the account's byte limit check when the account has a limit: the
    /// bytes stored in all its streams of that storage plus the message's may not exceed it, as
    /// nats-server checks each message.
    fn gate(&self, s: &Stream) {
        if !self.reservations {
            return;
        }
        let streams = Arc::downgrade(&self.streams);
        let limits = self.limits.clone();
        s.set_account_gate(Box::new(move |storage, size| {
            let limit = match storage {
                Storage::Memory => limits.read().max_memory,
                Storage::File => limits.read().max_file,
            };
            if limit < 0 {
                return true;
            }
            let Some(streams) = streams.upgrade() else {
                return true;
            };
            let used: u64 = streams
                .read()
                .values()
                .filter(|s| s.storage() == storage)
                .map(|s| s.store.state().bytes)
                .sum();
            used + size <= limit as u64
        }));
    }

    fn write_meta(dir: &Path, cfg: &StreamConfig, created: SystemTime) -> std::io::Result<()> {
        crate::util::fs::create_dir_all_durable(dir)?;
        let body = json!({"config": cfg, "created_ns": unix_nanos(created)});
        crate::util::fs::write_atomic(&dir.join("meta.json"), body.to_string().as_bytes())
    }

    /// Creates a stream from a checked config; an existing stream with the same config is
    /// returned as it is. Whether it was created.
    pub(crate) fn create(&self, cfg: StreamConfig) -> Result<(Arc<Stream>, bool), ApiError> {
        if let Some(existing) = self.streams.read().get(&cfg.name) {
            if super::versioning::same_stream(&existing.config(), &cfg) {
                return Ok((existing.clone(), false));
            }
            return Err(ApiError::stream_name_exists());
        }
        self.check_overlap(&cfg)?;
        self.check_limits(&cfg, None)?;
        let dir = self.dir.join(&cfg.name);
        let created = SystemTime::now();
        Self::write_meta(&dir, &cfg, created)
            .map_err(|e| ApiError::create_failed(e.to_string()))?;
        let store = self
            .open_store(&cfg, &dir)
            .map_err(|e| ApiError::create_failed(e.to_string()))?;
        if cfg.first_seq > 1 {
            store
                .compact(cfg.first_seq)
                .map_err(|e| ApiError::create_failed(e.to_string()))?;
        }
        let name = cfg.name.clone();
        let s = Stream::new(
            cfg,
            created,
            store,
            self.client.clone(),
            self.lazy(),
            self.interest_poll,
        );
        self.gate(&s);
        s.start()?;
        self.streams.write().insert(name, s.clone());
        Ok((s, true))
    }

    /// Updates stream `cfg.name` to a checked config.
    pub(crate) fn update(&self, cfg: StreamConfig) -> Result<Arc<Stream>, ApiError> {
        let s = self.stream(&cfg.name)?;
        s.config().check_update(&cfg)?;
        self.check_overlap(&cfg)?;
        self.check_limits(&cfg, Some(&cfg.name))?;
        s.store
            .update_config(cfg.limits())
            .map_err(|e| ApiError::update_failed(e.to_string()))?;
        Self::write_meta(&self.dir.join(&cfg.name), &cfg, s.created)
            .map_err(|e| ApiError::update_failed(e.to_string()))?;
        s.set_config(cfg)?;
        Ok(s)
    }

    /// Takes stream `name` out of the account and stops it and its consumers; `destroy`
    /// then removes its data.
    pub(crate) fn remove(&self, name: &str) -> Result<Arc<Stream>, ApiError> {
        let s = self
            .streams
            .write()
            .remove(name)
            .ok_or_else(ApiError::stream_not_found)?;
        for c in s.consumers.take_all() {
            c.delete();
        }
        s.shutdown();
        Ok(s)
    }

    /// Removes a removed stream's messages and files.
    pub(crate) fn destroy(&self, s: &Stream) -> Result<(), ApiError> {
        s.store
            .delete()
            .map_err(|e| ApiError::delete_failed(e.to_string()))?;
        let dir = self.dir.join(&s.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| ApiError::delete_failed(e.to_string()))?;
        }
        Ok(())
    }

    /// Where stream `name`'s files are.
    pub(crate) fn stream_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Moves a removed stream's files out of the account to `to` (its store closed first), in
    /// one rename made durable: from then on a restart no longer finds the stream. Where the
    /// rename fails, the files are removed in place.
    pub(crate) fn retire(&self, s: &Stream, to: &Path) -> Result<(), ApiError> {
        let _ = s.store.stop();
        let from = self.dir.join(&s.name);
        if !from.exists() {
            return Ok(());
        }
        let failed = |e: std::io::Error| ApiError::delete_failed(e.to_string());
        if let Err(e) = std::fs::rename(&from, to) {
            tracing::warn!(
                "stream {:?}: moving {} to {}: {e}; removing it in place",
                s.name,
                from.display(),
                to.display()
            );
            std::fs::remove_dir_all(&from).map_err(failed)?;
        }
        for d in [Some(self.dir.as_path()), to.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Adds a consumer with a checked config to stream `s` (or returns or updates the one of
    /// that name, as `action` allows). Whether it was created.
    pub(crate) fn add_consumer(
        &self,
        s: &Arc<Stream>,
        cfg: ConsumerConfig,
        action: Action,
    ) -> Result<(Arc<Consumer>, bool), ApiError> {
        let scfg = s.config();
        for f in cfg.filters() {
            if !scfg
                .subjects
                .iter()
                .any(|ss| natrium_subjects::overlaps(ss.as_bytes(), f.as_bytes()))
            {
                return Err(ApiError::consumer_filter_not_subset());
            }
        }
        let name = cfg
            .given_name()
            .map(String::from)
            .unwrap_or_else(ephemeral_name);
        if let Some(existing) = s.consumers.get(&name) {
            let old = existing.config();
            if super::versioning::same_consumer(&old, &cfg) {
                return Ok((existing, false));
            }
            if action == Action::Create {
                return Err(ApiError::consumer_already_exists());
            }
            old.check_update(&cfg)?;
            existing.set_config(cfg);
            let _ = existing.save_meta();
            return Ok((existing, false));
        }
        if action == Action::Update {
            return Err(ApiError::consumer_does_not_exist());
        }
        // The stream's own limit, or the account's (per stream) where it is lower.
        let mut max = scfg.max_consumers;
        let account_max = self.limits().max_consumers;
        if max <= 0 || (account_max > 0 && account_max < max) {
            max = account_max;
        }
        if max > 0 && s.consumers.len() as i64 >= max {
            return Err(ApiError::max_consumers());
        }
        if scfg.retention == Retention::WorkQueue {
            if cfg.ack_policy != AckPolicy::Explicit {
                return Err(ApiError::wq_requires_explicit_ack());
            }
            let filters = cfg.filters();
            for other in s.consumers.list() {
                let of = other.config().filters();
                if filters.is_empty() || of.is_empty() {
                    return Err(ApiError::wq_multiple_unfiltered());
                }
                if filters.iter().any(|a| {
                    of.iter()
                        .any(|b| natrium_subjects::overlaps(a.as_bytes(), b.as_bytes()))
                }) {
                    return Err(ApiError::wq_not_unique());
                }
            }
        }
        // A replicated stream's consumers keep their progress in the stream's log.
        let persisted = cfg.is_durable()
            && scfg.storage == Storage::File
            && !cfg.mem_storage
            && !s.consumers.replicated();
        let dir = persisted.then(|| self.dir.join(&s.name).join("obs").join(&name));
        let c = Consumer::new(
            name,
            &s.consumers,
            s.dead_letter(),
            cfg,
            SystemTime::now(),
            dir,
            None,
        );
        c.save_meta()
            .map_err(|e| ApiError::consumer_create(e.to_string()))?;
        c.start()?;
        s.consumers.insert(c.clone());
        Ok((c, true))
    }

    /// Deletes consumer `name` of stream `s`; interest streams drop what only it needed.
    pub(crate) fn delete_consumer(&self, s: &Stream, name: &str) -> Result<(), ApiError> {
        let c = s
            .consumers
            .remove(name)
            .ok_or_else(ApiError::consumer_not_found)?;
        c.delete();
        s.consumers.release_unneeded();
        Ok(())
    }

    /// Stops every stream and syncs its store.
    pub(crate) fn shutdown(&self) {
        for s in self.streams.read().values() {
            s.shutdown();
            if let Err(e) = s.store.stop() {
                tracing::warn!("stream {}: stopping store: {e}", s.name);
            }
        }
    }
}
