//! Local interest as peer servers see it. In a cluster every account counts its announced
//! subscriptions per subject, queue group and origin (a leaf cluster's interest apart from this
//! server's own) and reports each change that peers must hear about: a subject's first and last
//! subscription (RS+ / RS-, LS+ / LS- with the origin), and every change of a queue group's
//! member count (its weight), both per origin and summed (for peers that take no origin).
//! Reports are announced, in order, before the change returns (a client's SUB reaches peers
//! ahead of the PUB it sends next, as nats-server orders them); a server without a cluster has
//! no feed and pays nothing.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

/// One change of an account's local interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestChange {
    pub account: Arc<str>,
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    /// The leafnode cluster this interest belongs to (leaves of that cluster connected here);
    /// `None`: this server's own.
    pub origin: Option<Box<[u8]>>,
    /// Local subscriptions of this origin now; 0 means its interest is gone.
    pub count: u32,
    /// Whether a peer that takes origins (`lnoc`) must hear of `count`.
    pub per_origin: bool,
    /// Local subscriptions of every origin now, and whether a peer without origins must hear
    /// of that.
    pub total: u32,
    pub summed: bool,
}

/// What sends interest changes to peers (the cluster layer's routes).
pub trait Announcer: Send + Sync {
    /// Sends `changes`, oldest first, to every peer that must hear of them.
    fn announce(&self, changes: &[InterestChange]);
}

/// Where the accounts' interest changes go: queued under each count's lock (so they keep the
/// order they happened in), then announced by the thread that made them, before it goes on.
#[derive(Default)]
pub struct InterestFeed {
    pending: Mutex<Vec<InterestChange>>,
    /// The announcer, once the cluster runs; held while changes are announced and while a new
    /// peer is told everything (`exclusive`), so a peer hears every change once and in order.
    announcer: Mutex<Option<Arc<dyn Announcer>>>,
}

impl InterestFeed {
    pub fn new() -> Arc<InterestFeed> {
        Arc::new(InterestFeed::default())
    }

    /// Starts announcing with `a`.
    pub fn set_announcer(&self, a: Arc<dyn Announcer>) {
        *self.announcer.lock() = Some(a);
    }

    /// Announces the changes queued so far. Called after a change, outside its count's lock.
    /// Before the cluster runs there is no peer: the changes are dropped (a peer that comes
    /// later learns the interest as it is then, see `exclusive`).
    pub(super) fn flush(&self) {
        let announcer = self.announcer.lock();
        self.flush_with(announcer.as_deref());
    }

    fn flush_with(&self, announcer: Option<&dyn Announcer>) {
        let changes = std::mem::take(&mut *self.pending.lock());
        if let (Some(a), false) = (announcer, changes.is_empty()) {
            a.announce(&changes);
        }
    }

    /// Runs `f` (telling a new peer the interest there is now, and adding it to those the
    /// announcer serves) with no announcement under way and none queued.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let announcer = self.announcer.lock();
        self.flush_with(announcer.as_deref());
        f()
    }
}

type Key = (Box<[u8]>, Option<Box<[u8]>>);

/// One subject (and queue group) with local interest of one origin, and how many local
/// subscriptions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    pub origin: Option<Box<[u8]>>,
    pub count: u32,
}

/// A leafnode origin cluster (`None`: this server's own interest) and its count.
type OriginCount = (Option<Box<[u8]>>, u32);

/// Counts per subject and queue group, per origin (`None`: this server's own).
#[derive(Default)]
struct Counted {
    by_origin: SmallVec<[OriginCount; 1]>,
}

impl Counted {
    /// The count of every origin.
    fn total(&self) -> u32 {
        self.by_origin.iter().map(|(_, n)| n).sum()
    }
}

/// One account's announced subscriptions, counted per subject, queue group and origin.
pub(super) struct LocalInterest {
    feed: Arc<InterestFeed>,
    counts: Mutex<FxHashMap<Key, Counted>>,
}

impl LocalInterest {
    pub(super) fn new(feed: Arc<InterestFeed>) -> Self {
        LocalInterest {
            feed,
            counts: Mutex::new(FxHashMap::default()),
        }
    }

    /// Counts one more (`up`) or one fewer subscription of `origin` and queues the change if
    /// peers must hear of it (under the count's lock, so reports keep the changes' order).
    /// Plain interest matters to peers when it appears (0 -> 1) or goes (1 -> 0), a queue
    /// group's at every change (its weight). Returns whether it queued: the caller then calls
    /// `flush`.
    pub(super) fn changed(
        &self,
        account: &Arc<str>,
        subject: &[u8],
        queue: Option<&[u8]>,
        origin: Option<&[u8]>,
        up: bool,
    ) -> bool {
        let mut counts = self.counts.lock();
        let key: Key = (subject.into(), queue.map(Into::into));
        let c = counts.entry(key.clone()).or_default();
        let pos = c.by_origin.iter().position(|(o, _)| o.as_deref() == origin);
        let n = pos.map_or(0, |p| c.by_origin[p].1);
        if !up && n == 0 {
            if c.by_origin.is_empty() {
                counts.remove(&key);
            }
            return false;
        }
        let n = if up { n + 1 } else { n - 1 };
        match pos {
            Some(p) if n == 0 => {
                c.by_origin.swap_remove(p);
            }
            Some(p) => c.by_origin[p].1 = n,
            None => c.by_origin.push((origin.map(Into::into), n)),
        }
        let total = c.total();
        let edge = |now: u32| queue.is_some() || (up && now == 1) || (!up && now == 0);
        let (per_origin, summed) = (edge(n), edge(total));
        if total == 0 {
            counts.remove(&key);
        }
        let report = per_origin || summed;
        if report {
            self.feed.pending.lock().push(InterestChange {
                account: account.clone(),
                subject: key.0,
                queue: key.1,
                origin: origin.map(Into::into),
                count: n,
                per_origin,
                total,
                summed,
            });
        }
        report
    }

    /// Announces what `changed` queued.
    pub(super) fn flush(&self) {
        self.feed.flush();
    }

    /// Every subject (and queue group) with local interest now, with its count: one entry per
    /// origin; `summed` adds the origins up (for peers without origins).
    pub(super) fn snapshot(&self, summed: bool) -> Vec<Interest> {
        let counts = self.counts.lock();
        let mut all = Vec::with_capacity(counts.len());
        for ((subject, queue), c) in counts.iter() {
            if summed {
                all.push(Interest {
                    subject: subject.clone(),
                    queue: queue.clone(),
                    origin: None,
                    count: c.total(),
                });
                continue;
            }
            for (origin, n) in &c.by_origin {
                all.push(Interest {
                    subject: subject.clone(),
                    queue: queue.clone(),
                    origin: origin.clone(),
                    count: *n,
                });
            }
        }
        all
    }
}
