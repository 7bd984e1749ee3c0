//! The WebSocket listener (nats-server's `websocket {}` block): browsers and other WebSocket
//! clients speak the client protocol inside binary frames, exactly as on TCP. A connection is
//! accepted (counted against `max_unauthenticated_per_ip` from the start), runs its TLS
//! handshake (`wss://`) and the HTTP upgrade (`handshake`) within `handshake_timeout`, is
//! registered like a TCP client (`max_connections`), and then the connection layer's reader and
//! writer run over a `WsStream` (`stream`), which unwraps and wraps the frames: from there on the
//! client is a client like any other (authentication, accounts, permissions, headers,
//! JetStream), except that it authenticates with the block's overrides (`username`,
//! `password`, `token`, `no_auth_user`, `authorization.timeout`, `tls.verify_and_map`) and the
//! credentials of its cookies, and INFO shows it the WebSocket listener.
//!
//! The WebSocket crate is tungstenite (pinned): its request parsing, accept key and frame
//! header codec are used as they are, while the frames' payloads are handled here. Its (and
//! the other well-kept crates') message-level streams refuse frames with RSV1 set, so none
//! offers the permessage-deflate nats-server negotiates, and each allocates a message per
//! frame; handling payloads here streams them through the read buffer (unmasked in place),
//! writes the writer's batches without a copy, and closes with nats-server's statuses and
//! reasons.

pub mod handshake;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use self::handshake::{parse_origin, status_text, Origins, UpgradeRules, Upgraded};
use self::stream::{close_frame, push_frame, WsConfig, WsStream};
use super::client::Client;
use super::context::{ConnContext, LeafSocket, WsEndpoint};
use super::reader::Conn;
use super::tls::{Accepted, TlsError, TlsOptions, TlsServer};
use crate::auth::{AuthOptions, AuthOverride, DerivedAuth};
use crate::router::CloseReason;

/// How long the TLS handshake and the upgrade may take when `handshake_timeout` is not set
/// (nats-server then waits indefinitely).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `websocket {}` block, as nats-server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebsocketOptions {
    pub host: String,
    /// 0 leaves the listener off; -1 picks a free port.
    pub port: i32,
    /// The `host:port` clients are told to use (cluster URLs), instead of the listener's.
    pub advertise: Option<String>,
    /// `wss://` with this TLS (required unless `no_tls`).
    pub tls: Option<TlsOptions>,
    pub no_tls: bool,
    /// permessage-deflate, when the client asks for it too.
    pub compression: bool,
    pub same_origin: bool,
    pub allowed_origins: Vec<String>,
    /// Bound on the TLS handshake and the upgrade; zero is `DEFAULT_HANDSHAKE_TIMEOUT`.
    pub handshake_timeout: Duration,
    /// Cookies whose values stand in for CONNECT's JWT, user, password and token.
    pub jwt_cookie: Option<String>,
    pub user_cookie: Option<String>,
    pub pass_cookie: Option<String>,
    pub token_cookie: Option<String>,
    /// `authorization { user, password, token, timeout }` and `no_auth_user`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub auth_timeout: Option<Duration>,
    pub no_auth_user: Option<String>,
    /// Extra headers of the upgrade response.
    pub headers: Vec<(String, String)>,
}

impl Default for WebsocketOptions {
    fn default() -> Self {
        WebsocketOptions {
            host: "0.0.0.0".into(),
            port: 0,
            advertise: None,
            tls: None,
            no_tls: false,
            compression: false,
            same_origin: false,
            allowed_origins: Vec::new(),
            handshake_timeout: Duration::ZERO,
            jwt_cookie: None,
            user_cookie: None,
            pass_cookie: None,
            token_cookie: None,
            username: None,
            password: None,
            token: None,
            auth_timeout: None,
            no_auth_user: None,
            headers: Vec::new(),
        }
    }
}

impl WebsocketOptions {
    /// Whether the listener runs (a port is set).
    pub fn enabled(&self) -> bool {
        self.port != 0
    }

