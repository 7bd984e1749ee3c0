//! The HTTP monitoring endpoints with nats-server's paths, query parameters and JSON field names
//! (`/varz`, `/connz`, `/subsz`, `/accountz`, `/accstatz`, `/healthz`, `/routez`), and `/metrics`
//! in the Prometheus text format, over HTTP or HTTPS, under `http_base_path`. Everything is
//! computed at request time from live state, so the publish path pays nothing for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use crate::account::{Account, Totals};
use crate::client::{ClientShared, ClientStats, CloseReason};
use crate::options::{PROTOCOL_VERSION, VERSION};
use crate::server::ServerInner;

type Shared = Arc<ServerInner>;

/// `path` under the base path, joined as nats-server does (`/` and `/x/` are `/x`'s root).
fn base_path(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if base.is_empty() || base.starts_with('/') {
        base.to_string()
    } else {
        format!("/{base}")
    };
    match path {
        "/" if !base.is_empty() => base,
        _ => format!("{base}{path}"),
    }
}

/// Serves the monitoring endpoints on `listener` until aborted; with `secure`, each connection
/// first completes a TLS handshake with the server's current certificate.
pub(crate) async fn serve(inner: Shared, listener: TcpListener, secure: bool) {
    let base = inner.opts.http_base_path.clone();
    let at = |p: &str| base_path(&base, p);
    let app = Router::new()
        .route(&at("/"), get(index))
        .route(&at("/varz"), get(varz))
        .route(&at("/connz"), get(connz))
        .route(&at("/subsz"), get(subsz))
        .route(&at("/subscriptionsz"), get(subsz))
        .route(&at("/accountz"), get(accountz))
        .route(&at("/accstatz"), get(accstatz))
        .route(&at("/healthz"), get(healthz))
        .route(&at("/routez"), get(routez))
        .route(&at("/jsz"), get(jsz))
        .route(&at("/metrics"), get(metrics))
        .with_state(inner.clone());
    let result = if secure {
        let tls = TlsListener {
            tcp: listener,
            server: inner,
            handshakes: JoinSet::new(),
        };
        axum::serve(tls, app).await
    } else {
        axum::serve(listener, app).await
    };
    if let Err(e) = result {
        tracing::error!("monitor stopped: {e}");
    }
}

