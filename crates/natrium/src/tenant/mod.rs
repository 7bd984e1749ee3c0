//! `natrium tenant add|ls|rm|rotate NAME`: a tenant (an account, its limits and one user) in
//! one command, against the server's own configuration file.
//!
//! - **Operator mode** (the config has `operator` and a directory `resolver`): the account JWT
//!   is signed with the operator's key, the user gets a `.creds` file, and the account is pushed
//!   to the running server over `$SYS.REQ.CLAIMS.UPDATE` as the system user, as `nsc push`
//!   does. Keys and credentials live in a keystore directory (see `operator.rs`).
//! - **Config-file mode** (anything else): the tenants live in an include file next to the
//!   config (`tenants.conf`, included inside its `accounts` block), users with bcrypt password
//!   hashes; the running server is told to reload.
//!
//! Every file is replaced atomically (temporary file, fsync, rename) and only after the step
//! that could fail has succeeded, so an error leaves things as they were. Seeds and credentials
//! are written 0600 and never printed; a generated password is printed once.

mod config_mode;
mod files;
mod jwt;
mod operator;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub const USAGE: &str = "\
Usage: natrium tenant <command> [NAME] [options]

Commands:
    init            Operator mode from scratch: a new operator, signing key, system account
                    and system user in the keystore, operator.jwt next to the config, and the
                    configuration lines to add
    add NAME        Create a tenant: an account with limits and one user
    ls              List the tenants
    rm NAME         Remove a tenant; its users can no longer connect
    rotate NAME     New credentials for the tenant's user; the old ones stop working

The mode follows the server's configuration: with `operator` and `resolver { type: full, dir }`
accounts are signed JWTs pushed to the running server; otherwise tenants are written to an
include file and the server is reloaded.

Options:
    -c, --config FILE         Server configuration (default: /etc/natrium/natrium.conf)
        --server URL          Server to talk to (default: the config's client listener)
        --tlscacert FILE      CA for a TLS server; --tlscert/--tlskey for a client certificate

  add:
        --user NAME           The tenant's user name (default: NAME)
        --max-connections N   Connections open at once across the tenant (-1: unlimited)
        --max-subscriptions N Subscriptions per connection
        --max-payload SIZE    Largest message (e.g. 1MB)
        --max-msgs-per-sec N  Messages per second the tenant may publish, together (publishers
                              over it are slowed down, nothing is dropped)
        --max-bytes-per-sec SIZE  Payload bytes per second likewise (e.g. 10MB)
        --js-disk SIZE        JetStream file storage (enables JetStream for the tenant)
        --js-memory SIZE      JetStream memory storage
        --js-streams N        JetStream streams
        --js-consumers N      JetStream consumers

  operator mode:
        --keys DIR            Keystore (default: DIR of the config + /keys): the operator key
                              (operator.nk), the system user (sys.creds), tenants/NAME/...
        --operator-key FILE   Seed of the operator or one of its signing keys
                              (default: KEYS/operator.nk)
        --system-creds FILE   System account user credentials (default: KEYS/sys.creds)
        --jwt-dir DIR         init: the resolver's directory (default: the config's resolver
                              dir, else /var/lib/natrium/jwt)
        --operator-name NAME  init: the operator's name (default: natrium)

  config-file mode:
        --tenants FILE        Include file holding the tenants (default: tenants.conf next to
                              the config)
        --pid PID|FILE        Server process to reload (default: the config's pid_file, else
                              the one running natrium process)
";

/// The command line after `natrium tenant`.
#[derive(Debug, Default, Clone)]
pub struct Args {
    pub command: String,
    pub name: Option<String>,
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub user: Option<String>,
    pub limits: LimitFlags,
    pub keys: Option<PathBuf>,
    pub operator_key: Option<PathBuf>,
    pub system_creds: Option<PathBuf>,
    pub tenants: Option<PathBuf>,
    pub pid: Option<String>,
    pub jwt_dir: Option<PathBuf>,
    pub operator_name: Option<String>,
}

/// Limits given to `add`; `None` is unlimited (or, for JetStream storage, not enabled).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LimitFlags {
    pub max_connections: Option<i64>,
    pub max_subscriptions: Option<i64>,
    pub max_payload: Option<i64>,
    pub max_msgs_per_sec: Option<i64>,
    pub max_bytes_per_sec: Option<i64>,
    pub js_disk: Option<i64>,
    pub js_memory: Option<i64>,
    pub js_streams: Option<i64>,
    pub js_consumers: Option<i64>,
}

impl LimitFlags {
    pub fn jetstream(&self) -> bool {
        self.js_disk.is_some()
            || self.js_memory.is_some()
            || self.js_streams.is_some()
            || self.js_consumers.is_some()
    }
}

fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args> {
    let mut a = Args::default();
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" || arg == "help" {
            a.command = "help".into();
            return Ok(a);
        }
        let Some(flag) = arg.strip_prefix('-') else {
            positional.push(arg);
            continue;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .with_context(|| format!("flag --{name} needs a value")),
            }
        };
        let number = |v: String, what: &str| -> Result<i64> {
            let n = natrium_config::parse_size(&v)
                .with_context(|| format!("--{what}: {v:?} is not a number or size"))?;
            if n < -1 {
                bail!("--{what}: {n} is below -1 (unlimited)");
            }
            Ok(n)
        };
        let l = &mut a.limits;
        match name.as_str() {
            "c" | "config" => a.config = Some(value()?.into()),
            "server" | "s" => a.server = Some(value()?),
            "tlscacert" => a.tls_ca = Some(value()?.into()),
            "tlscert" => a.tls_cert = Some(value()?.into()),
            "tlskey" => a.tls_key = Some(value()?.into()),
            "user" => a.user = Some(value()?),
            "max-connections" | "max_connections" => {
                l.max_connections = Some(number(value()?, &name)?)
            }
            "max-subscriptions" | "max_subscriptions" => {
                l.max_subscriptions = Some(number(value()?, &name)?)
            }
            "max-payload" | "max_payload" => l.max_payload = Some(number(value()?, &name)?),
            "max-msgs-per-sec" | "max_msgs_per_sec" => {
                l.max_msgs_per_sec = Some(number(value()?, &name)?)
            }
            "max-bytes-per-sec" | "max_bytes_per_sec" => {
                l.max_bytes_per_sec = Some(number(value()?, &name)?)
            }
            "js-disk" | "js_disk" => l.js_disk = Some(number(value()?, &name)?),
            "js-memory" | "js_memory" => l.js_memory = Some(number(value()?, &name)?),
            "js-streams" | "js_streams" => l.js_streams = Some(number(value()?, &name)?),
            "js-consumers" | "js_consumers" => l.js_consumers = Some(number(value()?, &name)?),
            "keys" => a.keys = Some(value()?.into()),
            "operator-key" | "operator_key" => a.operator_key = Some(value()?.into()),
            "system-creds" | "system_creds" => a.system_creds = Some(value()?.into()),
            "tenants" => a.tenants = Some(value()?.into()),
            "pid" | "P" => a.pid = Some(value()?),
            "jwt-dir" | "jwt_dir" => a.jwt_dir = Some(value()?.into()),
            "operator-name" | "operator_name" => a.operator_name = Some(value()?),
            _ => bail!("unknown flag -{flag}"),
        }
    }
    let mut positional = positional.into_iter();
    a.command = positional.next().context("no command given")?;
    a.name = positional.next();
    if let Some(extra) = positional.next() {
        bail!("unexpected argument {extra:?}");
    }
    let takes_name = matches!(a.command.as_str(), "add" | "rm" | "rotate");
    match (&a.name, takes_name) {
        (None, true) => bail!("`natrium tenant {}` needs a tenant NAME", a.command),
        (Some(n), false) => bail!("`natrium tenant {}` takes no NAME (got {n:?})", a.command),
        _ => {}
    }
    if a.command != "init" && (a.jwt_dir.is_some() || a.operator_name.is_some()) {
        bail!("--jwt-dir and --operator-name apply to `init` only");
    }
    if let Some(n) = &a.operator_name {
        check_name(n).context("--operator-name")?;
    }
    if a.command != "add" && (a.user.is_some() || a.limits != LimitFlags::default()) {
        bail!("--user and limits apply to `add` only");
    }
    if let Some(n) = &a.name {
        check_name(n)?;
    }
    if let Some(u) = &a.user {
        check_name(u).context("--user")?;
    }
    Ok(a)
}

/// Tenant and user names: letters, digits, `-` and `_`, at most 64, not starting with `-`.
/// They become account names, file names and subjects' neighbours, so nothing else is allowed.
fn check_name(n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 64
        || n.starts_with('-')
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("invalid name {n:?}: use 1 to 64 letters, digits, '-' or '_' (not first '-')");
    }
    if n.eq_ignore_ascii_case("SYS") || n == "G" {
        bail!("{n:?} is reserved");
    }
    Ok(())
}

