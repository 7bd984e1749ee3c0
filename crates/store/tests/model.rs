//! Property tests: random appends, removes, purges, compactions and limit changes against a
//! plain `BTreeMap` model; for the file store also close + reopen in the middle.

use std::collections::BTreeMap;

use natrium_store::{FileStore, FileStoreConfig, Limits, MemStore, StreamStore};
use proptest::prelude::*;

const SUBJECTS: [&str; 4] = ["a.1", "a.2", "b.1", "c"];

#[derive(Debug, Clone)]
enum Op {
    Store(usize, usize),
    Remove(u64),
    Erase(u64),
    Purge,
    PurgeSubject(usize, u64),
    Compact(u64),
    Limits(Option<i64>, Option<i64>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..SUBJECTS.len(), 0..300usize).prop_map(|(s, n)| Op::Store(s, n)),
        3 => (0..40u64).prop_map(Op::Remove),
        1 => (0..40u64).prop_map(Op::Erase),
        1 => Just(Op::Purge),
        1 => (0..SUBJECTS.len(), 0..3u64).prop_map(|(s, k)| Op::PurgeSubject(s, k)),
        1 => (0..50u64).prop_map(Op::Compact),
        1 => (proptest::option::of(1..30i64), proptest::option::of(1..6i64))
            .prop_map(|(m, p)| Op::Limits(m, p)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    msgs: BTreeMap<u64, (usize, usize)>,
    last: u64,
    max_msgs: Option<i64>,
    per_subject: Option<i64>,
}

impl Model {
    fn enforce(&mut self) {
        if let Some(p) = self.per_subject {
            for s in 0..SUBJECTS.len() {
                let seqs: Vec<u64> = self
                    .msgs
                    .iter()
                    .filter(|(_, m)| m.0 == s)
                    .map(|(q, _)| *q)
                    .collect();
                for q in seqs.iter().take(seqs.len().saturating_sub(p as usize)) {
                    self.msgs.remove(q);
                }
            }
        }
        if let Some(m) = self.max_msgs {
            while self.msgs.len() as i64 > m {
                self.msgs.pop_first();
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Store(s, n) => {
                self.last += 1;
                self.msgs.insert(self.last, (s, n));
                self.enforce();
            }
            Op::Remove(k) | Op::Erase(k) => {
                self.msgs.remove(&(self.last.saturating_sub(k)));
            }
            Op::Purge => self.msgs.clear(),
            Op::PurgeSubject(s, keep) => {
                let seqs: Vec<u64> = self
                    .msgs
                    .iter()
                    .filter(|(_, m)| m.0 == s)
                    .map(|(q, _)| *q)
                    .collect();
                for q in seqs.iter().take(seqs.len().saturating_sub(keep as usize)) {
                    self.msgs.remove(q);
                }
            }
            Op::Compact(k) => {
                let seq = self.last.saturating_sub(20) + k;
                if seq == 0 {
                    self.msgs.clear();
                } else {
                    self.msgs = self.msgs.split_off(&seq);
                    self.last = self.last.max(seq - 1);
                }
            }
            Op::Limits(m, p) => {
                self.max_msgs = m;
                self.per_subject = p;
                self.enforce();
            }
            Op::Reopen => {}
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_msgs: self.max_msgs.unwrap_or(-1),
            max_msgs_per_subject: self.per_subject.unwrap_or(-1),
            ..Limits::default()
        }
    }
}

fn apply(s: &dyn StreamStore, m: &Model, op: &Op) {
    match *op {
        Op::Store(subj, n) => {
            let payload = vec![b'x'; n];
            s.store_msg(SUBJECTS[subj].as_bytes(), None, &payload, m.last as i64 + 1)
                .unwrap();
        }
        Op::Remove(k) => {
            s.remove_msg(m.last.saturating_sub(k)).unwrap();
        }
        Op::Erase(k) => {
            s.erase_msg(m.last.saturating_sub(k)).unwrap();
        }
        Op::Purge => {
            s.purge().unwrap();
        }
        Op::PurgeSubject(subj, keep) => {
            s.purge_ex(SUBJECTS[subj].as_bytes(), 0, keep).unwrap();
        }
        Op::Compact(k) => {
            s.compact(m.last.saturating_sub(20) + k).unwrap();
        }
        Op::Limits(max_msgs, per) => {
            s.update_config(Limits {
                max_msgs: max_msgs.unwrap_or(-1),
                max_msgs_per_subject: per.unwrap_or(-1),
                ..Limits::default()
            })
            .unwrap();
        }
        Op::Reopen => {}
    }
}

fn check(s: &dyn StreamStore, m: &Model) -> Result<(), TestCaseError> {
    let st = s.state();
    prop_assert_eq!(st.msgs, m.msgs.len() as u64);
    prop_assert_eq!(st.last_seq, m.last);
    let first = match m.msgs.keys().next() {
        Some(f) => *f,
        None if m.last == 0 => 0,
        None => m.last + 1,
    };
    prop_assert_eq!(st.first_seq, first);
    let expected_bytes: u64 = m
        .msgs
        .values()
        .map(|(s, n)| natrium_store::msg_size(SUBJECTS[*s].as_bytes(), None, &vec![0; *n]))
        .sum();
    prop_assert_eq!(st.bytes, expected_bytes);
    let mut got = BTreeMap::new();
    let mut at = 0;
    while let Ok(msg) = s.load_next_msg(b">", at) {
        let subj = SUBJECTS
            .iter()
            .position(|x| x.as_bytes() == &msg.subject[..]);
        got.insert(msg.seq, (subj.unwrap_or(99), msg.payload.len()));
        at = msg.seq + 1;
    }
    prop_assert_eq!(&got, &m.msgs);
    for (i, subj) in SUBJECTS.iter().enumerate() {
        let last = m.msgs.iter().rev().find(|(_, v)| v.0 == i).map(|(q, _)| *q);
        prop_assert_eq!(
            s.load_last_by_subject(subj.as_bytes()).ok().map(|x| x.seq),
            last
        );
        let count = m.msgs.values().filter(|v| v.0 == i).count() as u64;
        prop_assert_eq!(
            s.subjects_state(subj.as_bytes())
                .get(subj.as_bytes())
                .copied(),
            (count > 0).then_some(count)
        );
    }
    let deleted: Vec<u64> = if m.msgs.is_empty() {
        Vec::new()
    } else {
        (first..=m.last)
            .filter(|q| !m.msgs.contains_key(q))
            .collect()
    };
    prop_assert_eq!(s.deleted(), deleted);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn mem_store_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let s = MemStore::new(Limits::default()).unwrap();
        let mut m = Model::default();
        for op in &ops {
            apply(&s, &m, op);
            m.apply(op);
            check(&s, &m)?;
        }
    }

