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
//! - `Suspend` nodes for tasks whose template is a `suspend` (Running until resumed);
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

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use super::argo::{
    NodePhase, NodesForm, TaskOutcome, WorkflowPhase, compress_nodes, default_attempts, exhausted,
    fnv32a, node_id,
};

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

    /// The fields every node of a task (or attempt) `name` shares.
    fn node(&self, name: &str, display: &str, template: &str, kind: &str) -> Value {
        json!({
            "id": node_id(&self.workflow, name),
            "name": name,
            "displayName": display,
            "type": kind,
            "templateName": template,
            "templateScope": format!("local/{}", self.workflow),
            "boundaryID": self.workflow,
        })
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
        let start = 120 * index as i64 + 5;
        let template = self
            .templates
            .get(&task.template)
            .cloned()
            .unwrap_or_default();
        let retry = &template["retryStrategy"];
        let attempts = outcome
            .attempts
            .unwrap_or_else(|| default_attempts(retry, outcome.phase));
        let kind = if !outcome.phase.ran() {
            "Skipped"
        } else if !template["suspend"].is_null() {
            "Suspend"
        } else if retry.is_null() && attempts == 1 {
            "Pod"
        } else {
            "Retry"
        };
        let mut node = self.node(&name, &task.name, &task.template, kind);
        let id = node["id"].as_str().unwrap_or_default().to_owned();
        if kind == "Retry" {
            let last = self.attempt_nodes(task, &template, outcome, attempts, start, nodes);
            finish_retry(
                &mut node,
                outcome.phase,
                exhausted(retry, attempts),
                nodes,
                &last,
            );
            nodes.insert(id.clone(), node);
            return (id, last.last().cloned().unwrap_or_default());
        }
        node["phase"] = outcome.phase.as_str().into();
        node["startedAt"] = self.at(start).into();
        match kind {
            "Pod" => self.fill_pod(&mut node, &template, outcome.phase, &outcome.outputs, start),
            // Skipped nodes finish as they start; a Suspend node finishes when resumed.
            _ if outcome.phase.finished() => node["finishedAt"] = self.at(start).into(),
            _ => {}
        }
        if let Some(message) = &outcome.message {
            node["message"] = message.clone().into();
        }
        nodes.insert(id.clone(), node);
        (id.clone(), id)
    }

    /// Adds the `Pod` attempts of a retried task (all but the last failed); returns their ids.
    fn attempt_nodes(
        &self,
        task: &Task,
        template: &Value,
        outcome: &TaskOutcome,
        attempts: u32,
        start: i64,
        nodes: &mut Map<String, Value>,
    ) -> Vec<String> {
        let name = format!("{}.{}", self.workflow, task.name);
        (0..attempts)
            .map(|attempt| {
                let display = format!("{}({attempt})", task.name);
                let mut pod = self.node(
                    &format!("{name}({attempt})"),
                    &display,
                    &task.template,
                    "Pod",
                );
                pod["nodeFlag"] = json!({"retried": true});
                let at = start + 60 * i64::from(attempt);
                if attempt + 1 == attempts {
                    self.fill_pod(&mut pod, template, outcome.phase, &outcome.outputs, at);
                    if let Some(message) = &outcome.message {
                        pod["message"] = message.clone().into();
                    }
                } else {
                    self.fill_pod(&mut pod, template, NodePhase::Failed, &[], at);
                    pod["message"] = "Error (exit code 1)".into();
                }
                let id = pod["id"].as_str().unwrap_or_default().to_owned();
                nodes.insert(id.clone(), pod);
                id
            })
            .collect()
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

/// The Retry node over its attempts: phase, times, progress and resource use from them; a
/// succeeded one copies the last attempt's outputs; a failed one says `No more retries left`
/// when the limit was used up, else repeats the last attempt's message.
fn finish_retry(
    node: &mut Value,
    phase: NodePhase,
    exhausted: bool,
    nodes: &Map<String, Value>,
    attempts: &[String],
) {
    let pods: Vec<&Value> = attempts.iter().filter_map(|id| nodes.get(id)).collect();
    let Some(last) = pods.last() else { return };
    node["phase"] = phase.as_str().into();
    node["startedAt"] = pods[0]["startedAt"].clone();
    node["children"] = attempts.into();
    let done = pods.iter().filter(|p| p["progress"] == "1/1").count();
    node["progress"] = format!("{done}/{}", pods.len()).into();
    if phase.finished() {
        node["finishedAt"] = last["finishedAt"].clone();
        node["resourcesDuration"] = sum_durations(pods.iter().copied());
    }
    match phase {
        NodePhase::Succeeded if !last["outputs"].is_null() => {
            node["outputs"] = last["outputs"].clone()
        }
        NodePhase::Failed | NodePhase::Error if exhausted => {
            node["message"] = "No more retries left".into();
        }
        // Not retried (e.g. `retryPolicy: OnError` after a failure): the attempt's message.
        NodePhase::Failed | NodePhase::Error => node["message"] = last["message"].clone(),
        NodePhase::Succeeded
        | NodePhase::Pending
        | NodePhase::Running
        | NodePhase::Skipped
        | NodePhase::Omitted => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_expressions_name_tasks() {
        let names = ["train", "evaluate", "deploy-prod"];
        let task = json!({"depends": "(train.Succeeded || train.Skipped) && deploy-prod"});
        assert_eq!(dependencies(&task, &names), ["train", "deploy-prod"]);
    }
}
