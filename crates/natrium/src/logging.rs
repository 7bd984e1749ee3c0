//! Log lines in nats-server's format (`[pid] 2006/01/02 15:04:05.000000 [INF] text`), to stderr or
//! a file, so tools that wait for `Server is ready` find it. Used by the binary; embedders bring
//! their own `tracing` subscriber.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

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
            let f = Arc::new(OpenOptions::new().create(true).append(true).open(path)?);
            builder.with_writer(f).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    // A subscriber set earlier (an embedding program's) wins.
    let _ = result;
    Ok(())
}
