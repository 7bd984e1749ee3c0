//! The checker: given what the publishers sent and had acknowledged, and one replica's copy of
//! the stream, counts what is wrong: acknowledged messages lost (told apart: lost where the
//! store reported damage, or silently), stored more than once, out of order, altered, or at
//! another sequence than acknowledged; and compares replicas with each other.
//!
//! Order is real-time order: a message acknowledged before another was first sent must have the
//! smaller sequence, whichever publishers sent them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::workload::{digest, parse_msg_id, payload, PublisherLog, WorkloadConfig};

/// A message as a replica holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub payload: Bytes,
}

/// One replica's copy of a stream, however it was read.
#[derive(Clone, Debug, Default)]
pub struct ReplicaContents {
    /// Where it came from ("n2 via API", "n3 store").
    pub source: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: Vec<StoredMessage>,
    /// Sequences in range that could not be read, with the error.
    pub unreadable: BTreeMap<u64, String>,
    /// Sequences the store itself reports lost to damage (`state.lost`).
    pub reported_lost: BTreeSet<u64>,
}

/// What the checker found on one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub source: String,
    pub acked: u64,
    /// Acknowledged messages present exactly once, intact, at their sequence.
    pub intact: u64,
    /// Acknowledged messages missing (all causes).
    pub lost: u64,
    /// ... of which the store reported the damage (detected, never served).
    pub lost_detected: u64,
    /// Extra copies of a message id (acknowledged or not).
    pub duplicated: u64,
    /// Acknowledged messages stored before one acknowledged before they were sent.
    pub reordered: u64,
    /// Messages served with a payload or subject other than what was sent, or that no
    /// publisher sent.
    pub corrupted: u64,
    /// Acknowledged messages found at another sequence than their ack named.
    pub seq_mismatch: u64,
    /// Acknowledged messages missing whose sequence now holds another message (the sequence
    /// was given out twice).
    pub seq_reused: u64,
    /// Messages never acknowledged that are stored (allowed: the ack was lost).
    pub unacked_present: u64,
    /// Sequences that could not be read.
    pub unreadable: u64,
    pub stream_msgs: u64,
    pub last_seq: u64,
    /// The first problems found, described (at most 20).
    pub examples: Vec<String>,
}

impl Verdict {
    /// No acknowledged message lost, duplicated, reordered, altered or moved.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.corrupted == 0
            && self.seq_mismatch == 0
            && self.seq_reused == 0
    }

    /// As `ok`, but losses the store detected and reported are accepted (a single replica
    /// cannot repair damage; it must only never serve it).
    pub fn ok_with_detected_loss(&self) -> bool {
        self.lost == self.lost_detected
            && self.duplicated == 0
            && self.reordered == 0
            && self.corrupted == 0
            && self.seq_mismatch == 0
            && self.seq_reused == 0
    }

    fn note(&mut self, s: String) {
        if self.examples.len() < 20 {
            self.examples.push(s);
        }
    }
}

/// The publisher and index a stored message claims to be, if it is one the workload sent.
fn identify(m: &StoredMessage, sent_per_publisher: &[u64]) -> Option<(usize, u64)> {
    let (p, i) = parse_msg_id(m.msg_id.as_deref()?)?;
    (p < sent_per_publisher.len() && i < sent_per_publisher[p]).then_some((p, i))
}

