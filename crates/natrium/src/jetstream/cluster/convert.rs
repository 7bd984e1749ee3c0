//! An R1 stream made replicated (`STREAM.UPDATE` raising `num_replicas` of a stream this
//! server holds outside the meta group): assigned to this server alone, its messages and
//! consumers imported through the new group's log, its old files removed, then grown to the
//! asked number of replicas like any replicated stream.

use std::sync::Arc;
use std::time::Duration;

use natrium_raft::node_id;
use serde_json::{json, Value};

use super::meta::{self, MetaOp, StreamAssignment};
use super::{replica, JsCluster};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::util::time::unix_nanos;

/// How long the conversion waits for the new group to lead here.
const LEAD_WAIT: Duration = Duration::from_secs(10);

/// How long a meta operation forwarded to the meta leader waits for its answer.
const META_OP_WAIT: Duration = Duration::from_secs(15);

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
        let extra = self.place(
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
        self.converting.lock().insert(sa.key());
        let added = self
            .propose_meta_anywhere(&MetaOp::AddStream { sa: sa.clone() })
            .await;
        if let Err(e) = added {
            self.converting.lock().remove(&sa.key());
            return Err(e);
        }
        // Assigned: ingest stops here (publishers retry) until the new leader listens.
        let consumers = replica::consumer_records(&local);
        let taken = catalog.remove(name);
        self.converting.lock().remove(&sa.key());
        taken?;
        let sa = self.assignment(account, name).unwrap_or(sa);
        self.ensure_replica(&sa).await;
        let deadline = tokio::time::Instant::now() + LEAD_WAIT;
        let r = loop {
            match self.replica(account, name).filter(|r| r.is_leader()) {
                Some(r) => break r,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                None => {
                    tracing::error!(
                        "stream '{account} > {name}': no leader for its new group; its R1 files are kept in {}",
                        js.options().store_dir.display()
                    );
                    return Err(ApiError::cluster_unavailable("new group has no leader"));
                }
            }
        };
        r.import(&local, consumers).await?;
        if let Err(e) = catalog.destroy(&local) {
            tracing::warn!(
                "stream '{account} > {name}': removing its R1 files: {}",
                e.description
            );
        }
        let mut peers = vec![self.name.clone()];
        peers.extend(extra);
        self.propose_meta_anywhere(&MetaOp::UpdateStream {
            account: account.to_string(),
            config: cfg,
            peers: Some(peers),
        })
        .await?;
        let sa = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        Ok(self.assignment_info(&sa))
    }
}
