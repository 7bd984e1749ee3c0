//! Stock clients other than async-nats, driven through their own APIs: nats-py from PyPI runs
//! `tests/compat/nats_py_smoke.py` (core, JetStream publish, pull/ordered/push consumers, KV,
//! object store) against an embedded server. CI installs nats-py and sets
//! `NATRIUM_REQUIRE_NATS_PY=1`, so there a missing nats-py fails the test; elsewhere it is skipped
//! with a notice.

mod common;

use std::process::Command;

use common::{js_opts, start};

fn nats_py_available() -> bool {
    Command::new("python3")
        .args(["-c", "import nats.js"])
        .output()
        .is_ok_and(|o| o.status.success())
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
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/nats_py_smoke.py");
    let url = s.client_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .output()
            .expect("run python3")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("smoke ok"),
        "nats-py smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    s.shutdown().await;
}
