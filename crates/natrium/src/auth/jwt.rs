//! JWT operator mode, nats-server's decentralised authentication: an operator JWT names the
//! keys the server trusts; account JWTs (preloaded, or stored by the directory resolver) are
//! signed by them;
//! user JWTs, which clients present in CONNECT (from a `.creds` file), are signed by an account
//! or one of its signing keys, and the client proves it holds the user key by signing the INFO
//! nonce. This module verifies the JWTs (ed25519 over `header.payload`, keys as NKeys) and turns
//! their claims into accounts, permissions, limits, expiry, connect-time windows, revocations,
//! and the imports and exports between accounts (with activation tokens for private exports).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::jwt_dir;
use crate::perms::{Permissions, ResponsePermission, SubjectPermission};
use crate::router::imports::{ExportKind, Import, Responses};
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
    /// `resolver: URL(http://host/jwt/v1/accounts/)`: account JWTs fetched over HTTP(S) when a
    /// user of an account not known yet connects (the account's key appended to the URL), kept
    /// in memory, fetched again when expired, updated by `CLAIMS.UPDATE` requests.
    Url(String),
    /// A form nats-server accepts that Natrium does not implement, as written.
    Unsupported(String),
}

impl Resolver {
    /// The string forms of `resolver`: `URL(url)` or `URL("url")` (a `/` is appended when
    /// missing, as nats-server does); anything else is kept as written, unsupported.
    pub fn from_url_form(text: &str) -> Resolver {
        let t = text.trim();
        let inner = t
            .get(..3)
            .filter(|p| p.eq_ignore_ascii_case("URL"))
            .and_then(|_| t[3..].trim().strip_prefix('('))
            .and_then(|r| r.trim_end().strip_suffix(')'))
            .map(|u| u.trim().trim_matches('"').trim());
        match inner {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                let mut u = u.to_string();
                if !u.ends_with('/') {
                    u.push('/');
                }
                Resolver::Url(u)
            }
            _ => Resolver::Unsupported(t.to_string()),
        }
    }
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
    #[error("account {0:?} is not known")]
    UnknownAccount(String),
    #[error("the JWT of account {0:?} expired")]
    AccountExpired(String),
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
    /// The audience (an auth callout's user JWT names the account the user joins here).
    #[serde(default)]
    pub aud: String,
    pub nats: N,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    typ: String,
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

/// The newest claims version this server reads (as nats-server's JWT library).
const NEWEST_VERSION: i64 = 2;

/// Decodes a JWT and verifies its signature with the issuer's public key (`iss`).
///
/// Both claim formats are read. Version 2 (what `nsc` writes today) keeps the kind-specific
/// claims under `nats` (with `nats.type` and `nats.version`) and signs `header.payload`.
/// Version 1, recognised by a `type` at the top level, signs the payload segment alone and keeps
/// `type`, `tags` and `issuer_account` at the top level (an operator without signing keys has
/// no `nats` object at all); an activation's export kind is `nats.type` there (`nats.kind` in
/// version 2). Version 1 claims are moved into the version 2 shape before they are read.
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
    if !header.typ.eq_ignore_ascii_case("JWT") {
        return Err(JwtError::Unsupported(format!("JWT type {:?}", header.typ)));
    }
    let alg = header.alg.to_ascii_lowercase();
    if alg != "ed25519-nkey" && alg != "ed25519" {
        return Err(JwtError::Unsupported(format!(
            "JWT algorithm {:?}",
            header.alg
        )));
    }
    let payload = b64.decode(p).map_err(|_| bad("payload"))?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let version = normalise_claims(&mut value)?;
    let claims: Claims<N> =
        serde_json::from_value(value).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let sig = b64.decode(s).map_err(|_| bad("signature"))?;
    let key = nkeys::KeyPair::from_public_key(&claims.iss)
        .map_err(|_| JwtError::Malformed(format!("issuer {:?} is not a public key", claims.iss)))?;
    let v2 = &token[..h.len() + 1 + p.len()];
    let verified = match version {
        1 => key.verify(p.as_bytes(), &sig).is_ok(),
        // No version: nats-server's library takes that for version 1; claims minted by hand
        // often leave it out, so either form the issuer signed is accepted.
        0 => key.verify(v2.as_bytes(), &sig).is_ok() || key.verify(p.as_bytes(), &sig).is_ok(),
        _ => key.verify(v2.as_bytes(), &sig).is_ok(),
    };
    if !verified {
        return Err(JwtError::Signature);
    }
    Ok(claims)
}

