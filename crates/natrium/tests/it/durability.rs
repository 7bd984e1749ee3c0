//! Durability of JetStream through the real binary: kill -9 under publish load loses no
//! acknowledged message and duplicates none; a flipped bit or a truncated block is detected on
//! recovery and never served as good data.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

struct Proc {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Starts the binary; the returned `Proc` is always waited on by `kill9` or `stop`.
#[allow(clippy::zombie_processes)]
fn spawn(store: &Path, log: &Path) -> Proc {
    let _ = std::fs::remove_file(log);
    let child = Command::new(BIN)
        .args(["-p", "-1", "-a", "127.0.0.1", "-js", "-sd"])
        .arg(store)
        .arg("-l")
        .arg(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Server is ready") {
            let line = text
                .lines()
                .find(|l| l.contains("Listening for client connections on"))
                .expect("listen line");
            let port = line
                .rsplit(':')
                .next()
                .expect("port")
                .trim()
                .parse()
                .expect("port number");
            return Proc {
                child,
                port,
                log: log.to_path_buf(),
            };
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The clients' runtime; the server runs as a separate process the test kills.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn kill9(p: &mut Proc) {
    unsafe { libc::kill(p.child.id() as i32, libc::SIGKILL) };
    let _ = p.child.wait();
}

fn stop(p: &mut Proc) {
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let _ = p.child.wait();
}

async fn api(c: &async_nats::Client, subject: &str, body: Value) -> Value {
    let r = c
        .request(subject.to_string(), Bytes::from(body.to_string()))
        .await
        .expect("reply");
    serde_json::from_slice(&r.payload).expect("json")
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let log = dir.path().join("server.log");
    let rt = runtime();
    let mut p = spawn(&store, &log);
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{}", p.port))
            .await
            .expect("connect");
        let js = jetstream::new(c);
        js.create_stream(stream::Config {
            name: "CRASH".into(),
            subjects: vec!["crash.>".into()],
            ..Default::default()
        })
        .await
        .expect("create");
        // Eight publishers, each with up to 64 publishes in flight.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let js = js.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    let mut batch = Vec::new();
                    for _ in 0..64 {
                        let body = format!("w{w}-{i}");
                        i += 1;
                        match js
                            .publish(format!("crash.{w}"), Bytes::from(body.clone()))
                            .await
                        {
                            Ok(f) => batch.push((body, f)),
                            Err(_) => return,
                        }
                    }
                    for (body, f) in batch {
                        match f.await {
                            Ok(ack) => acked.lock().push((ack.sequence, body)),
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        // Let acknowledgements accumulate, then kill the server mid-load.
        let start = Instant::now();
        while acked.lock().len() < 2000 && start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill9(&mut p);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    let acked = acked.lock().clone();
    assert!(acked.len() >= 2000, "load ran: {} acks", acked.len());

    let mut p = spawn(&store, &log);
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{}", p.port))
            .await
            .expect("connect");
        let info = api(&c, "$JS.API.STREAM.INFO.CRASH", json!({})).await;
        let last = info["state"]["last_seq"].as_u64().expect("last_seq");
        let msgs = info["state"]["messages"].as_u64().expect("messages");
        assert!(
            last as usize >= acked.len(),
            "every ack had a sequence <= last ({last})"
        );
        // Every acknowledged message is there, at its sequence, intact.
        let mut by_seq: HashMap<u64, String> = HashMap::new();
        for seq in 1..=last {
            let r = api(&c, "$JS.API.STREAM.MSG.GET.CRASH", json!({"seq": seq})).await;
            if let Some(data) = r["message"]["data"].as_str() {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64");
                by_seq.insert(seq, String::from_utf8(bytes).expect("utf8"));
            }
        }
        assert_eq!(by_seq.len() as u64, msgs);
        for (seq, body) in &acked {
            assert_eq!(
                by_seq.get(seq),
                Some(body),
                "acknowledged message {seq} lost or changed"
            );
        }
        // No message is stored twice.
        let unique: HashSet<&String> = by_seq.values().collect();
        assert_eq!(unique.len(), by_seq.len(), "a message was duplicated");
    });
    stop(&mut p);
}

/// A durable pull consumer killed with -9: after the restart no acked message comes back, the
/// delivered but unacked ones come back as redeliveries (their delivery was recorded before they
/// left), and the rest arrive as new.
#[test]
fn kill_9_keeps_consumer_acks_and_deliveries() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let log = dir.path().join("server.log");
    let rt = runtime();
    let mut p = spawn(&store, &log);
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{}", p.port))
            .await
            .expect("connect");
        let js = jetstream::new(c);
        let s = js
            .create_stream(stream::Config {
                name: "WORK".into(),
                subjects: vec!["work.>".into()],
                ..Default::default()
            })
            .await
            .expect("create");
        for i in 1..=1000u64 {
            js.publish("work.item", Bytes::from(i.to_string()))
                .await
                .expect("publish")
                .await
                .expect("puback");
        }
        let consumer = s
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("W".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut msgs = consumer
            .fetch()
            .max_messages(600)
            .messages()
            .await
            .expect("fetch");
        let mut got = Vec::new();
        while let Some(m) = msgs.next().await {
            got.push(m.expect("message"));
        }
        assert_eq!(got.len(), 600);
        // Ack 1..400; the last one synchronously, so every ack before it was applied and the
        // state holding them is on disk when the answer comes.
        for m in &got[..399] {
            m.ack().await.expect("ack");
        }
        got[399].double_ack().await.expect("double ack");
    });
    kill9(&mut p);

