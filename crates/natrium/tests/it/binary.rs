//! The `natrium` binary as harnesses written for nats-server drive it: flags, the log lines they
//! wait for, pid and ports files, config files, `-t`, HTTPS monitoring, and shutdown on SIGTERM.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

/// Waits until `path` contains `needle`; returns the file's text.
fn wait_for(path: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{needle:?} never appeared in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listen_port(log: &str) -> u16 {
    let line = log
        .lines()
        .find(|l| l.contains("Listening for client connections on"))
        .expect("listening line");
    line.rsplit(':')
        .next()
        .expect("port")
        .trim()
        .parse()
        .expect("numeric port")
}

#[test]
fn starts_like_nats_server_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let pid = dir.path().join("server.pid");
    let mut child = Command::new(BIN)
        .args(["-p", "-1", "-a", "127.0.0.1", "-n", "harness", "-m", "-1"])
        .arg("-l")
        .arg(&log)
        .arg("-P")
        .arg(&pid)
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let text = wait_for(&log, "Server is ready");
    // nats-server's line format: [pid] date time [INF] text
    let first = text.lines().next().expect("a line");
    assert!(first.starts_with(&format!("[{}] ", child.id())), "{first}");
    assert!(text.contains("[INF] Starting natrium"), "{text}");
    assert!(text.contains(natrium::VERSION));
    let port = listen_port(&text);
    assert_ne!(port, 0);
    assert_eq!(
        std::fs::read_to_string(&pid).expect("pid file"),
        child.id().to_string()
    );
    let ports_file = dir.path().join(format!("natrium_{}.ports", child.id()));
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ports_file).expect("ports file")).expect("json");
    assert_eq!(ports["nats"][0], format!("nats://127.0.0.1:{port}"));
    let monitor = ports["monitoring"][0]
        .as_str()
        .expect("monitoring url")
        .to_string();
    assert!(text.contains("Starting http monitor on"), "{text}");

    // A real client works against it.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        assert_eq!(c.server_info().server_name, "harness");
        c.flush().await.expect("flush");
        // Harnesses poll /varz until it answers 200.
        let varz = reqwest::get(format!("{monitor}/varz")).await.expect("varz");
        assert_eq!(varz.status(), 200);
        let v: serde_json::Value = varz.json().await.expect("json");
        assert_eq!(v["server_name"], "harness");
    });

    // SAFETY-free: sending a signal to our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!pid.exists(), "pid file removed on exit");
    assert!(std::fs::read_to_string(&log)
        .expect("log")
        .contains("Server Exiting"));
}

#[test]
fn config_file_and_test_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("server.conf");
    let mut f = std::fs::File::create(&conf).expect("create");
    writeln!(
        f,
        "# a config written for nats-server\nlisten: 127.0.0.1:-1\nserver_name: from-conf\n\
         max_payload: 64KB\nauthorization {{ user: u, password: p }}\nmqtt {{ port: 1883 }}"
    )
    .expect("write");
    drop(f);
    let out = Command::new(BIN)
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("run -t");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mqtt") && stderr.contains("not supported yet"),
        "{stderr}"
    );

    let log = dir.path().join("c.log");
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .arg("-l")
        .arg(&log)
        .spawn()
        .expect("spawn");
    let text = wait_for(&log, "Server is ready");
    let port = listen_port(&text);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("127.0.0.1:{port}");
        assert!(
            async_nats::connect(&url).await.is_err(),
            "auth from the file is enforced"
        );
        let c = async_nats::ConnectOptions::with_user_and_password("u".into(), "p".into())
            .connect(&url)
            .await
            .expect("connect");
        assert_eq!(c.server_info().server_name, "from-conf");
        assert_eq!(c.server_info().max_payload, 64 * 1024);
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().expect("wait").success());

    // A broken config names file, line and column and fails -t.
    std::fs::write(&conf, "port: 4222\nauthorization {\n  user: x\n").expect("write");
    let out = Command::new(BIN)
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("run -t");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.conf"), "{stderr}");
}

#[test]
fn unknown_and_unimplemented_flags_are_named() {
    let out = Command::new(BIN).arg("--bogus").output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-bogus"));
    let out = Command::new(BIN).arg("--syslog").output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-syslog"));
    let out = Command::new(BIN).arg("-v").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(natrium::VERSION));
}

