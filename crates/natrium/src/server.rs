//! The server: binds the client listener, builds the layers (accounts, connections, JetStream,
//! monitoring, system services) from the options, accepts connections, applies reloads, and
//! runs lame duck mode and shutdown. Embeddable: tests and programs start one in-process with
//! `Server::start` and stop it with `Server::shutdown`.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::cluster::Mesh;
use crate::conn::{ConnConfig, ConnContext, ConnSettings, ServerIdentity, TlsServer, Websocket};
use crate::jetstream::JetStream;
use crate::leaf::Leafs;
use crate::observe::Observed;
use crate::options::{Options, OptionsError, Resolver, TlsOptions};
use crate::router::imports::{self, Import, NotExported};
use crate::router::{Accounts, CloseReason, InterestFeed, InternalClient, InternalError};
use crate::util::{PROTOCOL_VERSION, VERSION};

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
    Tls(#[from] crate::conn::TlsError),
    #[error("{0}")]
    Websocket(#[from] crate::conn::WebsocketError),
    /// JetStream could not start on its store directory (nats-server's words, with the path).
    #[error("Can't start JetStream: storage directory {}: {msg}", .dir.display())]
    JetStream {
        dir: std::path::PathBuf,
        msg: String,
    },
}

/// The JetStream store directory must be a directory, or not exist yet (it is created then),
/// as nats-server checks it at start.
fn check_store_dir(opts: &Options) -> Result<(), ServerError> {
    let Some(js) = &opts.jetstream else {
        return Ok(());
    };
    match std::fs::metadata(&js.store_dir) {
        Ok(m) if !m.is_dir() => Err(ServerError::JetStream {
            dir: js.store_dir.clone(),
            msg: "is not a directory".into(),
        }),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ServerError::JetStream {
            dir: js.store_dir.clone(),
            msg: e.to_string(),
        }),
        _ => Ok(()),
    }
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
    Tls(#[from] crate::conn::TlsError),
}

/// The authenticator for `opts`: users, NKeys, tokens and, in operator mode, every JWT read and
/// verified (once per start, once per reload).
fn authenticator_for(opts: &Options) -> Result<Authenticator, OptionsError> {
    let a = Authenticator::new(
        opts.auth.clone(),
        opts.tls.as_ref().is_some_and(|t| t.verify_and_map),
        opts.auth_timeout,
    );
    match &opts.operator {
        Some(op) => a
            .with_operator(op)
            .map_err(|e| OptionsError::Validation(format!("operator mode: {e}"))),
        None => Ok(a),
    }
}

fn tls_for(opts: &Options) -> Result<Option<Arc<TlsServer>>, crate::conn::TlsError> {
    opts.tls
        .as_ref()
        .map(|t| {
            let t = TlsOptions {
                allow_non_tls: opts.allow_non_tls,
                ..t.clone()
            };
            TlsServer::new(&t).map(Arc::new)
        })
        .transpose()
}

/// The connection settings a reload may change, from `opts`.
fn conn_settings(opts: &Options) -> ConnSettings {
    ConnSettings {
        ping_interval: opts.ping_interval,
        ping_max: opts.ping_max,
        max_control_line: opts.max_control_line,
        max_payload: opts.max_payload,
        max_subscriptions: opts.max_subscriptions,
    }
}

/// A running server.
pub struct Server {
    conns: Arc<ConnContext>,
    observed: Arc<Observed>,
    /// The options in force (as reloads changed them); reloads diff against these.
    options: Arc<Mutex<Options>>,
    shutdown: watch::Sender<bool>,
    /// This server's place in its cluster, when it has one.
    mesh: Option<Arc<Mesh>>,
    /// Leafnode connections (hub and leaf sides), when configured.
    leafs: Option<Arc<Leafs>>,
    addr: SocketAddr,
    /// The accept loop; taken (and awaited) when the listener closes.
    accept: Option<JoinHandle<()>>,
    /// The WebSocket listener, when configured.
    websocket: Option<Websocket>,
    monitor: Option<JoinHandle<()>>,
    sys: Option<JoinHandle<()>>,
    /// Publishes client connect, disconnect and auth error events in the system account.
    client_events: Option<JoinHandle<()>>,
    /// Samples the CPU use `/varz` reports.
    cpu: Option<JoinHandle<()>>,
    resolver: Option<JoinHandle<()>>,
}

impl Server {
    /// Checks everything a start would check without binding anything: the options (the
    /// system account among them), operator mode's JWTs, the TLS files and the JetStream store
    /// directory (`natrium -t`).
    pub fn check(opts: &Options) -> Result<(), ServerError> {
        opts.validate()?;
        authenticator_for(opts)?;
        tls_for(opts)?;
        if let Some(w) = opts.websocket.as_ref().filter(|w| w.enabled()) {
            w.tls_server()?;
        }
        if let Some(l) = &opts.leafnodes {
            crate::leaf::check_tls(l)?;
        }
        check_store_dir(opts)?;
        Ok(())
    }

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
        let server_key = Arc::new(nkeys::KeyPair::new_server());
        let id = server_key.public_key();
        let name = opts.server_name.clone().unwrap_or_else(|| id.clone());
        tracing::info!("Starting natrium");
        tracing::info!("  Version:  {VERSION} (nats-server protocol {PROTOCOL_VERSION})");
        tracing::info!("  Name:     {name}");
        tracing::info!("  ID:       {id}");
        if let Some(cf) = &opts.config_file {
            tracing::info!("Using configuration file: {}", cf.display());
        }
        tracing::info!("Effective options: {}", opts.summary());
        let auth = authenticator_for(&opts)?;
        log_skipped(&auth);
        if let Some(Some(Resolver::Dir(d))) = opts.operator.as_ref().map(|o| &o.resolver) {
            std::fs::create_dir_all(&d.dir)?;
            tracing::info!(
                "Managing all jwt in exclusive directory {}",
                d.dir.display()
            );
        }
        // In a cluster, every account reports its interest changes for the routes to announce.
        let feed = opts.cluster.as_ref().map(|_| InterestFeed::new());
        let imports = config_imports(&opts)?;
        let accounts = Arc::new(build_accounts(
            &opts,
            &auth.trusted_accounts(),
            feed.clone(),
        ));
        let tls = tls_for(&opts)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cfg = ConnConfig {
            identity: ServerIdentity {
                id,
                name,
                host: opts.host.clone(),
                port: addr.port(),
                jetstream: opts.jetstream.is_some(),
            },
            settings: conn_settings(&opts),
            write_deadline: opts.write_deadline,
            max_pending: opts.max_pending,
            max_connections: opts.max_connections,
            max_unauthenticated_per_ip: opts.max_unauthenticated_per_ip,
        };
        let conns = Arc::new(ConnContext::new(
            cfg,
            accounts.clone(),
            auth,
            tls,
            shutdown_rx,
        ));
        conns.set_server_key(server_key);
        conns.set_account_limits(
            opts.accounts.iter().map(|a| (a.name.as_str(), a.limits)),
            &conns.auth.current(),
        );
        conns.sync_config_imports(imports);
        conns.sync_jwt_imports();
        let jetstream = match &opts.jetstream {
            Some(js) => {
                check_store_dir(&opts)?;
                let started = start_jetstream(&accounts, &opts, &conns.identity.name);
                Some(started.map_err(|e| match e {
                    ServerError::Io(e) => ServerError::JetStream {
                        dir: js.store_dir.clone(),
                        msg: e.to_string(),
                    },
                    e => e,
                })?)
            }
            None => None,
        };
        if let Some(js) = &jetstream {
            // Operator mode: accounts whose JWTs grant JetStream get it, at start and whenever
            // a pushed or fetched JWT grants it (or changes its limits).
            sync_jwt_jetstream(js, &accounts, &conns.auth.current());
            let (js, accs) = (js.clone(), accounts.clone());
            conns.set_trust_listener(Box::new(move |auth| sync_jwt_jetstream(&js, &accs, auth)));
        }
        // The mesh starts after JetStream: until it does, every configured route counts.
        let routed: Arc<std::sync::OnceLock<std::sync::Weak<Mesh>>> = Arc::default();
        if let (Some(js), Some(c)) = (&jetstream, &opts.cluster) {
            let system = InternalClient::new(&accounts, &opts.system_account)
                .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
            let (configured, routed) = (c.routes.len() + 1, routed.clone());
            let settings = crate::jetstream::ClusterSettings {
                cluster: c.name.clone().unwrap_or_default(),
                tags: opts.server_tags.clone(),
                expected: Arc::new(move || {
                    routed
                        .get()
                        .and_then(std::sync::Weak::upgrade)
                        .map_or(configured, |m| m.configured_servers())
                }),
                system,
            };
            js.start_cluster(settings)
                .await
                .map_err(|e| ServerError::JetStream {
                    dir: js.options().store_dir.clone(),
                    msg: e.to_string(),
                })?;
        }
        let options = Arc::new(Mutex::new(opts.clone()));
        let observed = Arc::new(Observed {
            start: std::time::SystemTime::now(),
            conns: conns.clone(),
            jetstream,
            options: options.clone(),
            http_port: Mutex::new(None),
            https_port: Mutex::new(None),
            mesh: Mutex::new(None),
            leafs: Mutex::new(None),
            cpu: Default::default(),
            http_req_stats: Default::default(),
        });
        let cpu = tokio::spawn(crate::observe::sample_cpu(Arc::downgrade(&observed)));
        tracing::info!(
            "Listening for client connections on {}:{}",
            opts.host,
            addr.port()
        );
        // One monitoring listener, HTTP or HTTPS (validation refuses both).
        let monitor = match (opts.http_port, opts.https_port) {
            (Some(p), _) => Some(start_monitor(&observed, opts.monitor_host(), p, false).await?),
            (None, Some(p)) if p != 0 => {
                Some(start_monitor(&observed, opts.monitor_host(), p, true).await?)
            }
            _ => None,
        };
        let system = InternalClient::new(&accounts, &opts.system_account).ok();
        let sys = system
            .clone()
            .map(|c| tokio::spawn(crate::sys::serve(c, observed.clone())));
        let client_events = system.clone().map(|c| {
            let events = observed.conns.watch_client_events();
            tokio::spawn(crate::sys::client_events(c, observed.clone(), events))
        });
        let resolver = match (opts.operator.as_ref().map(|o| &o.resolver), system) {
            (Some(Some(Resolver::Dir(d))), Some(client)) => Some(tokio::spawn(
                crate::resolver::serve(crate::resolver::ClaimsHandler {
                    client,
                    opts: d.clone(),
                    conns: conns.clone(),
                    server: observed.clone(),
                    system_account: opts.system_account.clone(),
                }),
            )),
            (Some(Some(Resolver::Url(url))), client) => {
                let fetcher = crate::resolver::UrlFetcher::new(url).map_err(|e| {
                    ServerError::Io(std::io::Error::other(format!("URL resolver: {e}")))
                })?;
                conns.set_fetcher(Arc::new(fetcher));
                client.map(|c| {
                    tokio::spawn(crate::resolver::serve_url(
                        c,
                        conns.clone(),
                        observed.clone(),
                    ))
                })
            }
            _ => None,
        };
        let websocket = match opts.websocket.as_ref().filter(|w| w.enabled()) {
            Some(w) => Some(Websocket::start(w, conns.clone()).await?),
            None => None,
        };
        let mesh = match (&opts.cluster, feed) {
            (Some(c), Some(feed)) => Some(
                Mesh::start(
                    c.clone(),
                    conns.clone(),
                    feed,
                    InternalClient::new(&accounts, &opts.system_account).ok(),
                )
                .await
                .map_err(|source| ServerError::Listen {
                    addr: format!("{}:{}", c.host, c.port),
                    source,
                })?,
            ),
            _ => None,
        };
        *observed.mesh.lock() = mesh.clone();
        if let Some(m) = &mesh {
            let _ = routed.set(Arc::downgrade(m));
        }
        let leafs = match &opts.leafnodes {
            Some(l) => Some(
                Leafs::start(
                    l.clone(),
                    conns.clone(),
                    mesh.clone(),
                    InternalClient::new(&accounts, &opts.system_account).ok(),
                    crate::leaf::LeafJetStream {
                        enabled: opts.jetstream.is_some(),
                        domain: opts.jetstream.as_ref().and_then(|j| j.domain.clone()),
                    },
                )
                .await
                .map_err(|source| ServerError::Listen {
                    addr: format!("{}:{}", l.host, l.port.unwrap_or_default()),
                    source,
                })?,
            ),
            None => None,
        };
        *observed.leafs.lock() = leafs.clone();
        let accept = tokio::spawn(accept_loop(conns.clone(), listener));
        tracing::info!("Server is ready");
        Ok(Server {
            conns,
            observed,
            options,
            shutdown,
            mesh,
            leafs,
            addr,
            accept: Some(accept),
            websocket,
            monitor,
            sys,
            client_events,
            cpu: Some(cpu),
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
    pub fn internal_client(&self, account: &str) -> Result<InternalClient, InternalError> {
        InternalClient::new(&self.conns.accounts, account)
    }

    /// The bound WebSocket port, when the WebSocket listener is configured.
    pub fn websocket_port(&self) -> Option<u16> {
        self.websocket.as_ref().map(Websocket::port)
    }

    /// A URL WebSocket clients can connect to (`ws://` or `wss://`), when configured.
    pub fn websocket_url(&self) -> Option<String> {
        self.websocket.as_ref().map(Websocket::url)
    }

    /// The bound monitoring port, when monitoring is enabled.
    pub fn http_port(&self) -> Option<u16> {
        *self.observed.http_port.lock()
    }

    /// The bound HTTPS monitoring port, when HTTPS monitoring is enabled.
    pub fn https_port(&self) -> Option<u16> {
        *self.observed.https_port.lock()
    }

    /// Base URL of the monitoring endpoints (`http://` or `https://`, without the base path),
    /// when enabled.
    pub fn monitor_url(&self) -> Option<String> {
        let host = match self.options.lock().monitor_host() {
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
        &self.conns.identity.id
    }

    pub fn num_clients(&self) -> usize {
        self.conns.registry.len()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.conns.accounts.global().subscription_count()
    }

    /// The JetStream meta group as this server sees it (a JetStream cluster only).
    pub fn jetstream_meta(&self) -> Option<crate::jetstream::MetaView> {
        self.observed.jetstream.as_ref()?.meta_view()
    }

    /// A hook for tests: the step an R1 -> replicated conversion of `stream` is at here and
    /// whether it is paused there (`JetStreamOptions::conversion_pause`); None when none runs.
    #[doc(hidden)]
    pub fn stream_conversion(&self, account: &str, stream: &str) -> Option<(String, bool)> {
        self.observed
            .jetstream
            .as_ref()?
            .conversion(account, stream)
    }

    /// A hook for tests: conversions paused by `JetStreamOptions::conversion_pause` go on.
    #[doc(hidden)]
    pub fn continue_conversions(&self) {
        if let Some(js) = self.observed.jetstream.as_ref() {
            js.continue_conversions();
        }
    }

    /// The leader of replicated stream `stream` in `account`, as this server knows it.
    pub fn stream_leader(&self, account: &str, stream: &str) -> Option<String> {
        self.observed
            .jetstream
            .as_ref()?
            .stream_leader(account, stream)
    }

    /// The messages this server's own copy of `stream` holds (an R1 stream here, or this
    /// server's replica of a replicated one), oldest first.
    pub fn local_messages(
        &self,
        account: &str,
        stream: &str,
    ) -> Option<Vec<crate::jetstream::LocalMsg>> {
        self.observed
            .jetstream
            .as_ref()?
            .local_messages(account, stream)
    }

    /// The bound cluster port, when this server is part of a cluster.
    pub fn cluster_port(&self) -> Option<u16> {
        self.mesh.as_ref().map(|m| m.port())
    }

    /// A URL peers can use to route to this server (loopback when the cluster listener is on
    /// every interface).
    pub fn cluster_url(&self) -> Option<String> {
        let m = self.mesh.as_ref()?;
        let host = match m.options().host.as_str() {
            "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
            h => h.to_string(),
        };
        Some(format!("nats://{host}:{}", m.port()))
    }

    /// The bound leafnode port, when this server accepts leaves.
    pub fn leafnode_port(&self) -> Option<u16> {
        self.leafs.as_ref().and_then(|l| l.port())
    }

    /// A URL leaves can dial to reach this server (loopback when the leafnode listener is on
    /// every interface).
    pub fn leafnode_url(&self) -> Option<String> {
        let l = self.leafs.as_ref()?;
        let port = l.port()?;
        let host = match l.options().host.as_str() {
            "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
            h => h.to_string(),
        };
        Some(format!("nats-leaf://{host}:{port}"))
    }

    /// How many leafnode connections have completed their handshake.
    pub fn num_leafnodes(&self) -> usize {
        self.leafs.as_ref().map_or(0, |l| l.totals().connections)
    }

    /// How many peers this server has a route to (however many connections each).
    pub fn num_routes(&self) -> usize {
        self.mesh.as_ref().map_or(0, |m| m.num_peers())
    }

    /// How many route connections this server has (pooled and dedicated ones each count).
    pub fn num_route_connections(&self) -> usize {
        self.mesh.as_ref().map_or(0, |m| m.routes().len())
    }

    /// Re-reads the configuration file the server started from and applies it (see
    /// `reload_options`). Command-line overrides are not re-applied: the binary reloads through
    /// `reload_options` with its flags merged in.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self
            .options
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
    /// accounts and account membership, `no_auth_user`, the auth timeout, TLS, accounts' limits,
    /// `max_subscriptions`, `max_payload`, `max_control_line`, `max_connections`,
    /// `ping_interval`, `ping_max`, `write_deadline`, `debug`, `trace` and `logtime`.
    /// Every connection then re-checks its credentials once: one whose credentials no longer
    /// pass is closed with `Authorization Violation`, one whose user moved to another account is
    /// closed so it reconnects there, the others keep running with their new permissions
    /// (subscriptions no longer allowed are removed with a permissions error) and the new limits.
    /// Accounts may be added (with JetStream if they ask for it) and removed (unless they have
    /// JetStream), their imports and exports changed (taking effect at once). Changing anything
    /// else (listeners, `max_pending`, JetStream and an account's JetStream, the log file)
    /// refuses the whole reload with an error naming the setting.
    pub fn reload_options(&self, new: Options) -> Result<(), ReloadError> {
        new.validate()?;
        let conns = &self.conns;
        let _serial = conns.trust_serial();
        let mut current = self.options.lock();
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
                if conns.accounts.get(a).is_none() && !new.accounts.iter().any(|n| &n.name == a) {
                    return Err(ReloadError::UnknownAccount {
                        user: user.clone(),
                        account: a.clone(),
                    });
                }
            }
        }
        let imports = config_imports(&new)?;
        let mut auth = authenticator_for(&new)?;
        if let Some(Some(Resolver::Url(_))) = new.operator.as_ref().map(|o| &o.resolver) {
            // Accounts the URL resolver fetched are not in the files: keep them.
            auth = auth.with_fetched_accounts(&conns.auth.current());
        }
        log_skipped(&auth);
        // Always re-read: rotated certificates usually keep their file names.
        let tls = tls_for(&new)?;
        if let Some(ws) = &self.websocket {
            ws.reload_tls()?;
        }
        let repin = tls
            .as_ref()
            .map(|t| t.opts.pinned_certs.clone())
            .filter(|p| !p.is_empty() && current.tls.as_ref().map(|t| &t.pinned_certs) != Some(p));
        conns.set_tls(tls);
        // Changed pinned_certs: TLS clients whose certificate is no longer pinned are closed.
        if let Some(pinned) = repin {
            for c in conns.registry.clients() {
                let key_id = c.tls_key_id.lock().clone();
                if let Some(k) = key_id {
                    if !crate::auth::certs::is_pinned(&pinned, k.as_deref()) {
                        tracing::info!(
                            "{} - cid:{} - certificate no longer pinned after reload, closing",
                            c.out.addr,
                            c.out.cid
                        );
                        c.out.close(CloseReason::TlsHandshakeError);
                    }
                }
            }
        }
        // Accounts new to this configuration are created (and get JetStream when they ask for
        // it); users of accounts it no longer names fail their re-check below. Their imports
        // follow the new configuration at once.
        for a in &new.accounts {
            conns.accounts.ensure(&a.name);
        }
        conns.sync_config_imports(imports);
        if let Some(js) = &self.observed.jetstream {
            let had = |name: &str| {
                current
                    .accounts
                    .iter()
                    .any(|a| a.name == name && a.jetstream)
            };
            for a in new.accounts.iter().filter(|a| a.jetstream && !had(&a.name)) {
                let enabled = InternalClient::new(&conns.accounts, &a.name)
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        js.enable_account(c, a.jetstream_limits)
                            .map_err(|e| e.to_string())
                    });
                match enabled {
                    Ok(_) => tracing::info!("Reloaded: JetStream enabled for account {}", a.name),
                    Err(e) => tracing::error!(
                        "Reloaded: JetStream could not be enabled for account {}: {e}",
                        a.name
                    ),
                }
            }
        }
        conns.set_account_limits(
            new.accounts.iter().map(|a| (a.name.as_str(), a.limits)),
            &auth,
        );
        conns.auth.store(auth);
        if let Some(js) = &self.observed.jetstream {
            sync_jwt_jetstream(js, &conns.accounts, &conns.auth.current());
        }
        conns.sync_jwt_imports();
        conns.set_settings(conn_settings(&new), new.write_deadline);
        conns
            .registry
            .set_limits(new.max_connections, new.max_unauthenticated_per_ip);
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
        let mut all = conns.registry.clients();
        if all.len() > max_connections {
            all.sort_by_key(|c| c.out.cid);
            for c in &all[max_connections..] {
                c.out.send_err("maximum connections exceeded");
                c.out.close(CloseReason::MaxConnectionsExceeded);
            }
            tracing::info!(
                "Closed {} connections to fall within max_connections",
                all.len() - max_connections
            );
        }
        // Each reader re-checks once (see `Conn::reauthorize`), after connections beyond a
        // lowered account `max_connections` are closed. Connections accepted after this
        // snapshot authenticate against the new configuration at CONNECT.
        for a in conns.accounts.list() {
            conns.enforce_account_limits(&a);
        }
        for c in conns.registry.clients() {
            c.request_reauth();
        }
        tracing::info!("Reloaded server configuration");
        Ok(())
    }

    /// Lame duck mode, as nats-server's: stop accepting clients, tell the connected ones (an INFO
    /// with `ldm: true`, on which clients reconnect elsewhere), wait `lame_duck_grace_period`,
    /// close the clients still here spread over the rest of `lame_duck_duration`, then shut down.
    pub async fn lame_duck(mut self) {
        self.stop_accepting().await;
        tracing::info!("Entering lame duck mode, stop accepting new clients");
        if let Some(m) = &self.mesh {
            m.enter_lame_duck();
        }
        let (duration, grace) = {
            let c = self.options.lock();
            (c.lame_duck_duration, c.lame_duck_grace_period)
        };
        for c in self.conns.registry.clients() {
            c.out
                .send(&self.conns.client_info(c.is_websocket(), None, true));
        }
        tokio::time::sleep(grace).await;
        let clients = self.conns.registry.clients();
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
                    c.out.close(CloseReason::ServerShutdown);
                }
                tokio::time::sleep(pause).await;
            }
        }
        self.shutdown().await;
    }

    /// Closes the client listener (once the accept loop has ended, connecting is refused).
    async fn stop_accepting(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        if let Some(ws) = &mut self.websocket {
            ws.stop_accepting().await;
        }
    }

    /// Stops accepting, closes every client and waits until they are gone.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(js) = &self.observed.jetstream {
            js.shutdown_cluster().await;
            js.shutdown();
        }
        self.stop_accepting().await;
        if let Some(m) = &self.mesh {
            m.shutdown().await;
        }
        if let Some(l) = &self.leafs {
            l.shutdown().await;
        }
        for task in [
            self.monitor,
            self.sys,
            self.client_events,
            self.resolver,
            self.cpu,
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        for c in self.conns.registry.clients() {
            c.out.close(CloseReason::ServerShutdown);
        }
        for _ in 0..200 {
            if self.conns.registry.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!("Server Exiting..");
    }
}

