//! This server's place in a full mesh of routes: the cluster listener, the explicit routes it
//! keeps connected, the peers it learns about through others (gossip) and dials, one
//! registered route per peer (duplicates resolved the same way on both sides), the interest it
//! announces (a full snapshot when a route comes up, then every change, in order), and the
//! client URLs of every server that clients are told about.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natrium_protocol::encode;
use natrium_protocol::route::{RouteConnect, RouteInfo};
use parking_lot::{Mutex, RwLock};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::options::{ClusterOptions, RouteUrl, MAX_ROUTE_PING_INTERVAL};
use super::route::{self, Closing, Dialled, Route};
use crate::conn::{ClusterView, ConnContext};
use crate::router::{CloseReason, InterestChange, InternalClient};
use crate::util::{PROTOCOL_VERSION, VERSION};

/// Largest routed message accepted from a peer (peers enforce their clients' `max_payload`).
const MAX_ROUTED_PAYLOAD: usize = 64 * 1024 * 1024;

/// A peer's client URLs and WebSocket URLs.
type PeerUrls = (Vec<String>, Vec<String>);

/// What a running cluster member shares between its tasks.
pub struct Mesh {
    opts: ClusterOptions,
    conns: Arc<ConnContext>,
    name: RwLock<String>,
    /// The name was made up here (none configured): a peer's configured name wins.
    dynamic: AtomicBool,
    /// The cluster listener's bound address.
    listen: SocketAddr,
    /// This server's client URLs (`host:port`).
    client_urls: Vec<String>,
    /// This server's WebSocket URLs, when it has a WebSocket listener.
    ws_urls: Vec<String>,
    /// The registered route of each peer, by server id.
    routes: Mutex<FxHashMap<String, Arc<Route>>>,
    /// Every route connection, registered or not (for shutdown), by rid.
    live: Mutex<FxHashMap<u64, Arc<Route>>>,
    /// Each peer's client and WebSocket URLs, by server id.
    peer_urls: Mutex<BTreeMap<String, PeerUrls>>,
    /// Which server a dialled address turned out to be (this one included).
    known: Mutex<FxHashMap<String, String>>,
    /// Addresses learned from peers being dialled now.
    dialling: Mutex<FxHashSet<String>>,
    /// Registered routes waiting for this server's interest.
    sync: mpsc::UnboundedSender<Arc<Route>>,
    lame_duck: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// TLS on routes, when configured.
    tls: Option<super::tls::RouteTls>,
}

impl Mesh {
    /// Binds the cluster listener and starts accepting routes, dialling the explicit ones and
    /// announcing the interest `changes` report.
    pub async fn start(
        opts: ClusterOptions,
        conns: Arc<ConnContext>,
        changes: mpsc::UnboundedReceiver<InterestChange>,
        system: Option<InternalClient>,
    ) -> std::io::Result<Arc<Mesh>> {
        let tls = match &opts.tls {
            Some(t) => Some(
                super::tls::RouteTls::new(t).map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
            None => None,
        };
        let port = if opts.port == -1 { 0 } else { opts.port as u16 };
        let listener = TcpListener::bind(format!("{}:{port}", opts.host)).await?;
        let listen = listener.local_addr()?;
        let (name, dynamic) = match &opts.name {
            Some(n) => (n.clone(), false),
            None => (
                nkeys::KeyPair::new_server().public_key()[..22].to_string(),
                true,
            ),
        };
        tracing::info!("Cluster name is {name}");
        if dynamic {
            tracing::warn!("Cluster name was dynamically generated, consider setting one");
        }
        tracing::info!(
            "Listening for route connections on {}:{}",
            opts.host,
            listen.port()
        );
        let (sync, synced) = mpsc::unbounded_channel();
        let mesh = Arc::new(Mesh {
            client_urls: client_urls(&conns.identity.host, conns.identity.port),
            ws_urls: match conns.websocket() {
                Some(ws) => match &ws.advertise {
                    Some(a) => vec![a.clone()],
                    None => client_urls(&ws.host, ws.port),
                },
                None => Vec::new(),
            },
            opts,
            conns,
            name: RwLock::new(name),
            dynamic: AtomicBool::new(dynamic),
            listen,
            routes: Mutex::new(FxHashMap::default()),
            live: Mutex::new(FxHashMap::default()),
            peer_urls: Mutex::new(BTreeMap::new()),
            known: Mutex::new(FxHashMap::default()),
            dialling: Mutex::new(FxHashSet::default()),
            sync,
            lame_duck: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            tls,
        });
        mesh.update_clients();
        let mut tasks = vec![
            tokio::spawn(accept_loop(mesh.clone(), listener)),
            tokio::spawn(announce(mesh.clone(), changes, synced)),
        ];
        for url in mesh.opts.routes.clone() {
            tasks.push(tokio::spawn(keep_route(mesh.clone(), url)));
        }
        if let Some(system) = system {
            let counts = mesh.conns.watch_connection_counts();
            tasks.push(tokio::spawn(super::conns::exchange(
                mesh.clone(),
                system,
                counts,
            )));
        }
        *mesh.tasks.lock() = tasks;
        Ok(mesh)
    }

    pub(super) fn conns(&self) -> &Arc<ConnContext> {
        &self.conns
    }

    pub fn name(&self) -> String {
        self.name.read().clone()
    }

    /// The bound cluster port.
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Every registered route.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        let mut v: Vec<_> = self.routes.lock().values().cloned().collect();
        v.sort_by_key(|r| r.rid);
        v
    }

