//! The run summary: the markdown of a run's MR note / PR comment (and GitHub check run), and the
//! one-line descriptions of its commit statuses. Pure functions of a [`SummaryInput`].
//!
//! The note shows every step with its state, duration, GPUs and GPU-hours; the metrics the steps
//! published next to the baseline's (the latest succeeded run of the same pipeline on the target
//! branch) and the change, marked better or worse; for a failure the run's message, the first
//! failed step's message and (when a log collector provides it) the tail of its log; for an
//! invalid pipeline every problem at `file:line:col`; and links to the dashboard and the Argo UI.
//!
//! **Better or worse.** A metric is better when *lower* if its name, split on anything that is not
//! a letter or digit, has a word that contains `loss`, `error`, `perplexity` or `latency`, or is
//! `wer` or `cer` (word and character error rates): `val_loss`, `eval/errors`, `p95_latency_ms`,
//! `test-wer`. Every other metric is better when *higher* (`accuracy`, `f1`, `bleu`). Whole words
//! for `wer`/`cer`, so that `power` or `cancer_recall` are not taken for error rates.
//!
//! **Nothing secret, nothing structural from users.** Every text that comes from a run (messages,
//! log lines) goes through [`redact`] with every secret value the run can see, and is escaped so
//! that it cannot close a table, add a link or hide an HTML comment (such as another run's
//! marker) in the note.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::pipeline::Pipeline;
use crate::store::{Run, RunState, Step, StepState, UnixMillis};

/// Everything the summary of a run is made from.
#[derive(Debug, Clone, Copy)]
pub struct SummaryInput<'a> {
    /// The run.
    pub run: &'a Run,
    /// Its steps, in pipeline order.
    pub steps: &'a [Step],
    /// Its pipeline, parsed from the run's stored file (`None` if it no longer parses).
    pub pipeline: Option<&'a Pipeline>,
    /// The baseline to compare metrics with.
    pub baseline: Option<Baseline<'a>>,
    /// Links to show.
    pub links: &'a Links,
    /// The tail of the first failed step's log (stored by the dispatcher when the run failed,
    /// already redacted with the executor's secrets). It is redacted here like every other text.
    pub log_tail: Option<&'a str>,
    /// Every secret value the run can see, replaced by `***` wherever it appears.
    pub secrets: &'a [String],
    /// The time durations of unfinished steps are measured to.
    pub now: UnixMillis,
}

/// The run a summary compares its metrics with.
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    /// The baseline run.
    pub run: &'a Run,
    /// Its steps (with their metrics).
    pub steps: &'a [Step],
}

/// Links of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The dashboard's run page (`<public_url>/runs/<id>`).
    pub dashboard: Option<String>,
    /// The workflow in the Argo UI (`<ui_url>/workflows/<namespace>/ferry-<id>`).
    pub argo: Option<String>,
}

impl Links {
    /// The links of run `id` from the configured bases (either may be absent).
    pub fn new(
        public_url: Option<&str>,
        argo_ui_url: Option<&str>,
        namespace: &str,
        id: crate::store::RunId,
    ) -> Links {
        let base = |u: &str| u.trim_end_matches('/').to_owned();
        Links {
            dashboard: public_url.map(|u| format!("{}/runs/{id}", base(u))),
            argo: argo_ui_url.map(|u| format!("{}/workflows/{namespace}/ferry-{id}", base(u))),
        }
    }
}

/// The hidden line that identifies run `id`'s note (searched for after a crash).
pub fn marker(id: crate::store::RunId) -> String {
    format!("<!-- ferry:run:{id} -->")
}

/// `text` with every secret value replaced by `***` (longest first, so that a secret containing
/// another is replaced whole). Empty values are ignored.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut ordered: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in ordered {
        if out.contains(secret) {
            out = out.replace(secret, "***");
        }
    }
    out
}

/// Whether a lower value of metric `name` is better (see the module doc).
pub fn lower_is_better(name: &str) -> bool {
    name.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|word| {
            ["loss", "error", "perplexity", "latency"]
                .iter()
                .any(|k| word.contains(k))
                || word == "wer"
                || word == "cer"
        })
}

/// One line of user text, safe inside a table cell or a paragraph.
fn inline(text: &str, secrets: &[String]) -> String {
    redact(text, secrets)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
        .replace('[', "\\[")
}

/// `1h 02m`, `3m 05s`, `12s`.
pub fn duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// How long a step has run: to its end, or to `now` while it runs; `None` before it starts.
pub fn step_millis(step: &Step, now: UnixMillis) -> Option<i64> {
    let start = step.started_at?;
    Some(step.finished_at.unwrap_or(now) - start)
}

fn run_icon(state: RunState) -> &'static str {
    match state {
        RunState::Queued | RunState::Waiting | RunState::Submitted => "🕒",
        RunState::Running => "⏳",
        RunState::Succeeded => "✅",
        RunState::Failed => "❌",
        RunState::Cancelled => "⏹️",
    }
}

