//! A stream's ingest task: each published message is decided (`check`), then applied (append,
//! rollup, de-dup window, consumers); its PubAck leaves when a sync covers it (lazy mode: at once).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use natrium_store::StoreError;
use serde_json::json;

use super::check::{check, Dedupe, Incoming, Rollup, Verdict, Write};
use super::Stream;
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::router::{InternalMsg, InternalSubscription};
use crate::util::time::now_nanos;

impl Stream {
    /// The ingest task; it owns the de-dup window.
    pub(super) async fn ingest(self: Arc<Self>, mut sub: InternalSubscription) {
        let window = self.config.read().duplicate_window();
        let mut dedupe = Dedupe::rebuild(self.store.as_ref(), now_nanos(), window);
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = self.stop.notified() => None,
            };
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(msg) = msg else { return };
            self.process(&mut dedupe, msg);
        }
    }

    /// Decides on one published message and applies the decision.
    fn process(&self, dedupe: &mut Dedupe, msg: InternalMsg) {
        let cfg = Arc::clone(&self.config.read());
        let reply = if cfg.no_ack {
            None
        } else {
            msg.reply.as_deref()
        };
        let now = now_nanos();
        let incoming = Incoming {
            subject: msg.subject.as_bytes(),
            headers: msg.headers.as_deref(),
            payload_len: msg.payload.len(),
        };
        match check(&cfg, self.store.as_ref(), dedupe, &incoming, now) {
            Verdict::Refuse(e) => self.reply_error(reply, e),
            Verdict::Duplicate(seq) => {
                if let Some(r) = reply {
                    let body = json!({"stream": self.name, "seq": seq, "duplicate": true});
                    let _ = self
                        .client
                        .publish(r, None, None, body.to_string().as_bytes());
                }
            }
            Verdict::Accept(write) => self.apply(&cfg, dedupe, &msg, write, now, reply),
        }
    }

    /// Stores an accepted message: appends it, applies its rollup, records its msg id, tells
    /// the consumers, and arranges the PubAck to `reply`.
    fn apply(
        &self,
        cfg: &StreamConfig,
        dedupe: &mut Dedupe,
        msg: &InternalMsg,
        write: Write,
        now: i64,
        reply: Option<&str>,
    ) {
        let subject = msg.subject.as_bytes();
        if let Some(gate) = self.account_gate.get() {
            let size =
                subject.len() + msg.headers.as_ref().map_or(0, |h| h.len()) + msg.payload.len();
            if !gate(cfg.storage, size as u64) {
                return self.reply_error(reply, ApiError::account_resources_exceeded());
            }
        }
        // With limits the store may remove messages to make room: consumers must hear of it.
        let limited = cfg.max_msgs > 0 || cfg.max_bytes > 0 || cfg.max_msgs_per_subject > 0;
        let before = limited.then(|| self.store.state());
        let receipt = match self
            .store
            .store_msg(subject, msg.headers.as_deref(), &msg.payload, now)
        {
            Ok(r) => r,
            Err(e) => return self.reply_error(reply, store_error(&e)),
        };
        // What went to make room or by the rollup: (new first sequence, removed from inside).
        let (mut front, mut inside) = (None, false);
        if let Some(b) = before {
            let a = self.store.state();
            if a.msgs != b.msgs + 1 {
                inside = a.num_deleted > b.num_deleted || cfg.max_msgs_per_subject > 0;
                front = (a.first_seq > b.first_seq).then_some(a.first_seq);
            }
        }
        match write.rollup {
            Some(Rollup::Subject) => {
                inside |= self.store.purge_ex(subject, 0, 1).is_ok_and(|n| n > 0);
            }
            Some(Rollup::All) => {
                let removed = self.store.compact(receipt.seq).is_ok_and(|n| n > 0);
                front = removed.then_some(receipt.seq).or(front);
            }
            None => {}
        }
        dedupe.expire(now, cfg.duplicate_window());
        if let Some(id) = write.msg_id {
            dedupe.record(id, receipt.seq, now);
        }
        self.consumers.on_stored(receipt.seq, subject);
        if let Some(first) = front {
            self.consumers.removed_front(first);
        }
        if inside {
            self.consumers.removed_inside();
        }
        let Some(r) = reply else { return };
        let client = self.client.clone();
        let reply_to = r.to_string();
        let ack = format!("{}{}}}", self.ack_prefix, receipt.seq);
        if self.ack_before_sync {
            // Lazy mode (`sync_interval: <duration>`), as nats-server's default: the PubAck
            // leaves once the message is written, before the periodic sync covers it.
            let _ = client.publish(&reply_to, None, None, ack.as_bytes());
            return;
        }
        let name = self.name.clone();
        self.store.on_durable(
            receipt.sync_token,
            Box::new(move |res| {
                let body = match res {
                    Ok(()) => ack,
                    Err(e) => json!({"stream": name, "error": store_error(&e)}).to_string(),
                };
                let _ = client.publish(&reply_to, None, None, body.as_bytes());
            }),
        );
    }

    fn reply_error(&self, reply: Option<&str>, e: ApiError) {
        if let Some(r) = reply {
            let body = json!({"stream": self.name, "error": e});
            let _ = self
                .client
                .publish(r, None, None, body.to_string().as_bytes());
        }
    }
}

/// Maps a store failure to the API error a publisher sees.
fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::MsgTooLarge => ApiError::message_too_large(),
        other => ApiError::store_failed(other.to_string()),
    }
}
