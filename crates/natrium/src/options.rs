//! The server's options, composed of the config types each layer owns (auth, TLS, accounts and
//! imports, JetStream): defaults as nats-server has them, loading from a parsed config file,
//! validation, what a reload may change, and a one-line summary for the startup log.
//! Command-line flags are merged in `cli`. Only the server and the binary's layers import it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use natrium_config::{ConfigError, Map, Pos, Spanned, Value};

mod known_keys;

pub use crate::auth::jwt::{DirResolver, OperatorOptions, Resolver};
pub use crate::auth::{AuthOptions, NkeyUser, User};
pub use crate::cluster::{ClusterOptions, RouteUrl};
pub use crate::conn::{TlsOptions, WebsocketOptions};
pub use crate::jetstream::{AccountLimits, JetStreamOptions};
pub use crate::leaf::{LeafAuth, LeafOptions, LeafUser, RemoteLeaf};
pub use crate::perms::{Permissions, ResponsePermission, SubjectPermission};
pub use crate::router::imports::{Export, ExportKind, Import};
pub use crate::router::Limits;
pub use crate::util::{PROTOCOL_VERSION, VERSION};

/// The default system account, as in nats-server.
pub const SYSTEM_ACCOUNT: &str = "$SYS";
/// Default of `max_unauthenticated_per_ip`: far more than one host opens at once in practice
/// (each connection is in that state for a round trip, or while its bcrypt check queues), and a
/// small fraction of the default `max_connections`.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_IP: usize = 256;

/// One entry of the `accounts` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountOptions {
    pub name: String,
    /// JetStream enabled for this account (`jetstream: enabled` or a `jetstream {}` block).
    pub jetstream: bool,
    /// Limits from a `jetstream { max_mem, max_file, max_streams, max_consumers }` block.
    pub jetstream_limits: Option<AccountLimits>,
    pub exports: Vec<Export>,
    pub imports: Vec<Import>,
    /// `limits { max_connections, max_subscriptions, max_payload, max_leafnodes }`; a negative
    /// value is unlimited and 0 allows none, as in nats-server.
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub host: String,
    /// `-1` picks a random free port, as nats-server does.
    pub port: i32,
    pub server_name: Option<String>,
    /// `server_tags`: matched by replicated streams' `placement.tags`.
    pub server_tags: Vec<String>,
    pub max_payload: usize,
    pub max_control_line: usize,
    pub max_connections: usize,
    /// Bytes a client may have waiting for its socket before it is cut off as a slow consumer.
    pub max_pending: usize,
    pub ping_interval: Duration,
    pub ping_max: u32,
    pub write_deadline: Duration,
    /// Lame duck mode (SIGUSR2, `--signal ldm`): clients are closed spread over this long...
    pub lame_duck_duration: Duration,
    /// ...after this wait, which gives them time to reconnect elsewhere first.
    pub lame_duck_grace_period: Duration,
    pub auth_timeout: Duration,
    pub auth: AuthOptions,
    /// TLS for client connections; `None` is plaintext.
    pub tls: Option<TlsOptions>,
    /// `allow_non_tls`: with `tls`, TLS is offered but plaintext clients are let in too.
    pub allow_non_tls: bool,
    /// Subscriptions one connection may hold; 0 is unlimited.
    pub max_subscriptions: usize,
    /// Connections from one address (an IPv4 address, or an IPv6 /64) that may be open at once
    /// without having completed CONNECT (TLS handshake and authentication included); further
    /// ones are refused at accept. 0 is unlimited. A Natrium setting (nats-server has none):
    /// it keeps a connect flood from one address from filling `max_connections`.
    pub max_unauthenticated_per_ip: usize,
    /// JWT operator mode, when configured.
    pub operator: Option<OperatorOptions>,
    pub accounts: Vec<AccountOptions>,
    /// The system account's name (`$SYS` unless configured).
    pub system_account: String,
    /// JetStream, when enabled.
    pub jetstream: Option<JetStreamOptions>,
    /// Routes to other servers (`cluster {}`), when this server is part of a cluster.
    pub cluster: Option<ClusterOptions>,
    /// The WebSocket listener (`websocket {}`), when configured.
    pub websocket: Option<WebsocketOptions>,
    /// Leafnodes (`leafnodes {}`): the hub's listener and the remotes this server dials.
    pub leafnodes: Option<LeafOptions>,
    /// Monitoring listener; `None` disables it, `-1` picks a random port.
    pub http_port: Option<i32>,
    /// HTTPS monitoring listener (with the `tls {}` certificate); exclusive with `http_port`.
    pub https_port: Option<i32>,
    /// The monitoring listener's host; empty is the client listener's `host`, as in
    /// nats-server (only `http: host:port` or `https: host:port` name another).
    pub http_host: String,
    /// Prefix of every monitoring path (`/` when empty).
    pub http_base_path: String,
    pub debug: bool,
    pub trace: bool,
    pub logtime: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub ports_file_dir: Option<PathBuf>,
    /// The file the options were loaded from, if any.
    pub config_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "0.0.0.0".into(),
            port: 4222,
            server_name: None,
            server_tags: Vec::new(),
            max_payload: 1024 * 1024,
            max_control_line: 4096,
            max_connections: 64 * 1024,
            max_pending: 64 * 1024 * 1024,
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            write_deadline: Duration::from_secs(10),
            lame_duck_duration: Duration::from_secs(120),
            lame_duck_grace_period: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(2),
            auth: AuthOptions::default(),
            tls: None,
            allow_non_tls: false,
            max_subscriptions: 0,
            max_unauthenticated_per_ip: DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
            operator: None,
            accounts: Vec::new(),
            system_account: SYSTEM_ACCOUNT.to_string(),
            jetstream: None,
            cluster: None,
            websocket: None,
            leafnodes: None,
            http_port: None,
            https_port: None,
            http_host: String::new(),
            http_base_path: String::new(),
            debug: false,
            trace: false,
            logtime: true,
            log_file: None,
            pid_file: None,
            ports_file_dir: None,
            config_file: None,
        }
    }
}

/// Why options could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(transparent)]
    Parse(#[from] ConfigError),
    #[error("{pos}: {msg}")]
    Invalid { pos: String, msg: String },
    #[error("{0}")]
    Validation(String),
    /// Keys nats-server does not know (typos), each as `file:line:col: unknown field "x"`.
    #[error("{}", .0.join("\n"))]
    UnknownKeys(Vec<String>),
}

/// The warning for a key nats-server knows that this version of Natrium does not act on yet
/// (`block` names where it is, empty at the top level).
fn not_supported(warnings: &mut Vec<String>, pos: &Pos, block: &str, key: &str) {
    let block = if block.is_empty() {
        String::new()
    } else {
        format!("{block} ")
    };
    warnings.push(format!(
        "{pos}: {block}key {key:?} is a nats-server option not supported yet by this version of natrium; it is ignored"
    ));
}

impl Options {
    /// Loads a config file on top of the defaults. Returns the options and warnings to log.
    pub fn from_file(path: &Path) -> Result<(Options, Vec<String>), OptionsError> {
        let map = natrium_config::parse_file(path)?;
        let mut opts = Options {
            config_file: Some(path.to_path_buf()),
            ..Options::default()
        };
        let warnings = opts.apply_config(&map)?;
        Ok((opts, warnings))
    }

