//! Leafnodes, wire-compatible with nats-server: this server as a hub (the leafnode listener,
//! leaves authenticated and bound to an account) and as a leaf (remotes dialled and redialled
//! with backoff). `conn` runs one connection, `interest` keeps what it tells the other side,
//! `options` holds the `leafnodes {}` settings. Beside `cluster` in the layers; imports the
//! router, the connection layer and the mesh (for the cluster name).

pub mod conn;
pub mod interest;
pub mod js;
pub mod options;
pub mod tls;
pub mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natrium_protocol::leaf::{LeafConnect, LeafInfo};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub use conn::LeafConn;
pub use js::LeafJetStream;
pub use options::{LeafAuth, LeafOptions, LeafUser, RemoteLeaf};

use crate::cluster::{Mesh, RouteUrl};
use crate::conn::context::{LeafSocket, WsLeafAcceptor};
use crate::conn::websocket::stream::WsStream;
use crate::conn::ConnContext;
use crate::router::{CloseReason, InternalClient, GLOBAL_ACCOUNT};
use crate::util::PROTOCOL_VERSION;

/// The prefix of the loop-detection subjects: each account sends its own over every leafnode
/// connection; receiving it back means the connections form a loop.
pub const LDS_PREFIX: &[u8] = b"$LDS.";
/// How long a leaf waits before dialling again after a loop was detected (as nats-server).
pub const LOOP_DELAY: Duration = Duration::from_secs(30);
/// The longest wait between two dials of a remote (unless `reconnect` is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// This server's leafnode connections, both sides.
pub struct Leafs {
    opts: LeafOptions,
    conns: Arc<ConnContext>,
    mesh: Option<Arc<Mesh>>,
    /// The leafnode listener's bound address, when this server is a hub.
    listen: Option<SocketAddr>,
    /// TLS for accepted connections.
    acceptor: Option<tls::LeafAcceptor>,
    /// TLS for each remote that has it.
    connectors: Vec<Option<tls::LeafConnector>>,
    /// Every connection, by cid.
    live: Mutex<BTreeMap<u64, Arc<LeafConn>>>,
    /// Each account's loop-detection subject.
    lds: Mutex<FxHashMap<String, String>>,
    /// The URL of each remote dialled last.
    current: Mutex<Vec<usize>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Messages and bytes received over every leafnode connection so far.
    in_msgs: AtomicU64,
    in_bytes: AtomicU64,
    /// Messages and bytes sent over connections now closed.
    closed_out: Mutex<(u64, u64)>,
    /// The system account's client, for `$SYS.ACCOUNT.<account>.LEAFNODE.CONNECT`.
    system: Option<InternalClient>,
    /// The sequence of this server's events.
    event_seq: AtomicU64,
    /// This server's JetStream (its domain), for the denies of each connection.
    js: LeafJetStream,
}

/// Leafnode traffic, for `/varz` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeafTotals {
    pub connections: usize,
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
}

impl Leafs {
    /// Binds the leafnode listener (when a port is configured) and starts dialling the remotes.
    pub async fn start(
        opts: LeafOptions,
        conns: Arc<ConnContext>,
        mesh: Option<Arc<Mesh>>,
        system: Option<InternalClient>,
        js: LeafJetStream,
    ) -> std::io::Result<Arc<Leafs>> {
        let listener = match opts.port {
            Some(p) => {
                let port = if p == -1 { 0 } else { p as u16 };
                Some(TcpListener::bind(format!("{}:{port}", opts.host)).await?)
            }
            None => None,
        };
        let listen = match &listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let tls_err = |e: crate::conn::TlsError| std::io::Error::other(format!("leafnode {e}"));
        let acceptor = match &opts.tls {
            Some(t) => Some(tls::LeafAcceptor::new(t).map_err(tls_err)?),
            None => None,
        };
        let mut connectors = Vec::new();
        for r in &opts.remotes {
            connectors.push(match &r.tls {
                Some(t) => Some(tls::LeafConnector::new(t).map_err(tls_err)?),
                None => None,
            });
        }
        let leafs = Arc::new(Leafs {
            acceptor,
            connectors,
            current: Mutex::new(vec![0; opts.remotes.len()]),
            opts,
            conns,
            mesh,
            listen,
            live: Mutex::new(BTreeMap::new()),
            lds: Mutex::new(FxHashMap::default()),
            tasks: Mutex::new(Vec::new()),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            closed_out: Mutex::new((0, 0)),
            system,
            event_seq: AtomicU64::new(0),
            js,
        });
        if listen.is_some() {
            // Leaves may come in on the WebSocket listener too (path `/leafnode`).
            leafs
                .conns
                .set_ws_leafs(Arc::new(WsLeafs(Arc::downgrade(&leafs))));
        }
        if let (Some(l), Some(addr)) = (listener, listen) {
            tracing::info!(
                "Listening for leafnode connections on {}:{}",
                leafs.opts.host,
                addr.port()
            );
            let task = tokio::spawn(accept_loop(leafs.clone(), l));
            leafs.tasks.lock().push(task);
        }
        for i in 0..leafs.opts.remotes.len() {
            let task = tokio::spawn(solicit(leafs.clone(), i));
            leafs.tasks.lock().push(task);
        }
        Ok(leafs)
    }

