//! A stream's decision on one published message, without changing anything: refuse it with
//! nats-server's error, recognise a duplicate, or accept it as a write (msg id, rollup).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use natrium_protocol::headers::HeaderView;
use natrium_store::StreamStore;

use super::headers;
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
    pub payload: &'a [u8],
    /// It came from a source (its headers name it); stored as it is, not re-checked.
    pub sourced: bool,
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
    /// Headers to store instead of the published ones (counter sources, a schedule's rollup,
    /// a TTL raised to the marker TTL).
    pub headers: Option<Vec<u8>>,
    /// Payload to store instead of the published one (a counter's new value).
    pub payload: Option<Vec<u8>>,
    /// Per-message TTL in seconds: 0 none, -1 never.
    pub ttl: i64,
    /// A counter's value after this increment, for the PubAck's `val`.
    pub counter: Option<String>,
    /// `Nats-Schedule-Next: purge`: the schedule subject to purge once stored.
    pub purge_scheduler: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Refused: the publisher gets this error.
    Refuse(ApiError),
    /// Already stored (same `Nats-Msg-Id` inside the window) at this sequence.
    Duplicate(u64),
    Accept(Write),
}

/// Largest header block a stream stores (nats-server's 64k).
const MAX_HEADER: usize = 65_535;

/// A counter's stored body, `{"val":"123"}`.
#[derive(serde::Deserialize)]
struct CounterValue {
    val: String,
}