/// Binds the monitoring listener (`port` -1 picks one) and starts serving it.
async fn start_monitor(
    observed: &Arc<Observed>,
    host: &str,
    port: i32,
    secure: bool,
) -> Result<JoinHandle<()>, ServerError> {
    let port = if port == -1 { 0 } else { port as u16 };
    let bind = format!("{host}:{port}");
    let l = TcpListener::bind(&bind)
        .await
        .map_err(|source| ServerError::Listen {
            addr: bind.clone(),
            source,
        })?;
    let bound = l.local_addr()?.port();
    let scheme = if secure {
        *observed.https_port.lock() = Some(bound);
        "https"
    } else {
        *observed.http_port.lock() = Some(bound);
        "http"
    };
    tracing::info!("Starting {scheme} monitor on {host}:{bound}");
    Ok(tokio::spawn(crate::monitor::serve(
        observed.clone(),
        l,
        secure,
    )))
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

/// Gives the operator-mode accounts whose JWTs grant JetStream their limits, enabling it for
/// those that do not have it yet (an account's JetStream is not taken away at run time).
fn sync_jwt_jetstream(js: &JetStream, accounts: &Arc<Accounts>, auth: &crate::auth::Authenticator) {
    let Some(trust) = auth.trust() else { return };
    for (key, t) in &trust.accounts {
        let Some(j) = &t.jetstream else { continue };
        let limits = crate::jetstream::AccountLimits::from_jwt(j);
        if js.has_account(key) {
            js.set_account_limits(key, limits);
            continue;
        }
        let enabled = InternalClient::new(accounts, key)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                js.enable_account(c, Some(limits))
                    .map_err(|e| e.to_string())
            });
        match enabled {
            Ok(()) => tracing::info!("JetStream enabled for account {key} (from its JWT)"),
            Err(e) => tracing::error!("JetStream could not be enabled for account {key}: {e}"),
        }
    }
}

