//! Finding the server of an R1 stream: R1 streams are not in the meta group and each server's
//! `$JS.API` is local, so a request naming a stream this server neither holds nor has
//! assigned (a replicated stream's source on an R1 stream of another server, or a client of
//! another server) asks every reachable JetStream peer on `$NRX.R1.<node>` whether it holds
//! it, and is forwarded to the one that does; with none, the local API answers "not found".

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use natrium_raft::{node_id, NodeId};
use serde::{Deserialize, Serialize};

use super::JsCluster;
use crate::router::InternalSubscription;

/// How long one peer's answer is waited for.
const ASK_WAIT: Duration = Duration::from_secs(1);

/// Subject on which node `id` says whether it holds an R1 stream.
pub(super) fn subject(id: NodeId) -> String {
    format!("$NRX.R1.{id:016x}")
}

#[derive(Serialize, Deserialize)]
struct Ask {
    account: String,
    stream: String,
}

/// Answers other servers' questions: `{"holds": true}` for an R1 stream held here.
pub(super) async fn serve(cl: Weak<JsCluster>, mut sub: InternalSubscription) {
    while let Some(m) = sub.next().await {
        let Some(cl) = cl.upgrade() else { return };
        let (Some(reply), Ok(a)) = (
            m.reply.as_deref(),
            serde_json::from_slice::<Ask>(&m.payload),
        ) else {
            continue;
        };
        let holds = cl.holds_local(&a.account, &a.stream);
        let body = serde_json::json!({ "holds": holds }).to_string();
        let _ = cl
            .settings
            .system
            .publish(reply, None, None, body.as_bytes());
    }
}

impl JsCluster {
    /// The reachable JetStream server (not this one) that holds R1 stream `stream` of
    /// `account`, asking them all at once; none when no one does.
    pub(super) async fn locate_r1(self: &Arc<Self>, account: &str, stream: &str) -> Option<String> {
        let peers: Vec<String> = {
            let peers = self.peers.lock();
            peers
                .online(Instant::now())
                .into_iter()
                .map(|(_, h)| h.name.clone())
                .collect()
        };
        let body = serde_json::to_vec(&Ask {
            account: account.to_string(),
            stream: stream.to_string(),
        })
        .ok()?;
        let mut asks = tokio::task::JoinSet::new();
        for p in peers
            .into_iter()
            .filter(|p| *p != self.name && self.reachable(p))
        {
            let (cl, body) = (self.clone(), body.clone());
            asks.spawn(async move {
                let a = cl
                    .request(&subject(node_id(&p)), None, &body, ASK_WAIT)
                    .await
                    .ok()?;
                let v: serde_json::Value = serde_json::from_slice(&a).ok()?;
                (v["holds"] == true).then_some(p)
            });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok(Some(p)) = r {
                return Some(p);
            }
        }
        None
    }
}
