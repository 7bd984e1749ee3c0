//! Client authentication: checks CONNECT's credentials against the configured token, single
//! user, users list (plain or bcrypt passwords), NKey users (a signature over the nonce sent in
//! INFO) or, with `tls.verify_and_map`, the client certificate's names.
//!
//! An `Authenticator` never changes; a reload builds a new one and swaps it into the `AuthCell`.
//! bcrypt comparisons, deliberately slow, never run on a reader task: the check returns
//! `Verdict::Bcrypt` and the caller hands it to the `BcryptLimiter` (`bcrypt`). Operator mode's
//! JWTs are verified in `jwt` (account JWT files in `jwt_dir`); client certificate names and
//! pinning are in `certs`. Secrets never leave this layer in logs or `Debug` output. The auth
//! layer imports the base layer, `perms` and the router's value types only.

pub mod bcrypt;
pub mod callout;
pub mod certs;
pub mod jwt;
pub mod jwt_dir;

pub use self::bcrypt::BcryptLimiter;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use natrium_protocol::ConnectInfo;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use self::certs::CertNames;
use self::jwt::{JwtError, OperatorOptions, Trust, TrustedAccount};
use crate::perms::Permissions;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub user: String,
    /// Plain text, or a bcrypt hash (`$2a$`, `$2b$`, `$2y$`).
    pub password: String,
    /// Falls back to `default_permissions` when absent.
    pub permissions: Option<Permissions>,
    /// The account the user belongs to; `None` is the global account.
    pub account: Option<String>,
    /// `allowed_connection_types` (upper case): the kinds of connection the user may come
    /// through (`STANDARD`, `WEBSOCKET`, ...); empty allows all.
    pub allowed_connection_types: Vec<String>,
}

/// A user identified by an NKey (`authorization { users: [ {nkey: "U..."} ] }`): it proves who it
/// is by signing the nonce sent in INFO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NkeyUser {
    /// The user's public key (`U...`).
    pub nkey: String,
    pub permissions: Option<Permissions>,
    pub account: Option<String>,
    /// As `User::allowed_connection_types`.
    pub allowed_connection_types: Vec<String>,
}

/// The connection types `allowed_connection_types` may name (nats-server's).
pub const CONNECTION_TYPES: &[&str] = &[
    "STANDARD",
    "WEBSOCKET",
    "LEAFNODE",
    "LEAFNODE_WS",
    "MQTT",
    "MQTT_WS",
];

/// Whether a user with `allowed` types may connect as this client (`websocket` or not).
fn type_allowed(allowed: &[String], ctx: &ConnAuth) -> bool {
    let want = if ctx.websocket {
        jwt::CONN_TYPE_WEBSOCKET
    } else {
        jwt::CONN_TYPE_STANDARD
    };
    allowed.is_empty() || allowed.iter().any(|t| t == want)
}

/// Client authentication settings (the `authorization` block and its flag equivalents).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthOptions {
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub users: Vec<User>,
    pub nkeys: Vec<NkeyUser>,
    pub no_auth_user: Option<String>,
    pub default_permissions: Option<Permissions>,
    /// `auth_callout`: users other than its `auth_users` are authenticated by a service.
    pub callout: Option<callout::CalloutOptions>,
}

impl AuthOptions {
    pub fn required(&self) -> bool {
        self.callout.is_some()
            || self.token.is_some()
            || self.user.is_some()
            || !self.users.is_empty()
            || !self.nkeys.is_empty()
    }
}

/// The `Authenticator` in force, swapped whole by a reload or an account JWT update. Read once
/// per CONNECT (and once per connection after a reload), never on the message path.
pub struct AuthCell(RwLock<Arc<Authenticator>>);

impl AuthCell {
    pub fn new(a: Authenticator) -> Self {
        AuthCell(RwLock::new(Arc::new(a)))
    }

    pub fn current(&self) -> Arc<Authenticator> {
        self.0.read().clone()
    }

    pub fn required(&self) -> bool {
        self.0.read().required()
    }

    pub fn store(&self, a: Authenticator) {
        *self.0.write() = Arc::new(a);
    }
}