/// Accepts HTTPS monitoring connections: handshakes run concurrently (bounded by `tls.timeout`)
/// so a client that stalls its handshake holds up nobody else. Dropped with the server task,
/// which cancels the handshakes in progress.
struct TlsListener {
    tcp: TcpListener,
    server: Shared,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // The current certificate: a reload that rotates it applies here too.
                        let Some(tls) = self.server.tls_server() else {
                            continue;
                        };
                        let acceptor = tls.monitor_acceptor();
                        let timeout = tls.opts.timeout;
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => Some((s, peer)),
                                Ok(Err(e)) => {
                                    tracing::debug!("{peer} - https monitor TLS handshake error: {e}");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!("{peer} - https monitor TLS handshake timeout");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::error!("Error accepting monitor connection: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

use crate::timefmt::rfc3339;

pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// The STATSZ document of `$SYS.REQ.SERVER.PING`.
pub(crate) fn statsz_json(s: &ServerInner) -> Value {
    let clients = s.clients();
    let t = server_totals(s, &clients);
    let (mem, cpu) = process_usage(since(s.start));
    let accounts = s.accounts();
    let active = accounts
        .iter()
        .filter(|a| account_usage(a, &clients).0 > 0)
        .count();
    json!({
        "start": rfc3339(s.start),
        "mem": mem,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "connections": clients.len(),
        "total_connections": s.total_connections.load(Ordering::Relaxed),
        "active_accounts": active,
        "subscriptions": accounts.iter().map(|a| a.subscription_count()).sum::<usize>(),
        "sent": {"msgs": t.out_msgs, "bytes": t.out_bytes},
        "received": {"msgs": t.in_msgs, "bytes": t.in_bytes},
        "slow_consumers": s.slow_consumers.load(Ordering::Relaxed),
        "routes": [],
        "gateways": [],
    })
}

/// Go-style duration text as nats-server prints uptimes and idle times: `1d2h3m4s`.
fn uptime(d: Duration) -> String {
    let mut s = d.as_secs();
    let days = s / 86_400;
    s %= 86_400;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if days > 0 {
        out += &format!("{days}d");
    }
    if days > 0 || h > 0 {
        out += &format!("{h}h");
    }
    if days > 0 || h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    out += &format!("{sec}s");
    out
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// One connection as `/connz` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    pub cid: u64,
    pub kind: &'static str,
    #[serde(rename = "type")]
    pub conn_type: &'static str,
    pub ip: String,
    pub port: u16,
    pub start: String,
    pub last_activity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub uptime: String,
    pub idle: String,
    pub pending_bytes: usize,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub subscriptions: usize,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lang: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `1.2`/`1.3` for TLS connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher_suite: Option<String>,
    /// The client's certificates; with `auth=1` only, as nats-server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_peer_certs: Option<Vec<crate::tls::PeerCert>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_first: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions_list: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions_list_detail: Option<Vec<Value>>,
    /// Not serialized: kept to answer `auth=1`, `subs=1` and sorting for closed connections.
    #[serde(skip)]
    meta_user: Option<String>,
    #[serde(skip)]
    meta_account: String,
    #[serde(skip)]
    meta_tls: Option<Arc<crate::tls::TlsConnInfo>>,
    #[serde(skip)]
    subs: Vec<(String, Option<String>, String)>,
    #[serde(skip)]
    started: SystemTime,
    #[serde(skip)]
    last: SystemTime,
}

/// Snapshots a connection (live or just closed).
pub(crate) fn conn_info(
    c: &ClientShared,
    stats: &ClientStats,
    closed: bool,
    reason: Option<CloseReason>,
) -> ConnInfo {
    let meta = c.meta.lock().clone();
    let last = c.last_activity();
    let now = SystemTime::now();
    ConnInfo {
        cid: c.cid,
        kind: "Client",
        conn_type: "nats",
        ip: c.addr.ip().to_string(),
        port: c.addr.port(),
        start: rfc3339(c.start),
        last_activity: rfc3339(last),
        stop: closed.then(|| rfc3339(now)),
        reason: if closed {
            reason.map(|r| r.to_string())
        } else {
            None
        },
        uptime: uptime(since(c.start)),
        idle: uptime(since(last)),
        pending_bytes: stats.pending_bytes,
        in_msgs: stats.in_msgs,
        out_msgs: stats.out_msgs,
        in_bytes: stats.in_bytes,
        out_bytes: stats.out_bytes,
        subscriptions: stats.subscriptions,
        name: meta.name,
        lang: meta.lang,
        version: meta.version,
        tls_version: meta.tls.as_ref().map(|t| t.version.clone()),
        tls_cipher_suite: meta.tls.as_ref().map(|t| t.cipher_suite.clone()),
        tls_peer_certs: None,
        tls_first: meta.tls.as_ref().is_some_and(|t| t.first),
        authorized_user: None,
        account: None,
        subscriptions_list: None,
        subscriptions_list_detail: None,
        meta_user: meta.user,
        meta_account: meta.account,
        meta_tls: meta.tls,
        subs: if closed {
            Vec::new()
        } else {
            c.subscription_list()
        },
        started: c.start,
        last,
    }
}

/// Links to the endpoints, under the base path.
async fn index(State(s): State<Shared>) -> Html<String> {
    let items: String = [
        "varz", "connz", "subsz", "accountz", "accstatz", "jsz", "healthz", "routez", "metrics",
    ]
    .iter()
    .map(|e| {
        let href = base_path(&s.opts.http_base_path, &format!("/{e}"));
        format!("<li><a href={href}>{e}</a></li>")
    })
    .collect();
    Html(format!(
        "<html><body><h1>natrium</h1><ul>{items}</ul></body></html>"
    ))
}

/// Resident memory (bytes) and average CPU percentage since start, from /proc.
fn process_usage(uptime: Duration) -> (u64, f64) {
    let page = 4096u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * page);
    let cpu_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = match cpu_ticks {
        Some(t) if uptime.as_secs_f64() > 0.0 => (t as f64 / hz) / uptime.as_secs_f64() * 100.0,
        _ => 0.0,
    };
    (rss, (cpu * 10.0).round() / 10.0)
}

/// Server-wide totals: closed clients plus live ones.
fn server_totals(s: &ServerInner, clients: &[Arc<ClientShared>]) -> Totals {
    let mut t = *s.closed_totals.lock();
    for c in clients {
        t.add(&c.stats());
    }
    t
}

async fn varz(State(s): State<Shared>) -> Json<Value> {
    Json(varz_json(&s))
}

/// The `/varz` document (also answered on `$SYS.REQ.SERVER.PING.VARZ`).
pub(crate) fn varz_json(s: &ServerInner) -> Value {
    let current = s.current_options();
    let o = &current;
    let clients = s.clients();
    let t = server_totals(s, &clients);
    let up = since(s.start);
    let (mem, cpu) = process_usage(up);
    let subs: usize = s.accounts().iter().map(|a| a.subscription_count()).sum();
    let tls = s.tls_server();
    let mut v = json!({
        "server_id": s.id,
        "server_name": s.name,
        "version": PROTOCOL_VERSION,
        "natrium_version": VERSION,
        "proto": 1,
        "go": format!("natrium {VERSION}"),
        "host": o.host,
        "port": s.port,
        "auth_required": s.auth.required(),
        "max_connections": o.max_connections,
        "ping_interval": o.ping_interval.as_nanos() as u64,
        "ping_max": o.ping_max,
        "http_host": o.http_host,
        "http_port": s.http_port.lock().unwrap_or(0),
        "https_port": s.https_port.lock().unwrap_or(0),
        "auth_timeout": o.auth_timeout.as_secs_f64(),
        "max_control_line": o.max_control_line,
        "max_payload": o.max_payload,
        "max_pending": o.max_pending,
        "write_deadline": o.write_deadline.as_nanos() as u64,
        "start": rfc3339(s.start),
        "now": rfc3339(SystemTime::now()),
        "uptime": uptime(up),
        "mem": mem,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "connections": clients.len(),
        "total_connections": s.total_connections.load(Ordering::Relaxed),
        "routes": 0,
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": t.in_msgs,
        "out_msgs": t.out_msgs,
        "in_bytes": t.in_bytes,
        "out_bytes": t.out_bytes,
        "slow_consumers": s.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": subs,
        "system_account": o.system_account,
        "config_load_time": rfc3339(s.start),
        "jetstream": jetstream_summary(s),
    });
    // Set here: the `json!` above is at the macro's recursion limit.
    v["http_base_path"] = json!(o.http_base_path);
    v["tls_timeout"] = json!(tls.as_ref().map_or(2.0, |t| t.opts.timeout.as_secs_f64()));
    // As nats-server, the TLS flags and the certificate's expiry appear only with TLS on.
    if let Some(t) = &tls {
        v["tls_required"] = json!(true);
        if t.verify() {
            v["tls_verify"] = json!(true);
        }
        if let Some(exp) = t.not_after {
            v["tls_cert_not_after"] = json!(rfc3339(exp));
        }
    }
    v
}

/// JetStream's section of `/varz` and the body of `/jsz`: `{}` when JetStream is off.
fn jetstream_summary(s: &ServerInner) -> Value {
    let Some(js) = s.jetstream.lock().clone() else {
        return json!({});
    };
    let o = s.opts.jetstream.clone().unwrap_or_default();
    json!({
        "config": {
            "max_memory": o.max_memory,
            "max_storage": o.max_file,
            "store_dir": o.store_dir,
            "sync_always": matches!(o.sync, natrium_store::SyncPolicy::Always),
        },
        "stats": js.usage(),
    })
}

async fn jsz(State(s): State<Shared>) -> Response {
    if s.opts.jetstream.is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "JetStream not enabled").into_response();
    }
    let mut v = jetstream_summary(&s);
    v["server_id"] = json!(s.id);
    v["now"] = json!(now_rfc3339());
    Json(v).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ConnzQuery {
    pub(crate) subs: Option<String>,
    pub(crate) sort: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) offset: Option<usize>,
    pub(crate) state: Option<String>,
    pub(crate) cid: Option<u64>,
    pub(crate) auth: Option<String>,
    pub(crate) acc: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "detail"))
}

