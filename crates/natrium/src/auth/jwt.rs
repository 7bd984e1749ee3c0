//! JWT operator mode, nats-server's decentralised authentication: an operator JWT names the
//! keys the server trusts; account JWTs (preloaded, or stored by the directory resolver) are
//! signed by them;
//! user JWTs, which clients present in CONNECT (from a `.creds` file), are signed by an account
//! or one of its signing keys, and the client proves it holds the user key by signing the INFO
//! nonce. This module verifies the JWTs (ed25519 over `header.payload`, keys as NKeys) and turns
//! their claims into accounts, permissions, limits, expiry and revocations.
//!
//! Claims this version can not enforce make the JWT unusable rather than being ignored: user
//! `times` windows and account `imports`/`exports`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::jwt_dir;
use crate::perms::{Permissions, ResponsePermission, SubjectPermission};
use crate::router::Limits;
use crate::util::time::now_secs;

/// The connection types of a user JWT's `allowed_connection_types` that Natrium serves.
pub const CONN_TYPE_STANDARD: &str = "STANDARD";
pub const CONN_TYPE_WEBSOCKET: &str = "WEBSOCKET";

/// JWT operator mode: `operator` (JWTs or files holding them), `resolver` (`MEMORY` or a
/// directory) and `resolver_preload { ACCOUNT_KEY: JWT }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorOptions {
    /// Operator JWTs (read from their files when the config names files).
    pub operators: Vec<String>,
    /// Account public key → account JWT.
    pub preload: Vec<(String, String)>,
    pub resolver: Option<Resolver>,
}

/// Where operator mode finds account JWTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    /// `resolver: MEMORY`: only `resolver_preload`.
    Memory,
    /// `resolver { type: full|cache, dir: ... }`: JWTs stored in a directory, updated by pushes.
    Dir(DirResolver),
    /// A form nats-server accepts that Natrium does not implement (`URL(...)`), as written.
    Unsupported(String),
}

/// The directory resolver's settings, named as in nats-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirResolver {
    pub dir: PathBuf,
    /// `type: cache`: only accounts already known are updated, and nothing is deleted.
    pub cache: bool,
    /// `allow_delete`: `$SYS.REQ.CLAIMS.DELETE` removes accounts (renamed to `.jwt.deleted`,
    /// or removed with `hard_delete`).
    pub allow_delete: bool,
    pub hard_delete: bool,
    /// Most JWTs stored (`limit`; 0 is unlimited).
    pub limit: usize,
    /// `interval` and `timeout` pace and bound the exchange with other servers in a cluster;
    /// accepted for compatibility, they have no effect on a single server.
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT: {0}")]
    Malformed(String),
    #[error("JWT signature does not verify")]
    Signature,
    #[error("expected a {want} JWT, got {got:?}")]
    WrongType { want: &'static str, got: String },
    #[error("JWT expired")]
    Expired,
    #[error("JWT not valid yet")]
    NotYetValid,
    #[error("JWT issuer {0:?} is not trusted")]
    Untrusted(String),
    #[error("user JWT revoked")]
    Revoked,
    #[error("{0}")]
    Unsupported(String),
}

/// The fields every NATS JWT carries; `nats` holds the kind-specific claims.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims<N> {
    #[serde(default)]
    pub iat: i64,
    pub iss: String,
    pub sub: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub nbf: Option<i64>,
    pub nats: N,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    alg: String,
}

