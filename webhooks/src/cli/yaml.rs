//! YAML text of a JSON value, for `ferry render -o yaml`.
//!
//! A small emitter instead of a general serializer: the manifest is a `serde_json::Value`, and
//! writing it directly is about ten times cheaper than going through `serde`, which matters for a
//! command that must start and finish in a few milliseconds. Output is block style, two spaces
//! per level. A string is written plain only when it is unmistakably a string (letters, digits
//! and `_./-`, not a number, a boolean or null in any YAML version); a multi-line string without
//! awkward whitespace as a literal block (`|`, `|-` or `|+`, so every newline is kept); anything
//! else double-quoted with JSON's escapes, which YAML's double-quoted scalars share. Parsing the
//! text back gives the same value (tested against every example manifest).

use std::fmt::Write as _;

use serde_json::Value;

/// `value` as a YAML document (ending in a newline).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::with_capacity(16 * 1024);
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            write_inline(&mut out, scalar, 0);
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Entries of a non-empty map, each on its own line at `indent`.
fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        write_string(out, key, indent, true);
        out.push(':');
        write_value_after_key(out, value, indent);
    }
}

/// Items of a non-empty sequence, each `- ` at `indent`.
fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(out, map, indent + 2),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, indent + 2),
            scalar => {
                write_inline(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// What follows `key:`: a nested block on the next lines, or ` scalar`.
fn write_value_after_key(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            pad(out, indent + 2);
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            pad(out, indent + 2);
            write_seq(out, items, indent + 2);
        }
        scalar => {
            out.push(' ');
            write_inline(out, scalar, indent + 2);
            out.push('\n');
        }
    }
}

/// A scalar, `{}` or `[]`; a literal block's lines are indented to `indent`.
fn write_inline(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s, indent, false),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn write_string(out: &mut String, s: &str, indent: usize, is_key: bool) {
    if is_plain(s) {
        out.push_str(s);
    } else if !is_key && can_be_literal(s) {
        let body = s.trim_end_matches('\n');
        let chomp = match s.len() - body.len() {
            0 => "-",
            1 => "",
            _ => "+",
        };
        let _ = write!(out, "|{chomp}");
        for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                pad(out, indent);
                out.push_str(line);
            }
        }
    } else {
        // JSON's string syntax is a YAML double-quoted scalar.
        let _ = write!(out, "{}", Value::String(s.to_owned()));
    }
}

/// Letters, digits and `_./-` only, starting with a letter, `_`, `/` or `.`, and not a word some
/// YAML reader takes for a boolean or null, nor anything number-like.
fn is_plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '_' || first == '/') {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
    {
        return false;
    }
    const WORDS: [&str; 13] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan", "inf", "infinity",
        "none",
    ];
    !WORDS.iter().any(|w| s.eq_ignore_ascii_case(w))
}

/// A multi-line string a literal block keeps exactly: printable text and tabs, no carriage
/// returns, no line of only spaces, and no leading space on its first line (which would need an
/// indentation indicator).
fn can_be_literal(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control())
        && !s.contains('\u{feff}')
        && s.split('\n')
            .all(|line| line.is_empty() || !line.chars().all(|c| c == ' ' || c == '\t'))
        && !s.split('\n').any(|line| line.ends_with([' ', '\t']))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::to_yaml;

    fn back(text: &str) -> Value {
        serde_saphyr::from_str::<Value>(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
    }

    #[test]
    fn values_come_back_as_they_were() {
        let tricky = [
            "",
            " ",
            "a",
            "true",
            "False",
            "NULL",
            "~",
            "yes",
            "on",
            "n",
            "1",
            "1.5",
            "-1",
            "0x1F",
            "1e3",
            ".inf",
            "-.5",
            "a: b",
            "a #b",
            "#x",
            "- x",
            "[x]",
            "{x}",
            "&a",
            "*a",
            "!t",
            "|",
            ">",
            "%x",
            "@x",
            "`x`",
            "'q'",
            "\"q\"",
            "a\\b",
            "x\ty",
            "line\n",
            "a\nb",
            "a\nb\n",
            "a\n\nb\n\n",
            "  lead\nx",
            "x\n  indented\n",
            "trail \nx",
            "x\n \ny",
            "tab\n\tx",
            "\nstart",
            "é ü 中",
            "a\rb",
            "bell\u{7}",
            "${{ x }}",
            "{{x}}",
            "refs/heads/exp/a\";$(reboot)#{{x}}",
            "nvidia.com/gpu",
            "ferry-12",
            "v1.2.0",
        ];
        for s in tricky {
            let value = json!({ "k": s, "list": [s, { "in": s }], s: 1 });
            let text = to_yaml(&value);
            assert_eq!(back(&text), value, "{s:?} ->\n{text}");
        }
        let shapes = json!({
            "empty_map": {}, "empty_list": [], "null": null, "t": true, "f": false,
            "n": [0, -3, 2.5, 1e-7, 12345678901234_i64], "nested": [[1, [2]], [], {}],
            "deep": { "a": { "b": [ { "c": [ { "d": "e" } ] } ] } },
        });
        assert_eq!(back(&to_yaml(&shapes)), shapes, "{}", to_yaml(&shapes));
        for top in [
            json!("x"),
            json!([1, "a"]),
            json!({}),
            json!([]),
            json!(null),
        ] {
            assert_eq!(back(&to_yaml(&top)), top, "{}", to_yaml(&top));
        }
    }

    #[test]
    fn scripts_are_literal_blocks() {
        let text = to_yaml(&json!({ "script": "set -e\necho hi\n" }));
        assert_eq!(text, "script: |\n  set -e\n  echo hi\n");
        let text = to_yaml(&json!({ "a": [ { "run": "x\ny" } ] }));
        assert_eq!(text, "a:\n  - run: |-\n      x\n      y\n");
    }
}
