//! The conformance suite every `StreamStore` must pass: each case takes a factory that opens a
//! fresh, empty store with given limits. `conformance_tests!` turns the cases into `#[test]`s.
//!
//! Timestamps are injected (nanoseconds), so age limits are tested without sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use crate::{msg_size, Discard, Limits, StoreError, StreamStore};

/// Opens a fresh, empty store with the given limits.
pub type Factory<'a> = &'a dyn Fn(Limits) -> Box<dyn StreamStore>;

/// Generate one `#[test]` per case. `$with` is a `fn(&dyn Fn(Factory))` that prepares whatever
/// the stores need (a temp dir) and calls the case with a factory.
#[macro_export]
macro_rules! conformance_tests {
    ($with:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $with(&|f| $crate::conformance::$case(f));
            }
        )*
    };
    ($with:path) => {
        $crate::conformance_tests!($with;
            appends_and_loads, max_msgs_discard_old, max_msgs_discard_new, max_bytes_discard_old,
            max_bytes_discard_new, max_msg_size, per_subject_discard_old, per_subject_discard_new,
            last_by_subject_with_wildcards, load_next_with_filters, remove_and_deleted, erase,
            purge, purge_ex_variants, compact, subjects_state, update_config_shrinks,
            max_age_expiry, many_messages_across_blocks, durability_tokens_resolve, stop_closes);
    };
}

fn unlimited() -> Limits {
    Limits::default()
}

/// Store `payload` on `subject` at ts = seq * 1000 (predictable).
fn put(s: &dyn StreamStore, subject: &str, payload: &str) -> u64 {
    let next = s.state().last_seq + 1;
    s.store_msg(
        subject.as_bytes(),
        None,
        payload.as_bytes(),
        next as i64 * 1000,
    )
    .unwrap()
    .seq
}

fn size(subject: &str, payload: &str) -> u64 {
    msg_size(subject.as_bytes(), None, payload.as_bytes())
}

fn seqs_of(s: &dyn StreamStore, filter: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(m) = s.load_next_msg(filter.as_bytes(), at) {
        out.push(m.seq);
        at = m.seq + 1;
    }
    out
}

pub fn appends_and_loads(f: Factory) {
    let s = f(unlimited());
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.last_seq), (0, 0, 0));
    assert_eq!(s.load_msg(1), Err(StoreError::Eof));
    let r = s
        .store_msg(b"orders.1", Some(b"NATS/1.0\r\nA: b\r\n\r\n"), b"one", 10)
        .unwrap();
    assert_eq!((r.seq, r.ts), (1, 10));
    s.store_msg(b"orders.2", None, b"", 20).unwrap();
    s.store_msg(b"orders.1", None, b"three", 30).unwrap();
    let m = s.load_msg(1).unwrap();
    assert_eq!(&m.subject[..], b"orders.1");
    assert_eq!(m.headers.as_deref(), Some(&b"NATS/1.0\r\nA: b\r\n\r\n"[..]));
    assert_eq!((&m.payload[..], m.ts, m.seq), (&b"one"[..], 10, 1));
    let m = s.load_msg(2).unwrap();
    assert_eq!((m.headers, &m.payload[..]), (None, &b""[..]));
    assert_eq!(s.load_msg(4), Err(StoreError::Eof));
    assert_eq!(s.load_msg(0), Err(StoreError::NotFound));
    assert_eq!(
        s.store_msg(b"", None, b"x", 1),
        Err(StoreError::InvalidSubject)
    );
    let st = s.state();
    let bytes = msg_size(b"orders.1", Some(b"NATS/1.0\r\nA: b\r\n\r\n"), b"one")
        + size("orders.2", "")
        + size("orders.1", "three");
    assert_eq!(
        (
            st.msgs,
            st.bytes,
            st.first_seq,
            st.first_ts,
            st.last_seq,
            st.last_ts
        ),
        (3, bytes, 1, 10, 3, 30)
    );
    assert_eq!((st.num_subjects, st.num_deleted), (2, 0));
}

