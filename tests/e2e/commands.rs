//! Comment commands and trust (issue "Status on the merge request"): GitLab and GitHub webhooks
//! go through intake into the planner, commands run on the local executor (with a real git
//! repository made by the test), and answers reach a fake forge through the real `gitlab` and
//! `octocrab` clients via the reporter.
//!
//! Covered: a developer's `/ferry run train lr=0.01` (a run with that parameter, a 👍), an
//! undeclared parameter (a reply naming it, nothing run), reporter-level and non-member users
//! (a polite refusal, nothing run), `/ferry rerun` (only failed pipelines) and `--all`,
//! `/ferry cancel` of a running `sleep` (the executor stops it), `/ferry help` and an unknown
//! command (the help), ferry's own replies never acting as commands, a fork merge request waiting
//! with a pending status until `/ferry ok-to-test`, pinned to the approved commit (a new push needs
//! a new approval), an author without write access waiting too, a redelivered comment answered
//! once (through an outage and a lost answer), and GitHub's permissions, pull request heads and
//! reactions.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
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
use ferry_engine::store::{NewRun, Page, Run, RunFilter, RunId, RunState, StepState, Store};
use ferry_tests::TempDir;
use ferry_tests::fake_forge::{FakeForge, GITHUB_TOKEN, GITLAB_TOKEN, Role};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Notify, watch};

const TRAIN: &str = r#"version: 1
name: train
on:
  merge_request:
    target_branches: [main]
defaults: { image: img:1 }
params: { lr: "0.1" }
steps:
  - name: fit
    kind: train
    run: echo "lr=$FERRY_PARAM_LR"
"#;

const FLAKY: &str = r#"version: 1
name: flaky
on:
  merge_request:
    target_branches: [main]
defaults: { image: img:1 }
steps:
  - name: check
    kind: task
    run: exit 3
"#;

/// Manual only: something long to cancel.
const SLOW: &str = r#"version: 1
name: slow
defaults: { image: img:1 }
steps:
  - name: wait
    kind: task
    run: sleep 300
"#;

const MR: u64 = 7;
const FORK_MR: u64 = 8;
const DEV: (u64, &str) = (10, "dev");
const REPORTER: (u64, &str) = (11, "rep");
const OUTSIDER: (u64, &str) = (12, "outsider");

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
    /// Head of `feature`, merge request 7's source branch (in the project's repository).
    feature: String,
    keys: AtomicU64,
}

/// An upstream with the pipelines on `main` and a `feature` branch (merge request 7), ferry's
/// parts wired as `ferry serve` wires them, on a fake GitLab where `dev` is a developer and `rep`
/// a reporter.
async fn world() -> World {
    let up = TempDir::new("commands-upstream");
    let dir = up.path();
    git(dir, &["init", "-q", "-b", "main"]);
    commit(dir, ".ferry/train.yaml", TRAIN, "train");
    commit(dir, ".ferry/flaky.yaml", FLAKY, "flaky");
    commit(dir, ".ferry/slow.yaml", SLOW, "slow");
    git(dir, &["checkout", "-q", "-b", "feature"]);
    let feature = commit(dir, "model/a.txt", "a", "feature work");
    git(
        dir,
        &[
            "update-ref",
            &format!("refs/merge-requests/{MR}/head"),
            &feature,
        ],
    );
    git(dir, &["checkout", "-q", "main"]);

    let forge = FakeForge::start().await;
    forge.set_user(DEV.0, DEV.1, Some(Role::Developer));
    forge.set_user(REPORTER.0, REPORTER.1, Some(Role::Reporter));
    forge.set_user(OUTSIDER.0, OUTSIDER.1, None);
    let data = TempDir::new("commands-data");
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let yaml = format!(
        "public_url: http://ferry.test/\nprojects:\n  - {{ name: resnet, repo: \"file://{}\", forge: gitlab, forge_url: \"{}\", token_env: T, webhook_secret_env: S }}\n",
        dir.display(),
        forge.url()
    );
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let credentials = HashMap::from([(
        "resnet".to_owned(),
        ForgeCredentials::Token(SecretString::new(GITLAB_TOKEN)),
    )]);
    wire(up, data, &db, config, credentials, forge, feature).await
}

