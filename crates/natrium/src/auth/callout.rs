//! Auth callout (nats-server 2.10's `authorization { auth_callout { issuer, account, auth_users,
//! xkey } }`): clients other than the `auth_users` are authenticated by a service the operator
//! writes. For each one the server sends an authorization request (a JWT the server signs:
//! server identity, a fresh user key the answer must be for, client information, CONNECT
//! options, TLS session) to `$SYS.REQ.USER.AUTH` in the callout account, sealed to `xkey` when
//! one is configured; the service answers with an authorization response (a JWT for that user
//! key and this server, holding either an error or a user JWT signed by `issuer`, whose
//! audience names the account the user joins and whose claims give its permissions, limits,
//! expiry and connect times). This module builds the request and judges the answer; the
//! connection layer carries them.

use std::time::{Duration, SystemTime};

use base64::Engine;
use natrium_config::{Spanned, Value};
use serde::Deserialize;
use serde_json::json;

use super::jwt::{self, JwtError};
use crate::perms::{Permissions, SubjectPermission};

/// The subject callout requests are published on (in the callout account).
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The header naming the server's xkey on an encrypted request.
pub const XKEY_HEADER: &str = "Nats-Server-Xkey";

/// The `auth_callout` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutOptions {
    /// The account public key that signs the user JWTs the service hands out.
    pub issuer: String,
    /// The account the service runs in and the requests are sent to (`$G` by default).
    pub account: String,
    /// Users (names or NKeys) authenticated by the configuration as usual: the service's own.
    pub auth_users: Vec<String>,
    /// The service's public xkey: requests are sealed to it and answers may be sealed back.
    pub xkey: Option<String>,
}

/// Reads the `auth_callout` block with nats-server's checks and messages.
pub fn parse(v: &Spanned) -> Result<CalloutOptions, String> {
    let Value::Map(m) = &v.value else {
        return Err(format!(
            "Expected authorization callout to be a map/struct, got {}",
            v.kind_name()
        ));
    };
    let text = |v: &Spanned| match &v.value {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {}", other.kind_name())),
    };
    let mut o = CalloutOptions::default();
    for (k, v) in m.iter() {
        match k.to_ascii_lowercase().as_str() {
            "issuer" => {
                o.issuer = text(v)?;
                if !super::jwt_dir::is_account_key(&o.issuer) {
                    return Err(format!(
                        "Expected callout user to be a valid public account nkey, got {:?}",
                        o.issuer
                    ));
                }
            }
            "account" | "acc" => o.account = text(v)?,
            "auth_users" | "users" => {
                let Value::Array(a) = &v.value else {
                    return Err(format!(
                        "Expected auth_users field to be an array, got {}",
                        v.kind_name()
                    ));
                };
                o.auth_users = a.iter().map(text).collect::<Result<_, _>>()?;
            }
            "xkey" | "key" => {
                let x = text(v)?;
                if !x.starts_with('X') || nkeys::XKey::from_public_key(&x).is_err() {
                    return Err(format!(
                        "Expected callout xkey to be a valid public xkey, got {x:?}"
                    ));
                }
                o.xkey = Some(x);
            }
            _ => return Err(format!("Unknown field {k:?} parsing authorization callout")),
        }
    }
    if o.account.is_empty() {
        o.account = "$G".into();
    }
    if o.issuer.is_empty() {
        return Err("Authorization callouts require an issuer to be specified".into());
    }
    if o.auth_users.is_empty() {
        return Err("Authorization callouts require authorized users to be specified".into());
    }
    Ok(o)
}

/// Who the server is, as a request names it.
pub struct ServerRef<'a> {
    pub key: &'a nkeys::KeyPair,
    pub name: &'a str,
    pub host: &'a str,
    pub version: &'a str,
    pub cluster: Option<&'a str>,
    /// The server's public xkey, when requests are sealed.
    pub xkey: Option<String>,
}

