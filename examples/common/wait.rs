//! Bounded waiting: every wait in the examples ends after a stated time.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub async fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the async `f` every 25 ms until it returns `Some`, for at most `limit`; errors end the
/// wait.
pub async fn poll<T, F, Fut>(limit: Duration, mut f: F) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(Some(v));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        sleep(Duration::from_millis(25)).await;
    }
}
