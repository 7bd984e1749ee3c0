//! The system account's request handlers: the monitoring documents over NATS, as nats-server
//! answers them (`$SYS.REQ.SERVER.PING.VARZ` to every server, `$SYS.REQ.SERVER.<id>.VARZ` to one),
//! wrapped in nats-server's `{"server": {...}, "data": {...}}` envelope.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::observe::{self, AccQuery, ConnzQuery, Observed, SubszQuery};
use crate::router::{InternalClient, InternalMsg};

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
