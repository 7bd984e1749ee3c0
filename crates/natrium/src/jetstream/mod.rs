//! JetStream: per-account stream managers answering the `$JS.API` request/reply API with
//! nats-server's JSON shapes and error codes, streams persisted under
//! `<store_dir>/jetstream/<account>/streams/<name>/` (`meta.json` plus the store's files), and
//! recovery of every stream at start.

pub mod config;
mod consumer;
pub mod consumer_config;
pub mod errors;
mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use natrium_store::{FileStore, FileStoreConfig, MemStore, StoreError, StreamStore, SyncPolicy};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::router::{InternalClient, InternalMsg};
use config::{Storage, StreamConfig};
use consumer::Consumer;
use consumer_config::ConsumerConfig;
use errors::ApiError;
use stream::Stream;

/// JetStream settings (`jetstream { ... }`, `-js`, `-sd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamOptions {
    pub store_dir: PathBuf,
    /// Reported limits; -1 means unlimited.
    pub max_memory: i64,
    pub max_file: i64,
    pub sync: SyncPolicy,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            store_dir: std::env::temp_dir().join("nats"),
            max_memory: -1,
            max_file: -1,
            sync: SyncPolicy::Always,
        }
    }
}

/// Whether JetStream can create and sync a file in its store directory (for `/healthz`).
pub fn check_store_writable(store_dir: &Path) -> std::io::Result<()> {
    let dir = store_dir.join("jetstream");
    std::fs::create_dir_all(&dir)?;
    let probe = dir.join(".healthz");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"ok")?;
        f.sync_data()?;
    }
    std::fs::remove_file(&probe)
}

use crate::util::time::rfc3339;

fn ts_rfc3339(ns: i64) -> String {
    crate::util::time::rfc3339_nanos(ns as i128)
}

/// An account's JetStream limits (`accounts { A: { jetstream { max_mem, max_file, max_streams } } }`);
/// -1 means unlimited. Memory and file limits are reservations: streams must set `max_bytes` and
/// the sum of their `max_bytes` may not exceed the limit, as in nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLimits {
    pub max_memory: i64,
    pub max_file: i64,
    pub max_streams: i64,
    pub max_consumers: i64,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            max_memory: -1,
            max_file: -1,
            max_streams: -1,
            max_consumers: -1,
        }
    }
}

/// JetStream for one server: the accounts it is enabled for.
pub(crate) struct JetStream {
    opts: JetStreamOptions,
    /// The server's name, reported as the leader in stream and consumer info.
    server_name: String,
    accounts: Mutex<Vec<Arc<JsAccount>>>,
}

impl JetStream {
    pub(crate) fn new(opts: JetStreamOptions, server_name: String) -> Arc<JetStream> {
        Arc::new(JetStream {
            opts,
            server_name,
            accounts: Mutex::new(Vec::new()),
        })
    }

    /// Enables JetStream in `client`'s account: recovers its streams and serves its API.
    pub(crate) fn enable_account(
        &self,
        client: InternalClient,
        account_limits: Option<AccountLimits>,
    ) -> std::io::Result<()> {
        let dir = self
            .opts
            .store_dir
            .join("jetstream")
            .join(client.account())
            .join("streams");
        std::fs::create_dir_all(&dir)?;
        let acc = Arc::new(JsAccount {
            client: client.clone(),
            server_name: self.server_name.clone(),
            dir,
            sync: self.opts.sync,
            limits: account_limits.unwrap_or(AccountLimits {
                max_memory: self.opts.max_memory,
                max_file: self.opts.max_file,
                ..AccountLimits::default()
            }),
            reservations: account_limits.is_some(),
            streams: RwLock::new(BTreeMap::new()),
            api_total: AtomicU64::new(0),
            api_errors: AtomicU64::new(0),
        });
        acc.recover();
        // Each server answers the API for its own streams: in a cluster the API stays local
        // (replicated JetStream is to come), while streams and acks are reached from anywhere.
        let sub = client
            .subscribe_local("$JS.API.>", None, 4096)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let serving = acc.clone();
        tokio::spawn(async move {
            let mut sub = sub;
            while let Some(m) = sub.next().await {
                serving.handle(m);
            }
        });
        self.accounts.lock().push(acc);
        Ok(())
    }