fn parse_incr(v: &str) -> Option<i128> {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Decides on `msg` at `now` (ns since the epoch), in nats-server's order of checks: sealed,
/// size, counter increments, `Nats-Expected-Stream`, TTLs, `Nats-Expected-Last-Subject-Sequence`,
/// `Nats-Expected-Last-Sequence`, schedules, `Nats-Msg-Id` duplicates,
/// `Nats-Expected-Last-Msg-Id`, `Nats-Rollup`, counter values. The store is read only when a
/// header asks for its last sequences or a counter needs its last value. The store's own
/// limits are checked by the append.
pub(crate) fn check(
    cfg: &StreamConfig,
    store: &dyn StreamStore,
    window: &Dedupe,
    msg: &Incoming<'_>,
    now: i64,
) -> Verdict {
    check_with(cfg, store, window, msg, now, None, None)
}

/// `check` with the stream's last sequence and the subject's last sequence given (an atomic
/// batch checks each message as if the earlier ones were stored).
pub(crate) fn check_with(
    cfg: &StreamConfig,
    store: &dyn StreamStore,
    window: &Dedupe,
    msg: &Incoming<'_>,
    now: i64,
    last_seq: Option<u64>,
    last_subject_seq: Option<u64>,
) -> Verdict {
    use Verdict::Refuse;
    if cfg.sealed {
        return Refuse(ApiError::sealed());
    }
    let hdr = msg.headers.and_then(HeaderView::parse);
    let get = |name: &str| {
        hdr.as_ref()
            .and_then(|h| h.get(name.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let size = msg.payload.len() + msg.headers.map_or(0, <[u8]>::len);
    if cfg.max_msg_size > 0 && size as i64 > cfg.max_msg_size {
        return Refuse(ApiError::message_too_large());
    }
    let mut write = Write::default();
    if hdr.is_none() {
        if cfg.allow_msg_counter {
            return Refuse(ApiError::incr_missing());
        }
        return Verdict::Accept(write);
    }
    // Counter increments: only on counter streams, with no payload and none of the headers
    // that ask something of the stream.
    let incr = match get(headers::INCR).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match parse_incr(&v) {
            None => return Refuse(ApiError::incr_invalid()),
            Some(n) => Some(n),
        },
    };
    if incr.is_some() && !msg.sourced {
        if !cfg.allow_msg_counter {
            return Refuse(ApiError::incr_disabled());
        }
        if !msg.payload.is_empty() {
            return Refuse(ApiError::incr_payload());
        }
        let conflicting = [
            "Nats-Rollup",
            "Nats-Expected-Stream",
            "Nats-Expected-Last-Msg-Id",
            "Nats-Expected-Last-Subject-Sequence-Subject",
            "Nats-Expected-Last-Sequence",
            "Nats-Expected-Last-Subject-Sequence",
        ];
        if conflicting
            .iter()
            .any(|h| get(h).is_some_and(|v| !v.is_empty()))
        {
            return Refuse(ApiError::incr_invalid());
        }
    }
    if let Some(expected) = get("Nats-Expected-Stream").filter(|v| !v.is_empty()) {
        if expected != cfg.name {
            return Refuse(ApiError::expected_stream_mismatch());
        }
    }
    // A TTL on a stream without TTLs is refused; an invalid one is reported after the limits.
    let ttl_header = get(headers::MSG_TTL).filter(|v| !v.is_empty());
    let ttl = ttl_header.as_deref().map(headers::parse_ttl);
    if !msg.sourced && matches!(ttl, Some(Some(t)) if t != 0) && !cfg.allow_msg_ttl {
        return Refuse(ApiError::msg_ttl_disabled());
    }
    if let Some(v) = get("Nats-Expected-Last-Subject-Sequence").filter(|v| !v.is_empty()) {
        let other = get("Nats-Expected-Last-Subject-Sequence-Subject").filter(|s| !s.is_empty());
        let last = match (&other, last_subject_seq) {
            (None, Some(seq)) => seq,
            _ => {
                let subj =
                    other.unwrap_or_else(|| String::from_utf8_lossy(msg.subject).into_owned());
                store
                    .load_last_by_subject(subj.as_bytes())
                    .map_or(0, |m| m.seq)
            }
        };
        if v.trim().parse::<u64>().ok() != Some(last) {
            return Refuse(ApiError::wrong_last_sequence(last));
        }
    } else if get("Nats-Expected-Last-Subject-Sequence-Subject").is_some_and(|v| !v.is_empty()) {
        return Refuse(ApiError::expected_last_subject_seq_missing());
    }
    if let Some(v) = get("Nats-Expected-Last-Sequence").filter(|v| !v.is_empty()) {
        let last = last_seq.unwrap_or_else(|| store.state().last_seq);
        if v.trim().parse::<u64>().ok() != Some(last) {
            return Refuse(ApiError::wrong_last_sequence(last));
        }
    }
    let mut rollup_header = get(headers::ROLLUP).filter(|v| !v.is_empty());
    if let Some(pattern) = get(headers::SCHEDULE).filter(|v| !v.is_empty()) {
        if let Err(e) = check_schedule(cfg, msg.subject, &pattern, &get, &mut rollup_header) {
            return Refuse(e);
        }
        if rollup_header.is_some() && get(headers::ROLLUP).is_none() {
            write.headers = Some(headers::with(msg.headers, &[(headers::ROLLUP, "sub")]));
        }
    }
    if get(headers::SCHEDULE_NEXT).as_deref() == Some("purge") {
        if !cfg.allow_msg_schedules {
            return Refuse(ApiError::schedules_disabled());
        }
        write.purge_scheduler = get(headers::SCHEDULER).filter(|s| !s.is_empty());
    }
    let msg_id = get("Nats-Msg-Id").filter(|v| !v.is_empty());
    if cfg.mirror.is_none() {
        if let Some(seq) = msg_id
            .as_deref()
            .and_then(|id| window.lookup(id, now, cfg.duplicate_window()))
        {
            return Verdict::Duplicate(seq);
        }
    }
    if let Some(v) = get("Nats-Expected-Last-Msg-Id").filter(|v| !v.is_empty()) {
        let last = window.last_id.as_deref().unwrap_or_default();
        if v != last {
            return Refuse(ApiError::wrong_last_msg_id(last));
        }
    }
    write.msg_id = msg_id;
    write.rollup = match rollup_header.map(|r| r.to_ascii_lowercase()) {
        None => None,
        Some(_) if !cfg.allow_rollup_hdrs || cfg.deny_purge => {
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
    if cfg.allow_msg_counter {
        match incr {
            None => return Refuse(ApiError::incr_missing()),
            Some(n) => match count(store, msg, &get, n) {
                Ok(c) => {
                    let size = c.payload.len() + c.headers.as_ref().map_or(0, Vec::len);
                    if cfg.max_msg_size > 0 && size as i64 > cfg.max_msg_size {
                        return Refuse(ApiError::message_too_large());
                    }
                    write.headers = c.headers;
                    write.payload = Some(c.payload);
                    write.counter = Some(c.val);
                }
                Err(e) => return Refuse(e),
            },
        }
    }
    if msg.headers.map_or(0, <[u8]>::len) > MAX_HEADER {
        return Refuse(ApiError::header_too_large());
    }
    match ttl {
        Some(None) => return Refuse(ApiError::msg_ttl_invalid()),
        Some(Some(mut t)) => {
            // A TTL shorter than the markers' would let a marker outlive what it marks.
            let marker = cfg.subject_delete_marker_ttl / 1_000_000_000;
            if t > 0 && marker > 0 && cfg.max_msgs_per_subject != 1 && t < marker {
                t = marker;
                let base = write.headers.clone();
                let src = base.as_deref().or(msg.headers);
                write.headers = Some(headers::set(src, headers::MSG_TTL, &t.to_string()));
            }
            write.ttl = t;
        }
        None => {}
    }
    Verdict::Accept(write)
}

/// nats-server's schedule checks (`@at <RFC 3339>` only); a schedule takes a `sub` rollup.
fn check_schedule(
    cfg: &StreamConfig,
    subject: &[u8],
    pattern: &str,
    get: &dyn Fn(&str) -> Option<String>,
    rollup: &mut Option<String>,
) -> Result<(), ApiError> {
    let Some(at) = pattern.strip_prefix("@at ") else {
        return Err(if cfg.allow_msg_schedules {
            ApiError::schedules_pattern_invalid()
        } else {
            ApiError::schedules_disabled()
        });
    };
    if crate::jetstream::consumer::parse_time(at).is_none() {
        return Err(if cfg.allow_msg_schedules {
            ApiError::schedules_pattern_invalid()
        } else {
            ApiError::schedules_disabled()
        });
    }
    if !cfg.allow_msg_schedules {
        return Err(ApiError::schedules_disabled());
    }
    if let Some(ttl) = get(headers::SCHEDULE_TTL).filter(|v| !v.is_empty()) {
        if headers::parse_ttl(&ttl).is_none() {
            return Err(ApiError::schedules_ttl_invalid());
        }
        if !cfg.allow_msg_ttl {
            return Err(ApiError::msg_ttl_disabled());
        }
    }
    let target = get(headers::SCHEDULE_TARGET).unwrap_or_default();
    if target.is_empty()
        || !natrium_subjects::is_valid_publish_subject(target.as_bytes())
        || natrium_subjects::overlaps(target.as_bytes(), subject)
        || !cfg
            .subjects
            .iter()
            .any(|s| natrium_subjects::overlaps(s.as_bytes(), target.as_bytes()))
    {
        return Err(ApiError::schedules_target_invalid());
    }
    match rollup.as_deref().map(str::to_ascii_lowercase) {
        None => *rollup = Some("sub".into()),
        Some(r) if r == "sub" => {}
        Some(_) => return Err(ApiError::schedules_rollup_invalid()),
    }
    Ok(())
}

/// A counter's increment applied to its subject's last value: the headers and payload to
/// store and the new value. A sourced counter message (from another counter stream) adds the
/// difference from what that source last said, recorded in `Nats-Counter-Sources`.
fn count(
    store: &dyn StreamStore,
    msg: &Incoming<'_>,
    get: &dyn Fn(&str) -> Option<String>,
    mut incr: i128,
) -> Result<Counted, ApiError> {
    type Sources = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;
    let mut value: i128 = 0;
    let mut sources: Sources = Sources::new();
    if let Ok(last) = store.load_last_by_subject(msg.subject) {
        let v: CounterValue =
            serde_json::from_slice(&last.payload).map_err(|_| ApiError::counter_broken())?;
        value = v.val.parse().map_err(|_| ApiError::counter_broken())?;
        if let Some(cs) = headers::get(last.headers.as_deref(), headers::COUNTER_SOURCES)
            .filter(|v| !v.is_empty())
        {
            sources = serde_json::from_str(&cs).map_err(|_| ApiError::counter_broken())?;
        }
    }
    let mut hdrs = msg.headers.map(<[u8]>::to_vec);
    if let Some(src) = get(headers::STREAM_SOURCE).filter(|v| !v.is_empty()) {
        let fields: Vec<&str> = src.split(' ').collect();
        let origin = fields.first().copied().unwrap_or_default().to_string();
        let subj = fields
            .get(4)
            .map(|s| s.to_string())
            .unwrap_or_else(|| String::from_utf8_lossy(msg.subject).into_owned());
        let v: CounterValue =
            serde_json::from_slice(msg.payload).map_err(|_| ApiError::counter_broken())?;
        let theirs: i128 = v.val.parse().map_err(|_| ApiError::counter_broken())?;
        let per = sources.entry(origin).or_default();
        let before: i128 = per.get(&subj).and_then(|p| p.parse().ok()).unwrap_or(0);
        per.insert(subj, theirs.to_string());
        incr = theirs - before;
        hdrs = Some(headers::set(
            hdrs.as_deref(),
            headers::INCR,
            &incr.to_string(),
        ));
    }
    value = value.checked_add(incr).ok_or_else(ApiError::incr_invalid)?;
    if !sources.is_empty() {
        let body = serde_json::to_string(&sources).map_err(|_| ApiError::counter_broken())?;
        hdrs = Some(headers::set(
            hdrs.as_deref(),
            headers::COUNTER_SOURCES,
            &body,
        ));
    }
    let val = value.to_string();
    let payload = format!("{{\"val\":\"{val}\"}}").into_bytes();
    Ok(Counted {
        headers: hdrs,
        payload,
        val,
    })
}

/// A counter message as it is stored: headers, the `{"val":..}` body, the value.
struct Counted {
    headers: Option<Vec<u8>>,
    payload: Vec<u8>,
    val: String,
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
                payload: b"x",
                sourced: false,
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
        let fits = |hdr: Option<&[u8]>, payload_len: usize| {
            let payload = vec![b'x'; payload_len];
            check(
                &cfg,
                &st,
                &w,
                &Incoming {
                    subject: b"S",
                    headers: hdr,
                    payload: &payload,
                    sourced: false,
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
                ..Write::default()
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
                rollup: Some(Rollup::Subject),
                ..Write::default()
            })
        );
        assert_eq!(
            rollup("all"),
            Verdict::Accept(Write {
                rollup: Some(Rollup::All),
                ..Write::default()
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
                payload: b"",
                sourced: false,
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

    #[test]
    fn ttls_need_permission_and_a_valid_value() {
        let off = config(r#"{"name":"S"}"#);
        let st = store(&off, &[]);
        let w = Dedupe::default();
        assert_eq!(
            refusal(decide(&off, &st, &w, "S", &[("Nats-TTL", "5s")], T0)).0,
            10166
        );
        let on = config(r#"{"name":"S","allow_msg_ttl":true}"#);
        let ttl = |v| decide(&on, &st, &w, "S", &[("Nats-TTL", v)], T0);
        assert!(matches!(ttl("5s"), Verdict::Accept(Write { ttl: 5, .. })));
        assert!(matches!(
            ttl("never"),
            Verdict::Accept(Write { ttl: -1, .. })
        ));
        assert_eq!(refusal(ttl("10ms")).0, 10165);
        // Markers of 10 s raise a shorter TTL to theirs, in the stored header too.
        let sdm =
            config(r#"{"name":"S","allow_msg_ttl":true,"subject_delete_marker_ttl":10000000000}"#);
        match decide(&sdm, &st, &w, "S", &[("Nats-TTL", "2")], T0) {
            Verdict::Accept(Write {
                ttl: 10,
                headers: Some(h),
                ..
            }) => assert_eq!(headers::get(Some(&h), "Nats-TTL").as_deref(), Some("10")),
            other => panic!("expected a raised TTL, got {other:?}"),
        }
    }

    #[test]
    fn counters_add_to_the_subjects_last_value() {
        let cfg = config(r#"{"name":"S","subjects":["c.>"],"allow_msg_counter":true}"#);
        let st = MemStore::new(cfg.limits()).expect("store");
        st.store_msg(b"c.a", None, br#"{"val":"40"}"#, T0)
            .expect("stored");
        let w = Dedupe::default();
        let incr = |subj: &str, v: &str| {
            let h = headers(&[("Nats-Incr", v)]);
            check(
                &cfg,
                &st,
                &w,
                &Incoming {
                    subject: subj.as_bytes(),
                    headers: Some(&h),
                    payload: b"",
                    sourced: false,
                },
                T0,
            )
        };
        match incr("c.a", "2") {
            Verdict::Accept(Write {
                payload: Some(p),
                counter: Some(v),
                ..
            }) => {
                assert_eq!(p, br#"{"val":"42"}"#);
                assert_eq!(v, "42");
            }
            other => panic!("expected a counter write, got {other:?}"),
        }
        assert!(matches!(
            incr("c.new", "-3"),
            Verdict::Accept(Write { counter: Some(ref v), .. }) if v == "-3"
        ));
        assert_eq!(refusal(incr("c.a", "1.5")).0, 10171);
        st.store_msg(b"c.broken", None, b"not json", T0)
            .expect("stored");
        assert_eq!(refusal(incr("c.broken", "1")).0, 10172);
        // A sourced counter adds what changed at its origin since it last said.
        let src = headers(&[("Nats-Incr", "7"), ("Nats-Stream-Source", "ORIG 3 > > c.a")]);
        let v = check(
            &cfg,
            &st,
            &w,
            &Incoming {
                subject: b"c.a",
                headers: Some(&src),
                payload: br#"{"val":"7"}"#,
                sourced: true,
            },
            T0,
        );
        match v {
            Verdict::Accept(Write {
                counter: Some(v),
                headers: Some(h),
                ..
            }) => {
                assert_eq!(v, "47");
                assert_eq!(
                    headers::get(Some(&h), "Nats-Counter-Sources").as_deref(),
                    Some(r#"{"ORIG":{"c.a":"7"}}"#)
                );
            }
            other => panic!("expected a sourced counter write, got {other:?}"),
        }
    }

    #[test]
    fn schedules_are_checked_and_take_a_subject_rollup() {
        let cfg = config(r#"{"name":"S","subjects":["s.>","t.>"],"allow_msg_schedules":true}"#);
        assert!(cfg.allow_rollup_hdrs, "schedules turn roll-ups on");
        let st = store(&cfg, &[]);
        let w = Dedupe::default();
        let at = "@at 2030-01-01T00:00:00Z";
        match decide(
            &cfg,
            &st,
            &w,
            "s.a",
            &[("Nats-Schedule", at), ("Nats-Schedule-Target", "t.a")],
            T0,
        ) {
            Verdict::Accept(Write {
                rollup: Some(Rollup::Subject),
                headers: Some(h),
                ..
            }) => assert_eq!(
                headers::get(Some(&h), "Nats-Rollup").as_deref(),
                Some("sub")
            ),
            other => panic!("expected a schedule, got {other:?}"),
        }
        let bad = |h: &[(&str, &str)]| refusal(decide(&cfg, &st, &w, "s.a", h, T0)).0;
        assert_eq!(bad(&[("Nats-Schedule", "@every 5s")]), 10189);
        assert_eq!(
            bad(&[("Nats-Schedule", at), ("Nats-Schedule-Target", "u.a")]),
            10190
        );
        assert_eq!(
            bad(&[
                ("Nats-Schedule", at),
                ("Nats-Schedule-Target", "t.a"),
                ("Nats-Rollup", "all")
            ]),
            10192
        );
        assert_eq!(
            bad(&[
                ("Nats-Schedule", at),
                ("Nats-Schedule-Target", "t.a"),
                ("Nats-Schedule-TTL", "5s")
            ]),
            10166,
            "a schedule TTL needs TTLs on"
        );
    }
}
