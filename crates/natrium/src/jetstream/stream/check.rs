//! A stream's decision on one published message, without changing anything: refuse it with
//! nats-server's error, recognise a duplicate, or accept it as a write (msg id, rollup).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use natrium_protocol::headers::HeaderView;
use natrium_store::StreamStore;

use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;

/// Recent `Nats-Msg-Id`s (with the sequence and time each was stored at) and the last one.
#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    ids: HashMap<String, (u64, i64)>,
    order: VecDeque<(i64, String)>,
    last_id: Option<String>,
}

impl Dedupe {
    /// The sequence `id` was stored at, if that was inside the window at `now`.
    fn lookup(&self, id: &str, now: i64, window: Duration) -> Option<u64> {
        let horizon = now - window.as_nanos() as i64;
        self.ids
            .get(id)
            .filter(|(_, ts)| *ts >= horizon)
            .map(|(seq, _)| *seq)
    }

    /// Forgets the ids stored before the window at `now`.
    pub(crate) fn expire(&mut self, now: i64, window: Duration) {
        let horizon = now - window.as_nanos() as i64;
        while self.order.front().is_some_and(|(ts, _)| *ts < horizon) {
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }

    /// Records that the message with `id` was stored as `seq` at `now`.
    pub(crate) fn record(&mut self, id: String, seq: u64, now: i64) {
        self.ids.insert(id.clone(), (seq, now));
        self.order.push_back((now, id.clone()));
        self.last_id = Some(id);
    }

    /// The window as (id, sequence, time), oldest first (for snapshots of replicated streams).
    pub(crate) fn entries(&self) -> Vec<(String, u64, i64)> {
        self.order
            .iter()
            .filter_map(|(_, id)| self.ids.get(id).map(|(seq, ts)| (id.clone(), *seq, *ts)))
            .collect()
    }

    pub(crate) fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// A window from `entries` (as [`Dedupe::entries`] gave them).
    pub(crate) fn from_entries(
        entries: Vec<(String, u64, i64)>,
        last_id: Option<String>,
    ) -> Dedupe {
        let mut d = Dedupe::default();
        for (id, seq, ts) in entries {
            d.record(id, seq, ts);
        }
        d.last_id = last_id;
        d
    }
}

/// A published message as `check` sees it.
pub(crate) struct Incoming<'a> {
    pub subject: &'a [u8],
    pub headers: Option<&'a [u8]>,
    pub payload_len: usize,
}

/// What `Nats-Rollup` asks for once the message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rollup {
    /// `sub`: remove the older messages on the same subject.
    Subject,
    /// `all`: remove every older message.
    All,
}

/// An accepted message: what storing it involves besides the append.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Write {
    /// `Nats-Msg-Id`, to record in the de-dup window.
    pub msg_id: Option<String>,
    pub rollup: Option<Rollup>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Refused: the publisher gets this error.
    Refuse(ApiError),
    /// Already stored (same `Nats-Msg-Id` inside the window) at this sequence.
    Duplicate(u64),
    Accept(Write),
}

