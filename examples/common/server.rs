//! The Natrium an example plays against: one it embeds or an embedded cluster of several (started
//! from the example's own configuration, on loopback with random ports and temporary stores, and
//! restartable to stage an outage of the service or of one node), or one already running.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use natrium::options::RouteUrl;
use natrium::{Options, Server};

use super::wait::poll;

/// The cluster's name when the configuration has none.
pub const CLUSTER_NAME: &str = "natrium-examples";
/// How long a cluster may take to form its JetStream meta group (after a start or a restart).
const META_WITHIN: Duration = Duration::from_secs(30);

/// Where the example's server (or cluster) is.
pub struct Natrium {
    /// Every node's client URL.
    urls: Vec<String>,
    /// Every node's monitoring base URL (empty: not known).
    monitors: Vec<String>,
    /// Every node's WebSocket URL (`ws://`), when the configuration has a `websocket {}` block.
    websockets: Vec<String>,
    /// How many servers the service is (1: a single server).
    nodes: usize,
    embedded: Option<Embedded>,
}

struct Embedded {
    nodes: Vec<Node>,
    /// The JetStream stores, a directory per node (removed when the example ends).
    _store: Option<tempfile::TempDir>,
}

/// One embedded server.
struct Node {
    /// `None` while stopped for an outage.
    server: Option<Server>,
    /// The options it was started with, pinned to the ports it got (and, in a cluster, routed to
    /// every other node), for restarts.
    opts: Options,
}

impl Natrium {
    /// Starts an embedded server from `config` (the text of the example's `natrium.conf`,
    /// or empty for none) on top of `base`: loopback, random client and monitoring ports, and
    /// the JetStream store (when the configuration enables JetStream) in a temporary directory.
    pub async fn embedded(config: &str, base: Options) -> anyhow::Result<Natrium> {
        let (opts, store) = loopback(config, base)?;
        let server = Server::start(opts.clone()).await?;
        Natrium::from_nodes(vec![pinned(server, opts)], store, 1)
    }

    /// Starts `nodes` embedded servers `n1..` as one cluster: each from `config` over `base` as
    /// `embedded` starts one, plus a cluster block (loopback, a random port; the others route
    /// to n1, and once all run each is pinned to route to every other one, as a StatefulSet's
    /// configuration lists its peers) and a store directory of its own. Waits (bounded) until
    /// every node sees the same JetStream meta leader and all `nodes` members.
    pub async fn embedded_cluster(
        config: &str,
        base: Options,
        nodes: usize,
    ) -> anyhow::Result<Natrium> {
        anyhow::ensure!(nodes >= 1, "a cluster needs at least one node");
        let (opts, store) = loopback(config, base)?;
        let mut started: Vec<Node> = Vec::new();
        let mut n1_route = None;
        for i in 1..=nodes {
            let mut o = opts.clone();
            o.server_name = Some(format!("n{i}"));
            let mut cluster = o.cluster.take().unwrap_or_default();
            cluster.name = cluster.name.or_else(|| Some(CLUSTER_NAME.into()));
            cluster.host = "127.0.0.1".into();
            cluster.port = -1;
            cluster.routes = n1_route.iter().cloned().collect();
            o.cluster = Some(cluster);
            if let (Some(js), Some(dir)) = (&mut o.jetstream, &store) {
                js.store_dir = dir.path().join(format!("n{i}"));
            }
            let server = Server::start(o.clone())
                .await
                .with_context(|| format!("starting node n{i}"))?;
            if n1_route.is_none() {
                let port = server.cluster_port().context("n1 has no cluster port")?;
                n1_route = Some(route(port)?);
            }
            started.push(pinned(server, o));
        }
        // Restarts route every node to all the others, so any one can come back first.
        let ports: Vec<u16> = started
            .iter()
            .map(|n| n.opts.cluster.as_ref().map_or(0, |c| c.port as u16))
            .collect();
        for (i, node) in started.iter_mut().enumerate() {
            let routes = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| route(*p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(c) = &mut node.opts.cluster {
                c.routes = routes;
            }
        }
        let n = Natrium::from_nodes(started, store, nodes)?;
        n.wait_meta(nodes).await?;
        Ok(n)
    }

    fn from_nodes(
        nodes: Vec<Node>,
        store: Option<tempfile::TempDir>,
        size: usize,
    ) -> anyhow::Result<Natrium> {
        let running = || nodes.iter().filter_map(|n| n.server.as_ref());
        Ok(Natrium {
            urls: running().map(Server::client_url).collect(),
            monitors: running().filter_map(Server::monitor_url).collect(),
            websockets: running().filter_map(Server::websocket_url).collect(),
            nodes: size,
            embedded: Some(Embedded {
                nodes,
                _store: store,
            }),
        })
    }

    /// A server already running at `url` (monitoring at `monitor`, WebSocket clients at
    /// `websocket`, if given); each may be a comma-separated list, one URL per node of a
    /// cluster of `nodes` servers.
    pub fn remote(
        url: String,
        monitor: Option<String>,
        websocket: Option<String>,
        nodes: usize,
    ) -> Natrium {
        let list = |s: Option<String>| -> Vec<String> {
            s.map(|s| {
                s.split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_string())
                    .filter(|u| !u.is_empty())
                    .collect()
            })
            .unwrap_or_default()
        };
        Natrium {
            urls: list(Some(url)),
            monitors: list(monitor),
            websockets: list(websocket),
            nodes: nodes.max(1),
            embedded: None,
        }
    }

