//! JetStream for a server: its settings, the accounts it is enabled for (each a `Catalog` of
//! streams served by an `Api` task), shutdown, and the figures monitoring reads.

mod api;
mod catalog;
mod cluster;
pub mod config;
mod consumer;
pub mod consumer_config;
pub mod errors;
mod stream;
mod versioning;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use natrium_store::SyncPolicy;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::auth::jwt::{JetStreamLimitsNats, JwtJetStream};
use crate::router::InternalClient;
use api::Api;
use catalog::Catalog;
pub(crate) use cluster::ClusterSettings;
use cluster::JsCluster;
use config::Storage;

/// JetStream settings (`jetstream { ... }`, `-js`, `-sd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamOptions {
    pub store_dir: PathBuf,
    /// Reported limits; -1 means unlimited.
    pub max_memory: i64,
    pub max_file: i64,
    pub sync: SyncPolicy,
    /// `domain`: the API is also served as `$JS.<domain>.API.>`, interest that crosses routes
    /// and leafnode connections, so a hub's clients reach an edge's streams by its domain.
    pub domain: Option<String>,
    /// Entries a replicated stream's Raft group applies between two snapshots (default
    /// 16 Ki). Not in the config file: a knob for tests and measurements.
    pub raft_snapshot_every: Option<u64>,
    /// A hook for tests, not in the config file: an R1 -> replicated conversion started
    /// through the API here stops before the step of this name (`assign`, `take`, `import`,
    /// `import-half`, `retire`, `release`, `grow`, `forget`) until
    /// `Server::continue_conversions`, or for good when the server stops (a cut there).
    #[doc(hidden)]
    pub conversion_pause: Option<String>,
    /// How often a push consumer looks for interest on its deliver subject without being
    /// woken by the router's watch (default 1 s, a safety net). Not in the config file: a knob
    /// for tests (a very long poll shows that the watch alone delivers).
    #[doc(hidden)]
    pub push_interest_poll: Option<std::time::Duration>,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            store_dir: std::env::temp_dir().join("nats"),
            max_memory: -1,
            max_file: -1,
            sync: SyncPolicy::Always,
            domain: None,
            raft_snapshot_every: None,
            conversion_pause: None,
            push_interest_poll: None,
        }
    }
}

/// Whether JetStream can create and sync a file in its store directory (for `/healthz`).
pub fn check_store_writable(store_dir: &Path) -> std::io::Result<()> {
    let dir = store_dir.join("jetstream");
    crate::util::fs::create_dir_all_durable(&dir)?;
    let probe = dir.join(".healthz");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"ok")?;
        f.sync_data()?;
    }
    std::fs::remove_file(&probe)
}

/// An account's JetStream limits (`accounts { A: { jetstream { max_mem, max_file, max_streams,
/// max_consumers, max_ack_pending, max_bytes_required } } }`, or an account JWT's); -1 means
/// unlimited. As in nats-server: the streams' `max_bytes` are reserved against the memory and
/// file limits, the stored bytes may not exceed them, `max_consumers` counts per stream, and
/// `max_ack_pending` caps (and defaults) each consumer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLimits {
    pub max_memory: i64,
    pub max_file: i64,
    pub max_streams: i64,
    pub max_consumers: i64,
    pub max_ack_pending: i64,
    /// Streams must set `max_bytes`.
    pub max_bytes_required: bool,
    /// Largest `max_bytes` a memory (file) stream may have.
    pub memory_max_stream_bytes: i64,
    pub storage_max_stream_bytes: i64,
    /// From an account JWT's `tiered_limits`: these are tier `R1`'s (the only tier a server
    /// without replication uses), reported under `tiers`; `no_tier` when the JWT has tiers but
    /// no `R1` (then no stream can be created, as nats-server refuses them).
    pub tiered: bool,
    pub no_tier: bool,
}