#[test]
fn https_monitor_flag_log_line_and_ports_file() {
    let pki = crate::common::pki::Pki::new();
    let (cert, key) = pki.server_cert();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let mut child = Command::new(BIN)
        .args(["-p", "-1", "-a", "127.0.0.1", "--tls", "-ms", "-1"])
        .arg("--tlscert")
        .arg(&cert)
        .arg("--tlskey")
        .arg(&key)
        .arg("-l")
        .arg(&log)
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let text = wait_for(&log, "Server is ready");
    let line = text
        .lines()
        .find(|l| l.contains("Starting https monitor on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("no https monitor line in:\n{text}"));
    let https: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("numeric port");
    let port = listen_port(&text);
    // nats-server's ports file: `tls://` for clients, the monitor under `monitoring`.
    let ports_file = dir.path().join(format!("natrium_{}.ports", child.id()));
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ports_file).expect("ports file")).expect("json");
    assert_eq!(ports["nats"][0], format!("tls://127.0.0.1:{port}"));
    assert_eq!(ports["monitoring"][0], format!("https://127.0.0.1:{https}"));

    let ca = std::fs::read(pki.ca_file()).expect("ca");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
            .build()
            .expect("client");
        let varz = client
            .get(format!("https://127.0.0.1:{https}/varz"))
            .send()
            .await
            .expect("varz over https");
        assert_eq!(varz.status(), 200);
        let v: serde_json::Value = varz.json().await.expect("json");
        assert_eq!(v["https_port"], https);
        assert_eq!(v["tls_required"], true);
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());

    // Without TLS the flag is refused at startup, in nats-server's words.
    let out = Command::new(BIN)
        .args(["-p", "-1", "-ms", "-1"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS cert and key required for HTTPS"),
        "{stderr}"
    );
}

/// SIGUSR2 (what `--signal ldm=PID` sends): lame duck mode. Connected clients get an INFO with
/// `"ldm":true`, new connections are refused, the clients are closed after the grace period and
/// the process exits cleanly.
#[test]
fn lame_duck_mode_on_sigusr2() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let conf = dir.path().join("ldm.conf");
    std::fs::write(
        &conf,
        "lame_duck_duration: \"1s\"\nlame_duck_grace_period: \"300ms\"\n",
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["-p", "-1", "-a", "127.0.0.1", "-c"])
        .arg(&conf)
        .arg("-l")
        .arg(&log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let port = listen_port(&wait_for(&log, "Server is ready"));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .expect("send");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("INFO");
        assert!(line.starts_with("INFO "), "{line}");
        line.clear();
        r.read_line(&mut line).expect("PONG");
        assert_eq!(line, "PONG\r\n");
        clients.push(r);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) };
    for r in &mut clients {
        let mut line = String::new();
        r.read_line(&mut line).expect("lame duck INFO");
        assert!(
            line.starts_with("INFO ") && line.contains("\"ldm\":true"),
            "{line}"
        );
    }
    wait_for(&log, "Entering lame duck mode, stop accepting new clients");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no new clients in lame duck mode"
    );
    // Each client is closed (end of stream) once the grace period is over.
    for r in &mut clients {
        let mut rest = String::new();
        let n = r.read_line(&mut rest).expect("read until closed");
        assert_eq!(n, 0, "closed, not {rest:?}");
    }
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status}");
    let text = wait_for(&log, "Server Exiting..");
    assert!(text.contains("Closing existing clients"), "{text}");
}