    /// The client URL: every node's, comma-separated (as `nats --server` takes them; `Conn`
    /// gives async-nats the list, so losing a node is a reconnect to another).
    pub fn url(&self) -> String {
        self.urls.join(",")
    }

    /// Every node's client URL.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The first node's monitoring base URL, if known.
    pub fn monitor(&self) -> Option<&str> {
        self.monitors.first().map(String::as_str)
    }

    /// Every node's monitoring base URL (empty when not known).
    pub fn monitors(&self) -> &[String] {
        &self.monitors
    }

    /// The WebSocket URLs (every node's, comma-separated), if known.
    pub fn websocket(&self) -> Option<String> {
        (!self.websockets.is_empty()).then(|| self.websockets.join(","))
    }

    /// How many servers the service is: 1 for a single server, the cluster's size otherwise.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Whether the service is a cluster of several servers.
    pub fn is_cluster(&self) -> bool {
        self.nodes > 1
    }

    /// The replicas a stream or bucket asks for when its seed says nothing: three on a cluster
    /// of three or more (what a 3-node Kubernetes deployment configures), else one per node.
    pub fn replicas(&self) -> usize {
        self.nodes.min(3)
    }

    /// Whether this example started the server (and so can stop and restart it, and read its
    /// log).
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// The embedded (first) server's JetStream store directory.
    pub fn store_dir(&self) -> Option<PathBuf> {
        let e = self.embedded.as_ref()?;
        e.nodes[0]
            .opts
            .jetstream
            .as_ref()
            .map(|js| js.store_dir.clone())
    }

    /// The server name of embedded node `i` (0-based), if it has one (`n1..` in a cluster).
    pub fn node_name(&self, i: usize) -> Option<String> {
        self.embedded
            .as_ref()?
            .nodes
            .get(i)?
            .opts
            .server_name
            .clone()
    }

