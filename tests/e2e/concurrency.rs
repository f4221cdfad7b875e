//! Concurrency groups and per-project quotas (issue 5, "Concurrency and quota"): GitLab webhooks
//! through intake and the planner, runs on the local executor through the dispatcher, statuses on
//! the fake GitLab through the real client.
//!
//! Steps that must stay busy wait for a release file the test creates, so nothing here depends
//! on how long anything takes: a run is held until the test lets it go.
//!
//! Covered: a burst of six pushes to one merge request under `max_concurrent_runs: 1` with
//! `cancel_in_progress` ends with the newest run succeeded and every older one cancelled as
//! superseded by the next, and a later push still runs (no slot leaked); a quota wait reported as
//! a pending status with its reason; GPU quotas admitting in order (a small run never overtakes a
//! large one) and failing a run that could never fit; closing a merge request and deleting a
//! branch cancelling their runs, waiting or running; push, manual and merge request runs of one
//! branch superseding each other under `group: branch`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_engine::config::Config;
use ferry_engine::event::ForgeKind;
use ferry_engine::executor::local::{LocalExecutor, LocalSettings};
use ferry_engine::forge::report::ForgeCredentials;
use ferry_engine::pipeline::EventKind as Trigger;
use ferry_engine::profile::Profile;
use ferry_engine::service::dispatch::Dispatcher;
use ferry_engine::service::intake::{self, Outcome, Secret, Secrets};
use ferry_engine::service::mirror::SecretString;
use ferry_engine::service::planner::Planner;
use ferry_engine::service::report::Reporter;
use ferry_engine::store::{Page, Run, RunFilter, RunId, RunState, Store};
use ferry_tests::TempDir;
use ferry_tests::fake_forge::{FakeForge, GITLAB_TOKEN, Role};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

const MR: u64 = 7;
const DEV: (u64, &str) = (10, "dev");

/// A pipeline named `name` triggered by `on`, with `concurrency`, whose one step waits for the
/// file `release`.
fn held(name: &str, on: &str, concurrency: &str, release: &Path) -> String {
    format!(
        "version: 1\nname: {name}\non:\n{on}\n{concurrency}defaults: {{ image: img:1 }}\nsteps:\n  - name: work\n    kind: task\n    run: |\n      while [ ! -f '{}' ]; do sleep 0.05; done\n",
        release.display()
    )
}

const ON_MR: &str = "  merge_request:\n    target_branches: [main]";
const SUPERSEDE: &str = "concurrency: { group: merge_request, cancel_in_progress: true }\n";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit(dir: &Path, file: &str, text: &str, message: &str) -> String {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

struct World {
    up: TempDir,
    _data: TempDir,
    store: Store,
    config: Arc<Config>,
    secrets: Secrets,
    forge: FakeForge,
    planner: Arc<Planner>,
    reporter: Reporter,
    stop: watch::Sender<bool>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    /// Created by the test to let held steps finish.
    release: PathBuf,
    keys: AtomicU64,
    pushes: AtomicU64,
}

/// An upstream with `pipelines` on `main` and a `feature` branch, ferry's parts wired as
/// `ferry serve` wires them, on a fake GitLab where `dev` is a developer; `limits` is added to the
/// project's config (`max_concurrent_runs: 1`).
async fn world(limits: &str, pipelines: impl Fn(&Path) -> Vec<(String, String)>) -> World {
    let up = TempDir::new("concurrency-upstream");
    let data = TempDir::new("concurrency-data");
    let release = data.path().join("release");
    let dir = up.path();
    git(dir, &["init", "-q", "-b", "main"]);
    for (file, text) in pipelines(&release) {
        commit(dir, &format!(".ferry/{file}"), &text, &file);
    }
    git(dir, &["checkout", "-q", "-b", "feature"]);

    let forge = FakeForge::start().await;
    forge.set_user(DEV.0, DEV.1, Some(Role::Developer));
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let yaml = format!(
        "public_url: http://ferry.test/\nprojects:\n  - {{ name: resnet, repo: \"file://{}\", forge: gitlab, forge_url: \"{}\", token_env: T, webhook_secret_env: S, {limits} }}\n",
        dir.display(),
        forge.url()
    );
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let credentials = HashMap::from([(
        "resnet".to_owned(),
        ForgeCredentials::Token(SecretString::new(GITLAB_TOKEN)),
    )]);
    let store = Store::open(&db).await.expect("store");
    let profile = Arc::new(Profile::default());
    let reporter = Reporter::new(store.clone(), config.clone(), credentials)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50));
    let wake = Arc::new(Notify::new());
    let planner = Arc::new(
        Planner::new(
            store.clone(),
            config.clone(),
            profile.clone(),
            data.path().join("data"),
        )
        .with_forges(reporter.forges())
        .with_runs_created(wake.clone()),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let executor = LocalExecutor::new(
        LocalSettings {
            gpus: Some(0),
            ..LocalSettings::new(data.path().join("data"))
        },
        tx,
    );
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        config.clone(),
        profile,
        Arc::new(executor),
        data.path().join("data"),
    ));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(wake, rx, stop_rx));
    World {
        up,
        _data: data,
        store,
        config,
        secrets: HashMap::from([("resnet".to_owned(), Secret::new("s"))]),
        forge,
        planner,
        reporter,
        stop,
        dispatcher: Some(task),
        release,
        keys: AtomicU64::new(0),
        pushes: AtomicU64::new(0),
    }
}

