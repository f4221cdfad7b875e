//! Shared helpers for ferry's end-to-end tests (the `e2e` test binary).
//!
//! Paths of the workspace and its examples, run contexts for the usual events, rendering, JSON
//! "shape" and leaf-by-leaf comparison, the `ferry` binary, temporary directories, and the Argo
//! Workflows schemas (both compiled once per process, in strict mode); the wire-level fake
//! Kubernetes API ([`fake_k8s`]); `ferry serve` with the Argo executor against it
//! ([`argo_serve`]).

pub mod argo_serve;
pub mod fake_k8s;

pub mod fake_forge;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_engine::event::{Event, ForgeKind, RepoIdentity};
use ferry_engine::pipeline::{self, EventKind, Pipeline};
use ferry_engine::profile::{Distributed, Profile};
use ferry_engine::render::{Rendered, Renderer, RunContext};
use ferry_engine::store::{EventId, Failure, MAX_EVENT_ATTEMPTS, Store};
use serde_json::Value;

/// The commit every test run is rendered at.
pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
/// The clone URL every test run is rendered for.
pub const REPO: &str = "https://git.example.com/ml/models.git";

// ---------------------------------------------------------------------------------------------
// Paths and inputs
// ---------------------------------------------------------------------------------------------

/// The workspace root (`/work/main`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `<workspace>/../shared/argo` when it exists.
pub fn shared_argo_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/argo");
    dir.is_dir().then_some(dir)
}

/// `<workspace>/../shared/fixtures` (webhook payloads) when it exists.
pub fn shared_fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    dir.is_dir().then_some(dir)
}

/// A stored delivery of project `project` given up on after [`MAX_EVENT_ATTEMPTS`] permanent
/// failures with `error` (a GitHub `ping`: planning it would create nothing). Returns its id.
pub async fn failed_delivery(store: &Store, project: &str, key: &str, error: &str) -> EventId {
    let ping = Event {
        forge: ForgeKind::Gitlab,
        repo: RepoIdentity {
            full_name: format!("ml/{project}"),
            urls: vec![],
        },
        kind: ferry_engine::event::EventKind::Ping,
    };
    let id = store
        .insert_event(project, ForgeKind::Gitlab, key, &ping)
        .await
        .expect("insert the delivery")
        .id();
    for _ in 0..MAX_EVENT_ATTEMPTS {
        store
            .mark_event_failed_attempt(id, error, 0, Failure::Permanent)
            .await
            .expect("a failed attempt");
    }
    id
}

/// Reads a file, panicking with its path on failure.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The example cluster profile (`examples/profile.yaml`).
pub fn profile() -> Profile {
    let path = workspace_root().join("examples/profile.yaml");
    Profile::from_yaml("examples/profile.yaml", &read(&path))
        .unwrap_or_else(|e| panic!("examples/profile.yaml does not load:\n{e}"))
}

/// The example profile with `distributed` set.
pub fn profile_with(distributed: Distributed) -> Profile {
    let mut p = profile();
    p.distributed = distributed;
    p
}

/// One example pipeline file.
#[derive(Debug, Clone)]
pub struct Example {
    /// File stem, e.g. `train-eval-deploy`.
    pub stem: String,
    /// Path relative to the workspace root, e.g. `examples/pipelines/train-eval-deploy.yaml`.
    pub file: String,
    /// Its text.
    pub text: String,
}

impl Example {
    /// Loads and validates it against the example profile.
    pub fn load(&self) -> Pipeline {
        pipeline::load(&self.file, &self.text, Some(&profile()))
            .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", self.file))
    }
}

/// Every `examples/pipelines/*.yaml`, sorted by name (at least one, or this panics).
pub fn examples() -> Vec<Example> {
    let dir = workspace_root().join("examples/pipelines");
    let mut out: Vec<Example> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let stem = p
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            Example {
                stem,
                file: format!("examples/pipelines/{name}"),
                text: read(&p),
            }
        })
        .collect();
    out.sort_by(|a, b| a.stem.cmp(&b.stem));
    assert!(
        !out.is_empty(),
        "no example pipelines under {}",
        dir.display()
    );
    out
}

/// The example with this file stem.
pub fn example(stem: &str) -> Example {
    examples()
        .into_iter()
        .find(|e| e.stem == stem)
        .unwrap_or_else(|| panic!("no example pipeline examples/pipelines/{stem}.yaml"))
}

// ---------------------------------------------------------------------------------------------
// Run contexts and rendering
// ---------------------------------------------------------------------------------------------

/// The kinds of run the examples are rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// A push to `main`.
    PushMain,
    /// Merge request 7 from `feature/x`.
    MergeRequest,
    /// The tag `v1.2.0`.
    Tag,
    /// A manual run on `main` overriding every declared parameter.
    Manual,
}

