//! Sources and mirrors, as nats-server runs them: per origin a task that creates a push
//! consumer on the origin through the JetStream API (`$JS.API`, or `external.api` for another
//! account or domain), with flow control and heartbeats, and stores what it delivers. A mirror
//! keeps the origin's sequences and timestamps; a source adds `Nats-Stream-Source`. A task that
//! hears nothing for 10 s, sees a gap, or fails to store recreates its consumer where it left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natrium_protocol::headers::HeaderView;
use natrium_store::StoredMsg;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::ingest::{Inbound, Outcome};
use super::{headers, Stream};
use crate::jetstream::config::{StreamConfig, StreamSource};
use crate::jetstream::errors::ApiError;
use crate::router::InternalMsg;

/// The origin consumer's heartbeat, and how long silence means a stalled consumer.
const HEARTBEAT: Duration = Duration::from_secs(1);
const STALLED: Duration = Duration::from_secs(10);
/// How long a consumer create request may take.
const CREATE_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered and not yet stored (flow control keeps far fewer in flight).
const DELIVERY_QUEUE: usize = 64 * 1024;

/// Where a source stands, for STREAM.INFO and for the next consumer it creates.
#[derive(Default)]
struct Progress {
    /// Last origin sequence taken, and the consumer's delivery sequence for it.
    sseq: u64,
    dseq: u64,
    lag: u64,
    last_seen: Option<Instant>,
    error: Option<ApiError>,
    consumer: Option<String>,
    fails: u32,
}

/// One running source or mirror.
pub(crate) struct Source {
    pub spec: StreamSource,
    pub mirror: bool,
    /// nats-server's index name (stream, filters, destinations).
    pub iname: String,
    progress: Mutex<Progress>,
    stop: Notify,
    stopped: AtomicBool,
}

impl Source {
    fn new(spec: StreamSource, mirror: bool) -> Arc<Source> {
        Arc::new(Source {
            iname: spec.index_name(),
            spec,
            mirror,
            progress: Mutex::new(Progress::default()),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
        })
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    /// nats-server's `StreamSourceInfo`.
    pub(crate) fn info(&self) -> Value {
        let p = self.progress.lock();
        let active = p
            .last_seen
            .map_or(-1, |t| t.elapsed().as_nanos().min(i64::MAX as u128) as i64);
        let mut v = json!({
            "name": self.spec.name,
            "lag": p.lag,
            "active": active,
        });
        if let Some(ext) = &self.spec.external {
            v["external"] = json!(ext);
        }
        if let Some(e) = &p.error {
            v["error"] = json!(e);
        }
        if !self.spec.filter_subject.is_empty() {
            v["filter_subject"] = json!(self.spec.filter_subject);
        }
        if !self.spec.subject_transforms.is_empty() {
            v["subject_transforms"] = json!(self.spec.subject_transforms);
        }
        v
    }
}

/// What a delivered message's reply subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
/// <dseq>.<ts>.<pending>`, or the 12-token form with domain and account) tells.
struct AckInfo<'a> {
    consumer: &'a str,
    delivered: u64,
    sseq: u64,
    dseq: u64,
    ts: i64,
    pending: u64,
}

fn ack_info(reply: &str) -> Option<AckInfo<'_>> {
    let t: Vec<&str> = reply.split('.').collect();
    let base = match t.len() {
        9 => 2,
        n if n >= 11 => 4,
        _ => return None,
    };
    if t.first() != Some(&"$JS") || t.get(1) != Some(&"ACK") {
        return None;
    }
    let num = |i: usize| t.get(base + i).and_then(|v| v.parse::<u64>().ok());
    Some(AckInfo {
        consumer: t.get(base + 1)?,
        delivered: num(2)?,
        sseq: num(3)?,
        dseq: num(4)?,
        ts: num(5)? as i64,
        pending: num(6)?,
    })
}

fn random_token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Why a consumer's delivery loop ended.
enum End {
    Stopped,
    Retry,
}

