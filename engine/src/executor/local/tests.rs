//! The local executor against real `sh` processes and a real bare git repository.
//!
//! Every wait is bounded and says what it waited for; nothing asserts on how long anything took.
//! Orderings (overlap, one-after-the-other) are proven with files the steps write and with the
//! snapshots the executor sends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use git2::{Oid, Repository, Signature};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::executor::{Job, Observation, StepObservation};
use crate::pipeline::{EventKind, Pipeline};
use crate::profile::Profile;
use crate::render::{RunContext, decide_skips};
use crate::store::{RunState, StepState};

const PROFILE: &str = r#"
gpu_types:
  A100-80G: { resource: nvidia.com/gpu }
limits: { max_gpus_per_step: 8, max_nodes: 4, max_timeout: 72h }
"#;

/// Longest wait for anything in these tests.
const PATIENCE: Duration = Duration::from_secs(60);

fn pipeline(yaml: &str) -> Arc<Pipeline> {
    let profile = Profile::from_yaml("profile.yaml", PROFILE).expect("test profile is valid");
    match crate::pipeline::load("p.yaml", yaml, Some(&profile)) {
        Ok(p) => Arc::new(p),
        Err(problems) => panic!("test pipeline is invalid:\n{problems}"),
    }
}

fn context(run_id: u64, sha: &str, params: &[(&str, &str)]) -> RunContext {
    RunContext {
        run_id,
        project: "demo".into(),
        repo_url: "file:///nowhere/demo.git".into(),
        sha: sha.into(),
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        merge_request: None,
        event: EventKind::Manual,
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        namespace: None,
        dashboard_url: None,
    }
}

fn id(n: i64) -> RunId {
    RunId::new(n).expect("positive run id")
}

/// An executor over a temporary data directory, and the other end of its observations.
struct Harness {
    dir: TempDir,
    exec: LocalExecutor,
    rx: mpsc::Receiver<Observation>,
    next: i64,
}

impl Harness {
    fn new(gpus: u32) -> Harness {
        Harness::with_env(gpus, &[])
    }

    /// `extra` joins `PATH` (taken from the test process) in the executor's environment source.
    fn with_env(gpus: u32, extra: &[(&str, &str)]) -> Harness {
        let dir = TempDir::new().expect("temp dir");
        let mut vars: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
        let settings = LocalSettings {
            data_dir: dir.path().join("data"),
            gpus: Some(gpus),
            stop_grace: Duration::from_millis(300),
            env: EnvSource::fixed(vars),
        };
        let (tx, rx) = mpsc::channel(1024);
        let exec = LocalExecutor::new(settings, tx);
        std::fs::create_dir_all(dir.path().join("work")).expect("work dir");
        Harness {
            dir,
            exec,
            rx,
            next: 0,
        }
    }

    /// The directory `Source::Dir` runs use.
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn workspace(&self, run: RunId) -> PathBuf {
        self.exec.run_dir(run).join("workspace")
    }

    fn job(&mut self, yaml: &str, source: Source, sha: &str, params: &[(&str, &str)]) -> Job {
        self.next += 1;
        let pipeline = pipeline(yaml);
        let ctx = context(self.next as u64, sha, params);
        Job {
            run_id: id(self.next),
            skipped: decide_skips(&pipeline, &ctx),
            pipeline,
            context: ctx,
            source,
        }
    }

    /// Submits a run of `yaml` in the work directory.
    async fn submit(&mut self, yaml: &str, params: &[(&str, &str)]) -> RunId {
        let job = self.job(yaml, Source::Dir(self.work()), &"a".repeat(40), params);
        self.exec.submit(&job).await.expect("submitted");
        job.run_id
    }

    /// Runs `yaml` in the work directory to its end: the final snapshot and every snapshot.
    async fn run(&mut self, yaml: &str) -> (Observation, Vec<Observation>) {
        let run = self.submit(yaml, &[]).await;
        self.finish(run).await
    }

    /// Waits for the final snapshot of `run`.
    async fn finish(&mut self, run: RunId) -> (Observation, Vec<Observation>) {
        let mut seen = Vec::new();
        let last = self.until(run, &mut seen, |o| o.phase.is_final()).await;
        (last, seen)
    }

    /// Waits for a snapshot of `run` matching `done`, collecting every snapshot of it in `seen`.
    async fn until(
        &mut self,
        run: RunId,
        seen: &mut Vec<Observation>,
        done: impl Fn(&Observation) -> bool,
    ) -> Observation {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(o)) if o.run_id == run => {
                    seen.push(o.clone());
                    if done(&o) {
                        return o;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the observation channel closed; seen: {seen:#?}"),
                Err(_) => panic!(
                    "run {run} did not reach the awaited state within {PATIENCE:?}; last: {:#?}",
                    seen.last()
                ),
            }
        }
    }
}

