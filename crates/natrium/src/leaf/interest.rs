//! What a leafnode connection tells the other side about its account's interest (nats-server's
//! "smap"): a count per subject and queue group of the subscriptions the other side must hear
//! of, kept by watching the account's trie. The hub side tells of every subscription but the
//! other side's own (and those of the same remote cluster); the leaf side only of its local
//! clients' and of the leaves it is itself the hub of. Each change becomes `LS+`/`LS-` at once.

use std::sync::Arc;

use natrium_protocol::leaf;
use natrium_subjects::matches;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::router::{InterestWatcher, LeafPeer, Outbound, Subscription, Target};

type Key = (Box<[u8]>, Option<Box<[u8]>>);

/// One connection's view of its account's interest.
pub struct SentInterest {
    out: Arc<Outbound>,
    peer: Arc<LeafPeer>,
    /// Subjects whose interest is never sent (a remote's `deny_imports`).
    deny: Vec<Box<[u8]>>,
    counts: Mutex<FxHashMap<Key, u32>>,
}

impl SentInterest {
    pub fn new(out: Arc<Outbound>, peer: Arc<LeafPeer>, deny: Vec<Box<[u8]>>) -> Arc<Self> {
        Arc::new(SentInterest {
            out,
            peer,
            deny,
            counts: Mutex::new(FxHashMap::default()),
        })
    }

    /// Tells the other side of `subject` once (the loop-detection subject).
    pub fn force(&self, subject: &[u8]) {
        let mut counts = self.counts.lock();
        let key: Key = (subject.into(), None);
        if counts.get(&key).copied().unwrap_or(0) == 0 {
            counts.insert(key, 1);
            let mut line = Vec::new();
            leaf::sub(&mut line, subject, None);
            self.out.send(&line);
        }
    }

    /// How many subjects (and queue groups) the other side was told of.
    pub fn len(&self) -> usize {
        self.counts.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the other side must hear of `sub`.
    fn tells(&self, sub: &Subscription) -> bool {
        let told = match &sub.target {
            Target::Client(_) | Target::Forward(_) => true,
            Target::Internal(sink) => !sink.is_local(),
            Target::Route(r) => match &r.leaf {
                // A route's interest: only a hub tells its leaves, and not a cluster's leaves
                // the interest of its own members elsewhere (`LS+` with their origin).
                None => {
                    !self.peer.spoke
                        && (r.origin.is_none()
                            || r.origin.as_deref() != self.peer.cluster.as_deref())
                }
                Some(l) => {
                    // Not the other side's own interest; a leaf tells its hub only of the
                    // leaves it is itself the hub of; never a remote cluster its own interest.
                    let own = Arc::ptr_eq(&r.route, &self.out);
                    let spoke_to_spoke = self.peer.spoke && l.spoke;
                    let same_cluster = l.cluster.is_some() && l.cluster == self.peer.cluster;
                    !(own || spoke_to_spoke || same_cluster)
                }
            },
        };
        told && !self.deny.iter().any(|d| matches(d, &sub.subject))
    }
}

impl InterestWatcher for SentInterest {
    fn changed(&self, sub: &Subscription, up: bool) {
        if !self.tells(sub) {
            return;
        }
        let key: Key = (sub.subject.clone(), sub.queue.clone());
        let mut counts = self.counts.lock();
        let before = counts.get(&key).copied().unwrap_or(0);
        let after = if up {
            before + 1
        } else if before == 0 {
            return;
        } else {
            before - 1
        };
        if after == 0 {
            counts.remove(&key);
        } else {
            counts.insert(key, after);
        }
        // A queue group's weight changes with every member; plain interest only matters when
        // it appears or goes.
        let report = sub.queue.is_some() || (before == 0) != (after == 0);
        if report {
            let mut line = Vec::with_capacity(sub.subject.len() + 16);
            if after > 0 {
                leaf::sub(
                    &mut line,
                    &sub.subject,
                    sub.queue.as_deref().map(|q| (q, after)),
                );
            } else {
                leaf::unsub(&mut line, &sub.subject, sub.queue.as_deref());
            }
            self.out.send(&line);
        }
    }
}