impl Stream {
    /// Starts the mirror or the sources of `cfg` that are not running yet and stops those it
    /// no longer has.
    pub(super) fn sync_sources(self: &Arc<Self>, cfg: &StreamConfig) {
        if !self.leads() {
            // A replica's sources run on its leader only.
            self.stop_sources();
            return;
        }
        let wanted: Vec<(StreamSource, bool)> = match &cfg.mirror {
            Some(m) => vec![(m.clone(), true)],
            None => cfg
                .sources
                .iter()
                .flatten()
                .map(|s| (s.clone(), false))
                .collect(),
        };
        let mut running = self.sources.lock();
        running.retain(|s| {
            let keep = wanted.iter().any(|(w, m)| *m == s.mirror && *w == s.spec);
            if !keep {
                s.stop();
            }
            keep
        });
        let mut started = Vec::new();
        for (spec, mirror) in wanted {
            if running.iter().any(|s| s.mirror == mirror && s.spec == spec) {
                continue;
            }
            let src = Source::new(spec, mirror);
            running.push(src.clone());
            started.push(src);
        }
        drop(running);
        if started.iter().any(|s| !s.mirror) {
            self.find_source_positions(&started);
        }
        for src in started {
            tokio::spawn(self.clone().run_source(src));
        }
    }

    pub(super) fn stop_sources(&self) {
        for s in self.sources.lock().drain(..) {
            s.stop();
        }
    }

    /// The mirror's info (None for a stream that is not a mirror).
    pub(crate) fn mirror_info(&self) -> Option<Value> {
        self.sources
            .lock()
            .iter()
            .find(|s| s.mirror)
            .map(|s| s.info())
    }

