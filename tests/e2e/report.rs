//! Reporting (issue "Status on the merge request"): runs in the store become commit statuses,
//! check runs and one note per run on a fake GitLab / GitHub served on 127.0.0.1, through the
//! real `gitlab` and `octocrab` clients.
//!
//! Covered: the exact calls of a run's lifecycle and the call budget; an outage (`503`s, then a
//! `429` with `Retry-After`) that delays but delivers every final state once; a note whose
//! create answer is lost, and a crash between a create and the store's write, neither making a
//! second note; a restart delivering what the previous reporter left; `forge: none`; GitHub's
//! rate-limit headers; summaries for a success against a baseline, a failure and an invalid
//! pipeline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::config::Config;
use ferry_engine::forge::report::ForgeCredentials;
use ferry_engine::pipeline::EventKind;
use ferry_engine::problem::Problem;
use ferry_engine::service::mirror::SecretString;
use ferry_engine::service::report::Reporter;
use ferry_engine::store::{CommentKind, NewRun, RunId, RunState, StepChange, StepState, Store};
use ferry_tests::TempDir;
use ferry_tests::fake_forge::{Call, FakeForge, GITHUB_TOKEN, GITLAB_TOKEN};
use serde_json::json;
use tokio::sync::watch;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const MR: u64 = 7;
const PIPELINE: &str = "version: 1\nname: train\ndefaults: { image: img:1 }\nsteps:\n  - { name: prepare, kind: task, run: make data }\n  - { name: fit, kind: train, run: python fit.py, resources: { gpu: 2, gpu_type: a100 } }\n  - { name: eval, kind: evaluate, run: python eval.py, metrics: /workspace/metrics.json }\n";
const STEPS: [&str; 3] = ["prepare", "fit", "eval"];

struct World {
    _dir: TempDir,
    db: String,
    store: Store,
    config: Arc<Config>,
    forge: FakeForge,
    credentials: HashMap<String, ForgeCredentials>,
}

/// A world whose reporter tells the forge about a queued run at once (`pending_after_ms: 0`),
/// so each test sees every state it makes.
async fn world(kind: &str) -> World {
    world_with(kind, "report: { pending_after_ms: 0 }\n").await
}

/// A world with `extra` config (empty: the defaults, as deployed).
async fn world_with(kind: &str, extra: &str) -> World {
    let forge = FakeForge::start().await;
    let dir = TempDir::new("report");
    let db = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let store = Store::open(&db).await.expect("store");
    let (repo, token) = match kind {
        "gitlab" => ("https://gitlab.example.com/ml/resnet.git", GITLAB_TOKEN),
        _ => ("https://github.com/ml/resnet.git", GITHUB_TOKEN),
    };
    let yaml = format!(
        "{extra}public_url: http://ferry.test/\nargo: {{ ui_url: http://argo.test }}\nprojects:\n  - {{ name: resnet, repo: {repo}, forge: {kind}, forge_url: \"{}\", token_env: T, webhook_secret_env: S, namespace: ml-team }}\n  - {{ name: local, repo: /srv/local, forge: none }}\n",
        forge.url()
    );
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let credentials = HashMap::from([(
        "resnet".to_owned(),
        ForgeCredentials::Token(SecretString::new(token)),
    )]);
    World {
        _dir: dir,
        db,
        store,
        config,
        forge,
        credentials,
    }
}

impl World {
    fn reporter(&self) -> Reporter {
        self.reporter_with(Duration::from_millis(5))
    }

    /// A reporter whose back-off starts at `min` (zero: deferred rows are due at once).
    fn reporter_with(&self, min: Duration) -> Reporter {
        Reporter::new(
            self.store.clone(),
            self.config.clone(),
            self.credentials.clone(),
        )
        .with_backoff(min, min * 10)
    }

    async fn run(&self, project: &str, mr: Option<u64>, branch: &str) -> RunId {
        self.create(project, mr, branch, RunState::Queued, Vec::new())
            .await
    }

    async fn create(
        &self,
        project: &str,
        mr: Option<u64>,
        branch: &str,
        initial: RunState,
        problems: Vec<Problem>,
    ) -> RunId {
        let mut run = self.new_run(mr, branch);
        run.project = project.to_owned();
        run.initial = initial;
        run.problems = problems;
        if initial != RunState::Queued {
            run.steps = Vec::new();
        }
        self.store.create_run(&run).await.expect("create run").0
    }

