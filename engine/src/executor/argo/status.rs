//! Argo status -> [`Observation`]: pure functions, no I/O.
//!
//! The workflow's `status.phase` gives the run's phase; its nodes give the steps. ferry renders
//! one DAG whose task names are the step names (`render/context.rs`), so a step is the node named
//! `<workflow>.<step>` whose display name is the step name: a `Pod` node (a container step, or the
//! resource template that creates and waits for a distributed step's PyTorchJob or JobSet: Argo
//! sets its phase from the job's success and failure conditions), a `Retry` node whose children
//! are the attempts (`<step>(0)`, `<step>(1)`...), or a `Skipped` node. Steps that the workflow
//! does not contain (decided out when the run was created, or not reached yet) are not listed.
//!
//! A run stopped through `spec.shutdown` ends `Failed` with "Stopped with strategy 'Stop'"; ferry
//! reports it `Cancelled`, and its unfinished steps too.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read;

use base64::Engine as _;
use serde_json::Value;

use super::workflow::{Node, NodePhase, NodeSource, NodeType, Nodes, Workflow, WorkflowPhase};
use crate::executor::{Observation, Phase, StepObservation};
use crate::store::{RunId, StepState};

/// What the message says when Argo keeps the node statuses in its database.
pub const OFFLOADED: &str = "step status is offloaded; showing the workflow phase only";

/// The output parameter a step's metrics file is published as (`step-container.json.hbs`).
pub const METRICS_PARAMETER: &str = "metrics";

/// The largest decompressed `compressedNodes` ferry reads.
const MAX_NODES_JSON: u64 = 64 << 20;