pub fn max_msgs_discard_old(f: Factory) {
    let s = f(Limits {
        max_msgs: 3,
        ..unlimited()
    });
    for i in 0..5 {
        put(&*s, "a", &i.to_string());
    }
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.last_seq), (3, 3, 5));
    assert_eq!(st.first_ts, 3000);
    assert_eq!(s.load_msg(2), Err(StoreError::NotFound));
    assert_eq!(&s.load_msg(3).unwrap().payload[..], b"2");
}

pub fn max_msgs_discard_new(f: Factory) {
    let s = f(Limits {
        max_msgs: 2,
        discard: Discard::New,
        ..unlimited()
    });
    put(&*s, "a", "1");
    put(&*s, "a", "2");
    assert_eq!(s.store_msg(b"a", None, b"3", 1), Err(StoreError::MaxMsgs));
    assert_eq!(StoreError::MaxMsgs.to_string(), "maximum messages exceeded");
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.last_seq), (2, 1, 2));
    s.remove_msg(1).unwrap();
    assert_eq!(put(&*s, "a", "3"), 3);
}

pub fn max_bytes_discard_old(f: Factory) {
    let one = size("a", "0123456789");
    let s = f(Limits {
        max_bytes: (one * 3) as i64,
        ..unlimited()
    });
    for _ in 0..5 {
        put(&*s, "a", "0123456789");
    }
    let st = s.state();
    assert_eq!((st.msgs, st.bytes, st.first_seq), (3, one * 3, 3));
    // A bigger message pushes out as many as needed.
    put(&*s, "a", &"x".repeat(25));
    let st = s.state();
    assert!(st.bytes <= one * 3);
    assert_eq!(st.last_seq, 6);
}

pub fn max_bytes_discard_new(f: Factory) {
    let one = size("a", "0123456789");
    let s = f(Limits {
        max_bytes: (one * 2) as i64,
        discard: Discard::New,
        ..unlimited()
    });
    put(&*s, "a", "0123456789");
    put(&*s, "a", "0123456789");
    assert_eq!(
        s.store_msg(b"a", None, b"0123456789", 1),
        Err(StoreError::MaxBytes)
    );
    assert_eq!(StoreError::MaxBytes.to_string(), "maximum bytes exceeded");
    assert_eq!(s.state().msgs, 2);
}

pub fn max_msg_size(f: Factory) {
    let s = f(Limits {
        max_msg_size: 8,
        ..unlimited()
    });
    s.store_msg(b"a", Some(b"1234"), b"5678", 1).unwrap();
    assert_eq!(
        s.store_msg(b"a", Some(b"1234"), b"56789", 1),
        Err(StoreError::MsgTooLarge)
    );
    assert_eq!(s.state().msgs, 1);
}

pub fn per_subject_discard_old(f: Factory) {
    let s = f(Limits {
        max_msgs_per_subject: 2,
        ..unlimited()
    });
    for i in 0..4 {
        put(&*s, "a", &format!("a{i}"));
        put(&*s, "b", &format!("b{i}"));
    }
    // a: 1 3 5 7, b: 2 4 6 8 → keep 5 7 and 6 8.
    assert_eq!(seqs_of(&*s, ">"), vec![5, 6, 7, 8]);
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.num_subjects), (4, 5, 2));
    assert_eq!(s.subjects_state(b">").get(&b"a"[..]), Some(&2));
}

pub fn per_subject_discard_new(f: Factory) {
    let s = f(Limits {
        max_msgs_per_subject: 1,
        discard: Discard::New,
        discard_new_per_subject: true,
        ..unlimited()
    });
    put(&*s, "a", "1");
    assert_eq!(
        s.store_msg(b"a", None, b"2", 1),
        Err(StoreError::MaxMsgsPerSubject)
    );
    assert_eq!(
        StoreError::MaxMsgsPerSubject.to_string(),
        "maximum messages per subject exceeded"
    );
    put(&*s, "b", "1");
    assert_eq!(s.state().msgs, 2);

    // Without discard_new_per_subject a message at its subject limit replaces the old one, even
    // when the stream is at max_msgs.
    let s = f(Limits {
        max_msgs: 2,
        max_msgs_per_subject: 1,
        discard: Discard::New,
        ..unlimited()
    });
    put(&*s, "a", "1");
    put(&*s, "b", "1");
    assert_eq!(put(&*s, "a", "2"), 3);
    assert_eq!(seqs_of(&*s, ">"), vec![2, 3]);
    assert_eq!(s.store_msg(b"c", None, b"1", 1), Err(StoreError::MaxMsgs));
}

