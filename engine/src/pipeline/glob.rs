//! Globs for branch names, tag names and changed paths in `on` and `if` filters.
//!
//! `*` matches within one path segment, `**` across segments (`**/` also matches zero segments),
//! `?` one character other than `/`, `[abc]`, `[a-z]` and `[!a-z]` (or `[^a-z]`) one character of
//! a class, and `\` escapes the next character. Matching works on characters, not bytes, and
//! simulates the pattern as a set of states, so it takes time proportional to
//! `pattern length × text length` whatever the input.

use std::fmt;

/// A compiled glob: `*` within one path segment, `**` across segments, `?` one char (not `/`),
/// `[abc]`, `[a-z]`, `[!a-z]` classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Exactly this character.
    Literal(char),
    /// `?`: any one character except `/`.
    AnyChar,
    /// `[...]`: one character of a class (never `/`).
    Class(Class),
    /// `*`: any run of characters without `/`.
    Star,
    /// `**` not forming a `**/` segment: any run of characters, `/` included.
    AnyRun,
    /// `**/` at the start of a segment: zero or more whole segments, each ending in `/`.
    Segments,
}

/// A character class such as `[a-z_]` or `[!0-9]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    /// Inclusive ranges; a single character `c` is `(c, c)`.
    ranges: Vec<(char, char)>,
}

impl Class {
    /// True when `c` belongs to the class; `/` never does.
    fn contains(&self, c: char) -> bool {
        let listed = self.ranges.iter().any(|&(low, high)| low <= c && c <= high);
        c != '/' && listed != self.negated
    }
}

