//! This node's replica of a replicated stream: the local `Stream` (store, consumers) and the
//! stream's Raft group. Every replica applies the committed operations in log order through the
//! R1 ingest code (`Stream::apply_entry`: checks, counters, rollups, the `Nats-Msg-Id` window),
//! so all replicas reach the same state and de-duplication holds across leader changes. The
//! leader subscribes to the stream's subjects, assembles atomic batches, proposes each message
//! (with its timestamp), TTL expiries, schedules and sourced messages, and publishes the PubAck
//! once the entry is committed (synced on a majority, itself included) and applied here; it runs
//! the consumers and the sources, whose configs and progress are replicated in the group too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use natrium_raft::{node_id, Group, GroupConfig, Peer, RaftError, Role};
use natrium_store::{FileStore, FileStoreConfig, MemStore, StoreError, StreamStore, SyncPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};

pub(crate) use super::consumers::ConsumerRecord;
use super::consumers::{ConsumerTable, LogHook};
use super::meta::StreamAssignment;
use super::JsCluster;
use crate::jetstream::catalog::Catalog;
use crate::jetstream::config::{Retention, Storage, StreamConfig};
use crate::jetstream::consumer::{Consumer, Delta};
use crate::jetstream::errors::ApiError;
use crate::jetstream::stream::{
    decode_batch, encode_batch, replay_over, replayed_through, Entry, LeaderBatches, Proposal,
    Replay, Replication, Stream,
};
use crate::router::InternalClient;
use crate::util::time::{from_unix_nanos, now_nanos, unix_nanos};

/// Proposals the leader keeps in flight before it stops reading published messages.
const IN_FLIGHT: usize = 16 * 1024;

/// Published messages the leader puts in one log entry at most (those already waiting when it
/// takes one), and their bytes at most.
const GROUP_MSGS: usize = 256;
const GROUP_BYTES: usize = 1024 * 1024;

/// Entries of published messages the leader keeps proposed and not yet committed; past them it
/// lets messages gather for the next group. openraft 0.9 appends (and fsyncs) one proposal at
/// a time, so proposing each small burst as it came cost one fsync each (R3 async publishing
/// at a third of this with no bound: bench/README.md).
const GROUPS_IN_FLIGHT: usize = 4;

/// How long a stepdown waits for another leader.
const STEPDOWN_WAIT: Duration = Duration::from_secs(8);

/// How long a stopping leader waits for its consumers' last progress to be committed.
const CONSUMER_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// A leader that has heard from no majority of its voters for this long has lost its quorum
/// (nats-server: ten of its 1 s heartbeats; ours are 250 ms, elections time out in 1.1-1.6 s).
const LOST_QUORUM: Duration = Duration::from_secs(3);

/// Quorum-lost advisories of one stream are this far apart at least (as nats-server).
const LOST_QUORUM_ADVISORY_EVERY: Duration = Duration::from_secs(10);

/// How long adding a member may take (it is caught up as a learner first).
const ADD_MEMBER_WAIT: Duration = Duration::from_secs(60);

/// An operation of a stream's group other than a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    /// The leader's first entry: once applied, everything before it is.
    Barrier,
    Purge {
        filter: Option<String>,
        seq: u64,
        keep: u64,
    },
    DeleteMsg {
        seq: u64,
        no_erase: bool,
    },
    Consumer {
        name: String,
        record: Box<ConsumerRecord>,
    },
    ConsumerDelete {
        name: String,
    },
    /// A whole state document (entries of earlier versions; deltas replaced it).
    ConsumerState {
        name: String,
        state: Vec<u8>,
    },
    /// What a consumer's leader changed since its last delta: applied on every replica into
    /// its copy of the progress; messages it released leave work queues and interest streams.
    ConsumerDelta {
        name: String,
        created_ns: i64,
        delta: Delta,
    },
    /// Messages the leader found due (TTL, max age with markers), removed at `ts`.
    Expire {
        seqs: Vec<u64>,
        ts: i64,
    },
    /// Schedules the leader found due, fired at `ts`.
    Fire {
        seqs: Vec<u64>,
        ts: i64,
    },
    /// The next message gets sequence `next` (the end of an imported stream: its last
    /// messages were deleted).
    Advance {
        next: u64,
    },
}

/// A message of an R1 stream made replicated, with the sequence it had: `I`, sequence (u64
/// LE), then the message as `encode_msg` writes it.
fn encode_import(
    seq: u64,
    ts: i64,
    subject: &str,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = vec![b'I'];
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&encode_msg(ts, subject, headers, payload));
    v
}

fn decode_import(b: &[u8]) -> Option<(u64, MsgEntry<'_>)> {
    let seq = u64::from_le_bytes(b.get(1..9)?.try_into().ok()?);
    Some((seq, decode_msg(b.get(9..)?)?))
}

/// A published message as an entry: `M`, timestamp (i64 LE), subject (u16 LE length),
/// headers (u32 LE length, `u32::MAX` for none), payload.
fn encode_msg(ts: i64, subject: &str, headers: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    encode_msg_after(&[], ts, subject, headers, payload)
}

/// `encode_msg`'s entry behind `prefix` (a `P` header), in one allocation: a message on the
/// replicated publish path is copied once into its entry.
fn encode_msg_after(
    prefix: &[u8],
    ts: i64,
    subject: &str,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(
        prefix.len() + 19 + subject.len() + headers.map_or(0, <[u8]>::len) + payload.len(),
    );
    v.extend_from_slice(prefix);
    v.push(b'M');
    v.extend_from_slice(&ts.to_le_bytes());
    v.extend_from_slice(&(subject.len() as u16).to_le_bytes());
    v.extend_from_slice(subject.as_bytes());
    match headers {
        Some(h) => {
            v.extend_from_slice(&(h.len() as u32).to_le_bytes());
            v.extend_from_slice(h);
        }
        None => v.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    v.extend_from_slice(payload);
    v
}

/// Several published messages in one entry (one log append, one fsync, for all of them): `N`,
/// then for each message its `encode_msg` entry with a u32 LE length in front. Each is applied
/// as if it were its own entry, in order; the answer holds each one's answer the same way.
/// openraft 0.9 waits for the fsync of each append before it takes the next proposal, so a
/// leader proposing one entry per message stored at most one message per fsync.
fn encode_group(msgs: &[Vec<u8>]) -> Vec<u8> {
    let len = msgs.iter().map(|m| m.len() + 4).sum::<usize>();
    let mut v = Vec::with_capacity(1 + len);
    v.push(b'N');
    for m in msgs {
        v.extend_from_slice(&(m.len() as u32).to_le_bytes());
        v.extend_from_slice(m);
    }
    v
}

/// A published message (`M`) or batch commit (`B`) with the subject its PubAck goes to: `P`,
/// reply (u16 LE length), then the entry. The leader that proposed it answers from its
/// proposal; a leader elected later that commits it answers when it applies it (as
/// nats-server's entries carry the reply for whichever server leads when they are applied).
fn encode_replied(reply: &str, entry: &[u8]) -> Vec<u8> {
    let mut v = reply_header(reply);
    v.extend_from_slice(entry);
    v
}

/// A `P` entry's header: `P`, then the reply with its u16 LE length.
fn reply_header(reply: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + reply.len());
    v.push(b'P');
    v.extend_from_slice(&(reply.len() as u16).to_le_bytes());
    v.extend_from_slice(reply.as_bytes());
    v
}

/// A `P` entry's reply subject and the entry it wraps.
fn decode_replied(b: &[u8]) -> Option<(&str, &[u8])> {
    let n = u16::from_le_bytes(b.get(1..3)?.try_into().ok()?) as usize;
    let reply = std::str::from_utf8(b.get(3..3 + n)?).ok()?;
    Some((reply, b.get(3 + n..)?))
}