/// Decides on `msg` at `now` (ns since the epoch), in nats-server's order of checks: sealed,
/// size, `Nats-Expected-Stream`, `Nats-Expected-Last-Sequence`,
/// `Nats-Expected-Last-Subject-Sequence`, `Nats-Expected-Last-Msg-Id`, `Nats-Msg-Id` duplicates,
/// `Nats-Rollup`. The store is read only when a header asks for its last sequences. The store's
/// own limits are checked by the append.
pub(crate) fn check(
    cfg: &StreamConfig,
    store: &dyn StreamStore,
    window: &Dedupe,
    msg: &Incoming<'_>,
    now: i64,
) -> Verdict {
    use Verdict::Refuse;
    if cfg.sealed {
        return Refuse(ApiError::sealed());
    }
    let hdr = msg.headers.and_then(HeaderView::parse);
    let get = |name: &[u8]| {
        hdr.as_ref()
            .and_then(|h| h.get(name))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let size = msg.payload_len + msg.headers.map_or(0, <[u8]>::len);
    if cfg.max_msg_size > 0 && size as i64 > cfg.max_msg_size {
        return Refuse(ApiError::message_too_large());
    }
    if hdr.is_none() {
        return Verdict::Accept(Write::default());
    }
    if let Some(expected) = get(b"Nats-Expected-Stream") {
        if expected != cfg.name {
            return Refuse(ApiError::expected_stream_mismatch());
        }
    }
    if let Some(v) = get(b"Nats-Expected-Last-Sequence") {
        let last = store.state().last_seq;
        if v.trim().parse::<u64>().ok() != Some(last) {
            return Refuse(ApiError::wrong_last_sequence(last));
        }
    }
    if let Some(v) = get(b"Nats-Expected-Last-Subject-Sequence") {
        let last = store.load_last_by_subject(msg.subject).map_or(0, |m| m.seq);
        if v.trim().parse::<u64>().ok() != Some(last) {
            return Refuse(ApiError::wrong_last_sequence(last));
        }
    }
    if let Some(v) = get(b"Nats-Expected-Last-Msg-Id") {
        let last = window.last_id.as_deref().unwrap_or_default();
        if v != last {
            return Refuse(ApiError::wrong_last_msg_id(last));
        }
    }
    let msg_id = get(b"Nats-Msg-Id");
    if let Some(seq) = msg_id
        .as_deref()
        .and_then(|id| window.lookup(id, now, cfg.duplicate_window()))
    {
        return Verdict::Duplicate(seq);
    }
    let rollup = match get(b"Nats-Rollup") {
        None => None,
        Some(_) if !cfg.allow_rollup_hdrs => {
            return Refuse(ApiError::rollup_failed("rollup not permitted"))
        }
        Some(r) if r == "sub" => Some(Rollup::Subject),
        Some(r) if r == "all" => Some(Rollup::All),
        Some(r) => {
            return Refuse(ApiError::rollup_failed(format!(
                "rollup value invalid: {r:?}"
            )))
        }
    };
    Verdict::Accept(Write { msg_id, rollup })
}

// Kept apart from the window's other methods: rebuilding it is the restart path.
impl Dedupe {
    /// The window rebuilt from the messages `store` holds (at a restart), as nats-server
    /// rebuilds it: the msg id of every message stored within `window` of `now`, and the last
    /// message's id (if it has one) as the last msg id. Without it a client that retries a
    /// publish whose PubAck a restart swallowed would store the message twice.
    pub(crate) fn rebuild(store: &dyn StreamStore, now: i64, window: Duration) -> Dedupe {
        let mut d = Dedupe::default();
        let st = store.state();
        if st.msgs == 0 {
            return d;
        }
        let horizon = now - window.as_nanos() as i64;
        // The first sequence inside the window: timestamps grow with sequences.
        let (mut lo, mut hi) = (st.first_seq, st.last_seq + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match store.load_next_msg(b">", mid) {
                Ok(m) if m.ts < horizon => lo = m.seq + 1,
                _ => hi = mid,
            }
        }
        let mut next = lo;
        let mut last_id = None;
        loop {
            let m = match store.load_next_msg(b">", next) {
                Ok(m) => m,
                // A damaged message is skipped (it is never served).
                Err(natrium_store::StoreError::Corrupt { seq, .. }) if seq >= next => {
                    next = seq + 1;
                    continue;
                }
                Err(_) => break,
            };
            let id = m
                .headers
                .as_deref()
                .and_then(HeaderView::parse)
                .and_then(|h| {
                    h.get(b"Nats-Msg-Id")
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
            if let Some(id) = &id {
                d.record(id.clone(), m.seq, m.ts);
            }
            last_id = id;
            next = m.seq + 1;
        }
        d.last_id = last_id;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natrium_store::MemStore;

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * SEC;

    fn config(json: &str) -> StreamConfig {
        let mut c: StreamConfig = serde_json::from_str(json).expect("config");
        c.normalize();
        c.validate().expect("valid config");
        c
    }

    fn store(cfg: &StreamConfig, msgs: &[&str]) -> MemStore {
        let s = MemStore::new(cfg.limits()).expect("store");
        for (i, subj) in msgs.iter().enumerate() {
            s.store_msg(subj.as_bytes(), None, b"x", T0 + i as i64)
                .expect("stored");
        }
        s
    }

    /// A header block with `pairs`.
    fn headers(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut h = String::from("NATS/1.0\r\n");
        for (k, v) in pairs {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    fn decide(
        cfg: &StreamConfig,
        store: &MemStore,
        window: &Dedupe,
        subject: &str,
        hdrs: &[(&str, &str)],
        now: i64,
    ) -> Verdict {
        let h = (!hdrs.is_empty()).then(|| headers(hdrs));
        check(
            cfg,
            store,
            window,
            &Incoming {
                subject: subject.as_bytes(),
                headers: h.as_deref(),
                payload_len: 1,
            },
            now,
        )
    }

    fn refusal(v: Verdict) -> (u16, String) {
        match v {
            Verdict::Refuse(e) => (e.err_code, e.description),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn plain_messages_are_accepted() {
        let cfg = config(r#"{"name":"S","subjects":["s.>"]}"#);
        let st = store(&cfg, &["s.a"]);
        let w = Dedupe::default();
        assert_eq!(
            decide(&cfg, &st, &w, "s.b", &[], T0),
            Verdict::Accept(Write::default())
        );
        // Headers that ask nothing of the stream change nothing either.
        assert_eq!(
            decide(&cfg, &st, &w, "s.b", &[("X-Mine", "1")], T0),
            Verdict::Accept(Write::default())
        );
    }

    #[test]
    fn sealed_streams_refuse_everything() {
        let cfg = config(r#"{"name":"S","sealed":true}"#);
        let st = store(&cfg, &[]);
        let (code, text) = refusal(decide(&cfg, &st, &Dedupe::default(), "S", &[], T0));
        assert_eq!(code, 10109);
        assert_eq!(text, ApiError::sealed().description);
    }

    #[test]
    fn max_msg_size_counts_headers_and_payload() {
        let cfg = config(r#"{"name":"S","max_msg_size":40}"#);
        let st = store(&cfg, &[]);
        let w = Dedupe::default();
        let fits = |hdr: Option<&[u8]>, payload_len| {
            check(
                &cfg,
                &st,
                &w,
                &Incoming {
                    subject: b"S",
                    headers: hdr,
                    payload_len,
                },
                T0,
            )
        };
        assert_eq!(fits(None, 40), Verdict::Accept(Write::default()));
        assert_eq!(refusal(fits(None, 41)).0, 10054);
        let h = headers(&[("A", "b")]); // 18 bytes
        assert_eq!(h.len(), 18);
        assert_eq!(fits(Some(&h), 22), Verdict::Accept(Write::default()));
        assert_eq!(refusal(fits(Some(&h), 23)).0, 10054);
    }

    #[test]
    fn expected_stream() {
        let cfg = config(r#"{"name":"S"}"#);
        let st = store(&cfg, &[]);
        let w = Dedupe::default();
        let ok = decide(&cfg, &st, &w, "S", &[("Nats-Expected-Stream", "S")], T0);
        assert_eq!(ok, Verdict::Accept(Write::default()));
        let bad = decide(&cfg, &st, &w, "S", &[("Nats-Expected-Stream", "T")], T0);
        assert_eq!(
            refusal(bad),
            (10060, "expected stream does not match".into())
        );
    }

    #[test]
    fn expected_last_sequence() {
        let cfg = config(r#"{"name":"S","subjects":["s.>"]}"#);
        let st = store(&cfg, &["s.a", "s.b", "s.a"]);
        let w = Dedupe::default();
        let with = |v: &str| {
            decide(
                &cfg,
                &st,
                &w,
                "s.c",
                &[("Nats-Expected-Last-Sequence", v)],
                T0,
            )
        };
        assert_eq!(with("3"), Verdict::Accept(Write::default()));
        assert_eq!(with(" 3 "), Verdict::Accept(Write::default()));
        assert_eq!(refusal(with("2")), (10071, "wrong last sequence: 3".into()));
        assert_eq!(refusal(with("x")), (10071, "wrong last sequence: 3".into()));
    }

    #[test]
    fn expected_last_subject_sequence() {
        let cfg = config(r#"{"name":"S","subjects":["s.>"]}"#);
        let st = store(&cfg, &["s.a", "s.b", "s.a", "s.b"]);
        let w = Dedupe::default();
        let with = |subj: &str, v: &str| {
            decide(
                &cfg,
                &st,
                &w,
                subj,
                &[("Nats-Expected-Last-Subject-Sequence", v)],
                T0,
            )
        };
        assert_eq!(with("s.a", "3"), Verdict::Accept(Write::default()));
        assert_eq!(with("s.b", "4"), Verdict::Accept(Write::default()));
        assert_eq!(
            refusal(with("s.a", "4")),
            (10071, "wrong last sequence: 3".into())
        );
        // A subject with no message yet: its last sequence is 0.
        assert_eq!(with("s.new", "0"), Verdict::Accept(Write::default()));
        assert_eq!(
            refusal(with("s.new", "1")),
            (10071, "wrong last sequence: 0".into())
        );
    }

    #[test]
    fn expected_last_msg_id() {
        let cfg = config(r#"{"name":"S"}"#);
        let st = store(&cfg, &[]);
        let mut w = Dedupe::default();
        let with = |w: &Dedupe, v: &str| {
            decide(&cfg, &st, w, "S", &[("Nats-Expected-Last-Msg-Id", v)], T0)
        };
        // No id stored yet: the expected one must be empty.
        assert_eq!(with(&w, ""), Verdict::Accept(Write::default()));
        assert_eq!(
            refusal(with(&w, "a")),
            (10070, "wrong last msg ID: ".into())
        );
        w.record("a".into(), 1, T0);
        w.record("b".into(), 2, T0);
        assert_eq!(with(&w, "b"), Verdict::Accept(Write::default()));
        assert_eq!(
            refusal(with(&w, "a")),
            (10070, "wrong last msg ID: b".into())
        );
    }

    #[test]
    fn msg_id_duplicates_inside_the_window_only() {
        // A 10 s window.
        let cfg = config(r#"{"name":"S","duplicate_window":10000000000}"#);
        let st = store(&cfg, &[]);
        let mut w = Dedupe::default();
        let id = [("Nats-Msg-Id", "m1")];
        assert_eq!(
            decide(&cfg, &st, &w, "S", &id, T0),
            Verdict::Accept(Write {
                msg_id: Some("m1".into()),
                rollup: None
            })
        );
        w.record("m1".into(), 7, T0);
        assert_eq!(
            decide(&cfg, &st, &w, "S", &id, T0 + 5 * SEC),
            Verdict::Duplicate(7)
        );
        assert_eq!(
            decide(&cfg, &st, &w, "S", &id, T0 + 10 * SEC),
            Verdict::Duplicate(7)
        );
        // Past the window it is new again, whether or not the window was trimmed yet.
        let later = T0 + 10 * SEC + 1;
        assert!(matches!(
            decide(&cfg, &st, &w, "S", &id, later),
            Verdict::Accept(Write {
                msg_id: Some(_),
                ..
            })
        ));
        w.expire(later, cfg.duplicate_window());
        assert!(matches!(
            decide(&cfg, &st, &w, "S", &id, later),
            Verdict::Accept(Write {
                msg_id: Some(_),
                ..
            })
        ));
        // Other ids are not duplicates.
        assert!(matches!(
            decide(&cfg, &st, &w, "S", &[("Nats-Msg-Id", "m2")], T0),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn the_window_is_rebuilt_from_the_store_after_a_restart() {
        let cfg = config(r#"{"name":"S","duplicate_window":10000000000}"#);
        let st = MemStore::new(cfg.limits()).expect("store");
        let put = |id: Option<&str>, ts: i64| {
            let h = id.map(|id| headers(&[("Nats-Msg-Id", id)]));
            st.store_msg(b"S", h.as_deref(), b"x", ts)
                .expect("stored")
                .seq
        };
        put(Some("old"), T0);
        let a = put(Some("a"), T0 + 5 * SEC);
        put(None, T0 + 6 * SEC);
        let b = put(Some("b"), T0 + 7 * SEC);
        let window = cfg.duplicate_window();
        let now = T0 + 12 * SEC;
        let w = Dedupe::rebuild(&st, now, window);
        assert_eq!(w.lookup("a", now, window), Some(a));
        assert_eq!(w.lookup("b", now, window), Some(b));
        assert_eq!(w.lookup("old", now, window), None);
        assert_eq!(w.ids.len(), 2);
        assert_eq!(w.last_id.as_deref(), Some("b"));
        let id = [("Nats-Msg-Id", "a")];
        assert_eq!(decide(&cfg, &st, &w, "S", &id, now), Verdict::Duplicate(a));
        // The last message has no id: nor has the window a last one.
        put(None, T0 + 8 * SEC);
        assert_eq!(Dedupe::rebuild(&st, now, window).last_id, None);
        let empty = MemStore::new(cfg.limits()).expect("store");
        assert!(Dedupe::rebuild(&empty, now, window).ids.is_empty());
    }

    #[test]
    fn window_expiry_keeps_newer_ids() {
        let window = Duration::from_secs(10);
        let mut w = Dedupe::default();
        w.record("old".into(), 1, T0);
        w.record("new".into(), 2, T0 + 8 * SEC);
        w.expire(T0 + 12 * SEC, window);
        assert_eq!(w.lookup("old", T0 + 12 * SEC, window), None);
        assert_eq!(w.lookup("new", T0 + 12 * SEC, window), Some(2));
        assert_eq!(w.ids.len(), 1);
        assert_eq!(w.last_id.as_deref(), Some("new"));
    }

    #[test]
    fn rollups_need_permission_and_a_known_value() {
        let denied = config(r#"{"name":"S"}"#);
        let st = store(&denied, &[]);
        let w = Dedupe::default();
        assert_eq!(
            refusal(decide(&denied, &st, &w, "S", &[("Nats-Rollup", "sub")], T0)),
            (10111, "rollup not permitted".into())
        );
        let allowed = config(r#"{"name":"S","allow_rollup_hdrs":true}"#);
        let rollup = |v| decide(&allowed, &st, &w, "S", &[("Nats-Rollup", v)], T0);
        assert_eq!(
            rollup("sub"),
            Verdict::Accept(Write {
                msg_id: None,
                rollup: Some(Rollup::Subject)
            })
        );
        assert_eq!(
            rollup("all"),
            Verdict::Accept(Write {
                msg_id: None,
                rollup: Some(Rollup::All)
            })
        );
        assert_eq!(
            refusal(rollup("everything")),
            (10111, "rollup value invalid: \"everything\"".into())
        );
    }

    #[test]
    fn checks_come_in_nats_server_order() {
        // Too large and a wrong expected stream: the size is reported.
        let cfg = config(r#"{"name":"S","max_msg_size":10}"#);
        let st = store(&cfg, &[]);
        let w = Dedupe::default();
        let h = headers(&[("Nats-Expected-Stream", "T")]);
        let v = check(
            &cfg,
            &st,
            &w,
            &Incoming {
                subject: b"S",
                headers: Some(&h),
                payload_len: 0,
            },
            T0,
        );
        assert_eq!(refusal(v).0, 10054);
        // A duplicate with a rollup it may not do: the duplicate wins (it is not stored again).
        let mut w = Dedupe::default();
        w.record("m".into(), 3, T0);
        let cfg = config(r#"{"name":"S"}"#);
        let v = decide(
            &cfg,
            &st,
            &w,
            "S",
            &[("Nats-Msg-Id", "m"), ("Nats-Rollup", "all")],
            T0,
        );
        assert_eq!(v, Verdict::Duplicate(3));
        // A wrong expected last sequence comes before a duplicate.
        let v = decide(
            &cfg,
            &st,
            &w,
            "S",
            &[("Nats-Msg-Id", "m"), ("Nats-Expected-Last-Sequence", "9")],
            T0,
        );
        assert_eq!(refusal(v).0, 10071);
    }
}
