//! Argo's vocabulary for the controller stand-in: workflow and node phases, what a test says
//! happened to a task ([`TaskOutcome`]), where a status keeps its nodes, node ids
//! (`<workflow>-<fnv32a(node name)>`), how a `retryStrategy` limits attempts, and `compressedNodes` (base64 of gzip of the nodes' JSON).

use std::io::{Read, Write};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// `status.phase` of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowPhase {
    /// Accepted, not started (e.g. waiting for a queue).
    Pending,
    /// Running.
    Running,
    /// Every task succeeded or was skipped.
    Succeeded,
    /// A task failed.
    Failed,
    /// The controller hit an error.
    Error,
}

impl WorkflowPhase {
    /// As Argo writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowPhase::Pending => "Pending",
            WorkflowPhase::Running => "Running",
            WorkflowPhase::Succeeded => "Succeeded",
            WorkflowPhase::Failed => "Failed",
            WorkflowPhase::Error => "Error",
        }
    }

    pub(super) fn finished(self) -> bool {
        match self {
            WorkflowPhase::Pending | WorkflowPhase::Running => false,
            WorkflowPhase::Succeeded | WorkflowPhase::Failed | WorkflowPhase::Error => true,
        }
    }
}

/// `phase` of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePhase {
    /// Pod not running yet.
    Pending,
    /// Running.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed (non-zero exit, deadline, ...).
    Failed,
    /// Errored (could not run).
    Error,
    /// Skipped by a false `when`.
    Skipped,
    /// Not run because its `depends` was not met.
    Omitted,
}

impl NodePhase {
    /// As Argo writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Pending => "Pending",
            NodePhase::Running => "Running",
            NodePhase::Succeeded => "Succeeded",
            NodePhase::Failed => "Failed",
            NodePhase::Error => "Error",
            NodePhase::Skipped => "Skipped",
            NodePhase::Omitted => "Omitted",
        }
    }

    pub(super) fn finished(self) -> bool {
        match self {
            NodePhase::Pending | NodePhase::Running => false,
            NodePhase::Succeeded
            | NodePhase::Failed
            | NodePhase::Error
            | NodePhase::Skipped
            | NodePhase::Omitted => true,
        }
    }

    pub(super) fn ran(self) -> bool {
        match self {
            NodePhase::Skipped | NodePhase::Omitted => false,
            NodePhase::Pending
            | NodePhase::Running
            | NodePhase::Succeeded
            | NodePhase::Failed
            | NodePhase::Error => true,
        }
    }
}

/// What happened to one DAG task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub(super) phase: NodePhase,
    pub(super) message: Option<String>,
    pub(super) attempts: Option<u32>,
    pub(super) outputs: Vec<(String, String)>,
}

impl TaskOutcome {
    fn new(phase: NodePhase, message: Option<String>) -> TaskOutcome {
        TaskOutcome {
            phase,
            message,
            attempts: None,
            outputs: Vec::new(),
        }
    }

    /// Its pod is not running yet.
    pub fn pending() -> TaskOutcome {
        TaskOutcome::new(NodePhase::Pending, None)
    }

    /// Its pod is running.
    pub fn running() -> TaskOutcome {
        TaskOutcome::new(NodePhase::Running, None)
    }

    /// It succeeded.
    pub fn succeeded() -> TaskOutcome {
        TaskOutcome::new(NodePhase::Succeeded, None)
    }

    /// Its (last) pod failed with this message (Argo's own is `Error (exit code 1)`).
    pub fn failed(message: impl Into<String>) -> TaskOutcome {
        TaskOutcome::new(NodePhase::Failed, Some(message.into()))
    }

    /// It errored with this message.
    pub fn errored(message: impl Into<String>) -> TaskOutcome {
        TaskOutcome::new(NodePhase::Error, Some(message.into()))
    }

    /// Its `when` evaluated false.
    pub fn skipped() -> TaskOutcome {
        TaskOutcome::new(
            NodePhase::Skipped,
            Some("when 'false' evaluated false".into()),
        )
    }

