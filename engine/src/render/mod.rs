//! The renderer: a validated pipeline plus a run's context becomes a self-checked Argo Workflow.
//!
//! `context` decides everything and produces plain data; Handlebars templates (embedded from
//! `templates/`, or read from a directory given with `--templates`) lay that data out as JSON.
//! Strict mode makes a template that names a missing field an error, and the one helper `q`
//! JSON-encodes every value, so a value can never add or remove structure. The text is parsed
//! back and checked (`check`) before anything is returned.

mod check;
mod context;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::Value;

use crate::pipeline::{EventKind, Pipeline};
use crate::profile::Profile;

pub use check::check_workflow;
pub use context::decide_skips;

/// Key of the object that stands, inside a distributed step's pod spec, for a workflow argument.
const ARG_KEY: &str = "$ferry_arg";

/// The templates shipped in the binary: (name, text).
const EMBEDDED: [(&str, &str); 6] = [
    (
        "workflow",
        include_str!("../../../templates/workflow.json.hbs"),
    ),
    ("run", include_str!("../../../templates/run.json.hbs")),
    (
        "step-container",
        include_str!("../../../templates/step-container.json.hbs"),
    ),
    (
        "step-resource",
        include_str!("../../../templates/step-resource.json.hbs"),
    ),
    (
        "pytorchjob",
        include_str!("../../../templates/pytorchjob.json.hbs"),
    ),
    ("jobset", include_str!("../../../templates/jobset.json.hbs")),
];

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

/// Compiled templates, and the skeletons rendered with them.
pub struct Renderer {
    hb: Handlebars<'static>,
    skeletons: Mutex<HashMap<SkeletonKey, Arc<Value>>>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renderer")
    }
}

/// The quoting helper: `{{q value}}` writes the value JSON-encoded.
fn quote(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("q", 0))?;
    if param.is_value_missing() {
        let name = param.relative_path().cloned().unwrap_or_default();
        return Err(RenderErrorReason::MissingVariable(Some(name)).into());
    }
    let text = serde_json::to_string(param.value())
        .map_err(|e| RenderErrorReason::Other(e.to_string()))?;
    out.write(&text)?;
    Ok(())
}

impl Renderer {
    /// The templates built into the binary.
    pub fn embedded() -> Renderer {
        Self::with(
            EMBEDDED
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        )
        .unwrap_or_else(|e| panic!("embedded templates must compile: {e}"))
    }

    /// The embedded templates, with any `NAME.json.hbs` in `dir` replacing its namesake.
    pub fn from_dir(dir: &Path) -> Result<Renderer, RenderError> {
        let mut templates = Vec::new();
        for (name, text) in EMBEDDED {
            let path = dir.join(format!("{name}.json.hbs"));
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => text.to_owned(),
                Err(e) => {
                    return Err(RenderError::Template {
                        name: path.display().to_string(),
                        message: e.to_string(),
                    });
                }
            };
            templates.push((name.to_owned(), text));
        }
        Self::with(templates)
    }

    fn with(templates: Vec<(String, String)>) -> Result<Renderer, RenderError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("q", Box::new(quote));
        for (name, text) in templates {
            hb.register_template_string(&name, text)
                .map_err(|e| RenderError::Template {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(Renderer {
            hb,
            skeletons: Mutex::default(),
        })
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
        let text = self.run("run", context::run(pipeline, profile, ctx))?;
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
        for (index, job) in std::mem::take(&mut built.jobs) {
            let manifest = self.render_job(&job)?;
            built.workflow["steps"][index]["resource"] = manifest;
        }
        let text = self.run("workflow", built.workflow)?;
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

    /// Renders a template. The data is moved into the context: `Handlebars::render` would first
    /// copy the whole tree through serde.
    fn run(&self, name: &str, data: Value) -> Result<String, RenderError> {
        let ctx = Context::from(data);
        self.hb
            .render_with_context(name, &ctx)
            .map_err(|e| RenderError::Template {
                name: name.to_owned(),
                message: e.to_string(),
            })
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
        let text = self.run(template, job.clone())?;
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
