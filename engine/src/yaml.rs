//! Reading YAML that users control: size, depth and alias limits, and positions for every field.
//!
//! Pipeline files come from any branch of any repository ferry serves, so they are hostile input.
//! [`parse`] refuses files over [`MAX_FILE_BYTES`], deep nesting and alias expansion ("billion
//! laughs") through the parser's budget, before any value is built. When a file has a problem,
//! [`SourceMap`] (built from the parser's events, only on that path) turns a field path such as
//! `steps[1].resources.gpu` into a line and column, and a position back into a field path.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_saphyr::granit_parser::{Event, Parser};

use crate::problem::{Problem, Problems, did_you_mean};

pub(crate) mod structure;

/// Largest pipeline or profile file ferry reads.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 48;
/// Most alias uses (`*name`) accepted in one file.
pub const MAX_ALIASES: usize = 256;
/// Most parser events (including replayed aliases) accepted in one file.
pub const MAX_EVENTS: usize = 200_000;

/// Parses `text` (the content of `file`) into `T`, within ferry's limits.
///
/// On failure, the problem names the file, the position, the field path and, for a misspelt key
/// or value, the closest allowed name.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Problem> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Problem {
            file: file.to_owned(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES} bytes (1 MiB)",
                text.len()
            ),
        });
    }
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| to_problem(file, text, &e))
}

/// [`parse`], and when it fails, every structural problem of the file rather than only the first
/// one serde met: the file is walked again against `T`'s JSON Schema ([`structure`]). A problem
/// the walk finds at the same field replaces the parser's (the walk's messages are the more
/// specific ones); a file that cannot be read as YAML at all, or breaks the limits, keeps only
/// the parser's problem.
pub fn parse_all<T: DeserializeOwned + schemars::JsonSchema>(
    file: &str,
    text: &str,
) -> Result<T, Problems> {
    let first = match parse(file, text) {
        Ok(value) => return Ok(value),
        Err(first) => first,
    };
    let Ok(doc) = parse::<serde_json::Value>(file, text) else {
        return Err(Problems(vec![first]));
    };
    let found = structure::problems(&doc, &schemars::schema_for!(T).to_value());
    if found.is_empty() {
        return Err(Problems(vec![first]));
    }
    let Problems(mut problems) = locate(file, text, found);
    if !problems.iter().any(|p| p.path == first.path) {
        problems.push(first);
        problems.sort_by_key(|p| (p.line, p.column));
    }
    Err(Problems(problems))
}

/// What the shape walk finds in `text` read as `T` (tests: a valid file must give nothing).
#[cfg(test)]
pub(crate) fn shape_problems<T: schemars::JsonSchema>(
    file: &str,
    text: &str,
) -> Vec<(String, String)> {
    let doc: serde_json::Value = parse(file, text).expect("readable YAML");
    structure::problems(&doc, &schemars::schema_for!(T).to_value())
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = MAX_ALIASES;
    budget.max_events = MAX_EVENTS;
    budget.max_nodes = MAX_EVENTS;
    budget.max_recorded_anchor_events = MAX_EVENTS;
    budget.max_total_scalar_bytes = 2 * MAX_FILE_BYTES;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // Nothing reads the comments; capturing them was a third of the time spent reading a file.
    options.emit_comments = false;
    options
}

fn to_problem(file: &str, text: &str, error: &serde_saphyr::Error) -> Problem {
    let (line, column) = error
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    let raw = error.without_snippet().to_string();
    let stripped = strip_position(&raw);
    let message = budget_message(stripped).unwrap_or_else(|| improve_message(stripped));
    let path = if line > 0 {
        SourceMap::build(text).path_at(line, column)
    } else {
        String::new()
    };
    Problem {
        file: file.to_owned(),
        line,
        column,
        path,
        message,
    }
}

/// Removes a trailing " at line X column Y" that serde-saphyr appends; we print positions ourselves.
fn strip_position(message: &str) -> &str {
    let Some(i) = message.rfind(" at line ") else {
        return message;
    };
    let tail = &message[i + " at line ".len()..];
    let positional = tail.split_once(" column ").is_some_and(|(l, c)| {
        let l = l.trim_end_matches(',');
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_digit())
            && !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_digit())
    });
    if positional { &message[..i] } else { message }
}

/// Says which of ferry's YAML limits a document broke, in words.
fn budget_message(message: &str) -> Option<String> {
    let breach = message.strip_prefix("budget breached: ")?;
    let what = match breach.split_whitespace().next().unwrap_or_default() {
        "Aliases" => format!(
            "more than {MAX_ALIASES} alias uses (`*name`); alias expansion (\"billion laughs\") is refused"
        ),
        "Events" | "Nodes" | "RecordedAnchorEvents" | "AnchorEvents" => {
            format!(
                "the document expands to more than {MAX_EVENTS} YAML nodes (through aliases or sheer size); alias expansion (\"billion laughs\") is refused"
            )
        }
        "Depth" => format!("nesting depth over {MAX_DEPTH} levels"),
        "Documents" => "more than one YAML document (`---`) in one file".to_owned(),
        _ => format!("the document exceeds ferry's YAML limits ({breach})"),
    };
    Some(what)
}