    /// Route ping interval and the pings a peer may leave unanswered.
    pub(super) fn ping(&self) -> (Duration, u32) {
        let client = self.conns.settings();
        let every = self
            .opts
            .ping_interval
            .unwrap_or(client.ping_interval)
            .min(MAX_ROUTE_PING_INTERVAL);
        (every, self.opts.ping_max.unwrap_or(client.ping_max))
    }

    pub(super) fn handshake_timeout(&self) -> Duration {
        self.opts.auth_timeout.max(Duration::from_secs(1))
    }

    pub(super) fn max_payload(&self) -> usize {
        MAX_ROUTED_PAYLOAD
    }

    pub(super) fn track(&self, r: &Arc<Route>) {
        self.live.lock().insert(r.rid, r.clone());
    }

    /// This server's route INFO line.
    pub(super) fn info_line(&self) -> Vec<u8> {
        let id = &self.conns.identity;
        let (host, port, ip) = match &self.opts.advertise {
            Some(adv) => {
                let u = RouteUrl::parse(adv).unwrap_or(RouteUrl {
                    host: adv.clone(),
                    port: self.port(),
                    user: None,
                    password: None,
                });
                let ip = format!("nats-route://{}/", u.address());
                (u.host, u.port, ip)
            }
            None => (self.opts.host.clone(), self.port(), String::new()),
        };
        let info = RouteInfo {
            server_id: id.id.clone(),
            server_name: id.name.clone(),
            version: PROTOCOL_VERSION.into(),
            go: format!("natrium {VERSION}"),
            host,
            port,
            headers: true,
            auth_required: self.opts.user.is_some(),
            tls_required: self.tls.is_some(),
            max_payload: self.conns.settings().max_payload,
            proto: 2,
            ip,
            cluster: self.name(),
            cluster_dynamic: self.dynamic.load(Ordering::Relaxed),
            connect_urls: if self.opts.no_advertise {
                Vec::new()
            } else {
                self.client_urls.clone()
            },
            ws_connect_urls: if self.opts.no_advertise {
                Vec::new()
            } else {
                self.ws_urls.clone()
            },
            lnoc: true,
            lnocu: true,
            ldm: self.lame_duck.load(Ordering::Relaxed),
            ..RouteInfo::default()
        };
        let mut b = Vec::new();
        encode::info(&mut b, &serde_json::to_vec(&info).unwrap_or_default());
        b
    }

