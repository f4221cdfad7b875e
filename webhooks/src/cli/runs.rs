//! The API client verbs: `ferry runs list|show|rerun|cancel` and `ferry trigger`. Human tables by
//! default, the API's JSON with `--json`. Exit code 1 when the server refuses (the message and
//! its details go to standard error).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ferry_engine::pipeline::EventKind;
use ferry_engine::service::operations::Verdict;
use ferry_engine::service::summary::duration;
use ferry_engine::store::RunState;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::{Answer, Client, ServerArgs, print_json, table};
use crate::server::api::types::{RerunRequest, RunDetail, RunList, RunSummary, TriggerRequest};

/// `ferry runs ...`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List(ListArgs),
    /// One run: steps, metrics against the baseline, links.
    Show {
        /// The run's id.
        id: i64,
        #[command(flatten)]
        out: Output,
    },
    /// A new run of the same pipeline at the same commit.
    Rerun {
        /// The run's id.
        id: i64,
        /// Only if the latest run of that pipeline at that commit failed.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Stop a run.
    Cancel {
        /// The run's id.
        id: i64,
        #[command(flatten)]
        out: Output,
    },
}

/// Server and output options shared by the client verbs.
#[derive(Debug, Args)]
pub struct Output {
    #[command(flatten)]
    server: ServerArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Output {
    /// Where the server is and the token to show it.
    pub(super) fn server(&self) -> &ServerArgs {
        &self.server
    }
}

/// `ferry runs list` filters.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this project.
    #[arg(long)]
    project: Option<String>,
    /// Only this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// Only this branch.
    #[arg(long)]
    branch: Option<String>,
    /// Only this merge request (pull request) number.
    #[arg(long = "mr")]
    merge_request: Option<i64>,
    /// Only runs in this state (queued, waiting, submitted, running, succeeded, failed, cancelled).
    #[arg(long)]
    state: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// The page after this cursor (printed under a full page).
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    out: Output,
}

/// `ferry trigger PROJECT PIPELINE`.
#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The project.
    project: String,
    /// The pipeline.
    pipeline: String,
    /// A branch, tag or full ref (default: the project's default branch).
    #[arg(long = "ref", conflicts_with = "sha")]
    git_ref: Option<String>,
    /// A commit (40 hexadecimal digits).
    #[arg(long)]
    sha: Option<String>,
    /// Parameter `key=value` (repeatable; only declared parameters).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    #[command(flatten)]
    out: Output,
}

/// Runs `ferry runs ...`.
pub fn runs(command: RunsCommand) -> Result<ExitCode> {
    match command {
        RunsCommand::List(args) => list(args),
        RunsCommand::Show { id, out } => {
            let client = Client::new(&out.server)?;
            finish(
                client.get::<RunDetail>(&format!("/api/v1/runs/{id}"))?,
                &out,
                |d| {
                    println!("{}", show_text(d));
                },
            )
        }
        RunsCommand::Rerun { id, failed, out } => {
            let client = Client::new(&out.server)?;
            let body = RerunRequest {
                failed_only: failed,
            };
            let answer = client.post(&format!("/api/v1/runs/{id}/rerun"), &body)?;
            finish(answer, &out, |r: &RunSummary| {
                println!("run {} queued (rerun of run {id})", r.id);
            })
        }
        RunsCommand::Cancel { id, out } => {
            let client = Client::new(&out.server)?;
            let answer = client.post(&format!("/api/v1/runs/{id}/cancel"), &Value::Null)?;
            finish(answer, &out, |r: &RunSummary| match r.state {
                RunState::Cancelled => println!("run {} cancelled", r.id),
                _ => println!("run {} is stopping (now {})", r.id, r.state),
            })
        }
    }
}

/// Runs `ferry trigger`.
pub fn trigger(args: TriggerArgs) -> Result<ExitCode> {
    let params = super::render::parse_params(&args.params)?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect::<BTreeMap<_, _>>();
    let body = TriggerRequest {
        project: args.project,
        pipeline: args.pipeline,
        git_ref: args.git_ref,
        sha: args.sha,
        params,
    };
    let client = Client::new(&args.out.server)?;
    finish(
        client.post("/api/v1/runs", &body)?,
        &args.out,
        |r: &RunSummary| {
            println!(
                "run {} queued: {}/{} at {} ({})",
                r.id,
                r.project,
                r.pipeline,
                short(&r.sha),
                r.git_ref
            );
        },
    )
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let mut query = form_query(&[
        ("project", args.project.as_deref()),
        ("pipeline", args.pipeline.as_deref()),
        ("branch", args.branch.as_deref()),
        ("state", args.state.as_deref()),
        ("cursor", args.cursor.as_deref()),
    ]);
    if let Some(mr) = args.merge_request {
        query.push(format!("merge_request={mr}"));
    }
    query.push(format!("limit={}", args.limit));
    let client = Client::new(&args.out.server)?;
    let answer = client.get::<RunList>(&format!("/api/v1/runs?{}", query.join("&")))?;
    finish(answer, &args.out, |page| {
        println!("{}", list_text(&page.runs));
        if let Some(cursor) = &page.next_cursor {
            eprintln!("more runs: --cursor {cursor}");
        }
    })
}

