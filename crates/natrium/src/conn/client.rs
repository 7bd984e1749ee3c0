//! What other tasks see of one client connection: its outbound side, its re-check signal,
//! what it told us about itself, and its snapshot for monitoring. Its reader task is in
//! `reader`, its writer task in `writer`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::tls::TlsConnInfo;
use crate::router::{ClientStats, CloseReason, Outbound, GLOBAL_ACCOUNT};

/// What the client told us about itself, and who it authenticated as; read by monitoring.
#[derive(Debug, Clone, Default)]
pub struct ConnMeta {
    pub lang: String,
    pub version: String,
    pub user: Option<String>,
    pub account: String,
    /// The TLS session, for TLS connections (set once after the handshake).
    pub tls: Option<Arc<TlsConnInfo>>,
    /// The client came through the WebSocket listener (set before it runs).
    pub websocket: bool,
}

/// A connection as monitoring sees it, live or closed.
#[derive(Debug, Clone)]
pub struct ConnSnapshot {
    pub cid: u64,
    pub addr: SocketAddr,
    pub start: SystemTime,
    pub last_activity: SystemTime,
    /// When it closed, and why (closed connections only).
    pub stop: Option<SystemTime>,
    pub reason: Option<CloseReason>,
    pub stats: ClientStats,
    pub name: String,
    pub meta: ConnMeta,
    /// Its subscriptions (live connections only).
    pub subs: Vec<crate::router::SubInfo>,
    /// The round-trip time last measured with a server PING.
    pub rtt: Option<std::time::Duration>,
}

/// What the system account is told of a client connection (nats-server's client events:
/// `$SYS.ACCOUNT.<account>.CONNECT` / `.DISCONNECT`, `$SYS.SERVER.<id>.CLIENT.AUTH.ERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEventKind {
    Connect,
    Disconnect,
    AuthError,
}

/// A client event and the connection as it was then.
#[derive(Debug)]
pub struct ClientEvent {
    pub kind: ClientEventKind,
    pub conn: ConnSnapshot,
}

/// The part of a client connection other tasks touch.
pub struct Client {
    pub out: Arc<Outbound>,
    /// Wakes the reader after a configuration reload to re-check its credentials.
    reauth: Notify,
    /// After a TLS handshake: the client certificate's key id (`certs::key_id`), if it sent
    /// one; a reload that changes `pinned_certs` checks it again.
    pub tls_key_id: Mutex<Option<Option<String>>>,
    /// Set once the client counts against its account's connections (`meta.account`).
    registered: AtomicBool,
    pub start: SystemTime,
    pub meta: Mutex<ConnMeta>,
}

impl Client {
    pub fn new(cid: u64, addr: SocketAddr, max_pending: usize) -> Arc<Client> {
        Arc::new(Client {
            out: Outbound::new(cid, addr, max_pending),
            reauth: Notify::new(),
            tls_key_id: Mutex::new(None),
            registered: AtomicBool::new(false),
            start: SystemTime::now(),
            meta: Mutex::new(ConnMeta {
                account: GLOBAL_ACCOUNT.to_string(),
                ..ConnMeta::default()
            }),
        })
    }

    /// Asks the reader to re-check its credentials (after a reload); a permit is kept if the
    /// reader is busy, so the request is never lost.
    pub fn request_reauth(&self) {
        self.reauth.notify_one();
    }

    pub(super) async fn reauthorized(&self) {
        self.reauth.notified().await
    }

    /// Marks the connection as counted by its account (or not); returns the previous state.
    pub(super) fn set_registered(&self, on: bool) -> bool {
        self.registered.swap(on, Ordering::AcqRel)
    }

    /// Whether the client came through the WebSocket listener.
    pub fn is_websocket(&self) -> bool {
        self.meta.lock().websocket
    }

    /// Whether the client has completed CONNECT (it then takes asynchronous INFO updates).
    pub fn is_connected(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Whether this client is a connection registered with account `name`.
    pub fn registered_with(&self, name: &str) -> bool {
        self.registered.load(Ordering::Acquire) && self.meta.lock().account == name
    }

    /// What monitoring shows of this connection now; `closed` marks it as just closed.
    pub fn snapshot(&self, closed: bool) -> ConnSnapshot {
        let out = &self.out;
        ConnSnapshot {
            cid: out.cid,
            addr: out.addr,
            start: self.start,
            last_activity: out.last_activity(),
            stop: closed.then(SystemTime::now),
            reason: if closed { out.close_reason() } else { None },
            stats: out.stats(),
            name: out.name(),
            meta: self.meta.lock().clone(),
            rtt: out.rtt(),
            subs: if closed {
                Vec::new()
            } else {
                out.subscription_list()
            },
        }
    }
}