    /// Applies the keys of a parsed config map. Keys nats-server does not know are errors (all
    /// of them reported at once, as nats-server does); keys it knows that Natrium does not act on
    /// yet become warnings.
    pub fn apply_config(&mut self, map: &Map) -> Result<Vec<String>, OptionsError> {
        let unknown = known_keys::unknown_keys(map);
        if !unknown.is_empty() {
            return Err(OptionsError::UnknownKeys(unknown));
        }
        let mut warnings = Vec::new();
        let mut system_account_set = false;
        let mut store_dir = None;
        for (key, kpos, v) in map.entries() {
            match key.to_ascii_lowercase().as_str() {
                "listen" => {
                    let (host, port) = parse_listen(v)?;
                    if let Some(h) = host {
                        self.host = h;
                    }
                    self.port = port;
                }
                "host" | "net" => self.host = string(v)?,
                "port" => self.port = port(v, "port")?,
                "server_name" => self.server_name = Some(string(v)?),
                "server_tags" => self.server_tags = subject_list_plain(v)?,
                "max_payload" => self.max_payload = size(v)? as usize,
                "max_control_line" => self.max_control_line = size(v)? as usize,
                "max_connections" | "max_conn" => self.max_connections = int(v)? as usize,
                "max_pending" => self.max_pending = size(v)? as usize,
                "ping_interval" => self.ping_interval = duration(v)?,
                "ping_max" => self.ping_max = int(v)? as u32,
                "write_deadline" => self.write_deadline = duration(v)?,
                "lame_duck_duration" => self.lame_duck_duration = duration(v)?,
                "lame_duck_grace_period" => self.lame_duck_grace_period = duration(v)?,
                "tls" => self.tls = Some(tls(v, &mut warnings)?),
                "allow_non_tls" => self.allow_non_tls = boolean(v)?,
                "max_subscriptions" | "max_subs" => {
                    self.max_subscriptions = int(v)?.max(0) as usize
                }
                "max_unauthenticated_per_ip" => {
                    self.max_unauthenticated_per_ip = int(v)?.max(0) as usize
                }
                "jetstream" => self.jetstream = jetstream(v, &mut warnings)?,
                "cluster" => self.cluster = Some(cluster(v, &mut warnings)?),
                "websocket" | "ws" => self.websocket = Some(websocket(v, &mut warnings)?),
                "leafnodes" | "leaf" => self.leafnodes = Some(leafnodes(v, &mut warnings)?),
                // The JetStream store directory may also be set at the top level.
                "store_dir" | "storedir" => store_dir = Some((PathBuf::from(string(v)?), v)),
                "http_port" | "monitor_port" => self.http_port = Some(port(v, "http_port")?),
                "http" => {
                    let (host, port) = parse_listen(v)?;
                    if let Some(h) = host {
                        self.http_host = h;
                    }
                    self.http_port = Some(port);
                }
                "https" => {
                    let (host, port) = parse_listen(v)?;
                    if let Some(h) = host {
                        self.http_host = h;
                    }
                    self.https_port = Some(port);
                }
                "https_port" => self.https_port = Some(port(v, "https_port")?),
                "http_base_path" => self.http_base_path = string(v)?,
                "debug" => self.debug = boolean(v)?,
                "trace" => self.trace = boolean(v)?,
                "logtime" => self.logtime = boolean(v)?,
                "log_file" | "logfile" => self.log_file = Some(string(v)?.into()),
                "pid_file" | "pidfile" => self.pid_file = Some(string(v)?.into()),
                "ports_file_dir" => self.ports_file_dir = Some(string(v)?.into()),
                "no_auth_user" => self.auth.no_auth_user = Some(string(v)?),
                "authorization" => self.apply_authorization(v, &mut warnings)?,
                "accounts" => self.apply_accounts(v, &mut warnings)?,
                "system_account" => {
                    self.system_account = string(v)?;
                    system_account_set = true;
                }
                "operator" | "operators" | "root" | "roots" | "root_operator"
                | "root_operators" => {
                    let base = self.config_file.as_deref().and_then(Path::parent);
                    let items = match &v.value {
                        Value::Array(items) => {
                            items.iter().map(string).collect::<Result<Vec<_>, _>>()?
                        }
                        _ => vec![string(v)?],
                    };
                    let mut jwts = Vec::new();
                    for item in items {
                        jwts.push(operator_jwt(&item, base).map_err(|m| invalid(v, &m))?);
                    }
                    self.operator.get_or_insert_with(Default::default).operators = jwts;
                }
                "resolver" | "account_resolver" | "accounts_resolver" => {
                    self.operator.get_or_insert_with(Default::default).resolver =
                        Some(resolver(v)?);
                }
                "resolver_preload" => {
                    let mut preload = Vec::new();
                    for (k, jv) in map_of(v)?.iter() {
                        preload.push((k.to_string(), string(jv)?));
                    }
                    self.operator.get_or_insert_with(Default::default).preload = preload;
                }
                // A `$variable` definition, not an option.
                _ if map.is_used_variable(key) => {}
                _ => not_supported(&mut warnings, kpos, "", key),
            }
        }
        if let Some((dir, v)) = store_dir {
            let in_block = map
                .get("jetstream")
                .and_then(Spanned::as_map)
                .is_some_and(|m| {
                    ["store_dir", "storedir", "store"]
                        .iter()
                        .any(|k| m.get(k).is_some())
                });
            if in_block {
                return Err(invalid(v, "Duplicate 'store_dir' configuration"));
            }
            if let Some(js) = &mut self.jetstream {
                js.store_dir = dir;
            }
        }
        // In operator mode the system account is the one the operator JWT names, unless the
        // config says otherwise.
        if let (false, Some(op)) = (system_account_set, &self.operator) {
            if let Some(sys) = crate::auth::jwt::operator_system_account(&op.operators) {
                self.system_account = sys;
            }
        }
        Ok(warnings)
    }

    fn apply_authorization(
        &mut self,
        v: &Spanned,
        warnings: &mut Vec<String>,
    ) -> Result<(), OptionsError> {
        let map = map_of(v)?;
        for (key, kpos, v) in map.entries() {
            match key.to_ascii_lowercase().as_str() {
                "token" => self.auth.token = Some(string(v)?),
                "user" | "username" => self.auth.user = Some(string(v)?),
                "pass" | "password" => self.auth.password = Some(string(v)?),
                "timeout" => self.auth_timeout = duration_secs_f(v)?,
                "users" => {
                    let (users, nkeys) = users(v, None, warnings)?;
                    self.auth.users.extend(users);
                    self.auth.nkeys.extend(nkeys);
                }
                "default_permission" | "default_permissions" | "permissions" => {
                    self.auth.default_permissions = Some(permissions(v)?)
                }
                "auth_callout" | "auth_hook" => {
                    self.auth.callout =
                        Some(crate::auth::callout::parse(v).map_err(|m| invalid(v, &m))?)
                }
                _ => not_supported(warnings, kpos, "authorization", key),
            }
        }
        Ok(())
    }

    fn apply_accounts(
        &mut self,
        v: &Spanned,
        warnings: &mut Vec<String>,
    ) -> Result<(), OptionsError> {
        for (name, body) in map_of(v)?.iter() {
            let mut acc = AccountOptions {
                name: name.to_string(),
                ..AccountOptions::default()
            };
            // `accounts { A: {} }` and `accounts { A {} }`; a bare `A: {}` with no body is fine too.
            if let Value::Map(m) = &body.value {
                for (key, kpos, kv) in m.entries() {
                    match key.to_ascii_lowercase().as_str() {
                        "users" => {
                            let (users, nkeys) = users(kv, Some(name), warnings)?;
                            self.auth.users.extend(users);
                            self.auth.nkeys.extend(nkeys);
                        }
                        "exports" => acc.exports = exports(kv)?,
                        "imports" => acc.imports = imports(kv)?,
                        "jetstream" => {
                            acc.jetstream = match &kv.value {
                                Value::Bool(b) => *b,
                                Value::String(s) => {
                                    s.eq_ignore_ascii_case("enabled")
                                        || s.eq_ignore_ascii_case("true")
                                }
                                Value::Map(m) => {
                                    let mut l = AccountLimits::default();
                                    for (k, kpos, lv) in m.entries() {
                                        match k.to_ascii_lowercase().as_str() {
                                            "max_mem" | "max_memory" | "max_memory_store"
                                            | "mem" | "memory" => l.max_memory = size(lv)?,
                                            "max_file" | "max_store" | "max_file_store"
                                            | "max_disk" | "store" | "disk" => {
                                                l.max_file = size(lv)?
                                            }
                                            "max_streams" | "streams" => l.max_streams = int(lv)?,
                                            "max_consumers" | "consumers" => {
                                                l.max_consumers = int(lv)?
                                            }
                                            "max_ack_pending" => l.max_ack_pending = int(lv)?,
                                            "max_bytes_required" | "max_stream_bytes"
                                            | "max_bytes" => {
                                                l.max_bytes_required = match &lv.value {
                                                    Value::Bool(b) => *b,
                                                    _ => {
                                                        return Err(invalid(
                                                            lv,
                                                            "expected a boolean",
                                                        ))
                                                    }
                                                }
                                            }
                                            "mem_max_stream_bytes" | "memory_max_stream_bytes" => {
                                                l.memory_max_stream_bytes = size(lv)?
                                            }
                                            "disk_max_stream_bytes" | "store_max_stream_bytes" => {
                                                l.storage_max_stream_bytes = size(lv)?
                                            }
                                            _ => not_supported(
                                                warnings,
                                                kpos,
                                                "account jetstream",
                                                k,
                                            ),
                                        }
                                    }
                                    acc.jetstream_limits = Some(l);
                                    true
                                }
                                _ => {
                                    return Err(invalid(
                                        kv,
                                        "jetstream must be enabled, disabled or a map",
                                    ))
                                }
                            }
                        }
                        "default_permissions" => {}
                        "limits" => acc.limits = account_limits(kv)?,
                        _ => not_supported(warnings, kpos, "account", key),
                    }
                }
                if let Some(dp) = m.get("default_permissions") {
                    let dp = permissions(dp)?;
                    for u in self.auth.users.iter_mut() {
                        if u.account.as_deref() == Some(name) && u.permissions.is_none() {
                            u.permissions = Some(dp.clone());
                        }
                    }
                    for u in self.auth.nkeys.iter_mut() {
                        if u.account.as_deref() == Some(name) && u.permissions.is_none() {
                            u.permissions = Some(dp.clone());
                        }
                    }
                }
            }
            self.accounts.push(acc);
        }
        Ok(())
    }

