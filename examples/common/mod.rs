//! What every example shares: the server it plays against, connections, bounded waits, the
//! captured server log and the list of checks.

pub mod checks;
pub mod cli;
pub mod client;
pub mod logs;
pub mod pull;
pub mod server;
pub mod wait;

pub use checks::Checks;
pub use client::{Conn, Seen};
pub use server::Natrium;
pub use wait::{poll, wait_until};

/// On a cluster: checks (as `what`) that each of `streams` has `want` replicas, a leader and
/// `want - 1` followers, as `$JS.API.STREAM.INFO` reports them.
pub async fn check_replicas(
    c: &mut Checks,
    what: &str,
    js: &async_nats::jetstream::Context,
    streams: &[String],
    want: usize,
) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for s in streams {
        let info = js.get_stream(s).await?.get_info().await?;
        let cl = info.cluster.as_ref();
        seen.push((
            s.clone(),
            info.config.num_replicas,
            cl.and_then(|c| c.leader.clone()).is_some(),
            cl.map_or(0, |c| c.replicas.len()),
        ));
    }
    let ok = seen
        .iter()
        .all(|(_, r, leader, followers)| *r == want && *leader && *followers + 1 == want);
    c.that(
        what,
        ok,
        format!("(stream, replicas, leader, followers): {seen:?}"),
    );
    Ok(())
}

/// Prints one line of an example's narration.
pub fn say(system: &str, text: impl AsRef<str>) {
    println!("[{system}] {}", text.as_ref());
}