impl World {
    fn url(&self) -> String {
        format!("file://{}", self.up.path().display())
    }

    fn project(&self) -> Value {
        json!({"path_with_namespace": "ml/resnet", "git_http_url": self.url(), "default_branch": "main"})
    }

    /// Delivers a GitLab hook through intake under a fresh delivery key and plans it.
    async fn deliver(&self, event: &str, body: &Value) {
        let key = format!("key-{}", self.keys.fetch_add(1, Ordering::Relaxed));
        let headers: HashMap<String, String> = HashMap::from([
            ("X-Gitlab-Event".into(), event.into()),
            ("X-Gitlab-Token".into(), "s".into()),
            ("Idempotency-Key".into(), key),
        ]);
        let body = serde_json::to_vec(body).expect("json");
        let outcome = intake::receive(
            &self.store,
            &self.config,
            &self.secrets,
            ForgeKind::Gitlab,
            &headers,
            &body,
        )
        .await
        .expect("intake");
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
        self.planner.plan_pending().await.expect("planning");
        let left = self
            .store
            .first_pending_event("resnet")
            .await
            .expect("read");
        assert!(left.is_none(), "an event is left unplanned: {left:?}");
    }

    /// A new commit on `feature`, which is merge request 7's head; returns its sha.
    fn new_commit(&self) -> String {
        let n = self.pushes.fetch_add(1, Ordering::Relaxed);
        let sha = commit(
            self.up.path(),
            &format!("model/{n}.txt"),
            "x",
            &format!("change {n}"),
        );
        git(
            self.up.path(),
            &[
                "update-ref",
                &format!("refs/merge-requests/{MR}/head"),
                &sha,
            ],
        );
        sha
    }

    /// The merge request hook of `action` (`open`, `update`, `close`, `merge`) at `sha`.
    async fn merge_request(&self, action: &str, sha: &str) {
        let body = json!({
            "object_kind": "merge_request",
            "user": {"id": DEV.0, "username": DEV.1},
            "project": self.project(),
            "repository": {"git_http_url": self.url()},
            "object_attributes": {
                "iid": MR, "action": action, "source_branch": "feature", "target_branch": "main",
                "source_project_id": 1, "target_project_id": 1, "title": "change",
                "oldrev": if action == "update" { Some("0".repeat(40)) } else { None },
                "last_commit": {"id": sha, "message": "change"}
            }
        });
        self.deliver("Merge Request Hook", &body).await;
    }

    /// A push of `feature` from `before` to `after` (all zeros: deleted).
    async fn push(&self, before: &str, after: &str) {
        let body = json!({
            "object_kind": "push", "before": before, "after": after,
            "ref": "refs/heads/feature", "user_username": DEV.1, "project_id": 1,
            "project": self.project(), "commits": [], "repository": {"git_http_url": self.url()}
        });
        self.deliver("Push Hook", &body).await;
    }

    /// Every run, oldest first.
    async fn runs(&self) -> Vec<Run> {
        let mut runs = self
            .store
            .list_runs(&RunFilter::default(), Page::first(100))
            .await
            .expect("runs")
            .runs;
        runs.reverse();
        runs
    }

    fn let_go(&self) {
        std::fs::write(&self.release, "go").expect("release file");
    }

    /// One reporter pass, which must leave nothing behind.
    async fn report(&self) {
        let stats = self.reporter.pass().await.expect("report");
        assert_eq!(stats.deferred, 0, "{stats:?}: {:#?}", self.forge.calls());
    }

