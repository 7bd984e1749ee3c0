//! What every client connection shares: the accounts, the authenticator in force and the
//! bcrypt limiter, the settings a reload may change, TLS, the registry of connections, the INFO
//! a new connection is greeted with, and the shutdown signal. The server builds one and hands it
//! to each connection; reloads and account JWT updates change it in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natrium_protocol::{encode, ServerInfo};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::client::Client;
use super::registry::Registry;
use super::tls::TlsServer;
use crate::auth::{AuthCell, AuthError, Authenticator, BcryptLimiter, DerivedAuth, Identity};
use crate::router::{Account, Accounts, CloseReason, Limits};
use crate::util::{PROTOCOL_VERSION, VERSION};

/// Per-connection settings a reload may change; each connection re-reads them when notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    pub ping_interval: Duration,
    pub ping_max: u32,
    pub max_control_line: usize,
    /// The server's `max_payload` (a connection's own limit may be lower, see `client_limits`).
    pub max_payload: usize,
    /// Subscriptions one connection may hold; 0 is unlimited.
    pub max_subscriptions: usize,
}

/// Who this server is, as INFO tells clients.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub id: String,
    pub name: String,
    /// The client listener's configured host and bound port.
    pub host: String,
    pub port: u16,
    pub jetstream: bool,
}

/// What clients are told about the cluster this server is part of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub name: String,
    /// Every server's client URLs (`host:port`), this one's first; empty with `no_advertise`.
    pub connect_urls: Vec<String>,
    /// Every server's WebSocket URLs, this one's first: WebSocket clients get these as their
    /// `connect_urls` (as in nats-server, TCP clients never see them).
    pub ws_connect_urls: Vec<String>,
}

/// The WebSocket listener as INFO and authentication see it, set once it is bound: nats-server
/// tells a WebSocket client the listener's host, port and TLS, and authenticates it with the
/// websocket block's overrides.
pub struct WsEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The `host:port` peers tell WebSocket clients instead of the listener's addresses.
    pub advertise: Option<String>,
    pub auth: DerivedAuth,
}

pub struct ConnContext {
    pub identity: ServerIdentity,
    /// Set when this server is part of a cluster.
    cluster: RwLock<Option<ClusterView>>,
    pub accounts: Arc<Accounts>,
    pub auth: AuthCell,
    /// Runs bcrypt comparisons off the reader tasks (bounded per client IP and server-wide).
    pub bcrypt: BcryptLimiter,
    pub registry: Registry,
    settings: Mutex<ConnSettings>,
    /// `write_deadline` in force, in nanoseconds, read by writers once per batch.
    write_deadline: AtomicU64,
    /// TLS for new connections, swapped by a reload.
    tls: RwLock<Option<Arc<TlsServer>>>,
    /// The WebSocket listener, once bound (when configured).
    websocket: std::sync::OnceLock<WsEndpoint>,
    /// Bytes a client may have waiting for its socket before it is cut off (not reloadable).
    pub max_pending: usize,
    shutdown: watch::Receiver<bool>,
    /// Serialises changes to operator mode's trust: reloads and the directory resolver's
    /// updates (held across the resolver's file writes).
    trust_update: Mutex<()>,
}

/// What a `ConnContext` is built from.
pub struct ConnConfig {
    pub identity: ServerIdentity,
    pub settings: ConnSettings,
    pub write_deadline: Duration,
    pub max_pending: usize,
    pub max_connections: usize,
    pub max_unauthenticated_per_ip: usize,
}

impl ConnContext {
    pub fn new(
        cfg: ConnConfig,
        accounts: Arc<Accounts>,
        auth: Authenticator,
        tls: Option<Arc<TlsServer>>,
        shutdown: watch::Receiver<bool>,
    ) -> ConnContext {
        ConnContext {
            identity: cfg.identity,
            cluster: RwLock::new(None),
            accounts,
            auth: AuthCell::new(auth),
            bcrypt: BcryptLimiter::new(),
            registry: Registry::new(cfg.max_connections, cfg.max_unauthenticated_per_ip),
            settings: Mutex::new(cfg.settings),
            write_deadline: AtomicU64::new(cfg.write_deadline.as_nanos() as u64),
            tls: RwLock::new(tls),
            websocket: std::sync::OnceLock::new(),
            max_pending: cfg.max_pending,
            shutdown,
            trust_update: Mutex::new(()),
        }
    }

    pub fn settings(&self) -> ConnSettings {
        *self.settings.lock()
    }

