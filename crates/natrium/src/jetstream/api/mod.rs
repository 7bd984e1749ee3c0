//! One account's `$JS.API`: a request's subject picks its group's handler (`stream.rs`,
//! `consumer.rs`, `account.rs`); replies, request parsing, counters and action advisories here.

mod account;
mod consumer;
mod direct;
mod monitor;
mod stream;

pub(crate) use monitor::Usage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};

use super::catalog::Catalog;
use super::cluster::JsCluster;
use super::errors::ApiError;
use crate::router::{InternalClient, InternalMsg};
use crate::util::time::rfc3339;

const API_PREFIX: &str = "$JS.API.";

/// The JetStream API level `$JS.API.INFO` reports (nats-server 2.12's): clients ask for level 1
/// before they set limit markers on a KV bucket. Level 1 is 2.11's per-message TTLs, subject
/// delete markers, consumer pause and priority groups; level 2 is 2.12's counters, atomic
/// batches, message schedules and the async persist mode.
pub(crate) const API_LEVEL: u32 = 2;

/// The API of one account, over its catalog.
pub(crate) struct Api {
    catalog: Arc<Catalog>,
    client: InternalClient,
    /// The server's name, reported as the leader in stream and consumer info.
    server_name: String,
    total: AtomicU64,
    errors: AtomicU64,
    /// This server's replicated JetStream, once started (in a cluster).
    cluster: Arc<OnceLock<Arc<JsCluster>>>,
}

impl Api {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        client: InternalClient,
        server_name: String,
        cluster: Arc<OnceLock<Arc<JsCluster>>>,
    ) -> Api {
        Api {
            catalog,
            client,
            server_name,
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cluster,
        }
    }

    /// Answers one request on `$JS.API.>`.
    pub(crate) fn handle(&self, m: InternalMsg) {
        self.handle_hop(m, 0);
    }

    /// Answers a request that was forwarded `hops` times; requests about replicated streams
    /// go to the cluster first.
    pub(crate) fn handle_hop(&self, m: InternalMsg, hops: u8) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if super::versioning::refuses(m.headers.as_deref()) {
            // `Nats-Required-Api-Level` above this server's level: nats-server's 412.
            let Some(reply) = m.reply.as_deref() else {
                return;
            };
            if m.subject.starts_with("$JS.API.DIRECT.GET.") {
                let hdr = b"NATS/1.0 412 Required Api Level\r\n\r\n";
                let _ = self.client.publish(reply, None, Some(hdr), b"");
            } else {
                self.respond(
                    Some(reply),
                    "error_response",
                    Err(ApiError::required_api_level()),
                );
            }
            return;
        }
        if let Some(cl) = self.cluster.get() {
            if cl.intercept(&self.client, &m, hops) {
                return;
            }
        }
        let Some(rest) = m.subject.strip_prefix(API_PREFIX) else {
            return;
        };
        let reply = m.reply.as_deref();
        let tokens: Vec<&str> = rest.splitn(4, '.').collect();
        let handled = match tokens[0] {
            "INFO" => self.account_request(&tokens, reply),
            "STREAM" | "DIRECT" => self.stream_request(&tokens, reply, &m.payload),
            "CONSUMER" => self.consumer_request(&tokens, reply, &m.payload),
            _ => false,
        };
        if !handled {
            self.respond(reply, "error_response", Err(ApiError::bad_request()));
        }
    }

    /// Replies with `result` as an `io.nats.jetstream.api.v1.<kind>` document.
    fn respond(&self, reply: Option<&str>, kind: &str, result: Result<Value, ApiError>) {
        let body = match result {
            Ok(mut v) => {
                v["type"] = json!(format!("io.nats.jetstream.api.v1.{kind}"));
                v
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                json!({"type": format!("io.nats.jetstream.api.v1.{kind}"), "error": e})
            }
        };
        if let Some(r) = reply {
            let _ = self
                .client
                .publish(r, None, None, body.to_string().as_bytes());
        }
    }

    /// `$JS.EVENT.ADVISORY.STREAM.<kind>.<stream>`.
    fn advisory_stream(&self, kind: &str, stream: &str, action: &str) {
        let body = json!({
            "type": "io.nats.jetstream.advisory.v1.stream_action",
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": rfc3339(SystemTime::now()),
            "stream": stream,
            "action": action,
        });
        let subject = format!("$JS.EVENT.ADVISORY.STREAM.{kind}.{stream}");
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    /// `$JS.EVENT.ADVISORY.CONSUMER.<kind>.<stream>.<consumer>`.
    fn advisory_consumer(&self, kind: &str, stream: &str, consumer: &str, action: &str) {
        let body = json!({
            "type": "io.nats.jetstream.advisory.v1.consumer_action",
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": rfc3339(SystemTime::now()),
            "stream": stream,
            "consumer": consumer,
            "action": action,
        });
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.{consumer}");
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }
}

/// A request body: empty or `null` is the default request.
fn parse<T: for<'de> Deserialize<'de> + Default>(payload: &[u8]) -> Result<T, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // Some clients send `null` for "no options".
    match serde_json::from_slice::<Value>(payload).map_err(ApiError::invalid_json)? {
        Value::Null => Ok(T::default()),
        v => serde_json::from_value(v).map_err(ApiError::invalid_json),
    }
}

/// `{"offset": n, "subject": filter}` of the NAMES and LIST requests.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PagedRequest {
    offset: usize,
    subject: Option<String>,
}
