//! One leafnode connection, either side: the handshake (the hub's INFO, the leaf's CONNECT, the
//! hub's second INFO naming the bound account), then the other side's interest (`LS+`/`LS-` into
//! the bound account's trie as leaf subscriptions), its messages (`LMSG`/`HMSG` published in the
//! bound account), this side's interest as the account changes (`SentInterest`), loop detection
//! on `$LDS.` subjects, pings, and the cleanup that withdraws the other side's interest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Buf;

use crate::util::readbuf::ReadBuf;
use natrium_protocol::leaf::{parse_leaf_op, LeafConnect, LeafInfo, LeafOp};
use natrium_protocol::{encode, ParseError, Parsed};
use natrium_subjects::matches;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::interest::SentInterest;
use super::js::JsDeny;
use super::Leafs;
use crate::auth::{ConnAuth, Credentials, Verdict};
use crate::conn::writer::write_loop;
use crate::router::{
    Account, CloseReason, InterestWatcher, LeafPeer, Msg, Outbound, Publisher, SubRef, Subscription,
};

/// Subjects a connection filters.
type Deny = Vec<Box<[u8]>>;

/// The other side's interest: (subject, queue).
type SubKey = (Box<[u8]>, Option<Box<[u8]>>);

/// Largest message accepted from the other server (it enforces its clients' `max_payload`).
const MAX_LEAF_PAYLOAD: usize = 64 * 1024 * 1024;
const MIN_READ: usize = 4096;
const MAX_READ: usize = 256 * 1024;

/// What is known once the handshake is done.
#[derive(Clone)]
pub struct Bound {
    pub account: Arc<Account>,
    pub peer: Arc<LeafPeer>,
    pub sent: Arc<SentInterest>,
    /// The JetStream subjects this connection keeps from crossing.
    pub js: Arc<JsDeny>,
    /// The other server's id and name.
    pub remote_id: String,
    pub remote_name: String,
}

/// One leafnode connection.
pub struct LeafConn {
    pub cid: u64,
    pub out: Arc<Outbound>,
    /// The index of the remote this server dialled (it is the leaf), `None` when accepted.
    pub remote: Option<usize>,
    pub start: SystemTime,
    /// The connection runs over TLS.
    pub tls: bool,
    bound: Mutex<Option<Bound>>,
    /// The hub's first INFO (dialled connections).
    first_info: Mutex<Option<LeafInfo>>,
    subs: Mutex<FxHashMap<SubKey, SubRef>>,
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
}

impl LeafConn {
    /// The hub's INFO, on the leaf side.
    pub fn hub_info(&self) -> Option<LeafInfo> {
        self.first_info.lock().clone()
    }

    pub fn bound(&self) -> Option<Bound> {
        self.bound.lock().clone()
    }

    /// The other side's interest, as `subject [queue]`.
    pub fn subscription_list(&self) -> Vec<String> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.subs
            .lock()
            .keys()
            .map(|(s, q)| match q {
                Some(q) => format!("{} {}", text(s), text(q)),
                None => text(s),
            })
            .collect()
    }

    pub fn num_subs(&self) -> usize {
        self.subs.lock().len()
    }

    fn add_interest(&self, b: &Bound, subject: &[u8], queue: Option<(&[u8], u32)>) {
        let key: SubKey = (subject.into(), queue.map(|(q, _)| q.into()));
        let mut subs = self.subs.lock();
        if let Some(existing) = subs.get(&key) {
            if let (Some((_, w)), crate::router::Target::Route(r)) = (queue, &existing.0.target) {
                r.weight.store(w, Ordering::Relaxed);
            }
            return;
        }
        let sub = Subscription::leaf(
            self.out.clone(),
            b.peer.clone(),
            subject,
            queue.map(|(q, _)| q),
            queue.map_or(0, |(_, w)| w),
        );
        subs.insert(key, sub.clone());
        drop(subs);
        b.account.insert(sub);
    }

    fn remove_interest(&self, b: &Bound, subject: &[u8], queue: Option<&[u8]>) {
        let key: SubKey = (subject.into(), queue.map(Into::into));
        let removed = self.subs.lock().remove(&key);
        if let Some(sub) = removed {
            b.account.remove(&sub);
        }
    }

    /// Withdraws the other side's interest and stops watching the account.
    fn clear(&self, leafs: &Leafs) {
        let Some(b) = self.bound.lock().take() else {
            return;
        };
        b.account.leaf_connection(false);
        leafs.conns().connection_count_changed(&b.account);
        let w: Arc<dyn InterestWatcher> = b.sent.clone();
        b.account.unwatch(&w);
        let all: Vec<SubRef> = self.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in all {
            b.account.remove(&sub);
        }
    }
}

