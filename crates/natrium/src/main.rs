//! The `natrium` binary: nats-server's flags, logging, pid and ports files, and signals around
//! an embedded `natrium::Server`.

use std::process::ExitCode;

use natrium::cli::{Cli, USAGE};
use natrium::{logging, Server, PROTOCOL_VERSION, VERSION};

mod sd_notify;
mod tenant;

fn main() -> ExitCode {
    // `natrium tenant ...`: provisioning, before nats-server's flags (see src/tenant/).
    if std::env::args().nth(1).as_deref() == Some("tenant") {
        return tenant::main(std::env::args().skip(2));
    }
    // `natrium store verify DIR`: the offline store verifier.
    if std::env::args().nth(1).as_deref() == Some("store") {
        return store_command(std::env::args().skip(2).collect());
    }
    let cli = match Cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("natrium: {e}\n\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    if cli.show_help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if cli.show_version {
        println!("natrium: v{VERSION} (nats-server protocol v{PROTOCOL_VERSION})");
        return ExitCode::SUCCESS;
    }
    if let Some(spec) = &cli.signal {
        return match natrium::cli::process_signal(spec) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("natrium: {e}");
                ExitCode::from(1)
            }
        };
    }
    if cli.test_config && cli.config.is_none() {
        eprintln!("natrium: must specify [-c, --config] option to check configuration file syntax");
        return ExitCode::from(1);
    }
    let (opts, warnings) = match cli.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("natrium: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.test_config {
        for w in &warnings {
            eprintln!("natrium: warning: {w}");
        }
        // What a start would refuse: TLS files, operator JWTs, the JetStream store directory.
        if let Err(e) = Server::check(&opts) {
            eprintln!("natrium: {e}");
            return ExitCode::from(1);
        }
        println!(
            "natrium: configuration file {} is valid",
            cli.config
                .as_ref()
                .map_or("<none>".into(), |p| p.display().to_string())
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::init(
        opts.debug,
        opts.trace,
        opts.logtime,
        opts.log_file.as_deref(),
    ) {
        eprintln!("natrium: can not open log file: {e}");
        return ExitCode::from(1);
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natrium: can not start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("natrium: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, opts: natrium::Options) -> anyhow::Result<()> {
    let pid_file = opts.pid_file.clone();
    let ports_dir = opts.ports_file_dir.clone();
    let tls = opts.tls.is_some();
    let server = Server::start(opts).await?;
    if let Some(p) = &pid_file {
        std::fs::write(p, std::process::id().to_string())?;
    }
    let ports_file = match &ports_dir {
        Some(dir) => {
            let exe = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "natrium".into());
            let path = dir.join(format!("{exe}_{}.ports", std::process::id()));
            // As nats-server: `tls://` when clients must use TLS; `monitoring` is `http://` or
            // `https://`.
            let mut nats = server.client_url();
            if tls {
                nats = nats.replacen("nats://", "tls://", 1);
            }
            let mut doc = serde_json::json!({ "nats": [nats] });
            if let Some(url) = server.monitor_url() {
                doc["monitoring"] = serde_json::json!([url]);
            }
            if let Some(url) = server.cluster_url() {
                doc["cluster"] = serde_json::json!([url]);
            }
            if let Some(url) = server.leafnode_url() {
                doc["leafnodes"] = serde_json::json!([url]);
            }
            if let Some(url) = server.websocket_url() {
                doc["websocket"] = serde_json::json!([url]);
            }
            std::fs::write(&path, serde_json::to_vec(&doc)?)?;
            Some(path)
        }
        None => None,
    };
    // systemd (Type=notify): ready once the listeners accept and the files are written.
    let notify = sd_notify::Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("{e}");
        None
    });
    let status = format!("Accepting client connections on {}", server.addr());
    // Handlers first: a `systemctl reload` right after READY=1 must not find SIGHUP's default.
    let signals = Signals::install()?;
    if let Some(n) = &notify {
        n.ready(&status);
    }
    let stop = wait_for_signal(signals, &cli, &server, notify.as_ref(), &status).await?;
    if let Some(n) = &notify {
        n.stopping("Shutting down");
    }
    match stop {
        Stop::Now => {
            tracing::info!("Initiating Shutdown...");
            server.shutdown().await;
        }
        Stop::LameDuck => server.lame_duck().await,
    }
    if let Some(p) = ports_file {
        let _ = std::fs::remove_file(p);
    }
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// The signals the server acts on, caught from the moment this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// How the server is to stop.
enum Stop {
    /// SIGTERM, SIGINT: close every client and exit.
    Now,
    /// SIGUSR2: lame duck mode (see `Server::lame_duck`).
    LameDuck,
}

/// Serves signals until one asks to stop: SIGTERM/SIGINT stop, SIGHUP reloads the configuration
/// (file and flags, as at start), SIGUSR1 reopens the log file, SIGUSR2 enters lame duck mode.
/// A reload is bracketed by `RELOADING=1` and `READY=1` to systemd when it is watching.
async fn wait_for_signal(
    signals: Signals,
    cli: &Cli,
    server: &Server,
    notify: Option<&sd_notify::Notifier>,
    status: &str,
) -> std::io::Result<Stop> {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
        mut usr2,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("Trapped \"terminated\" signal");
                return Ok(Stop::Now);
            }
            _ = int.recv() => {
                tracing::info!("Trapped \"interrupt\" signal");
                return Ok(Stop::Now);
            }
            _ = usr2.recv() => {
                tracing::info!("Trapped \"user defined signal 2\" signal");
                return Ok(Stop::LameDuck);
            }
            _ = hup.recv() => {
                tracing::info!("Trapped \"hangup\" signal");
                if let Some(n) = notify {
                    n.reloading();
                }
                let result = cli
                    .options()
                    .map_err(natrium::ReloadError::from)
                    .and_then(|(opts, warnings)| {
                        for w in &warnings {
                            tracing::warn!("{w}");
                        }
                        server.reload_options(opts)
                    });
                if let Err(e) = &result {
                    tracing::error!("Failed to reload server configuration: {e}");
                }
                if let Some(n) = notify {
                    n.ready(&match &result {
                        Ok(()) => status.to_string(),
                        Err(e) => format!("{status}; last reload failed: {e}"),
                    });
                }
            }
            _ = usr1.recv() => {
                tracing::info!("Trapped \"user defined signal 1\" signal");
                if let Err(e) = logging::reopen() {
                    tracing::error!("Failed to reopen the log file: {e}");
                } else {
                    tracing::info!("File log re-opened");
                }
            }
        }
    }
}

const STORE_USAGE: &str = "Usage: natrium store verify DIR

Checks every message block, delete record, index and consumer state file under DIR (a
JetStream store directory, or any directory below it) and reports damage without changing
anything. Run it on the store of a stopped server. Exit status: 0 no damage, 1 damage found,
2 could not run.
";

/// `natrium store ...`: offline store tools.
fn store_command(args: Vec<String>) -> ExitCode {
    let [cmd, dir] = args.as_slice() else {
        eprint!("{STORE_USAGE}");
        return ExitCode::from(2);
    };
    if cmd != "verify" {
        eprint!("natrium: unknown store command {cmd:?}\n\n{STORE_USAGE}");
        return ExitCode::from(2);
    }
    match natrium_store::verify_dir(std::path::Path::new(dir)) {
        Ok(report) => {
            println!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("natrium: store verify {dir}: {e}");
            ExitCode::from(2)
        }
    }
}
