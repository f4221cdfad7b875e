//! Every structural problem of a file at once (pipeline files, the cluster profile, `ferry.yaml`).
//!
//! The typed parse (serde) stops at its first problem, so a file with three misspelt keys would
//! take three rounds of "fix, push, read the next error". When that parse fails, the file is read
//! again as a plain tree and walked against the JSON Schema of the type it was read into (the one
//! `ferry schema` prints, derived from the same types), collecting every unknown field (with "did
//! you mean"), every missing required field, every value outside its fixed set (`kind`, `group`,
//! ...) and every value of the wrong shape (a mapping where a number belongs, a scalar where a
//! list belongs).
//!
//! Scalars are not type-checked here: the typed parse decides what a scalar may be (`cpu: 16`
//! and `cpu: "16"` are both fine), and its message for a bad one is kept. The walk only reports
//! what the typed parse would also refuse; where it cannot tell (alternatives of the same shape),
//! it says nothing.

use serde_json::{Map, Value};

use crate::problem::did_you_mean;

/// `(field path, message)` for every structural problem of `doc` against `schema`. A path
/// ending in `@key` names a field that is wrong as a name (see [`crate::yaml::locate`]).
pub(crate) fn problems(doc: &Value, schema: &Value) -> Vec<(String, String)> {
    let mut walker = Walker {
        defs: schema.get("$defs").and_then(Value::as_object),
        out: Vec::new(),
    };
    walker.walk(doc, schema, "");
    walker.out
}

struct Walker<'s> {
    defs: Option<&'s Map<String, Value>>,
    out: Vec<(String, String)>,
}

/// What YAML node a value is, as far as the walk cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Mapping,
    List,
    Scalar,
    Null,
}

impl Shape {
    fn of(value: &Value) -> Shape {
        match value {
            Value::Object(_) => Shape::Mapping,
            Value::Array(_) => Shape::List,
            Value::Null => Shape::Null,
            _ => Shape::Scalar,
        }
    }

    fn from_type(name: &str) -> Shape {
        match name {
            "object" => Shape::Mapping,
            "array" => Shape::List,
            "null" => Shape::Null,
            _ => Shape::Scalar,
        }
    }

    fn article(self) -> &'static str {
        match self {
            Shape::Mapping => "a mapping",
            Shape::List => "a list",
            Shape::Scalar => "a single value",
            Shape::Null => "nothing",
        }
    }
}

/// What a schema's `type` says the value is, in words (`an integer`, `a list`, ...).
fn wanted(schema: &Value) -> Option<String> {
    let names: Vec<&str> = match schema.get("type")? {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let words: Vec<&str> = names
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "object" => "a mapping",
            "array" => "a list",
            "integer" => "an integer",
            "number" => "a number",
            "boolean" => "true or false",
            _ => "a string",
        })
        .collect();
    (!words.is_empty()).then(|| words.join(" or "))
}

/// The shapes a schema's `type` allows, if it says.
fn shapes(schema: &Value) -> Option<Vec<Shape>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![Shape::from_type(t)]),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(Value::as_str)
                .map(Shape::from_type)
                .collect(),
        ),
        _ => None,
    }
}

