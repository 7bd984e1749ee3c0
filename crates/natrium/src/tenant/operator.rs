//! Operator mode: tenants are accounts signed by the operator and pushed to the running server.
//!
//! The keystore (`--keys`, default `keys/` next to the config; mode 0700) holds:
//! - `operator.nk`: the seed of the operator or of one of its signing keys (0600; from `nsc` or
//!   made by hand), `--operator-key` to take it from elsewhere;
//! - `sys.creds`: credentials of a user of the system account, to push with (`--system-creds`);
//! - `tenants/NAME/account.nk` (the account seed, 0600), `tenants/NAME/account.jwt` (the JWT
//!   last pushed) and `tenants/NAME/USER.creds` (the user's credentials, 0600).
//!
//! A new tenant is staged in a hidden directory and renamed into place only after the server
//! accepted its account; a rotation or removal changes the local files only after the server
//! answered, so a refused push leaves the keystore as it was.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nkeys::{KeyPair, KeyPairType};
use serde_json::{json, Map, Value};

use super::files::{self, Mode, Staged};
use super::jwt::{self, Limits};
use super::{lock, show, Ctx};
use natrium::options::Resolver;

pub struct Operator {
    keys: PathBuf,
    signer: KeyPair,
    system_creds: PathBuf,
    allow_delete: bool,
}

/// A tenant as the keystore has it.
struct Tenant {
    dir: PathBuf,
    account: KeyPair,
    claims: Value,
    creds: PathBuf,
    user: KeyPair,
    user_name: String,
}

impl Operator {
    /// Checks the configuration (a directory resolver that takes pushes) and the operator key
    /// (trusted by the configured operator JWT), and finds the keystore.
    pub fn open(ctx: &Ctx) -> Result<Operator> {
        let op = ctx.opts.operator.as_ref().context("not in operator mode")?;
        let dir = match &op.resolver {
            Some(Resolver::Dir(d)) => d,
            Some(Resolver::Memory) => bail!(
                "the server's resolver is MEMORY, which takes no pushed accounts: configure \
                 `resolver {{ type: full, dir: ... }}`"
            ),
            Some(Resolver::Url(u)) => bail!(
                "the server's resolver is URL({u}), which serves accounts from that URL: add the \
                 tenant's account JWT there, or configure `resolver {{ type: full, dir: ... }}`"
            ),
            Some(Resolver::Unsupported(r)) => bail!("the resolver {r:?} is not supported"),
            None => bail!(
                "operator mode without a resolver: configure `resolver {{ type: full, dir: ... }}`"
            ),
        };
        if dir.cache {
            bail!(
                "the resolver is `type: cache`, which only updates accounts it already has: \
                 use `type: full`"
            );
        }
        let keys = ctx
            .args
            .keys
            .clone()
            .unwrap_or_else(|| ctx.config_dir().join("keys"));
        let key_file = ctx
            .args
            .operator_key
            .clone()
            .unwrap_or_else(|| keys.join("operator.nk"));
        let signer = jwt::parse_seed(&files::read_secret(&key_file).with_context(|| {
            format!(
                "the operator key is read from {} (--operator-key)",
                key_file.display()
            )
        })?)
        .with_context(|| format!("in {}", key_file.display()))?;
        if signer.key_pair_type() != KeyPairType::Operator {
            bail!(
                "{} holds a {:?} key, not an operator key",
                key_file.display(),
                signer.key_pair_type()
            );
        }
        // The key must be the operator's identity or one of its signing keys.
        let me = signer.public_key();
        let mut trusted = false;
        for token in &op.operators {
            let c = jwt::decode(token).context("the configured operator JWT")?;
            let nats = &c["nats"];
            let signing: Vec<&str> = nats["signing_keys"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if signing.contains(&me.as_str()) {
                trusted = true;
            } else if c["sub"] == me.as_str() {
                if nats["strict_signing_key_usage"] == true {
                    bail!(
                        "the operator requires accounts to be signed by a signing key \
                         (strict_signing_key_usage), and {} is its identity key",
                        key_file.display()
                    );
                }
                trusted = true;
            }
        }
        if !trusted {
            bail!(
                "the key in {} ({me}) is neither the configured operator nor one of its \
                 signing keys",
                key_file.display()
            );
        }
        let system_creds = ctx
            .args
            .system_creds
            .clone()
            .unwrap_or_else(|| keys.join("sys.creds"));
        Ok(Operator {
            keys,
            signer,
            system_creds,
            allow_delete: dir.allow_delete,
        })
    }

    fn tenants_dir(&self) -> PathBuf {
        self.keys.join("tenants")
    }

    fn lock(&self) -> Result<super::Lock> {
        files::private_dir(&self.tenants_dir())?;
        lock(&self.keys.join(".lock"))
    }

    /// The system user's connection.
    async fn system_client(&self, ctx: &Ctx) -> Result<async_nats::Client> {
        let text = files::read_secret(&self.system_creds).with_context(|| {
            format!(
                "the system user's credentials are read from {} (--system-creds)",
                self.system_creds.display()
            )
        })?;
        let url = ctx.server_url()?;
        let base = async_nats::ConnectOptions::with_credentials(&text)
            .with_context(|| format!("{}", self.system_creds.display()))?;
        ctx.client_options(base)
            .await?
            .connect(url.as_str())
            .await
            .with_context(|| format!("can not connect to {url} as the system user"))
    }

    /// Sends a claims request and returns the server's message, or its error.
    async fn claims(client: &async_nats::Client, subject: &str, payload: String) -> Result<String> {
        let reply = match client.request(subject.to_string(), payload.into()).await {
            Ok(r) => r,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => bail!(
                "nothing answers {subject}: the credentials are not the server's system \
                 account, or the server has no directory resolver"
            ),
            Err(e) => bail!("{subject}: {e}"),
        };
        let v: Value = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("the answer to {subject} is not JSON"))?;
        if let Some(e) = v.get("error") {
            bail!(
                "the server refused: {}",
                e["description"].as_str().unwrap_or("(no description)")
            );
        }
        Ok(v["data"]["message"].as_str().unwrap_or("ok").to_string())
    }