/// What a request says about the client.
#[derive(Default)]
pub struct ClientRef<'a> {
    pub host: String,
    pub cid: u64,
    /// The user the client named (a user name or an NKey).
    pub user: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The INFO nonce, when the client signed it.
    pub nonce: Option<&'a str>,
    /// CONNECT's options as sent (`jwt`, `nkey`, `sig`, `auth_token`, `user`, `pass`, `name`,
    /// `lang`, `version`, `protocol`).
    pub connect: serde_json::Value,
    /// `version`, `cipher` and `certs` (PEM) of a TLS session.
    pub tls: Option<serde_json::Value>,
}

/// Signs an authorization request for the user key `user_nkey`, valid for `timeout`.
pub fn request(
    server: &ServerRef<'_>,
    o: &CalloutOptions,
    user_nkey: &str,
    client: &ClientRef<'_>,
    timeout: Duration,
) -> String {
    let now = crate::util::time::now_secs();
    let mut server_id = json!({"name": server.name, "host": server.host,
        "id": server.key.public_key(), "version": server.version});
    if let Some(c) = server.cluster {
        server_id["cluster"] = json!(c);
    }
    if let Some(x) = &server.xkey {
        server_id["xkey"] = json!(x);
    }
    let mut info = json!({"host": client.host, "id": client.cid, "kind": "Client", "type": "nats"});
    for (k, v) in [
        ("user", client.user),
        ("name", client.name),
        ("nonce", client.nonce),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            info[k] = json!(v);
        }
    }
    let mut nats = json!({"server_id": server_id, "user_nkey": user_nkey, "client_info": info,
        "connect_opts": client.connect, "type": "authorization_request", "version": 2});
    if let Some(t) = &client.tls {
        nats["client_tls"] = t.clone();
    }
    let exp = now + timeout.as_secs().max(1) as i64;
    let claims = json!({"jti": jti(user_nkey, now), "iat": now, "iss": server.key.public_key(),
        "sub": o.issuer, "aud": "nats-authorization-request", "exp": exp, "nats": nats});
    encode(&claims, server.key)
}

fn jti(user: &str, now: i64) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{user}{now}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..16])
}

/// A version 2 JWT of `claims` signed by `key`.
fn encode(claims: &serde_json::Value, key: &nkeys::KeyPair) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let p = b64.encode(claims.to_string());
    let sig = key.sign(format!("{h}.{p}").as_bytes()).unwrap_or_default();
    format!("{h}.{p}.{}", b64.encode(sig))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResponseNats {
    #[serde(rename = "type")]
    kind: String,
    jwt: String,
    error: String,
    issuer_account: String,
}

/// What the service granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutGrant {
    /// The user name to show (the user JWT's `name`), if any.
    pub name: Option<String>,
    /// The account the user joins (the user JWT's audience).
    pub account: String,
    pub permissions: Option<Permissions>,
    pub max_subs: Option<usize>,
    pub max_payload: Option<usize>,
    pub expires: Option<SystemTime>,
}

