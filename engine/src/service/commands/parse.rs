//! The comment command language: `/ferry <verb> [arguments]` lines in a merge request comment.
//!
//! Pure: text in, [`CommandLine`]s out; deciding what a command does is the parent module's job.
//! The rules (users read them in `/ferry help` and `docs/COMMANDS.md`):
//!
//! - A command is a line that starts with `/ferry` (after at most three spaces, as in Markdown),
//!   followed by a space or the end of the line. `/ferry` and the verb match in any case
//!   (`/Ferry RUN`); pipeline names and parameters are taken as written.
//! - Everything else is ignored: text before and after the command lines, text before `/ferry` on
//!   the same line ("please /ferry run" is prose), fenced code blocks (```` ``` ```` or `~~~`),
//!   indented code (four spaces or a tab) and quotes (`> /ferry run`). Pasting a command as an
//!   example or quoting someone's never runs it.
//! - A comment that carries ferry's own marker (`<!-- ferry:`) has no commands: ferry's replies
//!   quote commands and list them in the help, and must never trigger themselves.
//! - Several command lines are several commands, run in order; at most [`MAX_COMMANDS`] per
//!   comment (the rest are answered as not run). The comment gets one answer covering them all.
//! - Arguments are split at whitespace. Double or single quotes group (`key="a b"`, `'a b'`);
//!   inside double quotes a backslash takes the next character as it is (`"say \"hi\""`).
//!   `key=value` is a parameter (split at the first `=`); `--all` is the only flag (of `rerun`).

use super::text::code_span;

/// Most commands one comment may carry.
pub const MAX_COMMANDS: usize = 10;

/// Longest command line looked at, in bytes; longer ones are refused.
const MAX_LINE: usize = 4096;

/// The marker every comment ferry writes carries; such comments have no commands.
pub const OWN_MARKER: &str = "<!-- ferry:";

