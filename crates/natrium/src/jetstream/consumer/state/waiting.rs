//! A pull consumer's waiting requests as nats-server keeps them: checking a new request against
//! the consumer's limits and priority policy, picking the request the next message goes to
//! (expiry, pin, overflow marks, max bytes), round-robin between requests, and the pin itself.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::ConsumerState;
use crate::jetstream::consumer::wire::{parse_next, status, status_msg, Command, NextRequest};
use crate::jetstream::consumer_config::PriorityPolicy;
use crate::util::time::go_duration;

/// The priority group part of a pull request.
#[derive(Debug, Clone)]
pub(super) struct RequestGroup {
    pub name: String,
    pub min_pending: i64,
    pub min_ack_pending: i64,
    /// The pin id the client presents (pinned_client).
    pub id: String,
    /// 0 (first served) to 9 (prioritized).
    pub priority: u8,
}

#[derive(Debug)]
pub(super) struct PullRequest {
    pub reply: Arc<str>,
    /// Messages still to deliver.
    pub batch: u64,
    /// Bytes still allowed (0: no limit).
    pub max_bytes: u64,
    pub expires: Option<Instant>,
    pub no_wait: bool,
    pub heartbeat: Option<Duration>,
    pub next_heartbeat: Option<Instant>,
    pub delivered: u64,
    pub group: Option<RequestGroup>,
}

impl PullRequest {
    fn priority(&self) -> u8 {
        self.group.as_ref().map_or(u8::MAX, |g| g.priority)
    }

    fn pin_id(&self) -> &str {
        self.group.as_ref().map_or("", |g| g.id.as_str())
    }