/// `entry` wrapped with the subject its PubAck goes to, when it has one (a subject too long
/// for the frame, beyond any control line, is answered by the proposing leader only).
fn replied(entry: Vec<u8>, reply: Option<&str>) -> Vec<u8> {
    match reply {
        Some(r) if r.len() <= usize::from(u16::MAX) => encode_replied(r, &entry),
        _ => entry,
    }
}

/// The `P` header for `reply`, empty when there is none (or it is too long for the frame: see
/// `replied`).
fn reply_prefix(reply: Option<&str>) -> Vec<u8> {
    match reply {
        Some(r) if r.len() <= usize::from(u16::MAX) => reply_header(r),
        _ => Vec::new(),
    }
}

/// How old an entry taken over by a new leader may be for its PubAck to still be sent: no
/// client waits that long (stock clients wait 5 s). A node elected after a restart applies the
/// log since its last snapshot again; without this it answered every reply in it.
const INHERITED_ANSWER_AGE: Duration = Duration::from_secs(60);

/// Whether the PubAck of `entry` (an `M` or `B`, stamped by its leader at bytes 1..9) is young
/// enough to be sent by the leader that took it over.
fn answer_wanted(entry: &[u8]) -> bool {
    let Some(ts) = entry
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
    else {
        return false;
    };
    now_nanos().saturating_sub(ts) < INHERITED_ANSWER_AGE.as_nanos() as i64
}

/// Whether `e` is a plain published message (`M`, or `M` wrapped with its reply): what a
/// group entry (`N`) may hold.
fn is_plain_msg(e: &[u8]) -> bool {
    match e.first() {
        Some(b'M') => true,
        Some(b'P') => decode_replied(e).is_some_and(|(_, inner)| inner.first() == Some(&b'M')),
        _ => false,
    }
}

/// The parts of a group entry, or of a group's answer (the same framing after `skip` bytes).
fn group_parts(b: &[u8], skip: usize) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    let mut at = skip;
    while at < b.len() {
        let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        parts.push(b.get(at + 4..at + 4 + n)?);
        at += 4 + n;
    }
    Some(parts)
}

struct MsgEntry<'a> {
    ts: i64,
    subject: &'a [u8],
    headers: Option<&'a [u8]>,
    payload: &'a [u8],
}

fn decode_msg(b: &[u8]) -> Option<MsgEntry<'_>> {
    let ts = i64::from_le_bytes(b.get(1..9)?.try_into().ok()?);
    let sl = u16::from_le_bytes(b.get(9..11)?.try_into().ok()?) as usize;
    let subject = b.get(11..11 + sl)?;
    let at = 11 + sl;
    let hl = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
    let (headers, at) = if hl == u32::MAX {
        (None, at + 4)
    } else {
        let hl = hl as usize;
        (Some(b.get(at + 4..at + 4 + hl)?), at + 4 + hl)
    };
    Some(MsgEntry {
        ts,
        subject,
        headers,
        payload: b.get(at..)?,
    })
}

fn encode_control(c: &Control) -> Vec<u8> {
    let mut v = vec![b'J'];
    v.extend_from_slice(&serde_json::to_vec(c).unwrap_or_default());
    v
}

/// What the replicas share with the state machine.
struct Shared {
    /// After a restart: (sequence the next accepted message gets, last sequence the store
    /// already holds). Messages up to the latter are found, not stored again.
    replay: Replay,
}

/// The stream group's state machine.
struct StreamSm {
    /// Where missing messages are fetched from after a snapshot.
    cluster: Weak<JsCluster>,
    account: String,
    /// The replica's directory.
    dir: PathBuf,
    stream: Arc<Stream>,
    shared: Arc<Mutex<Shared>>,
    /// Largest message timestamp applied (the leader stamps later ones after it).
    max_ts: Arc<AtomicI64>,
    /// The replicated consumers (locked after `shared` when both are).
    consumers: Arc<Mutex<ConsumerTable>>,
    /// The account's client: a leader answers the PubAcks of entries it took over with it.
    client: InternalClient,
}

/// What a snapshot holds besides the store (which is synced when it is taken).
#[derive(Serialize, Deserialize)]
struct SnapshotState {
    last_seq: u64,
    max_ts: i64,
    /// (msg id, sequence, timestamp) inside the window.
    ids: Vec<(String, u64, i64)>,
    last_id: Option<String>,
    consumers: BTreeMap<String, ConsumerRecord>,
}

fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::MsgTooLarge => ApiError::message_too_large(),
        other => ApiError::store_failed(other.to_string()),
    }
}

impl StreamSm {
    fn error(&self, e: ApiError) -> Vec<u8> {
        json!({"stream": self.stream.name, "error": e})
            .to_string()
            .into_bytes()
    }

    fn apply_msg(&mut self, m: MsgEntry<'_>, sourced: bool, mirrored: Option<u64>) -> Vec<u8> {
        let mut sh = self.shared.lock();
        self.max_ts.fetch_max(m.ts, Ordering::Relaxed);
        let e = Entry {
            subject: m.subject,
            headers: m.headers,
            payload: m.payload,
            ts: m.ts,
            sourced,
        };
        match mirrored {
            Some(seq) => {
                if !self.stream.apply_mirror_entry(seq, &e, &mut sh.replay) {
                    tracing::warn!(
                        "stream {}: mirrored message {seq} not stored",
                        self.stream.name
                    );
                }
                b"{}".to_vec()
            }
            None => self.stream.apply_entry(&e, &mut sh.replay),
        }
    }

    /// A group of published messages: each applied as its own entry would be (and, on a
    /// leader that took the entry over, answered).
    fn apply_group(&mut self, data: &[u8], inherited: bool) -> Vec<u8> {
        let Some(parts) = group_parts(data, 1) else {
            return self.error(ApiError::bad_request());
        };
        let mut answer = Vec::with_capacity(parts.len() * 64);
        for part in parts {
            let one = match part.first() {
                Some(b'M') | Some(b'P') => self.apply_entry_as(part, inherited),
                _ => self.error(ApiError::bad_request()),
            };
            answer.extend_from_slice(&(one.len() as u32).to_le_bytes());
            answer.extend_from_slice(&one);
        }
        answer
    }

    fn apply_batch(&mut self, data: &[u8]) -> Vec<u8> {
        let Some((ts, id, msgs)) = decode_batch(data) else {
            return self.error(ApiError::bad_request());
        };
        let mut sh = self.shared.lock();
        self.max_ts.fetch_max(ts, Ordering::Relaxed);
        self.stream.apply_batch(&id, msgs, ts, &mut sh.replay)
    }

    /// A message imported from an R1 stream: stored as it was, at its sequence (no checks:
    /// it was accepted when it was published), its `Nats-Msg-Id` remembered.
    fn apply_import(&mut self, seq: u64, m: MsgEntry<'_>) -> Vec<u8> {
        let store = self.stream.store.clone();
        let mut sh = self.shared.lock();
        self.max_ts.fetch_max(m.ts, Ordering::Relaxed);
        replayed_through(&mut sh.replay, seq);
        if store.state().last_seq < seq {
            if let Err(e) = super::catchup::advance(store.as_ref(), seq, m.ts) {
                return self.error(store_error(&e));
            }
            if let Err(e) = store.store_msg(m.subject, m.headers, m.payload, m.ts) {
                return self.error(store_error(&e));
            }
            self.stream.stored(seq, m.subject);
        }
        if let Some(id) = crate::jetstream::stream::headers::get(m.headers, "Nats-Msg-Id") {
            self.stream.record_msg_id(id, seq, m.ts);
        }
        json!({"stream": self.stream.name, "seq": seq})
            .to_string()
            .into_bytes()
    }

