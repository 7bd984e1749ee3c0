//! One route connection to a peer server: the handshake (CONNECT from the soliciting side, INFO
//! both ways, cluster name and credentials checked), then the peer's interest (RS+/RS- into the
//! accounts' tries as `Target::Route` subscriptions) and messages (RMSG/HMSG/LMSG delivered to
//! local subscribers), pings, and the cleanup that withdraws the peer's interest at once. A
//! connection dedicated to one account (per-account route) carries it implied.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Buf;

use crate::util::readbuf::ReadBuf;
use natrium_protocol::route::{parse_route_op_in, RouteConnect, RouteInfo, RouteOp};
use natrium_protocol::{encode, ParseError, Parsed};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::mesh::Mesh;
use super::options::RouteUrl;
use crate::conn::writer::write_loop;
use crate::router::{Account, CloseReason, Msg, Outbound, Publisher, SubRef, Subscription};

/// A peer's interest: (account, subject, queue, leafnode origin cluster).
type SubKey = (Box<[u8]>, Box<[u8]>, Option<Box<[u8]>>, Option<Box<[u8]>>);

/// How a route connection came about.
#[derive(Debug, Clone)]
pub struct Dialled {
    pub url: RouteUrl,
    /// Configured (reconnected forever) rather than learned from a peer.
    pub explicit: bool,
    /// The account this connection is dedicated to (a per-account route).
    pub account: Option<String>,
}

/// Where a registered connection sits among its peer's connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    /// Its index in the peer's pool (0 when the peer does not pool or for a dedicated route).
    pub idx: usize,
    /// The account it is dedicated to.
    pub account: Option<String>,
    /// The peer does not pool (nats-server before 2.10, or `pool_size: -1` on either side):
    /// this one connection carries every account.
    pub no_pool: bool,
}

/// How a route connection ended, for the task that dialled it.
pub(super) struct RunEnd {
    /// It was registered as one of its peer's connections (not refused, not a duplicate).
    pub(super) registered: bool,
    pub(super) lived: Duration,
    pub(super) reason: CloseReason,
}

/// One route connection.
pub struct Route {
    pub rid: u64,
    pub out: Arc<Outbound>,
    /// Set when this server dialled the peer.
    pub dialled: Option<Dialled>,
    pub start: SystemTime,
    /// The peer's INFO, once received.
    remote: Mutex<Option<RouteInfo>>,
    /// Whether this connection is registered for its peer.
    pub(super) registered: AtomicBool,
    /// Its place among the peer's connections, once registered.
    pub(super) slot: Mutex<Option<Slot>>,
    /// The peer's interest installed in the accounts.
    subs: Mutex<FxHashMap<SubKey, (Arc<Account>, SubRef)>>,
}

impl Route {
    /// The peer's INFO (after the handshake).
    pub fn remote(&self) -> Option<RouteInfo> {
        self.remote.lock().clone()
    }

    pub fn remote_id(&self) -> Option<String> {
        self.remote.lock().as_ref().map(|r| r.server_id.clone())
    }

    /// Its place among the peer's connections (pool index, dedicated account), once registered.
    pub fn slot(&self) -> Option<Slot> {
        self.slot.lock().clone()
    }

    pub fn num_subs(&self) -> usize {
        self.subs.lock().len()
    }