    /// Checks the options are coherent.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let bad = |m: &str| Err(OptionsError::Validation(m.to_string()));
        if self.port < -1 || self.port > 65535 {
            return bad("port must be between -1 and 65535");
        }
        if self.http_port.is_some_and(|p| !(-1..=65535).contains(&p)) {
            return bad("http_port must be between -1 and 65535");
        }
        if self.https_port.is_some_and(|p| !(-1..=65535).contains(&p)) {
            return bad("https_port must be between -1 and 65535");
        }
        // As nats-server: one monitoring listener, HTTP or HTTPS; HTTPS port 0 is off.
        match (self.http_port, self.https_port.filter(|p| *p != 0)) {
            (Some(http), Some(https)) => {
                return Err(OptionsError::Validation(format!(
                    "can't specify both HTTP ({http}) and HTTPs ({https}) ports"
                )))
            }
            (None, Some(_)) if self.tls.is_none() => {
                return bad("TLS cert and key required for HTTPS (https_port needs a tls {} block)")
            }
            _ => {}
        }
        if let Some(c) = &self.cluster {
            if !(-1..=65535).contains(&c.port) {
                return bad("cluster port must be between -1 and 65535");
            }
            if c.name
                .as_ref()
                .is_some_and(|n| n.contains([' ', '\n', '\r', '\t']))
            {
                return bad("cluster name cannot contain spaces or new lines");
            }
            // As nats-server: a JetStream cluster names its servers and itself.
            if self.jetstream.is_some() && self.server_name.is_none() {
                return bad("jetstream cluster requires `server_name` to be set");
            }
            if self.jetstream.is_some() && c.name.is_none() {
                return bad("jetstream cluster requires `cluster.name` to be set");
            }
        }
        if let Some(l) = &self.leafnodes {
            if l.port.is_some_and(|p| !(-1..=65535).contains(&p)) {
                return bad("leafnode port must be between -1 and 65535");
            }
        }
        if self.max_payload == 0 || self.max_payload > 64 * 1024 * 1024 {
            return bad("max_payload must be between 1 byte and 64 MB");
        }
        if self.max_payload > self.max_pending {
            return bad("max_payload cannot exceed max_pending");
        }
        if self.max_control_line < 64 {
            return bad("max_control_line must be at least 64");
        }
        let a = &self.auth;
        if a.token.is_some() && (a.user.is_some() || !a.users.is_empty() || !a.nkeys.is_empty()) {
            return bad("can not have a token and a user/users at the same time");
        }
        if a.user.is_some() && !a.users.is_empty() {
            return bad("can not have a single user/pass and a users array");
        }
        let mut seen = std::collections::HashSet::new();
        for u in &a.users {
            if !seen.insert(u.user.as_str()) {
                return bad(&format!("duplicate user {:?} detected", u.user));
            }
            if let Some(acc) = &u.account {
                if !self.accounts.iter().any(|x| &x.name == acc) {
                    return bad(&format!(
                        "user {:?} refers to unknown account {acc:?}",
                        u.user
                    ));
                }
            }
        }
        let account_names: Vec<&str> = self.accounts.iter().map(|x| x.name.as_str()).collect();
        for acc in &self.accounts {
            for imp in &acc.imports {
                if !account_names.contains(&imp.account.as_str()) {
                    return bad(&format!(
                        "account {:?} imports from unknown account {:?}",
                        acc.name, imp.account
                    ));
                }
            }
        }
        for n in &a.nkeys {
            if !seen.insert(n.nkey.as_str()) {
                return bad(&format!("duplicate nkey {:?} detected", n.nkey));
            }
            if !n.nkey.starts_with('U') || nkeys::KeyPair::from_public_key(&n.nkey).is_err() {
                return bad(&format!("not a valid public nkey for a user: {:?}", n.nkey));
            }
            if let Some(acc) = &n.account {
                if !self.accounts.iter().any(|x| &x.name == acc) {
                    return bad(&format!(
                        "nkey user {:?} refers to unknown account {acc:?}",
                        n.nkey
                    ));
                }
            }
        }
        if let Some(t) = &self.tls {
            if t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty() {
                return bad("tls: cert_file and key_file are required");
            }
            if (t.verify || t.verify_and_map) && t.ca_file.is_none() {
                return bad("tls: verify needs a ca_file to check client certificates against");
            }
        }
        if let Some(op) = &self.operator {
            match &op.resolver {
                Some(Resolver::Memory | Resolver::Dir(_) | Resolver::Url(_)) => {}
                Some(Resolver::Unsupported(r)) => {
                    return bad(&format!(
                        "resolver {r:?} is not supported yet by this version of natrium (use MEMORY or a directory resolver)"
                    ))
                }
                None => return bad("operator mode needs a resolver (resolver: MEMORY)"),
            }
            if op.operators.is_empty() {
                return bad("resolver and resolver_preload need an operator");
            }
            if a.required() || !self.accounts.is_empty() {
                return bad(
                    "operator mode can not be combined with authorization users or accounts",
                );
            }
            // The JWTs themselves are verified once, when the server builds its authenticator
            // (`Server::start`, a reload, `natrium -t`).
        }
        if let Some(ws) = &self.websocket {
            ws.validate(a, self.operator.is_some())
                .map_err(OptionsError::Validation)?;
        }
        // As nats-server, the system account must exist (only the default `$SYS` is created);
        // in operator mode it is an account the operator's resolver provides.
        if self.operator.is_none()
            && self.system_account != SYSTEM_ACCOUNT
            && !self.accounts.iter().any(|x| x.name == self.system_account)
        {
            return bad(&format!(
                "error resolving system account: account missing (system_account {:?} is not in the accounts block)",
                self.system_account
            ));
        }
        if let Some(nau) = &a.no_auth_user {
            if !a.users.iter().any(|u| &u.user == nau) {
                return bad(&format!(
                    "no_auth_user: {nau:?} not present as user in authorization block"
                ));
            }
        }
        Ok(())
    }

    /// Which setting differs in `new` that a reload can not apply (the first found), if any.
    /// Reloadable: everything under authorization (users, NKeys, token, passwords, permissions,
    /// account membership of users, `no_auth_user`, the auth timeout), `tls`, accounts'
    /// `limits`, `max_subscriptions`, `max_payload`, `max_control_line`, `max_connections`,
    /// `ping_interval`, `ping_max`, `write_deadline`, `debug`, `trace` and `logtime`
    /// (nats-server reloads the same, except `max_subscriptions`, which it refuses), and
    /// `max_unauthenticated_per_ip`. Accounts
    /// themselves (added, removed, exports, imports, JetStream),
    /// listeners, the resolver, `max_pending` and the log, pid and ports files need a restart.
    pub fn reload_blocker(&self, new: &Options) -> Option<&'static str> {
        // Destructured without `..`: a new option must be sorted into one of the two kinds here.
        let Options {
            host,
            port,
            server_name,
            server_tags,
            max_payload: _,
            max_control_line: _,
            max_connections: _,
            max_pending,
            ping_interval: _,
            ping_max: _,
            write_deadline: _,
            lame_duck_duration: _,
            lame_duck_grace_period: _,
            auth_timeout: _,
            auth: _,
            tls: _,
            allow_non_tls,
            max_subscriptions: _,
            max_unauthenticated_per_ip: _,
            operator,
            accounts,
            system_account,
            jetstream,
            cluster,
            websocket,
            leafnodes,
            http_port,
            https_port,
            http_host,
            http_base_path,
            debug: _,
            trace: _,
            logtime: _,
            log_file,
            pid_file,
            ports_file_dir,
            config_file: _,
        } = new;
        let checks: [(&'static str, bool); 20] = [
            ("cluster", &self.cluster != cluster),
            ("server_tags", &self.server_tags != server_tags),
            ("leafnodes", &self.leafnodes != leafnodes),
            ("websocket", &self.websocket != websocket),
            ("host", &self.host != host),
            ("port", &self.port != port),
            ("server_name", &self.server_name != server_name),
            ("max_pending", &self.max_pending != max_pending),
            ("allow_non_tls", &self.allow_non_tls != allow_non_tls),
            (
                "an account's jetstream (enabling it for a new account is fine)",
                !jetstream_kept(&self.accounts, accounts),
            ),
            (
                "resolver",
                self.operator.as_ref().map(|o| &o.resolver)
                    != operator.as_ref().map(|o| &o.resolver),
            ),
            ("system_account", &self.system_account != system_account),
            ("jetstream", &self.jetstream != jetstream),
            ("http_port", &self.http_port != http_port),
            ("https_port", &self.https_port != https_port),
            ("http_host", &self.http_host != http_host),
            ("http_base_path", &self.http_base_path != http_base_path),
            ("log_file", &self.log_file != log_file),
            ("pid_file", &self.pid_file != pid_file),
            ("ports_file_dir", &self.ports_file_dir != ports_file_dir),
        ];
        checks
            .into_iter()
            .find(|(_, changed)| *changed)
            .map(|(n, _)| n)
    }

    /// The host monitoring listens on: `http_host`, else the client listener's host.
    pub fn monitor_host(&self) -> &str {
        if self.http_host.is_empty() {
            &self.host
        } else {
            &self.http_host
        }
    }

    /// One line describing the effective configuration, for the startup log (no secrets).
    pub fn summary(&self) -> String {
        let auth = if self.auth.token.is_some() {
            "token".to_string()
        } else if self.auth.user.is_some() {
            "user/password".to_string()
        } else if !self.auth.users.is_empty() || !self.auth.nkeys.is_empty() {
            format!(
                "{} users, {} nkeys",
                self.auth.users.len(),
                self.auth.nkeys.len()
            )
        } else {
            "none".to_string()
        };
        let tls = match &self.tls {
            None => "off",
            Some(t) if t.verify_and_map => "verify_and_map",
            Some(t) if t.verify => "verify",
            Some(_) => "on",
        };
        format!(
            "listen={}:{} max_payload={} max_pending={} max_connections={} ping_interval={:?} auth={} tls={}",
            self.host, self.port, self.max_payload, self.max_pending, self.max_connections, self.ping_interval, auth, tls
        )
    }
}