impl AccountLimits {
    /// The limits an account JWT grants, as nats-server reads them (a non-positive stream
    /// byte or ack pending limit is unlimited).
    pub fn from_jwt(j: &JwtJetStream) -> AccountLimits {
        let unlimited = |v: i64| if v > 0 { v } else { -1 };
        let of = |l: &JetStreamLimitsNats| AccountLimits {
            max_memory: l.mem_storage,
            max_file: l.disk_storage,
            max_streams: l.streams,
            max_consumers: l.consumer,
            max_ack_pending: unlimited(l.max_ack_pending),
            max_bytes_required: l.max_bytes_required,
            memory_max_stream_bytes: unlimited(l.mem_max_stream_bytes),
            storage_max_stream_bytes: unlimited(l.disk_max_stream_bytes),
            tiered: false,
            no_tier: false,
        };
        match j {
            JwtJetStream::Flat(l) => of(l),
            JwtJetStream::Tiered(tiers) => match tiers.get("R1") {
                Some(l) => AccountLimits {
                    tiered: true,
                    ..of(l)
                },
                None => AccountLimits {
                    tiered: true,
                    no_tier: true,
                    max_memory: 0,
                    max_file: 0,
                    max_streams: 0,
                    max_consumers: 0,
                    ..AccountLimits::default()
                },
            },
        }
    }
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            max_memory: -1,
            max_file: -1,
            max_streams: -1,
            max_consumers: -1,
            max_ack_pending: -1,
            max_bytes_required: false,
            memory_max_stream_bytes: -1,
            storage_max_stream_bytes: -1,
            tiered: false,
            no_tier: false,
        }
    }
}

/// JetStream for one server: the accounts it is enabled for.
pub(crate) struct JetStream {
    opts: JetStreamOptions,
    /// The server's name, reported as the leader in stream and consumer info.
    server_name: String,
    accounts: Mutex<Vec<Arc<Catalog>>>,
    /// Held from start until shutdown: no second process opens this store directory.
    lock: Mutex<Option<natrium_store::StoreDirLock>>,
    /// Each account's API (its counters and info documents), in the order enabled.
    apis: Mutex<Vec<Arc<Api>>>,
    /// Replicated JetStream, when this server is in a cluster.
    cluster: Arc<OnceLock<Arc<JsCluster>>>,
}

/// A message as a server's own copy of a stream holds it (`Server::local_messages`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMsg {
    pub seq: u64,
    pub subject: String,
    /// The header block as text.
    pub headers: Option<String>,
    pub payload: Vec<u8>,
}

/// What `/jsz` asks for (`acc`, `accounts`, `streams`, `consumers`, `config`, `offset`,
/// `limit`).
#[derive(Debug, Clone, Default)]
pub struct JszQuery {
    pub account: Option<String>,
    pub accounts: bool,
    pub streams: bool,
    pub consumers: bool,
    pub config: bool,
    /// Only the streams this server leads (nats-server's `leader_only`).
    pub leader_only: bool,
    /// Each stream's Raft group (`stream_raft_group`, nats-server's `raft`).
    pub raft: bool,
    pub offset: usize,
    pub limit: usize,
}

