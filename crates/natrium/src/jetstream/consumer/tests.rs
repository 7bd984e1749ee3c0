//! The consumer state machine driven by events over a `MemStore`, at explicit times (offsets from
//! one base instant): no sockets, no files, no waiting.

use std::time::{Duration, Instant, SystemTime};

use natrium_store::{Limits, MemStore, StreamStore};

use super::state::{At, ConsumerState, Identity, TickOutput, TICK_MSGS};
use super::wire::{parse_ack, AckKind, Command, Outgoing};
use crate::jetstream::config::Retention;
use crate::jetstream::consumer_config::ConsumerConfig;

const SEC: i64 = 1_000_000_000;
/// The stored messages' timestamps start here (2023-11-14T22:13:20Z).
const T0_NS: i64 = 1_700_000_000 * SEC;

/// A memory stream holding one message per subject in `subjects` (payload `m<seq>`, one second
/// apart from `T0_NS`).
fn stream(subjects: &[&str]) -> MemStore {
    let s = MemStore::new(Limits::default()).expect("store");
    for subj in subjects {
        add(&s, subj);
    }
    s
}

fn add(s: &MemStore, subject: &str) -> u64 {
    let next = s.state().last_seq + 1;
    s.store_msg(
        subject.as_bytes(),
        None,
        format!("m{next}").as_bytes(),
        T0_NS + (next as i64 - 1) * SEC,
    )
    .expect("stored")
    .seq
}

fn config(json: &str) -> ConsumerConfig {
    let mut c: ConsumerConfig = serde_json::from_str(json).expect("config");
    c.normalize();
    c.validate().expect("valid config");
    c
}

/// A clock: `t.at(ms)` is `ms` milliseconds after the start.
struct Clock {
    mono: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            mono: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn at(&self, ms: u64) -> At {
        let d = Duration::from_millis(ms);
        At {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }

    fn mono(&self, ms: u64) -> Instant {
        self.at(ms).mono
    }
}

fn consumer_with(
    store: &MemStore,
    cfg: &str,
    retention: Retention,
    dead_letter: Option<&str>,
    clock: &Clock,
) -> ConsumerState {
    ConsumerState::new(
        Identity {
            stream: "S",
            name: "C",
            retention,
            dead_letter: dead_letter.map(String::from),
            persisted: true,
            replicated: false,
        },
        config(cfg),
        store,
        None,
        clock.mono(0),
    )
}

fn consumer(store: &MemStore, cfg: &str, clock: &Clock) -> ConsumerState {
    consumer_with(store, cfg, Retention::Limits, None, clock)
}

/// (stream sequence, route, delivery count from the ack subject) of each delivery.
fn delivered(cmds: &[Command]) -> Vec<(u64, String, u64)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Deliver { seq, msg } => {
                let reply = msg.reply.as_deref().expect("ack subject");
                let n: Vec<&str> = reply.split('.').collect();
                assert_eq!(&n[..4], ["$JS", "ACK", "S", "C"], "ack subject {reply}");
                assert_eq!(n[5], seq.to_string(), "ack subject names the sequence");
                Some((*seq, msg.route.to_string(), n[4].parse().expect("count")))
            }
            _ => None,
        })
        .collect()
}

fn seqs(cmds: &[Command]) -> Vec<u64> {
    delivered(cmds).into_iter().map(|(s, _, _)| s).collect()
}

/// The status lines (and their route) of each status message.
fn statuses(cmds: &[Command]) -> Vec<(String, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Status(Outgoing { route, headers, .. }) => {
                let h = String::from_utf8_lossy(headers.as_deref().expect("status headers"));
                let line = h.lines().next().unwrap_or("").to_string();
                Some((route.to_string(), line))
            }
            _ => None,
        })
        .collect()
}

fn header(cmd: &Command, name: &str) -> Option<String> {
    let Command::Status(Outgoing {
        headers: Some(h), ..
    }) = cmd
    else {
        return None;
    };
    String::from_utf8_lossy(h)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(String::from))
}

fn tick(st: &mut ConsumerState, store: &MemStore, at: At) -> TickOutput {
    st.tick(store, at, false)
}

/// The ack subject of the delivery of `seq` in `cmds`.
fn ack_subject(cmds: &[Command], seq: u64) -> String {
    cmds.iter()
        .find_map(|c| match c {
            Command::Deliver { seq: s, msg } if *s == seq => msg.reply.clone(),
            _ => None,
        })
        .expect("delivered")
}

fn ack(
    st: &mut ConsumerState,
    seq: u64,
    body: &str,
    reply: Option<&str>,
    now: Instant,
) -> Vec<Command> {
    let subject = format!("$JS.ACK.S.C.1.{seq}.1.0.0");
    let (sseq, kind) = parse_ack(subject.as_bytes(), body.as_bytes()).expect("ack");
    st.ack(sseq, kind, reply, now)
}

const PULL: &str = r#"{"durable_name":"C"}"#;