/// The note (or check run summary) of a run.
pub fn render(input: &SummaryInput<'_>) -> String {
    let run = input.run;
    let mut out = marker(run.id);
    let title = if run.problems.is_empty() {
        run.state.as_str().to_owned()
    } else {
        "invalid pipeline".to_owned()
    };
    let _ = write!(
        out,
        "\n### {} ferry/{}: {title} (run #{})\n\n",
        run_icon(run.state),
        inline(&run.pipeline, &[]),
        run.id
    );
    let short: String = run.sha.chars().take(8).collect();
    let _ = write!(out, "Commit `{short}`");
    if let Some(branch) = &run.branch {
        let _ = write!(out, " on `{}`", inline(branch, &[]).replace('`', "'"));
    }
    if let Some(url) = &input.links.dashboard {
        let _ = write!(out, " · [dashboard]({url})");
    }
    if let Some(url) = &input.links.argo {
        let _ = write!(out, " · [Argo]({url})");
    }
    out.push('\n');
    if !run.problems.is_empty() {
        problems(&mut out, input);
        return out;
    }
    steps_table(&mut out, input);
    metrics_table(&mut out, input);
    failure(&mut out, input);
    out
}

fn problems(out: &mut String, input: &SummaryInput<'_>) {
    out.push_str("\nThe pipeline file is not valid, so nothing ran:\n\n");
    for p in &input.run.problems {
        let path = if p.path.is_empty() {
            String::new()
        } else {
            format!(" {}:", inline(&p.path, input.secrets))
        };
        let _ = writeln!(
            out,
            "- `{}:{}:{}`{path} {}",
            inline(&p.file, &[]).replace('`', "'"),
            p.line,
            p.column,
            inline(&p.message, input.secrets)
        );
    }
}

fn steps_table(out: &mut String, input: &SummaryInput<'_>) {
    if input.steps.is_empty() {
        return;
    }
    out.push_str("\n| step | state | duration | GPUs | GPU-hours |\n|---|---|---|---|---|\n");
    let mut total_gpu_hours = 0.0;
    for step in input.steps {
        let millis = step_millis(step, input.now);
        let resources = input
            .pipeline
            .and_then(|p| p.step(&step.name))
            .map(|s| (step_gpus(s), s.resources.gpu_type.clone()));
        let (gpus, gpu_type) = resources.unwrap_or((0, None));
        let gpu_hours = millis.map(|ms| gpu_hours(gpus, ms));
        let gpu_text = match (gpus, gpu_type) {
            (0, _) => "—".to_owned(),
            (n, Some(t)) => format!("{n} × {}", inline(&t, &[])),
            (n, None) => n.to_string(),
        };
        let hours_text = match gpu_hours {
            Some(h) if gpus > 0 => {
                total_gpu_hours += h;
                format!("{h:.2}")
            }
            Some(_) | None => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {gpu_text} | {hours_text} |",
            inline(&step.name, &[]),
            step.state,
            millis.map_or_else(|| "—".to_owned(), duration),
        );
    }
    let run = input.run;
    let total = run
        .started_at
        .map(|s| duration(run.finished_at.unwrap_or(input.now) - s))
        .unwrap_or_else(|| "—".to_owned());
    let _ = writeln!(out, "| **total** | | {total} | | {total_gpu_hours:.2} |");
}

/// The GPUs a step holds while it runs: GPUs per node times nodes.
pub fn step_gpus(step: &crate::pipeline::Step) -> u32 {
    step.resources.gpu * step.nodes.max(1)
}

/// GPU-hours of `gpus` GPUs held for `millis` milliseconds.
pub fn gpu_hours(gpus: u32, millis: i64) -> f64 {
    f64::from(gpus) * millis as f64 / 3_600_000.0
}

/// `(step, metric) -> value` for every numeric metric the steps published.
pub(crate) fn metrics_of(steps: &[Step]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for step in steps {
        let Some(Value::Object(map)) = &step.metrics else {
            continue;
        };
        for (name, value) in map {
            if let Some(v) = value.as_f64() {
                out.insert((step.name.clone(), name.clone()), v);
            }
        }
    }
    out
}

/// A metric value: integers as they are, others with at most 4 decimals.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let text = format!("{v:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The change from `base` to `value` of metric `name`: `+0.02 (+2.2%) better`, `same`.
pub fn change(name: &str, value: f64, base: f64) -> String {
    let delta = value - base;
    if delta == 0.0 {
        return "same".to_owned();
    }
    let sign = if delta > 0.0 { "+" } else { "−" };
    let percent = if base == 0.0 {
        String::new()
    } else {
        format!(" ({sign}{:.1}%)", (delta / base * 100.0).abs())
    };
    let better = (delta < 0.0) == lower_is_better(name);
    let verdict = if better { "better" } else { "worse" };
    format!("{sign}{}{percent} {verdict}", number(delta.abs()))
}

