//! The JetStream-enabled Natrium servers this node knows of: each announces itself on
//! `$NRX.HELLO` (name, cluster, tags, whether it has a meta group and whom it follows) every few
//! seconds and at once when it hears from a server new to it. A server not heard from for a
//! while is offline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use natrium_raft::NodeId;
use serde::{Deserialize, Serialize};

pub(crate) const HELLO: &str = "$NRX.HELLO";

/// Heard from more recently than this: online.
pub(crate) const ONLINE: Duration = Duration::from_secs(12);

/// What a server says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub name: String,
    pub cluster: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether its meta group has a membership.
    #[serde(default)]
    pub meta_initialized: bool,
    #[serde(default)]
    pub meta_leader: Option<String>,
}

/// A server as last heard.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub hello: Hello,
    pub seen: Instant,
}

/// Every server heard from (this one included), by node id.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    pub known: BTreeMap<NodeId, Known>,
    /// When the set of known servers last changed.
    pub changed: Option<Instant>,
}

impl Peers {
    /// Records a hello; whether the server was new (or back after being offline).
    pub(crate) fn heard(&mut self, h: Hello, now: Instant) -> bool {
        let id = natrium_raft::node_id(&h.name);
        let fresh = self
            .known
            .get(&id)
            .is_none_or(|k| now.duration_since(k.seen) > ONLINE);
        if fresh {
            self.changed = Some(now);
        }
        self.known.insert(
            id,
            Known {
                hello: h,
                seen: now,
            },
        );
        fresh
    }

    /// Online servers (heard from recently), by id.
    pub(crate) fn online(&self, now: Instant) -> Vec<(NodeId, &Hello)> {
        self.known
            .iter()
            .filter(|(_, k)| now.duration_since(k.seen) <= ONLINE)
            .map(|(id, k)| (*id, &k.hello))
            .collect()
    }

    pub(crate) fn is_online(&self, name: &str, now: Instant) -> bool {
        self.known
            .get(&natrium_raft::node_id(name))
            .is_some_and(|k| now.duration_since(k.seen) <= ONLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str) -> Hello {
        Hello {
            name: name.into(),
            cluster: "c".into(),
            tags: vec![],
            meta_initialized: false,
            meta_leader: None,
        }
    }

    #[test]
    fn servers_go_offline_when_silent() {
        let mut p = Peers::default();
        let t0 = Instant::now();
        assert!(p.heard(hello("a"), t0));
        assert!(!p.heard(hello("a"), t0 + Duration::from_secs(1)));
        assert!(p.heard(hello("b"), t0 + Duration::from_secs(2)));
        assert_eq!(p.online(t0 + Duration::from_secs(3)).len(), 2);
        let later = t0 + Duration::from_secs(14);
        assert!(!p.is_online("a", later));
        assert!(p.is_online("b", later));
        // Heard again after going silent: new again.
        assert!(p.heard(hello("a"), later));
    }
}