pub fn last_by_subject_with_wildcards(f: Factory) {
    let s = f(unlimited());
    put(&*s, "foo.a", "1");
    put(&*s, "foo.b", "2");
    put(&*s, "bar.c", "3");
    put(&*s, "foo.a.x", "4");
    assert_eq!(s.load_last_by_subject(b"foo.a").unwrap().seq, 1);
    assert_eq!(s.load_last_by_subject(b"foo.*").unwrap().seq, 2);
    assert_eq!(s.load_last_by_subject(b"foo.>").unwrap().seq, 4);
    assert_eq!(s.load_last_by_subject(b"*.c").unwrap().seq, 3);
    assert_eq!(s.load_last_by_subject(b">").unwrap().seq, 4);
    assert_eq!(s.load_last_by_subject(b"").unwrap().seq, 4);
    assert_eq!(s.load_last_by_subject(b"baz"), Err(StoreError::NotFound));
    s.remove_msg(2).unwrap();
    assert_eq!(s.load_last_by_subject(b"foo.*").unwrap().seq, 1);
    put(&*s, "foo.b", "5");
    assert_eq!(s.load_last_by_subject(b"foo.*").unwrap().seq, 5);
    s.remove_msg(5).unwrap();
    s.remove_msg(4).unwrap();
    assert_eq!(s.load_last_by_subject(b">").unwrap().seq, 3);
}

pub fn load_next_with_filters(f: Factory) {
    let s = f(unlimited());
    for subj in ["a.1", "b.1", "a.2", "b.2", "a.1"] {
        put(&*s, subj, "x");
    }
    assert_eq!(seqs_of(&*s, "a.*"), vec![1, 3, 5]);
    assert_eq!(seqs_of(&*s, "a.1"), vec![1, 5]);
    assert_eq!(seqs_of(&*s, "b.>"), vec![2, 4]);
    assert_eq!(seqs_of(&*s, ""), vec![1, 2, 3, 4, 5]);
    assert_eq!(s.load_next_msg(b"a.1", 2).unwrap().seq, 5);
    assert_eq!(s.load_next_msg(b"a.1", 6), Err(StoreError::Eof));
    assert_eq!(s.load_next_msg(b"zzz", 1), Err(StoreError::Eof));
    s.remove_msg(1).unwrap();
    assert_eq!(s.load_next_msg(b"a.1", 0).unwrap().seq, 5);
}

pub fn remove_and_deleted(f: Factory) {
    let s = f(unlimited());
    for i in 0..10 {
        put(&*s, "a", &i.to_string());
    }
    assert!(s.remove_msg(4).unwrap());
    assert!(!s.remove_msg(4).unwrap());
    assert!(!s.remove_msg(99).unwrap());
    assert!(s.remove_msg(7).unwrap());
    assert_eq!(s.load_msg(4), Err(StoreError::NotFound));
    let st = s.state();
    assert_eq!(
        (st.msgs, st.num_deleted, st.first_seq, st.last_seq),
        (8, 2, 1, 10)
    );
    assert_eq!(s.deleted(), vec![4, 7]);
    assert!(s.remove_msg(1).unwrap());
    assert!(s.remove_msg(2).unwrap());
    let st = s.state();
    assert_eq!((st.first_seq, st.first_ts, st.num_deleted), (3, 3000, 2));
    assert_eq!(s.deleted(), vec![4, 7]);
    assert!(s.remove_msg(10).unwrap());
    assert_eq!(s.state().last_seq, 10);
    assert_eq!(put(&*s, "a", "x"), 11);
    assert_eq!(s.deleted(), vec![4, 7, 10]);
}

pub fn erase(f: Factory) {
    let s = f(unlimited());
    put(&*s, "a", "secret-1");
    put(&*s, "a", "secret-2");
    assert!(s.erase_msg(1).unwrap());
    assert!(!s.erase_msg(1).unwrap());
    assert_eq!(s.load_msg(1), Err(StoreError::NotFound));
    assert_eq!(&s.load_msg(2).unwrap().payload[..], b"secret-2");
    let st = s.state();
    assert_eq!(
        (st.msgs, st.first_seq, st.bytes),
        (1, 2, size("a", "secret-2"))
    );
}