fn metrics_table(out: &mut String, input: &SummaryInput<'_>) {
    let current = metrics_of(input.steps);
    if current.is_empty() {
        return;
    }
    let base = input
        .baseline
        .map(|b| metrics_of(b.steps))
        .unwrap_or_default();
    out.push_str("\n#### Metrics\n\n");
    match input.baseline {
        Some(b) => {
            let _ = writeln!(
                out,
                "Baseline: run #{} on `{}`.\n",
                b.run.id,
                inline(b.run.branch.as_deref().unwrap_or("?"), &[]).replace('`', "'")
            );
        }
        None => out.push_str("No baseline yet (no succeeded run on the target branch).\n\n"),
    }
    out.push_str("| metric | step | value | baseline | change |\n|---|---|---|---|---|\n");
    for ((step, name), value) in &current {
        let (base_text, change_text) = match base.get(&(step.clone(), name.clone())) {
            Some(b) => (number(*b), change(name, *value, *b)),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {base_text} | {change_text} |",
            inline(name, &[]),
            inline(step, &[]),
            number(*value)
        );
    }
    out.push_str(
        "\nLower is better for metrics named with loss, error, perplexity, latency, wer or cer; \
         higher for the others.\n",
    );
}

fn failure(out: &mut String, input: &SummaryInput<'_>) {
    let run = input.run;
    if run.state != RunState::Failed {
        return;
    }
    out.push_str("\n#### Failure\n\n");
    if let Some(message) = &run.message {
        let _ = writeln!(out, "> {}\n", inline(message, input.secrets));
    }
    let first = input.steps.iter().find(|s| s.state == StepState::Failed);
    if let Some(step) = first {
        let _ = writeln!(
            out,
            "**{}** failed: {}",
            inline(&step.name, &[]),
            inline(
                step.message.as_deref().unwrap_or("(no message)"),
                input.secrets
            )
        );
    }
    if let Some(tail) = input.log_tail {
        let tail = redact(tail, input.secrets);
        let longest = longest_backtick_run(&tail);
        let fence = "`".repeat(longest.max(2) + 1);
        let _ = write!(
            out,
            "\n<details><summary>Log tail</summary>\n\n{fence}text\n{}\n{fence}\n\n</details>\n",
            tail.trim_end()
        );
    }
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// The description of the pipeline's own status (clipped by the forge client).
pub fn run_description(input: &SummaryInput<'_>) -> String {
    let run = input.run;
    if let Some(p) = run.problems.first() {
        let more = match run.problems.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return format!("invalid pipeline: {p}{more}");
    }
    let elapsed = run
        .started_at
        .map(|s| duration(run.finished_at.unwrap_or(input.now) - s));
    match run.state {
        RunState::Queued => "queued".to_owned(),
        RunState::Waiting => match &run.message {
            // A quota's message says it is waiting (`service::quota`).
            Some(m) if m.starts_with("waiting") => redact(m, input.secrets),
            Some(m) => format!("waiting: {}", redact(m, input.secrets)),
            None => "waiting for quota or approval".to_owned(),
        },
        RunState::Submitted => "submitted".to_owned(),
        RunState::Running => "running".to_owned(),
        RunState::Succeeded => match elapsed {
            Some(e) => format!("succeeded in {e}"),
            None => "succeeded".to_owned(),
        },
        RunState::Failed => {
            let step = input.steps.iter().find(|s| s.state == StepState::Failed);
            let why = step
                .map(|s| format!("{}: {}", s.name, s.message.as_deref().unwrap_or("failed")))
                .or_else(|| run.message.clone())
                .unwrap_or_default();
            format!("failed: {}", redact(&why, input.secrets))
        }
        // Who cancelled it or what superseded it (`cancelled by @dev ...`, `superseded by run 42
        // (abc1234)`, `the merge request was closed`).
        RunState::Cancelled => match &run.message {
            Some(m) if m.starts_with("cancelled") => redact(m, input.secrets),
            Some(m) => format!("cancelled: {}", redact(m, input.secrets)),
            None => "cancelled".to_owned(),
        },
    }
}

/// The description of one step's status.
pub fn step_description(step: &Step, secrets: &[String], now: UnixMillis) -> String {
    let with_message = |word: &str| match &step.message {
        Some(m) => format!("{word}: {}", redact(m, secrets)),
        None => word.to_owned(),
    };
    match step.state {
        StepState::Pending => "pending".to_owned(),
        StepState::Running if step.attempts > 1 => format!("running (attempt {})", step.attempts),
        StepState::Running => "running".to_owned(),
        StepState::Succeeded => match step_millis(step, now) {
            Some(ms) => format!("succeeded in {}", duration(ms)),
            None => "succeeded".to_owned(),
        },
        StepState::Failed => with_message("failed"),
        StepState::Skipped => with_message("skipped"),
        StepState::Cancelled => "cancelled".to_owned(),
    }
}

#[cfg(test)]
mod tests;
