//! The HTTP monitoring endpoints with nats-server's paths and query parameters (`/varz`,
//! `/connz`, `/subsz`, `/accountz`, `/accstatz`, `/healthz`, `/routez`, `/jsz`; the documents
//! come from `observe`), and `/metrics` in the Prometheus text format, over HTTP or HTTPS, under
//! `http_base_path`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use crate::observe::{self, AccQuery, Answer, ConnzQuery, Observed, SubszQuery};
use crate::util::time::since;

type Shared = Arc<Observed>;

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
pub async fn serve(inner: Shared, listener: TcpListener, secure: bool) {
    let base = inner.options.lock().http_base_path.clone();
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
        .route(&at("/gatewayz"), get(gatewayz))
        .route(&at("/leafz"), get(leafz))
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
                        let Some(tls) = self.server.conns.tls_server() else {
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

/// Links to the endpoints, under the base path.
async fn index(State(s): State<Shared>) -> Html<String> {
    s.count_request("/");
    let base = s.options.lock().http_base_path.clone();
    let items: String = [
        "varz", "connz", "routez", "gatewayz", "leafz", "subsz", "accountz", "accstatz", "jsz",
        "healthz", "metrics",
    ]
    .iter()
    .map(|e| {
        let href = base_path(&base, &format!("/{e}"));
        format!("<li><a href={href}>{e}</a></li>")
    })
    .collect();
    Html(format!(
        "<html><body><h1>natrium</h1><ul>{items}</ul></body></html>"
    ))
}

fn reply(a: Answer) -> Response {
    match a {
        Ok(v) => Json(v).into_response(),
        Err(e) => (status(e.status), e.text).into_response(),
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

// Each endpoint counts its requests under nats-server's path for `http_req_stats` (without
// the base path, as nats-server).

async fn varz(State(s): State<Shared>) -> Json<Value> {
    s.count_request("/varz");
    Json(observe::varz(&s))
}

async fn jsz(State(s): State<Shared>, Query(q): Query<observe::JszParams>) -> Response {
    s.count_request("/jsz");
    reply(observe::jsz(&s, &q))
}

async fn connz(State(s): State<Shared>, Query(q): Query<ConnzQuery>) -> Response {
    s.count_request("/connz");
    reply(observe::connz(&s, &q))
}

async fn subsz(State(s): State<Shared>, Query(q): Query<SubszQuery>) -> Response {
    s.count_request("/subsz");
    reply(observe::subsz(&s, &q))
}

async fn accountz(State(s): State<Shared>, Query(q): Query<AccQuery>) -> Response {
    s.count_request("/accountz");
    reply(observe::accountz(&s, &q))
}

async fn accstatz(State(s): State<Shared>, Query(q): Query<AccQuery>) -> Json<Value> {
    s.count_request("/accstatz");
    Json(observe::accstatz(&s, &q))
}

async fn healthz(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    s.count_request("/healthz");
    let (code, body) = observe::healthz(&s, &q);
    (status(code), Json(body)).into_response()
}

async fn routez(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    s.count_request("/routez");
    let subs = q
        .get("subs")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "detail"));
    Json(observe::routez(&s, subs))
}

async fn gatewayz(State(s): State<Shared>) -> Json<Value> {
    s.count_request("/gatewayz");
    Json(observe::gatewayz(&s))
}

async fn leafz(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    s.count_request("/leafz");
    let subs = q
        .get("subs")
        .is_some_and(|v| v == "1" || v == "true" || v == "detail");
    Json(observe::leafz(&s, subs, q.get("acc").map(String::as_str)))
}

/// Reads live state at scrape time; label cardinality is per account only.
#[derive(Debug)]
struct NatriumCollector {
    server: Shared,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").field("id", &self.id()).finish()
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

/// The publish rate limits of the accounts that have them, and the time each account's
/// publishers were held back by them (in seconds, counted for every account).
fn encode_rates(
    enc: &mut DescriptorEncoder,
    accounts: &[Arc<crate::router::Account>],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "natrium_account_throttled_seconds",
        "Time publishers of the account waited for its publish rate limits",
        None,
        MetricType::Counter,
    )?;
    for a in accounts {
        let ns = a.rates.throttled_ns.load(Ordering::Relaxed);
        let labels = [("account", a.name.as_str())];
        ConstCounter::new(ns as f64 / 1e9).encode(m.encode_family(&labels)?)?;
    }
    let limits: Vec<_> = accounts.iter().map(|a| (a, a.limits())).collect();
    for (name, help, pick) in [
        (
            "natrium_account_max_msgs_per_second",
            "Publish rate limit of the account in messages per second",
            (|l: &crate::router::Limits| l.max_msgs_per_sec) as fn(&_) -> _,
        ),
        (
            "natrium_account_max_bytes_per_second",
            "Publish rate limit of the account in payload bytes per second",
            |l: &crate::router::Limits| l.max_bytes_per_sec,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (a, l) in &limits {
            if let Some(v) = pick(l) {
                let labels = [("account", a.name.as_str())];
                ConstGauge::new(v as f64).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

impl Collector for NatriumCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.server;
        let reg = &s.conns.registry;
        let clients = reg.clients();
        let t = s.totals(&clients);
        let up = since(s.start);
        let mem = observe::memory();
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
        gauge(
            &mut enc,
            "natrium_websocket_connections",
            "Open client connections through the WebSocket listener (counted in natrium_connections too)",
            clients.iter().filter(|c| c.is_websocket()).count() as f64,
        )?;
        counter(
            &mut enc,
            "natrium_connections_opened",
            "Client connections accepted since start",
            reg.total_connections.load(Ordering::Relaxed),
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
            reg.slow_consumers.load(Ordering::Relaxed),
        )?;

        let accounts = s.conns.accounts.list();
        let mut rows: [PerAccount; 10] = Default::default();
        for a in &accounts {
            let (conns, at) = observe::account_usage(a, &clients);
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
        encode_rates(&mut enc, &accounts)?;
        if let Some(mesh) = s.mesh.lock().clone() {
            encode_routes(&mut enc, &mesh.routes())?;
        }
        if let Some(leafs) = s.leafs.lock().clone() {
            encode_leafs(&mut enc, &leafs)?;
        }
        if let Some(js) = &s.jetstream {
            encode_jetstream(&mut enc, &js.stream_stats())?;
        }
        Ok(())
    }
}

/// Route series, labelled by the peer's server name (as many as the cluster has servers).
fn encode_routes(
    enc: &mut DescriptorEncoder,
    routes: &[Arc<crate::cluster::Route>],
) -> Result<(), std::fmt::Error> {
    gauge(
        enc,
        "natrium_routes",
        "Peer servers with a route up",
        routes.len() as f64,
    )?;
    type Series = (
        &'static str,
        &'static str,
        MetricType,
        fn(&crate::cluster::Route) -> f64,
    );
    let series: [Series; 6] = [
        (
            "natrium_route_in_msgs",
            "Messages received from the peer",
            MetricType::Counter,
            |r| r.out.stats().in_msgs as f64,
        ),
        (
            "natrium_route_out_msgs",
            "Messages sent to the peer",
            MetricType::Counter,
            |r| r.out.stats().out_msgs as f64,
        ),
        (
            "natrium_route_in_bytes",
            "Payload bytes received from the peer",
            MetricType::Counter,
            |r| r.out.stats().in_bytes as f64,
        ),
        (
            "natrium_route_out_bytes",
            "Payload bytes sent to the peer",
            MetricType::Counter,
            |r| r.out.stats().out_bytes as f64,
        ),
        (
            "natrium_route_pending_bytes",
            "Bytes waiting to be written to the peer",
            MetricType::Gauge,
            |r| r.out.stats().pending_bytes as f64,
        ),
        (
            "natrium_route_subscriptions",
            "The peer's interest held here",
            MetricType::Gauge,
            |r| r.num_subs() as f64,
        ),
    ];
    for (name, help, kind, f) in series {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        for r in routes {
            let remote = r
                .remote()
                .map(|i| {
                    if i.server_name.is_empty() {
                        i.server_id
                    } else {
                        i.server_name
                    }
                })
                .unwrap_or_default();
            let labels = [("remote", remote.as_str())];
            let fam = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(f(r) as u64).encode(fam)?,
                _ => ConstGauge::new(f(r)).encode(fam)?,
            }
        }
    }
    Ok(())
}

/// Leafnode series: the totals, and per connection labelled by the other server's name and the
/// bound account.
fn encode_leafs(
    enc: &mut DescriptorEncoder,
    leafs: &crate::leaf::Leafs,
) -> Result<(), std::fmt::Error> {
    let t = leafs.totals();
    gauge(
        enc,
        "natrium_leafnodes",
        "Leafnode connections up (either side)",
        t.connections as f64,
    )?;
    let conns: Vec<_> = leafs
        .connections()
        .into_iter()
        .filter_map(|c| c.bound().map(|b| (c, b)))
        .collect();
    type Row<'a> = &'a (Arc<crate::leaf::LeafConn>, crate::leaf::conn::Bound);
    type Series = (&'static str, &'static str, MetricType, fn(Row<'_>) -> f64);
    let series: [Series; 5] = [
        (
            "natrium_leafnode_in_msgs",
            "Messages received over the leafnode connection",
            MetricType::Counter,
            |(c, _)| c.in_msgs.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        (
            "natrium_leafnode_out_msgs",
            "Messages sent over the leafnode connection",
            MetricType::Counter,
            |(c, _)| c.out.stats().out_msgs as f64,
        ),
        (
            "natrium_leafnode_in_bytes",
            "Payload bytes received over the leafnode connection",
            MetricType::Counter,
            |(c, _)| c.in_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        (
            "natrium_leafnode_out_bytes",
            "Payload bytes sent over the leafnode connection",
            MetricType::Counter,
            |(c, _)| c.out.stats().out_bytes as f64,
        ),
        (
            "natrium_leafnode_subscriptions",
            "The other server's interest held here",
            MetricType::Gauge,
            |(c, _)| c.num_subs() as f64,
        ),
    ];
    for (name, help, kind, f) in series {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        for row in &conns {
            let labels = [
                ("remote", row.1.remote_name.as_str()),
                ("account", row.1.account.name.as_str()),
            ];
            let fam = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(f(row) as u64).encode(fam)?,
                _ => ConstGauge::new(f(row)).encode(fam)?,
            }
        }
    }
    Ok(())
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
    s.count_request("/metrics");
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
}
