//! The connection layer: client connections over TCP or TLS. The shared context every
//! connection reads (`context`), the registry of live and recently closed connections
//! (`registry`), the reader (`client`: the protocol state machine, authentication, permissions)
//! and the writer (`writer`), and the TLS handshake (`tls`). It imports the router and the auth
//! layer, never the server or monitoring.

pub mod client;
pub mod context;
pub mod registry;
pub mod tls;
pub mod writer;

pub use client::{Client, Conn, ConnMeta, ConnSnapshot};
pub use context::{ConnConfig, ConnContext, ConnSettings, ServerIdentity};
pub use registry::Registry;
pub use tls::{TlsError, TlsOptions, TlsServer};
