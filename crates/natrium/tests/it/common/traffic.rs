//! Shared steps of the interop tests: a Natrium server started from config text, and waiting
//! for messages to cross a route or leafnode connection (interest travels asynchronously).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use natrium::{Options, Server};

/// Starts Natrium as server `name` from config `text` (written to `dir/name.conf`), clients on
/// a random port of 127.0.0.1.
pub async fn natrium(dir: &Path, name: &str, text: &str) -> Server {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, text).expect("write config");
    let (mut o, _) = Options::from_file(&path).expect("config parses");
    o.host = "127.0.0.1".into();
    o.port = -1;
    o.server_name = Some(name.into());
    super::start(o).await
}

/// Publishes `subject` from `from` until `sub` gets a message, then lets stray probes arrive
/// and drops them.
pub async fn until_flowing(
    from: &async_nats::Client,
    subject: &str,
    sub: &mut async_nats::Subscriber,
) {
    for _ in 0..200 {
        from.publish(subject.to_string(), "probe".into())
            .await
            .expect("publish");
        from.flush().await.expect("flush");
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            drain(sub).await;
            return;
        }
    }
    panic!("{subject}: nothing crossed to the subscriber's server");
}

/// Drops what `sub` received so far (probes).
pub async fn drain(sub: &mut async_nats::Subscriber) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(150), sub.next()).await {}
}

/// The next message on `sub`, within 5 s.
pub async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

/// Whether `sub` stays silent for `ms`.
pub async fn silent(sub: &mut async_nats::Subscriber, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), sub.next())
        .await
        .is_err()
}

/// Asks `subject` from `asker` until an answer comes (the asker's reply interest crosses to
/// the responder's server asynchronously); the answer.
pub async fn request(asker: &async_nats::Client, subject: &str, body: &str) -> async_nats::Message {
    for _ in 0..50 {
        match tokio::time::timeout(
            Duration::from_millis(500),
            asker.request(subject.to_string(), body.to_string().into()),
        )
        .await
        {
            Ok(Ok(m)) => return m,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{subject}: no answer");
}

/// Answers every request on `subject` through `c` with `re: <request>`, until aborted.
pub async fn responder(c: &async_nats::Client, subject: &str) -> tokio::task::JoinHandle<()> {
    let mut svc = c.subscribe(subject.to_string()).await.expect("sub");
    c.flush().await.expect("flush");
    let c = c.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let mut body = b"re: ".to_vec();
                body.extend_from_slice(&m.payload);
                let _ = c.publish(reply, body.into()).await;
                let _ = c.flush().await;
            }
        }
    })
}