pub fn purge(f: Factory) {
    let s = f(unlimited());
    for _ in 0..5 {
        put(&*s, "a", "x");
    }
    assert_eq!(s.purge().unwrap(), 5);
    let st = s.state();
    assert_eq!((st.msgs, st.bytes, st.first_seq, st.last_seq), (0, 0, 6, 5));
    assert_eq!((st.num_subjects, st.num_deleted), (0, 0));
    assert_eq!(s.load_msg(3), Err(StoreError::NotFound));
    assert_eq!(s.load_last_by_subject(b"a"), Err(StoreError::NotFound));
    assert_eq!(put(&*s, "a", "y"), 6);
    assert_eq!(s.state().first_seq, 6);
    assert_eq!(s.purge().unwrap(), 1);
    assert_eq!(s.purge().unwrap(), 0);
    assert_eq!(put(&*s, "b", "z"), 7);
}

pub fn purge_ex_variants(f: Factory) {
    let fill = |s: &dyn StreamStore| {
        for subj in ["a", "b", "a", "b", "a", "b", "c"] {
            put(s, subj, "x");
        }
    };
    // By subject.
    let s = f(unlimited());
    fill(&*s);
    assert_eq!(s.purge_ex(b"a", 0, 0).unwrap(), 3);
    assert_eq!(seqs_of(&*s, ">"), vec![2, 4, 6, 7]);
    // By subject, keeping the newest.
    let s = f(unlimited());
    fill(&*s);
    assert_eq!(s.purge_ex(b"b", 0, 1).unwrap(), 2);
    assert_eq!(seqs_of(&*s, "b"), vec![6]);
    assert_eq!(s.purge_ex(b"b", 0, 5).unwrap(), 0);
    // By subject below a sequence.
    let s = f(unlimited());
    fill(&*s);
    assert_eq!(s.purge_ex(b"a", 5, 0).unwrap(), 2);
    assert_eq!(seqs_of(&*s, "a"), vec![5]);
    // Wildcard filter with keep (across the matching subjects).
    let s = f(unlimited());
    fill(&*s);
    assert_eq!(s.purge_ex(b"*", 0, 2).unwrap(), 5);
    assert_eq!(seqs_of(&*s, ">"), vec![6, 7]);
    // Everything, keeping N / below seq.
    let s = f(unlimited());
    fill(&*s);
    assert_eq!(s.purge_ex(b"", 0, 3).unwrap(), 4);
    assert_eq!(s.state().first_seq, 5);
    assert_eq!(s.purge_ex(b">", 6, 0).unwrap(), 1);
    assert_eq!(s.state().first_seq, 6);
    assert_eq!(s.purge_ex(b"a", 5, 1), Err(StoreError::PurgeArgMismatch));
    assert_eq!(s.purge_ex(b">", 0, 0).unwrap(), 2);
    assert_eq!(s.state().msgs, 0);
}

pub fn compact(f: Factory) {
    let s = f(unlimited());
    for _ in 0..10 {
        put(&*s, "a", "x");
    }
    assert_eq!(s.compact(4).unwrap(), 3);
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.last_seq), (7, 4, 10));
    s.remove_msg(5).unwrap();
    assert_eq!(s.compact(6).unwrap(), 1);
    assert_eq!(s.state().first_seq, 6);
    // Past the end: the next message gets that sequence.
    assert_eq!(s.compact(100).unwrap(), 5);
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.last_seq), (0, 100, 99));
    assert_eq!(put(&*s, "a", "y"), 100);
    assert_eq!(s.state().first_seq, 100);
}

pub fn subjects_state(f: Factory) {
    let s = f(unlimited());
    for subj in ["o.1", "o.2", "o.1", "p.1", "o.1"] {
        put(&*s, subj, "x");
    }
    let all = s.subjects_state(b">");
    assert_eq!(all.len(), 3);
    assert_eq!(all[&b"o.1".to_vec()], 3);
    let o = s.subjects_state(b"o.*");
    assert_eq!(
        o.keys().cloned().collect::<Vec<_>>(),
        vec![b"o.1".to_vec(), b"o.2".to_vec()]
    );
    assert_eq!(s.subjects_state(b"p.1")[&b"p.1".to_vec()], 1);
    assert!(s.subjects_state(b"q").is_empty());
    s.remove_msg(2).unwrap();
    assert_eq!(s.state().num_subjects, 2);
    assert!(!s.subjects_state(b">").contains_key(b"o.2".as_slice()));
}