impl<N> Claims<N> {
    /// Checks `exp` and `nbf` against the clock.
    pub fn check_time(&self) -> Result<(), JwtError> {
        let now = now_secs();
        if self.exp.is_some_and(|e| e > 0 && e <= now) {
            return Err(JwtError::Expired);
        }
        if self.nbf.is_some_and(|n| n > now) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    pub fn expires(&self) -> Option<SystemTime> {
        self.exp
            .filter(|e| *e > 0)
            .map(crate::util::time::from_unix_secs)
    }
}

/// Decodes a JWT and verifies its signature with the issuer's public key (`iss`).
pub fn decode<N: DeserializeOwned>(token: &str) -> Result<Claims<N>, JwtError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected header.payload.signature".into(),
        ));
    };
    let bad = |what: &str| JwtError::Malformed(what.to_string());
    let header: Header = serde_json::from_slice(&b64.decode(h).map_err(|_| bad("header"))?)
        .map_err(|_| bad("header"))?;
    if header.alg != "ed25519-nkey" && header.alg != "ed25519" {
        return Err(JwtError::Unsupported(format!(
            "JWT algorithm {:?}",
            header.alg
        )));
    }
    let payload = b64.decode(p).map_err(|_| bad("payload"))?;
    let claims: Claims<N> =
        serde_json::from_slice(&payload).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let sig = b64.decode(s).map_err(|_| bad("signature"))?;
    let key = nkeys::KeyPair::from_public_key(&claims.iss)
        .map_err(|_| JwtError::Malformed(format!("issuer {:?} is not a public key", claims.iss)))?;
    let signed = &token[..h.len() + 1 + p.len()];
    key.verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    Ok(claims)
}

/// The JWT inside a file or string: the text itself, or the block between armour lines.
pub fn unarmour(text: &str) -> String {
    let mut inside = false;
    let mut lines = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with("---") && t.contains("BEGIN") {
            inside = true;
        } else if t.starts_with("---") && t.contains("END") {
            if inside {
                break;
            }
        } else if inside && !t.is_empty() {
            lines.push(t);
        }
    }
    if lines.is_empty() {
        text.trim().to_string()
    } else {
        lines.concat()
    }
}

