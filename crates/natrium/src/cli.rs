//! nats-server's command line, parsed Go-style (`-p 4222`, `--port=4222`, `-DV`, `-js`) so scripts
//! and harnesses written for nats-server can start natrium by swapping the binary. Hand-rolled:
//! Go's flag syntax (single-dash long names, `-flag=false`) is not what clap parses.

use std::path::PathBuf;

use crate::options::{Options, OptionsError};

/// What the command line asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cli {
    pub config: Option<PathBuf>,
    pub test_config: bool,
    pub show_version: bool,
    pub show_help: bool,
    /// `--signal CMD[=PID|=PIDFILE]`: send a signal to a running server and exit.
    pub signal: Option<String>,
    /// Flag settings applied over the config file, in order.
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Override {
    Port(i32),
    Host(String),
    Name(String),
    User(String),
    Pass(String),
    Token(String),
    Log(PathBuf),
    Pid(PathBuf),
    PortsFileDir(PathBuf),
    Debug(bool),
    Trace(bool),
    Logtime(bool),
    MaxPayload(usize),
    HttpPort(i32),
    HttpsPort(i32),
    JetStream(bool),
    StoreDir(PathBuf),
    Tls(bool),
    TlsCert(PathBuf),
    TlsKey(PathBuf),
    TlsCaCert(PathBuf),
    TlsVerify(bool),
    /// `--cluster URL`: the cluster listener (`nats://[user:pass@]host:port`).
    Cluster(String),
    ClusterName(String),
    /// `--routes URL,URL`.
    Routes(String),
    ClusterAdvertise(String),
    NoAdvertise(bool),
    ConnectRetries(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid value {value:?} for flag -{flag}")]
    BadValue { flag: String, value: String },
    #[error("flag -{0} is not supported yet by this version of natrium")]
    NotYet(String),
    #[error("unexpected argument {0:?}")]
    Positional(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Bool,
    Value,
}

/// Flags that nats-server has and later natrium work adds (syslog, ...).
const NOT_YET: &[&str] = &[
    "client_advertise",
    "s",
    "syslog",
    "r",
    "remote_syslog",
    "lame_duck_duration",
    "lame_duck_grace_period",
];

fn arity(name: &str) -> Option<Arity> {
    use Arity::*;
    Some(match name {
        "p" | "port" | "a" | "addr" | "net" | "n" | "name" | "server_name" | "c" | "config"
        | "user" | "pass" | "auth" | "l" | "log" | "P" | "pid" | "ports_file_dir"
        | "max_payload" | "m" | "http_port" | "ms" | "https_port" | "sd" | "store_dir"
        | "tlscert" | "tlskey" | "tlscacert" | "sl" | "signal" | "cluster" | "cluster_listen"
        | "cluster_name" | "routes" | "cluster_advertise" | "connect_retries" => Value,
        "D" | "debug" | "V" | "trace" | "VV" | "DV" | "DVV" | "T" | "logtime" | "t" | "v"
        | "version" | "h" | "help" | "help_tls" => Bool,
        "js" | "jetstream" | "tls" | "tlsverify" | "no_advertise" | "s" | "syslog" => Bool,
        n if NOT_YET.contains(&n) => Value,
        _ => return None,
    })
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, CliError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(CliError::BadValue {
            flag: flag.into(),
            value: v.into(),
        }),
    }
}

impl Cli {
    /// Parses arguments (without the program name).
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, CliError> {
        let mut cli = Cli::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix('-') else {
                return Err(CliError::Positional(arg));
            };
            let flag = flag.strip_prefix('-').unwrap_or(flag);
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            let kind = arity(&name).ok_or_else(|| CliError::Unknown(name.clone()))?;
            let value = match (kind, inline) {
                (_, Some(v)) => v,
                (Arity::Bool, None) => "true".to_string(),
                (Arity::Value, None) => args
                    .next()
                    .ok_or_else(|| CliError::MissingValue(name.clone()))?,
            };
            if NOT_YET.contains(&name.as_str()) {
                return Err(CliError::NotYet(name));
            }
            let bad = || CliError::BadValue {
                flag: name.clone(),
                value: value.clone(),
            };
            let o = &mut cli.overrides;
            match name.as_str() {
                "p" | "port" => o.push(Override::Port(value.parse().map_err(|_| bad())?)),
                "a" | "addr" | "net" => o.push(Override::Host(value)),
                "n" | "name" | "server_name" => o.push(Override::Name(value)),
                "c" | "config" => cli.config = Some(value.into()),
                "user" => o.push(Override::User(value)),
                "pass" => o.push(Override::Pass(value)),
                "auth" => o.push(Override::Token(value)),
                "l" | "log" => o.push(Override::Log(value.into())),
                "P" | "pid" => o.push(Override::Pid(value.into())),
                "ports_file_dir" => o.push(Override::PortsFileDir(value.into())),
                "max_payload" => o.push(Override::MaxPayload(value.parse().map_err(|_| bad())?)),
                "m" | "http_port" => o.push(Override::HttpPort(value.parse().map_err(|_| bad())?)),
                "ms" | "https_port" => {
                    o.push(Override::HttpsPort(value.parse().map_err(|_| bad())?))
                }
                "js" | "jetstream" => o.push(Override::JetStream(parse_bool(&name, &value)?)),
                "sd" | "store_dir" => o.push(Override::StoreDir(value.into())),
                "tls" => o.push(Override::Tls(parse_bool(&name, &value)?)),
                "tlscert" => o.push(Override::TlsCert(value.into())),
                "tlskey" => o.push(Override::TlsKey(value.into())),
                "tlscacert" => o.push(Override::TlsCaCert(value.into())),
                "tlsverify" => o.push(Override::TlsVerify(parse_bool(&name, &value)?)),
                "sl" | "signal" => cli.signal = Some(value),
                "cluster" | "cluster_listen" => o.push(Override::Cluster(value)),
                "cluster_name" => o.push(Override::ClusterName(value)),
                "routes" => o.push(Override::Routes(value)),
                "cluster_advertise" => o.push(Override::ClusterAdvertise(value)),
                "no_advertise" => o.push(Override::NoAdvertise(parse_bool(&name, &value)?)),
                "connect_retries" => {
                    o.push(Override::ConnectRetries(value.parse().map_err(|_| bad())?))
                }
                "D" | "debug" => o.push(Override::Debug(parse_bool(&name, &value)?)),
                "V" | "trace" | "VV" => o.push(Override::Trace(parse_bool(&name, &value)?)),
                "DV" | "DVV" => {
                    let on = parse_bool(&name, &value)?;
                    o.push(Override::Debug(on));
                    o.push(Override::Trace(on));
                }
                "T" | "logtime" => o.push(Override::Logtime(parse_bool(&name, &value)?)),
                "t" => cli.test_config = parse_bool(&name, &value)?,
                "v" | "version" => cli.show_version = parse_bool(&name, &value)?,
                "h" | "help" | "help_tls" => cli.show_help = true,
                _ => return Err(CliError::Unknown(name)),
            }
        }
        Ok(cli)
    }

    /// Builds the effective options: defaults, then the config file, then the flags.
    pub fn options(&self) -> Result<(Options, Vec<String>), OptionsError> {
        let (mut opts, warnings) = match &self.config {
            Some(path) => Options::from_file(path)?,
            None => (Options::default(), Vec::new()),
        };
        // TLS flags edit the config's `tls` block (or a new one); `--tls`/`--tlsverify` turn it on.
        let mut tls_on = opts.tls.is_some();
        let mut tls = opts.tls.clone().unwrap_or_default();
        let mut tls_flags = false;
        for o in &self.overrides {
            match o.clone() {
                Override::Tls(on) => {
                    tls_on = on;
                    tls_flags = true;
                }
                Override::TlsCert(p) => {
                    tls.cert_file = p;
                    tls_flags = true;
                }
                Override::TlsKey(p) => {
                    tls.key_file = p;
                    tls_flags = true;
                }
                Override::TlsCaCert(p) => {
                    tls.ca_file = Some(p);
                    tls_flags = true;
                }
                Override::TlsVerify(v) => {
                    tls.verify = v;
                    tls_on |= v;
                    tls_flags = true;
                }
                Override::Port(p) => opts.port = p,
                Override::Host(h) => opts.host = h,
                Override::Name(n) => opts.server_name = Some(n),
                Override::User(u) => opts.auth.user = Some(u),
                Override::Pass(p) => opts.auth.password = Some(p),
                Override::Token(t) => opts.auth.token = Some(t),
                Override::Log(l) => opts.log_file = Some(l),
                Override::Pid(p) => opts.pid_file = Some(p),
                Override::PortsFileDir(d) => opts.ports_file_dir = Some(d),
                Override::Debug(d) => opts.debug = d,
                Override::Trace(t) => opts.trace = t,
                Override::Logtime(t) => opts.logtime = t,
                Override::MaxPayload(m) => opts.max_payload = m,
                Override::HttpPort(p) => opts.http_port = Some(p),
                Override::HttpsPort(p) => opts.https_port = Some(p),
                Override::JetStream(on) => {
                    if !on {
                        opts.jetstream = None;
                    } else if opts.jetstream.is_none() {
                        opts.jetstream = Some(crate::jetstream::JetStreamOptions::default());
                    }
                }
                Override::StoreDir(d) => {
                    // As in nats-server, a store directory turns JetStream on.
                    opts.jetstream
                        .get_or_insert_with(Default::default)
                        .store_dir = d;
                }
                Override::Cluster(url) => {
                    let u = crate::cluster::RouteUrl::parse(&url)
                        .map_err(|e| OptionsError::Validation(format!("--cluster: {e}")))?;
                    let c = opts.cluster.get_or_insert_with(Default::default);
                    c.host = u.host;
                    c.port = if u.port == 0 { -1 } else { i32::from(u.port) };
                    if u.user.is_some() {
                        c.user = u.user;
                        c.password = u.password;
                    }
                }
                Override::ClusterName(n) => {
                    opts.cluster.get_or_insert_with(Default::default).name = Some(n)
                }
                Override::Routes(list) => {
                    let c = opts.cluster.get_or_insert_with(Default::default);
                    c.routes.clear();
                    for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                        c.routes.push(
                            crate::cluster::RouteUrl::parse(r)
                                .map_err(|e| OptionsError::Validation(format!("--routes: {e}")))?,
                        );
                    }
                }
                Override::ClusterAdvertise(a) => {
                    opts.cluster.get_or_insert_with(Default::default).advertise = Some(a)
                }
                Override::NoAdvertise(b) => {
                    opts.cluster
                        .get_or_insert_with(Default::default)
                        .no_advertise = b
                }
                Override::ConnectRetries(n) => {
                    opts.cluster
                        .get_or_insert_with(Default::default)
                        .connect_retries = n
                }
            }
        }
        if tls_flags {
            opts.tls = tls_on.then_some(tls);
        }
        opts.validate()?;
        Ok((opts, warnings))
    }
}

