//! Builds the data the templates lay out, in two parts.
//!
//! The *skeleton* context (for `workflow.json.hbs`) depends only on the pipeline, the profile and
//! the set of steps skipped at creation: what a GPU type means, which volumes a step mounts, how
//! `needs` and `if.metrics` become `depends` and `when`. The *run* context (for `run.json.hbs`)
//! holds everything that differs between two runs: names, labels, annotations and the workflow
//! arguments. Every run-varying value a pod needs (sha, run id, refs, parameters, scripts, env
//! values) is a workflow argument that the pod spec refers to as `{{workflow.parameters.NAME}}`,
//! which Argo substitutes once, verbatim; so user text never becomes manifest structure, and the
//! rendered skeleton can be reused for every run of the same pipeline (see `Renderer`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{RenderError, RunContext, SkippedStep};
use crate::pipeline::glob::any_match;
use crate::pipeline::{EventKind, ImageRef, Pipeline, Step, StepKind, VolumeRef};
use crate::profile::{Distributed, Profile};

/// The fixed shell wrapper every step runs: the user's script (from `FERRY_SCRIPT`) with `sh -e`,
/// then the metrics file check. It is ferry's code; no user value is pasted into it.
pub const WRAPPER: &str = r#"export NODE_RANK="${NODE_RANK:-${RANK:-${JOB_COMPLETION_INDEX:-0}}}"
sh -e -c "$FERRY_SCRIPT" ferry-script
if [ -n "${FERRY_METRICS_FILE:-}" ]; then
  if [ ! -s "$FERRY_METRICS_FILE" ]; then echo "ferry: metrics file $FERRY_METRICS_FILE was not written" >&2; exit 1; fi
  case "$(tr -d ' \t\r\n' < "$FERRY_METRICS_FILE" | cut -c1)" in
    '{') ;;
    *) echo "ferry: metrics file $FERRY_METRICS_FILE is not a JSON object" >&2; exit 1 ;;
  esac
fi
"#;

/// Workflow argument names for the run context.
const ARG_REPO: &str = "ferry-repo";
const ARG_REF: &str = "ferry-ref";
const ARG_BRANCH: &str = "ferry-branch";
const ARG_TAG: &str = "ferry-tag";
const ARG_SHA: &str = "ferry-sha";
const ARG_RUN_ID: &str = "ferry-run-id";
const ARG_MR: &str = "ferry-mr";
const ARG_EVENT: &str = "ferry-event";
const ARG_WORKSPACE_CLAIM: &str = "ferry-workspace-claim";

/// The skeleton's template context.
pub(super) struct Built {
    pub workflow: Value,
    /// Distributed steps: (index into `workflow.steps`, the inner job's context).
    pub jobs: Vec<(usize, Value)>,
}

fn arg_ref(name: &str) -> String {
    format!("{{{{workflow.parameters.{name}}}}}")
}

/// Label values must be at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub(super) fn label_value(s: &str) -> String {
    let mut v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    v.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The skeleton context: everything but the run.
pub(super) fn skeleton(
    p: &Pipeline,
    profile: &Profile,
    skipped: &[SkippedStep],
) -> Result<Built, RenderError> {
    let mut steps = Vec::new();
    let mut jobs = Vec::new();
    let mut tasks = Vec::new();
    for (i, step) in p.steps.iter().enumerate() {
        if skipped.iter().any(|s| s.step == step.name) {
            continue;
        }
        tasks.push(task(p, i));
        let built = step_context(p, step, profile)?;
        if let Some(job) = built.1 {
            jobs.push((steps.len(), job));
        }
        steps.push(built.0);
    }
    let workflow = json!({
        "arguments": pipeline_arguments(p),
        "service_account": profile.service_account,
        "ttl_seconds": profile.ttl_seconds_after_finished,
        "image_pull_secrets": profile.image_pull_secrets,
        "workspace": p.workspace.as_ref().map(|w| json!({"size": w.size.as_str(), "storage_class": w.storage_class, "access_mode": w.access_mode})),
        "tasks": tasks,
        "steps": steps,
    });
    Ok(Built { workflow, jobs })
}