    pub fn options(&self) -> &LeafOptions {
        &self.opts
    }

    pub(crate) fn conns(&self) -> &Arc<ConnContext> {
        &self.conns
    }

    /// The bound leafnode port, when this server accepts leaves.
    pub fn port(&self) -> Option<u16> {
        self.listen.map(|a| a.port())
    }

    /// Every connection (those still in their handshake included).
    pub fn connections(&self) -> Vec<Arc<LeafConn>> {
        self.live.lock().values().cloned().collect()
    }

    /// Traffic over every leafnode connection so far, and how many are up.
    pub fn totals(&self) -> LeafTotals {
        let (mut out_msgs, mut out_bytes) = *self.closed_out.lock();
        let live = self.connections();
        let mut up = 0;
        for c in &live {
            if c.bound().is_some() {
                up += 1;
            }
            let s = c.out.stats();
            out_msgs += s.out_msgs;
            out_bytes += s.out_bytes;
        }
        LeafTotals {
            connections: up,
            in_msgs: self.in_msgs.load(Ordering::Relaxed),
            in_bytes: self.in_bytes.load(Ordering::Relaxed),
            out_msgs,
            out_bytes,
        }
    }

    /// The JetStream subjects a connection bound to `account` keeps from crossing, the other
    /// side being of JetStream domain `theirs`.
    fn js_deny(&self, account: &str, theirs: &str) -> js::JsDeny {
        let system = self.system.as_ref().is_some_and(|s| s.account() == account);
        self.js.deny(system, theirs)
    }

    /// This server's JetStream domain (empty for none).
    fn js_domain(&self) -> String {
        self.js.domain_name()
    }

    fn cluster_name(&self) -> Option<String> {
        self.mesh.as_ref().map(|m| m.name())
    }

    fn track(&self, c: &Arc<LeafConn>) {
        self.live.lock().insert(c.cid, c.clone());
    }

    fn closed(&self, c: &Arc<LeafConn>) {
        self.live.lock().remove(&c.cid);
        let s = c.out.stats();
        let mut t = self.closed_out.lock();
        t.0 += s.out_msgs;
        t.1 += s.out_bytes;
    }

