//! The `natrium` binary refuses what nats-server refuses, in its words: keys nats-server does
//! not know (typos) at any level, with file, line and column; `-t` catches what a start would
//! fail on (TLS files, the JetStream store directory, a missing system account) and needs
//! `-c`; errors name their context; log files carry no terminal colour codes.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

/// Writes `text` as `name` in `dir` and returns its path.
fn conf(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    // A start that should fail must not hang the test if it does not.
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn natrium");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("natrium {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn test_config(path: &Path) -> Output {
    run(&["-t".as_ref(), "-c".as_ref(), path.as_os_str()])
}

/// Starts the server on `path` (random ports); it is expected to fail.
fn start_fails(path: &Path) -> String {
    let out = run(&[
        "-c".as_ref(),
        path.as_os_str(),
        "-p".as_ref(),
        "-1".as_ref(),
    ]);
    assert!(!out.status.success(), "started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_keys_are_errors_with_their_place_at_every_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = conf(
        dir.path(),
        "typo.conf",
        "port: 4222\nstore_dri: /tmp/x\njetstream {\n  store_dri: /tmp/y\n}\n\
         authorization {\n  users: [\n    {user: a, pasword: b}\n  ]\n}\n\
         accounts {\n  A {\n    limts: {}\n  }\n}\ntls {\n  cert_fil: x.pem\n}\n",
    );
    let file = path.display().to_string();
    let want = [
        format!("{file}:2:1: unknown field \"store_dri\""),
        format!("{file}:4:3: unknown field \"store_dri\""),
        format!("{file}:8:15: unknown field \"pasword\""),
        format!("{file}:13:5: unknown field \"limts\""),
        format!("{file}:17:3: error parsing tls config, unknown field \"cert_fil\""),
    ];
    let out = test_config(&path);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    for w in &want {
        assert!(err.contains(w.as_str()), "{w:?} missing from:\n{err}");
    }
    // A start fails the same way, before it binds anything.
    let err = start_fails(&path);
    assert!(err.contains(want[0].as_str()), "{err}");
}

#[test]
fn keys_nats_server_knows_are_warnings_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = conf(
        dir.path(),
        "known.conf",
        "port: 4222\njetstream {\n  store_dir: /tmp/natrium-known\n  unique_tag: az\n}\ngateway {\n  name: g1\n}\n",
    );
    let out = test_config(&path);
    assert!(out.status.success(), "{out:?}");
    let err = stderr(&out);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:4:3: jetstream key \"unique_tag\" is a nats-server option not supported yet by this version of natrium; it is ignored")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6:1: key \"gateway\"")),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is valid"),
        "{out:?}"
    );
}

#[test]
fn test_flag_needs_a_config_file() {
    let out = run(&["-t".as_ref()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out)
            .contains("must specify [-c, --config] option to check configuration file syntax"),
        "{out:?}"
    );
}

#[test]
fn test_flag_catches_tls_files_missing_or_not_pem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = conf(
        dir.path(),
        "missing.conf",
        "tls {\n  cert_file: /nonexistent/server.pem\n  key_file: /nonexistent/server.key\n}\n",
    );
    let out = test_config(&missing);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("/nonexistent/server.pem"), "{out:?}");
    let junk = conf(dir.path(), "junk.pem", "this is not PEM\n");
    let not_pem = conf(
        dir.path(),
        "notpem.conf",
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
            junk.display().to_string(),
            junk.display().to_string()
        ),
    );
    let out = test_config(&not_pem);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("junk.pem"), "{out:?}");
}

#[test]
fn store_directory_that_is_a_file_is_named_as_the_jetstream_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = conf(dir.path(), "not-a-dir", "");
    let path = conf(
        dir.path(),
        "js.conf",
        &format!(
            "jetstream {{\n  store_dir: {:?}\n}}\n",
            file.display().to_string()
        ),
    );
    let want = format!(
        "Can't start JetStream: storage directory {}: is not a directory",
        file.display()
    );
    let out = test_config(&path);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains(&want), "{out:?}");
    let err = start_fails(&path);
    assert!(err.contains(&want), "{err}");
    // The flag too.
    let out = run(&[
        "-js".as_ref(),
        "-sd".as_ref(),
        file.as_os_str(),
        "-p".as_ref(),
        "-1".as_ref(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains(&want), "{out:?}");
}

#[test]
fn system_account_must_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = conf(
        dir.path(),
        "sys.conf",
        "accounts {\n  A: {}\n}\nsystem_account: NOPE\n",
    );
    let out = test_config(&path);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("error resolving system account: account missing"),
        "{out:?}"
    );
    let err = start_fails(&path);
    assert!(
        err.contains("error resolving system account: account missing") && err.contains("NOPE"),
        "{err}"
    );
    // Naming an account that is there is fine.
    let ok = conf(
        dir.path(),
        "sys-ok.conf",
        "accounts {\n  SYS: {}\n}\nsystem_account: SYS\n",
    );
    assert!(test_config(&ok).status.success());
}

#[test]
fn bad_ports_name_the_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, line) in [
        ("range.conf", "server_name: x\nport: 99999\n", 2),
        ("text.conf", "port: \"abc\"\n", 1),
        ("listen.conf", "\n\nlisten: \"127.0.0.1:70000\"\n", 3),
        ("http.conf", "http_port: 123456\n", 1),
    ] {
        let path = conf(dir.path(), name, text);
        let out = test_config(&path);
        assert!(!out.status.success(), "{name}: {out:?}");
        let want = format!("{}:{line}:", path.display());
        assert!(stderr(&out).contains(&want), "{name}: {want} in {out:?}");
    }
}

/// Log lines with fields (the store's warnings) are written without ANSI styling to a log file:
/// a store whose last record was torn warns at start.
#[test]
fn log_files_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let spawn = |log: &Path| {
        Command::new(BIN)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .arg("-l")
            .arg(log)
            .spawn()
            .expect("spawn")
    };
    let wait_for = |log: &Path, needle: &str| {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{needle:?} not in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first_log = dir.path().join("first.log");
    let mut child = spawn(&first_log);
    let text = wait_for(&first_log, "Server is ready");
    let port: u16 = text
        .lines()
        .find(|l| l.contains("Listening for client connections on"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("port");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(c);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "S".into(),
            subjects: vec!["s.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
        for i in 0..3 {
            js.publish("s.x", format!("m{i}").into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("exit");
    // Tear the last record of the stream's block.
    let blk = walk(&store)
        .into_iter()
        .find(|p| {
            p.extension().is_some_and(|e| e == "blk")
                && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
        })
        .expect("a block file");
    let len = std::fs::metadata(&blk).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blk)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    let log = dir.path().join("server.log");
    let mut child = spawn(&log);
    // The store's warnings are logged while the stream recovers, before ready.
    let text = wait_for(&log, "Server is ready");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("exit");
    assert!(
        text.contains("torn last record") || text.contains("store damaged"),
        "no store warning in:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in the log file:\n{text:?}"
    );

    // Without `-l` the log goes to stderr; piped (not a terminal), it is plain text too.
    let len = std::fs::metadata(&blk).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blk)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    let mut child = Command::new(BIN)
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(&store)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("Server is ready") {
            match std::io::Read::read(&mut stderr, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let t0 = Instant::now();
    while !reader.is_finished() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let text = reader.join().expect("stderr reader");
    child.wait().expect("exit");
    assert!(
        text.contains("torn last record") || text.contains("store damaged"),
        "no store warning on stderr:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape on a piped stderr:\n{text:?}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
