//! The Natrium an example plays against: one it embeds (started from the example's own
//! configuration, on loopback with random ports and a temporary store, and restartable to stage
//! an outage), or one already running that `--url` names.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use natrium::{Options, Server};

/// Where the example's server is.
pub struct Natrium {
    url: String,
    monitor: Option<String>,
    /// The WebSocket URL (`ws://`), when the configuration has a `websocket {}` block.
    websocket: Option<String>,
    embedded: Option<Embedded>,
}

struct Embedded {
    /// `None` while stopped for an outage.
    server: Option<Server>,
    /// The options it was started with, pinned to the ports it got, for restarts.
    opts: Options,
    /// The JetStream store (removed when the example ends).
    _store: Option<tempfile::TempDir>,
}

impl Natrium {
    /// Starts an embedded server from `config` (the text of the example's `natrium.conf`,
    /// or empty for none) on top of `base`: loopback, random client and monitoring ports, and
    /// the JetStream store (when the configuration enables JetStream) in a temporary directory.
    pub async fn embedded(config: &str, base: Options) -> anyhow::Result<Natrium> {
        let mut opts = base;
        if !config.is_empty() {
            let map = natrium_config::parse_str(config).context("parsing the configuration")?;
            for w in opts.apply_config(&map)? {
                tracing::warn!("{w}");
            }
        }
        opts.host = "127.0.0.1".into();
        opts.port = -1;
        opts.http_host = String::new();
        opts.http_port = Some(-1);
        opts.https_port = None;
        if let Some(ws) = &mut opts.websocket {
            ws.host = "127.0.0.1".into();
            ws.port = -1;
        }
        let store = match &mut opts.jetstream {
            Some(js) => {
                let dir = tempfile::Builder::new()
                    .prefix("natrium-example-")
                    .tempdir()?;
                js.store_dir = dir.path().to_path_buf();
                Some(dir)
            }
            None => None,
        };
        let server = Server::start(opts.clone()).await?;
        // Restarts come back on the same ports, so clients reconnect to where they were.
        opts.port = i32::from(server.port());
        opts.http_port = server.http_port().map(i32::from);
        if let (Some(ws), Some(port)) = (&mut opts.websocket, server.websocket_port()) {
            ws.port = i32::from(port);
        }
        let url = server.client_url();
        let monitor = server.monitor_url();
        let websocket = server.websocket_url();
        Ok(Natrium {
            url,
            monitor,
            websocket,
            embedded: Some(Embedded {
                server: Some(server),
                opts,
                _store: store,
            }),
        })
    }

    /// A server already running at `url` (monitoring at `monitor`, WebSocket clients at
    /// `websocket`, if given).
    pub fn remote(url: String, monitor: Option<String>, websocket: Option<String>) -> Natrium {
        Natrium {
            url,
            monitor: monitor.map(|m| m.trim_end_matches('/').to_string()),
            websocket,
            embedded: None,
        }
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The monitoring base URL, if known.
    pub fn monitor(&self) -> Option<&str> {
        self.monitor.as_deref()
    }

    /// The WebSocket URL, if known.
    pub fn websocket(&self) -> Option<&str> {
        self.websocket.as_deref()
    }

    /// Whether this example started the server (and so can stop and restart it, and read its
    /// log).
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// The embedded server's JetStream store directory.
    pub fn store_dir(&self) -> Option<PathBuf> {
        let e = self.embedded.as_ref()?;
        e.opts.jetstream.as_ref().map(|js| js.store_dir.clone())
    }

    /// Stops the embedded server (clients see the connection drop and start reconnecting).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(e) = &mut self.embedded else {
            bail!("only an embedded server can be stopped");
        };
        if let Some(s) = e.server.take() {
            s.shutdown().await;
        }
        Ok(())
    }

    /// Starts the embedded server again, on the same ports and store; retries briefly while
    /// the old listener's port is still being released.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let Some(e) = &mut self.embedded else {
            bail!("only an embedded server can be restarted");
        };
        if e.server.is_some() {
            bail!("the server is running");
        }
        let mut last = None;
        for _ in 0..50 {
            match Server::start(e.opts.clone()).await {
                Ok(s) => {
                    e.server = Some(s);
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no start")))
        .context("restarting the embedded server")
    }

    /// Stops the embedded server, if any.
    pub async fn shutdown(mut self) {
        if let Some(e) = &mut self.embedded {
            if let Some(s) = e.server.take() {
                s.shutdown().await;
            }
        }
    }

    /// A monitoring endpoint's JSON (`path` such as `/accountz?acc=A`).
    pub async fn monitor_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let body = self.monitor_get(path).await?;
        serde_json::from_str(&body).with_context(|| format!("{path} is not JSON"))
    }

    /// The value of the Prometheus series `name` whose labels include every `labels` pair, from
    /// `/metrics`; `None` when there is no such series.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<f64>> {
        let text = self.monitor_get("/metrics").await?;
        Ok(find_metric(&text, name, labels))
    }

    async fn monitor_get(&self, path: &str) -> anyhow::Result<String> {
        let Some(base) = &self.monitor else {
            bail!("no monitoring URL (give --monitor)");
        };
        let url = format!("{base}{path}");
        let r = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !r.status().is_success() {
            bail!("GET {url}: {}", r.status());
        }
        Ok(r.text().await?)
    }
}

/// Finds a sample in the Prometheus text format: `name{a="x",b="y"} value`.
pub fn find_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}
