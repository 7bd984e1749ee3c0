//! Catch-up of a replica's messages from a peer: a replica given a snapshot (a new or lagging
//! peer) whose store lacks messages the snapshot covers fetches them, in order and with their
//! sequences, from the stream's leader on `$NRX.CU.<node>`; answers come to `$NRX.CUR.<node>.<n>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use natrium_raft::{node_id, NodeId};
use natrium_store::{StoreError, StreamStore};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::JsCluster;
use crate::router::InternalSubscription;

/// How long one fetch waits for its answer.
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// Messages and bytes in one answer at most.
const BATCH_MSGS: usize = 4096;
const BATCH_BYTES: usize = 4 << 20;

/// Rounds of fetch attempts over the peers when a snapshot is restored, and the first pause.
const CATCH_UP_ROUNDS: u32 = 3;
const RETRY_FIRST: Duration = Duration::from_millis(250);

/// The answer's `next` of a server that does not hold the asked range.
const LACKING: u64 = u64::MAX;

/// Subject on which node `id` serves fetches.
pub(super) fn serve_subject(id: NodeId) -> String {
    format!("$NRX.CU.{id:016x}")
}

/// Prefix of the subjects on which node `id` receives answers.
pub(super) fn answers_prefix(id: NodeId) -> String {
    format!("$NRX.CUR.{id:016x}")
}

#[derive(Debug, Serialize, Deserialize)]
struct Fetch {
    account: String,
    stream: String,
    from: u64,
    to: u64,
    /// Asks instead which sequences of the range the server's copy no longer holds.
    #[serde(default)]
    removed: bool,
}

/// Waiting fetches of this node.
#[derive(Default)]
pub(super) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
}

/// A fetched message.
pub(crate) struct Fetched {
    pub seq: u64,
    pub ts: i64,
    pub subject: Vec<u8>,
    pub headers: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

fn put(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len() as u32).to_le_bytes());
    v.extend_from_slice(b);
}

fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let v = b.get(4..4 + n)?;
    *b = &b[4 + n..];
    Some(v)
}

/// An answer: the next sequence to ask for (u64 LE; 0 when nothing is left), then per message
/// seq (u64 LE), ts (i64 LE), subject, headers (flag byte then bytes), payload (u32 LE lengths).
fn encode_answer(next: u64, msgs: &[natrium_store::StoredMsg]) -> Vec<u8> {
    let mut v = next.to_le_bytes().to_vec();
    for m in msgs {
        v.extend_from_slice(&m.seq.to_le_bytes());
        v.extend_from_slice(&m.ts.to_le_bytes());
        put(&mut v, &m.subject);
        match &m.headers {
            Some(h) => {
                v.push(1);
                put(&mut v, h);
            }
            None => v.push(0),
        }
        put(&mut v, &m.payload);
    }
    v
}

fn decode_answer(mut b: &[u8]) -> Option<(u64, Vec<Fetched>)> {
    let next = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    b = &b[8..];
    let mut out = Vec::new();
    while !b.is_empty() {
        let seq = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let ts = i64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        b = &b[16..];
        let subject = take(&mut b)?.to_vec();
        let flag = *b.first()?;
        b = &b[1..];
        let headers = if flag == 1 {
            Some(take(&mut b)?.to_vec())
        } else {
            None
        };
        let payload = take(&mut b)?.to_vec();
        out.push(Fetched {
            seq,
            ts,
            subject,
            headers,
            payload,
        });
    }
    Some((next, out))
}

/// Serves fetches from this node's replicas.
pub(super) async fn serve(cl: Weak<JsCluster>, mut sub: InternalSubscription) {
    while let Some(m) = sub.next().await {
        let Some(cl) = cl.upgrade() else { return };
        let Some(reply) = m.reply.as_deref() else {
            continue;
        };
        let Ok(f) = serde_json::from_slice::<Fetch>(&m.payload) else {
            continue;
        };
        let Some(r) = cl.replica(&f.account, &f.stream) else {
            continue;
        };
        let store = r.stream.store.clone();
        if f.removed {
            let answer = if r.group.status().role == natrium_raft::Role::Stopped {
                encode_answer(LACKING, &[])
            } else {
                encode_ranges(&removed_ranges(store.as_ref(), f.from, f.to))
            };
            let _ = cl.settings.system.publish(reply, None, None, &answer);
            continue;
        }
        let st = store.state();
        // Sequences this store lost to damage are missing, not deleted.
        let damaged = st.lost[st.lost.partition_point(|&s| s < f.from)..]
            .first()
            .is_some_and(|&s| s <= f.to);
        if st.last_seq < f.to || damaged || r.group.status().role == natrium_raft::Role::Stopped {
            // Not (or no longer) holding the range: the asker tries another peer.
            let _ = cl
                .settings
                .system
                .publish(reply, None, None, &encode_answer(LACKING, &[]));
            continue;
        }
        let answer = match read_range(store.as_ref(), f.from, f.to) {
            Ok((next, msgs)) => encode_answer(next, &msgs),
            Err(e) => {
                // A message it cannot read (damaged here) is not a gap: another peer is asked.
                tracing::warn!(
                    "JetStream cluster: stream '{} > {}': catch-up read failed: {e}",
                    f.account,
                    f.stream
                );
                encode_answer(LACKING, &[])
            }
        };
        let _ = cl.settings.system.publish(reply, None, None, &answer);
    }
}