    /// The CONNECT this server sends on a route it dialled.
    pub(super) fn connect_line(&self, url: &RouteUrl) -> Vec<u8> {
        let c = RouteConnect {
            echo: true,
            user: url.user.clone(),
            pass: url.password.clone(),
            headers: true,
            name: self.conns.identity.id.clone(),
            cluster: self.name(),
            cluster_dynamic: self.dynamic.load(Ordering::Relaxed),
            lnoc: true,
            lnocu: true,
            ..RouteConnect::default()
        };
        let mut b = b"CONNECT ".to_vec();
        b.extend_from_slice(&serde_json::to_vec(&c).unwrap_or_default());
        b.extend_from_slice(b"\r\n");
        b
    }

    /// Checks the CONNECT of a route this server accepted: a client on the wrong port, a
    /// gateway, another cluster, wrong credentials.
    pub(super) fn check_connect(&self, json: &[u8]) -> Result<(), Closing> {
        let c = route::parse_connect(json)?;
        if c.lang.is_some() {
            return Err(Closing::refuse(
                CloseReason::WrongPort,
                "attempted to connect to route port",
            ));
        }
        if let Some(g) = &c.gateway {
            return Err(Closing::refuse(
                CloseReason::WrongPort,
                &format!("Rejecting connection from gateway {g:?} on the Route port"),
            ));
        }
        self.check_cluster_name(&c.cluster, c.cluster_dynamic)?;
        if let Some(user) = &self.opts.user {
            let want = self.opts.password.as_deref().unwrap_or("");
            let ok = c.user.as_deref() == Some(user.as_str())
                && constant_time_eq(c.pass.as_deref().unwrap_or("").as_bytes(), want.as_bytes());
            if !ok {
                return Err(Closing::refuse(
                    CloseReason::AuthenticationViolation,
                    "Authorization Violation",
                ));
            }
        }
        Ok(())
    }

    /// A peer in cluster `theirs`: the same cluster, or this server's made-up name gives way
    /// to a configured one (or to the larger of two made-up ones), as nats-server decides.
    fn check_cluster_name(&self, theirs: &str, theirs_dynamic: bool) -> Result<(), Closing> {
        let ours = self.name();
        if theirs.is_empty() || theirs == ours {
            return Ok(());
        }
        if self.dynamic.load(Ordering::Relaxed) && (!theirs_dynamic || ours.as_str() < theirs) {
            tracing::info!("Cluster name updated to {theirs}");
            *self.name.write() = theirs.to_string();
            self.dynamic.store(theirs_dynamic, Ordering::Relaxed);
            self.update_clients();
            return Ok(());
        }
        Err(Closing::refuse(
            CloseReason::ClusterNameConflict,
            &format!("Rejecting connection, cluster name {theirs:?} does not match {ours:?}"),
        ))
    }

