//! Raft RPCs between Natrium nodes as system-account messages over the routes: a request to
//! node N goes to `$NRX.R.<N>` (the group's name and the RPC kind in front of the body), its
//! answer to the asker's `$NRX.A.<me>.<id>`. `$NRX` is Natrium's own prefix: nats-server peers
//! never subscribe to it, so they never see (or misread) these messages; a cut route cuts Raft.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natrium_raft::{CallFuture, Group, NodeId, Peer, RpcKind, Transport, TransportError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::router::{InternalClient, InternalSubscription};

/// Messages waiting for the RPC task before new ones are dropped (a dropped RPC times out and
/// openraft retries it).
const QUEUE: usize = 64 * 1024;

fn request_subject(node: NodeId) -> String {
    format!("$NRX.R.{node:016x}")
}

/// This node's end of the RPC traffic: the groups it serves and the calls it waits on.
pub(crate) struct Hub {
    client: InternalClient,
    me: NodeId,
    inbox: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    groups: RwLock<HashMap<String, Group>>,
}

impl Hub {
    /// Subscribes to this node's requests and answers and serves them until `stop`.
    pub(crate) fn start(
        client: InternalClient,
        me: NodeId,
    ) -> Result<Arc<Hub>, crate::router::InternalError> {
        let hub = Arc::new(Hub {
            inbox: format!("$NRX.A.{me:016x}."),
            client: client.clone(),
            me,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
        });
        let mut sub = client.subscribe(&request_subject(me), None, QUEUE)?;
        sub.also(&format!("$NRX.A.{me:016x}.*"), None)?;
        tokio::spawn(serve(Arc::downgrade(&hub), sub));
        Ok(hub)
    }

    /// Whether node `id`'s requests subject has interest here (its route is up).
    pub(crate) fn reaches(&self, id: NodeId) -> bool {
        self.client.has_interest(&request_subject(id))
    }

    /// Serves `group` under `name` (RPCs for it reach it from now on).
    pub(crate) fn register(&self, name: &str, group: Group) {
        self.groups.write().insert(name.to_string(), group);
    }

    pub(crate) fn unregister(&self, name: &str) {
        self.groups.write().remove(name);
    }

    /// The transport a group named `name` uses to reach its peers.
    pub(crate) fn transport(self: &Arc<Self>, name: &str) -> Arc<dyn Transport> {
        Arc::new(RouteTransport {
            hub: self.clone(),
            group: name.to_string(),
        })
    }

    fn answer(&self, subject: &str, body: Vec<u8>) {
        let Some(id) = subject
            .strip_prefix(self.inbox.as_str())
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(tx) = self.waiting.lock().remove(&id) {
            let _ = tx.send(body);
        }
    }

    fn request(&self, reply: Option<String>, payload: &[u8]) {
        let Some((group, kind, body)) = split(payload) else {
            return;
        };
        let Some(g) = self.groups.read().get(group).cloned() else {
            // Not open here (yet): said at once, so the caller need not wait out its deadline.
            if let Some(r) = reply {
                let _ = self.client.publish(&r, None, None, b"");
            }
            return;
        };
        let body = body.to_vec();
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Ok(answer) = g.handle_rpc(kind, &body).await {
                if let Some(r) = reply {
                    let _ = client.publish(&r, None, None, &answer);
                }
            }
        });
    }
}

/// The RPC task: requests to this node's groups, answers to its calls.
async fn serve(hub: std::sync::Weak<Hub>, mut sub: InternalSubscription) {
    while let Some(m) = sub.next().await {
        let Some(hub) = hub.upgrade() else { return };
        if m.subject.starts_with("$NRX.A.") {
            hub.answer(&m.subject, m.payload.to_vec());
        } else {
            hub.request(m.reply, &m.payload);
        }
    }
}

/// `[name length u16 LE][name][kind]body`.
fn frame(group: &str, kind: RpcKind, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + group.len() + body.len());
    v.extend_from_slice(&(group.len() as u16).to_le_bytes());
    v.extend_from_slice(group.as_bytes());
    v.push(kind.as_str().as_bytes()[0]);
    v.extend_from_slice(body);
    v
}

fn split(p: &[u8]) -> Option<(&str, RpcKind, &[u8])> {
    let n = u16::from_le_bytes([*p.first()?, *p.get(1)?]) as usize;
    let name = std::str::from_utf8(p.get(2..2 + n)?).ok()?;
    let kind = std::str::from_utf8(p.get(2 + n..3 + n)?).ok()?;
    let kind = RpcKind::parse(kind)?;
    Some((name, kind, p.get(3 + n..)?))
}

struct RouteTransport {
    hub: Arc<Hub>,
    group: String,
}

impl Transport for RouteTransport {
    fn call(
        &self,
        to: NodeId,
        peer: &Peer,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> CallFuture {
        let hub = self.hub.clone();
        let payload = frame(&self.group, kind, &body);
        let peer = peer.name.clone();
        Box::pin(async move {
            if to == hub.me {
                return Err(TransportError::Unreachable("self".into()));
            }
            let id = hub.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            hub.waiting.lock().insert(id, tx);
            let reply = format!("{}{id}", hub.inbox);
            let delivered = hub
                .client
                .publish(&request_subject(to), Some(&reply), None, &payload)
                .unwrap_or(false);
            if !delivered {
                hub.waiting.lock().remove(&id);
                return Err(TransportError::Unreachable(format!("no route to {peer}")));
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) if answer.is_empty() => Err(TransportError::Unreachable(format!(
                    "group not open on {peer}"
                ))),
                Ok(Ok(answer)) => Ok(answer),
                _ => {
                    hub.waiting.lock().remove(&id);
                    Err(TransportError::Timeout)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let f = frame("S-acc-ORDERS", RpcKind::Vote, b"body");
        assert_eq!(
            split(&f),
            Some(("S-acc-ORDERS", RpcKind::Vote, &b"body"[..]))
        );
        assert_eq!(split(&[]), None);
        assert_eq!(split(&[200, 0, b'x']), None);
        let mut bad = f.clone();
        bad[14] = b'Z';
        assert_eq!(split(&bad), None);
    }
}
