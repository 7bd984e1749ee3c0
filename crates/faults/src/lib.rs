//! The fault harness for Natrium clusters (issue 12): natrium processes on loopback whose routes
//! run through TCP fault proxies, kill -9 / SIGSTOP / restart, simulated power loss, corruption
//! of store files, a publishing workload that records every acknowledged message, and a checker
//! that proves each one present exactly once, in order, intact, on every replica.
//!
//! Everything binds 127.0.0.1; every wait is bounded; only processes the harness started are
//! signalled, and `Drop` kills them.

pub mod checker;
pub mod cluster;
pub mod core;
pub mod corrupt;
pub mod fsops;
pub mod net;
pub mod powerloss;
pub mod proxy;
pub mod replica;
pub mod report;
pub mod scenario;
pub mod workload;
