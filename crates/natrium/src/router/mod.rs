//! The router layer: where messages go. Accounts and their subject spaces, imports between
//! them, subscriptions and their targets, a connection's outbound side, delivery (with the
//! per-publisher match cache), internal clients and watches on subjects. Every kind of connection (clients, routes,
//! leafnodes, WebSocket clients) publishes through here and receives through an
//! `Outbound`. It imports only the base layer and `perms`.

pub mod account;
pub mod accounts;
pub mod delivery;
pub mod imports;
pub mod interest;
pub mod internal;
pub mod mapping;
pub mod outbound;
pub mod rate;
pub mod sink;
pub mod subscription;
mod watch;

pub use account::{
    Account, InterestWatcher, Limits, SubjectWatch, SublistCounters, TooManyConnections, Totals,
    GLOBAL_ACCOUNT,
};
pub use accounts::Accounts;
pub use delivery::{publish, publish_batch, remove_subscription, Lagging, Msg, Publisher};
pub use interest::{Announcer, Interest, InterestChange, InterestFeed};
pub use internal::{InternalClient, InternalError, InternalSubscription};
pub use outbound::{CacheStats, ClientStats, CloseReason, Outbound, SubAdded};
pub use sink::InternalMsg;
pub use subscription::{LeafPeer, RouteSub, SubInfo, SubRef, Subscription, Target};

#[cfg(test)]
mod tests;
