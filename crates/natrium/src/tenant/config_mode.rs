//! Config-file mode: the tenants live in an include file (`tenants.conf` next to the server's
//! config unless `--tenants` says otherwise) that the config includes inside its `accounts`
//! block:
//!
//! ```text
//! accounts {
//!   include tenants.conf
//! }
//! ```
//!
//! Each tenant is an account with one user (a bcrypt password hash), its `limits` and, when the
//! server runs JetStream, `jetstream` (limits or `enabled`). After a change the whole server
//! configuration is loaded again (a change it would refuse is undone), then the running server
//! is told to reload (`--pid`, the config's `pid_file`, or the one running `natrium`), and the
//! new credentials are tried against it.
//!
//! A reload adds and removes accounts, but does not take JetStream away from an account. So
//! `rm` of a tenant with JetStream keeps its account as an empty entry without users and with
//! `max_connections: 0`, which a reload applies at once (the tenant's connections are closed);
//! a later `add` of the same name reuses it (and its streams).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use natrium_config::Value;

use super::files::{self, Mode};
use super::{lock, show, Ctx};

/// One tenant of the include file. No users: removed, its account (with JetStream) kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tenant {
    name: String,
    users: Vec<(String, String)>,
    /// `max_connections`, `max_subscriptions`, `max_payload` as set.
    limits: Vec<(String, i64)>,
    jetstream: Js,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Js {
    Off,
    Enabled,
    Limits(Vec<(String, i64)>),
}

const LIMIT_KEYS: [&str; 5] = [
    "max_connections",
    "max_subscriptions",
    "max_payload",
    "max_msgs_per_sec",
    "max_bytes_per_sec",
];
const JS_KEYS: [&str; 4] = ["max_file", "max_mem", "max_streams", "max_consumers"];

fn tenants_path(ctx: &Ctx) -> PathBuf {
    ctx.args
        .tenants
        .clone()
        .unwrap_or_else(|| ctx.config_dir().join("tenants.conf"))
}

/// Reads the include file (missing: no tenants). Only the keys this module writes are accepted:
/// anything else belongs in the main configuration.
fn load(path: &std::path::Path) -> Result<Vec<Tenant>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let map = natrium_config::parse_file(path)
        .with_context(|| format!("can not parse {}", path.display()))?;
    let bad = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let mut out = Vec::new();
    for (name, body) in map.iter() {
        let body = body
            .as_map()
            .ok_or_else(|| bad(format!("tenant {name:?} is not a map")))?;
        let mut t = Tenant {
            name: name.to_string(),
            users: Vec::new(),
            limits: Vec::new(),
            jetstream: Js::Off,
        };
        for (key, v) in body.iter() {
            match key {
                "users" => {
                    for u in v
                        .as_array()
                        .ok_or_else(|| bad(format!("{name}: users is not a list")))?
                    {
                        let m = u
                            .as_map()
                            .ok_or_else(|| bad(format!("{name}: a user is not a map")))?;
                        let get = |k: &str| {
                            m.get(k)
                                .and_then(|v| v.as_str())
                                .map(str::to_string)
                                .ok_or_else(|| bad(format!("{name}: a user without {k}")))
                        };
                        t.users.push((get("user")?, get("password")?));
                    }
                }
                "limits" => t.limits = numbers(name, v, &LIMIT_KEYS).map_err(bad)?,
                "jetstream" => {
                    t.jetstream = match &v.value {
                        Value::Map(_) => Js::Limits(numbers(name, v, &JS_KEYS).map_err(bad)?),
                        Value::String(s) if s == "enabled" => Js::Enabled,
                        _ => return Err(bad(format!("{name}: jetstream is not a map"))),
                    }
                }
                other => {
                    return Err(bad(format!(
                        "tenant {name:?} has {other:?}, which `natrium tenant` does not write: \
                         keep such accounts in the main configuration"
                    )))
                }
            }
        }
        out.push(t);
    }
    Ok(out)
}

