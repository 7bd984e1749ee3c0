//! Delivery without sockets: publishers and subscribers are `Outbound`s whose buffers the tests
//! read back, so fan-out, queue groups, auto-unsubscribe, echo, slow consumers, permissions'
//! partial denies, headers and imports are checked on the router alone.

use std::net::SocketAddr;
use std::sync::Arc;

use super::imports::{self, ExportKind, Import};
use super::*;

/// One delivered frame, as a client would parse it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    subject: String,
    sid: String,
    reply: Option<String>,
    headers: Option<String>,
    payload: String,
}

/// Parses the MSG/HMSG frames in `buf`.
fn frames(buf: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("control line");
        let line = std::str::from_utf8(&rest[..end]).expect("utf-8");
        rest = &rest[end + 2..];
        let parts: Vec<&str> = line.split(' ').collect();
        let (hdr_len, total, reply) = match parts[0] {
            "MSG" => {
                let size: usize = parts.last().expect("size").parse().expect("size");
                (0, size, (parts.len() == 5).then(|| parts[3].to_string()))
            }
            "HMSG" => {
                let n = parts.len();
                let h: usize = parts[n - 2].parse().expect("hdr size");
                let t: usize = parts[n - 1].parse().expect("total");
                (h, t, (n == 6).then(|| parts[3].to_string()))
            }
            other => panic!("unexpected frame {other:?}"),
        };
        let body = &rest[..total];
        rest = &rest[total + 2..];
        out.push(Frame {
            subject: parts[1].to_string(),
            sid: parts[2].to_string(),
            reply,
            headers: (hdr_len > 0).then(|| String::from_utf8_lossy(&body[..hdr_len]).into_owned()),
            payload: String::from_utf8_lossy(&body[hdr_len..]).into_owned(),
        });
    }
    out
}

fn addr() -> SocketAddr {
    "127.0.0.1:4222".parse().expect("addr")
}

/// A connection's outbound side with room for `max_pending` bytes.
fn conn(cid: u64, max_pending: usize) -> Arc<Outbound> {
    let o = Outbound::new(cid, addr(), max_pending);
    o.set_headers(true);
    o
}

/// Subscribes `out` to `subject` (in `queue`) under `sid` in `account`.
fn sub(
    account: &Account,
    out: &Arc<Outbound>,
    subject: &str,
    queue: Option<&str>,
    sid: &str,
) -> SubRef {
    let s = Subscription::client(
        out.clone(),
        subject.as_bytes(),
        queue.map(str::as_bytes),
        sid.as_bytes(),
        None,
    );
    assert_eq!(out.add_sub(&s, None), SubAdded::Added);
    account.insert(s.clone());
    s
}

/// What `out` has been sent since the last call.
fn received(out: &Outbound) -> Vec<Frame> {
    frames(&out.take_bytes())
}

fn msg<'a>(subject: &'a str, payload: &'a str) -> Msg<'a> {
    Msg {
        subject: subject.as_bytes(),
        reply: None,
        headers: None,
        payload: payload.as_bytes(),
    }
}

#[test]
fn every_matching_subscription_gets_one_copy() {
    let acc = Account::new("A");
    let (a, b, c, d) = (
        conn(1, 1 << 20),
        conn(2, 1 << 20),
        conn(3, 1 << 20),
        conn(4, 1 << 20),
    );
    sub(&acc, &a, "orders.eu.new", None, "1");
    sub(&acc, &b, "orders.*.new", None, "2");
    sub(&acc, &c, "orders.>", None, "3");
    sub(&acc, &d, "orders.us.new", None, "4");
    let mut p = Publisher::new(99);
    assert!(p.publish(&acc, &msg("orders.eu.new", "hello")));
    assert!(
        !p.publish(&acc, &msg("payments.eu", "nobody")),
        "no interest"
    );
    p.flush();
    for (out, sid) in [(&a, "1"), (&b, "2"), (&c, "3")] {
        assert_eq!(
            received(out),
            vec![Frame {
                subject: "orders.eu.new".into(),
                sid: sid.into(),
                reply: None,
                headers: None,
                payload: "hello".into(),
            }]
        );
    }
    assert!(received(&d).is_empty());
    assert_eq!(a.stats().out_msgs, 1);
    assert_eq!(a.stats().out_bytes, 5);
}

