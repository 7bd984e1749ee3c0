//! nats-server as a child process of a test (mixed clusters, leafnode interop): Debian's (on
//! PATH, 2.9.10) and the modern ones `NATRIUM_NATS_SERVER_MODERN` names, each run from a config
//! file on random ports read back from its ports file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The modern nats-server binaries to test against: paths separated as in PATH (`:`).
pub const MODERN_ENV: &str = "NATRIUM_NATS_SERVER_MODERN";

/// One nats-server binary and the version it reports.
#[derive(Debug, Clone)]
pub struct GoBin {
    pub path: PathBuf,
    /// `major.minor.patch`, from `--version`.
    pub version: String,
}

impl GoBin {
    /// Asks `path` for its version; `None` when it does not run.
    fn probe(path: &Path) -> Option<GoBin> {
        let out = Command::new(path)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        // "nats-server: v2.12.8"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.trim().rsplit('v').next()?.trim().to_string();
        Some(GoBin {
            path: path.to_path_buf(),
            version,
        })
    }

    /// (major, minor) of its version.
    pub fn minor(&self) -> (u32, u32) {
        let mut it = self.version.split('.').map(|p| p.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }

    /// Whether it is nats-server `major.minor` or later.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.minor() >= (major, minor)
    }
}

/// Every nats-server to test `what` against: Debian's when installed (a panic when
/// `NATRIUM_REQUIRE_NATS_SERVER` says it must be), then each one `NATRIUM_NATS_SERVER_MODERN`
/// names (a panic when a named one does not run, or when `NATRIUM_REQUIRE_NATS_SERVER_MODERN`
/// is set and none is named). What is missing is skipped with a notice.
pub fn nats_servers(what: &str) -> Vec<GoBin> {
    let mut v = Vec::new();
    match GoBin::probe(Path::new("nats-server")) {
        Some(b) => v.push(b),
        None if std::env::var_os("NATRIUM_REQUIRE_NATS_SERVER").is_some() => {
            panic!("nats-server is required (NATRIUM_REQUIRE_NATS_SERVER) but not installed")
        }
        None => eprintln!("notice: nats-server not installed; skipping {what} with it"),
    }
    match std::env::var_os(MODERN_ENV) {
        Some(paths) => {
            for p in std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()) {
                let b = GoBin::probe(&p)
                    .unwrap_or_else(|| panic!("{MODERN_ENV}: {} does not run", p.display()));
                v.push(b);
            }
        }
        None if std::env::var_os("NATRIUM_REQUIRE_NATS_SERVER_MODERN").is_some() => {
            panic!("{MODERN_ENV} is required (NATRIUM_REQUIRE_NATS_SERVER_MODERN) but not set")
        }
        None => eprintln!("notice: {MODERN_ENV} not set; skipping {what} with modern nats-server"),
    }
    v
}

/// A nats-server process, killed when dropped.
pub struct GoServer {
    pub child: Child,
    pub client_port: u16,
    /// The route listener, when clustered.
    pub cluster_port: Option<u16>,
    /// The monitoring listener, when `http` is configured.
    pub http_port: Option<u16>,
    /// Its log file.
    pub log: PathBuf,
}

impl Drop for GoServer {
    /// Kills the process; then (unless the test is failing already) its log must hold no error
    /// but failed dials of a peer that is away: a protocol error nats-server saw in what
    /// Natrium sent fails the test even when the traffic got through.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "nats-server logged errors:\n{}",
            errors.join("\n")
        );
    }
}

impl GoServer {
    /// Starts `bin` as server `name` from config `text` (written to `dir/name.conf`), clients
    /// on a random port of 127.0.0.1, its log in `dir/name.log`. Ports given as `-1` in the
    /// config are random too and read back from the ports file.
    pub fn start(bin: &GoBin, dir: &Path, name: &str, text: &str) -> GoServer {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, text).expect("write config");
        let ports_dir = dir.join(format!("{name}-ports"));
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(&bin.path)
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", "-1", "-n", name])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        // Named `<executable>_<pid>.ports`.
        let suffix = format!("_{}.ports", child.id());
        let mut doc = None;
        for _ in 0..500 {
            let found = std::fs::read_dir(&ports_dir)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(&suffix));
            if let Some(v) = found
                .and_then(|e| std::fs::read(e.path()).ok())
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                doc = Some(v);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut s = GoServer {
            child,
            client_port: 0,
            cluster_port: None,
            http_port: None,
            log,
        };
        let Some(doc) = doc else {
            panic!(
                "nats-server {} wrote no ports file; its log:\n{}",
                bin.version,
                s.log_text()
            )
        };
        let port = |key: &str| -> Option<u16> {
            doc[key][0]
                .as_str()?
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
        };
        s.client_port = port("nats").expect("client port");
        s.cluster_port = port("cluster");
        s.http_port = port("monitoring");
        s
    }

    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Its log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `[ERR]` lines of its log, but for dials of a peer that is not there (yet, or any
    /// more: restarts).
    pub fn errors(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("[ERR]"))
            .filter(|l| !l.contains("connection refused") && !l.contains("Error trying to connect"))
            .map(String::from)
            .collect()
    }

    /// A monitoring document (`/routez`, `/leafz`, ...).
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let port = self.http_port.expect("nats-server started with http");
        reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .expect("monitoring answers")
            .json()
            .await
            .expect("json")
    }
}