    /// The peer's first INFO: checks it and registers the route, or refuses it.
    pub(super) fn handshake(
        self: &Arc<Self>,
        r: &Arc<Route>,
        info: RouteInfo,
        peer: SocketAddr,
    ) -> Result<(), Closing> {
        let own = &self.conns.identity;
        if let Some(d) = &r.dialled {
            self.known
                .lock()
                .insert(d.url.address(), info.server_id.clone());
        }
        if info.server_id == own.id {
            return Err(Closing {
                reason: CloseReason::DuplicateRoute,
                err: None,
                log: None,
            });
        }
        self.check_cluster_name(&info.cluster, info.cluster_dynamic)?;
        if r.dialled.is_none() && !info.server_name.is_empty() && info.server_name == own.name {
            return Err(Closing::refuse(
                CloseReason::DuplicateServerName,
                &format!("Remote server has a duplicate name: {:?}", info.server_name),
            ));
        }
        if info.jetstream && own.jetstream {
            // nats-server's JetStream cluster speaks its own Raft ($NRG): the two never share
            // replicated streams or a meta group.
            tracing::warn!(
                "{peer} - rid:{} - Route to {:?}, a nats-server with JetStream: Natrium does not join its JetStream cluster or host its replicated streams (nor it Natrium's)",
                r.rid,
                info.server_name
            );
        }
        if !self.register(r, &info.server_id) {
            tracing::debug!(
                "{peer} - rid:{} - Detected duplicate remote route {:?}",
                r.rid,
                info.server_id
            );
            return Err(Closing {
                reason: CloseReason::DuplicateRoute,
                err: None,
                log: None,
            });
        }
        tracing::debug!(
            "{peer} - rid:{} - Registering remote route {:?}",
            r.rid,
            info.server_id
        );
        // Tell the other peers about this one, so they connect to it too.
        let mut gossip = info.clone();
        gossip.nonce.clear();
        if gossip.ip.is_empty() {
            gossip.ip = format!("nats-route://{}/", SocketAddr::new(peer.ip(), info.port));
        }
        let mut line = Vec::new();
        encode::info(&mut line, &serde_json::to_vec(&gossip).unwrap_or_default());
        for other in self.routes() {
            if other.rid != r.rid {
                other.out.send(&line);
            }
        }
        if !info.connect_urls.is_empty() || !info.ws_connect_urls.is_empty() {
            self.peer_urls.lock().insert(
                info.server_id.clone(),
                (info.connect_urls.clone(), info.ws_connect_urls.clone()),
            );
            self.update_clients();
        }
        let _ = self.sync.send(r.clone());
        Ok(())
    }

    /// Registers `r` as its peer's route. Of two connections between the same two servers,
    /// both keep the one dialled by the server with the smaller id, so they never close both.
    fn register(&self, r: &Arc<Route>, peer_id: &str) -> bool {
        let own = &self.conns.identity.id;
        let dialled_by_smaller = |x: &Route| (x.dialled.is_some()) == (own.as_str() < peer_id);
        let replaced = {
            let mut routes = self.routes.lock();
            match routes.get(peer_id) {
                Some(existing) if !existing.out.is_closed() => {
                    if dialled_by_smaller(r) && !dialled_by_smaller(existing) {
                        let old = existing.clone();
                        routes.insert(peer_id.to_string(), r.clone());
                        Some(old)
                    } else {
                        return false;
                    }
                }
                _ => {
                    routes.insert(peer_id.to_string(), r.clone());
                    None
                }
            }
        };
        r.registered.store(true, Ordering::Release);
        if let Some(old) = replaced {
            old.registered.store(false, Ordering::Release);
            old.out.close(CloseReason::DuplicateRoute);
        }
        true
    }

    /// An INFO after the handshake: about another server (connect to it), or this peer's own
    /// update (lame duck: its clients' URLs are no longer offered).
    pub(super) fn later_info(self: &Arc<Self>, r: &Arc<Route>, info: RouteInfo, _peer: SocketAddr) {
        let own = &self.conns.identity.id;
        if r.remote_id().as_deref() != Some(info.server_id.as_str()) {
            if &info.server_id == own || self.routes.lock().contains_key(&info.server_id) {
                return;
            }
            let Ok(mut url) = RouteUrl::parse(&info.ip) else {
                return;
            };
            if info.auth_required {
                url.user = self.opts.user.clone();
                url.password = self.opts.password.clone();
            }
            if !self.dialling.lock().insert(url.address()) {
                return;
            }
            tracing::debug!("Connecting to implicit route {url}");
            let mesh = self.clone();
            self.tasks.lock().push(tokio::spawn(async move {
                dial_once(&mesh, url.clone()).await;
                mesh.dialling.lock().remove(&url.address());
            }));
            return;
        }
        if info.ldm && self.peer_urls.lock().remove(&info.server_id).is_some() {
            self.update_clients();
        }
    }

