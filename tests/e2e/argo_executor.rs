//! The Argo executor against the wire-level fake Kubernetes API, through a kubeconfig and the
//! real `kube` client: create, adoption on `409`, `422`, retries of `429`/`500`, the watch from
//! a realistic status sequence to observations (through dropped connections and `410`), cancel,
//! TTL deletion and reconcile.
//!
//! "Nothing was sent for run A" is shown without sleeping: one watcher serves a namespace in
//! order, so after a change of run A's workflow, a change of run B's in the same namespace, and
//! then B's observation arriving first, A's change produced nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use ferry_engine::executor::argo::{ArgoExecutor, ArgoSettings, BackoffPolicy, client_from};
use ferry_engine::executor::{
    CancelMode, Executor, Job, LogRequest, Observation, Phase, Source, StepObservation, SubmitError,
};
use ferry_engine::pipeline::EventKind;
use ferry_engine::render::Renderer;
use ferry_engine::store::{Run, RunId, RunState, StepState};
use ferry_tests::fake_k8s::{FakeKube, Fault, Options, RequestRecord, TaskOutcome, WorkflowPhase};
use ferry_tests::{TempDir, branch_context, example, profile, workspace_root};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NS: &str = "ml-team";
const COLLECTION: &str = "/apis/argoproj.io/v1alpha1/namespaces/ml-team/workflows";

struct Harness {
    fake: FakeKube,
    executor: ArgoExecutor,
    rx: mpsc::Receiver<Observation>,
    _dir: TempDir,
}

/// Back-offs short enough for tests.
fn settings() -> ArgoSettings {
    let mut s = ArgoSettings::new(NS);
    s.retry_backoff = BackoffPolicy {
        first: Duration::from_millis(10),
        max: Duration::from_millis(40),
    };
    s.watch_backoff = BackoffPolicy {
        first: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    s.max_retry_after = Duration::from_secs(5);
    s.request_timeout = Duration::from_secs(10);
    s
}

async fn harness() -> Harness {
    start(settings(), Renderer::embedded()).await
}

/// A fake API server and an executor built from a kubeconfig for it, as `ferry serve` builds one.
async fn start(settings: ArgoSettings, renderer: Renderer) -> Harness {
    let fake = FakeKube::start_with(Options {
        namespace: NS.into(),
        ..Options::default()
    })
    .await;
    let dir = TempDir::new("argo-executor");
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig)
        .unwrap_or_else(|e| panic!("writing the kubeconfig: {e}"));
    let client = client_from(Some(&kubeconfig))
        .await
        .unwrap_or_else(|e| panic!("a client from the fake's kubeconfig: {e}"));
    let (tx, rx) = mpsc::channel(64);
    let executor = ArgoExecutor::new(
        client,
        Arc::new(renderer),
        Arc::new(profile()),
        tx,
        settings,
    );
    Harness {
        fake,
        executor,
        rx,
        _dir: dir,
    }
}

fn run_id(id: i64) -> RunId {
    RunId::new(id).unwrap_or_else(|| panic!("{id} is not a run id"))
}

/// Run `id` of the `train-eval-deploy` example (train with 2 retries, evaluate with metrics,
/// deploy gated on metrics), pushed to main, in `namespace`.
fn job_in(id: i64, namespace: &str) -> Job {
    let pipeline = example("train-eval-deploy").load();
    let mut context = branch_context(&pipeline, EventKind::Push, "main");
    context.run_id = id.unsigned_abs();
    context.namespace = Some(namespace.to_owned());
    Job {
        run_id: run_id(id),
        pipeline: Arc::new(pipeline),
        context,
        skipped: Vec::new(),
        source: Source::Dir(".".into()),
    }
}

fn job(id: i64) -> Job {
    job_in(id, NS)
}

/// The rendered manifest of `job`, as the executor would create it.
fn manifest(job: &Job) -> Value {
    Renderer::embedded()
        .render(&job.pipeline, &profile(), &job.context)
        .unwrap_or_else(|e| panic!("rendering run {}: {e}", job.run_id))
        .manifest
}

