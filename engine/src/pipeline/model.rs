//! The validated pipeline: what every later stage (matching, rendering, executing) works from.
//!
//! A [`Pipeline`] is only made by `validate`, so its invariants hold everywhere: names are valid
//! and unique, `needs` name earlier steps, defaults are merged into steps, quantities and
//! durations are parsed, globs and `if.metrics` are compiled.

use std::collections::BTreeMap;

pub use super::spec::{AccessMode, ConcurrencyGroup, EventKind, StepKind};
use crate::pipeline::expr::Expr;
use crate::pipeline::glob::Glob;
use crate::quantity::Quantity;

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// The file it came from, relative to the repository root where known.
    pub file: String,
    /// A hash of the file's path and text: equal for the same file at any commit (the renderer
    /// keys its cache on it).
    pub fingerprint: u64,
    /// When it runs.
    pub triggers: Triggers,
    /// Concurrency group and policy.
    pub concurrency: Concurrency,
    /// Declared parameters and their defaults.
    pub params: BTreeMap<String, String>,
    /// The shared workspace volume.
    pub workspace: Option<Workspace>,
    /// Steps, in file order (every step's `needs` come before it).
    pub steps: Vec<Step>,
}

/// `on`, compiled.
#[derive(Debug, Clone, Default)]
pub struct Triggers {
    /// Branch and tag pushes; `None` when pushes never run the pipeline.
    pub push: Option<PushRule>,
    /// Merge requests; `None` when they never run the pipeline.
    pub merge_request: Option<MergeRequestRule>,
}

/// `on.push`, compiled.
#[derive(Debug, Clone)]
pub struct PushRule {
    /// Branch globs; `None` means no branch runs.
    pub branches: Option<Vec<Glob>>,
    /// Tag globs; `None` means no tag runs.
    pub tags: Option<Vec<Glob>>,
    /// Path filters.
    pub paths: PathFilter,
}

/// `on.merge_request`, compiled.
#[derive(Debug, Clone)]
pub struct MergeRequestRule {
    /// Target branch globs; `None` means every target.
    pub target_branches: Option<Vec<Glob>>,
    /// Path filters.
    pub paths: PathFilter,
    /// Whether drafts run.
    pub drafts: bool,
}

/// `paths` / `paths_ignore`.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    /// A change counts only when a file matches one of these; `None` means any file.
    pub include: Option<Vec<Glob>>,
    /// Files matching these never count.
    pub exclude: Vec<Glob>,
}

/// `concurrency`, with defaults applied.
#[derive(Debug, Clone, Copy)]
pub struct Concurrency {
    /// The group.
    pub group: ConcurrencyGroup,
    /// Whether newer runs cancel older ones.
    pub cancel_in_progress: bool,
}

/// The shared workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Volume size.
    pub size: Quantity,
    /// Storage class.
    pub storage_class: Option<String>,
    /// Access mode.
    pub access_mode: AccessMode,
}

/// A step with defaults merged in.
#[derive(Debug, Clone)]
pub struct Step {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: StepKind,
    /// Indexes of the steps it needs (all smaller than its own).
    pub needs: Vec<usize>,
    /// Shell script.
    pub run: String,
    /// Where the image comes from.
    pub image: ImageRef,
    /// Plain environment.
    pub env: BTreeMap<String, String>,
    /// Secret environment.
    pub secret_env: BTreeMap<String, SecretRef>,
    /// Volumes, in order, unique by mount path.
    pub volumes: Vec<VolumeRef>,
    /// Kueue LocalQueue.
    pub queue: Option<String>,
    /// Priority level (a key of the profile's `priorities`).
    pub priority: Option<String>,
    /// Node group name.
    pub node_group: Option<String>,
    /// Resources per node.
    pub resources: Resources,
    /// Nodes (1 unless distributed).
    pub nodes: u32,
    /// Extra attempts.
    pub retries: u32,
    /// Timeout in seconds.
    pub timeout_secs: Option<u64>,
    /// Metrics file path.
    pub metrics: Option<String>,
    /// Conditions.
    pub gate: Gate,
}

/// Image or environment preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image reference.
    Image(String),
    /// A profile environment preset name.
    Environment(String),
}

/// `secret-name/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Key in the secret.
    pub key: String,
}

/// A volume as the step mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRef {
    /// A profile preset, optionally with its mount path or read-only flag overridden.
    Preset {
        /// Preset name.
        name: String,
        /// Mount path override.
        mount: Option<String>,
        /// Read-only override.
        read_only: Option<bool>,
    },
    /// An existing claim.
    Claim {
        /// Claim name.
        claim: String,
        /// Mount path.
        mount: String,
        /// Read-only.
        read_only: bool,
    },
}

/// Resources per node.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// GPUs.
    pub gpu: u32,
    /// GPU type name (set whenever `gpu > 0`).
    pub gpu_type: Option<String>,
    /// vGPU memory per GPU.
    pub gpu_memory: Option<Quantity>,
    /// vGPU compute percent.
    pub gpu_cores: Option<u32>,
    /// CPU.
    pub cpu: Option<Quantity>,
    /// Memory.
    pub memory: Option<Quantity>,
    /// `/dev/shm` size.
    pub shm: Option<Quantity>,
    /// Scratch size.
    pub scratch: Option<Quantity>,
}

/// `if`, compiled; `events` has the kind's default applied.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// Branch globs.
    pub branches: Option<Vec<Glob>>,
    /// Tag globs.
    pub tags: Option<Vec<Glob>>,
    /// Events.
    pub events: Option<Vec<EventKind>>,
    /// Metrics condition: source text, parsed form, and for each metric the index of the step
    /// that publishes it.
    pub metrics: Option<MetricsGate>,
}

/// A compiled `if.metrics`.
#[derive(Debug, Clone)]
pub struct MetricsGate {
    /// As written.
    pub text: String,
    /// Parsed.
    pub expr: Expr,
    /// For each metric reference in `expr`, the index of the publishing step.
    pub sources: BTreeMap<crate::pipeline::expr::MetricRef, usize>,
}

impl Pipeline {
    /// A step by name.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Every step index that `index` depends on, directly or not.
    pub fn ancestors(&self, index: usize) -> Vec<usize> {
        ancestors(&self.steps, index)
    }
}

/// Every index in `steps` that step `index` needs, directly or not, in ascending order.
pub(crate) fn ancestors(steps: &[Step], index: usize) -> Vec<usize> {
    let mut seen = vec![false; steps.len()];
    let mut stack = steps[index].needs.clone();
    while let Some(i) = stack.pop() {
        if i < steps.len() && !std::mem::replace(&mut seen[i], true) {
            stack.extend(&steps[i].needs);
        }
    }
    (0..steps.len()).filter(|i| seen[*i]).collect()
}