async fn wire(
    up: TempDir,
    data: TempDir,
    db: &str,
    config: Arc<Config>,
    credentials: HashMap<String, ForgeCredentials>,
    forge: FakeForge,
    feature: String,
) -> World {
    let store = Store::open(db).await.expect("store");
    let profile = Arc::new(Profile::default());
    let reporter = Reporter::new(store.clone(), config.clone(), credentials)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50));
    let runs_wake = Arc::new(Notify::new());
    let planner = Arc::new(
        Planner::new(
            store.clone(),
            config.clone(),
            profile.clone(),
            data.path().join("data"),
        )
        .with_forges(reporter.forges())
        .with_runs_created(runs_wake.clone()),
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
    let task = tokio::spawn(dispatcher.run(runs_wake, rx, stop_rx));
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
        feature,
        keys: AtomicU64::new(0),
    }
}

impl World {
    fn url(&self) -> String {
        format!("file://{}", self.up.path().display())
    }

    fn project(&self) -> Value {
        json!({"path_with_namespace": "ml/resnet", "git_http_url": self.url(), "default_branch": "main"})
    }

    /// Delivers a GitLab hook through intake under a fresh delivery key (or `key`).
    async fn gitlab(&self, event: &str, body: &Value, key: Option<&str>) -> Outcome {
        let key = key.map_or_else(
            || format!("key-{}", self.keys.fetch_add(1, Ordering::Relaxed)),
            str::to_owned,
        );
        let headers: HashMap<String, String> = HashMap::from([
            ("X-Gitlab-Event".into(), event.into()),
            ("X-Gitlab-Token".into(), "s".into()),
            ("Idempotency-Key".into(), key),
        ]);
        let body = serde_json::to_vec(body).expect("json");
        intake::receive(
            &self.store,
            &self.config,
            &self.secrets,
            ForgeKind::Gitlab,
            &headers,
            &body,
        )
        .await
        .expect("intake")
    }

    /// Merge request `iid` from `feature` (or a fork) to `main` at `sha`, opened or updated by
    /// `author`, delivered and planned.
    async fn merge_request(
        &self,
        iid: u64,
        action: &str,
        sha: &str,
        fork: bool,
        author: (u64, &str),
    ) {
        let body = json!({
            "object_kind": "merge_request",
            "user": {"id": author.0, "username": author.1},
            "project": self.project(),
            "repository": {"git_http_url": self.url()},
            "object_attributes": {
                "iid": iid, "action": action, "source_branch": "feature", "target_branch": "main",
                "source_project_id": if fork { 2 } else { 1 }, "target_project_id": 1,
                "title": "change", "oldrev": if action == "update" { Some("0".repeat(40)) } else { None },
                "last_commit": {"id": sha, "message": "change"}
            }
        });
        let outcome = self.gitlab("Merge Request Hook", &body, None).await;
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
        self.plan().await;
    }

    /// The note hook of comment `id` by `author` on merge request `iid` whose head is `sha`.
    fn note(&self, iid: u64, sha: &str, author: (u64, &str), id: u64, text: &str) -> Value {
        json!({
            "object_kind": "note",
            "user": {"id": author.0, "username": author.1},
            "project": self.project(),
            "repository": {"git_http_url": self.url()},
            "object_attributes": {"id": id, "note": text, "noteable_type": "MergeRequest", "action": "create"},
            "merge_request": {"iid": iid, "source_branch": "feature", "target_branch": "main", "last_commit": {"id": sha}}
        })
    }

    /// Comment `id` by `author` on merge request 7 at the feature head, delivered, planned and
    /// answered.
    async fn comment(&self, author: (u64, &str), id: u64, text: &str) {
        self.comment_at(MR, &self.feature.clone(), author, id, text)
            .await;
    }

    async fn comment_at(&self, iid: u64, sha: &str, author: (u64, &str), id: u64, text: &str) {
        let outcome = self
            .gitlab("Note Hook", &self.note(iid, sha, author, id, text), None)
            .await;
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
        self.plan().await;
        self.report().await;
    }

