//! What ferry says in answer to commands: the help, the refusal, and the reply that gathers the
//! outcome of each command of a comment. Everything a user wrote is shown inside code spans, so
//! nothing in it is rendered as markdown, mentions anyone or reads as a command.

use std::fmt::Write as _;

use super::parse::{
    OWN_MARKER, USAGE_CANCEL, USAGE_HELP, USAGE_OK_TO_TEST, USAGE_RERUN, USAGE_RUN,
};

/// Longest piece of user text quoted in an answer, in characters.
const MAX_QUOTE: usize = 200;

/// The marker in ferry's reply to comment `key` (`<mr>:<comment id>`): the reporter finds a
/// reply by it after a create whose outcome is unknown, and the parser skips comments that
/// carry it.
pub fn reply_marker(key: &str) -> String {
    format!("{OWN_MARKER}reply:{key} -->")
}

/// The help: every command and what it does. No line starts with `/ferry`.
pub fn help() -> String {
    format!(
        "ferry's commands, each on a line of its own in a comment on the merge request:\n\n\
         - `{USAGE_RUN}`: run PIPELINE (or every pipeline) at the head commit; parameters must be \
         declared by the pipeline, and values with spaces are quoted: `key=\"a b\"`.\n\
         - `{USAGE_RERUN}`: run again the pipelines whose last run at the head commit failed; \
         PIPELINE: that one, whatever its last run did; `--all`: every pipeline.\n\
         - `{USAGE_CANCEL}`: cancel this merge request's queued and running runs (of PIPELINE).\n\
         - `{USAGE_OK_TO_TEST}`: run the head commit of a merge request from a fork or from an \
         author without write access (a later push needs a new approval).\n\
         - `{USAGE_HELP}`: this help.\n\n\
         Commands need developer (GitLab) or write (GitHub) access or more. ferry reacts with 👍 \
         when every command of a comment is done, and replies when it has something to say."
    )
}

/// The answer to someone who may not use commands.
pub fn refusal() -> String {
    format!(
        "Sorry, only people with developer (GitLab) or write (GitHub) access to this repository \
         can use ferry's commands, so nothing was done. Someone who has it can comment \
         `{USAGE_OK_TO_TEST}` to let this merge request's pipelines run."
    )
}

/// `@login` for a plausible login (letters, digits, `-`, `_`, `.`), else nothing.
fn mention(login: &str) -> Option<String> {
    let plausible = !login.is_empty()
        && login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    plausible.then(|| format!("@{login}"))
}

/// A reply: the marker, a mention of `login` (when it is a plausible login), then `body`.
pub fn reply(key: &str, login: &str, body: &str) -> String {
    let mut out = reply_marker(key);
    out.push('\n');
    if let Some(m) = mention(login) {
        let _ = writeln!(out, "{m}");
    }
    let _ = write!(out, "\n{body}\n");
    out
}

/// Each command line, quoted, with what came of it.
pub fn outcomes(list: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (line, text)) in list.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        let _ = write!(out, "{}\n\n{text}", code_span(line));
    }
    out
}

/// `text` as one markdown code span: on one line, clipped, fenced with more backticks than it
/// holds in a row.
pub fn code_span(text: &str) -> String {
    let mut one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTE)
        .collect();
    if text.chars().count() > MAX_QUOTE {
        one_line.push('…');
    }
    let longest = one_line
        .split(|c| c != '`')
        .map(str::len)
        .max()
        .unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if one_line.starts_with('`') || one_line.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{one_line}{pad}{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::commands::parse::parse;

    #[test]
    fn answers_never_read_as_commands() {
        assert!(parse(&help()).is_empty());
        assert!(parse(&refusal()).is_empty());
        let list = [("/ferry run x".to_owned(), "/ferry run y".to_owned())];
        assert!(parse(&reply("7:1", "dev", &outcomes(&list))).is_empty());
        // Even without the marker, the help and the refusal show commands in code spans only.
        for text in [help(), refusal()] {
            assert!(
                text.lines()
                    .all(|l| !l.trim_start().to_lowercase().starts_with("/ferry")),
                "{text}"
            );
        }
    }

    #[test]
    fn user_text_stays_inside_its_code_span() {
        assert_eq!(code_span("/ferry run"), "`/ferry run`");
        assert_eq!(code_span("a `b` c"), "``a `b` c``");
        assert_eq!(code_span("`x`"), "`` `x` ``");
        assert_eq!(code_span("a\nb\r\nc"), "`a b  c`");
        let long = "x".repeat(500);
        assert_eq!(code_span(&long).chars().count(), MAX_QUOTE + 3);
    }

    #[test]
    fn replies_mention_only_plausible_logins() {
        let list = [
            ("/ferry help".to_owned(), "text".to_owned()),
            ("/ferry x".to_owned(), "more".to_owned()),
        ];
        assert_eq!(
            reply("7:9", "dev-1", &outcomes(&list)),
            "<!-- ferry:reply:7:9 -->\n@dev-1\n\n`/ferry help`\n\ntext\n\n`/ferry x`\n\nmore\n"
        );
        assert_eq!(
            reply("7:9", "a b](http://x)", "body"),
            "<!-- ferry:reply:7:9 -->\n\nbody\n"
        );
        assert_eq!(
            reply("7:9", "", "body"),
            "<!-- ferry:reply:7:9 -->\n\nbody\n"
        );
    }
}