/// Brings decoded claims into the version 2 shape; returns the version they were written in.
fn normalise_claims(v: &mut serde_json::Value) -> Result<i64, JwtError> {
    use serde_json::Value;
    let Some(obj) = v.as_object_mut() else {
        return Err(JwtError::Malformed("claims are not a JSON object".into()));
    };
    if !obj.get("nats").is_some_and(Value::is_object) {
        obj.insert("nats".into(), Value::Object(Default::default()));
    }
    let top_type = obj
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(kind) = top_type else {
        let version = obj
            .get("nats")
            .and_then(|n| n.get("version"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if version > NEWEST_VERSION {
            return Err(JwtError::Unsupported(format!(
                "JWT claims version {version} is newer than this server reads"
            )));
        }
        return Ok(version);
    };
    // Version 1: move the fields version 2 keeps under `nats`.
    let moved: Vec<(String, Value)> = ["tags", "issuer_account"]
        .iter()
        .filter_map(|k| obj.remove(*k).map(|v| (k.to_string(), v)))
        .collect();
    obj.remove("type");
    if let Some(nats) = obj.get_mut("nats").and_then(Value::as_object_mut) {
        if kind == "activation" {
            if let Some(export_kind) = nats.remove("type") {
                nats.insert("kind".into(), export_kind);
            }
        }
        nats.insert("type".into(), Value::from(kind));
        nats.insert("version".into(), Value::from(1));
        for (k, v) in moved {
            nats.insert(k, v);
        }
    }
    Ok(1)
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
    times: Vec<TimeRange>,
    /// The IANA time zone `times` are in (`times_location`); the server's local time when empty.
    times_location: String,
    allowed_connection_types: Vec<String>,
}

/// A connect-time window of a user JWT: `HH:MM:SS` to `HH:MM:SS`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TimeRange {
    pub start: String,
    pub end: String,
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
            times_location: String::new(),
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
/// absent limit too. `msgs_per_sec` and `bytes_per_sec` are Natrium's publish rate limits
/// (nats-server and its JWT library ignore fields they do not know).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct AccountLimitsNats {
    subs: i64,
    payload: i64,
    conn: i64,
    leaf: i64,
    msgs_per_sec: i64,
    bytes_per_sec: i64,
    disallow_bearer: bool,
    #[serde(flatten)]
    jetstream: JetStreamLimitsNats,
    tiered_limits: BTreeMap<String, JetStreamLimitsNats>,
}

/// An account JWT's JetStream limits (`mem_storage`, `disk_storage`, ...), as the JWT carries
/// them: 0 storage on both kinds (and no tiers) means JetStream is off for the account, -1 is
/// unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct JetStreamLimitsNats {
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumer: i64,
    pub max_ack_pending: i64,
    pub mem_max_stream_bytes: i64,
    pub disk_max_stream_bytes: i64,
    pub max_bytes_required: bool,
}

/// The JetStream an account JWT grants: flat limits, or limits per replica tier (`R1`, `R3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtJetStream {
    Flat(JetStreamLimitsNats),
    Tiered(BTreeMap<String, JetStreamLimitsNats>),
}

impl Default for AccountLimitsNats {
    fn default() -> Self {
        AccountLimitsNats {
            subs: -1,
            payload: -1,
            conn: -1,
            leaf: -1,
            msgs_per_sec: -1,
            bytes_per_sec: -1,
            disallow_bearer: false,
            jetstream: JetStreamLimitsNats::default(),
            tiered_limits: BTreeMap::new(),
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
            max_msgs_per_sec: rate(self.msgs_per_sec),
            max_bytes_per_sec: rate(self.bytes_per_sec),
        }
    }

