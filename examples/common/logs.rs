//! The embedded server's log: every warning and error it writes is kept in memory (so an example
//! can show, and its test assert, what the server audited), and the binaries also print the
//! log to stderr in nats-server's format.

use std::fmt::Write as _;
use std::sync::OnceLock;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Most lines kept; older ones are dropped first.
const KEEP: usize = 20_000;

/// The lines kept, each with its number (counting every line ever captured).
static LINES: OnceLock<Mutex<Lines>> = OnceLock::new();

#[derive(Default)]
struct Lines {
    next: u64,
    kept: Vec<(u64, String)>,
}

fn lines() -> &'static Mutex<Lines> {
    LINES.get_or_init(|| Mutex::new(Lines::default()))
}

/// Installs the process's log subscriber once: the server's warnings and errors are captured;
/// with `echo`, its lines at `INFO` and above are also printed to stderr as nats-server prints
/// them. Later calls
/// do nothing (tests share one process).
pub fn install(echo: bool) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // The server's lines only (the client library logs through `tracing` too).
        let capture = Capture.with_filter(Targets::new().with_target("natrium", Level::WARN));
        let print = echo.then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(natrium::logging::NatsFormat::new(true))
                .with_filter(Targets::new().with_target("natrium", Level::INFO))
        });
        let _ = tracing_subscriber::registry()
            .with(capture)
            .with(print)
            .try_init();
    });
}

/// Captured warnings and errors containing every one of `needles`.
pub fn matching(needles: &[&str]) -> Vec<String> {
    matching_since(0, needles)
}

/// Where the log is now: `matching_since` with it sees only the lines captured after.
pub fn mark() -> u64 {
    lines().lock().next
}

/// Captured warnings and errors since `mark` containing every one of `needles`.
pub fn matching_since(mark: u64, needles: &[&str]) -> Vec<String> {
    lines()
        .lock()
        .kept
        .iter()
        .filter(|(n, l)| *n >= mark && needles.iter().all(|x| l.contains(x)))
        .map(|(_, l)| l.clone())
        .collect()
}

struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => "[ERR]",
            Level::WARN => "[WRN]",
            _ => "[INF]",
        };
        let mut text = Text(String::new());
        event.record(&mut text);
        let mut l = lines().lock();
        if l.kept.len() >= KEEP {
            l.kept.drain(..KEEP / 2);
        }
        let n = l.next;
        l.next += 1;
        l.kept.push((n, format!("{level} {}", text.0)));
    }
}

/// The event's message, then its other fields as `name=value`.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}
