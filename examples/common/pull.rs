//! How the examples' long-running services pull from their durable consumers: async-nats's
//! `messages()` with its defaults (30 s pull requests, 15 s idle heartbeats), as the seeds would;
//! on a cluster with 2 s requests (see `messages`).
//!
//! A service that dies leaves its last pull request behind; the server drops it once nobody is
//! subscribed to its reply subject (as nats-server does), so the events that arrive meanwhile
//! wait for the next instance instead of going to the dead one.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};

use super::server::Natrium;

/// How long a pull request lasts on a cluster.
pub const CLUSTER_EXPIRES: Duration = Duration::from_secs(2);

/// The consumer's messages, pulled with async-nats's default requests on a single server. On a
/// cluster a waiting pull request lives on the consumer's leader and goes with it when its node
/// does; async-nats pulls again only when its request expires (plus 5 s) or its own connection
/// comes back, not on a missed heartbeat. A service connected to a node that stays would wait
/// 35 s, so on a cluster the requests last 2 s (idle heartbeats every second).
pub async fn messages(n: &Natrium, consumer: &PullConsumer) -> anyhow::Result<pull::Stream> {
    if n.is_cluster() {
        return Ok(consumer
            .stream()
            .expires(CLUSTER_EXPIRES)
            .heartbeat(CLUSTER_EXPIRES / 2)
            .messages()
            .await?);
    }
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
