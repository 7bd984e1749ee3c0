//! One account: a subject space. It holds the subscription trie for its connections and a
//! generation counter that publishers read, without a lock, to know whether their cached match
//! results are stale; who watches the trie (leafnode connections; watches on literal subjects,
//! such as a push consumer's deliver subject); the reply routes of service imports; its client
//! limits (connections, subscriptions, payload, publish rates) and connection count; and its
//! audit and traffic counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use natrium_subjects::{Matches, Sublist};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::interest::{Interest, InterestFeed, LocalInterest};
use super::outbound::ClientStats;
use super::rate::Rates;
use super::subscription::{SubInfo, SubRef, Subscription, Target};
use super::watch::{SubjectWatches, ToWake};

/// A leafnode connection keeps its own view of an account's interest (what it tells the other
/// side depends on who holds each subscription), so it watches the account's subscriptions.
/// Told of every subscription added to (`up`) or removed from an account it watches. Called
/// with the account's trie locked for writing, so calls keep the changes' order: it must be
/// short and must not touch the account's trie.
pub trait InterestWatcher: Send + Sync {
    fn changed(&self, sub: &Subscription, up: bool);
}

/// A watch on a literal subject of an account (see [`Account::watch_subject`]); dropping it
/// ends the watch.
pub struct SubjectWatch {
    account: Arc<Account>,
    subject: Box<[u8]>,
    id: u64,
}

impl SubjectWatch {
    pub fn subject(&self) -> &[u8] {
        &self.subject
    }
}

impl Drop for SubjectWatch {
    fn drop(&mut self) {
        self.account.subject_watches.remove(&self.subject, self.id);
    }
}

/// The account of clients that belong to no named account, as in nats-server.
pub const GLOBAL_ACCOUNT: &str = "$G";

pub struct Account {
    pub name: String,
    /// The name again, shared with interest reports.
    shared_name: Arc<str>,
    /// In a cluster: the announced subscriptions counted for peer servers.
    interest: Option<LocalInterest>,
    sublist: RwLock<Sublist<SubRef>>,
    /// Bumped after every change to `sublist`; read lock-free on the publish path.
    generation: AtomicU64,
    /// Told of every change to `sublist`, under its write lock (leafnode connections).
    watchers: Mutex<Vec<Arc<dyn InterestWatcher>>>,
    /// Literal subjects whose watchers are woken when a matching subscription comes or goes
    /// (push consumers' deliver subjects).
    subject_watches: SubjectWatches,
    /// Reply routes of service imports with the time they close, oldest first, swept when they
    /// expire (see `imports`).
    pub(super) responses: Mutex<VecDeque<(Instant, SubRef)>>,
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
    /// Leafnode connections bound to this account on this server (either side).
    leaf_connections: AtomicUsize,
    /// In a cluster: the account's connections on each other server (by server id), as they
    /// report them, and their sum; `max_connections` holds for the cluster as a whole.
    remote_connections: Mutex<rustc_hash::FxHashMap<String, usize>>,
    remote_total: AtomicUsize,
    /// The subscription trie's counters, as nats-server's sublist statistics.
    pub sublist_stats: SublistCounters,
    /// When the account was created (`update_time` in `/accountz`).
    pub created: std::time::SystemTime,
    /// Publish rate limits, charged by each connection once per read (see `rate`).
    pub rates: Rates,
}

/// Counters of an account's subscription trie and of the match caches in front of it, for
/// nats-server's sublist statistics. Natrium has no shared match cache: each publishing
/// connection has its own (see `delivery::MatchCache`), and these count lookups through them.
#[derive(Debug, Default)]
pub struct SublistCounters {
    pub inserts: AtomicU64,
    pub removes: AtomicU64,
    /// Subject lookups: through a publisher's match cache, or straight into the trie for
    /// internal publishes.
    pub matches: AtomicU64,
    /// Lookups a publisher's match cache answered.
    pub cache_hits: AtomicU64,
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
    /// Parsed for compatibility; not enforced on leafnode connections yet.
    pub max_leafnodes: Option<usize>,
    /// Messages per second the account's clients may publish, together (a Natrium extension).
    pub max_msgs_per_sec: Option<u64>,
    /// Payload bytes per second the account's clients may publish, together (likewise).
    pub max_bytes_per_sec: Option<u64>,
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
    pub fn add(&mut self, s: &ClientStats) {
        self.in_msgs += s.in_msgs;
        self.in_bytes += s.in_bytes;
        self.out_msgs += s.out_msgs;
        self.out_bytes += s.out_bytes;
    }
}