    /// A route connection ended: its registration and its peer's client URLs go with it.
    pub(super) fn closed(&self, r: &Arc<Route>) {
        self.live.lock().remove(&r.rid);
        let Some(id) = r.remote_id() else { return };
        let was_registered = {
            let mut routes = self.routes.lock();
            match routes.get(&id) {
                Some(cur) if Arc::ptr_eq(cur, r) => {
                    routes.remove(&id);
                    true
                }
                _ => false,
            }
        };
        if !was_registered {
            return;
        }
        // The peer's connections no longer count against any account's limit.
        for a in self.conns.accounts.list() {
            a.forget_remote_server(&id);
        }
        if self.peer_urls.lock().remove(&id).is_some() {
            self.update_clients();
        }
    }

    /// Tells clients the cluster's name and every server's client URLs (WebSocket clients
    /// every server's WebSocket URLs).
    fn update_clients(&self) {
        let mut urls = Vec::new();
        let mut ws_urls = Vec::new();
        if !self.opts.no_advertise {
            urls.extend(self.client_urls.iter().cloned());
            ws_urls.extend(self.ws_urls.iter().cloned());
            for (peer, peer_ws) in self.peer_urls.lock().values() {
                for (list, add) in [(&mut urls, peer), (&mut ws_urls, peer_ws)] {
                    for u in add {
                        if !list.contains(u) {
                            list.push(u.clone());
                        }
                    }
                }
            }
        }
        self.conns.set_cluster_view(ClusterView {
            name: self.name(),
            connect_urls: urls,
            ws_connect_urls: ws_urls,
        });
    }

    /// Lame duck mode: peers are told (they stop offering this server's URLs to clients).
    pub fn enter_lame_duck(&self) {
        self.lame_duck.store(true, Ordering::Relaxed);
        let line = self.info_line();
        for r in self.routes() {
            r.out.send(&line);
        }
    }