#[test]
fn a_pull_request_gets_its_batch_and_acks_move_the_floor() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a", "a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    assert_eq!(st.progress().num_pending, 5);
    // Nothing is delivered without a request.
    assert!(seqs(&tick(&mut st, &store, clock.at(0)).commands).is_empty());
    assert_eq!(
        st.pull("_INBOX.1", b"{\"batch\":3}", clock.mono(0)),
        vec![Command::Tick]
    );
    let out = tick(&mut st, &store, clock.at(0));
    assert_eq!(
        delivered(&out.commands),
        vec![
            (1, "_INBOX.1".into(), 1),
            (2, "_INBOX.1".into(), 1),
            (3, "_INBOX.1".into(), 1)
        ]
    );
    // Deliveries that need an ack are saved, fsynced, before they go.
    let save = out.save.expect("saved");
    assert!(save.sync);
    let body: serde_json::Value = serde_json::from_slice(&save.body).expect("json");
    assert_eq!(body["sseq"], 3);
    assert_eq!(body["pending"], serde_json::json!([[1, 1], [2, 2], [3, 3]]));
    let p = st.progress();
    assert_eq!((p.delivered, p.ack_floor), ((3, 3), (0, 0)));
    assert_eq!((p.num_pending, p.num_ack_pending, p.num_waiting), (2, 3, 0));

    // Out of order: the floor waits for the oldest.
    assert_eq!(
        ack(&mut st, 2, "+ACK", None, clock.mono(1)),
        vec![Command::Tick]
    );
    assert_eq!(st.progress().ack_floor, (0, 0));
    assert_eq!(
        ack(&mut st, 1, "", None, clock.mono(1)),
        vec![Command::Tick]
    );
    assert_eq!(st.progress().ack_floor, (2, 2));
    ack(&mut st, 3, "+ACK", None, clock.mono(1));
    assert_eq!(st.progress().ack_floor, (3, 3));
    assert_eq!(st.progress().num_ack_pending, 0);
    // Acks are saved at the next tick, without a sync: a lost ack only means a redelivery.
    let out = tick(&mut st, &store, clock.at(2));
    assert!(!out.save.expect("saved").sync);
    // An ack of something not pending changes nothing and needs no tick.
    assert!(ack(&mut st, 3, "+ACK", None, clock.mono(3)).is_empty());
    assert!(tick(&mut st, &store, clock.at(3)).save.is_none());
}

#[test]
fn ack_all_acknowledges_everything_up_to_the_sequence() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a", "a"]);
    let mut st = consumer(&store, r#"{"durable_name":"C","ack_policy":"all"}"#, &clock);
    st.pull("_INBOX.1", b"4", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    assert_eq!(st.progress().num_ack_pending, 4);
    ack(&mut st, 3, "+ACK", None, clock.mono(1));
    let p = st.progress();
    assert_eq!((p.num_ack_pending, p.ack_floor), (1, (3, 3)));
}

#[test]
fn ack_none_moves_the_floor_with_each_delivery() {
    let clock = Clock::new();
    let store = stream(&["a", "a"]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","ack_policy":"none"}"#,
        &clock,
    );
    st.pull("_INBOX.1", b"2", clock.mono(0));
    let out = tick(&mut st, &store, clock.at(0));
    assert_eq!(seqs(&out.commands), vec![1, 2]);
    let p = st.progress();
    assert_eq!((p.ack_floor, p.num_ack_pending), ((2, 2), 0));
    // Nothing waits for an ack, so the cursor is saved without a sync.
    assert!(!out.save.expect("saved").sync);
    // Never redelivered.
    st.pull("_INBOX.2", b"2", clock.mono(0));
    assert!(seqs(&tick(&mut st, &store, clock.at(3_600_000)).commands).is_empty());
}

#[test]
fn sync_acks_are_answered_after_the_save_that_records_them() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"1", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    let cmds = ack(&mut st, 1, "+ACK", Some("_INBOX.ack"), clock.mono(1));
    // Not answered yet: the answer waits for the save.
    assert_eq!(cmds, vec![Command::Tick]);
    let out = tick(&mut st, &store, clock.at(1));
    assert!(
        out.save.expect("saved").sync,
        "a waiting sync ack makes the save fsync"
    );
    assert_eq!(out.commands, vec![Command::AckReply("_INBOX.ack".into())]);
    // Acking it again is answered too (nothing to save).
    assert_eq!(
        ack(&mut st, 1, "+ACK", Some("_INBOX.ack2"), clock.mono(2)),
        vec![Command::Tick]
    );
    let out = tick(&mut st, &store, clock.at(2));
    assert!(out.save.is_none());
    assert_eq!(out.commands, vec![Command::AckReply("_INBOX.ack2".into())]);
}

#[test]
fn nak_redelivers_at_once_or_after_its_delay() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"5", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    let cmds = ack(&mut st, 1, "-NAK", None, clock.mono(10));
    let [Command::Advisory { kind, body }, Command::Tick] = &cmds[..] else {
        panic!("advisory and tick, got {cmds:?}");
    };
    assert_eq!(*kind, "MSG_NAKED");
    assert_eq!(body["stream_seq"], 1);
    assert_eq!(body["consumer_seq"], 1);
    assert_eq!(body["deliveries"], 1);
    let out = tick(&mut st, &store, clock.at(10));
    assert_eq!(delivered(&out.commands), vec![(1, "_INBOX.1".into(), 2)]);
    assert_eq!(st.progress().num_redelivered, 1);

    // With a delay: not before it.
    ack(
        &mut st,
        1,
        "-NAK {\"delay\":5000000000}",
        None,
        clock.mono(20),
    );
    assert!(seqs(&tick(&mut st, &store, clock.at(1_000)).commands).is_empty());
    assert_eq!(st.next_deadline(clock.at(1_000)), Some(clock.mono(5_020)));
    assert!(seqs(&tick(&mut st, &store, clock.at(5_019)).commands).is_empty());
    let out = tick(&mut st, &store, clock.at(5_020));
    assert_eq!(delivered(&out.commands), vec![(1, "_INBOX.1".into(), 3)]);
    // A nak of something not pending is ignored.
    assert!(ack(&mut st, 9, "-NAK", None, clock.mono(5_021)).is_empty());
}