pub fn update_config_shrinks(f: Factory) {
    let s = f(unlimited());
    for i in 0..10 {
        put(&*s, if i % 2 == 0 { "a" } else { "b" }, "x");
    }
    s.update_config(Limits {
        max_msgs_per_subject: 3,
        ..unlimited()
    })
    .unwrap();
    assert_eq!(seqs_of(&*s, ">"), vec![5, 6, 7, 8, 9, 10]);
    s.update_config(Limits {
        max_msgs: 2,
        ..unlimited()
    })
    .unwrap();
    assert_eq!(seqs_of(&*s, ">"), vec![9, 10]);
    s.update_config(Limits {
        max_bytes: size("a", "x") as i64,
        ..unlimited()
    })
    .unwrap();
    assert_eq!(seqs_of(&*s, ">"), vec![10]);
    // Raising limits keeps what is there and allows more.
    s.update_config(unlimited()).unwrap();
    put(&*s, "a", "x");
    assert_eq!(s.state().msgs, 2);
}

pub fn max_age_expiry(f: Factory) {
    let sec = 1_000_000_000i64;
    let s = f(Limits {
        max_age: Duration::from_secs(10),
        ..unlimited()
    });
    for t in [1, 2, 3, 20, 21] {
        s.store_msg(b"a", None, b"x", t * sec).unwrap();
    }
    assert_eq!(s.expire(5 * sec).unwrap(), 0);
    assert_eq!(s.expire(12 * sec).unwrap(), 2);
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.first_ts), (3, 3, 3 * sec));
    assert_eq!(s.expire(40 * sec).unwrap(), 3);
    let st = s.state();
    assert_eq!((st.msgs, st.first_seq, st.last_seq), (0, 6, 5));
    let no_age = f(unlimited());
    no_age.store_msg(b"a", None, b"x", 1).unwrap();
    assert_eq!(no_age.expire(i64::MAX).unwrap(), 0);
}

pub fn many_messages_across_blocks(f: Factory) {
    let s = f(Limits {
        max_msgs: 2500,
        ..unlimited()
    });
    let payload = "p".repeat(700);
    for i in 0..4000u64 {
        let subj = format!("s.{}", i % 7);
        s.store_msg(subj.as_bytes(), None, payload.as_bytes(), i as i64)
            .unwrap();
    }
    for seq in (2000..3000).step_by(3) {
        s.remove_msg(seq).unwrap();
    }
    let st = s.state();
    assert_eq!(st.first_seq, 1501);
    assert_eq!(st.last_seq, 4000);
    let deleted = s.deleted();
    assert_eq!(deleted.len() as u64, st.num_deleted);
    assert_eq!(st.msgs + st.num_deleted, 2500);
    assert_eq!(s.load_last_by_subject(b"s.3").unwrap().seq, 3994);
    let m = s.load_msg(3999).unwrap();
    assert_eq!((m.payload.len(), &m.subject[..]), (700, &b"s.1"[..]));
    assert_eq!(s.compact(3500).unwrap(), 2166 - 501);
    assert_eq!(s.state().msgs, 501);
}

pub fn durability_tokens_resolve(f: Factory) {
    let s = f(unlimited());
    let r = s.store_msg(b"a", None, b"x", 1).unwrap();
    s.wait_durable(r.sync_token).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    s.on_durable(
        r.sync_token,
        Box::new(move |res| {
            let _ = tx.send(res);
        }),
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
}

pub fn stop_closes(f: Factory) {
    let s = f(unlimited());
    put(&*s, "a", "x");
    s.stop().unwrap();
    assert_eq!(s.store_msg(b"a", None, b"x", 1), Err(StoreError::Closed));
    assert_eq!(s.load_msg(1), Err(StoreError::Closed));
    s.stop().unwrap();
}