/// A stored run of `project`, as reconcile gets it.
fn stored_run(id: i64, project: &str) -> Run {
    Run {
        id: run_id(id),
        project: project.into(),
        pipeline: "resnet50-classifier".into(),
        sha: ferry_tests::SHA.into(),
        trigger: EventKind::Push,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        mr: None,
        params: BTreeMap::new(),
        pipeline_path: ".ferry/train-eval-deploy.yaml".into(),
        pipeline_yaml: String::new(),
        state: RunState::Running,
        problems: Vec::new(),
        dedup_key: None,
        created_at: 0,
        updated_at: 0,
        started_at: None,
        finished_at: None,
        message: None,
        triggered_by: None,
    }
}

impl Harness {
    async fn submit(&self, id: i64) {
        self.executor
            .submit(&job(id))
            .await
            .unwrap_or_else(|e| panic!("submitting run {id}: {e}"));
    }

    /// The next observation (30 s at most).
    async fn next(&mut self) -> Observation {
        tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no observation within 30 s"))
            .unwrap_or_else(|| panic!("the observation channel closed"))
    }

    /// The next observation, which must be of run `id`.
    async fn next_of(&mut self, id: i64) -> Observation {
        let o = self.next().await;
        assert_eq!(
            o.run_id,
            run_id(id),
            "expected an observation of run {id}: {o:#?}"
        );
        o
    }

    /// Sets the status of `ferry-<id>` from what happened to its tasks.
    fn status(
        &self,
        id: i64,
        build: impl FnOnce(ferry_tests::fake_k8s::StatusBuilder) -> ferry_tests::fake_k8s::StatusBuilder,
    ) {
        let name = format!("ferry-{id}");
        let builder = self
            .fake
            .status_builder(NS, &name)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.fake
            .set_status(NS, &name, build(builder).build())
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Changes run `marker`'s workflow and expects its observation to be the next one: whatever
    /// was changed before it in this namespace sent nothing.
    async fn nothing_before(&mut self, marker: i64, step_message: &str) {
        self.status(marker, |b| {
            b.task("train", TaskOutcome::running().message(step_message))
                .phase(WorkflowPhase::Running)
        });
        let o = self.next().await;
        assert_eq!(
            o.run_id,
            run_id(marker),
            "something was sent before the marker: {o:#?}"
        );
        assert_eq!(step(&o, "train").message.as_deref(), Some(step_message));
    }

    fn requests(&self, method: Method, path_contains: &str) -> Vec<String> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .map(|r| format!("{} {}?{} -> {}", r.method, r.path, r.query, r.status))
            .collect()
    }
}

fn step<'a>(o: &'a Observation, name: &str) -> &'a StepObservation {
    o.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {o:#?}"))
}

