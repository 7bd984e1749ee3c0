//! Configuration reload without a restart: users removed or with a changed password are closed,
//! a user moved to another account is closed to reconnect there, permissions change under live
//! connections (subscriptions no longer allowed are removed with nats-server's error), bcrypt
//! users whose hash did not change stay, new users can log in, limits (`max_payload`,
//! `max_connections`, `ping_interval`/`ping_max`) and log levels (`debug`, `trace`) change under
//! live connections, and reloads that would change what can not change at run time (listeners,
//! `max_pending`, an account's JetStream) are refused whole. Accounts come and go with
//! their imports. The binary reloads on SIGHUP and on
//! `--signal reload=<pid file>`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Raw;
use futures::StreamExt;
use natrium::{Options, ReloadError, Server};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

async fn start_file(path: &Path) -> Server {
    let (o, warnings) = Options::from_file(path).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    Server::start(o).await.expect("starts")
}

async fn login(s: &Server, user: &str, pass: &str) -> Raw {
    let mut r = Raw::connect(s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"{pass}\"}}\r\nPING\r\n"
    ))
    .await;
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n", "{user} logs in");
    r
}

async fn refused(s: &Server, user: &str, pass: &str) -> bool {
    let mut r = Raw::connect(s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"{pass}\"}}\r\nPING\r\n"
    ))
    .await;
    r.read_to_close()
        .await
        .contains("-ERR 'Authorization Violation'")
}

fn config(users: &str, accounts: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:-1\n{extra}\naccounts {{\n{accounts}\n}}\nauthorization {{\n  users: [\n{users}\n  ]\n}}\n"
    )
}

#[tokio::test]
async fn reload_swaps_users_permissions_and_accounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("natrium.conf");
    let hash = bcrypt::hash("pw5", 4).expect("hash");
    let accounts_v1 = "  A: { users: [ {user: carol, password: pw3} ] }\n  B: {}";
    let users_v1 = format!(
        "    {{user: alice, password: pw1}}\n    {{user: bob, password: pw2}}\n    {{user: moved, password: pw4}}\n    {{user: hashed, password: \"{hash}\"}}"
    );
    write(&conf, &config(&users_v1, accounts_v1, ""));
    let s = start_file(&conf).await;

    let mut alice = login(&s, "alice", "pw1").await;
    alice.send("SUB secret.x 1\r\nSUB ok.x 2\r\nPING\r\n").await;
    assert_eq!(alice.read_until("\r\n").await, "PONG\r\n");
    let mut bob = login(&s, "bob", "pw2").await;
    let mut carol = login(&s, "carol", "pw3").await;
    let mut moved = login(&s, "moved", "pw4").await;
    let hashed = async_nats::ConnectOptions::with_user_and_password("hashed".into(), "pw5".into())
        .connect(s.client_url())
        .await
        .expect("bcrypt user connects");
    assert!(refused(&s, "dave", "pw6").await, "dave is not a user yet");

    // v2: alice loses `secret.>`, bob is gone, carol's password changed, `moved` is now in B,
    // hashed is unchanged, dave is new.
    let accounts_v2 =
        "  A: { users: [ {user: carol, password: pw3b} ] }\n  B: { users: [ {user: moved, password: pw4} ] }";
    let users_v2 = format!(
        "    {{user: alice, password: pw1, permissions: {{ publish: {{ deny: \"secret.>\" }}, subscribe: {{ deny: \"secret.>\" }} }} }}\n    {{user: hashed, password: \"{hash}\"}}\n    {{user: dave, password: pw6}}"
    );
    write(&conf, &config(&users_v2, accounts_v2, ""));
    let t0 = Instant::now();
    s.reload().expect("reload applies");

    assert!(bob
        .read_to_close()
        .await
        .contains("-ERR 'Authorization Violation'"));
    assert!(carol
        .read_to_close()
        .await
        .contains("-ERR 'Authorization Violation'"));
    let moved_out = moved.read_to_close().await;
    assert!(!moved_out.contains("-ERR"), "moved: {moved_out:?}");
    let closed_in = t0.elapsed();
    assert!(closed_in < Duration::from_secs(2), "{closed_in:?}");

    // Alice stays, loses the subscription, and is denied from now on.
    assert_eq!(
        alice.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Subscription to \"secret.x\" (sid \"1\")'\r\n"
    );
    alice
        .send("PUB secret.x 1\r\na\r\nSUB secret.> 3\r\nPUB ok.x 2\r\nok\r\nPING\r\n")
        .await;
    assert_eq!(
        alice.read_until("PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"secret.x\"'\r\n\
         -ERR 'Permissions Violation for Subscription to \"secret.>\"'\r\n\
         MSG ok.x 2 2\r\nok\r\nPONG\r\n"
    );

    // The bcrypt user is still connected and working; dave and the new carol log in; moved
    // logs in again, now in B.
    let mut sub = hashed.subscribe("still.here").await.expect("sub");
    hashed.flush().await.expect("flush");
    hashed
        .publish("still.here", "yes".into())
        .await
        .expect("pub");
    assert!(tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("hashed still receives")
        .is_some());
    let _dave = login(&s, "dave", "pw6").await;
    let _carol = login(&s, "carol", "pw3b").await;
    assert!(refused(&s, "carol", "pw3").await);
    assert!(refused(&s, "bob", "pw2").await);
    let mut moved = login(&s, "moved", "pw4").await;
    moved.send("SUB b.only 1\r\nPING\r\n").await;
    assert_eq!(moved.read_until("\r\n").await, "PONG\r\n");
    alice.send("PUB b.only 1\r\nx\r\nPING\r\n").await;
    assert_eq!(alice.read_until("\r\n").await, "PONG\r\n");
    moved.send("PING\r\n").await;
    assert_eq!(
        moved.read_until("\r\n").await,
        "PONG\r\n",
        "B sees nothing of the global account"
    );

    // Refused reloads change nothing.
    write(
        &conf,
        &config(&users_v2, accounts_v2, "").replace("127.0.0.1:-1", "127.0.0.1:4999"),
    );
    assert!(matches!(s.reload(), Err(ReloadError::NotSupported("port"))));
    write(&conf, "authorization { users: [ {user: x ");
    assert!(matches!(s.reload(), Err(ReloadError::Options(_))));
    let _dave = login(&s, "dave", "pw6").await;
    s.shutdown().await;
}

