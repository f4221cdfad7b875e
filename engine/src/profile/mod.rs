//! The cluster profile: what admins define once and users refer to by name.
//!
//! Pipelines say `gpu_type: A100-80G`, `queue: team-a`, `priority: high`; the profile says what
//! those mean on this cluster (resource names, node selectors, tolerations, PriorityClasses, volume
//! claims) and which limits apply. It is part of the server config and is read once at the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::problem::Problems;
use crate::quantity::parse_duration;
use crate::yaml;

/// Image that clones the repository in distributed steps when the profile names none.
pub const DEFAULT_GIT_IMAGE: &str = "alpine/git:2.47.2";

/// A validated cluster profile.
#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// GPU types by name.
    #[serde(default)]
    pub gpu_types: BTreeMap<String, GpuType>,
    /// Priority level -> PriorityClass name.
    #[serde(default)]
    pub priorities: BTreeMap<String, String>,
    /// Allowed Kueue LocalQueues.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Node groups by name.
    #[serde(default)]
    pub node_groups: BTreeMap<String, NodeGroup>,
    /// Volume presets by name.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumePreset>,
    /// Environment presets: name -> image.
    #[serde(default)]
    pub environments: BTreeMap<String, String>,
    /// Image pull secrets added to every workflow.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Secret with `username` and `password` keys for cloning over https.
    #[serde(default)]
    pub git_credentials_secret: Option<String>,
    /// Limits every pipeline must respect.
    #[serde(default)]
    pub limits: Limits,
    /// How `nodes > 1` steps run on Kubernetes.
    #[serde(default)]
    pub distributed: Distributed,
    /// Profile-wide defaults.
    #[serde(default)]
    pub defaults: ProfileDefaults,
    /// Storage class for `scratch` volumes; without it, scratch is an emptyDir.
    #[serde(default)]
    pub scratch_storage_class: Option<String>,
    /// Service account the workflow pods run as.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Image of the init container that clones the repository for distributed steps.
    #[serde(default)]
    pub git_image: Option<String>,
    /// Seconds a finished workflow is kept before Argo deletes it.
    #[serde(default)]
    pub ttl_seconds_after_finished: Option<u32>,
}

/// One GPU type.
#[derive(Debug, Clone, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuType {
    /// Extended resource name, such as `nvidia.com/gpu`.
    pub resource: String,
    /// Node labels that select nodes with this GPU.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the taints of those nodes.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// vGPU sharing; `hami` enables `gpu_memory` and `gpu_cores`.
    #[serde(default)]
    pub vgpu: Option<Vgpu>,
}

/// vGPU flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Vgpu {
    /// HAMi: `nvidia.com/gpumem` (MiB) and `nvidia.com/gpucores` (percent).
    Hami,
}

/// A Kubernetes toleration, as Kubernetes spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    /// Taint key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    /// Taint value (with `Equal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Taint effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    /// How long a `NoExecute` taint is tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// Toleration operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
pub enum TolerationOperator {
    /// Any value.
    Exists,
    /// The given value.
    Equal,
}

/// Taint effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
pub enum TaintEffect {
    /// Do not schedule.
    NoSchedule,
    /// Avoid scheduling.
    PreferNoSchedule,
    /// Evict.
    NoExecute,
}

/// A node group.
#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    /// Node labels.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

/// A volume preset.
#[derive(Debug, Clone, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumePreset {
    /// PersistentVolumeClaim name.
    pub claim: String,
    /// Mount path.
    pub mount: String,
    /// Read-only mount.
    #[serde(default)]
    pub read_only: bool,
}

/// Limits.
#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most GPUs one step may ask for per node.
    #[serde(default)]
    pub max_gpus_per_step: Option<u32>,
    /// Most nodes one step may span.
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// Longest step timeout, like `72h`.
    #[serde(default)]
    pub max_timeout: Option<String>,
}

/// Distributed training back-ends.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Distributed {
    /// Kubeflow training-operator `PyTorchJob`.
    #[default]
    Pytorchjob,
    /// Kubernetes `JobSet`.
    Jobset,
}

/// Profile-wide defaults.
#[derive(Debug, Clone, Default, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileDefaults {
    /// Default queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Default priority level.
    #[serde(default)]
    pub priority: Option<String>,
    /// Node group for `train` steps without one.
    #[serde(default)]
    pub train_node_group: Option<String>,
}

impl Profile {
    /// Parses and checks a profile file.
    pub fn from_yaml(file: &str, text: &str) -> Result<Profile, Problems> {
        let profile: Profile = yaml::parse_all(file, text)?;
        let problems = profile.check();
        if problems.is_empty() {
            return Ok(profile);
        }
        Err(yaml::locate(file, text, problems))
    }

    /// The longest step timeout in seconds, when limited.
    pub fn max_timeout_secs(&self) -> Option<u64> {
        self.limits
            .max_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }

    /// Checks references inside the profile; returns (field path, message) pairs.
    pub(crate) fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(t) = &self.limits.max_timeout
            && let Err(e) = parse_duration(t)
        {
            out.push(("limits.max_timeout".to_owned(), e));
        }
        let defaults = &self.defaults;
        if let Some(q) = &defaults.queue
            && !self.queues.contains(q)
        {
            out.push((
                "defaults.queue".into(),
                format!("queue `{q}` is not in `queues`"),
            ));
        }
        if let Some(p) = &defaults.priority
            && !self.priorities.contains_key(p)
        {
            out.push((
                "defaults.priority".into(),
                format!("priority `{p}` is not in `priorities`"),
            ));
        }
        if let Some(g) = &defaults.train_node_group
            && !self.node_groups.contains_key(g)
        {
            let msg = format!("node group `{g}` is not in `node_groups`");
            out.push(("defaults.train_node_group".into(), msg));
        }
        for (name, gpu) in &self.gpu_types {
            if gpu.resource.is_empty() || !gpu.resource.contains('/') {
                let msg = format!(
                    "`{}` is not an extended resource name like nvidia.com/gpu",
                    gpu.resource
                );
                out.push((format!("gpu_types.{name}.resource"), msg));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_problem_of_a_profile_is_reported_at_once() {
        let text = "gpu_types:
  A100: { resource: nvidia.com/gpu, vgpu: hammi }
  H100: { resorce: nvidia.com/gpu }
queues: team-a
limits: { max_gpus: 8 }
";
        let err = Profile::from_yaml("profile.yaml", text)
            .expect_err("invalid")
            .to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            vec![
                "profile.yaml:2:43: gpu_types.A100.vgpu: unknown variant `hammi`, expected one of `hami`; did you mean `hami`?",
                "profile.yaml:3:11: gpu_types.H100.resorce: unknown field `resorce`, expected one of `node_selector`, `resource`, `tolerations`, `vgpu`; did you mean `resource`?",
                "profile.yaml:4:9: queues: expected a list, found `team-a`",
                "profile.yaml:5:11: limits.max_gpus: unknown field `max_gpus`, expected one of `max_gpus_per_step`, `max_nodes`, `max_timeout`",
            ],
            "{err}"
        );
    }

    #[test]
    fn the_shape_walk_accepts_the_example_profile() {
        let text = include_str!("../../../examples/profile.yaml");
        Profile::from_yaml("profile.yaml", text).expect("valid");
        assert_eq!(
            yaml::shape_problems::<Profile>("profile.yaml", text),
            vec![]
        );
    }
}