/// The run context: names, labels, annotations and arguments of one run.
pub(super) fn run(p: &Pipeline, profile: &Profile, ctx: &RunContext) -> Value {
    let labels = json!({
        "ferry.dev/run-id": ctx.run_id.to_string(),
        "ferry.dev/project": label_value(&ctx.project),
        "ferry.dev/pipeline": p.name,
        "ferry.dev/sha": sha_label(&ctx.sha),
    });
    let mut annotations = Map::new();
    annotations.insert("ferry.dev/sha".into(), ctx.sha.clone().into());
    annotations.insert("ferry.dev/repo".into(), ctx.repo_url.clone().into());
    annotations.insert("ferry.dev/ref".into(), ctx.git_ref.clone().into());
    annotations.insert("ferry.dev/event".into(), event_word(ctx.event).into());
    if let Some(url) = &ctx.dashboard_url {
        annotations.insert("ferry.dev/dashboard".into(), url.clone().into());
    }
    json!({
        "name": workflow_name(ctx),
        "namespace": ctx.namespace,
        "labels": labels,
        "annotations": annotations,
        "arguments": arguments(p, profile, ctx),
    })
}

/// The `ferry.dev/sha` label: at most the first 40 hex digits of the commit id. A SHA-1 id is
/// whole; a SHA-256 one (64 digits) would not fit a label value (63 characters at most), so its
/// label is a prefix (still unique in practice) and the `ferry.dev/sha` annotation has it whole.
fn sha_label(sha: &str) -> &str {
    sha.get(..SHA_LABEL_LEN).unwrap_or(sha)
}

/// Hex digits of a commit id that the `ferry.dev/sha` label carries (a whole SHA-1 id).
const SHA_LABEL_LEN: usize = 40;

fn workflow_name(ctx: &RunContext) -> String {
    format!("ferry-{}", ctx.run_id)
}

fn event_word(e: EventKind) -> &'static str {
    match e {
        EventKind::Push => "push",
        EventKind::Tag => "tag",
        EventKind::MergeRequest => "merge_request",
        EventKind::Manual => "manual",
        EventKind::Comment => "comment",
    }
}

/// The arguments every run of the pipeline has: each step's script and env values.
fn pipeline_arguments(p: &Pipeline) -> Vec<Value> {
    let mut args = Vec::new();
    for s in &p.steps {
        args.push(json!({"name": script_arg(s), "value": s.run}));
        for (k, v) in &s.env {
            args.push(json!({"name": env_arg(s, k), "value": v}));
        }
    }
    args
}

/// The arguments of one run: its context and parameters, and the names a distributed step's
/// resources take. They come before the pipeline's own arguments.
fn arguments(p: &Pipeline, profile: &Profile, ctx: &RunContext) -> Vec<Value> {
    let mut args = vec![
        json!({"name": ARG_REPO, "value": ctx.repo_url}),
        json!({"name": ARG_REF, "value": ctx.git_ref}),
        json!({"name": ARG_BRANCH, "value": ctx.branch.clone().unwrap_or_default()}),
        json!({"name": ARG_TAG, "value": ctx.tag.clone().unwrap_or_default()}),
        json!({"name": ARG_SHA, "value": ctx.sha}),
        json!({"name": ARG_RUN_ID, "value": ctx.run_id.to_string()}),
        json!({"name": ARG_MR, "value": ctx.merge_request.map(|m| m.to_string()).unwrap_or_default()}),
        json!({"name": ARG_EVENT, "value": event_word(ctx.event)}),
    ];
    for (k, default) in &p.params {
        args.push(json!({"name": k, "value": ctx.params.get(k).unwrap_or(default)}));
    }
    if p.workspace.is_some() && p.steps.iter().any(is_distributed) {
        args.push(json!({"name": ARG_WORKSPACE_CLAIM, "value": format!("{}-workspace", workflow_name(ctx))}));
    }
    for s in p.steps.iter().filter(|s| is_distributed(s)) {
        let job = job_name(ctx.run_id, s);
        if distributed_kind(profile) == Distributed::Jobset {
            args.push(json!({"name": master_arg(s), "value": format!("{job}-node-0-0.{job}")}));
        }
        args.push(json!({"name": job_arg(s), "value": job}));
    }
    args
}

