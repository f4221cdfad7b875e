//! The renderer: a validated pipeline plus a run's context becomes a self-checked Argo Workflow.
//!
//! `context` decides everything and produces plain data; Handlebars templates (`templates`:
//! embedded from `templates/`, or read from a directory given with `--templates`) lay that data
//! out as JSON. The text is parsed back and checked (`check`) before anything is returned.

mod check;
mod compact;
mod context;
mod templates;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::pipeline::{EventKind, Pipeline};
use crate::profile::Profile;
use templates::Templates;

pub use check::check_workflow;
pub use context::decide_skips;

/// Key of the object that stands, inside a distributed step's pod spec, for a workflow argument.
const ARG_KEY: &str = "$ferry_arg";

/// What went wrong while rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template could not be read or compiled.
    #[error("template {name}: {message}")]
    Template {
        /// Template name.
        name: String,
        /// What failed.
        message: String,
    },
    /// The run context is not usable.
    #[error("invalid run context: {0}")]
    Context(String),
    /// The pipeline names something the profile lacks (it was validated without this profile).
    #[error("{0}")]
    Profile(String),
    /// The rendered text is not JSON, or fails the self-check: a bug in a template.
    #[error("rendered manifest failed its self-check: {0}")]
    SelfCheck(String),
}

/// Everything about one run that the manifest depends on besides the pipeline and the profile.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The store's run id (the workflow is `ferry-<run_id>`).
    pub run_id: u64,
    /// Project name.
    pub project: String,
    /// Clone URL.
    pub repo_url: String,
    /// Full commit SHA (40 or 64 hex digits).
    pub sha: String,
    /// The full ref, like `refs/heads/main`.
    pub git_ref: String,
    /// The branch being built (a merge request's source branch).
    pub branch: Option<String>,
    /// The tag being built.
    pub tag: Option<String>,
    /// The merge request number.
    pub merge_request: Option<u64>,
    /// What started the run.
    pub event: EventKind,
    /// Parameters, already resolved against the pipeline's declarations.
    pub params: BTreeMap<String, String>,
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Link to the run in the dashboard.
    pub dashboard_url: Option<String>,
}

/// A step decided out when the run was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedStep {
    /// Step name.
    pub step: String,
    /// Why.
    pub reason: String,
}

/// A rendered, self-checked workflow.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The Workflow object.
    pub manifest: Value,
    /// Steps recorded as skipped at creation (not in the manifest).
    pub skipped: Vec<SkippedStep>,
}

/// Most skeletons a renderer keeps; past that the cache starts over.
const MAX_CACHED: usize = 256;

/// What a skeleton depends on: the pipeline's source, the profile, and the steps skipped at
/// creation (the template set is the renderer's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SkeletonKey {
    pipeline: u64,
    profile: u64,
    skipped: Vec<String>,
}

/// Templates, and the skeletons rendered with them.
pub struct Renderer {
    templates: Templates,
    skeletons: Mutex<HashMap<SkeletonKey, Arc<Value>>>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renderer")
    }
}

impl Renderer {
    /// The templates built into the binary, each compiled when a render first needs it.
    pub fn embedded() -> Renderer {
        Self::with(Templates::embedded())
    }

    /// The embedded templates, with any `NAME.json.hbs` in `dir` replacing its namesake. The
    /// files in `dir` are compiled now, so a broken one is an error here whether or not a render
    /// would need it.
    pub fn from_dir(dir: &Path) -> Result<Renderer, RenderError> {
        Templates::from_dir(dir).map(Self::with)
    }

    fn with(templates: Templates) -> Renderer {
        Renderer {
            templates,
            skeletons: Mutex::default(),
        }
    }

    /// Renders and self-checks the workflow of one run.
    ///
    /// The part that depends only on the pipeline, the profile and the skipped steps (the
    /// skeleton, `workflow.json.hbs`) is rendered, parsed back and checked once and then reused;
    /// each run renders `run.json.hbs` (metadata, pod labels, arguments) into a copy of it, and the
    /// whole manifest is self-checked every time.
    pub fn render(
        &self,
        pipeline: &Pipeline,
        profile: &Profile,
        ctx: &RunContext,
    ) -> Result<Rendered, RenderError> {
        check_context(pipeline, ctx)?;
        let skipped = context::decide_skips(pipeline, ctx);
        let skeleton = self.skeleton(pipeline, profile, &skipped)?;
        let text = self
            .templates
            .render("run", &[], context::run(pipeline, profile, ctx))?;
        let mut run: Value = serde_json::from_str(&text).map_err(|e| {
            RenderError::SelfCheck(format!("template `run` did not produce JSON: {e}"))
        })?;
        let mut manifest = (*skeleton).clone();
        manifest["metadata"] = run["metadata"].take();
        manifest["spec"]["podMetadata"] = run["podMetadata"].take();
        let mut arguments = run["arguments"]["parameters"].take();
        if let (Some(run_args), Some(Value::Array(own))) = (
            arguments.as_array_mut(),
            manifest["spec"]["arguments"].get_mut("parameters"),
        ) {
            run_args.append(own);
        }
        manifest["spec"]["arguments"] = serde_json::json!({ "parameters": arguments });
        check_workflow(&manifest).map_err(RenderError::SelfCheck)?;
        Ok(Rendered { manifest, skipped })
    }