    /// Its `depends` was not met.
    pub fn omitted() -> TaskOutcome {
        TaskOutcome::new(
            NodePhase::Omitted,
            Some("omitted: depends condition not met".into()),
        )
    }

    /// It took `n` attempts (at least 1); all but the last failed with `Error (exit code 1)`.
    ///
    /// Unset, a task takes one attempt, except that a failed or errored task whose template's
    /// `retryStrategy` retries that outcome used every attempt its `limit` allows, as Argo would.
    pub fn attempts(mut self, n: u32) -> TaskOutcome {
        self.attempts = Some(n.max(1));
        self
    }

    /// An output parameter of its (last) pod.
    pub fn output(mut self, name: &str, value: impl Into<String>) -> TaskOutcome {
        self.outputs.push((name.to_owned(), value.into()));
        self
    }

    /// The `metrics` output parameter: `metrics` as a JSON string.
    pub fn metrics(self, metrics: &Value) -> TaskOutcome {
        self.output("metrics", metrics.to_string())
    }

    /// Replaces the node message.
    pub fn message(mut self, message: impl Into<String>) -> TaskOutcome {
        self.message = Some(message.into());
        self
    }
}

/// Where the nodes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodesForm {
    /// `status.nodes`.
    Inline,
    /// `status.compressedNodes`.
    Compressed,
    /// Offloaded to Argo's database: `status.offloadNodeStatusVersion`, no nodes.
    Offloaded,
}

/// A retry strategy's `limit` (an int or a string); `None` when unlimited.
fn retry_limit(retry: &Value) -> Option<u32> {
    match &retry["limit"] {
        Value::Number(n) => n.as_u64().and_then(|l| u32::try_from(l).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether a retry strategy's `limit` is used up after `attempts` (no limit: never).
pub(super) fn exhausted(retry: &Value, attempts: u32) -> bool {
    retry_limit(retry).is_some_and(|l| attempts > l)
}

/// Attempts of a task given only its outcome: every allowed one when the strategy retries it.
pub(super) fn default_attempts(retry: &Value, phase: NodePhase) -> u32 {
    let policy = retry["retryPolicy"].as_str().unwrap_or("OnFailure");
    let retried = match phase {
        NodePhase::Failed => matches!(policy, "Always" | "OnFailure"),
        NodePhase::Error => matches!(policy, "Always" | "OnError" | "OnTransientError"),
        NodePhase::Pending
        | NodePhase::Running
        | NodePhase::Succeeded
        | NodePhase::Skipped
        | NodePhase::Omitted => false,
    };
    match retry_limit(retry) {
        Some(limit) if retried && !retry.is_null() => limit.saturating_add(1),
        _ => 1,
    }
}

/// FNV-1a, 32 bits (Argo's node-id hash).
pub(super) fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Argo's node id for a node name: the workflow name for the root, else
/// `<workflow>-<fnv32a(name)>`.
pub fn node_id(workflow: &str, node_name: &str) -> String {
    if node_name == workflow {
        return workflow.to_owned();
    }
    format!("{workflow}-{}", fnv32a(node_name.as_bytes()))
}

/// `status.compressedNodes` for a nodes map: base64 of gzip of its JSON.
pub fn compress_nodes(nodes: &Value) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let written = gz.write_all(nodes.to_string().as_bytes());
    let bytes = written.and_then(|()| gz.finish()).unwrap_or_default();
    STANDARD.encode(bytes)
}

/// The nodes map inside `status.compressedNodes`.
pub fn decompress_nodes(compressed: &str) -> anyhow::Result<Value> {
    let bytes = STANDARD
        .decode(compressed)
        .context("compressedNodes is not base64")?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_string(&mut text)
        .context("compressedNodes is not gzip")?;
    serde_json::from_str(&text).context("compressedNodes is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn compressed_nodes_round_trip() {
        let nodes = json!({"a": {"id": "a", "phase": "Succeeded"}});
        let back = decompress_nodes(&compress_nodes(&nodes)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(back, nodes);
    }
}
