//! Watches on literal subjects of an account (a push consumer's deliver subject): who is woken
//! when a subscription matching one is added to or removed from the account's trie, whoever
//! holds it (a client, a route's or a leafnode connection's interest, an internal client).
//! Without watches an account pays one atomic load per subscription change; with them a literal
//! subject costs a byte scan and a hash lookup, a wildcard one a comparison of its literal prefix
//! with each watched subject (few) and a match against those it may cover.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::Notify;

/// Those woken for one watched subject, each with its watch's id.
type Woken = SmallVec<[(u64, Arc<Notify>); 1]>;

/// What to wake after a change, gathered under the account's trie lock, woken after it.
pub(super) type ToWake = SmallVec<[Arc<Notify>; 2]>;

/// One account's watched subjects. `changed` is called with the account's trie locked for
/// writing, and `add` takes that lock too, so a watch added before a reader's next look at the
/// trie misses no change made after that look (see `Account::watch_subject`).
#[derive(Default)]
pub(super) struct SubjectWatches {
    /// How many watches there are: zero means nothing else is looked at.
    count: AtomicUsize,
    next_id: AtomicU64,
    by_subject: Mutex<FxHashMap<Box<[u8]>, Woken>>,
}

impl SubjectWatches {
    /// Registers `notify` for the literal `subject`; the id `remove` takes.
    pub(super) fn add(&self, subject: &[u8], notify: Arc<Notify>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut map = self.by_subject.lock();
        map.entry(subject.into()).or_default().push((id, notify));
        self.count.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// Drops watch `id` of `subject`.
    pub(super) fn remove(&self, subject: &[u8], id: u64) {
        let mut map = self.by_subject.lock();
        if let Some(w) = map.get_mut(subject) {
            let before = w.len();
            w.retain(|(i, _)| *i != id);
            if w.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if w.is_empty() {
                map.remove(subject);
            }
        }
    }

    /// A subscription on `subject` (literal or with wildcards) was added or removed: the
    /// watches of the subjects it matches, to wake once the trie's lock is released.
    pub(super) fn changed(&self, subject: &[u8], to_wake: &mut ToWake) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let prefix = wildcard_prefix(subject);
        let map = self.by_subject.lock();
        match prefix {
            // Watched subjects are literal: a literal subscription matches only its own.
            None => {
                if let Some(w) = map.get(subject) {
                    to_wake.extend(w.iter().map(|(_, n)| n.clone()));
                }
            }
            Some(prefix) => {
                for (watched, w) in map.iter() {
                    if watched.starts_with(prefix) && natrium_subjects::matches(subject, watched) {
                        to_wake.extend(w.iter().map(|(_, n)| n.clone()));
                    }
                }
            }
        }
    }

    /// Watches registered now.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// For a subject with wildcard tokens, the bytes before the first of them (every subject it
/// matches starts with them: most watched subjects are ruled out by a byte comparison); `None`
/// for a literal subject, which a byte scan tells in most cases.
fn wildcard_prefix(subject: &[u8]) -> Option<&[u8]> {
    if !subject.iter().any(|&c| c == b'*' || c == b'>') {
        return None;
    }
    let mut start = 0;
    for token in subject.split(|&c| c == b'.') {
        if token == b"*" || token == b">" {
            return Some(&subject[..start]);
        }
        start += token.len() + 1;
    }
    None
}
