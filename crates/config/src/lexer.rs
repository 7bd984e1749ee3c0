//! A character cursor over one source text with line/column tracking, and the token readers
//! the parser calls in context: keys, quoted/bare/block strings, include paths, trivia.
//!
//! The format is context-sensitive (`#` starts a comment only where a value or key may end or
//! begin; a bare value runs to whitespace), so the parser drives these readers directly
//! instead of consuming a token stream.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::value::Pos;

pub(crate) struct Cursor<'a> {
    src: &'a str,
    off: usize,
    line: u32,
    col: u32,
    file: Option<Arc<PathBuf>>,
}

/// A key as written, without quotes.
pub(crate) struct Key {
    pub text: String,
    pub quoted: bool,
    pub pos: Pos,
}

/// A bare (unquoted) value token.
pub(crate) struct BareToken {
    pub text: String,
    /// Whether a backslash escape was decoded; such a token is always a plain string.
    pub escaped: bool,
}

/// Characters that end a bare key.
fn ends_bare_key(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '=' | ':' | '{' | '}' | '[' | ']' | ',' | ';' | '#' | '"' | '\''
        )
}

/// Characters that end a bare value.
pub(crate) fn ends_bare_value(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | ',' | ';' | '}' | ']')
}

/// A description of what was found, for "expected X, found Y" messages.
pub(crate) fn describe(c: Option<char>) -> String {
    match c {
        None => "end of input".to_string(),
        Some('\n') | Some('\r') => "end of line".to_string(),
        Some(c) => format!("'{}'", c.escape_debug()),
    }
}

impl<'a> Cursor<'a> {
    pub fn new(src: &'a str, file: Option<Arc<PathBuf>>) -> Self {
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        Cursor {
            src,
            off: 0,
            line: 1,
            col: 1,
            file,
        }
    }

    pub fn pos(&self) -> Pos {
        Pos {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
        }
    }

