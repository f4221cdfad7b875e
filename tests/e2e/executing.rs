//! Executing runs with the local executor: the README's main job (`ferry serve` on its embedded
//! defaults runs the demo pipeline to the end), pushes run end to end through planning, dispatch
//! and local processes, restarts reconcile lost runs, and `ferry run` on a working tree.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::config::Config;
use ferry_engine::executor::local::{LocalExecutor, LocalSettings};
use ferry_engine::pipeline::EventKind;
use ferry_engine::profile::Profile;
use ferry_engine::service::dispatch::Dispatcher;
use ferry_engine::store::{NewRun, Run, RunId, RunState, StepState, Store};
use ferry_tests::TempDir;

use ferry_tests::git;

/// Polls the store until run `id` is finished (at most a minute), returning it.
async fn finished(store: &Store, id: RunId) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(run) = store.get_run(id).await.expect("get run")
            && run.state.is_terminal()
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} did not finish within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a child process the way an operator does (SIGTERM) and waits for it.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry serve did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn embedded_defaults_run_the_demo_pipeline_to_the_end() {
    let dir = TempDir::new("main-job");
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("FERRY_DATABASE_URL")
        .env_remove("FERRY_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ferry serve starts");
    let db = dir.path().join("ferry.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.exists() {
        assert!(
            Instant::now() < deadline,
            "no ferry.db after 30 s; log:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("store");
    let id = RunId::new(1).expect("id");
    let run = finished(&store, id).await;
    let serve_log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}\n{}", serve_log());
    assert_eq!(
        (run.project.as_str(), run.pipeline.as_str()),
        ("demo", "demo")
    );
    assert_eq!(run.trigger, EventKind::Manual);
    let steps = store.steps(id).await.expect("steps");
    let states: Vec<(&str, StepState)> = steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        states,
        [
            ("prepare", StepState::Succeeded),
            ("train", StepState::Succeeded),
            ("lint", StepState::Succeeded),
            ("evaluate", StepState::Succeeded),
            ("deploy", StepState::Succeeded),
        ]
    );
    let evaluate = &steps[3];
    assert_eq!(
        evaluate.metrics,
        Some(serde_json::json!({"accuracy": 0.93, "loss": 0.21}))
    );
    let train_log = std::fs::read_to_string(dir.path().join("ferry-data/runs/1/logs/train.log"))
        .expect("train log on disk");
    assert!(train_log.contains("epoch 3/3"), "{train_log}");
    let text = serve_log();
    assert!(text.contains("demo run queued"), "{text}");
    store.close().await;
    let status = terminate(&mut child);
    assert!(
        status.success(),
        "graceful shutdown: {status}\n{}",
        serve_log()
    );
}

const PIPELINE: &str = r#"version: 1
name: model
on:
  push:
    branches: [main]
defaults: { image: img:1 }
steps:
  - name: train
    kind: train
    run: |
      if [ ! -f "$FERRY_WORKSPACE/tried" ]; then touch "$FERRY_WORKSPACE/tried"; echo flaky; exit 1; fi
      echo "trained at $FERRY_SHA" > "$FERRY_WORKSPACE/model"
    retries: 1
  - name: evaluate
    kind: evaluate
    needs: [train]
    run: |
      printf '{"accuracy": 0.5}' > "$FERRY_WORKSPACE/metrics.json"
    metrics: /workspace/metrics.json
  - name: deploy
    kind: deploy
    needs: [evaluate]
    if: { metrics: "accuracy >= 0.9" }
    run: echo deploying
"#;