#[test]
fn a_queue_group_gets_each_message_once_beside_plain_subscribers() {
    let acc = Account::new("A");
    let members: Vec<_> = (1..=3).map(|i| conn(i, 1 << 20)).collect();
    for (i, m) in members.iter().enumerate() {
        sub(&acc, m, "jobs", Some("workers"), &format!("q{i}"));
    }
    let watcher = conn(10, 1 << 20);
    sub(&acc, &watcher, "jobs", None, "w");
    let mut p = Publisher::new(99);
    for i in 0..300 {
        assert!(p.publish(&acc, &msg("jobs", &i.to_string())));
    }
    p.flush();
    let per_member: Vec<usize> = members.iter().map(|m| received(m).len()).collect();
    assert_eq!(per_member.iter().sum::<usize>(), 300, "{per_member:?}");
    assert!(per_member.iter().all(|n| *n > 0), "spread: {per_member:?}");
    assert_eq!(received(&watcher).len(), 300);
}

#[test]
fn a_queue_member_that_cannot_take_a_message_passes_it_on() {
    let acc = Account::new("A");
    let closed = conn(1, 1 << 20);
    let open = conn(2, 1 << 20);
    sub(&acc, &closed, "jobs", Some("w"), "1");
    sub(&acc, &open, "jobs", Some("w"), "2");
    closed.close(CloseReason::ClientClosed);
    let mut p = Publisher::new(99);
    for _ in 0..20 {
        assert!(p.publish(&acc, &msg("jobs", "x")));
    }
    p.flush();
    assert_eq!(received(&open).len(), 20);
}

#[test]
fn auto_unsubscribe_stops_at_max_and_removes_the_subscription() {
    let acc = Account::new("A");
    let out = conn(1, 1 << 20);
    let s = sub(&acc, &out, "tick", None, "7");
    assert!(!s.0.expire_after(2), "not reached yet");
    let mut p = Publisher::new(99);
    let delivered: Vec<bool> = (0..5).map(|_| p.publish(&acc, &msg("tick", "t"))).collect();
    p.flush();
    assert_eq!(delivered, vec![true, true, false, false, false]);
    assert_eq!(received(&out).len(), 2);
    assert_eq!(acc.subscription_count(), 0, "removed from the trie");
    assert!(out.sub(b"7").is_none(), "removed from the sid map");
    // `UNSUB sid 0` removes at once.
    let s = sub(&acc, &out, "tock", None, "8");
    assert!(s.0.expire_after(0));
}

#[test]
fn echo_off_skips_the_publishers_own_subscriptions() {
    let acc = Account::new("A");
    let me = conn(1, 1 << 20);
    let other = conn(2, 1 << 20);
    sub(&acc, &me, "chat", None, "1");
    sub(&acc, &other, "chat", None, "2");
    let mut p = Publisher::new(1);
    p.publish(&acc, &msg("chat", "echoed"));
    p.set_echo(false);
    p.publish(&acc, &msg("chat", "not echoed"));
    p.flush();
    let mine: Vec<String> = received(&me).into_iter().map(|f| f.payload).collect();
    assert_eq!(mine, vec!["echoed"]);
    assert_eq!(received(&other).len(), 2);
}

#[test]
fn a_receiver_past_max_pending_is_cut_off_as_a_slow_consumer() {
    let acc = Account::new("A");
    // Room for about three 40-byte frames.
    let slow = conn(1, 128);
    let fine = conn(2, 1 << 20);
    sub(&acc, &slow, "feed", None, "1");
    sub(&acc, &fine, "feed", None, "2");
    let mut p = Publisher::new(99);
    for _ in 0..10 {
        p.publish(&acc, &msg("feed", "0123456789"));
    }
    p.flush();
    assert_eq!(
        slow.close_reason(),
        Some(CloseReason::SlowConsumerPendingBytes)
    );
    assert!(
        received(&slow).is_empty(),
        "a slow consumer's backlog is dropped"
    );
    assert_eq!(received(&fine).len(), 10, "the others are not held back");
    // Past half of max_pending a receiver counts as lagging for the publisher to wait on.
    let lagging = conn(3, 200);
    sub(&acc, &lagging, "feed", None, "3");
    p.take_lagging();
    for _ in 0..3 {
        p.publish(&acc, &msg("feed", "0123456789"));
    }
    p.flush();
    assert!(
        p.take_lagging().is_none(),
        "81 of 200 bytes pending: not lagging"
    );
    for _ in 0..2 {
        p.publish(&acc, &msg("feed", "0123456789"));
    }
    p.flush();
    assert!(
        p.take_lagging().is_some(),
        "135 of 200 bytes pending: lagging"
    );
    assert!(lagging.close_reason().is_none());
}