/// The observation of a run from its workflow.
pub fn observe(run_id: RunId, wf: &Workflow) -> Observation {
    let name = wf.metadata.name.as_deref().unwrap_or_default();
    let shutdown = wf.spec.shutdown.is_some();
    let Some(status) = &wf.status else {
        return Observation {
            run_id,
            phase: Phase::Pending,
            message: None,
            steps: Vec::new(),
        };
    };
    let cancelled = matches!(
        status.phase,
        Some(WorkflowPhase::Failed | WorkflowPhase::Error)
    ) && (shutdown || status.message.as_deref().is_some_and(is_stop_message));
    let phase = if cancelled {
        Phase::Cancelled
    } else {
        run_phase(status.phase)
    };
    let mut message = status.message.clone();
    let steps = match nodes(&status.nodes) {
        Ok(Some(nodes)) => steps(name, &nodes),
        Ok(None) => Vec::new(),
        Err(note) => {
            message = Some(match message {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
            Vec::new()
        }
    };
    let steps = if cancelled {
        steps.into_iter().map(cancel_step).collect()
    } else {
        steps
    };
    Observation {
        run_id,
        phase,
        message,
        steps,
    }
}

/// The run phase for a workflow phase (a stop is decided by the caller).
pub fn run_phase(phase: Option<WorkflowPhase>) -> Phase {
    match phase {
        None | Some(WorkflowPhase::Pending | WorkflowPhase::Unknown) => Phase::Pending,
        Some(WorkflowPhase::Running) => Phase::Running,
        Some(WorkflowPhase::Succeeded) => Phase::Succeeded,
        Some(WorkflowPhase::Failed | WorkflowPhase::Error) => Phase::Failed,
    }
}

/// Whether a message is the one Argo writes when a workflow or node was stopped on request.
pub fn is_stop_message(message: &str) -> bool {
    message.starts_with("Stopped with strategy")
        || message.trim().eq_ignore_ascii_case("terminated")
}

/// The nodes to map: `Ok(None)` when there are none to show yet, `Err` with a note for the
/// message when they cannot be shown.
fn nodes(source: &NodeSource) -> Result<Option<Cow<'_, Nodes>>, String> {
    match source {
        NodeSource::None => Ok(None),
        NodeSource::Plain(nodes) => Ok(Some(Cow::Borrowed(nodes))),
        NodeSource::Compressed(packed) => decompress(packed)
            .map(|n| Some(Cow::Owned(n)))
            .map_err(|e| format!("step status could not be read: {e}")),
        NodeSource::Offloaded => Err(OFFLOADED.to_owned()),
        NodeSource::Unreadable(e) => Err(format!("step status could not be read: {e}")),
    }
}

/// `status.compressedNodes`: base64 of gzip of the nodes' JSON.
pub fn decompress(packed: &str) -> Result<Nodes, String> {
    let gz = base64::engine::general_purpose::STANDARD
        .decode(packed.trim())
        .map_err(|e| format!("compressedNodes is not base64: {e}"))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .take(MAX_NODES_JSON)
        .read_to_end(&mut json)
        .map_err(|e| format!("compressedNodes is not gzip: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("compressedNodes is not node JSON: {e}"))
}

/// One observation per step node, in step-name order.
fn steps(workflow: &str, nodes: &Nodes) -> Vec<StepObservation> {
    let attempts: HashSet<&str> = nodes
        .values()
        .filter(|n| n.kind == NodeType::Retry)
        .flat_map(|n| n.children.iter().flatten().map(String::as_str))
        .collect();
    let mut out: Vec<StepObservation> = nodes
        .iter()
        .filter(|(id, n)| {
            !attempts.contains(id.as_str())
                && matches!(n.kind, NodeType::Pod | NodeType::Retry | NodeType::Skipped)
                && n.name
                    .strip_prefix(workflow)
                    .and_then(|r| r.strip_prefix('.'))
                    == Some(n.display_name.as_str())
        })
        .filter_map(|(_, n)| step(n, nodes))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A step from its task node; `None` when its phase is one ferry does not know.
fn step(node: &Node, nodes: &Nodes) -> Option<StepObservation> {
    let tries: Vec<&Node> = match node.kind {
        NodeType::Retry => node
            .children
            .iter()
            .flatten()
            .filter_map(|id| nodes.get(id))
            .collect(),
        NodeType::Pod | NodeType::Skipped | NodeType::Dag | NodeType::Other => vec![node],
    };
    let started = tries.iter().filter(|t| has_started(t)).count();
    let attempts = u32::try_from(started).unwrap_or(u32::MAX);
    let last_failure = tries
        .iter()
        .rev()
        .find(|t| matches!(t.phase, Some(NodePhase::Failed | NodePhase::Error)))
        .and_then(|t| t.message.clone());
    // While nothing has started, the latest attempt says why (unschedulable, image pull...).
    let latest = tries.last().and_then(|t| t.message.clone());
    let mut s = StepObservation {
        name: node.display_name.clone(),
        state: StepState::Pending,
        attempts,
        message: node.message.clone(),
        metrics: None,
    };
    match node.phase.unwrap_or(NodePhase::Pending) {
        NodePhase::Pending => {
            s.attempts = 0;
            s.message = latest.or(s.message);
        }
        NodePhase::Running if attempts == 0 => s.message = latest.or(s.message),
        NodePhase::Running => {
            s.state = StepState::Running;
            s.message = last_failure.or(latest).or(s.message);
        }
        NodePhase::Succeeded => {
            s.state = StepState::Succeeded;
            let (metrics, note) = metrics(node, &tries);
            s.metrics = metrics;
            if note.is_some() {
                s.message = note;
            }
        }
        NodePhase::Skipped | NodePhase::Omitted => {
            s.state = StepState::Skipped;
            s.attempts = 0;
        }
        NodePhase::Failed | NodePhase::Error => {
            s.state = StepState::Failed;
            s.message = last_failure.or(s.message);
        }
        NodePhase::Unknown => return None,
    }
    Some(s)
}

/// Whether an attempt has started: it left `Pending` (a pod waiting for GPUs has not).
fn has_started(node: &Node) -> bool {
    match node.phase {
        None | Some(NodePhase::Pending | NodePhase::Skipped | NodePhase::Omitted) => false,
        Some(
            NodePhase::Running
            | NodePhase::Succeeded
            | NodePhase::Failed
            | NodePhase::Error
            | NodePhase::Unknown,
        ) => true,
    }
}

/// The `metrics` output of a succeeded step (the retry node's, else its last attempt's), and a
/// note when it is not a JSON object.
fn metrics(node: &Node, tries: &[&Node]) -> (Option<Value>, Option<String>) {
    let text = std::iter::once(node)
        .chain(tries.iter().rev().copied())
        .find_map(metrics_text);
    let Some(text) = text else {
        return (None, None);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => (Some(v), None),
        Ok(_) => (
            None,
            Some("metrics output is not a JSON object; ignored".to_owned()),
        ),
        Err(e) => (
            None,
            Some(format!("metrics output is not JSON ({e}); ignored")),
        ),
    }
}

fn metrics_text(node: &Node) -> Option<&str> {
    node.outputs
        .as_ref()?
        .parameters
        .iter()
        .flatten()
        .find(|p| p.name == METRICS_PARAMETER)?
        .value
        .as_deref()
}

/// A step of a stopped run: what had not finished, and what the stop killed, is cancelled.
fn cancel_step(mut s: StepObservation) -> StepObservation {
    let killed = s.state == StepState::Failed && s.message.as_deref().is_some_and(is_stop_message);
    match s.state {
        StepState::Pending | StepState::Running => s.state = StepState::Cancelled,
        StepState::Failed if killed => s.state = StepState::Cancelled,
        StepState::Failed | StepState::Succeeded | StepState::Skipped | StepState::Cancelled => {}
    }
    s
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
