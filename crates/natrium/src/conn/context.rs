//! What every client connection shares: the accounts, the authenticator in force and the
//! bcrypt limiter, the settings a reload may change, TLS, the registry of connections, the INFO
//! a new connection is greeted with, and the shutdown signal. The server builds one and hands it
//! to each connection; reloads and account JWT updates change it in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use natrium_protocol::{encode, ConnectInfo, ServerInfo};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use super::client::{Client, ClientEvent, ClientEventKind, ConnSnapshot};
use super::registry::Registry;
use super::tls::TlsServer;
use crate::auth::jwt::{ImportGrant, JwtError, TrustedAccount};
use crate::auth::{
    AuthCell, AuthError, Authenticator, BcryptLimiter, ConnAuth, Credentials, DerivedAuth,
    Identity, Verdict,
};
use crate::router::imports::{self, Installed};
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

/// A byte stream a leafnode connection runs over (TCP, TLS, or WebSocket frames over either).
pub trait LeafSocket: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> LeafSocket for T {}

/// Takes leafnode connections that arrive on the WebSocket listener (path `/leafnode`):
/// implemented by the leafnode layer, which runs `stream` (the frames already unwrapped) as an
/// accepted leaf whose outbound side is `out`.
pub trait WsLeafAcceptor: Send + Sync {
    fn accept(
        &self,
        stream: Box<dyn LeafSocket>,
        peer: SocketAddr,
        out: Arc<crate::router::Outbound>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
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
    /// Who takes leafnode connections that arrive on the WebSocket listener (set by the
    /// leafnode layer when this server accepts leaves).
    ws_leafs: std::sync::OnceLock<Arc<dyn WsLeafAcceptor>>,
    /// Bytes a client may have waiting for its socket before it is cut off (not reloadable).
    pub max_pending: usize,
    shutdown: watch::Receiver<bool>,
    /// Serialises changes to operator mode's trust: reloads and the directory resolver's
    /// updates (held across the resolver's file writes).
    trust_update: Mutex<()>,
    /// In a cluster: told whenever an account's connection count changes, so the other
    /// servers learn it.
    conn_counts: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Arc<Account>>>,
    /// Where client events go, once the system account listens (`watch_client_events`).
    client_events: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<ClientEvent>>,
    /// The imports account JWTs declare, as installed in the router (see `sync_jwt_imports`).
    jwt_imports: Mutex<JwtImports>,
    /// The imports the configuration's `accounts {}` declare, as installed in the router (see
    /// `sync_config_imports`), by what they are.
    config_imports: Mutex<FxHashMap<String, imports::Installed>>,
    /// The URL resolver: fetches account JWTs on demand.
    fetcher: RwLock<Option<Arc<dyn AccountFetcher>>>,
    /// When each account was last fetched (fetches of one account are at least a second apart,
    /// as in nats-server; failures included, so unknown keys can not flood the URL).
    fetched_at: Mutex<FxHashMap<String, std::time::Instant>>,
    /// The server's identity key (signs auth callout requests; its public key is the id).
    server_key: RwLock<Option<Arc<nkeys::KeyPair>>>,
    /// The server's curve key for sealed auth callout exchanges.
    xkey: nkeys::XKey,
    /// Told of each authenticator `update_trust` installs (the server enables JetStream for
    /// accounts whose new JWTs grant it).
    trust_listener: std::sync::OnceLock<TrustListener>,
}

/// See `ConnContext::set_trust_listener`.
pub type TrustListener = Box<dyn Fn(&Authenticator) + Send + Sync>;

/// Where account JWTs come from at run time (the URL resolver): the JWT of an account, by key.
pub trait AccountFetcher: Send + Sync {
    fn fetch(&self, key: &str) -> BoxFuture<Result<String, String>>;
}

/// A boxed future, as `AccountFetcher` returns.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// An `auth_users` identity: in the callout account, it may not publish on the callout subject.
fn callout_account_user(o: &crate::auth::callout::CalloutOptions, mut id: Identity) -> Identity {
    let account = id
        .account
        .as_deref()
        .unwrap_or(crate::router::GLOBAL_ACCOUNT);
    if account == o.account {
        id.permissions = Some(crate::auth::callout::deny_callout_subject(id.permissions));
    }
    id
}

/// How many accounts one lookup may fetch (the account, then those it imports from).
const MAX_FETCHES_PER_LOOKUP: usize = 16;

/// The JWT-declared imports in force, by what they are, and what was refused last time.
#[derive(Default)]
struct JwtImports {
    installed: FxHashMap<String, Installed>,
    refused: Vec<String>,
    /// The earliest activation expiry a resync is already scheduled for.
    resync_at: Option<SystemTime>,
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
            ws_leafs: std::sync::OnceLock::new(),
            max_pending: cfg.max_pending,
            shutdown,
            trust_update: Mutex::new(()),
            trust_listener: std::sync::OnceLock::new(),
            conn_counts: std::sync::OnceLock::new(),
            client_events: std::sync::OnceLock::new(),
            jwt_imports: Mutex::new(JwtImports::default()),
            config_imports: Mutex::new(FxHashMap::default()),
            fetcher: RwLock::new(None),
            fetched_at: Mutex::new(FxHashMap::default()),
            server_key: RwLock::new(None),
            xkey: nkeys::XKey::new(),
        }
    }

    /// Sets the key whose public key is this server's id (`identity.id`).
    pub fn set_server_key(&self, key: Arc<nkeys::KeyPair>) {
        *self.server_key.write() = Some(key);
    }

    pub fn server_key(&self) -> Option<Arc<nkeys::KeyPair>> {
        self.server_key.read().clone()
    }

    /// The server's curve key (auth callout encryption).
    pub fn xkey(&self) -> &nkeys::XKey {
        &self.xkey
    }

    /// The cluster this server is part of, if any.
    pub fn cluster_name(&self) -> Option<String> {
        self.cluster.read().as_ref().map(|c| c.name.clone())
    }

    /// Installs the URL resolver's fetcher.
    pub fn set_fetcher(&self, f: Arc<dyn AccountFetcher>) {
        *self.fetcher.write() = Some(f);
    }

    /// Checks a client's credentials (see `Authenticator::check`). In operator mode with the URL
    /// resolver, a user JWT of an account not known yet (or whose JWT expired) has its account
    /// fetched first, with the accounts that one imports from, and is checked again.
    ///
    /// With an auth callout configured, a client that is not one of its `auth_users` is
    /// authenticated by the callout service instead (see `callout`); every client admitted into
    /// the callout account may not publish on the callout subject.
    pub async fn authenticate(
        self: &Arc<Self>,
        info: &ConnectInfo,
        creds: &Credentials,
        conn: &ConnAuth,
        client: &Client,
    ) -> Verdict {
        let auth = self.authenticator(conn.websocket);
        if let Some(o) = auth.callout() {
            if auth.goes_to_callout(creds) {
                return super::callout::ask(self, o, info, creds, conn, client).await;
            }
            return match auth.check(creds, conn) {
                Verdict::Accept(id) => Verdict::Accept(callout_account_user(o, id)),
                Verdict::Bcrypt {
                    hash,
                    given,
                    identity,
                    fail,
                } => Verdict::Bcrypt {
                    hash,
                    given,
                    identity: callout_account_user(o, identity),
                    fail,
                },
                v => v,
            };
        }
        let verdict = auth.check(creds, conn);
        let key = match &verdict {
            Verdict::Reject(AuthError::Jwt(
                JwtError::UnknownAccount(k) | JwtError::AccountExpired(k),
            )) => k.clone(),
            _ => return verdict,
        };
        if self.lookup_account(&key).await {
            self.authenticator(conn.websocket).check(creds, conn)
        } else {
            verdict
        }
    }

    /// Fetches account `key`'s JWT through the URL resolver, verifies it against the trusted
    /// operators and installs it, then does the same for the accounts its imports name that
    /// are not known yet. Returns whether `key` was installed.
    pub async fn lookup_account(self: &Arc<Self>, key: &str) -> bool {
        let Some(fetcher) = self.fetcher.read().clone() else {
            return false;
        };
        let mut queue = vec![key.to_string()];
        let mut found = false;
        let mut fetches = 0;
        while let Some(k) = queue.pop() {
            if fetches == MAX_FETCHES_PER_LOOKUP || !crate::auth::jwt_dir::is_account_key(&k) {
                continue;
            }
            {
                let mut at = self.fetched_at.lock();
                if at
                    .get(&k)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                {
                    continue;
                }
                at.insert(k.clone(), std::time::Instant::now());
            }
            fetches += 1;
            let jwt = match fetcher.fetch(&k).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!("Account fetch failed: {e}");
                    continue;
                }
            };
            match self.install_account(&k, &jwt) {
                Ok(acc) => {
                    found |= k == key;
                    let known = self.auth.current();
                    let trust = known.trust();
                    for i in &acc.imports {
                        if trust.is_some_and(|t| !t.accounts.contains_key(&i.account))
                            && !queue.contains(&i.account)
                        {
                            queue.push(i.account.clone());
                        }
                    }
                    self.account_jwt_changed(&k);
                }
                Err(e) => tracing::warn!("Account {k} fetched JWT refused: {e}"),
            }
        }
        found
    }

    /// Verifies an account JWT (fetched, or pushed to the URL resolver) for account `key` and
    /// installs it, unless the one in force was issued later.
    pub fn install_account(
        self: &Arc<Self>,
        key: &str,
        jwt: &str,
    ) -> Result<TrustedAccount, JwtError> {
        self.update_trust(|auth| {
            let trust = auth
                .trust()
                .ok_or_else(|| JwtError::Unsupported("not in operator mode".into()))?;
            let acc = TrustedAccount::verify(jwt, &trust.operator_keys)?;
            if acc.key != key {
                return Err(JwtError::Malformed(format!(
                    "subject does not match jwt content ({} for {key})",
                    acc.key
                )));
            }
            if trust
                .accounts
                .get(key)
                .is_some_and(|have| have.issued_at > acc.issued_at)
            {
                return Ok((None, acc));
            }
            Ok((Some(auth.with_account(acc.clone())), acc))
        })
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

    /// Hands leafnode connections of the WebSocket listener to `a`.
    pub fn set_ws_leafs(&self, a: Arc<dyn WsLeafAcceptor>) {
        let _ = self.ws_leafs.set(a);
    }

    pub fn ws_leafs(&self) -> Option<&Arc<dyn WsLeafAcceptor>> {
        self.ws_leafs.get()
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

    /// From now on, reports each change of an account's connection count (a cluster member
    /// announces them to its peers).
    pub fn watch_connection_counts(&self) -> tokio::sync::mpsc::UnboundedReceiver<Arc<Account>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = self.conn_counts.set(tx);
        rx
    }

    /// A connection of `account` came or went.
    pub fn connection_count_changed(&self, account: &Arc<Account>) {
        if let Some(tx) = self.conn_counts.get() {
            let _ = tx.send(account.clone());
        }
    }

    /// From now on, reports clients connecting, disconnecting and failing to authenticate (the
    /// system account publishes them).
    pub fn watch_client_events(&self) -> tokio::sync::mpsc::UnboundedReceiver<ClientEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = self.client_events.set(tx);
        rx
    }

    /// Reports a client event; `conn` is only called when someone listens.
    pub fn client_event(&self, kind: ClientEventKind, conn: impl FnOnce() -> ConnSnapshot) {
        if let Some(tx) = self.client_events.get() {
            let _ = tx.send(ClientEvent { kind, conn: conn() });
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
        self: &Arc<Self>,
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
            self.sync_jwt_imports();
            if let Some(listen) = self.trust_listener.get() {
                listen(&self.auth.current());
            }
        }
        Ok(out)
    }

    /// Sets what is told of each authenticator `update_trust` installs (once).
    pub fn set_trust_listener(&self, f: TrustListener) {
        let _ = self.trust_listener.set(f);
    }

    /// Brings the router's imports between operator-mode accounts in line with the account
    /// JWTs in force (at start, after a reload, after a pushed, fetched or deleted JWT): imports
    /// the exporters allow are installed, those no longer declared or allowed (a changed
    /// export, a revoked or expired activation token) are removed, the unchanged ones stay as
    /// they are. When an activation token expires, this runs again then.
    pub fn sync_jwt_imports(self: &Arc<Self>) {
        let auth = self.auth.current();
        let (grants, refused) = auth.trust().map(|t| t.imports()).unwrap_or_default();
        let now = SystemTime::now();
        let mut state = self.jwt_imports.lock();
        let mut wanted: FxHashMap<String, ImportGrant> = grants
            .into_iter()
            .filter(|g| g.expires.is_none_or(|e| e > now))
            .map(|g| (format!("{g:?}"), g))
            .collect();
        let next_expiry = wanted.values().filter_map(|g| g.expires).min();
        state.installed.retain(|key, installed| {
            let keep = wanted.remove(key).is_some();
            if !keep {
                installed.remove();
            }
            keep
        });
        for (key, g) in wanted {
            let importer = self.accounts.ensure(&g.importer);
            let exporter = self.accounts.ensure(&g.exporter);
            tracing::debug!(
                "Adding {:?} import of {:?} from account {} to account {}",
                g.import.kind,
                g.import.subject,
                g.exporter,
                g.importer
            );
            let installed = imports::install_with(&importer, &exporter, &g.import, g.responses);
            state.installed.insert(key, installed);
        }
        for r in refused.iter().filter(|r| !state.refused.contains(r)) {
            tracing::warn!("JWT import not installed: {r}");
        }
        state.refused = refused;
        let Some(at) = next_expiry else { return };
        if state.resync_at.is_some_and(|s| s <= at && s > now) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.resync_at = Some(at);
        let weak = Arc::downgrade(self);
        let wait = at.duration_since(now).unwrap_or_default();
        rt.spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(ctx) = weak.upgrade() {
                ctx.jwt_imports.lock().resync_at = None;
                ctx.sync_jwt_imports();
            }
        });
    }

    /// Installs the configuration's imports, each `(importer, exporter, import)` (already checked
    /// against the exporters' exports): those new to it are installed, those it no longer lists
    /// are removed at once, the unchanged ones stay as they are (start and every reload).
    pub fn sync_config_imports(&self, wanted: Vec<(String, String, imports::Import)>) {
        let mut installed = self.config_imports.lock();
        let mut wanted: FxHashMap<String, (String, String, imports::Import)> =
            wanted.into_iter().map(|w| (format!("{w:?}"), w)).collect();
        installed.retain(|key, i| {
            let keep = wanted.remove(key).is_some();
            if !keep {
                i.remove();
            }
            keep
        });
        for (key, (importer, exporter, import)) in wanted {
            let i = self.accounts.ensure(&importer);
            let e = self.accounts.ensure(&exporter);
            installed.insert(key, imports::install(&i, &e, &import));
        }
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
        // Connections on other servers of the cluster count too; the newest local ones go.
        let max = account.limits().max_connections.map_or(usize::MAX, |m| {
            m.saturating_sub(account.remote_connections())
        });
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
            tls_required: tls.as_ref().is_some_and(|t| !t.opts.allow_non_tls),
            tls_available: tls.as_ref().is_some_and(|t| t.opts.allow_non_tls),
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
                tls_available: ws.tls,
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
