//! Label and field selectors, parsed the way the API server parses `labelSelector` and
//! `fieldSelector` query parameters, and matched against JSON objects.
//!
//! Label selectors: comma-separated requirements `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x,y)`, `a` (exists) and `!a` (does not exist); whitespace around tokens is ignored.
//! As in Kubernetes, `a!=b` and `a notin (..)` also match objects without the label.
//!
//! Field selectors: `metadata.name` and `metadata.namespace` with `=`, `==` or `!=`, the only
//! fields the API server supports for custom resources; any other field is a `400`.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key in (values)` (also `key=v` and `key==v`).
    In(String, Vec<String>),
    /// `key notin (values)` (also `key!=v`).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses a `labelSelector` query value; the error reads like the API server's.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut out = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            out.push(parse_requirement(part).map_err(|e| {
                format!("unable to parse requirement: {e} (in label selector {text:?})")
            })?);
        }
        Ok(LabelSelector(out))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::In(key, values) => {
                label(key).is_some_and(|v| values.iter().any(|x| x == v))
            }
            Requirement::NotIn(key, values) => {
                label(key).is_none_or(|v| values.iter().all(|x| x != v))
            }
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::DoesNotExist(key) => label(key).is_none(),
        })
    }

    /// Whether this is the empty selector.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(label_key(key)?));
    }
    for (op, negated) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = part.split_once(op) {
            let (key, value) = (label_key(key)?, label_value(value)?);
            return Ok(if negated {
                Requirement::NotIn(key, vec![value])
            } else {
                Requirement::In(key, vec![value])
            });
        }
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = label_key(words.next().unwrap_or_default())?;
    let rest = words.next().unwrap_or_default().trim();
    if rest.is_empty() {
        return Ok(Requirement::Exists(key));
    }
    let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
        (true, list)
    } else if let Some(list) = rest.strip_prefix("in") {
        (false, list)
    } else {
        return Err(format!("found '{rest}', expected: in, notin, =, ==, !="));
    };
    let values = value_list(list)?;
    Ok(if negated {
        Requirement::NotIn(key, values)
    } else {
        Requirement::In(key, values)
    })
}

fn value_list(list: &str) -> Result<Vec<String>, String> {
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("found '{}', expected: '(' values ')'", list.trim()))?;
    let values = inner
        .split(',')
        .map(label_value)
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err("for 'in', 'notin' operators, values set can't be empty".into());
    }
    Ok(values)
}

fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| key.to_owned())
        .ok_or_else(|| format!("invalid label key {key:?}"))
}

fn label_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| value.to_owned())
        .ok_or_else(|| format!("invalid label value {value:?}"))
}

/// The object fields a field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Field, bool, String)>);

impl FieldSelector {
    /// Parses a `fieldSelector` query value; the error reads like the API server's.
    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = [("!=", false), ("==", true), ("=", true)]
                .iter()
                .find_map(|(op, equal)| {
                    part.split_once(op)
                        .map(|(f, v)| (f.trim(), *equal, v.trim()))
                })
                .ok_or_else(|| format!("invalid selector: '{part}'; can't understand '{part}'"))?;
            let field = match field {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            out.push((field, equal, value.to_owned()));
        }
        Ok(FieldSelector(out))
    }

    /// Whether the object satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field {
                Field::Name => object["metadata"]["name"].as_str(),
                Field::Namespace => object["metadata"]["namespace"].as_str(),
            };
            (actual.unwrap_or_default() == value) == *equal
        })
    }

    /// Whether this is the empty selector.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A label and a field selector together, as a list or watch request carries them.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether the object matches both.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// Whether both are empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "ferry-1", "namespace": "ml", "labels": labels}})
    }

    fn matches(selector: &str, labels: Value) -> bool {
        LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
            .matches(&obj(labels))
    }

    #[test]
    fn label_operators() {
        let l = json!({"ferry.dev/run-id": "12", "tier": "gpu"});
        assert!(matches("", l.clone()));
        assert!(matches("ferry.dev/run-id=12", l.clone()));
        assert!(matches("ferry.dev/run-id==12,tier=gpu", l.clone()));
        assert!(!matches("ferry.dev/run-id=13", l.clone()));
        assert!(matches("tier!=cpu", l.clone()));
        assert!(matches("absent!=x", l.clone()));
        assert!(matches("tier in (cpu, gpu)", l.clone()));
        assert!(!matches("tier notin (cpu,gpu)", l.clone()));
        assert!(matches("absent notin (cpu,gpu)", l.clone()));
        assert!(matches("ferry.dev/run-id", l.clone()));
        assert!(!matches("!ferry.dev/run-id", l.clone()));
        assert!(matches("!absent, tier in (gpu)", l));
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for bad in ["tier in gpu", "tier in ()", "tier ~ gpu", "a b=c"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let parse = |s: &str| FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(parse("metadata.name=ferry-1").matches(&o));
        assert!(parse("metadata.name==ferry-1,metadata.namespace=ml").matches(&o));
        assert!(!parse("metadata.name!=ferry-1").matches(&o));
        assert!(
            FieldSelector::parse("status.phase=Running")
                .is_err_and(|e| e.contains("not supported"))
        );
    }
}