/// The name of a distributed step's PyTorchJob or JobSet.
fn job_name(run_id: u64, step: &Step) -> String {
    let name = format!("ferry-{run_id}-{}", step.name);
    name.chars()
        .take(40)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

fn job_arg(s: &Step) -> String {
    format!("ferry-job-{}", s.name)
}

fn master_arg(s: &Step) -> String {
    format!("ferry-master-{}", s.name)
}

fn script_arg(s: &Step) -> String {
    format!("ferry-script-{}", s.name)
}

fn env_arg(s: &Step, key: &str) -> String {
    format!("ferry-env-{}-{key}", s.name)
}

/// Steps gated out when the run is created, and the steps that need them.
pub fn decide_skips(p: &Pipeline, ctx: &RunContext) -> Vec<SkippedStep> {
    let mut out: Vec<SkippedStep> = Vec::new();
    for step in &p.steps {
        let reason = gate_reason(step, ctx).or_else(|| {
            step.needs
                .iter()
                .map(|n| &p.steps[*n].name)
                .find(|n| out.iter().any(|s| &&s.step == n))
                .map(|n| format!("needs `{n}`, which is skipped"))
        });
        if let Some(reason) = reason {
            out.push(SkippedStep {
                step: step.name.clone(),
                reason,
            });
        }
    }
    out
}

fn gate_reason(step: &Step, ctx: &RunContext) -> Option<String> {
    let g = &step.gate;
    if let Some(events) = &g.events
        && !events.contains(&ctx.event)
    {
        return Some(format!(
            "`if.events` does not include {}",
            event_word(ctx.event)
        ));
    }
    if let Some(globs) = &g.branches {
        let matched = ctx.branch.as_deref().is_some_and(|b| any_match(globs, b));
        if !matched {
            return Some("`if.branches` does not match the branch".to_owned());
        }
    }
    if let Some(globs) = &g.tags {
        let matched = ctx.tag.as_deref().is_some_and(|t| any_match(globs, t));
        if !matched {
            return Some("`if.tags` does not match the tag".to_owned());
        }
    }
    None
}

fn task(p: &Pipeline, i: usize) -> Value {
    let step = &p.steps[i];
    let depends: Vec<String> = step
        .needs
        .iter()
        .map(|n| format!("{}.Succeeded", p.steps[*n].name))
        .collect();
    let when = step.gate.metrics.as_ref().map(|m| {
        let source = |r: &crate::pipeline::expr::MetricRef| {
            let publisher = m
                .sources
                .get(r)
                .map_or(step.name.as_str(), |i| p.steps[*i].name.as_str());
            format!("tasks['{publisher}'].outputs.parameters['metrics']")
        };
        format!("{{{{={}}}}}", m.expr.to_argo(&source))
    });
    json!({
        "name": step.name,
        "template": template_name(step),
        "depends": (!depends.is_empty()).then(|| depends.join(" && ")),
        "when": when,
    })
}

fn template_name(s: &Step) -> String {
    format!("step-{}", s.name)
}

#[path = "context_step.rs"]
mod step;
use step::step_context;

/// Everything a pod of a step needs, shared by container and distributed steps.
pub(super) struct PodParts {
    pub image: String,
    pub env: Vec<Value>,
    pub resources: Map<String, Value>,
    pub volumes: Vec<Value>,
    pub mounts: Vec<Value>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Value>,
    pub priority_class: Option<String>,
    pub pod_labels: Value,
}

pub(super) fn image_of(step: &Step, profile: &Profile) -> Result<String, RenderError> {
    match &step.image {
        ImageRef::Image(i) => Ok(i.clone()),
        ImageRef::Environment(e) => profile.environments.get(e).cloned().ok_or_else(|| {
            RenderError::Profile(format!("environment `{e}` is not in the profile"))
        }),
    }
}

pub(super) fn is_distributed(step: &Step) -> bool {
    step.nodes > 1
}

pub(super) fn distributed_kind(profile: &Profile) -> Distributed {
    profile.distributed
}

pub(super) fn kind_word(k: StepKind) -> &'static str {
    match k {
        StepKind::Train => "train",
        StepKind::Evaluate => "evaluate",
        StepKind::Deploy => "deploy",
        StepKind::Task => "task",
    }
}

pub(super) fn volume_preset<'a>(
    v: &'a VolumeRef,
    profile: &'a Profile,
) -> Result<(String, String, bool), RenderError> {
    match v {
        VolumeRef::Claim {
            claim,
            mount,
            read_only,
        } => Ok((claim.clone(), mount.clone(), *read_only)),
        VolumeRef::Preset {
            name,
            mount,
            read_only,
        } => {
            let p = profile.volumes.get(name).ok_or_else(|| {
                RenderError::Profile(format!("volume preset `{name}` is not in the profile"))
            })?;
            Ok((
                p.claim.clone(),
                mount.clone().unwrap_or_else(|| p.mount.clone()),
                read_only.unwrap_or(p.read_only),
            ))
        }
    }
}
