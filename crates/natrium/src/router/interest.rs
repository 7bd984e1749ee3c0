//! Local interest as peer servers see it. In a cluster every account counts its announced
//! subscriptions per subject (and queue group) and reports each change that peers must hear
//! about: a subject's first and last subscription (RS+ / RS-), and every change of a queue
//! group's member count (its weight). Reports go, in order, into one channel the cluster layer
//! drains; a server without a cluster has no feed and pays nothing.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

/// One change of an account's local interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestChange {
    pub account: Arc<str>,
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    /// Local subscriptions now; 0 means the interest is gone.
    pub count: u32,
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

    /// Counts one more (`up`) or one fewer subscription and reports the change if peers must
    /// hear of it. The report is sent under the count's lock, so reports keep the changes' order.
    pub(super) fn changed(
        &self,
        account: &Arc<str>,
        subject: &[u8],
        queue: Option<&[u8]>,
        up: bool,
    ) {
        let mut counts = self.counts.lock();
        let key: Key = (subject.into(), queue.map(Into::into));
        let n = counts.get(&key).copied().unwrap_or(0);
        let n = if up {
            n + 1
        } else if n == 0 {
            return;
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
            let _ = self.feed.tx.send(InterestChange {
                account: account.clone(),
                subject: key.0,
                queue: key.1,
                count: n,
            });
        }
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
