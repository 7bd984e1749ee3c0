//! Stock clients other than async-nats, driven through their own APIs against an embedded server:
//! nats-py from PyPI runs `tests/compat/nats_py_smoke.py` and nats.js from npm runs
//! `tests/compat/nats_js_smoke.mjs` (core, JetStream publish, pull/ordered/push consumers, KV,
//! object store), and each runs its `*_cluster` script against three clustered servers.
//! CI installs both and sets `NATRIUM_REQUIRE_NATS_PY=1` / `NATRIUM_REQUIRE_NATS_JS=1`, so there
//! a missing client fails its test; elsewhere it is skipped with a notice.

use std::path::Path;
use std::process::Command;

use natrium::options::{ClusterOptions, RouteUrl};

use crate::common::{eventually, js_opts, opts, start};

fn nats_py_available() -> bool {
    Command::new("python3")
        .args(["-c", "import nats.js"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a nats-py script (`python3 -c`) and returns what it printed; `None` (with a notice) when
/// nats-py is not installed and not required. A failing script fails the test.
pub fn run_python(script: &str) -> Option<String> {
    if !nats_py_available() {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py is required here (python3 -m pip install nats-py)"
        );
        eprintln!("skipped: python3 with nats-py not found (python3 -m pip install nats-py)");
        return None;
    }
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "nats-py script failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_smoke() {
    if !nats_py_available() {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py is required here (python3 -m pip install nats-py)"
        );
        eprintln!("skipped: python3 with nats-py not found (python3 -m pip install nats-py)");
        return;
    }
    run_smoke("python3", "nats_py_smoke.py").await;
}

fn nats_js_available() -> bool {
    let installed = Path::new(COMPAT)
        .join("node_modules/nats/package.json")
        .exists();
    installed
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_js_smoke() {
    if !nats_js_available() {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_JS").is_none(),
            "nats.js is required here (npm install --prefix {COMPAT})"
        );
        eprintln!("skipped: node or nats.js not found (npm install --prefix {COMPAT})");
        return;
    }
    run_smoke("node", "nats_js_smoke.mjs").await;
}

const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

/// Runs `<interpreter> tests/compat/<script> <url>` against a fresh JetStream server; it must
/// exit 0 and print "smoke ok".
async fn run_smoke(interpreter: &'static str, script: &'static str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let url = s.client_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(interpreter)
            .arg(script)
            .arg(url)
            .current_dir(COMPAT)
            .output()
            .expect("run the client")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("smoke ok"),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    s.shutdown().await;
}

/// Runs `<interpreter> tests/compat/<script> <url A> <url B> <url C>` against three clustered
/// servers (B and C route to A); it must exit 0 and print "cluster ok".
async fn run_cluster(interpreter: &'static str, script: &'static str) {
    let node = |name: &str, routes: Vec<RouteUrl>| natrium::Options {
        server_name: Some(name.into()),
        cluster: Some(ClusterOptions {
            name: Some("stock".into()),
            host: "127.0.0.1".into(),
            port: -1,
            routes,
            ..ClusterOptions::default()
        }),
        ..opts()
    };
    let a = start(node("A", Vec::new())).await;
    let seed = RouteUrl::parse(&format!(
        "nats://127.0.0.1:{}",
        a.cluster_port().expect("port")
    ))
    .expect("url");
    let b = start(node("B", vec![seed.clone()])).await;
    let c = start(node("C", vec![seed])).await;
    eventually(|| [&a, &b, &c].iter().all(|s| s.num_routes() == 2)).await;
    let urls = [a.client_url(), b.client_url(), c.client_url()];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(interpreter)
            .arg(script)
            .args(urls)
            .current_dir(COMPAT)
            .output()
            .expect("run the client")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("cluster ok"),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_in_a_cluster() {
    if !nats_py_available() {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py is required here (python3 -m pip install nats-py)"
        );
        eprintln!("skipped: python3 with nats-py not found");
        return;
    }
    run_cluster("python3", "nats_py_cluster.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_js_in_a_cluster() {
    if !nats_js_available() {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_JS").is_none(),
            "nats.js is required here (npm install --prefix {COMPAT})"
        );
        eprintln!("skipped: node or nats.js not found");
        return;
    }
    run_cluster("node", "nats_js_cluster.mjs").await;
}
