//! Accounts own subject spaces: each holds the subscription trie for its clients and a generation
//! counter that clients read, without a lock, to know whether their cached match results are stale.
//! Imports are internal subscriptions whose target forwards into another account. Accounts also
//! hold their client limits (connections, subscriptions, payload) and count their connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natrium_subjects::{Matches, Sublist, FWC, PWC, SEP};
use parking_lot::{Mutex, RwLock};

use crate::client::{SubRef, Subscription};

/// The account of clients that belong to no named account, as in nats-server.
pub const GLOBAL_ACCOUNT: &str = "$G";

/// How long the reply path of a forwarded service request stays open.
const RESPONSE_TTL: Duration = Duration::from_secs(120);

pub struct Account {
    pub name: String,
    sublist: RwLock<Sublist<SubRef>>,
    /// Bumped after every change to `sublist`; read lock-free on the publish path.
    generation: AtomicU64,
    /// Reply routes of service imports, oldest first, swept when they expire.
    responses: Mutex<VecDeque<(Instant, SubRef)>>,
    /// Failed authentications of users of this account (audit counter).
    pub auth_failures: AtomicU64,
    /// Permission violations by users of this account (audit counter).
    pub permission_violations: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub total_connections: AtomicU64,
    /// Traffic of this account's clients that have disconnected (live clients are summed on read).
    pub closed_totals: Mutex<Totals>,
    /// Limits on this account's clients (from the config or the account JWT); changed by
    /// reloads and JWT updates, read at CONNECT and when a connection re-checks itself.
    limits: RwLock<Limits>,
    /// Client connections registered with this account (internal clients are not counted).
    connections: AtomicUsize,
}

/// Limits on an account's clients, as nats-server has them (`limits {}` in the config, `limits`
/// in an account JWT); `None` is unlimited. `max_subscriptions` and `max_payload` apply to each
/// connection (the lowest of the server's, the account's and the user's wins), `max_connections`
/// to the account as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub max_payload: Option<usize>,
    /// Parsed for compatibility; Natrium has no leaf nodes yet.
    pub max_leafnodes: Option<usize>,
}

/// A connection refused because its account is at `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("maximum account active connections exceeded")]
pub struct TooManyConnections;

/// Message and byte counts, as clients see them: `in` from clients, `out` to clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
}

impl Totals {
    pub fn add(&mut self, s: &crate::client::ClientStats) {
        self.in_msgs += s.in_msgs;
        self.in_bytes += s.in_bytes;
        self.out_msgs += s.out_msgs;
        self.out_bytes += s.out_bytes;
    }
}

