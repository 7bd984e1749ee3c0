//! Watchers of an account's subscriptions: a leafnode connection keeps its own view of the
//! account's interest (which subscriptions it tells the other side about depends on who holds
//! them), so it is told of every subscription added to or removed from the account, in order.

use super::subscription::Subscription;

/// Told of every subscription added to (`up`) or removed from an account it watches. Called
/// with the account's trie locked for writing, so calls keep the changes' order: it must be
/// short and must not touch the account's trie.
pub trait InterestWatcher: Send + Sync {
    fn changed(&self, sub: &Subscription, up: bool);
}
