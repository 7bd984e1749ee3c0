//! The server: binds the client listener, accepts connections (enforcing `max_connections`),
//! hands each to a `client::Conn` task, and shuts everything down on request. Embeddable: tests
//! and programs start one in-process with `Server::start` and stop it with `Server::shutdown`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use natrium_protocol::{encode, ServerInfo};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::account::{Account, Forward, ForwardKind, SubjectMap, Totals, GLOBAL_ACCOUNT};
use crate::auth::{AuthError, Authenticator, BcryptLimiter};
use crate::client::{ClientShared, ClientStats, CloseReason, Conn, Subscription};
use crate::monitor::{self, ConnInfo};
use crate::options::{ExportKind, Options, OptionsError, PROTOCOL_VERSION, VERSION};

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid options: {0}")]
    Options(#[from] OptionsError),
    #[error("can not listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a configuration reload was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload")]
    NoConfigFile,
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("config reload not supported for {0}: restart the server to change it")]
    NotSupported(&'static str),
    #[error("user {user:?} refers to account {account:?}, which is not running")]
    UnknownAccount { user: String, account: String },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The current `Authenticator`, swapped whole by a reload. Read once per CONNECT (and once per
/// connection after a reload), never on the message path.
pub(crate) struct AuthCell(RwLock<Arc<Authenticator>>);

impl AuthCell {
    pub(crate) fn current(&self) -> Arc<Authenticator> {
        self.0.read().clone()
    }

    pub(crate) fn required(&self) -> bool {
        self.0.read().required()
    }

    fn store(&self, a: Authenticator) {
        *self.0.write() = Arc::new(a);
    }
}

fn authenticator_for(opts: &Options) -> Result<Authenticator, OptionsError> {
    Authenticator::from_options(opts)
        .map_err(|e| OptionsError::Validation(format!("operator mode: {e}")))
}

/// Per-connection settings a reload may change; each connection re-reads them when notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnSettings {
    pub(crate) ping_interval: std::time::Duration,
    pub(crate) ping_max: u32,
    pub(crate) max_control_line: usize,
    /// The server's `max_payload` (a connection's own limit may be lower, see `client_limits`).
    pub(crate) max_payload: usize,
}

/// State shared by the accept loop and every connection.
pub(crate) struct ServerInner {
    pub(crate) opts: Options,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) auth: AuthCell,
    /// TLS for new connections, swapped by a reload.
    tls: RwLock<Option<Arc<crate::tls::TlsServer>>>,
    /// Runs bcrypt comparisons off the reader tasks (bounded per client IP and server-wide).
    pub(crate) bcrypt: BcryptLimiter,
    /// The options in force (`opts` as reloads changed them); reloads diff against these.
    current: Mutex<Options>,
    /// Serialises changes to operator mode's trust: reloads and the directory resolver's
    /// updates (taken before `current` by a reload; held across the resolver's file writes).
    trust_update: Mutex<()>,
    /// `max_connections` in force (reloadable), read by the accept loop.
    max_connections: std::sync::atomic::AtomicUsize,
    /// `write_deadline` in force, in nanoseconds (reloadable), read by writers once per batch.
    write_deadline: AtomicU64,
    /// `max_unauthenticated_per_ip` in force (reloadable).
    max_unauthenticated_per_ip: std::sync::atomic::AtomicUsize,
    /// Connections that have not completed CONNECT yet, per address (see `Unauthenticated`).
    unauthenticated: Mutex<FxHashMap<std::net::IpAddr, usize>>,
    global: Arc<Account>,
    /// Every account by name, the global and system accounts included. Operator mode adds
    /// accounts at run time (reloads, pushed account JWTs); none is ever removed.
    accounts: RwLock<FxHashMap<String, Arc<Account>>>,
    clients: Mutex<FxHashMap<u64, Arc<ClientShared>>>,
    next_cid: AtomicU64,
    shutdown: watch::Sender<bool>,
    pub(crate) port: u16,
    pub(crate) start: std::time::SystemTime,
    pub(crate) total_connections: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    /// Traffic of disconnected clients, server-wide.
    pub(crate) closed_totals: Mutex<Totals>,
    /// The most recent closed connections, newest last (for `/connz?state=closed`).
    pub(crate) closed_conns: Mutex<std::collections::VecDeque<ConnInfo>>,
    pub(crate) http_port: Mutex<Option<u16>>,
    pub(crate) https_port: Mutex<Option<u16>>,
    pub(crate) jetstream: Mutex<Option<Arc<crate::jetstream::JetStream>>>,
}

