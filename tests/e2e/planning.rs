//! Planning with real git repositories made by the test and fetched over `file://`: a stored
//! push becomes queued runs of exactly the pipelines it triggers (issue: event intake).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ferry_engine::config::Config;
use ferry_engine::event::ForgeKind;
use ferry_engine::profile::Profile;
use ferry_engine::service::intake::{self, Outcome, Secret, Secrets};
use ferry_engine::service::mirror::MirrorError;
use ferry_engine::service::planner::{PlanError, Planner};
use ferry_engine::store::{EventState, Failure, Page, RunFilter, RunState, Store};
use ferry_tests::TempDir;
use serde_json::json;

const ZERO: &str = "0000000000000000000000000000000000000000";

use ferry_tests::git;

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

const TRAIN: &str = "version: 1\nname: train\non:\n  push:\n    branches: [main]\n    paths: [\"model/**\"]\ndefaults: { image: img:1 }\nparams: { lr: \"0.1\" }\nsteps:\n  - { name: fit, kind: train, run: python fit.py }\n";
const LINT: &str = "version: 1\nname: lint\non:\n  push:\n    paths_ignore: [\"docs/**\"]\ndefaults: { image: img:1 }\nsteps:\n  - { name: check, kind: task, run: make lint }\n";
const MANUAL: &str = "version: 1\nname: manual-only\ndefaults: { image: img:1 }\nsteps:\n  - { name: x, kind: task, run: x }\n";
const BROKEN: &str =
    "version: 1\nname: broken\nsteps:\n  - { name: x, kind: task, run: x, resorces: {} }\n";

struct World {
    upstream: TempDir,
    store: Store,
    config: Config,
    secrets: Secrets,
    planner: Planner,
    _data: TempDir,
}

async fn world() -> World {
    let upstream = TempDir::new("upstream");
    git(upstream.path(), &["init", "-q", "-b", "main"]);
    let data = TempDir::new("ferry-data");
    let url = format!("file://{}", upstream.path().display());
    let yaml = format!(
        "projects:\n  - {{ name: demo, repo: \"{url}\", forge: gitlab, webhook_secret_env: S }}\n"
    );
    let config = Config::from_yaml("ferry.yaml", &yaml).expect("config");
    let store = Store::open(&format!(
        "sqlite://{}",
        data.path().join("ferry.db").display()
    ))
    .await
    .expect("store");
    let secrets: Secrets = HashMap::from([("demo".to_owned(), Secret::new("s"))]);
    let planner = Planner::new(
        store.clone(),
        Arc::new(config.clone()),
        Arc::new(Profile::default()),
        data.path().to_path_buf(),
    );
    World {
        upstream,
        store,
        config,
        secrets,
        planner,
        _data: data,
    }
}

impl World {
    /// Delivers a GitLab push of `branch` from `before` to `after` through intake.
    async fn push(&self, key: &str, branch: &str, before: &str, after: &str, message: &str) {
        let url = format!("file://{}", self.upstream.path().display());
        let body = json!({
            "object_kind": "push", "before": before, "after": after, "ref": format!("refs/heads/{branch}"),
            "user_username": "dev", "project_id": 1,
            "project": {"path_with_namespace": "demo/demo", "default_branch": "main", "git_http_url": url},
            "commits": [{"id": after, "message": message}], "repository": {"git_http_url": url}
        });
        let headers: HashMap<String, String> = HashMap::from([
            ("X-Gitlab-Event".into(), "Push Hook".into()),
            ("X-Gitlab-Token".into(), "s".into()),
            ("Idempotency-Key".into(), key.into()),
        ]);
        let body = serde_json::to_vec(&body).expect("json");
        let outcome = intake::receive(
            &self.store,
            &self.config,
            &self.secrets,
            ForgeKind::Gitlab,
            &headers,
            &body,
        )
        .await
        .expect("stored");
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
    }

    /// Runs (pipeline, state) at a commit, sorted.
    async fn runs_at(&self, sha: &str) -> Vec<(String, RunState)> {
        let filter = RunFilter {
            sha: Some(sha.to_owned()),
            ..RunFilter::default()
        };
        let page = self
            .store
            .list_runs(&filter, Page::first(100))
            .await
            .expect("list");
        let mut runs: Vec<(String, RunState)> = page
            .runs
            .into_iter()
            .map(|r| (r.pipeline, r.state))
            .collect();
        runs.sort();
        runs
    }
}

