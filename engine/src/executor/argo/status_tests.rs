//! Status mapping tests on workflow documents shaped like the ones Argo v3/v4 writes for ferry's
//! DAG (`ferry-12`, tasks `train`, `evaluate`, `deploy`).

use std::io::Write;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::executor::argo::workflow::Workflow;

fn run() -> RunId {
    RunId::new(12).expect("positive")
}

/// A workflow document with this status (and `spec.shutdown` when given).
fn wf(status: Value, shutdown: Option<&str>) -> Workflow {
    let mut spec = json!({
        "entrypoint": "pipeline",
        "templates": [{"name": "pipeline", "dag": {"tasks": [{"name": "train", "template": "step-train"}]}}],
    });
    if let Some(s) = shutdown {
        spec["shutdown"] = json!(s);
    }
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": "ferry-12",
            "namespace": "ml-team",
            "resourceVersion": "48151",
            "labels": {"ferry.dev/run-id": "12", "workflows.argoproj.io/phase": "Running"},
        },
        "spec": spec,
        "status": status,
    }))
    .expect("a workflow document")
}

fn root(phase: &str, children: &[&str]) -> (String, Value) {
    (
        "ferry-12".into(),
        json!({
            "id": "ferry-12", "name": "ferry-12", "displayName": "ferry-12", "type": "DAG",
            "templateName": "pipeline", "templateScope": "local/ferry-12", "phase": phase,
            "startedAt": "2025-06-02T09:00:00Z", "finishedAt": null, "children": children,
        }),
    )
}

fn pod(id: &str, display: &str, phase: &str, message: Option<&str>) -> (String, Value) {
    let mut node = json!({
        "id": id, "name": format!("ferry-12.{display}"), "displayName": display, "type": "Pod",
        "templateName": format!("step-{}", display.split('(').next().unwrap_or(display)),
        "templateScope": "local/ferry-12", "phase": phase, "boundaryID": "ferry-12",
        "startedAt": "2025-06-02T09:00:05Z", "hostNodeName": "gpu-node-3",
        "resourcesDuration": {"cpu": 12, "memory": 40, "nvidia.com/gpu": 10},
    });
    if let Some(m) = message {
        node["message"] = json!(m);
    }
    if phase == "Succeeded" || phase == "Failed" {
        node["finishedAt"] = json!("2025-06-02T09:20:00Z");
        node["outputs"] = json!({"exitCode": if phase == "Succeeded" { "0" } else { "1" }});
    }
    (id.to_owned(), node)
}

fn retry(id: &str, display: &str, phase: &str, children: &[&str]) -> (String, Value) {
    (
        id.to_owned(),
        json!({
            "id": id, "name": format!("ferry-12.{display}"), "displayName": display, "type": "Retry",
            "templateName": format!("step-{display}"), "templateScope": "local/ferry-12",
            "phase": phase, "boundaryID": "ferry-12", "startedAt": "2025-06-02T09:00:05Z",
            "children": children,
        }),
    )
}

fn skipped(id: &str, display: &str, phase: &str, message: &str) -> (String, Value) {
    (
        id.to_owned(),
        json!({
            "id": id, "name": format!("ferry-12.{display}"), "displayName": display, "type": "Skipped",
            "templateName": format!("step-{display}"), "templateScope": "local/ferry-12",
            "phase": phase, "boundaryID": "ferry-12", "message": message,
            "startedAt": "2025-06-02T09:40:00Z", "finishedAt": "2025-06-02T09:40:00Z",
        }),
    )
}

fn with_metrics(mut node: (String, Value), metrics: &str) -> (String, Value) {
    node.1["outputs"]["parameters"] = json!([{"name": "metrics", "value": metrics,
        "valueFrom": {"path": "/workspace/metrics.json", "default": "{}"}}]);
    node
}

fn nodes(list: Vec<(String, Value)>) -> Value {
    Value::Object(list.into_iter().collect())
}