    /// JetStream for the account, as nats-server reads it: flat limits when either storage is
    /// set, else the tiers, else none.
    fn jetstream(&self) -> Option<JwtJetStream> {
        let j = self.jetstream;
        if j.mem_storage != 0 || j.disk_storage != 0 {
            return Some(JwtJetStream::Flat(j));
        }
        (!self.tiered_limits.is_empty()).then(|| JwtJetStream::Tiered(self.tiered_limits.clone()))
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
    imports: Vec<ImportNats>,
    exports: Vec<ExportNats>,
    /// Operator-mode auth callout (`auth_users`, `allowed_accounts`, `xkey`): not supported.
    authorization: serde_json::Value,
}

/// One `exports` entry of an account JWT.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ExportNats {
    pub subject: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Private: importers need an activation token the exporter signed.
    pub token_req: bool,
    /// Activation tokens revoked: importing account key (or `*`) → revoked if issued at or
    /// before this time.
    pub revocations: FxHashMap<String, i64>,
    /// `Singleton` (the default), `Stream` or `Chunked`.
    pub response_type: String,
    /// How long a request's reply path stays open, in nanoseconds (0: the default, 2 minutes).
    pub response_threshold: i64,
    /// The 1-based token of the subject that must be the importing account's key.
    pub account_token_position: usize,
}

/// One `imports` entry of an account JWT.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ImportNats {
    pub subject: String,
    pub account: String,
    pub token: String,
    /// Deprecated form: a stream import's prefix, a service import's subject in the exporter.
    pub to: String,
    /// The subject as the importer sees it (may refer to wildcards as `$N`).
    pub local_subject: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// An activation token's claims (`kind` and `subject`; version 1 tokens are migrated).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ActivationNats {
    #[serde(rename = "type")]
    kind_of_claims: String,
    kind: String,
    subject: String,
    issuer_account: String,
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
    /// Its JetStream, if the JWT enables it.
    pub jetstream: Option<JwtJetStream>,
    disallow_bearer: bool,
    expires: Option<SystemTime>,
    claims_ok: Result<(), JwtError>,
    pub exports: Vec<ExportNats>,
    pub imports: Vec<ImportNats>,
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
        let external = c
            .nats
            .authorization
            .get("auth_users")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|u| !u.is_empty());
        let claims_ok = if external {
            Err(JwtError::Unsupported(
                "account JWTs delegating to an auth callout are not supported yet".into(),
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
            jetstream: c.nats.limits.jetstream(),
            disallow_bearer: c.nats.limits.disallow_bearer,
            expires: c.expires(),
            claims_ok,
            exports: c.nats.exports.clone(),
            imports: c.nats.imports.clone(),
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

/// A publish rate: positive limits, 0 and negative are unlimited.
fn rate(n: i64) -> Option<u64> {
    (n > 0).then_some(n as u64)
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
            .ok_or_else(|| JwtError::UnknownAccount(account_key.clone()))?;
        let expired = || JwtError::AccountExpired(account_key.clone());
        match acc.claims_ok.clone() {
            Err(JwtError::Expired) => return Err(expired()),
            other => other?,
        }
        if acc.expires.is_some_and(|e| e <= SystemTime::now()) {
            return Err(expired());
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
        let window_ends = connect_window(
            &granted.times,
            &granted.times_location,
            jiff::Timestamp::now(),
        )?;
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
            expires: min_time(min_time(c.expires(), acc.expires), window_ends),
        })
    }

    /// The account names (public keys) this trust creates.
    pub fn account_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.accounts.keys().cloned().collect();
        v.sort();
        v
    }
}

