//! This server's place in a full mesh of routes: the cluster listener, the explicit routes it
//! keeps connected, the peers it learns about through others (gossip) and dials, each peer's
//! registered connections (a pool of `pool_size` plus one per pinned account as nats-server 2.10
//! has them, or one when either side does not pool; duplicates resolved the same way on both
//! sides), the interest it announces (each account's on the connection that carries it: a
//! snapshot when the connection comes up, then every change, in order), and the client URLs of
//! every server that clients are told about.

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
use tokio::task::JoinHandle;

use super::options::{ClusterOptions, RouteUrl, MAX_ROUTE_PING_INTERVAL};
use super::route::{self, Closing, Dialled, Route, RunEnd, Slot};
use crate::conn::{ClusterView, ConnContext};
use crate::router::{Announcer, CloseReason, InterestChange, InterestFeed, InternalClient};
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
    /// The registered connections of each peer, by server id.
    routes: Mutex<FxHashMap<String, Peer>>,
    /// Accounts with a dedicated connection to each pooling peer.
    pinned: Vec<String>,
    /// Signalled when a connection registers or closes (dialling tasks re-check their peer).
    changed: tokio::sync::Notify,
    /// Every route connection, registered or not (for shutdown), by rid.
    live: Mutex<FxHashMap<u64, Arc<Route>>>,
    /// Each peer's client and WebSocket URLs, by server id.
    peer_urls: Mutex<BTreeMap<String, PeerUrls>>,
    /// Which server a dialled address turned out to be (this one included).
    known: Mutex<FxHashMap<String, String>>,
    /// Addresses learned from peers being dialled now.
    dialling: Mutex<FxHashSet<String>>,
    /// Where the accounts' interest changes are announced from (see `RouteAnnouncer`).
    feed: Arc<InterestFeed>,
    /// The registered routes that were told this server's interest, which hear every change.
    announced: Mutex<Announced>,
    lame_duck: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// TLS on routes, when configured.
    tls: Option<super::tls::RouteTls>,
}

