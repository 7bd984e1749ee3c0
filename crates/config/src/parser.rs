//! Recursive-descent parser: entries, maps, arrays, values, `$variables` and `include`s.
//! Owns the limits: nesting depth (shared by maps, arrays, includes and environment values),
//! include depth and cycles, and the size of a file it will read.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ConfigError;
use crate::lexer::{describe, ends_bare_value, Cursor};
use crate::scalar::{classify_bare, Bare};
use crate::value::{Map, Pos, Spanned, Value};

/// Maximum nesting of maps, arrays, included files and environment-variable values together.
pub const MAX_DEPTH: usize = 128;
/// Maximum depth of nested `include`s.
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Maximum depth of environment variables whose values refer to further variables.
const MAX_ENV_DEPTH: usize = 8;
/// Most values that variable references may copy in one parse, so that variables referring
/// to variables cannot blow a small file up exponentially.
pub const MAX_VARIABLE_VALUES: usize = 1 << 18;
/// Largest configuration file read, top-level or included.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Looks up an environment variable by name.
pub(crate) type EnvLookup<'e> = &'e dyn Fn(&str) -> Option<String>;

/// State shared by the parser of a file, of the files it includes and of environment values.
pub(crate) struct Shared<'e> {
    env: EnvLookup<'e>,
    /// Canonical paths of the files being parsed, outermost first.
    includes: Vec<PathBuf>,
    include_depth: usize,
    depth: usize,
    env_depth: usize,
    /// Values copied by variable references so far.
    copied: usize,
}

impl<'e> Shared<'e> {
    pub fn new(env: EnvLookup<'e>) -> Self {
        Shared {
            env,
            includes: Vec::new(),
            include_depth: 0,
            depth: 0,
            env_depth: 0,
            copied: 0,
        }
    }

    /// Records `canonical` as the file being parsed at the outermost level.
    pub fn set_root_file(&mut self, canonical: PathBuf) {
        self.includes.push(canonical);
    }
}

struct Parser<'a, 's, 'e> {
    cur: Cursor<'a>,
    shared: &'s mut Shared<'e>,
    /// The maps being built, outermost first; variable lookups search them innermost first.
    /// Never empty.
    scopes: Vec<Map>,
    /// Directory that relative include paths resolve against.
    base_dir: PathBuf,
}

/// Parses a whole document (an implicit top-level map).
pub(crate) fn parse_document(
    src: &str,
    file: Option<Arc<PathBuf>>,
    base_dir: PathBuf,
    shared: &mut Shared<'_>,
) -> Result<Map, ConfigError> {
    let mut p = Parser {
        cur: Cursor::new(src, file),
        shared,
        scopes: vec![Map::new()],
        base_dir,
    };
    p.parse_body(None, true)?;
    Ok(p.scopes.pop().unwrap_or_default())
}

/// Reads a configuration file as UTF-8, at most [`MAX_FILE_BYTES`]. I/O failures come back as
/// `ConfigError::Io`; invalid UTF-8 as a syntax error at its position.
pub(crate) fn read_source(path: &Path, regular_only: bool) -> Result<String, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    if regular_only && !file.metadata().map_err(io)?.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io(std::io::Error::other(format!(
            "file is larger than {MAX_FILE_BYTES} bytes"
        ))));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e
            .as_bytes()
            .get(..e.utf8_error().valid_up_to())
            .unwrap_or(&[]);
        let prefix = std::str::from_utf8(valid).unwrap_or("");
        let prefix = prefix.strip_prefix('\u{feff}').unwrap_or(prefix);
        let line = prefix.matches('\n').count() + 1;
        let col = prefix.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        ConfigError::syntax(
            Pos {
                file: Some(Arc::new(path.to_path_buf())),
                line: u32::try_from(line).unwrap_or(u32::MAX),
                col: u32::try_from(col).unwrap_or(u32::MAX),
            },
            "invalid UTF-8",
        )
    })
}

/// "line:col", for pointing at another place in the same file.
fn line_col(pos: &Pos) -> String {
    format!("{}:{}", pos.line, pos.col)
}