impl Variant {
    /// All variants.
    pub const ALL: [Variant; 4] = [
        Variant::PushMain,
        Variant::MergeRequest,
        Variant::Tag,
        Variant::Manual,
    ];
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::PushMain => "push to main",
            Variant::MergeRequest => "merge request !7 from feature/x",
            Variant::Tag => "tag v1.2.0",
            Variant::Manual => "manual run on main with parameter overrides",
        })
    }
}

/// A run context for a branch (`refs/heads/<branch>`), with the pipeline's default parameters.
pub fn branch_context(pipeline: &Pipeline, event: EventKind, branch: &str) -> RunContext {
    RunContext {
        run_id: 42,
        project: "ml-models".into(),
        repo_url: REPO.into(),
        sha: SHA.into(),
        git_ref: format!("refs/heads/{branch}"),
        branch: Some(branch.to_owned()),
        tag: None,
        merge_request: None,
        event,
        params: default_params(pipeline),
        namespace: Some("ml-team".into()),
        dashboard_url: Some("https://ferry.example.com/runs/42".into()),
    }
}

/// A run context for a tag push (`refs/tags/<tag>`).
pub fn tag_context(pipeline: &Pipeline, tag: &str) -> RunContext {
    RunContext {
        git_ref: format!("refs/tags/{tag}"),
        branch: None,
        tag: Some(tag.to_owned()),
        ..branch_context(pipeline, EventKind::Tag, "main")
    }
}

/// The pipeline's declared parameters with their defaults.
pub fn default_params(pipeline: &Pipeline) -> BTreeMap<String, String> {
    pipeline.resolve_params(&[]).unwrap_or_else(|e| {
        panic!(
            "{}: default parameters do not resolve: {e:?}",
            pipeline.name
        )
    })
}

/// The run context of one variant.
pub fn variant_context(pipeline: &Pipeline, variant: Variant) -> RunContext {
    match variant {
        Variant::PushMain => branch_context(pipeline, EventKind::Push, "main"),
        Variant::MergeRequest => RunContext {
            merge_request: Some(7),
            ..branch_context(pipeline, EventKind::MergeRequest, "feature/x")
        },
        Variant::Tag => tag_context(pipeline, "v1.2.0"),
        Variant::Manual => {
            let overrides: Vec<(String, String)> = pipeline
                .params
                .keys()
                .map(|k| (k.clone(), format!("override-{k}")))
                .collect();
            let params = pipeline.resolve_params(&overrides).unwrap_or_else(|e| {
                panic!("{}: declared parameters rejected: {e:?}", pipeline.name)
            });
            RunContext {
                params,
                ..branch_context(pipeline, EventKind::Manual, "main")
            }
        }
    }
}

