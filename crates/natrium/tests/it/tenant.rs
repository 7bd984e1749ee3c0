//! `natrium tenant add|ls|rm|rotate`, run as the binary against running servers, with async-nats
//! logging in on the credentials it makes:
//! - operator mode: account JWTs signed with an operator signing key and pushed to the server's
//!   directory resolver as the system user; the limits apply; `rotate` revokes the old user
//!   (its connection is closed, its creds refused); `rm` deletes the account (or, without
//!   `allow_delete`, disables it); refused pushes and bad keys leave the keystore as it was;
//! - config-file mode: the tenants include file with bcrypt hashes, the server reloaded by pid
//!   file (a new account needs a restart, which the command says), limits including JetStream,
//!   `rotate` closing the old password's connection, `rm` closing the tenant's connections at
//!   once, and a config that does not include the file left untouched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::jwt::{encode, now};
use async_nats::ConnectOptions;
use natrium::{Options, Server};
use nkeys::KeyPair;
use serde_json::json;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `natrium tenant ARGS`.
async fn tenant(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(BIN)
        .arg("tenant")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run natrium tenant");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(o: Out) -> String {
    assert!(o.ok, "tenant command failed:\n{}\n{}", o.stdout, o.stderr);
    o.stdout
}

fn failed(o: Out, needle: &str) {
    assert!(!o.ok, "expected a failure, got:\n{}", o.stdout);
    assert!(
        o.stderr.contains(needle),
        "{needle:?} not in:\n{}",
        o.stderr
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn write_secret(p: &Path, text: &str) {
    std::fs::write(p, text).expect("write");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A client that reports its events (server errors, disconnects) and does not reconnect.
async fn watched(
    o: ConnectOptions,
    url: &str,
) -> Result<(async_nats::Client, mpsc::UnboundedReceiver<String>), async_nats::ConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let c = o
        .connection_timeout(Duration::from_secs(20))
        .max_reconnects(Some(1))
        .event_callback(move |e| {
            let _ = tx.send(e.to_string().to_lowercase());
            async {}
        })
        .connect(url)
        .await?;
    Ok((c, rx))
}

/// Waits for an event containing `needle`.
async fn event(rx: &mut mpsc::UnboundedReceiver<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(e)) if e.contains(needle) => return,
            Ok(Some(e)) => seen.push(e),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    panic!("no event with {needle:?}; saw {seen:?}");
}

fn creds_opts(text: &str) -> ConnectOptions {
    ConnectOptions::with_credentials(text).expect("credentials parse")
}

/// Operator, signing key, system account and user, resolver directory and keystore.
struct OperatorEnv {
    dir: tempfile::TempDir,
    conf: PathBuf,
    keys: PathBuf,
    jwt_dir: PathBuf,
}

fn operator_env(allow_delete: bool) -> OperatorEnv {
    let dir = tempfile::tempdir().expect("tempdir");
    let op = KeyPair::new_operator();
    let signing = KeyPair::new_operator();
    let sys = KeyPair::new_account();
    let op_jwt = encode(
        json!({"jti": "op", "iat": now() - 10, "iss": op.public_key(), "sub": op.public_key(),
               "name": "OP", "nats": {"type": "operator", "version": 2,
               "system_account": sys.public_key(), "signing_keys": [signing.public_key()]}}),
        &op,
    );
    std::fs::write(dir.path().join("op.jwt"), op_jwt).expect("op.jwt");
    let jwt_dir = dir.path().join("jwt");
    std::fs::create_dir_all(&jwt_dir).expect("mkdir");
    let sys_jwt = encode(
        json!({"jti": "sys", "iat": now() - 10, "iss": signing.public_key(), "sub": sys.public_key(),
               "name": "SYS", "nats": {"type": "account", "version": 2}}),
        &signing,
    );
    std::fs::write(jwt_dir.join(format!("{}.jwt", sys.public_key())), sys_jwt).expect("sys jwt");
    let conf = dir.path().join("natrium.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\noperator: op.jwt\nresolver {{ type: full, dir: \"{}\", allow_delete: {allow_delete} }}\n",
            jwt_dir.display()
        ),
    )
    .expect("config");
    // The keystore: the operator's signing key and a system user's credentials.
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    write_secret(
        &keys.join("operator.nk"),
        &format!("{}\n", signing.seed().expect("seed")),
    );
    let su = KeyPair::new_user();
    let su_jwt = encode(
        json!({"jti": "su", "iat": now() - 10, "iss": sys.public_key(), "sub": su.public_key(),
               "name": "sys", "nats": {"type": "user", "version": 2}}),
        &sys,
    );
    write_secret(
        &keys.join("sys.creds"),
        &format!(
            "-----BEGIN NATS USER JWT-----\n{su_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            su.seed().expect("seed")
        ),
    );
    OperatorEnv {
        dir,
        conf,
        keys,
        jwt_dir,
    }
}