async fn connz(State(s): State<Shared>, Query(q): Query<ConnzQuery>) -> Response {
    reply(connz_json(&s, &q))
}

type Answer = Result<Value, (StatusCode, String)>;

fn reply(a: Answer) -> Response {
    match a {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The `/connz` document.
pub(crate) fn connz_json(s: &ServerInner, q: &ConnzQuery) -> Answer {
    let state = q.state.as_deref().unwrap_or("open");
    let mut conns: Vec<ConnInfo> = Vec::new();
    if matches!(state, "open" | "all") {
        conns.extend(
            s.clients()
                .iter()
                .map(|c| conn_info(c, &c.stats(), false, None)),
        );
    }
    if matches!(state, "closed" | "all") {
        conns.extend(s.closed_conns.lock().iter().cloned());
    }
    if !matches!(state, "open" | "closed" | "all") {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("invalid connection state {state:?}"),
        ));
    }
    if let Some(cid) = q.cid {
        conns.retain(|c| c.cid == cid);
    }
    if let Some(acc) = &q.acc {
        conns.retain(|c| &c.meta_account == acc);
    }
    let sort = q.sort.as_deref().unwrap_or("cid");
    match sort {
        "cid" => conns.sort_by_key(|c| c.cid),
        "start" => conns.sort_by_key(|c| c.started),
        "subs" => conns.sort_by_key(|c| std::cmp::Reverse(c.subscriptions)),
        "pending" => conns.sort_by_key(|c| std::cmp::Reverse(c.pending_bytes)),
        "msgs_to" | "out_msgs" => conns.sort_by_key(|c| std::cmp::Reverse(c.out_msgs)),
        "msgs_from" | "in_msgs" => conns.sort_by_key(|c| std::cmp::Reverse(c.in_msgs)),
        "bytes_to" | "out_bytes" => conns.sort_by_key(|c| std::cmp::Reverse(c.out_bytes)),
        "bytes_from" | "in_bytes" => conns.sort_by_key(|c| std::cmp::Reverse(c.in_bytes)),
        "last" => conns.sort_by_key(|c| std::cmp::Reverse(c.last)),
        "idle" => conns.sort_by_key(|c| c.last),
        "uptime" => conns.sort_by_key(|c| c.started),
        "stop" | "reason" if state != "open" => conns.sort_by_key(|c| c.stop.clone()),
        other => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("invalid sorting option {other:?}"),
            ))
        }
    }
    let total = conns.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(1024);
    let auth = truthy(&q.auth);
    let detail = q.subs.as_deref() == Some("detail");
    let subs = truthy(&q.subs);
    let page: Vec<ConnInfo> = conns
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|mut c| {
            if auth {
                c.authorized_user = c.meta_user.clone();
                c.account = Some(c.meta_account.clone());
                c.tls_peer_certs = c
                    .meta_tls
                    .as_ref()
                    .filter(|t| !t.peer_certs.is_empty())
                    .map(|t| t.peer_certs.clone());
            }
            if detail {
                c.subscriptions_list_detail = Some(
                    c.subs
                        .iter()
                        .map(|(subject, queue, sid)| {
                            json!({"account": c.meta_account, "subject": subject, "qgroup": queue, "sid": sid, "cid": c.cid})
                        })
                        .collect(),
                );
            } else if subs {
                c.subscriptions_list = Some(c.subs.iter().map(|(subject, _, _)| subject.clone()).collect());
            }
            c
        })
        .collect();
    Ok(json!({
        "server_id": s.id,
        "now": rfc3339(SystemTime::now()),
        "num_connections": page.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": page,
    }))
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct SubszQuery {
    pub(crate) subs: Option<String>,
    pub(crate) offset: Option<usize>,
    pub(crate) limit: Option<usize>,
    pub(crate) test: Option<String>,
    pub(crate) acc: Option<String>,
}