/// What a client presented in CONNECT, kept by its connection so a reload can check it again.
#[derive(Clone, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
    pub nkey: Option<String>,
    pub sig: Option<String>,
    /// A user JWT (operator mode).
    pub jwt: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("nkey", &self.nkey)
            .field("pass", &self.pass.as_ref().map(|_| "[redacted]"))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Credentials {
    /// Takes from `other` each credential CONNECT did not carry (a WebSocket client's cookies,
    /// as nats-server's `jwt_cookie`, `user_cookie`, `pass_cookie` and `token_cookie`).
    pub fn fill_from(&mut self, other: &Credentials) {
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.as_deref().is_none_or(str::is_empty) && theirs.is_some() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut self.jwt, &other.jwt);
        fill(&mut self.user, &other.user);
        fill(&mut self.pass, &other.pass);
        fill(&mut self.token, &other.token);
    }
}

impl From<&ConnectInfo> for Credentials {
    fn from(c: &ConnectInfo) -> Self {
        Credentials {
            user: c.user.clone(),
            pass: c.pass.clone(),
            token: c.auth_token.clone(),
            nkey: c.nkey.clone(),
            sig: c.sig.clone(),
            jwt: c.jwt.clone(),
        }
    }
}

/// What the server knows about a connection beyond CONNECT: the nonce it sent in INFO and the
/// names of the client certificate (with TLS).
#[derive(Debug, Clone, Default)]
pub struct ConnAuth {
    pub nonce: Option<String>,
    pub cert: Option<CertNames>,
    /// The client's address (user JWTs may restrict it).
    pub ip: Option<IpAddr>,
    /// The client came through the WebSocket listener (user JWTs may restrict connection
    /// types).
    pub websocket: bool,
}

/// Who a client authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (the public key for NKey users), when users are configured.
    pub user: Option<String>,
    /// The account the client joins; `None` is the global account.
    pub account: Option<String>,
    pub permissions: Option<Permissions>,
    /// A fingerprint of the configured secret that admitted the client: a reload whose entry
    /// keeps the same secret need not run bcrypt again.
    pub secret: u64,
    /// Subscriptions the user may hold (a user JWT's `subs`); the account's and the server's
    /// limits apply on top.
    pub max_subs: Option<usize>,
    /// The largest payload the user may publish (a user JWT's `payload`).
    pub max_payload: Option<usize>,
    /// When the credentials expire (a user JWT's `exp`); the connection is closed then.
    pub expires: Option<std::time::SystemTime>,
    /// Admitted by the auth callout service (a reload keeps it while a callout is configured).
    pub via_callout: bool,
}

/// Why a client was refused; the wire error is always `Authorization Violation`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("bad token")]
    BadToken,
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("bad password for user {0:?}")]
    BadPassword(String),
    #[error("unknown nkey {0:?}")]
    UnknownNkey(String),
    #[error("signature not verified for nkey {0:?}")]
    BadSignature(String),
    #[error("client certificate required")]
    NoCertificate,
    #[error("no user for client certificate {0:?}")]
    UnmappedCertificate(String),
    #[error("user JWT refused: {0}")]
    Jwt(#[from] JwtError),
    #[error(
        "user {0:?} may not connect through this kind of connection (allowed_connection_types)"
    )]
    ConnectionType(String),
    #[error("auth callout: {0}")]
    Callout(String),
}

impl AuthError {
    /// The user name (or NKey) the failed attempt claimed, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            AuthError::UnknownUser(u)
            | AuthError::BadPassword(u)
            | AuthError::UnknownNkey(u)
            | AuthError::BadSignature(u)
            | AuthError::ConnectionType(u) => Some(u),
            AuthError::Missing
            | AuthError::BadToken
            | AuthError::NoCertificate
            | AuthError::UnmappedCertificate(_)
            | AuthError::Jwt(_)
            | AuthError::Callout(_) => None,
        }
    }
}

/// The outcome of a check, possibly still waiting for a bcrypt comparison.
pub enum Verdict {
    Accept(Identity),
    Reject(AuthError),
    /// Accept as `identity` if `given` matches the bcrypt `hash`; otherwise reject with `fail`.
    Bcrypt {
        hash: String,
        given: String,
        identity: Identity,
        fail: AuthError,
    },
}

