//! Local interest as peer servers see it. In a cluster every account counts its announced
//! subscriptions per subject, queue group and origin (a leaf cluster's interest apart from this
//! server's own) and reports each change that peers must hear about: a subject's first and last
//! subscription (RS+ / RS-, LS+ / LS- with the origin), and every change of a queue group's
//! member count (its weight), both per origin and summed (for peers that take no origin).
//! Reports go, in order, into one channel the cluster layer drains; a server without a cluster
//! has no feed and pays nothing.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::mpsc;

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

/// Where an account's interest changes go.
pub struct InterestFeed {
    tx: mpsc::UnboundedSender<InterestChange>,
}

impl InterestFeed {
    /// A feed and the receiving end the cluster layer reads.
    pub fn new() -> (Arc<InterestFeed>, mpsc::UnboundedReceiver<InterestChange>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(InterestFeed { tx }), rx)
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

/// Counts per subject and queue group: in all, and per origin (`None`: this server's own).
#[derive(Default)]
struct Counted {
    total: u32,
    by_origin: SmallVec<[OriginCount; 1]>,
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

    /// Counts one more (`up`) or one fewer subscription of `origin` and reports the change if
    /// peers must hear of it. The report is sent under the count's lock, so reports keep the
    /// changes' order. Plain interest matters to peers when it appears (0 -> 1) or goes
    /// (1 -> 0), a queue group's at every change (its weight).
    pub(super) fn changed(
        &self,
        account: &Arc<str>,
        subject: &[u8],
        queue: Option<&[u8]>,
        origin: Option<&[u8]>,
        up: bool,
    ) {
        let mut counts = self.counts.lock();
        let key: Key = (subject.into(), queue.map(Into::into));
        let c = counts.entry(key.clone()).or_default();
        let pos = c.by_origin.iter().position(|(o, _)| o.as_deref() == origin);
        let n = pos.map_or(0, |p| c.by_origin[p].1);
        if !up && n == 0 {
            if c.by_origin.is_empty() {
                counts.remove(&key);
            }
            return;
        }
        let (n, total) = if up {
            (n + 1, c.total + 1)
        } else {
            (n - 1, c.total - 1)
        };
        c.total = total;
        match pos {
            Some(p) if n == 0 => {
                c.by_origin.swap_remove(p);
            }
            Some(p) => c.by_origin[p].1 = n,
            None => c.by_origin.push((origin.map(Into::into), n)),
        }
        let edge = |now: u32| queue.is_some() || (up && now == 1) || (!up && now == 0);
        let (per_origin, summed) = (edge(n), edge(total));
        if total == 0 {
            counts.remove(&key);
        }
        if per_origin || summed {
            let _ = self.feed.tx.send(InterestChange {
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
    }

    /// Every subject (and queue group) with local interest now, with its count.
    /// One entry per origin; `summed` adds the origins up (for peers without origins).
    pub(super) fn snapshot(&self, summed: bool) -> Vec<Interest> {
        let counts = self.counts.lock();
        let mut all = Vec::with_capacity(counts.len());
        for ((subject, queue), c) in counts.iter() {
            if summed {
                all.push(Interest {
                    subject: subject.clone(),
                    queue: queue.clone(),
                    origin: None,
                    count: c.total,
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
