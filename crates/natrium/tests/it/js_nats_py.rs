//! The stream features of nats-server 2.11/2.12 as nats-py sends them: `tests/compat/
//! nats_py_streams.py` (mirror, sources with transforms, subject transform, republish, TTLs
//! with `msg_ttl`, delete markers, counters, a KV bucket's republish) against a fresh server.
//! Skipped with a notice when nats-py is missing, unless `NATRIUM_REQUIRE_NATS_PY` is set (CI).

use std::process::Command;

use crate::common::{js_opts, start};

const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_stream_features() {
    let available = Command::new("python3")
        .args(["-c", "import nats.js"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py is required here (python3 -m pip install nats-py)"
        );
        eprintln!("skipped: python3 with nats-py not found (python3 -m pip install nats-py)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let url = s.client_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("nats_py_streams.py")
            .arg(url)
            .current_dir(COMPAT)
            .output()
            .expect("run nats-py")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("streams ok"),
        "nats_py_streams.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    s.shutdown().await;
}