/// A push of a pipeline with a flaky step and a metrics gate, run through `ferry serve`'s parts:
/// the retry is counted, the metrics are stored, the gate skips deploy, the run succeeds.
#[tokio::test]
async fn a_push_runs_locally_with_retries_metrics_and_gates() {
    let upstream = TempDir::new("exec-upstream");
    let up = upstream.path();
    git(up, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(up.join(".ferry")).expect("mkdir");
    std::fs::write(up.join(".ferry/model.yaml"), PIPELINE).expect("write");
    git(up, &["add", "-A"]);
    git(up, &["commit", "-q", "-m", "model"]);
    let sha = git(up, &["rev-parse", "HEAD"]);
    let data = TempDir::new("exec-data");
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let yaml = format!(
        "database_url: {db}\ndata_dir: {}\nlocal: {{ gpus: 0 }}\nprojects:\n  - {{ name: m, repo: \"file://{}\", forge: none }}\n",
        data.path().join("data").display(),
        up.display()
    );
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let store = Store::open(&db).await.expect("store");
    let profile = Arc::new(Profile::default());
    let planner = Arc::new(ferry_engine::service::planner::Planner::new(
        store.clone(),
        config.clone(),
        profile.clone(),
        data.path().join("data"),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wake = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(dispatcher.clone().run(wake.clone(), rx, stop_rx));
    let request = ferry_engine::service::manual::ManualRequest {
        project: "m".into(),
        pipeline: "model".into(),
        ..Default::default()
    };
    let id = planner.trigger(&request).await.expect("manual run");
    wake.notify_one();
    let run = finished(&store, id).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(run.sha, sha);
    let steps = store.steps(id).await.expect("steps");
    let view: Vec<(&str, StepState, i64)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.state, s.attempts))
        .collect();
    assert_eq!(
        view,
        [
            ("train", StepState::Succeeded, 2),
            ("evaluate", StepState::Succeeded, 1),
            ("deploy", StepState::Skipped, 0),
        ]
    );
    assert_eq!(steps[1].metrics, Some(serde_json::json!({"accuracy": 0.5})));
    let why = steps[2].message.clone().unwrap_or_default();
    assert!(why.contains("accuracy >= 0.9"), "{why}");
    // Every state change of the run and its steps is in the outbox, in order, for the reporter.
    let outbox = store.outbox_for_run(id).await.expect("outbox");
    let run_states: Vec<String> = outbox
        .iter()
        .filter(|o| o.kind == "run")
        .map(|o| o.payload["state"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(run_states, ["queued", "submitted", "running", "succeeded"]);
    let _ = stop_tx.send(true);
    task.await.expect("dispatcher stops");
    store.close().await;
}

fn new_run(project: &str, yaml: &str, steps: &[&str]) -> NewRun {
    NewRun {
        project: project.into(),
        pipeline: "p".into(),
        sha: "a".repeat(40),
        trigger: EventKind::Push,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        mr: None,
        params: Default::default(),
        pipeline_path: ".ferry/p.yaml".into(),
        pipeline_yaml: yaml.into(),
        problems: Vec::new(),
        initial: RunState::Queued,
        dedup_scope: None,
        steps: steps.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// After a restart the local executor has no processes: runs the store has as running are
/// failed with a clear message, and queued again when the pipeline allows retries.
#[tokio::test]
async fn a_restart_fails_lost_local_runs_and_requeues_retryable_ones() {
    let data = TempDir::new("exec-restart");
    let db = format!("sqlite://{}", data.path().join("ferry.db").display());
    let store = Store::open(&db).await.expect("store");
    let retry = "version: 1\nname: p\ndefaults: { image: i }\nsteps:\n  - { name: a, kind: train, run: x, retries: 2 }\n";
    let once = "version: 1\nname: p\ndefaults: { image: i }\nsteps:\n  - { name: a, kind: train, run: x }\n";
    let mut ids = Vec::new();
    for yaml in [retry, once] {
        let (id, _) = store
            .create_run(&new_run("m", yaml, &["a"]))
            .await
            .expect("run");
        store
            .transition_run(id, RunState::Queued, RunState::Submitted)
            .await
            .expect("submitted");
        store
            .transition_run(id, RunState::Submitted, RunState::Running)
            .await
            .expect("running");
        ids.push(id);
    }
    let config = Arc::new(
        Config::from_yaml(
            "ferry.yaml",
            "projects:\n  - { name: m, repo: \"file:///nowhere\", forge: none }\n",
        )
        .expect("config"),
    );
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let executor = LocalExecutor::new(
        LocalSettings {
            gpus: Some(0),
            ..LocalSettings::new(data.path().join("data"))
        },
        tx,
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        config,
        Arc::new(Profile::default()),
        Arc::new(executor),
        data.path().join("data"),
    );
    assert_eq!(dispatcher.reconcile().await.expect("reconcile"), 2);
    for id in &ids {
        let run = store.get_run(*id).await.expect("get").expect("run");
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(
            run.message.as_deref(),
            Some("interrupted by a restart of ferry")
        );
        let steps = store.steps(*id).await.expect("steps");
        assert_eq!(steps[0].state, StepState::Skipped, "{steps:?}");
    }
    let queued = store
        .runs_in_state(RunState::Queued, 10)
        .await
        .expect("queued");
    assert_eq!(
        queued.len(),
        1,
        "only the run whose pipeline retries is queued again"
    );
    assert_eq!(queued[0].rerun_of, Some(ids[0]));
    // A second reconcile (another restart) finds nothing left to do.
    assert_eq!(dispatcher.reconcile().await.expect("again"), 0);
    store.close().await;
}

fn repo_with(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("ferry-run");
    git(dir.path(), &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        dir.write(path, text);
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "files"]);
    dir
}

#[test]
fn ferry_run_succeeds_fails_and_refuses_undeclared_params() {
    let ok = "version: 1\nname: ok\nparams: { who: world }\ndefaults: { image: i }\nsteps:\n  - { name: hello, kind: task, run: 'echo \"hello $FERRY_PARAM_WHO\" > \"$FERRY_WORKSPACE/out\"; cat \"$FERRY_WORKSPACE/out\"' }\n  - { name: after, kind: task, needs: [hello], run: 'test -f \"$FERRY_WORKSPACE/out\"' }\n";
    let bad = "version: 1\nname: bad\ndefaults: { image: i }\nsteps:\n  - { name: boom, kind: task, run: 'echo about to fail; exit 3' }\n  - { name: never, kind: task, needs: [boom], run: 'true' }\n";
    let repo = repo_with(&[(".ferry/ok.yaml", ok), (".ferry/bad.yaml", bad)]);
    let data = repo.path().join(".git/ferry");

    let run = crate::ferry(repo.path(), &["run", "ok", "--param", "who=ferry"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("hello                succeeded"),
        "{run}"
    );
    assert!(
        run.stdout.contains("after                succeeded"),
        "{run}"
    );
    assert!(run.stdout.contains("run 1 succeeded"), "{run}");
    let logs = data.join("runs/1/logs");
    assert!(
        run.stdout.contains(&format!("logs: {}", logs.display())),
        "{run}"
    );
    let hello = std::fs::read_to_string(logs.join("hello.log")).expect("hello.log");
    assert!(hello.contains("hello ferry"), "{hello}");
    assert_eq!(
        git(repo.path(), &["status", "--porcelain"]),
        "",
        "nothing in the working tree"
    );

    let run = crate::ferry(repo.path(), &["run", "bad"]);
    assert_eq!(run.code, 1, "{run}");
    let boom = run
        .stdout
        .lines()
        .find(|l| l.starts_with("boom") && l.contains("failed"));
    assert!(
        boom.is_some_and(|l| l.ends_with(": exited with code 3")),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("never                skipped: needs `boom`, which failed"),
        "{run}"
    );
    assert!(run.stdout.contains("run 2 failed"), "{run}");
    // The end of the failed step's log is printed before the verdict.
    let tail = run
        .stdout
        .split_once("--- the end of `boom`'s log ---\n")
        .map(|(_, t)| t);
    assert!(
        tail.is_some_and(|t| t.starts_with(
            "--- ferry: step `boom`, attempt 1 of 1 ---\nabout to fail\nferry: attempt 1 failed: exited with code 3\n---\nrun 2 failed"
        )),
        "{run}"
    );

    let run = crate::ferry(repo.path(), &["run", "ok", "--param", "nope=1"]);
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr
            .contains("parameter `nope` is not declared by pipeline `ok` (declared: `who`)"),
        "{run}"
    );
}