/// Why a connection ends; the text is logged.
pub(super) struct Closing {
    pub(super) reason: CloseReason,
    pub(super) err: Option<String>,
    pub(super) log: Option<String>,
    /// The other side detected (or this side saw) a loop: wait long before dialling again.
    pub(super) looped: bool,
}

impl Closing {
    fn new(reason: CloseReason, err: Option<&str>, log: impl Into<String>) -> Self {
        Closing {
            reason,
            err: err.map(String::from),
            log: Some(log.into()),
            looped: false,
        }
    }

    fn quiet(reason: CloseReason) -> Self {
        Closing {
            reason,
            err: None,
            log: None,
            looped: false,
        }
    }
}

/// How a connection starts, when something happened before it ran.
#[derive(Default)]
pub(super) struct Start {
    /// Bytes already read from the other side (the hub's INFO, read before TLS).
    pub(super) initial: Vec<u8>,
    /// The hub's INFO already went out, with this cid and nonce.
    pub(super) sent_info: Option<(u64, String)>,
    /// The connection runs over TLS.
    pub(super) tls: bool,
    /// Its outbound side, made before it ran (a WebSocket stream writes close frames for it).
    pub(super) out: Option<Arc<Outbound>>,
}

/// How a connection ended, for the dialler's backoff.
pub(super) struct Ended {
    /// The handshake completed.
    pub(super) was_up: bool,
    pub(super) looped: bool,
}