/// Renders with the embedded templates, panicking with the error and `what` on failure.
pub fn render(pipeline: &Pipeline, profile: &Profile, ctx: &RunContext, what: &str) -> Rendered {
    Renderer::embedded()
        .render(pipeline, profile, ctx)
        .unwrap_or_else(|e| panic!("rendering {what} failed: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Looking into manifests
// ---------------------------------------------------------------------------------------------

/// `spec.templates` of a rendered workflow.
pub fn templates(manifest: &Value) -> &[Value] {
    manifest["spec"]["templates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no spec.templates"))
}

/// `spec.arguments.parameters` as name -> value.
pub fn arguments(manifest: &Value) -> BTreeMap<String, String> {
    manifest["spec"]["arguments"]["parameters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .unwrap_or_else(|| panic!("argument without a name: {p}"));
            let value = p["value"]
                .as_str()
                .unwrap_or_else(|| panic!("argument {name} has no string value: {p}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// Replaces each `{{=toJson(workflow.parameters['X'])}}` in a resource manifest with
/// `with(X)`.
fn replace_arg_expressions(manifest: &str, mut with: impl FnMut(&str) -> String) -> String {
    const OPEN: &str = "{{=toJson(workflow.parameters['";
    const CLOSE: &str = "'])}}";
    let mut out = String::with_capacity(manifest.len());
    let mut rest = manifest;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after
            .find(CLOSE)
            .unwrap_or_else(|| panic!("unterminated toJson expression in: {after}"));
        out.push_str(&with(&after[..end]));
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

/// Replaces each `{{=toJson(workflow.parameters['X'])}}` in a resource manifest with `""`;
/// returns the text and the names `X` in order.
pub fn strip_arg_expressions(manifest: &str) -> (String, Vec<String>) {
    let mut names = Vec::new();
    let out = replace_arg_expressions(manifest, |name| {
        names.push(name.to_owned());
        "\"\"".to_owned()
    });
    (out, names)
}

/// Does what Argo does to a resource manifest: replaces each
/// `{{=toJson(workflow.parameters['X'])}}` with the JSON encoding of argument `X` of `workflow`.
pub fn substitute_arguments(manifest: &str, workflow: &Value) -> String {
    let args: BTreeMap<String, String> = workflow["spec"]["arguments"]["parameters"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        p["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    replace_arg_expressions(manifest, |name| {
        let value = args
            .get(name)
            .unwrap_or_else(|| panic!("argument `{name}` is not declared"));
        Value::String(value.clone()).to_string()
    })
}

/// Every `{{...}}` expression in a string (Argo template tags).
pub fn argo_tags(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(&after[..end]);
        rest = &after[end + 2..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Shapes and leaf-by-leaf differences
// ---------------------------------------------------------------------------------------------

/// The structure of a value: same keys and array lengths, every string replaced by `"<string>"`.
pub fn shape(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::String("<string>".into()),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        other => other.clone(),
    }
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonPath(pub Vec<Seg>);

impl JsonPath {
    fn with(&self, seg: Seg) -> JsonPath {
        let mut v = self.0.clone();
        v.push(seg);
        JsonPath(v)
    }

    /// True when the path is exactly these keys / indexes (`None` matches any index).
    pub fn is(&self, pattern: &[Option<&str>]) -> bool {
        self.0.len() == pattern.len()
            && self
                .0
                .iter()
                .zip(pattern)
                .all(|(seg, pat)| match (seg, pat) {
                    (Seg::Key(k), Some(p)) => k == p,
                    (Seg::Index(_), None) => true,
                    _ => false,
                })
    }

    /// The array index at position `i` of the path.
    pub fn index_at(&self, i: usize) -> Option<usize> {
        match self.0.get(i) {
            Some(Seg::Index(n)) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
            }
        }
        Ok(())
    }
}

/// One place where two values differ.
#[derive(Debug, Clone)]
pub struct Diff {
    /// Where.
    pub path: JsonPath,
    /// The value on the left (`Null` when absent).
    pub left: Value,
    /// The value on the right (`Null` when absent).
    pub right: Value,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {}",
            self.path,
            clip(&self.left.to_string()),
            clip(&self.right.to_string())
        )
    }
}

/// At most 200 characters of `s`, for messages.
pub fn clip(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(200).collect::<String>())
    }
}

/// Every leaf (or structural) difference between two values.
pub fn diffs(left: &Value, right: &Value) -> Vec<Diff> {
    let mut out = Vec::new();
    diff_into(&JsonPath::default(), left, right, &mut out);
    out
}

fn diff_into(path: &JsonPath, left: &Value, right: &Value, out: &mut Vec<Diff>) {
    match (left, right) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                diff_into(
                    &path.with(Seg::Key(k.clone())),
                    va,
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
            for (k, vb) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                diff_into(&path.with(Seg::Key(k.clone())), &Value::Null, vb, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff_into(&path.with(Seg::Index(i)), va, vb, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Diff {
            path: path.clone(),
            left: a.clone(),
            right: b.clone(),
        }),
    }
}

/// Every string in a value, with its path.
pub fn strings(v: &Value) -> Vec<(JsonPath, &str)> {
    let mut out = Vec::new();
    strings_into(JsonPath::default(), v, &mut out);
    out
}

fn strings_into<'a>(path: JsonPath, v: &'a Value, out: &mut Vec<(JsonPath, &'a str)>) {
    match v {
        Value::String(s) => out.push((path, s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_into(path.with(Seg::Index(i)), item, out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                strings_into(path.with(Seg::Key(k.clone())), item, out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The `ferry` binary
// ---------------------------------------------------------------------------------------------

/// The result of one `ferry` invocation.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n(if the binary looks stale, rebuild it with `cargo build -p ferry`)",
            self.cmdline,
            self.code,
            clip_lines(&self.stdout),
            clip_lines(&self.stderr)
        )
    }
}

fn clip_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= 60 {
        s.to_owned()
    } else {
        format!(
            "{}\n... ({} more lines)",
            lines[..60].join("\n"),
            lines.len() - 60
        )
    }
}

/// Runs `git ARGS` in `dir` with a fixed author, panicking with git's message on failure; returns
/// its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs the `ferry` binary at `bin` with ARGS in `dir`.
pub fn ferry_at(bin: &Path, dir: &Path, args: &[&str]) -> Run {
    let output: Output = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    Run {
        cmdline: format!("ferry {}", args.join(" ")),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `ferry-e2e-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ferry-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `rel` (creating parent directories) and returns its full path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// JSON Schema helpers and the Argo schemas
// ---------------------------------------------------------------------------------------------

/// Parses YAML text into JSON (panics with `what` on failure).
pub fn yaml_to_json(what: &str, text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
}

/// Every validation error of `instance` as `instance path: message`.
pub fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!(
                "{}: {}",
                if at.is_empty() {
                    "(root)".to_owned()
                } else {
                    at
                },
                clip(&e.to_string())
            )
        })
        .collect()
}

/// Turns every object schema with `properties` but no `additionalProperties` (and not marked
/// `x-kubernetes-preserve-unknown-fields: true`) into one that rejects unknown fields.
///
/// Walks schema keywords only, so a property that happens to be called `properties` or
/// `additionalProperties` is left alone. Returns how many schemas were made strict.
pub fn make_strict(schema: &mut Value) -> usize {
    let Value::Object(map) = schema else { return 0 };
    let mut count = 0;
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserve {
        map.insert("additionalProperties".into(), Value::Bool(false));
        count += 1;
    }
    for (key, sub) in map.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "definitions" | "$defs" | "dependentSchemas" => {
                if let Value::Object(children) = sub {
                    count += children.values_mut().map(make_strict).sum::<usize>();
                }
            }
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                if let Value::Array(children) = sub {
                    count += children.iter_mut().map(make_strict).sum::<usize>();
                }
            }
            "items"
            | "additionalItems"
            | "additionalProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "unevaluatedProperties"
            | "unevaluatedItems" => match sub {
                Value::Array(children) => {
                    count += children.iter_mut().map(make_strict).sum::<usize>()
                }
                other => count += make_strict(other),
            },
            _ => {}
        }
    }
    count
}

/// The two Argo Workflows schemas, strict, compiled.
pub struct ArgoSchemas {
    /// `argo-workflows.schema.json` (draft 2020-12), rooted at the Workflow definition.
    pub schema_json: jsonschema::Validator,
    /// The full CRD's `openAPIV3Schema` (validated as draft 4), for the whole object.
    pub crd: jsonschema::Validator,
}

impl ArgoSchemas {
    /// Errors of `manifest` against both schemas, each prefixed with the schema's name.
    pub fn errors(&self, manifest: &Value) -> Vec<String> {
        let mut out: Vec<String> = schema_errors(&self.schema_json, manifest)
            .into_iter()
            .map(|e| format!("[schema.json] {e}"))
            .collect();
        out.extend(
            schema_errors(&self.crd, manifest)
                .into_iter()
                .map(|e| format!("[full CRD] {e}")),
        );
        out
    }
}

/// The strict Argo schemas, compiled once per process; `None` (after printing a SKIPPED line)
/// when `../shared/argo` is not there.
pub fn argo_schemas() -> Option<&'static ArgoSchemas> {
    static CELL: OnceLock<Option<ArgoSchemas>> = OnceLock::new();
    let schemas = CELL
        .get_or_init(|| shared_argo_dir().map(|dir| compile_argo(&dir)))
        .as_ref();
    if schemas.is_none() {
        println!("SKIPPED: ../shared/argo not found; Argo schema checks need it");
    }
    schemas
}

/// The Workflow schema of `argo-workflows.schema.json`, strict (the root `oneOf` replaced by
/// a `$ref` to the Workflow definition, all definitions kept).
pub fn argo_schema_json_strict(dir: &Path) -> Value {
    let mut schema: Value = serde_json::from_str(&read(&dir.join("argo-workflows.schema.json")))
        .unwrap_or_else(|e| panic!("argo-workflows.schema.json is not JSON: {e}"));
    let Value::Object(map) = &mut schema else {
        panic!("argo-workflows.schema.json is not an object")
    };
    map.remove("oneOf");
    map.remove("type");
    map.insert(
        "$ref".into(),
        Value::String("#/definitions/io.argoproj.workflow.v1alpha1.Workflow".into()),
    );
    let strict = make_strict(&mut schema);
    assert!(
        strict > 100,
        "only {strict} schemas of argo-workflows.schema.json were made strict"
    );
    schema
}

/// The full CRD's `openAPIV3Schema`, strict.
pub fn argo_crd_strict(dir: &Path) -> Value {
    let mut schema: Value = serde_json::from_str(&read(
        &dir.join("argoproj.io_workflows.full-crd.openapiv3.json"),
    ))
    .unwrap_or_else(|e| panic!("the full CRD schema is not JSON: {e}"));
    let strict = make_strict(&mut schema);
    assert!(
        strict > 100,
        "only {strict} schemas of the full CRD were made strict"
    );
    schema
}

fn compile_argo(dir: &Path) -> ArgoSchemas {
    let schema_json = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&argo_schema_json_strict(dir))
        .unwrap_or_else(|e| panic!("compiling argo-workflows.schema.json: {e}"));
    let crd = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&argo_crd_strict(dir))
        .unwrap_or_else(|e| panic!("compiling the full CRD schema: {e}"));
    ArgoSchemas { schema_json, crd }
}