#[test]
fn unacked_messages_come_back_after_ack_wait_and_progress_restarts_it() {
    let clock = Clock::new();
    let store = stream(&["a", "a"]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","ack_wait":1000000000}"#,
        &clock,
    );
    st.pull("_INBOX.1", b"{\"batch\":10}", clock.mono(0));
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(0)).commands),
        vec![1, 2]
    );
    assert_eq!(st.next_deadline(clock.at(0)), Some(clock.mono(1_000)));
    // Still working on 2.
    assert!(ack(&mut st, 2, "+WPI", None, clock.mono(800)).is_empty());
    assert!(seqs(&tick(&mut st, &store, clock.at(999)).commands).is_empty());
    let out = tick(&mut st, &store, clock.at(1_000));
    assert_eq!(delivered(&out.commands), vec![(1, "_INBOX.1".into(), 2)]);
    // The new delivery is recorded (its count) before it leaves.
    assert!(out.save.expect("saved").sync);
    let out = tick(&mut st, &store, clock.at(1_800));
    assert_eq!(delivered(&out.commands), vec![(2, "_INBOX.1".into(), 2)]);
}

#[test]
fn max_deliver_ends_with_an_advisory_and_a_dead_letter() {
    let clock = Clock::new();
    let store = stream(&["orders.new"]);
    let mut st = consumer_with(
        &store,
        r#"{"durable_name":"C","ack_wait":1000000000,"max_deliver":2}"#,
        Retention::Limits,
        Some("dlq.{stream}.{subject}"),
        &clock,
    );
    st.pull("_INBOX.1", b"{\"batch\":10}", clock.mono(0));
    assert_eq!(
        delivered(&tick(&mut st, &store, clock.at(0)).commands),
        vec![(1, "_INBOX.1".into(), 1)]
    );
    assert_eq!(
        delivered(&tick(&mut st, &store, clock.at(1_000)).commands),
        vec![(1, "_INBOX.1".into(), 2)]
    );
    let out = tick(&mut st, &store, clock.at(2_000));
    assert!(seqs(&out.commands).is_empty(), "no third delivery");
    let [Command::Advisory { kind, body }, Command::DeadLetter {
        seq,
        deliveries,
        reason,
        template,
    }] = &out.commands[..]
    else {
        panic!("advisory and dead letter, got {:?}", out.commands);
    };
    assert_eq!(*kind, "MAX_DELIVERIES");
    assert_eq!(
        (body["stream_seq"].as_u64(), body["deliveries"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!((*seq, *deliveries), (1, 2));
    assert_eq!(reason, "max_deliveries");
    assert_eq!(template, "dlq.{stream}.{subject}");
    let p = st.progress();
    assert_eq!((p.num_ack_pending, p.ack_floor), (0, (2, 1)));
    assert!(seqs(&tick(&mut st, &store, clock.at(60_000)).commands).is_empty());
}

#[test]
fn term_dead_letters_with_its_reason_and_releases_the_message() {
    let clock = Clock::new();
    let store = stream(&["jobs.a"]);
    // The consumer's own dead-letter subject wins over the stream's.
    let mut st = consumer_with(
        &store,
        r#"{"durable_name":"C","metadata":{"dead_letter_subject":"mine.{consumer}"}}"#,
        Retention::WorkQueue,
        Some("stream.default"),
        &clock,
    );
    st.pull("_INBOX.1", b"1", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    let cmds = ack(
        &mut st,
        1,
        "+TERM  bad payload",
        Some("_INBOX.t"),
        clock.mono(5),
    );
    let [Command::Advisory { kind, body }, Command::DeadLetter {
        seq,
        deliveries,
        reason,
        template,
    }, Command::Release(released), Command::Tick] = &cmds[..]
    else {
        panic!("advisory, dead letter, release, tick; got {cmds:?}");
    };
    assert_eq!(*kind, "MSG_TERMINATED");
    assert_eq!(body["reason"], "bad payload");
    assert_eq!((*seq, *deliveries, *released), (1, 1, 1));
    assert_eq!(reason, "terminated: bad payload");
    assert_eq!(template, "mine.{consumer}");
    // The sync term is answered after the save.
    let out = tick(&mut st, &store, clock.at(5));
    assert!(out.save.is_some());
    assert_eq!(out.commands, vec![Command::AckReply("_INBOX.t".into())]);
    // Without a reason, and without a dead-letter subject: no dead letter.
    let store = stream(&["jobs.a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"1", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    let cmds = ack(&mut st, 1, "+TERM", None, clock.mono(5));
    assert!(
        matches!(&cmds[..], [Command::Advisory { .. }, Command::Tick]),
        "{cmds:?}"
    );
}

#[test]
fn acked_messages_are_released_after_the_save_under_work_queue_retention() {
    let clock = Clock::new();
    let store = stream(&["a", "a"]);
    let mut st = consumer_with(&store, PULL, Retention::WorkQueue, None, &clock);
    st.pull("_INBOX.1", b"2", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    ack(&mut st, 2, "+ACK", None, clock.mono(1));
    ack(&mut st, 1, "+ACK", None, clock.mono(1));
    let out = tick(&mut st, &store, clock.at(1));
    assert!(out.save.is_some());
    assert_eq!(out.commands, vec![Command::Release(2), Command::Release(1)]);
    // Limits retention has nothing to release.
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"2", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    ack(&mut st, 1, "+ACK", None, clock.mono(1));
    assert!(tick(&mut st, &store, clock.at(1)).commands.is_empty());
}

#[test]
fn backoff_sets_each_redelivery_delay() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","max_deliver":4,"backoff":[1000000000,3000000000]}"#,
        &clock,
    );
    st.pull("_INBOX.1", b"{\"batch\":10}", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    assert_eq!(st.next_deadline(clock.at(0)), Some(clock.mono(1_000)));
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(1_000)).commands),
        vec![1]
    );
    // The second delivery waits the second backoff, and so does every later one.
    assert_eq!(st.next_deadline(clock.at(1_000)), Some(clock.mono(4_000)));
    assert!(seqs(&tick(&mut st, &store, clock.at(3_999)).commands).is_empty());
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(4_000)).commands),
        vec![1]
    );
    assert_eq!(st.next_deadline(clock.at(4_000)), Some(clock.mono(7_000)));
}

