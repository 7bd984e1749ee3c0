//! A cluster of `natrium` processes on 127.0.0.1: configuration files, start and restart (random
//! ports read back from the ports file), kill -9, SIGSTOP/SIGCONT, graceful stop, simulated power
//! loss, logs per run of each node, and the proxies (`Net`) their routes and clients go through.
//!
//! Only processes started here are ever signalled, by the pid of a child not yet reaped; `Drop`
//! kills and reaps every one. The directory (configs, stores, logs) is removed on drop unless
//! kept (`keep`, or a panicking thread: it is then printed for the report).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::Net;
use crate::powerloss::{self, Applied, PowerLossError};

/// What a cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// 1 to 5 nodes (one node runs without a cluster block).
    pub nodes: usize,
    /// The `natrium` binary.
    pub binary: PathBuf,
    pub jetstream: bool,
    /// Run every node under the power-loss shim (see `powerloss`).
    pub powerloss: bool,
    /// Extra lines for every node's configuration (top level).
    pub extra: String,
    /// Where to put everything; a fresh temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// Keep the directory after the cluster is dropped.
    pub keep: bool,
    /// How long a node may take to start (recovery included).
    pub start_timeout: Duration,
    /// Under the power-loss shim, every sync takes this much longer (a slow disk).
    pub slow_sync: Option<Duration>,
}

impl ClusterConfig {
    pub fn new(nodes: usize, binary: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            nodes,
            binary: binary.into(),
            jetstream: true,
            powerloss: false,
            extra: String::new(),
            dir: None,
            keep: false,
            start_timeout: Duration::from_secs(30),
            slow_sync: None,
        }
    }
}

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("node {node} did not start within {secs} s: {detail}")]
    StartTimeout {
        node: String,
        secs: u64,
        detail: String,
    },
    #[error("node {node} exited during start ({status}): {detail}")]
    Exited {
        node: String,
        status: String,
        detail: String,
    },
    #[error("node {0} is not running")]
    NotRunning(String),
    #[error("node {0} is already running")]
    AlreadyRunning(String),
    #[error(transparent)]
    PowerLoss(#[from] PowerLossError),
    #[error("{0}")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Io(what, e)
}

/// The ports a running node listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub client: SocketAddr,
    pub route: Option<SocketAddr>,
    pub monitor: Option<SocketAddr>,
}

/// A node's process state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Down,
    Running,
    Paused,
}

/// One `natrium` node: its files and, while up, its process.
pub struct Node {
    pub index: usize,
    pub name: String,
    dir: PathBuf,
    store: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    state: NodeState,
    /// How many times the node was started.
    runs: u32,
    ports: Option<Ports>,
}

impl Node {
    pub fn state(&self) -> NodeState {
        self.state
    }

    pub fn ports(&self) -> Option<Ports> {
        self.ports
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The node's directory: `natrium.conf`, `store/`, `logs/`, `ports/`, `powerloss/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// JetStream's store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join("logs").join(format!("natrium.{run}.log"))
    }

    fn stderr_path(&self, run: u32) -> PathBuf {
        self.dir.join("logs").join(format!("stderr.{run}.log"))
    }

    fn journal(&self) -> PathBuf {
        self.dir
            .join("powerloss")
            .join(format!("journal.{}", self.runs))
    }

    /// The server log of the current (or last) run.
    pub fn log(&self) -> PathBuf {
        self.log_path(self.runs)
    }

    /// Every log file the node wrote, server logs and captured stderr, oldest run first.
    pub fn logs(&self) -> Vec<PathBuf> {
        (1..=self.runs)
            .flat_map(|r| [self.log_path(r), self.stderr_path(r)])
            .filter(|p| p.exists())
            .collect()
    }

