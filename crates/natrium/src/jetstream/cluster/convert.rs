//! An R1 stream made replicated (`STREAM.UPDATE` raising `num_replicas` of a stream this
//! server holds outside the meta group): assigned to this server alone, its messages and
//! consumers imported through the new group's log, its old files removed, then grown to the
//! asked number of replicas like any replicated stream. A conversion is resumable: what it
//! must finish is kept in `<replica>/convert.json` (the asked config, the consumers), and the
//! R1 files stay until the import is committed; a conversion that found no leader in time, or
//! was cut by a restart, is finished once the new group leads here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use natrium_raft::node_id;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::meta::{self, MetaOp, StreamAssignment};
use super::replica::ConsumerRecord;
use super::{replica, JsCluster};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::jetstream::stream::Stream;
use crate::util::time::unix_nanos;

/// How long the conversion waits for the new group to lead here before it answers (it goes
/// on in the background).
const LEAD_WAIT: Duration = Duration::from_secs(10);

/// How long a meta operation forwarded to the meta leader waits for its answer.
const META_OP_WAIT: Duration = Duration::from_secs(15);

/// First and longest pause between two attempts to finish a conversion.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a conversion must finish, kept in the replica's directory until it is done.
const MARKER: &str = "convert.json";

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The config asked for (its `num_replicas`).
    config: StreamConfig,
    consumers: Vec<(String, ConsumerRecord)>,
}

impl Pending {
    /// The conversion pending in replica directory `dir`, if any.
    pub(super) fn read(dir: &Path) -> Option<Pending> {
        let bytes = std::fs::read(dir.join(MARKER)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!("{}: {e}", dir.join(MARKER).display());
                None
            }
        }
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        crate::util::fs::create_dir_all_durable(dir)?;
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::util::fs::write_atomic(&dir.join(MARKER), &body)
    }

    fn remove(dir: &Path) {
        if let Err(e) = std::fs::remove_file(dir.join(MARKER)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", dir.join(MARKER).display());
            }
        }
    }
}

impl JsCluster {
    /// Whether `name` is an R1 stream of `account` held by this server.
    pub(super) fn holds_local(&self, account: &str, name: &str) -> bool {
        self.assignment(account, name).is_none()
            && self
                .jetstream()
                .and_then(|js| js.catalog(account))
                .is_some_and(|c| c.stream(name).is_ok())
    }

    /// Proposes a meta operation from any server: on the meta leader, or forwarded to it.
    pub(super) async fn propose_meta_anywhere(&self, op: &MetaOp) -> Result<Value, ApiError> {
        if self.is_meta_leader() {
            return self.propose_meta(op).await;
        }
        let leader = self
            .meta_leader()
            .filter(|l| *l != self.name)
            .ok_or_else(|| ApiError::cluster_unavailable("no meta leader"))?;
        let body = serde_json::to_vec(op).map_err(ApiError::invalid_json)?;
        let answer = self
            .request(
                &super::api::forward_subject(node_id(&leader)),
                Some(b"NATS/1.0\r\nNrx-Meta: op\r\n\r\n"),
                &body,
                META_OP_WAIT,
            )
            .await
            .map_err(ApiError::cluster_unavailable)?;
        meta::answer(&answer)
    }

    /// On the meta leader: a meta operation another server forwarded; the answer as
    /// `meta::answer` reads it.
    pub(super) async fn meta_op_forwarded(&self, body: &[u8]) -> Vec<u8> {
        let r = match serde_json::from_slice::<MetaOp>(body) {
            Ok(op) => self.propose_meta(&op).await,
            Err(e) => Err(ApiError::invalid_json(e)),
        };
        match r {
            Ok(v) => v.to_string().into_bytes(),
            Err(e) => json!({ "error": e }).to_string().into_bytes(),
        }
    }

    /// The directory of this server's replica of a stream.
    pub(super) fn replica_dir(&self, account: &str, name: &str) -> std::path::PathBuf {
        self.dir.join("streams").join(account).join(name)
    }

