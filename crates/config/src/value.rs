//! The parsed tree: `Value`, `Spanned` (a value with its source position), `Map` and `Pos`.
//! Maps keep every entry in file order, duplicates included; lookups take the last one.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A position in a configuration source: 1-based line and column (columns count characters).
///
/// `file` is `None` for text given to [`crate::parse_str`] and for values that came from an
/// environment variable without a file of their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pos {
    pub file: Option<Arc<PathBuf>>,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// A position without a file.
    pub fn new(line: u32, col: u32) -> Self {
        Pos {
            file: None,
            line,
            col,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}:{}", file.display(), self.line, self.col),
            None => write!(f, "{}:{}", self.line, self.col),
        }
    }
}

/// One configuration value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Spanned>),
    Map(Map),
}

impl Value {
    /// A short name of the kind of value, for error messages: "string", "integer", "float",
    /// "boolean", "array" or "map".
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "boolean",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// A float, or an integer widened to a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Integer(n) => Some(*n as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Spanned]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A value and the position where it starts (the `$` of a variable reference, the `{` of a
/// map, the `[` of an array, the opening quote of a quoted string).
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    pub value: Value,
    pub pos: Pos,
}

impl Spanned {
    pub fn new(value: Value, pos: Pos) -> Self {
        Spanned { value, pos }
    }

    pub fn kind_name(&self) -> &'static str {
        self.value.kind_name()
    }

    pub fn as_str(&self) -> Option<&str> {
        self.value.as_str()
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.value.as_i64()
    }

    pub fn as_f64(&self) -> Option<f64> {
        self.value.as_f64()
    }

    pub fn as_bool(&self) -> Option<bool> {
        self.value.as_bool()
    }

    pub fn as_map(&self) -> Option<&Map> {
        self.value.as_map()
    }

    pub fn as_array(&self) -> Option<&[Spanned]> {
        self.value.as_array()
    }

    /// The number of values in this tree (this one included), counting at most to `limit`.
    pub(crate) fn count_values(&self, limit: usize) -> usize {
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(v) = stack.pop() {
            count += 1;
            if count >= limit {
                return limit;
            }
            match &v.value {
                Value::Array(items) => stack.extend(items.iter()),
                Value::Map(map) => stack.extend(map.entries.iter().map(|e| &e.value)),
                _ => {}
            }
        }
        count
    }

    /// Sets this value's position, and that of everything nested in it, to `pos`.
    pub(crate) fn relocate(&mut self, pos: &Pos) {
        self.pos = pos.clone();
        match &mut self.value {
            Value::Array(items) => items.iter_mut().for_each(|v| v.relocate(pos)),
            Value::Map(map) => map.entries.iter_mut().for_each(|e| {
                e.key_pos = pos.clone();
                e.value.relocate(pos);
            }),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    key: String,
    key_pos: Pos,
    value: Spanned,
    /// A `$variable` reference copied this entry's value.
    used_as_variable: bool,
}

/// A configuration map: entries in file order, keys as written (without quotes).
///
/// A key may appear more than once (a later definition or an include can repeat it); every
/// entry is kept and [`Map::get`] returns the last, which is what nats-server uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    entries: Vec<Entry>,
}

impl Map {
    pub(crate) fn new() -> Self {
        Map::default()
    }

    pub(crate) fn push(&mut self, key: String, key_pos: Pos, value: Spanned) {
        self.entries.push(Entry {
            key,
            key_pos,
            value,
            used_as_variable: false,
        });
    }

    pub(crate) fn append(&mut self, other: Map) {
        self.entries.extend(other.entries);
    }

    /// The last value stored under `key`, comparing keys ASCII-case-insensitively (as
    /// nats-server matches option names).
    pub fn get(&self, key: &str) -> Option<&Spanned> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
            .map(|e| &e.value)
    }

    /// The last value stored under exactly `key` (case-sensitive), for names such as account
    /// names where case matters.
    pub fn get_exact(&self, key: &str) -> Option<&Spanned> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    /// The position of the key of the entry [`Map::get`] would return.
    pub fn key_pos(&self, key: &str) -> Option<&Pos> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
            .map(|e| &e.key_pos)
    }

    /// Every entry in file order, duplicates included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Spanned)> {
        self.entries.iter().map(|e| (e.key.as_str(), &e.value))
    }

    /// Every entry in file order with its key's position, duplicates included.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Pos, &Spanned)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), &e.key_pos, &e.value))
    }

    /// The entries that are not overridden by a later entry with the same key (compared
    /// ASCII-case-insensitively), in file order.
    pub fn iter_unique(&self) -> impl Iterator<Item = (&str, &Spanned)> {
        let mut seen = HashSet::new();
        let mut kept: Vec<&Entry> = self
            .entries
            .iter()
            .rev()
            .filter(|e| seen.insert(e.key.to_ascii_lowercase()))
            .collect();
        kept.reverse();
        kept.into_iter().map(|e| (e.key.as_str(), &e.value))
    }

    /// The number of entries, duplicates included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last value stored under exactly `name`, as a variable reference sees it; the entry
    /// is marked as used as a variable.
    pub(crate) fn lookup_var(&mut self, name: &str) -> Option<&Spanned> {
        let e = self.entries.iter_mut().rev().find(|e| e.key == name)?;
        e.used_as_variable = true;
        Some(&e.value)
    }

    /// Whether a `$variable` reference refers to an entry under exactly `key` (nats-server
    /// does not hold such a key to be an option it knows).
    pub fn is_used_variable(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.key == key && e.used_as_variable)
    }
}