    async fn plan(&self) {
        self.planner.plan_pending().await.expect("planning");
        let events = self
            .store
            .first_pending_event("resnet")
            .await
            .expect("read");
        assert!(events.is_none(), "an event is left unplanned: {events:?}");
    }

    /// One reporter pass, which must leave nothing behind.
    async fn report(&self) {
        let stats = self.reporter.pass().await.expect("report");
        assert_eq!(stats.deferred, 0, "{stats:?}: {:#?}", self.forge.calls());
    }

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

    /// The reactions on comment `id`.
    fn reactions_on(&self, id: u64) -> Vec<String> {
        self.forge
            .reactions()
            .into_iter()
            .filter(|r| r.comment == id)
            .map(|r| r.name)
            .collect()
    }

    /// The replies ferry wrote to comment `id` on merge request `iid`.
    fn replies_to(&self, iid: u64, id: u64) -> Vec<String> {
        let marker = format!("<!-- ferry:reply:{iid}:{id} -->");
        self.forge
            .notes(iid)
            .into_iter()
            .filter(|n| n.body.contains(&marker))
            .map(|n| n.body)
            .collect()
    }

    /// Stops the dispatcher (after the runs a test started are finished).
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

#[tokio::test]
async fn a_developer_runs_a_pipeline_with_a_parameter_and_gets_a_thumbs_up() {
    let w = world().await;
    w.comment(
        DEV,
        501,
        "Let's try a smaller rate.\n\n/ferry run train lr=0.01\n",
    )
    .await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(
        (run.pipeline.as_str(), run.trigger, run.mr, run.sha.as_str()),
        ("train", Trigger::Comment, Some(7), w.feature.as_str())
    );
    assert_eq!(run.params.get("lr"), Some(&json!("0.01")));
    assert_eq!(run.branch.as_deref(), Some("feature"));
    assert_eq!(w.reactions_on(501), ["thumbsup"]);
    assert!(w.replies_to(MR, 501).is_empty(), "a reaction, no reply");
    let done = finished(&w.store, run.id).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:?}");

    // An undeclared parameter: a reply naming it and the declared ones; nothing runs.
    w.comment(DEV, 502, "/ferry run train lr=0.2 batch=64")
        .await;
    assert_eq!(w.runs().await.len(), 1, "nothing more ran");
    let replies = w.replies_to(MR, 502);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = &replies[0];
    assert!(
        reply.contains("`batch` is not declared by pipeline `train`"),
        "{reply}"
    );
    assert!(
        reply.contains("declared: `lr`") || reply.contains("declared: lr"),
        "{reply}"
    );
    assert!(reply.contains("@dev"), "{reply}");
    assert!(w.reactions_on(502).is_empty());

    // A pipeline that does not exist.
    w.comment(DEV, 503, "/ferry run nope").await;
    let reply = w.replies_to(MR, 503).concat();
    assert!(reply.contains("no pipeline `nope`"), "{reply}");
    assert!(reply.contains("`train`"), "{reply}");
    w.finish().await;
}

#[tokio::test]
async fn people_without_write_access_are_refused_politely_and_nothing_runs() {
    let w = world().await;
    for (i, who) in [REPORTER, OUTSIDER].into_iter().enumerate() {
        let id = 600 + i as u64;
        w.comment(who, id, "/ferry run train\n/ferry ok-to-test")
            .await;
        let replies = w.replies_to(MR, id);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(
            replies[0].contains("Sorry, only people with developer"),
            "{}",
            replies[0]
        );
        assert!(
            replies[0].contains(&format!("@{}", who.1)),
            "{}",
            replies[0]
        );
        assert!(w.reactions_on(id).is_empty());
    }
    assert!(w.runs().await.is_empty(), "nothing ran");
    let asked: Vec<String> = w
        .forge
        .calls()
        .iter()
        .filter(|c| c.path.contains("/members/all/"))
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[0].ends_with("/members/all/11"), "{asked:?}");
    w.finish().await;
}

