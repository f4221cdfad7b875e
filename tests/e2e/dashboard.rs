//! The dashboard in headless Chromium, end to end: `ferry serve` in process (local executor, a
//! real git repository), runs made through the API, then a browser that signs in, reads the list,
//! opens runs (SVG graph coloured by state, GPU usage, metrics against the baseline, log tail),
//! presses "rerun failed" and sees the new run appear in another tab's list without reloading
//! (server-sent events). Screenshots go to `target/dashboard-screenshots/` for people to look at.
//!
//! Chromium comes from Debian (`apt-get install chromium`, done by `.ci/run`); without it the test
//! says `SKIPPED (chromium)` and passes.

mod cdp;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_engine::config::Config;
use ferry_engine::store::{RunId, RunState, Store, TokenScope};
use ferry_tests::TempDir;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::cdp::{Browser, Tab};

const PIPELINE: &str = r#"version: 1
name: train
on:
  push: {}
params:
  lr: "0.001"
defaults:
  image: python:3.12
steps:
  - name: prepare
    kind: task
    run: echo "preparing <data> & shards"
  - name: train
    kind: train
    needs: [prepare]
    resources: { gpu: 2, gpu_type: A100-80G }
    run: sh ./train.sh
  - name: lint
    kind: task
    needs: [prepare]
    run: echo lint ok
  - name: evaluate
    kind: evaluate
    needs: [train, lint]
    run: cp metrics.json "$FERRY_WORKSPACE/metrics.json"
    metrics: /workspace/metrics.json
"#;

const TRAIN_OK: &str = "echo \"epoch 1 lr=$FERRY_PARAM_LR\"\nsleep 2\necho \"epoch 2 done\"\n";
const TRAIN_FAILS: &str =
    "echo \"epoch 1 lr=$FERRY_PARAM_LR\"\necho 'CUDA error: out of memory <oom>' >&2\nexit 3\n";
/// A branch name git accepts that is also HTML.
const HOSTILE_BRANCH: &str = "exp/<i>x</i>&\"y\"";

use ferry_tests::git;