/// Runs one leafnode connection until it closes. `remote` is set when this server dialled.
pub(super) async fn run<S>(
    leafs: Arc<Leafs>,
    stream: S,
    peer: SocketAddr,
    remote: Option<usize>,
    start: Start,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conns = leafs.conns().clone();
    let (cid, nonce) = match (&start.sent_info, &start.out) {
        (Some((cid, nonce)), _) => (*cid, nonce.clone()),
        (None, Some(out)) => (out.cid, crate::auth::new_nonce()),
        (None, None) => (conns.registry.next_cid(), crate::auth::new_nonce()),
    };
    let out = match &start.out {
        Some(o) => o.clone(),
        None => Outbound::new(cid, peer, conns.max_pending),
    };
    let conn = Arc::new(LeafConn {
        cid,
        out: out.clone(),
        remote,
        start: SystemTime::now(),
        tls: start.tls,
        bound: Mutex::new(None),
        first_info: Mutex::new(None),
        subs: Mutex::new(FxHashMap::default()),
        in_msgs: AtomicU64::new(0),
        in_bytes: AtomicU64::new(0),
    });
    leafs.track(&conn);
    let account_note = remote
        .and_then(|i| leafs.options().remotes.get(i))
        .map(|r| {
            format!(
                " for account: {}",
                r.account
                    .as_deref()
                    .unwrap_or(crate::router::GLOBAL_ACCOUNT)
            )
        })
        .unwrap_or_default();
    tracing::info!("{peer} - lid:{cid} - Leafnode connection created{account_note}");
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = AsyncReadExt::chain(std::io::Cursor::new(start.initial), rd);
    let writer = tokio::spawn(write_loop(out.clone(), wr, conns.clone()));
    if remote.is_none() && start.sent_info.is_none() {
        out.send(&leafs.info_line(cid, Some(&nonce), None));
    }
    let closing = read_loop(&leafs, &conn, &mut rd, peer, &nonce).await;
    if let Some(e) = &closing.err {
        out.send_err(e);
    }
    if let Some(l) = &closing.log {
        tracing::error!("{peer} - lid:{cid} - {l}");
    }
    let was_up = conn.bound.lock().is_some();
    out.close(closing.reason);
    conn.clear(&leafs);
    leafs.closed(&conn);
    let _ = writer.await;
    tracing::info!(
        "{peer} - lid:{cid} - Leafnode connection closed: {}",
        out.close_reason().unwrap_or(closing.reason)
    );
    Ended {
        was_up,
        looped: closing.looped,
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Stage {
    /// Accepted: waiting for the leaf's CONNECT.
    AwaitConnect,
    /// Dialled: waiting for the hub's first INFO.
    AwaitInfo,
    /// Dialled, CONNECT sent: waiting for the hub's INFO that answers it.
    AwaitConnectInfo,
    Up,
}

async fn read_loop(
    leafs: &Arc<Leafs>,
    conn: &Arc<LeafConn>,
    rd: &mut (impl AsyncRead + Unpin),
    peer: SocketAddr,
    nonce: &str,
) -> Closing {
    let out = &conn.out;
    let mut stage = if conn.remote.is_some() {
        Stage::AwaitInfo
    } else {
        Stage::AwaitConnect
    };
    let mut publisher: Option<Publisher> = None;
    let mut deny_in: Vec<Box<[u8]>> = Vec::new();
    let mut buf = ReadBuf::new(MIN_READ, MAX_READ);
    let settings = leafs.conns().settings();
    let every = settings.ping_interval.max(Duration::from_millis(100));
    let ping_max = settings.ping_max.max(1);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings_out = 0u32;
    let handshake = tokio::time::sleep(leafs.options().auth.timeout.max(Duration::from_secs(2)));
    tokio::pin!(handshake);
    let mut shutdown = leafs.conns().shutdown_rx();
    let (mut in_msgs, mut in_bytes) = (0u64, 0u64);
    loop {
        tokio::select! {
            biased;
            _ = out.killed() => {
                return Closing::quiet(out.close_reason().unwrap_or(CloseReason::ServerShutdown));
            }
            _ = shutdown.changed() => return Closing::quiet(CloseReason::ServerShutdown),
            r = buf.read_from(rd) => {
                match r {
                    Ok(0) => return Closing::quiet(CloseReason::ClientClosed),
                    Err(_) => return Closing::quiet(CloseReason::ReadError),
                    Ok(_) => {}
                }
                let mut pos = 0;
                let mut result = Ok(());
                while result.is_ok() {
                    let parsed = match parse_leaf_op(&buf[pos..], MAX_LEAF_PAYLOAD) {
                        Ok(p) => p,
                        Err(e) => {
                            result = Err(parse_error(e));
                            break;
                        }
                    };
                    let (op, len) = match parsed {
                        Parsed::Incomplete { total } => {
                            if let Some(total) = total {
                                let have = buf.len() - pos;
                                buf.reserve(total.saturating_sub(have));
                            }
                            break;
                        }
                        Parsed::Op { op, len } => (op, len),
                    };
                    pos += len;
                    if crate::logging::protocol_trace() {
                        trace_in(conn, &op);
                    }
                    result = match op {
                        LeafOp::Ping => {
                            out.send(encode::PONG);
                            Ok(())
                        }
                        LeafOp::Pong => {
                            pings_out = 0;
                            Ok(())
                        }
                        LeafOp::Ok => Ok(()),
                        LeafOp::Err(text) => {
                            let text = String::from_utf8_lossy(text).into_owned();
                            let looped = text.contains("Loop detected");
                            tracing::error!("{peer} - lid:{} - Leafnode Error {text}", conn.cid);
                            if stage == Stage::Up && !looped {
                                Ok(())
                            } else {
                                // Refused (credentials, loop, wrong port): the hub closes.
                                let mut c = Closing::quiet(CloseReason::ClientClosed);
                                c.looped = looped;
                                Err(c)
                            }
                        }
                        LeafOp::Connect(json) => match stage {
                            Stage::AwaitConnect => {
                                match accept_connect(leafs, conn, json, nonce, peer).await {
                                    Ok((b, deny)) => {
                                        deny_in = deny;
                                        publisher = Some(Publisher::for_leaf(conn.cid, b.peer.clone()));
                                        start_interest(leafs, conn, b);
                                        stage = Stage::Up;
                                        Ok(())
                                    }
                                    Err(c) => Err(c),
                                }
                            }
                            _ => Ok(()),
                        },
                        _ if stage == Stage::AwaitConnect => Err(Closing::new(
                            CloseReason::AuthenticationViolation,
                            Some("Authorization Violation"),
                            "leafnode sent a protocol message before CONNECT",
                        )),
                        LeafOp::Info(json) => {
                            match serde_json::from_slice::<LeafInfo>(json) {
                                Err(e) => Err(Closing::new(
                                    CloseReason::ProtocolViolation,
                                    None,
                                    format!("bad leafnode INFO: {e}"),
                                )),
                                Ok(info) => match stage {
                                    Stage::AwaitInfo => {
                                        match solicit_connect(leafs, conn, &info) {
                                            Err(c) => Err(c),
                                            Ok(()) if info.info_on_connect => {
                                                stage = Stage::AwaitConnectInfo;
                                                Ok(())
                                            }
                                            Ok(()) => {
                                                finish_solicited(leafs, conn, &info).map(|(p, d)| {
                                                    publisher = Some(p);
                                                    deny_in = d;
                                                    stage = Stage::Up;
                                                })
                                            }
                                        }
                                    }
                                    Stage::AwaitConnectInfo if info.connect_info => {
                                        finish_solicited(leafs, conn, &info).map(|(p, d)| {
                                            publisher = Some(p);
                                            deny_in = d;
                                            stage = Stage::Up;
                                        })
                                    }
                                    _ => Ok(()),
                                },
                            }
                        }
                        _ if stage != Stage::Up => Err(Closing::new(
                            CloseReason::ProtocolViolation,
                            None,
                            "leafnode sent interest or messages before the handshake ended",
                        )),
                        LeafOp::Sub { subject, queue } => {
                            let Some(b) = conn.bound() else { continue };
                            if subject.starts_with(super::LDS_PREFIX)
                                && leafs.lds_subject(&b.account.name).as_bytes() == subject
                            {
                                let text = format!(
                                    "Loop detected for leafnode account={:?}. Delaying attempt to reconnect for {:?}",
                                    b.account.name,
                                    super::LOOP_DELAY
                                );
                                let mut c = Closing::new(
                                    CloseReason::ProtocolViolation,
                                    Some(&text),
                                    text.clone(),
                                );
                                c.looped = true;
                                Err(c)
                            } else {
                                if !b.js.blocks(subject) {
                                    conn.add_interest(&b, subject, queue);
                                }
                                Ok(())
                            }
                        }
                        LeafOp::Unsub { subject, queue } => {
                            if let Some(b) = conn.bound() {
                                conn.remove_interest(&b, subject, queue);
                            }
                            Ok(())
                        }
                        LeafOp::Msg { subject, reply, queues, headers, payload } => {
                            in_msgs += 1;
                            in_bytes += (payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
                            if let (Some(b), Some(p)) = (conn.bound(), publisher.as_mut()) {
                                if !deny_in.iter().any(|d| matches(d, subject)) {
                                    let qf = (!queues.is_empty()).then_some(queues);
                                    // `$JS.ACK...@subject`: a JetStream delivery addressed to
                                    // `subject`'s subscribers, presenting the stored subject.
                                    match reply.and_then(js_delivery) {
                                        Some((r, shown)) => {
                                            let m = Msg { subject: shown, reply: Some(r), headers, payload };
                                            p.publish_on(&b.account, subject, &m, qf, None);
                                        }
                                        None => {
                                            let m = Msg { subject, reply, headers, payload };
                                            p.publish_to_queues(&b.account, &m, qf);
                                        }
                                    }
                                }
                            }
                            Ok(())
                        }
                    };
                }
                buf.advance(pos);
                if let Some(p) = publisher.as_mut() {
                    p.end_read().await;
                }
                out.record_in(in_msgs, in_bytes);
                conn.in_msgs.fetch_add(in_msgs, Ordering::Relaxed);
                conn.in_bytes.fetch_add(in_bytes, Ordering::Relaxed);
                leafs.count_in(in_msgs, in_bytes);
                (in_msgs, in_bytes) = (0, 0);
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
                    "leafnode handshake timed out",
                );
            }
        }
    }
}

/// Splits a JetStream delivery's `$JS.ACK...@subject` reply into the ack reply and the stored
/// subject (nats-server splits only replies under `$JS.ACK.`).
fn js_delivery(reply: &[u8]) -> Option<(&[u8], &[u8])> {
    if !reply.starts_with(b"$JS.ACK.") {
        return None;
    }
    let at = reply.iter().rposition(|b| *b == b'@')?;
    (at + 1 < reply.len()).then(|| (&reply[..at], &reply[at + 1..]))
}

/// The hub side: checks the leaf's CONNECT, binds the account and answers with INFO.
async fn accept_connect(
    leafs: &Arc<Leafs>,
    conn: &Arc<LeafConn>,
    json: &[u8],
    nonce: &str,
    peer: SocketAddr,
) -> Result<(Bound, Deny), Closing> {
    let c: LeafConnect = serde_json::from_slice(json).map_err(|e| {
        Closing::new(
            CloseReason::ProtocolViolation,
            Some("Unknown Protocol Operation"),
            format!("bad leafnode CONNECT: {e}"),
        )
    })?;
    if !c.lang.is_empty() {
        return Err(Closing::new(
            CloseReason::WrongPort,
            Some("Attempted To Connect To Leafnode Port"),
            "a client connected to the leafnode port",
        ));
    }
    if !c.gateway.is_empty() {
        let text = format!(
            "Rejecting connection from gateway {:?} on the leafnode port",
            c.gateway
        );
        return Err(Closing::new(
            CloseReason::WrongPort,
            Some(&text),
            text.clone(),
        ));
    }
    if let Some(own) = leafs.cluster_name() {
        if !c.cluster.is_empty() && c.cluster == own {
            return Err(Closing::new(
                CloseReason::ClusterNameConflict,
                Some("Leafnode Cluster Name Same As Local Cluster Name"),
                "leafnode has the same cluster name as this cluster",
            ));
        }
    }
    let account_name = leafs.authorize(&c, nonce, peer).await.map_err(|why| {
        Closing::new(
            CloseReason::AuthenticationViolation,
            Some("Authorization Violation"),
            format!("leafnode authentication failed: {why}"),
        )
    })?;
    let account = leafs.conns().accounts.get(&account_name).ok_or_else(|| {
        Closing::new(
            CloseReason::AuthenticationViolation,
            Some("Authorization Violation"),
            format!("leafnode bound to unknown account {account_name:?}"),
        )
    })?;
    conn.out.set_headers(c.headers);
    let js = leafs.js_deny(&account.name, &c.domain);
    let mut deny_out: Deny = c.deny_pub.iter().map(|s| s.as_bytes().into()).collect();
    deny_out.extend(js.both.iter().chain(&js.out).cloned());
    let peer_info = Arc::new(LeafPeer {
        // A leaf that declares itself the hub makes this side the spoke.
        spoke: c.is_hub,
        cluster: (!c.cluster.is_empty()).then(|| c.cluster.as_bytes().into()),
        deny_out,
    });
    let sent = SentInterest::new(conn.out.clone(), peer_info.clone(), js.both.clone());
    let name = if c.name.is_empty() {
        c.server_id.clone()
    } else {
        c.name.clone()
    };
    conn.out.set_name(&name);
    conn.out
        .send(&leafs.info_line(conn.cid, None, Some(&account.name)));
    let deny_in = js.both.clone();
    let b = Bound {
        account,
        peer: peer_info,
        sent,
        js: Arc::new(js),
        remote_id: c.server_id.clone(),
        remote_name: name,
    };
    tracing::info!(
        "{peer} - lid:{} - Leafnode connection from {:?} bound to account {}",
        conn.cid,
        b.remote_name,
        b.account.name
    );
    Ok((b, deny_in))
}

/// The leaf side, on the hub's first INFO: checks it came from a leafnode port and sends CONNECT.
fn solicit_connect(
    leafs: &Arc<Leafs>,
    conn: &Arc<LeafConn>,
    info: &LeafInfo,
) -> Result<(), Closing> {
    if info.cid == 0 || info.leafnode_urls.is_none() {
        return Err(Closing::new(
            CloseReason::WrongPort,
            None,
            "Attempted To Connect To Route Or Client Port (the remote is not a leafnode port)",
        ));
    }
    conn.out.set_headers(info.headers);
    let remote = &leafs.options().remotes[conn.remote.unwrap_or_default()];
    let mut c = LeafConnect {
        version: crate::util::PROTOCOL_VERSION.to_string(),
        server_id: leafs.conns().identity.id.clone(),
        name: leafs.conns().identity.name.clone(),
        is_hub: remote.hub,
        cluster: leafs.cluster_name().unwrap_or_default(),
        domain: leafs.js_domain(),
        headers: true,
        tls_required: conn.tls,
        deny_pub: remote.deny_imports.clone(),
        ..LeafConnect::default()
    };
    if let Some(path) = &remote.credentials {
        let (jwt, sig) = sign_with_creds(path, &info.nonce).map_err(|e| {
            Closing::new(
                CloseReason::AuthenticationViolation,
                None,
                format!("leafnode credentials: {e}"),
            )
        })?;
        c.jwt = jwt;
        c.sig = sig;
    } else if let Some(url) = leafs.current_url(conn.remote.unwrap_or_default()) {
        c.user = url.user.clone().unwrap_or_default();
        c.pass = url.password.clone().unwrap_or_default();
    }
    let json = serde_json::to_string(&c).unwrap_or_default();
    conn.out.send(format!("CONNECT {json}\r\n").as_bytes());
    let name = if info.server_name.is_empty() {
        info.server_id.clone()
    } else {
        info.server_name.clone()
    };
    conn.out.set_name(&name);
    *conn.first_info.lock() = Some(info.clone());
    Ok(())
}

/// The leaf side, once the hub answered CONNECT: binds the local account and sends interest.
fn finish_solicited(
    leafs: &Arc<Leafs>,
    conn: &Arc<LeafConn>,
    info: &LeafInfo,
) -> Result<(Publisher, Deny), Closing> {
    let remote = &leafs.options().remotes[conn.remote.unwrap_or_default()];
    let name = remote
        .account
        .clone()
        .unwrap_or_else(|| crate::router::GLOBAL_ACCOUNT.to_string());
    let account = leafs.conns().accounts.get(&name).ok_or_else(|| {
        Closing::new(
            CloseReason::ProtocolViolation,
            None,
            format!("Unable to lookup account {name} for solicited leafnode connection"),
        )
    })?;
    let first = conn
        .first_info
        .lock()
        .clone()
        .unwrap_or_else(|| info.clone());
    let js = leafs.js_deny(&account.name, &first.domain);
    let mut deny_out: Deny = remote
        .deny_exports
        .iter()
        .map(|s| s.as_bytes().into())
        .collect();
    deny_out.extend(js.both.iter().chain(&js.out).cloned());
    let peer_info = Arc::new(LeafPeer {
        spoke: !remote.hub,
        cluster: (!first.cluster.is_empty()).then(|| first.cluster.as_bytes().into()),
        deny_out,
    });
    let mut deny_in: Deny = remote
        .deny_imports
        .iter()
        .map(|s| s.as_bytes().into())
        .collect();
    deny_in.extend(js.both.iter().cloned());
    let sent = SentInterest::new(conn.out.clone(), peer_info.clone(), deny_in.clone());
    let b = Bound {
        account,
        peer: peer_info.clone(),
        sent,
        js: Arc::new(js),
        remote_id: first.server_id.clone(),
        remote_name: if first.server_name.is_empty() {
            first.server_id.clone()
        } else {
            first.server_name.clone()
        },
    };
    tracing::info!(
        "{} - lid:{} - Leafnode connection to {:?} up, bound to local account {}",
        conn.out.addr,
        conn.cid,
        b.remote_name,
        b.account.name
    );
    start_interest(leafs, conn, b);
    Ok((Publisher::for_leaf(conn.cid, peer_info), deny_in))
}

/// Records the binding, sends the account's interest (and the loop-detection subject), and
/// keeps sending its changes.
fn start_interest(leafs: &Arc<Leafs>, conn: &Arc<LeafConn>, b: Bound) {
    *conn.bound.lock() = Some(b.clone());
    b.account.leaf_connection(true);
    leafs.conns().connection_count_changed(&b.account);
    leafs.connect_event(&b.account.name);
    let w: Arc<dyn InterestWatcher> = b.sent.clone();
    b.account.watch(w);
    b.sent.force(leafs.lds_subject(&b.account.name).as_bytes());
}

/// Reads a `.creds` file and signs `nonce` with its seed: (user JWT, signature).
fn sign_with_creds(path: &std::path::Path, nonce: &str) -> Result<(String, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = |begin: &str| -> Option<String> {
        let start = text.find(begin)?;
        let rest = &text[start..];
        let body_start = rest.find('\n')? + 1;
        let body = &rest[body_start..];
        let end = body.find("---")?;
        Some(body[..end].trim().to_string())
    };
    let jwt = block("BEGIN NATS USER JWT").ok_or("no user JWT in the credentials file")?;
    let seed = block("BEGIN USER NKEY SEED").ok_or("no user seed in the credentials file")?;
    let kp = nkeys::KeyPair::from_seed(&seed).map_err(|e| format!("bad seed: {e}"))?;
    let sig = kp
        .sign(nonce.as_bytes())
        .map_err(|e| format!("signing the nonce: {e}"))?;
    Ok((
        jwt,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    ))
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
        format!("Leafnode parser error: {e}"),
    )
}

fn trace_in(conn: &LeafConn, op: &LeafOp<'_>) {
    let text = String::from_utf8_lossy;
    let line = match op {
        LeafOp::Msg {
            subject, payload, ..
        } => format!("LMSG {} {}", text(subject), payload.len()),
        LeafOp::Sub { subject, queue } => match queue {
            Some((q, w)) => format!("LS+ {} {} {w}", text(subject), text(q)),
            None => format!("LS+ {}", text(subject)),
        },
        LeafOp::Unsub { subject, .. } => format!("LS- {}", text(subject)),
        LeafOp::Connect(_) => "CONNECT".into(),
        LeafOp::Info(_) => "INFO".into(),
        LeafOp::Ping => "PING".into(),
        LeafOp::Pong => "PONG".into(),
        LeafOp::Ok => "+OK".into(),
        LeafOp::Err(e) => format!("-ERR {}", text(e)),
    };
    tracing::trace!("{} - lid:{} - <<- [{line}]", conn.out.addr, conn.cid);
}

/// The credentials a leaf's CONNECT carries, as the client authenticator takes them.
pub(super) fn credentials_of(c: &LeafConnect) -> Credentials {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Credentials {
        user: opt(&c.user),
        pass: opt(&c.pass),
        token: None,
        nkey: None,
        sig: opt(&c.sig),
        jwt: opt(&c.jwt),
    }
}

/// What the client authenticator needs to know of a leaf's connection.
pub(super) fn conn_auth(nonce: &str, peer: SocketAddr) -> ConnAuth {
    ConnAuth {
        nonce: Some(nonce.to_string()),
        cert: None,
        ip: Some(peer.ip()),
        websocket: false,
    }
}

/// The identity's account name from a verdict (bcrypt checked through the server's limiter).
pub(super) async fn verdict_account(
    leafs: &Leafs,
    v: Verdict,
    peer: SocketAddr,
) -> Result<Option<String>, String> {
    match v {
        Verdict::Accept(id) => Ok(id.account),
        Verdict::Reject(e) => Err(e.to_string()),
        Verdict::Bcrypt {
            hash,
            given,
            identity,
            fail,
        } => {
            if leafs.conns().bcrypt.verify(peer.ip(), hash, given).await {
                Ok(identity.account)
            } else {
                Err(fail.to_string())
            }
        }
    }
}