/// Judges the service's answer to the request for `user_nkey`: decrypted with the server's
/// `xkey` when sealed, a response for that user key and this server (`server_id`), without an
/// error, holding a user JWT for that key issued by the configured issuer.
pub fn response(
    o: &CalloutOptions,
    payload: &[u8],
    xkey: Option<&nkeys::XKey>,
    user_nkey: &str,
    server_id: &str,
) -> Result<CalloutGrant, String> {
    // Only a JWT in the clear is trimmed: a sealed answer is binary, and its last byte is a
    // whitespace byte one time in 43 (trimming it made decryption fail).
    let text = payload.trim_ascii();
    if text.is_empty() {
        return Err("auth callout violation: \"no reason supplied\"".into());
    }
    let opened;
    let token = match (xkey, &o.xkey) {
        (Some(ours), Some(theirs)) if !text.starts_with(b"eyJ") => {
            let sender = nkeys::XKey::from_public_key(theirs).map_err(|e| e.to_string())?;
            opened = ours
                .open(payload, &sender)
                .map_err(|e| format!("error decrypting auth callout response: {e}"))?;
            opened.trim_ascii()
        }
        _ => text,
    };
    let token = std::str::from_utf8(token).map_err(|_| "response is not a JWT".to_string())?;
    let r: jwt::Claims<ResponseNats> = jwt::decode(token).map_err(|e| e.to_string())?;
    if r.nats.kind != "authorization_response" {
        return Err("not an authorization response".into());
    }
    if !super::jwt_dir::is_account_key(&r.iss) {
        return Err("authorization response not issued by an account key".into());
    }
    r.check_time().map_err(|e| e.to_string())?;
    if r.sub != user_nkey {
        return Err(
            "auth callout violation: auth callout response is not for expected user".into(),
        );
    }
    if r.aud != server_id {
        return Err("auth callout violation: auth callout response is not for server".into());
    }
    if !r.nats.error.is_empty() {
        return Err(format!(
            "auth callout service returned an error: {}",
            r.nats.error
        ));
    }
    if r.nats.jwt.is_empty() || !r.nats.issuer_account.is_empty() {
        return Err("authorization response had validation errors".into());
    }
    let u = jwt::callout_user(&r.nats.jwt, &o.issuer, user_nkey).map_err(|e| match e {
        JwtError::Untrusted(i) => format!(
            "wrong issuer for auth callout response, expected {:?} got {i:?}",
            o.issuer
        ),
        e => e.to_string(),
    })?;
    Ok(CalloutGrant {
        name: (!u.name.is_empty()).then_some(u.name),
        account: u.account,
        permissions: u.permissions,
        max_subs: u.max_subs,
        max_payload: u.max_payload,
        expires: u.expires,
    })
}

/// `permissions` with publishing to the callout subject denied (users of the callout account
/// may not send authorization requests themselves).
pub fn deny_callout_subject(permissions: Option<Permissions>) -> Permissions {
    let mut p = permissions.unwrap_or_default();
    let publish = p.publish.get_or_insert_with(|| SubjectPermission {
        allow: None,
        deny: Vec::new(),
    });
    if !publish.deny.iter().any(|d| d == CALLOUT_SUBJECT) {
        publish.deny.push(CALLOUT_SUBJECT.to_string());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed answer is binary: one whose last byte is a whitespace byte is opened whole
    /// (the answer carries an error, so a decrypted answer reads as the service's refusal).
    #[test]
    fn a_sealed_answer_ending_in_a_whitespace_byte_is_opened() {
        let (issuer, server) = (nkeys::KeyPair::new_account(), nkeys::KeyPair::new_server());
        let (ours, service) = (nkeys::XKey::new(), nkeys::XKey::new());
        let o = CalloutOptions {
            issuer: issuer.public_key(),
            account: "AUTH".into(),
            auth_users: vec![],
            xkey: Some(service.public_key()),
        };
        let user = nkeys::KeyPair::new_user().public_key();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let answer = encode(
            &json!({"jti": "r", "iat": now, "iss": issuer.public_key(), "sub": user,
                    "aud": server.public_key(),
                    "nats": {"type": "authorization_response", "version": 2, "error": "nope"}}),
            &issuer,
        );
        // The nonce is random: seal until the last byte is whitespace (1 in 43, bounded).
        let sealed = (0..10_000)
            .map(|_| service.seal(answer.as_bytes(), &ours).expect("seal"))
            .find(|s| s.last().is_some_and(u8::is_ascii_whitespace))
            .expect("a sealed answer ending in whitespace");
        let verdict = response(&o, &sealed, Some(&ours), &user, &server.public_key());
        assert_eq!(
            verdict.err().as_deref(),
            Some("auth callout service returned an error: nope")
        );
    }
}