impl Account {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Self::with_interest(name, None)
    }

    /// An account whose announced interest is reported to `feed` (in a cluster).
    pub fn with_interest(name: impl Into<String>, feed: Option<Arc<InterestFeed>>) -> Arc<Self> {
        let name = name.into();
        Arc::new(Account {
            shared_name: name.as_str().into(),
            interest: feed.map(LocalInterest::new),
            name,
            sublist: RwLock::new(Sublist::new()),
            generation: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            subject_watches: SubjectWatches::default(),
            responses: Mutex::new(VecDeque::new()),
            auth_failures: AtomicU64::new(0),
            permission_violations: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            closed_totals: Mutex::new(Totals::default()),
            limits: RwLock::new(Limits::default()),
            connections: AtomicUsize::new(0),
            leaf_connections: AtomicUsize::new(0),
            remote_connections: Mutex::new(rustc_hash::FxHashMap::default()),
            remote_total: AtomicUsize::new(0),
            sublist_stats: SublistCounters::default(),
            created: std::time::SystemTime::now(),
            rates: Rates::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    pub fn set_limits(&self, l: Limits) {
        self.rates.set(l.max_msgs_per_sec, l.max_bytes_per_sec);
        *self.limits.write() = l;
    }

    /// Registers one more client connection unless the account is at `max_connections`
    /// (counting its connections on the other servers of a cluster).
    pub fn add_connection(&self) -> Result<(), TooManyConnections> {
        let max = self.limits().max_connections;
        let remote = self.remote_total.load(Ordering::Acquire);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                max.is_none_or(|m| n + remote < m).then_some(n + 1)
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

    /// A leafnode connection was bound to this account (`up`) or went.
    pub fn leaf_connection(&self, up: bool) {
        if up {
            self.leaf_connections.fetch_add(1, Ordering::AcqRel);
        } else {
            let _ = self
                .leaf_connections
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Leafnode connections bound to this account here (`leafnodes` in account statistics).
    pub fn num_leafnodes(&self) -> usize {
        self.leaf_connections.load(Ordering::Acquire)
    }

    /// Records how many connections of this account server `server` has (its report).
    pub fn set_remote_connections(&self, server: &str, n: usize) {
        let mut m = self.remote_connections.lock();
        if n == 0 {
            m.remove(server);
        } else {
            m.insert(server.to_string(), n);
        }
        self.remote_total.store(m.values().sum(), Ordering::Release);
    }

    /// Forgets server `server`'s connections (it left the cluster).
    pub fn forget_remote_server(&self, server: &str) {
        self.set_remote_connections(server, 0);
    }

    /// This account's connections on other servers.
    pub fn remote_connections(&self) -> usize {
        self.remote_total.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn insert(&self, sub: SubRef) {
        let mut wake = ToWake::new();
        {
            let mut list = self.sublist.write();
            list.insert(&sub.0.subject, sub.0.queue.as_deref(), sub.clone());
            self.generation.fetch_add(1, Ordering::AcqRel);
            for w in self.watchers.lock().iter() {
                w.changed(&sub.0, true);
            }
            self.subject_watches.changed(&sub.0.subject, &mut wake);
        }
        wake.iter().for_each(|n| n.notify_one());
        self.sublist_stats.inserts.fetch_add(1, Ordering::Relaxed);
        self.count_interest(&sub, true);
    }

    pub fn remove(&self, sub: &SubRef) -> bool {
        let mut wake = ToWake::new();
        let removed = {
            let mut list = self.sublist.write();
            let removed = list.remove(&sub.0.subject, sub.0.queue.as_deref(), sub);
            if removed {
                self.generation.fetch_add(1, Ordering::AcqRel);
                for w in self.watchers.lock().iter() {
                    w.changed(&sub.0, false);
                }
                self.subject_watches.changed(&sub.0.subject, &mut wake);
            }
            removed
        };
        wake.iter().for_each(|n| n.notify_one());
        if removed {
            self.sublist_stats.removes.fetch_add(1, Ordering::Relaxed);
            self.count_interest(sub, false);
        }
        removed
    }

    /// In a cluster, counts an announced subscription in or out of the interest peers see.
    fn count_interest(&self, sub: &SubRef, up: bool) {
        if let Some(interest) = &self.interest {
            if sub.0.is_announced() {
                let report = interest.changed(
                    &self.shared_name,
                    &sub.0.subject,
                    sub.0.queue.as_deref(),
                    sub.0.leaf_origin(),
                    up,
                );
                if report {
                    interest.flush();
                }
            }
        }
    }

    /// The announced interest now (subject, queue, origin, local count): what a peer learns
    /// when its route comes up; `summed` adds the origins up (a peer without `lnoc`). Empty
    /// outside a cluster.
    pub fn local_interest(&self, summed: bool) -> Vec<Interest> {
        self.interest
            .as_ref()
            .map(|i| i.snapshot(summed))
            .unwrap_or_default()
    }

    /// Starts telling `w` of every change to the trie, after telling it of every subscription
    /// there now (all under the write lock, so it misses nothing and sees nothing twice).
    pub fn watch(&self, w: Arc<dyn InterestWatcher>) {
        let list = self.sublist.write();
        list.for_each(|_, _, sub| w.changed(&sub.0, true));
        self.watchers.lock().push(w);
    }

    /// Stops telling `w` (compared by identity).
    pub fn unwatch(&self, w: &Arc<dyn InterestWatcher>) {
        let _list = self.sublist.write();
        self.watchers
            .lock()
            .retain(|x| !std::ptr::addr_eq(Arc::as_ptr(x), Arc::as_ptr(w)));
    }

    /// Wakes `notify` whenever a subscription matching the literal `subject` is added to this
    /// account or removed from it (by a client, a route, a leafnode connection or an internal
    /// client), until the returned watch is dropped. Registered under the trie's write lock: a
    /// look at the trie after this call sees every subscription whose change it was not woken
    /// for.
    pub fn watch_subject(self: &Arc<Self>, subject: &[u8], notify: Arc<Notify>) -> SubjectWatch {
        let _list = self.sublist.write();
        let id = self.subject_watches.add(subject, notify);
        SubjectWatch {
            account: self.clone(),
            subject: subject.into(),
            id,
        }
    }

    /// Subject watches registered now.
    pub fn subject_watches(&self) -> usize {
        self.subject_watches.len()
    }

    /// Every subscription matching `subject`, computed under the read lock.
    pub fn matches(&self, subject: &[u8]) -> Matches<SubRef> {
        self.sublist.read().matches(subject)
    }

    pub fn subscription_count(&self) -> usize {
        self.sublist.read().len()
    }

    /// Every subscription of this account, as monitoring lists them.
    pub fn subscriptions(&self) -> Vec<SubInfo> {
        let mut out = Vec::new();
        self.sublist.read().for_each(|subject, queue, sub| {
            let cid = match &sub.0.target {
                Target::Client(c) => c.cid,
                Target::Route(r) => r.route.cid,
                Target::Forward(_) | Target::Internal(_) => 0,
            };
            let mut info = SubInfo::of(&sub.0);
            info.subject = String::from_utf8_lossy(subject).into_owned();
            info.queue = queue.map(|q| String::from_utf8_lossy(q).into_owned());
            info.cid = cid;
            out.push(info);
        });
        out
    }
}