    let mut p = spawn(&store, &log);
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{}", p.port))
            .await
            .expect("connect");
        let js = jetstream::new(c);
        let consumer: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("W", "WORK")
            .await
            .expect("consumer after restart");
        // New messages arrive at once; the unacked deliveries once their ack wait (2 s from
        // the restart) passes.
        let mut seen = std::collections::BTreeMap::new();
        let start = Instant::now();
        while seen.len() < 600 && start.elapsed() < Duration::from_secs(60) {
            let mut batch = consumer
                .fetch()
                .max_messages(600)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .expect("fetch");
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                let info = m.info().expect("info");
                let n: u64 = std::str::from_utf8(&m.payload)
                    .expect("utf8")
                    .parse()
                    .expect("n");
                seen.insert(n, info.delivered);
                m.ack().await.expect("ack");
            }
        }
        assert_eq!(
            seen.len(),
            600,
            "messages 401..=1000 delivered after the restart"
        );
        for (n, delivered) in &seen {
            assert!(*n > 400, "acked message {n} delivered again");
            if *n <= 600 {
                assert!(
                    *delivered >= 2,
                    "message {n} delivered before the crash came back as new"
                );
            } else {
                assert_eq!(*delivered, 1, "message {n} was never delivered before");
            }
        }
    });
    stop(&mut p);
}

/// The block files of stream `name`.
fn block_files(store: &Path, name: &str) -> Vec<PathBuf> {
    let dir = store
        .join("jetstream")
        .join("$G")
        .join("streams")
        .join(name)
        .join("msgs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("stream dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(4).any(|w| w == b"body")))
        .collect();
    files.sort();
    files
}

fn damage_test(damage: impl Fn(&Path)) -> (Vec<Option<String>>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let log = dir.path().join("server.log");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut p = spawn(&store, &log);
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{}", p.port))
            .await
            .expect("connect");
        let js = jetstream::new(c);
        js.create_stream(stream::Config {
            name: "DMG".into(),
            subjects: vec!["dmg".into()],
            ..Default::default()
        })
        .await
        .expect("create");
        for i in 0..100 {
            js.publish("dmg", Bytes::from(format!("body-{i:04}")))
                .await
                .expect("pub")
                .await
                .expect("ack");
        }
    });
    stop(&mut p);
    let files = block_files(&store, "DMG");
    assert!(!files.is_empty(), "found the block file");
    damage(&files[0]);
    let mut p = spawn(&store, &log);
    let got = rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{}", p.port))
            .await
            .expect("connect");
        let mut got = Vec::new();
        for seq in 1..=100u64 {
            let r = api(&c, "$JS.API.STREAM.MSG.GET.DMG", json!({"seq": seq})).await;
            got.push(r["message"]["data"].as_str().map(|d| {
                use base64::Engine as _;
                String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD
                        .decode(d)
                        .expect("b64"),
                )
                .into_owned()
            }));
        }
        got
    });
    let text = std::fs::read_to_string(&p.log).unwrap_or_default();
    stop(&mut p);
    (got, text)
}

#[test]
fn a_flipped_bit_is_detected_and_never_served() {
    let (got, log) = damage_test(|file| {
        let mut bytes = std::fs::read(file).expect("read block");
        let at = bytes
            .windows(9)
            .position(|w| w == b"body-0050")
            .expect("record 51 in block");
        bytes[at + 7] ^= 0x01; // "body-0050" -> "body-0040"-like damage inside the payload
        std::fs::write(file, bytes).expect("write block");
    });
    assert_eq!(got[50], None, "the damaged message is not served");
    for (i, g) in got.iter().enumerate() {
        if i != 50 {
            assert_eq!(
                g.as_deref(),
                Some(format!("body-{i:04}").as_str()),
                "message {} intact",
                i + 1
            );
        }
    }
    assert!(
        log.contains("stream DMG: 1 corrupt or lost message(s) on recovery, first at sequence 51"),
        "the log names the stream and sequence:\n{log}"
    );
}

#[test]
fn a_truncated_block_is_detected_and_the_prefix_kept() {
    let (got, log) = damage_test(|file| {
        let bytes = std::fs::read(file).expect("read block");
        let at = bytes
            .windows(9)
            .position(|w| w == b"body-0070")
            .expect("record 71");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .expect("open");
        f.set_len(at as u64).expect("truncate");
    });
    for (i, g) in got.iter().enumerate().take(70) {
        assert_eq!(
            g.as_deref(),
            Some(format!("body-{i:04}").as_str()),
            "message {} intact",
            i + 1
        );
    }
    assert!(
        got[70..].iter().all(Option::is_none),
        "nothing past the damage is served as good data"
    );
    assert!(
        log.contains("stream DMG: 30 corrupt or lost message(s) on recovery, first at sequence 71"),
        "the loss is reported with stream and sequence:\n{log}"
    );
}