    fn apply_control(&mut self, c: Control) -> Vec<u8> {
        match c {
            Control::Barrier => b"{}".to_vec(),
            Control::Advance { next } => {
                let mut sh = self.shared.lock();
                replayed_through(&mut sh.replay, next.saturating_sub(1));
                let ts = self.max_ts.load(Ordering::Relaxed);
                match super::catchup::advance(self.stream.store.as_ref(), next, ts) {
                    Ok(()) => b"{}".to_vec(),
                    Err(e) => self.error(store_error(&e)),
                }
            }
            Control::Purge { filter, seq, keep } => {
                let replaying = self.shared.lock().replay;
                let purged = match replaying {
                    Some(r) => self
                        .stream
                        .purge_replayed(filter.as_deref(), seq, keep, r.next),
                    None => self.stream.purge(filter.as_deref(), seq, keep),
                };
                match purged {
                    Ok(n) => json!({"success": true, "purged": n})
                        .to_string()
                        .into_bytes(),
                    Err(e) => json!({"error": e}).to_string().into_bytes(),
                }
            }
            Control::DeleteMsg { seq, no_erase } => match self.stream.delete_msg(seq, no_erase) {
                Ok(()) => json!({"success": true}).to_string().into_bytes(),
                Err(e) => json!({"error": e}).to_string().into_bytes(),
            },
            Control::Consumer { name, record } => {
                self.consumers.lock().set_record(name, *record);
                b"{}".to_vec()
            }
            Control::ConsumerDelete { name } => {
                self.consumers.lock().remove(&name);
                if self.stream.config_arc().retention == Retention::Interest {
                    self.release_unneeded();
                }
                b"{}".to_vec()
            }
            Control::ConsumerState { name, state } => {
                self.consumers.lock().set_state(&name, &state);
                b"{}".to_vec()
            }
            Control::ConsumerDelta {
                name,
                created_ns,
                delta,
            } => {
                self.consumers.lock().apply(&name, created_ns, &delta);
                self.release(&delta.released);
                b"{}".to_vec()
            }
            Control::Expire { seqs, ts } => {
                let mut sh = self.shared.lock();
                self.max_ts.fetch_max(ts, Ordering::Relaxed);
                self.stream.apply_expire(&seqs, ts, &mut sh.replay);
                b"{}".to_vec()
            }
            Control::Fire { seqs, ts } => {
                let mut sh = self.shared.lock();
                self.max_ts.fetch_max(ts, Ordering::Relaxed);
                self.stream.apply_fire(&seqs, ts, &mut sh.replay);
                b"{}".to_vec()
            }
        }
    }
}

impl StreamSm {
    /// Messages a consumer is done with, by the stream's retention: a work queue drops them,
    /// an interest stream when no consumer (by the progress the log holds) needs them.
    fn release(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let store = self.stream.store.as_ref();
        match self.stream.config_arc().retention {
            Retention::Limits => return,
            Retention::WorkQueue => {
                for s in seqs {
                    let _ = store.remove_msg(*s);
                }
            }
            Retention::Interest => {
                for s in seqs {
                    let Ok(m) = store.load_msg(*s) else { continue };
                    if !self.consumers.lock().needed(*s, &m.subject) {
                        let _ = store.remove_msg(*s);
                    }
                }
            }
        }
        self.stream.consumers.removed_inside();
    }

    /// Interest retention after a consumer went: what no remaining consumer needs goes.
    fn release_unneeded(&self) {
        let store = self.stream.store.as_ref();
        let mut seq = store.state().first_seq;
        while let Ok(m) = store.load_next_msg(b">", seq) {
            if !self.consumers.lock().needed(m.seq, &m.subject) {
                let _ = store.remove_msg(m.seq);
            }
            seq = m.seq + 1;
        }
        self.stream.consumers.removed_inside();
    }
}

impl StreamSm {
    /// Applies entry `data`; `inherited`: this node leads and the entry is of an earlier term,
    /// so the reply a `P` entry carries is answered here.
    fn apply_entry_as(&mut self, data: &[u8], inherited: bool) -> Vec<u8> {
        match data.first() {
            Some(b'P') => {
                let Some((reply, inner)) = decode_replied(data) else {
                    return self.error(ApiError::bad_request());
                };
                let answer = match inner.first() {
                    Some(b'M') | Some(b'B') => self.apply_entry_as(inner, false),
                    _ => self.error(ApiError::bad_request()),
                };
                if inherited && answer_wanted(inner) {
                    let _ = self.client.publish(reply, None, None, &answer);
                }
                answer
            }
            Some(b'M') => match decode_msg(data) {
                Some(m) => self.apply_msg(m, false, None),
                None => self.error(ApiError::bad_request()),
            },
            Some(b'S') => match decode_msg(data) {
                Some(m) => self.apply_msg(m, true, None),
                None => self.error(ApiError::bad_request()),
            },
            Some(b'R') => {
                let seq = data
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                match (seq, data.get(9..).and_then(decode_msg)) {
                    (Some(seq), Some(m)) => self.apply_msg(m, false, Some(seq)),
                    _ => self.error(ApiError::bad_request()),
                }
            }
            Some(b'N') => self.apply_group(data, inherited),
            Some(b'B') => self.apply_batch(data),
            Some(b'I') => match decode_import(data) {
                Some((seq, m)) => self.apply_import(seq, m),
                None => self.error(ApiError::bad_request()),
            },
            Some(b'J') => match serde_json::from_slice::<Control>(&data[1..]) {
                Ok(c) => self.apply_control(c),
                Err(e) => self.error(ApiError::invalid_json(e)),
            },
            _ => self.error(ApiError::bad_request()),
        }
    }
}

impl natrium_raft::StateMachine for StreamSm {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        self.apply_entry_as(data, false)
    }

    fn apply_entry(&mut self, _index: u64, data: &[u8], inherited: bool) -> Vec<u8> {
        self.apply_entry_as(data, inherited)
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.stream.store.sync().map_err(|e| e.to_string())?;
        let (ids, last_id) = self.stream.dedupe_snapshot();
        let st = SnapshotState {
            last_seq: self.stream.store.state().last_seq,
            max_ts: self.max_ts.load(Ordering::Relaxed),
            ids,
            last_id,
            consumers: self.consumers.lock().records(),
        };
        serde_json::to_vec(&st).map_err(|e| e.to_string())
    }

    /// A leader's snapshot: what this replica holds of its range may include messages removed
    /// since it last applied the log (their entries are compacted into the snapshot), which
    /// are removed here too before the snapshot is taken as at open.
    fn install(&mut self, data: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Head {
            last_seq: u64,
        }
        let head: Head = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let held = self.stream.store.state().last_seq;
        if held > 0 {
            let upto = held.min(head.last_seq);
            let reconciled = match self.cluster.upgrade() {
                Some(cl) => cl.reconcile_blocking(
                    &self.account,
                    &self.stream.name,
                    &self.stream.store,
                    upto,
                ),
                None => Err("stopping".into()),
            };
            match reconciled {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "stream {}: removed {n} messages the leader removed while this replica was behind",
                    self.stream.name
                ),
                Err(e) => tracing::error!(
                    "stream {}: could not learn what the leader removed up to {upto}: {e}",
                    self.stream.name
                ),
            }
        }
        self.restore(data)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let st: SnapshotState = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let held = self.stream.store.state().last_seq;
        if held < st.last_seq {
            // A new or lagging replica: the messages the snapshot covers come from the leader.
            let fetched = match self.cluster.upgrade() {
                Some(cl) => cl.catch_up_blocking(
                    &self.account,
                    &self.stream.name,
                    &self.stream.store,
                    st.last_seq,
                ),
                None => Err("stopping".into()),
            };
            let held = self.stream.store.state().last_seq;
            if let Err(e) = fetched {
                // Not an error for openraft (it would stop the group here). The sequences stay
                // aligned with the log (the missing ones are gaps for now), the range is noted
                // lost, and the replica is closed and repaired from its peers before it opens
                // again (not voting nor serving meanwhile).
                tracing::error!(
                    "stream {}: the store holds sequences up to {held}, its snapshot says {}; catching up failed: {e}; repairing",
                    self.stream.name,
                    st.last_seq
                );
                let noted = super::repair::note_lost(&self.dir, held + 1, st.last_seq);
                let ts = self.stream.store.state().last_ts;
                if let Err(e) = noted.map_err(|e| e.to_string()).and_then(|()| {
                    super::catchup::advance(self.stream.store.as_ref(), st.last_seq + 1, ts)
                        .map_err(|e| e.to_string())
                }) {
                    return Err(format!("noting the messages not caught up: {e}"));
                }
                if let Some(cl) = self.cluster.upgrade() {
                    let (account, name) = (self.account.clone(), self.stream.name.clone());
                    tokio::spawn(async move { cl.reopen(&account, &name).await });
                }
            }
        }
        let mut sh = self.shared.lock();
        self.stream.restore_dedupe(st.ids, st.last_id);
        self.max_ts.fetch_max(st.max_ts, Ordering::Relaxed);
        self.consumers.lock().restore(st.consumers);
        sh.replay = replay_over(self.stream.store.as_ref(), st.last_seq + 1);
        Ok(())
    }
}