#[test]
fn pull_requests_expire_with_408() {
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull(
        "_INBOX.1",
        br#"{"batch":5,"expires":1000000000}"#,
        clock.mono(0),
    );
    assert!(tick(&mut st, &store, clock.at(0)).commands.is_empty());
    assert_eq!(st.progress().num_waiting, 1);
    assert_eq!(st.next_deadline(clock.at(0)), Some(clock.mono(1_000)));
    let seq = add(&store, "a");
    st.on_stored(seq, b"a");
    let out = tick(&mut st, &store, clock.at(500));
    assert_eq!(seqs(&out.commands), vec![1]);
    let out = tick(&mut st, &store, clock.at(1_000));
    assert_eq!(
        statuses(&out.commands),
        vec![("_INBOX.1".into(), "NATS/1.0 408 Request Timeout".into())]
    );
    // It still wanted 4 of its 5.
    assert_eq!(
        header(&out.commands[0], "Nats-Pending-Messages").as_deref(),
        Some("4")
    );
    assert_eq!(st.progress().num_waiting, 0);
}

#[test]
fn no_wait_requests_end_with_404_at_the_end_of_the_stream() {
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(&store, PULL, &clock);
    // Nothing there and no expiry: refused at once.
    assert_eq!(
        statuses(&st.pull("_INBOX.1", br#"{"batch":5,"no_wait":true}"#, clock.mono(0))),
        vec![("_INBOX.1".into(), "NATS/1.0 404 No Messages".into())]
    );
    let s1 = add(&store, "a");
    let s2 = add(&store, "a");
    st.on_stored(s1, b"a");
    st.on_stored(s2, b"a");
    st.pull("_INBOX.2", br#"{"batch":5,"no_wait":true}"#, clock.mono(0));
    let out = tick(&mut st, &store, clock.at(0));
    assert_eq!(seqs(&out.commands), vec![1, 2]);
    // nats-server 2.12 ends it with 404 even after deliveries.
    assert_eq!(
        statuses(&out.commands),
        vec![("_INBOX.2".into(), "NATS/1.0 404 No Messages".into())]
    );
}

#[test]
fn max_bytes_ends_a_request_before_a_message_too_big_for_it() {
    let clock = Clock::new();
    let store = stream(&["a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    // Each message counts subject, ack subject and payload (1 + 39 + 2 bytes): one fits.
    st.pull("_INBOX.1", br#"{"batch":5,"max_bytes":60}"#, clock.mono(0));
    let out = tick(&mut st, &store, clock.at(0));
    assert_eq!(seqs(&out.commands), vec![1]);
    assert_eq!(
        statuses(&out.commands),
        vec![(
            "_INBOX.1".into(),
            "NATS/1.0 409 Message Size Exceeds MaxBytes".into()
        )]
    );
    // The message that did not fit is the next one delivered.
    assert_eq!(st.progress().num_pending, 1);
    st.pull("_INBOX.2", b"1", clock.mono(0));
    assert_eq!(seqs(&tick(&mut st, &store, clock.at(0)).commands), vec![2]);
}

#[test]
fn pull_requests_get_idle_heartbeats() {
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull(
        "_INBOX.1",
        br#"{"batch":1,"expires":5000000000,"idle_heartbeat":1000000000}"#,
        clock.mono(0),
    );
    assert_eq!(st.next_deadline(clock.at(0)), Some(clock.mono(1_000)));
    let out = tick(&mut st, &store, clock.at(1_000));
    assert_eq!(
        statuses(&out.commands),
        vec![("_INBOX.1".into(), "NATS/1.0 100 Idle Heartbeat".into())]
    );
    assert_eq!(st.next_deadline(clock.at(1_000)), Some(clock.mono(2_000)));
}

#[test]
fn requests_are_served_in_turn_each_with_its_batch() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a", "a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"2", clock.mono(0));
    st.pull("_INBOX.2", b"2", clock.mono(0));
    let routes: Vec<(u64, String)> = delivered(&tick(&mut st, &store, clock.at(0)).commands)
        .into_iter()
        .map(|(s, r, _)| (s, r))
        .collect();
    // One message each in turn, as nats-server serves waiting requests.
    assert_eq!(
        routes,
        vec![
            (1, "_INBOX.1".into()),
            (2, "_INBOX.2".into()),
            (3, "_INBOX.1".into()),
            (4, "_INBOX.2".into())
        ]
    );
    assert_eq!(st.progress().num_waiting, 0);
    // +NXT acks and asks for more in one.
    let cmds = ack(&mut st, 1, "+NXT", Some("_INBOX.3"), clock.mono(1));
    assert_eq!(cmds, vec![Command::Tick, Command::Tick]);
    let out = tick(&mut st, &store, clock.at(1));
    assert_eq!(delivered(&out.commands), vec![(5, "_INBOX.3".into(), 1)]);
}

#[test]
fn pull_requests_past_the_limits_are_refused_with_409() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let refused = |st: &mut ConsumerState, body: &[u8]| {
        statuses(&st.pull("_INBOX.x", body, clock.mono(0)))
            .pop()
            .map(|(_, line)| line)
    };
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","max_batch":10,"max_bytes":100,"max_waiting":1}"#,
        &clock,
    );
    assert_eq!(
        refused(&mut st, b"11").as_deref(),
        Some("NATS/1.0 409 Exceeded MaxRequestBatch of 10")
    );
    assert_eq!(
        refused(&mut st, br#"{"batch":1,"max_bytes":101}"#).as_deref(),
        Some("NATS/1.0 409 Exceeded MaxRequestMaxBytes of 100")
    );
    assert_eq!(refused(&mut st, b"10"), None);
    assert_eq!(
        refused(&mut st, b"1").as_deref(),
        Some("NATS/1.0 409 Exceeded MaxWaiting")
    );
    let mut push = consumer(
        &store,
        r#"{"durable_name":"P","deliver_subject":"d"}"#,
        &clock,
    );
    assert_eq!(
        refused(&mut push, b"1").as_deref(),
        Some("NATS/1.0 409 Consumer is push based")
    );
    // Deleting the consumer tells the waiting request.
    assert_eq!(
        statuses(&st.close()),
        vec![("_INBOX.x".into(), "NATS/1.0 409 Consumer Deleted".into())]
    );
}

#[test]
fn max_ack_pending_holds_back_new_messages_but_not_redeliveries() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a"]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","max_ack_pending":2,"ack_wait":1000000000}"#,
        &clock,
    );
    st.pull("_INBOX.1", b"{\"batch\":10}", clock.mono(0));
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(0)).commands),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(500)).commands),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(1_000)).commands),
        vec![1, 2]
    );
    ack(&mut st, 1, "+ACK", None, clock.mono(1_100));
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(1_100)).commands),
        vec![3]
    );
}