impl Account {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Account {
            name: name.into(),
            sublist: RwLock::new(Sublist::new()),
            generation: AtomicU64::new(0),
            responses: Mutex::new(VecDeque::new()),
            auth_failures: AtomicU64::new(0),
            permission_violations: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            closed_totals: Mutex::new(Totals::default()),
            limits: RwLock::new(Limits::default()),
            connections: AtomicUsize::new(0),
        })
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    pub fn set_limits(&self, l: Limits) {
        *self.limits.write() = l;
    }

    /// Registers one more client connection unless the account is at `max_connections`.
    pub fn add_connection(&self) -> Result<(), TooManyConnections> {
        let max = self.limits().max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                max.is_none_or(|m| n < m).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| TooManyConnections)
    }

    /// Undoes `add_connection` when a registered client goes away.
    pub fn remove_connection(&self) {
        let _ = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn num_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn insert(&self, sub: SubRef) {
        let mut list = self.sublist.write();
        list.insert(&sub.0.subject, sub.0.queue.as_deref(), sub.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove(&self, sub: &SubRef) -> bool {
        let mut list = self.sublist.write();
        let removed = list.remove(&sub.0.subject, sub.0.queue.as_deref(), sub);
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    /// Every subscription matching `subject`, computed under the read lock.
    pub fn matches(&self, subject: &[u8]) -> Matches<SubRef> {
        self.sublist.read().matches(subject)
    }

    pub fn subscription_count(&self) -> usize {
        self.sublist.read().len()
    }

    /// Every subscription of this account: (subject, queue, owner cid or 0 for internal ones).
    pub fn subscriptions(&self) -> Vec<(String, Option<String>, u64)> {
        let mut out = Vec::new();
        self.sublist.read().for_each(|subject, queue, sub| {
            let cid = match &sub.0.target {
                crate::client::Target::Client(c) => c.cid,
                crate::client::Target::Forward(_) | crate::client::Target::Internal(_) => 0,
            };
            out.push((
                String::from_utf8_lossy(subject).into_owned(),
                queue.map(|q| String::from_utf8_lossy(q).into_owned()),
                cid,
            ));
        });
        out
    }

    /// Routes one answer published here on `reply` back to `importer` (a service import's reply
    /// path), and sweeps routes that were never used.
    pub(crate) fn add_response_route(&self, reply: &[u8], importer: Arc<Account>) {
        let route = Subscription::forward(
            reply,
            Forward {
                to: importer,
                map: SubjectMap::Identity,
                kind: ForwardKind::Response,
            },
            1,
        );
        self.insert(route.clone());
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut q = self.responses.lock();
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RESPONSE_TTL)
            {
                if let Some((_, s)) = q.pop_front() {
                    expired.push(s);
                }
            }
            q.push_back((now, route));
        }
        for s in &expired {
            self.remove(s);
        }
    }
}

/// What an import's internal subscription does with a message.
pub struct Forward {
    /// The account the message is published into.
    pub to: Arc<Account>,
    pub map: SubjectMap,
    pub kind: ForwardKind,
}

pub enum ForwardKind {
    /// A stream import: messages flow from exporter to importer.
    Stream,
    /// A service import: requests flow from importer to exporter; answers come back to `importer`.
    Service { importer: Arc<Account> },
    /// The reply path of a service request.
    Response,
}

/// How an import renames subjects on the way.
pub enum SubjectMap {
    Identity,
    /// `prefix.` + subject.
    Prefix(Box<[u8]>),
    /// From pattern `from` to pattern `to`: the i-th wildcard token of `from` fills the i-th
    /// wildcard of `to`; a literal `to` replaces the subject outright.
    Pattern {
        from: Box<[u8]>,
        to: Box<[u8]>,
    },
}

impl SubjectMap {
    pub fn new(from: &str, to: Option<&str>, prefix: Option<&str>) -> SubjectMap {
        match (to, prefix) {
            (Some(t), _) if t != from => SubjectMap::Pattern {
                from: from.as_bytes().into(),
                to: t.as_bytes().into(),
            },
            (_, Some(p)) if !p.is_empty() => {
                SubjectMap::Prefix(p.trim_end_matches('.').as_bytes().into())
            }
            _ => SubjectMap::Identity,
        }
    }

    pub fn apply(&self, subject: &[u8]) -> Vec<u8> {
        match self {
            SubjectMap::Identity => subject.to_vec(),
            SubjectMap::Prefix(p) => {
                let mut out = Vec::with_capacity(p.len() + 1 + subject.len());
                out.extend_from_slice(p);
                out.push(SEP);
                out.extend_from_slice(subject);
                out
            }
            SubjectMap::Pattern { from, to } => {
                // Collect what the wildcards of `from` captured in `subject`.
                let mut captured: Vec<&[u8]> = Vec::new();
                let mut tail: &[u8] = b"";
                let mut rest = subject;
                for pt in from.split(|c| *c == SEP) {
                    let (tok, after) = match rest.iter().position(|c| *c == SEP) {
                        Some(i) => (&rest[..i], &rest[i + 1..]),
                        None => (rest, &b""[..]),
                    };
                    if pt == [FWC] {
                        tail = rest;
                        break;
                    }
                    if pt == [PWC] {
                        captured.push(tok);
                    }
                    rest = after;
                }
                let mut out = Vec::with_capacity(to.len() + subject.len());
                let mut next = captured.into_iter();
                for (i, tt) in to.split(|c| *c == SEP).enumerate() {
                    if i > 0 {
                        out.push(SEP);
                    }
                    if tt == [PWC] {
                        out.extend_from_slice(next.next().unwrap_or(b"*"));
                    } else if tt == [FWC] {
                        out.extend_from_slice(tail);
                    } else {
                        out.extend_from_slice(tt);
                    }
                }
                out
            }
        }
    }

    /// The local subject pattern an import's subscription should use.
    pub fn apply_pattern(&self, pattern: &str) -> String {
        match self {
            SubjectMap::Identity => pattern.to_string(),
            SubjectMap::Prefix(p) => format!("{}.{pattern}", String::from_utf8_lossy(p)),
            SubjectMap::Pattern { to, .. } => String::from_utf8_lossy(to).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_maps() {
        assert_eq!(SubjectMap::Identity.apply(b"a.b"), b"a.b");
        assert_eq!(
            SubjectMap::new("a.>", None, Some("imp")).apply(b"a.b"),
            b"imp.a.b"
        );
        let m = SubjectMap::new("orders.*.created", Some("in.orders.*"), None);
        assert_eq!(m.apply(b"orders.42.created"), b"in.orders.42");
        let m = SubjectMap::new("src.>", Some("dst.>"), None);
        assert_eq!(m.apply(b"src.x.y"), b"dst.x.y");
        let m = SubjectMap::new("svc.time", Some("time"), None);
        assert_eq!(m.apply(b"svc.time"), b"time");
    }
}