#[test]
fn denied_subjects_are_filtered_and_headers_only_reach_clients_that_take_them() {
    let acc = Account::new("A");
    let filtered = conn(1, 1 << 20);
    let s = Subscription::client(
        filtered.clone(),
        b">",
        None,
        b"1",
        Some(vec![b"secret.>".to_vec().into()]),
    );
    filtered.add_sub(&s, None);
    acc.insert(s);
    let plain = conn(2, 1 << 20);
    plain.set_headers(false);
    sub(&acc, &plain, ">", None, "2");
    let mut p = Publisher::new(99);
    let hdr = b"NATS/1.0\r\nA: b\r\n\r\n";
    for subject in ["public.x", "secret.x"] {
        p.publish(
            &acc,
            &Msg {
                subject: subject.as_bytes(),
                reply: Some(b"_INBOX.1"),
                headers: Some(hdr),
                payload: b"p",
            },
        );
    }
    p.flush();
    let got = received(&filtered);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject, "public.x");
    assert_eq!(got[0].headers.as_deref(), Some("NATS/1.0\r\nA: b\r\n\r\n"));
    assert_eq!(got[0].reply.as_deref(), Some("_INBOX.1"));
    let got = received(&plain);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|f| f.headers.is_none()));
}

#[test]
fn stream_imports_carry_messages_into_the_importer_renamed() {
    let (exporter, importer) = (Account::new("E"), Account::new("I"));
    imports::install(
        &importer,
        &exporter,
        &Import {
            kind: ExportKind::Stream,
            account: "E".into(),
            subject: "events.>".into(),
            to: None,
            prefix: Some("from_e".into()),
        },
    );
    let out = conn(1, 1 << 20);
    sub(&importer, &out, "from_e.events.*", None, "1");
    assert!(publish(&exporter, msg("events.created", "e1")));
    assert!(!publish(&exporter, msg("other", "no")));
    let got = received(&out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject, "from_e.events.created");
}

#[test]
fn service_imports_route_requests_to_the_exporter_and_answers_back() {
    let (exporter, importer) = (Account::new("E"), Account::new("I"));
    imports::install(
        &importer,
        &exporter,
        &Import {
            kind: ExportKind::Service,
            account: "E".into(),
            subject: "svc.time".into(),
            to: Some("time".into()),
            prefix: None,
        },
    );
    let responder = conn(1, 1 << 20);
    sub(&exporter, &responder, "svc.time", None, "r");
    let requester = conn(2, 1 << 20);
    sub(&importer, &requester, "_INBOX.abc", None, "i");
    let mut p = Publisher::new(2);
    p.publish(
        &importer,
        &Msg {
            subject: b"time",
            reply: Some(b"_INBOX.abc"),
            headers: None,
            payload: b"now?",
        },
    );
    p.flush();
    let req = received(&responder);
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].subject, "svc.time");
    assert_eq!(req[0].reply.as_deref(), Some("_INBOX.abc"));
    // The answer, published in the exporter's account, reaches the requester once.
    let mut r = Publisher::new(1);
    assert!(r.publish(&exporter, &msg("_INBOX.abc", "12:00")));
    assert!(
        !r.publish(&exporter, &msg("_INBOX.abc", "again")),
        "one-shot route"
    );
    r.flush();
    let answer = received(&requester);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].payload, "12:00");
}