/// `key=value` pairs, percent-encoded, for the values that are set.
pub(super) fn form_query(pairs: &[(&str, Option<&str>)]) -> Vec<String> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect()
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Prints a successful answer (as JSON with `--json`, else with `human`), or the refusal.
pub(super) fn finish<T: Serialize + DeserializeOwned>(
    answer: Answer<T>,
    out: &Output,
    human: impl FnOnce(&T),
) -> Result<ExitCode> {
    match answer {
        Answer::Ok(value) => {
            if out.json {
                print_json(&value)?;
            } else {
                human(&value);
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Refused(status, text) => {
            eprintln!("ferry: the server refused ({status}): {text}");
            Ok(ExitCode::from(1))
        }
    }
}

fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

fn trigger_word(trigger: EventKind) -> String {
    serde_json::to_value(trigger)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn where_(run: &RunSummary) -> String {
    match (&run.merge_request, &run.branch, &run.tag) {
        (Some(mr), _, _) => format!("!{mr}"),
        (None, Some(branch), _) => branch.clone(),
        (None, None, Some(tag)) => tag.clone(),
        (None, None, None) => run.git_ref.clone(),
    }
}

fn list_text(runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return "no runs".to_owned();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.project.clone(),
                r.pipeline.clone(),
                r.state.to_string(),
                trigger_word(r.trigger),
                where_(r),
                short(&r.sha).to_owned(),
                r.created_at
                    .get(..19)
                    .unwrap_or(&r.created_at)
                    .replace('T', " "),
                r.duration_ms.map(duration).unwrap_or_default(),
                r.triggered_by.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "PROJECT",
            "PIPELINE",
            "STATE",
            "TRIGGER",
            "REF",
            "SHA",
            "CREATED (UTC)",
            "DURATION",
            "BY",
        ],
        &rows,
    )
}

fn show_text(d: &RunDetail) -> String {
    let r = &d.run;
    let mut lines = vec![format!(
        "run {}  {}/{}  {}",
        r.id, r.project, r.pipeline, r.state
    )];
    let mut field = |name: &str, value: String| lines.push(format!("{name:<10}{value}"));
    let mut trigger = trigger_word(r.trigger);
    if let Some(by) = &r.triggered_by {
        trigger.push_str(&format!(" by {by}"));
    } else if let Some(actor) = d.event.as_ref().and_then(|e| e.actor.as_ref()) {
        trigger.push_str(&format!(" by {actor}"));
    }
    if let Some(of) = r.rerun_of {
        trigger.push_str(&format!(" (rerun of run {of})"));
    }
    field("trigger", trigger);
    field("commit", format!("{} ({})", r.sha, r.git_ref));
    field("created", r.created_at.clone());
    if let Some(ms) = r.duration_ms {
        field("duration", duration(ms));
    }
    if let Some(message) = &r.message {
        field("message", message.clone());
    }
    if !d.params.is_empty() {
        let params: Vec<String> = d
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        field("params", params.join(" "));
    }
    if let Some(link) = &d.links.dashboard {
        field("dashboard", link.clone());
    }
    if let Some(link) = &d.links.argo {
        field("argo", link.clone());
    }
    for p in &d.problems {
        lines.push(format!(
            "problem   {}:{}:{}: {}: {}",
            p.file, p.line, p.column, p.path, p.message
        ));
    }
    let steps: Vec<Vec<String>> = d
        .steps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.to_string(),
                s.attempts.to_string(),
                s.duration_ms.map(duration).unwrap_or_default(),
                s.message.clone().unwrap_or_default().replace('\n', " "),
            ]
        })
        .collect();
    let mut out = lines.join("\n");
    if !steps.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(
            &["STEP", "STATE", "ATTEMPTS", "DURATION", "MESSAGE"],
            &steps,
        ));
    }
    if !d.metrics.values.is_empty() {
        out.push_str("\n\n");
        out.push_str(&metrics_text(d));
    }
    out
}

fn metrics_text(d: &RunDetail) -> String {
    let rows: Vec<Vec<String>> = d
        .metrics
        .values
        .iter()
        .map(|m| {
            let change = match (m.change, m.verdict) {
                (_, Some(Verdict::Same)) => "same".to_owned(),
                (Some(c), Some(v)) => {
                    let sign = if c < 0.0 { "-" } else { "+" };
                    format!("{sign}{} {}", number(c.abs()), v.as_str())
                }
                _ => String::new(),
            };
            vec![
                m.name.clone(),
                m.step.clone(),
                number(m.value),
                m.baseline.map(number).unwrap_or_default(),
                change,
            ]
        })
        .collect();
    let baseline = match (d.metrics.baseline_run, &d.metrics.baseline_branch) {
        (Some(id), Some(branch)) => format!("baseline: run {id} on {branch}"),
        (_, Some(branch)) => format!("no baseline yet on {branch}"),
        (_, None) => "no baseline (not a branch run)".to_owned(),
    };
    format!(
        "{baseline}\n{}",
        table(&["METRIC", "STEP", "VALUE", "BASELINE", "CHANGE"], &rows)
    )
}

/// A metric value with at most 4 decimals, without trailing zeros.
fn number(v: f64) -> String {
    let text = format!("{v:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