    /// Applies reloaded settings; connections pick them up when asked to re-check.
    pub fn set_settings(&self, s: ConnSettings, write_deadline: Duration) {
        *self.settings.lock() = s;
        self.write_deadline
            .store(write_deadline.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn write_deadline(&self) -> Duration {
        Duration::from_nanos(self.write_deadline.load(Ordering::Relaxed))
    }

    /// The TLS configuration in force, if TLS is on.
    pub fn tls_server(&self) -> Option<Arc<TlsServer>> {
        self.tls.read().clone()
    }

    pub fn set_tls(&self, tls: Option<Arc<TlsServer>>) {
        *self.tls.write() = tls;
    }

    /// Records the bound WebSocket listener (once).
    pub fn set_websocket(&self, ws: WsEndpoint) {
        let _ = self.websocket.set(ws);
    }

    pub fn websocket(&self) -> Option<&WsEndpoint> {
        self.websocket.get()
    }

    /// The authenticator for a client of the WebSocket listener (`websocket`) or of the client
    /// listener: the one in force, with the websocket block's overrides for the former.
    pub fn authenticator(&self, websocket: bool) -> Arc<Authenticator> {
        match (websocket, self.websocket.get()) {
            (true, Some(ws)) => ws.auth.current(&self.auth),
            _ => self.auth.current(),
        }
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The limits of one connection of `account`: the subscriptions it may hold (`None` is
    /// unlimited) and the largest payload it may publish; the lowest of the server's, the
    /// account's and the user's own (from a user JWT) wins, as in nats-server.
    pub fn client_limits(&self, account: &Account, identity: &Identity) -> (Option<usize>, usize) {
        let s = self.settings();
        let acc = account.limits();
        let subs = [
            (s.max_subscriptions > 0).then_some(s.max_subscriptions),
            acc.max_subscriptions,
            identity.max_subs,
        ]
        .into_iter()
        .flatten()
        .min();
        let payload = [Some(s.max_payload), acc.max_payload, identity.max_payload]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(s.max_payload);
        (subs, payload)
    }

    /// Logs and counts a failed authentication (never the secret).
    pub fn audit_auth_failure(&self, addr: &SocketAddr, cid: u64, e: &AuthError) {
        let auth = self.auth.current();
        let account = auth
            .account_of(e.user())
            .and_then(|a| self.accounts.get(a))
            .unwrap_or_else(|| self.accounts.global().clone());
        account.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "{addr} - cid:{cid} - authentication error: {e} (account {:?})",
            account.name
        );
    }

    /// Logs and counts a permissions violation.
    pub fn audit_violation(
        &self,
        account: &Account,
        user: Option<&str>,
        addr: &SocketAddr,
        cid: u64,
        text: &str,
    ) {
        account
            .permission_violations
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{addr} - cid:{cid} - account {:?} user {:?}: {text}",
            account.name,
            user.unwrap_or("")
        );
    }

    /// Sets the named accounts' limits and, in operator mode, those of the accounts `auth`
    /// trusts (creating the ones that do not exist yet).
    pub fn set_account_limits<'a>(
        &self,
        configured: impl IntoIterator<Item = (&'a str, Limits)>,
        auth: &Authenticator,
    ) {
        for (name, limits) in configured {
            if let Some(acc) = self.accounts.get(name) {
                acc.set_limits(limits);
            }
        }
        if let Some(trust) = auth.trust() {
            for (key, t) in &trust.accounts {
                self.accounts.ensure(key).set_limits(t.limits);
            }
        }
    }

    /// Holds off other trust changes while the caller (a reload) installs a new authenticator.
    pub fn trust_serial(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.trust_update.lock()
    }

    /// Runs `f` on the authenticator in force, serialised with reloads, and installs the
    /// authenticator it returns (if any): how the directory resolver applies a pushed or deleted
    /// account JWT (`f` also writes the file, so a reload never reads a half-applied change).
    pub fn update_trust<T, E>(
        &self,
        f: impl FnOnce(&Authenticator) -> Result<(Option<Authenticator>, T), E>,
    ) -> Result<T, E> {
        let _serial = self.trust_update.lock();
        let auth = self.auth.current();
        let (new, out) = f(&auth)?;
        if let Some(new) = new {
            // The accounts exist, with their limits, before any user can authenticate into them.
            for (key, t) in new.trust().map(|t| &t.accounts).into_iter().flatten() {
                self.accounts.ensure(key).set_limits(t.limits);
            }
            self.auth.store(new);
        }
        Ok(out)
    }

    /// After operator mode's JWT of account `key` changed (or went away): applies its limits to
    /// the live account, closes connections over them, and has every connection of the account
    /// re-check its user JWT (revoked users are closed; permissions and limits are refreshed).
    pub fn account_jwt_changed(&self, key: &str) {
        let auth = self.auth.current();
        let limits = auth
            .trust()
            .and_then(|t| t.accounts.get(key))
            .map(|a| a.limits);
        let account = match limits {
            Some(l) => {
                let a = self.accounts.ensure(key);
                a.set_limits(l);
                a
            }
            None => match self.accounts.get(key) {
                Some(a) => a,
                None => return,
            },
        };
        self.enforce_account_limits(&account);
    }

    /// After an account's limits changed: closes its newest connections beyond
    /// `max_connections` (with nats-server's error) and has the others re-check their
    /// subscription and payload limits.
    pub fn enforce_account_limits(&self, account: &Account) {
        let mut members: Vec<Arc<Client>> = self
            .registry
            .clients()
            .into_iter()
            .filter(|c| c.registered_with(&account.name))
            .collect();
        members.sort_by_key(|c| c.out.cid);
        let max = account.limits().max_connections.unwrap_or(usize::MAX);
        for (i, c) in members.iter().enumerate() {
            if i >= max {
                tracing::error!(
                    "{} - cid:{} - maximum account active connections exceeded (account {:?})",
                    c.out.addr,
                    c.out.cid,
                    account.name
                );
                c.out
                    .send_err("maximum account active connections exceeded");
                c.out.close(CloseReason::MaxAccountConnectionsExceeded);
            } else {
                c.request_reauth();
            }
        }
    }

    /// Sets what clients are told about the cluster and, when that changed, sends every
    /// connected client an updated INFO (how clients learn about servers that join or leave).
    pub fn set_cluster_view(&self, view: ClusterView) {
        let changed = {
            let mut c = self.cluster.write();
            let changed = c.as_ref() != Some(&view);
            *c = Some(view);
            changed
        };
        if !changed {
            return;
        }
        for c in self.registry.clients() {
            if c.is_connected() {
                let ip = c.out.addr.ip().to_string();
                let ws = c.is_websocket();
                c.out
                    .send(&self.client_info(ws, Some((c.out.cid, &ip, None)), false));
            }
        }
    }

    /// The INFO every client is greeted with (and lame duck mode's, with `ldm`); `client`
    /// carries what is particular to one connection: its cid, address and nonce.
    pub fn info(&self, client: Option<(u64, &str, Option<String>)>, ldm: bool) -> Vec<u8> {
        self.client_info(false, client, ldm)
    }

    /// `info` for a client of the WebSocket listener (`websocket`) or of the client listener.
    /// As nats-server's: a WebSocket client is given the WebSocket listener's host, port and
    /// TLS, its authentication requirement, and the cluster's WebSocket URLs as `connect_urls`.
    pub fn client_info(
        &self,
        websocket: bool,
        client: Option<(u64, &str, Option<String>)>,
        ldm: bool,
    ) -> Vec<u8> {
        let id = &self.identity;
        let auth = self.authenticator(websocket);
        let tls = self.tls_server();
        let (client_id, client_ip, nonce) = match client {
            Some((cid, ip, nonce)) => (cid, ip.to_string(), nonce),
            None => (0, String::new(), None),
        };
        let info = ServerInfo {
            server_id: id.id.clone(),
            server_name: id.name.clone(),
            version: PROTOCOL_VERSION.to_string(),
            proto: 1,
            go: format!("natrium {VERSION}"),
            host: id.host.clone(),
            port: id.port,
            headers: true,
            auth_required: auth.required(),
            tls_required: tls.is_some(),
            tls_verify: tls.as_ref().is_some_and(|t| t.verify()),
            nonce,
            jetstream: id.jetstream,
            max_payload: self.settings().max_payload,
            client_id,
            client_ip,
            ldm,
            ..ServerInfo::default()
        };
        let info = match (websocket, self.websocket.get()) {
            (true, Some(ws)) => ServerInfo {
                host: ws.host.clone(),
                port: ws.port,
                tls_required: ws.tls,
                // The WebSocket listener's TLS is its own; a client certificate there is asked
                // for, never announced.
                tls_verify: false,
                ..info
            },
            _ => info,
        };
        let info = match &*self.cluster.read() {
            Some(c) => ServerInfo {
                cluster: Some(c.name.clone()),
                connect_urls: if websocket {
                    c.ws_connect_urls.clone()
                } else {
                    c.connect_urls.clone()
                },
                ..info
            },
            None => info,
        };
        let json = serde_json::to_vec(&info).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 7);
        encode::info(&mut out, &json);
        out
    }
}