#[test]
fn a_batch_larger_than_staging_holds_reaches_receivers_whole_and_in_order() {
    // One batch (no flush between publishes) gathers far more than `MAX_STAGED` for each
    // receiver: frames are handed over on the way and nothing is lost, doubled or reordered.
    let acc = Account::new("A");
    let (a, b) = (conn(1, 64 << 20), conn(2, 64 << 20));
    sub(&acc, &a, "big", None, "1");
    sub(&acc, &b, "big", None, "2");
    sub(&acc, &b, ">", None, "4");
    let payload = "x".repeat(1000);
    let n = 3 * delivery::MAX_STAGED / 1000;
    let mut p = Publisher::new(99);
    for i in 0..n {
        let body = format!("{i}:{payload}");
        assert!(p.publish(&acc, &msg("big", &body)));
    }
    p.flush();
    let got_a = received(&a);
    assert_eq!(got_a.len(), n);
    for (i, f) in got_a.iter().enumerate() {
        assert!(f.payload.starts_with(&format!("{i}:")), "frame {i} of a");
    }
    let got_b = received(&b);
    assert_eq!(got_b.len(), 2 * n, "b's two matching subscriptions");
    for (i, f) in got_b.iter().enumerate() {
        assert!(
            f.payload.starts_with(&format!("{}:", i / 2)),
            "frame {i} of b"
        );
    }
    assert_eq!(a.stats().out_msgs, n as u64);
    assert_eq!(b.stats().out_msgs, 2 * n as u64);
}

#[test]
fn a_batch_for_one_interest_reaches_its_subscribers_under_their_own_subjects() {
    let acc = Arc::new(Accounts::new());
    let out = conn(1, 1 << 20);
    sub(acc.global(), &out, "deliver.c1", None, "5");
    let msgs = [msg("orders.1", "a"), msg("orders.2", "b")];
    let (n, lagging) = publish_batch(acc.global(), b"deliver.c1", msgs);
    assert_eq!(n, 2);
    assert!(lagging.is_none());
    let got: Vec<(String, String)> = received(&out)
        .into_iter()
        .map(|f| (f.subject, f.payload))
        .collect();
    assert_eq!(
        got,
        vec![
            ("orders.1".into(), "a".into()),
            ("orders.2".into(), "b".into())
        ]
    );
}

#[tokio::test]
async fn internal_subscriptions_receive_copies_and_drop_when_full() {
    let accounts = Accounts::new();
    let client = InternalClient::new(&accounts, GLOBAL_ACCOUNT).expect("client");
    let mut s = client.subscribe("jobs.*", None, 2).expect("subscribe");
    for i in 0..3 {
        client
            .publish(&format!("jobs.{i}"), Some("r"), None, b"x")
            .expect("publish");
    }
    assert_eq!(s.next().await.expect("first").subject, "jobs.0");
    assert_eq!(s.try_next().expect("second").reply.as_deref(), Some("r"));
    assert!(s.try_next().is_none());
    assert_eq!(s.dropped(), 1, "the third did not fit");
    drop(s);
    assert_eq!(
        accounts.global().subscription_count(),
        0,
        "unsubscribed on drop"
    );
}

/// A peer's interest in `subject` (in `queue` with `weight` members) over route `route`.
fn remote(
    account: &Account,
    route: &Arc<Outbound>,
    subject: &str,
    queue: Option<&str>,
    weight: u32,
) -> SubRef {
    let s = Subscription::route(
        route.clone(),
        subject.as_bytes(),
        queue.map(str::as_bytes),
        weight,
        None,
    );
    account.insert(s.clone());
    s
}

/// The routed messages in `out`'s buffer, as (control line, payload).
fn routed(out: &Outbound) -> Vec<(String, String)> {
    let batch = out.take_bytes();
    let mut v = Vec::new();
    let mut rest = &batch[..];
    while !rest.is_empty() {
        match natrium_protocol::route::parse_route_op(rest, 1 << 20).expect("valid") {
            natrium_protocol::Parsed::Op { op, len } => {
                let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("line");
                let line = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                let natrium_protocol::route::RouteOp::Msg { payload, .. } = op else {
                    panic!("not a message: {line}")
                };
                v.push((line, String::from_utf8_lossy(payload).into_owned()));
                rest = &rest[len..];
            }
            other => panic!("incomplete: {other:?}"),
        }
    }
    v
}

