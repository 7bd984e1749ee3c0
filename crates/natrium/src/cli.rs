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
    JetStream(bool),
    StoreDir(PathBuf),
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

/// Flags that nats-server has and later natrium work adds (JetStream, monitoring, TLS, cluster).
const NOT_YET: &[&str] = &[
    "ms",
    "https_port",
    "tls",
    "tlscert",
    "tlskey",
    "tlscacert",
    "tlsverify",
    "cluster",
    "cluster_name",
    "cluster_listen",
    "routes",
    "no_advertise",
    "cluster_advertise",
    "connect_retries",
    "client_advertise",
    "sl",
    "signal",
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
        | "max_payload" | "m" | "http_port" | "sd" | "store_dir" => Value,
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
                "js" | "jetstream" => o.push(Override::JetStream(parse_bool(&name, &value)?)),
                "sd" | "store_dir" => o.push(Override::StoreDir(value.into())),
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
        for o in &self.overrides {
            match o.clone() {
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
            }
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

Logging Options:
    -l, --log <file>                 File to redirect log output
    -T, --logtime                    Timestamp log entries (default: true)
    -D, --debug                      Enable debugging output
    -V, --trace                      Trace the raw protocol
    -DV                              Debug and trace

Authorization Options:
        --user <user>                User required for connections
        --pass <password>            Password required for connections
        --auth <token>               Authorization token required for connections

Common Options:
    -h, --help                       Show this message
    -v, --version                    Show version

Not yet supported (accepted by nats-server; natrium reports an error naming the flag):
        -ms/--https_port, --tls*, --cluster*, --routes,
    --signal, -s/--syslog, -r/--remote_syslog
";

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
    fn errors_name_the_flag() {
        assert_eq!(parse(&["-bogus"]), Err(CliError::Unknown("bogus".into())));
        assert_eq!(parse(&["-p"]), Err(CliError::MissingValue("p".into())));
        assert_eq!(parse(&["-ms", "8222"]), Err(CliError::NotYet("ms".into())));
        assert!(matches!(
            parse(&["-p", "abc"]),
            Err(CliError::BadValue { .. })
        ));
        assert_eq!(parse(&["extra"]), Err(CliError::Positional("extra".into())));
        assert!(parse(&["--tls"])
            .expect_err("not yet")
            .to_string()
            .contains("-tls"));
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
