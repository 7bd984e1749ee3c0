//! Internal clients: server components (the system account's request handlers, JetStream) and
//! embedding programs publish and subscribe in an account without a socket. An internal
//! subscription delivers copies into a bounded channel; when the channel is full the message is
//! dropped and counted, so a slow internal consumer never blocks a publisher. A handler
//! subscription instead runs a short function in the publisher's own task.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::account::{Account, SubjectWatch};
use super::accounts::Accounts;
use super::delivery::{self, Lagging, Msg};
use super::sink::{Handler, InternalMsg, InternalSink};
use super::subscription::{SubRef, Subscription};

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
    account: Arc<Account>,
}

impl InternalClient {
    /// A client in the account named `account`, which must exist.
    pub fn new(accounts: &Accounts, account: &str) -> Result<Self, InternalError> {
        let account = accounts
            .get(account)
            .ok_or_else(|| InternalError::UnknownAccount(account.to_string()))?;
        Ok(InternalClient { account })
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
        self.subscribe_with(subject, queue, capacity, false)
    }

    /// Like `subscribe`, for interest of this server alone: peer servers in a cluster are not
    /// told about it, so messages published on them never come here for it.
    pub fn subscribe_local(
        &self,
        subject: &str,
        queue: Option<&str>,
        capacity: usize,
    ) -> Result<InternalSubscription, InternalError> {
        self.subscribe_with(subject, queue, capacity, true)
    }

    fn subscribe_with(
        &self,
        subject: &str,
        queue: Option<&str>,
        capacity: usize,
        local: bool,
    ) -> Result<InternalSubscription, InternalError> {
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err(InternalError::InvalidSubject(subject.to_string()));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Arc::new(InternalSink::channel(tx, local));
        let ctl = Arc::new(SubControl {
            account: self.account.clone(),
            sink,
            subs: parking_lot::Mutex::new(Vec::new()),
        });
        ctl.add(subject, queue)?;
        Ok(InternalSubscription { rx, ctl })
    }

    /// Subscribes with a handler that runs in the publishing task, in the publisher's order.
    pub fn subscribe_handler(
        &self,
        subject: &str,
        handler: Handler,
    ) -> Result<HandlerSubscription, InternalError> {
        let ctl = Arc::new(SubControl {
            account: self.account.clone(),
            sink: Arc::new(InternalSink::handler(handler)),
            subs: parking_lot::Mutex::new(Vec::new()),
        });
        ctl.add(subject, None)?;
        Ok(HandlerSubscription { ctl })
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
        Ok(delivery::publish(
            &self.account,
            Msg {
                subject: subject.as_bytes(),
                reply: reply.map(str::as_bytes),
                headers,
                payload,
            },
        ))
    }

    /// Publishes to the subscribers of `to`, presenting the message as `subject` (JetStream
    /// deliveries keep the stored message's subject). Returns whether anyone received it.
    pub fn publish_as(
        &self,
        to: &str,
        subject: &[u8],
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        let m = Msg {
            subject,
            reply: reply.map(str::as_bytes),
            headers,
            payload,
        };
        self.publish_batch(to, [m]).0 > 0
    }

    /// Publishes a batch to the subscribers of `to` (see [`delivery::publish_batch`]): how
    /// many reached someone, and the receivers left lagging.
    pub fn publish_batch<'a>(
        &self,
        to: &str,
        msgs: impl IntoIterator<Item = Msg<'a>>,
    ) -> (usize, Option<Lagging>) {
        delivery::publish_batch(&self.account, to.as_bytes(), msgs)
    }

    /// Whether any subscription in the account matches `subject`.
    pub fn has_interest(&self, subject: &str) -> bool {
        !self.account.matches(subject.as_bytes()).is_empty()
    }

    /// Wakes `notify` whenever a subscription matching the literal `subject` comes to the
    /// account or goes, until the watch is dropped (see [`Account::watch_subject`]): after
    /// this call, `has_interest` answers anew each time it is woken.
    pub fn watch_subject(
        &self,
        subject: &str,
        notify: Arc<Notify>,
    ) -> Result<SubjectWatch, InternalError> {
        if !natrium_subjects::is_valid_publish_subject(subject.as_bytes()) {
            return Err(InternalError::InvalidSubject(subject.to_string()));
        }
        Ok(self.account.watch_subject(subject.as_bytes(), notify))
    }
}

/// An internal subscription; unsubscribes when dropped.
pub struct InternalSubscription {
    rx: mpsc::Receiver<InternalMsg>,
    ctl: Arc<SubControl>,
}

/// The subjects of an internal subscription, changeable while another task reads its messages.
pub struct SubControl {
    account: Arc<Account>,
    sink: Arc<InternalSink>,
    subs: parking_lot::Mutex<Vec<(String, SubRef)>>,
}

impl SubControl {
    fn add(&self, subject: &str, queue: Option<&str>) -> Result<(), InternalError> {
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err(InternalError::InvalidSubject(subject.to_string()));
        }
        let sub = Subscription::internal(
            subject.as_bytes(),
            queue.map(str::as_bytes),
            self.sink.clone(),
        );
        self.account.insert(sub.clone());
        self.subs.lock().push((subject.to_string(), sub));
        Ok(())
    }

    /// Makes the subscription cover exactly `subjects` (no gap and no duplicate for subjects kept).
    pub fn set_subjects(&self, subjects: &[String]) -> Result<(), InternalError> {
        for s in subjects {
            if !natrium_subjects::is_valid_subject(s.as_bytes()) {
                return Err(InternalError::InvalidSubject(s.clone()));
            }
        }
        let current: Vec<String> = self.subs.lock().iter().map(|(s, _)| s.clone()).collect();
        for s in subjects.iter().filter(|s| !current.contains(s)) {
            self.add(s, None)?;
        }
        // Taken out under this lock, removed from the trie after it (never both locks at once).
        let dropped: Vec<SubRef> = {
            let mut subs = self.subs.lock();
            let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut *subs)
                .into_iter()
                .partition(|(s, _)| subjects.contains(s));
            *subs = keep;
            drop.into_iter().map(|(_, sub)| sub).collect()
        };
        for sub in &dropped {
            self.account.remove(sub);
        }
        Ok(())
    }

    fn clear(&self) {
        let subs = std::mem::take(&mut *self.subs.lock());
        for (_, sub) in subs {
            self.account.remove(&sub);
        }
    }
}

impl InternalSubscription {
    pub async fn next(&mut self) -> Option<InternalMsg> {
        self.rx.recv().await
    }

    /// A message already waiting, without waiting for one.
    pub fn try_next(&mut self) -> Option<InternalMsg> {
        self.rx.try_recv().ok()
    }

    /// Adds another subject delivering into the same channel.
    pub fn also(&mut self, subject: &str, queue: Option<&str>) -> Result<(), InternalError> {
        self.ctl.add(subject, queue)
    }

    /// A handle to change the subjects while another task reads the messages.
    pub fn control(&self) -> Arc<SubControl> {
        self.ctl.clone()
    }

    /// Messages dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.ctl.sink.dropped()
    }
}

/// A handler subscription; unsubscribes when dropped.
pub struct HandlerSubscription {
    ctl: Arc<SubControl>,
}

impl Drop for HandlerSubscription {
    fn drop(&mut self) {
        self.ctl.clear();
    }
}

impl Drop for InternalSubscription {
    fn drop(&mut self) {
        self.ctl.clear();
    }
}