#[test]
fn a_peer_gets_one_routed_message_however_many_of_its_subscriptions_match() {
    let acc = Account::new("ACC");
    let route = conn(100, 1 << 20);
    route.set_headers(true);
    remote(&acc, &route, "orders.>", None, 0);
    remote(&acc, &route, "orders.*", None, 0);
    let local = conn(1, 1 << 20);
    sub(&acc, &local, "orders.*", None, "1");
    let mut p = Publisher::new(2);
    assert!(p.publish(
        &acc,
        &Msg {
            subject: b"orders.new",
            reply: Some(b"_INBOX.9"),
            headers: None,
            payload: b"x"
        }
    ));
    p.flush();
    assert_eq!(
        routed(&route),
        vec![(
            "RMSG ACC orders.new _INBOX.9 1".to_string(),
            "x".to_string()
        )]
    );
    assert_eq!(received(&local).len(), 1);
    // Only a peer's interest: still delivered (no 503 for the requester).
    assert!(p.publish(&acc, &msg("orders.old", "y")));
}

#[test]
fn queue_groups_pick_peers_by_their_weight_and_name_the_group() {
    let acc = Account::new("A");
    let route = conn(100, 1 << 20);
    remote(&acc, &route, "jobs", Some("w"), 3);
    let local = conn(1, 1 << 20);
    sub(&acc, &local, "jobs", Some("w"), "1");
    let mut p = Publisher::new(2);
    for _ in 0..4000 {
        assert!(p.publish(&acc, &msg("jobs", "j")));
    }
    p.flush();
    let remote_n = routed(&route);
    let local_n = received(&local).len();
    assert_eq!(remote_n.len() + local_n, 4000, "each message once");
    assert!(
        remote_n.iter().all(|(line, _)| line == "RMSG A jobs | w 1"),
        "{:?}",
        &remote_n[..1]
    );
    // Weight 3 against 1: about three quarters go to the peer.
    assert!(
        (2700..3300).contains(&remote_n.len()),
        "peer got {}",
        remote_n.len()
    );
}

#[test]
fn messages_from_a_route_stay_local_and_reach_only_the_named_queue_groups() {
    let acc = Account::new("A");
    let other_route = conn(101, 1 << 20);
    remote(&acc, &other_route, ">", None, 0);
    remote(&acc, &other_route, "jobs", Some("w"), 5);
    let plain = conn(1, 1 << 20);
    sub(&acc, &plain, "jobs", None, "p");
    let worker = conn(2, 1 << 20);
    sub(&acc, &worker, "jobs", Some("w"), "q");
    let auditor = conn(3, 1 << 20);
    sub(&acc, &auditor, "jobs", Some("audit"), "a");
    let mut p = Publisher::for_route(100);
    p.publish_to_queues(&acc, &msg("jobs", "1"), Some(b"w"));
    p.publish_to_queues(&acc, &msg("jobs", "2"), None);
    p.flush();
    assert!(
        routed(&other_route).is_empty(),
        "never relayed to another peer"
    );
    assert_eq!(received(&plain).len(), 2);
    assert_eq!(
        received(&worker).len(),
        1,
        "only when the sender picked this server"
    );
    assert!(
        received(&auditor).is_empty(),
        "a group the sender did not name"
    );
}

#[test]
fn imports_route_requests_but_deliver_stream_imports_and_replies_locally() {
    let (exporter, importer) = (Account::new("E"), Account::new("I"));
    imports::install(
        &importer,
        &exporter,
        &Import {
            kind: ExportKind::Service,
            account: "E".into(),
            subject: "svc".into(),
            to: None,
            prefix: None,
        },
    );
    imports::install(
        &importer,
        &exporter,
        &Import {
            kind: ExportKind::Stream,
            account: "E".into(),
            subject: "feed".into(),
            to: None,
            prefix: None,
        },
    );
    let route = conn(100, 1 << 20);
    remote(&exporter, &route, "svc", None, 0);
    remote(&importer, &route, "feed", None, 0);
    let mut p = Publisher::new(1);
    // A request in the importer reaches the exporter's responder on the peer.
    p.publish(
        &importer,
        &Msg {
            subject: b"svc",
            reply: Some(b"_INBOX.r"),
            headers: None,
            payload: b"q",
        },
    );
    // A stream import is not routed from here in the importer's account: the peer's own
    // import carries the exporter's message to its subscribers.
    p.publish(&exporter, &msg("feed", "f"));
    p.flush();
    let lines: Vec<String> = routed(&route).into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, vec!["RMSG E svc _INBOX.r 1".to_string()]);
}