    /// The settings JetStream runs with.
    pub(crate) fn options(&self) -> &JetStreamOptions {
        &self.opts
    }

    /// Stops every stream and syncs its store.
    pub(crate) fn shutdown(&self) {
        for acc in self.accounts.lock().iter() {
            for s in acc.streams.read().values() {
                s.shutdown();
                if let Err(e) = s.store.stop() {
                    tracing::warn!("stream {}: stopping store: {e}", s.name);
                }
            }
        }
    }

    /// Numbers for `/varz` and `/jsz`.
    pub(crate) fn usage(&self) -> Value {
        let mut streams = 0;
        let mut messages = 0;
        let mut bytes = 0;
        for acc in self.accounts.lock().iter() {
            for s in acc.streams.read().values() {
                let st = s.store.state();
                streams += 1;
                messages += st.msgs;
                bytes += st.bytes;
            }
        }
        let consumers: usize = self
            .accounts
            .lock()
            .iter()
            .flat_map(|a| {
                a.streams
                    .read()
                    .values()
                    .map(|s| s.consumers.read().len())
                    .collect::<Vec<_>>()
            })
            .sum();
        json!({"streams": streams, "consumers": consumers, "messages": messages, "bytes": bytes, "accounts": self.accounts.lock().len()})
    }

    /// Per-stream and per-consumer figures for `/metrics` (label cardinality: account, stream,
    /// consumer; never subject).
    pub(crate) fn stream_stats(&self) -> Vec<StreamStats> {
        let mut out = Vec::new();
        for acc in self.accounts.lock().iter() {
            for s in acc.streams.read().values() {
                let st = s.store.state();
                let storage = match s.config().storage {
                    Storage::File => "file",
                    Storage::Memory => "memory",
                };
                let consumers = s
                    .consumers
                    .read()
                    .values()
                    .map(|c| {
                        let (pending, ack_pending, redelivered, waiting) = c.lag();
                        ConsumerStats {
                            name: c.name.clone(),
                            num_pending: pending,
                            num_ack_pending: ack_pending,
                            num_redelivered: redelivered,
                            num_waiting: waiting,
                        }
                    })
                    .collect();
                out.push(StreamStats {
                    account: acc.client.account().to_string(),
                    stream: s.name.clone(),
                    storage,
                    messages: st.msgs,
                    bytes: st.bytes,
                    last_seq: st.last_seq,
                    consumers,
                });
            }
        }
        out
    }
}

/// One stream's figures for monitoring.
pub(crate) struct StreamStats {
    pub account: String,
    pub stream: String,
    pub storage: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub last_seq: u64,
    pub consumers: Vec<ConsumerStats>,
}

/// One consumer's lag figures.
pub(crate) struct ConsumerStats {
    pub name: String,
    pub num_pending: u64,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub num_waiting: u64,
}