/// The `resolver` setting: `MEMORY`/`MEM`, `URL(...)` or a map with `dir`
/// and `type` (`full`, `cache` or `mem`), with nats-server's checks and error texts.
fn resolver(v: &Spanned) -> Result<Resolver, OptionsError> {
    let m = match &v.value {
        Value::String(s) => {
            let t = s.trim();
            return if t.eq_ignore_ascii_case("MEM") || t.eq_ignore_ascii_case("MEMORY") {
                Ok(Resolver::Memory)
            } else if t.to_ascii_uppercase().starts_with("URL") {
                Ok(Resolver::from_url_form(t))
            } else {
                Err(invalid(v, RESOLVER_FORMS))
            };
        }
        Value::Map(m) => m,
        other => {
            return Err(invalid(
                v,
                &format!(
                    "error parsing operator resolver, wrong type {}",
                    other.kind_name()
                ),
            ))
        }
    };
    let mut d = DirResolver {
        dir: PathBuf::new(),
        cache: false,
        allow_delete: false,
        hard_delete: false,
        limit: 0,
        interval: Duration::from_secs(60),
        timeout: Duration::from_millis(1900),
    };
    let mut kind = String::new();
    let (mut ttl, mut hard_set, mut interval_set) = (false, false, false);
    for (k, kv) in m.iter() {
        match k.to_ascii_lowercase().as_str() {
            "dir" => d.dir = string(kv)?.into(),
            "type" => kind = string(kv)?.to_ascii_uppercase(),
            "allow_delete" => d.allow_delete = boolean(kv)?,
            "hard_delete" => {
                d.hard_delete = boolean(kv)?;
                hard_set = true;
            }
            "limit" => d.limit = int(kv)?.max(0) as usize,
            "ttl" => {
                duration(kv)?;
                ttl = true;
            }
            "interval" => {
                d.interval = duration(kv)?;
                interval_set = true;
            }
            "timeout" => d.timeout = duration(kv)?,
            _ => return Err(invalid(kv, &format!("unknown resolver key {k:?}"))),
        }
    }
    let check_dir = |d: &DirResolver| {
        if d.dir.as_os_str().is_empty() {
            return Err(invalid(
                v,
                "dir has no value and needs to point to a directory",
            ));
        }
        if d.dir.exists() && !d.dir.is_dir() {
            return Err(invalid(v, "dir needs to point to an accessible directory"));
        }
        Ok(())
    };
    match kind.as_str() {
        "MEM" | "MEMORY" => Ok(Resolver::Memory),
        "CACHE" => {
            check_dir(&d)?;
            for (bad, what) in [
                (interval_set, "sync"),
                (d.allow_delete, "allow_delete"),
                (hard_set, "hard_delete"),
            ] {
                if bad {
                    return Err(invalid(v, &format!("CACHE does not accept {what}")));
                }
            }
            d.cache = true;
            Ok(Resolver::Dir(d))
        }
        "FULL" => {
            check_dir(&d)?;
            if ttl {
                return Err(invalid(v, "FULL does not accept ttl"));
            }
            if hard_set && !d.allow_delete {
                return Err(invalid(v, "hard_delete has no effect without delete"));
            }
            Ok(Resolver::Dir(d))
        }
        _ => Err(invalid(v, RESOLVER_FORMS)),
    }
}

const RESOLVER_FORMS: &str = "error parsing account resolver, should be MEM or  URL(\"url\") or a map containing dir and type state=[FULL|CACHE])";

/// Whether two account lists differ at most in the accounts' `limits` (which a reload applies).
/// Every account that had JetStream still has it, with the same limits: a reload may add
/// accounts (with or without JetStream), change users, imports, exports and limits, and remove
/// accounts without JetStream, but not take JetStream away or change its limits.
fn jetstream_kept(old: &[AccountOptions], new: &[AccountOptions]) -> bool {
    old.iter().filter(|a| a.jetstream).all(|a| {
        new.iter()
            .find(|n| n.name == a.name)
            .is_some_and(|n| n.jetstream && n.jetstream_limits == a.jetstream_limits)
    })
}

/// An account's `limits {}` block, with nats-server's names and aliases; unknown keys are
/// errors there, and here too.
fn account_limits(v: &Spanned) -> Result<Limits, OptionsError> {
    let mut l = Limits::default();
    for (k, lv) in map_of(v)?.iter() {
        let n = match &lv.value {
            Value::Integer(i) => *i,
            _ => size(lv)?,
        };
        let n = (n >= 0).then_some(n as usize);
        match k.to_ascii_lowercase().as_str() {
            "max_connections" | "max_conn" => l.max_connections = n,
            "max_subscriptions" | "max_subs" => l.max_subscriptions = n,
            "max_payload" | "max_pay" => l.max_payload = n,
            "max_leafnodes" | "max_leafs" => l.max_leafnodes = n,
            // Natrium's publish rate limits (positive: per second; 0 or negative: unlimited).
            "max_msgs_per_sec" => l.max_msgs_per_sec = n.filter(|&r| r > 0).map(|r| r as u64),
            "max_bytes_per_sec" => l.max_bytes_per_sec = n.filter(|&r| r > 0).map(|r| r as u64),
            _ => {
                return Err(invalid(
                    lv,
                    &format!("Unknown field {k:?} parsing account limits"),
                ))
            }
        }
    }
    Ok(l)
}

/// `jetstream: enabled`, `jetstream: false` or `jetstream { store_dir, max_mem, max_file, sync_interval }`.
fn jetstream(
    v: &Spanned,
    warnings: &mut Vec<String>,
) -> Result<Option<JetStreamOptions>, OptionsError> {
    let mut js = JetStreamOptions::default();
    match &v.value {
        Value::Bool(b) => return Ok(b.then_some(js)),
        Value::String(s) => {
            return match s.to_ascii_lowercase().as_str() {
                "enabled" | "enable" | "true" => Ok(Some(js)),
                "disabled" | "disable" | "false" => Ok(None),
                _ => Err(invalid(v, "jetstream must be enabled, disabled or a map")),
            }
        }
        Value::Map(m) => {
            for (key, kpos, kv) in m.entries() {
                match key.to_ascii_lowercase().as_str() {
                    "store_dir" | "storedir" | "store" => js.store_dir = string(kv)?.into(),
                    "max_mem" | "max_memory" | "max_mem_store" | "max_memory_store" => {
                        js.max_memory = size(kv)?
                    }
                    "max_file" | "max_file_store" | "max_store" => js.max_file = size(kv)?,
                    "domain" => {
                        let d = string(kv)?;
                        if d.is_empty() || d.contains(['.', ' ', '*', '>']) {
                            return Err(invalid(kv, &format!("invalid JetStream domain {d:?}: it must be a single subject token")));
                        }
                        js.domain = Some(d);
                    }
                    "enabled" | "enable" => {
                        if !boolean(kv)? {
                            return Ok(None);
                        }
                    }
                    "sync_interval" | "sync" => {
                        js.sync = match &kv.value {
                            Value::String(s) if s.eq_ignore_ascii_case("always") => {
                                natrium_store::SyncPolicy::Always
                            }
                            _ => natrium_store::SyncPolicy::Interval(duration(kv)?),
                        }
                    }
                    _ => not_supported(warnings, kpos, "jetstream", key),
                }
            }
        }
        other => {
            return Err(invalid(
                v,
                &format!("jetstream: unexpected {}", other.kind_name()),
            ))
        }
    }
    Ok(Some(js))
}