    fn rest(&self) -> &'a str {
        self.src.get(self.off..).unwrap_or("")
    }

    pub fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    pub fn peek2(&self) -> Option<char> {
        let mut it = self.rest().chars();
        it.next();
        it.next()
    }

    pub fn at_eof(&self) -> bool {
        self.off >= self.src.len()
    }

    pub fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.off += c.len_utf8();
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    /// The first character after any spaces and tabs, without consuming anything.
    pub fn peek_after_blanks(&self) -> Option<char> {
        self.rest().chars().find(|c| !matches!(c, ' ' | '\t'))
    }

    /// Whether a `#` or `//` comment starts here.
    pub fn at_comment(&self) -> bool {
        match self.peek() {
            Some('#') => true,
            Some('/') => self.peek2() == Some('/'),
            _ => false,
        }
    }

    /// Skips a comment up to (not including) the end of its line.
    pub fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' || c == '\r' {
                break;
            }
            self.bump();
        }
    }

    /// Skips spaces and tabs.
    pub fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }

    /// Skips spaces, tabs and comments, stopping at a line end.
    pub fn skip_blanks_and_comment(&mut self) {
        self.skip_blanks();
        if self.at_comment() {
            self.skip_comment();
        }
    }

    /// Skips all whitespace (line ends included) and comments.
    pub fn skip_trivia(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                _ if self.at_comment() => self.skip_comment(),
                _ => return,
            }
        }
    }

    /// Skips all whitespace, line ends included, but not comments.
    pub fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_whitespace()) {
            self.bump();
        }
    }

    /// Reads a key: `"quoted"`, `'quoted'` (both verbatim, on one line), or bare (up to
    /// whitespace, a separator, a bracket or a quote).
    pub fn read_key(&mut self) -> Result<Key, ConfigError> {
        let pos = self.pos();
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                let text = self.read_one_line_quoted(q, "quoted key")?;
                Ok(Key {
                    text,
                    quoted: true,
                    pos,
                })
            }
            _ => {
                let start = self.off;
                while matches!(self.peek(), Some(c) if !ends_bare_key(c)) {
                    self.bump();
                }
                if self.off == start {
                    return Err(ConfigError::syntax(
                        pos,
                        format!("expected a key, found {}", describe(self.peek())),
                    ));
                }
                let text = self.src.get(start..self.off).unwrap_or("").to_string();
                Ok(Key {
                    text,
                    quoted: false,
                    pos,
                })
            }
        }
    }

    /// Reads `q`-quoted text verbatim, which must end on the same line (the cursor is on the
    /// opening quote).
    fn read_one_line_quoted(&mut self, q: char, what: &str) -> Result<String, ConfigError> {
        let pos = self.pos();
        self.bump();
        let start = self.off;
        loop {
            match self.peek() {
                Some(c) if c == q => break,
                None | Some('\n' | '\r') => {
                    return Err(ConfigError::syntax(
                        pos,
                        format!("unterminated {what} (missing closing {q} on the same line)"),
                    ))
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
        let text = self.src.get(start..self.off).unwrap_or("").to_string();
        self.bump();
        Ok(text)
    }

    /// Reads a double-quoted string (the cursor is on the opening quote), decoding escapes.
    /// The string may span lines.
    pub fn read_dq_string(&mut self) -> Result<String, ConfigError> {
        let open = self.pos();
        self.bump();
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ConfigError::syntax(
                        open,
                        "unterminated string (missing closing \")",
                    ));
                }
                Some('"') => {
                    self.bump();
                    break;
                }
                Some('\\') => self.read_escape(&mut out)?,
                Some(c) => {
                    self.bump();
                    push_char(&mut out, c);
                }
            }
        }
        String::from_utf8(out)
            .map_err(|_| ConfigError::syntax(open, "string escapes (\\x) do not form valid UTF-8"))
    }

    /// Reads a single-quoted string verbatim (the cursor is on the opening quote).
    pub fn read_sq_string(&mut self) -> Result<String, ConfigError> {
        let open = self.pos();
        self.bump();
        let start = self.off;
        loop {
            match self.peek() {
                None => {
                    return Err(ConfigError::syntax(
                        open,
                        "unterminated string (missing closing ')",
                    ));
                }
                Some('\'') => break,
                Some(_) => {
                    self.bump();
                }
            }
        }
        let text = self.src.get(start..self.off).unwrap_or("").to_string();
        self.bump();
        Ok(text)
    }

    /// Reads a bare value up to whitespace, a line end, `,`, `;`, `}` or `]`, decoding
    /// backslash escapes as nats-server does. The caller has checked that one character of
    /// the token is present.
    pub fn read_bare(&mut self) -> Result<BareToken, ConfigError> {
        let start_pos = self.pos();
        let mut out = Vec::new();
        let mut escaped = false;
        while let Some(c) = self.peek() {
            if ends_bare_value(c) {
                break;
            }
            if c == '\\' {
                self.read_escape(&mut out)?;
                escaped = true;
            } else {
                self.bump();
                push_char(&mut out, c);
            }
        }
        let text = String::from_utf8(out)
            .map_err(|_| ConfigError::syntax(start_pos, "escapes (\\x) do not form valid UTF-8"))?;
        Ok(BareToken { text, escaped })
    }

    /// Decodes one escape; the cursor is on the backslash.
    fn read_escape(&mut self, out: &mut Vec<u8>) -> Result<(), ConfigError> {
        let at = self.pos();
        self.bump();
        let bad = |what: String| {
            ConfigError::syntax(
                at.clone(),
                format!(
                    "invalid escape {what}; allowed escapes are \\t \\n \\r \\\" \\\\ \\xHH \\uHHHH"
                ),
            )
        };
        match self.bump() {
            Some('t') => out.push(b'\t'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('"') => out.push(b'"'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let v = self
                    .read_hex(2)
                    .ok_or_else(|| bad("'\\x' (expected two hexadecimal digits)".to_string()))?;
                out.push(u8::try_from(v).unwrap_or(b'?'));
            }
            Some('u') => {
                let c = self.read_hex(4).and_then(char::from_u32).ok_or_else(|| {
                    bad("'\\u' (expected four hexadecimal digits naming a character)".to_string())
                })?;
                push_char(out, c);
            }
            other => return Err(bad(describe_escape(other))),
        }
        Ok(())
    }

    fn read_hex(&mut self, digits: usize) -> Option<u32> {
        let mut v: u32 = 0;
        for _ in 0..digits {
            let d = self.peek()?.to_digit(16)?;
            self.bump();
            v = v * 16 + d;
        }
        Some(v)
    }

    /// Reads a block string: the cursor is on `(`; the text runs to a line holding only `)`
    /// in its first column. The value is everything after `(` up to and including the line
    /// end before that `)`.
    pub fn read_block_string(&mut self) -> Result<String, ConfigError> {
        let open = self.pos();
        self.bump();
        let start = self.off;
        loop {
            match self.peek() {
                None => {
                    return Err(ConfigError::syntax(
                        open,
                        "unterminated block string: expected a line holding only ')'",
                    ))
                }
                Some('\n') => {
                    self.bump();
                    let closes = self.peek() == Some(')')
                        && matches!(self.peek2(), None | Some('\n' | '\r'));
                    if closes {
                        let text = self.src.get(start..self.off).unwrap_or("").to_string();
                        self.bump();
                        return Ok(text);
                    }
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    /// Reads the path of an `include`: `"..."` or `'...'` verbatim, or bare up to whitespace,
    /// a line end, `;`, `,` or `}`. Returns `None` when no path starts here.
    pub fn read_include_path(&mut self) -> Result<Option<String>, ConfigError> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => Ok(Some(self.read_one_line_quoted(q, "include path")?)),
            None | Some('\n' | '\r' | '{' | '[' | '(' | ';' | ',' | '}' | ']') => Ok(None),
            Some(_) if self.at_comment() => Ok(None),
            Some(_) => {
                let start = self.off;
                while matches!(self.peek(), Some(c) if !c.is_whitespace() && !matches!(c, ';' | ',' | '}'))
                {
                    self.bump();
                }
                Ok(Some(
                    self.src.get(start..self.off).unwrap_or("").to_string(),
                ))
            }
        }
    }
}

fn describe_escape(c: Option<char>) -> String {
    match c {
        None => "'\\' at end of input".to_string(),
        Some('\n') | Some('\r') => "'\\' at end of line".to_string(),
        Some(c) => format!("'\\{}'", c.escape_debug()),
    }
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}
