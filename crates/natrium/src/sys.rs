//! The system account's request handlers: the monitoring documents over NATS, as nats-server
//! answers them (`$SYS.REQ.SERVER.PING.VARZ` to every server, `$SYS.REQ.SERVER.<id>.VARZ` to one),
//! wrapped in nats-server's `{"server": {...}, "data": {...}}` envelope; and the client events
//! (`$SYS.ACCOUNT.<account>.CONNECT`/`DISCONNECT`, `$SYS.SERVER.<id>.CLIENT.AUTH.ERR`).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::conn::{ClientEvent, ClientEventKind, ConnSnapshot};
use crate::observe::{self, AccQuery, ConnzQuery, Observed, SubszQuery};
use crate::router::{InternalClient, InternalMsg};
use crate::util::time::rfc3339;

/// The monitoring documents available over the system account.
const ENDPOINTS: &[&str] = &[
    "VARZ", "CONNZ", "SUBSZ", "ACCOUNTZ", "STATSZ", "HEALTHZ", "ROUTEZ",
];

/// Runs until the system account's subscriptions are dropped (server shutdown).
pub async fn serve(client: InternalClient, server: Arc<Observed>) {
    let id = server.id().to_string();
    let (ping, direct) = match (
        client.subscribe("$SYS.REQ.SERVER.PING.*", None, 1024),
        client.subscribe(&format!("$SYS.REQ.SERVER.{id}.*"), None, 1024),
    ) {
        (Ok(p), Ok(d)) => (p, d),
        _ => return,
    };
    let plain_ping = client.subscribe("$SYS.REQ.SERVER.PING", None, 1024);
    let Ok(mut plain_ping) = plain_ping else {
        return;
    };
    let (mut ping, mut direct) = (ping, direct);
    let seq = AtomicU64::new(0);
    loop {
        let msg = tokio::select! {
            m = ping.next() => m,
            m = direct.next() => m,
            m = plain_ping.next() => m,
        };
        let Some(msg) = msg else { return };
        answer(&client, &server, &seq, msg);
    }
}

fn answer(client: &InternalClient, s: &Observed, seq: &AtomicU64, msg: InternalMsg) {
    let Some(reply) = &msg.reply else { return };
    let endpoint = match msg.subject.rsplit('.').next() {
        Some("PING") => "STATSZ",
        Some(e) if ENDPOINTS.contains(&e) => e,
        _ => return,
    };
    let opts: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
    let data = document(s, endpoint, &opts);
    let body = json!({
        "server": observe::server_json(s, seq),
        "data": data,
    });
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    if client.publish(reply, None, None, &payload).is_err() {
        tracing::debug!("system account: invalid reply subject {reply:?}");
    }
}

fn document(s: &Observed, endpoint: &str, opts: &Value) -> Value {
    let flag = |k: &str| opts.get(k).and_then(Value::as_bool).unwrap_or(false);
    let result = match endpoint {
        "VARZ" => Ok(observe::varz(s)),
        "CONNZ" => observe::connz(
            s,
            &ConnzQuery {
                subs: flag("subscriptions").then(|| "1".to_string()),
                auth: flag("auth").then(|| "1".to_string()),
                ..ConnzQuery::default()
            },
        ),
        "SUBSZ" => observe::subsz(
            s,
            &SubszQuery {
                subs: flag("subscriptions").then(|| "1".to_string()),
                ..SubszQuery::default()
            },
        ),
        "ACCOUNTZ" => observe::accountz(s, &AccQuery::default()),
        "HEALTHZ" => Ok(json!({"status": "ok"})),
        "ROUTEZ" => Ok(observe::routez(s, flag("subscriptions"))),
        _ => Ok(observe::statsz(s)),
    };
    result.unwrap_or_else(|e| json!({"error": {"code": e.status, "description": e.text}}))
}

/// Publishes each client event in nats-server's shape until the server stops.
pub async fn client_events(
    client: InternalClient,
    server: Arc<Observed>,
    mut events: UnboundedReceiver<ClientEvent>,
) {
    let seq = AtomicU64::new(0);
    while let Some(e) = events.recv().await {
        let (subject, body) = client_event(&server, &seq, &e);
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let _ = client.publish(&subject, None, None, &payload);
    }
}

/// The subject and document of a client event: nats-server's `ConnectEventMsg` (connect) or
/// `DisconnectEventMsg` (disconnect, and a refused login).
fn client_event(s: &Observed, seq: &AtomicU64, e: &ClientEvent) -> (String, Value) {
    let c = &e.conn;
    // A refused client is still in the global account (`$G`), as in nats-server.
    let account = c.meta.account.as_str();
    let (subject, kind) = match e.kind {
        ClientEventKind::Connect => (format!("$SYS.ACCOUNT.{account}.CONNECT"), "client_connect"),
        ClientEventKind::Disconnect => (
            format!("$SYS.ACCOUNT.{account}.DISCONNECT"),
            "client_disconnect",
        ),
        ClientEventKind::AuthError => (
            format!("$SYS.SERVER.{}.CLIENT.AUTH.ERR", s.id()),
            "client_disconnect",
        ),
    };
    let mut body = json!({
        "type": format!("io.nats.server.advisory.v1.{kind}"),
        "id": event_id(),
        "timestamp": rfc3339(std::time::SystemTime::now()),
        "server": observe::server_json(s, seq),
        "client": client_info(c, account),
    });
    if e.kind != ClientEventKind::Connect {
        let st = &c.stats;
        body["sent"] = json!({"msgs": st.in_msgs, "bytes": st.in_bytes});
        body["received"] = json!({"msgs": st.out_msgs, "bytes": st.out_bytes});
        body["reason"] = json!(c.reason.map(|r| r.to_string()).unwrap_or_default());
    }
    (subject, body)
}

/// nats-server's `ClientInfo` of a client connection (empty fields left out, as there).
fn client_info(c: &ConnSnapshot, account: &str) -> Value {
    let mut m = Map::new();
    m.insert("start".into(), json!(rfc3339(c.start)));
    m.insert("host".into(), json!(c.addr.ip().to_string()));
    m.insert("id".into(), json!(c.cid));
    m.insert("acc".into(), json!(account));
    let texts = [
        ("user", c.meta.user.as_deref().unwrap_or_default()),
        ("name", c.name.as_str()),
        ("lang", c.meta.lang.as_str()),
        ("ver", c.meta.version.as_str()),
    ];
    for (k, v) in texts {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    }
    if let Some(rtt) = c.rtt.filter(|r| !r.is_zero()) {
        m.insert("rtt".into(), json!(rtt.as_nanos() as u64));
    }
    if let Some(stop) = c.stop {
        m.insert("stop".into(), json!(rfc3339(stop)));
    }
    m.insert("kind".into(), json!("Client"));
    let client_type = if c.meta.websocket {
        "websocket"
    } else {
        "nats"
    };
    m.insert("client_type".into(), json!(client_type));
    Value::Object(m)
}

/// A 22-character event id, like the NUIDs nats-server gives its events.
fn event_id() -> String {
    let mut rng = fastrand::Rng::new();
    (0..22).map(|_| rng.alphanumeric()).collect()
}