#[derive(Clone)]
pub struct Authenticator {
    opts: AuthOptions,
    users: FxHashMap<String, User>,
    nkeys: FxHashMap<String, NkeyUser>,
    /// `tls.verify_and_map`: the user name comes from the client certificate.
    tls_map: bool,
    timeout: Duration,
    /// Operator mode: the trusted operators and accounts; users come only from JWTs.
    trust: Option<Trust>,
}

fn fingerprint(secret: &str) -> u64 {
    let mut h = DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

impl Authenticator {
    pub fn new(opts: AuthOptions, tls_map: bool, timeout: Duration) -> Self {
        let users = opts
            .users
            .iter()
            .map(|u| (u.user.clone(), u.clone()))
            .collect();
        let nkeys = opts
            .nkeys
            .iter()
            .map(|u| (u.nkey.clone(), u.clone()))
            .collect();
        Authenticator {
            opts,
            users,
            nkeys,
            tls_map,
            timeout,
            trust: None,
        }
    }

    /// With operator mode: the operator JWTs and every account JWT (preloaded or in the
    /// resolver's directory) read and verified, once.
    pub fn with_operator(mut self, op: &OperatorOptions) -> Result<Self, JwtError> {
        self.trust = Some(Trust::new(op)?);
        Ok(self)
    }

    /// Operator mode's trust (operators and accounts), if configured.
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_ref()
    }

    /// A copy with one account of operator mode added or replaced (a pushed account JWT).
    pub fn with_account(&self, acc: TrustedAccount) -> Authenticator {
        let mut a = self.clone();
        if let Some(t) = a.trust.as_mut() {
            t.accounts.insert(acc.key.clone(), acc);
        }
        a
    }

    /// This authenticator with the operator-mode accounts of `old` that it does not have
    /// itself: the URL resolver's accounts, fetched at run time, survive a reload.
    pub fn with_fetched_accounts(mut self, old: &Authenticator) -> Authenticator {
        if let (Some(t), Some(o)) = (self.trust.as_mut(), old.trust.as_ref()) {
            for (k, acc) in &o.accounts {
                t.accounts.entry(k.clone()).or_insert_with(|| acc.clone());
            }
        }
        self
    }

    /// A copy without the given accounts of operator mode (deleted account JWTs).
    pub fn without_accounts(&self, keys: &[String]) -> Authenticator {
        let mut a = self.clone();
        if let Some(t) = a.trust.as_mut() {
            for k in keys {
                t.accounts.remove(k);
            }
        }
        a
    }

    /// The accounts operator mode creates (their public keys).
    pub fn trusted_accounts(&self) -> Vec<String> {
        self.trust
            .as_ref()
            .map(Trust::account_keys)
            .unwrap_or_default()
    }

    pub fn required(&self) -> bool {
        self.trust.is_some() || self.opts.required()
    }

    /// How long a client has to send CONNECT.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The auth callout settings, when one is configured.
    pub fn callout(&self) -> Option<&callout::CalloutOptions> {
        self.opts.callout.as_ref()
    }

    /// Whether a client with these credentials goes to the auth callout service: one is
    /// configured and the client is not one of its `auth_users` (by user name or NKey).
    pub fn goes_to_callout(&self, c: &Credentials) -> bool {
        self.opts.callout.as_ref().is_some_and(|o| {
            let named = c.user.as_deref().or(c.nkey.as_deref());
            !named.is_some_and(|u| o.auth_users.iter().any(|a| a == u))
        })
    }

    /// Whether INFO must carry a nonce (NKey users sign it).
    pub fn needs_nonce(&self) -> bool {
        self.trust.is_some() || !self.nkeys.is_empty()
    }

    /// Checks CONNECT's credentials. Without configured auth everyone is accepted.
    pub fn check(&self, c: &Credentials, ctx: &ConnAuth) -> Verdict {
        let o = &self.opts;
        if let Some(trust) = &self.trust {
            let Some(jwt) = c.jwt.as_deref() else {
                return Verdict::Reject(AuthError::Missing);
            };
            let conn_type = if ctx.websocket {
                jwt::CONN_TYPE_WEBSOCKET
            } else {
                jwt::CONN_TYPE_STANDARD
            };
            let (sig, nonce) = (c.sig.as_deref(), ctx.nonce.as_deref());
            return match trust.authenticate_as(jwt, sig, nonce, ctx.ip, conn_type) {
                Ok(g) => Verdict::Accept(Identity {
                    user: Some(g.user),
                    account: Some(g.account),
                    permissions: g.permissions,
                    secret: fingerprint(jwt),
                    max_subs: g.max_subs,
                    max_payload: g.max_payload,
                    expires: g.expires,
                    via_callout: false,
                }),
                Err(e) => Verdict::Reject(AuthError::Jwt(e)),
            };
        }
        if self.tls_map && !self.users.is_empty() {
            return self.map_certificate(ctx);
        }
        if let Some(token) = &o.token {
            let Some(given) = c.token.as_deref() else {
                return Verdict::Reject(AuthError::Missing);
            };
            return password_verdict(token, given, self.anonymous(token), AuthError::BadToken);
        }
        if let (Some(nkey), false) = (&c.nkey, self.nkeys.is_empty()) {
            return self.check_nkey(nkey, c.sig.as_deref(), ctx);
        }
        if let Some(user) = &o.user {
            let Some(given) = c.user.as_deref() else {
                return Verdict::Reject(AuthError::Missing);
            };
            if given != user {
                return Verdict::Reject(AuthError::UnknownUser(given.to_string()));
            }
            let want = o.password.as_deref().unwrap_or("");
            let identity = Identity {
                user: Some(user.clone()),
                ..self.anonymous(want)
            };
            return password_verdict(
                want,
                c.pass.as_deref().unwrap_or(""),
                identity,
                AuthError::BadPassword(given.to_string()),
            );
        }
        if !self.users.is_empty() {
            let given = match (&c.user, &o.no_auth_user) {
                (Some(u), _) => u.as_str(),
                (None, Some(nau)) if c.pass.is_none() && c.token.is_none() && c.nkey.is_none() => {
                    return match self.users.get(nau) {
                        Some(entry) if !type_allowed(&entry.allowed_connection_types, ctx) => {
                            Verdict::Reject(AuthError::ConnectionType(nau.clone()))
                        }
                        Some(entry) => Verdict::Accept(self.identity_of(entry)),
                        None => Verdict::Reject(AuthError::UnknownUser(nau.clone())),
                    };
                }
                _ => return Verdict::Reject(AuthError::Missing),
            };
            let Some(entry) = self.users.get(given) else {
                return Verdict::Reject(AuthError::UnknownUser(given.to_string()));
            };
            if !type_allowed(&entry.allowed_connection_types, ctx) {
                return Verdict::Reject(AuthError::ConnectionType(given.to_string()));
            }
            return password_verdict(
                &entry.password,
                c.pass.as_deref().unwrap_or(""),
                self.identity_of(entry),
                AuthError::BadPassword(given.to_string()),
            );
        }
        if self.required() {
            return Verdict::Reject(AuthError::Missing);
        }
        Verdict::Accept(self.anonymous(""))
    }

    /// Checks credentials again after a reload. A client whose user entry kept the very secret
    /// that admitted it passes without another bcrypt run.
    pub fn recheck(&self, c: &Credentials, ctx: &ConnAuth, before: &Identity) -> Verdict {
        if before.via_callout {
            // The service's verdict stands while a callout is configured.
            return match &self.opts.callout {
                Some(_) => Verdict::Accept(before.clone()),
                None => Verdict::Reject(AuthError::Missing),
            };
        }
        match self.check(c, ctx) {
            Verdict::Bcrypt { identity, .. } if identity.secret == before.secret => {
                Verdict::Accept(identity)
            }
            v => v,
        }
    }

    /// Like `check`, with any bcrypt comparison done in place (tests, tools).
    pub fn check_blocking(&self, c: &Credentials, ctx: &ConnAuth) -> Result<Identity, AuthError> {
        match self.check(c, ctx) {
            Verdict::Accept(id) => Ok(id),
            Verdict::Reject(e) => Err(e),
            Verdict::Bcrypt {
                hash,
                given,
                identity,
                fail,
            } => {
                if ::bcrypt::verify(given, &hash).unwrap_or(false) {
                    Ok(identity)
                } else {
                    Err(fail)
                }
            }
        }
    }

    fn check_nkey(&self, nkey: &str, sig: Option<&str>, ctx: &ConnAuth) -> Verdict {
        let Some(entry) = self.nkeys.get(nkey) else {
            return Verdict::Reject(AuthError::UnknownNkey(nkey.to_string()));
        };
        if !type_allowed(&entry.allowed_connection_types, ctx) {
            return Verdict::Reject(AuthError::ConnectionType(nkey.to_string()));
        }
        let bad = || Verdict::Reject(AuthError::BadSignature(nkey.to_string()));
        let (Some(sig), Some(nonce)) = (sig, ctx.nonce.as_deref()) else {
            return bad();
        };
        // Clients send raw URL-safe base64; standard base64 is accepted too, as nats-server does.
        let sig = match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) {
            Ok(s) => s,
            Err(_) => match base64::engine::general_purpose::STANDARD.decode(sig) {
                Ok(s) => s,
                Err(_) => return bad(),
            },
        };
        let Ok(key) = nkeys::KeyPair::from_public_key(nkey) else {
            return bad();
        };
        if key.verify(nonce.as_bytes(), &sig).is_err() {
            return bad();
        }
        Verdict::Accept(Identity {
            user: Some(entry.nkey.clone()),
            account: entry.account.clone(),
            permissions: entry
                .permissions
                .clone()
                .or_else(|| self.opts.default_permissions.clone()),
            secret: fingerprint(&entry.nkey),
            max_subs: None,
            max_payload: None,
            expires: None,
            via_callout: false,
        })
    }

    /// `verify_and_map`: the first certificate name that is a configured user (emails, DNS
    /// names, URIs, then the subject DN compared RDN by RDN).
    fn map_certificate(&self, ctx: &ConnAuth) -> Verdict {
        let Some(names) = &ctx.cert else {
            return Verdict::Reject(AuthError::NoCertificate);
        };
        let direct = names
            .emails
            .iter()
            .chain(&names.dns)
            .chain(&names.uris)
            .chain(std::iter::once(&names.dn))
            .find_map(|n| self.users.get(n.as_str()))
            .filter(|u| type_allowed(&u.allowed_connection_types, ctx));
        let entry = direct.or_else(|| {
            let mut users: Vec<&User> = self
                .users
                .values()
                .filter(|u| type_allowed(&u.allowed_connection_types, ctx))
                .collect();
            users.sort_by(|a, b| a.user.cmp(&b.user));
            users
                .into_iter()
                .find(|u| certs::dn_matches(&u.user, &names.dn))
        });
        match entry {
            Some(u) => Verdict::Accept(self.identity_of(u)),
            None => Verdict::Reject(AuthError::UnmappedCertificate(names.dn.clone())),
        }
    }

    /// The account a configured user (or NKey) belongs to.
    pub fn account_of(&self, user: Option<&str>) -> Option<&str> {
        let user = user?;
        match self.users.get(user) {
            Some(u) => u.account.as_deref(),
            None => self.nkeys.get(user)?.account.as_deref(),
        }
    }

    fn anonymous(&self, secret: &str) -> Identity {
        Identity {
            user: None,
            account: None,
            permissions: self.opts.default_permissions.clone(),
            secret: fingerprint(secret),
            max_subs: None,
            max_payload: None,
            expires: None,
            via_callout: false,
        }
    }

    fn identity_of(&self, u: &User) -> Identity {
        Identity {
            user: Some(u.user.clone()),
            account: u.account.clone(),
            permissions: u
                .permissions
                .clone()
                .or_else(|| self.opts.default_permissions.clone()),
            secret: fingerprint(&u.password),
            max_subs: None,
            max_payload: None,
            expires: None,
            via_callout: false,
        }
    }
}