    /// `STREAM.UPDATE` of an R1 stream held here to `num_replicas > 1`.
    pub(super) async fn convert(
        self: &Arc<Self>,
        account: &str,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let cfg = Self::parse_config(name, payload)?;
        let js = self
            .jetstream()
            .ok_or_else(|| ApiError::cluster_unavailable("stopping"))?;
        let catalog = js
            .catalog(account)
            .ok_or_else(ApiError::not_enabled_for_account)?;
        let local = catalog.stream(name)?;
        let old = local.config();
        old.check_update(&StreamConfig {
            num_replicas: old.num_replicas,
            ..cfg.clone()
        })?;
        if old.mirror.is_some() || old.sources.as_ref().is_some_and(|s| !s.is_empty()) {
            // Sourcing runs on R1 streams only here.
            return Err(ApiError::replicas_not_updatable());
        }
        // Placed first: too few servers refuse the update with the R1 stream untouched.
        self.place(
            cfg.num_replicas as usize - 1,
            cfg.placement.as_ref(),
            std::slice::from_ref(&self.name),
        )?;
        // First a group of this server alone, which leads it at once.
        let single = StreamConfig {
            num_replicas: 1,
            ..cfg.clone()
        };
        let sa = StreamAssignment {
            account: account.to_string(),
            group: format!("S-{account}-{name}-{:08x}", fastrand::u32(..)),
            config: single,
            peers: vec![self.name.clone()],
            created_ns: unix_nanos(local.created),
        };
        let dir = self.replica_dir(account, name);
        let pending = Pending {
            config: cfg,
            consumers: replica::consumer_records(&local),
        };
        pending
            .write(&dir)
            .map_err(|e| ApiError::store_failed(e.to_string()))?;
        self.converting.lock().insert(sa.key());
        let added = self
            .propose_meta_anywhere(&MetaOp::AddStream { sa: sa.clone() })
            .await;
        if let Err(e) = added {
            self.converting.lock().remove(&sa.key());
            Pending::remove(&dir);
            return Err(e);
        }
        // Assigned: ingest stops here (publishers retry) until the new leader listens.
        let taken = catalog.remove(name);
        self.converting.lock().remove(&sa.key());
        let local = taken?;
        let sa = self.assignment(account, name).unwrap_or(sa);
        self.open_replica(&sa, false).await;
        match self
            .finish_conversion(account, name, Some(&local), &pending, LEAD_WAIT)
            .await
        {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::warn!(
                    "stream '{account} > {name}': conversion not finished ({}); it goes on once its new group leads here; its R1 files are kept in {}",
                    e.description,
                    js.options().store_dir.display()
                );
                tokio::spawn(self.clone().resume_conversion(
                    account.to_string(),
                    name.to_string(),
                    Some(local),
                    pending,
                ));
                Err(e)
            }
        }
    }

    /// Before a replica opens: a conversion left unfinished (by a restart) is taken up again;
    /// its R1 stream, recovered into the account at start, is taken out of it first.
    pub(super) fn pending_conversion(
        &self,
        sa: &StreamAssignment,
        dir: &Path,
    ) -> Option<(Option<Arc<Stream>>, Pending)> {
        let pending = Pending::read(dir)?;
        let local = self
            .jetstream()
            .and_then(|js| js.catalog(&sa.account))
            .and_then(|c| c.remove(&sa.config.name).ok());
        tracing::info!(
            "stream '{} > {}': taking up its conversion to {} replicas ({})",
            sa.account,
            sa.config.name,
            pending.config.num_replicas,
            if local.is_some() {
                "importing its R1 messages"
            } else {
                "its messages imported"
            }
        );
        Some((local, pending))
    }

    /// Tries to finish a conversion until it is done, the stream is no longer assigned here,
    /// or the server stops; waits with backoff between attempts.
    pub(super) async fn resume_conversion(
        self: Arc<Self>,
        account: String,
        name: String,
        local: Option<Arc<Stream>>,
        pending: Pending,
    ) {
        let mut stop = self.stop.subscribe();
        let mut wait = RETRY_FIRST;
        loop {
            let mine = self
                .assignment(&account, &name)
                .is_some_and(|sa| sa.peers.contains(&self.name));
            if *stop.borrow() || !mine {
                return;
            }
            match self
                .finish_conversion(&account, &name, local.as_ref(), &pending, wait)
                .await
            {
                Ok(_) => {
                    tracing::info!("stream '{account} > {name}': conversion finished");
                    return;
                }
                Err(e) => tracing::debug!(
                    "stream '{account} > {name}': conversion not finished yet: {}",
                    e.description
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// Once the new group leads here (waiting up to `within`): imports the R1 stream's
    /// messages and consumers (when its files are still there; again from the start after an
    /// interruption: what the group already stored is recognised), removes its files, lets
    /// the replica take publishes, grows the stream to the asked replicas, forgets the marker.
    async fn finish_conversion(
        &self,
        account: &str,
        name: &str,
        local: Option<&Arc<Stream>>,
        pending: &Pending,
        within: Duration,
    ) -> Result<Value, ApiError> {
        let deadline = tokio::time::Instant::now() + within;
        let r = loop {
            match self.replica(account, name).filter(|r| r.is_leader()) {
                Some(r) => break r,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                None => return Err(ApiError::cluster_unavailable("new group has no leader")),
            }
        };
        if let Some(local) = local {
            r.import(local, pending.consumers.clone()).await?;
            let catalog = self
                .jetstream()
                .and_then(|js| js.catalog(account))
                .ok_or_else(ApiError::not_enabled_for_account)?;
            if let Err(e) = catalog.destroy(local) {
                tracing::warn!(
                    "stream '{account} > {name}': removing its R1 files: {}",
                    e.description
                );
            }
        }
        r.release_ingest();
        let sa = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        if sa.config.num_replicas != pending.config.num_replicas {
            let extra = self.place(
                pending.config.num_replicas as usize - 1,
                pending.config.placement.as_ref(),
                std::slice::from_ref(&self.name),
            )?;
            let mut peers = vec![self.name.clone()];
            peers.extend(extra);
            self.propose_meta_anywhere(&MetaOp::UpdateStream {
                account: account.to_string(),
                config: pending.config.clone(),
                peers: Some(peers),
            })
            .await?;
        }
        Pending::remove(&self.replica_dir(account, name));
        let sa = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        Ok(self.assignment_info(&sa))
    }
}