    #[test]
    fn file_store_matches_model_across_reopens(
        ops in proptest::collection::vec(op(), 1..120),
        cache in 0..3usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || {
            let mut c = FileStoreConfig::new(dir.path());
            c.block_size = 4096;
            c.cache_blocks = cache;
            c
        };
        let mut s = FileStore::open(cfg(), Limits::default()).unwrap();
        let mut m = Model::default();
        for op in &ops {
            if let Op::Reopen = op {
                drop(s);
                s = FileStore::open(cfg(), m.limits()).unwrap();
                prop_assert!(s.recovery().corruption.is_empty());
            }
            apply(&s, &m, op);
            m.apply(op);
            check(&s, &m)?;
        }
        drop(s);
        let s = FileStore::open(cfg(), m.limits()).unwrap();
        check(&s, &m)?;
    }
}

/// A damaged block: valid records, then byte flips, a cut and inserted garbage.
fn damaged_block() -> impl Strategy<Value = (u64, Vec<u8>)> {
    (
        1..60u64,
        proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
        proptest::option::of(any::<prop::sample::Index>()),
        proptest::option::of((
            any::<prop::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 1..40),
        )),
    )
        .prop_map(|(n, flips, cut, garbage)| {
            let mut buf = Vec::new();
            for seq in 1..=n {
                let payload = format!("payload of {seq}");
                natrium_store::record::encode(
                    &mut buf,
                    seq,
                    seq as i64,
                    b"s",
                    b"",
                    payload.as_bytes(),
                );
            }
            for (at, x) in flips {
                let i = at.index(buf.len());
                buf[i] ^= x;
            }
            if let Some((at, g)) = garbage {
                let i = at.index(buf.len() + 1);
                buf.splice(i..i, g);
            }
            if let Some(at) = cut {
                buf.truncate(at.index(buf.len() + 1));
            }
            (n, buf)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Recovery never panics on a damaged block and never serves a message that is not exactly
    /// what was written under its sequence.
    #[test]
    fn recovery_never_serves_bad_data((n, block) in damaged_block()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.blk"), &block).unwrap();
        let s = FileStore::open(FileStoreConfig::new(dir.path()), Limits::default()).unwrap();
        let st = s.state();
        prop_assert!(st.msgs <= n);
        for seq in 1..=st.last_seq {
            if let Ok(m) = s.load_msg(seq) {
                let want = format!("payload of {seq}");
                prop_assert_eq!(&m.payload[..], want.as_bytes());
                prop_assert!(!st.lost.contains(&seq));
            }
        }
        let r = s.store_msg(b"after", None, b"x", 1).unwrap();
        prop_assert!(r.seq > st.last_seq);
        prop_assert!(r.seq > st.lost.iter().copied().max().unwrap_or(0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// A sealed block (opened from its summary, not read) damaged anywhere, seal included: opening
    /// never panics, nothing but the written payload is ever served under a sequence, and once
    /// verified the store counts exactly the messages it can serve.
    #[test]
    fn damaged_sealed_block_never_serves_bad_data(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || {
            let mut c = FileStoreConfig::new(dir.path());
            c.block_size = 4096;
            c.cache_blocks = 0;
            c.scrub = None;
            c
        };
        let s = FileStore::open(cfg(), Limits::default()).unwrap();
        for seq in 1..=200u64 {
            let payload = format!("payload of {seq}");
            s.store_msg(SUBJECTS[seq as usize % 4].as_bytes(), None, payload.as_bytes(), 1).unwrap();
        }
        s.remove_msg(3).unwrap();
        drop(s);
        let first = dir.path().join("00000000000000000001.blk");
        let mut buf = std::fs::read(&first).unwrap();
        for (at, x) in &flips {
            let i = at.index(buf.len());
            buf[i] ^= x;
        }
        if let Some(at) = cut {
            buf.truncate(at.index(buf.len() + 1));
        }
        std::fs::write(&first, &buf).unwrap();
        let s = FileStore::open(cfg(), Limits::default()).unwrap();
        let served = |s: &FileStore| -> Result<u64, TestCaseError> {
            let mut n = 0;
            for seq in 1..=200u64 {
                if let Ok(m) = s.load_msg(seq) {
                    let want = format!("payload of {seq}");
                    prop_assert_eq!(&m.payload[..], want.as_bytes());
                    prop_assert!(seq != 3);
                    n += 1;
                }
            }
            Ok(n)
        };
        served(&s)?;
        s.verify_now().unwrap();
        let n = served(&s)?;
        let st = s.state();
        prop_assert_eq!(st.msgs, n);
        prop_assert!(s.subjects_state(b">").values().sum::<u64>() >= n);
        prop_assert!(s.store_msg(b"after", None, b"x", 1).unwrap().seq > 200);
    }
}
