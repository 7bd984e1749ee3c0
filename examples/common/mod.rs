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

/// Prints one line of an example's narration.
pub fn say(system: &str, text: impl AsRef<str>) {
    println!("[{system}] {}", text.as_ref());
}
