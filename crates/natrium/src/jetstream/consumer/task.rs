//! A consumer's task and its I/O: ticks of the state machine (on events and timers), the state
//! save (fsynced when asked), then batched publishing and the other commands.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use natrium_store::DocFile;
use serde_json::{json, Value};

use super::state::At;
use super::wire::{Command, Save};
use super::{Committed, Consumer};
use crate::router::{Msg, SubjectWatch};
use crate::util::time::{rfc3339, unix_nanos};

impl Consumer {
    pub(super) async fn run(self: Arc<Self>) {
        // Replicated: the last delta appended to the log and not known committed yet.
        let mut in_flight: Option<Committed> = None;
        // The last tick stopped at its limit with more to deliver: the next one runs at once,
        // without asking the state for its next deadline and arming a timer for it (per tick
        // a lock, clock reads and a timer-wheel entry made and dropped). The first tick runs at
        // once: a push consumer whose deliver subject already has interest (clients subscribe
        // before they create it) delivers without waiting to be woken.
        let mut again = true;
        // A push consumer's watch on its deliver subject: the router wakes the task when a
        // subscription matching it comes or goes (nats-py subscribes after it creates the
        // consumer; a client reconnects). The interest poll is only a safety net.
        let mut watch: Option<DeliverWatch> = None;
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            if !again {
                let at = At::now();
                let mut deadline = self.state.lock().next_deadline(at);
                if watch.is_some() {
                    // A push consumer.
                    if let Some(poll) = at.mono.checked_add(self.interest_poll) {
                        deadline = Some(deadline.map_or(poll, |d| d.min(poll)));
                    }
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.stop.notified() => return,
                    _ = sleep_until(deadline) => {}
                }
                if self.stopped.load(Ordering::Acquire) {
                    return;
                }
            }
            // Interest in a push consumer's deliver subject and in the pull requests' reply
            // subjects, asked outside the state lock (the watch first, so no change after the
            // look goes unnoticed).
            let (route, replies) = {
                let st = self.state.lock();
                (st.push_route(), st.waiting_replies())
            };
            self.watch_route(&mut watch, route.as_ref());
            let bound = route.is_some_and(|d| self.client.has_interest(&d));
            let gone: Vec<_> = replies
                .into_iter()
                .filter(|r| !self.client.has_interest(r))
                .collect();
            let at = At::now();
            let tick = {
                let mut st = self.state.lock();
                st.drop_requests(&gone);
                if st.inactive(at.mono, bound) {
                    drop(st);
                    self.expire();
                    return;
                }
                st.tick(self.store.as_ref(), at, bound)
            };
            if let Some(save) = tick.save {
                if self.log.is_some() {
                    let replies = tick
                        .commands
                        .iter()
                        .any(|c| matches!(c, Command::AckReply(_)));
                    if !self.to_log(&mut in_flight, replies).await {
                        // No longer the leader: what this tick decided does not leave.
                        tracing::debug!(
                            "consumer {}/{}: progress not replicated",
                            self.stream_name,
                            self.name
                        );
                        again = false;
                        continue;
                    }
                } else {
                    self.persist(save).await;
                }
            }
            again = self.send(tick.commands).await;
            if again {
                // Let the receivers' writers send this batch before the next one is made.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Keeps `watch` on the deliver subject `route` (none for a pull consumer; a config update
    /// may change the subject).
    fn watch_route(&self, watch: &mut Option<DeliverWatch>, route: Option<&Arc<str>>) {
        if watch.as_ref().map(|w| &w.subject) == route {
            return;
        }
        *watch = route.map(|d| DeliverWatch {
            subject: d.clone(),
            // Only a literal subject can be watched: with another the poll finds the interest.
            _watch: self.client.watch_subject(d, self.wake.clone()).ok(),
        });
    }

    /// Replicated: appends the progress made since the last delta to the stream's log, once
    /// the previous append is committed (what changes meanwhile goes in one entry: group
    /// commit, no timer). Deliveries may leave as soon as their delta has its place in the log:
    /// an ack of them comes later in the log, and is never committed without it. With `wait`
    /// (sync acks to answer) the commit is waited for. Whether the log took it.
    async fn to_log(&self, in_flight: &mut Option<Committed>, wait: bool) -> bool {
        if let Some(prev) = in_flight.take() {
            if !prev.await {
                return false;
            }
        }
        match self.append_delta().await {
            Err(()) => false,
            Ok(None) => true,
            Ok(Some(c)) if wait => c.await,
            Ok(Some(c)) => {
                *in_flight = Some(c);
                true
            }
        }
    }

    /// Takes the delta and appends it, in the order taken. `Ok(None)`: nothing changed.
    async fn append_delta(&self) -> Result<Option<Committed>, ()> {
        let Some(log) = &self.log else {
            return Ok(None);
        };
        let _order = self.log_order.lock().await;
        let Some(delta) = self.state.lock().take_delta() else {
            return Ok(None);
        };
        log.append(&self.name, unix_nanos(self.created), delta)
            .await
            .map(Some)
            .ok_or(())
    }

    /// Replicated, at a stepdown (its task stopped): appends what changed since the last delta
    /// and waits for it (and so every earlier one) to be committed. Whether it was.
    pub(crate) async fn flush_log(&self) -> bool {
        match self.append_delta().await {
            Err(()) => false,
            Ok(None) => true,
            Ok(Some(c)) => c.await,
        }
    }

    /// An ephemeral consumer inactive past its threshold goes away.
    fn expire(&self) {
        if let Some(log) = &self.log {
            log.expired(&self.name);
        }
        let set = self.set.upgrade();
        if let Some(set) = &set {
            set.remove(&self.name);
        }
        self.delete();
        if let Some(set) = &set {
            set.release_unneeded();
        }
    }

    /// Runs a tick's commands in order; consecutive messages to one route (a push consumer's
    /// subject, one pull request's inbox) go as one batch, and receivers that fell behind are
    /// waited for (while they make progress) before more. Whether to tick again at once.
    async fn send(&self, cmds: Vec<Command>) -> bool {
        let mut again = false;
        let mut lagging = Vec::new();
        let mut rest = &cmds[..];
        while let Some(first) = rest.first() {
            let Some(route) = outgoing(first).map(|o| &o.route) else {
                match first {
                    Command::Tick => again = true,
                    other => self.side_effect(other),
                }
                rest = &rest[1..];
                continue;
            };
            let run = rest
                .iter()
                .take_while(|c| outgoing(c).is_some_and(|o| o.route == *route))
                .count();
            let (_, lag) = self.client.publish_batch(
                route,
                rest[..run].iter().filter_map(outgoing).map(|o| Msg {
                    subject: &o.subject,
                    reply: o.reply.as_deref().map(str::as_bytes),
                    headers: o.headers.as_deref(),
                    payload: &o.payload,
                }),
            );
            lagging.extend(lag);
            rest = &rest[run..];
        }
        for l in lagging {
            l.wait().await;
        }
        again
    }

    /// Saves the state document (on a blocking thread when it is fsynced).
    async fn persist(&self, save: Save) {
        let Some(dir) = self.dir.clone() else { return };
        let file = self.state_file.clone();
        let Save { body, sync } = save;
        let write = move || -> std::io::Result<()> {
            let mut f = file.lock();
            if f.is_none() {
                *f = Some(DocFile::open(&dir, "state")?.0);
            }
            f.as_mut().expect("opened above").write(&body, sync)
        };
        let res = if sync {
            tokio::task::spawn_blocking(write)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        } else {
            write()
        };
        if let Err(e) = res {
            tracing::error!(
                "consumer {}/{}: saving state failed: {e}",
                self.stream_name,
                self.name
            );
        }
    }

    /// Runs a command that is not a message to a route.
    pub(super) fn side_effect(&self, cmd: &Command) {
        match cmd {
            Command::Advisory { kind, body } => self.advisory(kind, body.clone()),
            Command::DeadLetter {
                seq,
                deliveries,
                reason,
                template,
            } => self.dead_letter(*seq, *deliveries, reason, template),
            Command::Release(seq) => {
                if let Some(set) = self.set.upgrade() {
                    set.release(*seq);
                }
            }
            Command::AckReply(reply) => {
                let _ = self.client.publish(reply, None, None, b"");
            }
            Command::Tick => self.wake.notify_one(),
            Command::Deliver { .. } | Command::Status(_) => {}
        }
    }

    fn advisory(&self, kind: &str, mut body: Value) {
        body["id"] = json!(format!("{:016x}", fastrand::u64(..)));
        body["timestamp"] = json!(rfc3339(SystemTime::now()));
        body["stream"] = json!(self.stream_name);
        body["consumer"] = json!(self.name);
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.{kind}.{}.{}",
            self.stream_name, self.name
        );
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    /// Publishes a copy of message `seq` to the subject `template` names, with headers saying
    /// where it comes from and why.
    fn dead_letter(&self, seq: u64, deliveries: u64, reason: &str, template: &str) {
        let Ok(msg) = self.store.load_msg(seq) else {
            return;
        };
        let subject = template
            .replace("{stream}", &self.stream_name)
            .replace("{consumer}", &self.name)
            .replace("{subject}", &String::from_utf8_lossy(&msg.subject));
        let mut h = match &msg.headers {
            Some(orig) => {
                let text = String::from_utf8_lossy(orig);
                let body = text.trim_end_matches("\r\n");
                format!("{body}\r\n")
            }
            None => "NATS/1.0\r\n".to_string(),
        };
        h.push_str(&format!(
            "Nats-DLQ-Stream: {}\r\nNats-DLQ-Consumer: {}\r\nNats-DLQ-Sequence: {seq}\r\nNats-DLQ-Deliveries: {deliveries}\r\nNats-DLQ-Reason: {reason}\r\n\r\n",
            self.stream_name, self.name
        ));
        if self
            .client
            .publish(&subject, None, Some(h.as_bytes()), &msg.payload)
            .is_err()
        {
            tracing::warn!(
                "consumer {}/{}: dead-letter subject {subject:?} is not a valid subject",
                self.stream_name,
                self.name
            );
        }
    }
}

/// A push consumer's deliver subject and the router's watch on it (held for as long as it is
/// the subject).
struct DeliverWatch {
    subject: Arc<str>,
    _watch: Option<SubjectWatch>,
}

/// The message a command sends to a route, if it sends one.
fn outgoing(cmd: &Command) -> Option<&super::wire::Outgoing> {
    match cmd {
        Command::Deliver { msg, .. } | Command::Status(msg) => Some(msg),
        _ => None,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending::<()>().await,
    }
}
