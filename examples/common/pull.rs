//! How the examples' long-running services pull from their durable consumers.
//!
//! A service that dies leaves its last pull request behind. nats-server drops a waiting pull
//! request once nobody is subscribed to its reply subject; Natrium (today) keeps delivering to
//! it until it expires, so events pulled by a dead instance count as delivered, wait `ack_wait`,
//! and are redelivered to the same stale request again, up to `max_deliver` (and then
//! dead-lettered). Short pull requests bound that: a stale one lives at most `EXPIRES`. See
//! examples/README.md, "Gaps found".

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};

/// How long one pull request waits on the server.
pub const EXPIRES: Duration = Duration::from_secs(1);

/// The consumer's messages, pulled with short requests.
pub async fn messages(consumer: &PullConsumer) -> anyhow::Result<pull::Stream> {
    Ok(consumer
        .stream()
        .expires(EXPIRES)
        .heartbeat(EXPIRES / 3)
        .messages()
        .await?)
}

/// The next message of a consumer's stream; errors the client library reports on the way
/// (a missed heartbeat, a reconnect) are printed and skipped, as a long-running service does.
/// `None` when the stream ends.
pub async fn next<T, E, S>(who: &str, messages: &mut S) -> Option<T>
where
    E: std::fmt::Display,
    S: futures::Stream<Item = Result<T, E>> + Unpin,
{
    use futures::StreamExt;
    loop {
        match messages.next().await? {
            Ok(m) => return Some(m),
            Err(e) => eprintln!("[{who}] {e}"),
        }
    }
}