/// This node's replica of one stream.
pub(crate) struct Replica {
    pub(crate) account: String,
    pub(crate) name: String,
    pub(crate) group: Group,
    pub(crate) stream: Arc<Stream>,
    catalog: Arc<Catalog>,
    client: InternalClient,
    cluster: Weak<JsCluster>,
    max_ts: Arc<AtomicI64>,
    consumers: Arc<Mutex<ConsumerTable>>,
    dir: PathBuf,
    leading: Arc<AtomicBool>,
    /// The subjects the leader's ingest listens on (none when not leading).
    listening: Mutex<Option<Vec<String>>>,
    /// The leader takes no publishes while a conversion imports the R1 stream's messages.
    ingest_held: watch::Sender<bool>,
    /// Work the stream decided for its leader to propose (timed work, sourced messages).
    proposals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Proposal>>,
    /// Since when this server leads (serving).
    led_since: Mutex<Option<Instant>>,
    /// A membership change runs (on the leader).
    reshaping: AtomicBool,
    /// When the last quorum-lost advisory left.
    lost_quorum_sent: Mutex<Option<Instant>>,
    last_announce: Mutex<Instant>,
    /// Stops the leader's tasks.
    lead_stop: Mutex<Option<watch::Sender<bool>>>,
    stop: watch::Sender<bool>,
}

fn open_store(cfg: &StreamConfig, dir: &Path) -> Result<Arc<dyn StreamStore>, StoreError> {
    Ok(match cfg.storage {
        Storage::Memory => Arc::new(MemStore::new(cfg.limits())?),
        Storage::File => Arc::new(open_file_store(cfg, &dir.join("msgs"))?),
    })
}

/// A replica's file store in `msgs`.
pub(super) fn open_file_store(cfg: &StreamConfig, msgs: &Path) -> Result<FileStore, StoreError> {
    // The Raft log is what is durable before the PubAck; the store is synced when a snapshot
    // is taken (the log before it is dropped only then).
    FileStore::open(
        FileStoreConfig {
            sync: SyncPolicy::Interval(Duration::from_secs(60)),
            // Its high-water mark is the Raft log: messages a cut store lost are stored again
            // from it, so they must not be written off as lost here.
            high_water_mark: false,
            ..FileStoreConfig::new(msgs)
        },
        cfg.limits(),
    )
}

