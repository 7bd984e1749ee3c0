//! JetStream for a server: its settings, the accounts it is enabled for (each a `Catalog` of
//! streams served by an `Api` task), shutdown, and the figures monitoring reads.

mod api;
mod catalog;
pub mod config;
mod consumer;
pub mod consumer_config;
pub mod errors;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use natrium_store::SyncPolicy;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::router::InternalClient;
use api::Api;
use catalog::Catalog;
use config::Storage;

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
    accounts: Mutex<Vec<Arc<Catalog>>>,
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
        ));
        catalog.recover();
        // Each server answers the API for its own streams: in a cluster the API stays local
        // (replicated JetStream is to come), while streams and acks are reached from anywhere.
        let sub = client
            .subscribe_local("$JS.API.>", None, 4096)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let api = Api::new(catalog.clone(), client, self.server_name.clone());
        tokio::spawn(async move {
            let mut sub = sub;
            while let Some(m) = sub.next().await {
                api.handle(m);
            }
        });
        self.accounts.lock().push(catalog);
        Ok(())
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
    }

    /// Numbers for `/varz` and `/jsz`.
    pub(crate) fn usage(&self) -> Value {
        let accounts = self.accounts.lock().clone();
        let (mut streams, mut consumers, mut messages, mut bytes) = (0, 0, 0, 0);
        for s in accounts.iter().flat_map(|a| a.streams()) {
            let st = s.store.state();
            streams += 1;
            consumers += s.consumers.len();
            messages += st.msgs;
            bytes += st.bytes;
        }
        json!({"streams": streams, "consumers": consumers, "messages": messages, "bytes": bytes, "accounts": accounts.len()})
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