/// What a listener changes in the server's authentication for its own clients: the websocket
/// block's `authorization {}`, `no_auth_user` and `tls.verify_and_map`, applied as nats-server
/// applies them to WebSocket clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthOverride {
    /// The listener names its own credentials (nats-server's "auth override": a username, a
    /// token or a `no_auth_user` in the block): they replace the server's token, single user
    /// and `no_auth_user` (users, NKeys and operator mode stay).
    pub replace: bool,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub no_auth_user: Option<String>,
    /// The listener's auth timeout, when it sets one.
    pub timeout: Option<Duration>,
    /// The listener's own `verify_and_map` (it always replaces the server's).
    pub tls_map: bool,
}

impl Authenticator {
    /// This authenticator as a listener with override `o` applies it.
    pub fn with_override(&self, o: &AuthOverride) -> Authenticator {
        let mut a = self.clone();
        a.tls_map = o.tls_map;
        if let Some(t) = o.timeout {
            a.timeout = t;
        }
        if o.replace {
            a.opts.token = o.token.clone();
            a.opts.user = o.user.clone();
            a.opts.password = o.password.clone();
            a.opts.no_auth_user = o.no_auth_user.clone();
        }
        a
    }
}

/// The authenticator a listener with an override uses: derived from the one in force, and
/// derived again only when a reload or an account JWT update has replaced that one.
pub struct DerivedAuth {
    over: AuthOverride,
    /// (the authenticator in force it was derived from, the derived one)
    cache: parking_lot::Mutex<Option<(Arc<Authenticator>, Arc<Authenticator>)>>,
}

