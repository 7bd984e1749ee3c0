//! Subscriptions and where their messages go. A `Subscription` is shared between its owner
//! (a connection's sid map, an internal subscription) and its account's trie; `Target` says who
//! receives: a connection's outbound side, another account (an import), or an internal sink.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::account::Account;
use super::mapping::{Responses, SubjectMap};
use super::outbound::Outbound;
use super::sink::InternalSink;

/// Where a subscription's messages go.
pub enum Target {
    /// A client connection's outbound buffer (MSG/HMSG with the subscription's sid).
    Client(Arc<Outbound>),
    /// A peer server's interest (RS+ from a route, LS+ from a leafnode connection), reached over
    /// that connection (RMSG/HMSG, or LMSG/HMSG for a leafnode).
    Route(Arc<RouteSub>),
    /// Another account (an import, or the reply path of a service import).
    Forward(Arc<Forward>),
    /// A server component or embedding program (see `internal`).
    Internal(Arc<InternalSink>),
}

/// Interest a peer server announced: the route connection to it and, for a queue group, how
/// many members the peer has (its weight when the group picks a member).
pub struct RouteSub {
    pub route: Arc<Outbound>,
    pub weight: AtomicU32,
    /// Set when the peer is a leafnode connection rather than a route.
    pub leaf: Option<Arc<LeafPeer>>,
    /// A route's interest on behalf of a leaf of the peer from leafnode cluster `origin`
    /// (`LS+ origin ...`): a queue group's member there is only a fallback, never picked for a
    /// message from that same cluster, and never told to this server's leaves of that cluster.
    pub origin: Option<Box<[u8]>>,
}

/// What delivery needs to know of a leafnode connection (hub or leaf side).
#[derive(Debug, Default)]
pub struct LeafPeer {
    /// This server dialled the connection: it is the leaf (spoke), the other side the hub.
    pub spoke: bool,
    /// The other side's cluster name, if it is in one: messages from that cluster never go
    /// back to it through another leafnode connection.
    pub cluster: Option<Box<[u8]>>,
    /// Subjects never sent over this connection (a remote's `deny_exports`).
    pub deny_out: Vec<Box<[u8]>>,
}

impl RouteSub {
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
}

/// A subscription; shared between its owner and the account's trie.
pub struct Subscription {
    pub target: Target,
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    pub sid: Box<[u8]>,
    /// Auto-unsubscribe after this many deliveries; 0 means never.
    pub(super) max: AtomicU64,
    pub(super) delivered: AtomicU64,
    /// Subjects this subscription overlaps but its permissions deny; filtered at delivery.
    pub(super) deny: Option<Vec<Box<[u8]>>>,
}

