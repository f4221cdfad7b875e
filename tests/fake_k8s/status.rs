//! A scriptable stand-in for the Argo controller's writing: builders of the `status` that Argo
//! v3.5+ writes on a Workflow, derived from the workflow's own spec (its entrypoint DAG, task
//! dependencies, templates and their `retryStrategy`), so a test says what happened to each
//! task and gets the document the executor would read from a cluster.
//!
//! What it reproduces (checked against Argo's controller and its schemas):
//! - node ids `<workflow>-<fnv32a(node name)>` (the root DAG node's id is the workflow name),
//!   node names `<workflow>.<task>` and, for attempts, `<workflow>.<task>(<n>)`;
//! - a task whose template has a `retryStrategy` (or that took several attempts) is a `Retry`
//!   node whose children are `Pod` attempts flagged `nodeFlag.retried`; earlier attempts failed
//!   with `Error (exit code 1)`; a failed task whose retry policy retries failures used every
//!   attempt its `limit` allows unless told otherwise; a Retry node that ran out of attempts says
//!   `No more retries left`, its last attempt carries the real failure; a succeeded Retry node
//!   copies its last attempt's outputs;
//! - `Skipped` nodes for a false `when` (`when 'false' evaluated false`, the expression after
//!   substitution) and for an unmet `depends` (phase `Omitted`,
//!   `omitted: depends condition not met`);
//! - children links from each dependency's outbound node to its dependents, the root's
//!   `outboundNodes`, `progress` counted over pods, `resourcesDuration`, `outputs.parameters`
//!   (with the template's `valueFrom`) and `exitCode`, `conditions`, `taskResultsCompletionStatus`;
//! - the workflow phase derived from the tasks unless set, with `child '<id>' failed` as the
//!   message of a failed run;
//! - `nodes` inline, as `compressedNodes` (base64 of gzip of the nodes' JSON), or offloaded
//!   (`offloadNodeStatusVersion` and no nodes).
//!
//! Times are deterministic: they start at the workflow's `creationTimestamp` and advance a
//! fixed amount per task and attempt.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

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

    fn finished(self) -> bool {
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

    fn finished(self) -> bool {
        match self {
            NodePhase::Pending | NodePhase::Running => false,
            NodePhase::Succeeded
            | NodePhase::Failed
            | NodePhase::Error
            | NodePhase::Skipped
            | NodePhase::Omitted => true,
        }
    }

    fn ran(self) -> bool {
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
    phase: NodePhase,
    message: Option<String>,
    attempts: Option<u32>,
    outputs: Vec<(String, String)>,
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

/// One task of the entrypoint DAG.
#[derive(Debug, Clone)]
struct Task {
    name: String,
    template: String,
    deps: Vec<String>,
}

/// Builds a workflow's `status` from what happened to its tasks; see the module docs.
#[derive(Debug, Clone)]
pub struct StatusBuilder {
    workflow: String,
    entrypoint: String,
    tasks: Vec<Task>,
    templates: BTreeMap<String, Value>,
    outcomes: BTreeMap<String, TaskOutcome>,
    phase: Option<WorkflowPhase>,
    message: Option<String>,
    form: NodesForm,
    start: jiff::Timestamp,
}

impl StatusBuilder {
    /// A builder for this workflow (as stored: it needs `metadata.name`, `spec.entrypoint`
    /// and a `dag` template of that name); no task has started.
    pub fn for_workflow(workflow: &Value) -> anyhow::Result<StatusBuilder> {
        let name = workflow["metadata"]["name"]
            .as_str()
            .context("the workflow has no metadata.name")?;
        let entrypoint = workflow["spec"]["entrypoint"]
            .as_str()
            .context("the workflow has no spec.entrypoint")?;
        let templates: BTreeMap<String, Value> = workflow["spec"]["templates"]
            .as_array()
            .context("the workflow has no spec.templates")?
            .iter()
            .filter_map(|t| Some((t["name"].as_str()?.to_owned(), t.clone())))
            .collect();
        let Some(dag) = templates
            .get(entrypoint)
            .and_then(|t| t["dag"]["tasks"].as_array())
        else {
            bail!("the entrypoint template {entrypoint:?} is not a DAG");
        };
        let names: Vec<&str> = dag.iter().filter_map(|t| t["name"].as_str()).collect();
        let tasks = dag
            .iter()
            .map(|t| Task {
                name: t["name"].as_str().unwrap_or_default().to_owned(),
                template: t["template"].as_str().unwrap_or_default().to_owned(),
                deps: dependencies(t, &names),
            })
            .collect();
        let start = workflow["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        Ok(StatusBuilder {
            workflow: name.to_owned(),
            entrypoint: entrypoint.to_owned(),
            tasks,
            templates,
            outcomes: BTreeMap::new(),
            phase: None,
            message: None,
            form: NodesForm::Inline,
            start,
        })
    }

    /// Records what happened to task `name` (panics, listing the tasks, when there is none).
    pub fn task(mut self, name: &str, outcome: TaskOutcome) -> StatusBuilder {
        assert!(
            self.tasks.iter().any(|t| t.name == name),
            "workflow {} has no task {name:?}; its tasks: {:?}",
            self.workflow,
            self.tasks.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
        self.outcomes.insert(name.to_owned(), outcome);
        self
    }

    /// Sets the workflow phase instead of deriving it from the tasks.
    pub fn phase(mut self, phase: WorkflowPhase) -> StatusBuilder {
        self.phase = Some(phase);
        self
    }

    /// Sets `status.message`.
    pub fn message(mut self, message: impl Into<String>) -> StatusBuilder {
        self.message = Some(message.into());
        self
    }

    /// Writes the nodes as `compressedNodes`.
    pub fn compressed(mut self) -> StatusBuilder {
        self.form = NodesForm::Compressed;
        self
    }

    /// Leaves the nodes out, as offloaded to Argo's database.
    pub fn offloaded(mut self) -> StatusBuilder {
        self.form = NodesForm::Offloaded;
        self
    }

    /// The workflow phase: as set, or derived from the tasks.
    pub fn workflow_phase(&self) -> WorkflowPhase {
        if let Some(phase) = self.phase {
            return phase;
        }
        let phases: Vec<NodePhase> = self.outcomes.values().map(|o| o.phase).collect();
        if phases.contains(&NodePhase::Error) {
            WorkflowPhase::Error
        } else if phases.contains(&NodePhase::Failed) {
            WorkflowPhase::Failed
        } else if self.tasks.iter().all(|t| {
            self.outcomes
                .get(&t.name)
                .is_some_and(|o| o.phase.finished())
        }) {
            WorkflowPhase::Succeeded
        } else {
            WorkflowPhase::Running
        }
    }

    /// The `status` document.
    pub fn build(&self) -> Value {
        let phase = self.workflow_phase();
        let nodes = self.nodes();
        let pods: Vec<&Value> = nodes.values().filter(|n| n["type"] == "Pod").collect();
        let done = pods.iter().filter(|n| n["progress"] == "1/1").count();
        let mut status = json!({
            "phase": phase.as_str(),
            "startedAt": self.at(0),
            "progress": format!("{done}/{}", pods.len()),
        });
        if phase.finished() {
            status["finishedAt"] = self.end_of(&nodes).into();
            status["resourcesDuration"] = sum_durations(pods.iter().copied());
            status["conditions"] = json!([
                {"type": "PodRunning", "status": "False"},
                {"type": "Completed", "status": "True"},
            ]);
        } else if !pods.is_empty() {
            status["conditions"] = json!([{"type": "PodRunning", "status": "True"}]);
        }
        let completed: Map<String, Value> = pods
            .iter()
            .filter(|n| n["progress"] == "1/1")
            .map(|n| (n["id"].as_str().unwrap_or_default().to_owned(), true.into()))
            .collect();
        if !completed.is_empty() {
            status["taskResultsCompletionStatus"] = completed.into();
        }
        if let Some(message) = self
            .message
            .clone()
            .or_else(|| self.failure_message(&nodes))
        {
            status["message"] = message.into();
        }
        if phase != WorkflowPhase::Pending {
            self.place_nodes(&mut status, nodes);
        }
        status
    }

    fn place_nodes(&self, status: &mut Value, nodes: Map<String, Value>) {
        let nodes = Value::Object(nodes);
        match self.form {
            NodesForm::Inline => status["nodes"] = nodes,
            NodesForm::Compressed => status["compressedNodes"] = compress_nodes(&nodes).into(),
            NodesForm::Offloaded => {
                let version = fnv32a(nodes.to_string().as_bytes());
                status["offloadNodeStatusVersion"] = format!("fnv:{version}").into();
            }
        }
    }

    /// `child '<id>' failed` for the first failed task, as Argo words a failed DAG.
    fn failure_message(&self, nodes: &Map<String, Value>) -> Option<String> {
        let root = nodes.get(&self.workflow)?;
        matches!(root["phase"].as_str(), Some("Failed" | "Error"))
            .then(|| root["message"].as_str().map(str::to_owned))
            .flatten()
    }

    /// `status.nodes`, keyed by node id.
    pub fn nodes(&self) -> Map<String, Value> {
        let mut nodes = Map::new();
        let mut first: BTreeMap<&str, String> = BTreeMap::new();
        let mut outbound: BTreeMap<&str, String> = BTreeMap::new();
        for (i, task) in self.tasks.iter().enumerate() {
            let Some(outcome) = self.outcomes.get(&task.name) else {
                continue;
            };
            let (id, out) = self.task_nodes(i, task, outcome, &mut nodes);
            first.insert(&task.name, id);
            outbound.insert(&task.name, out);
        }
        for task in &self.tasks {
            let Some(id) = first.get(task.name.as_str()) else {
                continue;
            };
            for dep in &task.deps {
                if let Some(parent) = outbound.get(dep.as_str()) {
                    push_child(&mut nodes, parent, id);
                }
            }
        }
        let root_children: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.deps.is_empty())
            .filter_map(|t| first.get(t.name.as_str()).cloned())
            .collect();
        let leaves: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| !self.tasks.iter().any(|o| o.deps.contains(&t.name)))
            .filter_map(|t| outbound.get(t.name.as_str()).cloned())
            .collect();
        let root = self.root_node(&nodes, root_children, leaves);
        nodes.insert(self.workflow.clone(), root);
        nodes
    }

    fn root_node(
        &self,
        nodes: &Map<String, Value>,
        children: Vec<String>,
        leaves: Vec<String>,
    ) -> Value {
        let phase = self.workflow_phase();
        let pods: Vec<&Value> = nodes.values().filter(|n| n["type"] == "Pod").collect();
        let done = pods.iter().filter(|n| n["progress"] == "1/1").count();
        let mut root = json!({
            "id": self.workflow,
            "name": self.workflow,
            "displayName": self.workflow,
            "type": "DAG",
            "templateName": self.entrypoint,
            "templateScope": format!("local/{}", self.workflow),
            "phase": phase.as_str(),
            "startedAt": self.at(0),
            "progress": format!("{done}/{}", pods.len()),
            "children": children,
        });
        if phase.finished() {
            root["finishedAt"] = self.end_of(nodes).into();
            root["outboundNodes"] = leaves.into();
            root["resourcesDuration"] = sum_durations(pods.iter().copied());
        }
        let failed = self.tasks.iter().find_map(|t| {
            let o = self.outcomes.get(&t.name)?;
            matches!(o.phase, NodePhase::Failed | NodePhase::Error)
                .then(|| node_id(&self.workflow, &format!("{}.{}", self.workflow, t.name)))
        });
        if let (true, Some(id)) = (
            matches!(phase, WorkflowPhase::Failed | WorkflowPhase::Error),
            failed,
        ) {
            root["message"] = format!("child '{id}' failed").into();
        }
        root
    }

    /// Adds the nodes of one task; returns its node id and its outbound node id.
    fn task_nodes(
        &self,
        index: usize,
        task: &Task,
        outcome: &TaskOutcome,
        nodes: &mut Map<String, Value>,
    ) -> (String, String) {
        let name = format!("{}.{}", self.workflow, task.name);
        let id = node_id(&self.workflow, &name);
        let started = 120 * index as i64 + 5;
        let mut node = json!({
            "id": id,
            "name": name,
            "displayName": task.name,
            "templateName": task.template,
            "templateScope": format!("local/{}", self.workflow),
            "phase": outcome.phase.as_str(),
            "boundaryID": self.workflow,
            "startedAt": self.at(started),
        });
        if let Some(message) = &outcome.message {
            node["message"] = message.clone().into();
        }
        if !outcome.phase.ran() {
            node["type"] = "Skipped".into();
            node["finishedAt"] = self.at(started).into();
            nodes.insert(id.clone(), node);
            return (id.clone(), id);
        }
        let template = self
            .templates
            .get(&task.template)
            .cloned()
            .unwrap_or_default();
        let retry = &template["retryStrategy"];
        let attempts = outcome
            .attempts
            .unwrap_or_else(|| default_attempts(retry, outcome.phase));
        if retry.is_null() && attempts == 1 {
            node["type"] = "Pod".into();
            self.fill_pod(
                &mut node,
                &template,
                outcome.phase,
                &outcome.outputs,
                started,
            );
            nodes.insert(id.clone(), node);
            return (id.clone(), id);
        }
        let mut children = Vec::new();
        let mut pods = Vec::new();
        for attempt in 0..attempts {
            let last = attempt + 1 == attempts;
            let pod_name = format!("{name}({attempt})");
            let pod_id = node_id(&self.workflow, &pod_name);
            let mut pod = json!({
                "id": pod_id,
                "name": pod_name,
                "displayName": format!("{}({attempt})", task.name),
                "type": "Pod",
                "templateName": task.template,
                "templateScope": format!("local/{}", self.workflow),
                "boundaryID": self.workflow,
                "nodeFlag": {"retried": true},
            });
            let pod_start = started + 60 * i64::from(attempt);
            if last {
                if let Some(message) = &outcome.message {
                    pod["message"] = message.clone().into();
                }
                self.fill_pod(
                    &mut pod,
                    &template,
                    outcome.phase,
                    &outcome.outputs,
                    pod_start,
                );
            } else {
                pod["message"] = "Error (exit code 1)".into();
                self.fill_pod(&mut pod, &template, NodePhase::Failed, &[], pod_start);
            }
            children.push(pod_id.clone());
            pods.push(pod.clone());
            nodes.insert(pod_id, pod);
        }
        let last = pods.last().cloned().unwrap_or_default();
        node["type"] = "Retry".into();
        node["children"] = children.clone().into();
        let done = pods.iter().filter(|p| p["progress"] == "1/1").count();
        node["progress"] = format!("{done}/{}", pods.len()).into();
        if outcome.phase.finished() {
            node["finishedAt"] = last["finishedAt"].clone();
            node["resourcesDuration"] = sum_durations(pods.iter());
        }
        match outcome.phase {
            NodePhase::Succeeded => node["outputs"] = last["outputs"].clone(),
            NodePhase::Failed | NodePhase::Error if exhausted(retry, attempts) => {
                node["message"] = "No more retries left".into();
            }
            // Not retried (e.g. `retryPolicy: OnError` after a failure): the attempt's message.
            NodePhase::Failed | NodePhase::Error => node["message"] = last["message"].clone(),
            NodePhase::Pending | NodePhase::Running | NodePhase::Skipped | NodePhase::Omitted => {}
        }
        nodes.insert(id.clone(), node);
        let out = children.last().cloned().unwrap_or_else(|| id.clone());
        (id, out)
    }

    /// Phase, times, progress, outputs and resource use of a pod node.
    fn fill_pod(
        &self,
        pod: &mut Value,
        template: &Value,
        phase: NodePhase,
        outputs: &[(String, String)],
        start: i64,
    ) {
        pod["phase"] = phase.as_str().into();
        pod["startedAt"] = self.at(start).into();
        let finished = phase.finished();
        pod["progress"] = if finished { "1/1" } else { "0/1" }.into();
        if phase != NodePhase::Pending {
            pod["hostNodeName"] = "gpu-node-1".into();
        }
        if !finished {
            return;
        }
        pod["finishedAt"] = self.at(start + 50).into();
        pod["resourcesDuration"] = json!({"cpu": 50, "memory": 50});
        let mut out = json!({});
        if phase == NodePhase::Succeeded {
            out["exitCode"] = "0".into();
        } else if phase == NodePhase::Failed {
            out["exitCode"] = "1".into();
        }
        if !outputs.is_empty() {
            out["parameters"] = output_parameters(template, outputs);
        }
        if out.as_object().is_some_and(|o| !o.is_empty()) {
            pod["outputs"] = out;
        }
    }

    /// `start` plus `secs`, as Kubernetes writes times.
    fn at(&self, secs: i64) -> String {
        let t = self
            .start
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap_or(self.start);
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn end_of(&self, nodes: &Map<String, Value>) -> String {
        nodes
            .values()
            .filter_map(|n| n["finishedAt"].as_str())
            .max()
            .map_or_else(|| self.at(0), str::to_owned)
    }
}

/// The names of the tasks a DAG task depends on (`depends` expression or `dependencies`).
fn dependencies(task: &Value, names: &[&str]) -> Vec<String> {
    let mut deps: Vec<String> = task["dependencies"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(depends) = task["depends"].as_str() {
        let words = depends
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'));
        for word in words {
            let name = word.split('.').next().unwrap_or_default();
            if names.contains(&name) && !deps.iter().any(|d| d == name) {
                deps.push(name.to_owned());
            }
        }
    }
    deps
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
fn exhausted(retry: &Value, attempts: u32) -> bool {
    retry_limit(retry).is_some_and(|l| attempts > l)
}

/// Attempts of a task given only its outcome: every allowed one when the strategy retries it.
fn default_attempts(retry: &Value, phase: NodePhase) -> u32 {
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

/// Output parameters with the values given, and the template's `valueFrom` where it declares one.
fn output_parameters(template: &Value, values: &[(String, String)]) -> Value {
    let declared = template["outputs"]["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    values
        .iter()
        .map(|(name, value)| {
            let mut p = declared
                .iter()
                .find(|d| d["name"] == name.as_str())
                .cloned()
                .unwrap_or_else(|| json!({"name": name}));
            p["value"] = value.clone().into();
            p
        })
        .collect()
}

fn push_child(nodes: &mut Map<String, Value>, parent: &str, child: &str) {
    if let Some(node) = nodes.get_mut(parent) {
        match node["children"].as_array_mut() {
            Some(children) => children.push(child.into()),
            None => node["children"] = json!([child]),
        }
    }
}

fn sum_durations<'a>(nodes: impl Iterator<Item = &'a Value>) -> Value {
    let mut sum: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in nodes
        .filter_map(|n| n["resourcesDuration"].as_object())
        .flatten()
    {
        *sum.entry(k.clone()).or_default() += v.as_i64().unwrap_or_default();
    }
    json!(sum)
}

/// FNV-1a, 32 bits (Argo's node-id hash).
fn fnv32a(bytes: &[u8]) -> u32 {
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

    #[test]
    fn depends_expressions_name_tasks() {
        let names = ["train", "evaluate", "deploy-prod"];
        let task = json!({"depends": "(train.Succeeded || train.Skipped) && deploy-prod"});
        assert_eq!(dependencies(&task, &names), ["train", "deploy-prod"]);
    }
}