impl Replica {
    /// Opens the replica in `dir` (store and group), puts its stream in the account's catalog
    /// and starts following the group.
    pub(crate) async fn open(
        cl: &Arc<JsCluster>,
        catalog: &Arc<Catalog>,
        sa: &StreamAssignment,
        dir: &Path,
    ) -> Result<Arc<Replica>, String> {
        crate::util::fs::create_dir_all_durable(dir).map_err(|e| e.to_string())?;
        let body = json!({"config": sa.config, "created_ns": sa.created_ns, "peers": sa.peers});
        crate::util::fs::write_atomic(&dir.join("meta.json"), body.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let store = open_store(&sa.config, dir).map_err(|e| e.to_string())?;
        let client = catalog.client().clone();
        let stream = Stream::new(
            sa.config.clone(),
            from_unix_nanos(sa.created_ns),
            store,
            client.clone(),
            false,
            catalog.interest_poll(),
        );
        let shared = Arc::new(Mutex::new(Shared { replay: None }));
        let consumers = Arc::new(Mutex::new(ConsumerTable::default()));
        let max_ts = Arc::new(AtomicI64::new(0));
        let st = stream.store.state();
        if st.last_seq == 0 && st.msgs == 0 && sa.config.first_seq > 1 {
            // `first_seq`: the first message stored gets it, on every replica.
            stream
                .store
                .compact(sa.config.first_seq)
                .map_err(|e| e.to_string())?;
        }
        // Until a snapshot says otherwise, the whole log is replayed over what the store holds.
        shared.lock().replay = replay_over(stream.store.as_ref(), sa.config.first_seq.max(1));
        let sm = StreamSm {
            cluster: Arc::downgrade(cl),
            account: sa.account.clone(),
            dir: dir.to_path_buf(),
            stream: stream.clone(),
            shared: shared.clone(),
            max_ts: max_ts.clone(),
            consumers: consumers.clone(),
            client: catalog.client().clone(),
        };
        let group = Group::open(
            cl.id,
            &GroupConfig {
                member_marker: Some(dir.join("raft.member")),
                ..cl.stream_group_config(&sa.group)
            },
            &dir.join("raft"),
            sm,
            cl.hub.transport(&sa.group),
        )
        .await
        .map_err(|e| e.to_string())?;
        cl.hub.register(&sa.group, group.clone());
        // Before any consumer is made: their progress and retention go through the log.
        stream.consumers.set_log(Arc::new(LogHook {
            group: group.clone(),
            table: consumers.clone(),
            encode_delta: |name, created_ns, delta| {
                encode_control(&Control::ConsumerDelta {
                    name: name.to_string(),
                    created_ns,
                    delta,
                })
            },
            encode_delete: |name| {
                encode_control(&Control::ConsumerDelete {
                    name: name.to_string(),
                })
            },
        }));
        if let Err(e) = catalog.insert_replicated(stream.clone()) {
            // Another stream holds the name here: the group opened for nothing is closed.
            cl.hub.unregister(&sa.group);
            group.shutdown().await;
            let _ = stream.store.stop();
            return Err(e.description);
        }
        let leading = Arc::new(AtomicBool::new(false));
        let (proposals_tx, proposals) = mpsc::unbounded_channel();
        stream.start_replica(Arc::new(Hook {
            leading: leading.clone(),
            proposals: proposals_tx,
        }));
        let (stop, _) = watch::channel(false);
        let r = Arc::new(Replica {
            account: sa.account.clone(),
            name: sa.config.name.clone(),
            group,
            stream,
            catalog: catalog.clone(),
            client,
            cluster: Arc::downgrade(cl),
            max_ts,
            consumers,
            dir: dir.to_path_buf(),
            leading,
            listening: Mutex::new(None),
            ingest_held: watch::channel(
                super::convert::Pending::read_for(dir, &sa.group).is_some(),
            )
            .0,
            proposals: tokio::sync::Mutex::new(proposals),
            led_since: Mutex::new(None),
            reshaping: AtomicBool::new(false),
            lost_quorum_sent: Mutex::new(None),
            last_announce: Mutex::new(Instant::now()),
            lead_stop: Mutex::new(None),
            stop,
        });
        tokio::spawn(follow(Arc::downgrade(&r)));
        Ok(r)
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Since when this server leads the stream (serving), as wall-clock time.
    pub(crate) fn leader_since(&self) -> Option<std::time::SystemTime> {
        let since = (*self.led_since.lock())?;
        std::time::SystemTime::now().checked_sub(since.elapsed())
    }

    /// Lets the leader take publishes (a conversion's import is done).
    pub(super) fn release_ingest(&self) {
        self.ingest_held.send_replace(false);
    }

    /// Whether the leader may take publishes (no conversion holds them back).
    pub(super) fn ingest_released(&self) -> bool {
        !*self.ingest_held.borrow()
    }

    /// Whether this server leads the stream and its ingest listens on exactly `subjects`.
    pub(crate) fn listens_on(&self, subjects: &[String]) -> bool {
        self.is_leader() && self.listening.lock().as_deref() == Some(subjects)
    }

    /// Whether this follower answers a direct get from its own store: only a get by sequence of
    /// a message it holds (a stored message never changes). A get by subject (KV's get: the
    /// last message of a key, `last_for` or `last_by_subj`), `next_by_subj` and batches go to
    /// the leader, which has applied every acknowledged write; a follower may not have yet, and
    /// a put followed by a get read the value before the put (replication::a_kv_bucket...).
    pub(crate) fn answers_direct(&self, last_for: &[&str], payload: &[u8]) -> bool {
        if !last_for.is_empty() {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return false;
        };
        let by_seq_only = ["next_by_subj", "last_by_subj", "batch", "multi_last"]
            .iter()
            .all(|k| v.get(k).is_none());
        match v["seq"].as_u64() {
            Some(seq) if by_seq_only => self.stream.store.load_msg(seq).is_ok(),
            _ => false,
        }
    }

    /// The account's client (advisories go out with it).
    pub(crate) fn client(&self) -> &InternalClient {
        &self.client
    }

    /// The group's voters (this server included) by name.
    pub(crate) fn voters(&self) -> Vec<String> {
        let st = self.group.status();
        let mut v: Vec<String> = st
            .peers
            .iter()
            .filter(|p| p.voter)
            .map(|p| p.name.clone())
            .collect();
        if st.role == Role::Leader {
            v.push(self.group_member_name());
        }
        v.sort();
        v
    }

    fn group_member_name(&self) -> String {
        self.cluster
            .upgrade()
            .map(|cl| cl.name.clone())
            .unwrap_or_default()
    }

    /// On the leader: whether the group's voters differ from the stream's assigned `peers`.
    pub(crate) fn needs_reshape(&self, peers: &[String]) -> bool {
        if self.reshaping.load(Ordering::Acquire) {
            return false;
        }
        let mut want = peers.to_vec();
        want.sort();
        self.voters() != want
    }

    /// On the leader: makes the group's voters the assigned `peers`. New members are added
    /// (as learners, caught up from the log or a snapshot, then voters) before others are
    /// removed, so the group keeps its quorum; a leader not among `peers` gives its
    /// leadership away last, and the next leader removes it.
    pub(crate) async fn reshape(self: Arc<Self>, peers: Vec<String>) {
        if self.reshaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.group_member_name();
        let current = self.voters();
        for p in peers.iter().filter(|p| !current.contains(p)) {
            tracing::info!(
                "JetStream cluster: stream {:?}: adding {p} to its group",
                self.name
            );
            let add = self.group.add_member(node_id(p), Peer { name: p.clone() });
            match tokio::time::timeout(ADD_MEMBER_WAIT, add).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("stream {:?}: adding {p}: {e}", self.name),
                Err(_) => tracing::warn!("stream {:?}: adding {p}: timed out", self.name),
            }
        }
        for p in current.iter().filter(|p| !peers.contains(p) && **p != me) {
            tracing::info!(
                "JetStream cluster: stream {:?}: removing {p} from its group",
                self.name
            );
            if let Err(e) = self.group.remove_member(node_id(p)).await {
                tracing::warn!("stream {:?}: removing {p}: {e}", self.name);
            }
        }
        if let Some(cl) = self.cluster.upgrade() {
            if self.is_leader() {
                cl.announce_leader(&self);
            }
        }
        if !peers.contains(&me) && self.is_leader() {
            if let Err(e) = self.step_down().await {
                tracing::warn!(
                    "stream {:?}: handing leadership over: {}",
                    self.name,
                    e.description
                );
            }
        }
        self.reshaping.store(false, Ordering::Release);
    }

    /// On the leader: whether it has heard from no majority of its voters for a while (and
    /// the last advisory about it is old enough to send another).
    pub(crate) fn quorum_lost(&self) -> bool {
        if self
            .led_since
            .lock()
            .is_none_or(|t| t.elapsed() < LOST_QUORUM)
        {
            return false;
        }
        let st = self.group.status();
        let voters = st.peers.iter().filter(|p| p.voter).count() + 1;
        let heard = st
            .peers
            .iter()
            .filter(|p| p.voter && p.last_contact.is_some_and(|d| d < LOST_QUORUM))
            .count()
            + 1;
        if heard > voters / 2 {
            return false;
        }
        let mut sent = self.lost_quorum_sent.lock();
        if sent.is_some_and(|t| t.elapsed() < LOST_QUORUM_ADVISORY_EVERY) {
            return false;
        }
        *sent = Some(Instant::now());
        true
    }

    /// Whether the leader should repeat its announcement now.
    pub(crate) fn announce_due(&self) -> bool {
        let mut last = self.last_announce.lock();
        if last.elapsed() >= Duration::from_secs(3) {
            *last = Instant::now();
            true
        } else {
            false
        }
    }

    /// A committed stream config change (from the meta group). Only the leader takes
    /// messages (through the group): a change of subjects restarts its ingest.
    pub(crate) fn update_config(self: &Arc<Self>, cfg: StreamConfig) {
        let old = self.stream.config_arc();
        if *old == cfg {
            return;
        }
        if let Err(e) = self.stream.store.update_config(cfg.limits()) {
            tracing::warn!("stream {}: applying new limits: {e}", self.name);
        }
        let body = json!({"config": cfg, "created_ns": unix_nanos(self.stream.created)});
        let _ =
            crate::util::fs::write_atomic(&self.dir.join("meta.json"), body.to_string().as_bytes());
        let resubscribe = old.subjects != cfg.subjects;
        self.stream.set_replicated_config(cfg);
        if resubscribe && self.is_leader() {
            self.step_down_local();
            let (tx, rx) = watch::channel(false);
            *self.lead_stop.lock() = Some(tx);
            tokio::spawn(self.clone().lead(rx));
        }
    }

    /// Proposes a control operation (on the leader) and returns what applying it answered.
    async fn propose_control(&self, c: &Control) -> Result<serde_json::Value, ApiError> {
        match self.group.propose(encode_control(c)).await {
            Ok((_, answer)) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&answer).map_err(ApiError::invalid_json)?;
                match v.get("error") {
                    Some(e) => Err(serde_json::from_value::<ApiErrorBody>(e.clone())
                        .map(ApiErrorBody::into_api)
                        .unwrap_or_else(|_| ApiError::bad_request())),
                    None => Ok(v),
                }
            }
            Err(RaftError::NotLeader { .. }) => Err(ApiError::cluster_not_leader()),
            Err(e) => Err(ApiError::cluster_unavailable(e.to_string())),
        }
    }

    /// A purge, replicated.
    pub(crate) async fn purge(
        &self,
        filter: Option<String>,
        seq: u64,
        keep: u64,
    ) -> Result<serde_json::Value, ApiError> {
        self.propose_control(&Control::Purge { filter, seq, keep })
            .await
    }

    /// A message delete, replicated.
    pub(crate) async fn delete_msg(
        &self,
        seq: u64,
        no_erase: bool,
    ) -> Result<serde_json::Value, ApiError> {
        self.propose_control(&Control::DeleteMsg { seq, no_erase })
            .await
    }

    /// On this new leader of a stream that was R1 here: replicates the old stream's messages
    /// (with their sequences and timestamps) and its consumers (configs and progress), in
    /// the group's log before anything else is published to it; `halfway` is awaited once
    /// half the messages are committed. Again after a cut, it stores nothing twice: messages
    /// the group holds are recognised when applied, and consumers it has (which may have
    /// made progress since) are not replaced.
    pub(super) async fn import(
        &self,
        old: &Stream,
        consumers: Vec<(String, ConsumerRecord)>,
        halfway: impl std::future::Future<Output = Result<(), ApiError>>,
    ) -> Result<(), ApiError> {
        let unavailable = |e: RaftError| ApiError::cluster_unavailable(e.to_string());
        let store = old.store.clone();
        let st = store.state();
        let last = st.last_seq;
        let half = st.first_seq + last.saturating_sub(st.first_seq).div_ceil(2);
        let mut halfway = Some(Box::pin(halfway));
        let mut at = 1;
        let mut waiting = Vec::new();
        loop {
            let m = match store.load_next_msg(b">", at) {
                Ok(m) => m,
                Err(StoreError::Eof | StoreError::NotFound) => break,
                Err(e) => return Err(store_error(&e)),
            };
            at = m.seq + 1;
            let subject = String::from_utf8_lossy(&m.subject);
            let entry = encode_import(m.seq, m.ts, &subject, m.headers.as_deref(), &m.payload);
            waiting.push(
                self.group
                    .propose_queued(entry)
                    .await
                    .map_err(unavailable)?,
            );
            let halfway_now = at > half && halfway.is_some();
            if waiting.len() >= 1024 || halfway_now {
                for w in waiting.drain(..) {
                    Self::answer_ok(&w.await.map_err(unavailable)?.1)?;
                }
            }
            if halfway_now {
                if let Some(h) = halfway.take() {
                    h.await?;
                }
            }
        }
        for w in waiting {
            Self::answer_ok(&w.await.map_err(unavailable)?.1)?;
        }
        if last >= at {
            self.propose_control(&Control::Advance { next: last + 1 })
                .await?;
        }
        for (name, record) in consumers {
            if self.consumers.lock().has_record(&name) {
                continue;
            }
            self.propose_control(&Control::Consumer {
                name,
                record: Box::new(record),
            })
            .await?;
        }
        self.start_consumers();
        Ok(())
    }

    fn answer_ok(answer: &[u8]) -> Result<(), ApiError> {
        let v: serde_json::Value =
            serde_json::from_slice(answer).map_err(ApiError::invalid_json)?;
        match v.get("error") {
            Some(e) => Err(serde_json::from_value::<ApiErrorBody>(e.clone())
                .map(ApiErrorBody::into_api)
                .unwrap_or_else(|_| ApiError::bad_request())),
            None => Ok(()),
        }
    }

    /// Replicates a consumer the leader created (or updated).
    pub(crate) async fn consumer_created(&self, c: &Consumer) -> Result<(), ApiError> {
        let record = ConsumerRecord {
            config: c.config(),
            created_ns: unix_nanos(c.created),
            state: None,
        };
        self.propose_control(&Control::Consumer {
            name: c.name.clone(),
            record: Box::new(record),
        })
        .await
        .map(|_| ())
    }

    /// Replicates a consumer's deletion.
    pub(crate) async fn consumer_deleted(&self, name: &str) -> Result<(), ApiError> {
        self.propose_control(&Control::ConsumerDelete {
            name: name.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Gives up this server's leadership of the stream (`STREAM.LEADER.STEPDOWN`): stops
    /// ingest and the consumers (their last progress replicated first), then lets the group
    /// elect another leader; leads on if none is elected in time. Returns the new leader.
    pub(crate) async fn step_down(self: &Arc<Self>) -> Result<String, ApiError> {
        if !self.is_leader() {
            return Err(ApiError::cluster_not_leader());
        }
        let consumers = self.stream.consumers.list();
        self.step_down_local();
        self.flush_consumers(consumers, true).await;
        match self.group.step_down(STEPDOWN_WAIT).await {
            Ok((_, name)) => {
                tracing::info!(
                    "JetStream cluster: stream {:?} stepped down, {name} leads it",
                    self.name
                );
                Ok(name)
            }
            Err(e) => {
                if self.group.status().role == Role::Leader {
                    // Nobody took over: lead on.
                    let (tx, rx) = watch::channel(false);
                    *self.lead_stop.lock() = Some(tx);
                    tokio::spawn(self.clone().lead(rx));
                }
                Err(ApiError::cluster_unavailable(format!(
                    "stepdown: no other leader elected: {e}"
                )))
            }
        }
    }

    /// On a leader that stopped its consumers: appends their last progress and waits until
    /// it is committed (bounded), so the next leader starts from it; with `barrier`, also
    /// every delta still in flight (a barrier after them is committed only with them).
    async fn flush_consumers(&self, consumers: Vec<Arc<Consumer>>, barrier: bool) {
        let flush = async {
            for c in consumers {
                c.flush_log().await;
            }
            if barrier {
                let _ = self.group.propose(encode_control(&Control::Barrier)).await;
            }
        };
        if tokio::time::timeout(CONSUMER_FLUSH_WAIT, flush)
            .await
            .is_err()
        {
            tracing::warn!(
                "stream {}: consumers' last progress not committed in time",
                self.name
            );
        }
    }

    /// Stops following the group (the data stays).
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let consumers = self.stream.consumers.list();
        let leading = self.is_leader();
        self.step_down_local();
        if leading {
            self.flush_consumers(consumers, false).await;
        }
        self.stream.shutdown();
        if let Some(cl) = self.cluster.upgrade() {
            cl.hub.unregister(&self.group_name());
        }
        self.group.shutdown().await;
        self.catalog.remove_replicated(&self.name);
        if let Err(e) = self.stream.store.stop() {
            tracing::warn!("stream {}: stopping store: {e}", self.name);
        }
    }

    /// Removes the replica's files (after `stop`).
    pub(crate) fn destroy(&self) {
        for c in self.stream.consumers.take_all() {
            c.delete();
        }
        let _ = self.stream.store.delete();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("stream {}: removing {}: {e}", self.name, self.dir.display());
        }
        // The removal is durable once the directory that held it is synced: else a power loss
        // could bring the old log and messages back under a stream created again by that name.
        if let Some(parent) = self.dir.parent() {
            if let Err(e) = std::fs::File::open(parent).and_then(|d| d.sync_all()) {
                tracing::warn!("stream {}: syncing {}: {e}", self.name, parent.display());
            }
        }
    }

    fn group_name(&self) -> String {
        self.cluster
            .upgrade()
            .and_then(|cl| cl.assignment(&self.account, &self.name))
            .map(|sa| sa.group)
            .unwrap_or_default()
    }

    /// Leaves the leader's role here: stops ingest and the consumers.
    fn step_down_local(&self) {
        if let Some(tx) = self.lead_stop.lock().take() {
            let _ = tx.send(true);
        }
        *self.led_since.lock() = None;
        *self.listening.lock() = None;
        if self.leading.swap(false, Ordering::AcqRel) {
            self.stream.lead_stopped();
            for c in self.stream.consumers.take_all() {
                c.shutdown();
            }
        }
    }

    /// Becomes the leader here: waits for everything before its term to be applied, then
    /// starts the consumers and ingest.
    async fn lead(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // The barrier: once it is applied, so is every entry of earlier terms.
        let barrier = encode_control(&Control::Barrier);
        let ok = tokio::select! {
            r = self.group.propose(barrier) => r.is_ok(),
            _ = stop.changed() => false,
        };
        if !ok || *stop.borrow() {
            return;
        }
        // Work queued for an earlier term is not proposed again: the timers and sources start
        // over from the store.
        let mut proposals = self.proposals.lock().await;
        while proposals.try_recv().is_ok() {}
        self.leading.store(true, Ordering::Release);
        self.stream.lead_started();
        *self.led_since.lock() = Some(Instant::now());
        tracing::info!(
            "JetStream cluster: this server leads stream {:?} in account {:?}",
            self.name,
            self.account
        );
        self.start_consumers();
        // An R1 stream being made replicated: its messages are imported first (a publish
        // taken before would get a sequence an imported message has).
        let mut held = self.ingest_held.subscribe();
        while *held.borrow_and_update() {
            tokio::select! {
                r = held.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        let subjects = self.stream.config_arc().subjects.clone();
        let mut sub = None;
        for s in &subjects {
            let r = match sub.as_mut() {
                None => self
                    .client
                    .subscribe(s, None, 64 * 1024)
                    .map(|x| sub = Some(x)),
                Some(existing) => existing.also(s, None),
            };
            if let Err(e) = r {
                tracing::error!("stream {}: subscribing to {s}: {e}", self.name);
            }
        }
        // A mirror, or a stream fed by its sources alone, has no subjects: it leads all the same.
        let mut sub = sub;
        *self.listening.lock() = Some(subjects);
        // Announced once it listens: a server forwarding to it finds it ready.
        if let Some(cl) = self.cluster.upgrade() {
            cl.announce_leader(&self);
            cl.advise_leader(&self.client, &self.name);
        }
        let (acks, pending) = mpsc::channel(IN_FLIGHT);
        let groups = Arc::new(tokio::sync::Semaphore::new(GROUPS_IN_FLIGHT));
        tokio::spawn(ack_loop(self.client.clone(), pending));
        let mut last_ts = 0i64;
        let mut batches = LeaderBatches::default();
        // A published entry that did not fit the group before it, proposed next.
        let mut carried: Option<(Vec<u8>, Option<String>)> = None;
        loop {
            // Held back from the last group: proposed before anything published after it.
            let next = carried.take().map(|(e, reply)| (e, Replies::One(reply)));
            let (entry, replies) = if let Some(n) = next {
                n
            } else {
                tokio::select! {
                    // Enough groups in flight: messages gather until one is committed.
                    _ = groups.acquire(), if groups.available_permits() == 0 => continue,
                    m = next_published(&mut sub), if groups.available_permits() > 0 => {
                        let Some(m) = m else { break };
                        // Timestamps only grow along the log, whatever the clocks of past leaders said.
                        let ts = now_nanos()
                            .max(self.max_ts.load(Ordering::Relaxed) + 1)
                            .max(last_ts + 1);
                        match self.published(&mut batches, &m, ts) {
                            Some(e) => {
                                last_ts = ts;
                                self.group_published(e, &mut sub, &mut batches, &mut last_ts, &mut carried)
                            }
                            None => continue,
                        }
                    }
                    p = proposals.recv() => {
                        let Some(p) = p else { break };
                        let ts = now_nanos()
                            .max(self.max_ts.load(Ordering::Relaxed) + 1)
                            .max(last_ts + 1);
                        last_ts = ts;
                        (encode_proposal(p, ts), Replies::One(None))
                    }
                    _ = stop.changed() => break,
                }
            };
            // Published messages hold a permit until committed (a held entry may go without).
            let permit = match replies {
                Replies::One(None) => None,
                _ => groups.clone().try_acquire_owned().ok(),
            };
            match self.group.propose_queued(entry).await {
                Ok(fut) => {
                    if acks.send((Box::pin(fut), replies, permit)).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        // Stopped leading (or stopped): the subscription goes with `sub`.
        drop(sub);
    }

    /// The entry for `first` (a published message's) and the messages already waiting behind
    /// it: plain messages go into one group entry (`encode_group`), up to `GROUP_MSGS` and
    /// `GROUP_BYTES`; the first other entry (a batch's commit) is held for the next proposal,
    /// so the log keeps the order of publication.
    fn group_published(
        &self,
        first: (Vec<u8>, Option<String>),
        sub: &mut Option<crate::router::InternalSubscription>,
        batches: &mut LeaderBatches,
        last_ts: &mut i64,
        held: &mut Option<(Vec<u8>, Option<String>)>,
    ) -> (Vec<u8>, Replies) {
        let Some(s) = sub.as_mut().filter(|_| is_plain_msg(&first.0)) else {
            return (first.0, Replies::One(first.1));
        };
        let mut bytes = first.0.len();
        let mut msgs = vec![first.0];
        let mut replies = vec![first.1];
        while msgs.len() < GROUP_MSGS && bytes < GROUP_BYTES {
            let Some(m) = s.try_next() else { break };
            let ts = now_nanos()
                .max(self.max_ts.load(Ordering::Relaxed) + 1)
                .max(*last_ts + 1);
            let Some((e, reply)) = self.published(batches, &m, ts) else {
                continue;
            };
            *last_ts = ts;
            if !is_plain_msg(&e) {
                *held = Some((e, reply));
                break;
            }
            bytes += e.len();
            msgs.push(e);
            replies.push(reply);
        }
        if msgs.len() == 1 {
            return (msgs.swap_remove(0), Replies::One(replies.swap_remove(0)));
        }
        (encode_group(&msgs), Replies::Group(replies))
    }

    /// The entry to propose for a published message (and where its answer goes), or none: a
    /// mirror takes no published messages, a batch's messages wait for its commit.
    fn published(
        &self,
        batches: &mut LeaderBatches,
        m: &crate::router::InternalMsg,
        ts: i64,
    ) -> Option<(Vec<u8>, Option<String>)> {
        let cfg = self.stream.config_arc();
        if cfg.mirror.is_some() {
            return None;
        }
        let reply = if cfg.no_ack { None } else { m.reply.clone() };
        let transformed = self.stream.transform_subject(&m.subject);
        let subject = transformed.as_deref().unwrap_or(&m.subject);
        let hdrs = m.headers.as_deref();
        if Stream::in_batch(hdrs) {
            let (id, msgs) =
                self.stream
                    .stage_batch(batches, subject, hdrs, &m.payload, reply.as_deref())?;
            return Some((
                replied(encode_batch(ts, &id, &msgs), reply.as_deref()),
                reply,
            ));
        }
        let prefix = reply_prefix(reply.as_deref());
        let entry = encode_msg_after(&prefix, ts, subject, hdrs, &m.payload);
        Some((entry, reply))
    }

    /// Creates (and starts) the replicated consumers on this new leader, from their configs
    /// and progress as the log left them, and announces each one's new leader (nats-server's
    /// consumer leader-elected advisory).
    fn start_consumers(&self) {
        let records = self.consumers.lock().records();
        for (name, r) in records {
            if self.stream.consumers.get(&name).is_some() {
                continue;
            }
            let c = Consumer::new(
                name.clone(),
                &self.stream.consumers,
                self.stream.dead_letter(),
                r.config.clone(),
                from_unix_nanos(r.created_ns),
                None,
                r.state.clone(),
            );
            match c.start() {
                Ok(()) => {
                    self.stream.consumers.insert(c);
                    self.advise_consumer("LEADER_ELECTED", &name);
                }
                Err(e) => tracing::warn!(
                    "stream {}: consumer {name} not started: {}",
                    self.name,
                    e.description
                ),
            }
        }
    }

    /// Publishes a consumer advisory of nats-server (`LEADER_ELECTED`, with this server as the
    /// leader, or `QUORUM_LOST`) in the stream's account, with the group's other replicas.
    pub(super) fn advise_consumer(&self, kind: &str, consumer: &str) {
        let Some(cl) = self.cluster.upgrade() else {
            return;
        };
        let mut body = json!({
            "type": format!("io.nats.jetstream.advisory.v1.consumer_{}", kind.to_ascii_lowercase()),
            "id": format!("{:016x}", fastrand::u64(..)),
            "timestamp": crate::util::time::rfc3339(std::time::SystemTime::now()),
            "stream": self.name,
            "consumer": consumer,
            "replicas": cl.group_replicas(self),
        });
        if kind == "LEADER_ELECTED" {
            body["leader"] = json!(cl.name);
        }
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.{kind}.{}.{consumer}",
            self.name
        );
        let _ = self
            .client
            .publish(&subject, None, None, body.to_string().as_bytes());
    }

    /// The replicated consumers' names (as the log holds them).
    pub(super) fn consumer_names(&self) -> Vec<String> {
        self.consumers.lock().names()
    }
}

type AckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, Vec<u8>), RaftError>> + Send>>;

/// The next message published on the stream's subjects (never, without subjects).
async fn next_published(
    sub: &mut Option<crate::router::InternalSubscription>,
) -> Option<crate::router::InternalMsg> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The entry for work the stream decided on its leader.
fn encode_proposal(p: Proposal, ts: i64) -> Vec<u8> {
    match p {
        Proposal::Expire(seqs) => encode_control(&Control::Expire { seqs, ts }),
        Proposal::Fire(seqs) => encode_control(&Control::Fire { seqs, ts }),
        Proposal::Sourced {
            subject,
            headers,
            payload,
        } => {
            let mut e = encode_msg(ts, &subject, headers.as_deref(), &payload);
            e[0] = b'S';
            e
        }
        Proposal::Mirrored {
            seq,
            ts,
            subject,
            headers,
            payload,
        } => {
            let mut e = vec![b'R'];
            e.extend_from_slice(&seq.to_le_bytes());
            e.extend_from_slice(&encode_msg(ts, &subject, headers.as_deref(), &payload));
            e
        }
    }
}

/// The stream's way to its replica: whether it leads, and the queue of the leader's proposals.
struct Hook {
    leading: Arc<AtomicBool>,
    proposals: mpsc::UnboundedSender<Proposal>,
}

impl Replication for Hook {
    fn leads(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn propose(&self, p: Proposal) {
        if self.leads() {
            let _ = self.proposals.send(p);
        }
    }
}

/// The consumers of a stream with their configs and progress, to replicate.
pub(super) fn consumer_records(s: &Stream) -> Vec<(String, ConsumerRecord)> {
    s.consumers
        .list()
        .into_iter()
        .map(|c| {
            let record = ConsumerRecord {
                config: c.config(),
                created_ns: unix_nanos(c.created),
                state: Some(c.state_body()),
            };
            (c.name.clone(), record)
        })
        .collect()
}

/// Where the answers to a proposal go: one reply subject (or none), or one per message of a
/// group entry.
enum Replies {
    One(Option<String>),
    Group(Vec<Option<String>>),
}

/// Publishes PubAcks in proposal order as the proposals are committed and applied.
async fn ack_loop(
    client: InternalClient,
    mut pending: mpsc::Receiver<(
        AckFuture,
        Replies,
        Option<tokio::sync::OwnedSemaphorePermit>,
    )>,
) {
    while let Some((fut, replies, permit)) = pending.recv().await {
        let r = fut.await;
        drop(permit);
        let answer = match r {
            Ok((_, answer)) => answer,
            // Not committed (leader lost, no quorum): no PubAck; the publisher retries.
            Err(e) => {
                tracing::debug!("proposal not committed: {e}");
                continue;
            }
        };
        match replies {
            Replies::One(Some(reply)) => {
                let _ = client.publish(&reply, None, None, &answer);
            }
            Replies::One(None) => {}
            Replies::Group(replies) => {
                let parts = group_parts(&answer, 0).unwrap_or_default();
                for (reply, one) in replies.iter().zip(parts) {
                    if let Some(reply) = reply {
                        let _ = client.publish(reply, None, None, one);
                    }
                }
            }
        }
    }
}

/// Follows the group's leadership: leads while this node is the leader.
async fn follow(r: Weak<Replica>) {
    let (mut changes, mut stop) = match r.upgrade() {
        Some(r) => (r.group.changes(), r.stop.subscribe()),
        None => return,
    };
    let mut term_led = 0u64;
    loop {
        {
            let Some(r) = r.upgrade() else { return };
            let st = r.group.status();
            let leading_now = st.role == Role::Leader;
            if leading_now && term_led != st.term {
                r.step_down_local();
                term_led = st.term;
                let (tx, rx) = watch::channel(false);
                *r.lead_stop.lock() = Some(tx);
                tokio::spawn(r.clone().lead(rx));
            } else if !leading_now && term_led != 0 {
                term_led = 0;
                r.step_down_local();
                tracing::info!(
                    "JetStream cluster: this server no longer leads stream {:?}",
                    r.name
                );
            }
        }
        tokio::select! {
            c = changes.changed() => if c.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: u16,
    err_code: u16,
    description: String,
}

impl ApiErrorBody {
    fn into_api(self) -> ApiError {
        ApiError {
            code: self.code,
            err_code: self.err_code,
            description: self.description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_entries_round_trip() {
        let e = encode_msg(
            42,
            "orders.new",
            Some(b"NATS/1.0\r\nA: b\r\n\r\n"),
            b"payload",
        );
        let m = decode_msg(&e).expect("decodes");
        assert_eq!(m.ts, 42);
        assert_eq!(m.subject, b"orders.new");
        assert_eq!(m.headers, Some(&b"NATS/1.0\r\nA: b\r\n\r\n"[..]));
        assert_eq!(m.payload, b"payload");
        let e = encode_msg(-1, "x", None, b"");
        let m = decode_msg(&e).expect("decodes");
        assert_eq!((m.ts, m.headers, m.payload), (-1, None, &b""[..]));
        assert!(decode_msg(&e[..5]).is_none());
        let c = encode_control(&Control::Purge {
            filter: None,
            seq: 3,
            keep: 0,
        });
        assert_eq!(c[0], b'J');
    }

    #[test]
    fn group_entries_round_trip_and_refuse_a_cut_frame() {
        let a = encode_msg(1, "a", None, b"one");
        let b = encode_msg(2, "b", Some(b"NATS/1.0\r\n\r\n"), b"");
        let g = encode_group(&[a.clone(), b.clone()]);
        assert_eq!(g[0], b'N');
        let parts = group_parts(&g, 1).expect("parts");
        assert_eq!(parts, vec![&a[..], &b[..]]);
        assert_eq!(decode_msg(parts[1]).expect("msg").subject, b"b");
        assert!(group_parts(&g[..g.len() - 1], 1).is_none());
        assert_eq!(group_parts(b"N", 1), Some(vec![]));
    }
}