/// The user JWT an auth callout service handed out for `user_nkey`: issued by `issuer` (the
/// configured account key, not a signing key), for that very key, valid now and inside its
/// connect times; its audience names the account the user joins.
pub fn callout_user(token: &str, issuer: &str, user_nkey: &str) -> Result<UserGrant, JwtError> {
    let c: Claims<UserNats> = decode(token)?;
    if c.nats.kind != "user" {
        return Err(JwtError::WrongType {
            want: "user",
            got: c.nats.kind,
        });
    }
    let signer = if c.nats.issuer_account.is_empty() {
        &c.iss
    } else {
        &c.nats.issuer_account
    };
    if signer != issuer {
        return Err(JwtError::Untrusted(signer.clone()));
    }
    if c.sub != user_nkey {
        return Err(JwtError::Malformed(format!(
            "expected authorized user of {user_nkey:?} but got {:?}",
            c.sub
        )));
    }
    c.check_time()?;
    let window_ends = connect_window(
        &c.nats.times,
        &c.nats.times_location,
        jiff::Timestamp::now(),
    )?;
    let types = &c.nats.allowed_connection_types;
    if !types.is_empty() && !types.iter().any(|t| t.eq_ignore_ascii_case("STANDARD")) {
        return Err(JwtError::Unsupported(
            "user JWT does not allow standard connections".into(),
        ));
    }
    Ok(UserGrant {
        user: c.sub.clone(),
        name: c.name.clone(),
        account: c.aud.clone(),
        permissions: c.nats.permissions(),
        max_subs: limit(c.nats.subs),
        max_payload: limit(c.nats.payload),
        expires: min_time(c.expires(), window_ends),
    })
}

/// nats-server's check of a user JWT's connect-time windows (`times`, in `times_location` or
/// the server's local time): the client may connect when one window, taken on today's date,
/// has started and not ended (a window whose end is before its start ends tomorrow). Returns
/// when the window ends (the connection is closed then), `None` without windows.
pub fn connect_window(
    times: &[TimeRange],
    locale: &str,
    now: jiff::Timestamp,
) -> Result<Option<SystemTime>, JwtError> {
    if times.is_empty() {
        return Ok(None);
    }
    let tz = if locale.is_empty() {
        jiff::tz::TimeZone::system()
    } else {
        jiff::tz::TimeZone::get(locale).map_err(|_| {
            JwtError::Unsupported(format!("unknown time zone {locale:?} in the user JWT"))
        })?
    };
    let outside = || JwtError::Unsupported("outside the user JWT's connect times".into());
    let today = now.to_zoned_datetime(tz.clone()).date();
    for r in times {
        let (Ok(start), Ok(end)) = (
            r.start.parse::<jiff::civil::Time>(),
            r.end.parse::<jiff::civil::Time>(),
        ) else {
            return Err(outside());
        };
        let at = |day: jiff::civil::Date, t: jiff::civil::Time| {
            day.to_datetime(t)
                .to_zoned_datetime(tz.clone())
                .map(|z| z.timestamp())
                .map_err(|_| outside())
        };
        if at(today, start)? < now {
            let end_day = if start > end {
                today.tomorrow().map_err(|_| outside())?
            } else {
                today
            };
            let ends = at(end_day, end)?;
            if ends > now {
                let secs = ends.as_second().max(0) as u64;
                let nanos = ends.subsec_nanosecond().max(0) as u32;
                return Ok(Some(std::time::UNIX_EPOCH + Duration::new(secs, nanos)));
            }
        }
    }
    Err(outside())
}

/// An import an account JWT declares and its exporter allows, ready for the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportGrant {
    /// The importing and exporting accounts' keys.
    pub importer: String,
    pub exporter: String,
    pub import: Import,
    pub responses: Responses,
    /// When the activation token that allows it expires (the import goes away then).
    pub expires: Option<SystemTime>,
}

/// Default reply-path lifetime of a service import (nats-server's response threshold).
const DEFAULT_RESPONSE_THRESHOLD: Duration = Duration::from_secs(120);

impl Trust {
    /// The imports the trusted account JWTs declare, checked as nats-server checks them against
    /// the exporter's JWT: the exporter is known, exports the subject (the import's subject a
    /// subset of an export of the same kind), and allows this importer (public; the account's
    /// key at the export's `account_token_position`; or, with `token_req`, an activation token
    /// the exporter or one of its signing keys issued to the importer, for a subject covering
    /// the import, not expired nor revoked by the export). Also says why the others are left out.
    pub fn imports(&self) -> (Vec<ImportGrant>, Vec<String>) {
        let mut grants = Vec::new();
        let mut refused = Vec::new();
        let mut keys: Vec<&String> = self.accounts.keys().collect();
        keys.sort();
        for key in keys {
            let acc = &self.accounts[key];
            if acc.claims_ok.is_err() {
                continue;
            }
            for i in &acc.imports {
                match self.grant(acc, i) {
                    Ok(g) => grants.push(g),
                    Err(why) => refused.push(format!(
                        "account {} ({:?}): {} import of {:?} from account {}: {why}",
                        acc.key, acc.name, i.kind, i.subject, i.account
                    )),
                }
            }
        }
        (grants, refused)
    }

