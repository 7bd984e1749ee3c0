//! Natrium: a message server speaking the NATS protocol, usable as a library (`Server::start`) and
//! as the `natrium` binary. Module map: `server` (listener, lifecycle), `client` (per-connection
//! reader/writer and the publish path), `account` (subject spaces), `auth`, `tls`, `options`, `cli`,
//! `logging`. See docs/ARCHITECTURE.md.

pub mod account;
pub mod auth;
pub mod cli;
pub mod client;
pub mod internal;
pub mod jetstream;
pub mod jwt;
pub mod logging;
pub mod monitor;
pub mod options;
pub mod perms;
pub mod resolver;
pub mod server;
pub mod sys;
mod timefmt;
pub mod tls;

pub use internal::{InternalClient, InternalMsg, InternalSubscription};
pub use options::{Options, PROTOCOL_VERSION, VERSION};
pub use server::{ReloadError, Server, ServerError};