/// How many closed connections `/connz` remembers, as nats-server's default.
const MAX_CLOSED_CONNS: usize = 10_000;

impl ServerInner {
    pub(crate) fn global_account(&self) -> Arc<Account> {
        self.global.clone()
    }

    pub(crate) fn account(&self, name: &str) -> Option<Arc<Account>> {
        self.accounts.read().get(name).cloned()
    }

    /// The account named `name`, created if it does not exist yet (operator mode).
    pub(crate) fn ensure_account(&self, name: &str) -> Arc<Account> {
        if let Some(a) = self.account(name) {
            return a;
        }
        self.accounts
            .write()
            .entry(name.to_string())
            .or_insert_with(|| Account::new(name))
            .clone()
    }

    /// Logs and counts a failed authentication (never the secret).
    pub(crate) fn audit_auth_failure(&self, addr: &SocketAddr, cid: u64, e: &AuthError) {
        let auth = self.auth.current();
        let account = auth
            .account_of(e.user())
            .and_then(|a| self.account(a))
            .unwrap_or_else(|| self.global.clone());
        account.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "{addr} - cid:{cid} - authentication error: {e} (account {:?})",
            account.name
        );
    }

    /// Logs and counts a permissions violation.
    pub(crate) fn audit_violation(
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

    /// The TLS configuration in force (reloads swap it), if TLS is on.
    pub(crate) fn tls_server(&self) -> Option<Arc<crate::tls::TlsServer>> {
        self.tls.read().clone()
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The connection settings a reload may change, as now in force.
    pub(crate) fn conn_settings(&self) -> ConnSettings {
        let c = self.current.lock();
        ConnSettings {
            ping_interval: c.ping_interval,
            ping_max: c.ping_max,
            max_control_line: c.max_control_line,
            max_payload: c.max_payload,
        }
    }

    /// A copy of the options in force (as reloads changed them), for monitoring.
    pub(crate) fn current_options(&self) -> Options {
        self.current.lock().clone()
    }

    /// `write_deadline` as now in force.
    pub(crate) fn write_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.write_deadline.load(Ordering::Relaxed))
    }

    /// The limits of one connection of `account`: the subscriptions it may hold (`None` is
    /// unlimited) and the largest payload it may publish; the lowest of the server's, the
    /// account's and the user's own (from a user JWT) wins, as in nats-server.
    pub(crate) fn client_limits(
        &self,
        account: &Account,
        identity: &crate::auth::Identity,
    ) -> (Option<usize>, usize) {
        let (server_subs, server_payload) = {
            let current = self.current.lock();
            (current.max_subscriptions, current.max_payload)
        };
        let acc = account.limits();
        let subs = [
            (server_subs > 0).then_some(server_subs),
            acc.max_subscriptions,
            identity.max_subs,
        ]
        .into_iter()
        .flatten()
        .min();
        let payload = [Some(server_payload), acc.max_payload, identity.max_payload]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(server_payload);
        (subs, payload)
    }

    /// Sets every account's limits from the options in force and, in operator mode, from the
    /// account JWTs (creating accounts the trust names that do not exist yet).
    fn apply_account_limits(&self, opts: &Options, auth: &Authenticator) {
        for a in &opts.accounts {
            if let Some(acc) = self.account(&a.name) {
                acc.set_limits(a.limits);
            }
        }
        if let Some(trust) = auth.trust() {
            for (key, t) in &trust.accounts {
                self.ensure_account(key).set_limits(t.limits);
            }
        }
    }

    /// Runs `f` on the authenticator in force, serialised with reloads, and installs the
    /// authenticator it returns (if any): how the directory resolver applies a pushed or deleted
    /// account JWT (`f` also writes the file, so a reload never reads a half-applied change).
    pub(crate) fn update_trust<T, E>(
        &self,
        f: impl FnOnce(&Authenticator) -> Result<(Option<Authenticator>, T), E>,
    ) -> Result<T, E> {
        let _serial = self.trust_update.lock();
        let auth = self.auth.current();
        let (new, out) = f(&auth)?;
        if let Some(new) = new {
            // The accounts exist, with their limits, before any user can authenticate into them.
            for (key, t) in new.trust().map(|t| &t.accounts).into_iter().flatten() {
                self.ensure_account(key).set_limits(t.limits);
            }
            self.auth.store(new);
        }
        Ok(out)
    }

    /// After operator mode's JWT of account `key` changed (or went away): applies its limits to
    /// the live account, closes connections over them, and has every connection of the account
    /// re-check its user JWT (revoked users are closed; permissions and limits are refreshed).
    pub(crate) fn account_jwt_changed(&self, key: &str) {
        let auth = self.auth.current();
        let limits = auth
            .trust()
            .and_then(|t| t.accounts.get(key))
            .map(|a| a.limits);
        let account = match limits {
            Some(l) => {
                let a = self.ensure_account(key);
                a.set_limits(l);
                a
            }
            None => match self.account(key) {
                Some(a) => a,
                None => return,
            },
        };
        self.enforce_account_limits(&account);
    }

    /// After an account's limits changed: closes its newest connections beyond
    /// `max_connections` (with nats-server's error) and has the others re-check their
    /// subscription and payload limits.
    pub(crate) fn enforce_account_limits(&self, account: &Account) {
        let mut members: Vec<Arc<ClientShared>> = self
            .clients()
            .into_iter()
            .filter(|c| c.registered_with(&account.name))
            .collect();
        members.sort_by_key(|c| c.cid);
        let max = account.limits().max_connections.unwrap_or(usize::MAX);
        for (i, c) in members.iter().enumerate() {
            if i >= max {
                tracing::error!(
                    "{} - cid:{} - maximum account active connections exceeded (account {:?})",
                    c.addr,
                    c.cid,
                    account.name
                );
                c.send_err("maximum account active connections exceeded");
                c.close(CloseReason::MaxAccountConnectionsExceeded);
            } else {
                c.request_reauth();
            }
        }
    }

    /// Called once per connection when it ends: drops it from the live set, folds its counters
    /// into the totals and remembers it for `/connz?state=closed`.
    pub(crate) fn client_closed(
        &self,
        c: &Arc<ClientShared>,
        account: &Account,
        stats: ClientStats,
    ) {
        self.clients.lock().remove(&c.cid);
        let reason = c.close_reason();
        if matches!(
            reason,
            Some(CloseReason::SlowConsumerPendingBytes | CloseReason::SlowConsumerWriteDeadline)
        ) {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
            account.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
        self.closed_totals.lock().add(&stats);
        account.closed_totals.lock().add(&stats);
        let info = monitor::conn_info(c, &stats, true, reason);
        let mut closed = self.closed_conns.lock();
        if closed.len() >= MAX_CLOSED_CONNS {
            closed.pop_front();
        }
        closed.push_back(info);
    }

    pub(crate) fn clients(&self) -> Vec<Arc<ClientShared>> {
        self.clients.lock().values().cloned().collect()
    }

    pub(crate) fn accounts(&self) -> Vec<Arc<Account>> {
        let mut v: Vec<_> = self.accounts.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn info_for(
        &self,
        cid: u64,
        ip: &str,
        auth: &Authenticator,
        nonce: Option<String>,
        tls: Option<&crate::tls::TlsServer>,
    ) -> Vec<u8> {
        let info = ServerInfo {
            server_id: self.id.clone(),
            server_name: self.name.clone(),
            version: PROTOCOL_VERSION.to_string(),
            proto: 1,
            go: format!("natrium {VERSION}"),
            host: self.opts.host.clone(),
            port: self.port,
            headers: true,
            auth_required: auth.required(),
            tls_required: tls.is_some(),
            tls_verify: tls.is_some_and(|t| t.verify()),
            nonce,
            jetstream: self.opts.jetstream.is_some(),
            max_payload: self.current.lock().max_payload,
            client_id: cid,
            client_ip: ip.to_string(),
            ..ServerInfo::default()
        };
        let json = serde_json::to_vec(&info).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 7);
        encode::info(&mut out, &json);
        out
    }
}