fn status(phase: &str, message: Option<&str>, list: Vec<(String, Value)>) -> Value {
    let mut s = json!({
        "phase": phase, "startedAt": "2025-06-02T09:00:00Z", "progress": "1/3",
        "nodes": nodes(list),
        "conditions": [{"type": "PodRunning", "status": "False"}],
        "artifactRepositoryRef": {"default": true, "artifactRepository": {}},
    });
    if let Some(m) = message {
        s["message"] = json!(m);
    }
    s
}

fn step<'a>(o: &'a Observation, name: &str) -> &'a StepObservation {
    o.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {o:#?}"))
}

fn names(o: &Observation) -> Vec<&str> {
    o.steps.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn a_retried_step_counts_its_started_attempts_and_shows_the_last_error() {
    let o = observe(
        run(),
        &wf(
            status(
                "Running",
                None,
                vec![
                    root("Running", &["ferry-12-1510"]),
                    retry(
                        "ferry-12-1510",
                        "train",
                        "Running",
                        &["ferry-12-2046", "ferry-12-2113"],
                    ),
                    pod(
                        "ferry-12-2046",
                        "train(0)",
                        "Failed",
                        Some("Error (exit code 1)"),
                    ),
                    pod("ferry-12-2113", "train(1)", "Running", None),
                ],
            ),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Running);
    assert_eq!(o.message, None);
    assert_eq!(names(&o), ["train"], "attempt nodes are not steps");
    let train = step(&o, "train");
    assert_eq!(train.state, StepState::Running);
    assert_eq!(train.attempts, 2);
    assert_eq!(train.message.as_deref(), Some("Error (exit code 1)"));
}

#[test]
fn a_retry_waiting_for_its_next_pod_counts_only_started_attempts() {
    let o = observe(
        run(),
        &wf(
            status(
                "Running",
                None,
                vec![
                    root("Running", &["ferry-12-1510"]),
                    retry(
                        "ferry-12-1510",
                        "train",
                        "Running",
                        &["ferry-12-2046", "ferry-12-2113"],
                    ),
                    pod("ferry-12-2046", "train(0)", "Error", Some("pod deleted")),
                    pod(
                        "ferry-12-2113",
                        "train(1)",
                        "Pending",
                        Some(
                            "Unschedulable: 0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
                        ),
                    ),
                ],
            ),
            None,
        ),
    );
    let train = step(&o, "train");
    assert_eq!((train.state, train.attempts), (StepState::Running, 1));
    assert_eq!(train.message.as_deref(), Some("pod deleted"));
}

#[test]
fn a_first_attempt_not_yet_scheduled_is_pending_with_the_reason() {
    let o = observe(
        run(),
        &wf(
            status(
                "Running",
                None,
                vec![
                    root("Running", &["ferry-12-1510"]),
                    retry("ferry-12-1510", "train", "Running", &["ferry-12-2046"]),
                    pod(
                        "ferry-12-2046",
                        "train(0)",
                        "Pending",
                        Some(
                            "Unschedulable: 0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
                        ),
                    ),
                ],
            ),
            None,
        ),
    );
    let train = step(&o, "train");
    assert_eq!((train.state, train.attempts), (StepState::Pending, 0));
    assert!(
        train
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("Unschedulable"))
    );
    let mut pending_pod = pod("ferry-12-2046", "evaluate", "Pending", None);
    pending_pod.1.as_object_mut().map(|n| n.remove("startedAt"));
    let o = observe(
        run(),
        &wf(
            status("Running", None, vec![root("Running", &[]), pending_pod]),
            None,
        ),
    );
    let evaluate = step(&o, "evaluate");
    assert_eq!(
        (evaluate.state, evaluate.attempts, evaluate.message.clone()),
        (StepState::Pending, 0, None)
    );
}

#[test]
fn a_succeeded_run_has_metrics_attempts_and_a_skipped_deploy() {
    let o = observe(
        run(),
        &wf(
            status(
                "Succeeded",
                None,
                vec![
                    root("Succeeded", &["ferry-12-1510"]),
                    retry(
                        "ferry-12-1510",
                        "train",
                        "Succeeded",
                        &["ferry-12-2046", "ferry-12-2113"],
                    ),
                    pod(
                        "ferry-12-2046",
                        "train(0)",
                        "Failed",
                        Some("OOMKilled (exit code 137)"),
                    ),
                    pod("ferry-12-2113", "train(1)", "Succeeded", None),
                    with_metrics(
                        pod("ferry-12-3301", "evaluate", "Succeeded", None),
                        r#"{"accuracy": 0.934, "loss": 0.21}"#,
                    ),
                    skipped(
                        "ferry-12-4470",
                        "deploy",
                        "Skipped",
                        "when 'false' evaluated false",
                    ),
                ],
            ),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Succeeded);
    assert_eq!(names(&o), ["deploy", "evaluate", "train"]);
    let train = step(&o, "train");
    assert_eq!((train.state, train.attempts), (StepState::Succeeded, 2));
    assert_eq!(train.metrics, None);
    let evaluate = step(&o, "evaluate");
    assert_eq!(
        (evaluate.state, evaluate.attempts),
        (StepState::Succeeded, 1)
    );
    assert_eq!(
        evaluate.metrics,
        Some(json!({"accuracy": 0.934, "loss": 0.21}))
    );
    assert_eq!(evaluate.message, None);
    let deploy = step(&o, "deploy");
    assert_eq!((deploy.state, deploy.attempts), (StepState::Skipped, 0));
    assert_eq!(
        deploy.message.as_deref(),
        Some("when 'false' evaluated false")
    );
}

#[test]
fn metrics_of_a_retried_step_come_from_the_retry_node_or_its_last_attempt() {
    let attempt = with_metrics(
        pod("ferry-12-2113", "evaluate(1)", "Succeeded", None),
        r#"{"f1": 0.8}"#,
    );
    let o = observe(
        run(),
        &wf(
            status(
                "Running",
                None,
                vec![
                    root("Running", &["ferry-12-1510"]),
                    retry(
                        "ferry-12-1510",
                        "evaluate",
                        "Succeeded",
                        &["ferry-12-2046", "ferry-12-2113"],
                    ),
                    pod(
                        "ferry-12-2046",
                        "evaluate(0)",
                        "Failed",
                        Some("Error (exit code 1)"),
                    ),
                    attempt,
                ],
            ),
            None,
        ),
    );
    assert_eq!(step(&o, "evaluate").metrics, Some(json!({"f1": 0.8})));
}

#[test]
fn metrics_that_are_not_an_object_are_ignored_with_a_note() {
    for (text, note) in [
        ("[0.9, 0.1]", "metrics output is not a JSON object; ignored"),
        ("0.93", "metrics output is not a JSON object; ignored"),
        ("accuracy=0.93", "metrics output is not JSON"),
    ] {
        let o = observe(
            run(),
            &wf(
                status(
                    "Running",
                    None,
                    vec![
                        root("Running", &[]),
                        with_metrics(pod("ferry-12-3301", "evaluate", "Succeeded", None), text),
                    ],
                ),
                None,
            ),
        );
        let evaluate = step(&o, "evaluate");
        assert_eq!(evaluate.state, StepState::Succeeded);
        assert_eq!(evaluate.metrics, None, "{text}");
        assert!(
            evaluate
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with(note)),
            "{text}: {evaluate:?}"
        );
    }
}

#[test]
fn a_failed_evaluate_carries_its_message_and_the_deploy_after_it_is_skipped() {
    let o = observe(
        run(),
        &wf(
            status(
                "Failed",
                Some("child 'ferry-12-3301' failed"),
                vec![
                    root("Failed", &["ferry-12-2046"]),
                    pod("ferry-12-2046", "train", "Succeeded", None),
                    pod(
                        "ferry-12-3301",
                        "evaluate",
                        "Failed",
                        Some("Error (exit code 2)"),
                    ),
                    skipped(
                        "ferry-12-4470",
                        "deploy",
                        "Omitted",
                        "omitted: depends condition not met",
                    ),
                ],
            ),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Failed);
    assert_eq!(o.message.as_deref(), Some("child 'ferry-12-3301' failed"));
    let evaluate = step(&o, "evaluate");
    assert_eq!((evaluate.state, evaluate.attempts), (StepState::Failed, 1));
    assert_eq!(evaluate.message.as_deref(), Some("Error (exit code 2)"));
    let deploy = step(&o, "deploy");
    assert_eq!(deploy.state, StepState::Skipped);
    assert_eq!(
        deploy.message.as_deref(),
        Some("omitted: depends condition not met")
    );
    assert_eq!(step(&o, "train").state, StepState::Succeeded);
}

#[test]
fn a_retry_out_of_attempts_fails_with_the_last_attempts_error() {
    let mut exhausted = retry(
        "ferry-12-1510",
        "train",
        "Failed",
        &["ferry-12-2046", "ferry-12-2113"],
    );
    exhausted.1["message"] = json!("No more retries left");
    let o = observe(
        run(),
        &wf(
            status(
                "Failed",
                Some("child 'ferry-12-1510' failed"),
                vec![
                    root("Failed", &["ferry-12-1510"]),
                    exhausted,
                    pod(
                        "ferry-12-2046",
                        "train(0)",
                        "Failed",
                        Some("Error (exit code 1)"),
                    ),
                    pod(
                        "ferry-12-2113",
                        "train(1)",
                        "Failed",
                        Some("OOMKilled (exit code 137)"),
                    ),
                ],
            ),
            None,
        ),
    );
    let train = step(&o, "train");
    assert_eq!((train.state, train.attempts), (StepState::Failed, 2));
    assert_eq!(train.message.as_deref(), Some("OOMKilled (exit code 137)"));
}

fn packed(list: Vec<(String, Value)>) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(nodes(list).to_string().as_bytes())
        .expect("gzip in memory");
    let bytes = gz.finish().expect("gzip in memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn compressed_nodes_are_read_like_plain_ones() {
    let list = vec![
        root("Running", &["ferry-12-2046"]),
        pod("ferry-12-2046", "train", "Succeeded", None),
        pod("ferry-12-3301", "evaluate", "Running", None),
    ];
    let plain = observe(run(), &wf(status("Running", None, list.clone()), None));
    let document = json!({"phase": "Running", "compressedNodes": packed(list)});
    let compressed = observe(run(), &wf(document, None));
    assert_eq!(compressed, plain);
    assert_eq!(names(&compressed), ["evaluate", "train"]);

    let broken = observe(
        run(),
        &wf(
            json!({"phase": "Running", "compressedNodes": "H4sI!!"}),
            None,
        ),
    );
    assert_eq!(broken.phase, Phase::Running);
    assert!(broken.steps.is_empty());
    let message = broken.message.unwrap_or_default();
    assert!(
        message.starts_with("step status could not be read: compressedNodes is not base64"),
        "{message}"
    );
}

#[test]
fn offloaded_node_status_shows_the_phase_only_and_says_so() {
    let o = observe(
        run(),
        &wf(
            json!({"phase": "Running", "startedAt": "2025-06-02T09:00:00Z", "offloadNodeStatusVersion": "fnv:1742871163"}),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Running);
    assert!(o.steps.is_empty());
    assert_eq!(o.message.as_deref(), Some(OFFLOADED));
    let o = observe(
        run(),
        &wf(
            json!({"phase": "Failed", "message": "child 'ferry-12-3301' failed", "offloadNodeStatusVersion": "fnv:1742871163"}),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Failed);
    assert_eq!(
        o.message.as_deref(),
        Some(
            "child 'ferry-12-3301' failed; step status is offloaded; showing the workflow phase only"
        )
    );
}

#[test]
fn a_stopped_workflow_is_cancelled_with_its_unfinished_steps() {
    let doc = status(
        "Failed",
        Some("Stopped with strategy 'Stop'"),
        vec![
            root("Failed", &["ferry-12-2046"]),
            pod("ferry-12-2046", "train", "Succeeded", None),
            pod(
                "ferry-12-3301",
                "evaluate",
                "Failed",
                Some("Stopped with strategy 'Stop'"),
            ),
            pod("ferry-12-3302", "report", "Pending", None),
            skipped(
                "ferry-12-4470",
                "deploy",
                "Omitted",
                "omitted: depends condition not met",
            ),
        ],
    );
    for shutdown in [Some("Stop"), None] {
        let o = observe(run(), &wf(doc.clone(), shutdown));
        assert_eq!(o.phase, Phase::Cancelled, "shutdown {shutdown:?}");
        assert_eq!(o.message.as_deref(), Some("Stopped with strategy 'Stop'"));
        assert_eq!(step(&o, "train").state, StepState::Succeeded);
        assert_eq!(step(&o, "evaluate").state, StepState::Cancelled);
        assert_eq!(
            step(&o, "evaluate").message.as_deref(),
            Some("Stopped with strategy 'Stop'")
        );
        assert_eq!(step(&o, "report").state, StepState::Cancelled);
        assert_eq!(step(&o, "deploy").state, StepState::Skipped);
    }
}

#[test]
fn a_terminated_workflow_is_cancelled_and_one_still_stopping_is_running() {
    let doc = status(
        "Failed",
        Some("Stopped with strategy 'Terminate'"),
        vec![
            root("Failed", &[]),
            pod(
                "ferry-12-2046",
                "train",
                "Failed",
                Some("Stopped with strategy 'Terminate'"),
            ),
        ],
    );
    let o = observe(run(), &wf(doc, Some("Terminate")));
    assert_eq!(o.phase, Phase::Cancelled);
    assert_eq!(step(&o, "train").state, StepState::Cancelled);
    // Old controllers wrote a bare "Terminated".
    let o = observe(
        run(),
        &wf(status("Failed", Some("Terminated"), vec![]), None),
    );
    assert_eq!(o.phase, Phase::Cancelled);
    // Asked to stop, not stopped yet: still running.
    let running = status(
        "Running",
        None,
        vec![
            root("Running", &[]),
            pod("ferry-12-2046", "train", "Running", None),
        ],
    );
    let o = observe(run(), &wf(running, Some("Stop")));
    assert_eq!(o.phase, Phase::Running);
    assert_eq!(step(&o, "train").state, StepState::Running);
    // A run that finished before the stop took effect keeps its result.
    let o = observe(run(), &wf(status("Succeeded", None, vec![]), Some("Stop")));
    assert_eq!(o.phase, Phase::Succeeded);
    // A pod failing for its own reasons is not a stop.
    let o = observe(
        run(),
        &wf(
            status(
                "Failed",
                Some("Pod was terminated in response to imminent node shutdown."),
                vec![],
            ),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Failed);
}

#[test]
fn an_errored_workflow_fails_with_the_controllers_message() {
    let o = observe(
        run(),
        &wf(
            json!({
                "phase": "Error",
                "message": "invalid spec: templates.pipeline.tasks.train template reference step-train not found",
                "startedAt": "2025-06-02T09:00:00Z", "finishedAt": "2025-06-02T09:00:00Z",
            }),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Failed);
    assert!(
        o.message
            .as_deref()
            .is_some_and(|m| m.starts_with("invalid spec:"))
    );
    assert!(o.steps.is_empty());
}

#[test]
fn a_pytorchjob_resource_step_maps_like_any_step() {
    let resource = |phase: &str, message: Option<&str>| {
        let mut node = pod("ferry-12-2046", "train", phase, message);
        node.1["templateName"] = json!("step-train");
        node
    };
    let running = observe(
        run(),
        &wf(
            status(
                "Running",
                None,
                vec![root("Running", &[]), resource("Running", None)],
            ),
            None,
        ),
    );
    assert_eq!(step(&running, "train").state, StepState::Running);
    assert_eq!(step(&running, "train").attempts, 1);
    let failed = observe(
        run(),
        &wf(
            status(
                "Failed",
                Some("child 'ferry-12-2046' failed"),
                vec![
                    root("Failed", &[]),
                    resource(
                        "Failed",
                        Some("failed with condition status.replicaStatuses.Master.failed > 0"),
                    ),
                ],
            ),
            None,
        ),
    );
    let train = step(&failed, "train");
    assert_eq!((train.state, train.attempts), (StepState::Failed, 1));
    assert_eq!(
        train.message.as_deref(),
        Some("failed with condition status.replicaStatuses.Master.failed > 0")
    );
    let done = observe(
        run(),
        &wf(
            status(
                "Succeeded",
                None,
                vec![root("Succeeded", &[]), resource("Succeeded", None)],
            ),
            None,
        ),
    );
    assert_eq!(step(&done, "train").state, StepState::Succeeded);
    assert_eq!(step(&done, "train").metrics, None);
}

#[test]
fn a_workflow_the_controller_has_not_touched_is_pending() {
    let mut w = wf(json!({}), None);
    assert_eq!(observe(run(), &w).phase, Phase::Pending);
    w.status = None;
    let o = observe(run(), &w);
    assert_eq!(
        (o.phase, o.message, o.steps.len()),
        (Phase::Pending, None, 0)
    );
    let o = observe(
        run(),
        &wf(
            json!({"phase": "Pending", "startedAt": "2025-06-02T09:00:00Z"}),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Pending);
}

#[test]
fn unknown_phases_and_unreadable_statuses_do_not_break_the_mapping() {
    let mut odd = pod("ferry-12-2046", "train", "Hibernating", None);
    odd.1["type"] = json!("Pod");
    let o = observe(
        run(),
        &wf(
            status(
                "Paused",
                None,
                vec![
                    root("Running", &[]),
                    odd,
                    pod("ferry-12-3301", "evaluate", "Running", None),
                ],
            ),
            None,
        ),
    );
    assert_eq!(
        o.phase,
        Phase::Pending,
        "an unknown workflow phase is not final"
    );
    assert_eq!(
        names(&o),
        ["evaluate"],
        "a step in an unknown phase is left out"
    );

    let o = observe(
        run(),
        &wf(
            json!({"phase": "Running", "message": "half written", "nodes": "oops"}),
            None,
        ),
    );
    assert_eq!(o.phase, Phase::Running);
    assert!(o.steps.is_empty());
    let message = o.message.unwrap_or_default();
    assert!(
        message.starts_with("half written; step status could not be read:"),
        "{message}"
    );
}

#[test]
fn nodes_that_are_not_tasks_of_this_workflow_are_not_steps() {
    let mut exit = pod("ferry-12-9000", "notify", "Succeeded", None);
    exit.1["name"] = json!("ferry-12.onExit");
    let mut group = pod("ferry-12-9001", "fan", "Running", None);
    group.1["type"] = json!("TaskGroup");
    let o = observe(
        run(),
        &wf(
            status(
                "Running",
                None,
                vec![
                    root("Running", &[]),
                    exit,
                    group,
                    pod("ferry-12-2046", "train", "Running", None),
                ],
            ),
            None,
        ),
    );
    assert_eq!(names(&o), ["train"]);
}

#[test]
fn a_fingerprint_changes_with_anything_the_service_reads() {
    let doc = || {
        status(
            "Running",
            None,
            vec![
                root("Running", &[]),
                pod("ferry-12-2046", "train", "Running", None),
            ],
        )
    };
    let a = observe(run(), &wf(doc(), None));
    assert_eq!(
        a.fingerprint(),
        observe(run(), &wf(doc(), None)).fingerprint()
    );
    let mut b = a.clone();
    b.steps[0].attempts = 2;
    assert_ne!(a.fingerprint(), b.fingerprint());
    let mut c = a.clone();
    c.steps[0].metrics = Some(json!({"loss": 1}));
    assert_ne!(a.fingerprint(), c.fingerprint());
    let mut d = a.clone();
    d.phase = Phase::Gone { requeue: true };
    let mut e = a.clone();
    e.phase = Phase::Gone { requeue: false };
    assert_ne!(d.fingerprint(), e.fingerprint());
}