/// Checks one replica against the publishers' logs.
pub fn check(cfg: &WorkloadConfig, logs: &[PublisherLog], replica: &ReplicaContents) -> Verdict {
    let mut v = Verdict {
        source: replica.source.clone(),
        stream_msgs: replica.messages.len() as u64,
        last_seq: replica.last_seq,
        unreadable: replica.unreadable.len() as u64,
        ..Verdict::default()
    };
    let sent_counts: Vec<u64> = logs.iter().map(|l| l.sent.len() as u64).collect();
    // Where each (publisher, index) is stored.
    let mut found: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
    for (k, m) in replica.messages.iter().enumerate() {
        match identify(m, &sent_counts) {
            Some(key) => found.entry(key).or_default().push(k),
            None => {
                v.corrupted += 1;
                v.note(format!(
                    "seq {}: a message no publisher sent (id {:?}, subject {})",
                    m.seq, m.msg_id, m.subject
                ));
            }
        }
    }
    for (&(p, i), at) in &found {
        if at.len() > 1 {
            v.duplicated += at.len() as u64 - 1;
            let seqs: Vec<u64> = at.iter().map(|&k| replica.messages[k].seq).collect();
            v.note(format!("p{p}-{i} stored {} times: seqs {seqs:?}", at.len()));
        }
        let want_subject = format!("{}.{p}", cfg.subject_prefix);
        let want = payload(cfg, p, i);
        for &k in at {
            let m = &replica.messages[k];
            if m.payload != want || m.subject != want_subject {
                v.corrupted += 1;
                v.note(format!(
                    "seq {} (p{p}-{i}): served altered (subject {}, {} bytes, digest {:x} want {:x})",
                    m.seq,
                    m.subject,
                    m.payload.len(),
                    digest(&m.payload),
                    digest(&want)
                ));
            }
        }
    }
    let by_seq: HashMap<u64, usize> = replica
        .messages
        .iter()
        .enumerate()
        .map(|(k, m)| (m.seq, k))
        .collect();
    // Acknowledged messages, their stored sequence, for the order check.
    let mut acked: Vec<(u64, u64, u64)> = Vec::new(); // (ack time, first send, stored seq)
    for (p, log) in logs.iter().enumerate() {
        for s in &log.sent {
            let Some(ack) = s.ack else {
                if found.contains_key(&(p, s.index)) {
                    v.unacked_present += 1;
                }
                continue;
            };
            v.acked += 1;
            let Some(at) = found.get(&(p, s.index)) else {
                v.lost += 1;
                let detected = replica.reported_lost.contains(&ack.seq)
                    || replica.unreadable.contains_key(&ack.seq);
                if detected {
                    v.lost_detected += 1;
                }
                if let Some(&k) = by_seq.get(&ack.seq) {
                    v.seq_reused += 1;
                    v.note(format!(
                        "seq {} acked for p{p}-{} now holds {:?}",
                        ack.seq, s.index, replica.messages[k].msg_id
                    ));
                }
                v.note(format!(
                    "p{p}-{} acked at seq {} is missing{}",
                    s.index,
                    ack.seq,
                    if detected {
                        " (damage reported by the store)"
                    } else {
                        ""
                    }
                ));
                continue;
            };
            let m = &replica.messages[at[0]];
            if m.seq != ack.seq {
                v.seq_mismatch += 1;
                v.note(format!(
                    "p{p}-{} acked at seq {} is stored at seq {}",
                    s.index, ack.seq, m.seq
                ));
            }
            if at.len() == 1 && m.seq == ack.seq && s.digest == digest(&m.payload) {
                v.intact += 1;
            }
            acked.push((ack.at, s.first_send, m.seq));
        }
    }
    // Real-time order: sorted by ack time, the highest sequence acknowledged before each send.
    acked.sort_unstable();
    let mut prefix_max = Vec::with_capacity(acked.len());
    let mut hi = 0u64;
    for &(_, _, seq) in &acked {
        hi = hi.max(seq);
        prefix_max.push(hi);
    }
    for &(_, first_send, seq) in &acked {
        let before = acked.partition_point(|&(at, _, _)| at < first_send);
        if before > 0 && prefix_max[before - 1] >= seq {
            v.reordered += 1;
            if v.reordered <= 5 {
                v.note(format!(
                    "seq {seq} was sent after seq {} had been acknowledged",
                    prefix_max[before - 1]
                ));
            }
        }
    }
    v
}

