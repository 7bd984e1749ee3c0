//! Parser for nats-server's configuration file format into a tree of positioned values.
//! No I/O besides reading the files named by `include`; no async runtime.
//!
//! The format, as nats-server's `conf` package reads it:
//!
//! - The document is an implicit map (optionally wrapped in `{ }`, so JSON parses). Entries
//!   are `key = value`, `key: value` or `key value`; a map may follow its key directly
//!   (`key { ... }`). Entries end at a line end, `,` or `;`. Keys are bare (any run of
//!   characters up to whitespace, `=`, `:`, a bracket, `,`, `;`, `#` or a quote, so `$SYS`
//!   is a key) or quoted (`"key"`, `'key'`, verbatim).
//! - `#` and `//` start comments where a key or the end of a value is expected; inside a
//!   bare value they are text (`url: nats://host`).
//! - Values: maps `{ }`; arrays `[ ]` (elements separated by `,` or line ends, trailing `,`
//!   allowed); `"strings"` with escapes `\t \n \r \" \\ \xHH \uHHHH`; `'raw strings'`;
//!   block strings `( ... )` closed by a line holding only `)`; and bare tokens running to
//!   whitespace, a line end, `,`, `;`, `}` or `]`. A bare token is a boolean (`true`/`false`,
//!   `yes`/`no`, `on`/`off`, any case), an integer (optional `-`, optional size suffix, see
//!   [`parse_size`]), a float (`1.5`), a `$variable`, or else a string (`0.0.0.0`,
//!   `127.0.0.1:4222`, `500ms`). Bare `2m` is the integer 2 000 000: quote durations or use
//!   units that are not size suffixes (`120s`).
//! - `$NAME` is the value of the key `NAME` defined earlier in the current map or an
//!   enclosing one (innermost first, case-sensitive), else the environment variable `NAME`
//!   parsed as a value, else an error. Bare `$2a$...` bcrypt hashes are strings.
//! - `include path` (path bare or quoted) parses that file on its own and appends its
//!   entries to the current map. Relative paths resolve against the including file's
//!   directory ([`parse_str`]: the current directory). Cycles and nesting beyond
//!   [`MAX_INCLUDE_DEPTH`] are errors.
//! - Duplicate keys are kept; [`Map::get`] returns the last, as nats-server does.
//!
//! Limits: nesting of maps, arrays, includes and environment values together is capped at
//! [`MAX_DEPTH`] (about 0.75 MiB of stack in a debug build, much less optimised); files
//! larger than [`MAX_FILE_BYTES`] are refused; variable references may copy at most
//! [`MAX_VARIABLE_VALUES`] values in all. No input panics.
//!
//! ```
//! let conf = natrium_config::parse_str(
//!     "port: 4222\njetstream { max_mem: 1G }\nping_interval: \"2m\"",
//! )?;
//! assert_eq!(conf.get("port").and_then(|v| v.as_i64()), Some(4222));
//! let js = conf.get("jetstream").and_then(|v| v.as_map()).unwrap();
//! assert_eq!(js.get("max_mem").and_then(|v| v.as_i64()), Some(1_000_000_000));
//! let ping = conf.get("ping_interval").and_then(|v| v.as_str()).unwrap();
//! assert_eq!(natrium_config::parse_duration(ping), Some(std::time::Duration::from_secs(120)));
//! # Ok::<(), natrium_config::ConfigError>(())
//! ```

mod error;
mod lexer;
mod parser;
mod scalar;
mod value;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::ConfigError;
pub use parser::{MAX_DEPTH, MAX_FILE_BYTES, MAX_INCLUDE_DEPTH, MAX_VARIABLE_VALUES};
pub use scalar::{parse_duration, parse_size};
pub use value::{Map, Pos, Spanned, Value};

use parser::{parse_document, read_source, Shared};

/// Parses configuration text. Includes resolve relative to the current directory;
/// positions carry no file; variables fall back to the process environment.
pub fn parse_str(src: &str) -> Result<Map, ConfigError> {
    parse_str_with_env(src, &process_env)
}

/// Parses the configuration file at `path`. Includes resolve relative to that file's
/// directory; positions name the file they are in; variables fall back to the process
/// environment.
pub fn parse_file(path: &Path) -> Result<Map, ConfigError> {
    parse_file_with_env(path, &process_env)
}

/// [`parse_str`] with `env` standing in for the process environment.
pub fn parse_str_with_env(
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Map, ConfigError> {
    let mut shared = Shared::new(env);
    parse_document(src, None, PathBuf::new(), &mut shared)
}

/// [`parse_file`] with `env` standing in for the process environment.
pub fn parse_file_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Map, ConfigError> {
    let text = read_source(path, false)?;
    let mut shared = Shared::new(env);
    shared.set_root_file(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_document(
        &text,
        Some(Arc::new(path.to_path_buf())),
        base_dir,
        &mut shared,
    )
}

/// The process environment; names `std::env` cannot look up are treated as unset.
fn process_env(name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return None;
    }
    std::env::var(name).ok()
}
