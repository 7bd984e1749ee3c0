//! Local interest as peer servers see it. In a cluster every account counts its announced
//! subscriptions per subject (and queue group) and reports each change that peers must hear
//! about: a subject's first and last subscription (RS+ / RS-), and every change of a queue
//! group's member count (its weight). Reports are announced, in order, before the change
//! returns (a client's SUB reaches peers ahead of the PUB it sends next, as nats-server orders
//! them); a server without a cluster has no feed and pays nothing.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

/// One change of an account's local interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestChange {
    pub account: Arc<str>,
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    /// Local subscriptions now; 0 means the interest is gone.
    pub count: u32,
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

/// One subject (and queue group) with local interest, and how many local subscriptions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    pub count: u32,
}

/// One account's announced subscriptions, counted per subject and queue group.
pub(super) struct LocalInterest {
    feed: Arc<InterestFeed>,
    counts: Mutex<FxHashMap<Key, u32>>,
}

impl LocalInterest {
    pub(super) fn new(feed: Arc<InterestFeed>) -> Self {
        LocalInterest {
            feed,
            counts: Mutex::new(FxHashMap::default()),
        }
    }

    /// Counts one more (`up`) or one fewer subscription and queues the change if peers must
    /// hear of it (under the count's lock, so reports keep the changes' order). Returns whether
    /// it did: the caller then calls `flush`.
    pub(super) fn changed(
        &self,
        account: &Arc<str>,
        subject: &[u8],
        queue: Option<&[u8]>,
        up: bool,
    ) -> bool {
        let mut counts = self.counts.lock();
        let key: Key = (subject.into(), queue.map(Into::into));
        let n = counts.get(&key).copied().unwrap_or(0);
        let n = if up {
            n + 1
        } else if n == 0 {
            return false;
        } else {
            n - 1
        };
        // Plain interest matters to peers when it appears (0 -> 1) or goes (1 -> 0).
        let report = queue.is_some() || (up && n == 1) || (!up && n == 0);
        if n == 0 {
            counts.remove(&key);
        } else {
            counts.insert(key.clone(), n);
        }
        if report {
            self.feed.pending.lock().push(InterestChange {
                account: account.clone(),
                subject: key.0,
                queue: key.1,
                count: n,
            });
        }
        report
    }

    /// Announces what `changed` queued.
    pub(super) fn flush(&self) {
        self.feed.flush();
    }

    /// Every subject (and queue group) with local interest now, with its count.
    pub(super) fn snapshot(&self) -> Vec<Interest> {
        self.counts
            .lock()
            .iter()
            .map(|((subject, queue), n)| Interest {
                subject: subject.clone(),
                queue: queue.clone(),
                count: *n,
            })
            .collect()
    }
}