#[tokio::test]
async fn rerun_repeats_only_what_failed_and_all_with_the_flag() {
    let w = world().await;
    w.merge_request(MR, "open", &w.feature.clone(), false, DEV)
        .await;
    let first = w.runs().await;
    let names: Vec<&str> = first.iter().map(|r| r.pipeline.as_str()).collect();
    assert_eq!(
        names,
        ["flaky", "train"],
        "the MR runs both pipelines by itself"
    );
    for run in &first {
        finished(&w.store, run.id).await;
    }
    let flaky = first.iter().find(|r| r.pipeline == "flaky").expect("flaky");
    assert_eq!(
        w.store
            .get_run(flaky.id)
            .await
            .expect("get")
            .expect("run")
            .state,
        RunState::Failed
    );

    w.comment(DEV, 701, "/ferry rerun").await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 3, "{runs:#?}");
    let rerun = &runs[2];
    assert_eq!(
        (rerun.pipeline.as_str(), rerun.rerun_of, rerun.trigger),
        ("flaky", Some(flaky.id), Trigger::Comment)
    );
    assert_eq!(w.reactions_on(701), ["thumbsup"]);
    assert_eq!(finished(&w.store, rerun.id).await.state, RunState::Failed);

    w.comment(DEV, 702, "/ferry rerun --all").await;
    let runs = w.runs().await;
    let again: Vec<(&str, Option<RunId>)> = runs[3..]
        .iter()
        .map(|r| (r.pipeline.as_str(), r.rerun_of))
        .collect();
    let train = first.iter().find(|r| r.pipeline == "train").expect("train");
    assert_eq!(
        again,
        [("flaky", Some(rerun.id)), ("train", Some(train.id))]
    );
    for run in &runs[3..] {
        finished(&w.store, run.id).await;
    }

    // A named pipeline reruns whatever its last run did; nothing failed-only to do says so.
    w.comment(DEV, 703, "/ferry rerun train").await;
    assert_eq!(w.runs().await.len(), 6);
    let last = w.runs().await.pop().expect("run");
    finished(&w.store, last.id).await;
    w.finish().await;
}

#[tokio::test]
async fn cancel_stops_a_running_run_through_the_executor() {
    let w = world().await;
    w.comment(DEV, 801, "/ferry run slow").await;
    let slow = w.runs().await.pop().expect("slow run");
    assert_eq!(slow.pipeline, "slow");
    wait_run(&w.store, slow.id, "running", |r| {
        r.state == RunState::Running
    })
    .await;

    w.comment(DEV, 802, "/ferry cancel slow").await;
    assert_eq!(w.reactions_on(802), ["thumbsup"]);
    let done = finished(&w.store, slow.id).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:?}");
    let steps = w.store.steps(slow.id).await.expect("steps");
    assert_eq!(steps[0].state, StepState::Cancelled, "{steps:?}");

    // A queued run is cancelled in the store at once; nothing active: a reply says so.
    w.comment(DEV, 803, "/ferry cancel").await;
    let reply = w.replies_to(MR, 803).concat();
    assert!(reply.contains("nothing to cancel"), "{reply}");
    w.finish().await;
}

#[tokio::test]
async fn help_and_unknown_commands_get_the_help_and_replies_never_act() {
    let w = world().await;
    w.comment(DEV, 901, "/ferry help").await;
    let help = w.replies_to(MR, 901).concat();
    assert!(
        help.contains("`/ferry run [PIPELINE] [key=value ...]`"),
        "{help}"
    );
    assert!(help.contains("`/ferry ok-to-test`"), "{help}");

    w.comment(DEV, 902, "/ferry frobnicate now").await;
    let unknown = w.replies_to(MR, 902).concat();
    assert!(
        unknown.contains("ferry has no command `/ferry frobnicate`"),
        "{unknown}"
    );
    assert!(
        unknown.contains("`/ferry rerun [PIPELINE] [--all]`"),
        "{unknown}"
    );

    // Several commands: one reply quoting each, in order.
    w.comment(
        DEV,
        903,
        "/ferry help\n```\n/ferry run train\n```\n/ferry cancel --all",
    )
    .await;
    let both = w.replies_to(MR, 903).concat();
    let help_at = both.find("`/ferry help`").expect("help quoted");
    let cancel_at = both.find("`/ferry cancel --all`").expect("cancel quoted");
    assert!(help_at < cancel_at, "{both}");
    assert!(both.contains("unexpected `--all`"), "{both}");
    assert!(w.runs().await.is_empty(), "the code block did not run");

    // ferry's own reply comes back as a note hook from a maintainer's token: nothing happens.
    let calls = w.forge.calls().len();
    w.forge.set_user(1, "ferry-bot", Some(Role::Maintainer));
    w.comment((1, "ferry-bot"), 999, &format!("{help}\n/ferry run train"))
        .await;
    assert!(w.runs().await.is_empty());
    assert_eq!(w.forge.calls_since(calls), [], "no call at all");
    w.finish().await;
}