/// A running server.
pub struct Server {
    inner: Arc<ServerInner>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
    monitor: Option<JoinHandle<()>>,
    sys: Option<JoinHandle<()>>,
    resolver: Option<JoinHandle<()>>,
}

impl Server {
    /// Validates `opts`, binds the listener and starts accepting clients.
    pub async fn start(opts: Options) -> Result<Server, ServerError> {
        opts.validate()?;
        let port = if opts.port == -1 { 0 } else { opts.port as u16 };
        let bind = format!("{}:{}", opts.host, port);
        let listener = TcpListener::bind(&bind)
            .await
            .map_err(|source| ServerError::Listen {
                addr: bind.clone(),
                source,
            })?;
        let addr = listener.local_addr()?;
        let id = nkeys::KeyPair::new_server().public_key();
        let name = opts.server_name.clone().unwrap_or_else(|| id.clone());
        tracing::info!("Starting natrium");
        tracing::info!("  Version:  {VERSION} (nats-server protocol {PROTOCOL_VERSION})");
        tracing::info!("  Name:     {name}");
        tracing::info!("  ID:       {id}");
        if let Some(cf) = &opts.config_file {
            tracing::info!("Using configuration file: {}", cf.display());
        }
        tracing::info!("Effective options: {}", opts.summary());
        let (shutdown, _) = watch::channel(false);
        let global = Account::new(GLOBAL_ACCOUNT);
        let auth = authenticator_for(&opts)?;
        log_skipped(&auth);
        if let Some(d) = opts.operator.as_ref().and_then(|o| match &o.resolver {
            Some(crate::options::Resolver::Dir(d)) => Some(d),
            _ => None,
        }) {
            std::fs::create_dir_all(&d.dir)?;
            tracing::info!(
                "Managing all jwt in exclusive directory {}",
                d.dir.display()
            );
        }
        let accounts = build_accounts(&opts, &global, &auth.trusted_accounts())?;
        let initial_auth = auth.clone();
        let tls = match &opts.tls {
            Some(t) => Some(Arc::new(crate::tls::TlsServer::new(t)?)),
            None => None,
        };
        let inner = Arc::new(ServerInner {
            auth: AuthCell(RwLock::new(Arc::new(auth))),
            tls: RwLock::new(tls),
            bcrypt: BcryptLimiter::new(),
            current: Mutex::new(opts.clone()),
            trust_update: Mutex::new(()),
            max_connections: std::sync::atomic::AtomicUsize::new(opts.max_connections),
            write_deadline: AtomicU64::new(opts.write_deadline.as_nanos() as u64),
            max_unauthenticated_per_ip: std::sync::atomic::AtomicUsize::new(
                opts.max_unauthenticated_per_ip,
            ),
            unauthenticated: Mutex::new(FxHashMap::default()),
            opts,
            id,
            name,
            global,
            accounts: RwLock::new(accounts),
            clients: Mutex::new(FxHashMap::default()),
            next_cid: AtomicU64::new(1),
            shutdown,
            port: addr.port(),
            start: std::time::SystemTime::now(),
            total_connections: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            closed_totals: Mutex::new(Totals::default()),
            closed_conns: Mutex::new(std::collections::VecDeque::new()),
            http_port: Mutex::new(None),
            https_port: Mutex::new(None),
            jetstream: Mutex::new(None),
        });
        inner.apply_account_limits(&inner.opts, &initial_auth);
        drop(initial_auth);
        tracing::info!(
            "Listening for client connections on {}:{}",
            inner.opts.host,
            addr.port()
        );
        // One monitoring listener, HTTP or HTTPS (validation refuses both).
        let monitor = match (inner.opts.http_port, inner.opts.https_port) {
            (Some(p), _) => Some(start_monitor(&inner, p, false).await?),
            (None, Some(p)) if p != 0 => Some(start_monitor(&inner, p, true).await?),
            _ => None,
        };
        if let Some(js_opts) = inner.opts.jetstream.clone() {
            start_jetstream(&inner, js_opts)?;
        }
        let sys = crate::internal::InternalClient::new(inner.clone(), &inner.opts.system_account)
            .map(|c| tokio::spawn(crate::sys::serve(c)))
            .ok();
        let resolver = match inner.opts.operator.as_ref().map(|o| &o.resolver) {
            Some(Some(crate::options::Resolver::Dir(d))) => {
                crate::internal::InternalClient::new(inner.clone(), &inner.opts.system_account)
                    .map(|c| tokio::spawn(crate::resolver::serve(c, d.clone())))
                    .ok()
            }
            _ => None,
        };
        let accept = tokio::spawn(accept_loop(inner.clone(), listener));
        tracing::info!("Server is ready");
        Ok(Server {
            inner,
            addr,
            accept,
            monitor,
            sys,
            resolver,
        })
    }