async fn subsz(State(s): State<Shared>, Query(q): Query<SubszQuery>) -> Response {
    reply(subsz_json(&s, &q))
}

/// The `/subsz` document.
pub(crate) fn subsz_json(s: &ServerInner, q: &SubszQuery) -> Answer {
    if let Some(t) = &q.test {
        if !natrium_subjects::is_valid_publish_subject(t.as_bytes()) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("invalid test subject {t:?}"),
            ));
        }
    }
    let mut list = Vec::new();
    let mut count = 0;
    for a in s.accounts() {
        if q.acc.as_ref().is_some_and(|acc| acc != &a.name) {
            continue;
        }
        count += a.subscription_count();
        for (subject, queue, cid) in a.subscriptions() {
            if let Some(t) = &q.test {
                if !natrium_subjects::matches(subject.as_bytes(), t.as_bytes()) {
                    continue;
                }
            }
            list.push(json!({"account": a.name, "subject": subject, "qgroup": queue, "cid": cid}));
        }
    }
    let total = list.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(1024);
    let mut body = json!({
        "server_id": s.id,
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": count,
        "total": total,
        "offset": offset,
        "limit": limit,
    });
    if truthy(&q.subs) || q.test.is_some() {
        body["subscriptions_list"] =
            Value::Array(list.into_iter().skip(offset).take(limit).collect());
    }
    Ok(body)
}