#[tokio::test]
async fn a_push_plans_exactly_the_pipelines_it_triggers() {
    let w = world().await;
    let up = w.upstream.path();
    write(up, ".ferry/train.yaml", TRAIN);
    write(up, ".ferry/ci/lint.yml", LINT);
    write(up, ".ferry/manual.yaml", MANUAL);
    write(up, ".ferry/broken.yaml", BROKEN);
    write(up, ".ferry/README.md", "not a pipeline");
    write(up, "model/net.py", "x = 1\n");
    let first = commit(up, "first");
    w.push("d1", "main", ZERO, &first, "first").await;
    assert_eq!(w.planner.plan_pending().await.expect("plans"), 1);
    assert_eq!(
        w.runs_at(&first).await,
        vec![
            ("broken".into(), RunState::Failed),
            ("lint".into(), RunState::Queued),
            ("train".into(), RunState::Queued)
        ]
    );
    let page = w
        .store
        .list_runs(
            &RunFilter {
                pipeline: Some("broken".into()),
                ..RunFilter::default()
            },
            Page::first(10),
        )
        .await
        .expect("list");
    let problems = &page.runs[0].problems;
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().starts_with(".ferry/broken.yaml:4:36: steps[0].resorces: unknown field `resorces`, expected one of `env`, `environment`, `if`, `image`"), "{}", problems[0]);
    assert!(
        problems[0]
            .to_string()
            .ends_with("did you mean `resources`?"),
        "{}",
        problems[0]
    );
    let train = w
        .store
        .list_runs(
            &RunFilter {
                pipeline: Some("train".into()),
                ..RunFilter::default()
            },
            Page::first(10),
        )
        .await
        .expect("list");
    assert_eq!(train.runs[0].params.get("lr"), Some(&json!("0.1")));
    assert_eq!(train.runs[0].git_ref, "refs/heads/main");

    // The same push delivered again under another key plans nothing new.
    w.push("d1-again", "main", ZERO, &first, "first").await;
    assert_eq!(w.planner.plan_pending().await.expect("plans"), 1);
    assert_eq!(w.runs_at(&first).await.len(), 3);

    // Only docs changed: `train` wants model/**, `lint` ignores docs/**.
    write(up, "docs/guide.md", "words\n");
    let docs = commit(up, "docs only");
    w.push("d2", "main", &first, &docs, "docs only").await;
    w.planner.plan_pending().await.expect("plans");
    assert_eq!(
        w.runs_at(&docs).await,
        vec![("broken".into(), RunState::Failed)]
    );

    // A model change on main runs both; `[skip ci]` in the head commit runs nothing.
    write(up, "model/net.py", "x = 2\n");
    let model = commit(up, "tune");
    w.push("d3", "main", &docs, &model, "tune").await;
    w.planner.plan_pending().await.expect("plans");
    assert_eq!(w.runs_at(&model).await.len(), 3);
    write(up, "model/net.py", "x = 3\n");
    let skipped = commit(up, "wip [skip ci]");
    w.push("d4", "main", &model, &skipped, "wip [skip ci]")
        .await;
    w.planner.plan_pending().await.expect("plans");
    assert!(w.runs_at(&skipped).await.is_empty());
}

#[tokio::test]
async fn feature_branches_deletions_and_restarts() {
    let w = world().await;
    let up = w.upstream.path();
    write(up, ".ferry/train.yaml", TRAIN);
    write(up, ".ferry/ci/lint.yml", LINT);
    let base = commit(up, "base");
    git(up, &["checkout", "-q", "-b", "feature/x"]);
    write(up, "src/a.py", "a\n");
    let feature = commit(up, "feature work");
    // A new branch: changed files are those since the merge base with the default branch.
    w.push("f1", "feature/x", ZERO, &feature, "feature work")
        .await;
    // A branch deletion starts nothing, and cancels the branch's unfinished push runs.
    w.push("f2", "feature/x", &feature, ZERO, "").await;
    // Stored but not planned before a "restart": a new planner on the same store plans them.
    let restarted = Planner::new(
        w.store.clone(),
        Arc::new(w.config.clone()),
        Arc::new(Profile::default()),
        w._data.path().to_path_buf(),
    );
    assert_eq!(restarted.plan_pending().await.expect("plans"), 2);
    assert_eq!(
        w.runs_at(&feature).await,
        vec![("lint".into(), RunState::Cancelled)],
        "train runs on main only; the deletion cancelled lint"
    );
    assert!(w.runs_at(&base).await.is_empty());
    assert_eq!(
        restarted.plan_pending().await.expect("plans"),
        0,
        "nothing left to plan"
    );
}

#[tokio::test]
async fn fetch_failures_are_retried_not_dropped() {
    let w = world().await;
    let up = w.upstream.path();
    write(up, ".ferry/ci/lint.yml", LINT);
    let base = commit(up, "base");
    let missing = "1111111111111111111111111111111111111111";
    w.push("m1", "main", ZERO, missing, "gone").await;
    w.push("m2", "main", missing, &base, "base").await;
    assert_eq!(w.planner.plan_pending().await.expect("pass"), 0);
    assert!(
        w.runs_at(&base).await.is_empty(),
        "the later push waits behind the one backing off: order per project"
    );
    let later = w
        .store
        .event_by_key("gitlab:m2")
        .await
        .expect("query")
        .expect("kept");
    assert_eq!(later.attempts, 0);
    let stored = w
        .store
        .event_by_key("gitlab:m1")
        .await
        .expect("query")
        .expect("kept");
    assert_eq!(stored.attempts, 1);
    assert!(
        stored
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(missing)),
        "{:?}",
        stored.last_error
    );
}