/// Differences between two replicas of the same stream: sequences where both hold a message
/// and they differ, and sequences only one holds (below the shorter one's last sequence).
pub fn compare(a: &ReplicaContents, b: &ReplicaContents) -> Vec<String> {
    let by_seq = |r: &ReplicaContents| -> BTreeMap<u64, (String, Option<String>, Bytes)> {
        r.messages
            .iter()
            .map(|m| {
                (
                    m.seq,
                    (m.subject.clone(), m.msg_id.clone(), m.payload.clone()),
                )
            })
            .collect()
    };
    let (ma, mb) = (by_seq(a), by_seq(b));
    let upto = a.last_seq.min(b.last_seq);
    let mut out = Vec::new();
    let seqs: BTreeSet<u64> = ma.keys().chain(mb.keys()).copied().collect();
    for seq in seqs.into_iter().filter(|&s| s <= upto) {
        match (ma.get(&seq), mb.get(&seq)) {
            (Some(x), Some(y)) if x != y => out.push(format!(
                "seq {seq}: {} has {:?}, {} has {:?}",
                a.source, x.1, b.source, y.1
            )),
            (Some(x), None) => out.push(format!("seq {seq}: only {} has it ({:?})", a.source, x.1)),
            (None, Some(y)) => out.push(format!("seq {seq}: only {} has it ({:?})", b.source, y.1)),
            _ => {}
        }
        if out.len() >= 20 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{msg_id, Ack, Sent};

    fn cfg() -> WorkloadConfig {
        WorkloadConfig {
            subject_prefix: "t".into(),
            publishers: 2,
            ..WorkloadConfig::default()
        }
    }

    /// Two publishers, three messages each, acked one after another: p0 at seqs 1,3,5 and p1
    /// at 2,4,6, each sent after the previous ack.
    fn scenario() -> (Vec<PublisherLog>, ReplicaContents) {
        let c = cfg();
        let mut logs = vec![PublisherLog::default(), PublisherLog::default()];
        let mut t = 0;
        let mut msgs = Vec::new();
        for seq in 1..=6u64 {
            let p = ((seq - 1) % 2) as usize;
            let i = (seq - 1) / 2;
            let body = payload(&c, p, i);
            logs[p].sent.push(Sent {
                index: i,
                first_send: t,
                attempts: 1,
                digest: digest(&body),
                len: body.len() as u32,
                ack: Some(Ack {
                    seq,
                    duplicate: false,
                    at: t + 5,
                }),
            });
            t += 10;
            msgs.push(StoredMessage {
                seq,
                subject: format!("t.{p}"),
                msg_id: Some(msg_id(p, i)),
                payload: body,
            });
        }
        let r = ReplicaContents {
            source: "test".into(),
            first_seq: 1,
            last_seq: 6,
            messages: msgs,
            ..ReplicaContents::default()
        };
        (logs, r)
    }

    #[test]
    fn a_faithful_replica_passes() {
        let (logs, r) = scenario();
        let v = check(&cfg(), &logs, &r);
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.acked, v.intact, v.stream_msgs), (6, 6, 6));
    }

    #[test]
    fn a_missing_message_is_lost_and_detected_only_if_reported() {
        let (logs, mut r) = scenario();
        r.messages.remove(2);
        let v = check(&cfg(), &logs, &r);
        assert_eq!((v.lost, v.lost_detected), (1, 0));
        assert!(!v.ok() && !v.ok_with_detected_loss());
        r.reported_lost.insert(3);
        let v = check(&cfg(), &logs, &r);
        assert_eq!((v.lost, v.lost_detected), (1, 1));
        assert!(!v.ok() && v.ok_with_detected_loss());
    }

    #[test]
    fn a_sequence_given_out_twice_is_reuse() {
        let (logs, mut r) = scenario();
        // p0-1 (acked at seq 3) is gone and seq 3 holds p1-1 instead (at its own seq 4 too).
        r.messages[2] = StoredMessage {
            seq: 3,
            ..r.messages[3].clone()
        };
        let v = check(&cfg(), &logs, &r);
        assert_eq!((v.lost, v.seq_reused), (1, 1), "{v:?}");
        assert!(!v.ok_with_detected_loss());
    }

    #[test]
    fn a_second_copy_is_a_duplicate() {
        let (logs, mut r) = scenario();
        let mut again = r.messages[1].clone();
        again.seq = 7;
        r.messages.push(again);
        r.last_seq = 7;
        let v = check(&cfg(), &logs, &r);
        assert_eq!(v.duplicated, 1);
        assert!(!v.ok());
    }

    #[test]
    fn an_altered_payload_or_a_stranger_is_corruption() {
        let (logs, mut r) = scenario();
        let mut b = r.messages[0].payload.to_vec();
        b[3] ^= 0x10;
        r.messages[0].payload = Bytes::from(b);
        let v = check(&cfg(), &logs, &r);
        assert_eq!(v.corrupted, 1);
        assert_eq!(v.intact, 5);
        let (logs, mut r) = scenario();
        r.messages.push(StoredMessage {
            seq: 7,
            subject: "t.0".into(),
            msg_id: Some("p0-99".into()),
            payload: Bytes::from_static(b"?"),
        });
        let v = check(&cfg(), &logs, &r);
        assert_eq!(v.corrupted, 1);
    }

    #[test]
    fn swapped_messages_are_out_of_order_and_at_the_wrong_sequence() {
        let (logs, mut r) = scenario();
        // seqs 2 and 3 swap places: p0-1 (acked after p1-0 was acked) now precedes it.
        let (a, b) = (r.messages[1].clone(), r.messages[2].clone());
        r.messages[1] = StoredMessage { seq: 2, ..b };
        r.messages[2] = StoredMessage { seq: 3, ..a };
        let v = check(&cfg(), &logs, &r);
        assert_eq!(v.reordered, 1, "{v:?}");
        assert_eq!(v.seq_mismatch, 2);
        assert!(!v.ok());
    }

    #[test]
    fn concurrent_messages_may_land_in_either_order() {
        let (mut logs, mut r) = scenario();
        // p1-0 sent before p0-0 was acked: either order is fine.
        logs[1].sent[0].first_send = 1;
        logs[0].sent[0].ack.as_mut().unwrap().seq = 2;
        logs[1].sent[0].ack.as_mut().unwrap().seq = 1;
        let (a, b) = (r.messages[0].clone(), r.messages[1].clone());
        r.messages[0] = StoredMessage { seq: 1, ..b };
        r.messages[1] = StoredMessage { seq: 2, ..a };
        let v = check(&cfg(), &logs, &r);
        assert!(v.ok(), "{v:?}");
    }

    #[test]
    fn an_unacknowledged_message_may_be_present_once() {
        let (mut logs, r) = scenario();
        logs[0].sent[2].ack = None;
        let v = check(&cfg(), &logs, &r);
        assert!(v.ok());
        assert_eq!((v.acked, v.unacked_present), (5, 1));
    }

    #[test]
    fn replicas_that_differ_are_told_apart() {
        let (_, a) = scenario();
        let mut b = a.clone();
        b.source = "other".into();
        assert!(compare(&a, &b).is_empty());
        b.messages[4].msg_id = Some("p9-9".into());
        b.messages.remove(1);
        let d = compare(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
    }
}