    /// The index of the embedded node named `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        let e = self.embedded.as_ref()?;
        e.nodes
            .iter()
            .position(|n| n.opts.server_name.as_deref() == Some(name))
    }

    /// Whether embedded node `i` is running.
    pub fn node_running(&self, i: usize) -> bool {
        self.embedded
            .as_ref()
            .and_then(|e| e.nodes.get(i))
            .is_some_and(|n| n.server.is_some())
    }

    /// Stops the embedded service: every node (clients see the connection drop and start
    /// reconnecting).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(e) = &mut self.embedded else {
            bail!("only an embedded server can be stopped");
        };
        for node in &mut e.nodes {
            if let Some(s) = node.server.take() {
                s.shutdown().await;
            }
        }
        Ok(())
    }

    /// Starts the embedded service again (every node), on the same ports and stores; in a
    /// cluster, waits until the meta group has formed again.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let Some(e) = &self.embedded else {
            bail!("only an embedded server can be restarted");
        };
        if e.nodes.iter().any(|n| n.server.is_some()) {
            bail!("the server is running");
        }
        for i in 0..e.nodes.len() {
            self.start_one(i).await?;
        }
        if self.is_cluster() {
            self.wait_meta(self.nodes).await?;
        }
        Ok(())
    }

    /// Stops embedded node `i` (0-based) of the cluster: its clients reconnect to the others.
    pub async fn stop_node(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(e) = &mut self.embedded else {
            bail!("only an embedded server can be stopped");
        };
        let node = e.nodes.get_mut(i).context("no such node")?;
        match node.server.take() {
            Some(s) => {
                s.shutdown().await;
                Ok(())
            }
            None => bail!("node {i} is not running"),
        }
    }

    /// Starts embedded node `i` again on its ports and store, and waits until it is back in
    /// the meta group.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_one(i).await?;
        if self.is_cluster() {
            self.wait_meta(self.nodes).await?;
        }
        Ok(())
    }

    /// Starts stopped node `i`; retries briefly while the old listeners' ports are released.
    async fn start_one(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(e) = &mut self.embedded else {
            bail!("only an embedded server can be restarted");
        };
        let node = e.nodes.get_mut(i).context("no such node")?;
        if node.server.is_some() {
            bail!("node {i} is running");
        }
        let mut last = None;
        for _ in 0..50 {
            match Server::start(node.opts.clone()).await {
                Ok(s) => {
                    node.server = Some(s);
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no start")))
        .with_context(|| format!("restarting embedded node {i}"))
    }

    /// Waits until every running node sees the same meta leader and `members` members.
    async fn wait_meta(&self, members: usize) -> anyhow::Result<()> {
        let Some(e) = &self.embedded else {
            return Ok(());
        };
        let formed = poll(META_WITHIN, || async {
            let views: Vec<_> = e
                .nodes
                .iter()
                .filter_map(|n| n.server.as_ref())
                .map(Server::jetstream_meta)
                .collect();
            let leader = views
                .first()
                .and_then(|v| v.as_ref())
                .and_then(|v| v.leader.clone());
            let all = leader.is_some()
                && views.iter().all(|v| {
                    v.as_ref()
                        .is_some_and(|v| v.leader == leader && v.members.len() == members)
                });
            Ok(all.then_some(()))
        })
        .await?;
        formed.with_context(|| {
            format!("the JetStream meta group of {members} did not form within {META_WITHIN:?}")
        })?;
        // Ready as a Kubernetes readiness probe sees it: every node's /healthz says ok.
        let ready = poll(META_WITHIN, || async {
            for i in 0..self.monitors.len() {
                if !self.node_running(i) {
                    continue;
                }
                let ok = reqwest::Client::new()
                    .get(format!("{}/healthz", self.monitors[i]))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
        ready.with_context(|| format!("/healthz not ok on every node within {META_WITHIN:?}"))
    }

    /// On an embedded cluster, waits (at most 10 s) until every running node has interest in
    /// `subject` in `account`: a subscription made on one node reaches the others over the
    /// routes a moment later, and a core message published meanwhile on another node is not
    /// delivered to it (as with nats-server). A single or remote server: returns at once.
    pub async fn wait_interest(&self, account: &str, subject: &str) -> anyhow::Result<()> {
        let Some(e) = self.embedded.as_ref().filter(|_| self.is_cluster()) else {
            return Ok(());
        };
        let everywhere = poll(Duration::from_secs(10), || async {
            let all = e.nodes.iter().filter_map(|n| n.server.as_ref()).all(|s| {
                s.internal_client(account)
                    .is_ok_and(|c| c.has_interest(subject))
            });
            Ok(all.then_some(()))
        })
        .await?;
        everywhere.with_context(|| {
            format!("{subject} (account {account}) not known on every node within 10 s")
        })
    }

    /// Stops the embedded servers, if any.
    pub async fn shutdown(mut self) {
        if let Some(e) = &mut self.embedded {
            for node in &mut e.nodes {
                if let Some(s) = node.server.take() {
                    s.shutdown().await;
                }
            }
        }
    }

    /// A monitoring endpoint's JSON (`path` such as `/accountz?acc=A`) from the first node.
    pub async fn monitor_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.monitor_json_on(0, path).await
    }

    /// A monitoring endpoint's JSON from node `i` (0-based).
    pub async fn monitor_json_on(&self, i: usize, path: &str) -> anyhow::Result<serde_json::Value> {
        let body = self.monitor_get(i, path).await?;
        serde_json::from_str(&body).with_context(|| format!("{path} is not JSON"))
    }

    /// The value of the Prometheus series `name` whose labels include every `labels` pair, from
    /// the first node's `/metrics`; `None` when there is no such series.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<f64>> {
        self.metric_on(0, name, labels).await
    }

    /// As `metric`, from node `i`'s `/metrics`.
    pub async fn metric_on(
        &self,
        i: usize,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Option<f64>> {
        let text = self.monitor_get(i, "/metrics").await?;
        Ok(find_metric(&text, name, labels))
    }

    /// The series summed over every node (as `sum()` over a cluster's instances in Prometheus),
    /// for counters each server keeps of its own clients; `None` when no node has it.
    pub async fn metric_sum(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Option<f64>> {
        let mut sum = None;
        for i in 0..self.monitors.len() {
            if let Some(v) = self.metric_on(i, name, labels).await? {
                *sum.get_or_insert(0.0) += v;
            }
        }
        Ok(sum)
    }

    /// The node that reports `stream` (of the account `js` works in) with its consumers: its
    /// leader's on a cluster (a replicated stream's consumers run on its leader), else 0.
    pub async fn stream_node(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> anyhow::Result<usize> {
        if !self.is_cluster() {
            return Ok(0);
        }
        let info = js.get_stream(stream).await?.get_info().await?;
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .with_context(|| format!("{stream} has no leader"))?;
        self.monitor_of(&leader)
            .await?
            .with_context(|| format!("no monitoring URL for {leader}"))
    }

    /// The index of the node whose server name is `name`, asked of each node's `/varz`.
    pub async fn monitor_of(&self, name: &str) -> anyhow::Result<Option<usize>> {
        for i in 0..self.monitors.len() {
            let v = self.monitor_json_on(i, "/varz").await?;
            if v["server_name"] == name {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    async fn monitor_get(&self, i: usize, path: &str) -> anyhow::Result<String> {
        let Some(base) = self.monitors.get(i) else {
            bail!("no monitoring URL for node {i} (give --monitor)");
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

/// The options of an embedded server from `config` over `base`, on loopback with random ports,
/// and the temporary directory its JetStream store goes in (when JetStream is on).
fn loopback(config: &str, base: Options) -> anyhow::Result<(Options, Option<tempfile::TempDir>)> {
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
    Ok((opts, store))
}

/// A started node, its options pinned to the ports it got: restarts come back on the same
/// ports, so clients reconnect to where they were.
fn pinned(server: Server, mut opts: Options) -> Node {
    opts.port = i32::from(server.port());
    opts.http_port = server.http_port().map(i32::from);
    if let (Some(ws), Some(port)) = (&mut opts.websocket, server.websocket_port()) {
        ws.port = i32::from(port);
    }
    if let (Some(c), Some(port)) = (&mut opts.cluster, server.cluster_port()) {
        c.port = i32::from(port);
    }
    Node {
        server: Some(server),
        opts,
    }
}

fn route(port: u16) -> anyhow::Result<RouteUrl> {
    RouteUrl::parse(&format!("nats://127.0.0.1:{port}")).map_err(|e| anyhow::anyhow!(e))
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
