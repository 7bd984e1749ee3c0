//! The `natrium` binary: nats-server's flags, logging, pid and ports files, and signals around
//! an embedded `natrium::Server`.

use std::process::ExitCode;

use natrium::cli::{Cli, USAGE};
use natrium::{logging, Server, PROTOCOL_VERSION, VERSION};

fn main() -> ExitCode {
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
        println!(
            "natrium: configuration file {} test is successful",
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
            if let Some(url) = server.websocket_url() {
                doc["websocket"] = serde_json::json!([url]);
            }
            std::fs::write(&path, serde_json::to_vec(&doc)?)?;
            Some(path)
        }
        None => None,
    };
    match wait_for_signal(&cli, &server).await? {
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

/// How the server is to stop.
enum Stop {
    /// SIGTERM, SIGINT: close every client and exit.
    Now,
    /// SIGUSR2: lame duck mode (see `Server::lame_duck`).
    LameDuck,
}

/// Serves signals until one asks to stop: SIGTERM/SIGINT stop, SIGHUP reloads the configuration
/// (file and flags, as at start), SIGUSR1 reopens the log file, SIGUSR2 enters lame duck mode.
async fn wait_for_signal(cli: &Cli, server: &Server) -> std::io::Result<Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
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
                let result = cli
                    .options()
                    .map_err(natrium::ReloadError::from)
                    .and_then(|(opts, warnings)| {
                        for w in &warnings {
                            tracing::warn!("{w}");
                        }
                        server.reload_options(opts)
                    });
                if let Err(e) = result {
                    tracing::error!("Failed to reload server configuration: {e}");
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