/// Live plus closed traffic and connection counts of one account.
fn account_usage(a: &Account, clients: &[Arc<ClientShared>]) -> (usize, Totals) {
    let mut t = *a.closed_totals.lock();
    let mut conns = 0;
    for c in clients.iter().filter(|c| c.meta.lock().account == a.name) {
        conns += 1;
        t.add(&c.stats());
    }
    (conns, t)
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AccQuery {
    pub(crate) acc: Option<String>,
    pub(crate) unused: Option<String>,
}

async fn accountz(State(s): State<Shared>, Query(q): Query<AccQuery>) -> Response {
    reply(accountz_json(&s, &q))
}

/// The `/accountz` document.
pub(crate) fn accountz_json(s: &ServerInner, q: &AccQuery) -> Answer {
    let now = rfc3339(SystemTime::now());
    if let Some(name) = &q.acc {
        let Some(a) = s.account(name) else {
            return Err((StatusCode::NOT_FOUND, format!("account {name:?} not found")));
        };
        let clients = s.clients();
        let (conns, _) = account_usage(&a, &clients);
        return Ok(json!({
            "server_id": s.id,
            "now": now,
            "system_account": s.opts.system_account,
            "account_detail": {
                "account_name": a.name,
                "is_system": a.name == s.opts.system_account,
                "num_connections": conns,
                "subscriptions": a.subscription_count(),
                "auth_failures": a.auth_failures.load(Ordering::Relaxed),
                "permission_violations": a.permission_violations.load(Ordering::Relaxed),
            }
        }));
    }
    let names: Vec<String> = s.accounts().iter().map(|a| a.name.clone()).collect();
    Ok(
        json!({"server_id": s.id, "now": now, "system_account": s.opts.system_account, "accounts": names}),
    )
}

async fn accstatz(State(s): State<Shared>, Query(q): Query<AccQuery>) -> Json<Value> {
    Json(accstatz_json(&s, &q))
}

/// The `/accstatz` document.
pub(crate) fn accstatz_json(s: &ServerInner, q: &AccQuery) -> Value {
    let clients = s.clients();
    let include_unused = truthy(&q.unused);
    let stats: Vec<Value> = s
        .accounts()
        .iter()
        .filter(|a| q.acc.as_ref().is_none_or(|n| n == &a.name))
        .filter_map(|a| {
            let (conns, t) = account_usage(a, &clients);
            if conns == 0 && !include_unused && q.acc.is_none() {
                return None;
            }
            Some(json!({
                "acc": a.name,
                "conns": conns,
                "leafnodes": 0,
                "total_conns": conns,
                "num_subscriptions": a.subscription_count(),
                "sent": {"msgs": t.out_msgs, "bytes": t.out_bytes},
                "received": {"msgs": t.in_msgs, "bytes": t.in_bytes},
                "slow_consumers": a.slow_consumers.load(Ordering::Relaxed),
            }))
        })
        .collect();
    json!({"server_id": s.id, "now": rfc3339(SystemTime::now()), "account_statz": stats})
}

/// `/healthz`: ok, or 503 with the reason when JetStream is enabled but cannot write its store
/// directory. `js-enabled-only` and `js-server-only` restrict the check to JetStream.
async fn healthz(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let js_only = q.contains_key("js-enabled-only") || q.contains_key("js-server-only");
    let flag = |k: &str| q.get(k).is_some_and(|v| v != "false" && v != "0");
    if js_only && s.opts.jetstream.is_none() && flag("js-enabled-only") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": "JetStream not enabled"})),
        )
            .into_response();
    }
    if let Some(js) = &s.opts.jetstream {
        if let Err(e) = crate::jetstream::check_store_writable(&js.store_dir) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "error": format!("JetStream store directory not writable: {e}")})),
            )
                .into_response();
        }
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn routez(State(s): State<Shared>) -> Json<Value> {
    Json(
        json!({"server_id": s.id, "now": rfc3339(SystemTime::now()), "num_routes": 0, "routes": []}),
    )
}