    /// A queued run of [`PIPELINE`] in project `resnet`.
    fn new_run(&self, mr: Option<u64>, branch: &str) -> NewRun {
        NewRun {
            project: "resnet".to_owned(),
            pipeline: "train".to_owned(),
            sha: SHA.to_owned(),
            trigger: if mr.is_some() {
                EventKind::MergeRequest
            } else {
                EventKind::Push
            },
            event_id: None,
            rerun_of: None,
            git_ref: format!("refs/heads/{branch}"),
            branch: Some(branch.to_owned()),
            tag: None,
            mr: mr.map(|n| i64::try_from(n).expect("mr")),
            params: BTreeMap::new(),
            pipeline_path: ".ferry/train.yaml".to_owned(),
            pipeline_yaml: PIPELINE.to_owned(),
            problems: Vec::new(),
            initial: RunState::Queued,
            dedup_scope: None,
            steps: STEPS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// A queued MR run of a pipeline `train` made of the task steps `steps`.
    async fn run_of(&self, steps: &[&str]) -> RunId {
        let mut yaml = "version: 1\nname: train\ndefaults: { image: img:1 }\nsteps:\n".to_owned();
        for name in steps {
            yaml.push_str(&format!(
                "  - {{ name: {name}, kind: task, run: make {name} }}\n"
            ));
        }
        let mut run = self.new_run(Some(MR), "feature");
        run.pipeline_yaml = yaml;
        run.steps = steps.iter().map(|s| (*s).to_owned()).collect();
        self.store.create_run(&run).await.expect("create run").0
    }

    async fn to(&self, run: RunId, from: RunState, to: RunState) {
        self.store
            .transition_run_with(run, from, to, None)
            .await
            .expect("run transition");
    }

    async fn step(&self, run: RunId, name: &str, from: StepState, to: StepState) {
        self.step_with(run, name, from, to, StepChange::default())
            .await;
    }

    async fn step_with(
        &self,
        run: RunId,
        name: &str,
        from: StepState,
        to: StepState,
        change: StepChange,
    ) {
        self.store
            .transition_step(run, name, from, to, &change)
            .await
            .expect("step transition");
    }

    /// The whole lifecycle after `queued`, with eval publishing `metrics`.
    async fn succeed(&self, run: RunId, metrics: serde_json::Value) {
        use StepState::{Pending, Running, Succeeded};
        self.to(run, RunState::Queued, RunState::Submitted).await;
        self.to(run, RunState::Submitted, RunState::Running).await;
        for name in ["prepare", "fit"] {
            self.step(run, name, Pending, Running).await;
            self.step(run, name, Running, Succeeded).await;
        }
        self.step(run, "eval", Pending, Running).await;
        let change = StepChange {
            message: None,
            metrics: Some(metrics),
        };
        self.step_with(run, "eval", Running, Succeeded, change)
            .await;
        self.to(run, RunState::Running, RunState::Succeeded).await;
    }

    /// Each GitLab status context with its last state, in the order first sent.
    fn gitlab_states(&self) -> Vec<(String, String)> {
        self.forge.with(|s| {
            s.gitlab_statuses
                .iter()
                .map(|s| (s.name.clone(), s.state.clone()))
                .collect()
        })
    }

    async fn unsent(&self, run: RunId) -> usize {
        let rows = self.store.outbox_for_run(run).await.expect("outbox");
        rows.iter().filter(|r| r.sent_at.is_none()).count()
    }
}

/// `POST ferry/train running`-style lines for status calls, `METHOD path` for the others.
fn describe(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            if c.path.contains("/statuses/") {
                let name = if c.field("name").is_empty() {
                    c.field("context")
                } else {
                    c.field("name")
                };
                format!("status {name} {}", c.field("state"))
            } else {
                let path = c.path.replace("/api/v4/projects/ml%2Fresnet", "");
                let path = path.replace("/repos/ml/resnet", "");
                format!("{} {path}", c.method)
            }
        })
        .collect()
}

/// The calls a pipeline of `steps` is allowed: 2 statuses per step (`running`, final) and
/// steps + 2 beyond them (DESIGN.md's budget).
fn budget(steps: usize) -> usize {
    2 * steps + steps + 2
}