    fn count_in(&self, msgs: u64, bytes: u64) {
        if msgs > 0 {
            self.in_msgs.fetch_add(msgs, Ordering::Relaxed);
            self.in_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Publishes `$SYS.ACCOUNT.<account>.LEAFNODE.CONNECT` as nats-server's `accNumConnsReq`
    /// (`server`, `acc`), for a connection bound to `account` on either side.
    fn connect_event(&self, account: &str) {
        let Some(system) = &self.system else { return };
        let id = &self.conns.identity;
        let now = crate::util::time::rfc3339(std::time::SystemTime::now());
        let event = serde_json::json!({
            "server": {
                "name": id.name,
                "host": id.host,
                "id": id.id,
                "cluster": self.cluster_name().unwrap_or_default(),
                "ver": PROTOCOL_VERSION,
                "seq": self.event_seq.fetch_add(1, Ordering::Relaxed) + 1,
                "jetstream": false,
                "time": now,
            },
            "acc": account,
        });
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let subject = format!("$SYS.ACCOUNT.{account}.LEAFNODE.CONNECT");
        let _ = system.publish(&subject, None, None, &body);
    }

    /// The loop-detection subject of `account` (made up once per account).
    pub fn lds_subject(&self, account: &str) -> String {
        self.lds
            .lock()
            .entry(account.to_string())
            .or_insert_with(|| {
                let mut rng = fastrand::Rng::new();
                let id: String = (0..22).map(|_| rng.alphanumeric()).collect();
                format!("$LDS.{id}")
            })
            .clone()
    }

    /// The URL remote `i` is dialled at now.
    fn current_url(&self, i: usize) -> Option<RouteUrl> {
        let idx = *self.current.lock().get(i)?;
        self.opts.remotes.get(i)?.urls.get(idx).cloned()
    }

    /// The hub's INFO: with a nonce first, then (`account` set) the answer to CONNECT.
    fn info_line(&self, cid: u64, nonce: Option<&str>, account: Option<&str>) -> Vec<u8> {
        let id = &self.conns.identity;
        let port = self.port().unwrap_or_default();
        let urls = if self.opts.no_advertise {
            Vec::new()
        } else {
            match &self.opts.advertise {
                Some(a) => vec![a.clone()],
                None => crate::cluster::mesh::client_urls(&self.opts.host, port),
            }
        };
        let info = LeafInfo {
            server_id: id.id.clone(),
            server_name: id.name.clone(),
            version: PROTOCOL_VERSION.to_string(),
            proto: 1,
            go: String::new(),
            host: self.opts.host.clone(),
            port,
            headers: true,
            auth_required: self.auth_required(),
            tls_required: self.acceptor.is_some(),
            max_payload: self.conns.settings().max_payload as i64,
            ip: String::new(),
            cid,
            nonce: nonce.unwrap_or_default().to_string(),
            cluster: self.cluster_name().unwrap_or_default(),
            domain: self.js.domain_name(),
            leafnode_urls: Some(urls),
            remote_account: account.unwrap_or_default().to_string(),
            info_on_connect: true,
            connect_info: account.is_some(),
        };
        let mut line = b"INFO ".to_vec();
        line.extend_from_slice(&serde_json::to_vec(&info).unwrap_or_default());
        line.extend_from_slice(b"\r\n");
        line
    }

    fn auth_required(&self) -> bool {
        let a = &self.opts.auth;
        a.user.is_some() || !a.users.is_empty() || self.conns.auth.required()
    }

    /// Checks a leaf's credentials: against `leafnodes { authorization }` when it names users,
    /// else as a client's. Returns the account the leaf binds to.
    async fn authorize(
        &self,
        c: &LeafConnect,
        nonce: &str,
        peer: SocketAddr,
    ) -> Result<String, String> {
        let a = &self.opts.auth;
        let bind = |acc: &Option<String>| acc.clone().unwrap_or_else(|| GLOBAL_ACCOUNT.to_string());
        if let Some(user) = &a.user {
            let pass = a.password.as_deref().unwrap_or_default();
            return if &c.user == user && self.password_matches(pass, &c.pass, peer).await {
                Ok(bind(&a.account))
            } else {
                Err(format!("bad user or password for {:?}", c.user))
            };
        }
        if !a.users.is_empty() {
            return match a.users.iter().find(|u| u.user == c.user) {
                Some(u) if self.password_matches(&u.password, &c.pass, peer).await => {
                    Ok(bind(&u.account))
                }
                Some(_) => Err(format!("bad password for user {:?}", c.user)),
                None => Err(format!("unknown user {:?}", c.user)),
            };
        }
        let creds = conn::credentials_of(c);
        let verdict = self
            .conns
            .authenticator(false)
            .check(&creds, &conn::conn_auth(nonce, peer));
        conn::verdict_account(self, verdict, peer)
            .await
            .map(|acc| bind(&acc))
    }

    /// Compares a configured password (plain, or a bcrypt hash as nats-server allows, checked
    /// through the server's bcrypt limiter) with the one given.
    async fn password_matches(&self, configured: &str, given: &str, peer: SocketAddr) -> bool {
        if configured.starts_with("$2") {
            return self
                .conns
                .bcrypt
                .verify(peer.ip(), configured.to_string(), given.to_string())
                .await;
        }
        configured.len() == given.len()
            && configured
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }

    /// Closes every connection and stops listening and dialling.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for c in self.connections() {
            c.out.close(CloseReason::ServerShutdown);
        }
    }
}