/// One command line as written (trimmed), and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The line, trimmed, as the user wrote it (for quoting in the answer).
    pub text: String,
    /// What it asks for.
    pub command: Command,
}

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/ferry run [PIPELINE] [key=value ...]`: run a pipeline (or every pipeline) at the head.
    Run {
        /// The pipeline; `None` for every pipeline.
        pipeline: Option<String>,
        /// Parameter overrides, in the order given.
        params: Vec<(String, String)>,
    },
    /// `/ferry rerun [PIPELINE] [--all]`: run again what failed at the head (or everything).
    Rerun {
        /// Only this pipeline.
        pipeline: Option<String>,
        /// Every pipeline, not only the failed ones.
        all: bool,
    },
    /// `/ferry cancel [PIPELINE]`: cancel the merge request's active runs.
    Cancel {
        /// Only this pipeline's runs.
        pipeline: Option<String>,
    },
    /// `/ferry ok-to-test`: approve the head commit of an untrusted merge request.
    OkToTest,
    /// `/ferry help` (and `/ferry` alone).
    Help,
    /// A verb ferry does not know.
    Unknown {
        /// The verb, as written.
        verb: String,
    },
    /// A known verb with arguments it does not take, or a line that cannot be read.
    Invalid {
        /// The verb's usage line.
        usage: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The usage line of each verb, as the help shows it.
pub const USAGE_RUN: &str = "/ferry run [PIPELINE] [key=value ...]";
/// See [`USAGE_RUN`].
pub const USAGE_RERUN: &str = "/ferry rerun [PIPELINE] [--all]";
/// See [`USAGE_RUN`].
pub const USAGE_CANCEL: &str = "/ferry cancel [PIPELINE]";
/// See [`USAGE_RUN`].
pub const USAGE_OK_TO_TEST: &str = "/ferry ok-to-test";
/// See [`USAGE_RUN`].
pub const USAGE_HELP: &str = "/ferry help";

/// Every command in `body`, in order (see the module doc for the rules). At most
/// [`MAX_COMMANDS`], plus one [`Command::Invalid`] saying the rest were not run.
pub fn parse(body: &str) -> Vec<CommandLine> {
    if body.contains(OWN_MARKER) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for line in body.lines() {
        let Some(text) = unindented(line) else {
            continue;
        };
        if let Some(open) = fence {
            if closes(text, open) {
                fence = None;
            }
            continue;
        }
        if let Some(open) = opens(text) {
            fence = Some(open);
            continue;
        }
        let Some(rest) = after_prefix(text) else {
            continue;
        };
        if out.len() == MAX_COMMANDS {
            out.push(CommandLine {
                text: text.trim().to_owned(),
                command: Command::Invalid {
                    usage: USAGE_HELP,
                    message: format!(
                        "a comment may carry at most {MAX_COMMANDS} commands; this one and \
                         those after it were not run"
                    ),
                },
            });
            break;
        }
        out.push(CommandLine {
            text: text.trim().to_owned(),
            command: command(rest),
        });
    }
    out
}

/// The line without its indentation, unless it is indented code (four spaces or a tab).
fn unindented(line: &str) -> Option<&str> {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    let text = &line[spaces..];
    (spaces < 4 && !text.starts_with('\t')).then_some(text)
}

/// A fence that opens a code block: three or more backticks or tildes.
fn opens(text: &str) -> Option<(char, usize)> {
    let c = text.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = text.chars().take_while(|x| *x == c).count();
    (n >= 3).then_some((c, n))
}

/// Whether `text` closes a block opened by `open`: the same character, at least as many, and
/// nothing after them.
fn closes(text: &str, (c, n): (char, usize)) -> bool {
    let run = text.chars().take_while(|x| *x == c).count();
    run >= n && text[run * c.len_utf8()..].trim().is_empty()
}

/// What follows `/ferry` when the line is a command.
fn after_prefix(text: &str) -> Option<&str> {
    const PREFIX: &str = "/ferry";
    let head = text.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &text[PREFIX.len()..];
    match rest.chars().next() {
        None => Some(rest),
        Some(c) if c.is_whitespace() => Some(rest),
        Some(_) => None,
    }
}

/// The command of what follows `/ferry`.
fn command(rest: &str) -> Command {
    if rest.len() > MAX_LINE {
        return Command::Invalid {
            usage: USAGE_HELP,
            message: format!("the command line is longer than {MAX_LINE} bytes"),
        };
    }
    let mut tokens = match tokens(rest) {
        Ok(tokens) => tokens.into_iter(),
        Err(message) => {
            return Command::Invalid {
                usage: USAGE_HELP,
                message,
            };
        }
    };
    let Some(verb) = tokens.next() else {
        return Command::Help;
    };
    let args: Vec<String> = tokens.collect();
    match verb.to_lowercase().as_str() {
        "run" => run(&args),
        "rerun" => rerun(&args),
        "cancel" => cancel(&args),
        "ok-to-test" => match args.first() {
            None => Command::OkToTest,
            Some(arg) => unexpected(USAGE_OK_TO_TEST, arg),
        },
        // Help takes no arguments, but `/ferry help run` is clear enough.
        "help" => Command::Help,
        _ => Command::Unknown { verb },
    }
}

fn unexpected(usage: &'static str, arg: &str) -> Command {
    Command::Invalid {
        usage,
        message: format!("unexpected {}", code_span(arg)),
    }
}

fn run(args: &[String]) -> Command {
    let mut pipeline = None;
    let mut params: Vec<(String, String)> = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if let Some((key, value)) = arg.split_once('=') {
            if key.is_empty() {
                return Command::Invalid {
                    usage: USAGE_RUN,
                    message: format!("{} has no parameter name before `=`", code_span(arg)),
                };
            }
            if params.iter().any(|(k, _)| k == key) {
                return Command::Invalid {
                    usage: USAGE_RUN,
                    message: format!("parameter {} is given twice", code_span(key)),
                };
            }
            params.push((key.to_owned(), value.to_owned()));
        } else if i == 0 && !arg.starts_with('-') {
            pipeline = Some(arg.clone());
        } else if arg.starts_with('-') {
            return unexpected(USAGE_RUN, arg);
        } else {
            return Command::Invalid {
                usage: USAGE_RUN,
                message: format!(
                    "unexpected {}: the pipeline comes first, then parameters as key=value",
                    code_span(arg)
                ),
            };
        }
    }
    Command::Run { pipeline, params }
}

fn rerun(args: &[String]) -> Command {
    let (mut pipeline, mut all) = (None, false);
    for arg in args {
        if arg == "--all" {
            all = true;
        } else if pipeline.is_none() && !arg.starts_with('-') && !arg.contains('=') {
            pipeline = Some(arg.clone());
        } else if arg.contains('=') {
            return Command::Invalid {
                usage: USAGE_RERUN,
                message: format!(
                    "{}: a rerun keeps its parameters; `/ferry run` takes new ones",
                    code_span(arg)
                ),
            };
        } else {
            return unexpected(USAGE_RERUN, arg);
        }
    }
    Command::Rerun { pipeline, all }
}

fn cancel(args: &[String]) -> Command {
    match args {
        [] => Command::Cancel { pipeline: None },
        [one] if !one.starts_with('-') && !one.contains('=') => Command::Cancel {
            pipeline: Some(one.clone()),
        },
        [one] => unexpected(USAGE_CANCEL, one),
        [_, extra, ..] => unexpected(USAGE_CANCEL, extra),
    }
}

/// Splits at whitespace; quotes group, a backslash escapes inside double quotes.
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut started = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(next) => current.push(next),
                            None => return Err(unterminated('"')),
                        },
                        Some(other) => current.push(other),
                        None => return Err(unterminated('"')),
                    }
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(other) => current.push(other),
                        None => return Err(unterminated('\'')),
                    }
                }
            }
            other => {
                started = true;
                current.push(other);
            }
        }
    }
    if started {
        out.push(current);
    }
    Ok(out)
}

fn unterminated(quote: char) -> String {
    format!("a quote ({quote}) is not closed")
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