    /// Sends `sig` to the node's process, which must not have been reaped.
    fn signal(&self, sig: i32) -> Result<(), ClusterError> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| ClusterError::NotRunning(self.name.clone()))?;
        // SAFETY: kill(2) on the pid of our own child, which is not reaped until `wait`.
        if unsafe { libc::kill(child.id() as i32, sig) } != 0 {
            return Err(io(format!("signal {sig} to {}", self.name))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill_now(&mut self) -> Result<(), ClusterError> {
        self.signal(libc::SIGKILL)?;
        if let Some(mut c) = self.child.take() {
            c.wait().map_err(io(format!("wait for {}", self.name)))?;
        }
        self.state = NodeState::Down;
        self.ports = None;
        Ok(())
    }

    fn tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in [self.log_path(self.runs), self.stderr_path(self.runs)] {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            let _ = writeln!(out, "--- {} ---", p.display());
            for l in &all[from..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// A running cluster. Build with `Cluster::start`.
pub struct Cluster {
    cfg: ClusterConfig,
    root: PathBuf,
    /// Removes the directory on drop unless kept.
    temp: Option<tempfile::TempDir>,
    pub net: Net,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Writes every node's configuration and starts them all. Must run in a tokio runtime (the
    /// proxies are tasks of it).
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        let mut c = Self::create(cfg).await?;
        c.start_all().await?;
        Ok(c)
    }

    /// Writes the configuration without starting any node.
    pub async fn create(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        assert!((1..=5).contains(&cfg.nodes), "1 to 5 nodes");
        let (root, temp) = match &cfg.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(d.display().to_string()))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("natrium-faults-")
                    .tempdir()
                    .map_err(io("tempdir"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let root = root
            .canonicalize()
            .map_err(io(root.display().to_string()))?;
        let net = Net::bind(cfg.nodes).await.map_err(io("bind proxies"))?;
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let name = format!("n{}", i + 1);
            let dir = root.join(&name);
            for sub in ["store", "logs", "ports", "powerloss"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(io(dir.display().to_string()))?;
            }
            let conf = dir.join("natrium.conf");
            let node = Node {
                index: i,
                name,
                store: dir.join("store"),
                dir,
                conf,
                child: None,
                state: NodeState::Down,
                runs: 0,
                ports: None,
            };
            std::fs::write(&node.conf, config_text(&cfg, &node, &net))
                .map_err(io(node.conf.display().to_string()))?;
            nodes.push(node);
        }
        Ok(Cluster {
            cfg,
            root,
            temp,
            net,
            nodes,
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Keeps the directory after drop (for a report).
    pub fn keep(&mut self) {
        self.cfg.keep = true;
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The client URLs of every node (through their client proxies).
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.nodes.len())
            .map(|i| format!("nats://{}", self.net.client(i).addr()))
            .collect()
    }

    /// Node `i`'s client URL (through its proxy).
    pub fn client_url(&self, i: usize) -> String {
        format!("nats://{}", self.net.client(i).addr())
    }

    /// Starts every node that is down, all at once, and waits for each to be ready.
    pub async fn start_all(&mut self) -> Result<(), ClusterError> {
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state == NodeState::Down)
            .collect();
        for &i in &down {
            self.spawn(i)?;
        }
        for &i in &down {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// Starts node `i` and waits until it is ready.
    pub async fn start_node(&mut self, i: usize) -> Result<(), ClusterError> {
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let cfg = &self.cfg;
        let node = &mut self.nodes[i];
        if node.state != NodeState::Down {
            return Err(ClusterError::AlreadyRunning(node.name.clone()));
        }
        node.runs += 1;
        // Stale ports files of earlier runs would be mistaken for this one's.
        if let Ok(rd) = std::fs::read_dir(node.dir.join("ports")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let stderr = std::fs::File::create(node.stderr_path(node.runs))
            .map_err(io(format!("{} stderr", node.name)))?;
        let mut cmd = Command::new(&cfg.binary);
        cmd.arg("-c")
            .arg(&node.conf)
            .arg("--ports_file_dir")
            .arg(node.dir.join("ports"))
            .arg("-l")
            .arg(node.log_path(node.runs))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if cfg.powerloss {
            for (k, v) in powerloss::env(&node.store, &node.journal()) {
                cmd.env(k, v);
            }
            if let Some(d) = cfg.slow_sync {
                cmd.env("NATRIUM_POWERLOSS_SYNC_DELAY_MS", d.as_millis().to_string());
            }
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("spawn {}", cfg.binary.display())))?;
        node.child = Some(child);
        node.state = NodeState::Running;
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), ClusterError> {
        let start = Instant::now();
        let timeout = self.cfg.start_timeout;
        loop {
            let node = &mut self.nodes[i];
            let child = node
                .child
                .as_mut()
                .ok_or_else(|| ClusterError::NotRunning(node.name.clone()))?;
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                node.state = NodeState::Down;
                return Err(ClusterError::Exited {
                    node: node.name.clone(),
                    status: status.to_string(),
                    detail: node.tail(20),
                });
            }
            let found = ports_file(&node.dir.join("ports"), child.id());
            if let Some(ports) = found
                .and_then(|f| std::fs::read(f).ok())
                .and_then(|b| parse_ports(&b))
            {
                node.ports = Some(ports);
                if let Some(route) = ports.route {
                    self.net.node_started(i, route, ports.client);
                } else {
                    self.net.client(i).set_target(Some(ports.client));
                }
                return Ok(());
            }
            if start.elapsed() > timeout {
                let detail = node.tail(20);
                let name = node.name.clone();
                let _ = node.kill_now();
                return Err(ClusterError::StartTimeout {
                    node: name,
                    secs: timeout.as_secs(),
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9 of node `i` (the page cache survives: nothing written is lost).
    pub fn kill(&mut self, i: usize) -> Result<(), ClusterError> {
        self.nodes[i].kill_now()?;
        self.net.node_stopped(i);
        powerloss::discard(&self.nodes[i].journal());
        Ok(())
    }

    /// Node `i` loses power: kill -9, then every change its process had not fsynced is undone.
    /// Needs `powerloss` in the configuration.
    pub fn power_loss(&mut self, i: usize) -> Result<Applied, ClusterError> {
        assert!(
            self.cfg.powerloss,
            "power loss needs ClusterConfig::powerloss"
        );
        self.nodes[i].kill_now()?;
        self.net.node_stopped(i);
        let node = &self.nodes[i];
        let applied = powerloss::apply(&node.journal(), &node.store)?;
        // Kept for the report (`natrium-faults journal <file>` prints it), the last one only.
        let kept = node.dir.join("powerloss").join("last-applied");
        let _ = std::fs::rename(node.journal(), &kept);
        powerloss::discard(&node.journal());
        Ok(applied)
    }

    /// Every running node loses power at the same instant: all are stopped (SIGSTOP) first, then
    /// killed, then their unsynced changes undone.
    pub fn power_loss_all(&mut self) -> Result<Vec<Applied>, ClusterError> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state != NodeState::Down)
            .collect();
        for &i in &up {
            self.nodes[i].signal(libc::SIGSTOP)?;
        }
        let mut out = Vec::new();
        for &i in &up {
            out.push(self.power_loss(i)?);
        }
        Ok(out)
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&mut self, i: usize) -> Result<(), ClusterError> {
        self.nodes[i].signal(libc::SIGSTOP)?;
        self.nodes[i].state = NodeState::Paused;
        Ok(())
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self, i: usize) -> Result<(), ClusterError> {
        self.nodes[i].signal(libc::SIGCONT)?;
        self.nodes[i].state = NodeState::Running;
        Ok(())
    }

    /// SIGTERM and wait (bounded; then SIGKILL). A clean stop loses nothing.
    pub async fn stop(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.nodes[i].state == NodeState::Paused {
            self.resume(i)?;
        }
        self.nodes[i].signal(libc::SIGTERM)?;
        let start = Instant::now();
        loop {
            let node = &mut self.nodes[i];
            let exited = node
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited {
                node.child = None;
                node.state = NodeState::Down;
                node.ports = None;
                break;
            }
            if start.elapsed() > Duration::from_secs(15) {
                node.kill_now()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.net.node_stopped(i);
        powerloss::discard(&self.nodes[i].journal());
        Ok(())
    }

    /// kill -9 and start again.
    pub async fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.nodes[i].state != NodeState::Down {
            self.kill(i)?;
        }
        self.start_node(i).await
    }

    /// GET `path` from node `i`'s monitoring port; the body as JSON.
    pub async fn monitor(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let addr = self.nodes[i].ports?.monitor?;
        let body = http_get(addr, path).await?;
        serde_json::from_slice(&body).ok()
    }

    /// Waits until every running node has a route to every other running node.
    pub async fn wait_routes(&self, timeout: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state == NodeState::Running)
            .collect();
        let want = up.len().saturating_sub(1) as u64;
        loop {
            let mut ok = true;
            for &i in &up {
                // Peers, not connections: with pooled routes `num_routes` counts every
                // connection (as nats-server 2.10 does), so count the distinct remote ids.
                let n = self.monitor(i, "/routez").await.and_then(|v| {
                    let ids: std::collections::BTreeSet<String> = v["routes"]
                        .as_array()?
                        .iter()
                        .filter_map(|r| r["remote_id"].as_str().map(str::to_owned))
                        .collect();
                    Some(ids.len() as u64)
                });
                if n != Some(want) {
                    ok = false;
                    break;
                }
            }
            if ok {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout(format!(
                    "routes did not form within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lines of every node's logs that show a crash or a fatal error (`panicked`, `[FTL]`).
    pub fn crashes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for p in n.logs() {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for l in text.lines() {
                    if l.contains("panicked") || l.contains("[FTL]") {
                        out.push(format!("{}: {}", p.display(), l));
                    }
                }
            }
        }
        out
    }

    /// Lines of every node's logs containing `needle`.
    pub fn grep_logs(&self, needle: &str) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for p in n.logs() {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                out.extend(
                    text.lines()
                        .filter(|l| l.contains(needle))
                        .map(|l| format!("{}: {l}", n.name)),
                );
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_some() {
                let _ = n.kill_now();
            }
        }
        if self.cfg.keep || std::thread::panicking() {
            if let Some(t) = self.temp.take() {
                let p = t.keep();
                eprintln!("natrium-faults: cluster files kept in {}", p.display());
            }
        }
    }
}

/// A node's configuration file.
fn config_text(cfg: &ClusterConfig, node: &Node, net: &Net) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "server_name: {}", node.name);
    let _ = writeln!(s, "host: 127.0.0.1\nport: -1\nhttp_port: -1");
    if cfg.jetstream {
        let _ = writeln!(
            s,
            "jetstream {{\n  store_dir: {:?}\n}}",
            node.store.display().to_string()
        );
    }
    if cfg.nodes > 1 {
        let routes: Vec<String> = net
            .route_urls(node.index)
            .iter()
            .map(|u| format!("{u:?}"))
            .collect();
        // Routes go only through the proxies: the advertised address is port 1 on loopback,
        // where nothing listens, so a peer learned by gossip is never dialled directly; clients
        // are not told the nodes' own addresses either.
        let _ = writeln!(
            s,
            "cluster {{\n  name: faults\n  host: 127.0.0.1\n  port: -1\n  advertise: \"127.0.0.1:1\"\n  no_advertise: true\n  routes: [{}]\n}}",
            routes.join(", ")
        );
    }
    s.push_str(&cfg.extra);
    s.push('\n');
    s
}

/// The ports file of process `pid` in `dir`: `<binary name>_<pid>.ports` (the name follows the
/// binary's file name, so a copy of another build writes its own).
fn ports_file(dir: &Path, pid: u32) -> Option<PathBuf> {
    let tail = format!("_{pid}.ports");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .take(1000)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&tail))
        })
}

/// Reads natrium's ports file: `{"nats": [url], "monitoring": [url], "cluster": [url]}`.
fn parse_ports(b: &[u8]) -> Option<Ports> {
    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
    let addr = |key: &str| -> Option<SocketAddr> {
        let url = v[key].as_array()?.first()?.as_str()?;
        let rest = url.split("://").nth(1)?;
        rest.trim_end_matches('/').parse().ok()
    };
    Some(Ports {
        client: addr("nats")?,
        route: addr("cluster"),
        monitor: addr("monitoring"),
    })
}

/// A minimal HTTP/1.0 GET on loopback (bounded by 5 s); the body on a 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.ok()?;
        let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&all[..split]).ok()?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return None;
        }
        Some(all[split + 4..].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// The `natrium` binary: `$NATRIUM_BIN`, or `natrium` next to the running executable (or one
/// directory up, from `target/*/deps`).
pub fn natrium_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATRIUM_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("natrium"), dir.parent()?.join("natrium")]
        .into_iter()
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ports_file() {
        let p = parse_ports(
            br#"{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"],"cluster":["nats-route://127.0.0.1:6222"]}"#,
        )
        .unwrap();
        assert_eq!(p.client.port(), 4222);
        assert_eq!(p.monitor.unwrap().port(), 8222);
        assert_eq!(p.route.unwrap().port(), 6222);
        assert!(parse_ports(b"{}").is_none());
    }

    #[test]
    fn finds_the_ports_file_of_a_pid_whatever_the_binary_is_called() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("natrium_12.ports"), b"{}").unwrap();
        std::fs::write(dir.path().join("natrium-copy_123.ports"), b"{}").unwrap();
        let f = ports_file(dir.path(), 123).unwrap();
        assert_eq!(f.file_name().unwrap(), "natrium-copy_123.ports");
        assert_eq!(
            ports_file(dir.path(), 12).unwrap().file_name().unwrap(),
            "natrium_12.ports"
        );
        assert!(ports_file(dir.path(), 1).is_none());
    }
}
