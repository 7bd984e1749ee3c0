//! The examples' command line: an embedded server by default, `--url` (and `--monitor`,
//! `--websocket`) for one already running.

use std::process::ExitCode;

use natrium::Options;

use super::checks::Checks;
use super::logs;
use super::server::Natrium;

/// What the command line asked for.
pub struct Args {
    /// The system to run (the first argument).
    pub system: String,
    pub url: Option<String>,
    pub monitor: Option<String>,
    pub websocket: Option<String>,
    /// `--cluster N`: an embedded cluster of N nodes (or, with `--url`, the size of the
    /// cluster the URLs name); `None`: a single server.
    pub cluster: Option<usize>,
    /// Print the embedded server's log (on unless `--quiet`).
    pub log: bool,
}

impl Args {
    /// Parses the process's arguments; prints `usage` and exits on `--help` or a mistake.
    pub fn parse(usage: &str) -> Args {
        let mut a = Args {
            system: String::new(),
            url: None,
            monitor: None,
            websocket: None,
            cluster: None,
            log: true,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--url" => a.url = it.next(),
                "--monitor" => a.monitor = it.next(),
                "--websocket" => a.websocket = it.next(),
                "--cluster" => match it.next().and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) if n >= 1 => a.cluster = Some(n),
                    _ => {
                        eprintln!("--cluster takes a number of nodes (1 or more)\n\n{usage}");
                        std::process::exit(2);
                    }
                },
                "-q" | "--quiet" => a.log = false,
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0);
                }
                other if a.system.is_empty() && !other.starts_with('-') => {
                    a.system = other.to_string();
                }
                other => {
                    eprintln!("unknown argument {other:?}\n\n{usage}");
                    std::process::exit(2);
                }
            }
        }
        if a.system.is_empty() {
            eprintln!("{usage}");
            std::process::exit(2);
        }
        if a.url.is_some() && a.monitor.is_none() {
            eprintln!("(no --monitor given: the checks that read /metrics are skipped)");
        }
        a
    }

    /// The server to play against: the one `--url` names, or an embedded one (an embedded
    /// cluster with `--cluster N`) started from `config` over `base`.
    pub async fn natrium(&self, config: &str, base: Options) -> anyhow::Result<Natrium> {
        logs::install(self.log);
        let n = match (&self.url, self.cluster) {
            (Some(url), nodes) => Natrium::remote(
                url.clone(),
                self.monitor.clone(),
                self.websocket.clone(),
                nodes.unwrap_or(1),
            ),
            (None, Some(nodes)) => Natrium::embedded_cluster(config, base, nodes).await?,
            (None, None) => Natrium::embedded(config, base).await?,
        };
        let kind = match (n.is_embedded(), n.is_cluster()) {
            (true, false) => "embedded".to_string(),
            (true, true) => format!("embedded cluster of {}", n.nodes()),
            (false, false) => "--url".to_string(),
            (false, true) => format!("--url, a cluster of {}", n.nodes()),
        };
        println!(
            "Natrium at {} ({kind}); monitoring: {}",
            n.url(),
            if n.monitors().is_empty() {
                "none".to_string()
            } else {
                n.monitors().join(",")
            }
        );
        Ok(n)
    }
}

/// Prints the outcome and turns it into the exit code.
pub fn finish(result: anyhow::Result<Checks>) -> ExitCode {
    match result {
        Ok(c) if c.failures().is_empty() => {
            println!("[{}] all {} checks passed", c.system, c.list.len());
            ExitCode::SUCCESS
        }
        Ok(c) => {
            for f in c.failures() {
                println!("[{}] FAILED {}: {}", c.system, f.what, f.detail);
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
