//! Problems found in user input: a file, a position, a field path and a message.
//!
//! Every check in ferry that looks at something a user wrote (pipeline files, the cluster profile,
//! parameters on a manual run) reports a [`Problem`], never a bare string, so that the CLI, commit
//! statuses and merge-request notes can all point at `file:line:col`.

use std::fmt;

/// One problem in one input file, with where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The file as the user knows it (a path relative to the repository root where possible).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the file as a whole.
    pub line: u32,
    /// 1-based column; 0 when the problem concerns the file as a whole.
    pub column: u32,
    /// The field path, such as `steps[1].resources.gpu_type`; empty for the whole document.
    pub path: String,
    /// What is wrong and, where it helps, what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A list of problems, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Suggests the closest allowed name for a misspelt one ("did you mean ...").
///
/// Returns `None` when nothing is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    given: &str,
    allowed: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (given.chars().count().div_ceil(3)).max(1);
    allowed
        .into_iter()
        .map(|name| (edit_distance(given, name), name))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Formats a list of allowed names for a message: `` `a`, `b`, `c` `` or `(none)`.
pub fn allowed_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if list.is_empty() {
        "(none are defined)".to_owned()
    } else {
        list.join(", ")
    }
}

/// Levenshtein distance over chars, case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("resorces", ["resources", "retries"]),
            Some("resources")
        );
        assert_eq!(
            did_you_mean("gpu_typ", ["gpu", "gpu_type"]),
            Some("gpu_type")
        );
        assert_eq!(did_you_mean("zzzzzz", ["resources", "retries"]), None);
    }

    #[test]
    fn displays_position_and_path() {
        let p = Problem {
            file: ".ferry/a.yaml".into(),
            line: 3,
            column: 5,
            path: "steps[0].name".into(),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), ".ferry/a.yaml:3:5: steps[0].name: bad");
        assert_eq!(allowed_list(["a", "b"]), "`a`, `b`");
        assert_eq!(allowed_list([]), "(none are defined)");
    }
}