/// Collects the interest changes it is told to announce.
#[derive(Default)]
struct Collect(parking_lot::Mutex<Vec<interest::InterestChange>>);

impl interest::Announcer for Collect {
    fn announce(&self, changes: &[interest::InterestChange]) {
        self.0.lock().extend_from_slice(changes);
    }
}

/// Accounts of a cluster member whose announcements are collected.
fn announcing_accounts() -> (Accounts, Arc<Collect>) {
    let feed = InterestFeed::new();
    let told = Arc::new(Collect::default());
    feed.set_announcer(told.clone());
    (Accounts::with_interest(Some(feed)), told)
}

#[test]
fn a_cluster_member_reports_its_first_and_last_subscriptions_and_queue_weights() {
    let (accounts, told) = announcing_accounts();
    let acc = accounts.ensure("A");
    let (c1, c2) = (conn(1, 1 << 20), conn(2, 1 << 20));
    let a = sub(&acc, &c1, "x.*", None, "1");
    let b = sub(&acc, &c2, "x.*", None, "1");
    let q1 = sub(&acc, &c1, "jobs", Some("w"), "2");
    let q2 = sub(&acc, &c2, "jobs", Some("w"), "2");
    // A peer's interest is never reported back.
    remote(&acc, &conn(100, 1 << 20), "y", None, 0);
    remove_subscription(&acc, &a);
    remove_subscription(&acc, &q1);
    remove_subscription(&acc, &b);
    remove_subscription(&acc, &q2);
    let mut got = Vec::new();
    for c in told.0.lock().drain(..) {
        got.push((
            String::from_utf8_lossy(&c.subject).into_owned(),
            c.queue.map(|q| String::from_utf8_lossy(&q).into_owned()),
            c.count,
        ));
    }
    let w = Some("w".to_string());
    assert_eq!(
        got,
        vec![
            ("x.*".into(), None, 1),
            ("jobs".into(), w.clone(), 1),
            ("jobs".into(), w.clone(), 2),
            ("jobs".into(), w.clone(), 1),
            ("x.*".into(), None, 0),
            ("jobs".into(), w, 0),
        ]
    );
    assert!(acc.local_interest(false).is_empty());
    sub(&acc, &c1, "z", Some("g"), "3");
    assert_eq!(
        acc.local_interest(false),
        vec![interest::Interest {
            subject: b"z".to_vec().into(),
            queue: Some(b"g".to_vec().into()),
            origin: None,
            count: 1
        }]
    );
}

#[test]
fn a_hub_reports_its_leaves_interest_per_origin_and_summed() {
    let (accounts, told) = announcing_accounts();
    let acc = accounts.ensure("A");
    let c1 = conn(1, 1 << 20);
    let leaf_out = conn(7, 1 << 20);
    let edge = Arc::new(LeafPeer {
        spoke: false,
        cluster: Some(b"edge".to_vec().into()),
        deny_out: Vec::new(),
    });
    let own = sub(&acc, &c1, "jobs", Some("w"), "1");
    let l = Subscription::leaf(leaf_out, edge, b"jobs", Some(b"w"), 1);
    acc.insert(l.clone());
    acc.remove(&l);
    remove_subscription(&acc, &own);
    let mut got = Vec::new();
    for c in told.0.lock().drain(..) {
        got.push((
            c.origin.map(|o| String::from_utf8_lossy(&o).into_owned()),
            c.count,
            c.total,
        ));
    }
    let edge = Some("edge".to_string());
    assert_eq!(
        got,
        vec![
            (None, 1, 1),
            (edge.clone(), 1, 2),
            (edge.clone(), 0, 1),
            (None, 0, 0)
        ]
    );
    // A peer with origins hears of each apart, one without of the sum.
    let l = Subscription::leaf(
        conn(8, 1 << 20),
        Arc::new(LeafPeer {
            spoke: false,
            cluster: Some(b"edge".to_vec().into()),
            deny_out: Vec::new(),
        }),
        b"x",
        None,
        0,
    );
    acc.insert(l);
    sub(&acc, &c1, "x", None, "2");
    let mut by_origin = acc.local_interest(false);
    by_origin.sort_by(|a, b| a.origin.cmp(&b.origin));
    assert_eq!(
        by_origin
            .iter()
            .map(|i| (i.origin.is_some(), i.count))
            .collect::<Vec<_>>(),
        vec![(false, 1), (true, 1)]
    );
    let summed = acc.local_interest(true);
    assert_eq!(summed.len(), 1);
    assert_eq!((summed[0].origin.is_none(), summed[0].count), (true, 2));
}