/// The `cluster {}` block, with nats-server's keys and errors. Keys that would change what
/// crosses the routes if ignored (permissions) are refused until implemented; keys that only
/// tune how (compression) are warnings.
fn cluster(v: &Spanned, warnings: &mut Vec<String>) -> Result<ClusterOptions, OptionsError> {
    let mut c = ClusterOptions::default();
    for (key, kv) in map_of(v)?.iter() {
        match key.to_ascii_lowercase().as_str() {
            "name" => c.name = Some(string(kv)?),
            "listen" => {
                let (host, port) = parse_listen(kv)?;
                if let Some(h) = host {
                    c.host = h;
                }
                c.port = port;
            }
            "port" => c.port = int(kv)? as i32,
            "host" | "net" => c.host = string(kv)?,
            "authorization" => {
                for (k, av) in map_of(kv)?.iter() {
                    match k.to_ascii_lowercase().as_str() {
                        "user" | "username" => c.user = Some(string(av)?),
                        "pass" | "password" => c.password = Some(string(av)?),
                        "timeout" => c.auth_timeout = duration_secs_f(av)?,
                        "token" => {
                            return Err(invalid(kv, "Cluster authorization does not support tokens"))
                        }
                        "users" => {
                            return Err(invalid(
                                kv,
                                "Cluster authorization does not allow multiple users",
                            ))
                        }
                        _ => {
                            return Err(invalid(
                                av,
                                &format!("unknown field {k:?} in cluster authorization"),
                            ))
                        }
                    }
                }
            }
            "routes" => {
                let Value::Array(items) = &kv.value else {
                    return Err(invalid(kv, "routes must be an array of URLs"));
                };
                for item in items {
                    let u = string(item)?;
                    let url = RouteUrl::parse(&u).map_err(|e| invalid(item, &e))?;
                    if c.routes.contains(&url) {
                        warnings.push(format!("{}: Duplicate route entry detected", item.pos));
                        continue;
                    }
                    c.routes.push(url);
                }
            }
            "cluster_advertise" | "advertise" => c.advertise = Some(string(kv)?),
            "no_advertise" => c.no_advertise = boolean(kv)?,
            "connect_retries" => c.connect_retries = int(kv)?.max(0) as u32,
            "pool_size" => {
                // 0 is nats-server's "default" (3); -1 turns pooling off.
                c.pool_size = match int(kv)? {
                    0 => crate::cluster::options::DEFAULT_POOL_SIZE,
                    n => n.clamp(-1, 256) as i32,
                };
            }
            "accounts" => {
                let Value::Array(items) = &kv.value else {
                    return Err(invalid(kv, "cluster accounts must be an array of account names"));
                };
                for item in items {
                    let name = string(item)?;
                    if c.accounts.contains(&name) {
                        return Err(invalid(
                            item,
                            &format!(
                                "found duplicate account name {name:?} in pinned accounts list {:?}",
                                c.accounts
                            ),
                        ));
                    }
                    c.accounts.push(name);
                }
            }
            "compression" => {
                // `true`/`false`, a mode, or `{ mode, rtt_thresholds }`, as nats-server 2.10.
                let mode = match &kv.value {
                    Value::Bool(true) => "s2_fast".to_string(),
                    Value::Bool(false) => "off".to_string(),
                    Value::Map(m) => match m.get("mode") {
                        Some(mv) => string(mv)?,
                        None => "s2_auto".to_string(),
                    },
                    _ => string(kv)?,
                };
                let mode = crate::cluster::options::Compression::parse(&mode)
                    .map_err(|e| invalid(kv, &e))?;
                if mode.wants_s2() {
                    warnings.push(format!(
                        "{}: route compression {mode} is not supported by this version of natrium: routes run uncompressed (peers are told compression is off)",
                        kv.pos
                    ));
                }
                c.compression = mode;
            }
            "ping_interval" => c.ping_interval = Some(duration(kv)?),
            "ping_max" => c.ping_max = Some(int(kv)?.max(1) as u32),
            "tls" => {
                let t = tls(kv, warnings)?;
                if t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty() {
                    return Err(invalid(kv, "cluster tls: cert_file and key_file are required"));
                }
                if t.insecure {
                    warnings.push(format!(
                        "{}: TLS certificate chain and hostname of solicited routes will not be verified. DO NOT USE IN PRODUCTION!",
                        kv.pos
                    ));
                }
                c.tls = Some(t);
            }
            "permissions" => {
                return Err(invalid(
                    kv,
                    "cluster permissions are not supported yet by this version of natrium (routes would carry every subject)",
                ))
            }
            "write_deadline" => warnings.push(format!(
                "{}: cluster write_deadline is not supported yet by this version of natrium: routes use the server's write_deadline",
                kv.pos
            )),
            _ => {
                return Err(invalid(
                    kv,
                    &format!("unknown field {key:?} in cluster block"),
                ))
            }
        }
    }
    if c.pool_size < 0 && !c.accounts.is_empty() {
        return Err(invalid(
            v,
            "pool_size cannot be negative if pinned accounts are specified",
        ));
    }
    Ok(c)
}

/// The `leafnodes {}` block, with nats-server's keys. TLS is refused until implemented (the link
/// would otherwise run in the clear); keys that only tune the link are warnings.
fn leafnodes(v: &Spanned, warnings: &mut Vec<String>) -> Result<LeafOptions, OptionsError> {
    let mut l = LeafOptions::default();
    for (key, kv) in map_of(v)?.iter() {
        match key.to_ascii_lowercase().as_str() {
            "listen" => {
                let (host, port) = parse_listen(kv)?;
                if let Some(h) = host {
                    l.host = h;
                }
                l.port = Some(port);
            }
            "port" => l.port = Some(port(kv, "leafnode port")?),
            "host" | "net" => l.host = string(kv)?,
            "advertise" | "leafnode_advertise" => l.advertise = Some(string(kv)?),
            "no_advertise" => l.no_advertise = boolean(kv)?,
            "reconnect" | "reconnect_delay" | "reconnect_interval" => {
                l.reconnect = duration(kv)?.max(Duration::from_millis(10))
            }
            "authorization" => l.auth = leaf_authorization(kv)?,
            "remotes" => {
                let Value::Array(items) = &kv.value else {
                    return Err(invalid(kv, "leafnode remotes must be an array"));
                };
                for item in items {
                    l.remotes.push(leaf_remote(item, warnings)?);
                }
            }
            "tls" => {
                let t = tls(kv, warnings)?;
                if t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty() {
                    return Err(invalid(
                        kv,
                        "leafnode tls: cert_file and key_file are required",
                    ));
                }
                l.tls = Some(t);
            }
            _ => not_supported(warnings, &kv.pos, "leafnodes", key),
        }
    }
    Ok(l)
}

fn leaf_authorization(v: &Spanned) -> Result<LeafAuth, OptionsError> {
    let mut a = LeafAuth::default();
    for (k, av) in map_of(v)?.iter() {
        match k.to_ascii_lowercase().as_str() {
            "user" | "username" => a.user = Some(string(av)?),
            "pass" | "password" => a.password = Some(string(av)?),
            "account" => a.account = Some(string(av)?),
            "timeout" => a.timeout = duration_secs_f(av)?,
            "users" => {
                let Value::Array(items) = &av.value else {
                    return Err(invalid(av, "expected an array of users"));
                };
                for item in items {
                    let u = map_of(item)?;
                    let field = |names: &[&str]| -> Result<Option<String>, OptionsError> {
                        for n in names {
                            if let Some(x) = u.get(n) {
                                return Ok(Some(string(x)?));
                            }
                        }
                        Ok(None)
                    };
                    a.users.push(LeafUser {
                        user: field(&["user", "username"])?
                            .ok_or_else(|| invalid(item, "a leafnode user needs a user name"))?,
                        password: field(&["password", "pass"])?.unwrap_or_default(),
                        account: field(&["account"])?,
                    });
                }
            }
            "token" => return Err(invalid(
                av,
                "leafnode authorization does not support tokens (a leaf's CONNECT carries none)",
            )),
            _ => {
                return Err(invalid(
                    av,
                    &format!("unknown field {k:?} in leafnode authorization"),
                ))
            }
        }
    }
    if a.user.is_some() && !a.users.is_empty() {
        return Err(invalid(
            v,
            "leafnode authorization can have a single user or users, not both",
        ));
    }
    Ok(a)
}