/// Takes a queued MR run of `steps` through its whole life with the deployed defaults, one
/// reporter pass after each change, and returns the calls each pass made.
async fn lifecycle(w: &World, run: RunId, steps: &[&str]) -> Vec<Vec<String>> {
    use StepState::{Pending, Running, Succeeded};
    let reporter = w.reporter();
    let mut seen = 0;
    let mut passes = Vec::new();
    let mut pass = async |passes: &mut Vec<Vec<String>>| {
        reporter.pass().await.expect("pass");
        let calls = w.forge.calls_since(seen);
        seen = w.forge.calls().len();
        passes.push(describe(&calls));
    };
    pass(&mut passes).await;
    w.to(run, RunState::Queued, RunState::Submitted).await;
    pass(&mut passes).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    pass(&mut passes).await;
    for name in steps {
        w.step(run, name, Pending, Running).await;
        pass(&mut passes).await;
        w.step(run, name, Running, Succeeded).await;
        pass(&mut passes).await;
    }
    w.to(run, RunState::Running, RunState::Succeeded).await;
    pass(&mut passes).await;
    // Another pass has nothing to say.
    pass(&mut passes).await;
    assert_eq!(passes.last(), Some(&Vec::new()));
    assert_eq!(w.unsent(run).await, 0);
    passes
}

