//! Embedded templates without their comments and layout whitespace, made at compile time.
//!
//! Compiling templates was the largest part of a one-shot `ferry render`: handlebars' pest
//! grammar walks the text byte by byte, and for every element it asks pest for a line and column,
//! which pest finds by scanning from the start of the template, so the cost grows with the square
//! of the length.
//! The templates are JSON laid out for people (indentation, a leading comment); the renderer
//! parses their output back as JSON, so whitespace outside JSON strings and the comments do not
//! change the manifest. [`compacted!`] drops them from the embedded copies when ferry is built; the
//! files under `templates/` stay as they are, and so do templates given with `--templates`.
//!
//! What is kept verbatim: every `{{...}}` expression (`{{{...}}}` too), and JSON string literals
//! in the text between them (a `"` opens one, an unescaped `"` closes it), so a space in
//! `"a b"` stays. Raw blocks (`{{{{raw}}}}`) and `\{{` escapes would be compacted like any text:
//! ferry's templates use neither, and a test renders every template both ways and compares.

/// Writes `src` without handlebars comments and without whitespace outside JSON strings and
/// expressions into `out`, as far as it fits, and returns the compacted length.
pub(super) const fn compact(src: &[u8], out: &mut [u8]) -> usize {
    let mut i = 0;
    let mut n = 0;
    let mut in_string = false;
    while i < src.len() {
        if starts_with(src, i, b"{{!--") {
            i = after(src, i + 5, b"--}}");
        } else if starts_with(src, i, b"{{!") {
            i = after(src, i + 3, b"}}");
        } else if starts_with(src, i, b"{{") {
            let end = if starts_with(src, i, b"{{{") {
                after(src, i + 3, b"}}}")
            } else {
                after(src, i + 2, b"}}")
            };
            while i < end {
                n = put(out, n, src[i]);
                i += 1;
            }
        } else {
            let b = src[i];
            i += 1;
            if in_string {
                n = put(out, n, b);
                if b == b'\\' && i < src.len() {
                    n = put(out, n, src[i]);
                    i += 1;
                } else if b == b'"' {
                    in_string = false;
                }
            } else if b == b'"' {
                in_string = true;
                n = put(out, n, b);
            } else if !b.is_ascii_whitespace() {
                n = put(out, n, b);
            }
        }
    }
    n
}

/// Writes `b` at `out[n]` if there is room; the next index either way.
const fn put(out: &mut [u8], n: usize, b: u8) -> usize {
    if n < out.len() {
        out[n] = b;
    }
    n + 1
}

const fn starts_with(src: &[u8], at: usize, pattern: &[u8]) -> bool {
    if at + pattern.len() > src.len() {
        return false;
    }
    let mut k = 0;
    while k < pattern.len() {
        if src[at + k] != pattern[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// The index just past the first `end` at or after `from` (the end of `src` if there is none:
/// handlebars then reports the unclosed expression).
const fn after(src: &[u8], from: usize, end: &[u8]) -> usize {
    let mut i = from;
    while i < src.len() {
        if starts_with(src, i, end) {
            return i + end.len();
        }
        i += 1;
    }
    src.len()
}

/// The compacted text of `templates/NAME.json.hbs`, as a `&'static str` made at compile time.
macro_rules! compacted {
    ($name:literal) => {{
        const SRC: &[u8] = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../templates/",
            $name,
            ".json.hbs"
        ));
        const LEN: usize = $crate::render::compact::compact(SRC, &mut []);
        const BYTES: [u8; LEN] = {
            let mut out = [0; LEN];
            $crate::render::compact::compact(SRC, &mut out);
            out
        };
        const TEXT: &str = match std::str::from_utf8(&BYTES) {
            Ok(text) => text,
            Err(_) => panic!("a compacted template is not UTF-8"),
        };
        TEXT
    }};
}
pub(super) use compacted;

#[cfg(test)]
mod tests {
    use super::compact;

    fn compacted(src: &str) -> String {
        let mut out = vec![0; compact(src.as_bytes(), &mut [])];
        compact(src.as_bytes(), &mut out);
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn drops_comments_and_layout_but_keeps_strings_and_expressions() {
        let src = "{{!-- a {{comment}} --}}\n{\n  \"a b\": {{q x}},\n  {{#if y}}\"c\\\" d\": [1, 2]{{/if}}{{! short }}\n}\n";
        assert_eq!(
            compacted(src),
            "{\"a b\":{{q x}},{{#if y}}\"c\\\" d\":[1,2]{{/if}}}"
        );
    }

    #[test]
    fn an_unclosed_expression_runs_to_the_end() {
        assert_eq!(compacted("[ {{q x "), "[{{q x ");
        assert_eq!(compacted("{{!-- open"), "");
    }
}
