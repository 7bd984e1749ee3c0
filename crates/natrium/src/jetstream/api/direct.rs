//! `$JS.API.DIRECT.GET.<stream>[.<subject>]`: messages answered as themselves with their
//! metadata in headers, as nats-server does: one message (by `seq`, `last_by_subj`,
//! `next_by_subj`, `start_time`), a batch (`batch`, `max_bytes`) or the last message of many
//! subjects (`multi_last`, `up_to_seq`, `up_to_time`), batches ending in a `204 EOB` status.

use std::collections::BTreeMap;

use natrium_store::{StoredMsg, StreamStore};
use serde::Deserialize;

use super::Api;
use crate::jetstream::consumer::parse_time;
use crate::jetstream::stream::Stream;
use crate::util::time::unix_nanos;

/// Most messages a `multi_last` request answers.
const MAX_MULTI: usize = 1024;
/// Bytes a batch sends when the request sets no `max_bytes` (nats-server's max pending).
const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct DirectRequest {
    seq: u64,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
    batch: usize,
    max_bytes: usize,
    start_time: Option<String>,
    multi_last: Vec<String>,
    up_to_seq: u64,
    up_to_time: Option<String>,
    no_hdr: bool,
}

fn nonempty(s: &Option<String>) -> bool {
    s.as_ref().is_some_and(|v| !v.is_empty())
}

impl DirectRequest {
    /// nats-server's refusals of requests that ask for nothing or for two things at once.
    fn problem(&self) -> Option<&'static str> {
        let last = nonempty(&self.last_by_subj);
        let next = nonempty(&self.next_by_subj);
        let start = self.start_time.is_some();
        if self.seq == 0 && !last && !next && self.multi_last.is_empty() && !start {
            return Some("408 Empty Request");
        }
        let seq = self.seq > 0;
        let conflicts = [
            seq && last,
            seq && start,
            start && last,
            last && next,
            last && self.batch > 0,
            last && !self.multi_last.is_empty(),
            next && !self.multi_last.is_empty(),
            self.up_to_seq > 0 && self.up_to_time.is_some(),
        ];
        if conflicts.contains(&true) {
            return Some("408 Bad Request");
        }
        None
    }
}

/// The first sequence stored at or after `ns` (past the last when none).
fn seq_from_time(store: &dyn StreamStore, ns: i64) -> u64 {
    let st = store.state();
    let (mut lo, mut hi) = (st.first_seq.max(1), st.last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match store.load_next_msg(b">", mid) {
            Ok(m) if m.ts >= ns => hi = mid,
            Ok(m) => lo = m.seq + 1,
            Err(_) => hi = mid,
        }
    }
    lo
}

impl Api {
    /// Answers a direct get on `reply`.
    pub(super) fn direct_get(&self, reply: Option<&str>, rest: &str, payload: &[u8]) {
        let Some(reply) = reply else { return };
        let (name, subject) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        let status = |code: &str| self.direct_status(reply, code, &[]);
        // A mirror with `mirror_direct` answers for its origin when the origin is not here.
        let found = self.catalog.stream(name).ok().or_else(|| {
            self.catalog.streams().into_iter().find(|s| {
                let c = s.config();
                c.mirror_direct && c.mirror.as_ref().is_some_and(|m| m.name == name)
            })
        });
        // nats-server subscribes direct gets per stream that allows them: for any other stream
        // the requester sees no responders.
        let Some(s) = found else {
            return status("503");
        };
        let cfg = s.config();
        let for_origin = cfg.mirror_direct && cfg.name != name;
        if !(cfg.allow_direct || for_origin) {
            return status("503");
        }
        let blank = payload.iter().all(u8::is_ascii_whitespace);
        let mut req = if blank {
            DirectRequest::default()
        } else {
            match serde_json::from_slice::<DirectRequest>(payload) {
                Ok(r) => r,
                Err(_) => return status("408 Malformed Request"),
            }
        };
        match subject {
            Some(subj) => {
                let asks = nonempty(&req.last_by_subj)
                    || nonempty(&req.next_by_subj)
                    || !req.multi_last.is_empty()
                    || req.seq != 0
                    || req.batch != 0
                    || req.start_time.is_some()
                    || req.up_to_seq != 0
                    || req.up_to_time.is_some();
                if subj.is_empty() || asks {
                    return status("408 Bad Request");
                }
                req.last_by_subj = Some(subj.to_string());
            }
            None => {
                if blank {
                    return status("408 Empty Request");
                }
                if let Some(p) = req.problem() {
                    return status(p);
                }
            }
        }
        if !req.multi_last.is_empty() {
            return self.direct_multi(&s, &req, reply);
        }
        self.direct_single(&s, &req, reply);
    }