pub const USAGE: &str = "\
Usage: natrium [options]

Server Options:
    -a, --addr, --net <host>         Bind to host address (default: 0.0.0.0)
    -p, --port <port>                Use port for clients (default: 4222; -1 picks a random port)
    -n, --name, --server_name <name> Server name (default: server ID)
    -P, --pid <file>                 File to store PID
    -c, --config <file>              Configuration file
    -t                               Test configuration and exit
        --ports_file_dir <dir>       Directory to write the ports file to
                --max_payload <bytes>        Maximum payload size

JetStream Options:
    -js, --jetstream                 Enable JetStream
    -sd, --store_dir <dir>           Directory for JetStream storage (implies -js)
    -m, --http_port <port>           Use port for http monitoring (-1 picks a random port)
    -ms, --https_port <port>         Use port for https monitoring (needs TLS; -1 picks a random port)

Logging Options:
    -l, --log <file>                 File to redirect log output
    -T, --logtime                    Timestamp log entries (default: true)
    -D, --debug                      Enable debugging output
    -V, --trace                      Trace the raw protocol
    -DV                              Debug and trace

TLS Options:
        --tls                        Enable TLS, do not verify clients (default: false)
        --tlscert <file>             Server certificate file
        --tlskey <file>              Private key for server certificate
        --tlsverify                  Enable TLS, verify client certificates
        --tlscacert <file>           Client certificate CA for verification