fn leaf_remote(v: &Spanned, warnings: &mut Vec<String>) -> Result<RemoteLeaf, OptionsError> {
    let mut r = RemoteLeaf {
        urls: Vec::new(),
        credentials: None,
        account: None,
        hub: false,
        deny_imports: Vec::new(),
        deny_exports: Vec::new(),
        tls: None,
        ws: false,
        ws_compression: false,
        ws_no_masking: false,
    };
    let mut tls_scheme = false;
    let mut kinds = Vec::new();
    for (k, rv) in map_of(v)?.iter() {
        match k.to_ascii_lowercase().as_str() {
            "url" | "urls" => {
                let items = match &rv.value {
                    Value::Array(items) => items.iter().collect::<Vec<_>>(),
                    _ => vec![rv],
                };
                for item in items {
                    let (u, scheme) = crate::leaf::options::remote_url(&string(item)?)
                        .map_err(|e| invalid(item, &e))?;
                    tls_scheme |= scheme.tls;
                    kinds.push(scheme.ws);
                    r.urls.push(u);
                }
            }
            "credentials" | "creds" => r.credentials = Some(PathBuf::from(string(rv)?)),
            "account" | "local" => r.account = Some(string(rv)?),
            "hub" => r.hub = boolean(rv)?,
            "deny_imports" | "deny_import" => r.deny_imports = subject_list_plain(rv)?,
            "deny_exports" | "deny_export" => r.deny_exports = subject_list_plain(rv)?,
            "tls" => {
                let t = tls(rv, warnings)?;
                if t.insecure {
                    warnings.push(format!(
                        "{}: TLS certificate chain and hostname of the leafnode hub will not be verified. DO NOT USE IN PRODUCTION!",
                        rv.pos
                    ));
                }
                r.tls = Some(t);
            }
            "ws_compress" | "ws_compression" | "websocket_compress" | "websocket_compression" => {
                r.ws_compression = boolean(rv)?
            }
            "ws_no_masking" | "websocket_no_masking" => r.ws_no_masking = boolean(rv)?,
            "websocket"
            | "compression"
            | "first_info_timeout"
            | "no_randomize"
            | "dont_randomize"
            | "jetstream_cluster_migrate" => not_supported(warnings, &rv.pos, "leafnode remote", k),
            _ => {
                return Err(invalid(
                    rv,
                    &format!("unknown field {k:?} in leafnode remote"),
                ))
            }
        }
    }
    if r.urls.is_empty() {
        return Err(invalid(v, "a leafnode remote needs a url"));
    }
    r.ws = kinds.first().is_some_and(|ws| *ws);
    if kinds.iter().any(|ws| *ws != r.ws) {
        return Err(invalid(
            v,
            "remote leaf node configuration cannot have a mix of websocket and non-websocket urls",
        ));
    }
    if tls_scheme && r.tls.is_none() {
        return Err(invalid(
            v,
            "a tls:// or wss:// leafnode remote needs a tls block (ca_file to check the hub, or insecure)",
        ));
    }
    Ok(r)
}

/// The `websocket {}` block, with nats-server's keys (2.10's and the cookie, `headers` and
/// `ping_interval` keys of later versions) and errors; unknown keys are errors, as there.
fn websocket(v: &Spanned, warnings: &mut Vec<String>) -> Result<WebsocketOptions, OptionsError> {
    let mut w = WebsocketOptions::default();
    for (key, kv) in map_of(v)?.iter() {
        match key.to_ascii_lowercase().as_str() {
            "listen" => {
                let (host, port) = parse_listen(kv)?;
                if let Some(h) = host {
                    w.host = h;
                }
                w.port = port;
            }
            "port" => w.port = int(kv)? as i32,
            "host" | "net" => w.host = string(kv)?,
            "advertise" => w.advertise = Some(string(kv)?),
            "no_tls" => w.no_tls = boolean(kv)?,
            "tls" => w.tls = Some(tls(kv, warnings)?),
            "same_origin" => w.same_origin = boolean(kv)?,
            "allowed_origins" | "allowed_origin" | "allow_origins" | "allow_origin" | "origins"
            | "origin" => {
                w.allowed_origins = match &kv.value {
                    Value::Array(items) => items.iter().map(string).collect::<Result<_, _>>()?,
                    _ => vec![string(kv)?],
                }
            }
            "handshake_timeout" => {
                w.handshake_timeout = match &kv.value {
                    Value::Integer(_) | Value::String(_) => duration(kv)?,
                    other => {
                        return Err(invalid(
                            kv,
                            &format!(
                                "error parsing handshake timeout: unsupported type {}",
                                other.kind_name()
                            ),
                        ))
                    }
                }
            }
            "compress" | "compression" => w.compression = boolean(kv)?,
            "authorization" | "authentication" => {
                for (k, av) in map_of(kv)?.iter() {
                    match k.to_ascii_lowercase().as_str() {
                        "user" | "username" => w.username = Some(string(av)?),
                        "pass" | "password" => w.password = Some(string(av)?),
                        "token" => w.token = Some(string(av)?),
                        "timeout" => w.auth_timeout = Some(duration_secs_f(av)?),
                        _ => return Err(invalid(av, &format!("unknown field {k:?}"))),
                    }
                }
            }
            "jwt_cookie" => w.jwt_cookie = Some(string(kv)?),
            "user_cookie" => w.user_cookie = Some(string(kv)?),
            "pass_cookie" => w.pass_cookie = Some(string(kv)?),
            "token_cookie" => w.token_cookie = Some(string(kv)?),
            "no_auth_user" => w.no_auth_user = Some(string(kv)?),
            "headers" => {
                let Value::Map(m) = &kv.value else {
                    return Err(invalid(
                        kv,
                        &format!(
                            "error parsing headers: unsupported type {}",
                            kv.value.kind_name()
                        ),
                    ));
                };
                for (name, hv) in m.iter() {
                    let Value::String(val) = &hv.value else {
                        return Err(invalid(
                            hv,
                            &format!(
                                "error parsing header key {name}: unsupported type {}",
                                hv.value.kind_name()
                            ),
                        ));
                    };
                    w.headers.push((name.to_string(), val.clone()));
                }
            }
            "ping_interval" => {
                duration(kv)?;
                warnings.push(format!(
                    "{}: websocket ping_interval is not supported yet by this version of natrium: WebSocket clients are pinged every ping_interval of the server",
                    kv.pos
                ));
            }
            _ => return Err(invalid(kv, &format!("unknown field {key:?}"))),
        }
    }
    Ok(w)
}

/// An `operator` entry: a JWT, or the path of a file holding one.
fn operator_jwt(item: &str, base: Option<&Path>) -> Result<String, String> {
    if item.trim_start().starts_with("eyJ") {
        return Ok(crate::auth::jwt::unarmour(item));
    }
    // Relative paths: next to the config file, else from the working directory.
    let path = match base {
        Some(b) if Path::new(item).is_relative() && b.join(item).exists() => b.join(item),
        _ => PathBuf::from(item),
    };
    std::fs::read_to_string(&path)
        .map(|t| crate::auth::jwt::unarmour(&t))
        .map_err(|e| format!("can not read operator JWT {}: {e}", path.display()))
}

/// The `tls {}` block.
fn tls(v: &Spanned, warnings: &mut Vec<String>) -> Result<TlsOptions, OptionsError> {
    let mut t = TlsOptions::default();
    for (key, kpos, kv) in map_of(v)?.entries() {
        match key.to_ascii_lowercase().as_str() {
            "cert_file" => t.cert_file = string(kv)?.into(),
            "key_file" => t.key_file = string(kv)?.into(),
            "ca_file" => t.ca_file = Some(string(kv)?.into()),
            "verify" => t.verify = boolean(kv)?,
            "insecure" => t.insecure = boolean(kv)?,
            "verify_and_map" => {
                t.verify_and_map = boolean(kv)?;
                t.verify |= t.verify_and_map;
            }
            "pinned_certs" => {
                let Value::Array(items) = &kv.value else {
                    return Err(invalid(kv, "error parsing tls config, expected 'pinned_certs' to be a list of hex-encoded sha256 of DER encoded SubjectPublicKeyInfo"));
                };
                for item in items {
                    let entry = string(item)?.to_ascii_lowercase();
                    if entry.len() != 64 || !entry.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(item, &format!("error parsing tls config, 'pinned_certs' key {entry} does not look like hex-encoded sha256 of DER encoded SubjectPublicKeyInfo")));
                    }
                    t.pinned_certs.push(entry);
                }
            }
            // nats-server's TLS timeout is in seconds (fractions allowed).
            "timeout" => t.timeout = duration(kv)?,
            "handshake_first" | "first" | "immediate" => match &kv.value {
                Value::Bool(b) => t.handshake_first = *b,
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "on" => t.handshake_first = true,
                    "false" | "off" => t.handshake_first = false,
                    "auto" | "auto_fallback" => {
                        t.handshake_first = true;
                        t.handshake_first_fallback = Some(Duration::from_millis(50));
                    }
                    _ => {
                        let d = natrium_config::parse_duration(s).ok_or_else(|| {
                            invalid(kv, &format!("handshake_first: invalid value {s:?}"))
                        })?;
                        t.handshake_first = true;
                        t.handshake_first_fallback = Some(d);
                    }
                },
                other => {
                    return Err(invalid(
                        kv,
                        &format!(
                            "handshake_first must be a boolean or a string, got {}",
                            other.kind_name()
                        ),
                    ))
                }
            },
            _ => not_supported(warnings, kpos, "tls", key),
        }
    }
    Ok(t)
}