    fn grant(&self, importer: &TrustedAccount, i: &ImportNats) -> Result<ImportGrant, String> {
        let kind = match i.kind.as_str() {
            "stream" => ExportKind::Stream,
            "service" => ExportKind::Service,
            k => return Err(format!("invalid import type {k:?}")),
        };
        let exporter = self
            .accounts
            .get(&i.account)
            .ok_or_else(|| "the exporting account is not known".to_string())?;
        if exporter.claims_ok.is_err() || exporter.expires.is_some_and(|e| e <= SystemTime::now()) {
            return Err("the exporting account's JWT is not valid".into());
        }
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let import = match kind {
            ExportKind::Stream => Import {
                kind,
                account: i.account.clone(),
                subject: i.subject.clone(),
                to: some(&i.local_subject),
                prefix: if i.local_subject.is_empty() {
                    some(&i.to)
                } else {
                    None
                },
            },
            // `subject` is what the exporter serves, `to` what the importer publishes on.
            ExportKind::Service if !i.local_subject.is_empty() => Import {
                kind,
                account: i.account.clone(),
                subject: i.subject.clone(),
                to: some(&i.local_subject),
                prefix: None,
            },
            ExportKind::Service => Import {
                kind,
                account: i.account.clone(),
                subject: some(&i.to).unwrap_or_else(|| i.subject.clone()),
                to: some(&i.to).map(|_| i.subject.clone()),
                prefix: None,
            },
        };
        let subject = import.subject.as_str();
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err("invalid subject".into());
        }
        if let Some(p) = &import.prefix {
            if p.split('.').any(|t| t == "*" || t == ">") {
                return Err("a stream import's prefix must be a literal subject".into());
            }
        }
        let kind_name = match kind {
            ExportKind::Stream => "stream",
            ExportKind::Service => "service",
        };
        let usable = |x: &&ExportNats| {
            x.kind == kind_name
                && (x.account_token_position == 0
                    || x.subject.split('.').nth(x.account_token_position - 1) == Some("*"))
        };
        let export =
            exporter
                .exports
                .iter()
                .filter(usable)
                .find(|x| x.subject == subject)
                .or_else(|| {
                    exporter.exports.iter().filter(usable).find(|x| {
                        natrium_subjects::is_subset(subject.as_bytes(), x.subject.as_bytes())
                    })
                })
                .ok_or_else(|| "the exporting account does not export it".to_string())?;
        let mut expires = None;
        if export.account_token_position > 0 {
            if subject.split('.').nth(export.account_token_position - 1)
                != Some(importer.key.as_str())
            {
                return Err(
                    "the subject does not name the importing account where the export requires it"
                        .into(),
                );
            }
        } else if export.token_req {
            expires = activation(
                exporter,
                export,
                &importer.key,
                kind_name,
                subject,
                &i.token,
            )?;
        }
        let responses = Responses {
            multiple: matches!(export.response_type.as_str(), "Stream" | "Chunked"),
            threshold: if export.response_threshold > 0 {
                Duration::from_nanos(export.response_threshold as u64)
            } else {
                DEFAULT_RESPONSE_THRESHOLD
            },
        };
        Ok(ImportGrant {
            importer: importer.key.clone(),
            exporter: exporter.key.clone(),
            import,
            responses,
            expires,
        })
    }
}

