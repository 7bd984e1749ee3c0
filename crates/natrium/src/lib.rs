//! Natrium: a message server speaking the NATS protocol, usable as a library (`Server::start`) and
//! as the `natrium` binary. The crate is built in layers; a module imports only from layers
//! below its own (docs/ARCHITECTURE.md has the map, `tests/it/layers.rs` checks it):
//!
//! - base: `util` (time, atomic files, versions), `logging`
//! - `perms`: permission lists and their per-connection compiled form
//! - `router`: accounts, imports, subscriptions, a connection's outbound side, delivery,
//!   internal clients
//! - `auth`: passwords, NKeys, JWT operator mode, certificate names, the bcrypt limiter
//! - `conn`: client connections (reader, writer, TLS), their shared context and registry
//! - `cluster`: routes to peer servers (the full mesh)
//! - `leaf`: leafnode connections (hub and leaf sides)
//! - `jetstream`: the `$JS.API`, streams and consumers over `natrium-store`
//! - `options`: the configuration, composed of the layers' config types
//! - `observe`: the monitoring documents
//! - `monitor`, `sys`, `resolver`: HTTP monitoring, system-account requests, the directory
//!   account resolver
//! - `server`: start, accept, reload, lame duck, shutdown
//! - `cli`: the command line (and `main.rs`, the binary)

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod conn;
pub mod jetstream;
pub mod leaf;
pub mod logging;
pub mod monitor;
pub mod observe;
pub mod options;
pub mod perms;
pub mod resolver;
pub mod router;
pub mod server;
pub mod sys;
pub mod util;

pub use options::Options;
pub use router::{InternalClient, InternalMsg, InternalSubscription};
pub use server::{ReloadError, Server, ServerError};
pub use util::{PROTOCOL_VERSION, VERSION};