    fn direct_status(&self, reply: &str, code: &str, pairs: &[(&str, String)]) {
        let mut hdr = format!("NATS/1.0 {code}\r\n");
        for (k, v) in pairs {
            hdr.push_str(&format!("{k}: {v}\r\n"));
        }
        hdr.push_str("\r\n");
        let _ = self.client.publish(reply, None, Some(hdr.as_bytes()), b"");
    }

    /// Sends one stored message with nats-server's direct get headers appended to its own.
    fn direct_send(
        &self,
        s: &Stream,
        reply: &str,
        m: &StoredMsg,
        no_hdr: bool,
        batch: Option<(u64, u64)>,
    ) {
        if no_hdr {
            let _ = self.client.publish(reply, None, None, &m.payload);
            return;
        }
        let seq = m.seq.to_string();
        let time = crate::util::time::rfc3339_nanos(m.ts as i128);
        let subject = String::from_utf8_lossy(&m.subject);
        let mut pairs: Vec<(&str, &str)> = vec![
            ("Nats-Stream", s.name.as_str()),
            ("Nats-Subject", &subject),
            ("Nats-Sequence", &seq),
            ("Nats-Time-Stamp", &time),
        ];
        let (np, last) = batch.map_or((String::new(), String::new()), |(np, last)| {
            (np.to_string(), last.to_string())
        });
        if batch.is_some() {
            pairs.push(("Nats-Num-Pending", &np));
            pairs.push(("Nats-Last-Sequence", &last));
        }
        let mut hdr = match m.headers.as_deref() {
            Some(h) if h.ends_with(b"\r\n\r\n") => h[..h.len() - 2].to_vec(),
            _ => b"NATS/1.0\r\n".to_vec(),
        };
        for (k, v) in pairs {
            hdr.extend_from_slice(k.as_bytes());
            hdr.extend_from_slice(b": ");
            hdr.extend_from_slice(v.as_bytes());
            hdr.extend_from_slice(b"\r\n");
        }
        hdr.extend_from_slice(b"\r\n");
        let _ = self.client.publish(reply, None, Some(&hdr), &m.payload);
    }

    /// How many messages matching `filter` are at or after `seq`.
    fn num_pending(store: &dyn StreamStore, seq: u64, filter: &str) -> u64 {
        let st = store.state();
        let all = filter.is_empty() || filter == ">";
        let total: u64 = if all {
            st.msgs
        } else {
            store.subjects_state(filter.as_bytes()).values().sum()
        };
        let f = if all {
            b">".as_slice()
        } else {
            filter.as_bytes()
        };
        let mut before = 0;
        let mut at = st.first_seq.max(1);
        while at < seq {
            match store.load_next_msg(f, at) {
                Ok(m) if m.seq < seq => {
                    before += 1;
                    at = m.seq + 1;
                }
                _ => break,
            }
        }
        total.saturating_sub(before)
    }