/// Checks the activation token of an import of a private export; returns when it expires.
fn activation(
    exporter: &TrustedAccount,
    export: &ExportNats,
    importer: &str,
    kind: &str,
    subject: &str,
    token: &str,
) -> Result<Option<SystemTime>, String> {
    if token.is_empty() {
        return Err("the export is private and the import has no activation token".into());
    }
    let c: Claims<ActivationNats> = decode(token).map_err(|e| format!("activation token: {e}"))?;
    let n = &c.nats;
    if n.kind_of_claims != "activation" {
        return Err("activation token: not an activation".into());
    }
    if c.iss != exporter.key && n.issuer_account != exporter.key {
        return Err("activation token not issued by the exporting account".into());
    }
    if !n.issuer_account.is_empty()
        && (n.issuer_account != exporter.key
            || (c.iss != exporter.key && !exporter.signing.contains_key(&c.iss)))
    {
        return Err("activation token issued by a key the exporting account does not list".into());
    }
    if c.sub != importer {
        return Err("activation token issued to another account".into());
    }
    if n.kind != kind {
        return Err(format!("activation token is for a {} import", n.kind));
    }
    if !natrium_subjects::is_subset(subject.as_bytes(), n.subject.as_bytes()) {
        return Err(format!(
            "activation token is for {:?}, which does not cover the import",
            n.subject
        ));
    }
    c.check_time()
        .map_err(|e| format!("activation token: {e}"))?;
    let revoked = |k: &str| export.revocations.get(k).is_some_and(|t| *t >= c.iat);
    if revoked(&c.sub) || revoked("*") {
        return Err("activation token revoked by the export".into());
    }
    Ok(c.expires())
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
                "nats": {"type": "account", "version": 2,
                    "limits": {"subs": 5, "msgs_per_sec": 300, "bytes_per_sec": 0}}}),
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
        let limits = trust.accounts[&acc.public_key()].limits;
        assert_eq!(limits.max_msgs_per_sec, Some(300), "Natrium's rate limit");
        assert_eq!(limits.max_bytes_per_sec, None, "0 is unlimited");
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

    #[test]
    fn connect_windows_as_nats_server_reads_them() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().expect("timestamp");
        let day = |start: &str, end: &str| {
            vec![TimeRange {
                start: start.into(),
                end: end.into(),
            }]
        };
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
        };
        let office = day("09:00:00", "17:00:00");
        assert_eq!(
            secs(connect_window(&office, "UTC", at("2024-03-01T12:00:00Z")).expect("open")),
            Some(at("2024-03-01T17:00:00Z").as_second())
        );
        assert!(connect_window(&office, "UTC", at("2024-03-01T18:00:00Z")).is_err());
        // In its time zone: 09:00-17:00 in Tokyo is 00:00-08:00 UTC.
        assert!(connect_window(&office, "Asia/Tokyo", at("2024-03-01T03:00:00Z")).is_ok());
        assert!(connect_window(&office, "Asia/Tokyo", at("2024-03-01T12:00:00Z")).is_err());
        // Overnight: from 22:00 it runs into tomorrow; after midnight the window that started
        // yesterday does not count (nats-server takes every start on today's date).
        let night = day("22:00:00", "02:00:00");
        assert_eq!(
            secs(connect_window(&night, "UTC", at("2024-03-01T23:00:00Z")).expect("open")),
            Some(at("2024-03-02T02:00:00Z").as_second())
        );
        assert!(connect_window(&night, "UTC", at("2024-03-02T01:00:00Z")).is_err());
        assert!(connect_window(&office, "Not/AZone", at("2024-03-01T12:00:00Z")).is_err());
        assert!(connect_window(&day("9am", "5pm"), "UTC", at("2024-03-01T12:00:00Z")).is_err());
        assert_eq!(
            connect_window(&[], "", at("2024-03-01T12:00:00Z")),
            Ok(None)
        );
    }

    #[test]
    fn version_1_activation_tokens_name_their_export_kind_in_type() {
        let acc = nkeys::KeyPair::new_account();
        let importer = nkeys::KeyPair::new_account();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = b64.encode(br#"{"typ":"jwt","alg":"ed25519"}"#);
        let p = b64.encode(
            serde_json::json!({"iss": acc.public_key(), "sub": importer.public_key(), "iat": 1,
                "type": "activation", "nats": {"subject": "a.>", "type": "service"}})
            .to_string(),
        );
        let sig = b64.encode(acc.sign(p.as_bytes()).expect("sign"));
        let c: Claims<ActivationNats> = decode(&format!("{h}.{p}.{sig}")).expect("v1 activation");
        assert_eq!(c.nats.kind_of_claims, "activation");
        assert_eq!(c.nats.kind, "service");
        assert_eq!(c.nats.subject, "a.>");
    }
}