fn states(o: &Observation) -> Vec<(&str, StepState, u32)> {
    o.steps
        .iter()
        .map(|s| (s.name.as_str(), s.state, s.attempts))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Submit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn submit_creates_the_rendered_workflow_and_follows_it() {
    let mut h = harness().await;
    h.submit(12).await;
    let stored = h
        .fake
        .get(NS, "ferry-12")
        .unwrap_or_else(|| panic!("no workflow ferry-12"));
    let expected = manifest(&job(12));
    assert_eq!(stored["spec"], expected["spec"]);
    assert_eq!(stored["metadata"]["labels"], expected["metadata"]["labels"]);
    assert_eq!(stored["metadata"]["labels"]["ferry.dev/run-id"], "12");
    assert_eq!(h.fake.count(Method::POST, COLLECTION), 1);
    let first = h.next_of(12).await;
    assert_eq!(
        first.phase,
        Phase::Pending,
        "created, not touched by the controller yet"
    );
    assert!(first.steps.is_empty());
    assert_eq!(h.executor.followed(), 1);
}

#[tokio::test]
async fn a_second_submit_of_the_same_run_adopts_its_workflow() {
    let mut h = harness().await;
    h.submit(12).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    h.status(12, |b| b.task("train", TaskOutcome::running()));
    assert_eq!(h.next_of(12).await.phase, Phase::Running);
    // A crash between create and the store's write: the service submits the run again.
    h.submit(12).await;
    let posts = h.requests(Method::POST, "/workflows");
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert!(posts[1].ends_with("-> 409"), "{posts:#?}");
    assert_eq!(h.requests(Method::GET, "/workflows/ferry-12").len(), 1);
    assert_eq!(h.fake.workflows().len(), 1);
    assert_eq!(h.executor.followed(), 1);
    // Still followed: the next change arrives (the adoption's own snapshot repeated the last).
    h.status(12, |b| b.task("train", TaskOutcome::succeeded()));
    let o = h.next_of(12).await;
    assert_eq!(step(&o, "train").state, StepState::Succeeded);
}

#[tokio::test]
async fn a_workflow_of_another_run_under_the_name_is_rejected() {
    let h = harness().await;
    let mut other = manifest(&job(12));
    other["metadata"]["labels"]["ferry.dev/run-id"] = json!("99");
    h.fake.create(NS, other).unwrap_or_else(|e| panic!("{e:#}"));
    let err = h
        .executor
        .submit(&job(12))
        .await
        .expect_err("the name is taken by another run");
    let SubmitError::Rejected(message) = err else {
        panic!("expected Rejected, got {err:?}");
    };
    assert_eq!(
        message,
        "workflow ferry-12 already exists in namespace ml-team and is not this run's: it belongs to run 99"
    );
    assert_eq!(h.executor.followed(), 0);
}

#[tokio::test]
async fn an_invalid_manifest_is_rejected_with_the_api_servers_message() {
    // A template override that passes ferry's self-check but not Argo's schema.
    let dir = TempDir::new("argo-executor-templates");
    let original = ferry_tests::read(&workspace_root().join("templates/step-container.json.hbs"));
    let broken = original.replacen(
        "\"name\": {{q template}},",
        "\"name\": {{q template}}, \"gpuCount\": 4,",
        1,
    );
    assert_ne!(
        broken, original,
        "the template changed shape; update this test"
    );
    dir.write("step-container.json.hbs", &broken);
    let renderer = Renderer::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let h = start(settings(), renderer).await;
    if !h.fake.schema_checked() {
        println!(
            "SKIPPED: ../shared/argo not found; the fake cannot answer 422 without Argo's schema"
        );
        return;
    }
    let err = h
        .executor
        .submit(&job(12))
        .await
        .expect_err("the API server refuses the manifest");
    let SubmitError::Rejected(message) = err else {
        panic!("expected Rejected, got {err:?}");
    };
    assert!(
        message.starts_with("Kubernetes refused workflow ferry-12 in namespace ml-team: Workflow.argoproj.io \"ferry-12\" is invalid:"),
        "{message}"
    );
    assert!(message.contains("gpuCount"), "{message}");
    assert_eq!(
        h.fake.count(Method::POST, COLLECTION),
        1,
        "a 422 is not retried"
    );
    assert_eq!(h.executor.followed(), 0);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_honouring_retry_after() {
    let h = harness().await;
    h.fake
        .inject(Fault::too_many_requests(1).method(Method::POST));
    let started = Instant::now();
    h.submit(12).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured ({:?})",
        started.elapsed()
    );
    assert_eq!(h.fake.count(Method::POST, COLLECTION), 2);

    h.fake
        .inject(Fault::internal_error().times(2).method(Method::POST));
    h.submit(13).await;
    assert_eq!(h.fake.count(Method::POST, COLLECTION), 5);
    assert!(h.fake.get(NS, "ferry-13").is_some());
}

#[tokio::test]
async fn an_api_server_that_keeps_failing_leaves_the_run_for_later() {
    let h = harness().await;
    h.fake
        .inject(Fault::internal_error().times(10).method(Method::POST));
    let err = h
        .executor
        .submit(&job(12))
        .await
        .expect_err("500 every time");
    let SubmitError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        message.starts_with(
            "cannot create workflow ferry-12 in namespace ml-team: Internal error occurred"
        ),
        "{message}"
    );
    assert_eq!(
        h.fake.count(Method::POST, COLLECTION),
        4,
        "the first try and 3 retries"
    );
    assert_eq!(h.executor.followed(), 0);

    h.fake.clear_faults();
    h.fake
        .inject(Fault::too_many_requests(120).method(Method::POST));
    let started = Instant::now();
    let err = h
        .executor
        .submit(&job(12))
        .await
        .expect_err("throttled for 2 minutes");
    assert!(started.elapsed() < Duration::from_secs(5));
    let SubmitError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        message.ends_with("(asked to retry after 120 s)"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_watch_turns_a_status_sequence_into_observations() {
    let mut h = harness().await;
    h.submit(12).await;
    h.submit(13).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    assert_eq!(h.next_of(13).await.phase, Phase::Pending);

    h.status(12, |b| {
        b.task(
            "train",
            TaskOutcome::pending()
                .message("Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
        )
        .phase(WorkflowPhase::Running)
    });
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Running);
    assert_eq!(states(&o), [("train", StepState::Pending, 0)]);
    assert!(
        step(&o, "train")
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("Unschedulable"))
    );

    h.status(12, |b| b.task("train", TaskOutcome::running()));
    let o = h.next_of(12).await;
    assert_eq!(states(&o), [("train", StepState::Running, 1)]);

    h.status(12, |b| b.task("train", TaskOutcome::running().attempts(2)));
    let o = h.next_of(12).await;
    assert_eq!(states(&o), [("train", StepState::Running, 2)]);
    assert_eq!(
        step(&o, "train").message.as_deref(),
        Some("Error (exit code 1)")
    );

    h.status(12, |b| {
        b.task("train", TaskOutcome::succeeded().attempts(2))
            .task("evaluate", TaskOutcome::running())
    });
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Running);
    assert_eq!(
        states(&o),
        [
            ("evaluate", StepState::Running, 1),
            ("train", StepState::Succeeded, 2)
        ]
    );

    let metrics = json!({"accuracy": 0.951, "loss": 0.18, "top5": 0.99});
    h.status(12, |b| {
        b.task("train", TaskOutcome::succeeded().attempts(2))
            .task("evaluate", TaskOutcome::succeeded().metrics(&metrics))
            .task("deploy", TaskOutcome::succeeded())
    });
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Succeeded);
    assert_eq!(
        states(&o),
        [
            ("deploy", StepState::Succeeded, 1),
            ("evaluate", StepState::Succeeded, 1),
            ("train", StepState::Succeeded, 2),
        ]
    );
    assert_eq!(step(&o, "evaluate").metrics, Some(metrics));
    assert_eq!(
        h.executor.followed(),
        1,
        "run 12 is final: only run 13 is followed"
    );

    // A final run sends nothing more, and a change that alters no observation sends nothing.
    h.fake
        .update(NS, "ferry-12", |wf| {
            wf["status"]["message"] = json!("archived")
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    h.status(13, |b| {
        b.task("train", TaskOutcome::running())
            .phase(WorkflowPhase::Running)
    });
    assert_eq!(h.next_of(13).await.phase, Phase::Running);
    h.fake
        .update(NS, "ferry-13", |wf| {
            wf["metadata"]["annotations"]["example.com/seen"] = json!("yes")
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    h.nothing_before(13, "epoch 3/90").await;
}

#[tokio::test]
async fn failures_skips_and_offloaded_status_reach_the_observations() {
    let mut h = harness().await;
    h.submit(12).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    h.status(12, |b| {
        b.task("train", TaskOutcome::succeeded())
            .task("evaluate", TaskOutcome::failed("Error (exit code 2)"))
            .task("deploy", TaskOutcome::omitted())
            .compressed()
    });
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Failed);
    assert!(
        o.message
            .as_deref()
            .is_some_and(|m| m.starts_with("child '")),
        "{o:#?}"
    );
    assert_eq!(
        states(&o),
        [
            ("deploy", StepState::Skipped, 0),
            ("evaluate", StepState::Failed, 2), // GPU steps retry once by default
            ("train", StepState::Succeeded, 1),
        ]
    );
    assert_eq!(
        step(&o, "evaluate").message.as_deref(),
        Some("Error (exit code 2)")
    );
    assert_eq!(
        step(&o, "deploy").message.as_deref(),
        Some("omitted: depends condition not met")
    );

    h.submit(13).await;
    assert_eq!(h.next_of(13).await.phase, Phase::Pending);
    h.status(13, |b| b.task("train", TaskOutcome::running()).offloaded());
    let o = h.next_of(13).await;
    assert_eq!(o.phase, Phase::Running);
    assert!(o.steps.is_empty());
    assert_eq!(
        o.message.as_deref(),
        Some("step status is offloaded; showing the workflow phase only")
    );
}

#[tokio::test]
async fn dropped_watch_connections_and_expired_history_are_survived() {
    let mut h = harness().await;
    h.submit(12).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    h.fake
        .wait_until("a watch is open", |f| f.open_watches() >= 1)
        .await;

    h.fake.drop_watches();
    h.status(12, |b| b.task("train", TaskOutcome::running()));
    assert_eq!(
        states(&h.next_of(12).await),
        [("train", StepState::Running, 1)]
    );

    let lists_before = h
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == COLLECTION && !r.is_watch() && r.method == Method::GET)
        .count();
    h.fake.expire_history();
    h.status(12, |b| b.task("train", TaskOutcome::running().attempts(2)));
    assert_eq!(
        states(&h.next_of(12).await),
        [("train", StepState::Running, 2)]
    );
    let lists_after = h
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == COLLECTION && !r.is_watch() && r.method == Method::GET)
        .count();
    assert!(
        lists_after > lists_before,
        "expired history makes the watcher relist"
    );

    // The watch goes on after the relist.
    h.fake
        .wait_until("the watch is open again", |f| f.open_watches() >= 1)
        .await;
    h.status(12, |b| {
        b.task("train", TaskOutcome::succeeded().attempts(2))
            .task("evaluate", TaskOutcome::running())
    });
    let o = h.next_of(12).await;
    assert_eq!(step(&o, "evaluate").state, StepState::Running);
}