    /// The address the client listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound client port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL clients can connect to (loopback when bound to all interfaces).
    pub fn client_url(&self) -> String {
        let ip = self.addr.ip();
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            ip.to_string()
        };
        format!("nats://{host}:{}", self.addr.port())
    }

    /// A socket-less client in `account` (e.g. `"$G"`), for embedding programs and tests.
    pub fn internal_client(
        &self,
        account: &str,
    ) -> Result<crate::InternalClient, crate::internal::InternalError> {
        crate::InternalClient::new(self.inner.clone(), account)
    }

    /// The bound monitoring port, when monitoring is enabled.
    pub fn http_port(&self) -> Option<u16> {
        *self.inner.http_port.lock()
    }

    /// The bound HTTPS monitoring port, when HTTPS monitoring is enabled.
    pub fn https_port(&self) -> Option<u16> {
        *self.inner.https_port.lock()
    }

    /// Base URL of the monitoring endpoints (`http://` or `https://`, without the base path),
    /// when enabled.
    pub fn monitor_url(&self) -> Option<String> {
        let host = match self.inner.opts.http_host.as_str() {
            "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
            h => h.to_string(),
        };
        match (self.http_port(), self.https_port()) {
            (Some(p), _) => Some(format!("http://{host}:{p}")),
            (None, Some(p)) => Some(format!("https://{host}:{p}")),
            _ => None,
        }
    }

    pub fn server_id(&self) -> &str {
        &self.inner.id
    }

    pub fn num_clients(&self) -> usize {
        self.inner.clients.lock().len()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.inner.global.subscription_count()
    }

    /// Re-reads the configuration file the server started from and applies it (see
    /// `reload_options`). Command-line overrides are not re-applied: the binary reloads through
    /// `reload_options` with its flags merged in.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self
            .inner
            .current
            .lock()
            .config_file
            .clone()
            .ok_or(ReloadError::NoConfigFile)?;
        let (opts, warnings) = Options::from_file(&path)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        self.reload_options(opts)
    }

    /// Applies new options without a restart: users, NKeys, tokens, passwords, permissions,
    /// account membership, `no_auth_user`, the auth timeout, TLS, accounts' limits,
    /// `max_subscriptions`, `max_payload`, `max_control_line`, `max_connections`,
    /// `ping_interval`, `ping_max`, `write_deadline`, `debug`, `trace` and `logtime`.
    /// Every connection then re-checks its credentials once: one whose credentials no longer
    /// pass is closed with `Authorization Violation`, one whose user moved to another account is
    /// closed so it reconnects there, the others keep running with their new permissions
    /// (subscriptions no longer allowed are removed with a permissions error) and the new limits.
    /// Changing anything else (accounts themselves, listeners, `max_pending`, JetStream, the
    /// log file) refuses the whole reload with an error naming the setting.
    pub fn reload_options(&self, new: Options) -> Result<(), ReloadError> {
        new.validate()?;
        let inner = &self.inner;
        let _serial = inner.trust_update.lock();
        let mut current = inner.current.lock();
        if let Some(what) = current.reload_blocker(&new) {
            return Err(ReloadError::NotSupported(what));
        }
        for (user, account) in new
            .auth
            .users
            .iter()
            .map(|u| (&u.user, &u.account))
            .chain(new.auth.nkeys.iter().map(|u| (&u.nkey, &u.account)))
        {
            if let Some(a) = account {
                if inner.account(a).is_none() {
                    return Err(ReloadError::UnknownAccount {
                        user: user.clone(),
                        account: a.clone(),
                    });
                }
            }
        }
        let auth = authenticator_for(&new)?;
        log_skipped(&auth);
        // Always re-read: rotated certificates usually keep their file names.
        let tls = match &new.tls {
            Some(t) => Some(Arc::new(crate::tls::TlsServer::new(t)?)),
            None => None,
        };
        let repin = tls
            .as_ref()
            .map(|t| t.opts.pinned_certs.clone())
            .filter(|p| !p.is_empty() && current.tls.as_ref().map(|t| &t.pinned_certs) != Some(p));
        *inner.tls.write() = tls;
        // Changed pinned_certs: TLS clients whose certificate is no longer pinned are closed.
        if let Some(pinned) = repin {
            for c in inner.clients() {
                let key_id = c.tls_key_id.lock().clone();
                if let Some(k) = key_id {
                    if !crate::tls::is_pinned(&pinned, k.as_deref()) {
                        tracing::info!(
                            "{} - cid:{} - certificate no longer pinned after reload, closing",
                            c.addr,
                            c.cid
                        );
                        c.close(CloseReason::TlsHandshakeError);
                    }
                }
            }
        }
        // Operator-mode accounts new to this configuration are created; users of accounts it no
        // longer names fail their re-check below.
        inner.apply_account_limits(&new, &auth);
        inner.auth.store(auth);
        inner
            .write_deadline
            .store(new.write_deadline.as_nanos() as u64, Ordering::Relaxed);
        inner
            .max_connections
            .store(new.max_connections, Ordering::Relaxed);
        inner
            .max_unauthenticated_per_ip
            .store(new.max_unauthenticated_per_ip, Ordering::Relaxed);
        if (new.debug, new.trace, new.logtime) != (current.debug, current.trace, current.logtime) {
            crate::logging::set_levels(new.debug, new.trace, new.logtime);
            tracing::info!(
                "Reloaded: debug = {}, trace = {}, logtime = {}",
                new.debug,
                new.trace,
                new.logtime
            );
        }
        tracing::info!("Reloaded: effective options: {}", new.summary());
        let max_connections = new.max_connections;
        *current = new;
        drop(current);
        // A lowered max_connections closes the newest connections over it, as nats-server
        // closes connections until it is within the limit.
        let mut all = inner.clients();
        if all.len() > max_connections {
            all.sort_by_key(|c| c.cid);
            for c in &all[max_connections..] {
                c.send_err("maximum connections exceeded");
                c.close(CloseReason::MaxConnectionsExceeded);
            }
            tracing::info!(
                "Closed {} connections to fall within max_connections",
                all.len() - max_connections
            );
        }
        // Each reader re-checks once (see `Conn::reauthorize`), after connections beyond a
        // lowered account `max_connections` are closed. Connections accepted after this
        // snapshot authenticate against the new configuration at CONNECT.
        for a in inner.accounts() {
            inner.enforce_account_limits(&a);
        }
        for c in inner.clients() {
            c.request_reauth();
        }
        tracing::info!("Reloaded server configuration");
        Ok(())
    }

    /// Lame duck mode, as nats-server's: stop accepting clients, tell the connected ones (an INFO
    /// with `ldm: true`, on which clients reconnect elsewhere), wait `lame_duck_grace_period`,
    /// close the clients still here spread over the rest of `lame_duck_duration`, then shut down.
    pub async fn lame_duck(self) {
        tracing::info!("Entering lame duck mode, stop accepting new clients");
        self.accept.abort();
        let (duration, grace) = {
            let c = self.inner.current.lock();
            (c.lame_duck_duration, c.lame_duck_grace_period)
        };
        let info = ServerInfo {
            server_id: self.inner.id.clone(),
            server_name: self.inner.name.clone(),
            version: PROTOCOL_VERSION.to_string(),
            proto: 1,
            go: format!("natrium {VERSION}"),
            host: self.inner.opts.host.clone(),
            port: self.inner.port,
            headers: true,
            jetstream: self.inner.opts.jetstream.is_some(),
            max_payload: self.inner.current.lock().max_payload,
            ldm: true,
            ..ServerInfo::default()
        };
        let mut line = Vec::new();
        encode::info(&mut line, &serde_json::to_vec(&info).unwrap_or_default());
        let clients: Vec<_> = self.inner.clients.lock().values().cloned().collect();
        for c in &clients {
            c.send(&line);
        }
        tokio::time::sleep(grace).await;
        let clients: Vec<_> = self.inner.clients.lock().values().cloned().collect();
        if !clients.is_empty() {
            tracing::info!("Closing existing clients");
            // One client per step, a step at least every millisecond: batches when there are
            // more clients than milliseconds left.
            let spread = duration
                .saturating_sub(grace)
                .max(std::time::Duration::from_millis(1));
            let steps = (spread.as_millis() as usize).clamp(1, clients.len());
            let per_step = clients.len().div_ceil(steps);
            let pause = spread / steps as u32;
            for batch in clients.chunks(per_step) {
                for c in batch {
                    c.close(CloseReason::ServerShutdown);
                }
                tokio::time::sleep(pause).await;
            }
        }
        self.shutdown().await;
    }

    /// Stops accepting, closes every client and waits until they are gone.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let js = self.inner.jetstream.lock().take();
        if let Some(js) = js {
            js.shutdown();
        }
        self.accept.abort();
        let _ = self.accept.await;
        for task in [self.monitor, self.sys, self.resolver]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        let clients: Vec<_> = self.inner.clients.lock().values().cloned().collect();
        for c in &clients {
            c.close(CloseReason::ServerShutdown);
        }
        for _ in 0..200 {
            if self.inner.clients.lock().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!("Server Exiting..");
    }
}