async fn start_embedded(conf: &Path) -> Server {
    let (o, _) = Options::from_file(conf).expect("config loads");
    Server::start(o).await.expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_add_limits_rotate_ls_rm() {
    let env = operator_env(true);
    let s = start_embedded(&env.conf).await;
    let url = s.client_url();
    let conf = env.conf.to_str().expect("utf-8");
    let base = ["-c", conf, "--server", url.as_str()];
    let run = |extra: &[&str]| {
        let args: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
        async move { tenant(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };

    let out = ok(run(&[
        "add",
        "acme",
        "--max-connections",
        "2",
        "--max-subscriptions",
        "2",
        "--max-payload",
        "64",
        "--js-streams",
        "3",
        "--max-bytes-per-sec",
        "1MB",
    ])
    .await);
    let tdir = env.keys.join("tenants").join("acme");
    let creds = tdir.join("acme.creds");
    assert!(out.contains(&creds.display().to_string()), "{out}");
    assert!(out.contains("jwt updated"), "{out}");
    assert!(
        out.contains("does not run JetStream for operator-mode accounts"),
        "{out}"
    );
    assert_eq!(mode(&creds), 0o600);
    let account_seed = std::fs::read_to_string(tdir.join("account.nk")).expect("seed");
    assert!(account_seed.starts_with("SA"));
    let user_seed = std::fs::read_to_string(&creds)
        .expect("creds")
        .lines()
        .find(|l| l.starts_with("SU"))
        .expect("user seed in creds")
        .to_string();
    assert!(
        !out.contains(account_seed.trim()) && !out.contains(&user_seed),
        "no seed printed: {out}"
    );
    assert_eq!(mode(&tdir.join("account.nk")), 0o600);
    assert_eq!(mode(&tdir), 0o700);
    // The account is in the resolver's directory, signed by the signing key, with the limits.
    let account_jwt = std::fs::read_to_string(tdir.join("account.jwt")).expect("account.jwt");
    let claims: natrium::auth::jwt::Claims<serde_json::Value> =
        natrium::auth::jwt::decode(&account_jwt).expect("the server's decoder verifies it");
    let stored = env.jwt_dir.join(format!("{}.jwt", claims.sub));
    assert_eq!(
        std::fs::read_to_string(&stored).expect("pushed"),
        account_jwt
    );
    assert_eq!(claims.nats["limits"]["conn"], 2);
    assert_eq!(claims.nats["limits"]["streams"], 3);
    assert_eq!(claims.nats["limits"]["bytes_per_sec"], 1024 * 1024);
    assert_eq!(claims.nats["limits"]["msgs_per_sec"], -1);
    assert_eq!(claims.name, "acme");

    // A stock client logs in with the .creds file and messages flow.
    let creds_text = std::fs::read_to_string(&creds).expect("creds");
    let (c1, mut ev1) = watched(creds_opts(&creds_text), &url)
        .await
        .expect("acme connects");
    let mut sub = c1.subscribe("hello").await.expect("sub");
    c1.publish("hello", "hi".into()).await.expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .expect("message in time")
        .expect("message");
    assert_eq!(&m.payload[..], b"hi");

    // Limits: a third connection is refused; a second subscription is the last allowed; a
    // payload over 64 bytes closes the connection.
    let (c2, mut ev2) = watched(creds_opts(&creds_text), &url)
        .await
        .expect("second connection");
    let third = watched(creds_opts(&creds_text), &url).await;
    assert!(third.is_err(), "max_connections 2");
    let _s2 = c1.subscribe("two").await.expect("sub 2");
    let _s3 = c1
        .subscribe("three")
        .await
        .expect("sub 3 (refused by the server)");
    c1.flush().await.expect("flush");
    event(&mut ev1, "maximum subscriptions exceeded").await;
    c2.publish("big", vec![b'x'; 65].into())
        .await
        .expect("queued");
    let _ = c2.flush().await;
    event(&mut ev2, "maximum payload violation").await;
    drop(c2);

    // ls: the tenant, its account and the server has it.
    let out = ok(run(&["ls"]).await);
    assert!(out.contains("acme") && out.contains(&claims.sub), "{out}");
    assert!(
        out.contains("on server") && !out.contains("NOT on server"),
        "{out}"
    );

    // rotate: the old user is revoked at once (its live connection is closed, its creds are
    // refused), the new creds work.
    let out = ok(run(&["rotate", "acme"]).await);
    assert!(out.contains("revoked"), "{out}");
    event(&mut ev1, "revoked").await;
    assert!(
        watched(creds_opts(&creds_text), &url).await.is_err(),
        "old credentials refused"
    );
    let new_text = std::fs::read_to_string(&creds).expect("creds");
    assert_ne!(new_text, creds_text);
    assert_eq!(mode(&creds), 0o600);
    let (_c3, mut ev3) = watched(creds_opts(&new_text), &url)
        .await
        .expect("new credentials log in");

    // Refusals change nothing: an existing name, an unknown tenant, a server that is not there.
    failed(run(&["add", "acme"]).await, "already exists");
    failed(run(&["rotate", "nobody"]).await, "no tenant");
    let dead = tenant(&["-c", conf, "--server", "nats://127.0.0.1:1", "add", "beta"]).await;
    failed(dead, "not added");
    let left: Vec<_> = std::fs::read_dir(env.keys.join("tenants"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("acme")],
        "no beta, no staging"
    );

    // rm with allow_delete: the account is deleted from the resolver and its users closed.
    let out = ok(run(&["rm", "acme"]).await);
    assert!(out.contains("deleted"), "{out}");
    event(&mut ev3, "authorization violation").await;
    assert!(watched(creds_opts(&new_text), &url).await.is_err());
    assert!(!tdir.exists());
    assert!(!stored.exists() && stored.with_extension("jwt.deleted").exists());
    assert!(ok(run(&["ls"]).await).contains("No tenants"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_keys_checked_and_rm_without_allow_delete() {
    let env = operator_env(false);
    let s = start_embedded(&env.conf).await;
    let url = s.client_url();
    let conf = env.conf.to_str().expect("utf-8");

    // A key the operator does not trust, and a system creds file others can read: refused
    // before anything is written.
    let stranger = env.dir.path().join("stranger.nk");
    write_secret(&stranger, &KeyPair::new_operator().seed().expect("seed"));
    let o = tenant(&[
        "-c",
        conf,
        "--server",
        &url,
        "--operator-key",
        stranger.to_str().expect("utf-8"),
        "add",
        "acme",
    ])
    .await;
    failed(
        o,
        "neither the configured operator nor one of its signing keys",
    );
    let sys_creds = env.keys.join("sys.creds");
    std::fs::set_permissions(&sys_creds, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    failed(
        tenant(&["-c", conf, "--server", &url, "add", "acme"]).await,
        "readable by other users",
    );
    std::fs::set_permissions(&sys_creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(!env.keys.join("tenants").join("acme").exists());

    ok(tenant(&["-c", conf, "--server", &url, "add", "acme"]).await);
    let creds = std::fs::read_to_string(env.keys.join("tenants/acme/acme.creds")).expect("creds");
    let (_c, mut ev) = watched(creds_opts(&creds), &url).await.expect("connects");
    // Without allow_delete the account stays, revoking every user and allowing no connection.
    let out = ok(tenant(&["-c", conf, "--server", &url, "rm", "acme"]).await);
    assert!(out.contains("disabled"), "{out}");
    event(&mut ev, "disconnected").await;
    assert!(watched(creds_opts(&creds), &url).await.is_err());
    s.shutdown().await;
}

/// The binary server, started on a config file, logging to a fresh file.
struct Proc {
    child: std::process::Child,
}

impl Proc {
    fn start(conf: &Path, log: &Path) -> Proc {
        let child = std::process::Command::new(BIN)
            .arg("-c")
            .arg(conf)
            .arg("-l")
            .arg(log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Server is ready") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server not ready:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Proc { child }
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn password_in(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password in {out}"))
        .trim()
        .to_string()
}

fn user_pass(user: &str, pass: &str) -> ConnectOptions {
    ConnectOptions::with_user_and_password(user.into(), pass.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_mode_add_rotate_rm_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let conf = dir.path().join("natrium.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\npid_file: \"{}\"\njetstream {{ store_dir: \"{}\" }}\n\
             authorization {{ timeout: 20, users: [ {{user: admin, password: adminpw}} ] }}\n\
             accounts {{\n  include tenants.conf\n}}\n",
            dir.path().join("natrium.pid").display(),
            dir.path().join("js").display()
        ),
    )
    .expect("config");
    let tenants = dir.path().join("tenants.conf");
    std::fs::write(&tenants, "").expect("empty tenants file");
    // (The timeout: bcrypt at cost 11 in a debug build on a busy machine takes its time.)
    let url = format!("nats://127.0.0.1:{port}");
    let c = conf.to_str().expect("utf-8");
    let server = Proc::start(&conf, &dir.path().join("1.log"));

    // A new account (with JetStream): written, checked, and applied by a live reload.
    let out = ok(tenant(&[
        "-c",
        c,
        "add",
        "acme",
        "--max-connections",
        "2",
        "--max-payload",
        "2KB",
        "--js-streams",
        "1",
        "--max-msgs-per-sec",
        "500",
    ])
    .await);
    assert!(out.contains("reloaded"), "{out}");
    let pass = password_in(&out);
    assert_eq!(mode(&tenants), 0o640);
    let text = std::fs::read_to_string(&tenants).expect("tenants.conf");
    assert!(text.contains("\"acme\"") && text.contains("$2b$"), "{text}");
    assert!(!text.contains(&pass), "only the hash is stored");

    // The tenant logs in; its limits apply, JetStream included.
    let (c1, mut ev1) = watched(user_pass("acme", &pass), &url)
        .await
        .expect("acme logs in");
    let (c2, mut ev2) = watched(user_pass("acme", &pass), &url)
        .await
        .expect("second connection");
    assert!(
        watched(user_pass("acme", &pass), &url).await.is_err(),
        "max_connections 2"
    );
    let js = async_nats::jetstream::new(c1.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "one".into(),
        subjects: vec!["one.>".into()],
        ..Default::default()
    })
    .await
    .expect("first stream");
    let second = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "two".into(),
            subjects: vec!["two.>".into()],
            ..Default::default()
        })
        .await;
    assert!(second.is_err(), "max_streams 1");
    // (2 KiB leaves room for the JetStream API's requests.)
    c2.publish("big", vec![b'x'; 2049].into())
        .await
        .expect("queued");
    let _ = c2.flush().await;
    event(&mut ev2, "maximum payload violation").await;

    let out = ok(tenant(&["-c", c, "ls"]).await);
    assert!(
        out.contains("acme")
            && out.contains("connections 2")
            && out.contains("publish rate 500 msgs/s")
            && out.contains("streams 1"),
        "{out}"
    );

    // rotate: applied by a live reload; the old password's connection is closed.
    let out = ok(tenant(&["-c", c, "rotate", "acme"]).await);
    assert!(out.contains("reloaded"), "{out}");
    let new_pass = password_in(&out);
    assert_ne!(new_pass, pass);
    event(&mut ev1, "authorization violation").await;
    assert!(watched(user_pass("acme", &pass), &url).await.is_err());
    let (_c3, mut ev3) = watched(user_pass("acme", &new_pass), &url)
        .await
        .expect("new password logs in");

    // rm: the tenant's connections are closed at once; the empty account stays until a
    // restart, and adding the name again reuses it without one.
    let out = ok(tenant(&["-c", c, "rm", "acme"]).await);
    assert!(out.contains("told to reload"), "{out}");
    event(&mut ev3, "authorization violation").await;
    assert!(watched(user_pass("acme", &new_pass), &url).await.is_err());
    assert!(ok(tenant(&["-c", c, "ls"]).await).contains("removed"));
    failed(tenant(&["-c", c, "rotate", "acme"]).await, "no tenant");
    let out = ok(tenant(&["-c", c, "add", "acme", "--js-streams", "1"]).await);
    assert!(out.contains("reloaded"), "{out}");
    let again = password_in(&out);
    watched(user_pass("acme", &again), &url)
        .await
        .expect("re-added tenant logs in without a restart");

    // Refusals leave the file as it was: a taken name or user name, a config that does not
    // include the file.
    let before = std::fs::read(&tenants).expect("read");
    failed(tenant(&["-c", c, "add", "acme"]).await, "already exists");
    failed(
        tenant(&["-c", c, "add", "beta", "--user", "admin"]).await,
        "user named \"admin\" already exists",
    );
    let other = dir.path().join("other.conf");
    std::fs::write(&other, format!("listen: 127.0.0.1:{port}\n")).expect("other config");
    failed(
        tenant(&[
            "-c",
            other.to_str().expect("utf-8"),
            "--tenants",
            tenants.to_str().expect("utf-8"),
            "add",
            "beta",
        ])
        .await,
        "does not include",
    );
    assert_eq!(std::fs::read(&tenants).expect("read"), before);

    // After a restart the tenant is still there, with its stream.
    server.stop();
    let server = Proc::start(&conf, &dir.path().join("2.log"));
    let (c4, _ev4) = watched(user_pass("acme", &again), &url)
        .await
        .expect("tenant logs in after a restart");
    let js = async_nats::jetstream::new(c4);
    js.get_stream("one").await.expect("its stream survived");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_from_scratch_with_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("natrium.conf");
    let jwt_dir = dir.path().join("jwt");
    let c = conf.to_str().expect("utf-8");
    let j = jwt_dir.to_str().expect("utf-8");
    let out = ok(tenant(&["-c", c, "init", "--jwt-dir", j]).await);
    let keys = dir.path().join("keys");
    assert_eq!(mode(&keys), 0o700);
    for f in [
        "operator.nk",
        "operator-identity.nk",
        "sys-account.nk",
        "sys.creds",
    ] {
        assert_eq!(mode(&keys.join(f)), 0o600, "{f}");
    }
    // A second init writes nothing over the first.
    let before = std::fs::read(keys.join("operator.nk")).expect("read");
    failed(
        tenant(&["-c", c, "init", "--jwt-dir", j]).await,
        "already exists",
    );
    assert_eq!(
        std::fs::read(keys.join("operator.nk")).expect("read"),
        before
    );

    // The printed lines make a working operator-mode configuration.
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("operator: ") || l.starts_with("resolver "))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    std::fs::write(
        &conf,
        format!("listen: 127.0.0.1:-1\n{}\n", lines.join("\n")),
    )
    .expect("config");
    let s = start_embedded(&conf).await;
    let url = s.client_url();
    ok(tenant(&["-c", c, "--server", &url, "add", "acme"]).await);
    let creds = std::fs::read_to_string(keys.join("tenants/acme/acme.creds")).expect("creds");
    let (client, _ev) = watched(creds_opts(&creds), &url)
        .await
        .expect("acme connects");
    let mut sub = client.subscribe("a").await.expect("sub");
    client.publish("a", "x".into()).await.expect("pub");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
            .await
            .expect("in time")
            .is_some()
    );
    // The system user init made can ask the server which accounts it has.
    let ls = ok(tenant(&["-c", c, "--server", &url, "ls"]).await);
    assert!(
        ls.contains("acme") && ls.contains("on server") && !ls.contains("NOT"),
        "{ls}"
    );
    s.shutdown().await;
}