impl DerivedAuth {
    pub fn new(over: AuthOverride) -> Self {
        DerivedAuth {
            over,
            cache: parking_lot::Mutex::new(None),
        }
    }

    /// The derived authenticator for the one `cell` holds now.
    pub fn current(&self, cell: &AuthCell) -> Arc<Authenticator> {
        let base = cell.current();
        let mut cache = self.cache.lock();
        if let Some((b, derived)) = &*cache {
            if Arc::ptr_eq(b, &base) {
                return derived.clone();
            }
        }
        let derived = Arc::new(base.with_override(&self.over));
        *cache = Some((base, derived.clone()));
        derived
    }
}

fn is_bcrypt(s: &str) -> bool {
    s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2y$") || s.starts_with("$2x$")
}

/// Compares a configured secret (plain or bcrypt hash) with what the client sent.
fn password_verdict(configured: &str, given: &str, identity: Identity, fail: AuthError) -> Verdict {
    if is_bcrypt(configured) {
        Verdict::Bcrypt {
            hash: configured.to_string(),
            given: given.to_string(),
            identity,
            fail,
        }
    } else if constant_time_eq(configured.as_bytes(), given.as_bytes()) {
        Verdict::Accept(identity)
    } else {
        Verdict::Reject(fail)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh nonce for INFO: 11 random bytes, URL-safe base64 without padding (as nats-server).
pub fn new_nonce() -> String {
    let mut b = [0u8; 11];
    if getrandom::getrandom(&mut b).is_err() {
        // No OS randomness: fall back to a seeded generator rather than a fixed nonce.
        let mut rng = fastrand::Rng::new();
        b.iter_mut().for_each(|x| *x = rng.u8(..));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, pass: Option<&str>, token: Option<&str>) -> Credentials {
        Credentials {
            user: user.map(String::from),
            pass: pass.map(String::from),
            token: token.map(String::from),
            ..Credentials::default()
        }
    }

    fn auth(o: AuthOptions) -> Authenticator {
        Authenticator::new(o, false, Duration::from_secs(2))
    }

    #[test]
    fn token_user_and_users() {
        let ctx = ConnAuth::default();
        let a = auth(AuthOptions {
            token: Some("s3cr3t".into()),
            ..AuthOptions::default()
        });
        assert!(a
            .check_blocking(&creds(None, None, Some("s3cr3t")), &ctx)
            .is_ok());
        assert_eq!(
            a.check_blocking(&creds(None, None, Some("nope")), &ctx),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            a.check_blocking(&creds(None, None, None), &ctx),
            Err(AuthError::Missing)
        );

        let hash = ::bcrypt::hash("pw2", 4).expect("hash");
        let a = auth(AuthOptions {
            users: vec![
                User {
                    user: "a".into(),
                    password: "pw1".into(),
                    ..User::default()
                },
                User {
                    user: "b".into(),
                    password: hash,
                    ..User::default()
                },
            ],
            no_auth_user: Some("a".into()),
            ..AuthOptions::default()
        });
        assert!(a
            .check_blocking(&creds(Some("a"), Some("pw1"), None), &ctx)
            .is_ok());
        assert!(a
            .check_blocking(&creds(Some("b"), Some("pw2"), None), &ctx)
            .is_ok());
        assert!(a
            .check_blocking(&creds(Some("b"), Some("pw1"), None), &ctx)
            .is_err());
        assert!(a
            .check_blocking(&creds(Some("c"), Some("pw1"), None), &ctx)
            .is_err());
        assert_eq!(
            a.check_blocking(&creds(None, None, None), &ctx)
                .map(|i| i.user),
            Ok(Some("a".into()))
        );
        // A bcrypt user whose hash did not change is re-admitted without bcrypt on reload.
        let before = a
            .check_blocking(&creds(Some("b"), Some("pw2"), None), &ctx)
            .expect("ok");
        assert!(matches!(
            a.recheck(&creds(Some("b"), Some("pw2"), None), &ctx, &before),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn nkey_signature_over_the_nonce() {
        let kp = nkeys::KeyPair::new_user();
        let a = auth(AuthOptions {
            nkeys: vec![NkeyUser {
                nkey: kp.public_key(),
                ..NkeyUser::default()
            }],
            ..AuthOptions::default()
        });
        assert!(a.required() && a.needs_nonce());
        let nonce = new_nonce();
        assert_eq!(nonce.len(), 15);
        let ctx = ConnAuth {
            nonce: Some(nonce.clone()),
            ..ConnAuth::default()
        };
        let sig = kp.sign(nonce.as_bytes()).expect("sign");
        let mut c = Credentials {
            nkey: Some(kp.public_key()),
            sig: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig)),
            ..Credentials::default()
        };
        assert!(a.check_blocking(&c, &ctx).is_ok());
        c.sig = Some(base64::engine::general_purpose::STANDARD.encode(&sig));
        assert!(a.check_blocking(&c, &ctx).is_ok(), "standard base64 too");
        let other = ConnAuth {
            nonce: Some(new_nonce()),
            ..ConnAuth::default()
        };
        assert!(matches!(
            a.check_blocking(&c, &other),
            Err(AuthError::BadSignature(_))
        ));
        c.nkey = Some(nkeys::KeyPair::new_user().public_key());
        assert!(matches!(
            a.check_blocking(&c, &ctx),
            Err(AuthError::UnknownNkey(_))
        ));
    }

    #[test]
    fn certificate_names_map_to_users() {
        let user = |n: &str| User {
            user: n.into(),
            ..User::default()
        };
        let a = Authenticator::new(
            AuthOptions {
                users: vec![user("alice@example.com"), user("CN=bob,O=Acme")],
                ..AuthOptions::default()
            },
            true,
            Duration::from_secs(2),
        );
        let ctx = |emails: &[&str], dn: &str| ConnAuth {
            nonce: None,
            ip: None,
            websocket: false,
            cert: Some(CertNames {
                emails: emails.iter().map(|s| s.to_string()).collect(),
                dn: dn.into(),
                ..CertNames::default()
            }),
        };
        let none = Credentials::default();
        assert_eq!(
            a.check_blocking(&none, &ctx(&["alice@example.com"], "CN=x"))
                .map(|i| i.user),
            Ok(Some("alice@example.com".into()))
        );
        assert_eq!(
            a.check_blocking(&none, &ctx(&[], "O=Acme,CN=bob"))
                .map(|i| i.user),
            Ok(Some("CN=bob,O=Acme".into()))
        );
        assert!(a.check_blocking(&none, &ctx(&[], "CN=eve")).is_err());
        assert_eq!(
            a.check_blocking(&none, &ConnAuth::default()),
            Err(AuthError::NoCertificate)
        );
    }
}
