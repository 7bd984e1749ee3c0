//! `/connz`: live and recently closed client connections, filtered, sorted and paged as
//! nats-server does.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};

use super::{rtt_text, truthy, uptime, Answer, Observed, Refused};
use crate::auth::certs::PeerCert;
use crate::conn::ConnSnapshot;
use crate::util::time::rfc3339;

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
    /// Round-trip time measured with the server's PING, as nats-server prints it.
    pub rtt: String,
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
    pub tls_peer_certs: Option<Vec<PeerCert>>,
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
}

/// What `/connz` shows beyond the basics.
#[derive(Debug, Clone, Copy, Default)]
struct Detail {
    /// `auth=1`: user, account and client certificates.
    auth: bool,
    /// `subs=1`: subjects; `subs=detail`: subscriptions with queue and sid.
    subs: bool,
    subs_detail: bool,
}

impl ConnInfo {
    fn new(c: &ConnSnapshot, d: Detail) -> ConnInfo {
        let now = c.stop.unwrap_or_else(SystemTime::now);
        let age = |t: SystemTime| uptime(now.duration_since(t).unwrap_or_default());
        let tls = c.meta.tls.as_ref();
        let account = &c.meta.account;
        ConnInfo {
            cid: c.cid,
            kind: "Client",
            conn_type: if c.meta.websocket {
                "websocket"
            } else {
                "nats"
            },
            ip: c.addr.ip().to_string(),
            port: c.addr.port(),
            start: rfc3339(c.start),
            last_activity: rfc3339(c.last_activity),
            stop: c.stop.map(rfc3339),
            reason: c.reason.map(|r| r.to_string()),
            uptime: age(c.start),
            idle: age(c.last_activity),
            rtt: rtt_text(c.rtt),
            pending_bytes: c.stats.pending_bytes,
            in_msgs: c.stats.in_msgs,
            out_msgs: c.stats.out_msgs,
            in_bytes: c.stats.in_bytes,
            out_bytes: c.stats.out_bytes,
            subscriptions: c.stats.subscriptions,
            name: c.name.clone(),
            lang: c.meta.lang.clone(),
            version: c.meta.version.clone(),
            tls_version: tls.map(|t| t.version.clone()),
            tls_cipher_suite: tls.map(|t| t.cipher_suite.clone()),
            tls_peer_certs: tls
                .filter(|t| d.auth && !t.peer_certs.is_empty())
                .map(|t| t.peer_certs.clone()),
            tls_first: tls.is_some_and(|t| t.first),
            authorized_user: c.meta.user.clone().filter(|_| d.auth),
            account: d.auth.then(|| account.clone()),
            subscriptions_list: (d.subs && !d.subs_detail)
                .then(|| c.subs.iter().map(|s| s.subject.clone()).collect()),
            subscriptions_list_detail: d
                .subs_detail
                .then(|| c.subs.iter().map(|s| sub_detail(s, None)).collect()),
        }
    }
}

/// One subscription as nats-server's `SubDetail`: `account` (in `/subsz`), `subject`,
/// `qgroup`, `sid`, `msgs`, `max` and `cid`, the empty ones left out.
pub fn sub_detail(s: &crate::router::SubInfo, account: Option<&str>) -> Value {
    let mut v = serde_json::Map::new();
    if let Some(a) = account {
        v.insert("account".into(), json!(a));
    }
    v.insert("subject".into(), json!(s.subject));
    if let Some(q) = &s.queue {
        v.insert("qgroup".into(), json!(q));
    }
    v.insert("sid".into(), json!(s.sid));
    v.insert("msgs".into(), json!(s.msgs));
    if s.max > 0 {
        v.insert("max".into(), json!(s.max));
    }
    v.insert("cid".into(), json!(s.cid));
    Value::Object(v)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnzQuery {
    pub subs: Option<String>,
    pub sort: Option<String>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    pub state: Option<String>,
    pub cid: Option<u64>,
    pub auth: Option<String>,
    pub acc: Option<String>,
}

/// The `/connz` document.
pub fn connz(o: &Observed, q: &ConnzQuery) -> Answer {
    let state = q.state.as_deref().unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return Err(Refused::bad_request(format!(
            "invalid connection state {state:?}"
        )));
    }
    let mut conns: Vec<ConnSnapshot> = Vec::new();
    if matches!(state, "open" | "all") {
        conns.extend(o.clients().iter().map(|c| c.snapshot(false)));
    }
    if matches!(state, "closed" | "all") {
        conns.extend(o.conns.registry.closed_conns());
    }
    if let Some(cid) = q.cid {
        conns.retain(|c| c.cid == cid);
    }
    if let Some(acc) = &q.acc {
        conns.retain(|c| &c.meta.account == acc);
    }
    let sort = q.sort.as_deref().unwrap_or("cid");
    use std::cmp::Reverse;
    match sort {
        "cid" => conns.sort_by_key(|c| c.cid),
        "start" | "uptime" => conns.sort_by_key(|c| c.start),
        "subs" => conns.sort_by_key(|c| Reverse(c.stats.subscriptions)),
        "pending" => conns.sort_by_key(|c| Reverse(c.stats.pending_bytes)),
        "msgs_to" | "out_msgs" => conns.sort_by_key(|c| Reverse(c.stats.out_msgs)),
        "msgs_from" | "in_msgs" => conns.sort_by_key(|c| Reverse(c.stats.in_msgs)),
        "bytes_to" | "out_bytes" => conns.sort_by_key(|c| Reverse(c.stats.out_bytes)),
        "bytes_from" | "in_bytes" => conns.sort_by_key(|c| Reverse(c.stats.in_bytes)),
        "last" => conns.sort_by_key(|c| Reverse(c.last_activity)),
        "idle" => conns.sort_by_key(|c| c.last_activity),
        "stop" | "reason" if state != "open" => conns.sort_by_key(|c| c.stop),
        other => {
            return Err(Refused::bad_request(format!(
                "invalid sorting option {other:?}"
            )))
        }
    }
    let total = conns.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(1024);
    let detail = Detail {
        auth: truthy(&q.auth),
        subs: truthy(&q.subs),
        subs_detail: q.subs.as_deref() == Some("detail"),
    };
    let page: Vec<ConnInfo> = conns
        .iter()
        .skip(offset)
        .take(limit)
        .map(|c| ConnInfo::new(c, detail))
        .collect();
    Ok(json!({
        "server_id": o.id(),
        "now": rfc3339(SystemTime::now()),
        "num_connections": page.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": page,
    }))
}