#[tokio::test]
async fn a_fork_waits_for_ok_to_test_pinned_to_the_approved_commit() {
    let w = world().await;
    let dir = w.up.path();
    git(dir, &["checkout", "-q", "-b", "fork-work", "main"]);
    let first = commit(dir, "model/fork.txt", "1", "fork change");
    let second = commit(dir, "model/fork.txt", "2", "fork change again");
    git(dir, &["checkout", "-q", "main"]);
    git(dir, &["branch", "-q", "-D", "fork-work"]);
    let mr_ref = format!("refs/merge-requests/{FORK_MR}/head");
    git(dir, &["update-ref", &mr_ref, &first]);

    w.merge_request(FORK_MR, "open", &first, true, OUTSIDER)
        .await;
    let waiting = w.runs().await;
    assert_eq!(waiting.len(), 2, "{waiting:#?}");
    for run in &waiting {
        assert_eq!(
            (run.state, run.sha.as_str()),
            (RunState::Waiting, first.as_str())
        );
    }
    w.report().await;
    let statuses = w.forge.with(|s| s.gitlab_statuses.clone());
    let pending: Vec<(&str, &str)> = statuses
        .iter()
        .map(|s| (s.name.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        pending,
        [("ferry/flaky", "pending"), ("ferry/train", "pending")]
    );
    assert!(
        statuses[0].description.contains("waiting: ")
            && statuses[0]
                .description
                .contains("/ferry ok-to-test (merge request from a fork)"),
        "{statuses:#?}"
    );
    // Nothing runs while it waits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for run in &waiting {
        let now = w.store.get_run(run.id).await.expect("get").expect("run");
        assert_eq!(now.state, RunState::Waiting);
    }

    // A reporter may not approve.
    w.comment_at(FORK_MR, &first, REPORTER, 1001, "/ferry ok-to-test")
        .await;
    assert!(w.replies_to(FORK_MR, 1001).concat().contains("Sorry"));
    // A developer does: the runs of the approved commit start.
    w.comment_at(FORK_MR, &first, DEV, 1002, "/ferry ok-to-test")
        .await;
    assert_eq!(w.reactions_on(1002), ["thumbsup"]);
    for run in &waiting {
        let done = finished(&w.store, run.id).await;
        assert_eq!(done.sha, first, "pinned to the approved commit");
        assert_ne!(done.state, RunState::Cancelled, "{done:?}");
        assert_eq!(
            done.message.as_deref().filter(|m| m.contains("ok-to-test")),
            None
        );
    }

    // A new push to the fork needs a new approval.
    git(dir, &["update-ref", &mr_ref, &second]);
    w.merge_request(FORK_MR, "update", &second, true, OUTSIDER)
        .await;
    let new: Vec<Run> = w
        .runs()
        .await
        .into_iter()
        .filter(|r| r.sha == second)
        .collect();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|r| r.state == RunState::Waiting), "{new:#?}");
    // An approval given for the old head approves nothing of the new one.
    w.comment_at(FORK_MR, &first, DEV, 1003, "/ferry ok-to-test")
        .await;
    assert!(
        w.replies_to(FORK_MR, 1003)
            .concat()
            .contains("nothing waits")
    );
    // A third push before any approval supersedes the second one's waiting runs.
    git(dir, &["checkout", "-q", "-b", "fork-work", &second]);
    let third = commit(dir, "model/fork.txt", "3", "third");
    git(dir, &["checkout", "-q", "main"]);
    git(dir, &["branch", "-q", "-D", "fork-work"]);
    git(dir, &["update-ref", &mr_ref, &third]);
    w.merge_request(FORK_MR, "update", &third, true, OUTSIDER)
        .await;
    for run in &new {
        let now = w.store.get_run(run.id).await.expect("get").expect("run");
        assert_eq!(now.state, RunState::Cancelled, "{now:?}");
        assert!(
            now.message
                .as_deref()
                .is_some_and(|m| m.contains("superseded"))
        );
    }
    w.comment_at(FORK_MR, &third, DEV, 1004, "/ferry ok-to-test")
        .await;
    assert_eq!(w.reactions_on(1004), ["thumbsup"]);
    let approved: Vec<Run> = w
        .runs()
        .await
        .into_iter()
        .filter(|r| r.sha == third)
        .collect();
    assert_eq!(approved.len(), 2);
    for run in &approved {
        finished(&w.store, run.id).await;
    }
    w.finish().await;
}