    /// The sources' info (None without sources).
    pub(crate) fn sources_info(&self) -> Option<Vec<Value>> {
        let running = self.sources.lock();
        let v: Vec<Value> = running
            .iter()
            .filter(|s| !s.mirror)
            .map(|s| s.info())
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// For sources new to this stream, the last origin sequence already stored, from the
    /// `Nats-Stream-Source` headers of the newest messages (nats-server's scan back).
    fn find_source_positions(&self, started: &[Arc<Source>]) {
        let mut missing: Vec<&Arc<Source>> = started.iter().filter(|s| !s.mirror).collect();
        let st = self.store.state();
        let mut seq = st.last_seq;
        while !missing.is_empty() && seq >= st.first_seq && seq > 0 {
            if let Ok(m) = self.store.load_msg(seq) {
                if let Some(h) = headers::get(m.headers.as_deref(), headers::STREAM_SOURCE) {
                    let f: Vec<&str> = h.split(' ').collect();
                    if f.len() >= 4 {
                        let iname = format!("{} {} {}", f[0], f[2], f[3]);
                        let sseq = f[1].parse::<u64>().unwrap_or(0);
                        missing.retain(|s| {
                            if s.iname == iname {
                                s.progress.lock().sseq = sseq;
                                false
                            } else {
                                true
                            }
                        });
                    }
                }
            }
            seq -= 1;
        }
    }

    async fn run_source(self: Arc<Self>, src: Arc<Source>) {
        let mut first = true;
        loop {
            if src.stopped.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire) {
                return;
            }
            if !first {
                // At least 2 s between attempts, 2 s more per failure (nats-server: 10 s more).
                let fails = src.progress.lock().fails;
                let backoff = Duration::from_secs(2)
                    .saturating_mul(fails.max(1))
                    .min(Duration::from_secs(60));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = src.stop.notified() => return,
                }
            }
            first = false;
            match self.consume_origin(&src).await {
                End::Stopped => return,
                End::Retry => continue,
            }
        }
    }

    /// The consumer create request for the origin, starting where this stream left off.
    fn consumer_request(&self, src: &Source, deliver: &str) -> (String, Value) {
        let st = self.store.state();
        let mut cfg = json!({
            "deliver_subject": deliver,
            "ack_policy": "none",
            "ack_wait": 22 * 3600 * 1_000_000_000i64,
            "max_deliver": 1,
            "idle_heartbeat": HEARTBEAT.as_nanos() as i64,
            "flow_control": true,
            "direct": true,
            "inactive_threshold": STALLED.as_nanos() as i64,
            "deliver_policy": "all",
        });
        let spec = &src.spec;
        if src.mirror {
            if st.last_seq == 0 {
                if spec.opt_start_seq > 0 {
                    cfg["deliver_policy"] = json!("by_start_sequence");
                    cfg["opt_start_seq"] = json!(spec.opt_start_seq);
                } else if let Some(t) = &spec.opt_start_time {
                    cfg["deliver_policy"] = json!("by_start_time");
                    cfg["opt_start_time"] = json!(t);
                }
            } else {
                cfg["deliver_policy"] = json!("by_start_sequence");
                cfg["opt_start_seq"] = json!(st.last_seq + 1);
            }
        } else {
            let sseq = src.progress.lock().sseq;
            if sseq > 0 {
                cfg["deliver_policy"] = json!("by_start_sequence");
                cfg["opt_start_seq"] = json!(sseq + 1);
            } else if spec.opt_start_seq > 0 {
                cfg["deliver_policy"] = json!("by_start_sequence");
                cfg["opt_start_seq"] = json!(spec.opt_start_seq);
            } else if let Some(t) = &spec.opt_start_time {
                let last = crate::util::time::rfc3339_nanos(st.last_ts as i128);
                let start = match crate::jetstream::consumer::parse_time(t) {
                    Some(ot)
                        if st.last_ts > 0 && crate::util::time::unix_nanos(ot) < st.last_ts =>
                    {
                        last
                    }
                    _ => t.clone(),
                };
                cfg["deliver_policy"] = json!("by_start_time");
                cfg["opt_start_time"] = json!(start);
            } else if st.first_seq > 1 && st.last_ts > 0 {
                cfg["deliver_policy"] = json!("by_start_time");
                cfg["opt_start_time"] = json!(crate::util::time::rfc3339_nanos(st.last_ts as i128));
            }
        }
        let filters = spec.filters();
        let prefix = spec.api_prefix();
        let kind = if src.mirror { "mirror" } else { "src" };
        // nats-server names a single filter in the request subject; a filter with wildcards
        // can not be published on, so it goes in the body of the plain create request.
        let literal =
            filters.len() == 1 && natrium_subjects::is_valid_publish_subject(filters[0].as_bytes());
        let subject = if literal {
            let name = format!("{kind}-{}", random_token());
            cfg["name"] = json!(name);
            cfg["filter_subject"] = json!(filters[0]);
            format!(
                "{prefix}.CONSUMER.CREATE.{}.{name}.{}",
                spec.name, filters[0]
            )
        } else if filters.len() == 1 {
            cfg["filter_subject"] = json!(filters[0]);
            format!("{prefix}.CONSUMER.CREATE.{}", spec.name)
        } else {
            if !filters.is_empty() {
                cfg["filter_subjects"] = json!(filters);
            }
            format!("{prefix}.CONSUMER.CREATE.{}", spec.name)
        };
        (subject, json!({"stream_name": spec.name, "config": cfg}))
    }

    /// Creates a consumer on the origin and stores what it delivers until told to stop or
    /// something needs a new consumer.
    async fn consume_origin(&self, src: &Source) -> End {
        let spec = &src.spec;
        let kind = if src.mirror { "M" } else { "S" };
        let deliver = match spec.external.as_ref().filter(|e| !e.deliver.is_empty()) {
            Some(e) => format!("{}.{kind}.{}", e.deliver, random_token()).replace("..", "."),
            None => format!("$JS.{kind}.{}", random_token()),
        };
        let mut deliveries = match self.client.subscribe(&deliver, None, DELIVERY_QUEUE) {
            Ok(s) => s,
            Err(e) => return self.setup_failed(src, e.to_string()),
        };
        let inbox = format!("$JSC.R.{}", random_token());
        let mut answers = match self.client.subscribe(&inbox, None, 4) {
            Ok(s) => s,
            Err(e) => return self.setup_failed(src, e.to_string()),
        };
        let (subject, body) = self.consumer_request(src, &deliver);
        if let Err(e) =
            self.client
                .publish(&subject, Some(&inbox), None, body.to_string().as_bytes())
        {
            return self.setup_failed(src, e.to_string());
        }
        let answer = tokio::select! {
            a = tokio::time::timeout(CREATE_WAIT, answers.next()) => a,
            _ = src.stop.notified() => return End::Stopped,
        };
        drop(answers);
        let info: Value = match answer {
            Ok(Some(m)) => match serde_json::from_slice(&m.payload) {
                Ok(v) => v,
                Err(_) => {
                    return self.setup_error(src, ApiError::invalid_json("bad consumer response"))
                }
            },
            // No answer (no responders, or the origin's account is unreachable): try again.
            _ => {
                src.progress.lock().fails += 1;
                return End::Retry;
            }
        };
        if let Some(e) = info.get("error") {
            let err = serde_json::from_value::<ApiErrorBody>(e.clone())
                .map(|b| ApiError {
                    code: b.code,
                    err_code: b.err_code,
                    description: b.description,
                })
                .unwrap_or_else(|_| ApiError::bad_request());
            return self.setup_error(src, err);
        }
        let Some(name) = info["name"].as_str().map(String::from) else {
            return self.setup_error(src, ApiError::bad_request());
        };
        let delivered = info["delivered"]["stream_seq"].as_u64().unwrap_or(0);
        {
            let mut p = src.progress.lock();
            p.error = None;
            p.fails = 0;
            p.consumer = Some(name.clone());
            p.dseq = 0;
            p.last_seen = Some(Instant::now());
            if src.mirror {
                p.sseq = delivered;
            }
        }
        if src.mirror && self.replication.get().is_none() {
            // The origin no longer has what came before its consumer's start: skip to it
            // (a replica skips when it applies the first mirrored message).
            let _guard = self.ingest_state.lock();
            let st = self.store.state();
            if st.last_seq < delivered && !self.skip_to(delivered + 1) {
                drop(_guard);
                self.delete_origin_consumer(src, &name);
                return self.setup_failed(src, "could not skip messages".into());
            }
        }
        let end = self.deliveries(src, &name, &mut deliveries).await;
        self.delete_origin_consumer(src, &name);
        end
    }

    fn setup_failed(&self, src: &Source, err: String) -> End {
        let e = if src.mirror {
            ApiError::mirror_consumer_setup_failed(err)
        } else {
            ApiError::source_consumer_setup_failed(err)
        };
        self.setup_error(src, e)
    }

    fn setup_error(&self, src: &Source, e: ApiError) -> End {
        tracing::warn!(
            "stream {}: {} consumer on {:?}: {}",
            self.name,
            if src.mirror { "mirror" } else { "source" },
            src.spec.name,
            e.description
        );
        let mut p = src.progress.lock();
        p.error = Some(e);
        p.fails += 1;
        End::Retry
    }

    fn delete_origin_consumer(&self, src: &Source, name: &str) {
        let subject = format!(
            "{}.CONSUMER.DELETE.{}.{name}",
            src.spec.api_prefix(),
            src.spec.name
        );
        let _ = self.client.publish(&subject, None, None, b"");
    }

    async fn deliveries(
        &self,
        src: &Source,
        consumer: &str,
        sub: &mut crate::router::InternalSubscription,
    ) -> End {
        loop {
            let since = src
                .progress
                .lock()
                .last_seen
                .map_or(Duration::ZERO, |t| t.elapsed());
            let wait = STALLED.saturating_sub(since);
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = tokio::time::sleep(wait) => return End::Retry,
                _ = src.stop.notified() => return End::Stopped,
            };
            if src.stopped.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire) {
                return End::Stopped;
            }
            let Some(msg) = msg else { return End::Retry };
            if !self.delivered(src, consumer, &msg) {
                return End::Retry;
            }
        }
    }

    /// Handles one message from the origin consumer; false when the consumer must be made
    /// again.
    fn delivered(&self, src: &Source, consumer: &str, msg: &InternalMsg) -> bool {
        let hv = msg.headers.as_deref().and_then(HeaderView::parse);
        if hv.as_ref().and_then(|h| h.status) == Some(100) {
            src.progress.lock().last_seen = Some(Instant::now());
            if let Some(r) = msg.reply.as_deref() {
                // Flow control: answering lets the origin send more.
                let _ = self.client.publish(r, None, None, b"");
                return true;
            }
            let h = msg.headers.as_deref();
            let last = headers::get(h, "Nats-Last-Consumer").and_then(|v| v.parse::<u64>().ok());
            if last.is_some_and(|l| l > 0 && l != src.progress.lock().dseq) {
                return false;
            }
            if let Some(fc) = headers::get(h, "Nats-Consumer-Stalled").filter(|v| !v.is_empty()) {
                let _ = self.client.publish(&fc, None, None, b"");
            }
            return true;
        }
        let Some(ack) = msg.reply.as_deref().and_then(ack_info) else {
            return true;
        };
        if ack.consumer != consumer || ack.delivered > 1 {
            return true;
        }
        let mut p = src.progress.lock();
        p.last_seen = Some(Instant::now());
        if ack.sseq <= p.sseq {
            if ack.dseq == p.dseq + 1 {
                p.dseq += 1;
            }
            return true;
        }
        if src.mirror {
            // Gaps in the stream sequence with no gap in deliveries: the origin removed
            // messages; the mirror skips them too.
            if ack.sseq != p.sseq + 1 && ack.dseq != p.dseq + 1 && p.dseq != 0 {
                return false;
            }
        } else if ack.dseq != p.dseq + 1 && p.dseq != 0 {
            return false;
        }
        let (osseq, odseq) = (p.sseq, p.dseq);
        p.sseq = ack.sseq;
        p.dseq = ack.dseq;
        p.lag = ack.pending.saturating_sub(1);
        drop(p);
        let ok = if src.mirror {
            self.store_from_mirror(src, &ack, msg)
        } else {
            self.store_from_source(src, &ack, msg)
        };
        if !ok {
            let mut p = src.progress.lock();
            p.sseq = osseq;
            p.dseq = odseq;
        }
        ok
    }

    fn transformed(src: &Source, subject: &str) -> String {
        src.spec
            .transforms()
            .iter()
            .find_map(|t| t.apply(subject))
            .unwrap_or_else(|| subject.to_string())
    }

    fn store_from_mirror(&self, src: &Source, ack: &AckInfo<'_>, msg: &InternalMsg) -> bool {
        let subject = Self::transformed(src, &msg.subject);
        let hdrs = headers::without(msg.headers.as_deref(), |k| {
            k.starts_with("Nats-Expected-") || k.starts_with("Nats-Batch-")
        });
        let m = StoredMsg {
            seq: ack.sseq,
            ts: ack.ts,
            subject: bytes::Bytes::from(subject.into_bytes()),
            headers: hdrs.map(bytes::Bytes::from),
            payload: msg.payload.clone(),
        };
        self.store_mirrored(ack.sseq, ack.ts, &m)
    }

    fn store_from_source(&self, src: &Source, ack: &AckInfo<'_>, msg: &InternalMsg) -> bool {
        let parts: Vec<&str> = src.iname.splitn(3, ' ').collect();
        let origin = format!(
            "{} {} {} {} {}",
            parts.first().copied().unwrap_or_default(),
            ack.sseq,
            parts.get(1).copied().unwrap_or(">"),
            parts.get(2).copied().unwrap_or(">"),
            msg.subject
        );
        let kept = headers::without(msg.headers.as_deref(), |k| {
            k == headers::STREAM_SOURCE
                || k.starts_with("Nats-Expected-")
                || k.starts_with("Nats-Batch-")
        });
        let hdr = headers::with(kept.as_deref(), &[(headers::STREAM_SOURCE, &origin)]);
        let subject = Self::transformed(src, &msg.subject);
        if let Some(r) = self.replication.get() {
            // Replicated: the leader proposes it; every replica decides and stores it when
            // applied. A proposal lost with the leadership is found missing by the next
            // leader's sources, which start from what its store holds.
            r.propose(super::hook::Proposal::Sourced {
                subject,
                headers: Some(hdr),
                payload: msg.payload.to_vec(),
            });
            return true;
        }
        let cfg = Arc::clone(&self.config.read());
        let mut state = self.ingest_state.lock();
        let inbound = Inbound {
            subject: &subject,
            headers: Some(&hdr),
            payload: &msg.payload,
            reply: None,
            sourced: true,
        };
        match self.store_one(&cfg, &mut state, &inbound, None) {
            Outcome::Stored(_) | Outcome::Duplicate(_) => true,
            Outcome::Refused(e) => {
                tracing::debug!(
                    "stream {}: sourced message from {:?} refused: {}",
                    self.name,
                    src.spec.name,
                    e.description
                );
                false
            }
        }
    }
}

/// An `error` object in an API response.
#[derive(serde::Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u16,
    #[serde(default)]
    description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects() {
        let a = ack_info("$JS.ACK.ORIG.c1.1.42.7.1700000000000000000.3").expect("parses");
        assert_eq!(
            (a.consumer, a.delivered, a.sseq, a.dseq, a.ts, a.pending),
            ("c1", 1, 42, 7, 1_700_000_000_000_000_000, 3)
        );
        let a = ack_info("$JS.ACK.dom.acchash.ORIG.c1.2.42.7.17.0.tok").expect("12 tokens");
        assert_eq!((a.consumer, a.delivered, a.sseq), ("c1", 2, 42));
        assert!(ack_info("_INBOX.x").is_none());
        assert!(ack_info("$JS.ACK.a.b.c").is_none());
    }
}