/// The first deliveries and the pending count of a consumer with `cfg` over a stream of
/// `a, b, a, c, b` (sequences 1-5).
fn first_deliveries(cfg: &str) -> (Vec<u64>, u64) {
    let clock = Clock::new();
    let store = stream(&["s.a", "s.b", "s.a", "s.c", "s.b"]);
    let mut st = consumer(&store, cfg, &clock);
    let pending = st.progress().num_pending;
    st.pull("_INBOX.1", b"{\"batch\":10}", clock.mono(0));
    (seqs(&tick(&mut st, &store, clock.at(0)).commands), pending)
}

#[test]
fn deliver_policies_pick_the_first_message() {
    assert_eq!(first_deliveries(PULL), (vec![1, 2, 3, 4, 5], 5));
    assert_eq!(
        first_deliveries(r#"{"durable_name":"C","deliver_policy":"last"}"#),
        (vec![5], 1)
    );
    assert_eq!(
        first_deliveries(r#"{"durable_name":"C","deliver_policy":"last","filter_subject":"s.a"}"#),
        (vec![3], 1)
    );
    assert_eq!(
        first_deliveries(r#"{"durable_name":"C","deliver_policy":"new"}"#),
        (vec![], 0)
    );
    assert_eq!(
        first_deliveries(
            r#"{"durable_name":"C","deliver_policy":"by_start_sequence","opt_start_seq":4}"#
        ),
        (vec![4, 5], 2)
    );
    // Message 3 was stored at T0 + 2 s.
    assert_eq!(
        first_deliveries(
            r#"{"durable_name":"C","deliver_policy":"by_start_time","opt_start_time":"2023-11-14T22:13:21.5Z"}"#
        ),
        (vec![3, 4, 5], 3)
    );
    assert_eq!(
        first_deliveries(r#"{"durable_name":"C","deliver_policy":"last_per_subject"}"#),
        (vec![3, 4, 5], 3)
    );
    assert_eq!(
        first_deliveries(
            r#"{"durable_name":"C","deliver_policy":"last_per_subject","filter_subject":"s.b"}"#
        ),
        (vec![5], 1)
    );
}

#[test]
fn deliver_new_takes_what_comes_after_it() {
    let clock = Clock::new();
    let store = stream(&["a", "a"]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","deliver_policy":"new"}"#,
        &clock,
    );
    let seq = add(&store, "a");
    assert!(st.on_stored(seq, b"a"));
    st.pull("_INBOX.1", b"5", clock.mono(0));
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(0)).commands),
        vec![seq]
    );
}

#[test]
fn filters_select_subjects() {
    assert_eq!(
        first_deliveries(r#"{"durable_name":"C","filter_subject":"s.a"}"#),
        (vec![1, 3], 2)
    );
    assert_eq!(
        first_deliveries(r#"{"durable_name":"C","filter_subjects":["s.b","s.c"]}"#),
        (vec![2, 4, 5], 3)
    );
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","filter_subject":"s.*"}"#,
        &clock,
    );
    // Only matching messages count as pending and wake the consumer.
    assert!(st.on_stored(1, b"s.x"));
    assert!(!st.on_stored(2, b"t.x"));
    assert!(!st.on_stored(3, b"s.x.y"));
    assert_eq!(st.progress().num_pending, 1);
}

#[test]
fn a_message_delivered_before_its_stored_event_is_not_pending() {
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull(
        "_INBOX.1",
        br#"{"batch":5,"expires":1000000000}"#,
        clock.mono(0),
    );
    // The stream stored it and a tick (woken by something else) delivered it before the
    // consumer heard of the store.
    let seq = add(&store, "a");
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(0)).commands),
        vec![seq]
    );
    assert!(st.on_stored(seq, b"a"));
    assert_eq!(st.progress().num_pending, 0, "caught up");
    // One stored after the cursor is pending until delivered.
    let next = add(&store, "a");
    assert!(st.on_stored(next, b"a"));
    assert_eq!(st.progress().num_pending, 1);
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(1)).commands),
        vec![next]
    );
    assert_eq!(st.progress().num_pending, 0);
}