/// A `users` array; `account` is set for users declared inside an account. Entries with an
/// `nkey` are NKey users.
fn users(
    v: &Spanned,
    account: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<User>, Vec<NkeyUser>), OptionsError> {
    let Value::Array(items) = &v.value else {
        return Err(invalid(v, "expected an array of users"));
    };
    let mut out = Vec::new();
    let mut nkeys = Vec::new();
    for item in items {
        let u = map_of(item)?;
        if let Some(nkey) = u.get("nkey") {
            if u.get("user").is_some() || u.get("password").is_some() {
                return Err(invalid(
                    item,
                    "a user entry has either an 'nkey' or a 'user' and 'password'",
                ));
            }
            let permissions = match user_permissions(u) {
                Some(p) => Some(permissions(p)?),
                None => None,
            };
            let allowed_connection_types = connection_types(u)?;
            for (k, kpos, _) in u.entries() {
                if !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "nkey"
                        | "permission"
                        | "permissions"
                        | "authorization"
                        | "allowed_connection_types"
                        | "connection_types"
                        | "clients"
                ) {
                    not_supported(warnings, kpos, "nkey user", k);
                }
            }
            nkeys.push(NkeyUser {
                nkey: string(nkey)?,
                permissions,
                account: account.map(String::from),
                allowed_connection_types,
            });
            continue;
        }
        let user = u
            .get("user")
            .or_else(|| u.get("username"))
            .ok_or_else(|| invalid(item, "user entry has no 'user'"))?;
        let password = match u.get("password").or_else(|| u.get("pass")) {
            Some(p) => string(p)?,
            None => String::new(),
        };
        let permissions = match user_permissions(u) {
            Some(p) => Some(permissions(p)?),
            None => None,
        };
        let allowed_connection_types = connection_types(u)?;
        for (k, kpos, _) in u.entries() {
            if !matches!(
                k.to_ascii_lowercase().as_str(),
                "user"
                    | "username"
                    | "password"
                    | "pass"
                    | "permission"
                    | "permissions"
                    | "authorization"
                    | "allowed_connection_types"
                    | "connection_types"
                    | "clients"
            ) {
                not_supported(warnings, kpos, "user", k);
            }
        }
        out.push(User {
            user: string(user)?,
            password,
            permissions,
            account: account.map(String::from),
            allowed_connection_types,
        });
    }
    Ok((out, nkeys))
}

/// A user entry's `allowed_connection_types` (or `connection_types`, `clients`): a string or a
/// list of nats-server's connection types, upper-cased; an unknown one is an error, as there.
fn connection_types(u: &Map) -> Result<Vec<String>, OptionsError> {
    let Some(v) = ["allowed_connection_types", "connection_types", "clients"]
        .iter()
        .find_map(|k| u.get(k))
    else {
        return Ok(Vec::new());
    };
    let items = match &v.value {
        Value::Array(items) => items.iter().map(string).collect::<Result<Vec<_>, _>>()?,
        _ => vec![string(v)?],
    };
    let mut out = Vec::new();
    for t in items {
        let up = t.to_ascii_uppercase();
        if !crate::auth::CONNECTION_TYPES.contains(&up.as_str()) {
            return Err(invalid(v, &format!("unknown connection type {t:?}")));
        }
        out.push(up);
    }
    Ok(out)
}

/// A user entry's permissions, under any of nats-server's names for them.
fn user_permissions(u: &Map) -> Option<&Spanned> {
    u.get("permissions")
        .or_else(|| u.get("permission"))
        .or_else(|| u.get("authorization"))
}

/// `permissions { publish: ..., subscribe: ..., allow_responses: ... }`.
fn permissions(v: &Spanned) -> Result<Permissions, OptionsError> {
    let m = map_of(v)?;
    let mut p = Permissions::default();
    for (key, kv) in m.iter() {
        match key.to_ascii_lowercase().as_str() {
            "publish" | "pub" | "import" => p.publish = Some(subject_permission(kv)?),
            "subscribe" | "sub" | "export" => p.subscribe = Some(subject_permission(kv)?),
            "allow_responses" | "publish_allow_responses" => {
                p.allow_responses = response_permission(kv)?
            }
            other => return Err(invalid(kv, &format!("unknown permission key {other:?}"))),
        }
    }
    Ok(p)
}

/// A string, a list (both mean allow) or `{ allow: ..., deny: ... }`.
fn subject_permission(v: &Spanned) -> Result<SubjectPermission, OptionsError> {
    match &v.value {
        Value::String(_) | Value::Array(_) => Ok(SubjectPermission {
            allow: Some(subject_list(v)?),
            deny: Vec::new(),
        }),
        Value::Map(m) => {
            let mut sp = SubjectPermission::default();
            for (key, kv) in m.iter() {
                match key.to_ascii_lowercase().as_str() {
                    "allow" => sp.allow = Some(subject_list(kv)?),
                    "deny" => sp.deny = subject_list(kv)?,
                    other => return Err(invalid(kv, &format!("unknown permission key {other:?}"))),
                }
            }
            Ok(sp)
        }
        other => Err(invalid(
            v,
            &format!("expected subjects, got {}", other.kind_name()),
        )),
    }
}

fn subject_list(v: &Spanned) -> Result<Vec<String>, OptionsError> {
    let list = match &v.value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(string).collect::<Result<_, _>>()?,
        other => {
            return Err(invalid(
                v,
                &format!("expected subjects, got {}", other.kind_name()),
            ))
        }
    };
    for s in &list {
        // Subscribe entries may carry a queue group after a space: "foo.> workers".
        let subject = s.split_whitespace().next().unwrap_or("");
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err(invalid(v, &format!("invalid subject {s:?} in permissions")));
        }
    }
    Ok(list)
}

fn response_permission(v: &Spanned) -> Result<Option<ResponsePermission>, OptionsError> {
    let default = ResponsePermission {
        max: 1,
        expires: Duration::ZERO,
    };
    match &v.value {
        Value::Bool(false) => Ok(None),
        Value::Bool(true) => Ok(Some(default)),
        Value::Integer(n) if *n > 0 => Ok(Some(ResponsePermission {
            max: *n as usize,
            ..default
        })),
        Value::Map(m) => {
            let mut rp = default;
            if let Some(max) = m.get("max") {
                rp.max = int(max)?.max(1) as usize;
            }
            if let Some(exp) = m.get("expires").or_else(|| m.get("ttl")) {
                rp.expires = duration(exp)?;
            }
            Ok(Some(rp))
        }
        _ => Err(invalid(
            v,
            "allow_responses must be true, a number or { max, expires }",
        )),
    }
}

fn exports(v: &Spanned) -> Result<Vec<Export>, OptionsError> {
    let Value::Array(items) = &v.value else {
        return Err(invalid(v, "expected an array of exports"));
    };
    let mut out = Vec::new();
    for item in items {
        let m = map_of(item)?;
        let (kind, subject) = match (m.get("stream"), m.get("service")) {
            (Some(s), None) => (ExportKind::Stream, string(s)?),
            (None, Some(s)) => (ExportKind::Service, string(s)?),
            _ => {
                return Err(invalid(
                    item,
                    "an export needs exactly one of 'stream' or 'service'",
                ))
            }
        };
        if !natrium_subjects::is_valid_subject(subject.as_bytes()) {
            return Err(invalid(
                item,
                &format!("invalid export subject {subject:?}"),
            ));
        }
        let accounts = match m.get("accounts") {
            Some(a) => subject_list_plain(a)?,
            None => Vec::new(),
        };
        out.push(Export {
            kind,
            subject,
            accounts,
        });
    }
    Ok(out)
}

fn subject_list_plain(v: &Spanned) -> Result<Vec<String>, OptionsError> {
    match &v.value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(string).collect(),
        other => Err(invalid(
            v,
            &format!("expected a list of names, got {}", other.kind_name()),
        )),
    }
}

fn imports(v: &Spanned) -> Result<Vec<Import>, OptionsError> {
    let Value::Array(items) = &v.value else {
        return Err(invalid(v, "expected an array of imports"));
    };
    let mut out = Vec::new();
    for item in items {
        let m = map_of(item)?;
        let (kind, src) = match (m.get("stream"), m.get("service")) {
            (Some(s), None) => (ExportKind::Stream, s),
            (None, Some(s)) => (ExportKind::Service, s),
            _ => {
                return Err(invalid(
                    item,
                    "an import needs exactly one of 'stream' or 'service'",
                ))
            }
        };
        let src_map = map_of(src)?;
        let account = src_map
            .get("account")
            .ok_or_else(|| invalid(src, "import needs an 'account'"))?;
        let subject = src_map
            .get("subject")
            .ok_or_else(|| invalid(src, "import needs a 'subject'"))?;
        let to = match m.get("to") {
            Some(t) => Some(string(t)?),
            None => None,
        };
        let prefix = match m.get("prefix") {
            Some(p) => Some(string(p)?),
            None => None,
        };
        out.push(Import {
            kind,
            account: string(account)?,
            subject: string(subject)?,
            to,
            prefix,
        });
    }
    Ok(out)
}