impl Parser<'_, '_, '_> {
    /// Parses entries into the innermost scope until the end of input (`open` is `None`) or
    /// the `}` matching the `{` at `open`. `top` allows bare `{ ... }` blocks whose entries
    /// belong to the top-level map (so a JSON document parses).
    fn parse_body(&mut self, open: Option<&Pos>, top: bool) -> Result<(), ConfigError> {
        loop {
            self.cur.skip_trivia();
            match self.cur.peek() {
                None => {
                    return match open {
                        None => Ok(()),
                        Some(open) => Err(ConfigError::syntax(
                            self.cur.pos(),
                            format!(
                                "expected '}}' to close the map opened at {}, found end of input",
                                line_col(open)
                            ),
                        )),
                    };
                }
                Some(',' | ';') => {
                    self.cur.bump();
                }
                Some('}') => {
                    if open.is_some() {
                        self.cur.bump();
                        return Ok(());
                    }
                    // nats-server tolerates stray closing braces at the very end of a file
                    // (left over from JSON-like documents); anywhere else they are errors.
                    let pos = self.cur.pos();
                    while self.cur.peek() == Some('}') {
                        self.cur.bump();
                        self.cur.skip_trivia();
                    }
                    if self.cur.at_eof() {
                        return Ok(());
                    }
                    return Err(ConfigError::syntax(pos, "unexpected '}' with no map open"));
                }
                Some('{') if top => {
                    let pos = self.cur.pos();
                    self.cur.bump();
                    self.enter(&pos)?;
                    let result = self.parse_body(Some(&pos), true);
                    self.leave();
                    result?;
                }
                Some(c @ ('{' | '[' | ']' | '=' | ':')) => {
                    return Err(ConfigError::syntax(
                        self.cur.pos(),
                        format!("expected a key, found {}", describe(Some(c))),
                    ));
                }
                Some(_) => self.parse_entry()?,
            }
        }
    }

    /// Parses `key [=|:] value` or `include path`, then the end of the entry.
    fn parse_entry(&mut self) -> Result<(), ConfigError> {
        let key = self.cur.read_key()?;
        if !key.quoted && key.text.eq_ignore_ascii_case("include") && self.at_include_path() {
            return self.parse_include(key.pos);
        }

        // A bare separator-less key may be followed by its value on a later line, as in
        // nats-server; after `=` or `:` the value must be on the same line.
        self.cur.skip_whitespace();
        let mut separator = None;
        if let Some(c @ ('=' | ':')) = self.cur.peek() {
            self.cur.bump();
            self.cur.skip_blanks();
            separator = Some(c);
        }
        let found = if self.cur.at_comment() {
            Some("a comment".to_string())
        } else {
            match self.cur.peek() {
                None => Some(describe(None)),
                Some(c) if ends_bare_value(c) => Some(describe(Some(c))),
                Some(_) => None,
            }
        };
        if let Some(found) = found {
            let after = separator
                .map(|c| format!(" after '{c}'"))
                .unwrap_or_default();
            return Err(ConfigError::syntax(
                self.cur.pos(),
                format!(
                    "expected a value{after} for key '{}', found {found}",
                    key.text
                ),
            ));
        }
        let value = self.parse_value()?;
        let what = format!("the value of '{}'", key.text);
        self.push_entry(key.text, key.pos, value);
        self.expect_entry_end(&what)
    }

    /// After a bare `include` key: whether what follows is an include path (blanks, then
    /// anything but `=` or `:`) rather than the value of a key named "include".
    fn at_include_path(&self) -> bool {
        match self.cur.peek() {
            Some(' ' | '\t') => !matches!(self.cur.peek_after_blanks(), Some('=' | ':')),
            Some('\n' | '\r') | None => true,
            _ => false,
        }
    }

    /// After the value of an entry: blanks, an optional comment, then a line end, `,`, `;`,
    /// `}` or the end of input (none of which is consumed).
    fn expect_entry_end(&mut self, what: &str) -> Result<(), ConfigError> {
        self.cur.skip_blanks_and_comment();
        match self.cur.peek() {
            None | Some('\n' | '\r' | ',' | ';' | '}') => Ok(()),
            found => Err(ConfigError::syntax(
                self.cur.pos(),
                format!(
                    "expected a line end, ',' or ';' after {what}, found {}",
                    describe(found)
                ),
            )),
        }
    }

    fn push_entry(&mut self, key: String, key_pos: Pos, value: Spanned) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(key, key_pos, value);
        }
    }

    fn enter(&mut self, pos: &Pos) -> Result<(), ConfigError> {
        if self.shared.depth >= MAX_DEPTH {
            return Err(ConfigError::syntax(
                pos.clone(),
                format!("nesting is deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.shared.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.shared.depth = self.shared.depth.saturating_sub(1);
    }

    fn parse_value(&mut self) -> Result<Spanned, ConfigError> {
        let pos = self.cur.pos();
        let value = match self.cur.peek() {
            Some('{') => {
                self.cur.bump();
                self.enter(&pos)?;
                self.scopes.push(Map::new());
                let result = self.parse_body(Some(&pos), false);
                let map = self.scopes.pop().unwrap_or_default();
                self.leave();
                result?;
                Value::Map(map)
            }
            Some('[') => {
                self.cur.bump();
                self.enter(&pos)?;
                let result = self.parse_array_items(&pos);
                self.leave();
                Value::Array(result?)
            }
            Some('"') => Value::String(self.cur.read_dq_string()?),
            Some('\'') => Value::String(self.cur.read_sq_string()?),
            Some('(') => Value::String(self.cur.read_block_string()?),
            Some(c) if !ends_bare_value(c) => {
                let token = self.cur.read_bare()?;
                if token.escaped {
                    Value::String(token.text)
                } else if let Some(name) = token.text.strip_prefix('$') {
                    return self.resolve_variable(name, pos);
                } else {
                    match classify_bare(&token.text) {
                        Ok(Bare::Bool(b)) => Value::Bool(b),
                        Ok(Bare::Integer(n)) => Value::Integer(n),
                        Ok(Bare::Float(x)) => Value::Float(x),
                        Ok(Bare::String) => Value::String(token.text),
                        Err(msg) => return Err(ConfigError::syntax(pos, msg)),
                    }
                }
            }
            found => {
                return Err(ConfigError::syntax(
                    pos,
                    format!("expected a value, found {}", describe(found)),
                ))
            }
        };
        Ok(Spanned::new(value, pos))
    }

    /// Parses array elements after the `[` at `open`, through the closing `]`. Elements are
    /// separated by `,` or line ends; a trailing `,` is allowed.
    fn parse_array_items(&mut self, open: &Pos) -> Result<Vec<Spanned>, ConfigError> {
        let unclosed = |cur: &Cursor<'_>| {
            ConfigError::syntax(
                cur.pos(),
                format!(
                    "expected ']' to close the array opened at {}, found end of input",
                    line_col(open)
                ),
            )
        };
        let mut items = Vec::new();
        loop {
            self.cur.skip_trivia();
            match self.cur.peek() {
                None => return Err(unclosed(&self.cur)),
                Some(']') => {
                    self.cur.bump();
                    return Ok(items);
                }
                Some(c @ (',' | ';' | '}')) => {
                    return Err(ConfigError::syntax(
                        self.cur.pos(),
                        format!(
                            "expected an array element or ']' to close the array opened at {}, found {}",
                            line_col(open),
                            describe(Some(c))
                        ),
                    ))
                }
                Some(_) => {}
            }
            items.push(self.parse_value()?);
            self.cur.skip_blanks_and_comment();
            match self.cur.peek() {
                Some(',') => {
                    self.cur.bump();
                }
                Some('\n' | '\r') => {}
                Some(']') => {
                    self.cur.bump();
                    return Ok(items);
                }
                None => return Err(unclosed(&self.cur)),
                found => {
                    return Err(ConfigError::syntax(
                        self.cur.pos(),
                        format!(
                            "expected ',' or ']' after an array element, found {}",
                            describe(found)
                        ),
                    ))
                }
            }
        }
    }

    /// Resolves `$name` referenced at `pos`: a key defined earlier in the current or an
    /// enclosing map (innermost first, case-sensitive, the last definition), else the
    /// environment variable `name`, whose text is parsed as a value.
    fn resolve_variable(&mut self, name: &str, pos: Pos) -> Result<Spanned, ConfigError> {
        if name.is_empty() {
            return Err(ConfigError::syntax(
                pos,
                "expected a variable name after '$'",
            ));
        }
        // A bare bcrypt hash such as $2a$11$... is a string, not a variable (nats-server
        // special-cases "2a$"; "2b$" and "2y$" are the other bcrypt versions).
        if ["2a$", "2b$", "2y$"].iter().any(|p| name.starts_with(p)) {
            return Ok(Spanned::new(Value::String(format!("${name}")), pos));
        }
        let defined = self
            .scopes
            .iter_mut()
            .rev()
            .find_map(|scope| scope.lookup_var(name));
        if let Some(found) = defined {
            let budget = MAX_VARIABLE_VALUES.saturating_sub(self.shared.copied);
            let size = found.count_values(budget.saturating_add(1));
            if size > budget {
                return Err(ConfigError::syntax(
                    pos,
                    format!(
                        "variable references copy more than {MAX_VARIABLE_VALUES} values in total"
                    ),
                ));
            }
            self.shared.copied += size;
            let mut value = found.clone();
            value.pos = pos;
            return Ok(value);
        }
        let valid_env_name = !name.contains(['=', '\0']);
        if let Some(text) = valid_env_name.then(|| (self.shared.env)(name)).flatten() {
            return self.parse_env_value(name, &text, pos);
        }
        Err(ConfigError::UnknownVariable {
            pos,
            name: name.to_string(),
        })
    }

    /// Parses the text of environment variable `name` as one value, as nats-server does (so
    /// `2MB` becomes an integer and `{a: 1}` a map). Everything in it gets position `pos`.
    fn parse_env_value(
        &mut self,
        name: &str,
        text: &str,
        pos: Pos,
    ) -> Result<Spanned, ConfigError> {
        if self.shared.env_depth >= MAX_ENV_DEPTH {
            return Err(ConfigError::syntax(
                pos,
                format!(
                    "environment variable ${name} refers to variables more than {MAX_ENV_DEPTH} deep (a cycle?)"
                ),
            ));
        }
        self.enter(&pos)?;
        self.shared.env_depth += 1;
        let result = parse_single_value(text, self.base_dir.clone(), self.shared);
        self.shared.env_depth -= 1;
        self.leave();
        match result {
            Ok(mut value) => {
                value.relocate(&pos);
                Ok(value)
            }
            Err(e) => Err(ConfigError::syntax(
                pos,
                format!("in the value of environment variable ${name}: {e}"),
            )),
        }
    }

    /// Parses `include path` after the key `include` at `pos`.
    fn parse_include(&mut self, pos: Pos) -> Result<(), ConfigError> {
        self.cur.skip_blanks();
        let path_pos = self.cur.pos();
        let found = self.cur.peek();
        let path = match self.cur.read_include_path()? {
            Some(path) if !path.is_empty() => path,
            _ => {
                return Err(ConfigError::syntax(
                    path_pos,
                    format!(
                        "expected a file path after 'include', found {}",
                        describe(found)
                    ),
                ))
            }
        };
        self.include(&pos, &path)?;
        self.expect_entry_end("the include path")
    }

    /// Parses the file `path` (relative to `base_dir`) and appends its entries to the
    /// innermost scope. The file is parsed on its own: it does not see this file's
    /// variables, but keys it defines are visible to later references here.
    fn include(&mut self, pos: &Pos, path: &str) -> Result<(), ConfigError> {
        if self.shared.include_depth >= MAX_INCLUDE_DEPTH {
            return Err(ConfigError::syntax(
                pos.clone(),
                format!("includes are nested more than {MAX_INCLUDE_DEPTH} deep"),
            ));
        }
        let resolved = self.base_dir.join(path);
        let wrap = |source: ConfigError| ConfigError::Include {
            pos: pos.clone(),
            path: resolved.clone(),
            source: Box::new(source),
        };
        let canonical = fs::canonicalize(&resolved).map_err(|source| {
            wrap(ConfigError::Io {
                path: resolved.clone(),
                source,
            })
        })?;
        if self.shared.includes.contains(&canonical) {
            return Err(ConfigError::IncludeCycle {
                pos: pos.clone(),
                path: resolved,
            });
        }
        let text = read_source(&resolved, true).map_err(wrap)?;
        let base_dir = resolved.parent().map(Path::to_path_buf).unwrap_or_default();
        let file = Some(Arc::new(resolved.clone()));

        self.enter(pos)?;
        self.shared.includes.push(canonical);
        self.shared.include_depth += 1;
        let result = parse_document(&text, file, base_dir, self.shared);
        self.shared.include_depth -= 1;
        self.shared.includes.pop();
        self.leave();

        let map = result.map_err(wrap)?;
        if let Some(scope) = self.scopes.last_mut() {
            scope.append(map);
        }
        Ok(())
    }
}

/// Parses `text` as a single value (surrounding whitespace and comments allowed); blank text
/// is the empty string.
fn parse_single_value(
    text: &str,
    base_dir: PathBuf,
    shared: &mut Shared<'_>,
) -> Result<Spanned, ConfigError> {
    let mut p = Parser {
        cur: Cursor::new(text, None),
        shared,
        scopes: vec![Map::new()],
        base_dir,
    };
    p.cur.skip_blanks();
    if p.cur.at_eof() {
        return Ok(Spanned::new(Value::String(String::new()), p.cur.pos()));
    }
    let value = p.parse_value()?;
    p.cur.skip_trivia();
    if !p.cur.at_eof() {
        return Err(ConfigError::syntax(
            p.cur.pos(),
            format!(
                "expected the end of the value, found {}",
                describe(p.cur.peek())
            ),
        ));
    }
    Ok(value)
}
