//! Where a consumer reads in its stream: the starting cursor of each deliver policy, the next
//! message matching its filters, and how many are left after a cursor. Reads only.

use std::collections::VecDeque;
use std::time::SystemTime;

use natrium_store::{StoreError, StoredMsg, StreamStore};

use crate::jetstream::consumer_config::{ConsumerConfig, DeliverPolicy};

/// The cursor a new consumer starts from (the stream sequence before its first delivery) and,
/// for `last_per_subject`, the sequences to deliver before continuing after it.
pub(crate) fn initial_cursor(
    cfg: &ConsumerConfig,
    filters: &[String],
    store: &dyn StreamStore,
) -> (u64, VecDeque<u64>) {
    let ss = store.state();
    let mut start_list = VecDeque::new();
    let sseq = match cfg.deliver_policy {
        DeliverPolicy::All => ss.first_seq.saturating_sub(1),
        DeliverPolicy::New => ss.last_seq,
        DeliverPolicy::ByStartSequence => cfg.opt_start_seq.unwrap_or(1).saturating_sub(1),
        DeliverPolicy::Last => {
            let last = if filters.is_empty() {
                store
                    .load_last_by_subject(b">")
                    .map(|m| m.seq)
                    .unwrap_or(ss.last_seq)
            } else {
                filters
                    .iter()
                    .filter_map(|f| store.load_last_by_subject(f.as_bytes()).ok())
                    .map(|m| m.seq)
                    .max()
                    .unwrap_or(ss.last_seq)
            };
            last.saturating_sub(1)
        }
        DeliverPolicy::ByStartTime => {
            let t = cfg
                .opt_start_time
                .as_deref()
                .and_then(parse_time)
                .map_or(0, crate::util::time::unix_nanos);
            let mut from = ss.first_seq.max(1);
            let mut found = ss.last_seq;
            while let Some(m) = next_matching(store, filters, from) {
                if m.ts >= t {
                    found = m.seq - 1;
                    break;
                }
                from = m.seq + 1;
            }
            found
        }
        DeliverPolicy::LastPerSubject => {
            let all = [">".to_string()];
            let pats: &[String] = if filters.is_empty() { &all } else { filters };
            let mut seqs: Vec<u64> = pats
                .iter()
                .flat_map(|p| {
                    store
                        .subjects_state(p.as_bytes())
                        .into_keys()
                        .collect::<Vec<_>>()
                })
                .filter_map(|subj| store.load_last_by_subject(&subj).ok().map(|m| m.seq))
                .collect();
            seqs.sort_unstable();
            seqs.dedup();
            start_list = seqs.into();
            ss.last_seq
        }
    };
    (sseq, start_list)
}

/// The first stored message at or after `start` matching any of `filters` (all if empty).
pub(crate) fn next_matching(
    store: &dyn StreamStore,
    filters: &[String],
    start: u64,
) -> Option<StoredMsg> {
    if filters.is_empty() {
        return load_next(store, b">", start);
    }
    filters
        .iter()
        .filter_map(|f| load_next(store, f.as_bytes(), start))
        .min_by_key(|m| m.seq)
}

fn load_next(store: &dyn StreamStore, filter: &[u8], start: u64) -> Option<StoredMsg> {
    let mut from = start;
    loop {
        match store.load_next_msg(filter, from) {
            Ok(m) => return Some(m),
            // A damaged message is skipped, never delivered.
            Err(StoreError::Corrupt { seq, .. }) => from = seq + 1,
            Err(_) => return None,
        }
    }
}

/// How many stored messages after `cursor` match `filters`.
pub(crate) fn count_pending(store: &dyn StreamStore, filters: &[String], cursor: u64) -> u64 {
    let st = store.state();
    if st.msgs == 0 || cursor >= st.last_seq {
        return 0;
    }
    if cursor < st.first_seq {
        if filters.is_empty() {
            return st.msgs;
        }
        return filters
            .iter()
            .map(|f| store.subjects_state(f.as_bytes()).values().sum::<u64>())
            .sum();
    }
    let mut n = 0;
    let mut from = cursor + 1;
    while let Some(m) = next_matching(store, filters, from) {
        n += 1;
        from = m.seq + 1;
    }
    n
}

/// An RFC 3339 time (`opt_start_time`, `pause_until`); `None` if unparsable or not after 1970.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    if nanos <= 0 {
        return None;
    }
    Some(crate::util::time::from_unix_nanos(nanos as i64))
}