/// Binds the monitoring listener (`port` -1 picks one) and starts serving it.
async fn start_monitor(
    inner: &Arc<ServerInner>,
    port: i32,
    secure: bool,
) -> Result<JoinHandle<()>, ServerError> {
    let port = if port == -1 { 0 } else { port as u16 };
    let bind = format!("{}:{}", inner.opts.http_host, port);
    let l = TcpListener::bind(&bind)
        .await
        .map_err(|source| ServerError::Listen {
            addr: bind.clone(),
            source,
        })?;
    let bound = l.local_addr()?.port();
    let scheme = if secure {
        *inner.https_port.lock() = Some(bound);
        "https"
    } else {
        *inner.http_port.lock() = Some(bound);
        "http"
    };
    tracing::info!(
        "Starting {scheme} monitor on {}:{bound}",
        inner.opts.http_host
    );
    Ok(tokio::spawn(monitor::serve(inner.clone(), l, secure)))
}

/// Logs the directory resolver's account JWT files that could not be used.
fn log_skipped(auth: &Authenticator) {
    for w in auth
        .trust()
        .map(|t| t.skipped.as_slice())
        .unwrap_or_default()
    {
        tracing::warn!("DirResolver - {w}");
    }
}

/// Starts JetStream for the global account and every account that enables it.
fn start_jetstream(
    inner: &Arc<ServerInner>,
    opts: crate::jetstream::JetStreamOptions,
) -> Result<(), ServerError> {
    tracing::info!("Starting JetStream");
    tracing::info!("    Store Directory: \"{}\"", opts.store_dir.display());
    match opts.sync {
        natrium_store::SyncPolicy::Always => {
            tracing::info!("    Sync:            always (acknowledged after fsync, group commit)")
        }
        natrium_store::SyncPolicy::Interval(d) => {
            tracing::info!("    Sync:            every {d:?} (lazy)")
        }
    }
    let js = crate::jetstream::JetStream::new(opts)?;
    let mut enabled = vec![(GLOBAL_ACCOUNT.to_string(), None)];
    for a in inner.opts.accounts.iter().filter(|a| a.jetstream) {
        enabled.push((a.name.clone(), a.jetstream_limits));
    }
    for (name, limits) in enabled {
        let client = crate::internal::InternalClient::new(inner.clone(), &name)
            .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
        js.enable_account(client, limits)?;
    }
    *inner.jetstream.lock() = Some(js);
    Ok(())
}