fn invalid(v: &Spanned, msg: &str) -> OptionsError {
    OptionsError::Invalid {
        pos: v.pos.to_string(),
        msg: msg.to_string(),
    }
}

fn string(v: &Spanned) -> Result<String, OptionsError> {
    match &v.value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        other => Err(invalid(
            v,
            &format!("expected a string, got {}", other.kind_name()),
        )),
    }
}

fn int(v: &Spanned) -> Result<i64, OptionsError> {
    match &v.value {
        Value::Integer(i) => Ok(*i),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| invalid(v, &format!("expected an integer, got {s:?}"))),
        other => Err(invalid(
            v,
            &format!("expected an integer, got {}", other.kind_name()),
        )),
    }
}

fn size(v: &Spanned) -> Result<i64, OptionsError> {
    match &v.value {
        Value::Integer(i) if *i >= 0 => Ok(*i),
        Value::String(s) => natrium_config::parse_size(s)
            .ok_or_else(|| invalid(v, &format!("expected a size like 1MB, got {s:?}"))),
        _ => Err(invalid(v, "expected a non-negative size")),
    }
}

fn boolean(v: &Spanned) -> Result<bool, OptionsError> {
    match &v.value {
        Value::Bool(b) => Ok(*b),
        other => Err(invalid(
            v,
            &format!("expected a boolean, got {}", other.kind_name()),
        )),
    }
}

/// Durations: a Go duration string (`"2m"`, `"500ms"`) or a number of seconds.
fn duration(v: &Spanned) -> Result<Duration, OptionsError> {
    match &v.value {
        Value::String(s) => natrium_config::parse_duration(s)
            .ok_or_else(|| invalid(v, &format!("expected a duration like \"2m\", got {s:?}"))),
        Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
        Value::Float(f) if *f >= 0.0 => Ok(Duration::from_secs_f64(*f)),
        other => Err(invalid(
            v,
            &format!("expected a duration, got {}", other.kind_name()),
        )),
    }
}

/// `authorization.timeout` is seconds, possibly fractional.
fn duration_secs_f(v: &Spanned) -> Result<Duration, OptionsError> {
    duration(v)
}

fn map_of(v: &Spanned) -> Result<&Map, OptionsError> {
    match &v.value {
        Value::Map(m) => Ok(m),
        other => Err(invalid(
            v,
            &format!("expected a map, got {}", other.kind_name()),
        )),
    }
}

/// A port: -1 (a random one) to 65535, an error naming the file and line otherwise.
fn port(v: &Spanned, what: &str) -> Result<i32, OptionsError> {
    let p = int(v)?;
    if !(-1..=65535).contains(&p) {
        return Err(invalid(
            v,
            &format!("{what} {p} is not a port: it must be between -1 and 65535"),
        ));
    }
    Ok(p as i32)
}

/// `listen: "host:port"`, `listen: ":4222"` or `listen: 4222`.
fn parse_listen(v: &Spanned) -> Result<(Option<String>, i32), OptionsError> {
    match &v.value {
        Value::Integer(_) => Ok((None, port(v, "port")?)),
        Value::String(s) => {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| invalid(v, "listen must be host:port"))?;
            let port = port
                .parse()
                .ok()
                .filter(|p| (-1..=65535).contains(p))
                .ok_or_else(|| {
                    invalid(
                        v,
                        &format!("bad port in listen {s:?}: it must be between -1 and 65535"),
                    )
                })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Ok(((!host.is_empty()).then(|| host.to_string()), port))
        }
        other => Err(invalid(
            v,
            &format!("expected host:port, got {}", other.kind_name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str) -> (Options, Vec<String>) {
        let map = natrium_config::parse_str(src).expect("parses");
        let mut o = Options::default();
        let w = o.apply_config(&map).expect("applies");
        (o, w)
    }

    #[test]
    fn maps_core_keys() {
        let (o, w) = load(
            "listen: 127.0.0.1:4333\nserver_name: n1\nmax_payload: 2MB\nping_interval: \"30s\"\nping_max: 3\n\
             write_deadline: 5\nmax_connections: 100\nauthorization { user: a, password: b, timeout: 1.5 }\n\
             cluster { port: 6222 }\n",
        );
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 4333);
        assert_eq!(o.server_name.as_deref(), Some("n1"));
        assert_eq!(o.max_payload, 2 * 1024 * 1024);
        assert_eq!(o.ping_interval, Duration::from_secs(30));
        assert_eq!(o.ping_max, 3);
        assert_eq!(o.write_deadline, Duration::from_secs(5));
        assert_eq!(o.max_connections, 100);
        assert_eq!(o.auth.user.as_deref(), Some("a"));
        assert_eq!(o.auth_timeout, Duration::from_millis(1500));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.cluster.as_ref().map(|c| c.port), Some(6222));
        o.validate().expect("valid");
    }

    /// A key nats-server does not know is an error naming its place, at any level, all of them
    /// at once; one it knows that Natrium does not implement is a warning saying so.
    #[test]
    fn unknown_keys_are_errors_known_ones_warnings() {
        let map = natrium_config::parse_str(
            "port: 1\nstore_dri: /x\njetstream {\n  store_dri: /y\n  unique_tag: az\n}\n",
        )
        .expect("parses");
        let err = Options::default()
            .apply_config(&map)
            .expect_err("unknown keys")
            .to_string();
        assert_eq!(
            err,
            "2:1: unknown field \"store_dri\"\n4:3: unknown field \"store_dri\""
        );
        let (o, w) = load("jetstream {\n  max_mem: 1G\n  unique_tag: az\n}\nstore_dir: /y\n");
        assert_eq!(o.jetstream.expect("on").store_dir, Path::new("/y"));
        assert_eq!(
            w,
            vec!["3:3: jetstream key \"unique_tag\" is a nats-server option not supported yet by this version of natrium; it is ignored"]
        );
    }

    #[test]
    fn users_list_and_validation() {
        let (o, _) = load("authorization { users: [ {user: a, password: x}, {user: b, password: \"$2a$04$abc\"} ] }\nno_auth_user: a");
        assert_eq!(o.auth.users.len(), 2);
        assert_eq!(o.auth.no_auth_user.as_deref(), Some("a"));
        o.validate().expect("valid");
        let (o, _) = load("authorization { token: t, user: u }");
        assert!(o.validate().is_err());
        // A port out of range names its place in the file.
        let map = natrium_config::parse_str("port: 70000").expect("parses");
        let err = Options::default()
            .apply_config(&map)
            .expect_err("bad port")
            .to_string();
        assert!(err.starts_with("1:7: port 70000"), "{err}");
        // A system account must be one of the accounts (only `$SYS` is made up).
        let (o, _) = load("accounts { A: {} }\nsystem_account: B");
        assert!(o.validate().is_err());
        let (o, _) = load("accounts { A: {} }\nsystem_account: A");
        o.validate().expect("system account exists");
    }

    #[test]
    fn store_dir_at_the_top_and_in_the_block_is_a_duplicate() {
        let map = natrium_config::parse_str("jetstream { store_dir: /a }\nstore_dir: /b\n")
            .expect("parses");
        let err = Options::default()
            .apply_config(&map)
            .expect_err("duplicate")
            .to_string();
        assert_eq!(err, "2:12: Duplicate 'store_dir' configuration");
    }

    #[test]
    fn bad_types_name_their_position() {
        let map = natrium_config::parse_str("port: 1\nmax_payload: [1]\n").expect("parses");
        let err = Options::default()
            .apply_config(&map)
            .expect_err("bad type")
            .to_string();
        assert!(err.contains("2:"), "{err}");
    }

    #[test]
    fn account_limits_as_nats_server_parses_them() {
        let (o, w) = load(
            "accounts { A: { limits: { max_conn: -1, max_subs: 0, max_pay: 1KB, max_leafs: 2 } } }\nmax_unauthenticated_per_ip: 7",
        );
        assert!(w.is_empty(), "{w:?}");
        let l = o.accounts[0].limits;
        assert_eq!(l.max_connections, None, "negative is unlimited");
        assert_eq!(l.max_subscriptions, Some(0), "0 allows none");
        assert_eq!(l.max_payload, Some(1024));
        assert_eq!(l.max_leafnodes, Some(2));
        assert_eq!(o.max_unauthenticated_per_ip, 7);
        let map = natrium_config::parse_str("accounts { A: { limits: { max_bogus: 1 } } }")
            .expect("parses");
        let err = Options::default()
            .apply_config(&map)
            .expect_err("unknown limit")
            .to_string();
        assert!(err.contains("Unknown field \"max_bogus\""), "{err}");
    }
}