#[test]
fn interest_retention_asks_which_messages_are_still_needed() {
    let clock = Clock::new();
    let store = stream(&["a", "b", "a"]);
    let mut st = consumer_with(
        &store,
        r#"{"durable_name":"C","filter_subject":"a"}"#,
        Retention::Interest,
        None,
        &clock,
    );
    assert!(st.needs(1, b"a"));
    assert!(!st.needs(2, b"b"), "not its subject");
    st.pull("_INBOX.1", b"1", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    assert!(st.needs(1, b"a"), "delivered, not acked");
    ack(&mut st, 1, "+ACK", None, clock.mono(1));
    assert!(!st.needs(1, b"a"));
    assert!(st.needs(3, b"a"), "not delivered yet");
    assert_eq!(
        tick(&mut st, &store, clock.at(1)).commands,
        vec![Command::Release(1)]
    );
}

#[test]
fn a_paused_consumer_delivers_nothing_until_the_pause_ends() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(&store, PULL, &clock);
    let mut cfg = ConsumerConfig::clone(st.config());
    let until = clock.wall + Duration::from_secs(10);
    cfg.pause_until = Some(crate::util::time::rfc3339(until));
    st.set_config(cfg);
    assert_eq!(st.progress().paused_until, Some(until));
    st.pull("_INBOX.1", b"1", clock.mono(0));
    assert!(seqs(&tick(&mut st, &store, clock.at(0)).commands).is_empty());
    assert_eq!(st.next_deadline(clock.at(0)), Some(clock.mono(10_000)));
    assert!(seqs(&tick(&mut st, &store, clock.at(9_999)).commands).is_empty());
    assert_eq!(
        seqs(&tick(&mut st, &store, clock.at(10_001)).commands),
        vec![1]
    );
}

#[test]
fn saved_state_restores_cursor_pending_and_counts() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"3", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    ack(&mut st, 1, "+ACK", None, clock.mono(1));
    ack(&mut st, 3, "-NAK", None, clock.mono(1));
    st.pull("_INBOX.1", b"1", clock.mono(1));
    let out = tick(&mut st, &store, clock.at(1));
    assert_eq!(delivered(&out.commands), vec![(3, "_INBOX.1".into(), 2)]);
    let save = out.save.expect("saved");
    let before = st.progress();
    assert_eq!(before.num_redelivered, 1);
    // A restart: the state comes back from the document, ack deadlines start over.
    let restarted = clock.mono(60_000);
    let mut again = ConsumerState::new(
        Identity {
            stream: "S",
            name: "C",
            retention: Retention::Limits,
            dead_letter: None,
            persisted: true,
            replicated: false,
        },
        config(PULL),
        &store,
        Some(&save.body),
        restarted,
    );
    let after = again.progress();
    assert_eq!(after.delivered, before.delivered);
    assert_eq!(after.ack_floor, before.ack_floor);
    assert_eq!(after.num_ack_pending, 2);
    assert_eq!(after.num_pending, 1);
    assert_eq!(after.num_redelivered, before.num_redelivered);
    assert_eq!(
        again.next_deadline(clock.at(60_000)),
        Some(restarted + Duration::from_secs(30))
    );
    again.pull("_INBOX.2", b"5", restarted);
    // New messages continue after the cursor; the pending ones wait for their ack wait, then
    // come back with their delivery counts.
    assert_eq!(
        seqs(&again.tick(&store, clock.at(60_000), false).commands),
        vec![4]
    );
    let out = again.tick(&store, clock.at(90_000), false);
    assert_eq!(
        delivered(&out.commands),
        vec![
            (2, "_INBOX.2".into(), 2),
            (3, "_INBOX.2".into(), 3),
            (4, "_INBOX.2".into(), 2)
        ]
    );
}

#[test]
fn push_consumers_deliver_while_bound_with_heartbeats_and_flow_control() {
    let clock = Clock::new();
    let store = stream(&[]);
    for _ in 0..600 {
        add(&store, "a");
    }
    let mut st = consumer(
        &store,
        r#"{"durable_name":"P","deliver_subject":"push.d","ack_policy":"none","flow_control":true,"idle_heartbeat":1000000000}"#,
        &clock,
    );
    assert_eq!(st.push_route().as_deref(), Some("push.d"));
    // Nobody listening: nothing goes.
    assert!(st.tick(&store, clock.at(0), false).commands.is_empty());
    let out = st.tick(&store, clock.at(0), true);
    let d = delivered(&out.commands);
    assert_eq!(d.len(), 600);
    assert!(d.iter().all(|(_, route, _)| route == "push.d"));
    // A flow-control request after the 512th delivery, with its own reply subject.
    let fc: Vec<&Command> = out
        .commands
        .iter()
        .filter(|c| matches!(c, Command::Status(_)))
        .collect();
    assert_eq!(
        statuses(&out.commands),
        vec![("push.d".into(), "NATS/1.0 100 FlowControl Request".into())]
    );
    let Command::Status(m) = fc[0] else {
        unreachable!()
    };
    assert_eq!(m.reply.as_deref(), Some("$JS.FC.S.C.1"));
    let at = out
        .commands
        .iter()
        .position(|c| matches!(c, Command::Status(_)))
        .expect("fc");
    assert_eq!(seqs(&out.commands[..at]).len(), 512);
    // Idle: a heartbeat with the last sequences.
    let out = st.tick(&store, clock.at(1_000), true);
    assert_eq!(
        statuses(&out.commands),
        vec![("push.d".into(), "NATS/1.0 100 Idle Heartbeat".into())]
    );
    assert_eq!(
        header(&out.commands[0], "Nats-Last-Stream").as_deref(),
        Some("600")
    );
}

