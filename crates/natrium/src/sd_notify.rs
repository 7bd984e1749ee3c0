//! systemd's service notification protocol (sd_notify(3)), for `Type=notify` units: when the
//! service manager starts the binary it puts the path of a unix datagram socket in
//! `NOTIFY_SOCKET`, and the service sends newline-separated `KEY=VALUE` assignments to it:
//! `READY=1` once clients can connect, `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1`
//! around a configuration reload, `STOPPING=1` when shutting down, `STATUS=...` for
//! `systemctl status`. Without `NOTIFY_SOCKET` nothing is sent. A failed send is logged at debug
//! level and otherwise ignored, as libsystemd's callers do: readiness is advisory.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if it is set to a socket path (`/...`) or a Linux
    /// abstract socket name (`@...`). Other forms (such as `vsock:`) are not supported and are
    /// reported by the caller's log.
    pub fn from_env() -> Result<Option<Notifier>, String> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let value = value.to_string_lossy().into_owned();
        let addr = if let Some(name) = value.strip_prefix('@') {
            abstract_addr(name.as_bytes())?
        } else if value.starts_with('/') {
            SocketAddr::from_pathname(&value)
                .map_err(|e| format!("NOTIFY_SOCKET {value:?}: {e}"))?
        } else {
            return Err(format!(
                "NOTIFY_SOCKET {value:?} is neither a path nor an abstract socket name"
            ));
        };
        let socket =
            UnixDatagram::unbound().map_err(|e| format!("NOTIFY_SOCKET {value:?}: {e}"))?;
        Ok(Some(Notifier { socket, addr }))
    }

    /// Sends one notification (`KEY=VALUE` lines).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!("sd_notify {state:?}: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic clock reading systemd 253+ asks for.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=Reloading configuration",
            monotonic_usec()
        ));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> Result<SocketAddr, String> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(|e| format!("NOTIFY_SOCKET @...: {e}"))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_: &[u8]) -> Result<SocketAddr, String> {
    Err("NOTIFY_SOCKET: abstract socket names exist only on Linux".into())
}

/// A status text fits on one line of the notification.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
