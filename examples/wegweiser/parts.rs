//! Wegweiser's running parts: the endpoint agent (heartbeats, monitoring, live metrics, command
//! execution) and the always-on receiver (the tenant's durable consumer, shared by its
//! instances as a queue group; device connectivity into a key-value bucket, command responses
//! into the "database").

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::{Tenant, CONNECTIVITY_BUCKET, RECEIVER};
use crate::common::{pull, Conn, Natrium};

/// What the back end's database would hold: command responses by command id, and every stream
/// sequence a receiver processed (to prove a replay delivers each message once).
#[derive(Default)]
pub struct Db {
    pub responses: Mutex<HashMap<String, Value>>,
    pub processed: Mutex<Vec<u64>>,
}

impl Db {
    /// Stream sequences processed more than once.
    pub fn duplicates(&self) -> usize {
        let p = self.processed.lock();
        p.len() - p.iter().collect::<HashSet<_>>().len()
    }
}

/// One endpoint agent (`nats_persistent_agent.py`): the tenant's credentials, its device's
/// subjects.
pub struct Agent {
    pub device: String,
    pub conn: Conn,
    tenant: &'static Tenant,
    pub commands_run: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Agent {
    /// Connects with the tenant's agent credentials and starts executing commands.
    pub async fn start(
        n: &Natrium,
        tenant: &'static Tenant,
        device: &str,
    ) -> anyhow::Result<Agent> {
        let conn = Conn::open(
            n,
            &format!("agent {device}"),
            Some((&tenant.agent_user(), tenant.agent_password)),
        )
        .await?;
        let mut commands = conn
            .client
            .subscribe(tenant.subject(device, "command"))
            .await?;
        let client = conn.client.clone();
        let response = tenant.subject(device, "response");
        let commands_run = Arc::new(AtomicUsize::new(0));
        let run = commands_run.clone();
        let dev = device.to_string();
        let task = tokio::spawn(async move {
            while let Some(m) = commands.next().await {
                let cmd: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                run.fetch_add(1, Ordering::Relaxed);
                let body = json!({
                    "command_id": cmd["command_id"],
                    "device_uuid": dev,
                    "result": format!("ran {}", cmd["command"].as_str().unwrap_or("?")),
                    "exit_code": 0,
                });
                let _ = client
                    .publish(response.clone(), body.to_string().into())
                    .await;
            }
        });
        Ok(Agent {
            device: device.to_string(),
            conn,
            tenant,
            commands_run,
            task,
        })
    }

    /// Publishes heartbeat `n` on `...status.heartbeat`.
    pub async fn heartbeat(&self, n: usize) -> anyhow::Result<()> {
        let body = json!({
            "device_uuid": self.device,
            "tenant_uuid": self.tenant.uuid,
            "seq": n,
            "status": "online",
            "agent_version": "3.1.0",
        });
        self.publish("status.heartbeat", body.to_string()).await
    }

    /// Publishes a monitoring sample on `...monitoring`.
    pub async fn monitoring(&self) -> anyhow::Result<()> {
        let body = json!({"device_uuid": self.device, "services": {"osquery": "running"}});
        self.publish("monitoring", body.to_string()).await
    }

    /// Publishes point `n` of `metric` on `demo.system.{device}.{metric}` (the live charts).
    pub async fn metric(&self, metric: &str, n: usize) -> anyhow::Result<()> {
        let body = json!({
            "device_uuid": self.device,
            "tenant_uuid": self.tenant.uuid,
            "metric_type": metric,
            "value": (n % 100) as f64,
            "n": n,
        });
        self.conn
            .client
            .publish(
                format!("demo.system.{}.{metric}", self.device),
                body.to_string().into(),
            )
            .await?;
        Ok(())
    }

    /// Publishes `payload` on the device's `kind` subject.
    pub async fn publish(&self, kind: &str, payload: String) -> anyhow::Result<()> {
        self.conn
            .client
            .publish(self.tenant.subject(&self.device, kind), payload.into())
            .await?;
        Ok(())
    }

    pub async fn flush(&self) -> anyhow::Result<()> {
        self.conn.client.flush().await?;
        Ok(())
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// What one receiver instance did.
#[derive(Default)]
pub struct ReceiverStats {
    /// Messages acknowledged.
    pub acked: AtomicUsize,
    /// Malformed messages refused (negatively acknowledged, so redelivered).
    pub naks: AtomicUsize,
}

/// One instance of the always-on receiver (`nats_receiver_runner.py`) for one tenant.
pub struct Receiver {
    pub conn: Conn,
    pub stats: Arc<ReceiverStats>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Connects with the tenant's back-end credentials and consumes the tenant's durable
    /// `receiver` consumer (a push consumer delivering to the queue group `weg-receivers`).
    pub async fn start(
        n: &Natrium,
        tenant: &'static Tenant,
        instance: usize,
        db: Arc<Db>,
    ) -> anyhow::Result<Receiver> {
        let conn = Conn::open(
            n,
            &format!("receiver-{instance} {}", tenant.uuid),
            Some((&tenant.svc_user(), tenant.svc_password)),
        )
        .await?;
        let js = jetstream::new(conn.client.clone());
        let stream = js.get_stream(tenant.stream()).await?;
        let consumer: consumer::PushConsumer = stream
            .get_consumer(RECEIVER)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut messages = consumer.messages().await?;
        let kv = js.get_key_value(CONNECTIVITY_BUCKET).await?;
        let stats = Arc::new(ReceiverStats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = pull::next("receiver", &mut messages).await {
                let Ok(info) = m.info() else { continue };
                let seq = info.stream_sequence;
                let body: Option<Value> = serde_json::from_slice(&m.payload).ok();
                let Some(body) = body.filter(Value::is_object) else {
                    // Malformed: refuse it; after max_deliver refusals the server parks it in
                    // the dead-letter stream.
                    st.naks.fetch_add(1, Ordering::Relaxed);
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                    continue;
                };
                let subject = m.subject.as_str();
                if subject.ends_with(".status.heartbeat") {
                    let device = body["device_uuid"].as_str().unwrap_or_default().to_string();
                    if kv.put(device, m.payload.clone()).await.is_err() {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                        continue;
                    }
                } else if subject.ends_with(".response") {
                    let id = body["command_id"].as_str().unwrap_or_default().to_string();
                    db.responses.lock().insert(id, body);
                }
                if m.ack().await.is_ok() {
                    db.processed.lock().push(seq);
                    st.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Receiver { conn, stats, task })
    }

    /// Stops the instance as a crash or a deploy would: its connection goes away.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = self.conn.client.drain().await;
    }
}
