//! Planning with real git repositories made by the test and fetched over `file://`: a stored
//! push becomes queued runs of exactly the pipelines it triggers (issue: event intake).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ferry_engine::config::Config;
use ferry_engine::event::ForgeKind;
use ferry_engine::profile::Profile;
use ferry_engine::service::intake::{self, Outcome, Secret, Secrets};
use ferry_engine::service::planner::Planner;
use ferry_engine::store::{Page, RunFilter, RunState, Store};
use ferry_tests::TempDir;
use serde_json::json;

const ZERO: &str = "0000000000000000000000000000000000000000";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

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
const BROKEN: &str = "version: 1\nname: broken\nsteps:\n  - { name: x, kind: task, run: x, resorces: {} }\n";

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
    let yaml = format!("projects:\n  - {{ name: demo, repo: \"{url}\", forge: gitlab, webhook_secret_env: S }}\n");
    let config = Config::from_yaml("ferry.yaml", &yaml).expect("config");
    let store = Store::open(&format!("sqlite://{}", data.path().join("ferry.db").display())).await.expect("store");
    let secrets: Secrets = HashMap::from([("demo".to_owned(), Secret::new("s"))]);
    let planner = Planner::new(store.clone(), Arc::new(config.clone()), Arc::new(Profile::default()), data.path().to_path_buf());
    World { upstream, store, config, secrets, planner, _data: data }
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
        let outcome = intake::receive(&self.store, &self.config, &self.secrets, ForgeKind::Gitlab, &headers, &body).await.expect("stored");
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
    }

    /// Runs (pipeline, state) at a commit, sorted.
    async fn runs_at(&self, sha: &str) -> Vec<(String, RunState)> {
        let filter = RunFilter { sha: Some(sha.to_owned()), ..RunFilter::default() };
        let page = self.store.list_runs(&filter, Page::first(100)).await.expect("list");
        let mut runs: Vec<(String, RunState)> = page.runs.into_iter().map(|r| (r.pipeline, r.state)).collect();
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
        vec![("broken".into(), RunState::Failed), ("lint".into(), RunState::Queued), ("train".into(), RunState::Queued)]
    );
    let page = w.store.list_runs(&RunFilter { pipeline: Some("broken".into()), ..RunFilter::default() }, Page::first(10)).await.expect("list");
    let problems = &page.runs[0].problems;
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().starts_with(".ferry/broken.yaml:4:36: steps[0].resorces: unknown field `resorces`, expected one of name, kind"), "{}", problems[0]);
    let train = w.store.list_runs(&RunFilter { pipeline: Some("train".into()), ..RunFilter::default() }, Page::first(10)).await.expect("list");
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
    assert_eq!(w.runs_at(&docs).await, vec![("broken".into(), RunState::Failed)]);

    // A model change on main runs both; `[skip ci]` in the head commit runs nothing.
    write(up, "model/net.py", "x = 2\n");
    let model = commit(up, "tune");
    w.push("d3", "main", &docs, &model, "tune").await;
    w.planner.plan_pending().await.expect("plans");
    assert_eq!(w.runs_at(&model).await.len(), 3);
    write(up, "model/net.py", "x = 3\n");
    let skipped = commit(up, "wip [skip ci]");
    w.push("d4", "main", &model, &skipped, "wip [skip ci]").await;
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
    w.push("f1", "feature/x", ZERO, &feature, "feature work").await;
    // A branch deletion starts nothing.
    w.push("f2", "feature/x", &feature, ZERO, "").await;
    // Stored but not planned before a "restart": a new planner on the same store plans them.
    let restarted = Planner::new(w.store.clone(), Arc::new(w.config.clone()), Arc::new(Profile::default()), w._data.path().to_path_buf());
    assert_eq!(restarted.plan_pending().await.expect("plans"), 2);
    assert_eq!(w.runs_at(&feature).await, vec![("lint".into(), RunState::Queued)], "train runs on main only");
    assert!(w.runs_at(&base).await.is_empty());
    assert_eq!(restarted.plan_pending().await.expect("plans"), 0, "nothing left to plan");
}

#[tokio::test]
async fn fetch_failures_are_retried_not_dropped() {
    let w = world().await;
    let up = w.upstream.path();
    write(up, ".ferry/ci/lint.yml", LINT);
    commit(up, "base");
    let missing = "1111111111111111111111111111111111111111";
    w.push("m1", "main", ZERO, missing, "gone").await;
    assert_eq!(w.planner.plan_pending().await.expect("pass"), 0);
    let stored = w.store.event_by_key("gitlab:m1").await.expect("query").expect("kept");
    assert_eq!(stored.attempts, 1);
    assert!(stored.last_error.as_deref().is_some_and(|e| e.contains(missing)), "{:?}", stored.last_error);
}