    /// The last GitLab status of the run context `ferry/<pipeline>` at `sha`: (state,
    /// description).
    fn status(&self, sha: &str, pipeline: &str) -> Option<(String, String)> {
        let name = format!("ferry/{pipeline}");
        self.forge.with(|s| {
            s.gitlab_statuses
                .iter()
                .rev()
                .find(|st| st.sha == sha && st.name == name)
                .map(|st| (st.state.clone(), st.description.clone()))
        })
    }

    async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.dispatcher.take() {
            let _ = task.await;
        }
    }
}

/// Polls until run `id` satisfies `done` (at most a minute).
async fn wait_run(store: &Store, id: RunId, what: &str, done: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = store.get_run(id).await.expect("get run").expect("run");
        if done(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} is not {what} after a minute: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finished(store: &Store, id: RunId) -> Run {
    wait_run(store, id, "finished", |r| r.state.is_terminal()).await
}

async fn executing(store: &Store, id: RunId) -> Run {
    wait_run(store, id, "submitted or running", |r| {
        matches!(r.state, RunState::Submitted | RunState::Running)
    })
    .await
}

async fn waiting(store: &Store, id: RunId) -> Run {
    wait_run(store, id, "waiting", |r| r.state == RunState::Waiting).await
}

/// The Pipelines-as-Code bug: a burst of pushes to one merge request under a limit of one run.
#[tokio::test]
async fn a_burst_of_pushes_ends_with_only_the_newest_run_and_leaks_no_slot() {
    let w = world("max_concurrent_runs: 1", |release| {
        vec![(
            "train.yaml".to_owned(),
            held("train", ON_MR, SUPERSEDE, release),
        )]
    })
    .await;
    let mut shas = Vec::new();
    for i in 0..6 {
        let sha = w.new_commit();
        w.merge_request(if i == 0 { "open" } else { "update" }, &sha)
            .await;
        shas.push(sha);
    }
    let runs = w.runs().await;
    assert_eq!(runs.len(), 6, "{runs:#?}");
    let view: Vec<&str> = runs.iter().map(|r| r.sha.as_str()).collect();
    assert_eq!(view, shas.iter().map(String::as_str).collect::<Vec<_>>());
    // The held steps cannot finish, so each older run was still unfinished when the next one
    // came: it was superseded by exactly that one, waiting, queued or running.
    for pair in runs.windows(2) {
        let (older, newer) = (&pair[0], &pair[1]);
        let done = finished(&w.store, older.id).await;
        assert_eq!(done.state, RunState::Cancelled, "{done:?}");
        assert_eq!(
            done.message.as_deref(),
            Some(format!("superseded by run {} ({})", newer.id, &newer.sha[..7]).as_str())
        );
    }
    let newest = &runs[5];
    executing(&w.store, newest.id).await;
    w.let_go();
    let done = finished(&w.store, newest.id).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    w.report().await;
    for pair in runs.windows(2) {
        let (older, newer) = (&pair[0], &pair[1]);
        let reason = format!(
            "cancelled: superseded by run {} ({})",
            newer.id,
            &newer.sha[..7]
        );
        assert_eq!(
            w.status(&older.sha, "train"),
            Some(("canceled".to_owned(), reason))
        );
    }
    assert_eq!(
        w.status(&shas[5], "train").map(|s| s.0).as_deref(),
        Some("success")
    );

    // No slot leaked: the next push runs to the end.
    let sha = w.new_commit();
    w.merge_request("update", &sha).await;
    let next = w.runs().await.pop().expect("run");
    assert_eq!(next.sha, sha);
    let done = finished(&w.store, next.id).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    w.finish().await;
}

/// Two pipelines of one merge request under a limit of one: the second waits, reported as pending
/// with the reason, and starts when the first is done.
#[tokio::test]
async fn a_quota_wait_is_a_pending_status_with_its_reason() {
    let w = world("max_concurrent_runs: 1", |release| {
        vec![
            ("a.yaml".to_owned(), held("a", ON_MR, "", release)),
            ("b.yaml".to_owned(), held("b", ON_MR, "", release)),
        ]
    })
    .await;
    let sha = w.new_commit();
    w.merge_request("open", &sha).await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let (first, second) = (&runs[0], &runs[1]);
    executing(&w.store, first.id).await;
    let parked = waiting(&w.store, second.id).await;
    let reason = "waiting for capacity: 1 of 1 concurrent runs in use";
    assert_eq!(parked.message.as_deref(), Some(reason));
    w.report().await;
    assert_eq!(
        w.status(&sha, &second.pipeline),
        Some(("pending".to_owned(), reason.to_owned()))
    );
    // A running run is `running`; a submitted one has no status yet (it is reported `pending`
    // only once queued longer than `report.pending_after_ms`): either is right for the first.
    let state = w.status(&sha, &first.pipeline).map(|s| s.0);
    assert!(
        matches!(state.as_deref(), None | Some("running")),
        "{state:?}"
    );
    w.let_go();
    for run in &runs {
        let done = finished(&w.store, run.id).await;
        assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    }
    w.report().await;
    for run in &runs {
        assert_eq!(
            w.status(&sha, &run.pipeline).map(|s| s.0).as_deref(),
            Some("success")
        );
    }
    w.finish().await;
}

/// Closing a merge request cancels its runs, the one the executor has and the one waiting.
#[tokio::test]
async fn closing_a_merge_request_cancels_its_runs() {
    let w = world("max_concurrent_runs: 1", |release| {
        vec![
            ("a.yaml".to_owned(), held("a", ON_MR, "", release)),
            ("b.yaml".to_owned(), held("b", ON_MR, "", release)),
        ]
    })
    .await;
    let sha = w.new_commit();
    w.merge_request("open", &sha).await;
    let runs = w.runs().await;
    executing(&w.store, runs[0].id).await;
    waiting(&w.store, runs[1].id).await;
    w.merge_request("close", &sha).await;
    for run in &runs {
        let done = finished(&w.store, run.id).await;
        assert_eq!(done.state, RunState::Cancelled, "{done:?}");
        assert_eq!(
            done.message.as_deref(),
            Some("the merge request was closed")
        );
    }
    assert_eq!(w.runs().await.len(), 2, "closing runs nothing");
    w.finish().await;
}

/// Deleting a branch cancels the push runs of that branch.
#[tokio::test]
async fn deleting_a_branch_cancels_its_push_runs() {
    let on_push = "  push:\n    branches: [feature]";
    let w = world("max_concurrent_runs: 1", |release| {
        vec![
            ("a.yaml".to_owned(), held("a", on_push, "", release)),
            ("b.yaml".to_owned(), held("b", on_push, "", release)),
        ]
    })
    .await;
    let sha = w.new_commit();
    w.push(&"0".repeat(40), &sha).await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(runs.iter().all(|r| r.trigger == Trigger::Push));
    executing(&w.store, runs[0].id).await;
    waiting(&w.store, runs[1].id).await;
    w.push(&sha, &"0".repeat(40)).await;
    for run in &runs {
        let done = finished(&w.store, run.id).await;
        assert_eq!(done.state, RunState::Cancelled, "{done:?}");
        assert_eq!(
            done.message.as_deref(),
            Some("the branch feature was deleted")
        );
    }
    w.finish().await;
}

/// `group: branch`: a push run, a manual run of the branch and a merge request run from it are one
/// group; each newer one supersedes the one before, whatever triggered it.
#[tokio::test]
async fn manual_and_merge_request_runs_join_the_group_of_their_branch() {
    let on = "  push:\n    branches: [feature]\n  merge_request:\n    target_branches: [main]";
    let group = "concurrency: { group: branch, cancel_in_progress: true }\n";
    let w = world("max_concurrent_runs: 2", |release| {
        vec![("t.yaml".to_owned(), held("t", on, group, release))]
    })
    .await;
    let sha = w.new_commit();
    w.push(&"0".repeat(40), &sha).await;
    let push = w.runs().await.pop().expect("push run");
    assert_eq!(push.trigger, Trigger::Push);
    executing(&w.store, push.id).await;
    let request = ferry_engine::service::manual::ManualRequest {
        project: "resnet".into(),
        pipeline: "t".into(),
        git_ref: Some("feature".into()),
        ..Default::default()
    };
    let manual = w.planner.trigger(&request).await.expect("manual run");
    let sha7 = &sha[..7];
    let done = finished(&w.store, push.id).await;
    assert_eq!(done.state, RunState::Cancelled);
    assert_eq!(
        done.message,
        Some(format!("superseded by run {manual} ({sha7})"))
    );
    w.merge_request("open", &sha).await;
    let mr = w.runs().await.pop().expect("merge request run");
    assert_eq!(
        (mr.trigger, mr.mr),
        (Trigger::MergeRequest, Some(MR as i64))
    );
    let done = finished(&w.store, manual).await;
    assert_eq!(done.state, RunState::Cancelled);
    assert_eq!(
        done.message,
        Some(format!("superseded by run {} ({sha7})", mr.id))
    );
    w.let_go();
    let done = finished(&w.store, mr.id).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    w.finish().await;
}

/// Under `max_gpus: 8`, with 6 in use, a run of 4 waits and a later run of 2 (which would fit)
/// waits behind it; a run of 16 fails at once; all start in order as capacity frees.
#[tokio::test]
async fn gpu_quota_admits_in_order_and_fails_what_can_never_fit() {
    let data = TempDir::new("quota-gpus");
    let release = data.path().join("release");
    let up = TempDir::new("quota-gpus-upstream");
    git(up.path(), &["init", "-q", "-b", "main"]);
    let pipelines = [
        ("big", 6, true),
        ("four", 4, false),
        ("two", 2, false),
        ("huge", 16, false),
    ];
    for (name, gpus, hold) in pipelines {
        let run = if hold {
            format!(
                "while [ ! -f '{}' ]; do sleep 0.05; done",
                release.display()
            )
        } else {
            "true".to_owned()
        };
        let yaml = format!(
            "version: 1\nname: {name}\ndefaults: {{ image: img:1 }}\nsteps:\n  - {{ name: work, kind: task, run: \"{run}\", resources: {{ gpu: {gpus}, gpu_type: a100 }}, retries: 0 }}\n"
        );
        commit(up.path(), &format!(".ferry/{name}.yaml"), &yaml, name);
    }
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let config = Arc::new(
        Config::from_yaml(
            "ferry.yaml",
            &format!(
                "projects:\n  - {{ name: m, repo: \"file://{}\", forge: none, max_gpus: 8 }}\n",
                up.path().display()
            ),
        )
        .expect("config"),
    );
    let profile = Arc::new(
        Profile::from_yaml(
            "profile.yaml",
            "gpu_types:\n  a100: { resource: nvidia.com/gpu }\n",
        )
        .expect("profile"),
    );
    let store = Store::open(&db).await.expect("store");
    let planner = Planner::new(
        store.clone(),
        config.clone(),
        profile.clone(),
        data.path().join("data"),
    );
    let mut ids = Vec::new();
    for (name, _, _) in pipelines {
        let request = ferry_engine::service::manual::ManualRequest {
            project: "m".into(),
            pipeline: name.into(),
            ..Default::default()
        };
        ids.push(planner.trigger(&request).await.expect("manual run"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let executor = LocalExecutor::new(
        LocalSettings {
            gpus: Some(8),
            ..LocalSettings::new(data.path().join("data"))
        },
        tx,
    );
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        config,
        profile,
        Arc::new(executor),
        data.path().join("data"),
    ));
    let (stop, stop_rx) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let task = tokio::spawn(dispatcher.run(wake.clone(), rx, stop_rx));
    wake.notify_one();
    let (big, four, two, huge) = (ids[0], ids[1], ids[2], ids[3]);
    executing(&store, big).await;
    let parked = waiting(&store, four).await;
    assert_eq!(
        parked.message.as_deref(),
        Some("waiting for capacity: 6 of 8 GPUs in use, this run needs 4")
    );
    let behind = waiting(&store, two).await;
    assert_eq!(
        behind.message.as_deref(),
        Some(format!("waiting for capacity: behind run {four} (6 of 8 GPUs in use)").as_str())
    );
    let failed = finished(&store, huge).await;
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(
        failed.message.as_deref(),
        Some("needs 16 GPUs, more than the project's max_gpus of 8: it can never start")
    );
    // The big run is held: the run of 2 has not overtaken the run of 4.
    assert_eq!(
        store.get_run(two).await.expect("get").expect("run").state,
        RunState::Waiting
    );
    std::fs::write(&release, "go").expect("release");
    for id in [big, four, two] {
        let done = finished(&store, id).await;
        assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    }
    // Released in line: the run of 4 went to the executor before the run of 2.
    let submitted = |items: Vec<ferry_engine::store::OutboxItem>| {
        items
            .into_iter()
            .find(|o| o.kind == "run" && o.payload["state"] == "submitted")
            .map(|o| o.id.0)
            .expect("submitted")
    };
    let four_at = submitted(store.outbox_for_run(four).await.expect("outbox"));
    let two_at = submitted(store.outbox_for_run(two).await.expect("outbox"));
    assert!(four_at < two_at, "{four_at} {two_at}");
    let _ = stop.send(true);
    task.await.expect("dispatcher stops");
    store.close().await;
}
