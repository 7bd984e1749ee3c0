//! An async-nats connection as the seed systems open them (a name, credentials, reconnecting
//! forever), remembering what the client library reported: server errors such as permission
//! violations, disconnections and reconnections.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{ConnectOptions, Event, ServerError};
use parking_lot::Mutex;

use super::server::Natrium;
use super::wait::wait_until;

/// What the client library reported, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connected,
    Disconnected,
    /// An `-ERR` that did not close the connection (its text, as the server sent it).
    ServerError(String),
    Other(String),
}

/// One connection of one part of a system.
pub struct Conn {
    pub name: String,
    pub client: async_nats::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Credentials for `user`.
pub type Creds<'a> = Option<(&'a str, &'a str)>;

impl Conn {
    /// Connects `name` to `natrium` as `creds` (none: no authentication). Reconnects forever
    /// with a short pause, as the seeds configure their clients (`MaxReconnects(-1)`).
    pub async fn open(natrium: &Natrium, name: &str, creds: Creds<'_>) -> anyhow::Result<Conn> {
        Conn::open_url(&natrium.url(), name, creds).await
    }

    /// As `open`, to `url` (`nats://`, or `ws://` for a browser's connection; a cluster's
    /// nodes comma-separated, as the seeds' clients are given every server of the service).
    pub async fn open_url(url: &str, name: &str, creds: Creds<'_>) -> anyhow::Result<Conn> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = options(name, creds, seen.clone())
            .connect(servers)
            .await
            .with_context(|| format!("{name} connecting to {url}"))?;
        Ok(Conn {
            name: name.to_string(),
            client,
            seen,
        })
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// The server errors seen so far.
    pub fn server_errors(&self) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .filter_map(|s| match s {
                Seen::ServerError(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many times `what` was seen.
    pub fn count(&self, what: &Seen) -> usize {
        self.seen.lock().iter().filter(|s| *s == what).count()
    }

    /// Waits until the server errors include one containing `needle`.
    pub async fn wait_server_error(&self, needle: &str) -> anyhow::Result<String> {
        wait_until(Duration::from_secs(5), || {
            self.server_errors()
                .into_iter()
                .find(|e| e.contains(needle))
        })
        .await
        .with_context(|| format!("{}: no server error containing {needle:?}", self.name))
    }

    /// Waits until the connection is up (after a server restart).
    pub async fn wait_connected(&self) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(10), || {
            (self.client.connection_state() == async_nats::connection::State::Connected)
                .then_some(())
        })
        .await
        .with_context(|| format!("{} did not reconnect", self.name))
    }
}

/// The connect options every part uses.
fn options(name: &str, creds: Creds<'_>, seen: Arc<Mutex<Vec<Seen>>>) -> ConnectOptions {
    let mut o = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Duration::from_millis(50 * attempts.min(10) as u64))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                let s = match event {
                    Event::Connected => Seen::Connected,
                    Event::Disconnected => Seen::Disconnected,
                    Event::ServerError(ServerError::Other(e)) => Seen::ServerError(e),
                    Event::ServerError(e) => Seen::ServerError(e.to_string()),
                    other => Seen::Other(other.to_string()),
                };
                seen.lock().push(s);
            }
        });
    if let Some((user, pass)) = creds {
        o = o.user_and_password(user.into(), pass.into());
    }
    o
}