struct JsAccount {
    client: InternalClient,
    server_name: String,
    dir: PathBuf,
    sync: SyncPolicy,
    limits: AccountLimits,
    /// Whether account limits were configured (then streams must reserve `max_bytes`).
    reservations: bool,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    api_total: AtomicU64,
    api_errors: AtomicU64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PagedRequest {
    offset: usize,
    subject: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InfoRequest {
    subjects_filter: Option<String>,
    deleted_details: bool,
    offset: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PurgeRequest {
    filter: Option<String>,
    seq: u64,
    keep: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MsgGetRequest {
    seq: u64,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MsgDeleteRequest {
    seq: u64,
    no_erase: bool,
}

fn parse<T: for<'de> Deserialize<'de> + Default>(payload: &[u8]) -> Result<T, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // Some clients send `null` for "no options".
    match serde_json::from_slice::<Value>(payload).map_err(ApiError::invalid_json)? {
        Value::Null => Ok(T::default()),
        v => serde_json::from_value(v).map_err(ApiError::invalid_json),
    }
}

const API_PREFIX: &str = "$JS.API.";

impl JsAccount {
    /// Whether PubAcks may leave before the sync (file streams in `sync_interval` mode).
    fn lazy(&self) -> bool {
        matches!(self.sync, SyncPolicy::Interval(_))
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

    /// Loads every stream found on disk.
    fn recover(&self) {
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
                .map_or(SystemTime::now(), crate::util::time::from_unix_nanos);
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
                    );
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

    fn respond(&self, reply: Option<&str>, kind: &str, result: Result<Value, ApiError>) {
        let body = match result {
            Ok(mut v) => {
                v["type"] = json!(format!("io.nats.jetstream.api.v1.{kind}"));
                v
            }
            Err(e) => {
                self.api_errors.fetch_add(1, Ordering::Relaxed);
                json!({"type": format!("io.nats.jetstream.api.v1.{kind}"), "error": e})
            }
        };
        if let Some(r) = reply {
            let _ = self
                .client
                .publish(r, None, None, body.to_string().as_bytes());
        }
    }

    fn handle(&self, m: InternalMsg) {
        self.api_total.fetch_add(1, Ordering::Relaxed);
        let Some(rest) = m.subject.strip_prefix(API_PREFIX) else {
            return;
        };
        let reply = m.reply.as_deref();
        let tokens: Vec<&str> = rest.splitn(4, '.').collect();
        match tokens.as_slice() {
            ["INFO"] => self.respond(reply, "account_info_response", Ok(self.account_info())),
            ["STREAM", "CREATE", name] => self.respond(
                reply,
                "stream_create_response",
                self.create(name, &m.payload),
            ),
            ["STREAM", "UPDATE", name] => self.respond(
                reply,
                "stream_update_response",
                self.update(name, &m.payload),
            ),
            ["STREAM", "INFO", name] => {
                self.respond(reply, "stream_info_response", self.info(name, &m.payload))
            }
            ["STREAM", "DELETE", name] => {
                self.respond(reply, "stream_delete_response", self.delete(name))
            }
            ["STREAM", "PURGE", name] => {
                self.respond(reply, "stream_purge_response", self.purge(name, &m.payload))
            }
            ["STREAM", "NAMES"] => {
                self.respond(reply, "stream_names_response", self.names(&m.payload))
            }
            ["STREAM", "LIST"] => {
                self.respond(reply, "stream_list_response", self.list(&m.payload))
            }
            ["STREAM", "MSG", "GET", name] => self.respond(
                reply,
                "stream_msg_get_response",
                self.msg_get(name, &m.payload),
            ),
            ["STREAM", "MSG", "DELETE", name] => self.respond(
                reply,
                "stream_msg_delete_response",
                self.msg_delete(name, &m.payload),
            ),
            ["DIRECT", "GET", rest @ ..] => self.direct_get(reply, &rest.join("."), &m.payload),
            ["CONSUMER", "CREATE", stream, rest] => {
                let (name, filter) = match rest.split_once('.') {
                    Some((n, f)) => (Some(n), Some(f)),
                    None => (Some(*rest), None),
                };
                let r = self.create_consumer(stream, name, filter, false, &m.payload);
                self.respond(reply, "consumer_create_response", r)
            }
            ["CONSUMER", "CREATE", stream] => {
                let r = self.create_consumer(stream, None, None, false, &m.payload);
                self.respond(reply, "consumer_create_response", r)
            }
            ["CONSUMER", "DURABLE", "CREATE", rest] => {
                let r = match rest.split_once('.') {
                    Some((stream, durable)) => {
                        self.create_consumer(stream, Some(durable), None, true, &m.payload)
                    }
                    None => Err(ApiError::bad_request()),
                };
                self.respond(reply, "consumer_create_response", r)
            }
            ["CONSUMER", "INFO", stream, name] => {
                let r = self
                    .consumer(stream, name)
                    .map(|(_, c)| c.info(&self.server_name));
                self.respond(reply, "consumer_info_response", r)
            }
            ["CONSUMER", "DELETE", stream, name] => self.respond(
                reply,
                "consumer_delete_response",
                self.delete_consumer(stream, name),
            ),
            ["CONSUMER", "NAMES", stream] => self.respond(
                reply,
                "consumer_names_response",
                self.consumer_names(stream, &m.payload, false),
            ),
            ["CONSUMER", "LIST", stream] => self.respond(
                reply,
                "consumer_list_response",
                self.consumer_names(stream, &m.payload, true),
            ),
            ["CONSUMER", "PAUSE", stream, name] => self.respond(
                reply,
                "consumer_pause_response",
                self.pause_consumer(stream, name, &m.payload),
            ),
            ["CONSUMER", "MSG", "NEXT", rest] => match rest
                .split_once('.')
                .and_then(|(s, c)| self.consumer(s, c).ok())
            {
                Some((_, c)) => c.pull(reply, &m.payload),
                None => {
                    if let Some(r) = reply {
                        let _ = self
                            .client
                            .publish(r, None, Some(b"NATS/1.0 503\r\n\r\n"), b"");
                    }
                }
            },
            _ => self.respond(reply, "error_response", Err(ApiError::bad_request())),
        }
    }

    fn advisory_stream(&self, kind: &str, stream: &str, action: &str) {
        let body = json!({
            "type": "io.nats.jetstream.advisory.v1.stream_action",
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": rfc3339(SystemTime::now()),
            "stream": stream,
            "action": action,
        });
        let subject = format!("$JS.EVENT.ADVISORY.STREAM.{kind}.{stream}");
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    fn advisory_consumer(&self, kind: &str, stream: &str, consumer: &str, action: &str) {
        let body = json!({
            "type": "io.nats.jetstream.advisory.v1.consumer_action",
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": rfc3339(SystemTime::now()),
            "stream": stream,
            "consumer": consumer,
            "action": action,
        });
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.{consumer}");
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    fn consumer(&self, stream: &str, name: &str) -> Result<(Arc<Stream>, Arc<Consumer>), ApiError> {
        let s = self.stream(stream)?;
        let c = s
            .consumers
            .read()
            .get(name)
            .cloned()
            .ok_or_else(ApiError::consumer_not_found)?;
        Ok((s, c))
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
                .map_or(SystemTime::now(), crate::util::time::from_unix_nanos);
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
            let c = Consumer::new(name.clone(), s, cfg, created, Some(dir), saved);
            if c.start().is_ok() {
                s.consumers.write().insert(name, c);
            }
        }
    }

    fn create_consumer(
        &self,
        stream: &str,
        subject_name: Option<&str>,
        subject_filter: Option<&str>,
        durable_api: bool,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        #[derive(Deserialize)]
        struct CreateRequest {
            #[serde(default)]
            stream_name: String,
            config: Option<ConsumerConfig>,
            #[serde(default)]
            action: String,
        }
        let req: CreateRequest = serde_json::from_slice(payload).map_err(ApiError::invalid_json)?;
        if !req.stream_name.is_empty() && req.stream_name != stream {
            return Err(ApiError::stream_mismatch());
        }
        let mut cfg = req
            .config
            .ok_or_else(|| ApiError::consumer_create("consumer config required"))?;
        // An empty name is no name (nats.js sends `"name": ""` for its ordered consumers).
        cfg.name = cfg.name.filter(|n| !n.is_empty());
        cfg.durable_name = cfg.durable_name.filter(|n| !n.is_empty());
        let s = self.stream(stream)?;
        if let Some(n) = subject_name {
            if durable_api {
                match &cfg.durable_name {
                    Some(d) if d != n => return Err(ApiError::consumer_durable_mismatch()),
                    _ => cfg.durable_name = Some(n.to_string()),
                }
            } else {
                if cfg.given_name().is_some_and(|g| g != n) {
                    return Err(ApiError::consumer_durable_mismatch());
                }
                cfg.name = Some(n.to_string());
            }
        }
        if let Some(f) = subject_filter {
            if cfg.filter_subject.as_deref() != Some(f) || !cfg.filter_subjects.is_empty() {
                return Err(ApiError::consumer_filter_mismatch());
            }
        }
        cfg.normalize();
        cfg.validate()?;
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
            .unwrap_or_else(consumer::ephemeral_name);
        let existing = s.consumers.read().get(&name).cloned();
        if let Some(existing) = existing {
            let old = existing.config();
            if old == cfg {
                return Ok(existing.info(&self.server_name));
            }
            if req.action == "create" {
                return Err(ApiError::consumer_already_exists());
            }
            old.check_update(&cfg)?;
            existing.set_config(cfg);
            let _ = existing.save_meta();
            return Ok(existing.info(&self.server_name));
        }
        if req.action == "update" {
            return Err(ApiError::consumer_does_not_exist());
        }
        if scfg.retention == config::Retention::WorkQueue {
            if cfg.ack_policy != consumer_config::AckPolicy::Explicit {
                return Err(ApiError::wq_requires_explicit_ack());
            }
            let filters = cfg.filters();
            for other in s.consumers.read().values() {
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
        let persisted = cfg.is_durable() && scfg.storage == Storage::File && !cfg.mem_storage;
        let dir = persisted.then(|| self.dir.join(stream).join("obs").join(&name));
        let c = Consumer::new(name.clone(), &s, cfg, SystemTime::now(), dir, None);
        c.save_meta()
            .map_err(|e| ApiError::consumer_create(e.to_string()))?;
        c.start()?;
        s.consumers.write().insert(name.clone(), c.clone());
        self.advisory_consumer("CREATED", stream, &name, "create");
        Ok(c.info(&self.server_name))
    }

    fn delete_consumer(&self, stream: &str, name: &str) -> Result<Value, ApiError> {
        let s = self.stream(stream)?;
        let c = s
            .remove_consumer(name)
            .ok_or_else(ApiError::consumer_not_found)?;
        c.delete();
        s.release_unneeded();
        self.advisory_consumer("DELETED", stream, name, "delete");
        Ok(json!({"success": true}))
    }

    fn consumer_names(&self, stream: &str, payload: &[u8], full: bool) -> Result<Value, ApiError> {
        let req: PagedRequest = parse(payload)?;
        let s = self.stream(stream)?;
        let consumers: Vec<Arc<Consumer>> = s.consumers.read().values().cloned().collect();
        let total = consumers.len();
        let limit = if full { 256 } else { 1024 };
        let page = consumers.iter().skip(req.offset).take(limit);
        let list: Vec<Value> = if full {
            page.map(|c| c.info(&self.server_name)).collect()
        } else {
            page.map(|c| json!(c.name)).collect()
        };
        Ok(json!({"total": total, "offset": req.offset, "limit": limit, "consumers": list}))
    }

    fn pause_consumer(&self, stream: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct PauseRequest {
            pause_until: Option<String>,
        }
        let req: PauseRequest = parse(payload)?;
        let (_, c) = self.consumer(stream, name)?;
        let mut cfg = c.config();
        cfg.pause_until = req.pause_until.clone();
        c.set_config(cfg);
        let _ = c.save_meta();
        let until = req.pause_until.as_deref().and_then(consumer::parse_time);
        let now = SystemTime::now();
        let paused = until.is_some_and(|u| u > now);
        let remaining = until
            .and_then(|u| u.duration_since(now).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(json!({
            "paused": paused,
            "pause_until": req.pause_until.unwrap_or_else(|| rfc3339(SystemTime::UNIX_EPOCH)),
            "pause_remaining": remaining,
        }))
    }

    fn stream(&self, name: &str) -> Result<Arc<Stream>, ApiError> {
        self.streams
            .read()
            .get(name)
            .cloned()
            .ok_or_else(ApiError::stream_not_found)
    }

    fn account_info(&self) -> Value {
        let (mut memory, mut storage) = (0u64, 0u64);
        let streams = self.streams.read();
        for s in streams.values() {
            let bytes = s.store.state().bytes;
            match s.config().storage {
                Storage::Memory => memory += bytes,
                Storage::File => storage += bytes,
            }
        }
        json!({
            "memory": memory,
            "storage": storage,
            "reserved_memory": 0,
            "reserved_storage": 0,
            "streams": streams.len(),
            "consumers": streams.values().map(|s| s.consumers.read().len()).sum::<usize>(),
            "limits": {
                                "max_memory": self.limits.max_memory,
                "max_storage": self.limits.max_file,
                "max_streams": self.limits.max_streams,
                "max_consumers": self.limits.max_consumers,
                "max_ack_pending": -1,
                "memory_max_stream_bytes": -1,
                "storage_max_stream_bytes": -1,
                                "max_bytes_required": self.reservations && (self.limits.max_file > 0 || self.limits.max_memory > 0),
            },
            "api": {
                "total": self.api_total.load(Ordering::Relaxed),
                "errors": self.api_errors.load(Ordering::Relaxed),
            },
        })
    }

    fn stream_info(&self, s: &Stream, req: &InfoRequest) -> Value {
        let st = s.store.state();
        let mut state = json!({
            "messages": st.msgs,
            "bytes": st.bytes,
            "first_seq": st.first_seq,
            "first_ts": ts_rfc3339(st.first_ts),
            "last_seq": st.last_seq,
            "last_ts": ts_rfc3339(st.last_ts),
            "num_subjects": st.num_subjects,
            "num_deleted": st.num_deleted,
            "consumer_count": s.consumers.read().len(),
        });
        if !st.lost.is_empty() {
            state["lost"] = json!({"msgs": st.lost, "bytes": 0});
        }
        if req.deleted_details {
            state["deleted"] = json!(s.store.deleted());
        }
        if let Some(filter) = &req.subjects_filter {
            let subjects: serde_json::Map<String, Value> = s
                .store
                .subjects_state(filter.as_bytes())
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), json!(v)))
                .collect();
            state["subjects"] = Value::Object(subjects);
        }
        json!({
            "config": s.config(),
            "created": rfc3339(s.created),
            "state": state,
            "cluster": {"leader": self.server_name},
            "ts": rfc3339(SystemTime::now()),
        })
    }

    fn parse_config(&self, name: &str, payload: &[u8]) -> Result<StreamConfig, ApiError> {
        let mut cfg: StreamConfig =
            serde_json::from_slice(payload).map_err(ApiError::invalid_json)?;
        if cfg.name.is_empty() {
            cfg.name = name.to_string();
        }
        if cfg.name != name {
            return Err(ApiError::stream_mismatch());
        }
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
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

    /// The account's stream count and storage reservations, as nats-server checks them.
    fn check_limits(&self, cfg: &StreamConfig, replacing: Option<&str>) -> Result<(), ApiError> {
        let streams = self.streams.read();
        let others = streams
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != replacing);
        if replacing.is_none()
            && self.limits.max_streams > 0
            && streams.len() as i64 >= self.limits.max_streams
        {
            return Err(ApiError::max_streams());
        }
        if !self.reservations {
            return Ok(());
        }
        let (limit, storage) = match cfg.storage {
            Storage::Memory => (self.limits.max_memory, Storage::Memory),
            Storage::File => (self.limits.max_file, Storage::File),
        };
        if limit == 0 {
            return Err(match storage {
                Storage::Memory => ApiError::memory_exceeded(),
                Storage::File => ApiError::storage_exceeded(),
            });
        }
        if limit < 0 {
            return Ok(());
        }
        if cfg.max_bytes <= 0 {
            return Err(ApiError::max_bytes_required());
        }
        let reserved: i64 = others
            .map(|(_, s)| s.config())
            .filter(|c| c.storage == storage)
            .map(|c| c.max_bytes.max(0))
            .sum();
        if reserved + cfg.max_bytes > limit {
            return Err(match storage {
                Storage::Memory => ApiError::memory_exceeded(),
                Storage::File => ApiError::storage_exceeded(),
            });
        }
        Ok(())
    }

    fn write_meta(dir: &Path, cfg: &StreamConfig, created: SystemTime) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let created_ns = crate::util::time::unix_nanos(created);
        let body = json!({"config": cfg, "created_ns": created_ns});
        crate::util::fs::write_atomic(&dir.join("meta.json"), body.to_string().as_bytes())
    }

    fn create(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let cfg = self.parse_config(name, payload)?;
        if let Some(existing) = self.streams.read().get(name) {
            if existing.config() == cfg {
                let mut info = self.stream_info(existing, &InfoRequest::default());
                info["did_create"] = json!(false);
                return Ok(info);
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
        let s = Stream::new(cfg, created, store, self.client.clone(), self.lazy());
        s.start()?;
        self.streams.write().insert(name.to_string(), s.clone());
        self.advisory_stream("CREATED", name, "create");
        let mut info = self.stream_info(&s, &InfoRequest::default());
        info["did_create"] = json!(true);
        Ok(info)
    }

    fn update(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let cfg = self.parse_config(name, payload)?;
        let s = self.stream(name)?;
        let old = s.config();
        old.check_update(&cfg)?;
        self.check_overlap(&cfg)?;
        self.check_limits(&cfg, Some(name))?;
        s.store
            .update_config(cfg.limits())
            .map_err(|e| ApiError::update_failed(e.to_string()))?;
        Self::write_meta(&self.dir.join(name), &cfg, s.created)
            .map_err(|e| ApiError::update_failed(e.to_string()))?;
        s.set_config(cfg)?;
        Ok(self.stream_info(&s, &InfoRequest::default()))
    }

    fn info(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: InfoRequest = parse(payload)?;
        let s = self.stream(name)?;
        let mut info = self.stream_info(&s, &req);
        if req.subjects_filter.is_some() {
            info["total"] = json!(info["state"]["subjects"].as_object().map_or(0, |o| o.len()));
            info["offset"] = json!(req.offset);
            info["limit"] = json!(100_000);
        }
        Ok(info)
    }

    fn delete(&self, name: &str) -> Result<Value, ApiError> {
        let s = self
            .streams
            .write()
            .remove(name)
            .ok_or_else(ApiError::stream_not_found)?;
        let consumers: Vec<_> = std::mem::take(&mut *s.consumers.write())
            .into_values()
            .collect();
        for c in consumers {
            c.delete();
        }
        s.shutdown();
        self.advisory_stream("DELETED", name, "delete");
        s.store
            .delete()
            .map_err(|e| ApiError::delete_failed(e.to_string()))?;
        let dir = self.dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| ApiError::delete_failed(e.to_string()))?;
        }
        Ok(json!({"success": true}))
    }

    fn purge(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PurgeRequest = parse(payload)?;
        let s = self.stream(name)?;
        let cfg = s.config();
        if cfg.sealed {
            return Err(ApiError::sealed());
        }
        if cfg.deny_purge {
            return Err(ApiError::purge_failed("stream purge not permitted"));
        }
        let purged = match (&req.filter, req.seq, req.keep) {
            (None, 0, 0) => s.store.purge(),
            (filter, seq, keep) => {
                s.store
                    .purge_ex(filter.as_deref().unwrap_or("").as_bytes(), seq, keep)
            }
        }
        .map_err(|e| ApiError::purge_failed(e.to_string()))?;
        s.recount_consumers();
        Ok(json!({"success": true, "purged": purged}))
    }

    /// Streams with a subject overlapping `filter` (all of them without one), by name.
    fn streams_matching(&self, filter: Option<&str>) -> Vec<Arc<Stream>> {
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

    fn names(&self, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PagedRequest = parse(payload)?;
        let matching = self.streams_matching(req.subject.as_deref());
        let page: Vec<&str> = matching
            .iter()
            .skip(req.offset)
            .take(1024)
            .map(|s| s.name.as_str())
            .collect();
        Ok(json!({"total": matching.len(), "offset": req.offset, "limit": 1024, "streams": page}))
    }

    fn list(&self, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PagedRequest = parse(payload)?;
        let matching = self.streams_matching(req.subject.as_deref());
        let infos: Vec<Value> = matching
            .iter()
            .skip(req.offset)
            .take(256)
            .map(|s| self.stream_info(s, &InfoRequest::default()))
            .collect();
        Ok(
            json!({"total": matching.len(), "offset": req.offset, "limit": 256, "streams": infos, "missing": []}),
        )
    }

    fn load(&self, s: &Stream, req: &MsgGetRequest) -> Result<natrium_store::StoredMsg, ApiError> {
        let found = match (&req.last_by_subj, &req.next_by_subj) {
            (Some(subj), _) => s.store.load_last_by_subject(subj.as_bytes()),
            (None, Some(subj)) => s.store.load_next_msg(subj.as_bytes(), req.seq.max(1)),
            (None, None) if req.seq > 0 => s.store.load_msg(req.seq),
            _ => return Err(ApiError::bad_request()),
        };
        found.map_err(|e| match e {
            StoreError::Corrupt { .. } => ApiError::store_failed(e.to_string()),
            _ => ApiError::no_message_found(),
        })
    }

    fn msg_get(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: MsgGetRequest = parse(payload)?;
        let s = self.stream(name)?;
        let m = self.load(&s, &req)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut message = json!({
            "subject": String::from_utf8_lossy(&m.subject),
            "seq": m.seq,
            "time": ts_rfc3339(m.ts),
        });
        if !m.payload.is_empty() {
            message["data"] = json!(b64.encode(&m.payload));
        }
        if let Some(h) = &m.headers {
            message["hdrs"] = json!(b64.encode(h));
        }
        Ok(json!({"message": message}))
    }

    fn msg_delete(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: MsgDeleteRequest = parse(payload)?;
        let s = self.stream(name)?;
        let cfg = s.config();
        if cfg.sealed {
            return Err(ApiError::sealed());
        }
        if cfg.deny_delete {
            return Err(ApiError::msg_delete_failed("message delete not permitted"));
        }
        let removed = if req.no_erase {
            s.store.remove_msg(req.seq)
        } else {
            s.store.erase_msg(req.seq)
        }
        .map_err(|e| ApiError::msg_delete_failed(e.to_string()))?;
        if !removed {
            return Err(ApiError::msg_delete_failed("no message found"));
        }
        Ok(json!({"success": true}))
    }

    /// `$JS.API.DIRECT.GET.<stream>[.<subject>]`: the message itself with its metadata in headers,
    /// or a 404 status.
    fn direct_get(&self, reply: Option<&str>, rest: &str, payload: &[u8]) {
        let Some(reply) = reply else { return };
        let (name, subject) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        let status = |code: &str| format!("NATS/1.0 {code}\r\n\r\n").into_bytes();
        let Ok(s) = self.stream(name) else {
            let _ = self
                .client
                .publish(reply, None, Some(&status("404 Message Not Found")), b"");
            return;
        };
        if !s.config().allow_direct {
            let _ = self
                .client
                .publish(reply, None, Some(&status("400 Bad Request")), b"");
            return;
        }
        let req = match subject {
            Some(subj) => MsgGetRequest {
                last_by_subj: Some(subj.to_string()),
                ..MsgGetRequest::default()
            },
            None => match parse::<MsgGetRequest>(payload) {
                Ok(r) => r,
                Err(_) => {
                    let _ = self
                        .client
                        .publish(reply, None, Some(&status("408 Bad Request")), b"");
                    return;
                }
            },
        };
        match self.load(&s, &req) {
            Ok(m) => {
                let mut h = format!(
                    "NATS/1.0\r\nNats-Stream: {}\r\nNats-Subject: {}\r\nNats-Sequence: {}\r\nNats-Time-Stamp: {}\r\n",
                    s.name,
                    String::from_utf8_lossy(&m.subject),
                    m.seq,
                    ts_rfc3339(m.ts)
                )
                .into_bytes();
                if let Some(orig) = &m.headers {
                    // Append the original headers, without their own status line.
                    if let Some(i) = orig.windows(2).position(|w| w == b"\r\n") {
                        let body = &orig[i + 2..];
                        h.extend_from_slice(body.strip_suffix(b"\r\n").unwrap_or(body));
                    }
                }
                h.extend_from_slice(b"\r\n");
                let _ = self.client.publish(reply, None, Some(&h), &m.payload);
            }
            Err(_) => {
                let _ =
                    self.client
                        .publish(reply, None, Some(&status("404 Message Not Found")), b"");
            }
        }
    }
}