/// Whether `n` was woken since the last call (takes the stored wake-up).
fn woken(n: &tokio::sync::Notify) -> bool {
    use futures::FutureExt;
    n.notified().now_or_never().is_some()
}

#[test]
fn a_subject_watch_wakes_on_matching_subscriptions_coming_and_going() {
    let acc = Account::new("A");
    let n = Arc::new(tokio::sync::Notify::new());
    let w = acc.watch_subject(b"deliver.x", n.clone());
    assert_eq!(acc.subject_watches(), 1);
    let c = conn(1, 1 << 20);
    // Subscriptions that do not match it.
    let other = sub(&acc, &c, "deliver.y", None, "1");
    sub(&acc, &c, "deliver.*.z", None, "2");
    sub(&acc, &c, "other.>", None, "3");
    assert!(!woken(&n));
    // The subject itself, wildcards covering it, a queue group, a peer server's interest.
    let exact = sub(&acc, &c, "deliver.x", None, "4");
    assert!(woken(&n));
    assert!(!woken(&n), "one wake-up per change");
    sub(&acc, &c, "deliver.*", None, "5");
    assert!(woken(&n));
    sub(&acc, &c, ">", None, "6");
    assert!(woken(&n));
    sub(&acc, &c, "deliver.x", Some("q"), "7");
    assert!(woken(&n));
    let route = Subscription::route(conn(2, 1 << 20), b"deliver.>", None, 0, None);
    acc.insert(route.clone());
    assert!(woken(&n));
    // Going: a matching subscription wakes it, another does not.
    assert!(acc.remove(&other));
    assert!(!woken(&n));
    assert!(acc.remove(&exact));
    assert!(woken(&n));
    assert!(acc.remove(&route));
    assert!(woken(&n));
    // Dropped: no more wake-ups, and nothing left to look at.
    drop(w);
    assert_eq!(acc.subject_watches(), 0);
    sub(&acc, &c, "deliver.x", None, "8");
    assert!(!woken(&n));
}

#[test]
fn subject_watches_of_one_subject_are_woken_together_and_dropped_apart() {
    let acc = Account::new("A");
    let (n1, n2) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let w1 = acc.watch_subject(b"d", n1.clone());
    let _w2 = acc.watch_subject(b"d", n2.clone());
    let c = conn(1, 1 << 20);
    sub(&acc, &c, "d", None, "1");
    assert!(woken(&n1) && woken(&n2));
    drop(w1);
    assert_eq!(acc.subject_watches(), 1);
    sub(&acc, &c, "*", None, "2");
    assert!(!woken(&n1));
    assert!(woken(&n2));
}

#[test]
fn a_subject_watch_tells_wildcard_tokens_from_wildcard_characters() {
    let acc = Account::new("A");
    let n = Arc::new(tokio::sync::Notify::new());
    let _w = acc.watch_subject(b"a.b*.c", n.clone());
    let c = conn(1, 1 << 20);
    // `b*` is a literal token: only the same subject, or a wildcard token, matches it.
    sub(&acc, &c, "a.b.c", None, "1");
    sub(&acc, &c, "a.b*", None, "2");
    sub(&acc, &c, "a.c.*", None, "3");
    assert!(!woken(&n));
    sub(&acc, &c, "a.b*.c", None, "4");
    assert!(woken(&n));
    sub(&acc, &c, "a.*.c", None, "5");
    assert!(woken(&n));
    sub(&acc, &c, "a.b*.>", None, "6");
    assert!(woken(&n));
}