/// `-V` traces protocol lines in nats-server's form, both ways, and never shows a password.
#[test]
fn trace_flag_logs_protocol_lines_without_secrets() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let child = Command::new(BIN)
        .args([
            "-p",
            "-1",
            "-a",
            "127.0.0.1",
            "-V",
            "--user",
            "alice",
            "--pass",
            "s3cr3t-pw",
        ])
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Stops the server however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let _server = Stop(child);
    let port = listen_port(&wait_for(&log, "Server is ready"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(
        b"CONNECT {\"user\":\"alice\",\"pass\":\"s3cr3t-pw\",\"name\":\"tracer\"}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n",
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut seen = String::new();
    while !seen.ends_with("PONG\r\n") {
        let mut line = String::new();
        assert!(r.read_line(&mut line).expect("read") > 0, "closed: {seen}");
        seen.push_str(&line);
    }
    let text = wait_for(&log, "->> [PONG]");
    for want in [
        "[TRC] 127.0.0.1:",
        "\"tracer\" - <<- [SUB foo  1]",
        "<<- [PUB foo 2]",
        "<<- MSG_PAYLOAD: [\"hi\"]",
        "->> [MSG foo 1 2]",
        "<<- [PING]",
        "[REDACTED]",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(
        !text.contains("s3cr3t-pw"),
        "the password was logged:\n{text}"
    );
}

/// Three `natrium` processes, two started with nats-server's cluster flags and one from a
/// config file with a `cluster {}` block, form one cluster: the third learns the second
/// through the first, and a message published on one node reaches a subscriber on another.
#[test]
fn three_processes_form_a_cluster_from_flags_and_a_config_file() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster_port = |log: &str| -> u16 {
        let line = log
            .lines()
            .find(|l| l.contains("Listening for route connections on"))
            .expect("route listener line");
        line.rsplit(':')
            .next()
            .expect("port")
            .trim()
            .parse()
            .expect("port")
    };
    let spawn = |name: &str, extra: &[String]| {
        let log = dir.path().join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(["-p", "-1", "-a", "127.0.0.1", "-n", name])
            .args(extra)
            .arg("-l")
            .arg(&log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let text = wait_for(&log, "Server is ready");
        (Stop(child), log, text)
    };
    let (_n1, log1, text1) = spawn(
        "n1",
        &["--cluster", "nats://127.0.0.1:-1", "--cluster_name", "c1"].map(String::from),
    );
    assert!(text1.contains("Cluster name is c1"), "{text1}");
    let p1 = cluster_port(&text1);
    let (_n2, log2, text2) = spawn(
        "n2",
        &[
            "--cluster".to_string(),
            "nats://127.0.0.1:-1".into(),
            "--cluster_name".into(),
            "c1".into(),
            "--routes".into(),
            format!("nats://127.0.0.1:{p1}"),
        ],
    );
    let conf = dir.path().join("n3.conf");
    std::fs::write(
        &conf,
        format!(
            "cluster {{\n  name: c1\n  listen: 127.0.0.1:-1\n  routes: [\n    nats://127.0.0.1:{p1}\n  ]\n}}\n"
        ),
    )
    .expect("config");
    let (_n3, log3, text3) = spawn("n3", &["-c".to_string(), conf.display().to_string()]);
    // Every node ends up with a route to each of the other two.
    for log in [&log1, &log2, &log3] {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches("Route connection created").count() >= 2 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let connect = |text: &str| {
        let s = TcpStream::connect(("127.0.0.1", listen_port(text))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    let mut sub = connect(&text2);
    sub.write_all(b"CONNECT {}\r\nSUB news.> 1\r\nPING\r\n")
        .expect("sub");
    let mut r = BufReader::new(sub.try_clone().expect("clone"));
    let mut line = String::new();
    while !line.starts_with("PONG") {
        line.clear();
        r.read_line(&mut line).expect("read");
    }
    let mut publisher = connect(&text3);
    // Interest crosses the cluster asynchronously: publish until the subscriber hears one.
    let start = Instant::now();
    sub.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut got = String::new();
    while !got.contains("MSG news.flash 1 5") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never arrived: {got}"
        );
        publisher
            .write_all(b"CONNECT {}\r\nPUB news.flash 5\r\nhello\r\n")
            .expect("publish");
        let mut l = String::new();
        if r.read_line(&mut l).is_ok() {
            got.push_str(&l);
        }
    }
}

#[test]
fn websocket_listener_log_lines_and_ports_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("ws.conf");
    std::fs::write(
        &conf,
        "listen: 127.0.0.1:-1\nwebsocket { listen: \"127.0.0.1:-1\", no_tls: true }\n",
    )
    .expect("write");
    let log = dir.path().join("ws.log");
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .arg("-l")
        .arg(&log)
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let text = wait_for(&log, "Server is ready");
    assert!(
        text.contains("[WRN] Websocket not configured with TLS. DO NOT USE IN PRODUCTION!"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("Listening for websocket clients on ws://127.0.0.1:"))
        .expect("the listener's line");
    let port: u16 = line
        .rsplit(':')
        .next()
        .expect("port")
        .trim()
        .parse()
        .expect("port");
    let ports_file = dir.path().join(format!("natrium_{}.ports", child.id()));
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ports_file).expect("ports file")).expect("json");
    let url = format!("ws://127.0.0.1:{port}");
    assert_eq!(ports["websocket"][0], url.as_str());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = async_nats::connect(url).await.expect("ws connect");
        c.flush().await.expect("flush");
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
}