#[tokio::test]
async fn reload_turns_auth_on_and_changes_max_subscriptions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("natrium.conf");
    write(&conf, "listen: 127.0.0.1:-1\n");
    let s = start_file(&conf).await;
    let mut anon = Raw::connect(&s).await;
    anon.send("CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nPING\r\n")
        .await;
    assert_eq!(anon.read_until("\r\n").await, "PONG\r\n");
    write(
        &conf,
        "listen: 127.0.0.1:-1\nmax_subscriptions: 2\nauthorization { token: s3cr3t }\n",
    );
    s.reload().expect("reload");
    assert!(anon
        .read_to_close()
        .await
        .contains("-ERR 'Authorization Violation'"));
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"auth_token\":\"s3cr3t\"}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n")
        .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    s.shutdown().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

fn wait_for(path: &Path, needle: &str, times: usize) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{needle:?} x{times} never appeared in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The binary reloads on SIGHUP and on `--signal reload=<pid file>`, and stops on
/// `--signal quit=<pid>`.
#[test]
fn binary_reloads_on_sighup_and_signal_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("natrium.conf");
    let log = dir.path().join("natrium.log");
    let pid_file = dir.path().join("natrium.pid");
    write(
        &conf,
        "listen: 127.0.0.1:-1\nauthorization { users: [ {user: a, password: one} ] }\n",
    );
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .arg("-l")
        .arg(&log)
        .arg("-P")
        .arg(&pid_file)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let text = wait_for(&log, "Server is ready", 1);
    let port: u16 = text
        .lines()
        .find(|l| l.contains("Listening for client connections on"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("port");
    wait_for(&pid_file, &child.id().to_string(), 1);
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let can_login = |user: &str, pass: &str| {
        rt.block_on(async {
            let c = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
                .connect(&url)
                .await;
            match c {
                Ok(c) => c.flush().await.is_ok(),
                Err(_) => false,
            }
        })
    };
    assert!(can_login("a", "one"));
    assert!(!can_login("a", "two"));

    write(
        &conf,
        "listen: 127.0.0.1:-1\nauthorization { users: [ {user: a, password: two} ] }\n",
    );
    // SAFETY-free use of kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for(&log, "Reloaded server configuration", 1);
    assert!(can_login("a", "two"));
    assert!(!can_login("a", "one"));

    write(
        &conf,
        "listen: 127.0.0.1:-1\nauthorization { users: [ {user: a, password: three} ] }\n",
    );
    let out = Command::new(BIN)
        .arg("--signal")
        .arg(format!("reload={}", pid_file.display()))
        .output()
        .expect("signal");
    assert!(out.status.success(), "{out:?}");
    wait_for(&log, "Reloaded server configuration", 2);
    assert!(can_login("a", "three"));

    // A reload that can not apply is logged and changes nothing.
    write(
        &conf,
        "listen: 127.0.0.1:4998\nauthorization { users: [ {user: a, password: four} ] }\n",
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let text = wait_for(&log, "Failed to reload server configuration", 1);
    assert!(
        text.contains("config reload not supported for port"),
        "{text}"
    );
    assert!(can_login("a", "three"));

    let out = Command::new(BIN)
        .arg("--signal")
        .arg(format!("quit={}", child.id()))
        .output()
        .expect("signal");
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

fn limits_config(extra: &str) -> String {
    format!("listen: 127.0.0.1:-1\nhttp: \"127.0.0.1:-1\"\n{extra}\n")
}

async fn varz(s: &Server) -> serde_json::Value {
    let url = format!("{}/varz", s.monitor_url().expect("monitoring on"));
    reqwest::get(url)
        .await
        .expect("varz")
        .json()
        .await
        .expect("varz json")
}

fn info_of(line: &str) -> serde_json::Value {
    serde_json::from_str(line.trim_start_matches("INFO ").trim()).expect("INFO json")
}

async fn raw_info(s: &Server) -> (tokio::net::TcpStream, serde_json::Value) {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(s.addr()).await.expect("tcp");
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(stream.read(&mut b).await.expect("read"), 1, "INFO");
        buf.push(b[0]);
    }
    (stream, info_of(&String::from_utf8_lossy(&buf)))
}

#[tokio::test]
async fn reload_changes_max_payload_and_log_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("natrium.log");
    natrium::logging::init(false, false, true, Some(&log)).expect("log file");
    let conf = dir.path().join("limits.conf");
    write(&conf, &limits_config("max_payload: 16"));
    let s = start_file(&conf).await;
    let (_stream, info) = raw_info(&s).await;
    assert_eq!(info["max_payload"], 16);

    let mut c = Raw::connect(&s).await;
    c.send("CONNECT {\"verbose\":false}\r\nPING\r\n").await;
    assert_eq!(c.read_until("\r\n").await, "PONG\r\n");
    let before = std::fs::read_to_string(&log).expect("log");
    assert!(
        before.contains("[INF]") && !before.contains("[DBG]"),
        "{before}"
    );

    // Raised: the live connection may now send 20 bytes; INFO advertises the new limit;
    // debug and trace lines appear in the log.
    write(
        &conf,
        &limits_config("max_payload: 64\ndebug: true\ntrace: true"),
    );
    s.reload().expect("max_payload and log levels reload");
    c.send("PING\r\n").await;
    assert_eq!(c.read_until("\r\n").await, "PONG\r\n");
    c.send("PUB x 20\r\n12345678901234567890\r\nPING\r\n").await;
    assert_eq!(c.read_until("\r\n").await, "PONG\r\n");
    let (_stream, info) = raw_info(&s).await;
    assert_eq!(info["max_payload"], 64);
    assert_eq!(
        varz(&s).await["max_payload"],
        64,
        "/varz shows the options in force"
    );
    crate::common::eventually(|| {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("[DBG]") && l.contains("Client connection created"))
    })
    .await;

    // Lowered: the same 20 bytes now close the connection.
    write(&conf, &limits_config("max_payload: 8"));
    s.reload().expect("reload");
    c.send("PING\r\n").await;
    assert_eq!(c.read_until("\r\n").await, "PONG\r\n");
    c.send("PUB x 20\r\n12345678901234567890\r\n").await;
    assert!(c
        .read_to_close()
        .await
        .ends_with("-ERR 'Maximum Payload Violation'\r\n"));
    let mark = std::fs::read_to_string(&log).expect("log").len();
    let _quiet = Raw::connect(&s).await;
    let after = std::fs::read_to_string(&log).expect("log");
    assert!(
        !after[mark..].contains("Client connection created"),
        "debug is off again"
    );

    write(&conf, &limits_config("max_payload: 8\nmax_pending: 1MB"));
    assert!(matches!(
        s.reload(),
        Err(ReloadError::NotSupported("max_pending"))
    ));
    s.shutdown().await;
}