/// Adds "did you mean" to serde's unknown field / variant messages, which read
/// ``unknown field `x`, expected one of a, b`` (or `` `a`, `b` ``, or ``expected `a` ``).
fn improve_message(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_owned();
    };
    let Some((given, tail)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let list = tail
        .split_once("expected one of ")
        .or_else(|| tail.split_once("expected "))
        .map_or("", |(_, l)| l);
    let allowed: Vec<&str> = list.split(", ").map(|a| a.trim_matches('`')).collect();
    match did_you_mean(given, allowed.iter().copied()) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message.to_owned(),
    }
}

/// Turns problems found after parsing — (field path, message) pairs — into positioned
/// [`Problem`]s of `file`, sorted by position. A path ending in `@key` points at the field name
/// rather than its value (for names that are wrong as names).
pub fn locate(file: &str, text: &str, raw: Vec<(String, String)>) -> Problems {
    let map = SourceMap::build(text);
    let mut problems: Vec<Problem> = raw
        .into_iter()
        .map(|(path, message)| {
            let (path, (line, column)) = match path.strip_suffix("@key") {
                Some(p) => (p.to_owned(), map.locate_key(p)),
                None => {
                    let at = map.locate(&path);
                    (path, at)
                }
            };
            Problem {
                file: file.to_owned(),
                line,
                column,
                path,
                message,
            }
        })
        .collect();
    problems.sort_by_key(|p| (p.line, p.column));
    Problems(problems)
}

/// Positions of the fields of one YAML document.
#[derive(Debug, Default)]
pub struct SourceMap {
    /// Field path -> (line, column) of its value (1-based).
    values: HashMap<String, (u32, u32)>,
    /// Field path -> (line, column) of its key, for mapping entries.
    keys: HashMap<String, (u32, u32)>,
    /// Every (position, path), in document order, for reverse lookups.
    ordered: Vec<((u32, u32), String)>,
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<(String, (u32, u32))>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

impl SourceMap {
    /// Builds the map from the parser's events. Stops quietly at the first syntax error or limit.
    pub fn build(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut events = 0usize;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            events += 1;
            if events > MAX_EVENTS || stack.len() > MAX_DEPTH {
                break;
            }
            let pos = (span.start.line() as u32, span.start.col() as u32 + 1);
            match event {
                Event::Scalar(value, ..) => map.scalar(&mut stack, value.as_ref(), pos),
                Event::Alias(_) => map.node(&mut stack, pos, None),
                Event::MappingStart(..) => map.node(&mut stack, pos, Some(true)),
                Event::SequenceStart(..) => map.node(&mut stack, pos, Some(false)),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        map
    }

    fn scalar(&mut self, stack: &mut [Frame], value: &str, pos: (u32, u32)) {
        if let Some(Frame::Map { path, pending_key }) = stack.last_mut()
            && pending_key.is_none()
        {
            let child = join_key(path, value);
            *pending_key = Some((child, pos));
            return;
        }
        self.place(stack, pos);
    }

    /// Records a node (a scalar value, alias or collection start) at the current place.
    fn node(&mut self, stack: &mut Vec<Frame>, pos: (u32, u32), opens: Option<bool>) {
        let path = self.place(stack, pos);
        match opens {
            Some(true) => stack.push(Frame::Map {
                path,
                pending_key: None,
            }),
            Some(false) => stack.push(Frame::Seq { path, index: 0 }),
            None => {}
        }
    }

    /// Works out the path of the node now starting, records it and advances the parent.
    fn place(&mut self, stack: &mut [Frame], pos: (u32, u32)) -> String {
        let path = match stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { pending_key, path }) => match pending_key.take() {
                Some((child, key_pos)) => {
                    self.keys.insert(child.clone(), key_pos);
                    child
                }
                // A complex key (a mapping used as a key): give it the mapping's path.
                None => path.clone(),
            },
            Some(Frame::Seq { path, index }) => {
                let child = format!("{path}[{index}]");
                *index += 1;
                child
            }
        };
        self.values.entry(path.clone()).or_insert(pos);
        self.ordered.push((pos, path.clone()));
        path
    }

    /// The position of a field's value; for a field that is absent, its nearest present parent.
    pub fn locate(&self, path: &str) -> (u32, u32) {
        let mut current = path;
        loop {
            if let Some(pos) = self.values.get(current) {
                return *pos;
            }
            match parent(current) {
                Some(p) => current = p,
                None => return (1, 1),
            }
        }
    }

    /// The position of a mapping key (the field name itself), falling back to [`Self::locate`].
    pub fn locate_key(&self, path: &str) -> (u32, u32) {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.locate(path))
    }

    /// The path of the node at or last before a position.
    pub fn path_at(&self, line: u32, column: u32) -> String {
        let mut best = String::new();
        for (key, path) in self.keys.iter().map(|(p, k)| (k, p)) {
            if *key == (line, column) {
                return path.clone();
            }
        }
        for (pos, path) in &self.ordered {
            if *pos <= (line, column) {
                best = path.clone();
            }
        }
        best
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The parent of a field path: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}
