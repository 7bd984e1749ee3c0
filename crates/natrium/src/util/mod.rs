//! The base layer: small helpers every other layer may use (time conversions and RFC 3339,
//! atomic file writes, a connection's adaptive read buffer) and the versions. It imports nothing
//! from the rest of the crate.

pub mod fs;
pub mod readbuf;
pub mod time;

/// The nats-server release whose client-visible behaviour Natrium implements (sent in INFO,
/// where clients gate features on it: nats.js gates batched direct gets and priority groups on
/// 2.11, which Natrium has, and consumer reset on 2.14, which it has too, but 2.14's other
/// JetStream features it has not).
pub const PROTOCOL_VERSION: &str = "2.12.0";
/// Natrium's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