#[tokio::test]
async fn reload_changes_max_connections_and_pings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conns.conf");
    write(&conf, &limits_config("max_connections: 10"));
    let s = start_file(&conf).await;
    let mut older = Raw::connect(&s).await;
    older.send("CONNECT {\"verbose\":false}\r\nPING\r\n").await;
    assert_eq!(older.read_until("\r\n").await, "PONG\r\n");
    let mut newer = Raw::connect(&s).await;
    newer.send("CONNECT {\"verbose\":false}\r\nPING\r\n").await;
    assert_eq!(newer.read_until("\r\n").await, "PONG\r\n");

    // One connection allowed: the newest is closed; pings every 100ms with one outstanding
    // at most: the older connection, which never answers PING, goes stale.
    write(
        &conf,
        &limits_config("max_connections: 1\nping_interval: \"100ms\"\nping_max: 1"),
    );
    s.reload().expect("reload");
    assert!(newer
        .read_to_close()
        .await
        .contains("-ERR 'maximum connections exceeded'"));
    let out = older.read_to_close().await;
    assert!(out.contains("PING\r\n"), "{out:?}");
    assert!(out.ends_with("-ERR 'Stale Connection'\r\n"), "{out:?}");
    s.shutdown().await;
}

/// Connects `user` with async-nats, or says why not.
async fn nats(s: &Server, user: &str, pass: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(s.client_url())
        .await
        .map_err(|e| e.to_string())
}