    /// The peer's interest as `account subject [queue]` lines, for `/routez?subs=1`.
    pub fn subscription_list(&self) -> Vec<String> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.subs
            .lock()
            .keys()
            .map(|(a, s, q, _)| match q {
                Some(q) => format!("{} {} {}", text(a), text(s), text(q)),
                None => format!("{} {}", text(a), text(s)),
            })
            .collect()
    }

    /// Installs (or re-weighs) the peer's interest in `subject` (on behalf of its leaves of
    /// leafnode cluster `origin`: `LS+`, kept apart from its own `RS+`).
    fn add_interest(
        &self,
        account: Arc<Account>,
        subject: &[u8],
        queue: Option<(&[u8], u32)>,
        origin: Option<&[u8]>,
    ) {
        let key: SubKey = (
            account.name.as_bytes().into(),
            subject.into(),
            queue.map(|(q, _)| q.into()),
            origin.map(Into::into),
        );
        let mut subs = self.subs.lock();
        if let Some((_, existing)) = subs.get(&key) {
            // A queue group's new member count; cached matches hold this same subscription, so
            // the new weight applies at once.
            if let (Some((_, w)), crate::router::Target::Route(r)) = (queue, &existing.0.target) {
                r.weight.store(w, Ordering::Relaxed);
            }
            return;
        }
        let sub = Subscription::route(
            self.out.clone(),
            subject,
            queue.map(|(q, _)| q),
            queue.map_or(0, |(_, w)| w),
            origin,
        );
        subs.insert(key, (account.clone(), sub.clone()));
        drop(subs);
        account.insert(sub);
    }

    /// Withdraws the peer's interest in `subject` (its leaves' of cluster `origin`).
    /// A peer without `lnocu` names no origin in `LS-`: its interest of any origin goes.
    fn remove_interest(
        &self,
        account: &[u8],
        subject: &[u8],
        queue: Option<&[u8]>,
        origin: Option<&[u8]>,
        lnocu: bool,
    ) {
        let mut key: SubKey = (
            account.into(),
            subject.into(),
            queue.map(Into::into),
            origin.map(Into::into),
        );
        let mut subs = self.subs.lock();
        if !lnocu && origin.is_none() && !subs.contains_key(&key) {
            if let Some(k) = subs
                .keys()
                .find(|k| k.0 == key.0 && k.1 == key.1 && k.2 == key.2)
            {
                key = k.clone();
            }
        }
        let removed = subs.remove(&key);
        drop(subs);
        if let Some((acc, sub)) = removed {
            acc.remove(&sub);
        }
    }

    /// Withdraws all of the peer's interest (the route is gone).
    fn clear_interest(&self) {
        let all: Vec<(Arc<Account>, SubRef)> = self.subs.lock().drain().map(|(_, v)| v).collect();
        for (acc, sub) in all {
            acc.remove(&sub);
        }
    }
}

/// Why a route ends before or after its handshake; the text is logged.
pub(super) struct Closing {
    pub(super) reason: CloseReason,
    /// `-ERR` text sent to the peer first.
    pub(super) err: Option<String>,
    pub(super) log: Option<String>,
}

impl Closing {
    fn new(reason: CloseReason, err: Option<&str>, log: impl Into<String>) -> Self {
        Closing {
            reason,
            err: err.map(String::from),
            log: Some(log.into()),
        }
    }
}

/// Smallest and largest read sizes.
const MIN_READ: usize = 4096;
const MAX_READ: usize = 256 * 1024;

/// Runs one route connection (over TCP, or TLS once its handshake is done) until it closes.
pub(super) async fn run<S>(
    mesh: Arc<Mesh>,
    stream: S,
    peer: SocketAddr,
    dialled: Option<Dialled>,
) -> RunEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conns = mesh.conns().clone();
    let rid = conns.registry.next_cid();
    let out = Outbound::new(rid, peer, conns.max_pending);
    let route = Arc::new(Route {
        rid,
        out: out.clone(),
        dialled,
        start: SystemTime::now(),
        remote: Mutex::new(None),
        registered: AtomicBool::new(false),
        slot: Mutex::new(None),
        subs: Mutex::new(FxHashMap::default()),
    });
    mesh.track(&route);
    tracing::info!("{peer} - rid:{rid} - Route connection created");
    let (mut rd, wr) = tokio::io::split(stream);
    let writer = tokio::spawn(write_loop(out.clone(), wr, conns.clone()));
    if let Some(d) = &route.dialled {
        out.send(&mesh.connect_line(&d.url));
    }
    // A pooled route this server dialled sends its INFO once it knows the pool index it takes.
    if !mesh.delays_info(route.dialled.as_ref()) {
        let account = route.dialled.as_ref().and_then(|d| d.account.as_deref());
        out.send(&mesh.info_line(0, account));
    }
    let closing = read_loop(&mesh, &route, &mut rd, peer).await;
    if let Some(e) = &closing.err {
        out.send_err(e);
    }
    if let Some(l) = &closing.log {
        tracing::error!("{peer} - rid:{rid} - {l}");
    }
    out.close(closing.reason);
    route.clear_interest();
    mesh.closed(&route);
    let _ = writer.await;
    let reason = out.close_reason().unwrap_or(closing.reason);
    tracing::info!("{peer} - rid:{rid} - Router connection closed: {reason}");
    let registered = route.slot.lock().is_some();
    RunEnd {
        registered,
        lived: route.start.elapsed().unwrap_or_default(),
        reason,
    }
}

