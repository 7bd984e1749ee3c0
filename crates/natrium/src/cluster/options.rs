//! The `cluster {}` block (and `--cluster`, `--routes`, ... flags) as nats-server reads it, and
//! route URLs (`nats-route://[user:pass@]host:port`).

use std::time::Duration;

/// A cluster member's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The cluster's name; without one this server makes one up and takes a peer's.
    pub name: Option<String>,
    pub host: String,
    /// `-1` picks a random free port.
    pub port: i32,
    /// Explicit routes: peers this server connects to (and reconnects to forever).
    pub routes: Vec<RouteUrl>,
    /// Credentials peers must present (`authorization { user, password, timeout }`).
    pub user: Option<String>,
    pub password: Option<String>,
    pub auth_timeout: Duration,
    /// `host:port` peers are told to connect to instead of the listener's address.
    pub advertise: Option<String>,
    /// Do not tell clients about the other servers' client URLs.
    pub no_advertise: bool,
    /// How many times an implicit route (learned from a peer) is retried.
    pub connect_retries: u32,
    /// Route connections per peer, each carrying the accounts whose name hashes to it
    /// (nats-server 2.10's pooling; 3 by default as there, `-1`: one connection, no pooling).
    pub pool_size: i32,
    /// Accounts with a dedicated route connection of their own to each peer (`accounts`).
    pub accounts: Vec<String>,
    /// The configured route compression mode (negotiated as `off`: Natrium has no s2).
    pub compression: Compression,
    pub ping_interval: Option<Duration>,
    pub ping_max: Option<u32>,
    /// TLS on routes (handshake first, both ways).
    pub tls: Option<crate::conn::TlsOptions>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            name: None,
            host: "0.0.0.0".into(),
            port: 6222,
            routes: Vec::new(),
            user: None,
            password: None,
            auth_timeout: Duration::from_secs(2),
            advertise: None,
            no_advertise: false,
            connect_retries: 0,
            pool_size: DEFAULT_POOL_SIZE,
            accounts: Vec::new(),
            compression: Compression::Accept,
            ping_interval: None,
            ping_max: None,
            tls: None,
        }
    }
}

/// nats-server 2.10's route compression modes. Natrium does not compress: it tells peers
/// `off` (so a peer asking for s2 runs uncompressed with it, as nats-server's negotiation
/// decides), or nothing with `not supported` (as a server without compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    NotSupported,
    Off,
    /// Compress when the peer asks (nats-server's default): here the same as off.
    Accept,
    S2Auto,
    S2Uncompressed,
    S2Fast,
    S2Better,
    S2Best,
}

impl Compression {
    /// A mode as nats-server spells it (`on`/`enabled`/`true` are `s2_fast`).
    pub fn parse(s: &str) -> Result<Compression, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "not supported" | "not_supported" => Compression::NotSupported,
            "disabled" | "off" | "false" => Compression::Off,
            "accept" => Compression::Accept,
            "auto" | "s2_auto" => Compression::S2Auto,
            "s2_uncompressed" => Compression::S2Uncompressed,
            "on" | "enabled" | "true" | "fast" | "s2_fast" => Compression::S2Fast,
            "better" | "s2_better" => Compression::S2Better,
            "best" | "s2_best" => Compression::S2Best,
            _ => return Err(format!("unsupported compression mode {s:?}")),
        })
    }

    /// An s2 mode (which Natrium cannot run).
    pub fn wants_s2(self) -> bool {
        !matches!(
            self,
            Compression::NotSupported | Compression::Off | Compression::Accept
        )
    }

    /// What this server puts in its route INFO: `off` whatever is configured (a peer in
    /// `accept` or an s2 mode then chooses no compression), nothing for `not supported`.
    pub fn in_info(self) -> &'static str {
        match self {
            Compression::NotSupported => "",
            _ => "off",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::NotSupported => "not supported",
            Compression::Off => "off",
            Compression::Accept => "accept",
            Compression::S2Auto => "s2_auto",
            Compression::S2Uncompressed => "s2_uncompressed",
            Compression::S2Fast => "s2_fast",
            Compression::S2Better => "s2_better",
            Compression::S2Best => "s2_best",
        })
    }
}

/// Route connections per peer unless configured: nats-server 2.10's default, which a 2.10
/// peer requires of a pooling peer (it refuses a different size).
pub const DEFAULT_POOL_SIZE: i32 = 3;

impl ClusterOptions {
    /// Whether routes pool (a size of 1 pools too: one shared connection plus dedicated ones).
    pub fn pooling(&self) -> bool {
        self.pool_size > 0
    }

    /// The accounts with dedicated routes: the configured ones and, when pooling, the system
    /// account (as nats-server 2.10 pins it unless it is disabled).
    pub fn pinned_accounts(&self, system_account: Option<&str>) -> Vec<String> {
        if !self.pooling() {
            return Vec::new();
        }
        let mut v = self.accounts.clone();
        if let Some(sys) = system_account.filter(|s| !s.is_empty()) {
            if !v.iter().any(|a| a == sys) {
                v.push(sys.to_string());
            }
        }
        v
    }
}

/// The longest a route goes without a PING, as in nats-server.
pub const MAX_ROUTE_PING_INTERVAL: Duration = Duration::from_secs(30);

/// A peer to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct RouteUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RouteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Shown without the password (it never reaches a log).
impl std::fmt::Display for RouteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.user {
            Some(u) => write!(f, "nats-route://{u}:[REDACTED]@{host}:{}", self.port),
            None => write!(f, "nats-route://{host}:{}", self.port),
        }
    }
}

impl RouteUrl {
    /// Parses `scheme://[user[:pass]@]host[:port][/]` (any scheme; the port defaults to 6222).
    pub fn parse(s: &str) -> Result<RouteUrl, String> {
        let s = s.trim();
        let bad = || format!("error parsing route url [{s:?}]");
        let rest = s.split_once("://").map_or(s, |(_, r)| r);
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        // `-1` (a random port, for a listener) is port 0.
        let port_of = |p: &str| {
            if p == "-1" {
                Ok(0)
            } else {
                p.parse::<u16>().map_err(|_| bad())
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => port_of(p)?,
                None if after.is_empty() => 6222,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), port_of(p)?),
                None => (hostport.to_string(), 6222),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        Ok(RouteUrl {
            host,
            port,
            user,
            password,
        })
    }

    /// `host:port` to dial.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_urls_in_the_forms_nats_server_takes() {
        let u = RouteUrl::parse("nats-route://ruser:T0pS3cr3t@otherdockerhost:6222").expect("url");
        assert_eq!(u.host, "otherdockerhost");
        assert_eq!(u.port, 6222);
        assert_eq!(u.user.as_deref(), Some("ruser"));
        assert_eq!(u.password.as_deref(), Some("T0pS3cr3t"));
        assert!(!format!("{u} {u:?}").contains("T0pS3cr3t"), "never shown");
        let u = RouteUrl::parse("nats://127.0.0.1:7244/").expect("url");
        assert_eq!((u.host.as_str(), u.port, u.user), ("127.0.0.1", 7244, None));
        assert_eq!(
            RouteUrl::parse("nats://[::1]:7000").expect("v6").address(),
            "[::1]:7000"
        );
        assert_eq!(RouteUrl::parse("nats://seed").expect("no port").port, 6222);
        assert!(RouteUrl::parse("nats://host:notaport").is_err());
        assert!(RouteUrl::parse("nats://:4222").is_err());
    }
}