fn step<'a>(o: &'a Observation, name: &str) -> &'a StepObservation {
    o.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {o:#?}"))
}

fn message<'a>(o: &'a Observation, name: &str) -> &'a str {
    step(o, name).message.as_deref().unwrap_or("")
}

/// Waits until `path` exists (written by a step).
async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not written within {PATIENCE:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet, which runs nothing).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still runs after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `NAME=value` lines as a map.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A bare repository with one commit of `files`; returns it and the commit.
fn bare_repo(dir: &Path, files: &[(&str, &str)]) -> (PathBuf, Oid) {
    let path = dir.join("mirror.git");
    let repo = Repository::init_bare(&path).expect("init bare");
    let mut builder = repo.treebuilder(None).expect("tree builder");
    for (name, content) in files {
        let blob = repo.blob(content.as_bytes()).expect("blob");
        builder.insert(name, blob, 0o100644).expect("insert");
    }
    let tree = repo
        .find_tree(builder.write().expect("tree"))
        .expect("find tree");
    let sig = Signature::new(
        "Test",
        "test@example.com",
        &git2::Time::new(1_700_000_000, 0),
    )
    .expect("signature");
    let commit = repo
        .commit(Some("refs/heads/main"), &sig, &sig, "one", &tree, &[])
        .expect("commit");
    (path, commit)
}

const TRAIN_EVALUATE_DEPLOY: &str = r#"
version: 1
name: ted
params: { accuracy: "0.95" }
defaults: { image: img:1 }
steps:
  - name: train
    kind: train
    run: sh train.sh
  - name: evaluate
    kind: evaluate
    needs: [train]
    run: sh eval.sh
    metrics: /workspace/metrics.json
  - name: deploy
    kind: deploy
    needs: [evaluate]
    if: { metrics: "accuracy >= 0.9 && loss < 0.3" }
    run: echo deployed > "$FERRY_WORKSPACE/deployed"
"#;

#[tokio::test]
async fn train_evaluate_deploy_from_a_mirror_passes_or_skips_on_metrics() {
    let mut h = Harness::new(0);
    let (mirror, commit) = bare_repo(
        h.dir.path(),
        &[
            ("VERSION", "v1\n"),
            (
                "train.sh",
                r#"test "$(cat VERSION)" = v1; echo model > "$FERRY_WORKSPACE/model""#,
            ),
            (
                "eval.sh",
                r#"test -f "$FERRY_WORKSPACE/model"
printf '{"accuracy": %s, "loss": 0.1}' "$FERRY_PARAM_ACCURACY" > "$FERRY_WORKSPACE/metrics.json""#,
            ),
        ],
    );
    let sha = commit.to_string();

    let good = h.job(
        TRAIN_EVALUATE_DEPLOY,
        Source::Mirror(mirror.clone()),
        &sha,
        &[],
    );
    h.exec.submit(&good).await.expect("submitted");
    let (last, seen) = h.finish(good.run_id).await;
    assert_eq!(last.phase, Phase::Succeeded, "{last:#?}");
    assert_eq!(
        seen[0].phase,
        Phase::Pending,
        "the first snapshot: {:#?}",
        seen[0]
    );
    assert!(seen.iter().any(|o| o.phase == Phase::Running));
    for name in ["train", "evaluate", "deploy"] {
        assert_eq!(step(&last, name).state, StepState::Succeeded, "{last:#?}");
        assert_eq!(step(&last, name).attempts, 1);
    }
    assert_eq!(
        step(&last, "evaluate").metrics,
        Some(serde_json::json!({"accuracy": 0.95, "loss": 0.1}))
    );
    assert!(h.workspace(good.run_id).join("deployed").exists());
    assert!(
        !h.exec.run_dir(good.run_id).join("src").exists(),
        "the checkout is deleted at the end"
    );

    let bad = h.job(
        TRAIN_EVALUATE_DEPLOY,
        Source::Mirror(mirror),
        &sha,
        &[("accuracy", "0.5")],
    );
    h.exec.submit(&bad).await.expect("submitted");
    let (last, _) = h.finish(bad.run_id).await;
    assert_eq!(
        last.phase,
        Phase::Succeeded,
        "a gated-out step is no failure"
    );
    assert_eq!(step(&last, "evaluate").state, StepState::Succeeded);
    assert_eq!(step(&last, "deploy").state, StepState::Skipped);
    assert_eq!(
        message(&last, "deploy"),
        "`if.metrics` is false: accuracy >= 0.9 && loss < 0.3"
    );
    assert!(!h.workspace(bad.run_id).join("deployed").exists());
}

