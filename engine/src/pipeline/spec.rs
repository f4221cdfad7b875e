//! The raw form of a pipeline file, exactly as PIPELINE-SPEC.md spells it.
//!
//! These types only describe shape: serde rejects unknown keys and wrong types (with positions),
//! and `schemars` derives the JSON Schema that `ferry schema` prints for editors. Every rule that
//! needs more than shape lives in `validate`, which turns a [`PipelineSpec`] into a `Pipeline`;
//! nothing downstream of validation sees these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ferry pipeline (version 1)")]
pub struct PipelineSpec {
    /// Format version; must be 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Pipeline name: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 40 characters, unique in the repository.
    pub name: String,
    /// When the pipeline runs; without it, the pipeline runs only by hand.
    #[serde(default, rename = "on")]
    pub on: Option<OnSpec>,
    /// Which runs cancel each other.
    #[serde(default)]
    pub concurrency: Option<ConcurrencySpec>,
    /// Declared parameters with their default values.
    #[serde(default)]
    pub params: BTreeMap<String, ScalarText>,
    /// Fields applied to every step; a step's own value wins.
    #[serde(default)]
    pub defaults: Option<StepDefaults>,
    /// One volume shared by all steps of a run, at `/workspace`.
    #[serde(default)]
    pub workspace: Option<WorkspaceSpec>,
    /// The steps, in order; `needs` may only name earlier steps.
    pub steps: Vec<StepSpec>,
}

/// A scalar written as a string, number or boolean, kept as its text.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScalarText {
    /// A string.
    Text(String),
    /// An integer, taken as its decimal text.
    Int(i64),
    /// A floating-point number, taken as its shortest text.
    Float(f64),
    /// A boolean, taken as `true` / `false`.
    Bool(bool),
}

impl ScalarText {
    /// The value as text.
    pub fn to_text(&self) -> String {
        match self {
            ScalarText::Text(s) => s.clone(),
            ScalarText::Int(i) => i.to_string(),
            ScalarText::Float(f) => f.to_string(),
            ScalarText::Bool(b) => b.to_string(),
        }
    }
}

/// Triggers.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnSpec {
    /// Branch and tag pushes.
    #[serde(default)]
    pub push: Option<PushTrigger>,
    /// Merge requests (pull requests on GitHub).
    #[serde(default)]
    pub merge_request: Option<MergeRequestTrigger>,
}

/// `on.push`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushTrigger {
    /// Globs on branch names; default: every branch (unless only `tags` is given).
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    /// Globs on tag names; default: no tag.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Run only when a changed file matches one of these globs.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// Changed files matching these globs do not count.
    #[serde(default)]
    pub paths_ignore: Option<Vec<String>>,
}

/// `on.merge_request`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequestTrigger {
    /// Globs on target branch names; default: every target.
    #[serde(default)]
    pub target_branches: Option<Vec<String>>,
    /// Run only when a changed file matches one of these globs.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// Changed files matching these globs do not count.
    #[serde(default)]
    pub paths_ignore: Option<Vec<String>>,
    /// Whether draft merge requests run (default false).
    #[serde(default)]
    pub drafts: Option<bool>,
}

/// `concurrency`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    /// Which runs form a group (default `merge_request`).
    #[serde(default)]
    pub group: Option<ConcurrencyGroup>,
    /// Whether a newer run in the group stops the older ones (default false).
    #[serde(default)]
    pub cancel_in_progress: Option<bool>,
}

/// The groups of `concurrency.group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyGroup {
    /// Runs of the same merge request (a branch for pushes).
    MergeRequest,
    /// Runs of the same branch.
    Branch,
    /// Every run of the pipeline in the project.
    Pipeline,
    /// No grouping.
    None,
}

/// Fields that `defaults` and steps share.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// Container image.
    #[serde(default)]
    pub image: Option<String>,
    /// An environment preset from the profile (an alternative to `image`).
    #[serde(default)]
    pub environment: Option<String>,
    /// Plain environment variables.
    #[serde(default)]
    pub env: Option<BTreeMap<String, ScalarText>>,
    /// Environment variables from Kubernetes secrets, as `secret-name/key`.
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
    /// Volumes: profile presets or existing claims.
    #[serde(default)]
    pub volumes: Option<Vec<VolumeSpec>>,
    /// Kueue LocalQueue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority level from the profile.
    #[serde(default)]
    pub priority: Option<String>,
    /// Node group from the profile.
    #[serde(default)]
    pub node_group: Option<String>,
}

