//! Accounts own subject spaces: each holds the subscription trie for its clients and a generation
//! counter that clients read, without a lock, to know whether their cached match results are stale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use natrium_subjects::{Matches, Sublist};
use parking_lot::RwLock;

use crate::client::SubRef;

/// The account of clients that belong to no named account, as in nats-server.
pub const GLOBAL_ACCOUNT: &str = "$G";

pub struct Account {
    pub name: String,
    sublist: RwLock<Sublist<SubRef>>,
    /// Bumped after every change to `sublist`; read lock-free on the publish path.
    generation: AtomicU64,
}

impl Account {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Account {
            name: name.into(),
            sublist: RwLock::new(Sublist::new()),
            generation: AtomicU64::new(0),
        })
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
}