/// Reads live state at scrape time; label cardinality is per account only.
#[derive(Debug)]
struct NatriumCollector {
    server: Shared,
}

impl std::fmt::Debug for ServerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerInner").field("id", &self.id).finish()
    }
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

type PerAccount = Vec<(String, f64)>;

fn per_account(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &PerAccount,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (acc, v) in rows {
        let labels = [("account", acc.as_str())];
        let fam = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*v as u64).encode(fam)?,
            _ => ConstGauge::new(*v).encode(fam)?,
        }
    }
    Ok(())
}

impl Collector for NatriumCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.server;
        let clients = s.clients();
        let t = server_totals(s, &clients);
        let up = since(s.start);
        let (mem, _) = process_usage(up);
        gauge(
            &mut enc,
            "natrium_uptime_seconds",
            "Seconds since the server started",
            up.as_secs_f64(),
        )?;
        gauge(
            &mut enc,
            "natrium_resident_memory_bytes",
            "Resident memory of the server process",
            mem as f64,
        )?;
        gauge(
            &mut enc,
            "natrium_connections",
            "Open client connections",
            clients.len() as f64,
        )?;
        counter(
            &mut enc,
            "natrium_connections_opened",
            "Client connections accepted since start",
            s.total_connections.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "natrium_in_msgs",
            "Messages received from clients",
            t.in_msgs,
        )?;
        counter(
            &mut enc,
            "natrium_out_msgs",
            "Messages delivered to clients",
            t.out_msgs,
        )?;
        counter(
            &mut enc,
            "natrium_in_bytes",
            "Payload bytes received from clients",
            t.in_bytes,
        )?;
        counter(
            &mut enc,
            "natrium_out_bytes",
            "Payload bytes delivered to clients",
            t.out_bytes,
        )?;
        counter(
            &mut enc,
            "natrium_slow_consumers",
            "Clients disconnected as slow consumers",
            s.slow_consumers.load(Ordering::Relaxed),
        )?;

        let accounts = s.accounts();
        let mut rows: [PerAccount; 10] = Default::default();
        for a in &accounts {
            let (conns, at) = account_usage(a, &clients);
            let n = a.name.clone();
            rows[0].push((n.clone(), conns as f64));
            rows[1].push((n.clone(), a.subscription_count() as f64));
            rows[2].push((n.clone(), at.in_msgs as f64));
            rows[3].push((n.clone(), at.out_msgs as f64));
            rows[4].push((n.clone(), at.in_bytes as f64));
            rows[5].push((n.clone(), at.out_bytes as f64));
            rows[6].push((n.clone(), a.slow_consumers.load(Ordering::Relaxed) as f64));
            rows[7].push((n.clone(), a.auth_failures.load(Ordering::Relaxed) as f64));
            rows[8].push((
                n.clone(),
                a.permission_violations.load(Ordering::Relaxed) as f64,
            ));
            rows[9].push((n, a.total_connections.load(Ordering::Relaxed) as f64));
        }
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        let defs: [(&str, &str, MetricType); 10] = [
            (
                "natrium_account_connections",
                "Open connections per account",
                g,
            ),
            (
                "natrium_account_subscriptions",
                "Subscriptions per account",
                g,
            ),
            (
                "natrium_account_in_msgs",
                "Messages received from clients per account",
                c,
            ),
            (
                "natrium_account_out_msgs",
                "Messages delivered to clients per account",
                c,
            ),
            (
                "natrium_account_in_bytes",
                "Payload bytes received per account",
                c,
            ),
            (
                "natrium_account_out_bytes",
                "Payload bytes delivered per account",
                c,
            ),
            (
                "natrium_account_slow_consumers",
                "Slow consumers per account",
                c,
            ),
            (
                "natrium_account_auth_failures",
                "Failed authentications per account",
                c,
            ),
            (
                "natrium_account_permission_violations",
                "Permission violations per account",
                c,
            ),
            (
                "natrium_account_connections_opened",
                "Connections accepted per account",
                c,
            ),
        ];
        for ((name, help, kind), rows) in defs.into_iter().zip(rows.iter()) {
            per_account(&mut enc, name, help, kind, rows)?;
        }
        let js = s.jetstream.lock().clone();
        if let Some(js) = js {
            encode_jetstream(&mut enc, &js.stream_stats())?;
        }
        Ok(())
    }
}