#[test]
fn a_tick_delivers_at_most_tick_msgs_and_asks_for_another() {
    let clock = Clock::new();
    let store = stream(&[]);
    for _ in 0..TICK_MSGS + 10 {
        add(&store, "a");
    }
    let mut st = consumer(
        &store,
        r#"{"durable_name":"P","deliver_subject":"d","ack_policy":"none"}"#,
        &clock,
    );
    let out = st.tick(&store, clock.at(0), true);
    assert_eq!(seqs(&out.commands).len(), TICK_MSGS);
    assert_eq!(out.commands.last(), Some(&Command::Tick));
    let out = st.tick(&store, clock.at(0), true);
    assert_eq!(seqs(&out.commands).len(), 10);
    assert_ne!(out.commands.last(), Some(&Command::Tick));
}

#[test]
fn recount_after_a_purge_forgets_what_is_gone() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"2", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    store.purge().expect("purge");
    st.recount(&store);
    let p = st.progress();
    assert_eq!(
        (p.num_pending, p.num_ack_pending, p.ack_floor),
        (0, 0, (2, 2))
    );
}

#[test]
fn ephemeral_consumers_expire_when_inactive() {
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(&store, r#"{"inactive_threshold":1000000000}"#, &clock);
    assert!(!st.inactive(clock.mono(1_000), false));
    assert!(st.inactive(clock.mono(1_001), false));
    // A waiting pull request keeps it alive.
    st.pull("_INBOX.1", br#"{"batch":1}"#, clock.mono(1_001));
    assert!(!st.inactive(clock.mono(5_000), false));
    // Durable consumers never expire.
    let mut durable = consumer(&store, PULL, &clock);
    assert!(!durable.inactive(clock.mono(3_600_000), false));
}

#[test]
fn an_ephemeral_push_consumer_is_inactive_from_when_its_interest_went() {
    let clock = Clock::new();
    let store = stream(&[]);
    let mut st = consumer(
        &store,
        r#"{"deliver_subject":"d","inactive_threshold":1000000000}"#,
        &clock,
    );
    // Nobody subscribes yet: its one deadline is the threshold after its creation (no poll).
    assert_eq!(st.next_deadline(clock.at(0)), Some(clock.mono(1_000)));
    // Bound: nothing to look at (the task is woken when the interest goes).
    assert!(!st.inactive(clock.mono(500), true));
    assert_eq!(st.next_deadline(clock.at(500)), None);
    // The first look without interest, long after the last one with it, starts the count.
    assert!(!st.inactive(clock.mono(5_000), false));
    assert_eq!(st.next_deadline(clock.at(5_000)), Some(clock.mono(6_000)));
    assert!(!st.inactive(clock.mono(6_000), false));
    assert!(st.inactive(clock.mono(6_001), false));
}

#[test]
fn headers_only_sends_the_size_instead_of_the_payload() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(
        &store,
        r#"{"durable_name":"C","headers_only":true}"#,
        &clock,
    );
    st.pull("_INBOX.1", b"1", clock.mono(0));
    let out = tick(&mut st, &store, clock.at(0));
    let Some(Command::Deliver { msg, .. }) = out.commands.first() else {
        panic!("a delivery: {:?}", out.commands);
    };
    assert!(msg.payload.is_empty());
    assert_eq!(
        msg.headers.as_deref(),
        Some(&b"NATS/1.0\r\nNats-Msg-Size: 2\r\n\r\n"[..])
    );
    assert_eq!(&msg.subject[..], b"a");
}

#[test]
fn unknown_ack_verbs_change_nothing() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"1", clock.mono(0));
    let out = tick(&mut st, &store, clock.at(0));
    let subject = ack_subject(&out.commands, 1);
    let (seq, kind) = parse_ack(subject.as_bytes(), b"+OOPS").expect("parses");
    assert_eq!((seq, &kind), (1, &AckKind::Other));
    // Nothing changes, but a sync ack is answered all the same, as nats-server answers it.
    assert_eq!(
        st.ack(seq, kind, Some("_INBOX.r"), clock.mono(1)),
        vec![Command::Tick]
    );
    assert_eq!(st.progress().num_ack_pending, 1);
    let out = tick(&mut st, &store, clock.at(1));
    assert_eq!(out.commands, vec![Command::AckReply("_INBOX.r".into())]);
}