impl Mesh {
    /// Binds the cluster listener and starts accepting routes, dialling the explicit ones and
    /// announcing the interest changes `feed` reports.
    pub async fn start(
        opts: ClusterOptions,
        conns: Arc<ConnContext>,
        feed: Arc<InterestFeed>,
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
        let pinned = opts.pinned_accounts(system.as_ref().map(InternalClient::account));
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
            pinned,
            changed: tokio::sync::Notify::new(),
            live: Mutex::new(FxHashMap::default()),
            peer_urls: Mutex::new(BTreeMap::new()),
            known: Mutex::new(FxHashMap::default()),
            dialling: Mutex::new(FxHashSet::default()),
            feed: feed.clone(),
            announced: Mutex::new(Announced::default()),
            lame_duck: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            tls,
        });
        mesh.update_clients();
        feed.set_announcer(Arc::new(RouteAnnouncer(Arc::downgrade(&mesh))));
        let mut tasks = vec![tokio::spawn(accept_loop(mesh.clone(), listener))];
        for url in mesh.opts.routes.clone() {
            for lane in mesh.lanes() {
                tasks.push(tokio::spawn(keep_route(
                    mesh.clone(),
                    url.clone(),
                    lane,
                    true,
                )));
            }
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

    /// Every registered route connection (pooled and dedicated ones each count).
    pub fn routes(&self) -> Vec<Arc<Route>> {
        let mut v: Vec<_> = self
            .routes
            .lock()
            .values()
            .flat_map(|p| p.all().cloned().collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|r| r.rid);
        v
    }

    /// How many peers this server has a registered route to.
    pub fn num_peers(&self) -> usize {
        self.routes.lock().len()
    }

    /// The accounts with dedicated routes (the configured ones and, when pooling, the system
    /// account).
    pub fn pinned_accounts(&self) -> &[String] {
        &self.pinned
    }

    /// Whether a route this server dialled holds its INFO back until it has the peer's (a
    /// pooled connection announces the pool index it takes, as nats-server 2.10 does).
    pub(super) fn delays_info(&self, dialled: Option<&Dialled>) -> bool {
        dialled.is_some_and(|d| d.account.is_none()) && self.opts.pooling()
    }

    /// The connections this server keeps to each explicit peer: the pool, then one per pinned
    /// account.
    fn lanes(&self) -> Vec<Lane> {
        if !self.opts.pooling() {
            return vec![Lane::Pool(0)];
        }
        let mut v: Vec<Lane> = (0..self.opts.pool_size as usize).map(Lane::Pool).collect();
        v.extend(self.pinned.iter().cloned().map(Lane::Dedicated));
        v
    }

    /// Whether `lane` to the server at `url` needs dialling now.
    fn lane_need(&self, url: &RouteUrl, lane: &Lane) -> Need {
        let Some(id) = self.known.lock().get(&url.address()).cloned() else {
            return if *lane == Lane::Pool(0) {
                Need::Yes
            } else {
                Need::No { peer_known: false }
            };
        };
        if id == self.conns.identity.id {
            return Need::Itself;
        }
        let routes = self.routes.lock();
        let Some(p) = routes.get(&id) else {
            return if *lane == Lane::Pool(0) {
                Need::Yes
            } else {
                Need::No { peer_known: false }
            };
        };
        let needed = !p.no_pool
            && match lane {
                Lane::Pool(i) => p.live_pool() <= *i,
                Lane::Dedicated(a) => p
                    .dedicated
                    .get(a)
                    .is_none_or(|r| r.as_ref().is_none_or(|r| r.out.is_closed())),
            };
        if needed {
            Need::Yes
        } else {
            Need::No { peer_known: true }
        }
    }

    /// Whether `r` carries `account`'s interest and messages, and with the account implied
    /// (`Some(true)`: a route dedicated to it).
    fn carries(&self, slot: &Slot, account: &str) -> Option<bool> {
        if let Some(a) = &slot.account {
            return (a == account).then_some(true);
        }
        if slot.no_pool {
            return Some(false);
        }
        if self.pinned.iter().any(|p| p == account) {
            return None;
        }
        let size = self.opts.pool_size.max(1) as usize;
        (natrium_protocol::route::pool_index(size, account) == slot.idx).then_some(false)
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

    /// This server's route INFO line, for the connection at pool index `idx` (dedicated to
    /// `account`).
    pub(super) fn info_line(&self, idx: usize, account: Option<&str>) -> Vec<u8> {
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
            route_pool_size: if self.opts.pooling() {
                self.opts.pool_size
            } else {
                0
            },
            route_pool_idx: idx as i32,
            route_account: account.unwrap_or_default().to_string(),
            compression: self.opts.compression.in_info().to_string(),
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

    /// How many servers the configured routes name, this one included: a URL counts once
    /// until it is dialled, then as the server it turned out to be: none when it is this
    /// server's own (a route list shared by every node of a cluster names each of them), once
    /// for several URLs of one peer.
    pub fn configured_servers(&self) -> usize {
        let known = self.known.lock();
        let own = &self.conns.identity.id;
        let mut peers = FxHashSet::default();
        let mut unknown = 0;
        for url in &self.opts.routes {
            match known.get(&url.address()) {
                Some(id) if id == own => {}
                Some(id) => {
                    peers.insert(id.as_str());
                }
                None => unknown += 1,
            }
        }
        peers.len() + unknown + 1
    }

    /// The peer's first INFO: checks it and registers the route, or refuses it.
    pub(super) fn handshake(
        self: &Arc<Self>,
        r: &Arc<Route>,
        info: RouteInfo,
        peer: SocketAddr,
    ) -> Result<Option<Arc<crate::router::Account>>, Closing> {
        let own = &self.conns.identity;
        if let Some(d) = &r.dialled {
            self.known
                .lock()
                .insert(d.url.address(), info.server_id.clone());
        }
        if info.server_id == own.id {
            return Err(Closing::quiet(CloseReason::DuplicateRoute));
        }
        self.check_cluster_name(&info.cluster, info.cluster_dynamic)?;
        if r.dialled.is_none() && !info.server_name.is_empty() && info.server_name == own.name {
            return Err(Closing::refuse(
                CloseReason::DuplicateServerName,
                &format!("Remote server has a duplicate name: {:?}", info.server_name),
            ));
        }
        let want = self.placement(r, &info)?;
        let first = self.register(r, &info.server_id, want)?;
        let slot = r.slot().unwrap_or_default();
        if self.delays_info(r.dialled.as_ref()) {
            r.out.send(&self.info_line(slot.idx, None));
        }
        let dedicated = match &slot.account {
            Some(a) => {
                r.out.set_account_implied(true);
                self.conns.accounts.get(a)
            }
            None => None,
        };
        match &slot.account {
            Some(a) => tracing::debug!(
                "{peer} - rid:{} - Registering remote route {:?} for account {a:?}",
                r.rid,
                info.server_id
            ),
            None => tracing::debug!(
                "{peer} - rid:{} - Registering remote route {:?} (pool index {})",
                r.rid,
                info.server_id,
                slot.idx
            ),
        }
        self.changed.notify_waiters();
        self.sync_interest(r);
        if !first {
            return Ok(dedicated);
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
        // Tell the other peers about this one, so they connect to it too.
        let mut gossip = info.clone();
        gossip.nonce.clear();
        gossip.route_pool_idx = 0;
        gossip.route_account.clear();
        if gossip.ip.is_empty() {
            gossip.ip = format!("nats-route://{}/", SocketAddr::new(peer.ip(), info.port));
        }
        let mut line = Vec::new();
        encode::info(&mut line, &serde_json::to_vec(&gossip).unwrap_or_default());
        for other in self.one_route_per_peer() {
            if other.remote_id().as_deref() != Some(info.server_id.as_str()) {
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
        Ok(dedicated)
    }

    /// Where a connection goes among its peer's, or why it cannot (nats-server 2.10's checks
    /// and errors: a dedicated route to a peer that does not pool, different pool sizes, a
    /// pool index out of range, an account not pinned here).
    fn placement(&self, r: &Route, info: &RouteInfo) -> Result<Want, Closing> {
        let account = match &r.dialled {
            Some(d) => d.account.clone(),
            None => (!info.route_account.is_empty()).then(|| info.route_account.clone()),
        };
        let protocol = |e: String| Closing::refuse(CloseReason::ProtocolViolation, &e);
        if !self.opts.pooling() || info.route_pool_size <= 0 {
            return match account {
                Some(a) => Err(protocol(format!(
                    "Not possible to have a dedicated route for account {a:?} between those servers"
                ))),
                None => Ok(Want::Single),
            };
        }
        if info.route_pool_size != self.opts.pool_size {
            return Err(protocol(format!(
                "Mismatch route pool size: {} vs {}",
                self.opts.pool_size, info.route_pool_size
            )));
        }
        if let Some(a) = account {
            if !self.pinned.contains(&a) {
                return Err(protocol(format!("No route for account {a:?}")));
            }
            if self.conns.accounts.get(&a).is_none() {
                return Err(Closing::refuse(
                    CloseReason::MissingAccount,
                    &format!("Unable to lookup account {a:?}: account not found"),
                ));
            }
            return Ok(Want::Dedicated(a));
        }
        if r.dialled.is_some() {
            if info.route_pool_idx != 0 {
                return Err(protocol(format!(
                    "Route pool index should not be set but is set to {}",
                    info.route_pool_idx
                )));
            }
            return Ok(Want::FreePoolSlot);
        }
        if info.route_pool_idx < 0 || info.route_pool_idx >= self.opts.pool_size {
            return Err(protocol(format!(
                "Invalid route pool index: {} - pool size is {}",
                info.route_pool_idx, info.route_pool_size
            )));
        }
        Ok(Want::PoolSlot(info.route_pool_idx as usize))
    }

    /// Registers `r` as one of its peer's connections; `Ok(true)` when it is the peer's first.
    /// Of two connections for the same place, both servers keep the one dialled by the server
    /// with the smaller id, so they never close both.
    fn register(&self, r: &Arc<Route>, peer_id: &str, want: Want) -> Result<bool, Closing> {
        let own = &self.conns.identity.id;
        let dialled_by_smaller = |x: &Route| (x.dialled.is_some()) == (own.as_str() < peer_id);
        let duplicate = || Closing::quiet(CloseReason::DuplicateRoute);
        let no_pool = want == Want::Single;
        let replaced = {
            let mut routes = self.routes.lock();
            let first = !routes.contains_key(peer_id);
            let size = if no_pool {
                1
            } else {
                self.opts.pool_size.max(1) as usize
            };
            let p = routes
                .entry(peer_id.to_string())
                .or_insert_with(|| Peer::new(size, no_pool));
            if p.no_pool != no_pool {
                return Err(duplicate());
            }
            let (cell, slot) = match &want {
                Want::Single => (
                    &mut p.pool[0],
                    Slot {
                        idx: 0,
                        account: None,
                        no_pool: true,
                    },
                ),
                Want::PoolSlot(i) => (
                    &mut p.pool[*i],
                    Slot {
                        idx: *i,
                        ..Slot::default()
                    },
                ),
                Want::FreePoolSlot => {
                    let Some(i) = p
                        .pool
                        .iter()
                        .position(|c| c.as_ref().is_none_or(|c| c.out.is_closed()))
                    else {
                        tracing::debug!(
                            "Route pool size reached, closing extra connection to {peer_id:?}"
                        );
                        return Err(duplicate());
                    };
                    (
                        &mut p.pool[i],
                        Slot {
                            idx: i,
                            ..Slot::default()
                        },
                    )
                }
                Want::Dedicated(a) => (
                    p.dedicated.entry(a.clone()).or_default(),
                    Slot {
                        idx: 0,
                        account: Some(a.clone()),
                        no_pool: false,
                    },
                ),
            };
            let old = match cell {
                Some(existing) if !existing.out.is_closed() => {
                    if dialled_by_smaller(r) && !dialled_by_smaller(existing) {
                        Some(existing.clone())
                    } else {
                        return Err(duplicate());
                    }
                }
                _ => None,
            };
            *cell = Some(r.clone());
            *r.slot.lock() = Some(slot);
            r.registered.store(true, Ordering::Release);
            (first, old)
        };
        let (first, old) = replaced;
        if let Some(old) = old {
            old.registered.store(false, Ordering::Release);
            old.out.close(CloseReason::DuplicateRoute);
        }
        Ok(first)
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
                let lanes: Vec<_> = mesh
                    .lanes()
                    .into_iter()
                    .map(|lane| tokio::spawn(keep_route(mesh.clone(), url.clone(), lane, false)))
                    .collect();
                for lane in lanes {
                    let _ = lane.await;
                }
                mesh.dialling.lock().remove(&url.address());
            }));
            return;
        }
        if info.ldm && self.peer_urls.lock().remove(&info.server_id).is_some() {
            self.update_clients();
        }
    }

    /// A route connection ended: its registration goes, and with the peer's last one its
    /// client URLs and connection counts.
    pub(super) fn closed(&self, r: &Arc<Route>) {
        self.live.lock().remove(&r.rid);
        let Some(id) = r.remote_id() else { return };
        let peer_gone = {
            let mut routes = self.routes.lock();
            let Some(p) = routes.get_mut(&id) else { return };
            if !p.remove(r) {
                return;
            }
            let gone = p.all().next().is_none();
            if gone {
                routes.remove(&id);
            }
            gone
        };
        self.changed.notify_waiters();
        if !peer_gone {
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
        let line = self.info_line(0, None);
        for r in self.one_route_per_peer() {
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
    async fn run_dialled(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        dialled: Dialled,
    ) -> Option<RunEnd> {
        let peer = stream.peer_addr().ok()?;
        match &self.tls {
            None => Some(route::run(self.clone(), stream, peer, Some(dialled)).await),
            Some(tls) => {
                let s = tls.connect(stream, &dialled.url.host).await?;
                Some(route::run(self.clone(), s, peer, Some(dialled)).await)
            }
        }
    }

    /// One registered connection of each peer (for INFO updates, which each peer needs once).
    fn one_route_per_peer(&self) -> Vec<Arc<Route>> {
        self.routes
            .lock()
            .values()
            .filter_map(|p| p.all().next().cloned())
            .collect()
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
                        None => {
                            route::run(mesh.clone(), stream, peer, None).await;
                        }
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

/// One registered connection for a peer, as `register` is asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// The only connection (either side does not pool).
    Single,
    /// The pool index the dialling peer chose.
    PoolSlot(usize),
    /// The first free pool index (this server dialled).
    FreePoolSlot,
    Dedicated(String),
}

/// A peer's registered connections.
struct Peer {
    /// By pool index (one entry when the peer does not pool).
    pool: Vec<Option<Arc<Route>>>,
    no_pool: bool,
    /// Dedicated connections by account.
    dedicated: FxHashMap<String, Option<Arc<Route>>>,
}

impl Peer {
    fn new(size: usize, no_pool: bool) -> Peer {
        Peer {
            pool: vec![None; size],
            no_pool,
            dedicated: FxHashMap::default(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.pool.iter().chain(self.dedicated.values()).flatten()
    }

    /// Open pool connections.
    fn live_pool(&self) -> usize {
        self.pool
            .iter()
            .flatten()
            .filter(|r| !r.out.is_closed())
            .count()
    }

    /// Takes `r` out of its place; whether it was there.
    fn remove(&mut self, r: &Arc<Route>) -> bool {
        for cell in self.pool.iter_mut().chain(self.dedicated.values_mut()) {
            if cell.as_ref().is_some_and(|c| Arc::ptr_eq(c, r)) {
                *cell = None;
                return true;
            }
        }
        false
    }
}

/// One of the connections kept to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lane {
    /// The n-th pool connection (the first one finds out who the peer is and whether it pools).
    Pool(usize),
    Dedicated(String),
}

/// Whether a lane needs dialling.
enum Need {
    Yes,
    No {
        peer_known: bool,
    },
    /// The address is this server.
    Itself,
}

/// A connection that ends sooner than this after it was made counts as a failure for the
/// reconnect backoff (a flapping peer is not redialled at full speed).
const SHORT_LIVED: Duration = Duration::from_secs(5);

/// Keeps one lane to a peer connected: dials it whenever the peer lacks that connection,
/// backing off while dials fail or connections die young. An explicit route is kept forever;
/// an implicit one (learned from a peer) is dialled `connect_retries + 1` times and not
/// redialled once its connection ends.
async fn keep_route(mesh: Arc<Mesh>, url: RouteUrl, lane: Lane, explicit: bool) {
    let mut failures: u32 = 0;
    let mut idle_checks = 0u32;
    loop {
        match mesh.lane_need(&url, &lane) {
            Need::Itself => return,
            Need::No { peer_known } => {
                if !explicit && (peer_known || idle_checks >= 50) {
                    return;
                }
                idle_checks += 1;
                let changed = mesh.changed.notified();
                let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
                continue;
            }
            Need::Yes => {}
        }
        let account = match &lane {
            Lane::Dedicated(a) => Some(a.clone()),
            Lane::Pool(_) => None,
        };
        match route::dial(&url).await {
            Ok(stream) => {
                let dialled = Dialled {
                    url: url.clone(),
                    explicit,
                    account,
                };
                let end = mesh.run_dialled(stream, dialled).await;
                match end {
                    Some(e) if e.registered && !explicit => return,
                    Some(e) if e.reason == CloseReason::DuplicateRoute => {}
                    Some(e) if e.lived >= SHORT_LIVED => failures = 0,
                    _ => failures += 1,
                }
            }
            Err(e) => {
                failures += 1;
                // As nats-server: the first failure is an error, the rest are debug noise.
                if failures == 1 && lane == Lane::Pool(0) {
                    tracing::error!("Error trying to connect to route (attempt {failures}): {e}");
                } else {
                    tracing::debug!("Error trying to connect to route (attempt {failures}): {e}");
                }
                if !explicit && failures > mesh.opts.connect_retries {
                    return;
                }
            }
        }
        // Back off: 1 s, then up to 8 s while the peer stays away, with jitter.
        let base = Duration::from_secs(1 << failures.min(3));
        let jitter = Duration::from_millis(fastrand::u64(..100));
        tokio::time::sleep(base + jitter).await;
    }
}

/// The routes that hear interest changes, and a scratch buffer for encoding them.
#[derive(Default)]
struct Announced {
    routes: Vec<(Arc<Route>, Slot, Origins)>,
    buf: Vec<u8>,
}

impl Mesh {
    /// Tells a route that has just registered this server's interest in the accounts it
    /// carries; from then on it hears every change (see `RouteAnnouncer`).
    fn sync_interest(&self, r: &Arc<Route>) {
        let Some(slot) = r.slot() else { return };
        let origins = Origins::of(r);
        self.feed.exclusive(|| {
            let mut all = Vec::new();
            for acc in self.conns.accounts.list() {
                let Some(implied) = self.carries(&slot, &acc.name) else {
                    continue;
                };
                let name = if implied { "" } else { acc.name.as_str() };
                for i in acc.local_interest(!origins.lnoc) {
                    let queue = i.queue.as_deref().map(|q| (q, i.count));
                    match &i.origin {
                        Some(o) => natrium_protocol::route::leaf_sub(
                            &mut all,
                            o,
                            name.as_bytes(),
                            &i.subject,
                            queue,
                        ),
                        None => natrium_protocol::route::sub(
                            &mut all,
                            name.as_bytes(),
                            &i.subject,
                            queue,
                        ),
                    }
                }
            }
            if !all.is_empty() {
                r.out.send(&all);
            }
            self.announced
                .lock()
                .routes
                .push((r.clone(), slot, origins));
        });
    }
}

/// Sends the accounts' interest changes to the routes carrying each account, in the order the
/// accounts reported them, before the subscription that made them returns: a client's SUB is
/// on the wire ahead of the PUB it sends next (a reply inbox a peer's responder answers into).
struct RouteAnnouncer(std::sync::Weak<Mesh>);

impl Announcer for RouteAnnouncer {
    fn announce(&self, changes: &[InterestChange]) {
        let Some(mesh) = self.0.upgrade() else { return };
        let mut announced = mesh.announced.lock();
        let Announced { routes, buf } = &mut *announced;
        routes.retain(|(r, _, _)| !r.out.is_closed() && r.registered.load(Ordering::Acquire));
        for (r, slot, origins) in routes.iter() {
            buf.clear();
            for c in changes {
                if let Some(implied) = mesh.carries(slot, &c.account) {
                    encode_change(buf, c, implied, *origins);
                }
            }
            if !buf.is_empty() {
                r.out.send(buf);
            }
        }
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    }
}

/// What a peer's INFO says it takes of a leaf's interest.
#[derive(Debug, Clone, Copy)]
struct Origins {
    /// `LS+ origin ...` (`lnoc`); without it the peer hears every origin summed up as `RS+`.
    lnoc: bool,
    /// `LS- origin ...` (`lnocu`); without it `LS-` names no origin.
    lnocu: bool,
}

impl Origins {
    fn of(r: &Route) -> Origins {
        let info = r.remote();
        Origins {
            lnoc: info.as_ref().is_some_and(|i| i.lnoc),
            lnocu: info.as_ref().is_some_and(|i| i.lnocu),
        }
    }
}

/// One interest change as `peer` must hear of it (if at all).
fn encode_change(buf: &mut Vec<u8>, c: &InterestChange, implied: bool, peer: Origins) {
    use natrium_protocol::route;
    let account = if implied {
        &b""[..]
    } else {
        c.account.as_bytes()
    };
    let q = c.queue.as_deref();
    if !peer.lnoc {
        if c.summed {
            match c.total {
                0 => route::unsub(buf, account, &c.subject, q),
                n => route::sub(buf, account, &c.subject, q.map(|q| (q, n))),
            }
        }
        return;
    }
    if !c.per_origin {
        return;
    }
    match (c.count, c.origin.as_deref()) {
        (0, None) => route::unsub(buf, account, &c.subject, q),
        (n, None) => route::sub(buf, account, &c.subject, q.map(|q| (q, n))),
        (0, Some(o)) => {
            route::leaf_unsub(buf, peer.lnocu.then_some(o), account, &c.subject, q);
        }
        (n, Some(o)) => route::leaf_sub(buf, o, account, &c.subject, q.map(|q| (q, n))),
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