impl Glob {
    /// Compiles a pattern.
    ///
    /// # Errors
    ///
    /// An empty pattern, an unclosed `[`, a reversed range such as `[z-a]`, or a trailing `\`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty glob pattern".to_owned());
        }
        let tokens = Compiler::new(pattern).compile()?;
        Ok(Glob {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    /// True when the whole of `text` matches the pattern.
    pub fn is_match(&self, text: &str) -> bool {
        let mut states = States::start(&self.tokens);
        for c in text.chars() {
            states = states.step(&self.tokens, c);
            if states.is_dead() {
                return false;
            }
        }
        states.accepts()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// True when any glob in the list matches.
pub fn any_match(globs: &[Glob], text: &str) -> bool {
    globs.iter().any(|glob| glob.is_match(text))
}

/// Turns pattern text into tokens.
struct Compiler<'a> {
    pattern: &'a str,
    chars: Vec<char>,
    at: usize,
    tokens: Vec<Token>,
}

impl<'a> Compiler<'a> {
    fn new(pattern: &'a str) -> Compiler<'a> {
        Compiler {
            pattern,
            chars: pattern.chars().collect(),
            at: 0,
            tokens: Vec::new(),
        }
    }

    fn compile(mut self) -> Result<Vec<Token>, String> {
        while let Some(&c) = self.chars.get(self.at) {
            self.at += 1;
            let token = match c {
                '*' => self.stars(),
                '?' => Token::AnyChar,
                '[' => Token::Class(self.class()?),
                '\\' => Token::Literal(self.escaped()?),
                other => Token::Literal(other),
            };
            self.tokens.push(token);
        }
        Ok(self.tokens)
    }

    /// Reads a run of `*` whose first star has been consumed.
    fn stars(&mut self) -> Token {
        let first = self.at - 1;
        while self.chars.get(self.at) == Some(&'*') {
            self.at += 1;
        }
        if self.at - first == 1 {
            return Token::Star;
        }
        let segment_start = first == 0 || self.tokens.last() == Some(&Token::Literal('/'));
        if segment_start && self.chars.get(self.at) == Some(&'/') {
            self.at += 1;
            return Token::Segments;
        }
        Token::AnyRun
    }

    /// Reads the character after a `\`.
    fn escaped(&mut self) -> Result<char, String> {
        let c = self.chars.get(self.at).copied();
        self.at += 1;
        c.ok_or_else(|| format!("trailing backslash in \"{}\"", self.pattern))
    }

    /// Reads a class whose `[` has been consumed, up to and including its `]`.
    fn class(&mut self) -> Result<Class, String> {
        let negated = matches!(self.chars.get(self.at), Some('!' | '^'));
        if negated {
            self.at += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let low = match self.chars.get(self.at) {
                None => return Err(format!("unclosed character class in \"{}\"", self.pattern)),
                Some(']') if !first => break,
                Some(&c) => c,
            };
            ranges.push(self.range(low)?);
            first = false;
        }
        self.at += 1;
        Ok(Class { negated, ranges })
    }

    /// Reads one class member starting with `low` (not yet consumed): `c` or `c-d`.
    fn range(&mut self, low: char) -> Result<(char, char), String> {
        let is_range = self.chars.get(self.at + 1) == Some(&'-')
            && self.chars.get(self.at + 2).is_some_and(|&high| high != ']');
        if !is_range {
            self.at += 1;
            return Ok((low, low));
        }
        let high = self.chars.get(self.at + 2).copied().unwrap_or(low);
        self.at += 3;
        if high < low {
            return Err(format!(
                "invalid range \"{low}-{high}\" in \"{}\"",
                self.pattern
            ));
        }
        Ok((low, high))
    }
}

/// The set of pattern positions the text read so far can have reached.
///
/// `at[i]` means the next token to match is `tokens[i]` (`at[len]` means the pattern is done);
/// `inside[i]` means a `**/` token at `i` is part-way through a segment.
struct States {
    at: Vec<bool>,
    inside: Vec<bool>,
}

impl States {
    fn start(tokens: &[Token]) -> States {
        let mut states = States::empty(tokens.len());
        states.at[0] = true;
        states.close(tokens);
        states
    }

    fn empty(len: usize) -> States {
        States {
            at: vec![false; len + 1],
            inside: vec![false; len],
        }
    }

    /// Adds the positions reachable without reading anything (skipping `*`, `**` and `**/`).
    fn close(&mut self, tokens: &[Token]) {
        for (i, token) in tokens.iter().enumerate() {
            if self.at[i] && matches!(token, Token::Star | Token::AnyRun | Token::Segments) {
                self.at[i + 1] = true;
            }
        }
    }

    /// The states after reading `c`.
    fn step(&self, tokens: &[Token], c: char) -> States {
        let mut next = States::empty(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            if self.at[i] {
                next.advance(i, token, c);
            }
            if self.inside[i] {
                next.advance_inside(i, c);
            }
        }
        next.close(tokens);
        next
    }

    /// Reads `c` with `token` (at position `i`) next.
    fn advance(&mut self, i: usize, token: &Token, c: char) {
        match token {
            Token::Literal(expected) => self.at[i + 1] |= *expected == c,
            Token::AnyChar => self.at[i + 1] |= c != '/',
            Token::Class(class) => self.at[i + 1] |= class.contains(c),
            Token::Star => self.at[i] |= c != '/',
            Token::AnyRun => self.at[i] = true,
            Token::Segments => self.advance_inside(i, c),
        }
    }

    /// Reads `c` within a segment of the `**/` token at `i`: `/` ends the segment.
    fn advance_inside(&mut self, i: usize, c: char) {
        if c == '/' {
            self.at[i] = true;
        } else {
            self.inside[i] = true;
        }
    }

    fn is_dead(&self) -> bool {
        !self.at.iter().chain(&self.inside).any(|&active| active)
    }

    fn accepts(&self) -> bool {
        self.at.last().copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str) -> Glob {
        Glob::new(pattern).expect("valid glob")
    }

    fn matches(pattern: &str, text: &str) -> bool {
        glob(pattern).is_match(text)
    }

    #[test]
    fn branches() {
        assert!(matches("main", "main"));
        assert!(!matches("main", "main2"));
        assert!(!matches("main", "mai"));
        assert!(matches("release/*", "release/1.0"));
        assert!(!matches("release/*", "release/1.0/x"));
        assert!(matches("release/*", "release/"));
        assert!(!matches("release/*", "release"));
        assert!(matches("feature/**", "feature/a/b"));
        assert!(matches("*", "main"));
        assert!(!matches("*", "a/b"));
        assert!(matches("**", "a/b"));
        assert!(matches("**", ""));
    }

    #[test]
    fn tags() {
        assert!(matches("v*", "v1.2.3"));
        assert!(matches("v*", "v"));
        assert!(!matches("v*", "release-1"));
        assert!(matches("v[0-9]*.*", "v1.2"));
        assert!(!matches("v[0-9]*.*", "vx.2"));
    }

    #[test]
    fn paths() {
        assert!(matches("model/**", "model/net.py"));
        assert!(matches("model/**", "model/a/b/c.py"));
        assert!(!matches("model/**", "model"));
        assert!(!matches("model/**", "models/net.py"));
        assert!(matches("**/*.md", "README.md"));
        assert!(matches("**/*.md", "a/b/c.md"));
        assert!(!matches("**/*.md", "a/b/c.mdx"));
        assert!(matches("train.py", "train.py"));
        assert!(!matches("train.py", "src/train.py"));
        assert!(matches("a/**/b", "a/b"));
        assert!(matches("a/**/b", "a/x/y/b"));
        assert!(!matches("a/**/b", "a/xb"));
        assert!(matches("docs/**/*.md", "docs/x.md"));
        assert!(matches("**.md", "a/b.md"));
        assert!(matches("a**", "ab/c"));
    }

    #[test]
    fn question_mark() {
        assert!(matches("v?", "v1"));
        assert!(!matches("v?", "v12"));
        assert!(!matches("v?", "v"));
        assert!(!matches("a?b", "a/b"));
    }

    #[test]
    fn classes() {
        assert!(matches("release/[0-9]*", "release/1.0"));
        assert!(!matches("release/[0-9]*", "release/x"));
        assert!(matches("[abc]", "b"));
        assert!(!matches("[abc]", "d"));
        assert!(matches("[!a-z]", "A"));
        assert!(!matches("[!a-z]", "q"));
        assert!(matches("[^a-z]", "1"));
        assert!(!matches("[!a]", "/"));
        assert!(matches("[]]", "]"));
        assert!(matches("[a-]", "-"));
        assert!(matches("[-a]", "-"));
        assert!(matches("[a-cx-z]", "y"));
        assert!(!matches("[a-cx-z]", "m"));
    }

    #[test]
    fn escapes() {
        assert!(matches("a\\*", "a*"));
        assert!(!matches("a\\*", "ab"));
        assert!(matches("\\[x]", "[x]"));
    }

    #[test]
    fn non_ascii() {
        assert!(matches("é?", "éü"));
        assert!(matches("docs/*", "docs/日本語.md"));
        assert!(matches("[α-ω]", "λ"));
        assert!(!matches("[α-ω]", "a"));
        assert!(matches("**/*.🚀", "a/b/x.🚀"));
        assert!(!matches("?", "ü!"));
    }

    #[test]
    fn pathological_patterns() {
        let text = "a".repeat(5_000);
        assert!(!matches("*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(matches("*a*a*a*a*a*a*a*a*a*a*", &text));
        assert!(!matches("**a**a**a**a**a**a**a**b", &text));
        let nested = "a/".repeat(2_000);
        assert!(!matches("**/**/**/**/**/**/b", &nested));
        assert!(matches("**/**/**/**/**/**/a", &format!("{nested}a")));
    }

    #[test]
    fn errors() {
        assert_eq!(Glob::new(""), Err("empty glob pattern".to_owned()));
        assert_eq!(
            Glob::new("release/[0-9"),
            Err("unclosed character class in \"release/[0-9\"".to_owned())
        );
        assert_eq!(
            Glob::new("[]"),
            Err("unclosed character class in \"[]\"".to_owned())
        );
        assert_eq!(
            Glob::new("[!"),
            Err("unclosed character class in \"[!\"".to_owned())
        );
        assert_eq!(
            Glob::new("[z-a]"),
            Err("invalid range \"z-a\" in \"[z-a]\"".to_owned())
        );
        assert_eq!(
            Glob::new("a\\"),
            Err("trailing backslash in \"a\\\"".to_owned())
        );
    }

    #[test]
    fn any_match_and_text() {
        let globs = [glob("main"), glob("release/*")];
        assert!(any_match(&globs, "release/2"));
        assert!(!any_match(&globs, "dev"));
        assert!(!any_match(&[], "main"));
        assert_eq!(glob("v*").as_str(), "v*");
        assert_eq!(glob("**/*.md").to_string(), "**/*.md");
    }
}