// ---------------------------------------------------------------------------------------------
// Cancel, deletion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_sends_the_merge_patch_and_a_stopped_run_is_cancelled() {
    let mut h = harness().await;
    h.submit(12).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    h.status(12, |b| b.task("train", TaskOutcome::running()));
    assert_eq!(h.next_of(12).await.phase, Phase::Running);

    h.executor
        .cancel(run_id(12), Some(NS), CancelMode::Stop)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let wf = h
        .fake
        .get(NS, "ferry-12")
        .unwrap_or_else(|| panic!("ferry-12 is there"));
    assert_eq!(wf["spec"]["shutdown"], "Stop");
    assert_eq!(
        wf["metadata"]["labels"]["ferry.dev/run-id"], "12",
        "a merge patch keeps the rest"
    );
    let patches = h.requests(Method::PATCH, "/workflows/ferry-12");
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert!(patches[0].ends_with("-> 200"), "{patches:#?}");

    h.executor
        .cancel(run_id(12), None, CancelMode::Terminate)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let wf = h
        .fake
        .get(NS, "ferry-12")
        .unwrap_or_else(|| panic!("ferry-12 is there"));
    assert_eq!(wf["spec"]["shutdown"], "Terminate");

    // The controller stops it.
    h.status(12, |b| {
        b.task(
            "train",
            TaskOutcome::failed("Stopped with strategy 'Terminate'"),
        )
        .phase(WorkflowPhase::Failed)
        .message("Stopped with strategy 'Terminate'")
    });
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Cancelled);
    assert_eq!(
        o.message.as_deref(),
        Some("Stopped with strategy 'Terminate'")
    );
    assert_eq!(step(&o, "train").state, StepState::Cancelled);

    // A run whose workflow is gone: nothing to cancel, not an error.
    h.executor
        .cancel(run_id(77), Some(NS), CancelMode::Stop)
        .await
        .unwrap_or_else(|e| panic!("cancelling a missing workflow: {e}"));
    let patches = h.requests(Method::PATCH, "/workflows/ferry-77");
    assert_eq!(patches.len(), 1, "a 404 is not retried: {patches:#?}");
}