/// JetStream series, labelled by account and stream (and consumer).
fn encode_jetstream(
    enc: &mut DescriptorEncoder,
    stats: &[crate::jetstream::StreamStats],
) -> Result<(), std::fmt::Error> {
    type Row<'a> = (&'a crate::jetstream::StreamStats, f64);
    type StreamSeries = (
        &'static str,
        &'static str,
        fn(&crate::jetstream::StreamStats) -> f64,
    );
    type ConsumerSeries = (
        &'static str,
        &'static str,
        fn(&crate::jetstream::ConsumerStats) -> u64,
    );
    let stream_series: [StreamSeries; 4] = [
        (
            "natrium_jetstream_stream_messages",
            "Messages stored in the stream",
            |s| s.messages as f64,
        ),
        (
            "natrium_jetstream_stream_bytes",
            "Bytes stored in the stream (storage used)",
            |s| s.bytes as f64,
        ),
        (
            "natrium_jetstream_stream_last_seq",
            "Last sequence of the stream",
            |s| s.last_seq as f64,
        ),
        (
            "natrium_jetstream_stream_consumers",
            "Consumers of the stream",
            |s| s.consumers.len() as f64,
        ),
    ];
    for (name, help, f) in stream_series {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        let rows: Vec<Row> = stats.iter().map(|s| (s, f(s))).collect();
        for (s, v) in rows {
            let labels = [
                ("account", s.account.as_str()),
                ("stream", s.stream.as_str()),
                ("storage", s.storage),
            ];
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
    }
    let consumer_series: [ConsumerSeries; 4] = [
        (
            "natrium_jetstream_consumer_num_pending",
            "Messages not yet delivered to the consumer (lag)",
            |c| c.num_pending,
        ),
        (
            "natrium_jetstream_consumer_num_ack_pending",
            "Messages delivered and awaiting acknowledgement",
            |c| c.num_ack_pending,
        ),
        (
            "natrium_jetstream_consumer_num_redelivered",
            "Pending messages delivered more than once",
            |c| c.num_redelivered,
        ),
        (
            "natrium_jetstream_consumer_num_waiting",
            "Pull requests waiting",
            |c| c.num_waiting,
        ),
    ];
    for (name, help, f) in consumer_series {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for s in stats {
            for c in &s.consumers {
                let labels = [
                    ("account", s.account.as_str()),
                    ("stream", s.stream.as_str()),
                    ("consumer", c.name.as_str()),
                ];
                ConstGauge::new(f(c) as f64).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

async fn metrics(State(s): State<Shared>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NatriumCollector { server: s }));
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_path_joins_like_nats_server() {
        assert_eq!(base_path("", "/"), "/");
        assert_eq!(base_path("/", "/varz"), "/varz");
        assert_eq!(base_path("mon", "/varz"), "/mon/varz");
        assert_eq!(base_path("/mon/", "/"), "/mon");
        assert_eq!(base_path("/a/b", "/connz"), "/a/b/connz");
    }

    #[test]
    fn uptime_like_nats_server() {
        assert_eq!(uptime(Duration::from_secs(5)), "5s");
        assert_eq!(uptime(Duration::from_secs(65)), "1m5s");
        assert_eq!(uptime(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d1h1m1s");
    }
}
