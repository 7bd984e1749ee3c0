//! Debian's nats-server as a child process of a test (mixed clusters, leafnode interop).

use std::process::{Child, Command, Stdio};

/// A nats-server process, killed when dropped.
pub struct GoServer {
    pub child: Child,
    pub client_port: u16,
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's nats-server if installed (`None`, with a notice naming `what` is skipped, when it
/// is not; a panic when NATRIUM_REQUIRE_NATS_SERVER says it must be).
pub fn nats_server_binary(what: &str) -> Option<String> {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("nats-server".into());
    }
    if std::env::var_os("NATRIUM_REQUIRE_NATS_SERVER").is_some() {
        panic!("nats-server is required (NATRIUM_REQUIRE_NATS_SERVER) but not installed");
    }
    eprintln!("notice: nats-server not installed; skipping {what}");
    None
}