/// Whether `sub` gets a message within a short while.
async fn gets(sub: &mut async_nats::Subscriber, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), sub.next())
        .await
        .is_ok()
}

/// As nats-server: a reload adds accounts (a new one with JetStream gets it), removes them
/// (their users are closed), and installs and removes imports at once; an import its exporter
/// does not allow refuses the reload, and so does taking JetStream away from an account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_accounts_and_imports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("natrium.conf");
    let js = format!("jetstream {{ store_dir: {:?} }}", dir.path().join("js"));
    let a = "  A: { users: [ {user: a, password: pa} ], exports: [ {stream: \"news.>\"} ] }";
    let b = "  B: { users: [ {user: b, password: pb} ] }";
    let b_imports =
        "  B: { users: [ {user: b, password: pb} ], imports: [ {stream: {account: A, subject: \"news.>\"}} ] }";
    let c = "  C: { users: [ {user: c, password: pc} ], jetstream: enabled }";
    let d = "  D: { users: [ {user: d, password: pd} ] }";
    let cfg = |accounts: &[&str]| {
        format!(
            "listen: 127.0.0.1:-1\n{js}\naccounts {{\n{}\n}}\n",
            accounts.join("\n")
        )
    };
    write(&conf, &cfg(&[a, b]));
    let s = start_file(&conf).await;
    let pub_a = nats(&s, "a", "pa").await.expect("a");
    let client_b = nats(&s, "b", "pb").await.expect("b");
    let mut news = client_b.subscribe("news.>").await.expect("sub");
    client_b.flush().await.expect("flush");
    pub_a.publish("news.1", "x".into()).await.expect("pub");
    pub_a.flush().await.expect("flush");
    assert!(!gets(&mut news, 300).await, "no import yet");
    assert!(nats(&s, "c", "pc").await.is_err(), "no account C yet");

    // Add B's import and the accounts C (with JetStream) and D.
    write(&conf, &cfg(&[a, b_imports, c, d]));
    s.reload().expect("accounts added");
    pub_a.publish("news.2", "y".into()).await.expect("pub");
    pub_a.flush().await.expect("flush");
    assert!(
        gets(&mut news, 3000).await,
        "the new import carries A's news to B"
    );
    let client_c = nats(&s, "c", "pc").await.expect("c logs in");
    let jsc = async_nats::jetstream::new(client_c);
    jsc.create_stream(async_nats::jetstream::stream::Config {
        name: "C1".into(),
        subjects: vec!["c.>".into()],
        ..Default::default()
    })
    .await
    .expect("JetStream enabled for the new account C");
    let client_d = nats(&s, "d", "pd").await.expect("d logs in");

    // An import the exporter does not allow refuses the reload whole.
    let a_closed = "  A: { users: [ {user: a, password: pa} ] }";
    write(&conf, &cfg(&[a_closed, b_imports, c, d]));
    let err = s.reload().expect_err("import without export");
    assert!(err.to_string().contains("news.>"), "{err}");
    // Taking JetStream away from C is refused.
    let c_without = "  C: { users: [ {user: c, password: pc} ] }";
    write(&conf, &cfg(&[a, b_imports, c_without, d]));
    let err = s.reload().expect_err("JetStream taken away");
    assert!(err.to_string().contains("jetstream"), "{err}");
    pub_a.publish("news.3", "z".into()).await.expect("pub");
    pub_a.flush().await.expect("flush");
    assert!(
        gets(&mut news, 3000).await,
        "refused reloads changed nothing"
    );

    // Remove B's import and the account D: A's news stop, D's user is closed.
    write(&conf, &cfg(&[a, b, c]));
    s.reload().expect("import and account removed");
    let t0 = Instant::now();
    while client_d.connection_state() == async_nats::connection::State::Connected {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "D's user still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(nats(&s, "d", "pd").await.is_err(), "no account D any more");
    pub_a.publish("news.4", "w".into()).await.expect("pub");
    pub_a.flush().await.expect("flush");
    assert!(!gets(&mut news, 500).await, "the import is gone");
    s.shutdown().await;
}
