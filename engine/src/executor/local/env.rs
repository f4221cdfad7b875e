//! The environment of a step's processes: the same variables a pod of the rendered Argo manifest
//! gets (`render/context_step.rs`), with local paths, and nothing else of ferry's own environment
//! besides a few variables programs need to work at all.

use std::path::Path;

use super::EnvSource;
use crate::executor::Job;
use crate::pipeline::{Pipeline, SecretRef, Step};

/// The only variables of ferry's environment that steps see.
pub(super) const INHERITED: [&str; 5] = ["PATH", "HOME", "LANG", "TMPDIR", "USER"];

/// Where a step's variables point to.
pub(super) struct Places<'a> {
    /// The run's workspace.
    pub workspace: &'a Path,
    /// The step's metrics file, when it declares one.
    pub metrics: Option<&'a Path>,
}

/// Every variable a step's processes share, in order (a later one wins over an earlier one of the
/// same name, as in a pod's `env`); the per-process ones (scratch, GPUs, ranks) are added by
/// `step`.
///
/// # Errors
///
/// A message naming the missing variable when a `secret_env` entry has no value in `source`.
pub(super) fn step_env(
    job: &Job,
    step: &Step,
    places: &Places<'_>,
    source: &EnvSource,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = INHERITED
        .iter()
        .filter_map(|name| source.get(name).map(|v| ((*name).to_owned(), v)))
        .collect();
    env.extend(ferry_vars(job, step, places));
    env.extend(params(&job.pipeline, job));
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (name, secret) in &step.secret_env {
        let var = secret_var(secret);
        let value = source.get(&var).ok_or_else(|| {
            format!(
                "secret `{}/{}` for `{name}` is not available: set {var} in ferry's environment \
                 (the local executor reads Kubernetes secrets from there)",
                secret.name, secret.key
            )
        })?;
        env.push((name.clone(), value));
    }
    Ok(env)
}

/// The variable standing in for a Kubernetes secret's key: `FERRY_SECRET_<NAME>_<KEY>`,
/// upper-cased, with every character outside `[A-Z0-9]` made `_`.
pub(super) fn secret_var(secret: &SecretRef) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "FERRY_SECRET_{}_{}",
        clean(&secret.name),
        clean(&secret.key)
    )
}

/// `FERRY_*` as a pod gets them (`FERRY_SCRATCH` is per process).
fn ferry_vars(job: &Job, step: &Step, places: &Places<'_>) -> Vec<(String, String)> {
    let ctx = &job.context;
    let path = |p: &Path| p.display().to_string();
    let vars = [
        ("FERRY_REPO", ctx.repo_url.clone()),
        ("FERRY_SHA", ctx.sha.clone()),
        ("FERRY_REF", ctx.git_ref.clone()),
        ("FERRY_BRANCH", ctx.branch.clone().unwrap_or_default()),
        ("FERRY_TAG", ctx.tag.clone().unwrap_or_default()),
        (
            "FERRY_MR",
            ctx.merge_request.map(|m| m.to_string()).unwrap_or_default(),
        ),
        ("FERRY_EVENT", event_word(ctx.event)),
        ("FERRY_RUN_ID", job.run_id.to_string()),
        ("FERRY_PIPELINE", job.pipeline.name.clone()),
        ("FERRY_STEP", step.name.clone()),
        ("FERRY_WORKSPACE", path(places.workspace)),
        (
            "FERRY_METRICS_FILE",
            places.metrics.map(path).unwrap_or_default(),
        ),
        ("FERRY_SCRIPT", step.run.clone()),
    ];
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `FERRY_PARAM_<NAME>` for every declared parameter: the run's value, else the default.
fn params(pipeline: &Pipeline, job: &Job) -> Vec<(String, String)> {
    pipeline
        .params
        .iter()
        .map(|(name, default)| {
            let value = job.context.params.get(name).unwrap_or(default);
            (
                format!("FERRY_PARAM_{}", name.to_uppercase()),
                value.clone(),
            )
        })
        .collect()
}

/// `push`, `tag`, `merge_request`, `manual` or `comment`: the pipeline file's words, which are
/// also what the rendered manifest passes.
fn event_word(event: crate::pipeline::EventKind) -> String {
    match serde_json::to_value(event) {
        Ok(serde_json::Value::String(word)) => word,
        Ok(_) | Err(_) => String::new(),
    }
}