impl Subscription {
    /// A client connection's subscription (`SUB subject [queue] sid`); messages on `deny`
    /// subjects are not delivered to it.
    pub fn client(
        out: Arc<Outbound>,
        subject: &[u8],
        queue: Option<&[u8]>,
        sid: &[u8],
        deny: Option<Vec<Box<[u8]>>>,
    ) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Client(out),
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: sid.into(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deny,
        }))
    }

    /// An internal subscription that forwards into another account.
    pub(crate) fn forward(subject: &[u8], forward: Forward, max: u64) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Forward(Arc::new(forward)),
            subject: subject.into(),
            queue: None,
            sid: Box::default(),
            max: AtomicU64::new(max),
            delivered: AtomicU64::new(0),
            deny: None,
        }))
    }

    /// A peer server's interest in `subject` (in `queue`, with `weight` members there), on
    /// behalf of its leaves of leafnode cluster `origin` when set.
    pub fn route(
        route: Arc<Outbound>,
        subject: &[u8],
        queue: Option<&[u8]>,
        weight: u32,
        origin: Option<&[u8]>,
    ) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Route(Arc::new(RouteSub {
                route,
                weight: AtomicU32::new(weight),
                leaf: None,
                origin: origin.map(Into::into),
            })),
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: Box::default(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deny: None,
        }))
    }

    /// Interest a leafnode connection announced (`LS+ subject [queue weight]`).
    pub fn leaf(
        out: Arc<Outbound>,
        peer: Arc<LeafPeer>,
        subject: &[u8],
        queue: Option<&[u8]>,
        weight: u32,
    ) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Route(Arc::new(RouteSub {
                route: out,
                weight: AtomicU32::new(weight),
                leaf: Some(peer),
                origin: None,
            })),
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: Box::default(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deny: None,
        }))
    }

    /// An internal subscription delivering into `sink`.
    pub(crate) fn internal(
        subject: &[u8],
        queue: Option<&[u8]>,
        sink: Arc<InternalSink>,
    ) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Internal(sink),
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: Box::default(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deny: None,
        }))
    }

    /// The connection this subscription delivers to, if it is a client's.
    pub fn client_out(&self) -> Option<&Arc<Outbound>> {
        match &self.target {
            Target::Client(c) => Some(c),
            Target::Route(_) | Target::Forward(_) | Target::Internal(_) => None,
        }
    }

    /// Whether this is local interest that peer servers must hear about: a client's or an
    /// internal subscription, or a stream import or reply path (service imports are resolved
    /// where a request is published, so they are not announced), or the interest of a leaf
    /// connected here (this server is its hub); never a route's interest.
    pub fn is_announced(&self) -> bool {
        match &self.target {
            Target::Client(_) => true,
            Target::Internal(sink) => !sink.is_local(),
            Target::Forward(f) => !f.is_service(),
            Target::Route(r) => r.leaf.as_ref().is_some_and(|l| !l.spoke),
        }
    }

    /// The leafnode cluster an announced subscription belongs to: a leaf's (connected here, this
    /// server its hub) in a named cluster; peers hear of it as `LS+ origin ...`.
    pub fn leaf_origin(&self) -> Option<&[u8]> {
        match &self.target {
            Target::Route(r) => r.leaf.as_ref().and_then(|l| l.cluster.as_deref()),
            _ => None,
        }
    }

    /// The denied subjects filtered at delivery, if any.
    pub fn deny(&self) -> Option<&[Box<[u8]>]> {
        self.deny.as_deref()
    }

    /// `UNSUB sid max`: stop after `max` deliveries in all. Returns true when the subscription
    /// has already had them and must be removed now.
    pub fn expire_after(&self, max: u64) -> bool {
        if max == 0 || self.delivered.load(Ordering::Relaxed) >= max {
            return true;
        }
        self.max.store(max, Ordering::Relaxed);
        // A delivery racing with this store may have pushed `delivered` past `max`.
        self.delivered.load(Ordering::Relaxed) >= max
    }
}

/// A handle on a subscription compared by identity, as the trie stores it.
#[derive(Clone)]
pub struct SubRef(pub Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl SubRef {
    /// The same client subscription with other denied subjects (after a permissions change),
    /// keeping its auto-unsubscribe state.
    pub fn with_deny(&self, deny: Option<Vec<Box<[u8]>>>) -> SubRef {
        let s = &self.0;
        let out = s.client_out().cloned();
        SubRef(Arc::new(Subscription {
            target: match out {
                Some(o) => Target::Client(o),
                None => return self.clone(),
            },
            subject: s.subject.clone(),
            queue: s.queue.clone(),
            sid: s.sid.clone(),
            max: AtomicU64::new(s.max.load(Ordering::Relaxed)),
            delivered: AtomicU64::new(s.delivered.load(Ordering::Relaxed)),
            deny,
        }))
    }
}

/// What an import's internal subscription does with a message.
pub struct Forward {
    /// The account the message is published into.
    pub to: Arc<Account>,
    pub map: SubjectMap,
    pub kind: ForwardKind,
}

impl Forward {
    /// Whether this forwards service requests (resolved where they are published).
    pub fn is_service(&self) -> bool {
        matches!(self.kind, ForwardKind::Service { .. })
    }
}

pub enum ForwardKind {
    /// A stream import: messages flow from exporter to importer.
    Stream,
    /// A service import: requests flow from importer to exporter; answers come back to `importer`.
    Service {
        importer: Arc<Account>,
        responses: Responses,
    },
    /// The reply path of a service request.
    Response,
}

/// A subscription as monitoring shows it (nats-server's `SubDetail`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubInfo {
    pub subject: String,
    pub queue: Option<String>,
    /// Empty for internal subscriptions.
    pub sid: String,
    /// Messages delivered to it so far.
    pub msgs: u64,
    /// Its auto-unsubscribe max, 0 for none.
    pub max: u64,
    /// The owning connection, 0 for internal subscriptions.
    pub cid: u64,
}

impl SubInfo {
    pub fn of(s: &Subscription) -> SubInfo {
        SubInfo {
            subject: String::from_utf8_lossy(&s.subject).into_owned(),
            queue: s
                .queue
                .as_deref()
                .map(|q| String::from_utf8_lossy(q).into_owned()),
            sid: String::from_utf8_lossy(&s.sid).into_owned(),
            msgs: s.delivered.load(Ordering::Relaxed),
            max: s.max.load(Ordering::Relaxed),
            cid: s.client_out().map_or(0, |o| o.cid),
        }
    }
}