#[tokio::test]
async fn an_author_without_write_access_waits_too() {
    let w = world().await;
    w.merge_request(MR, "open", &w.feature.clone(), false, REPORTER)
        .await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run.state, RunState::Waiting);
        let message = run.message.as_deref().unwrap_or("");
        assert!(message.contains("@rep has no write access"), "{message}");
    }
    w.comment(DEV, 1101, "/ferry ok-to-test").await;
    for run in &runs {
        finished(&w.store, run.id).await;
    }
    // A developer's merge request runs by itself.
    let runs_before = w.runs().await.len();
    w.merge_request(MR, "reopen", &w.feature.clone(), false, DEV)
        .await;
    assert_eq!(
        w.runs().await.len(),
        runs_before,
        "same commit, same dedup key"
    );
    w.finish().await;
}

#[tokio::test]
async fn a_redelivered_comment_is_answered_once_through_outages() {
    let w = world().await;
    let body = w.note(MR, &w.feature.clone(), DEV, 1201, "/ferry help");
    assert!(matches!(
        w.gitlab("Note Hook", &body, Some("same")).await,
        Outcome::Stored { .. }
    ));
    assert!(matches!(
        w.gitlab("Note Hook", &body, Some("same")).await,
        Outcome::Duplicate { .. }
    ));
    // A redelivery under another key is another event of the same comment.
    assert!(matches!(
        w.gitlab("Note Hook", &body, Some("other")).await,
        Outcome::Stored { .. }
    ));
    w.plan().await;
    // The forge is down, then the create's answer is lost on the way back.
    w.forge.fail_next(2, 503, None);
    let stats = w.reporter.pass().await.expect("pass");
    assert_eq!(stats.deferred, 1);
    w.forge.lose_answer_to("POST", "/notes");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = w.reporter.pass().await.expect("pass");
        if stats.sent == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the answer was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.replies_to(MR, 1201).len(), 1, "{:#?}", w.forge.calls());
    // Delivered again later, and a reporter after a restart: still one answer.
    assert!(matches!(
        w.gitlab("Note Hook", &body, Some("third")).await,
        Outcome::Stored { .. }
    ));
    w.plan().await;
    let restarted = Reporter::new(w.store.clone(), w.config.clone(), HashMap::new());
    assert_eq!(restarted.pass().await.expect("pass").sent, 0);
    w.report().await;
    assert_eq!(w.replies_to(MR, 1201).len(), 1);
    w.finish().await;
}

fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s").expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn github_asks_collaborator_permissions_and_pull_heads_and_reacts() {
    let forge = FakeForge::start().await;
    forge.set_user(20, "octo-dev", Some(Role::Maintainer));
    forge.set_user(21, "octo-read", Some(Role::Reporter));
    let head = "f".repeat(40);
    forge.set_merge_request(MR, &head, "feature", "main");
    let data = TempDir::new("commands-github");
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let yaml = format!(
        "projects:\n  - {{ name: resnet, repo: https://github.com/ml/resnet.git, forge: github, forge_url: \"{}\", token_env: T, webhook_secret_env: S }}\n",
        forge.url()
    );
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let credentials = HashMap::from([(
        "resnet".to_owned(),
        ForgeCredentials::Token(SecretString::new(GITHUB_TOKEN)),
    )]);
    let up = TempDir::new("commands-github-up");
    let w = wire(up, data, &db, config, credentials, forge, head.clone()).await;
    // An active run of the pull request to cancel (never submitted: nothing is cloned).
    let queued = NewRun {
        project: "resnet".into(),
        pipeline: "train".into(),
        sha: head.clone(),
        trigger: Trigger::MergeRequest,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/ferry/mr/7".into(),
        branch: Some("feature".into()),
        tag: None,
        mr: Some(7),
        params: Default::default(),
        pipeline_path: ".ferry/train.yaml".into(),
        pipeline_yaml: TRAIN.into(),
        problems: Vec::new(),
        initial: RunState::Queued,
        dedup_scope: None,
        steps: vec!["fit".into()],
    };
    let _ = w.stop.send(true);
    let (id, _) = w.store.create_run(&queued).await.expect("run");
    let comment = |user: &str, comment: u64, text: &str| {
        json!({
            "action": "created",
            "issue": {"number": MR, "pull_request": {"url": "https://api.github.com/repos/ml/resnet/pulls/7"}},
            "comment": {"id": comment, "body": text, "user": {"login": user, "id": 5}},
            "repository": {"full_name": "ml/resnet", "clone_url": "https://github.com/ml/resnet.git",
                           "html_url": "https://github.com/ml/resnet"},
            "sender": {"login": user, "id": 5}
        })
    };
    let deliver = async |body: Value| {
        let body = serde_json::to_vec(&body).expect("json");
        let headers: HashMap<String, String> = HashMap::from([
            ("X-GitHub-Event".into(), "issue_comment".into()),
            (
                "X-GitHub-Delivery".into(),
                format!("d-{}", w.keys.fetch_add(1, Ordering::Relaxed)),
            ),
            ("X-Hub-Signature-256".into(), github_signature(&body)),
        ]);
        let outcome = intake::receive(
            &w.store,
            &w.config,
            &w.secrets,
            ForgeKind::Github,
            &headers,
            &body,
        )
        .await
        .expect("intake");
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
        w.plan().await;
        w.report().await;
    };

    deliver(comment("octo-read", 41, "/ferry cancel")).await;
    let reply = w.replies_to(MR, 41).concat();
    assert!(reply.contains("Sorry"), "{reply}");
    assert_eq!(
        w.store.get_run(id).await.expect("get").expect("run").state,
        RunState::Queued
    );

    deliver(comment("octo-dev", 42, "/ferry cancel")).await;
    assert_eq!(w.reactions_on(42), ["+1"]);
    assert_eq!(
        w.store.get_run(id).await.expect("get").expect("run").state,
        RunState::Cancelled
    );

    // `ok-to-test` needs the head, which GitHub's comment event does not carry.
    deliver(comment("octo-dev", 43, "/ferry ok-to-test")).await;
    let reply = w.replies_to(MR, 43).concat();
    assert!(
        reply.contains(&format!("at the head commit {}", &head[..8])),
        "{reply}"
    );
    let lines: Vec<String> = w
        .forge
        .calls()
        .iter()
        .filter(|c| c.method == "GET" || c.path.contains("reactions"))
        .map(|c| c.line())
        .collect();
    assert_eq!(
        lines,
        [
            "GET /repos/ml/resnet/collaborators/octo-read/permission",
            "GET /repos/ml/resnet/collaborators/octo-dev/permission",
            "POST /repos/ml/resnet/issues/comments/42/reactions",
            "GET /repos/ml/resnet/collaborators/octo-dev/permission",
            "GET /repos/ml/resnet/pulls/7",
        ]
    );
    w.finish().await;
}
