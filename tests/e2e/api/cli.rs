//! The CLI client against a whole server: `ferry serve` in process (or as a process, for the
//! README's quick start) and the `ferry` binary as a person runs it, with runs executed for real by
//! the local executor.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry::server::Loaded;
use ferry_engine::config::Config;
use ferry_engine::profile::Profile;
use ferry_engine::service::intake::Secrets;
use ferry_tests::TempDir;
use serde_json::{Value, json};

use super::{config_yaml, upstream};

/// `ferry serve` in process on 127.0.0.1, with its config file on disk for `ferry token`.
struct Live {
    url: String,
    config: PathBuf,
    dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _repo: TempDir,
}

async fn live() -> Live {
    let repo = TempDir::new("api-live-upstream");
    upstream(repo.path());
    let dir = TempDir::new("api-live");
    let yaml = config_yaml(dir.path(), repo.path(), "");
    let config = dir.write("ferry.yaml", &yaml);
    let loaded = Loaded {
        config: Config::from_yaml("ferry.yaml", &yaml).expect("config"),
        profile: Profile::default(),
        source: "test".into(),
        embedded: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ferry::server::serve_with(
        loaded,
        Secrets::new(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    Live {
        url,
        config,
        dir,
        stop: Some(stop),
        task,
        _repo: repo,
    }
}

/// The `ferry` binary as a client of one server, run in one directory.
struct Cli {
    dir: PathBuf,
    url: String,
}

impl Cli {
    /// Runs `ferry ARGS` with `FERRY_SERVER` at the server and `FERRY_TOKEN` as given.
    async fn ferry(&self, token: Option<&str>, args: &[&str]) -> ferry_tests::Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry-under-test"));
        command
            .args(args)
            .current_dir(&self.dir)
            .env("FERRY_SERVER", &self.url)
            .env_remove("FERRY_DATABASE_URL")
            .env_remove("FERRY_TOKEN");
        if let Some(token) = token {
            command.env("FERRY_TOKEN", token);
        }
        let cmdline = format!("ferry {}", args.join(" "));
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("ferry runs");
        ferry_tests::Run {
            cmdline,
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `ferry runs show ID --json`, until `done` says so (at most a minute).
    async fn show_until(
        &self,
        token: &str,
        id: i64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .ferry(Some(token), &["runs", "show", &id.to_string(), "--json"])
                .await;
            assert_eq!(out.code, 0, "{out}");
            let run: Value = serde_json::from_str(&out.stdout).expect("JSON");
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} not {what} within a minute: {run}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Live {
    fn cli(&self) -> Cli {
        Cli {
            dir: self.dir.path().to_path_buf(),
            url: self.url.clone(),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("join")
            .expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_triggers_a_run_that_succeeds_on_the_local_executor_and_manages_it() {
    let live = live().await;
    let server = live.cli();
    let config = live.config.display().to_string();

    // Tokens through the CLI, on the server's database.
    let created = server
        .ferry(
            None,
            &[
                "token", "create", "--config", &config, "--admin", "--name", "me",
            ],
        )
        .await;
    assert_eq!(created.code, 0, "{created}");
    let token = created.stdout.trim().to_owned();
    assert_eq!(
        created.stdout.lines().count(),
        1,
        "the token alone: {created}"
    );
    assert!(token.starts_with("ferry_"), "{created}");
    let unknown = server
        .ferry(
            None,
            &[
                "token",
                "create",
                "--config",
                &config,
                "--project",
                "gamma",
                "--name",
                "x",
            ],
        )
        .await;
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("--project `gamma` is not configured (projects: alpha, beta)"),
        "{unknown}"
    );
    let ci = server
        .ferry(
            None,
            &[
                "token",
                "create",
                "--config",
                &config,
                "--project",
                "beta",
                "--name",
                "ci",
            ],
        )
        .await;
    assert_eq!(ci.code, 0, "{ci}");

    // Trigger, then follow the run through `ferry runs show --json` until it succeeds.
    let out = server
        .ferry(
            Some(&token),
            &[
                "trigger",
                "alpha",
                "quick",
                "--param",
                "greeting=hi there",
                "--json",
            ],
        )
        .await;
    assert_eq!(out.code, 0, "{out}");
    let run: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let id = run["id"].as_i64().expect("id");
    assert_eq!(run["triggered_by"], "me");
    let run = server
        .show_until(&token, id, "finished", |r| {
            ["succeeded", "failed", "cancelled"].contains(&r["state"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["params"], json!({"greeting": "hi there"}));
    let states: Vec<&str> = run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["succeeded", "succeeded"]);
    assert_eq!(run["metrics"]["values"][0]["value"], 0.9);
    let log = std::fs::read_to_string(
        live.dir
            .path()
            .join(format!("data/runs/{id}/logs/hello.log")),
    )
    .expect("the step's log");
    assert!(log.contains("hi there"), "{log}");

    // Human output.
    let shown = server
        .ferry(Some(&token), &["runs", "show", &id.to_string()])
        .await;
    assert_eq!(shown.code, 0, "{shown}");
    assert!(
        shown
            .stdout
            .starts_with(&format!("run {id}  alpha/quick  succeeded")),
        "{shown}"
    );
    assert!(shown.stdout.contains("trigger   manual by me"), "{shown}");
    assert!(
        shown.stdout.contains("STEP") && shown.stdout.contains("evaluate"),
        "{shown}"
    );
    assert!(shown.stdout.contains("accuracy"), "{shown}");
    let listed = server.ferry(Some(&token), &["runs", "list"]).await;
    assert_eq!(listed.code, 0, "{listed}");
    let mut lines = listed.stdout.lines();
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with("ID  PROJECT  PIPELINE  STATE"),
        "{listed}"
    );
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with(&format!("{id}   alpha    quick     succeeded")),
        "{listed}"
    );
    let json_list = server
        .ferry(
            Some(&token),
            &[
                "runs",
                "list",
                "--project",
                "alpha",
                "--state",
                "succeeded",
                "--json",
            ],
        )
        .await;
    let page: Value = serde_json::from_str(&json_list.stdout).expect("JSON");
    assert_eq!(page["runs"][0]["id"], id);

    // Rerun, then cancel a slow run while it runs.
    let rerun = server
        .ferry(Some(&token), &["runs", "rerun", &id.to_string()])
        .await;
    assert_eq!(rerun.code, 0, "{rerun}");
    assert!(
        rerun.stdout.contains(&format!("(rerun of run {id})")),
        "{rerun}"
    );
    let failed_only = server
        .ferry(
            Some(&token),
            &["runs", "rerun", &id.to_string(), "--failed"],
        )
        .await;
    assert_eq!(failed_only.code, 1, "{failed_only}");
    assert!(
        failed_only.stderr.contains("the server refused (409)"),
        "{failed_only}"
    );
    let slow = server
        .ferry(
            Some(&token),
            &["trigger", "alpha", "slow", "--ref", "main", "--json"],
        )
        .await;
    let slow_id = serde_json::from_str::<Value>(&slow.stdout).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    server
        .show_until(&token, slow_id, "running", |r| {
            r["steps"][0]["state"] == "running"
        })
        .await;
    let cancel = server
        .ferry(Some(&token), &["runs", "cancel", &slow_id.to_string()])
        .await;
    assert_eq!(cancel.code, 0, "{cancel}");
    let cancelled = server
        .show_until(&token, slow_id, "cancelled", |r| r["state"] == "cancelled")
        .await;
    assert_eq!(cancelled["steps"][0]["state"], "cancelled", "{cancelled}");

    // Refusals: exit 1 with the server's message; a project token elsewhere; no token.
    let bad = server
        .ferry(
            Some(&token),
            &["trigger", "alpha", "quick", "--param", "nope=1"],
        )
        .await;
    assert_eq!(bad.code, 1, "{bad}");
    assert!(
        bad.stderr.contains("the server refused (422)") && bad.stderr.contains("params.nope"),
        "{bad}"
    );
    let ci_token = ci.stdout.trim();
    let other = server
        .ferry(Some(ci_token), &["runs", "show", &id.to_string()])
        .await;
    assert_eq!(other.code, 1, "{other}");
    assert!(other.stderr.contains("(403)"), "{other}");
    let anonymous = server.ferry(None, &["runs", "list"]).await;
    assert_eq!(anonymous.code, 1, "{anonymous}");
    assert!(anonymous.stderr.contains("set FERRY_TOKEN"), "{anonymous}");

    // Tokens listed (with last use), revoked by name, then refused.
    let tokens = server
        .ferry(None, &["token", "list", "--config", &config, "--json"])
        .await;
    let tokens: Value = serde_json::from_str(&tokens.stdout).expect("JSON");
    assert_eq!(tokens[0]["name"], "me");
    assert!(tokens[0]["last_used_at"].is_string(), "{tokens}");
    assert_eq!(tokens[1]["scope"], "project");
    assert_eq!(tokens[1]["project"], "beta");
    let revoked = server
        .ferry(None, &["token", "revoke", "ci", "--config", &config])
        .await;
    assert_eq!(revoked.code, 0, "{revoked}");
    let after = server.ferry(Some(ci_token), &["runs", "list"]).await;
    assert!(
        after.stderr.contains("(401)") && after.stderr.contains("unknown or revoked token"),
        "{after}"
    );

    // Not reaching a server at all is exit 2, naming it.
    let mut nowhere = server
        .ferry(
            Some(&token),
            &["runs", "list", "--server", "http://127.0.0.1:9"],
        )
        .await;
    nowhere.stderr = nowhere.stderr.trim().to_owned();
    assert_eq!(nowhere.code, 2, "{nowhere}");
    assert!(
        nowhere
            .stderr
            .contains("cannot reach the ferry server at http://127.0.0.1:9"),
        "{nowhere}"
    );
    live.stop().await;
}

/// The README's quick start: `ferry serve` on its embedded defaults, then `ferry token create`
/// in the same directory (no config: the same `ferry.db`) and `ferry trigger demo demo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_deliveries_that_failed_and_puts_one_back_in_line() {
    use ferry_engine::store::{EventState, Store};

    let live = live().await;
    let server = live.cli();
    let config = live.config.display().to_string();
    let created = server
        .ferry(
            None,
            &[
                "token", "create", "--config", &config, "--admin", "--name", "ops",
            ],
        )
        .await;
    assert_eq!(created.code, 0, "{created}");
    let token = created.stdout.trim().to_owned();

    let listed = server.ferry(Some(&token), &["events", "list"]).await;
    assert_eq!(listed.code, 0, "{listed}");
    assert_eq!(listed.stdout.trim(), "no deliveries are retrying or failed");

    // A delivery given up on, written to the server's own database.
    let db = format!("sqlite://{}", live.dir.path().join("ferry.db").display());
    let store = Store::open(&db).await.expect("the server's database");
    let error = "commit 1111 is not in the mirror";
    let id = ferry_tests::failed_delivery(&store, "alpha", "delivery-7", error).await;

    let listed = server
        .ferry(Some(&token), &["events", "list", "--state", "failed"])
        .await;
    assert_eq!(listed.code, 0, "{listed}");
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID  PROJECT  EVENT  STATE   ATTEMPTS  RECEIVED (UTC)"),
        "{listed}"
    );
    assert!(
        lines[1].starts_with(&format!("{}   alpha    ping   failed  10        ", id.0)),
        "{listed}"
    );
    assert!(
        lines[1].ends_with("commit 1111 is not in the mirror"),
        "{listed}"
    );
    let json = server
        .ferry(Some(&token), &["events", "list", "--json"])
        .await;
    let body: Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(body["events"][0]["delivery_key"], "delivery-7");

    let retried = server
        .ferry(Some(&token), &["events", "retry", &id.0.to_string()])
        .await;
    assert_eq!(retried.code, 0, "{retried}");
    assert_eq!(
        retried.stdout.trim(),
        format!("event {} (alpha) is back in line", id.0)
    );
    let stored = store.event_by_id(id).await.expect("get").expect("kept");
    assert_ne!(
        stored.state,
        EventState::Failed,
        "pending, or planned already"
    );
    let again = server
        .ferry(Some(&token), &["events", "retry", &id.0.to_string()])
        .await;
    assert_eq!(again.code, 1, "{again}");
    assert!(again.stderr.contains("the server refused (409)"), "{again}");
    store.close().await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_the_demo_again_through_the_api() {
    let dir = TempDir::new("api-readme");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Serve(Some(
        Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove("FERRY_DATABASE_URL")
            .env_remove("FERRY_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ferry serve starts"),
    ));
    let serve_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let text = serve_log();
        if let Some(rest) = text.split("listening listen=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "not listening after 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cli = Cli {
        dir: dir.path().to_path_buf(),
        url: format!("http://{addr}"),
    };
    let created = cli
        .ferry(None, &["token", "create", "--admin", "--name", "me"])
        .await;
    assert_eq!(created.code, 0, "{created}");
    let token = created.stdout.trim().to_owned();
    let scoped = cli
        .ferry(
            None,
            &["token", "create", "--project", "demo", "--name", "demo-ci"],
        )
        .await;
    assert_eq!(
        scoped.code, 0,
        "the demo project is known without a config: {scoped}"
    );
    let out = cli
        .ferry(
            Some(&token),
            &["trigger", "demo", "demo", "--param", "epochs=1", "--json"],
        )
        .await;
    assert_eq!(out.code, 0, "{out}\n{}", serve_log());
    let id = serde_json::from_str::<Value>(&out.stdout).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    let run = cli
        .show_until(&token, id, "finished", |r| {
            ["succeeded", "failed", "cancelled"].contains(&r["state"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", serve_log());
    assert_eq!(run["triggered_by"], "me");
    let mut serve = child.0.take().expect("running");
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.success(),
        "graceful shutdown: {status}\n{}",
        serve_log()
    );
}

/// A `ferry serve` process, killed if the test ends before stopping it.
struct Serve(Option<std::process::Child>);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