/// Loads the listener's and the remotes' TLS files, as a start would (`natrium -t`).
pub fn check_tls(opts: &LeafOptions) -> Result<(), crate::conn::TlsError> {
    if let Some(t) = &opts.tls {
        tls::LeafAcceptor::new(t)?;
    }
    for r in &opts.remotes {
        if let Some(t) = &r.tls {
            tls::LeafConnector::new(t)?;
        }
    }
    Ok(())
}

async fn accept_loop(leafs: Arc<Leafs>, listener: TcpListener) {
    let mut shutdown = leafs.conns.shutdown_rx();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(accepted(leafs.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::error!("Error accepting leafnode connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Runs an accepted connection; with TLS, the INFO goes out in plaintext first, then the
/// handshake (nats-server 2.9's order).
async fn accepted(leafs: Arc<Leafs>, mut stream: TcpStream, peer: SocketAddr) {
    let Some(acceptor) = &leafs.acceptor else {
        conn::run(leafs.clone(), stream, peer, None, conn::Start::default()).await;
        return;
    };
    let cid = leafs.conns.registry.next_cid();
    let nonce = crate::auth::new_nonce();
    let info = leafs.info_line(cid, Some(&nonce), None);
    if tokio::io::AsyncWriteExt::write_all(&mut stream, &info)
        .await
        .is_err()
    {
        return;
    }
    match acceptor.accept(stream).await {
        Ok(tls) => {
            let start = conn::Start {
                sent_info: Some((cid, nonce)),
                tls: true,
                ..conn::Start::default()
            };
            conn::run(leafs.clone(), tls, peer, None, start).await;
        }
        Err(e) => tracing::error!("{peer} - lid:{cid} - Leafnode {e}"),
    }
}

/// Runs a connection to remote `i`: reads the hub's INFO in plaintext, runs the TLS handshake
/// when either side asks for it, then the connection (which starts from that INFO).
async fn dialled(
    leafs: &Arc<Leafs>,
    i: usize,
    url: &RouteUrl,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> conn::Ended {
    let failed = conn::Ended {
        was_up: false,
        looped: false,
    };
    let first = match tls::read_first_line(&mut stream).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{peer} - Leafnode connection to {url}: {e}");
            return failed;
        }
    };
    let hub_wants_tls = first
        .strip_prefix(b"INFO ")
        .and_then(|j| serde_json::from_slice::<LeafInfo>(j.trim_ascii()).ok())
        .is_some_and(|i| i.tls_required);
    let start = conn::Start {
        initial: first,
        ..conn::Start::default()
    };
    match (&leafs.connectors[i], hub_wants_tls) {
        (None, false) => conn::run(leafs.clone(), stream, peer, Some(i), start).await,
        (None, true) => {
            tracing::error!("{peer} - Leafnode connection to {url}: the hub requires TLS and the remote has no tls block");
            failed
        }
        (Some(c), _) => match c.connect(stream, &url.host).await {
            Ok(tls) => {
                let start = conn::Start { tls: true, ..start };
                conn::run(leafs.clone(), tls, peer, Some(i), start).await
            }
            Err(e) => {
                tracing::error!("{peer} - Leafnode connection to {url}: {e}");
                failed
            }
        },
    }
}

/// Runs a connection to remote `i` over WebSocket: TLS first for `wss://`, then the upgrade,
/// then the connection inside the frames (the hub's INFO is its first frame; its
/// `tls_required` is not for this transport, as nats-server ignores it there).
async fn dialled_ws(
    leafs: &Arc<Leafs>,
    i: usize,
    url: &RouteUrl,
    stream: TcpStream,
    peer: SocketAddr,
) -> conn::Ended {
    let failed = conn::Ended {
        was_up: false,
        looped: false,
    };
    let remote = &leafs.opts.remotes[i];
    let mut socket: Box<dyn LeafSocket> = match &leafs.connectors[i] {
        None => Box::new(stream),
        Some(c) => match c.connect(stream, &url.host).await {
            Ok(tls) => Box::new(tls),
            Err(e) => {
                tracing::error!("{peer} - Leafnode connection to {url}: {e}");
                return failed;
            }
        },
    };
    let max_payload = leafs.conns.settings().max_payload;
    let upgraded = ws::upgrade(
        &mut socket,
        &url.address(),
        remote.ws_compression,
        remote.ws_no_masking,
        max_payload,
    )
    .await;
    let (cfg, rest) = match upgraded {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("{peer} - Leafnode connection to {url}: {e}");
            return failed;
        }
    };
    tracing::debug!(
        "{peer} - Leafnode compression={} masking={}",
        cfg.compress,
        cfg.mask_out
    );
    let out = crate::router::Outbound::new(
        leafs.conns.registry.next_cid(),
        peer,
        leafs.conns.max_pending,
    );
    let mut ws = WsStream::new(socket, cfg, out.clone());
    ws.preload(&rest);
    // Closing sends a close frame and waits (bounded by the writer) for the hub's.
    ws.set_dialler();
    let start = conn::Start {
        tls: leafs.connectors[i].is_some(),
        out: Some(out),
        ..conn::Start::default()
    };
    conn::run(leafs.clone(), ws, peer, Some(i), start).await
}

/// Hands the WebSocket listener's leafnode connections to the leafnode layer.
struct WsLeafs(std::sync::Weak<Leafs>);

impl WsLeafAcceptor for WsLeafs {
    fn accept(
        &self,
        stream: Box<dyn LeafSocket>,
        peer: SocketAddr,
        out: Arc<crate::router::Outbound>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let leafs = self.0.upgrade();
        Box::pin(async move {
            let Some(leafs) = leafs else { return };
            tracing::info!(
                "{peer} - lid:{} - Leafnode connection over WebSocket",
                out.cid
            );
            let start = conn::Start {
                out: Some(out),
                ..conn::Start::default()
            };
            conn::run(leafs, stream, peer, None, start).await;
        })
    }
}

/// The wait before the `failures`-th redial: `reconnect`, doubled per failure, at most 10 s
/// (or `reconnect` when that is longer).
fn backoff(base: Duration, failures: u32) -> Duration {
    let d = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    d.min(base.max(MAX_BACKOFF))
}

/// Keeps remote `i` connected: dials its URLs in turn, redials with backoff.
async fn solicit(leafs: Arc<Leafs>, i: usize) {
    let mut shutdown = leafs.conns.shutdown_rx();
    let base = leafs.opts.reconnect;
    let mut failures = 0u32;
    let mut delay = Duration::ZERO;
    let mut attempt = 0usize;
    loop {
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
        if *shutdown.borrow() {
            return;
        }
        let urls = &leafs.opts.remotes[i].urls;
        let idx = attempt % urls.len();
        attempt += 1;
        leafs.current.lock()[i] = idx;
        let url = urls[idx].clone();
        let dial =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(url.address())).await;
        let stream = match dial {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                failures += 1;
                delay = backoff(base, failures);
                tracing::debug!("Error trying to connect as leafnode to remote server {url} (attempt {failures}): {e}");
                continue;
            }
            Err(_) => {
                failures += 1;
                delay = backoff(base, failures);
                tracing::debug!("Error trying to connect as leafnode to remote server {url} (attempt {failures}): dial timeout");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        tracing::info!("Connected leafnode to {url}");
        let ended = if leafs.opts.remotes[i].ws {
            dialled_ws(&leafs, i, &url, stream, peer).await
        } else {
            dialled(&leafs, i, &url, stream, peer).await
        };
        if ended.looped {
            failures = 0;
            delay = LOOP_DELAY;
        } else if ended.was_up {
            failures = 0;
            delay = base;
        } else {
            failures += 1;
            delay = backoff(base, failures);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), b * 2);
        assert_eq!(backoff(b, 4), b * 8);
        assert_eq!(backoff(b, 30), MAX_BACKOFF);
        let long = Duration::from_secs(30);
        assert_eq!(backoff(long, 5), long);
    }
}
