//! Log lines in nats-server's format (`[pid] 2006/01/02 15:04:05.000000 [INF] text`), to stderr or
//! a file, so tools that wait for `Server is ready` find it; the level (`debug`, `trace`) and
//! `logtime` change on reload. Used by the binary; embedders bring their own `tracing` subscriber.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]/[month]/[day] [hour]:[minute]:[second].[subsecond digits:6]");

/// Whether lines carry the time (`logtime`; reloadable).
static LOGTIME: AtomicBool = AtomicBool::new(true);

/// Whether protocol lines are traced (`-V`, `trace: true`); read on the message path, so a
/// plain flag rather than asking the subscriber.
static PROTOCOL_TRACE: AtomicBool = AtomicBool::new(false);

/// Whether to trace protocol lines (`<<- [PUB ...]`, `->> [MSG ...]`) at TRACE level.
pub fn protocol_trace() -> bool {
    PROTOCOL_TRACE.load(Ordering::Relaxed)
}

/// Changes the level of the subscriber `init` installed (nothing without one).
static LEVEL: OnceLock<reload::Handle<LevelFilter, Registry>> = OnceLock::new();

/// Formats events as nats-server does.
pub struct NatsFormat {
    pid: u32,
    offset: UtcOffset,
}

impl NatsFormat {
    /// Call before the runtime starts threads: the local offset can only be read safely then.
    pub fn new(logtime: bool) -> Self {
        LOGTIME.store(logtime, Ordering::Relaxed);
        NatsFormat {
            pid: std::process::id(),
            offset: UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC),
        }
    }
}

fn level_for(debug: bool, trace: bool) -> LevelFilter {
    if trace {
        LevelFilter::TRACE
    } else if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    }
}

/// Applies reloaded `debug`, `trace` and `logtime` to the subscriber `init` installed.
pub fn set_levels(debug: bool, trace: bool, logtime: bool) {
    LOGTIME.store(logtime, Ordering::Relaxed);
    PROTOCOL_TRACE.store(trace, Ordering::Relaxed);
    if let Some(h) = LEVEL.get() {
        let _ = h.modify(|l| *l = level_for(debug, trace));
    }
}

fn level_tag(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "ERR",
        Level::WARN => "WRN",
        Level::INFO => "INF",
        Level::DEBUG => "DBG",
        Level::TRACE => "TRC",
    }
}

impl<S, N> FormatEvent<S, N> for NatsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(w, "[{}] ", self.pid)?;
        if LOGTIME.load(Ordering::Relaxed) {
            let now = OffsetDateTime::now_utc().to_offset(self.offset);
            if let Ok(t) = now.format(TIME_FORMAT) {
                write!(w, "{t} ")?;
            }
        }
        write!(w, "[{}] ", level_tag(event.metadata().level()))?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The log file, reopened on `SIGUSR1` (`--signal reopen`) so rotated logs are let go.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// A handle `tracing` writes through; every write goes to the currently open file.
#[derive(Clone)]
struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.file.lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.file.lock().flush()
    }
}

static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopens the log file (after rotation). Without a log file there is nothing to do.
pub fn reopen() -> std::io::Result<()> {
    if let Some(lf) = LOG_FILE.get() {
        let f = open_log(&lf.path)?;
        *lf.file.lock() = f;
    }
    Ok(())
}

/// Installs the global subscriber: level from `debug`/`trace` (changed later by `set_levels`),
/// output to `file` or stderr.
pub fn init(debug: bool, trace: bool, logtime: bool, file: Option<&Path>) -> std::io::Result<()> {
    PROTOCOL_TRACE.store(trace, Ordering::Relaxed);
    let (filter, handle) = reload::Layer::new(level_for(debug, trace));
    let format = NatsFormat::new(logtime);
    // openraft narrates every vote, append and unreachable peer; Natrium logs what matters of
    // it (leaders, damage, membership) itself. NATRIUM_RAFT_LOG=1 shows openraft's own.
    let raft_log = std::env::var_os("NATRIUM_RAFT_LOG").is_some();
    let quiet_raft = tracing_subscriber::filter::filter_fn(move |m| {
        raft_log || !m.target().starts_with("openraft")
    });
    let registry = tracing_subscriber::registry().with(filter).with(quiet_raft);
    let result = match file {
        Some(path) => {
            let lf = Arc::new(LogFile {
                path: path.to_path_buf(),
                file: Mutex::new(open_log(path)?),
            });
            let _ = LOG_FILE.set(lf.clone());
            let writer = LogWriter(lf);
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .event_format(format)
                        // A log file gets plain text: no ANSI styling of event fields.
                        .with_ansi(false)
                        .with_writer(move || writer.clone()),
                )
                .try_init()
        }
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    // Styled only when a person reads it: not when stderr goes to a file or pipe.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A subscriber set earlier (an embedding program's) wins.
    if result.is_ok() {
        let _ = LEVEL.set(handle);
    }
    Ok(())
}
