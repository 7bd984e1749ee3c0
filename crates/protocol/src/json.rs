//! The JSON documents of the handshake: CONNECT (client options, credentials) and INFO (what the
//! server advertises). Field names are nats-server's; unknown CONNECT fields are ignored.

use serde::{Deserialize, Serialize};

/// The options a client sends in CONNECT. A client that leaves an option out gets nats-server's
/// default for it: verbose, pedantic and echo on, everything else off.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub echo: bool,
    pub sig: Option<String>,
    pub jwt: Option<String>,
    pub nkey: Option<String>,
    pub headers: bool,
    pub no_responders: bool,
}

impl Default for ConnectInfo {
    fn default() -> Self {
        ConnectInfo {
            verbose: true,
            pedantic: true,
            tls_required: false,
            auth_token: None,
            user: None,
            pass: None,
            name: None,
            lang: None,
            version: None,
            protocol: 0,
            echo: true,
            sig: None,
            jwt: None,
            nkey: None,
            headers: false,
            no_responders: false,
        }
    }
}

/// The field names of `ConnectInfo`, as a client may spell them in any case.
const CONNECT_FIELDS: [&str; 16] = [
    "verbose",
    "pedantic",
    "tls_required",
    "auth_token",
    "user",
    "pass",
    "name",
    "lang",
    "version",
    "protocol",
    "echo",
    "sig",
    "jwt",
    "nkey",
    "headers",
    "no_responders",
];

impl ConnectInfo {
    /// Decodes the first CONNECT's JSON argument over the defaults.
    pub fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        let mut info = ConnectInfo::default();
        info.update_from_json(json)?;
        Ok(info)
    }

    /// Applies a CONNECT's JSON argument over the options in force, as nats-server decodes it:
    /// options the JSON leaves out (or sets to `null`) keep their value, field names match in
    /// any case, unknown fields are ignored, and `null` alone changes nothing. Anything but an
    /// object or `null`, a value of the wrong type or trailing text is an error, and on error
    /// nothing changes.
    pub fn update_from_json(&mut self, json: &[u8]) -> Result<(), serde_json::Error> {
        use serde::de::Error;
        let given = match serde_json::from_slice::<serde_json::Value>(json)? {
            serde_json::Value::Null => return Ok(()),
            serde_json::Value::Object(m) => m,
            other => {
                let kind = match other {
                    serde_json::Value::Bool(_) => "bool",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::String(_) => "string",
                    _ => "array",
                };
                return Err(serde_json::Error::custom(format!(
                    "cannot unmarshal {kind} into the CONNECT options"
                )));
            }
        };
        let serde_json::Value::Object(mut merged) = serde_json::to_value(&*self)? else {
            unreachable!("ConnectInfo serializes to an object");
        };
        for (key, value) in given {
            if value.is_null() {
                continue;
            }
            let field = CONNECT_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(&key));
            if let Some(field) = field {
                merged.insert((*field).to_string(), value);
            }
        }
        *self = serde_json::from_value(serde_json::Value::Object(merged))?;
        Ok(())
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
    /// TLS offered but not required (`allow_non_tls`).
    #[serde(skip_serializing_if = "is_false")]
    pub tls_available: bool,
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
        assert!(c.echo && c.verbose && c.pedantic && !c.headers);
        let c = ConnectInfo::from_json(
            br#"{"verbose":false,"echo":false,"user":"u","pass":"p","headers":true,"no_responders":true,"extra":1}"#,
        )
        .expect("valid");
        assert!(!c.verbose && c.pedantic && !c.echo && c.headers && c.no_responders);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert!(ConnectInfo::from_json(b"{nope").is_err());
    }

    #[test]
    fn connect_is_decoded_as_nats_server_does() {
        // Not an object: refused.
        for bad in [
            &b"[]"[..],
            b"1",
            b"\"x\"",
            b"true",
            b"",
            b"{} x",
            br#"{"verbose":"yes"}"#,
        ] {
            assert!(ConnectInfo::from_json(bad).is_err(), "{bad:?}");
        }
        // null changes nothing; names match in any case; null fields keep their value.
        let c = ConnectInfo::from_json(b"null").expect("null");
        assert!(c.verbose && c.pedantic);
        let mut c = ConnectInfo::from_json(br#"{"VERBOSE":false,"Pedantic":false,"name":"a"}"#)
            .expect("any case");
        assert!(!c.verbose && !c.pedantic);
        // A later CONNECT applies over the options in force.
        c.update_from_json(br#"{"echo":false,"name":null}"#)
            .expect("update");
        assert!(!c.verbose && !c.pedantic && !c.echo);
        assert_eq!(c.name.as_deref(), Some("a"));
        // A refused update changes nothing.
        assert!(c.update_from_json(br#"{"echo":true,"verbose":1}"#).is_err());
        assert!(!c.echo);
    }
}
