//! The JSON documents of the handshake: CONNECT (client options, credentials) and INFO (what the
//! server advertises). Field names are nats-server's; unknown CONNECT fields are ignored.

use serde::{Deserialize, Serialize};

/// The options a client sends in CONNECT.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectInfo {
    pub verbose: bool,
    pub pedantic: bool,
    pub tls_required: bool,
    pub auth_token: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub name: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
    pub protocol: i32,
    #[serde(default = "yes")]
    pub echo: bool,
    pub sig: Option<String>,
    pub jwt: Option<String>,
    pub nkey: Option<String>,
    pub headers: bool,
    pub no_responders: bool,
}

fn yes() -> bool {
    true
}

impl ConnectInfo {
    /// Decodes CONNECT's JSON argument.
    pub fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

/// The INFO document sent on connect.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    pub go: String,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub tls_verify: bool,
    pub max_payload: usize,
    pub client_id: u64,
    pub client_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub ldm: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub jetstream: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_defaults_and_fields() {
        let c = ConnectInfo::from_json(b"{}").expect("empty object");
        assert!(c.echo && !c.verbose && !c.headers);
        let c = ConnectInfo::from_json(
            br#"{"verbose":true,"echo":false,"user":"u","pass":"p","headers":true,"no_responders":true,"extra":1}"#,
        )
        .expect("valid");
        assert!(c.verbose && !c.echo && c.headers && c.no_responders);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert!(ConnectInfo::from_json(b"{nope").is_err());
    }
}
