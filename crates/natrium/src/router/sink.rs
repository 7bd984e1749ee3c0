//! The receiving end of an internal subscription, as the trie holds it: a bounded channel that
//! drops (and counts) what does not fit, or a short handler run in the publisher's own task.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A message received by an internal subscription.
#[derive(Debug, Clone)]
pub struct InternalMsg {
    pub subject: String,
    pub reply: Option<String>,
    /// The raw `NATS/1.0` header block, if any.
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

/// The receiving end of an internal subscription, held in the trie.
pub struct InternalSink {
    mode: SinkMode,
    dropped: AtomicU64,
    /// Interest of this server alone, never announced to peer servers.
    local: bool,
}

/// A handler run in the publisher's own task, for work that must be ordered with the publisher's
/// later messages (JetStream acks). It must be short and must not block.
pub type Handler = Box<dyn Fn(&[u8], Option<&[u8]>, &[u8]) + Send + Sync>;

enum SinkMode {
    Channel(mpsc::Sender<InternalMsg>),
    Handler(Handler),
}

impl InternalSink {
    pub fn channel(tx: mpsc::Sender<InternalMsg>, local: bool) -> Self {
        InternalSink {
            mode: SinkMode::Channel(tx),
            dropped: AtomicU64::new(0),
            local,
        }
    }

    pub fn handler(f: Handler) -> Self {
        InternalSink {
            mode: SinkMode::Handler(f),
            dropped: AtomicU64::new(0),
            local: false,
        }
    }

    /// Whether this interest stays on this server (not announced to peers).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Messages dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Copies the message into the channel; returns false (and counts it) when the channel is full
    /// or closed.
    pub fn offer(
        &self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        let tx = match &self.mode {
            SinkMode::Handler(f) => {
                f(subject, reply, payload);
                return true;
            }
            SinkMode::Channel(tx) => tx,
        };
        let msg = InternalMsg {
            subject: String::from_utf8_lossy(subject).into_owned(),
            reply: reply.map(|r| String::from_utf8_lossy(r).into_owned()),
            headers: headers.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(payload),
        };
        if tx.try_send(msg).is_ok() {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}
