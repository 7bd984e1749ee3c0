//! The system account's request handlers: the monitoring documents over NATS, as nats-server
//! answers them (`$SYS.REQ.SERVER.PING.VARZ` to every server, `$SYS.REQ.SERVER.<id>.VARZ` to one),
//! wrapped in nats-server's `{"server": {...}, "data": {...}}` envelope.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::internal::{InternalClient, InternalMsg};
use crate::monitor::{self, AccQuery, ConnzQuery, SubszQuery};
use crate::options::PROTOCOL_VERSION;
use crate::server::ServerInner;

/// The monitoring documents available over the system account.
const ENDPOINTS: &[&str] = &[
    "VARZ", "CONNZ", "SUBSZ", "ACCOUNTZ", "STATSZ", "HEALTHZ", "ROUTEZ",
];

/// Runs until the system account's subscriptions are dropped (server shutdown).
pub(crate) async fn serve(client: InternalClient) {
    let id = client.server().id.clone();
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
        answer(&client, &seq, msg);
    }
}

fn answer(client: &InternalClient, seq: &AtomicU64, msg: InternalMsg) {
    let Some(reply) = &msg.reply else { return };
    let endpoint = match msg.subject.rsplit('.').next() {
        Some("PING") => "STATSZ",
        Some(e) if ENDPOINTS.contains(&e) => e,
        _ => return,
    };
    let s = client.server();
    let opts: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
    let data = document(s, endpoint, &opts);
    let body = json!({
        "server": server_json(s, seq),
        "data": data,
    });
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    if client.publish(reply, None, None, &payload).is_err() {
        tracing::debug!("system account: invalid reply subject {reply:?}");
    }
}

/// The `server` object of nats-server's system responses (`seq` counts the sender's messages).
pub(crate) fn server_json(s: &ServerInner, seq: &AtomicU64) -> Value {
    json!({
        "name": s.name,
        "host": s.opts.host,
        "id": s.id,
        "ver": PROTOCOL_VERSION,
        "seq": seq.fetch_add(1, Ordering::Relaxed) + 1,
        "jetstream": false,
        "time": monitor::now_rfc3339(),
    })
}

fn document(s: &Arc<ServerInner>, endpoint: &str, opts: &Value) -> Value {
    let flag = |k: &str| opts.get(k).and_then(Value::as_bool).unwrap_or(false);
    let result = match endpoint {
        "VARZ" => Ok(monitor::varz_json(s)),
        "CONNZ" => monitor::connz_json(
            s,
            &ConnzQuery {
                subs: flag("subscriptions").then(|| "1".to_string()),
                auth: flag("auth").then(|| "1".to_string()),
                ..ConnzQuery::default()
            },
        ),
        "SUBSZ" => monitor::subsz_json(
            s,
            &SubszQuery {
                subs: flag("subscriptions").then(|| "1".to_string()),
                ..SubszQuery::default()
            },
        ),
        "ACCOUNTZ" => monitor::accountz_json(s, &AccQuery::default()),
        "HEALTHZ" => Ok(json!({"status": "ok"})),
        "ROUTEZ" => Ok(json!({"num_routes": 0, "routes": []})),
        _ => Ok(monitor::statsz_json(s)),
    };
    result.unwrap_or_else(
        |(code, text)| json!({"error": {"code": code.as_u16(), "description": text}}),
    )
}