/// The fixed values of an enumeration schema (`const` or `enum`), if it is one.
fn constant(schema: &Value) -> Option<Vec<&str>> {
    if let Some(c) = schema.get("const") {
        return Some(vec![c.as_str()?]);
    }
    schema
        .get("enum")?
        .as_array()?
        .iter()
        .map(Value::as_str)
        .collect()
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'s> Walker<'s> {
    /// Follows `$ref`s into `$defs`.
    fn resolve(&self, mut schema: &'s Value) -> &'s Value {
        for _ in 0..32 {
            let Some(name) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                break;
            };
            match self.defs.and_then(|d| d.get(name)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn walk(&mut self, value: &Value, schema: &'s Value, path: &str) {
        let schema = self.resolve(schema);
        if let Some(alternatives) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            return self.walk_alternatives(value, alternatives, path);
        }
        if let Some(allowed) = constant(schema) {
            return self.check_constant(value, &allowed, path);
        }
        if let Some(shapes) = shapes(schema) {
            let shape = Shape::of(value);
            // A null where a value belongs is the typed parse's to judge (an empty `key:` may
            // stand for a default).
            if shape != Shape::Null && !shapes.contains(&shape) {
                let want = wanted(schema).unwrap_or_else(|| "something else".to_owned());
                self.out.push((
                    path.to_owned(),
                    format!("expected {want}, found {}", describe(value)),
                ));
                return;
            }
        }
        match value {
            Value::Object(map) => self.walk_mapping(map, schema, path),
            Value::Array(items) => {
                if let Some(item) = schema.get("items") {
                    for (i, x) in items.iter().enumerate() {
                        self.walk(x, item, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }

    fn walk_mapping(&mut self, map: &Map<String, Value>, schema: &'s Value, path: &str) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        // Fields an unknown key was taken for ("did you mean"): not also reported missing.
        let mut suggested: Vec<&str> = Vec::new();
        for (key, value) in map {
            if let Some(field) = properties.and_then(|p| p.get(key)) {
                self.walk(value, field, &child(path, key));
                continue;
            }
            match additional {
                // Free-form keys (`params`, `env`): each value has this schema.
                Some(s @ Value::Object(_)) => self.walk(value, s, &child(path, key)),
                Some(Value::Bool(false)) => {
                    let names: Vec<&str> = properties
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let mut message =
                        format!("unknown field `{key}`, expected one of {}", quoted(&names));
                    if let Some(best) = did_you_mean(key, names.iter().copied()) {
                        message.push_str(&format!("; did you mean `{best}`?"));
                        suggested.push(best);
                    }
                    self.out
                        .push((format!("{}@key", child(path, key)), message));
                }
                _ => {}
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) && !suggested.contains(&name) {
                    self.out
                        .push((path.to_owned(), format!("missing field `{name}`")));
                }
            }
        }
    }

    fn walk_alternatives(&mut self, value: &Value, alternatives: &'s [Value], path: &str) {
        let resolved: Vec<&'s Value> = alternatives.iter().map(|a| self.resolve(a)).collect();
        let shape = Shape::of(value);
        if shape == Shape::Null {
            return;
        }
        // An enumeration (`oneOf` of `const`s, maybe beside `null`).
        let non_null: Vec<&'s Value> = resolved
            .iter()
            .copied()
            .filter(|a| shapes(a).is_none_or(|s| s != [Shape::Null]))
            .collect();
        let constants: Option<Vec<&str>> = non_null
            .iter()
            .map(|a| constant(a))
            .collect::<Option<Vec<Vec<&str>>>>()
            .map(|v| v.concat());
        if let Some(allowed) = constants.filter(|c| !c.is_empty()) {
            return self.check_constant(value, &allowed, path);
        }
        // Otherwise follow the one alternative of the value's shape; with none, say what fits;
        // with several, the walk cannot tell which was meant and leaves it to the typed parse.
        let fitting: Vec<&'s Value> = non_null
            .iter()
            .copied()
            .filter(|a| shape_fits(a, shape, self))
            .collect();
        match fitting.as_slice() {
            [one] => self.walk(value, one, path),
            [] => {
                let mut words: Vec<String> =
                    non_null.iter().filter_map(|a| self.words_of(a)).collect();
                words.dedup();
                if !words.is_empty() {
                    self.out.push((
                        path.to_owned(),
                        format!("expected {}, found {}", words.join(" or "), describe(value)),
                    ));
                }
            }
            _ => {}
        }
    }

    /// What an alternative expects, in words; `None` when it does not say.
    fn words_of(&self, schema: &'s Value) -> Option<String> {
        let schema = self.resolve(schema);
        if let Some(alternatives) = schema.get("anyOf").or_else(|| schema.get("oneOf")) {
            let alternatives = alternatives.as_array()?;
            let scalars_only = alternatives.iter().all(|a| {
                shapes(self.resolve(a))
                    .is_some_and(|s| s.iter().all(|s| *s != Shape::Mapping && *s != Shape::List))
            });
            if scalars_only && alternatives.len() > 1 {
                return Some("a single value (a string, a number or true/false)".to_owned());
            }
            let words: Vec<String> = alternatives
                .iter()
                .filter_map(|a| self.words_of(a))
                .collect();
            return (!words.is_empty()).then(|| words.join(" or "));
        }
        wanted(schema)
    }

    fn check_constant(&mut self, value: &Value, allowed: &[&str], path: &str) {
        let given = match value {
            Value::String(s) => s.clone(),
            Value::Null => return,
            Value::Object(_) | Value::Array(_) => {
                self.out.push((
                    path.to_owned(),
                    format!(
                        "expected one of {}, found {}",
                        quoted(allowed),
                        describe(value)
                    ),
                ));
                return;
            }
            other => other.to_string(),
        };
        if allowed.contains(&given.as_str()) {
            return;
        }
        let mut message = format!(
            "unknown variant `{given}`, expected one of {}",
            quoted(allowed)
        );
        if let Some(best) = did_you_mean(&given, allowed.iter().copied()) {
            message.push_str(&format!("; did you mean `{best}`?"));
        }
        self.out.push((path.to_owned(), message));
    }
}

/// Whether an alternative accepts a value of this shape (unknown: no).
fn shape_fits(schema: &Value, shape: Shape, walker: &Walker<'_>) -> bool {
    let schema = walker.resolve(schema);
    if let Some(alternatives) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        return alternatives.iter().any(|a| shape_fits(a, shape, walker));
    }
    if constant(schema).is_some() {
        return shape == Shape::Scalar;
    }
    shapes(schema).is_some_and(|s| s.contains(&shape))
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value, briefly: `a mapping`, `a list`, or the scalar itself (shortened).
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            let ellipsis = if s.chars().count() > 40 { "..." } else { "" };
            format!("`{short}{ellipsis}`")
        }
        Value::Number(_) | Value::Bool(_) => format!("`{value}`"),
        other => Shape::of(other).article().to_owned(),
    }
}
