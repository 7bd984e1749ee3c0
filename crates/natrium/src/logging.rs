//! Log lines in nats-server's format (`[pid] 2006/01/02 15:04:05.000000 [INF] text`), to stderr or
//! a file, so tools that wait for `Server is ready` find it. Used by the binary; embedders bring
//! their own `tracing` subscriber.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]/[month]/[day] [hour]:[minute]:[second].[subsecond digits:6]");

/// Formats events as nats-server does.
pub struct NatsFormat {
    pid: u32,
    logtime: bool,
    offset: UtcOffset,
}

impl NatsFormat {
    /// Call before the runtime starts threads: the local offset can only be read safely then.
    pub fn new(logtime: bool) -> Self {
        NatsFormat {
            pid: std::process::id(),
            logtime,
            offset: UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC),
        }
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
        if self.logtime {
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

/// Installs the global subscriber: level from `debug`/`trace`, output to `file` or stderr.
pub fn init(debug: bool, trace: bool, logtime: bool, file: Option<&Path>) -> std::io::Result<()> {
    let level = if trace {
        Level::TRACE
    } else if debug {
        Level::DEBUG
    } else {
        Level::INFO
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(NatsFormat::new(logtime));
    let result = match file {
        Some(path) => {
            let lf = Arc::new(LogFile {
                path: path.to_path_buf(),
                file: Mutex::new(open_log(path)?),
            });
            let _ = LOG_FILE.set(lf.clone());
            let writer = LogWriter(lf);
            builder.with_writer(move || writer.clone()).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    // A subscriber set earlier (an embedding program's) wins.
    let _ = result;
    Ok(())
}