/// The messages of `from..=to` that one answer carries, and the sequence to ask for next (0
/// when the range is done). Only the end of the messages ends the range: a read error is not
/// a gap.
fn read_range(
    store: &dyn StreamStore,
    from: u64,
    to: u64,
) -> Result<(u64, Vec<natrium_store::StoredMsg>), StoreError> {
    let mut msgs = Vec::new();
    let mut bytes = 0;
    let mut at = from;
    while at <= to {
        let sm = match store.load_next_msg(b">", at) {
            Ok(sm) if sm.seq <= to => sm,
            Ok(_) | Err(StoreError::NotFound | StoreError::Eof) => break,
            Err(e) => return Err(e),
        };
        at = sm.seq + 1;
        bytes += sm.payload.len() + sm.subject.len() + 32;
        msgs.push(sm);
        if msgs.len() >= BATCH_MSGS || bytes >= BATCH_BYTES {
            return Ok((if at > to { 0 } else { at }, msgs));
        }
    }
    Ok((0, msgs))
}

/// The sequences of `from..=to` (up to the store's last) that `store` no longer holds, as
/// ranges: everything below its first message, and its interior deletes.
fn removed_ranges(store: &dyn StreamStore, from: u64, to: u64) -> Vec<(u64, u64)> {
    let st = store.state();
    let to = to.min(st.last_seq);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let below = st.first_seq.min(to + 1);
    if from < below {
        out.push((from, below - 1));
    }
    for seq in store.deleted() {
        if seq < from || seq > to {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.1 + 1 == seq => r.1 = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

/// Ranges as (u64 LE, u64 LE) pairs behind a zero `next` (never `LACKING`).
fn encode_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut v = 0u64.to_le_bytes().to_vec();
    for (a, b) in ranges {
        v.extend_from_slice(&a.to_le_bytes());
        v.extend_from_slice(&b.to_le_bytes());
    }
    v
}

fn decode_ranges(b: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut chunks = b.get(8..)?.chunks_exact(16);
    let out = chunks
        .by_ref()
        .map(|c| {
            let (a, z) = c.split_at(8);
            (
                u64::from_le_bytes(a.try_into().unwrap_or_default()),
                u64::from_le_bytes(z.try_into().unwrap_or_default()),
            )
        })
        .collect();
    chunks.remainder().is_empty().then_some(out)
}

/// Hands answers to the fetches waiting for them.
pub(super) async fn answers(cl: Weak<JsCluster>, mut sub: InternalSubscription) {
    while let Some(m) = sub.next().await {
        let Some(cl) = cl.upgrade() else { return };
        let Some(n) = m.subject.rsplit('.').next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let waiting = cl.pending.waiting.lock().remove(&n);
        if let Some(tx) = waiting {
            let _ = tx.send(m.payload.to_vec());
        }
    }
}

impl JsCluster {
    /// Sends `body` (with `headers`) on `subject` and waits (up to `within`) for the answer,
    /// which comes to this node's answer subjects.
    pub(super) async fn request(
        &self,
        subject: &str,
        headers: Option<&[u8]>,
        body: &[u8],
        within: Duration,
    ) -> Result<Vec<u8>, String> {
        let n = self.pending.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.waiting.lock().insert(n, tx);
        let reply = self.answer_subject(n);
        let _ = self
            .settings
            .system
            .publish(subject, Some(&reply), headers, body);
        let answer = tokio::time::timeout(within, rx).await;
        self.pending.waiting.lock().remove(&n);
        match answer {
            Ok(Ok(a)) => Ok(a),
            _ => Err(format!("no answer on {subject}")),
        }
    }

    pub(super) fn answer_subject(&self, n: u64) -> String {
        format!("{}.{n}", answers_prefix(self.id))
    }

    /// Fetches stream messages `from..=to` held by server `peer`, in batches.
    pub(super) async fn fetch(
        &self,
        peer: &str,
        account: &str,
        stream: &str,
        from: u64,
        to: u64,
        mut each: impl FnMut(Fetched) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut from = from;
        loop {
            let body = serde_json::to_vec(&Fetch {
                account: account.into(),
                stream: stream.into(),
                from,
                to,
                removed: false,
            })
            .map_err(|e| e.to_string())?;
            let answer = self
                .request(&serve_subject(node_id(peer)), None, &body, FETCH_WAIT)
                .await?;
            let (next, msgs) = decode_answer(&answer).ok_or("bad catch-up answer")?;
            if next == LACKING {
                return Err(format!("{peer} does not hold them"));
            }
            for m in msgs {
                each(m)?;
            }
            if next == 0 {
                return Ok(());
            }
            from = next;
        }
    }

    /// Removes from `store` (held here up to `to`) what the stream's copy on the leader no
    /// longer holds: a replica given a snapshot after being away kept the messages deleted,
    /// purged or consumed from a work queue meanwhile (their log entries are compacted into the
    /// snapshot). Removing early is safe: a removed sequence never comes back. Blocks.
    pub(super) fn reconcile_blocking(
        self: &Arc<Self>,
        account: &str,
        stream: &str,
        store: &Arc<dyn StreamStore>,
        to: u64,
    ) -> Result<u64, String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err("catch-up needs the multi-threaded runtime".into());
        }
        let from = store.state().first_seq.max(1);
        if from > to {
            return Ok(0);
        }
        let mut last = String::from("no peer to ask");
        for peer in self.catch_up_peers(account, stream) {
            let body = serde_json::to_vec(&Fetch {
                account: account.into(),
                stream: stream.into(),
                from,
                to,
                removed: true,
            })
            .map_err(|e| e.to_string())?;
            let answer = tokio::task::block_in_place(|| {
                handle.block_on(self.request(
                    &serve_subject(node_id(&peer)),
                    None,
                    &body,
                    FETCH_WAIT,
                ))
            });
            let ranges = match answer.map(|a| decode_ranges(&a)) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    last = format!("{peer} does not hold the stream");
                    continue;
                }
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut removed = 0;
            for (a, b) in ranges {
                let mut at = a;
                while let Ok(m) = store.load_next_msg(b">", at) {
                    if m.seq > b {
                        break;
                    }
                    if store.remove_msg(m.seq).map_err(|e| e.to_string())? {
                        removed += 1;
                    }
                    at = m.seq + 1;
                }
            }
            return Ok(removed);
        }
        Err(last)
    }

    /// Whom to ask for a stream's messages: its leader first, then the other members.
    fn catch_up_peers(&self, account: &str, stream: &str) -> Vec<String> {
        let mut peers: Vec<String> = self.stream_leader(account, stream).into_iter().collect();
        let members = match self.replica(account, stream) {
            Some(r) => r.group.status().peers.into_iter().map(|p| p.name).collect(),
            None => self
                .assignment(account, stream)
                .map(|sa| sa.peers)
                .unwrap_or_default(),
        };
        for m in members {
            if !peers.contains(&m) {
                peers.push(m);
            }
        }
        peers.retain(|p| *p != self.name);
        peers
    }

    /// Brings `store` up to sequence `to` (it holds less) with the messages the stream's
    /// leader has: blocks (the state machine is restoring a snapshot). Gaps (messages deleted
    /// on the leader) stay gaps.
    pub(super) fn catch_up_blocking(
        self: &Arc<Self>,
        account: &str,
        stream: &str,
        store: &Arc<dyn StreamStore>,
        to: u64,
    ) -> Result<(), String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err("catch-up needs the multi-threaded runtime".into());
        }
        let mut last = String::from("no peer to catch up from");
        let peers = self.catch_up_peers(account, stream);
        // A few rounds (a peer may be electing or reconnecting); then the caller notes the
        // range lost and the replica is repaired in the background.
        for round in 0..CATCH_UP_ROUNDS {
            if round > 0 {
                tokio::task::block_in_place(|| std::thread::sleep(RETRY_FIRST * (1 << round)));
            }
            match self.catch_up_round(&handle, &peers, account, stream, store, to) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn catch_up_round(
        &self,
        handle: &tokio::runtime::Handle,
        peers: &[String],
        account: &str,
        stream: &str,
        store: &Arc<dyn StreamStore>,
        to: u64,
    ) -> Result<(), String> {
        let mut last = String::from("no peer to catch up from");
        for peer in peers {
            let from = store.state().last_seq + 1;
            tracing::info!(
                "JetStream cluster: stream '{account} > {stream}': fetching messages {from}..={to} from {peer}"
            );
            let r = tokio::task::block_in_place(|| {
                handle.block_on(self.fetch(peer, account, stream, from, to, |m| {
                    advance(store.as_ref(), m.seq, m.ts).map_err(|e| e.to_string())?;
                    store
                        .store_msg(&m.subject, m.headers.as_deref(), &m.payload, m.ts)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }))
            });
            match r {
                Ok(()) => return advance(store.as_ref(), to + 1, 0).map_err(|e| e.to_string()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Makes `next` the sequence the store gives its next message: an empty store jumps there,
/// one holding messages fills the gap with removed placeholders.
pub(crate) fn advance(store: &dyn StreamStore, next: u64, ts: i64) -> Result<(), StoreError> {
    let st = store.state();
    if st.last_seq + 1 >= next {
        return Ok(());
    }
    if st.msgs == 0 {
        store.compact(next)?;
        return Ok(());
    }
    for _ in st.last_seq + 1..next {
        let r = store.store_msg(b"_nrx.gap", None, b"", ts.max(st.last_ts))?;
        store.remove_msg(r.seq)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_range_is_read_in_batches_and_ends_at_its_last_message() {
        let store = natrium_store::MemStore::new(natrium_store::Limits::default()).expect("store");
        for i in 0..10u8 {
            store.store_msg(b"s", None, &[i], 1).expect("stored");
        }
        store.remove_msg(4).expect("removed");
        let (next, msgs) = read_range(&store, 2, 6).expect("read");
        assert_eq!(next, 0);
        let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [2, 3, 5, 6], "a deleted message is a gap");
        let big = vec![0u8; BATCH_BYTES / 2];
        for _ in 0..3 {
            store.store_msg(b"s", None, &big, 1).expect("stored");
        }
        let (next, msgs) = read_range(&store, 11, 13).expect("read");
        assert_eq!(
            (next, msgs.len()),
            (13, 2),
            "one answer holds at most BATCH_BYTES"
        );
        let (next, msgs) = read_range(&store, 13, 13).expect("read");
        assert_eq!((next, msgs.len()), (0, 1));
    }

    #[test]
    fn removed_ranges_cover_the_front_and_interior_deletes() {
        let store = natrium_store::MemStore::new(natrium_store::Limits::default()).expect("store");
        for i in 0..12u8 {
            store.store_msg(b"s", None, &[i], 1).expect("stored");
        }
        for seq in [1, 2, 3, 6, 7, 9] {
            store.remove_msg(seq).expect("removed");
        }
        assert_eq!(removed_ranges(&store, 1, 12), [(1, 3), (6, 7), (9, 9)]);
        assert_eq!(removed_ranges(&store, 7, 8), [(7, 7)]);
        let back = decode_ranges(&encode_ranges(&[(1, 3), (9, 9)])).expect("decodes");
        assert_eq!(back, [(1, 3), (9, 9)]);
        assert!(decode_ranges(&[0; 12]).is_none());
    }

    #[test]
    fn answers_round_trip() {
        let msgs = vec![
            natrium_store::StoredMsg {
                seq: 3,
                ts: 7,
                subject: Bytes::from_static(b"a.b"),
                headers: Some(Bytes::from_static(b"NATS/1.0\r\n\r\n")),
                payload: Bytes::from_static(b"x"),
            },
            natrium_store::StoredMsg {
                seq: 9,
                ts: -1,
                subject: Bytes::from_static(b"c"),
                headers: None,
                payload: Bytes::new(),
            },
        ];
        let (next, got) = decode_answer(&encode_answer(10, &msgs)).expect("decodes");
        assert_eq!(next, 10);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].seq, got[0].ts, &got[0].subject[..]),
            (3, 7, &b"a.b"[..])
        );
        assert_eq!(got[0].headers.as_deref(), Some(&b"NATS/1.0\r\n\r\n"[..]));
        assert_eq!((got[1].seq, got[1].headers.is_none()), (9, true));
        assert!(decode_answer(&[1, 2]).is_none());
    }
}