fn no_limit() -> i64 {
    -1
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct OperatorNats {
    #[serde(rename = "type")]
    kind: String,
    signing_keys: Vec<String>,
    system_account: String,
    /// Accounts must be signed by a signing key, not the operator's identity key.
    strict_signing_key_usage: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct JwtSubjects {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct JwtResponses {
    pub max: i64,
    /// Nanoseconds.
    pub ttl: i64,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum CidrList {
    One(String),
    Many(Vec<String>),
}

/// A user's claims (also the template of a scoped signing key).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct UserNats {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "pub")]
    publish: JwtSubjects,
    #[serde(rename = "sub")]
    subscribe: JwtSubjects,
    resp: Option<JwtResponses>,
    #[serde(default = "no_limit")]
    subs: i64,
    #[serde(default = "no_limit")]
    payload: i64,
    bearer_token: bool,
    issuer_account: String,
    src: Option<CidrList>,
    times: Vec<serde_json::Value>,
    allowed_connection_types: Vec<String>,
}

impl Default for UserNats {
    fn default() -> Self {
        UserNats {
            kind: String::new(),
            publish: JwtSubjects::default(),
            subscribe: JwtSubjects::default(),
            resp: None,
            subs: -1,
            payload: -1,
            bearer_token: false,
            issuer_account: String::new(),
            src: None,
            times: Vec::new(),
            allowed_connection_types: Vec::new(),
        }
    }
}

impl UserNats {
    fn permissions(&self) -> Option<Permissions> {
        let side = |s: &JwtSubjects| {
            (!s.allow.is_empty() || !s.deny.is_empty()).then(|| SubjectPermission {
                allow: (!s.allow.is_empty()).then(|| s.allow.clone()),
                deny: s.deny.clone(),
            })
        };
        let p = Permissions {
            publish: side(&self.publish),
            subscribe: side(&self.subscribe),
            allow_responses: self.resp.as_ref().map(|r| ResponsePermission {
                max: r.max.max(1) as usize,
                expires: Duration::from_nanos(r.ttl.max(0) as u64),
            }),
        };
        (p != Permissions::default()).then_some(p)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SigningKey {
    Plain(String),
    Scoped {
        key: String,
        #[serde(default)]
        template: Box<UserNats>,
    },
}

/// An account JWT's `limits` (the JetStream ones are not read here); -1 is unlimited, and an
/// absent limit too.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct AccountLimitsNats {
    subs: i64,
    payload: i64,
    conn: i64,
    leaf: i64,
    disallow_bearer: bool,
}

impl Default for AccountLimitsNats {
    fn default() -> Self {
        AccountLimitsNats {
            subs: -1,
            payload: -1,
            conn: -1,
            leaf: -1,
            disallow_bearer: false,
        }
    }
}

impl AccountLimitsNats {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: limit(self.conn),
            max_subscriptions: limit(self.subs),
            max_payload: limit(self.payload),
            max_leafnodes: limit(self.leaf),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct AccountNats {
    #[serde(rename = "type")]
    kind: String,
    signing_keys: Vec<SigningKey>,
    revocations: FxHashMap<String, i64>,
    limits: AccountLimitsNats,
    default_permissions: Option<DefaultPermissions>,
    imports: Vec<serde_json::Value>,
    exports: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct DefaultPermissions {
    #[serde(rename = "pub")]
    publish: JwtSubjects,
    #[serde(rename = "sub")]
    subscribe: JwtSubjects,
}

/// One trusted account, from its JWT.
#[derive(Debug, Clone)]
pub struct TrustedAccount {
    /// The account's public key (the JWT's subject).
    pub key: String,
    pub name: String,
    /// The JWT's `iat`: an update older than the JWT in force is ignored.
    pub issued_at: i64,
    /// The JWT itself (for `CLAIMS.LOOKUP`).
    pub jwt: String,
    /// Signing keys; scoped ones carry the template that replaces the user's own claims.
    signing: FxHashMap<String, Option<UserNats>>,
    revocations: FxHashMap<String, i64>,
    default_permissions: Option<Permissions>,
    /// The account's client limits (applied to the live account by the server).
    pub limits: Limits,
    disallow_bearer: bool,
    expires: Option<SystemTime>,
    claims_ok: Result<(), JwtError>,
}

impl TrustedAccount {
    /// Verifies an account JWT issued by one of the operator `keys` (its signature, type and
    /// issuer; its time and unsupported claims make users of the account fail, as the account
    /// itself still exists).
    pub fn verify(token: &str, keys: &[String]) -> Result<TrustedAccount, JwtError> {
        let c: Claims<AccountNats> = decode(token)?;
        if c.nats.kind != "account" {
            return Err(JwtError::WrongType {
                want: "account",
                got: c.nats.kind,
            });
        }
        if !keys.contains(&c.iss) {
            return Err(JwtError::Untrusted(c.iss));
        }
        let claims_ok = if !c.nats.imports.is_empty() || !c.nats.exports.is_empty() {
            Err(JwtError::Unsupported(
                "account JWT imports/exports are not supported yet".into(),
            ))
        } else {
            c.check_time()
        };
        let default_permissions = c.nats.default_permissions.as_ref().and_then(|d| {
            UserNats {
                publish: d.publish.clone(),
                subscribe: d.subscribe.clone(),
                ..UserNats::default()
            }
            .permissions()
        });
        let signing = c
            .nats
            .signing_keys
            .iter()
            .map(|k| match k {
                SigningKey::Plain(k) => (k.clone(), None),
                SigningKey::Scoped { key, template } => (key.clone(), Some((**template).clone())),
            })
            .collect();
        Ok(TrustedAccount {
            key: c.sub.clone(),
            name: c.name.clone(),
            issued_at: c.iat,
            signing,
            revocations: c.nats.revocations.clone(),
            default_permissions,
            limits: c.nats.limits.limits(),
            disallow_bearer: c.nats.limits.disallow_bearer,
            expires: c.expires(),
            claims_ok,
            jwt: token.trim().to_string(),
        })
    }
}

/// What a verified user JWT grants.
#[derive(Debug, Clone)]
pub struct UserGrant {
    pub user: String,
    pub name: String,
    pub account: String,
    pub permissions: Option<Permissions>,
    /// The user's own limits (`subs`, `payload`); the account's apply on top.
    pub max_subs: Option<usize>,
    pub max_payload: Option<usize>,
    pub expires: Option<SystemTime>,
}

/// The operators' keys and the accounts they vouch for.
#[derive(Debug, Clone)]
pub struct Trust {
    pub accounts: FxHashMap<String, TrustedAccount>,
    /// The operators' identity and signing keys: account JWTs must be issued by one of them.
    pub operator_keys: Vec<String>,
    /// Account JWT files of the directory resolver that were not loaded, and why (logged).
    pub skipped: Vec<String>,
    /// The system account an operator JWT names, if any.
    pub system_account: Option<String>,
}

fn limit(n: i64) -> Option<usize> {
    (n >= 0).then_some(n as usize)
}

fn min_time(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn ip_in(ip: IpAddr, cidr: &str) -> bool {
    let cidr = cidr.trim();
    let (addr, bits) = match cidr.split_once('/') {
        Some((a, b)) => (a, b.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(i), IpAddr::V4(n)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(i) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(i), IpAddr::V6(n)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(i) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The system account the operator JWTs name, if any (only the operator JWTs are decoded:
/// the account JWTs stay unread).
pub fn operator_system_account(operators: &[String]) -> Option<String> {
    operators.iter().rev().find_map(|token| {
        let c: Claims<OperatorNats> = decode(token).ok()?;
        (!c.nats.system_account.is_empty()).then_some(c.nats.system_account)
    })
}

impl Trust {
    /// Verifies the operator JWTs, the preloaded account JWTs and those in the resolver's
    /// directory.
    pub fn new(o: &OperatorOptions) -> Result<Trust, JwtError> {
        let mut keys = Vec::new();
        let mut system_account = None;
        for token in &o.operators {
            let c: Claims<OperatorNats> = decode(token)?;
            if c.nats.kind != "operator" {
                return Err(JwtError::WrongType {
                    want: "operator",
                    got: c.nats.kind,
                });
            }
            if c.iss != c.sub {
                return Err(JwtError::Untrusted(c.iss));
            }
            c.check_time()?;
            if !c.nats.strict_signing_key_usage {
                keys.push(c.sub.clone());
            }
            keys.extend(c.nats.signing_keys.iter().cloned());
            if !c.nats.system_account.is_empty() {
                system_account = Some(c.nats.system_account.clone());
            }
        }
        let mut accounts = FxHashMap::default();
        let mut skipped = Vec::new();
        if let Some(Resolver::Dir(d)) = &o.resolver {
            // A bad file makes its account unknown, not the server unable to start (nats-server
            // reads these lazily and fails the account's users).
            for (key, token) in jwt_dir::read_dir(&d.dir) {
                let path = d.dir.join(format!("{key}.jwt"));
                match token
                    .map_err(|e| e.to_string())
                    .and_then(|t| TrustedAccount::verify(&t, &keys).map_err(|e| e.to_string()))
                {
                    Ok(acc) if acc.key == key => {
                        accounts.insert(key, acc);
                    }
                    Ok(acc) => skipped.push(format!(
                        "{}: holds the JWT of account {:?}, ignored",
                        path.display(),
                        acc.key
                    )),
                    Err(e) => skipped.push(format!("{}: {e}, ignored", path.display())),
                }
            }
        }
        for (key, token) in &o.preload {
            let acc = TrustedAccount::verify(token, &keys)?;
            if &acc.key != key {
                return Err(JwtError::Malformed(format!(
                    "resolver_preload key {key:?} holds the JWT of {:?}",
                    acc.key
                )));
            }
            // With a directory resolver, a stored JWT newer than the preloaded one wins.
            if accounts
                .get(key)
                .is_none_or(|have: &TrustedAccount| have.issued_at <= acc.issued_at)
            {
                accounts.insert(key.clone(), acc);
            }
        }
        Ok(Trust {
            accounts,
            system_account,
            operator_keys: keys,
            skipped,
        })
    }

    /// Verifies a user JWT and the nonce signature (`sig`, raw URL-safe or standard base64)
    /// for a client at `ip` connected over TCP (the `STANDARD` connection type).
    pub fn authenticate(
        &self,
        token: &str,
        sig: Option<&str>,
        nonce: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<UserGrant, JwtError> {
        self.authenticate_as(token, sig, nonce, ip, CONN_TYPE_STANDARD)
    }

    /// `authenticate` for a client of connection type `conn_type` (`STANDARD` or `WEBSOCKET`):
    /// a user JWT with `allowed_connection_types` must name it.
    pub fn authenticate_as(
        &self,
        token: &str,
        sig: Option<&str>,
        nonce: Option<&str>,
        ip: Option<IpAddr>,
        conn_type: &str,
    ) -> Result<UserGrant, JwtError> {
        let c: Claims<UserNats> = decode(token)?;
        if c.nats.kind != "user" {
            return Err(JwtError::WrongType {
                want: "user",
                got: c.nats.kind,
            });
        }
        c.check_time()?;
        let account_key = if c.nats.issuer_account.is_empty() {
            c.iss.clone()
        } else {
            c.nats.issuer_account.clone()
        };
        let acc = self
            .accounts
            .get(&account_key)
            .ok_or_else(|| JwtError::Untrusted(account_key.clone()))?;
        acc.claims_ok.clone()?;
        if acc.expires.is_some_and(|e| e <= SystemTime::now()) {
            return Err(JwtError::Expired);
        }
        let scope = if c.iss == account_key {
            None
        } else {
            match acc.signing.get(&c.iss) {
                Some(scope) => scope.as_ref(),
                None => return Err(JwtError::Untrusted(c.iss.clone())),
            }
        };
        // A scoped signing key's template replaces whatever the user JWT claims.
        let granted = scope.unwrap_or(&c.nats);
        if !granted.times.is_empty() || !c.nats.times.is_empty() {
            return Err(JwtError::Unsupported(
                "time-restricted user JWTs are not supported yet".into(),
            ));
        }
        let types = &granted.allowed_connection_types;
        if !types.is_empty() && !types.iter().any(|t| t.eq_ignore_ascii_case(conn_type)) {
            return Err(JwtError::Unsupported(format!(
                "user JWT does not allow {} connections",
                conn_type.to_ascii_lowercase()
            )));
        }
        if let (Some(src), Some(ip)) = (&granted.src, ip) {
            let list: Vec<&str> = match src {
                CidrList::One(s) => s.split(',').filter(|x| !x.trim().is_empty()).collect(),
                CidrList::Many(v) => v.iter().map(String::as_str).collect(),
            };
            if !list.is_empty() && !list.iter().any(|c| ip_in(ip, c)) {
                return Err(JwtError::Unsupported(format!(
                    "client address {ip} not allowed by the user JWT"
                )));
            }
        }
        let revoked = |k: &str| acc.revocations.get(k).is_some_and(|t| *t >= c.iat);
        if revoked(&c.sub) || revoked("*") {
            return Err(JwtError::Revoked);
        }
        if c.nats.bearer_token && acc.disallow_bearer {
            return Err(JwtError::Unsupported(
                "bearer user JWTs are not allowed by the account".into(),
            ));
        }
        if !c.nats.bearer_token {
            let b64 = |s: &str| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
                    .ok()
            };
            let (Some(sig), Some(nonce)) = (sig.and_then(b64), nonce) else {
                return Err(JwtError::Signature);
            };
            let user = nkeys::KeyPair::from_public_key(&c.sub).map_err(|_| JwtError::Signature)?;
            user.verify(nonce.as_bytes(), &sig)
                .map_err(|_| JwtError::Signature)?;
        }
        Ok(UserGrant {
            user: c.sub.clone(),
            name: c.name.clone(),
            account: account_key,
            permissions: granted
                .permissions()
                .or_else(|| acc.default_permissions.clone()),
            max_subs: limit(granted.subs),
            max_payload: limit(granted.payload),
            expires: min_time(c.expires(), acc.expires),
        })
    }

    /// The account names (public keys) this trust creates.
    pub fn account_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.accounts.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(claims: serde_json::Value, signer: &nkeys::KeyPair) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let p = b64.encode(claims.to_string());
        let sig = signer.sign(format!("{h}.{p}").as_bytes()).expect("sign");
        format!("{h}.{p}.{}", b64.encode(sig))
    }

    #[test]
    fn verifies_the_chain_and_the_claims() {
        let op = nkeys::KeyPair::new_operator();
        let acc = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let op_jwt = encode(
            serde_json::json!({"iss": op.public_key(), "sub": op.public_key(), "iat": 1, "nats": {"type": "operator", "version": 2}}),
            &op,
        );
        let acc_jwt = encode(
            serde_json::json!({"iss": op.public_key(), "sub": acc.public_key(), "iat": 1, "name": "A",
                "nats": {"type": "account", "version": 2, "limits": {"subs": 5}}}),
            &op,
        );
        let trust = Trust::new(&OperatorOptions {
            operators: vec![op_jwt],
            preload: vec![(acc.public_key(), acc_jwt)],
            ..OperatorOptions::default()
        })
        .expect("trusted");
        let user_jwt = encode(
            serde_json::json!({"iss": acc.public_key(), "sub": user.public_key(), "iat": 1, "name": "u",
                "nats": {"type": "user", "version": 2, "pub": {"allow": ["a.>"]}, "subs": 10, "src": ["127.0.0.0/8"]}}),
            &acc,
        );
        let nonce = "abc";
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(user.sign(nonce.as_bytes()).expect("sign"));
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let g = trust
            .authenticate(&user_jwt, Some(&sig), Some(nonce), Some(local))
            .expect("user");
        assert_eq!(g.account, acc.public_key());
        assert_eq!(g.max_subs, Some(10), "the user's own limit");
        assert_eq!(
            trust.accounts[&acc.public_key()].limits.max_subscriptions,
            Some(5)
        );
        assert!(g.permissions.is_some());
        assert_eq!(
            trust
                .authenticate(&user_jwt, Some(&sig), Some("other"), Some(local))
                .err(),
            Some(JwtError::Signature)
        );
        assert!(trust
            .authenticate(
                &user_jwt,
                Some(&sig),
                Some(nonce),
                Some("10.0.0.1".parse().expect("ip"))
            )
            .is_err());
        // Tampering with the payload breaks the signature.
        let mut parts: Vec<&str> = user_jwt.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iss": acc.public_key(), "sub": user.public_key(), "nats": {"type": "user"}}).to_string(),
        );
        parts[1] = &forged;
        assert_eq!(
            decode::<UserNats>(&parts.join(".")).err(),
            Some(JwtError::Signature)
        );
        assert!(ip_in("10.1.2.3".parse().expect("ip"), "10.0.0.0/8"));
        assert!(!ip_in("11.1.2.3".parse().expect("ip"), "10.0.0.0/8"));
    }

    #[test]
    fn strict_signing_key_usage_refuses_the_operator_identity_key() {
        let op = nkeys::KeyPair::new_operator();
        let op_signer = nkeys::KeyPair::new_operator();
        let acc = nkeys::KeyPair::new_account();
        let op_jwt = encode(
            serde_json::json!({"iss": op.public_key(), "sub": op.public_key(), "iat": 1,
                "nats": {"type": "operator", "strict_signing_key_usage": true,
                         "signing_keys": [op_signer.public_key()]}}),
            &op,
        );
        let account = |signer: &nkeys::KeyPair| {
            encode(
                serde_json::json!({"iss": signer.public_key(), "sub": acc.public_key(), "iat": 1,
                    "nats": {"type": "account"}}),
                signer,
            )
        };
        let trust = |jwt: String| {
            Trust::new(&OperatorOptions {
                operators: vec![op_jwt.clone()],
                preload: vec![(acc.public_key(), jwt)],
                ..OperatorOptions::default()
            })
        };
        assert_eq!(
            trust(account(&op)).err(),
            Some(JwtError::Untrusted(op.public_key()))
        );
        assert!(trust(account(&op_signer)).is_ok());
    }
}