    async fn push(&self, ctx: &Ctx, account_jwt: &str) -> Result<String> {
        let client = self.system_client(ctx).await?;
        let r = Self::claims(&client, "$SYS.REQ.CLAIMS.UPDATE", account_jwt.to_string()).await;
        let _ = client.drain().await;
        r
    }

    fn load(&self, name: &str) -> Result<Tenant> {
        let dir = self.tenants_dir().join(name);
        if !dir.is_dir() {
            bail!("no tenant {name:?} in {}", self.tenants_dir().display());
        }
        let account = jwt::parse_seed(&files::read_secret(&dir.join("account.nk"))?)?;
        let token = std::fs::read_to_string(dir.join("account.jwt"))
            .with_context(|| format!("{}", dir.join("account.jwt").display()))?;
        let claims = jwt::decode(&token).context("account.jwt")?;
        let creds = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "creds"))
            .with_context(|| format!("no .creds file in {}", dir.display()))?;
        let (_, user) = jwt::parse_creds(&files::read_secret(&creds)?)?;
        let user_name = creds
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Tenant {
            dir,
            account,
            claims,
            creds,
            user,
            user_name,
        })
    }

    pub async fn add(&mut self, ctx: &Ctx) -> Result<()> {
        let name = ctx.args.name.clone().context("NAME")?;
        let user_name = ctx.args.user.clone().unwrap_or_else(|| name.clone());
        let _lock = self.lock()?;
        let dir = self.tenants_dir().join(&name);
        if dir.exists() {
            bail!("tenant {name:?} already exists ({})", dir.display());
        }
        let f = ctx.args.limits;
        let limits = Limits {
            conn: f.max_connections.unwrap_or(-1),
            subs: f.max_subscriptions.unwrap_or(-1),
            payload: f.max_payload.unwrap_or(-1),
            msgs_per_sec: f.max_msgs_per_sec.unwrap_or(-1),
            bytes_per_sec: f.max_bytes_per_sec.unwrap_or(-1),
            // Any JetStream flag enables JetStream; unset storage is then unlimited.
            disk_storage: f.js_disk.unwrap_or(if f.jetstream() { -1 } else { 0 }),
            mem_storage: f.js_memory.unwrap_or(if f.jetstream() { -1 } else { 0 }),
            streams: f.js_streams.unwrap_or(-1),
            consumers: f.js_consumers.unwrap_or(-1),
        };
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let account_jwt = jwt::account_jwt(
            &self.signer,
            &account.public_key(),
            &name,
            &limits,
            &Map::new(),
        )?;
        let user_jwt = jwt::user_jwt(&account, &user.public_key(), &user_name)?;
        // Staged in a hidden directory; renamed into place once the server took the account.
        let stage = self
            .tenants_dir()
            .join(format!(".{name}.new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        files::private_dir(&stage)?;
        let cleanup = RemoveOnDrop(Some(stage.clone()));
        let seed = account
            .seed()
            .map_err(|e| anyhow::anyhow!("account seed: {e}"))?;
        files::write(
            &stage.join("account.nk"),
            format!("{seed}\n").as_bytes(),
            Mode::Secret,
        )?;
        files::write(
            &stage.join("account.jwt"),
            account_jwt.as_bytes(),
            Mode::Public,
        )?;
        let creds_name = format!("{user_name}.creds");
        files::write(
            &stage.join(&creds_name),
            jwt::creds(&user_jwt, &user)?.as_bytes(),
            Mode::Secret,
        )?;
        let answer = self
            .push(ctx, &account_jwt)
            .await
            .with_context(|| format!("tenant {name:?} not added"))?;
        std::fs::rename(&stage, &dir)
            .with_context(|| format!("can not move {} to {}", stage.display(), dir.display()))?;
        cleanup.disarm();
        files::sync_dir(&self.tenants_dir());
        println!("Tenant {name} added (operator mode).");
        println!("  account:     {}", account.public_key());
        println!("  pushed to:   {} ({answer})", ctx.server_url()?);
        println!("  user:        {user_name} ({})", user.public_key());
        println!("  credentials: {}", dir.join(&creds_name).display());
        println!("  limits:      {}", describe(&limits));
        if limits.jetstream() {
            println!(
                "  note: this Natrium version does not run JetStream for operator-mode accounts \
                 yet; the JetStream limits are in the account JWT for when it does"
            );
        }
        Ok(())
    }

    pub async fn rotate(&mut self, ctx: &Ctx) -> Result<()> {
        let name = ctx.args.name.clone().context("NAME")?;
        let _lock = self.lock()?;
        let t = self.load(&name)?;
        let old = t.user.public_key();
        let user = KeyPair::new_user();
        let mut revocations = t.claims["nats"]["revocations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        revocations.insert(old.clone(), json!(jwt::now()));
        let limits = Limits::from_json(&t.claims["nats"]["limits"]);
        let account_jwt = jwt::account_jwt(
            &self.signer,
            &t.account.public_key(),
            &name,
            &limits,
            &revocations,
        )?;
        let user_jwt = jwt::user_jwt(&t.account, &user.public_key(), &t.user_name)?;
        let creds = Staged::new(
            &t.creds,
            jwt::creds(&user_jwt, &user)?.as_bytes(),
            Mode::Secret,
        )?;
        let stored = Staged::new(
            &t.dir.join("account.jwt"),
            account_jwt.as_bytes(),
            Mode::Public,
        )?;
        let answer = self
            .push(ctx, &account_jwt)
            .await
            .with_context(|| format!("tenant {name:?}: credentials not rotated"))?;
        stored.commit()?;
        creds.commit()?;
        println!("Tenant {name}: new credentials for user {}.", t.user_name);
        println!("  revoked:     {old} (its connections are closed)");
        println!("  new user:    {}", user.public_key());
        println!("  credentials: {}", t.creds.display());
        println!("  pushed to:   {} ({answer})", ctx.server_url()?);
        Ok(())
    }

    pub async fn rm(&mut self, ctx: &Ctx) -> Result<()> {
        let name = ctx.args.name.clone().context("NAME")?;
        let _lock = self.lock()?;
        let t = self.load(&name)?;
        let key = t.account.public_key();
        let how = if self.allow_delete {
            let client = self.system_client(ctx).await?;
            let req = jwt::delete_request(&self.signer, std::slice::from_ref(&key))?;
            let r = Self::claims(&client, "$SYS.REQ.CLAIMS.DELETE", req).await;
            let _ = client.drain().await;
            format!(
                "deleted from the server's resolver ({})",
                r.with_context(|| format!("tenant {name:?} not removed"))?
            )
        } else {
            // Without allow_delete the JWT stays on the server: it is replaced by one that
            // revokes every user and allows no connection.
            let mut revocations = t.claims["nats"]["revocations"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            revocations.insert("*".into(), json!(jwt::now()));
            let limits = Limits {
                conn: 0,
                ..Limits::from_json(&t.claims["nats"]["limits"])
            };
            let disabled = jwt::account_jwt(&self.signer, &key, &name, &limits, &revocations)?;
            let answer = self
                .push(ctx, &disabled)
                .await
                .with_context(|| format!("tenant {name:?} not removed"))?;
            format!(
                "disabled on the server ({answer}): the resolver has no allow_delete, so its \
                 account JWT stays, revoking every user and allowing no connection"
            )
        };
        // Renamed aside first, so an interrupted removal never leaves a tenant that looks whole.
        let gone = self
            .tenants_dir()
            .join(format!(".{name}.removed-{}", std::process::id()));
        std::fs::rename(&t.dir, &gone)?;
        std::fs::remove_dir_all(&gone)
            .with_context(|| format!("can not remove {}", gone.display()))?;
        files::sync_dir(&self.tenants_dir());
        println!("Tenant {name} removed: account {key} {how}.");
        Ok(())
    }

    pub async fn ls(&mut self, ctx: &Ctx) -> Result<()> {
        let mut names: Vec<String> = match std::fs::read_dir(self.tenants_dir()) {
            Ok(d) => d
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        // Which accounts the server has, when it can be asked.
        let on_server: Result<Vec<String>> = async {
            let client = self.system_client(ctx).await?;
            let reply = client
                .request("$SYS.REQ.CLAIMS.LIST", "".into())
                .await
                .map_err(|e| anyhow::anyhow!("$SYS.REQ.CLAIMS.LIST: {e}"))?;
            let v: Value = serde_json::from_slice(&reply.payload)?;
            Ok(v["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default())
        }
        .await;
        if names.is_empty() {
            println!("No tenants in {}.", self.tenants_dir().display());
        }
        for n in &names {
            match self.load(n) {
                Ok(t) => {
                    let key = t.account.public_key();
                    let state = match &on_server {
                        Ok(keys) if keys.contains(&key) => "on server",
                        Ok(_) => "NOT on server",
                        Err(_) => "server not asked",
                    };
                    println!(
                        "{n}\taccount {key}\tuser {} ({})\t{}\t{state}",
                        t.user_name,
                        t.user.public_key(),
                        describe(&Limits::from_json(&t.claims["nats"]["limits"]))
                    );
                }
                Err(e) => println!("{n}\tunreadable: {e:#}"),
            }
        }
        if let Err(e) = on_server {
            eprintln!("natrium tenant: could not ask the server which accounts it has: {e:#}");
        }
        Ok(())
    }
}

/// `natrium tenant init`: operator mode from scratch. Makes an operator (identity key and a
/// signing key), the system account and a user of it; writes the keystore (`operator.nk` is the
/// signing key, `operator-identity.nk` the identity key, which only re-signing the operator JWT
/// needs: keep it offline), `operator.jwt` next to the config, and the system account's JWT in
/// the resolver's directory; prints the configuration lines. Refuses to overwrite anything.
pub fn init(
    args: &super::Args,
    config: &std::path::Path,
    opts: Option<&natrium::Options>,
) -> Result<()> {
    let conf_dir = files::parent(config).to_path_buf();
    let keys = args.keys.clone().unwrap_or_else(|| conf_dir.join("keys"));
    let configured = opts
        .and_then(|o| o.operator.as_ref())
        .and_then(|o| match &o.resolver {
            Some(Resolver::Dir(d)) => Some(d.dir.clone()),
            _ => None,
        });
    let jwt_dir = args
        .jwt_dir
        .clone()
        .or(configured)
        .unwrap_or_else(|| PathBuf::from("/var/lib/natrium/jwt"));
    let name = args
        .operator_name
        .clone()
        .unwrap_or_else(|| "natrium".into());
    let identity = KeyPair::new_operator();
    let signing = KeyPair::new_operator();
    let sys = KeyPair::new_account();
    let sys_user = KeyPair::new_user();
    let seed = |k: &KeyPair| -> Result<String> {
        k.seed()
            .map(|s| format!("{s}\n"))
            .map_err(|e| anyhow::anyhow!("seed: {e}"))
    };
    let operator_jwt =
        jwt::operator_jwt(&identity, &name, &[signing.public_key()], &sys.public_key())?;
    let limits = Limits::default();
    let sys_jwt = jwt::account_jwt(&signing, &sys.public_key(), "SYS", &limits, &Map::new())?;
    let user_jwt = jwt::user_jwt(&sys, &sys_user.public_key(), "sys")?;
    let operator_file = conf_dir.join("operator.jwt");
    let sys_file = jwt_dir.join(format!("{}.jwt", sys.public_key()));
    let writes: Vec<(PathBuf, String, Mode)> = vec![
        (keys.join("operator.nk"), seed(&signing)?, Mode::Secret),
        (
            keys.join("operator-identity.nk"),
            seed(&identity)?,
            Mode::Secret,
        ),
        (keys.join("sys-account.nk"), seed(&sys)?, Mode::Secret),
        (
            keys.join("sys.creds"),
            jwt::creds(&user_jwt, &sys_user)?,
            Mode::Secret,
        ),
        (operator_file.clone(), operator_jwt, Mode::Public),
        (sys_file.clone(), sys_jwt, Mode::Public),
    ];
    if let Some((p, _, _)) = writes.iter().find(|(p, _, _)| p.exists()) {
        bail!(
            "{} already exists: this operator is set up (init writes nothing over existing files)",
            p.display()
        );
    }
    files::private_dir(&keys)?;
    std::fs::create_dir_all(&jwt_dir)
        .with_context(|| format!("can not create {}", jwt_dir.display()))?;
    let mut done: Vec<PathBuf> = Vec::new();
    for (path, text, mode) in &writes {
        if let Err(e) = files::write(path, text.as_bytes(), *mode) {
            for p in &done {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.context("init undone"));
        }
        done.push(path.clone());
    }
    println!("Operator {name} created.");
    println!(
        "  operator:       {} (signing key {})",
        identity.public_key(),
        signing.public_key()
    );
    println!("  system account: {}", sys.public_key());
    println!(
        "  keystore:       {} (keep operator-identity.nk offline)",
        keys.display()
    );
    println!("  operator JWT:   {}", operator_file.display());
    println!(
        "  system account JWT in the resolver directory: {}",
        sys_file.display()
    );
    println!();
    println!(
        "Put these lines in {} (the server's user must own {}):",
        config.display(),
        jwt_dir.display()
    );
    println!();
    println!("operator: {}", operator_file.display());
    println!(
        "resolver {{ type: full, dir: \"{}\", allow_delete: true }}",
        jwt_dir.display()
    );
    println!();
    println!("then start (or restart) the server and add tenants with `natrium tenant add NAME`.");
    Ok(())
}

fn describe(l: &Limits) -> String {
    let opt = |n: i64| show(Some(n));
    let mut s = format!(
        "connections {}, subscriptions {}, payload {}",
        opt(l.conn),
        opt(l.subs),
        opt(l.payload)
    );
    if l.msgs_per_sec > 0 || l.bytes_per_sec > 0 {
        s += &format!(
            ", publish rate {} msgs/s, {} bytes/s",
            opt(l.msgs_per_sec),
            opt(l.bytes_per_sec)
        );
    }
    if l.jetstream() {
        s += &format!(
            ", JetStream disk {}, memory {}, streams {}, consumers {}",
            opt(l.disk_storage),
            opt(l.mem_storage),
            opt(l.streams),
            opt(l.consumers)
        );
    } else {
        s += ", no JetStream";
    }
    s
}

/// Removes a staging directory unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}