/// Creates the configured accounts (plus the global and system ones) and wires their imports as
/// internal forwarding subscriptions, refusing imports the exporter does not allow.
fn build_accounts(
    opts: &Options,
    global: &Arc<Account>,
    trusted: &[String],
) -> Result<FxHashMap<String, Arc<Account>>, OptionsError> {
    let mut accounts = FxHashMap::default();
    accounts.insert(GLOBAL_ACCOUNT.to_string(), global.clone());
    for key in trusted {
        accounts.insert(key.clone(), Account::new(key.clone()));
    }
    for a in &opts.accounts {
        accounts.insert(a.name.clone(), Account::new(a.name.clone()));
    }
    accounts
        .entry(opts.system_account.clone())
        .or_insert_with(|| Account::new(opts.system_account.clone()));
    for importer_cfg in &opts.accounts {
        let importer = &accounts[&importer_cfg.name];
        for imp in &importer_cfg.imports {
            let exporter_cfg = opts.accounts.iter().find(|a| a.name == imp.account);
            let allowed = exporter_cfg.is_some_and(|e| {
                e.exports.iter().any(|x| {
                    x.kind == imp.kind
                        && natrium_subjects::is_subset(imp.subject.as_bytes(), x.subject.as_bytes())
                        && (x.accounts.is_empty() || x.accounts.contains(&importer_cfg.name))
                })
            });
            if !allowed {
                return Err(OptionsError::Validation(format!(
                    "account {:?}: import of {:?} from account {:?} is not exported to it",
                    importer_cfg.name, imp.subject, imp.account
                )));
            }
            let exporter = &accounts[&imp.account];
            match imp.kind {
                ExportKind::Stream => {
                    let map =
                        SubjectMap::new(&imp.subject, imp.to.as_deref(), imp.prefix.as_deref());
                    let sub = Subscription::forward(
                        imp.subject.as_bytes(),
                        Forward {
                            to: importer.clone(),
                            map,
                            kind: ForwardKind::Stream,
                        },
                        0,
                    );
                    exporter.insert(sub);
                }
                ExportKind::Service => {
                    let local = imp.to.clone().unwrap_or_else(|| imp.subject.clone());
                    let map = SubjectMap::new(&local, Some(&imp.subject), None);
                    let sub = Subscription::forward(
                        local.as_bytes(),
                        Forward {
                            to: exporter.clone(),
                            map,
                            kind: ForwardKind::Service {
                                importer: importer.clone(),
                            },
                        },
                        0,
                    );
                    importer.insert(sub);
                }
            }
        }
    }
    Ok(accounts)
}