    /// Forgets every cached skeleton (the next render of each pipeline takes the full path).
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.skeletons.lock() {
            cache.clear();
        }
    }

    /// The rendered skeleton for this pipeline, profile and skip set, from the cache or made now.
    fn skeleton(
        &self,
        pipeline: &Pipeline,
        profile: &Profile,
        skipped: &[SkippedStep],
    ) -> Result<Arc<Value>, RenderError> {
        let key = SkeletonKey {
            pipeline: pipeline.fingerprint,
            profile: {
                let mut h = std::hash::DefaultHasher::new();
                profile.hash(&mut h);
                h.finish()
            },
            skipped: skipped.iter().map(|s| s.step.clone()).collect(),
        };
        if let Some(hit) = self
            .skeletons
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return Ok(hit);
        }
        let mut built = context::skeleton(pipeline, profile, skipped)?;
        // The workflow template includes a step as `step-container`, or as `step-resource` when it
        // is distributed; only the partials this pipeline uses need compiling.
        let steps = built.workflow["steps"].as_array().map_or(0, Vec::len);
        let jobs = std::mem::take(&mut built.jobs);
        let mut partials = Vec::with_capacity(2);
        if jobs.len() < steps {
            partials.push("step-container");
        }
        if !jobs.is_empty() {
            partials.push("step-resource");
        }
        for (index, job) in jobs {
            let manifest = self.render_job(&job)?;
            built.workflow["steps"][index]["resource"] = manifest;
        }
        let text = self
            .templates
            .render("workflow", &partials, built.workflow)?;
        let skeleton: Value = serde_json::from_str(&text).map_err(|e| {
            RenderError::SelfCheck(format!("template `workflow` did not produce JSON: {e}"))
        })?;
        let skeleton = Arc::new(skeleton);
        if let Ok(mut cache) = self.skeletons.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, skeleton.clone());
        }
        Ok(skeleton)
    }

    /// Renders the inner PyTorchJob / JobSet of a distributed step to its manifest text.
    fn render_job(&self, job: &Value) -> Result<Value, RenderError> {
        let (template, success, failure) = match job["kind"].as_str() {
            Some("jobset") => (
                "jobset",
                "status.terminalState == Completed",
                "status.terminalState == Failed",
            ),
            _ => (
                "pytorchjob",
                "status.replicaStatuses.Master.succeeded > 0",
                "status.replicaStatuses.Master.failed > 0",
            ),
        };
        let text = self.templates.render(template, &[], job.clone())?;
        let object: Value = serde_json::from_str(&text).map_err(|e| {
            RenderError::SelfCheck(format!("template `{template}` did not produce JSON: {e}"))
        })?;
        check::check_job(&object).map_err(RenderError::SelfCheck)?;
        let mut manifest = String::new();
        write_manifest(&object, &mut manifest);
        Ok(serde_json::json!({"success": success, "failure": failure, "manifest": manifest}))
    }
}

/// Writes an inner manifest as JSON text, writing each `{"$ferry_arg": NAME}` object as
/// `{{=toJson(workflow.parameters['NAME'])}}`: Argo evaluates that to the argument JSON-encoded, so a
/// value lands in the manifest as one JSON string whatever it holds. Only ferry builds such
/// objects (every value from a user is a string), and NAME is one of ferry's argument names.
fn write_manifest(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            if let (1, Some(Value::String(name))) = (map.len(), map.get(ARG_KEY)) {
                out.push_str(&format!("{{{{=toJson(workflow.parameters['{name}'])}}}}"));
                return;
            }
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_manifest(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_manifest(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A stable hash of a text (the std SipHash with its fixed keys).
pub(crate) fn fingerprint(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn check_context(pipeline: &Pipeline, ctx: &RunContext) -> Result<(), RenderError> {
    if let Some(extra) = ctx
        .params
        .keys()
        .find(|k| !pipeline.params.contains_key(*k))
    {
        return Err(RenderError::Context(format!(
            "parameter `{extra}` is not declared by pipeline `{}`",
            pipeline.name
        )));
    }
    let hex =
        ctx.sha.len() >= 7 && ctx.sha.len() <= 64 && ctx.sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(RenderError::Context(format!(
            "`{}` is not a commit SHA",
            ctx.sha
        )));
    }
    if ctx.run_id == 0 {
        return Err(RenderError::Context("run ids start at 1".into()));
    }
    if let Some(ns) = &ctx.namespace
        && !crate::pipeline::is_dns_label(ns)
    {
        return Err(RenderError::Context(format!(
            "`{ns}` is not a namespace name"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
