//! `ConfigError`, the one error type of this crate.
//! Every variant but `Io` (the top-level file itself) names a position in the source.

use std::path::PathBuf;

use crate::value::Pos;

/// Why a configuration could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is malformed, a number is out of range, or a limit was exceeded.
    #[error("{pos}: {msg}")]
    Syntax { pos: Pos, msg: String },

    /// The file given to [`crate::parse_file`] could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// `$name` is neither a key defined earlier in this or an enclosing block nor an
    /// environment variable.
    #[error("{pos}: unknown variable ${name} (not defined earlier in this or an enclosing block, nor in the environment)")]
    UnknownVariable { pos: Pos, name: String },

    /// An `include` names a file that is already being parsed further up the include chain.
    #[error("{pos}: include cycle: {} is already being included", path.display())]
    IncludeCycle { pos: Pos, path: PathBuf },

    /// Reading or parsing the file named by the `include` at `pos` failed with `source`.
    #[error("{pos}: in file included here: {source}")]
    Include {
        pos: Pos,
        path: PathBuf,
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The position the error points at (for `Include`, the `include` directive), if any.
    pub fn pos(&self) -> Option<&Pos> {
        match self {
            ConfigError::Syntax { pos, .. }
            | ConfigError::UnknownVariable { pos, .. }
            | ConfigError::IncludeCycle { pos, .. }
            | ConfigError::Include { pos, .. } => Some(pos),
            ConfigError::Io { .. } => None,
        }
    }

    /// The innermost error, following `Include` wrappers down to what actually went wrong.
    pub fn root_cause(&self) -> &ConfigError {
        let mut err = self;
        while let ConfigError::Include { source, .. } = err {
            err = source;
        }
        err
    }

    pub(crate) fn syntax(pos: Pos, msg: impl Into<String>) -> Self {
        ConfigError::Syntax {
            pos,
            msg: msg.into(),
        }
    }
}