Authorization Options:
        --user <user>                User required for connections
        --pass <password>            Password required for connections
        --auth <token>               Authorization token required for connections

Cluster Options:
        --routes <rurl-1, rurl-2>    Routes to solicit and connect
        --cluster <cluster-url>      Cluster URL for solicited routes (-1 as port picks one)
        --cluster_name <string>      Cluster Name, if not set one will be dynamically generated
        --no_advertise <bool>        Do not advertise known cluster information to clients
        --cluster_advertise <string> Cluster URL to advertise to other servers
        --connect_retries <number>   For implicit routes, number of connect retries

Common Options:
    -h, --help                       Show this message
    -v, --version                    Show version

Signal Options:
    -sl, --signal <signal>[=<pid>]   Send signal to natrium process (ldm, stop, quit, term, reopen, reload)
                                     <pid> can be either a PID (e.g. 1) or the path to a PID file

Not yet supported (accepted by nats-server; natrium reports an error naming the flag):
        --client_advertise, -s/--syslog, -r/--remote_syslog
";

/// The signal a `--signal` command sends, as nats-server maps them.
pub fn command_signal(command: &str) -> Option<i32> {
    Some(match command {
        "stop" => libc::SIGKILL,
        "quit" => libc::SIGINT,
        "term" => libc::SIGTERM,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        "ldm" => libc::SIGUSR2,
        _ => return None,
    })
}

