//! systemd readiness (`Type=notify`): the binary, started with a `NOTIFY_SOCKET` this test binds
//! as the service manager would, sends `READY=1` only once its client port accepts connections
//! (and monitoring answers), `RELOADING=1` then `READY=1` around a SIGHUP reload (with the
//! failure in `STATUS` when the reload is refused), and `STOPPING=1` on SIGTERM. A server that
//! can not start never reports ready.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

/// The next notification as its `KEY=VALUE` assignments, or None after `timeout`.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<HashMap<String, String>> {
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = match sock.recv(&mut buf) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return None
        }
        Err(e) => panic!("recv: {e}"),
    };
    let text = std::str::from_utf8(&buf[..n]).expect("utf-8 notification");
    Some(
        text.lines()
            .map(|l| {
                let (k, v) = l.split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect(),
    )
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port in `STATUS=Accepting client connections on 127.0.0.1:PORT`.
fn status_port(m: &HashMap<String, String>) -> u16 {
    let status = m.get("STATUS").expect("STATUS with READY");
    status
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {status:?}"))
}

/// Reads INFO from the client port: it accepts and speaks.
fn info_from(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("client port accepts");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("INFO line");
    line
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("monitor port accepts");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn ready_after_listening_reload_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let http = free_port();
    let conf = dir.path().join("natrium.conf");
    let body = |debug: bool| {
        format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:{http}\ndebug: {debug}\njetstream {{ store_dir: \"{}\" }}\n",
            dir.path().join("js").display()
        )
    };
    std::fs::write(&conf, body(false)).expect("config");
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .arg("-l")
        .arg(dir.path().join("server.log"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");

    let ready = recv(&sock, Duration::from_secs(30)).expect("a notification");
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    // The moment READY=1 arrives, the client port answers with INFO and /healthz is up.
    let port = status_port(&ready);
    let info = info_from(port);
    assert!(info.starts_with("INFO {"), "{info:?}");
    let health = http_get(http, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("log");
    assert!(log.contains("Server is ready"), "{log}");

    // A reload that applies: RELOADING=1 (with the monotonic clock), then READY=1.
    std::fs::write(&conf, body(true)).expect("config");
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = recv(&sock, Duration::from_secs(10)).expect("RELOADING");
    assert_eq!(reloading.get("RELOADING").map(String::as_str), Some("1"));
    assert!(
        reloading
            .get("MONOTONIC_USEC")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0),
        "{reloading:?}"
    );
    let again = recv(&sock, Duration::from_secs(10)).expect("READY after reload");
    assert_eq!(again.get("READY").map(String::as_str), Some("1"));
    assert!(!again["STATUS"].contains("failed"), "{again:?}");

    // A reload the server refuses (the monitoring port can not change): still READY=1, with
    // the failure in STATUS.
    std::fs::write(
        &conf,
        body(true).replace(&format!(":{http}"), &format!(":{}", free_port())),
    )
    .expect("config");
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(
        recv(&sock, Duration::from_secs(10)).expect("RELOADING")["RELOADING"],
        "1"
    );
    let refused = recv(&sock, Duration::from_secs(10)).expect("READY after refused reload");
    assert_eq!(refused["READY"], "1");
    assert!(
        refused["STATUS"].contains("last reload failed") && refused["STATUS"].contains("http"),
        "{refused:?}"
    );

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = recv(&sock, Duration::from_secs(10)).expect("STOPPING");
    assert_eq!(stopping.get("STOPPING").map(String::as_str), Some("1"));
    assert!(wait_exit(&mut child).success());
}

#[test]
fn abstract_socket_and_no_ready_when_start_fails() {
    // The abstract namespace, as systemd itself uses (`@/org/freedesktop/systemd1/notify/...`).
    let name = format!("natrium-test-{}-{}", std::process::id(), free_port());
    let sock = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        UnixDatagram::bind_addr(&addr).expect("bind abstract socket")
    };

    // The client port is taken: the server exits with an error and never says READY=1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let mut child = Command::new(BIN)
        .args(["-a", "127.0.0.1", "-p", &port])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(!wait_exit(&mut child).success(), "port in use is an error");
    assert_eq!(recv(&sock, Duration::from_millis(300)), None);
    drop(taken);

    // Free to start: READY=1 arrives over the abstract socket.
    let mut child = Command::new(BIN)
        .args(["-a", "127.0.0.1", "-p", "-1"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let ready = recv(&sock, Duration::from_secs(30)).expect("READY");
    assert_eq!(ready["READY"], "1");
    assert!(info_from(status_port(&ready)).starts_with("INFO {"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(
        recv(&sock, Duration::from_secs(10)).expect("STOPPING")["STOPPING"],
        "1"
    );
    assert!(wait_exit(&mut child).success());
}