/// One volume.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// A volume preset from the profile.
    #[serde(default)]
    pub preset: Option<String>,
    /// An existing PersistentVolumeClaim.
    #[serde(default)]
    pub claim: Option<String>,
    /// Mount path (required with `claim`; overrides the preset's).
    #[serde(default)]
    pub mount: Option<String>,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// `workspace`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Size of the workspace volume (a Kubernetes quantity).
    pub size: String,
    /// Storage class of the workspace volume.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Access mode: `ReadWriteOnce` (default) or `ReadWriteMany`, which steps running at once on
    /// different nodes (parallel steps, `nodes > 1`) need.
    #[serde(default)]
    pub access_mode: Option<AccessMode>,
}

/// Volume access modes, as Kubernetes spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
pub enum AccessMode {
    /// One node at a time.
    ReadWriteOnce,
    /// Many nodes.
    ReadWriteMany,
}

/// Step kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Training.
    Train,
    /// Evaluation; must declare `metrics`.
    Evaluate,
    /// Deployment; by default not run for merge requests.
    Deploy,
    /// Anything else.
    Task,
}

/// Event kinds, for `if.events`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, JsonSchema, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A branch push.
    Push,
    /// A tag push.
    Tag,
    /// A merge request.
    MergeRequest,
    /// A manual run (API, CLI, dashboard).
    Manual,
    /// A comment command.
    Comment,
}

/// One step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Step name, unique in the pipeline.
    pub name: String,
    /// Step kind.
    pub kind: StepKind,
    /// Names of earlier steps this one waits for.
    #[serde(default)]
    pub needs: Option<Vec<String>>,
    /// Shell script, run with `sh -e` in the checked-out repository.
    pub run: String,
    /// Resources per node.
    #[serde(default)]
    pub resources: Option<ResourcesSpec>,
    /// Number of nodes; more than 1 means distributed training.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// Extra attempts after the first.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Wall time limit, like `12h`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Path of a JSON object of numbers the step writes.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Conditions.
    #[serde(default, rename = "if")]
    pub when: Option<IfSpec>,
    /// Container image.
    #[serde(default)]
    pub image: Option<String>,
    /// An environment preset from the profile.
    #[serde(default)]
    pub environment: Option<String>,
    /// Plain environment variables (merged with `defaults.env` by key).
    #[serde(default)]
    pub env: Option<BTreeMap<String, ScalarText>>,
    /// Secret environment variables (merged with `defaults.secret_env` by key).
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
    /// Volumes (added to `defaults.volumes`; same mount path replaces).
    #[serde(default)]
    pub volumes: Option<Vec<VolumeSpec>>,
    /// Kueue LocalQueue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority level.
    #[serde(default)]
    pub priority: Option<String>,
    /// Node group.
    #[serde(default)]
    pub node_group: Option<String>,
}

/// `resources`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// GPUs per node.
    #[serde(default)]
    pub gpu: Option<u32>,
    /// GPU type from the profile.
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// vGPU memory per GPU (HAMi types only).
    #[serde(default)]
    pub gpu_memory: Option<String>,
    /// vGPU compute percent (HAMi types only).
    #[serde(default)]
    pub gpu_cores: Option<u32>,
    /// CPU (quantity).
    #[serde(default)]
    pub cpu: Option<ScalarText>,
    /// Memory (quantity).
    #[serde(default)]
    pub memory: Option<String>,
    /// Size of `/dev/shm`.
    #[serde(default)]
    pub shm: Option<String>,
    /// Node-local scratch at `/scratch`.
    #[serde(default)]
    pub scratch: Option<String>,
}

/// `if`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IfSpec {
    /// Globs on the branch being built.
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    /// Globs on the tag being built.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Events the step runs for.
    #[serde(default)]
    pub events: Option<Vec<EventKind>>,
    /// A condition on metrics of earlier steps.
    #[serde(default)]
    pub metrics: Option<String>,
}
