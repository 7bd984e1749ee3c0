//! The JetStream store directory through the real binary: a second server on the same directory
//! refuses to start and names the holder; `natrium store verify` checks a stopped server's store.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

/// Starts the binary on `store` and waits until it is ready; returns it and its client port
/// (the caller waits on it, through `stop`).
#[allow(clippy::zombie_processes)]
fn start(store: &Path, log: &Path) -> (Child, u16) {
    let child = Command::new(BIN)
        .args(["-p", "-1", "-a", "127.0.0.1", "-js", "-sd"])
        .arg(store)
        .arg("-l")
        .arg(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Server is ready") {
            let port = text
                .lines()
                .find(|l| l.contains("Listening for client connections on"))
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| p.trim().parse().ok())
                .expect("port in the log");
            return (child, port);
        }
        assert!(Instant::now() < deadline, "server did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "server exited with {status}");
}

#[test]
fn a_second_server_on_the_same_store_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (first, _) = start(&store, &dir.path().join("first.log"));
    let out = Command::new(BIN)
        .args(["-p", "-1", "-a", "127.0.0.1", "-js", "-sd"])
        .arg(&store)
        .output()
        .expect("run the second server");
    assert!(!out.status.success(), "the second server started");
    let err = String::from_utf8_lossy(&out.stderr);
    let locked = store.join("jetstream");
    assert!(
        err.contains(&locked.display().to_string()),
        "the error names the directory: {err}"
    );
    assert!(
        err.contains(&format!("pid {}", first.id())),
        "the error names the holder's pid: {err}"
    );
    // Once the first one is gone, the directory is free again.
    stop(first);
    let (again, _) = start(&store, &dir.path().join("again.log"));
    stop(again);
}

#[test]
fn store_verify_reports_a_clean_store_and_a_damaged_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (server, port) = start(&store, &dir.path().join("server.log"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    fill(&rt, port, "V", "v", 50, "verify-me");
    stop(server);

    let verify = || {
        Command::new(BIN)
            .args(["store", "verify"])
            .arg(&store)
            .output()
            .expect("run store verify")
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("50 message(s)"), "{text}");
    assert!(text.contains("no damage found"), "{text}");

    // Flip one bit in message 21's payload.
    let msgs = store.join("jetstream/$G/streams/V/msgs");
    let blk = std::fs::read_dir(&msgs)
        .expect("stream dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "blk"))
        .expect("a block");
    let mut bytes = std::fs::read(&blk).expect("read block");
    let at = bytes
        .windows(13)
        .position(|w| w == b"verify-me-020")
        .expect("message 21");
    bytes[at + 11] ^= 0x04;
    std::fs::write(&blk, &bytes).expect("write block");
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DAMAGE"), "{text}");
    assert!(text.contains("messages 21..=21"), "{text}");
    assert!(text.contains(&blk.display().to_string()), "{text}");

    let out = Command::new(BIN)
        .args(["store", "fix"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: natrium store verify DIR"));
}

/// A block cut at rest exactly between two records, its index gone: the blocks look whole, but
/// the high-water mark says sequences up to 30 were stored and synced. `store verify` reports
/// 21..=30 lost, as the server does when it opens the store.
#[test]
fn store_verify_reports_sequences_past_the_blocks_up_to_the_high_water_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (server, port) = start(&store, &dir.path().join("server.log"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    fill(&rt, port, "H", "h", 30, "mark-me");
    stop(server);

    let msgs = store.join("jetstream/$G/streams/H/msgs");
    let blk = std::fs::read_dir(&msgs)
        .expect("stream dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "blk"))
        .expect("a block");
    let bytes = std::fs::read(&blk).expect("read block");
    // Message 21's record starts 27 bytes before its payload (framing and the subject "h").
    let at = bytes
        .windows(11)
        .position(|w| w == b"mark-me-020")
        .expect("message 21")
        - 27;
    assert_eq!(bytes[at + 4..at + 12], 21u64.to_le_bytes(), "record start");
    std::fs::write(&blk, &bytes[..at]).expect("cut the block");
    std::fs::remove_file(msgs.join("index")).expect("remove the index");

    let out = Command::new(BIN)
        .args(["store", "verify"])
        .arg(&store)
        .output()
        .expect("run store verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("messages 21..=30"), "{text}");
    assert!(
        text.contains("the blocks end at sequence 20, sequences up to 30 were stored and synced"),
        "{text}"
    );
    // The server finds the same when it opens the store.
    let (server, port) = start(&store, &dir.path().join("again.log"));
    let info = rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(c);
        let mut s = js.get_stream("H").await.expect("stream");
        s.info().await.expect("info").state.clone()
    });
    stop(server);
    assert_eq!((info.messages, info.last_sequence), (20, 30));
}

/// Creates stream `name` on `subject` through the server at `port` and publishes `n`
/// acknowledged messages `<prefix>-000`, `<prefix>-001`, ...
fn fill(
    rt: &tokio::runtime::Runtime,
    port: u16,
    name: &str,
    subject: &str,
    n: usize,
    prefix: &str,
) {
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(c);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .expect("create");
        for i in 0..n {
            js.publish(subject.to_string(), Bytes::from(format!("{prefix}-{i:03}")))
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    });
}
