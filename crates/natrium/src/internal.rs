//! Internal clients: server components (the system account's request handlers, later JetStream)
//! and embedding programs publish and subscribe in an account without a socket. An internal
//! subscription delivers copies into a bounded channel; when the channel is full the message is
//! dropped and counted, so a slow internal consumer never blocks a publisher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::account::Account;
use crate::client::{publish_from, SubRef, Subscription};
use crate::server::ServerInner;

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
    tx: mpsc::Sender<InternalMsg>,
    dropped: AtomicU64,
}

impl InternalSink {
    /// Copies the message into the channel; returns false (and counts it) when the channel is full
    /// or closed.
    pub(crate) fn offer(
        &self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        let msg = InternalMsg {
            subject: String::from_utf8_lossy(subject).into_owned(),
            reply: reply.map(|r| String::from_utf8_lossy(r).into_owned()),
            headers: headers.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(payload),
        };
        if self.tx.try_send(msg).is_ok() {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Errors of the internal client API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InternalError {
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
}

/// A socket-less client bound to one account.
#[derive(Clone)]
pub struct InternalClient {
    pub(crate) server: Arc<ServerInner>,
    pub(crate) account: Arc<Account>,
}

impl InternalClient {
    pub(crate) fn new(server: Arc<ServerInner>, account: &str) -> Result<Self, InternalError> {
        let account = server
            .account(account)
            .ok_or_else(|| InternalError::UnknownAccount(account.to_string()))?;
        Ok(InternalClient { server, account })
    }

    pub fn account(&self) -> &str {
        &self.account.name
    }

    /// Subscribes; up to `capacity` messages wait in the channel before new ones are dropped.
    pub fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
        capacity: usize,
    ) -> Result<InternalSubscription, InternalError> {
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err(InternalError::InvalidSubject(subject.to_string()));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Arc::new(InternalSink {
            tx,
            dropped: AtomicU64::new(0),
        });
        let sub =
            Subscription::internal(subject.as_bytes(), queue.map(str::as_bytes), sink.clone());
        self.account.insert(sub.clone());
        Ok(InternalSubscription {
            rx,
            subs: vec![sub],
            sink,
            account: self.account.clone(),
        })
    }

    /// Publishes into the account; returns whether anyone received it.
    pub fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<bool, InternalError> {
        if !natrium_subjects::is_valid_publish_subject(subject.as_bytes()) {
            return Err(InternalError::InvalidSubject(subject.to_string()));
        }
        Ok(publish_from(
            &self.account,
            subject.as_bytes(),
            reply.map(str::as_bytes),
            headers,
            payload,
        ))
    }

    /// The server this client lives in (for handlers that report on it).
    pub(crate) fn server(&self) -> &Arc<ServerInner> {
        &self.server
    }
}

/// An internal subscription; unsubscribes when dropped.
pub struct InternalSubscription {
    rx: mpsc::Receiver<InternalMsg>,
    subs: Vec<SubRef>,
    sink: Arc<InternalSink>,
    account: Arc<Account>,
}

impl InternalSubscription {
    pub async fn next(&mut self) -> Option<InternalMsg> {
        self.rx.recv().await
    }

    /// Adds another subject delivering into the same channel.
    pub fn also(&mut self, subject: &str, queue: Option<&str>) -> Result<(), InternalError> {
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err(InternalError::InvalidSubject(subject.to_string()));
        }
        let sub = Subscription::internal(
            subject.as_bytes(),
            queue.map(str::as_bytes),
            self.sink.clone(),
        );
        self.account.insert(sub.clone());
        self.subs.push(sub);
        Ok(())
    }

    /// Messages dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for InternalSubscription {
    fn drop(&mut self) {
        for sub in &self.subs {
            self.account.remove(sub);
        }
    }
}