    fn direct_single(&self, s: &Stream, req: &DirectRequest, reply: &str) {
        let store = s.store.as_ref();
        let mut seq = match req.start_time.as_deref().map(parse_time) {
            Some(Some(t)) => seq_from_time(store, unix_nanos(t)),
            Some(None) => return self.direct_status(reply, "408 Bad Request", &[]),
            None => req.seq,
        };
        let next = req.next_by_subj.clone().filter(|v| !v.is_empty());
        let batched = req.batch > 0;
        let count = req.batch.max(1);
        let mut np = if batched {
            Self::num_pending(store, seq.max(1), next.as_deref().unwrap_or(">"))
        } else {
            0
        };
        let max_bytes = if req.max_bytes > 0 {
            req.max_bytes
        } else {
            DEFAULT_MAX_BYTES
        };
        let (mut sent_bytes, mut last) = (0usize, 0u64);
        for i in 0..count {
            let found = if let Some(f) = &next {
                let r = store.load_next_msg(f.as_bytes(), seq.max(1));
                if let Ok(m) = &r {
                    seq = m.seq + 1;
                }
                r
            } else if seq > 0 {
                let r = if i == 0 && !batched {
                    store.load_msg(seq)
                } else {
                    store.load_next_msg(b">", seq)
                };
                if let Ok(m) = &r {
                    seq = m.seq + 1;
                }
                r
            } else {
                let subj = req.last_by_subj.as_deref().unwrap_or_default();
                store.load_last_by_subject(subj.as_bytes())
            };
            let Ok(m) = found else {
                if batched && i > 0 {
                    break;
                }
                return self.direct_status(reply, "404 Message Not Found", &[]);
            };
            np = np.saturating_sub(1);
            self.direct_send(s, reply, &m, req.no_hdr, batched.then_some((np, last)));
            last = m.seq;
            sent_bytes +=
                m.subject.len() + m.headers.as_ref().map_or(0, |h| h.len()) + m.payload.len();
            if sent_bytes >= max_bytes {
                break;
            }
        }
        if batched {
            self.direct_status(
                reply,
                "204 EOB",
                &[
                    ("Nats-Num-Pending", np.to_string()),
                    ("Nats-Last-Sequence", last.to_string()),
                ],
            );
        }
    }

    fn direct_multi(&self, s: &Stream, req: &DirectRequest, reply: &str) {
        let store = s.store.as_ref();
        let st = store.state();
        let mut up_to = req.up_to_seq;
        if let Some(t) = &req.up_to_time {
            let Some(t) = parse_time(t) else {
                return self.direct_status(reply, "408 Bad Request", &[]);
            };
            up_to = seq_from_time(store, unix_nanos(t));
            if up_to <= st.first_seq {
                return self.direct_status(reply, "404 No Results", &[]);
            }
            up_to -= 1;
        }
        if up_to == 0 {
            up_to = st.last_seq;
        }
        // The last sequence of each subject matching a filter, at or below `up_to`.
        let mut last: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for f in &req.multi_last {
            if up_to >= st.last_seq {
                for subj in store.subjects_state(f.as_bytes()).into_keys() {
                    if let Ok(m) = store.load_last_by_subject(&subj) {
                        last.insert(subj, m.seq);
                    }
                }
            } else {
                let mut at = st.first_seq.max(1);
                while let Ok(m) = store.load_next_msg(f.as_bytes(), at) {
                    if m.seq > up_to {
                        break;
                    }
                    last.insert(m.subject.to_vec(), m.seq);
                    at = m.seq + 1;
                }
            }
            if last.len() > MAX_MULTI {
                return self.direct_status(reply, "413 Too Many Results", &[]);
            }
        }
        if last.is_empty() {
            return self.direct_status(reply, "404 No Results", &[]);
        }
        let mut seqs: Vec<u64> = last.into_values().collect();
        seqs.sort_unstable();
        let max_bytes = if req.max_bytes > 0 {
            req.max_bytes
        } else {
            DEFAULT_MAX_BYTES
        };
        let (mut np, mut lseq, mut bytes, mut sent) = (seqs.len() as u64, 0u64, 0usize, 0usize);
        for seq in seqs {
            if seq < req.seq {
                np = np.saturating_sub(1);
                continue;
            }
            let Ok(m) = store.load_msg(seq) else {
                return self.direct_status(reply, "404 Message Not Found", &[]);
            };
            np = np.saturating_sub(1);
            self.direct_send(s, reply, &m, false, Some((np, lseq)));
            lseq = m.seq;
            bytes += m.subject.len() + m.headers.as_ref().map_or(0, |h| h.len()) + m.payload.len();
            if bytes >= max_bytes {
                break;
            }
            sent += 1;
            if req.batch > 0 && sent >= req.batch {
                break;
            }
        }
        self.direct_status(
            reply,
            "204 EOB",
            &[
                ("Nats-Num-Pending", np.to_string()),
                ("Nats-Last-Sequence", lseq.to_string()),
                ("Nats-UpTo-Sequence", up_to.to_string()),
            ],
        );
    }
}