#[tokio::test]
async fn a_workflow_deleted_before_it_finished_makes_its_run_gone() {
    let mut h = harness().await;
    for id in [12, 13, 14] {
        h.submit(id).await;
        assert_eq!(h.next_of(id).await.phase, Phase::Pending);
    }
    h.status(12, |b| b.task("train", TaskOutcome::running()));
    assert_eq!(h.next_of(12).await.phase, Phase::Running);

    h.fake
        .delete_now(NS, "ferry-12")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Gone { requeue: false });
    assert_eq!(
        o.message.as_deref(),
        Some("workflow ferry-12 was deleted (TTL or by hand) before it finished")
    );

    // Deleted by its TTL after it succeeded: nothing more to say.
    h.status(13, |b| {
        b.task("train", TaskOutcome::succeeded())
            .task(
                "evaluate",
                TaskOutcome::succeeded().metrics(&json!({"accuracy": 0.5, "loss": 1.2})),
            )
            .task("deploy", TaskOutcome::skipped())
    });
    assert_eq!(h.next_of(13).await.phase, Phase::Succeeded);
    h.fake
        .delete_now(NS, "ferry-13")
        .unwrap_or_else(|e| panic!("{e:#}"));
    h.nothing_before(14, "loading data").await;
    assert_eq!(h.executor.followed(), 1);
}

