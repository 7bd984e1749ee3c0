//! `natrium-examples <system>`: runs one seed system against an embedded Natrium, or against the
//! one `--url` names, and exits non-zero when something it shows did not happen.

use std::process::ExitCode;

use natrium::Options;
use natrium_examples::common::cli::{finish, Args};
use natrium_examples::{chat, streamspace, tapio, wegweiser};

const USAGE: &str = "natrium-examples <system> [--cluster N] [--url nats://HOST:PORT[,...]
                  [--monitor http://HOST:PORT[,...]] [--websocket ws://HOST:PORT[,...]]] [--quiet]

systems (examples/<system>/README.md says what each shows):
  wegweiser    seeds 000 and 001: tenants, agents, the always-on receiver, the back end
               --url: natrium -c examples/wegweiser/natrium.conf  (monitoring on 8222,
               WebSocket on 8080)
  tapio        seed 002: collectors, correlation engine, SIEM exporter
               --url: natrium -c examples/tapio/natrium.conf  (monitoring on 7777)
  chat         seed 003: back-end pods, workflow service, monitoring
               --url: natrium -c examples/chat/natrium.conf  (monitoring on 8222)
  streamspace  seed 004: the API and its Kubernetes and Docker controllers
               --url: natrium --jetstream --store_dir ./data -m 8222  (as its compose file)

Without --url the system embeds a Natrium started from that same configuration (loopback,
random ports, the store in a temporary directory) and also restarts it to show an outage.
--cluster N embeds N such servers n1..nN as one cluster (a store each; every client is given
all N URLs), its streams replicated as its seed asks, and also stops one node to show a node's
loss. With --url, --cluster N says the comma-separated URLs are the N nodes of one cluster.
The embedded server's log goes to stderr (--quiet: not).";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse(USAGE);
    let (config, base) = match args.system.as_str() {
        "wegweiser" => (wegweiser::CONFIG, Options::default()),
        "tapio" => (tapio::CONFIG, Options::default()),
        "chat" => (chat::CONFIG, Options::default()),
        "streamspace" => ("", streamspace::compose_options()),
        other => {
            eprintln!("no system {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut n = match args.natrium(config, base).await {
        Ok(n) => n,
        Err(e) => return finish(Err(e)),
    };
    let r = match args.system.as_str() {
        "wegweiser" => wegweiser::run(&mut n).await,
        "tapio" => tapio::run(&mut n).await,
        "chat" => chat::run(&mut n).await,
        _ => streamspace::run(&mut n).await,
    };
    n.shutdown().await;
    finish(r)
}
