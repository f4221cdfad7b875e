//! The Argo Workflow as ferry reads it back: a small local view of a CRD we do not own.
//!
//! `kube`'s [`Object`] with an [`ApiResource`] for `argoproj.io/v1alpha1` `workflows` (the way
//! kube's own examples read foreign CRDs), holding only what the status mapping needs:
//! `spec.shutdown` and the parts of `status` that say how the run and its steps are doing. The
//! rest of the spec (templates, scripts) is skipped while parsing, never kept.
//!
//! Parsing is lenient on purpose. Argo installs its CRDs without a schema for `status`, so a
//! workflow edited by hand (or written by a future Argo) can hold anything there; one such object
//! must not stop the watch of a whole namespace. An unreadable `status` keeps its phase and
//! message when those are readable and says why the steps are missing.

use std::collections::BTreeMap;

use kube::core::{ApiResource, Object};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::store::RunId;

/// The label carrying the store's run id on every workflow ferry creates.
pub const RUN_ID_LABEL: &str = "ferry.dev/run-id";

/// An Argo Workflow, read with only the fields ferry uses.
pub type Workflow = Object<WorkflowSpec, WorkflowStatus>;

/// `argoproj.io/v1alpha1`, kind `Workflow`, resource `workflows`.
pub fn workflow_resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".to_owned(),
        version: "v1alpha1".to_owned(),
        api_version: "argoproj.io/v1alpha1".to_owned(),
        kind: "Workflow".to_owned(),
        plural: "workflows".to_owned(),
    }
}

/// The name of a run's workflow.
pub fn workflow_name(run: RunId) -> String {
    format!("ferry-{run}")
}

/// The run id a workflow's `ferry.dev/run-id` label names, if it is a valid one.
pub fn run_id_of(wf: &Workflow) -> Option<RunId> {
    label_run_id(wf.metadata.labels.as_ref()?.get(RUN_ID_LABEL)?)
}

/// Parses a `ferry.dev/run-id` label value.
pub fn label_run_id(value: &str) -> Option<RunId> {
    value.parse().ok().and_then(RunId::new)
}

/// `spec`: only `shutdown` (set by a cancel).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// `Stop` or `Terminate` once someone asked the workflow to stop.
    #[serde(default, deserialize_with = "string_or_none")]
    pub shutdown: Option<String>,
}

/// `status`, or what could be read of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowStatus {
    /// The workflow's phase; `None` before the controller first touches it.
    pub phase: Option<WorkflowPhase>,
    /// The controller's message.
    pub message: Option<String>,
    /// Where the nodes are.
    pub nodes: NodeSource,
}

/// Where a workflow's node statuses are.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum NodeSource {
    /// No nodes yet.
    #[default]
    None,
    /// `status.nodes`.
    Plain(Nodes),
    /// `status.compressedNodes`: base64 of gzip of the nodes' JSON, decoded when mapped.
    Compressed(String),
    /// `status.offloadNodeStatusVersion` is set and the nodes are in Argo's database.
    Offloaded,
    /// The status could not be read (why).
    Unreadable(String),
}

/// Node statuses by node id.
pub type Nodes = BTreeMap<String, Node>;

/// A workflow phase (`status.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkflowPhase {
    /// Accepted, nothing running.
    Pending,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with a failed step (or stopped).
    Failed,
    /// Finished because of an error of the workflow itself (invalid spec, controller error).
    Error,
    /// A phase this version of ferry does not know.
    #[serde(other)]
    Unknown,
}

/// A node phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NodePhase {
    /// Created, not running (pod unscheduled, image pulling...).
    Pending,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Not run: its `when` was false.
    Skipped,
    /// Failed.
    Failed,
    /// Errored (pod deleted, controller error).
    Error,
    /// Not run: its `depends` could not be met.
    Omitted,
    /// A phase this version of ferry does not know.
    #[serde(other)]
    Unknown,
}

/// A node type (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NodeType {
    /// The DAG template (the workflow's root node).
    #[serde(rename = "DAG")]
    Dag,
    /// The parent of a task's attempts, when the template has a `retryStrategy`.
    Retry,
    /// A pod (container templates and resource templates alike).
    Pod,
    /// A task that was not run (its phase says why: `Skipped` or `Omitted`).
    Skipped,
    /// Any other type (steps, task groups, suspend, HTTP...), none of which ferry renders.
    #[serde(other)]
    Other,
}

/// One node status.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Full name: `<workflow>.<task>`, `<workflow>.<task>(<attempt>)`.
    pub name: String,
    /// The task name, or `<task>(<attempt>)` for an attempt.
    #[serde(default)]
    pub display_name: String,
    /// The node type.
    #[serde(rename = "type")]
    pub kind: NodeType,
    /// The phase.
    #[serde(default)]
    pub phase: Option<NodePhase>,
    /// Argo's message (exit code, pod failure reason, skip reason).
    #[serde(default)]
    pub message: Option<String>,
    /// Child node ids (a retry node's attempts).
    #[serde(default)]
    pub children: Option<Vec<String>>,
    /// Outputs: the `metrics` parameter.
    #[serde(default)]
    pub outputs: Option<Outputs>,
}

/// A node's outputs.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Outputs {
    /// Output parameters.
    #[serde(default)]
    pub parameters: Option<Vec<Parameter>>,
}

/// An output parameter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Parameter {
    /// Its name.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
}

/// The fields of `status` read in one piece; anything else in it is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    #[serde(default)]
    phase: Option<WorkflowPhase>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    nodes: Option<Nodes>,
    #[serde(default)]
    compressed_nodes: Option<String>,
    #[serde(default)]
    offload_node_status_version: Option<String>,
}

impl WorkflowStatus {
    /// Reads a status from its JSON, keeping what it can when the whole does not parse.
    pub fn from_value(value: &Value) -> WorkflowStatus {
        match RawStatus::deserialize(value) {
            Ok(raw) => {
                let nodes = match (
                    raw.nodes,
                    raw.compressed_nodes,
                    raw.offload_node_status_version,
                ) {
                    (Some(nodes), _, _) if !nodes.is_empty() => NodeSource::Plain(nodes),
                    (_, Some(packed), _) if !packed.is_empty() => NodeSource::Compressed(packed),
                    (_, _, Some(v)) if !v.is_empty() => NodeSource::Offloaded,
                    (Some(_) | None, _, _) => NodeSource::None,
                };
                WorkflowStatus {
                    phase: raw.phase,
                    message: raw.message.filter(|m| !m.is_empty()),
                    nodes,
                }
            }
            Err(e) => WorkflowStatus {
                phase: value
                    .get("phase")
                    .and_then(|p| WorkflowPhase::deserialize(p).ok()),
                message: value
                    .get("message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned),
                nodes: NodeSource::Unreadable(e.to_string()),
            },
        }
    }
}

impl<'de> Deserialize<'de> for WorkflowStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(WorkflowStatus::from_value(&Value::deserialize(d)?))
    }
}

/// A string field that is `None` when it is anything but a non-empty string.
fn string_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_labels_parse_strictly() {
        assert_eq!(label_run_id("12").map(RunId::get), Some(12));
        assert_eq!(label_run_id("0"), None);
        assert_eq!(label_run_id("-3"), None);
        assert_eq!(label_run_id("12a"), None);
        assert_eq!(label_run_id(""), None);
    }
}