/// Carries out `--signal CMD[=PID|=PIDFILE]`: without a pid, the single other running process
/// with this program's name is the target. Returns the pids signalled.
pub fn process_signal(spec: &str) -> Result<Vec<i32>, String> {
    let mut parts = spec.split('=');
    let command = parts.next().unwrap_or("");
    let pid_arg = parts.next();
    if let Some(extra) = parts.next() {
        return Err(format!("invalid signal parameters: {extra:?}"));
    }
    let signum = command_signal(command).ok_or_else(|| format!("unknown signal {command:?}"))?;
    let pids = match pid_arg {
        Some(arg) => {
            // A path to a pid file, or the pid itself.
            let text = std::fs::read_to_string(arg).unwrap_or_else(|_| arg.to_string());
            let pid: i32 = text
                .trim()
                .parse()
                .map_err(|_| format!("invalid pid: {}", text.trim()))?;
            vec![pid]
        }
        None => {
            let name = program_name();
            let pids = running_pids(&name);
            match pids.len() {
                0 => return Err(format!("no {name} processes running")),
                1 => pids,
                _ => {
                    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                    return Err(format!(
                        "multiple {name} processes running:\n{}",
                        list.join("\n")
                    ));
                }
            }
        }
    };
    for &pid in &pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signum) } != 0 {
            return Err(format!(
                "signal {command:?} {pid}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(pids)
}

fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "natrium".into())
}