#[tokio::test]
async fn a_push_made_while_the_repository_is_unreachable_is_planned_once_it_is_back() {
    let w = world().await;
    let up = w.upstream.path().to_path_buf();
    write(&up, ".ferry/ci/lint.yml", LINT);
    let sha = commit(&up, "during the outage");
    // The forge is down: the repository cannot be fetched.
    let away = up.with_extension("away");
    std::fs::rename(&up, &away).expect("take the repository away");
    w.push("o1", "main", ZERO, &sha, "during the outage").await;
    assert_eq!(w.planner.plan_pending().await.expect("pass"), 0);
    let stored = w
        .store
        .event_by_key("gitlab:o1")
        .await
        .expect("query")
        .expect("kept");
    assert_eq!((stored.state, stored.attempts), (EventState::Pending, 1));
    let error = stored.last_error.unwrap_or_default();
    assert!(error.contains("fetching `demo`"), "{error}");
    // A fetch failure is an outage, however long it lasts: it never counts towards giving up.
    let failure = PlanError::Git(MirrorError::Fetch {
        project: "demo".into(),
        url: "https://gitlab.example.com/ml/resnet.git".into(),
        message: "connection refused".into(),
    })
    .failure();
    assert_eq!(failure, Failure::Transient);
    let stats = w.store.stats().await.expect("stats");
    assert_eq!((stats.events_retrying, stats.events_failed), (1, 0));

    // The forge is back; after the first back-off (1 s) the push is planned.
    std::fs::rename(&away, &up).expect("bring it back");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(w.planner.plan_pending().await.expect("pass"), 1);
    assert_eq!(w.runs_at(&sha).await.len(), 1, "the push's run exists");
    let stats = w.store.stats().await.expect("stats");
    assert_eq!((stats.events_retrying, stats.events_failed), (0, 0));
}

/// Sends one HTTP/1.1 request and returns the status code.
pub(crate) async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

#[tokio::test]
async fn ferry_serve_stores_wakes_the_planner_and_shuts_down_cleanly() {
    let upstream = TempDir::new("serve-upstream");
    let up = upstream.path();
    git(up, &["init", "-q", "-b", "main"]);
    write(up, ".ferry/ci/lint.yml", LINT);
    let sha = commit(up, "first");
    let data = TempDir::new("serve-data");
    let url = format!("file://{}", up.display());
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let yaml = format!(
        "database_url: {db}\ndata_dir: {}\nprojects:\n  - {{ name: demo, repo: \"{url}\", forge: gitlab, webhook_secret_env: S }}\n",
        data.path().join("data").display()
    );
    let config = Config::from_yaml("ferry.yaml", &yaml).expect("config");
    let secrets = ferry::server::read_secrets(&config, |_| Some("s".to_owned())).expect("secrets");
    let loaded = ferry::server::Loaded {
        config,
        profile: Profile::default(),
        source: "test".into(),
        embedded: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry::server::serve_with(
        loaded,
        secrets,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let body = serde_json::to_vec(&json!({
        "object_kind": "push", "before": ZERO, "after": sha, "ref": "refs/heads/main",
        "project": {"path_with_namespace": "demo/demo", "default_branch": "main", "git_http_url": url},
        "commits": [{"id": sha, "message": "first"}]
    }))
    .expect("json");
    let headers = [
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Token", "s"),
        ("Idempotency-Key", "serve-1"),
    ];
    assert_eq!(http_post(addr, "/hooks/gitlab", &headers, &body).await, 202);
    assert_eq!(http_post(addr, "/hooks/gitlab", &headers, &body).await, 200);
    // The planner was woken by the delivery; wait (bounded) for its run to appear.
    let store = Store::open(&db).await.expect("store");
    let filter = RunFilter {
        sha: Some(sha.clone()),
        ..RunFilter::default()
    };
    let mut runs = Vec::new();
    for _ in 0..300 {
        runs = store
            .list_runs(&filter, Page::first(10))
            .await
            .expect("list")
            .runs;
        if !runs.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(runs.len(), 1, "the push planned one run");
    assert_eq!(runs[0].pipeline, "lint");
    // The dispatcher submits it to the local executor, which runs `make lint` in a checkout of
    // the commit: there is no Makefile, so the step and the run fail with make's exit code.
    let id = runs[0].id;
    let mut run = runs.remove(0);
    for _ in 0..600 {
        run = store.get_run(id).await.expect("get").expect("run");
        if run.state.is_terminal() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    let message = run.message.clone().unwrap_or_default();
    assert!(
        message.contains("step `check` failed") && message.contains("exited with code 2"),
        "{message}"
    );
    let steps = store.steps(id).await.expect("steps");
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].state, steps[0].attempts),
        (ferry_engine::store::StepState::Failed, 1)
    );
    let _ = stop.send(());
    server.await.expect("join").expect("clean shutdown");
    store.close().await;
}