    /// nats-server's checks of the block (`validateWebsocketOptions`), with its error texts.
    /// `auth` is the server's authorization; `operator` whether operator mode is on.
    pub fn validate(&self, auth: &AuthOptions, operator: bool) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !(-1..=65535).contains(&self.port) {
            return Err("websocket port must be between -1 and 65535".into());
        }
        if self.tls.is_none() && !self.no_tls {
            return Err("websocket requires TLS configuration".into());
        }
        if let Some(t) = &self.tls {
            if t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty() {
                return Err("websocket: tls: cert_file and key_file are required".into());
            }
            if (t.verify || t.verify_and_map) && t.ca_file.is_none() {
                return Err(
                    "websocket: tls: verify needs a ca_file to check client certificates against"
                        .into(),
                );
            }
        }
        for o in &self.allowed_origins {
            parse_origin(o).map_err(|e| format!("unable to parse allowed origin: {e}"))?;
        }
        if let Some(nau) = &self.no_auth_user {
            if operator {
                return Err("no_auth_user not compatible with Trusted Operator".into());
            }
            if auth.users.is_empty() && auth.nkeys.is_empty() {
                return Err(format!(
                    "no_auth_user: {nau:?} present, but users/nkeys are not defined"
                ));
            }
            if !auth.users.iter().any(|u| &u.user == nau) {
                return Err(format!(
                    "no_auth_user: {nau:?} not present as user in authorization block"
                ));
            }
        }
        if !auth.users.is_empty() || !auth.nkeys.is_empty() {
            if self.username.is_some() {
                return Err(
                    "websocket authentication username not compatible with presence of users/nkeys"
                        .into(),
                );
            }
            if self.token.is_some() {
                return Err(
                    "websocket authentication token not compatible with presence of users/nkeys"
                        .into(),
                );
            }
        }
        if let Some(c) = &self.jwt_cookie {
            if !operator {
                return Err(format!("trusted operators or trusted keys configuration is required for JWT authentication via cookie {c:?}"));
            }
        }
        for (k, _) in &self.headers {
            let l = k.to_ascii_lowercase();
            if matches!(
                l.as_str(),
                "host" | "content-length" | "connection" | "upgrade" | "nats-no-masking"
            ) {
                return Err(format!("websocket: invalid header {k:?} not allowed"));
            }
            if l.starts_with("sec-websocket-") {
                return Err(format!(
                    "websocket: invalid header {k:?}, \"Sec-WebSocket-\" prefix not allowed"
                ));
            }
        }
        Ok(())
    }

    /// The override of the server's authentication for this listener's clients.
    fn auth_override(&self) -> AuthOverride {
        AuthOverride {
            replace: self.username.is_some() || self.token.is_some() || self.no_auth_user.is_some(),
            token: self.token.clone(),
            user: self.username.clone(),
            password: self.password.clone(),
            no_auth_user: self.no_auth_user.clone(),
            timeout: self.auth_timeout.filter(|t| !t.is_zero()),
            tls_map: self.tls.as_ref().is_some_and(|t| t.verify_and_map),
        }
    }

    fn upgrade_rules(&self) -> UpgradeRules {
        let mut origins = Origins {
            same_origin: self.same_origin,
            ..Origins::default()
        };
        for o in &self.allowed_origins {
            if let Ok((scheme, host, port)) = parse_origin(o) {
                origins
                    .allowed
                    .entry(host)
                    .or_default()
                    .push((scheme, port));
            }
        }
        UpgradeRules {
            origins,
            compression: self.compression,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\r\n"))
                .collect(),
            jwt_cookie: self.jwt_cookie.clone(),
            user_cookie: self.user_cookie.clone(),
            pass_cookie: self.pass_cookie.clone(),
            token_cookie: self.token_cookie.clone(),
        }
    }

    /// The listener's TLS: the block's `tls {}`, always with the handshake first (loads the
    /// certificate files; `natrium -t` checks them this way).
    pub fn tls_server(&self) -> Result<Option<Arc<TlsServer>>, TlsError> {
        self.tls
            .as_ref()
            .map(|t| {
                TlsServer::new(&TlsOptions {
                    handshake_first: true,
                    handshake_first_fallback: None,
                    ..t.clone()
                })
                .map(Arc::new)
            })
            .transpose()
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebsocketError {
    #[error("Unable to listen for websocket connections on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("websocket {0}")]
    Tls(#[from] TlsError),
}

/// What the listener's connection tasks share.
struct Listener {
    ctx: Arc<ConnContext>,
    opts: WebsocketOptions,
    tls: RwLock<Option<Arc<TlsServer>>>,
    rules: UpgradeRules,
}

/// The running WebSocket listener.
pub struct Websocket {
    shared: Arc<Listener>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Websocket {
    /// Binds the listener and starts accepting WebSocket clients.
    pub async fn start(
        opts: &WebsocketOptions,
        ctx: Arc<ConnContext>,
    ) -> Result<Websocket, WebsocketError> {
        let tls = opts.tls_server()?;
        let port = if opts.port == -1 { 0 } else { opts.port as u16 };
        let bind = format!("{}:{}", opts.host, port);
        let listener = TcpListener::bind(&bind)
            .await
            .map_err(|source| WebsocketError::Listen {
                addr: bind.clone(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| WebsocketError::Listen { addr: bind, source })?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        tracing::info!(
            "Listening for websocket clients on {scheme}://{}:{}",
            opts.host,
            addr.port()
        );
        if tls.is_none() {
            tracing::warn!("Websocket not configured with TLS. DO NOT USE IN PRODUCTION!");
        }
        let advertise = opts.advertise.as_ref().map(|a| match a.contains(':') {
            true => a.clone(),
            false => format!("{a}:{}", addr.port()),
        });
        ctx.set_websocket(WsEndpoint {
            host: opts.host.clone(),
            port: addr.port(),
            tls: tls.is_some(),
            advertise,
            auth: DerivedAuth::new(opts.auth_override()),
        });
        let shared = Arc::new(Listener {
            ctx,
            opts: opts.clone(),
            tls: RwLock::new(tls),
            rules: opts.upgrade_rules(),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(Websocket {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL clients can connect to (`ws://` or `wss://`; loopback when bound to all
    /// interfaces).
    pub fn url(&self) -> String {
        let ip = self.addr.ip();
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let scheme = if self.shared.tls.read().is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    /// Re-reads the listener's certificate files (a reload; the block itself can not change).
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let tls = self.shared.opts.tls_server()?;
        *self.shared.tls.write() = tls;
        Ok(())
    }

    /// Stops accepting (connected clients stay).
    pub async fn stop_accepting(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
    }
}

async fn accept_loop(l: Arc<Listener>, listener: TcpListener) {
    let mut shutdown = l.ctx.shutdown_rx();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => accept(&l, stream, peer),
            Err(e) => {
                tracing::error!("Error accepting websocket connection: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Takes over an accepted socket: the per-address limit now, the rest in its own task.
fn accept(l: &Arc<Listener>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let ctx = &l.ctx;
    let cid = ctx.registry.next_cid();
    let Some(slot) = ctx.registry.take_unauthenticated(peer.ip()) else {
        tracing::debug!(
            "{peer} - cid:{cid} - maximum unauthenticated connections from this address exceeded"
        );
        tokio::spawn(async move {
            let mut stream = stream;
            let text = status_text(503);
            let body = "maximum unauthenticated connections per address exceeded\n";
            let resp = format!(
                "HTTP/1.1 503 {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
        return;
    };
    let l = l.clone();
    tokio::spawn(async move {
        let timeout = if l.opts.handshake_timeout.is_zero() {
            DEFAULT_HANDSHAKE_TIMEOUT
        } else {
            l.opts.handshake_timeout
        };
        let tls = l.tls.read().clone();
        let mut shutdown = l.ctx.shutdown_rx();
        let work = async {
            match tls {
                None => {
                    let mut stream = stream;
                    let up = handshake::upgrade(&mut stream, &l.rules, false).await;
                    up.map(|up| (Transport::Plain(stream), up))
                }
                Some(tls) => {
                    let h = match tls.handshake(stream, &[], (peer, cid)).await {
                        Ok(Accepted::Tls(h)) => *h,
                        _ => {
                            return Err(handshake::Refused {
                                status: 0,
                                reason: "TLS handshake failed".into(),
                            })
                        }
                    };
                    let mut s = h.stream;
                    let up = handshake::upgrade(&mut s, &l.rules, true).await?;
                    Ok((Transport::Tls(Box::new(s), h.names, h.state), up))
                }
            }
        };
        let outcome = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(timeout, work) => r,
        };
        match outcome {
            Err(_) => tracing::error!("{peer} - websocket handshake error: timeout"),
            Ok(Err(r)) if r.status != 0 => {
                tracing::error!("{peer} - websocket handshake error: {}", r.reason)
            }
            Ok(Err(r)) => tracing::debug!("{peer} - websocket handshake error: {}", r.reason),
            Ok(Ok((transport, up))) => run(&l, transport, up, peer, cid, slot).await,
        }
        // `slot` moved into the connection, or dropped here with the refused handshake.
    });
}

/// A connection after its TLS handshake, if any.
enum Transport {
    Plain(TcpStream),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<crate::auth::certs::CertNames>,
        super::tls::TlsConnInfo,
    ),
}

/// Runs a leafnode connection of the WebSocket listener, or drops it when this server takes no
/// leaves (nats-server closes it the same way, after the upgrade).
async fn run_leaf(
    l: &Arc<Listener>,
    transport: Transport,
    up: Upgraded,
    peer: SocketAddr,
    cid: u64,
) {
    let ctx = &l.ctx;
    let Some(acceptor) = ctx.ws_leafs().cloned() else {
        tracing::error!("{peer} - Not configured to accept leaf node connections");
        return;
    };
    let cfg = WsConfig {
        compress: up.compress,
        masked: !up.no_masking,
        browser: false,
        no_compressed_fragments: false,
        max_payload: ctx.settings().max_payload,
        mask_out: false,
    };
    let out = crate::router::Outbound::new(cid, peer, ctx.max_pending);
    let socket: Box<dyn LeafSocket> = match transport {
        Transport::Plain(s) => Box::new(s),
        Transport::Tls(s, _, _) => Box::new(*s),
    };
    acceptor
        .accept(Box::new(WsStream::new(socket, cfg, out.clone())), peer, out)
        .await;
}

/// Registers the upgraded connection and runs it until it closes.
async fn run(
    l: &Arc<Listener>,
    transport: Transport,
    up: Upgraded,
    peer: SocketAddr,
    cid: u64,
    slot: super::registry::Unauthenticated,
) {
    if up.leaf {
        drop(slot);
        return run_leaf(l, transport, up, peer, cid).await;
    }
    let ctx = &l.ctx;
    let cfg = WsConfig {
        compress: up.compress,
        masked: !up.no_masking,
        browser: up.browser,
        no_compressed_fragments: up.no_compressed_fragments,
        max_payload: ctx.settings().max_payload,
        mask_out: false,
    };
    let client = Client::new(cid, peer, ctx.max_pending);
    if ctx.registry.register(&client).is_err() {
        tracing::error!("{peer} - cid:{cid} - maximum connections exceeded");
        let mut refusal = Vec::new();
        push_frame(
            &mut refusal,
            0x82,
            b"-ERR 'maximum connections exceeded'\r\n",
        );
        refusal.extend_from_slice(&close_frame(
            stream::close_status(CloseReason::MaxConnectionsExceeded),
            &CloseReason::MaxConnectionsExceeded.to_string(),
        ));
        match transport {
            Transport::Plain(mut s) => {
                let _ = s.write_all(&refusal).await;
                let _ = s.shutdown().await;
            }
            Transport::Tls(mut s, _, _) => {
                let _ = s.write_all(&refusal).await;
                let _ = s.shutdown().await;
            }
        }
        return;
    }
    tracing::debug!("{peer} - cid:{cid} - WebSocket client connection created");
    let auth = ctx.authenticator(true);
    let nonce = auth.needs_nonce().then(crate::auth::new_nonce);
    let info = ctx.client_info(
        true,
        Some((cid, &peer.ip().to_string(), nonce.clone())),
        false,
    );
    let out = client.out.clone();
    let conn = Conn::new(client.clone(), ctx.clone())
        .with_nonce(nonce)
        .with_slot(slot)
        .with_websocket(up.cookies);
    match transport {
        Transport::Plain(s) => conn.run(WsStream::new(s, cfg, out), info).await,
        Transport::Tls(s, names, state) => {
            let conn = conn.with_tls(names, state, None);
            // The client listener's `pinned_certs` reload check is not this listener's.
            *client.tls_key_id.lock() = None;
            conn.run(WsStream::new(*s, cfg, out), info).await
        }
    }
}
