//! The `leafnodes {}` block as nats-server reads it: the listener a hub accepts leaf servers on
//! (with its own authorization), and the remotes a leaf dials.

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::RouteUrl;

/// A hub's listener and a leaf's remotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafOptions {
    pub host: String,
    /// The listener's port (`-1`: a random one); `None`: no listener (a leaf only).
    pub port: Option<i32>,
    /// `host:port` leaves are told to connect to instead of the listener's address.
    pub advertise: Option<String>,
    /// Do not tell leaves about this server's leafnode URL.
    pub no_advertise: bool,
    pub auth: LeafAuth,
    pub remotes: Vec<RemoteLeaf>,
    /// The first wait before dialling a remote again (doubled per failure, up to 10 s).
    pub reconnect: Duration,
    /// TLS on accepted connections (after the plaintext INFO, as nats-server 2.9).
    pub tls: Option<crate::conn::TlsOptions>,
}

impl Default for LeafOptions {
    fn default() -> Self {
        LeafOptions {
            host: "0.0.0.0".into(),
            port: None,
            advertise: None,
            no_advertise: false,
            auth: LeafAuth::default(),
            remotes: Vec::new(),
            reconnect: Duration::from_secs(1),
            tls: None,
        }
    }
}

/// `leafnodes { authorization { ... } }`: who may connect as a leaf, and the account each
/// binds to. Without user or users, leaves authenticate as clients would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    /// The account the single `user` binds to (the global account without one).
    pub account: Option<String>,
    pub users: Vec<LeafUser>,
    pub timeout: Duration,
}

impl Default for LeafAuth {
    fn default() -> Self {
        LeafAuth {
            user: None,
            password: None,
            account: None,
            users: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One of `authorization { users [...] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafUser {
    pub user: String,
    pub password: String,
    pub account: Option<String>,
}

/// One hub this server connects to as a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLeaf {
    /// Tried in turn (`url` and `urls`).
    pub urls: Vec<RouteUrl>,
    /// A `.creds` file: the user JWT sent, its seed signs the hub's nonce.
    pub credentials: Option<PathBuf>,
    /// The local account the connection binds to (the global account without one).
    pub account: Option<String>,
    /// This server is the hub of the connection it dials.
    pub hub: bool,
    /// Subjects not received from the hub (their interest is not sent).
    pub deny_imports: Vec<String>,
    /// Subjects not sent to the hub.
    pub deny_exports: Vec<String>,
    /// TLS to the hub (`tls {}`, or a `tls://` URL with it): the hub's certificate checked
    /// against `ca_file` unless `insecure`, this server's presented when set.
    pub tls: Option<crate::conn::TlsOptions>,
    /// The URLs are `ws://` or `wss://`: the connection runs over WebSocket to the hub's
    /// WebSocket listener (path `/leafnode`).
    pub ws: bool,
    /// `ws_compression`: ask for permessage-deflate.
    pub ws_compression: bool,
    /// `ws_no_masking`: ask the hub to take unmasked frames.
    pub ws_no_masking: bool,
}

/// What a remote URL's scheme asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheme {
    pub tls: bool,
    pub ws: bool,
}

/// The default leafnode port, used when a remote URL names none.
pub const DEFAULT_LEAF_PORT: u16 = 7422;

/// Parses a remote's URL: `nats-leaf://`, `nats://`, `tls://`, `ws://`, `wss://` or no
/// scheme, `[user[:pass]@]host[:port]`. Also says whether the scheme asks for TLS or WebSocket.
pub fn remote_url(s: &str) -> Result<(RouteUrl, Scheme), String> {
    let t = s.trim();
    let mut scheme = Scheme::default();
    let mut default_port = DEFAULT_LEAF_PORT;
    if let Some((name, _)) = t.split_once("://") {
        match name.to_ascii_lowercase().as_str() {
            "nats-leaf" | "nats" => {}
            "tls" => scheme.tls = true,
            "ws" => {
                scheme.ws = true;
                default_port = 80;
            }
            "wss" => {
                scheme = Scheme {
                    tls: true,
                    ws: true,
                };
                default_port = 443;
            }
            _ => return Err(format!("error parsing leafnode remote url [{t:?}]")),
        }
    }
    // A path (`ws://hub/some/path`) is not kept: the hub is asked for `/leafnode`.
    let t = match t.split_once("://") {
        Some((name, rest)) => {
            let cut = rest.find('/').unwrap_or(rest.len());
            &s.trim()[..name.len() + 3 + cut]
        }
        None => t,
    };
    let mut u =
        RouteUrl::parse(t).map_err(|_| format!("error parsing leafnode remote url [{t:?}]"))?;
    let hostport = t.split_once("://").map_or(t, |(_, r)| r);
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let explicit_port = hostport
        .trim_end_matches('/')
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.ends_with('[') && p.chars().all(|c| c.is_ascii_digit()));
    if !explicit_port {
        u.port = default_port;
    }
    Ok((u, scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls() {
        let (u, s) = remote_url("nats-leaf://a:b@hub.example:7000").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, s),
            ("hub.example", 7000, Scheme::default())
        );
        assert_eq!(u.user.as_deref(), Some("a"));
        assert_eq!(remote_url("nats://hub").expect("url").0.port, 7422);
        assert_eq!(remote_url("hub:6222").expect("url").0.port, 6222);
        assert!(remote_url("tls://hub:7422").expect("url").1.tls);
        let (u, s) = remote_url("ws://hub:8080/x").expect("url");
        assert_eq!(
            (u.port, s),
            (
                8080,
                Scheme {
                    tls: false,
                    ws: true
                }
            )
        );
        let (u, s) = remote_url("wss://hub").expect("url");
        assert_eq!(
            (u.port, s),
            (
                443,
                Scheme {
                    tls: true,
                    ws: true
                }
            )
        );
        assert_eq!(remote_url("ws://hub").expect("url").0.port, 80);
        assert!(remote_url("http://hub").is_err());
    }
}