    /// `Nats-Pending-Messages`/`Nats-Pending-Bytes`: what the request still had.
    fn pending_headers(&self) -> [(&'static str, String); 2] {
        [
            ("Nats-Pending-Messages", self.batch.to_string()),
            ("Nats-Pending-Bytes", self.max_bytes.to_string()),
        ]
    }

    /// A status message to this request with its pending headers.
    pub(super) fn ending(&self, code: &str) -> Command {
        Command::Status(status_msg(
            &self.reply,
            status(code, &self.pending_headers()),
        ))
    }
}

/// The client a pinned_client consumer delivers to, and until when without a request from it.
#[derive(Debug, Clone)]
pub(super) struct Pin {
    pub id: String,
    pub group: String,
    pub since: SystemTime,
    pub deadline: Instant,
}

/// A fresh pin id (22 characters, like a NUID).
fn pin_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

impl ConsumerState {
    /// Event: a pull request (`$JS.API.CONSUMER.MSG.NEXT` or `+NXT`) answered at `reply`.
    /// Refused with a status (400, 404, 408, 409, 423), or queued (then a tick).
    pub(crate) fn pull(&mut self, reply: &str, body: &[u8], now: Instant) -> Vec<Command> {
        let refuse = |why: String| vec![Command::Status(status_msg(reply, status(&why, &[])))];
        let cfg = self.cfg.clone();
        if !cfg.is_pull() {
            return refuse("409 Consumer is push based".into());
        }
        let json = body.trim_ascii().first() == Some(&b'{');
        let req = match parse_next(body) {
            Ok(r) => r,
            Err(e) => return refuse(format!("400 Bad Request - {e}")),
        };
        let batch = req.batch.max(1) as u64;
        if cfg.max_batch > 0 && batch > cfg.max_batch as u64 {
            return refuse(format!("409 Exceeded MaxRequestBatch of {}", cfg.max_batch));
        }
        if req.expires > 0 && cfg.max_expires > 0 && req.expires > cfg.max_expires {
            return refuse(format!(
                "409 Exceeded MaxRequestExpires of {}",
                go_duration(Duration::from_nanos(cfg.max_expires as u64))
            ));
        }
        if req.max_bytes > 0 && cfg.max_bytes > 0 && req.max_bytes > cfg.max_bytes {
            return refuse(format!(
                "409 Exceeded MaxRequestMaxBytes of {}",
                cfg.max_bytes
            ));
        }
        let policy = cfg.priority_policy;
        if json {
            if (req.min_pending != 0 || req.min_ack_pending != 0)
                && policy != PriorityPolicy::Overflow
            {
                return refuse("400 Bad Request - Not a Overflow Priority consumer".into());
            }
            if !req.id.is_empty() && policy != PriorityPolicy::PinnedClient {
                return refuse("400 Bad Request - Not a Pinned Client Priority consumer".into());
            }
            if !(0..=9).contains(&req.priority) {
                return refuse("400 Bad Request - Priority must be between 0 and 9".into());
            }
            if policy != PriorityPolicy::None {
                if req.group.is_empty() {
                    return refuse("400 Bad Request - Priority Group missing".into());
                }
                if !cfg.priority_groups.contains(&req.group) {
                    return refuse("400 Bad Request - Invalid Priority Group".into());
                }
                if let Some(pin) = &mut self.pin {
                    if req.id == pin.id {
                        pin.deadline = now + Duration::from_nanos(cfg.priority_timeout as u64);
                    } else if !req.id.is_empty() {
                        return refuse("423 Nats-Pin-Id mismatch".into());
                    }
                }
            }
        }
        self.last_active = now;
        let mut out = Vec::new();
        if self.waiting.len() as i64 >= cfg.max_waiting.max(1) {
            // Make room by ending the requests that already expired.
            self.expire_requests(now, &mut out);
        }
        if req.no_wait {
            let msgs_pending = self.num_pending + self.redeliver.len() as u64;
            if msgs_pending == 0 && req.expires == 0 {
                out.extend(refuse("404 No Messages".into()));
                return out;
            }
            let batches: u64 = self.waiting.iter().map(|r| r.batch).sum();
            if msgs_pending > 0 && msgs_pending < batches {
                out.extend(refuse("408 Requests Pending".into()));
                return out;
            }
        }
        if self.waiting.len() as i64 >= cfg.max_waiting.max(1) {
            // A client asking for heartbeats waits for them instead of retrying at once.
            if req.idle_heartbeat <= 0 {
                out.extend(refuse("409 Exceeded MaxWaiting".into()));
            }
            return out;
        }
        let heartbeat =
            (req.idle_heartbeat > 0).then(|| Duration::from_nanos(req.idle_heartbeat as u64));
        let group = (json && policy != PriorityPolicy::None).then(|| group_of(&req));
        let r = PullRequest {
            reply: Arc::from(reply),
            batch,
            max_bytes: req.max_bytes.max(0) as u64,
            // A negative expiry has passed already: the tick answers 408 at once.
            expires: match req.expires {
                0 => None,
                e if e < 0 => Some(now),
                e => Some(now + Duration::from_nanos(e as u64)),
            },
            no_wait: req.no_wait,
            heartbeat,
            next_heartbeat: heartbeat.map(|h| now + h),
            delivered: 0,
            group,
        };
        if policy == PriorityPolicy::Prioritized {
            self.insert_by_priority(r);
        } else {
            self.waiting.push_back(r);
        }
        out.push(Command::Tick);
        out
    }

    /// Puts `r` after every request of its priority or a lower one.
    fn insert_by_priority(&mut self, r: PullRequest) {
        let p = r.priority();
        let at = self
            .waiting
            .iter()
            .position(|w| w.priority() > p)
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, r);
    }

    /// The reply subjects of the waiting requests (each once), for the task to check interest.
    pub(crate) fn waiting_replies(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        for r in &self.waiting {
            if !out.iter().any(|o| o == &r.reply) {
                out.push(r.reply.clone());
            }
        }
        out
    }

    /// Event: nobody subscribes to `gone` any more; their requests are dropped without an
    /// answer (nobody would read it), as nats-server does.
    pub(crate) fn drop_requests(&mut self, gone: &[Arc<str>]) {
        if !gone.is_empty() {
            self.waiting.retain(|r| !gone.contains(&r.reply));
        }
    }