impl JetStream {
    /// Locks `<store_dir>/jetstream`; fails, naming the holder's pid, if another server has it.
    pub(crate) fn new(
        opts: JetStreamOptions,
        server_name: String,
    ) -> std::io::Result<Arc<JetStream>> {
        let lock = natrium_store::StoreDirLock::acquire(&opts.store_dir.join("jetstream"))
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(JetStream {
            opts,
            server_name,
            accounts: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
            apis: Mutex::new(Vec::new()),
            cluster: Arc::new(OnceLock::new()),
        }))
    }

    /// Starts replicated JetStream (the meta group, discovery, forwarding) on this server.
    pub(crate) async fn start_cluster(
        self: &Arc<Self>,
        settings: ClusterSettings,
    ) -> std::io::Result<()> {
        let cl = JsCluster::start(self, &self.server_name, settings).await?;
        let _ = self.cluster.set(cl);
        Ok(())
    }

    /// The catalog of `account`, if JetStream is enabled for it.
    fn catalog(&self, account: &str) -> Option<Arc<Catalog>> {
        self.accounts
            .lock()
            .iter()
            .find(|c| c.account() == account)
            .cloned()
    }

    /// The API of `account`, if JetStream is enabled for it.
    fn api(&self, account: &str) -> Option<Arc<Api>> {
        self.apis
            .lock()
            .iter()
            .find(|a| a.catalog().account() == account)
            .cloned()
    }

    /// The meta group's leader and this server's view of the meta group (None outside a
    /// cluster): (leader name, term, members' names).
    pub(crate) fn meta_view(&self) -> Option<MetaView> {
        let cl = self.cluster.get()?;
        let st = cl.meta_status();
        let mut members: Vec<String> = st.peers.iter().map(|p| p.name.clone()).collect();
        if cl.meta_initialized() {
            members.push(cl.name.clone());
        }
        members.sort();
        Some(MetaView {
            leader: st.leader.map(|l| l.1),
            term: st.term,
            members,
        })
    }

    /// The step an R1 -> replicated conversion of stream `name` is at here, and whether the
    /// test hook holds it there (None when none runs).
    pub(crate) fn conversion(&self, account: &str, name: &str) -> Option<(String, bool)> {
        let p = self.cluster.get()?.conversion(account, name)?;
        Some((p.step.name().to_string(), p.paused))
    }

    /// Lets conversions the test hook paused go on.
    pub(crate) fn continue_conversions(&self) {
        if let Some(cl) = self.cluster.get() {
            cl.continue_conversions();
        }
    }

    /// The leader of replicated stream `name` in `account` as this server knows it.
    pub(crate) fn stream_leader(&self, account: &str, name: &str) -> Option<String> {
        self.cluster.get()?.stream_leader(account, name)
    }

    /// The messages this server's copy of stream `name` holds (sequence, subject, headers,
    /// payload), oldest first: what a replica stored, for checks across replicas.
    pub(crate) fn local_messages(&self, account: &str, name: &str) -> Option<Vec<LocalMsg>> {
        let s = self.catalog(account)?.stream(name).ok()?;
        let mut out = Vec::new();
        let mut seq = s.store.state().first_seq.max(1);
        while let Ok(m) = s.store.load_next_msg(b">", seq) {
            seq = m.seq + 1;
            out.push(LocalMsg {
                seq: m.seq,
                subject: String::from_utf8_lossy(&m.subject).into_owned(),
                headers: m.headers.map(|h| String::from_utf8_lossy(&h).into_owned()),
                payload: m.payload.to_vec(),
            });
        }
        Some(out)
    }

    /// Why this server's JetStream is unhealthy as a cluster member (`/healthz`); Ok outside
    /// a cluster.
    pub(crate) fn cluster_health(&self) -> Result<(), String> {
        self.cluster.get().map_or(Ok(()), |cl| cl.health())
    }

    /// Stops replicated JetStream (its groups sync their logs).
    pub(crate) async fn shutdown_cluster(&self) {
        if let Some(cl) = self.cluster.get() {
            cl.shutdown().await;
        }
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
        crate::util::fs::create_dir_all_durable(&dir)?;
        let limits = account_limits.unwrap_or(AccountLimits {
            max_memory: self.opts.max_memory,
            max_file: self.opts.max_file,
            ..AccountLimits::default()
        });
        let catalog = Arc::new(Catalog::new(
            client.clone(),
            dir,
            self.opts.sync,
            limits,
            account_limits.is_some(),
            self.opts
                .push_interest_poll
                .unwrap_or(consumer::INTEREST_POLL),
        ));
        catalog.recover();
        // Each server answers the API for its own streams: in a cluster the API stays local
        // (replicated JetStream is to come), while streams and acks are reached from anywhere.
        let sub = client
            .subscribe_local("$JS.API.>", None, 4096)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let domain_sub = match &self.opts.domain {
            // One member of the group answers each request, wherever it came from.
            Some(d) => Some((
                format!("$JS.{d}.API."),
                client
                    .subscribe(&format!("$JS.{d}.API.>"), Some("_js_domain"), 4096)
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            )),
            None => None,
        };
        let publisher = client.clone();
        let api = Arc::new(Api::new(
            catalog.clone(),
            client,
            self.server_name.clone(),
            self.cluster.clone(),
        ));
        self.apis.lock().push(api.clone());
        if let Some((prefix, mut sub)) = domain_sub {
            let api = api.clone();
            tokio::spawn(async move {
                while let Some(mut m) = sub.next().await {
                    let Some(rest) = m.subject.strip_prefix(&prefix) else {
                        continue;
                    };
                    if rest.starts_with("$KV.") || rest.starts_with("$OBJ.") {
                        // nats-server's `$JS.<domain>.API.$KV.>` -> `$KV.>` (and `$OBJ`):
                        // a bucket written to by domain is this server's.
                        let (headers, reply) = (m.headers.as_deref(), m.reply.as_deref());
                        let _ = publisher.publish(rest, reply, headers, &m.payload);
                        continue;
                    }
                    m.subject = format!("$JS.API.{rest}");
                    api.handle(m);
                }
            });
        }
        tokio::spawn(async move {
            let mut sub = sub;
            while let Some(m) = sub.next().await {
                api.handle(m);
            }
        });
        self.accounts.lock().push(catalog);
        Ok(())
    }

    /// Whether JetStream is enabled for `account`.
    pub(crate) fn has_account(&self, account: &str) -> bool {
        self.accounts.lock().iter().any(|c| c.account() == account)
    }

    /// New limits for `account` (its JWT changed); streams and consumers already there stay.
    pub(crate) fn set_account_limits(&self, account: &str, limits: AccountLimits) {
        if let Some(c) = self.accounts.lock().iter().find(|c| c.account() == account) {
            c.set_limits(limits);
        }
    }

    /// The settings JetStream runs with.
    pub(crate) fn options(&self) -> &JetStreamOptions {
        &self.opts
    }

    /// Stops every stream and syncs its store.
    pub(crate) fn shutdown(&self) {
        for acc in self.accounts.lock().iter() {
            acc.shutdown();
        }
        self.lock.lock().take();
    }

    /// The `config` object of `/varz`'s and `/jsz`'s JetStream sections.
    pub(crate) fn config_json(&self) -> Value {
        let c = &self.opts;
        let mut v = json!({
            "max_memory": c.max_memory,
            "max_storage": c.max_file,
            "store_dir": c.store_dir,
        });
        if let Some(d) = &c.domain {
            v["domain"] = json!(d);
        }
        match c.sync {
            SyncPolicy::Always => v["sync_always"] = json!(true),
            SyncPolicy::Interval(d) => v["sync_interval"] = json!(d.as_nanos() as u64),
        }
        v
    }

    /// nats-server's `JetStreamStats`: bytes used and reserved by kind, accounts, API counters.
    pub(crate) fn stats(&self) -> Value {
        let apis = self.apis.lock().clone();
        let mut u = api::Usage::default();
        for a in &apis {
            u.add(&a.usage());
        }
        json!({
            "memory": u.memory,
            "storage": u.storage,
            "reserved_memory": u.reserved_memory,
            "reserved_storage": u.reserved_storage,
            "accounts": apis.len(),
            "ha_assets": 0,
            "api": {"level": api::API_LEVEL, "total": u.api_total, "errors": u.api_errors},
        })
    }

    /// The `/jsz` document (without `server_id` and `now`): the stats, totals, and per account
    /// (as `q` asks) its streams and consumers.
    pub(crate) fn jsz(&self, q: &JszQuery) -> Value {
        let mut apis = self.apis.lock().clone();
        let mut v = self.stats();
        v["config"] = self.config_json();
        v["limits"] = json!({});
        let (mut streams, mut consumers, mut messages, mut bytes) = (0, 0, 0, 0);
        for a in &apis {
            for s in a.catalog().streams() {
                let st = s.store.state();
                streams += 1;
                consumers += s.consumers.len();
                messages += st.msgs;
                bytes += st.bytes;
            }
        }
        v["streams"] = json!(streams);
        v["consumers"] = json!(consumers);
        v["messages"] = json!(messages);
        v["bytes"] = json!(bytes);
        v["total"] = json!(apis.len());
        if let Some(cl) = self.cluster.get() {
            v["meta_cluster"] = cl.meta_cluster_info();
        }
        let streams_too = q.streams || q.consumers;
        let chosen: Vec<Arc<Api>> = match &q.account {
            Some(name) => apis
                .iter()
                .filter(|a| a.catalog().account() == name)
                .cloned()
                .collect(),
            None if q.accounts || streams_too => {
                apis.sort_by(|a, b| a.catalog().account().cmp(b.catalog().account()));
                let limit = if q.limit == 0 { 1024 } else { q.limit };
                apis.into_iter().skip(q.offset).take(limit).collect()
            }
            None => Vec::new(),
        };
        if !chosen.is_empty() {
            v["account_details"] = Value::Array(
                chosen
                    .iter()
                    .map(|a| a.account_detail(streams_too, q))
                    .collect(),
            );
        }
        v
    }

    /// Per-stream and per-consumer figures for `/metrics` (label cardinality: account, stream,
    /// consumer; never subject).
    pub(crate) fn stream_stats(&self) -> Vec<StreamStats> {
        let mut out = Vec::new();
        for acc in self.accounts.lock().iter() {
            for s in acc.streams() {
                let st = s.store.state();
                let storage = match s.config().storage {
                    Storage::File => "file",
                    Storage::Memory => "memory",
                };
                let consumers = s
                    .consumers
                    .list()
                    .iter()
                    .map(|c| {
                        let p = c.progress();
                        ConsumerStats {
                            name: c.name.clone(),
                            num_pending: p.num_pending,
                            num_ack_pending: p.num_ack_pending,
                            num_redelivered: p.num_redelivered,
                            num_waiting: p.num_waiting,
                        }
                    })
                    .collect();
                out.push(StreamStats {
                    account: acc.account().to_string(),
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

/// The meta group as one server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaView {
    pub leader: Option<String>,
    pub term: u64,
    /// Members' server names (this one included once it is a member).
    pub members: Vec<String>,
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