#[tokio::test]
async fn a_deletion_missed_while_disconnected_is_found_by_the_relist() {
    let mut h = harness().await;
    h.submit(12).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    h.status(12, |b| b.task("train", TaskOutcome::running()));
    assert_eq!(h.next_of(12).await.phase, Phase::Running);
    // Disconnected, history compacted, and the workflow deleted in the gap: no DELETED event
    // will ever come; the relist lacks it.
    h.fake.expire_history();
    h.fake
        .delete_now(NS, "ferry-12")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let o = h.next_of(12).await;
    assert_eq!(o.phase, Phase::Gone { requeue: false });
    assert_eq!(h.executor.followed(), 0);
}

#[tokio::test]
async fn workflows_of_runs_not_followed_are_ignored() {
    let mut h = harness().await;
    h.submit(12).await;
    assert_eq!(h.next_of(12).await.phase, Phase::Pending);
    // Made by hand (or by another ferry) with the label: watched, never reported.
    h.fake
        .create(NS, manifest(&job(99)))
        .unwrap_or_else(|e| panic!("{e:#}"));
    h.status(99, |b| b.task("train", TaskOutcome::running()));
    h.nothing_before(12, "epoch 1/90").await;
}

// ---------------------------------------------------------------------------------------------
// Reconcile, ping
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reconcile_adopts_existing_workflows_and_reports_missing_ones() {
    let mut s = settings();
    s.list_page_size = 1; // every list goes through `continue` pages
    let namespaces: BTreeMap<&str, &str> = [("resnet", NS), ("bert", "nlp")].into();
    s.namespace_of = Arc::new(move |run: &Run| namespaces[run.project.as_str()].to_owned());
    let mut h = start(s, Renderer::embedded()).await;
    // Left by an earlier ferry process: 21 running, 22 finished, 23 deleted meanwhile; 31 in
    // another namespace; 40 is not a run reconcile asks about.
    for (id, ns) in [(21, NS), (22, NS), (31, "nlp"), (40, NS)] {
        h.fake
            .create(ns, manifest(&job_in(id, ns)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    h.status(21, |b| {
        b.task("train", TaskOutcome::running())
            .phase(WorkflowPhase::Running)
    });
    h.status(22, |b| {
        b.task("train", TaskOutcome::succeeded())
            .task("evaluate", TaskOutcome::failed("Error (exit code 1)"))
            .task("deploy", TaskOutcome::omitted())
    });

    let runs = [
        stored_run(21, "resnet"),
        stored_run(22, "resnet"),
        stored_run(23, "resnet"),
        stored_run(31, "bert"),
    ];
    let observations = h
        .executor
        .reconcile(&runs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let by_run: BTreeMap<i64, &Observation> =
        observations.iter().map(|o| (o.run_id.get(), o)).collect();
    assert_eq!(by_run.keys().copied().collect::<Vec<_>>(), [21, 22, 23, 31]);
    assert_eq!(by_run[&21].phase, Phase::Running);
    assert_eq!(states(by_run[&21]), [("train", StepState::Running, 1)]);
    assert_eq!(by_run[&22].phase, Phase::Failed);
    assert_eq!(by_run[&23].phase, Phase::Gone { requeue: false });
    assert_eq!(
        by_run[&23].message.as_deref(),
        Some("workflow ferry-23 is gone from namespace ml-team (deleted by TTL or by hand)")
    );
    assert_eq!(by_run[&31].phase, Phase::Pending);
    assert_eq!(
        h.executor.followed(),
        2,
        "21 and 31 are adopted; 22 is over"
    );
    let lists = h.requests(Method::GET, "/namespaces/ml-team/workflows");
    assert!(
        lists.iter().any(|r| r.contains("continue=")),
        "pages are followed: {lists:#?}"
    );

    // Adopted runs are watched; what reconcile returned is not sent again.
    h.status(21, |b| {
        b.task("train", TaskOutcome::succeeded())
            .task("evaluate", TaskOutcome::running())
    });
    let o = h.next_of(21).await;
    assert_eq!(step(&o, "evaluate").state, StepState::Running);
    let name = "ferry-31";
    let status = h
        .fake
        .status_builder("nlp", name)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::running())
        .build();
    h.fake
        .set_status("nlp", name, status)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(h.next_of(31).await.phase, Phase::Running);
}

#[tokio::test]
async fn ping_answers_while_the_api_server_does() {
    let h = harness().await;
    h.executor.ping().await.unwrap_or_else(|e| panic!("{e}"));
    let lists = h.requests(Method::GET, "/workflows");
    assert_eq!(lists.len(), 1, "{lists:#?}");
    assert!(lists[0].contains("limit=1"), "{lists:#?}");

    // The same kubeconfig, for a port where nothing listens any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("a free port: {e}"));
    let dir = TempDir::new("argo-executor-closed");
    let kubeconfig = dir.write(
        "kubeconfig",
        &h.fake
            .kubeconfig()
            .replace(&h.fake.url(), &format!("http://{closed}")),
    );
    let client = client_from(Some(&kubeconfig))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, _rx) = mpsc::channel(1);
    let unreachable = ArgoExecutor::new(
        client,
        Arc::new(Renderer::embedded()),
        Arc::new(profile()),
        tx,
        settings(),
    );
    let err = unreachable.ping().await.expect_err("nothing listens there");
    assert!(
        err.0.starts_with(
            "cannot list workflows in namespace ml-team: cannot reach the Kubernetes API"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_kubeconfig_that_cannot_be_read_is_a_clear_error() {
    let Err(err) = client_from(Some(Path::new("/nonexistent/ferry/kubeconfig"))).await else {
        panic!("a client from a kubeconfig that does not exist");
    };
    assert!(
        err.0
            .starts_with("cannot read kubeconfig /nonexistent/ferry/kubeconfig:"),
        "{err}"
    );
}

/// A step of `pipeline` with a `secret_env` entry, and that entry's secret.
fn step_with_secret(pipeline: &ferry_engine::pipeline::Pipeline) -> (String, String, String) {
    let step = pipeline
        .steps
        .iter()
        .find(|s| !s.secret_env.is_empty())
        .unwrap_or_else(|| panic!("the example has a step with secret_env"));
    let secret = step
        .secret_env
        .values()
        .next()
        .unwrap_or_else(|| panic!("a secret"));
    (step.name.clone(), secret.name.clone(), secret.key.clone())
}

#[tokio::test]
async fn a_log_tail_is_the_latest_attempts_pod_log_with_the_steps_secret_values() {
    let h = harness().await;
    let pipeline = example("harbor-kueue").load();
    let (step, secret, key) = step_with_secret(&pipeline);
    h.fake.add_secret(NS, &secret, &[(&key, "robot$s3cr3t")]);
    h.fake.add_pod(
        NS,
        "ferry-41",
        &format!("ferry-41.{step}(0)"),
        "first attempt\nOOM\n",
    );
    h.fake.add_pod(
        NS,
        "ferry-41",
        &format!("ferry-41.{step}(1)"),
        &(1..=50).map(|i| format!("line {i}\n")).collect::<String>(),
    );
    h.fake
        .add_pod(NS, "ferry-41", "ferry-41.other", "not this step\n");
    h.fake
        .add_pod(NS, "ferry-4", &format!("ferry-4.{step}"), "not this run\n");
    let request = LogRequest {
        run: run_id(41),
        namespace: Some(NS),
        pipeline: &pipeline,
        step: &step,
        lines: 3,
        bytes: 4096,
    };
    let got = h
        .executor
        .log_tail(request)
        .await
        .unwrap_or_else(|e| panic!("log tail: {e}"))
        .unwrap_or_else(|| panic!("a log"));
    assert_eq!(got.text, "line 48\nline 49\nline 50");
    assert_eq!(got.secrets, ["robot$s3cr3t"]);
    let log_reads: Vec<RequestRecord> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/log"))
        .collect();
    assert_eq!(log_reads.len(), 1, "{log_reads:?}");
    assert!(
        log_reads[0].query.contains("container=main"),
        "{:?}",
        log_reads[0]
    );
    assert!(
        log_reads[0].query.contains("tailLines=3"),
        "{:?}",
        log_reads[0]
    );

    // No pods (garbage-collected, or the step never started): no log, not an error.
    let other = LogRequest {
        run: run_id(42),
        ..request
    };
    assert!(h.executor.log_tail(other).await.expect("no pods").is_none());

    // Without `secrets get` the log is withheld rather than shown unredacted.
    h.fake.forbid_secrets(true);
    let withheld = h
        .executor
        .log_tail(request)
        .await
        .expect("withheld")
        .expect("a note");
    assert!(
        withheld
            .text
            .starts_with("(log tail withheld: ferry cannot read secret"),
        "{}",
        withheld.text
    );
    assert!(!withheld.text.contains("line 50"));
}