/// Starts JetStream for the global account and every account that enables it.
fn start_jetstream(
    accounts: &Accounts,
    opts: &Options,
    server_name: &str,
) -> Result<Arc<JetStream>, ServerError> {
    let js_opts = opts.jetstream.clone().unwrap_or_default();
    tracing::info!("Starting JetStream");
    tracing::info!("    Store Directory: \"{}\"", js_opts.store_dir.display());
    match js_opts.sync {
        natrium_store::SyncPolicy::Always => {
            tracing::info!("    Sync:            always (acknowledged after fsync, group commit)")
        }
        natrium_store::SyncPolicy::Interval(d) => {
            tracing::info!("    Sync:            every {d:?} (lazy)")
        }
    }
    let js = JetStream::new(js_opts, server_name.to_string())?;
    let mut enabled = vec![(crate::router::GLOBAL_ACCOUNT.to_string(), None)];
    for a in opts.accounts.iter().filter(|a| a.jetstream) {
        enabled.push((a.name.clone(), a.jetstream_limits));
    }
    for (name, limits) in enabled {
        let client = InternalClient::new(accounts, &name)
            .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
        js.enable_account(client, limits)?;
    }
    Ok(js)
}

/// Creates the configured accounts (plus the global and system ones, and in operator mode those
/// the trust names).
fn build_accounts(opts: &Options, trusted: &[String], feed: Option<Arc<InterestFeed>>) -> Accounts {
    let accounts = Accounts::with_interest(feed);
    for key in trusted {
        accounts.ensure(key);
    }
    for a in &opts.accounts {
        accounts.ensure(&a.name);
    }
    accounts.ensure(&opts.system_account);
    accounts
}

/// The configured imports as `(importer, exporter, import)`, refusing one its exporter does not
/// allow.
fn config_imports(opts: &Options) -> Result<Vec<(String, String, Import)>, OptionsError> {
    let mut all = Vec::new();
    for importer in &opts.accounts {
        for imp in &importer.imports {
            let exporter = opts.accounts.iter().find(|a| a.name == imp.account);
            if !exporter.is_some_and(|e| imports::allowed(&e.exports, &importer.name, imp)) {
                let e = NotExported {
                    importer: importer.name.clone(),
                    subject: imp.subject.clone(),
                    exporter: imp.account.clone(),
                };
                return Err(OptionsError::Validation(e.to_string()));
            }
            all.push((importer.name.clone(), imp.account.clone(), imp.clone()));
        }
    }
    Ok(all)
}

/// Accepts client connections until shutdown.
async fn accept_loop(conns: Arc<ConnContext>, listener: TcpListener) {
    let mut shutdown = conns.shutdown_rx();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => crate::conn::accept(&conns, stream, peer),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("Error accepting client connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