/// Entry point from `main`: `args` are the words after `natrium tenant`.
pub fn main<I: IntoIterator<Item = String>>(args: I) -> ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("natrium tenant: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.command == "help" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natrium tenant: can not start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natrium tenant: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The server configuration a command works on.
pub struct Ctx {
    pub args: Args,
    pub config: PathBuf,
    pub opts: natrium::Options,
}

impl Ctx {
    /// The directory the config file is in (for default file locations).
    pub fn config_dir(&self) -> &Path {
        files::parent(&self.config)
    }

    /// The URL of the client listener: `--server`, or from the config.
    pub fn server_url(&self) -> Result<String> {
        if let Some(s) = &self.args.server {
            return Ok(s.clone());
        }
        if self.opts.port <= 0 {
            bail!(
                "the configuration does not name a fixed client port: pass --server nats://HOST:PORT"
            );
        }
        let host = match self.opts.host.as_str() {
            "" | "0.0.0.0" => "127.0.0.1".to_string(),
            "::" | "[::]" => "[::1]".to_string(),
            h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
            h => h.to_string(),
        };
        let scheme = if self.opts.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        Ok(format!("{scheme}://{host}:{}", self.opts.port))
    }

    /// Client options with the TLS settings of the command line.
    pub async fn client_options(
        &self,
        base: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions> {
        let mut o = base
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .name("natrium tenant");
        if let Some(ca) = &self.args.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.args.tls_cert, &self.args.tls_key) {
            (Some(c), Some(k)) => {
                o = o
                    .add_client_certificate(c.clone(), k.clone())
                    .require_tls(true)
            }
            (None, None) => {}
            _ => bail!("--tlscert and --tlskey go together"),
        }
        Ok(o)
    }
}

async fn run(args: Args) -> Result<()> {
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/natrium/natrium.conf"));
    // (The error's text already carries its cause; no `context` chain, which would repeat it.)
    let loaded = natrium::Options::from_file(&config)
        .map_err(|e| anyhow::anyhow!("can not load the server configuration (-c FILE): {e}"));
    if args.command == "init" && !config.exists() {
        return operator::init(&args, &config, None);
    }
    let (opts, _warnings) = loaded?;
    if args.command == "init" {
        return operator::init(&args, &config, Some(&opts));
    }
    let ctx = Ctx { args, config, opts };
    let command = ctx.args.command.clone();
    if ctx.opts.operator.is_some() {
        let mut op = operator::Operator::open(&ctx)?;
        match command.as_str() {
            "add" => op.add(&ctx).await,
            "ls" => op.ls(&ctx).await,
            "rm" => op.rm(&ctx).await,
            "rotate" => op.rotate(&ctx).await,
            other => bail!("unknown command {other:?} (init, add, ls, rm, rotate)"),
        }
    } else {
        match command.as_str() {
            "add" => config_mode::add(&ctx).await,
            "ls" => config_mode::ls(&ctx),
            "rm" => config_mode::rm(&ctx).await,
            "rotate" => config_mode::rotate(&ctx).await,
            other => bail!("unknown command {other:?} (init, add, ls, rm, rotate)"),
        }
    }
}

/// Holds an exclusive lock on `path` (created if missing) until dropped, so two `natrium tenant`
/// commands on the same files run one after the other.
pub struct Lock(#[allow(dead_code)] std::fs::File);

pub fn lock(path: &Path) -> Result<Lock> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("can not open lock file {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
        bail!(
            "can not lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Lock(f))
}

/// A human-readable limit: `unlimited` for -1 or absent.
pub fn show(n: Option<i64>) -> String {
    match n {
        None | Some(-1) => "unlimited".into(),
        Some(n) => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_line() {
        let a = parse(&[
            "add",
            "acme",
            "-c",
            "/x.conf",
            "--max-connections=5",
            "--max-payload",
            "1KB",
            "--js-disk",
            "1G",
        ])
        .expect("parses");
        assert_eq!(a.command, "add");
        assert_eq!(a.name.as_deref(), Some("acme"));
        assert_eq!(a.config, Some(PathBuf::from("/x.conf")));
        assert_eq!(a.limits.max_connections, Some(5));
        assert_eq!(
            a.limits.max_payload,
            Some(1024),
            "KB is binary, as in the config"
        );
        assert_eq!(a.limits.js_disk, Some(1_000_000_000));
        assert!(a.limits.jetstream());
        assert!(parse(&["ls"]).expect("ls").name.is_none());
        for bad in [
            &["add"][..],
            &["ls", "x"],
            &["rm", "a b"],
            &["rm", "../etc"],
            &["add", "SYS"],
            &["rotate", "x", "--max-connections", "1"],
            &["add", "x", "--bogus"],
            &["add", "x", "--max-payload", "lots"],
            &["add", "x", "--max-connections", "-2"],
            &["add", "x", "--user"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&["--help"]).expect("help").command, "help");
    }
}