/// Where the handshake stands.
#[derive(PartialEq, Eq)]
enum Stage {
    /// Accepted: waiting for the peer's CONNECT.
    AwaitConnect,
    /// Waiting for the peer's INFO.
    AwaitInfo,
    Up,
}

async fn read_loop(
    mesh: &Arc<Mesh>,
    route: &Arc<Route>,
    rd: &mut (impl AsyncRead + Unpin),
    peer: SocketAddr,
) -> Closing {
    let out = &route.out;
    let mut stage = if route.dialled.is_some() {
        Stage::AwaitInfo
    } else {
        Stage::AwaitConnect
    };
    let mut publisher = Publisher::for_route(route.rid);
    let mut buf = ReadBuf::new(MIN_READ, MAX_READ);
    let (every, ping_max) = mesh.ping();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings_out = 0u32;
    let handshake = tokio::time::sleep(mesh.handshake_timeout());
    tokio::pin!(handshake);
    let mut shutdown = mesh.conns().shutdown_rx();
    let (mut in_msgs, mut in_bytes) = (0u64, 0u64);
    let max_payload = mesh.max_payload();
    // The account of a dedicated route, once its handshake is done.
    let mut dedicated: Option<Arc<Account>> = None;
    // The peer sends `LS-` with the origin (`lnocu`, nats-server 2.10+).
    let mut lnocu = false;
    loop {
        tokio::select! {
            biased;
            _ = out.killed() => {
                return Closing { reason: out.close_reason().unwrap_or(CloseReason::ServerShutdown), err: None, log: None };
            }
            _ = shutdown.changed() => {
                return Closing { reason: CloseReason::ServerShutdown, err: None, log: None };
            }
            r = buf.read_from(rd) => {
                match r {
                    Ok(0) => return Closing { reason: CloseReason::ClientClosed, err: None, log: None },
                    Err(_) => return Closing { reason: CloseReason::ReadError, err: None, log: None },
                    Ok(_) => {}
                }
                let mut pos = 0;
                let result = loop {
                    let parsed = match parse_route_op_in(&buf[pos..], max_payload, dedicated.is_some()) {
                        Ok(p) => p,
                        Err(e) => break Err(parse_error(e)),
                    };
                    let (op, len) = match parsed {
                        Parsed::Incomplete { total } => {
                            if let Some(total) = total {
                                let have = buf.len() - pos;
                                buf.reserve(total.saturating_sub(have));
                            }
                            break Ok(());
                        }
                        Parsed::Op { op, len } => (op, len),
                    };
                    pos += len;
                    if crate::logging::protocol_trace() {
                        trace_in(route, &op);
                    }
                    let r = match op {
                        RouteOp::Ping => {
                            out.send(encode::PONG);
                            Ok(())
                        }
                        RouteOp::Pong => {
                            pings_out = 0;
                            Ok(())
                        }
                        RouteOp::Ok => Ok(()),
                        RouteOp::Err(text) => {
                            tracing::error!(
                                "{peer} - rid:{} - Router Error {}",
                                route.rid,
                                String::from_utf8_lossy(text)
                            );
                            Ok(())
                        }
                        RouteOp::Connect(json) => match stage {
                            Stage::AwaitConnect => mesh.check_connect(json).map(|()| {
                                stage = Stage::AwaitInfo;
                            }),
                            // A second CONNECT changes nothing.
                            _ => Ok(()),
                        },
                        _ if stage == Stage::AwaitConnect => Err(Closing::new(
                            CloseReason::AuthenticationViolation,
                            Some("Authorization Violation"),
                            "route sent a protocol message before CONNECT",
                        )),
                        RouteOp::Info(json) => {
                            let info = serde_json::from_slice::<RouteInfo>(json).map_err(|e| {
                                Closing::new(
                                    CloseReason::ProtocolViolation,
                                    None,
                                    format!("bad route INFO: {e}"),
                                )
                            });
                            match info {
                                Err(e) => Err(e),
                                Ok(info) if stage == Stage::AwaitInfo => {
                                    *route.remote.lock() = Some(info.clone());
                                    out.set_headers(info.headers);
                                    out.set_leaf_origin(info.lnoc);
                                    lnocu = info.lnocu;
                                    mesh.handshake(route, info, peer).map(|acc| {
                                        dedicated = acc;
                                        stage = Stage::Up;
                                    })
                                }
                                Ok(info) => {
                                    mesh.later_info(route, info, peer);
                                    Ok(())
                                }
                            }
                        }
                        _ if stage != Stage::Up => Err(Closing::new(
                            CloseReason::ProtocolViolation,
                            None,
                            "route sent interest or messages before INFO",
                        )),
                        RouteOp::Sub { origin, account, subject, queue } => {
                            let acc = match &dedicated {
                                Some(d) => Some(d.clone()),
                                None => mesh.conns().accounts.get(&String::from_utf8_lossy(account)),
                            };
                            match acc {
                                Some(acc) => route.add_interest(acc, subject, queue, origin),
                                None => tracing::debug!(
                                    "{peer} - rid:{} - Unknown account {:?} for remote subject {:?}",
                                    route.rid,
                                    String::from_utf8_lossy(account),
                                    String::from_utf8_lossy(subject)
                                ),
                            }
                            Ok(())
                        }
                        RouteOp::Unsub { origin, account, subject, queue } => {
                            // Without `lnocu` (nats-server 2.9) `LS- account subject queue`
                            // has no origin: read as origin, account, subject it is that.
                            let (origin, account, subject, queue) = match (lnocu, origin, queue, &dedicated) {
                                (false, Some(o), None, None) => (None, o, account, Some(subject)),
                                _ => (origin, account, subject, queue),
                            };
                            let account = dedicated.as_ref().map_or(account, |d| d.name.as_bytes());
                            route.remove_interest(account, subject, queue, origin, lnocu);
                            Ok(())
                        }
                        RouteOp::Msg { origin, account, subject, reply, queues, headers, payload } => {
                            in_msgs += 1;
                            in_bytes += (payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
                            let acc = match &dedicated {
                                Some(d) => Some(d.clone()),
                                None => mesh.conns().accounts.get(&String::from_utf8_lossy(account)),
                            };
                            match acc {
                                Some(acc) => {
                                    let qf = (!queues.is_empty()).then_some(queues);
                                    // `reply@subject`: addressed to `subject`'s subscribers,
                                    // presenting the other (JetStream deliveries).
                                    match reply.and_then(|r| r.iter().rposition(|b| *b == b'@').filter(|i| *i + 1 < r.len()).map(|i| (&r[..i], &r[i + 1..]))) {
                                        Some((r, shown)) => {
                                            let m = Msg { subject: shown, reply: Some(r), headers, payload };
                                            publisher.publish_on(&acc, subject, &m, qf, origin);
                                        }
                                        None => {
                                            let m = Msg { subject, reply, headers, payload };
                                            publisher.publish_on(&acc, subject, &m, qf, origin);
                                        }
                                    }
                                }
                                None => tracing::debug!(
                                    "{peer} - rid:{} - Unknown account {:?} for routed message on subject {:?}",
                                    route.rid,
                                    String::from_utf8_lossy(account),
                                    String::from_utf8_lossy(subject)
                                ),
                            }
                            Ok(())
                        }
                    };
                    if let Err(c) = r {
                        break Err(c);
                    }
                };
                buf.advance(pos);
                out.record_in(in_msgs, in_bytes);
                publisher.end_read().await;
                if let Err(c) = result {
                    return c;
                }
                buf.settle();
            }
            _ = ping.tick() => {
                if pings_out + 1 > ping_max {
                    return Closing::new(CloseReason::StaleConnection, Some("Stale Connection"), "Stale Connection");
                }
                pings_out += 1;
                out.send(encode::PING);
            }
            _ = &mut handshake, if stage != Stage::Up => {
                return Closing::new(
                    CloseReason::AuthenticationTimeout,
                    Some("Authentication Timeout"),
                    "route handshake timed out",
                );
            }
        }
    }
}

fn parse_error(e: ParseError) -> Closing {
    let reason = match e {
        ParseError::MaxPayload { .. } => CloseReason::MaxPayloadExceeded,
        ParseError::ControlLineTooLong => CloseReason::MaxControlLineExceeded,
        _ => CloseReason::ProtocolViolation,
    };
    Closing::new(
        reason,
        Some(&e.to_string()),
        format!("Router parser error: {e}"),
    )
}

/// Traces an operation a peer sent (`<<- [...]`), as `-V` does for clients.
fn trace_in(route: &Route, op: &RouteOp<'_>) {
    let text = String::from_utf8_lossy;
    let line = match op {
        RouteOp::Msg {
            account,
            subject,
            payload,
            ..
        } => format!("RMSG {} {} {}", text(account), text(subject), payload.len()),
        RouteOp::Sub {
            account,
            subject,
            queue,
            ..
        } => match queue {
            Some((q, w)) => format!("RS+ {} {} {} {w}", text(account), text(subject), text(q)),
            None => format!("RS+ {} {}", text(account), text(subject)),
        },
        RouteOp::Unsub {
            account, subject, ..
        } => format!("RS- {} {}", text(account), text(subject)),
        RouteOp::Connect(_) => "CONNECT".into(),
        RouteOp::Info(_) => "INFO".into(),
        RouteOp::Ping => "PING".into(),
        RouteOp::Pong => "PONG".into(),
        RouteOp::Ok => "+OK".into(),
        RouteOp::Err(e) => format!("-ERR {}", text(e)),
    };
    tracing::trace!("{} - rid:{} - <<- [{line}]", route.out.addr, route.rid);
}

/// Dials `url` (bounded by a second, as nats-server's route dial).
pub(super) async fn dial(url: &RouteUrl) -> std::io::Result<TcpStream> {
    let stream =
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(url.address())).await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "dial timeout",
                ))
            }
        };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Parses a peer's CONNECT.
pub(super) fn parse_connect(json: &[u8]) -> Result<RouteConnect, Closing> {
    serde_json::from_slice::<RouteConnect>(json).map_err(|e| {
        Closing::new(
            CloseReason::ProtocolViolation,
            Some("Unknown Protocol Operation"),
            format!("bad route CONNECT: {e}"),
        )
    })
}

impl Closing {
    pub(super) fn refuse(reason: CloseReason, err: &str) -> Self {
        Closing::new(reason, Some(err), err)
    }

    /// Closed without a word (a duplicate, a route to itself, a full pool).
    pub(super) fn quiet(reason: CloseReason) -> Self {
        Closing {
            reason,
            err: None,
            log: None,
        }
    }
}