#[tokio::test]
async fn a_missing_metric_skips_and_is_named() {
    let mut h = Harness::new(0);
    let (last, _) = h
        .run(
            r#"
version: 1
name: gate
defaults: { image: img:1 }
steps:
  - name: evaluate
    kind: evaluate
    run: "echo '{\"loss\": 0.1}' > m.json"
    metrics: m.json
  - name: deploy
    kind: task
    needs: [evaluate]
    if: { metrics: "accuracy > 0.5 || loss < 0.01" }
    run: "true"
  - name: after
    kind: task
    needs: [deploy]
    run: "true"
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Succeeded, "{last:#?}");
    assert_eq!(
        message(&last, "deploy"),
        "`if.metrics` is false: accuracy > 0.5 || loss < 0.01 (no metric `accuracy`)"
    );
    assert_eq!(step(&last, "after").state, StepState::Skipped);
    assert_eq!(message(&last, "after"), "needs `deploy`, which is skipped");
}

#[tokio::test]
async fn submitting_twice_runs_once_and_a_missing_commit_is_rejected() {
    let mut h = Harness::new(0);
    let job = h.job(
        "version: 1\nname: once\ndefaults: { image: img:1 }\nsteps:\n  - { name: a, kind: task, run: 'echo x >> \"$FERRY_WORKSPACE/count\"' }\n",
        Source::Dir(h.work()),
        &"a".repeat(40),
        &[],
    );
    h.exec.submit(&job).await.expect("submitted");
    h.exec
        .submit(&job)
        .await
        .expect("a second submit is success");
    let (last, _) = h.finish(job.run_id).await;
    assert_eq!(last.phase, Phase::Succeeded);
    assert_eq!(read(&h.workspace(job.run_id).join("count")), "x\n");

    let (mirror, _) = bare_repo(h.dir.path(), &[("a", "a")]);
    let missing = h.job(
        "version: 1\nname: m\ndefaults: { image: img:1 }\nsteps:\n  - { name: a, kind: task, run: 'true' }\n",
        Source::Mirror(mirror),
        &"b".repeat(40),
        &[],
    );
    match h.exec.submit(&missing).await {
        Err(SubmitError::Rejected(m)) => assert!(m.contains("is not in the git mirror"), "{m}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn independent_steps_overlap() {
    let mut h = Harness::new(0);
    // Each step announces itself, then waits (bounded) for the other's announcement: both can
    // succeed only if they run at the same time.
    let (last, _) = h
        .run(
            r#"
version: 1
name: par
defaults: { image: img:1 }
steps:
  - name: a
    kind: task
    run: |
      echo a >> "$FERRY_WORKSPACE/ran"
      touch "$FERRY_WORKSPACE/a.started"
      i=0; until [ -e "$FERRY_WORKSPACE/b.started" ]; do i=$((i+1)); [ $i -lt 1500 ]; sleep 0.02; done
  - name: b
    kind: task
    run: |
      echo b >> "$FERRY_WORKSPACE/ran"
      touch "$FERRY_WORKSPACE/b.started"
      i=0; until [ -e "$FERRY_WORKSPACE/a.started" ]; do i=$((i+1)); [ $i -lt 1500 ]; sleep 0.02; done
  - name: c
    kind: task
    needs: [a, b]
    run: test -e "$FERRY_WORKSPACE/a.started" && test -e "$FERRY_WORKSPACE/b.started"
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Succeeded, "{last:#?}");
    assert_eq!(step(&last, "c").state, StepState::Succeeded);
    let mut ran: Vec<String> = read(&h.workspace(last.run_id).join("ran"))
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ["a", "b"], "each step runs once");
}

#[tokio::test]
async fn a_failure_skips_dependants_and_fails_the_run_with_the_exit_code() {
    let mut h = Harness::new(0);
    // `slow` ends only once the run has written `a` down as over, so `later` becomes ready after
    // the failure is known: it must not start (fail fast, like Argo's DAG).
    let (last, _) = h
        .run(
            r#"
version: 1
name: fail
defaults: { image: img:1 }
steps:
  - { name: a, kind: task, run: "echo before; exit 3; echo after" }
  - { name: b, kind: task, needs: [a], run: "true" }
  - { name: c, kind: task, needs: [b], run: "true" }
  - name: slow
    kind: task
    run: |
      i=0; until grep -qx a "$FERRY_WORKSPACE/../finished" 2>/dev/null; do i=$((i+1)); [ $i -lt 1500 ]; sleep 0.02; done
  - { name: later, kind: task, needs: [slow], run: "touch \"$FERRY_WORKSPACE/later\"" }
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Failed, "{last:#?}");
    assert_eq!(
        last.message.as_deref(),
        Some("step `a` failed: exited with code 3")
    );
    assert_eq!(step(&last, "a").state, StepState::Failed);
    assert_eq!(message(&last, "a"), "exited with code 3");
    assert_eq!(step(&last, "b").state, StepState::Skipped);
    assert_eq!(message(&last, "b"), "needs `a`, which failed");
    assert_eq!(message(&last, "c"), "needs `b`, which is skipped");
    assert_eq!(step(&last, "slow").state, StepState::Succeeded);
    assert_eq!(step(&last, "later").state, StepState::Skipped);
    assert_eq!(message(&last, "later"), "not started: step `a` failed");
    let log = read(&h.exec.log_path(last.run_id, "a", None));
    assert!(
        log.contains("before\n") && !log.contains("after\n"),
        "{log}"
    );
}

#[tokio::test]
async fn a_signal_is_named() {
    let mut h = Harness::new(0);
    let (last, _) = h
        .run("version: 1\nname: sig\ndefaults: { image: img:1 }\nsteps:\n  - { name: a, kind: task, run: 'kill -KILL $$' }\n")
        .await;
    assert_eq!(message(&last, "a"), "was killed by signal 9 (SIGKILL)");
}

#[tokio::test]
async fn retries_count_attempts_and_append_to_the_log() {
    let mut h = Harness::new(0);
    let (last, seen) = h
        .run(
            r#"
version: 1
name: retry
defaults: { image: img:1 }
steps:
  - name: flaky
    kind: task
    retries: 2
    run: |
      if [ ! -e "$FERRY_WORKSPACE/marker" ]; then touch "$FERRY_WORKSPACE/marker"; echo first; exit 1; fi
      echo second
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Succeeded, "{last:#?}");
    assert_eq!(step(&last, "flaky").attempts, 2);
    assert!(seen.iter().any(|o| {
        let s = step(o, "flaky");
        s.state == StepState::Running
            && s.attempts == 2
            && s.message.as_deref() == Some("attempt 1 failed: exited with code 1")
    }));
    let log = read(&h.exec.log_path(last.run_id, "flaky", None));
    assert_eq!(
        log,
        "--- ferry: step `flaky`, attempt 1 of 3 ---\nfirst\n\
         ferry: attempt 1 failed: exited with code 1\n\
         --- ferry: step `flaky`, attempt 2 of 3 ---\nsecond\n"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_step() {
    let mut h = Harness::new(0);
    let (last, _) = h
        .run(
            r#"
version: 1
name: slow
defaults: { image: img:1 }
steps:
  - name: forever
    kind: task
    timeout: 1s
    run: |
      sleep 1000 &
      echo $! > "$FERRY_WORKSPACE/child.pid.tmp"
      mv "$FERRY_WORKSPACE/child.pid.tmp" "$FERRY_WORKSPACE/child.pid"
      wait
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Failed, "{last:#?}");
    assert_eq!(message(&last, "forever"), "timed out after 1s");
    let pid: u32 = read(&h.workspace(last.run_id).join("child.pid"))
        .trim()
        .parse()
        .expect("pid");
    wait_gone(pid).await;
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group_and_cancels_pending_steps() {
    let mut h = Harness::new(0);
    let run = h
        .submit(
            r#"
version: 1
name: cancel
defaults: { image: img:1 }
steps:
  - name: long
    kind: task
    run: |
      sleep 1000 &
      echo $! > "$FERRY_WORKSPACE/grandchild.pid.tmp"
      mv "$FERRY_WORKSPACE/grandchild.pid.tmp" "$FERRY_WORKSPACE/grandchild.pid"
      wait
  - { name: next, kind: task, needs: [long], run: "true" }
"#,
            &[],
        )
        .await;
    let pid_file = h.workspace(run).join("grandchild.pid");
    wait_for_file(&pid_file).await;
    let mut seen = Vec::new();
    h.until(run, &mut seen, |o| {
        step(o, "long").state == StepState::Running
    })
    .await;

    // While it runs, a reconcile adopts it instead of calling it gone.
    let adopted = h
        .exec
        .reconcile(&[stored_run(run, "p.yaml", "not: used")])
        .await
        .expect("reconciled");
    assert_eq!(adopted[0].phase, Phase::Running, "{adopted:#?}");

    h.exec
        .cancel(run, None, CancelMode::Stop)
        .await
        .expect("cancelled");
    let (last, _) = h.finish(run).await;
    assert_eq!(last.phase, Phase::Cancelled, "{last:#?}");
    assert_eq!(step(&last, "long").state, StepState::Cancelled);
    assert_eq!(step(&last, "next").state, StepState::Cancelled);
    let pid: u32 = read(&pid_file).trim().parse().expect("pid");
    wait_gone(pid).await;
    h.exec
        .cancel(run, None, CancelMode::Terminate)
        .await
        .expect("cancelling a finished run is no error");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let mut h = Harness::new(0);
    // The script and its `sleep` (which inherits the ignored disposition) ignore SIGTERM.
    let run = h
        .submit(
            r#"
version: 1
name: stubborn
defaults: { image: img:1 }
steps:
  - name: deaf
    kind: task
    run: |
      trap '' TERM
      sleep 1000 &
      echo $! > "$FERRY_WORKSPACE/child.pid.tmp"
      mv "$FERRY_WORKSPACE/child.pid.tmp" "$FERRY_WORKSPACE/child.pid"
      wait
"#,
            &[],
        )
        .await;
    let pid_file = h.workspace(run).join("child.pid");
    wait_for_file(&pid_file).await;
    h.exec
        .cancel(run, None, CancelMode::Stop)
        .await
        .expect("cancelled");
    let (last, _) = h.finish(run).await;
    assert_eq!(last.phase, Phase::Cancelled, "{last:#?}");
    wait_gone(read(&pid_file).trim().parse().expect("pid")).await;
}

const TWO_BY_TWO: &str = r#"
version: 1
name: gpus
defaults: { image: img:1 }
steps:
  - name: x
    kind: train
    retries: 0
    resources: { gpu: 2, gpu_type: A100-80G }
    run: echo "$CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES" > "$FERRY_WORKSPACE/x.gpus"
  - name: y
    kind: train
    retries: 0
    resources: { gpu: 2, gpu_type: A100-80G }
    run: echo "$CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES" > "$FERRY_WORKSPACE/y.gpus"
  - name: cpu
    kind: task
    needs: [x, y]
    run: echo "[$CUDA_VISIBLE_DEVICES]" > "$FERRY_WORKSPACE/cpu.gpus"
"#;

#[tokio::test]
async fn gpus_are_exclusive_and_steps_wait_for_them() {
    let mut h = Harness::new(2);
    let (last, seen) = h.run(TWO_BY_TWO).await;
    assert_eq!(last.phase, Phase::Succeeded, "{last:#?}");
    // Snapshots are sent after every change: had x and y overlapped, one would show it.
    let both = |o: &Observation| {
        step(o, "x").state == StepState::Running && step(o, "y").state == StepState::Running
    };
    assert!(!seen.iter().any(both), "x and y ran together: {seen:#?}");
    assert!(
        seen.iter()
            .any(|o| message(o, "y") == "waiting for 2 free GPUs"),
        "{seen:#?}"
    );
    let ws = h.workspace(last.run_id);
    assert_eq!(read(&ws.join("x.gpus")), "0,1 0,1\n");
    assert_eq!(read(&ws.join("y.gpus")), "0,1 0,1\n");
    assert_eq!(read(&ws.join("cpu.gpus")), "[]\n");
}

#[tokio::test]
async fn a_step_needing_more_gpus_than_the_machine_has_fails_at_once() {
    let mut h = Harness::new(2);
    let cases = [
        (
            "{ name: huge, kind: train, resources: { gpu: 4, gpu_type: A100-80G }, run: 'true' }",
            "needs 4 GPUs, but the local executor has 2",
        ),
        (
            "{ name: huge, kind: train, nodes: 3, resources: { gpu: 1, gpu_type: A100-80G }, run: 'true' }",
            "needs 3 GPUs (1 on each of 3 nodes), but the local executor has 2",
        ),
    ];
    for (spec, expected) in cases {
        let yaml =
            format!("version: 1\nname: big\ndefaults: {{ image: img:1 }}\nsteps:\n  - {spec}\n");
        let (last, _) = h.run(&yaml).await;
        assert_eq!(last.phase, Phase::Failed, "{last:#?}");
        assert_eq!(step(&last, "huge").attempts, 0);
        assert_eq!(message(&last, "huge"), expected);
        assert_eq!(
            last.message.as_deref(),
            Some(format!("step `huge` failed: {expected}").as_str())
        );
    }
}

#[tokio::test]
async fn nodes_start_one_process_each_with_torchrun_variables() {
    let mut h = Harness::new(2);
    let (last, _) = h
        .run(
            r#"
version: 1
name: dist
defaults: { image: img:1 }
steps:
  - name: ddp
    kind: train
    nodes: 2
    retries: 0
    resources: { gpu: 1, gpu_type: A100-80G }
    run: |
      env > "$FERRY_WORKSPACE/node$NODE_RANK.env"
      echo "hello from $RANK"
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Succeeded, "{last:#?}");
    let ws = h.workspace(last.run_id);
    let (n0, n1) = (
        env_file(&ws.join("node0.env")),
        env_file(&ws.join("node1.env")),
    );
    for (rank, env) in [("0", &n0), ("1", &n1)] {
        assert_eq!(env["WORLD_SIZE"], "2");
        assert_eq!(env["NNODES"], "2");
        assert_eq!(env["NODE_RANK"], rank);
        assert_eq!(env["RANK"], rank);
        assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
        assert_eq!(env["NPROC_PER_NODE"], "1");
        assert_eq!(
            env["CUDA_VISIBLE_DEVICES"], rank,
            "each node has its own GPU"
        );
    }
    assert_eq!(n0["MASTER_PORT"], n1["MASTER_PORT"]);
    assert!(n0["MASTER_PORT"].parse::<u16>().is_ok_and(|p| p > 0));
    let log = read(&h.exec.log_path(last.run_id, "ddp", Some(1)));
    assert_eq!(log, "hello from 1\n");
}

#[tokio::test]
async fn one_failing_node_stops_the_others() {
    let mut h = Harness::new(0);
    let (last, _) = h
        .run(
            r#"
version: 1
name: dist
defaults: { image: img:1 }
steps:
  - name: ddp
    kind: train
    nodes: 2
    run: |
      if [ "$NODE_RANK" = 1 ]; then exit 4; fi
      sleep 1000 &
      # Written whole or not at all: node 0 may be killed at any instruction.
      echo $! > "$FERRY_WORKSPACE/master.pid.tmp"
      mv "$FERRY_WORKSPACE/master.pid.tmp" "$FERRY_WORKSPACE/master.pid"
      wait
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Failed, "{last:#?}");
    assert_eq!(message(&last, "ddp"), "node 1 exited with code 4");
    let pid_file = h.workspace(last.run_id).join("master.pid");
    if pid_file.exists() {
        wait_gone(read(&pid_file).trim().parse().expect("pid")).await;
    }
}

#[tokio::test]
async fn steps_get_ferry_variables_and_secrets_but_not_ferrys_environment() {
    let mut h = Harness::with_env(
        0,
        &[
            ("HOME", "/home/ferry-test"),
            ("FERRY_GITLAB_TOKEN", "do-not-leak"),
            ("FERRY_SECRET_WANDB_ENV_TEST_API_KEY", "s3cret"),
        ],
    );
    let run = h
        .submit(
            r#"
version: 1
name: envs
params: { lr: "0.1", epochs: "3" }
defaults:
  image: img:1
  env: { WANDB_MODE: offline }
steps:
  - name: show
    kind: evaluate
    secret_env: { WANDB_API_KEY: wandb-env-test/api-key }
    metrics: /workspace/m.json
    run: |
      env > "$FERRY_WORKSPACE/env.txt"
      echo '{}' > "$FERRY_WORKSPACE/m.json"
  - name: missing
    kind: task
    secret_env: { TOKEN: other-secret/token }
    run: "true"
"#,
            &[("lr", "0.5")],
        )
        .await;
    let (last, _) = h.finish(run).await;
    assert_eq!(step(&last, "show").state, StepState::Succeeded, "{last:#?}");
    assert_eq!(step(&last, "missing").state, StepState::Failed);
    assert_eq!(
        message(&last, "missing"),
        "secret `other-secret/token` for `TOKEN` is not available: set \
         FERRY_SECRET_OTHER_SECRET_TOKEN in ferry's environment (the local executor reads \
         Kubernetes secrets from there)"
    );
    let ws = h.workspace(run);
    let env = env_file(&ws.join("env.txt"));
    let expect = [
        ("HOME", "/home/ferry-test".to_owned()),
        ("FERRY_RUN_ID", run.to_string()),
        ("FERRY_SHA", "a".repeat(40)),
        ("FERRY_REF", "refs/heads/main".into()),
        ("FERRY_BRANCH", "main".into()),
        ("FERRY_TAG", String::new()),
        ("FERRY_MR", String::new()),
        ("FERRY_EVENT", "manual".into()),
        ("FERRY_REPO", "file:///nowhere/demo.git".into()),
        ("FERRY_PIPELINE", "envs".into()),
        ("FERRY_STEP", "show".into()),
        ("FERRY_WORKSPACE", ws.display().to_string()),
        (
            "FERRY_METRICS_FILE",
            ws.join("m.json").display().to_string(),
        ),
        ("FERRY_PARAM_LR", "0.5".into()),
        ("FERRY_PARAM_EPOCHS", "3".into()),
        ("WANDB_MODE", "offline".into()),
        ("WANDB_API_KEY", "s3cret".into()),
        ("CUDA_VISIBLE_DEVICES", String::new()),
        ("NODE_RANK", "0".into()),
    ];
    for (name, value) in expect {
        assert_eq!(env.get(name), Some(&value), "{name} in {env:#?}");
    }
    assert!(env.contains_key("FERRY_SCRATCH") && env.contains_key("FERRY_SCRIPT"));
    for absent in [
        "FERRY_GITLAB_TOKEN",
        "FERRY_SECRET_WANDB_ENV_TEST_API_KEY",
        "WORLD_SIZE",
    ] {
        assert!(!env.contains_key(absent), "{absent} leaked into {env:#?}");
    }
}

#[tokio::test]
async fn a_missing_or_non_object_metrics_file_fails_the_step() {
    let mut h = Harness::new(0);
    let (last, _) = h
        .run(
            r#"
version: 1
name: metrics
defaults: { image: img:1 }
steps:
  - { name: none, kind: evaluate, metrics: out/m.json, run: "true" }
  - { name: list, kind: evaluate, metrics: /workspace/m.json, run: "echo '[1, 2]' > \"$FERRY_WORKSPACE/m.json\"" }
  - { name: empty, kind: evaluate, metrics: ./e.json, run: ": > e.json" }
"#,
        )
        .await;
    assert_eq!(last.phase, Phase::Failed, "{last:#?}");
    let (work, ws) = (h.work(), h.workspace(last.run_id));
    assert_eq!(
        message(&last, "none"),
        format!(
            "metrics file {} was not written",
            work.join("out/m.json").display()
        )
    );
    assert_eq!(
        message(&last, "list"),
        format!(
            "metrics file {} is not a JSON object",
            ws.join("m.json").display()
        )
    );
    assert_eq!(
        message(&last, "empty"),
        format!(
            "metrics file {} was not written",
            work.join("e.json").display()
        )
    );
    let log = read(&h.exec.log_path(last.run_id, "list", None));
    let problem = format!(
        "metrics file {} is not a JSON object",
        ws.join("m.json").display()
    );
    assert_eq!(
        log,
        format!(
            "--- ferry: step `list`, attempt 1 of 1 ---\nferry: {problem}\nferry: attempt 1 failed: {problem}\n"
        )
    );
}

fn stored_run(run: RunId, path: &str, yaml: &str) -> crate::store::Run {
    crate::store::Run {
        id: run,
        project: "demo".into(),
        pipeline: "p".into(),
        sha: "a".repeat(40),
        trigger: EventKind::Push,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        mr: None,
        params: BTreeMap::new(),
        pipeline_path: path.into(),
        pipeline_yaml: yaml.into(),
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

/// Starts `sleep 1000` in a process group of its own, with `FERRY_WORKSPACE` set to `workspace`.
fn leftover(workspace: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sleep")
        .arg("1000")
        .env("FERRY_WORKSPACE", workspace)
        .process_group(0)
        .spawn()
        .expect("spawn sleep")
}

#[tokio::test]
async fn reconcile_marks_lost_runs_gone_requeues_by_retries_and_kills_leftovers() {
    let h = Harness::new(0);
    let retrying = "version: 1\nname: r\ndefaults: { image: img:1 }\nsteps:\n  - { name: a, kind: task, run: 'true' }\n  - { name: b, kind: task, retries: 2, run: 'true' }\n";
    let plain = "version: 1\nname: p\ndefaults: { image: img:1 }\nsteps:\n  - { name: a, kind: task, run: 'true' }\n";
    let (ours, theirs) = (id(1), id(2));
    for run in [ours, theirs] {
        std::fs::create_dir_all(h.workspace(run)).expect("run dir");
    }
    let checkout = h.exec.run_dir(ours).join("src");
    std::fs::create_dir_all(&checkout).expect("checkout");
    // Run 1 left a process of its own; run 2's recorded group now belongs to someone else.
    let mut mine = leftover(&h.workspace(ours));
    let mut foreign = leftover(Path::new("/elsewhere"));
    for (run, child) in [(ours, &mine), (theirs, &foreign)] {
        let pids = h.exec.run_dir(run).join(procs::PIDS_FILE);
        std::fs::write(&pids, format!("{}\n", child.id())).expect("pids");
    }
    // Run 3's retrying step was over before the restart.
    let done = id(3);
    std::fs::create_dir_all(h.exec.run_dir(done)).expect("run dir");
    std::fs::write(h.exec.run_dir(done).join("finished"), "a\nb\n").expect("finished");

    let runs = [
        stored_run(ours, ".ferry/r.yaml", retrying),
        stored_run(theirs, ".ferry/p.yaml", plain),
        stored_run(done, ".ferry/r.yaml", retrying),
        stored_run(id(4), ".ferry/x.yaml", "not: a pipeline"),
    ];
    let observed = h.exec.reconcile(&runs).await.expect("reconciled");
    let phases: Vec<(RunId, Phase)> = observed.iter().map(|o| (o.run_id, o.phase)).collect();
    assert_eq!(
        phases,
        vec![
            (ours, Phase::Gone { requeue: true }),
            (theirs, Phase::Gone { requeue: false }),
            (done, Phase::Gone { requeue: false }),
            (id(4), Phase::Gone { requeue: false }),
        ]
    );
    assert!(!checkout.exists(), "a lost run's checkout is deleted");
    for o in &observed {
        assert_eq!(
            o.message.as_deref(),
            Some("interrupted by a restart of ferry")
        );
        assert!(o.steps.is_empty());
    }
    let status = tokio::task::spawn_blocking(move || mine.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(!status.success(), "the leftover was killed: {status:?}");
    assert!(
        foreign.try_wait().expect("try_wait").is_none(),
        "a group without the run's marker is left alone"
    );
    foreign.kill().expect("kill");
    foreign.wait().expect("reap");
}

#[test]
fn nvidia_smi_lines_give_device_indices() {
    let text = "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1c2a)\n  MIG 1g.10gb Device 0: (UUID: MIG-x)\nGPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-77ef)\n";
    assert_eq!(gpu::parse_nvidia_smi(text), vec![0, 1]);
    assert!(gpu::parse_nvidia_smi("NVIDIA-SMI has failed\n").is_empty());
}

#[test]
fn secret_variables_are_upper_case_with_underscores() {
    let secret = crate::pipeline::SecretRef {
        name: "wandb.prod".into(),
        key: "api-key".into(),
    };
    assert_eq!(env::secret_var(&secret), "FERRY_SECRET_WANDB_PROD_API_KEY");
}

#[tokio::test]
async fn the_log_tail_of_a_failed_step_comes_with_the_secrets_it_could_see() {
    let mut h = Harness::with_env(0, &[("FERRY_SECRET_HUB_TOKEN", "hf_s3cret")]);
    let yaml = r#"
version: 1
name: tails
defaults: { image: img:1 }
steps:
  - name: train
    kind: train
    secret_env: { HF_TOKEN: hub/token }
    run: |
      for i in 1 2 3 4 5; do echo "epoch $i"; done
      echo "logging in with $HF_TOKEN"
      exit 3
"#;
    let job = h.job(yaml, Source::Dir(h.work()), &"a".repeat(40), &[]);
    h.exec.submit(&job).await.expect("submitted");
    let (last, _) = h.finish(job.run_id).await;
    assert_eq!(step(&last, "train").state, StepState::Failed);
    let request = LogRequest {
        run: job.run_id,
        namespace: None,
        pipeline: &job.pipeline,
        step: "train",
        lines: 3,
        bytes: 4096,
    };
    let got = h
        .exec
        .log_tail(request)
        .await
        .expect("read")
        .expect("a log");
    assert_eq!(got.secrets, ["hf_s3cret"]);
    let lines: Vec<&str> = got.text.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], "epoch 5");
    assert_eq!(
        lines[1], "logging in with hf_s3cret",
        "raw: the caller redacts"
    );
    assert!(lines[2].starts_with("ferry: attempt "), "{lines:?}");
    let missing = LogRequest {
        step: "nope",
        ..request
    };
    assert!(h.exec.log_tail(missing).await.expect("read").is_none());
}
