//! Subscriptions and where their messages go. A `Subscription` is shared between its owner
//! (a connection's sid map, an internal subscription) and its account's trie; `Target` says who
//! receives: a connection's outbound side, another account (an import), or an internal sink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::imports::Forward;
use super::outbound::Outbound;
use super::sink::InternalSink;

/// Where a subscription's messages go.
pub enum Target {
    /// A client connection's outbound buffer (MSG/HMSG with the subscription's sid).
    Client(Arc<Outbound>),
    /// Another account (an import, or the reply path of a service import).
    Forward(Arc<Forward>),
    /// A server component or embedding program (see `internal`).
    Internal(Arc<InternalSink>),
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
            Target::Forward(_) | Target::Internal(_) => None,
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