#[tokio::test]
async fn a_gitlab_run_lifecycle_makes_exactly_these_calls() {
    // The deployed defaults: a run that starts within `pending_after_ms` (10 s) never shows
    // `pending`.
    let w = world_with("gitlab", "").await;
    let run = w.run("resnet", Some(MR), "feature").await;
    let passes = lifecycle(&w, run, &STEPS).await;
    let note = w.forge.notes(MR)[0].id;
    let mut expected: Vec<Vec<String>> = vec![
        vec![],
        vec![],
        vec![
            "status ferry/train running".to_owned(),
            "POST /merge_requests/7/notes".to_owned(),
        ],
    ];
    for name in STEPS {
        expected.push(vec![format!("status ferry/train/{name} running")]);
        expected.push(vec![format!("status ferry/train/{name} success")]);
    }
    expected.push(vec![
        "status ferry/train success".to_owned(),
        format!("PUT /merge_requests/7/notes/{note}"),
    ]);
    expected.push(vec![]);
    assert_eq!(passes, expected);

    let calls = w.forge.calls_since(0);
    assert!(calls.iter().all(|c| c.status < 300), "{calls:?}");
    assert!(calls.len() <= budget(STEPS.len()), "{} calls", calls.len());
    let first = &calls[0];
    assert_eq!(first.field("ref"), "feature");
    assert_eq!(
        first.field("target_url"),
        format!("http://ferry.test/runs/{run}")
    );
    assert_eq!(first.field("description"), "running");
    let notes = w.forge.notes(MR);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].edits, 1);
    assert!(
        notes[0]
            .body
            .starts_with(&format!("<!-- ferry:run:{run} -->"))
    );
    assert!(
        notes[0].body.contains("ferry/train: succeeded"),
        "{}",
        notes[0].body
    );
    assert_eq!(
        w.gitlab_states(),
        [
            ("ferry/train", "success"),
            ("ferry/train/prepare", "success"),
            ("ferry/train/fit", "success"),
            ("ferry/train/eval", "success")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[tokio::test]
async fn pipelines_of_one_and_two_steps_stay_within_the_call_budget() {
    // One step: its states are the pipeline's own status; no `ferry/train/only` context.
    let w = world_with("gitlab", "").await;
    let run = w.run_of(&["only"]).await;
    let calls: Vec<String> = lifecycle(&w, run, &["only"]).await.concat();
    let note = w.forge.notes(MR)[0].id;
    assert_eq!(
        calls,
        [
            "status ferry/train running".to_owned(),
            "POST /merge_requests/7/notes".to_owned(),
            "status ferry/train success".to_owned(),
            format!("PUT /merge_requests/7/notes/{note}"),
        ]
    );
    assert!(calls.len() <= budget(1));
    assert_eq!(w.forge.notes(MR).len(), 1);

    // Two steps: each has its own context again.
    let w = world_with("gitlab", "").await;
    let run = w.run_of(&["fit", "eval"]).await;
    let calls: Vec<String> = lifecycle(&w, run, &["fit", "eval"]).await.concat();
    assert_eq!(calls.len(), 8, "{calls:?}");
    assert!(calls.len() <= budget(2));
    assert_eq!(
        w.gitlab_states(),
        [
            ("ferry/train", "success"),
            ("ferry/train/fit", "success"),
            ("ferry/train/eval", "success")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[tokio::test]
async fn a_run_still_queued_after_the_grace_is_reported_pending() {
    let w = world_with("gitlab", "report: { pending_after_ms: 300 }\n").await;
    let reporter = Arc::new(w.reporter());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reporter.clone().run(w.store.outbox_notify(), stop_rx));
    let run = w.run("resnet", Some(MR), "feature").await;
    // The postponed row falls due and the reporter, asleep until then, sends it.
    w.forge
        .wait_until(Duration::from_secs(10), |s| {
            s.gitlab_statuses.iter().any(|st| st.state == "pending")
        })
        .await;
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    w.forge
        .wait_until(Duration::from_secs(10), |s| !s.notes.is_empty())
        .await;
    stop_tx.send(true).expect("stop");
    task.await.expect("reporter");
    let lines = describe(&w.forge.calls_since(0));
    assert_eq!(
        lines,
        [
            "status ferry/train pending",
            "status ferry/train running",
            "POST /merge_requests/7/notes"
        ]
    );
    assert_eq!(w.forge.calls_since(0)[0].field("description"), "queued");
}

#[tokio::test]
async fn an_outage_delays_but_delivers_every_final_state_once() {
    let w = world("gitlab").await;
    // Down at start: the client's own check (`GET /api/v4/user`) fails twice.
    w.forge.fail_next(2, 503, None);
    let reporter = Arc::new(w.reporter());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reporter.run(w.store.outbox_notify(), stop_rx));
    let run = w.run("resnet", Some(MR), "feature").await;
    w.forge
        .wait_until(Duration::from_secs(10), |s| {
            s.gitlab_statuses.iter().any(|st| st.state == "pending")
        })
        .await;
    // Down again while the run goes all the way, then rate limited.
    w.forge.fail_next(3, 503, None);
    w.forge.fail_next(1, 429, Some(1));
    w.succeed(run, json!({"accuracy": 0.9})).await;
    w.forge
        .wait_until(Duration::from_secs(30), |s| {
            s.gitlab_statuses
                .iter()
                .any(|st| st.name == "ferry/train" && st.state == "success")
                && s.notes
                    .get(&MR)
                    .is_some_and(|n| n.iter().any(|n| n.body.contains("ferry/train: succeeded")))
        })
        .await;
    let _ = stop_tx.send(true);
    task.await.expect("reporter stops");

    let calls = w.forge.calls();
    let limited = calls.iter().position(|c| c.status == 429).expect("a 429");
    let next = &calls[limited + 1];
    assert!(
        next.at_ms >= calls[limited].at_ms + 1000,
        "Retry-After: 1 was not honoured: {} ms after the 429",
        next.at_ms - calls[limited].at_ms
    );
    assert_eq!(w.forge.notes(MR).len(), 1, "one note, whatever happened");
    let delivered: Vec<(String, String)> = calls
        .iter()
        .filter(|c| c.status < 300 && c.path.contains("/statuses/"))
        .map(|c| (c.field("name").to_owned(), c.field("state").to_owned()))
        .collect();
    for context in [
        "ferry/train",
        "ferry/train/prepare",
        "ferry/train/fit",
        "ferry/train/eval",
    ] {
        let finals = delivered
            .iter()
            .filter(|(n, s)| n == context && s == "success")
            .count();
        assert_eq!(finals, 1, "{context}: {delivered:?}");
    }
    assert!(
        calls.iter().all(|c| c.status != 400),
        "no state was sent twice: {calls:?}"
    );
    assert_eq!(w.unsent(run).await, 0);
}

#[tokio::test]
async fn a_lost_answer_to_a_note_create_makes_no_second_note() {
    let w = world("gitlab").await;
    let reporter = w.reporter_with(Duration::ZERO);
    let run = w.run("resnet", Some(MR), "feature").await;
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    w.forge.lose_answer_to("POST", "/notes");
    let stats = reporter.pass().await.expect("pass");
    assert_eq!(stats.deferred, 3, "{stats:?}");
    assert_eq!(w.forge.notes(MR).len(), 1, "the create happened");
    let stored = w
        .store
        .forge_comment(run, CommentKind::Note)
        .await
        .expect("read");
    assert_eq!(
        stored.and_then(|c| c.forge_id),
        None,
        "but its id is unknown"
    );

    let before = w.forge.calls().len();
    reporter.pass().await.expect("pass");
    let note = w.forge.notes(MR)[0].id;
    assert_eq!(
        describe(&w.forge.calls_since(before)),
        [
            "GET /merge_requests/7/notes".to_owned(),
            format!("PUT /merge_requests/7/notes/{note}")
        ]
    );
    assert_eq!(w.forge.notes(MR).len(), 1);
    assert_eq!(w.unsent(run).await, 0);
}

#[tokio::test]
async fn a_crash_between_note_create_and_id_store_is_healed_by_the_marker() {
    let w = world("gitlab").await;
    let run = w.run("resnet", Some(MR), "feature").await;
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    // The previous process recorded its intent, created the note, and died before storing the
    // id. People wrote notes since.
    assert!(
        w.store
            .begin_forge_comment(run, CommentKind::Note)
            .await
            .expect("intent")
    );
    let ours = w
        .forge
        .add_note(MR, &format!("<!-- ferry:run:{run} -->\nold body"));
    w.forge.add_note(MR, "LGTM");
    w.forge.add_note(MR, "<!-- ferry:run:999 --> another run");
    let before = w.forge.calls().len();
    w.reporter().pass().await.expect("pass");
    let lines = describe(&w.forge.calls_since(before));
    assert!(
        lines.contains(&"GET /merge_requests/7/notes".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("PUT /merge_requests/7/notes/{ours}")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l == "POST /merge_requests/7/notes"),
        "{lines:?}"
    );
    assert_eq!(w.forge.notes(MR).len(), 3);
    let stored = w
        .store
        .forge_comment(run, CommentKind::Note)
        .await
        .expect("read");
    assert_eq!(
        stored.and_then(|c| c.forge_id),
        Some(i64::try_from(ours).expect("id"))
    );
}

#[tokio::test]
async fn a_new_reporter_delivers_what_the_old_one_left() {
    let w = world("gitlab").await;
    let run = w.run("resnet", Some(MR), "feature").await;
    let first = w.reporter();
    first.pass().await.expect("pass");
    drop(first);
    w.succeed(run, json!({"accuracy": 0.9})).await;
    assert!(w.unsent(run).await > 0);
    // A restart: a new store handle on the same database, a new reporter.
    let store = Store::open(&w.db).await.expect("reopen");
    let second = Reporter::new(store, w.config.clone(), w.credentials.clone());
    second.pass().await.expect("pass");
    assert_eq!(w.unsent(run).await, 0);
    let lines = describe(&w.forge.calls_since(0));
    assert_eq!(
        lines,
        [
            "status ferry/train pending",
            "status ferry/train/prepare success",
            "status ferry/train/fit success",
            "status ferry/train/eval success",
            "status ferry/train success",
            "POST /merge_requests/7/notes",
        ],
        "only the final states, each once"
    );
}

#[tokio::test]
async fn runs_of_projects_without_a_forge_are_marked_sent_without_calls() {
    let w = world("gitlab").await;
    let run = w.run("local", None, "main").await;
    w.succeed(run, json!({})).await;
    let stats = w.reporter().pass().await.expect("pass");
    assert_eq!(stats.sent, 10, "{stats:?}");
    assert_eq!(w.unsent(run).await, 0);
    assert!(w.forge.calls().is_empty(), "{:?}", w.forge.calls());
}

#[tokio::test]
async fn summaries_compare_metrics_with_the_baseline_on_the_target_branch() {
    let w = world("gitlab").await;
    let base = w.run("resnet", None, "main").await;
    w.succeed(base, json!({"accuracy": 0.8, "val_loss": 0.5, "n": 100}))
        .await;
    let run = w.run("resnet", Some(MR), "feature").await;
    w.succeed(run, json!({"accuracy": 0.9, "val_loss": 0.6, "n": 100}))
        .await;
    w.reporter().pass().await.expect("pass");
    let body = &w.forge.notes(MR)[0].body;
    for line in [
        format!("Baseline: run #{base} on `main`."),
        "| accuracy | eval | 0.9 | 0.8 | +0.1 (+12.5%) better |".to_owned(),
        "| n | eval | 100 | 100 | same |".to_owned(),
        "| val_loss | eval | 0.6 | 0.5 | +0.1 (+20.0%) worse |".to_owned(),
        "| fit | succeeded |".to_owned(),
        format!("[dashboard](http://ferry.test/runs/{run})"),
        format!("[Argo](http://argo.test/workflows/ml-team/ferry-{run})"),
    ] {
        assert!(body.contains(&line), "missing {line:?} in\n{body}");
    }
    assert!(body.contains("| 2 × a100 |"), "{body}");
}

#[tokio::test]
async fn a_failure_summary_names_the_failed_step_and_hides_secrets() {
    use StepState::{Pending, Running};
    let w = world("gitlab").await;
    let run = w.run("resnet", Some(MR), "feature").await;
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    w.step(run, "prepare", Pending, Running).await;
    let change = StepChange {
        message: Some(format!("exit code 3: token {GITLAB_TOKEN} rejected")),
        metrics: None,
    };
    w.step_with(run, "prepare", Running, StepState::Failed, change)
        .await;
    w.store
        .transition_run_with(
            run,
            RunState::Running,
            RunState::Failed,
            Some("the workflow failed"),
        )
        .await
        .expect("fail");
    // What the dispatcher stores when the run fails (redacted with the executor's secrets); the
    // reporter redacts it again with the forge's.
    let tail = format!("loading data\nauth with {GITLAB_TOKEN}\nKilled");
    assert!(
        w.store
            .set_log_tail(run, "prepare", &tail)
            .await
            .expect("tail")
    );
    assert!(
        !w.store
            .set_log_tail(run, "prepare", "other")
            .await
            .expect("tail"),
        "kept once"
    );
    w.reporter().pass().await.expect("pass");
    let body = &w.forge.notes(MR)[0].body;
    assert!(body.contains("ferry/train: failed"), "{body}");
    assert!(
        body.contains("<summary>Log tail</summary>") && body.contains("auth with ***\nKilled"),
        "{body}"
    );
    assert!(body.contains("> the workflow failed"), "{body}");
    assert!(
        body.contains("**prepare** failed: exit code 3: token *** rejected"),
        "{body}"
    );
    let calls = w.forge.calls();
    assert!(
        calls
            .iter()
            .all(|c| !c.body.to_string().contains(GITLAB_TOKEN)),
        "the token was sent somewhere: {calls:?}"
    );
    let pipeline_status = calls
        .iter()
        .rfind(|c| c.field("name") == "ferry/train")
        .expect("pipeline status");
    assert_eq!(pipeline_status.field("state"), "failed");
    assert_eq!(
        pipeline_status.field("description"),
        "failed: prepare: exit code 3: token *** rejected"
    );
}

#[tokio::test]
async fn an_invalid_pipeline_is_a_failed_status_naming_file_line_and_column() {
    let w = world("gitlab").await;
    let problems = vec![Problem {
        file: ".ferry/train.yaml".into(),
        line: 4,
        column: 5,
        path: "steps[0]".into(),
        message: "unknown field `resorces`, did you mean `resources`?".into(),
    }];
    let run = w
        .create("resnet", Some(MR), "feature", RunState::Failed, problems)
        .await;
    w.reporter().pass().await.expect("pass");
    let lines = describe(&w.forge.calls_since(0));
    assert_eq!(
        lines,
        ["status ferry/train failed", "POST /merge_requests/7/notes"]
    );
    let status = &w.forge.calls_since(0)[0];
    assert_eq!(
        status.field("description"),
        ".ferry/train.yaml:4:5: steps[0]: unknown field `resorces`, did you mean `resources`?"
            .replace(".ferry", "invalid pipeline: .ferry")
    );
    let body = &w.forge.notes(MR)[0].body;
    assert!(
        body.contains("- `.ferry/train.yaml:4:5` steps\\[0]: unknown field `resorces`, did you mean `resources`?"),
        "{body}"
    );
    assert_eq!(w.unsent(run).await, 0);
}

#[tokio::test]
async fn a_github_run_gets_statuses_and_one_comment_within_budget() {
    let w = world_with("github", "").await;
    let reporter = w.reporter();
    let run = w.run("resnet", Some(MR), "feature").await;
    reporter.pass().await.expect("pass");
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    reporter.pass().await.expect("pass");
    w.succeed_rest(run).await;
    reporter.pass().await.expect("pass");
    let calls = w.forge.calls_since(0);
    assert!(calls.iter().all(|c| c.status < 300), "{calls:?}");
    assert!(calls.len() <= budget(STEPS.len()), "{calls:?}");
    let first = w.forge.with(|s| s.github_statuses.first().cloned());
    assert_eq!(
        first.map(|(_, c, st, d)| (c, st, d)),
        Some((
            "ferry/train".to_owned(),
            "pending".to_owned(),
            "running".to_owned()
        )),
        "GitHub's word for running is `pending`; a run that starts at once is never `queued`"
    );
    let statuses: Vec<(String, String)> = w.forge.with(|s| {
        s.github_statuses
            .iter()
            .map(|(_, c, st, _)| (c.clone(), st.clone()))
            .collect()
    });
    assert_eq!(
        statuses.last(),
        Some(&("ferry/train".to_owned(), "success".to_owned()))
    );
    let comments = w.forge.notes(MR);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].edits, 1);
    assert!(comments[0].body.contains("ferry/train: succeeded"));
}

#[tokio::test]
async fn github_rate_limit_headers_pause_reporting_until_the_reset() {
    let w = world("github").await;
    let reporter = w.reporter();
    let run = w.run("resnet", None, "main").await;
    w.forge.set_github_remaining(0);
    let stats = reporter.pass().await.expect("pass");
    assert_eq!(
        stats.sent, 1,
        "the call that used the limit up went through"
    );
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    let before = w.forge.calls().len();
    let stats = reporter.pass().await.expect("pass");
    assert_eq!(stats.deferred, 2, "{stats:?}");
    assert_eq!(w.forge.calls().len(), before, "no call before the reset");
    let rows = w.store.outbox_for_run(run).await.expect("outbox");
    let due = rows
        .iter()
        .filter(|r| r.sent_at.is_none())
        .map(|r| r.next_attempt_at);
    let now = ferry_engine::store::now_millis();
    assert!(
        due.clone().all(|at| at > now + 500),
        "deferred until the reset"
    );
}

#[tokio::test]
async fn a_github_app_reports_pipelines_as_check_runs() {
    let Some(key) = rsa_key() else {
        eprintln!(
            "a_github_app_reports_pipelines_as_check_runs: SKIPPED: no openssl to make a key"
        );
        return;
    };
    let mut w = world("github").await;
    w.credentials.insert(
        "resnet".to_owned(),
        ForgeCredentials::GithubApp {
            app_id: 1234,
            private_key: SecretString::new(key),
        },
    );
    let reporter = w.reporter();
    let run = w.run("resnet", Some(MR), "feature").await;
    reporter.pass().await.expect("pass");
    w.to(run, RunState::Queued, RunState::Submitted).await;
    w.to(run, RunState::Submitted, RunState::Running).await;
    reporter.pass().await.expect("pass");
    w.succeed_rest(run).await;
    reporter.pass().await.expect("pass");
    let checks = w.forge.with(|s| s.check_runs.clone());
    assert_eq!(checks.len(), 1, "{:#?}", w.forge.calls());
    assert_eq!(checks[0].name, "ferry/train");
    assert_eq!(checks[0].external_id, format!("ferry:run:{run}"));
    assert_eq!(checks[0].status, "completed");
    assert_eq!(checks[0].conclusion.as_deref(), Some("success"));
    assert!(
        checks[0].summary.contains("| fit | succeeded |"),
        "{}",
        checks[0].summary
    );
    let lines = describe(&w.forge.calls_since(0));
    let check_calls: Vec<&String> = lines.iter().filter(|l| l.contains("check-runs")).collect();
    assert_eq!(check_calls.len(), 3, "{lines:?}");
    assert_eq!(w.forge.notes(MR).len(), 1);
}

impl World {
    /// From running: every step runs and succeeds, then the run.
    async fn succeed_rest(&self, run: RunId) {
        use StepState::{Pending, Running, Succeeded};
        for name in STEPS {
            self.step(run, name, Pending, Running).await;
            self.step(run, name, Running, Succeeded).await;
        }
        self.to(run, RunState::Running, RunState::Succeeded).await;
    }
}

/// A fresh RSA key (PEM) from the `openssl` command, if there is one.
fn rsa_key() -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