fn numbers(
    name: &str,
    v: &natrium_config::Spanned,
    keys: &[&str],
) -> Result<Vec<(String, i64)>, String> {
    let m = v.as_map().ok_or_else(|| format!("{name}: not a map"))?;
    let mut out = Vec::new();
    for (k, n) in m.iter() {
        if !keys.contains(&k) {
            return Err(format!("{name}: unexpected key {k:?}"));
        }
        let n = n
            .as_i64()
            .ok_or_else(|| format!("{name}: {k} is not a number"))?;
        out.push((k.to_string(), n));
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    // Names are checked to be [A-Za-z0-9_-]; bcrypt hashes are [./$A-Za-z0-9].
    format!("\"{s}\"")
}

fn render(tenants: &[Tenant]) -> String {
    let mut s = String::from(
        "# Tenants of this server, written by `natrium tenant` (add, rm, rotate; ls lists them).\n\
         # The server's configuration includes this file inside its `accounts { }` block.\n\
         # Passwords are bcrypt hashes; each plain password was shown once, when generated.\n\
         # A tenant without users was removed: its account keeps its JetStream data.\n",
    );
    let pairs = |v: &[(String, i64)]| {
        v.iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for t in tenants {
        s += &format!("\n{}: {{\n", quote(&t.name));
        s += "  users: [\n";
        for (u, p) in &t.users {
            s += &format!("    {{user: {}, password: {}}}\n", quote(u), quote(p));
        }
        s += "  ]\n";
        if !t.limits.is_empty() {
            s += &format!("  limits: {{{}}}\n", pairs(&t.limits));
        }
        match &t.jetstream {
            Js::Off => {}
            Js::Enabled => s += "  jetstream: enabled\n",
            Js::Limits(l) => s += &format!("  jetstream: {{{}}}\n", pairs(l)),
        }
        s += "}\n";
    }
    s
}

/// A random password: 24 letters and digits (about 143 bits).
fn password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < 24 {
        let mut buf = [0u8; 32];
        getrandom::getrandom(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // 248 = 4 * 62: bytes above it are dropped so every character is equally likely.
        for b in buf.into_iter().filter(|b| *b < 248) {
            if out.len() < 24 {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

fn hash(password: &str) -> Result<String> {
    bcrypt::hash(password, 11).map_err(|e| anyhow::anyhow!("bcrypt: {e}"))
}

/// The include file, written and checked: the whole server configuration must load with it and
/// name every tenant as an account. A failure puts the previous content back.
struct Written {
    opts: natrium::Options,
}

fn write_checked(ctx: &Ctx, path: &std::path::Path, tenants: &[Tenant]) -> Result<Written> {
    let previous = std::fs::read(path).ok();
    let mode = file_mode(ctx, path);
    files::write(path, render(tenants).as_bytes(), mode)?;
    let check = natrium::Options::from_file(&ctx.config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|(opts, _)| {
            match tenants
                .iter()
                .find(|t| !opts.accounts.iter().any(|a| a.name == t.name))
            {
                Some(t) => bail!(
                    "{} does not include {} inside its accounts block (account {:?} is missing): \
                     add `include {}` there",
                    ctx.config.display(),
                    path.display(),
                    t.name,
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                None => Ok(opts),
            }
        });
    match check {
        Ok(opts) => Ok(Written { opts }),
        Err(e) => {
            let undo = match &previous {
                Some(old) => files::write(path, old, mode),
                None => std::fs::remove_file(path).map_err(Into::into),
            };
            if let Err(u) = undo {
                bail!("{e:#}; and {} could not be put back: {u:#}", path.display());
            }
            Err(e.context("nothing changed"))
        }
    }
}

/// The include file holds password hashes: 0640, in the group of the file it replaces or else
/// of the main configuration (root:natrium with deploy/systemd), so the server's user reads it
/// and nobody else does.
fn file_mode(ctx: &Ctx, path: &std::path::Path) -> Mode {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(path)
        .or_else(|_| std::fs::metadata(&ctx.config))
        .map(|m| m.gid())
        .unwrap_or(0);
    Mode::Group(gid)
}

/// The running server's pid: `--pid`, the config's pid file, else None (then the process is
/// looked up by name when signalling).
enum Target {
    Pid(String),
    ByName,
    NotRunning,
}

fn target(ctx: &Ctx) -> Target {
    if let Some(p) = &ctx.args.pid {
        return Target::Pid(p.clone());
    }
    if let Some(pf) = &ctx.opts.pid_file {
        let pid = std::fs::read_to_string(pf)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        return match pid {
            Some(pid) if unsafe { libc::kill(pid, 0) } == 0 => Target::Pid(pid.to_string()),
            _ => Target::NotRunning,
        };
    }
    Target::ByName
}

/// What to try once the server reloaded.
enum Confirm<'a> {
    Nothing,
    /// This user logs in with this password.
    Login(&'a str, &'a str),
}

/// Reloads the running server when it can take the change, and reports what happened.
async fn apply(ctx: &Ctx, new: &natrium::Options, confirm: Confirm<'_>) -> Result<String> {
    if let Some(what) = ctx.opts.reload_blocker(new) {
        return Ok(format!(
            "restart the server to apply it: this Natrium version can not change `{what}` on \
             reload (the configuration is valid: `natrium -t -c {}` checks it)",
            ctx.config.display()
        ));
    }
    let signalled = match target(ctx) {
        Target::NotRunning => None,
        Target::Pid(p) => Some(
            natrium::cli::process_signal(&format!("reload={p}"))
                .map_err(|e| anyhow::anyhow!("can not reload the server: {e}"))?,
        ),
        Target::ByName => match natrium::cli::process_signal("reload") {
            Ok(pids) => Some(pids),
            Err(e) if e.starts_with("no ") => None,
            Err(e) => bail!("can not reload the server: {e} (name it with --pid)"),
        },
    };
    let Some(pids) = signalled else {
        return Ok("no running server found: it applies when the server starts".into());
    };
    let pid = pids.first().copied().unwrap_or_default();
    let Confirm::Login(user, pass) = confirm else {
        return Ok(format!("server (pid {pid}) told to reload"));
    };
    let url = match ctx.server_url() {
        Ok(u) => u,
        Err(e) => {
            return Ok(format!(
                "server (pid {pid}) told to reload; not checked: {e:#}"
            ))
        }
    };
    // The reload is asynchronous: try the new credentials until they work.
    let start = Instant::now();
    loop {
        let o = ctx
            .client_options(async_nats::ConnectOptions::with_user_and_password(
                user.into(),
                pass.into(),
            ))
            .await?;
        match o.connect(url.as_str()).await {
            Ok(c) => {
                let _ = c.drain().await;
                return Ok(format!(
                    "server (pid {pid}) reloaded; {user} logged in at {url}"
                ));
            }
            Err(e) if start.elapsed() > Duration::from_secs(15) => bail!(
                "the configuration is updated and the server (pid {pid}) was told to reload, \
                 but {user} still can not log in at {url} ({e}): see the server's log (a \
                 change the server refused is named there)"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn lock_for(path: &std::path::Path) -> Result<super::Lock> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    lock(&files::parent(path).join(format!(".{name}.lock")))
}

pub async fn add(ctx: &Ctx) -> Result<()> {
    let name = ctx.args.name.clone().context("NAME")?;
    let user = ctx.args.user.clone().unwrap_or_else(|| name.clone());
    let path = tenants_path(ctx);
    let _lock = lock_for(&path)?;
    let mut tenants = load(&path)?;
    let existing = tenants.iter().position(|t| t.name == name);
    if existing.is_some_and(|i| !tenants[i].users.is_empty()) {
        bail!("tenant {name:?} already exists in {}", path.display());
    }
    if existing.is_none() && ctx.opts.accounts.iter().any(|a| a.name == name) {
        bail!(
            "the configuration already has an account {name:?} (not a tenant of {})",
            path.display()
        );
    }
    let ours = |u: &str| tenants.iter().any(|t| t.users.iter().any(|(n, _)| n == u));
    if ctx.opts.auth.users.iter().any(|u| u.user == user) || ours(&user) {
        bail!("a user named {user:?} already exists: choose another with --user");
    }
    let f = ctx.args.limits;
    let mut limits = Vec::new();
    for (k, v) in LIMIT_KEYS.iter().zip([
        f.max_connections,
        f.max_subscriptions,
        f.max_payload,
        f.max_msgs_per_sec,
        f.max_bytes_per_sec,
    ]) {
        if let Some(v) = v {
            limits.push((k.to_string(), v));
        }
    }
    let js_limits: Vec<(String, i64)> = JS_KEYS
        .iter()
        .zip([f.js_disk, f.js_memory, f.js_streams, f.js_consumers])
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect();
    let server_js = ctx.opts.jetstream.is_some();
    if !js_limits.is_empty() && !server_js {
        bail!(
            "JetStream limits given, but the server does not run JetStream (no `jetstream` in {})",
            ctx.config.display()
        );
    }
    let jetstream = match (server_js, js_limits.is_empty()) {
        (false, _) => Js::Off,
        (true, true) => Js::Enabled,
        (true, false) => Js::Limits(js_limits),
    };
    let pass = password()?;
    let tenant = Tenant {
        name: name.clone(),
        users: vec![(user.clone(), hash(&pass)?)],
        limits,
        jetstream,
    };
    match existing {
        Some(i) => tenants[i] = tenant,
        None => tenants.push(tenant),
    }
    let w = write_checked(ctx, &path, &tenants)?;
    println!("Tenant {name} added to {}.", path.display());
    println!("  user:     {user}");
    println!("  password: {pass}");
    println!("            (shown only now: the file keeps a bcrypt hash of it)");
    let t = &tenants[existing.unwrap_or(tenants.len() - 1)];
    println!("  limits:   {}", describe(t));
    let status = apply(ctx, &w.opts, Confirm::Login(&user, &pass)).await?;
    println!("  server:   {status}");
    Ok(())
}

pub async fn rotate(ctx: &Ctx) -> Result<()> {
    let name = ctx.args.name.clone().context("NAME")?;
    let path = tenants_path(ctx);
    let _lock = lock_for(&path)?;
    let mut tenants = load(&path)?;
    let t = tenants
        .iter_mut()
        .find(|t| t.name == name && !t.users.is_empty())
        .with_context(|| format!("no tenant {name:?} in {}", path.display()))?;
    let pass = password()?;
    let user = t.users[0].0.clone();
    t.users[0].1 = hash(&pass)?;
    let w = write_checked(ctx, &path, &tenants)?;
    println!("Tenant {name}: new password for user {user}.");
    println!("  password: {pass}");
    println!(
        "            (shown only now; the old password no longer works once the server reloads)"
    );
    let status = apply(ctx, &w.opts, Confirm::Login(&user, &pass)).await?;
    println!("  server:   {status}");
    Ok(())
}

pub async fn rm(ctx: &Ctx) -> Result<()> {
    let name = ctx.args.name.clone().context("NAME")?;
    let path = tenants_path(ctx);
    let _lock = lock_for(&path)?;
    let tenants = load(&path)?;
    let Some(i) = tenants
        .iter()
        .position(|t| t.name == name && !t.users.is_empty())
    else {
        bail!("no tenant {name:?} in {}", path.display());
    };
    // Removed whole when the running server can drop the account on reload; otherwise the
    // account stays, empty and closed to connections, which a reload does apply.
    let mut without = tenants.clone();
    without.remove(i);
    let w = write_checked(ctx, &path, &without)?;
    let (w, kept) = if ctx.opts.reload_blocker(&w.opts).is_some() {
        let mut stub = tenants.clone();
        stub[i].users.clear();
        stub[i].limits = vec![("max_connections".into(), 0)];
        (write_checked(ctx, &path, &stub)?, true)
    } else {
        (w, false)
    };
    println!("Tenant {name} removed from {}.", path.display());
    if kept {
        println!(
            "  its account stays, without users and closed to connections, with its JetStream \
             data"
        );
    }
    let status = apply(ctx, &w.opts, Confirm::Nothing).await?;
    println!("  server:   {status}");
    Ok(())
}

pub fn ls(ctx: &Ctx) -> Result<()> {
    let path = tenants_path(ctx);
    let tenants = load(&path)?;
    if tenants.is_empty() {
        println!("No tenants in {}.", path.display());
    }
    for t in &tenants {
        let users: Vec<&str> = t.users.iter().map(|(u, _)| u.as_str()).collect();
        if users.is_empty() {
            println!("{}\tremoved (account and its JetStream data kept)", t.name);
        } else {
            println!("{}\tuser {}\t{}", t.name, users.join(","), describe(t));
        }
    }
    Ok(())
}

fn describe(t: &Tenant) -> String {
    let get = |v: &[(String, i64)], k: &str| v.iter().find(|(n, _)| n == k).map(|(_, n)| *n);
    let mut s = format!(
        "connections {}, subscriptions {}, payload {}",
        show(get(&t.limits, "max_connections")),
        show(get(&t.limits, "max_subscriptions")),
        show(get(&t.limits, "max_payload"))
    );
    let (msgs, bytes) = (
        get(&t.limits, "max_msgs_per_sec"),
        get(&t.limits, "max_bytes_per_sec"),
    );
    if msgs.is_some() || bytes.is_some() {
        s += &format!(
            ", publish rate {} msgs/s, {} bytes/s",
            show(msgs),
            show(bytes)
        );
    }
    match &t.jetstream {
        Js::Off => s += ", no JetStream",
        Js::Enabled => s += ", JetStream (server limits)",
        Js::Limits(l) => {
            s += &format!(
                ", JetStream disk {}, memory {}, streams {}, consumers {}",
                show(get(l, "max_file")),
                show(get(l, "max_mem")),
                show(get(l, "max_streams")),
                show(get(l, "max_consumers"))
            )
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_file_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tenants.conf");
        let tenants = vec![
            Tenant {
                name: "acme".into(),
                users: vec![("acme".into(), hash("pw").expect("hash"))],
                limits: vec![("max_connections".into(), 2), ("max_payload".into(), 1000)],
                jetstream: Js::Limits(vec![("max_streams".into(), 1)]),
            },
            Tenant {
                name: "b-2".into(),
                users: vec![],
                limits: vec![("max_connections".into(), 0)],
                jetstream: Js::Enabled,
            },
            Tenant {
                name: "c_3".into(),
                users: vec![("carol".into(), hash("x").expect("hash"))],
                limits: vec![],
                jetstream: Js::Off,
            },
        ];
        std::fs::write(&path, render(&tenants)).expect("write");
        assert_eq!(load(&path).expect("parses"), tenants);
        // Keys the tool does not write are refused, not dropped.
        std::fs::write(&path, "acme: { users: [], exports: [] }").expect("write");
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("main configuration"));
        let p = password().expect("password");
        assert_eq!(p.len(), 24);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, password().expect("password"));
    }
}
