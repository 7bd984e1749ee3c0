//! Core messaging through the async-nats client: pub/sub, wildcards, queue groups, request-reply,
//! no-responders, auto-unsubscribe, headers, echo.

use std::time::Duration;

use crate::common::{client, opts, start};
use bytes::Bytes;
use futures::StreamExt;

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message arrives in time")
        .expect("subscription open")
}

/// Asserts nothing more arrives on `sub` within a short window.
async fn quiet(sub: &mut async_nats::Subscriber) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        panic!("unexpected message on {}", m.subject);
    }
}

#[tokio::test]
async fn publish_subscribe_round_trip() {
    let s = start(opts()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("greet.joe").await.expect("sub");
    c.flush().await.expect("flush");
    c.publish("greet.joe", Bytes::from_static(b"hello"))
        .await
        .expect("pub");
    let m = next(&mut sub).await;
    assert_eq!(m.subject.as_str(), "greet.joe");
    assert_eq!(&m.payload[..], b"hello");
    // An empty payload and a large one pass unchanged.
    c.publish("greet.joe", Bytes::new()).await.expect("pub");
    let big = Bytes::from(vec![7u8; 512 * 1024]);
    c.publish("greet.joe", big.clone()).await.expect("pub");
    assert!(next(&mut sub).await.payload.is_empty());
    assert_eq!(next(&mut sub).await.payload, big);
    s.shutdown().await;
}

#[tokio::test]
async fn wildcards_match_as_nats_does() {
    let s = start(opts()).await;
    let c = client(&s).await;
    let mut star = c.subscribe("a.*.c").await.expect("sub");
    let mut tail = c.subscribe("a.>").await.expect("sub");
    let mut all = c.subscribe(">").await.expect("sub");
    let mut lit = c.subscribe("a.b.c").await.expect("sub");
    c.flush().await.expect("flush");
    for subj in ["a.b.c", "a.x.c", "a.b", "a.b.c.d", "z"] {
        c.publish(subj, Bytes::from_static(b"x"))
            .await
            .expect("pub");
    }
    c.flush().await.expect("flush");
    assert_eq!(next(&mut star).await.subject.as_str(), "a.b.c");
    assert_eq!(next(&mut star).await.subject.as_str(), "a.x.c");
    quiet(&mut star).await;
    for want in ["a.b.c", "a.x.c", "a.b", "a.b.c.d"] {
        assert_eq!(next(&mut tail).await.subject.as_str(), want);
    }
    quiet(&mut tail).await;
    for want in ["a.b.c", "a.x.c", "a.b", "a.b.c.d", "z"] {
        assert_eq!(next(&mut all).await.subject.as_str(), want);
    }
    assert_eq!(next(&mut lit).await.subject.as_str(), "a.b.c");
    quiet(&mut lit).await;
    s.shutdown().await;
}

#[tokio::test]
async fn overlapping_subscriptions_each_get_one_copy() {
    let s = start(opts()).await;
    let c = client(&s).await;
    let mut one = c.subscribe("x.*").await.expect("sub");
    let mut two = c.subscribe("x.>").await.expect("sub");
    c.flush().await.expect("flush");
    c.publish("x.y", Bytes::from_static(b"1"))
        .await
        .expect("pub");
    c.flush().await.expect("flush");
    next(&mut one).await;
    next(&mut two).await;
    quiet(&mut one).await;
    quiet(&mut two).await;
    s.shutdown().await;
}

#[tokio::test]
async fn queue_group_delivers_each_message_to_one_member() {
    let s = start(opts()).await;
    let publisher = client(&s).await;
    let mut members = Vec::new();
    for _ in 0..4 {
        let c = client(&s).await;
        let sub = c
            .queue_subscribe("work", "workers".to_string())
            .await
            .expect("qsub");
        c.flush().await.expect("flush");
        members.push((c, sub));
    }
    let observer = client(&s).await;
    let mut plain = observer.subscribe("work").await.expect("sub");
    observer.flush().await.expect("flush");
    const N: usize = 400;
    for i in 0..N {
        publisher
            .publish("work", Bytes::from(i.to_string()))
            .await
            .expect("pub");
    }
    publisher.flush().await.expect("flush");
    for _ in 0..N {
        next(&mut plain).await;
    }
    let mut counts = Vec::new();
    let mut total = 0;
    for (_, sub) in members.iter_mut() {
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            n += 1;
        }
        total += n;
        counts.push(n);
    }
    assert_eq!(total, N, "each message to exactly one member: {counts:?}");
    assert!(
        counts.iter().all(|n| *n > 40),
        "random choice spreads the load: {counts:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn request_reply_and_no_responders() {
    let s = start(opts()).await;
    let responder = client(&s).await;
    let mut svc = responder.subscribe("svc.echo").await.expect("sub");
    responder.flush().await.expect("flush");
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let mut body = b"re:".to_vec();
                body.extend_from_slice(&m.payload);
                responder.publish(reply, body.into()).await.expect("reply");
            }
        }
    });
    let c = client(&s).await;
    for i in 0..20 {
        let r = c
            .request("svc.echo", Bytes::from(format!("q{i}")))
            .await
            .expect("reply");
        assert_eq!(&r.payload[..], format!("re:q{i}").as_bytes());
    }
    let started = std::time::Instant::now();
    let err = c
        .request("svc.nobody", Bytes::from_static(b"?"))
        .await
        .expect_err("no responders");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 comes at once, not after a timeout"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_after_max_messages() {
    let s = start(opts()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("limited").await.expect("sub");
    sub.unsubscribe_after(3).await.expect("unsub max");
    c.flush().await.expect("flush");
    for i in 0..10 {
        c.publish("limited", Bytes::from(i.to_string()))
            .await
            .expect("pub");
    }
    c.flush().await.expect("flush");
    for want in ["0", "1", "2"] {
        assert_eq!(&next(&mut sub).await.payload[..], want.as_bytes());
    }
    let rest = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(
        matches!(rest, Ok(None) | Err(_)),
        "nothing after the third message"
    );
    crate::common::eventually(|| s.num_subscriptions() == 0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn headers_pass_through() {
    let s = start(opts()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("h").await.expect("sub");
    c.flush().await.expect("flush");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Trace", "abc-123");
    headers.append("X-Multi", "one");
    headers.append("X-Multi", "two");
    c.publish_with_headers("h", headers, Bytes::from_static(b"body"))
        .await
        .expect("pub");
    let m = next(&mut sub).await;
    let h = m.headers.expect("headers arrive");
    assert_eq!(h.get("X-Trace").map(|v| v.as_str()), Some("abc-123"));
    let multi: Vec<_> = h
        .get_all("X-Multi")
        .map(|v| v.as_str().to_string())
        .collect();
    assert_eq!(multi, vec!["one", "two"]);
    assert_eq!(&m.payload[..], b"body");
    s.shutdown().await;
}

#[tokio::test]
async fn echo_off_suppresses_own_messages() {
    let s = start(opts()).await;
    let quiet_client = async_nats::ConnectOptions::new()
        .no_echo()
        .connect(s.client_url())
        .await
        .expect("connect");
    let other = client(&s).await;
    let mut own = quiet_client.subscribe("e").await.expect("sub");
    quiet_client.flush().await.expect("flush");
    quiet_client
        .publish("e", Bytes::from_static(b"mine"))
        .await
        .expect("pub");
    quiet_client.flush().await.expect("flush");
    other
        .publish("e", Bytes::from_static(b"theirs"))
        .await
        .expect("pub");
    other.flush().await.expect("flush");
    assert_eq!(&next(&mut own).await.payload[..], b"theirs");
    quiet(&mut own).await;
    s.shutdown().await;
}

#[tokio::test]
async fn clients_come_and_go() {
    let s = start(opts()).await;
    let c = client(&s).await;
    let _sub = c.subscribe("x").await.expect("sub");
    c.flush().await.expect("flush");
    // The client's first flush may be answered by the PONG of its connect-time PING, so the
    // server's view is polled rather than assumed.
    crate::common::eventually(|| s.num_clients() == 1 && s.num_subscriptions() == 1).await;
    drop(_sub);
    drop(c);
    crate::common::eventually(|| s.num_clients() == 0 && s.num_subscriptions() == 0).await;
    s.shutdown().await;
}