/// Other processes whose command name is `name` (Linux `/proc`; the kernel keeps 15 bytes).
fn running_pids(name: &str) -> Vec<i32> {
    let want: String = name.chars().take(15).collect();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == want)
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, CliError> {
        Cli::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_style_flags() {
        let cli = parse(&[
            "-p",
            "-1",
            "--addr=127.0.0.1",
            "-DV",
            "-T=false",
            "--user",
            "u",
            "-n",
            "x",
        ])
        .expect("parses");
        let (o, _) = cli.options().expect("valid");
        assert_eq!(o.port, -1);
        assert_eq!(o.host, "127.0.0.1");
        assert!(o.debug && o.trace && !o.logtime);
        assert_eq!(o.auth.user.as_deref(), Some("u"));
        assert_eq!(o.server_name.as_deref(), Some("x"));
        assert!(parse(&["-v"]).expect("ok").show_version);
        assert!(parse(&["-t", "-c", "x.conf"]).expect("ok").test_config);
    }

    #[test]
    fn tls_and_signal_flags() {
        let (o, _) = parse(&[
            "--tlsverify",
            "--tlscert",
            "c.pem",
            "--tlskey=k.pem",
            "--tlscacert",
            "ca.pem",
        ])
        .expect("parses")
        .options()
        .expect("valid");
        let t = o.tls.expect("tls on");
        assert!(t.verify);
        assert_eq!(t.cert_file, PathBuf::from("c.pem"));
        assert_eq!(t.key_file, PathBuf::from("k.pem"));
        assert_eq!(t.ca_file, Some(PathBuf::from("ca.pem")));
        let (o, _) = parse(&["--tlscert", "c.pem", "--tlskey", "k.pem"])
            .expect("parses")
            .options()
            .expect("valid");
        assert!(
            o.tls.is_none(),
            "certificate flags alone do not turn TLS on"
        );
        assert!(
            parse(&["--tls"]).expect("parses").options().is_err(),
            "no certificate"
        );
        assert_eq!(
            parse(&["--signal", "reload=123"])
                .expect("parses")
                .signal
                .as_deref(),
            Some("reload=123")
        );
        assert_eq!(
            parse(&["-sl=stop"]).expect("parses").signal.as_deref(),
            Some("stop")
        );
        assert_eq!(command_signal("reload"), Some(libc::SIGHUP));
        assert_eq!(command_signal("ldm"), Some(libc::SIGUSR2));
        assert!(process_signal("bogus=1").is_err());
        assert!(process_signal("reload=1=2").is_err());
        assert!(process_signal("reload=notapid").is_err());
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(parse(&["-bogus"]), Err(CliError::Unknown("bogus".into())));
        assert_eq!(parse(&["-p"]), Err(CliError::MissingValue("p".into())));
        // HTTPS monitoring needs TLS.
        assert!(parse(&["-ms", "-1"]).expect("parses").options().is_err());
        let (o, _) = parse(&["--tls", "--tlscert", "c", "--tlskey", "k", "-ms", "8443"])
            .expect("parses")
            .options()
            .expect("valid");
        assert_eq!(o.https_port, Some(8443));
        let (o, _) = parse(&[
            "--tls",
            "--tlscert",
            "c",
            "--tlskey",
            "k",
            "--https_port=-1",
        ])
        .expect("parses")
        .options()
        .expect("valid");
        assert_eq!(o.https_port, Some(-1));
        let (o, _) = parse(&[
            "--cluster",
            "nats://ruser:rpass@127.0.0.1:-1",
            "--cluster_name",
            "c1",
            "--routes",
            "nats://127.0.0.1:7001, nats://127.0.0.1:7002",
            "--no_advertise",
            "--connect_retries",
            "3",
        ])
        .expect("parses")
        .options()
        .expect("valid");
        let c = o.cluster.expect("cluster on");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", -1));
        assert_eq!(c.user.as_deref(), Some("ruser"));
        assert_eq!(c.name.as_deref(), Some("c1"));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].port, 7002);
        assert!(c.no_advertise);
        assert_eq!(c.connect_retries, 3);
        assert_eq!(
            parse(&["--client_advertise", "x:1"]),
            Err(CliError::NotYet("client_advertise".into()))
        );
        assert!(matches!(
            parse(&["-p", "abc"]),
            Err(CliError::BadValue { .. })
        ));
        assert_eq!(parse(&["extra"]), Err(CliError::Positional("extra".into())));
        let (o, _) = parse(&["-js", "-sd", "/tmp/js"])
            .expect("ok")
            .options()
            .expect("valid");
        assert_eq!(
            o.jetstream.expect("on").store_dir,
            std::path::PathBuf::from("/tmp/js")
        );
    }
}