    /// Closes every route and stops dialling.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let all: Vec<_> = self.live.lock().values().cloned().collect();
        for r in &all {
            r.out.close(CloseReason::ServerShutdown);
        }
    }

    /// Runs a route this server dialled, after the TLS handshake when routes use TLS.
    async fn run_dialled(self: &Arc<Self>, stream: tokio::net::TcpStream, dialled: Dialled) {
        let Ok(peer) = stream.peer_addr() else { return };
        match &self.tls {
            None => route::run(self.clone(), stream, peer, Some(dialled)).await,
            Some(tls) => {
                if let Some(s) = tls.connect(stream, &dialled.url.host).await {
                    route::run(self.clone(), s, peer, Some(dialled)).await;
                }
            }
        }
    }

    /// Whether a registered route to `peer_id` is up.
    fn is_connected(&self, peer_id: &str) -> bool {
        self.routes
            .lock()
            .get(peer_id)
            .is_some_and(|r| !r.out.is_closed())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts route connections until the server stops.
async fn accept_loop(mesh: Arc<Mesh>, listener: TcpListener) {
    let mut shutdown = mesh.conns.shutdown_rx();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let mesh = mesh.clone();
                tokio::spawn(async move {
                    match &mesh.tls {
                        None => route::run(mesh.clone(), stream, peer, None).await,
                        Some(tls) => {
                            if let Some(s) = tls.accept(stream, peer).await {
                                route::run(mesh.clone(), s, peer, None).await;
                            }
                        }
                    }
                });
            }
            Err(e) => {
                tracing::error!("Error accepting route connection: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Keeps an explicit route connected: dials it, and again (backing off) whenever it is down,
/// unless the address turned out to be this server or its peer is connected another way.
async fn keep_route(mesh: Arc<Mesh>, url: RouteUrl) {
    let own = mesh.conns.identity.id.clone();
    let mut failures: u32 = 0;
    loop {
        let known = mesh.known.lock().get(&url.address()).cloned();
        match known {
            Some(id) if id == own => return,
            Some(id) if mesh.is_connected(&id) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            _ => {}
        }
        match route::dial(&url).await {
            Ok(stream) => {
                failures = 0;
                let dialled = Dialled {
                    url: url.clone(),
                    explicit: true,
                };
                mesh.run_dialled(stream, dialled).await;
            }
            Err(e) => {
                failures += 1;
                // As nats-server: the first failure is an error, the rest are debug noise.
                if failures == 1 {
                    tracing::error!("Error trying to connect to route (attempt {failures}): {e}");
                } else {
                    tracing::debug!("Error trying to connect to route (attempt {failures}): {e}");
                }
            }
        }
        // Back off: 1 s, then up to 8 s while the peer stays away, with jitter.
        let base = Duration::from_secs(1 << failures.min(3));
        let jitter = Duration::from_millis(fastrand::u64(..100));
        tokio::time::sleep(base + jitter).await;
    }
}

/// Dials a route learned from a peer: once, plus `connect_retries` more attempts a second apart.
async fn dial_once(mesh: &Arc<Mesh>, url: RouteUrl) {
    for attempt in 0..=mesh.opts.connect_retries {
        match route::dial(&url).await {
            Ok(stream) => {
                let dialled = Dialled {
                    url,
                    explicit: false,
                };
                mesh.run_dialled(stream, dialled).await;
                return;
            }
            Err(e) => {
                tracing::debug!(
                    "Error trying to connect to route (attempt {}): {e}",
                    attempt + 1
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Announces this server's interest to its peers: everything to a route that has just come up,
/// then each change (batched) to every route, in the order the accounts reported them.
async fn announce(
    mesh: Arc<Mesh>,
    mut changes: mpsc::UnboundedReceiver<InterestChange>,
    mut synced: mpsc::UnboundedReceiver<Arc<Route>>,
) {
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            biased;
            r = synced.recv() => {
                let Some(r) = r else { return };
                let mut all = Vec::new();
                for acc in mesh.conns.accounts.list() {
                    for i in acc.local_interest() {
                        let queue = i.queue.as_deref().map(|q| (q, i.count));
                        natrium_protocol::route::sub(&mut all, acc.name.as_bytes(), &i.subject, queue);
                    }
                }
                if !all.is_empty() {
                    r.out.send(&all);
                }
                routes.push(r);
            }
            c = changes.recv() => {
                let Some(c) = c else { return };
                buf.clear();
                encode_change(&mut buf, &c);
                while buf.len() < 64 * 1024 {
                    match changes.try_recv() {
                        Ok(c) => encode_change(&mut buf, &c),
                        Err(_) => break,
                    }
                }
                routes.retain(|r| !r.out.is_closed() && r.registered.load(Ordering::Acquire));
                for r in &routes {
                    r.out.send(&buf);
                }
            }
        }
    }
}

fn encode_change(buf: &mut Vec<u8>, c: &InterestChange) {
    let account = c.account.as_bytes();
    match (c.count, c.queue.as_deref()) {
        (0, q) => natrium_protocol::route::unsub(buf, account, &c.subject, q),
        (n, q) => natrium_protocol::route::sub(buf, account, &c.subject, q.map(|q| (q, n))),
    }
}

/// This server's client URLs: its client listener's host, or every non-loopback address of the
/// machine when it listens on all of them (loopback when it has no other).
pub(crate) fn client_urls(host: &str, port: u16) -> Vec<String> {
    let fmt = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            let mut ips: Vec<IpAddr> = interface_addrs()
                .into_iter()
                .filter(|i| !i.is_loopback() && (ip.is_ipv6() || i.is_ipv4()))
                .collect();
            if ips.is_empty() {
                ips.push(IpAddr::from([127, 0, 0, 1]));
            }
            ips.into_iter().map(fmt).collect()
        }
        Ok(ip) => vec![fmt(ip)],
        Err(_) => vec![format!("{host}:{port}")],
    }
}

/// The machine's interface addresses (getifaddrs).
fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_urls_name_the_listener_or_every_address() {
        assert_eq!(client_urls("127.0.0.1", 4222), vec!["127.0.0.1:4222"]);
        assert_eq!(client_urls("::1", 4222), vec!["[::1]:4222"]);
        let all = client_urls("0.0.0.0", 4222);
        assert!(!all.is_empty());
        assert!(
            all.iter()
                .all(|u| u.ends_with(":4222") && !u.starts_with('[')),
            "{all:?}"
        );
    }
}
