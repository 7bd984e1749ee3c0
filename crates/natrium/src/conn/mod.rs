//! The connection layer: client connections over TCP, TLS or WebSocket. What other tasks see of a
//! connection (`client`), the shared context every connection reads (`context`), the registry
//! of live and recently closed connections (`registry`), the reader (`reader`: the protocol
//! state machine, authentication, permissions), the writer (`writer`), the TLS configuration and
//! handshake (`tls`), taking over accepted sockets (`accept`) and the WebSocket listener
//! (`websocket`: the upgrade, and a stream that unwraps and wraps frames for the reader and
//! writer). It imports the router and the auth layer, never the server or monitoring. Files
//! depend on each other in that order: tls < client < registry < context (with the auth callout
//! it runs, `callout`) < writer < reader < accept < websocket.

pub mod accept;
pub mod callout;
pub mod client;
pub mod context;
pub mod reader;
pub mod registry;
pub mod tls;
pub mod websocket;
pub mod writer;

pub use accept::accept;
pub use client::{Client, ClientEvent, ClientEventKind, ConnMeta, ConnSnapshot};
pub use context::{
    AccountFetcher, BoxFuture, ClusterView, ConnConfig, ConnContext, ConnSettings, ServerIdentity,
    WsEndpoint,
};
pub use reader::Conn;
pub use registry::Registry;
pub use tls::{TlsError, TlsOptions, TlsServer};
pub use websocket::{Websocket, WebsocketError, WebsocketOptions};
