//! How the examples' long-running services pull from their durable consumers: async-nats's
//! `messages()` with its defaults (30 s pull requests, 15 s idle heartbeats), as the seeds would.
//!
//! A service that dies leaves its last pull request behind; the server drops it once nobody is
//! subscribed to its reply subject (as nats-server does), so the events that arrive meanwhile
//! wait for the next instance instead of going to the dead one.

use async_nats::jetstream::consumer::{pull, PullConsumer};

/// The consumer's messages, pulled with async-nats's default requests.
pub async fn messages(consumer: &PullConsumer) -> anyhow::Result<pull::Stream> {
    Ok(consumer.messages().await?)
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