async fn accept_loop(inner: Arc<ServerInner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown_rx();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => accept_client(&inner, stream, peer),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("Error accepting client connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Writes one `-ERR` to a connection refused at accept and closes it (in its own task).
fn refuse(stream: TcpStream, err: &'static str) {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = stream.write_all(err.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
}

/// The address a per-address limit counts against: an IPv4 address, or the /64 of an IPv6 one
/// (a single host usually holds a whole /64).
fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)).into(),
        },
        v4 => v4,
    }
}

/// One connection from an address that has not completed CONNECT yet; dropped when it does
/// (or closes), which frees the address's slot.
pub(crate) struct Unauthenticated {
    server: Arc<ServerInner>,
    key: std::net::IpAddr,
}

impl Unauthenticated {
    /// Takes a slot for `ip`, unless it already holds `max_unauthenticated_per_ip` of them.
    fn take(server: &Arc<ServerInner>, ip: std::net::IpAddr) -> Option<Unauthenticated> {
        let max = server.max_unauthenticated_per_ip.load(Ordering::Relaxed);
        let key = address_key(ip);
        let mut map = server.unauthenticated.lock();
        let n = map.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Unauthenticated {
            server: server.clone(),
            key,
        })
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut map = self.server.unauthenticated.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn accept_client(inner: &Arc<ServerInner>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cid = inner.next_cid.fetch_add(1, Ordering::Relaxed);
    let Some(slot) = Unauthenticated::take(inner, peer.ip()) else {
        tracing::debug!(
            "{peer} - cid:{cid} - maximum unauthenticated connections from this address exceeded"
        );
        refuse(
            stream,
            "-ERR 'maximum unauthenticated connections per address exceeded'\r\n",
        );
        return;
    };
    let shared = ClientShared::new(cid, peer, inner.opts.max_pending);
    {
        let mut clients = inner.clients.lock();
        if clients.len() >= inner.max_connections.load(Ordering::Relaxed) {
            drop(clients);
            tracing::error!("{peer} - cid:{cid} - maximum connections exceeded");
            refuse(stream, "-ERR 'maximum connections exceeded'\r\n");
            return;
        }
        clients.insert(cid, shared.clone());
    }
    inner.total_connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("{peer} - cid:{cid} - Client connection created");
    let auth = inner.auth.current();
    let nonce = auth.needs_nonce().then(crate::auth::new_nonce);
    let tls = inner.tls.read().clone();
    let info = inner.info_for(
        cid,
        &peer.ip().to_string(),
        &auth,
        nonce.clone(),
        tls.as_deref(),
    );
    let conn = Conn::new(shared, inner.clone())
        .with_nonce(nonce)
        .with_slot(slot);
    match tls {
        None => {
            tokio::spawn(conn.run(stream, info));
        }
        Some(tls) => {
            tokio::spawn(crate::tls::serve(tls, conn, stream, info));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::address_key;
    use std::net::IpAddr;

    #[test]
    fn ipv6_addresses_count_per_64() {
        let key = |s: &str| address_key(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(key("10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
    }
}
