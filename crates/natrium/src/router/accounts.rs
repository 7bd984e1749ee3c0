//! The server's accounts by name: the global account, configured and operator-mode accounts
//! (created on demand; none is ever removed at run time), and the system account.

use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use super::account::{Account, GLOBAL_ACCOUNT};
use super::interest::InterestFeed;

pub struct Accounts {
    global: Arc<Account>,
    by_name: RwLock<FxHashMap<String, Arc<Account>>>,
    /// In a cluster, where every account reports its interest changes.
    feed: Option<Arc<InterestFeed>>,
}

impl Default for Accounts {
    fn default() -> Self {
        Self::new()
    }
}

impl Accounts {
    /// Just the global account (`$G`).
    pub fn new() -> Accounts {
        Self::with_interest(None)
    }

    /// Accounts whose interest changes are reported to `feed` (a cluster member's).
    pub fn with_interest(feed: Option<Arc<InterestFeed>>) -> Accounts {
        let global = Account::with_interest(GLOBAL_ACCOUNT, feed.clone());
        let mut by_name = FxHashMap::default();
        by_name.insert(GLOBAL_ACCOUNT.to_string(), global.clone());
        Accounts {
            global,
            by_name: RwLock::new(by_name),
            feed,
        }
    }

    /// The account of clients that belong to no named account.
    pub fn global(&self) -> &Arc<Account> {
        &self.global
    }

    pub fn get(&self, name: &str) -> Option<Arc<Account>> {
        self.by_name.read().get(name).cloned()
    }

    /// The account named `name`, created if it does not exist yet.
    pub fn ensure(&self, name: &str) -> Arc<Account> {
        if let Some(a) = self.get(name) {
            return a;
        }
        self.by_name
            .write()
            .entry(name.to_string())
            .or_insert_with(|| Account::with_interest(name, self.feed.clone()))
            .clone()
    }

    /// Every account, sorted by name.
    pub fn list(&self) -> Vec<Arc<Account>> {
        let mut v: Vec<_> = self.by_name.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