/// Commits the training script and metrics of one commit; returns its sha.
fn commit(repo: &Path, train: &str, metrics: &str, message: &str) -> String {
    std::fs::create_dir_all(repo.join(".ferry")).expect("mkdir");
    std::fs::write(repo.join(".ferry/train.yaml"), PIPELINE).expect("pipeline");
    std::fs::write(repo.join("train.sh"), train).expect("train.sh");
    std::fs::write(repo.join("metrics.json"), metrics).expect("metrics");
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// Where screenshots go: `<target dir>/dashboard-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ferry_tests::workspace_root().join("target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// `POST path` with a JSON body and a bearer token; returns the status and the JSON answer.
async fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer \
         {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// Waits (at most a minute) until run `id` is finished.
async fn finished(store: &Store, id: i64) -> RunState {
    let id = RunId::new(id).expect("id");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = store.get_run(id).await.expect("get").expect("run");
        if run.state.is_terminal() {
            return run.state;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} did not finish in a minute: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The runs the test makes, by id.
struct Runs {
    baseline: i64,
    better: i64,
    failed: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium() {
    let Some(chromium) = cdp::chromium_path() else {
        eprintln!(
            "SKIPPED (chromium): /usr/bin/chromium is not installed (apt-get install chromium; \
             .ci/run installs it)"
        );
        return;
    };
    let dir = TempDir::new("dashboard");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("repo");
    git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(
        &repo,
        TRAIN_OK,
        r#"{"accuracy": 0.91, "val_loss": 0.30}"#,
        "baseline",
    );
    let second = commit(
        &repo,
        TRAIN_OK,
        r#"{"accuracy": 0.93, "val_loss": 0.35}"#,
        "better",
    );
    git(&repo, &["checkout", "-q", "-b", HOSTILE_BRANCH]);
    let third = commit(
        &repo,
        TRAIN_FAILS,
        r#"{"accuracy": 0.5}"#,
        "breaks training",
    );

    let db = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let yaml = format!(
        "database_url: {db}\ndata_dir: {data}\nexecutor: local\nlocal: {{ gpus: 4 }}\n\
         dashboard_public: false\nprofile:\n  gpu_types:\n    A100-80G: {{ resource: nvidia.com/gpu }}\n\
         projects:\n  - {{ name: vision, repo: \"file://{repo}\", forge: none }}\n",
        data = dir.path().join("data").display(),
        repo = repo.display(),
    );
    let config = Config::from_yaml("ferry.yaml", &yaml).expect("config");
    let profile = config.profile.clone().unwrap_or_default();
    let loaded = ferry::server::Loaded {
        config,
        profile,
        source: "dashboard test".into(),
        embedded: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry::server::serve_with(
        loaded,
        Default::default(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    // A token, as `ferry token create --project vision --name dashboard-test` makes one.
    let store = Store::open(&db).await.expect("store");
    let (_, secret) = store
        .create_token("dashboard-test", &TokenScope::Project("vision".into()))
        .await
        .expect("token");
    let token = secret.expose().to_owned();

    // Three runs through the API, one after the other: the baseline on main, a better one on
    // main, and a failing one on a branch whose name is HTML.
    let mut ids = Vec::new();
    for (sha, git_ref, lr) in [
        (&first, "main", "0.001"),
        (&second, "main", "0.01"),
        (&third, HOSTILE_BRANCH, "0.1"),
    ] {
        let request = json!({"project": "vision", "pipeline": "train", "ref": git_ref, "sha": sha, "params": {"lr": lr}});
        let (status, run) = post(addr, "/api/v1/runs", &token, &request).await;
        assert_eq!(status, 201, "trigger: {run}");
        let id = run["id"].as_i64().expect("id");
        finished(&store, id).await;
        ids.push(id);
    }
    let runs = Runs {
        baseline: ids[0],
        better: ids[1],
        failed: ids[2],
    };
    for (id, want) in [
        (runs.baseline, RunState::Succeeded),
        (runs.better, RunState::Succeeded),
        (runs.failed, RunState::Failed),
    ] {
        assert_eq!(finished(&store, id).await, want, "run {id}");
    }

    // A delivery of a project since removed from `ferry.yaml`, given up on: the list says so.
    let error = "project `retired` is not configured";
    ferry_tests::failed_delivery(&store, "retired", "retired-1", error).await;

    let base = format!("http://{addr}");
    let shots = screenshot_dir();
    let profile_dir = dir.path().join("chromium-profile");
    let browse = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch(&chromium, &profile_dir);
        let lists = scenario(&mut browser, &base, &token, &runs, &shots);
        (browser, lists)
    });
    let (browser, list_tab) = match browse.await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let _ = list_tab;

    // The list tab still listens to /events: shutdown must end the stream, not wait for it.
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(joined) => joined.expect("join").expect("clean shutdown"),
        Err(_) => panic!("ferry serve did not stop within 30 s with an event stream open"),
    }
    drop(browser);
    store.close().await;
}

/// The browser's part; returns the list tab (still open, listening to `/events`).
fn scenario(browser: &mut Browser, base: &str, token: &str, runs: &Runs, shots: &Path) -> Tab {
    // Reads need a token: the first page is the sign-in page.
    let main = browser.open("main", &format!("{base}/"));
    browser.wait(
        &main,
        "document.getElementById('denied')",
        "the sign-in page",
    );
    browser.screenshot(&main, &shots.join("01-sign-in.png"));

    // Sign in through the box: the page reloads with the list.
    let token_js = serde_json::to_string(token).expect("json");
    browser.value(
        &main,
        &format!(
            "document.getElementById('token').value = {token_js}; \
             document.getElementById('signin').requestSubmit(); true"
        ),
    );
    browser.wait(
        &main,
        "document.querySelectorAll('table.runs tbody tr').length === 3",
        "the runs list",
    );
    let notice = browser.value(&main, "document.getElementById('troubled').textContent");
    assert!(
        notice.as_str().is_some_and(|t| t.starts_with(
            "1 delivery was given up on (its commit is gone, or its project was removed). ferry events list shows them"
        )),
        "{notice}"
    );
    let cookie_visible = browser.value(&main, "document.cookie.includes('ferry_token')");
    assert_eq!(cookie_visible, Value::Bool(false), "the cookie is HttpOnly");
    let states = browser.value(
        &main,
        "[...document.querySelectorAll('table.runs tbody tr')].map(r => [Number(r.dataset.run), r.dataset.state])",
    );
    assert_eq!(
        states,
        json!([
            [runs.failed, "failed"],
            [runs.better, "succeeded"],
            [runs.baseline, "succeeded"]
        ])
    );
    // The branch name is shown as text, not markup.
    let cell = browser.value(
        &main,
        &format!(
            "(() => {{ const c = document.querySelector('tr[data-run=\"{}\"] td.ref'); \
             return [c.textContent, c.querySelectorAll('i').length]; }})()",
            runs.failed
        ),
    );
    assert_eq!(cell, json!([HOSTILE_BRANCH, 0]));
    browser.wait(
        &main,
        "document.getElementById('live-state').dataset.state === 'live'",
        "live updates",
    );
    browser.screenshot(&main, &shots.join("02-runs.png"));

    // Filters: only failed runs.
    browser.navigate(&main, &format!("{base}/?state=failed"));
    let rows = browser.value(
        &main,
        "document.querySelectorAll('table.runs tbody tr').length",
    );
    assert_eq!(rows, json!(1), "the state filter");

    // The better run: graph coloured by state, GPUs, metrics against the baseline, log.
    browser.navigate(&main, &format!("{base}/runs/{}", runs.better));
    let nodes = browser.value(
        &main,
        "[...document.querySelectorAll('svg.graph .node')].map(n => [n.dataset.step, n.dataset.state])",
    );
    assert_eq!(
        nodes,
        json!([
            ["prepare", "succeeded"],
            ["train", "succeeded"],
            ["lint", "succeeded"],
            ["evaluate", "succeeded"]
        ])
    );
    let edges = browser.value(&main, "document.querySelectorAll('svg.graph .edge').length");
    assert_eq!(
        edges,
        json!(4),
        "prepare->train, prepare->lint, train->evaluate, lint->evaluate"
    );
    let gpus = browser.value(
        &main,
        "document.querySelector('table.steps tr[data-step=\"train\"]').children[5].textContent",
    );
    assert_eq!(gpus, json!("2 × A100-80G"));
    let verdicts = browser.value(
        &main,
        "[...document.querySelectorAll('table.metrics tbody tr')].map(r => [r.dataset.metric, r.lastElementChild.className])",
    );
    assert_eq!(
        verdicts,
        json!([
            ["accuracy", "verdict better"],
            ["val_loss", "verdict worse"]
        ])
    );
    let baseline = browser.value(
        &main,
        "document.querySelector('section.metrics p a').textContent",
    );
    assert_eq!(baseline, json!(format!("run #{}", runs.baseline)));
    let log = browser.value(&main, "document.querySelector('pre.log-tail').textContent");
    assert!(
        log.as_str()
            .is_some_and(|l| l.contains("evaluate") || !l.is_empty()),
        "a log tail: {log}"
    );
    browser.screenshot(&main, &shots.join("03-run.png"));

    // The failed run: its failed step, its log tail (escaped), and the buttons.
    browser.navigate(&main, &format!("{base}/runs/{}", runs.failed));
    let nodes = browser.value(
        &main,
        "[...document.querySelectorAll('svg.graph .node')].map(n => n.dataset.state)",
    );
    assert_eq!(
        nodes,
        json!(["succeeded", "failed", "succeeded", "skipped"])
    );
    let log = browser.value(&main, "document.querySelector('pre.log-tail').textContent");
    assert!(
        log.as_str()
            .is_some_and(|l| l.contains("CUDA error: out of memory <oom>")),
        "the failed step's log tail: {log}"
    );
    let enabled = browser.value(
        &main,
        "[...document.querySelectorAll('button.action')].map(b => !b.disabled)",
    );
    assert_eq!(
        enabled,
        json!([true, true]),
        "signed in: rerun buttons on, no cancel"
    );
    browser.screenshot(&main, &shots.join("04-failed-run.png"));

    // A second tab on the list, listening for changes.
    let list = browser.open("list", &format!("{base}/"));
    browser.wait(
        &list,
        "document.getElementById('live-state').dataset.state === 'live'",
        "live updates",
    );
    browser.value(&list, "window.notReloaded = true");

    // Rerun failed: the API queues a new run; the other tab shows it without reloading.
    browser.value(
        &main,
        "document.querySelector('button.action[data-failed=\"true\"]').click(); true",
    );
    browser.wait(
        &main,
        "document.querySelector('#flash a')",
        "the rerun's link",
    );
    let link = browser.value(
        &main,
        "document.querySelector('#flash a').getAttribute('href')",
    );
    let new_id: i64 = link
        .as_str()
        .and_then(|l| l.strip_prefix("/runs/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the flash links the new run: {link}"));
    assert!(new_id > runs.failed, "a new run: {new_id}");
    browser.screenshot(&main, &shots.join("05-rerun-queued.png"));
    browser.wait(
        &list,
        &format!("document.querySelector('tr[data-run=\"{new_id}\"]')"),
        "the new run in the list",
    );
    browser.wait(
        &list,
        &format!("document.querySelector('tr[data-run=\"{new_id}\"]').dataset.state === 'failed'"),
        "the new run's end in the list",
    );
    assert_eq!(
        browser.value(&list, "window.notReloaded === true"),
        json!(true),
        "updated in place"
    );
    browser.screenshot(&list, &shots.join("06-list-live.png"));

    let problems: Vec<String> = browser
        .problems()
        .into_iter()
        .filter(|p| !p.contains("status of 401"))
        .collect();
    assert!(problems.is_empty(), "errors in the browser: {problems:#?}");
    list
}
