//! The base layer: small helpers every other layer may use (time conversions and RFC 3339,
//! atomic file writes) and the versions. It imports nothing from the rest of the crate.

pub mod fs;
pub mod time;

/// The nats-server release whose client-visible behaviour Natrium implements (sent in INFO,
/// where clients gate features on it).
pub const PROTOCOL_VERSION: &str = "2.10.24";
/// Natrium's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