    /// Pull requests that expired (408) or are due a heartbeat (100).
    pub(super) fn expire_requests(&mut self, now: Instant, out: &mut Vec<Command>) {
        let mut i = 0;
        while i < self.waiting.len() {
            let r = &mut self.waiting[i];
            if r.expires.is_some_and(|e| e <= now) {
                let r = self.waiting.remove(i).expect("index checked");
                out.push(r.ending("408 Request Timeout"));
                continue;
            }
            if let (Some(h), Some(nh)) = (r.heartbeat, r.next_heartbeat) {
                if nh <= now {
                    r.next_heartbeat = Some(now + h);
                    let route = r.reply.clone();
                    out.push(self.heartbeat(&route));
                }
            }
            i += 1;
        }
    }

    /// `100 Idle Heartbeat` with the last consumer and stream sequences, to `route`.
    pub(super) fn heartbeat(&self, route: &str) -> Command {
        let hdr = status(
            "100 Idle Heartbeat",
            &[
                ("Nats-Last-Consumer", self.dseq.to_string()),
                ("Nats-Last-Stream", self.sseq.to_string()),
            ],
        );
        Command::Status(status_msg(route, hdr))
    }

    /// Whether any waiting request could take a message now (before one is read).
    pub(super) fn has_request(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The request message of `size` bytes goes to, as nats-server picks it: expired requests
    /// end (408), a pinned_client consumer pins the first request without a pin id and skips
    /// (or ends, 423) the others, overflow requests wait until their marks are passed, and a
    /// request the message is too big for ends (409). `None` if no request can take it.
    pub(super) fn next_request(
        &mut self,
        size: u64,
        now: Instant,
        wall: SystemTime,
        out: &mut Vec<Command>,
    ) -> Option<usize> {
        let policy = self.cfg.priority_policy;
        let mut cycled = 0;
        while let Some(r) = self.waiting.front() {
            if r.expires.is_some_and(|e| e <= now) {
                let r = self.waiting.pop_front().expect("front exists");
                out.push(r.ending("408 Request Timeout"));
                continue;
            }
            let mut pinned_now = false;
            if policy == PriorityPolicy::PinnedClient {
                match &self.pin {
                    None if r.pin_id().is_empty() => {
                        if let Some(g) = &r.group {
                            let id = pin_id();
                            let group = g.name.clone();
                            self.pin = Some(Pin {
                                id: id.clone(),
                                group: group.clone(),
                                since: wall,
                                deadline: now
                                    + Duration::from_nanos(self.cfg.priority_timeout as u64),
                            });
                            pinned_now = true;
                            out.push(Command::Advisory {
                                kind: "PINNED",
                                body: json!({"type": "io.nats.jetstream.advisory.v1.consumer_group_pinned", "group": group, "pinned_id": id}),
                            });
                        }
                    }
                    Some(pin) if r.pin_id() == pin.id => {}
                    Some(_) if r.pin_id().is_empty() => {
                        cycled += 1;
                        if cycled >= self.waiting.len() {
                            return None;
                        }
                        self.waiting.rotate_left(1);
                        continue;
                    }
                    _ => {
                        // A pin id that is not (or no longer) the pin.
                        let r = self.waiting.pop_front().expect("front exists");
                        out.push(r.ending("423 Nats-Wrong-Pin-Id"));
                        continue;
                    }
                }
            }
            if policy == PriorityPolicy::Overflow {
                if let Some(g) = &r.group {
                    let marks = g.min_pending > 0 || g.min_ack_pending > 0;
                    let passed = (g.min_pending > 0
                        && g.min_pending as u64 <= self.num_pending + 1)
                        || (g.min_ack_pending > 0
                            && g.min_ack_pending as u64 <= self.pending.len() as u64);
                    if marks && !passed {
                        cycled += 1;
                        if cycled >= self.waiting.len() {
                            return None;
                        }
                        self.waiting.rotate_left(1);
                        continue;
                    }
                }
            }
            if r.max_bytes > 0 && size > r.max_bytes {
                let r = self.waiting.pop_front().expect("front exists");
                out.push(r.ending("409 Message Size Exceeds MaxBytes"));
                if pinned_now {
                    self.pin = None;
                }
                continue;
            }
            return Some(0);
        }
        None
    }

    /// A message of `size` bytes went to request `i`: counts it, sends the heartbeat timer
    /// forward, and ends the request (batch done, or its bytes used up exactly) or moves it
    /// behind the others (round robin; by priority for prioritized consumers).
    pub(super) fn served(&mut self, i: usize, size: u64, now: Instant, out: &mut Vec<Command>) {
        let Some(mut r) = self.waiting.remove(i) else {
            return;
        };
        r.delivered += 1;
        r.batch = r.batch.saturating_sub(1);
        if r.max_bytes > 0 {
            r.max_bytes -= size.min(r.max_bytes);
            if r.max_bytes == 0 {
                r.batch = 0;
            }
        }
        if let (Some(h), Some(_)) = (r.heartbeat, r.next_heartbeat) {
            r.next_heartbeat = Some(now + h);
        }
        if r.batch == 0 {
            if r.max_bytes > 0 {
                out.push(r.ending("409 Batch Completed"));
            }
            return;
        }
        if self.cfg.priority_policy == PriorityPolicy::Prioritized {
            self.insert_by_priority(r);
        } else {
            self.waiting.push_back(r);
        }
    }

    /// The end of the stream: no_wait requests end (404), as nats-server answers them there.
    pub(super) fn end_no_wait(&mut self, out: &mut Vec<Command>) {
        let mut i = 0;
        while i < self.waiting.len() {
            let r = &self.waiting[i];
            if r.no_wait && (r.expires.is_none() || r.delivered > 0) {
                let r = self.waiting.remove(i).expect("index checked");
                out.push(Command::Status(status_msg(
                    &r.reply,
                    status("404 No Messages", &[]),
                )));
                continue;
            }
            i += 1;
        }
    }

    /// The pin times out when its client sent no request for `priority_timeout`.
    pub(super) fn expire_pin(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.pin.as_ref().is_some_and(|p| p.deadline <= now) {
            let pin = self.pin.take().expect("checked");
            out.push(unpinned(&pin.group, "timeout"));
        }
    }

    /// Event: `$JS.API.CONSUMER.UNPIN` for `group` (checked to be one of the consumer's): the
    /// pin goes and the next request gets a new one. The caller runs a tick.
    pub(crate) fn unpin(&mut self, group: &str) -> Vec<Command> {
        self.pin = None;
        vec![unpinned(group, "admin"), Command::Tick]
    }

    /// The pin's deadline, for the task's timer.
    pub(super) fn pin_deadline(&self) -> Option<Instant> {
        self.pin.as_ref().map(|p| p.deadline)
    }

    /// The consumer info's `priority_groups`: the first group with its pin.
    pub(crate) fn priority_groups(&self) -> Option<(String, Option<(String, SystemTime)>)> {
        let g = self.cfg.priority_groups.first()?;
        Some((
            g.clone(),
            self.pin.as_ref().map(|p| (p.id.clone(), p.since)),
        ))
    }
}

fn group_of(req: &NextRequest) -> RequestGroup {
    RequestGroup {
        name: req.group.clone(),
        min_pending: req.min_pending,
        min_ack_pending: req.min_ack_pending,
        id: req.id.clone(),
        priority: req.priority.clamp(0, 9) as u8,
    }
}

fn unpinned(group: &str, reason: &str) -> Command {
    Command::Advisory {
        kind: "UNPINNED",
        body: json!({"type": "io.nats.jetstream.advisory.v1.consumer_group_unpinned", "group": group, "reason": reason}),
    }
}