#[test]
fn requests_whose_reply_has_no_interest_are_dropped() {
    let clock = Clock::new();
    let store = stream(&["a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.gone", b"2", clock.mono(0));
    st.pull("_INBOX.live", b"2", clock.mono(0));
    assert_eq!(
        st.waiting_replies(),
        vec![
            std::sync::Arc::from("_INBOX.gone"),
            std::sync::Arc::from("_INBOX.live")
        ]
    );
    st.drop_requests(&[std::sync::Arc::from("_INBOX.gone")]);
    let out = tick(&mut st, &store, clock.at(0));
    assert_eq!(
        delivered(&out.commands),
        vec![(1, "_INBOX.live".into(), 1), (2, "_INBOX.live".into(), 1)]
    );
    // Dropped without an answer: nobody would read it.
    assert!(statuses(&out.commands).is_empty());
}

#[test]
fn a_negative_expiry_ends_the_request_at_once_with_408() {
    let clock = Clock::new();
    let store = stream(&["a"]);
    let mut st = consumer(&store, PULL, &clock);
    assert_eq!(
        st.pull("_INBOX.1", br#"{"batch":3,"expires":-1}"#, clock.mono(0)),
        vec![Command::Tick]
    );
    let out = tick(&mut st, &store, clock.at(0));
    assert!(seqs(&out.commands).is_empty(), "nothing delivered to it");
    assert_eq!(
        statuses(&out.commands),
        vec![("_INBOX.1".into(), "NATS/1.0 408 Request Timeout".into())]
    );
    assert_eq!(
        header(&out.commands[0], "Nats-Pending-Messages").as_deref(),
        Some("3")
    );
}

#[test]
fn reset_goes_back_to_the_ack_floor_or_a_sequence() {
    let clock = Clock::new();
    let store = stream(&["a", "a", "a", "a"]);
    let mut st = consumer(&store, PULL, &clock);
    st.pull("_INBOX.1", b"3", clock.mono(0));
    tick(&mut st, &store, clock.at(0));
    ack(&mut st, 1, "+ACK", None, clock.mono(1));
    assert_eq!(st.reset(0, &store), Ok(2));
    let p = st.progress();
    assert_eq!(
        (p.num_ack_pending, p.num_pending, p.delivered),
        (0, 3, (0, 1))
    );
    st.pull("_INBOX.2", b"1", clock.mono(2));
    assert_eq!(seqs(&tick(&mut st, &store, clock.at(2)).commands), vec![2]);
    assert_eq!(st.reset(4, &store), Ok(4));
    assert_eq!(st.progress().num_pending, 1);
    let mut new = consumer(
        &store,
        r#"{"durable_name":"C","deliver_policy":"new"}"#,
        &clock,
    );
    assert_eq!(new.reset(2, &store), Err("not allowed"));
}

#[test]
fn removals_keep_the_pending_count_true() {
    let clock = Clock::new();
    let store = stream(&["a", "b", "c", "d"]);
    let mut st = consumer(&store, PULL, &clock);
    assert_eq!(st.progress().num_pending, 4);
    // From the front, past the cursor: counted again.
    store.remove_msg(1).expect("removed");
    store.remove_msg(2).expect("removed");
    st.removed_front(3, &store);
    assert_eq!(st.progress().num_pending, 2);
    // From inside: counted again at the next tick.
    store.remove_msg(4).expect("removed");
    st.mark_stale();
    tick(&mut st, &store, clock.at(0));
    assert_eq!(st.progress().num_pending, 1);
}

/// A replicated consumer (work queue): what each delta says, and that applying the deltas in
/// order rebuilds the leader's state document.
#[test]
fn replicated_deltas_carry_deliveries_acks_and_releases() {
    use super::state::{Delta, LogProgress};
    let clock = Clock::new();
    let store = stream(&["a", "a", "a"]);
    let mut st = ConsumerState::new(
        Identity {
            stream: "S",
            name: "C",
            retention: Retention::WorkQueue,
            dead_letter: None,
            persisted: false,
            replicated: true,
        },
        config(r#"{"durable_name":"C","ack_policy":"explicit","ack_wait":1000000000}"#),
        &store,
        None,
        clock.mono(0),
    );
    let mut replica = LogProgress::default();
    st.pull("_INBOX.1", b"3", clock.mono(0));
    let out = tick(&mut st, &store, clock.at(0));
    assert_eq!(seqs(&out.commands), vec![1, 2, 3]);
    assert!(out.save.is_some(), "deliveries go to the log first");
    let d = st.take_delta().expect("a delta");
    assert_eq!(
        (d.sseq, d.dseq, d.floor_s, d.add.clone(), d.del.clone()),
        (3, 3, 0, vec![(1, 1, 1), (2, 2, 1), (3, 3, 1)], vec![])
    );
    replica.apply(&d);
    assert_eq!(st.take_delta(), None, "nothing changed since");

    // An ack of 2, with a reply: released through the log, answered after the save.
    let cmds = st.ack(2, AckKind::Ack, Some("_INBOX.r"), clock.mono(10));
    assert!(!cmds.iter().any(|c| matches!(c, Command::Release(_))));
    let out = tick(&mut st, &store, clock.at(10));
    assert!(!out
        .commands
        .iter()
        .any(|c| matches!(c, Command::Release(_))));
    assert!(out
        .commands
        .contains(&Command::AckReply("_INBOX.r".to_string())));
    assert_eq!(out.save.map(|s| s.sync), Some(true));
    let d = st.take_delta().expect("a delta");
    assert_eq!((d.del.clone(), d.released.clone()), (vec![2], vec![2]));
    replica.apply(&d);

    // 1 and 3 time out and go again: their second delivery, a new consumer sequence each.
    st.pull("_INBOX.1", b"2", clock.mono(1500));
    let out = tick(&mut st, &store, clock.at(1500));
    assert_eq!(seqs(&out.commands), vec![1, 3]);
    let d: Delta = st.take_delta().expect("a delta");
    assert_eq!(d.add, vec![(1, 4, 2), (3, 5, 2)]);
    replica.apply(&d);
    assert_eq!(
        LogProgress::decode(&replica.encode()),
        LogProgress::decode(&st.encode()),
        "the replica's copy is the leader's state"
    );
}
