//! The HTTP API (`/api/v1`), its tokens and the CLI client (issue: manual runs and operations).
//!
//! Most tests drive the real router in process (`tower::ServiceExt::oneshot`) over a real SQLite
//! store and a real git repository, with no dispatcher running, so that runs stay where the test
//! put them. `cli` starts the whole server and uses the `ferry` binary as a person would: `ferry
//! token create`, `ferry trigger`, `ferry runs ...`, with runs executed for real by the local
//! executor.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use ferry::server::metrics::Metrics;
use ferry::server::{AppState, router};
use ferry_engine::config::Config;
use ferry_engine::event::{Actor, BranchChange, BranchPush, Event, ForgeKind, RepoIdentity};
use ferry_engine::executor::local::{LocalExecutor, LocalSettings};
use ferry_engine::pipeline::EventKind;
use ferry_engine::problem::Problem;
use ferry_engine::profile::Profile;
use ferry_engine::service::intake::Secrets;
use ferry_engine::service::planner::Planner;
use ferry_engine::store::{
    Failure, Inserted, MAX_EVENT_ATTEMPTS, NewRun, RunId, RunState, StepChange, StepState, Store,
    TokenScope,
};
use ferry_tests::TempDir;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

mod cli;

const QUICK: &str = r#"version: 1
name: quick
on:
  push:
    branches: [main]
params:
  greeting: "hello"
defaults: { image: img:1 }
steps:
  - name: hello
    kind: task
    run: echo "$FERRY_PARAM_GREETING"
  - name: evaluate
    kind: evaluate
    needs: [hello]
    run: |
      printf '{"accuracy": 0.9, "loss": 0.3}' > "$FERRY_WORKSPACE/metrics.json"
    metrics: /workspace/metrics.json
"#;

const SLOW: &str = r#"version: 1
name: slow
on:
  push:
    branches: [main]
defaults: { image: img:1 }
steps:
  - name: wait
    kind: task
    run: sleep 60
"#;

use ferry_tests::git;

/// A repository with `.ferry/quick.yaml` and `.ferry/slow.yaml` on `main`; returns its head.
fn upstream(dir: &Path) -> String {
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(dir.join(".ferry")).expect("mkdir");
    std::fs::write(dir.join(".ferry/quick.yaml"), QUICK).expect("write");
    std::fs::write(dir.join(".ferry/slow.yaml"), SLOW).expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "pipelines"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// The config of both harnesses: projects `alpha` and `beta` on the same repository.
fn config_yaml(data: &Path, repo: &Path, extra: &str) -> String {
    format!(
        "database_url: sqlite://{db}\ndata_dir: {data}\nlocal: {{ gpus: 0 }}\n\
         public_url: https://ferry.example.com/\n\
         argo: {{ ui_url: https://argo.example.com, namespace: ml }}\n{extra}\
         projects:\n\
         \x20 - {{ name: alpha, repo: \"file://{repo}\", forge: none, namespace: team-a }}\n\
         \x20 - {{ name: beta, repo: \"file://{repo}\", forge: none }}\n",
        db = data.join("ferry.db").display(),
        data = data.join("data").display(),
        repo = repo.display(),
    )
}

/// The router of a server with a real store, planner and repository, and no dispatcher.
struct Harness {
    app: Router,
    store: Store,
    /// An admin token's value.
    admin: String,
    /// A token of project `alpha`.
    alpha: String,
    /// The repository's head.
    sha: String,
    _observations: tokio::sync::mpsc::Receiver<ferry_engine::executor::Observation>,
    _dirs: (TempDir, TempDir),
}

/// An answer: status, headers, JSON body (`Null` when the body is not JSON).
struct Reply {
    status: u16,
    headers: axum::http::HeaderMap,
    json: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("(no error code)")
    }
}

/// A GitLab push of `sha` to `main` of `ml/alpha` by `ada`.
fn push_to_main(sha: &str) -> Event {
    Event {
        forge: ForgeKind::Gitlab,
        repo: RepoIdentity {
            full_name: "ml/alpha".into(),
            urls: vec![],
        },
        kind: ferry_engine::event::EventKind::BranchPush(BranchPush {
            branch: "main".into(),
            before: None,
            after: Some(sha.into()),
            change: BranchChange::Updated,
            head_message: None,
            pusher: Actor {
                login: "ada".into(),
                id: Some(1),
            },
            default_branch: Some("main".into()),
        }),
    }
}

async fn harness(extra_config: &str) -> Harness {
    let repo = TempDir::new("api-upstream");
    let sha = upstream(repo.path());
    let data = TempDir::new("api-data");
    let yaml = config_yaml(data.path(), repo.path(), extra_config);
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let store = Store::open(&config.database_url).await.expect("store");
    let planner = Planner::new(
        store.clone(),
        config.clone(),
        Arc::new(Profile::default()),
        data.path().join("data"),
    )
    .with_runs_created(Arc::new(Notify::new()));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let executor = LocalExecutor::new(
        LocalSettings {
            gpus: Some(0),
            ..LocalSettings::new(data.path().join("data"))
        },
        tx,
    );
    let (_, admin) = store
        .create_token("admin", &TokenScope::Admin)
        .await
        .expect("token");
    let (_, alpha) = store
        .create_token("alpha-ci", &TokenScope::Project("alpha".into()))
        .await
        .expect("token");
    let state = AppState {
        config,
        store: store.clone(),
        secrets: Arc::new(Secrets::new()),
        metrics: Arc::new(Metrics::default()),
        planner_wake: Arc::new(Notify::new()),
        planner: Arc::new(planner),
        executor: Arc::new(executor),
        live: ferry::server::dashboard::Live::default(),
    };
    Harness {
        app: router(state),
        store,
        admin: admin.expose().to_owned(),
        alpha: alpha.expose().to_owned(),
        sha,
        _observations: rx,
        _dirs: (repo, data),
    }
}

impl Harness {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).expect("request"))
            .await
            .expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        Reply {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, token, "").await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call("POST", path, token, &body.to_string()).await
    }

    /// The ids of `GET /api/v1/runs{query}` (as admin), and its cursor.
    async fn list(&self, query: &str) -> (Vec<i64>, Value) {
        let reply = self
            .get(&format!("/api/v1/runs{query}"), Some(&self.admin))
            .await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.json);
        let ids = reply.json["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| r["id"].as_i64().expect("id"))
            .collect();
        (ids, reply.json["next_cursor"].clone())
    }

    /// A run stored directly (queued, `hello` and `evaluate` pending).
    async fn stored_run(&self, project: &str, branch: Option<&str>, mr: Option<i64>) -> RunId {
        let run = NewRun {
            project: project.into(),
            pipeline: "quick".into(),
            sha: self.sha.clone(),
            trigger: if mr.is_some() {
                EventKind::MergeRequest
            } else {
                EventKind::Push
            },
            event_id: None,
            rerun_of: None,
            git_ref: branch.map_or("refs/tags/v1".into(), |b| format!("refs/heads/{b}")),
            branch: branch.map(str::to_owned),
            tag: None,
            mr,
            params: [("greeting".to_owned(), json!("hello"))].into(),
            pipeline_path: ".ferry/quick.yaml".into(),
            pipeline_yaml: QUICK.into(),
            problems: Vec::new(),
            initial: RunState::Queued,
            dedup_scope: None,
            steps: vec!["hello".into(), "evaluate".into()],
        };
        self.store.create_run(&run).await.expect("run").0
    }

    /// Walks a stored run to `to` through the executor's path, its steps too (`evaluate`
    /// publishing `accuracy` when the run succeeds).
    async fn finish(&self, id: RunId, to: RunState, accuracy: f64) {
        let s = &self.store;
        s.transition_run(id, RunState::Queued, RunState::Submitted)
            .await
            .expect("submitted");
        s.transition_run(id, RunState::Submitted, RunState::Running)
            .await
            .expect("running");
        for step in ["hello", "evaluate"] {
            s.transition_step(
                id,
                step,
                StepState::Pending,
                StepState::Running,
                &StepChange::default(),
            )
            .await
            .expect("step running");
        }
        let (hello, evaluate) = match to {
            RunState::Succeeded => (StepState::Succeeded, StepState::Succeeded),
            _ => (StepState::Succeeded, StepState::Failed),
        };
        s.transition_step(
            id,
            "hello",
            StepState::Running,
            hello,
            &StepChange::default(),
        )
        .await
        .expect("hello");
        let change = StepChange {
            message: (evaluate == StepState::Failed).then(|| "exit 1".to_owned()),
            metrics: (evaluate == StepState::Succeeded)
                .then(|| json!({"accuracy": accuracy, "loss": 0.5, "note": "text"})),
        };
        s.transition_step(id, "evaluate", StepState::Running, evaluate, &change)
            .await
            .expect("evaluate");
        s.transition_run(id, RunState::Running, to)
            .await
            .expect("run");
    }
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_every_route_answers() {
    let h = harness("").await;
    let doc = h.get("/api/openapi.json", None).await;
    assert_eq!(doc.status, 200, "the document needs no token");
    assert_eq!(doc.json["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc.json["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("GET", "/api/v1/runs"),
        ("POST", "/api/v1/runs"),
        ("GET", "/api/v1/runs/{id}"),
        ("POST", "/api/v1/runs/{id}/rerun"),
        ("POST", "/api/v1/runs/{id}/cancel"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/events/{id}/retry"),
        ("GET", "/api/openapi.json"),
        ("POST", "/hooks/gitlab"),
        ("POST", "/hooks/github"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);
    let table: BTreeSet<(String, String)> = ferry::server::api::endpoints()
        .iter()
        .map(|e| (e.method.as_str().to_owned(), e.path.to_owned()))
        .collect();
    assert_eq!(documented, table, "the document is the route table");

    // Every documented route is served by the router (no token: 401 where one is needed), and
    // the methods it does not document are refused with 405.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "1");
        let reply = h.call(method, &concrete, None, "").await;
        let op = &doc.json["paths"][path][method.to_lowercase()];
        let needs_token = op["security"] == json!([{"bearer": []}])
            || op["security"] == json!([{"bearer": []}, {}]);
        if needs_token {
            assert_eq!(reply.status, 401, "{method} {path}");
            assert_eq!(reply.code(), "unauthorized", "{method} {path}");
        } else {
            assert!(
                ![404, 405].contains(&reply.status),
                "{method} {path} is documented but answers {}",
                reply.status
            );
        }
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if documented.contains(&(other.to_owned(), path.clone())) || !path.starts_with("/api") {
                continue;
            }
            let reply = h.call(other, &concrete, Some(&h.admin), "").await;
            assert_eq!(reply.status, 405, "{other} {path}");
            assert_eq!(reply.code(), "method_not_allowed");
        }
    }
    let unknown = h.get("/api/v1/nothing", Some(&h.admin)).await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    let schemas = doc.json["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for name in [
        "RunSummary",
        "RunDetail",
        "RunList",
        "TriggerRequest",
        "ErrorBody",
        "RunState",
        "DeliveryList",
        "DeliverySummary",
    ] {
        assert!(schemas.contains_key(name), "components.schemas.{name}");
    }
    assert_eq!(
        doc.json["paths"]["/api/v1/runs"]["post"]["responses"]["422"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_needed_checked_and_scoped_to_their_project() {
    let h = harness("").await;
    let beta_run = h.stored_run("beta", Some("main"), None).await;
    let alpha_run = h.stored_run("alpha", Some("main"), None).await;

    let none = h.get("/api/v1/runs", None).await;
    assert_eq!((none.status, none.code()), (401, "unauthorized"));
    assert_eq!(
        none.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(b"Bearer realm=\"ferry\"".as_slice())
    );
    let bad = h.get("/api/v1/runs", Some("ferry_0000")).await;
    assert_eq!(
        (bad.status, bad.json["error"]["message"].as_str()),
        (401, Some("unknown or revoked token"))
    );
    let mut request = Request::get("/api/v1/runs")
        .header("authorization", format!("Basic {}", h.admin))
        .body(Body::empty())
        .expect("request");
    let status = h
        .app
        .clone()
        .oneshot(request)
        .await
        .expect("answer")
        .status();
    assert_eq!(status, 401, "only the Bearer scheme");
    request = Request::get("/api/v1/runs")
        .header("authorization", format!("bearer {}", h.admin))
        .body(Body::empty())
        .expect("request");
    let status = h
        .app
        .clone()
        .oneshot(request)
        .await
        .expect("answer")
        .status();
    assert_eq!(status, 200, "the scheme is case-insensitive");

    // A project token sees its project only.
    let mine = h.get("/api/v1/runs", Some(&h.alpha)).await;
    assert_eq!(mine.status, 200);
    let ids: Vec<i64> = mine.json["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [alpha_run.get()]);
    let other = h.get("/api/v1/runs?project=beta", Some(&h.alpha)).await;
    assert_eq!((other.status, other.code()), (403, "forbidden"));
    assert_eq!(
        other.json["error"]["message"],
        "token `alpha-ci` is scoped to project alpha, not project `beta`"
    );
    let beta = format!("/api/v1/runs/{beta_run}");
    assert_eq!(h.get(&beta, Some(&h.alpha)).await.status, 403);
    assert_eq!(h.get(&beta, Some(&h.admin)).await.status, 200);
    let trigger = json!({"project": "beta", "pipeline": "quick"});
    assert_eq!(
        h.post("/api/v1/runs", Some(&h.alpha), trigger).await.status,
        403
    );
    for action in ["rerun", "cancel"] {
        let path = format!("{beta}/{action}");
        assert_eq!(
            h.post(&path, Some(&h.alpha), json!({})).await.status,
            403,
            "{action}"
        );
    }
    assert_eq!(
        h.store
            .get_run(beta_run)
            .await
            .expect("get")
            .expect("run")
            .state,
        RunState::Queued,
        "nothing happened to beta's run"
    );

    // Revoked: 401 from then on; last use is recorded.
    let listed = h.store.list_tokens().await.expect("tokens");
    assert!(
        listed.iter().all(|t| t.last_used_at.is_some()),
        "{listed:?}"
    );
    h.store.revoke_token("alpha-ci").await.expect("revoke");
    let revoked = h.get("/api/v1/runs", Some(&h.alpha)).await;
    assert_eq!((revoked.status, revoked.code()), (401, "unauthorized"));
}

#[tokio::test]
async fn dashboard_public_opens_reads_but_not_writes() {
    let h = harness("dashboard_public: true\n").await;
    let id = h.stored_run("beta", Some("main"), None).await;
    assert_eq!(h.get("/api/v1/runs", None).await.status, 200);
    assert_eq!(h.get(&format!("/api/v1/runs/{id}"), None).await.status, 200);
    let write = h
        .post(
            "/api/v1/runs",
            None,
            json!({"project": "beta", "pipeline": "quick"}),
        )
        .await;
    assert_eq!((write.status, write.code()), (401, "unauthorized"));
    let cancel = h
        .post(&format!("/api/v1/runs/{id}/cancel"), None, json!({}))
        .await;
    assert_eq!(cancel.status, 401);
    let wrong = h.get("/api/v1/runs", Some("ferry_wrong")).await;
    assert_eq!(wrong.status, 401, "a token that is given is checked");
    // A valid token does not narrow what anyone may read...
    let read = h.get(&format!("/api/v1/runs/{id}"), Some(&h.alpha)).await;
    assert_eq!(read.status, 200);
    let listed = h.get("/api/v1/runs", Some(&h.alpha)).await;
    assert_eq!(listed.json["runs"][0]["project"], "beta");
    // ...but a project token still cannot write elsewhere.
    let rerun = h
        .post(
            &format!("/api/v1/runs/{id}/rerun"),
            Some(&h.alpha),
            json!({}),
        )
        .await;
    assert_eq!(rerun.status, 403);
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn trigger_queues_a_run_with_its_parameters_and_says_what_is_wrong() {
    let h = harness("").await;
    let ok = h
        .post(
            "/api/v1/runs",
            Some(&h.alpha),
            json!({"project": "alpha", "pipeline": "quick", "ref": "main",
                   "params": {"greeting": 42}}),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.json);
    let id = ok.json["id"].as_i64().expect("id");
    assert_eq!(
        ok.headers.get("location").map(|v| v.as_bytes()),
        Some(format!("/api/v1/runs/{id}").as_bytes())
    );
    assert_eq!(ok.json["state"], "queued");
    assert_eq!(ok.json["trigger"], "manual");
    assert_eq!(ok.json["triggered_by"], "alpha-ci");
    assert_eq!(ok.json["sha"], h.sha.as_str());
    assert_eq!(ok.json["ref"], "refs/heads/main");
    let run = h
        .store
        .get_run(RunId::new(id).expect("id"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(run.params["greeting"], json!("42"));
    assert_eq!(run.triggered_by.as_deref(), Some("alpha-ci"));
    let by_sha = h
        .post(
            "/api/v1/runs",
            Some(&h.admin),
            json!({"project": "beta", "pipeline": "quick", "sha": h.sha}),
        )
        .await;
    assert_eq!(by_sha.status, 201, "{}", by_sha.json);
    assert_eq!(by_sha.json["triggered_by"], "admin");

    // 422: each problem named, with its field.
    let cases = [
        (
            json!({"project": "alpha", "pipeline": "quick", "params": {"greting": "x", "lr": 1}}),
            vec!["params.greting", "params.lr"],
        ),
        (
            json!({"project": "alpha", "pipeline": "nope"}),
            vec!["pipeline"],
        ),
        (
            json!({"project": "alpha", "pipeline": "quick", "ref": "no-such-branch"}),
            vec!["ref"],
        ),
        (
            json!({"project": "alpha", "pipeline": "quick", "sha": "abc"}),
            vec!["sha"],
        ),
        (
            json!({"project": "alpha", "pipeline": "quick", "sha": "0".repeat(40)}),
            vec!["sha"],
        ),
        (
            json!({"project": "alpha", "pipeline": "quick", "params": {"greeting": {"a": 1}}}),
            vec!["params.greeting"],
        ),
        (
            json!({"project": "gamma", "pipeline": "quick"}),
            vec!["project"],
        ),
    ];
    for (body, fields) in cases {
        let reply = h.post("/api/v1/runs", Some(&h.admin), body.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "validation_failed"),
            "{body}: {}",
            reply.json
        );
        let got: Vec<&str> = reply.json["error"]["details"]
            .as_array()
            .expect("details")
            .iter()
            .map(|d| d["field"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(got, fields, "{body}: {}", reply.json);
    }
    let undeclared = h
        .post(
            "/api/v1/runs",
            Some(&h.admin),
            json!({"project": "alpha", "pipeline": "quick", "params": {"lr": 1}}),
        )
        .await;
    let message = undeclared.json["error"]["details"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("lr") && message.contains("greeting"),
        "{message}"
    );

    let unknown_field = h
        .post(
            "/api/v1/runs",
            Some(&h.admin),
            json!({"project": "alpha", "pipeline": "quick", "branch": "x"}),
        )
        .await;
    assert_eq!(unknown_field.status, 422);
    assert!(
        unknown_field.json["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown field `branch`"),
        "{}",
        unknown_field.json
    );
    let missing = h
        .post("/api/v1/runs", Some(&h.admin), json!({"project": "alpha"}))
        .await;
    assert_eq!(missing.status, 422);
    let malformed = h
        .call("POST", "/api/v1/runs", Some(&h.admin), "{not json")
        .await;
    assert_eq!((malformed.status, malformed.code()), (400, "bad_request"));
    let runs = h
        .store
        .list_runs(&Default::default(), Default::default())
        .await
        .expect("list");
    assert_eq!(
        runs.runs.len(),
        2,
        "nothing was created by refused requests"
    );
}

#[tokio::test]
async fn runs_are_listed_with_filters_and_a_cursor() {
    let h = harness("").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mr = (i % 3 == 0).then_some(7);
        let branch = if i % 2 == 0 { "main" } else { "dev" };
        ids.push(h.stored_run("alpha", Some(branch), mr).await);
    }
    h.store
        .transition_run(ids[6], RunState::Queued, RunState::Cancelled)
        .await
        .expect("cancel");
    let id = |i: usize| ids[i].get();
    assert_eq!(h.list("").await.0, (0..7).rev().map(id).collect::<Vec<_>>());
    assert_eq!(h.list("?branch=dev").await.0, [id(5), id(3), id(1)]);
    assert_eq!(h.list("?merge_request=7").await.0, [id(6), id(3), id(0)]);
    assert_eq!(h.list("?state=cancelled").await.0, [id(6)]);
    assert_eq!(
        h.list("?project=alpha&pipeline=quick&trigger=push&branch=main")
            .await
            .0,
        [id(4), id(2)]
    );
    assert_eq!(
        h.list(&format!("?sha={}", "f".repeat(40))).await.0,
        Vec::<i64>::new()
    );

    // Pages of 3: 3, 3, 1, no overlap, then no cursor.
    let (first, cursor) = h.list("?limit=3").await;
    assert_eq!(first, [id(6), id(5), id(4)]);
    let cursor = cursor.as_str().expect("a cursor").to_owned();
    let second = h
        .get(
            &format!("/api/v1/runs?limit=3&cursor={cursor}"),
            Some(&h.admin),
        )
        .await;
    assert_eq!(second.json["runs"][0]["id"], id(3));
    let third = h
        .get(
            &format!(
                "/api/v1/runs?limit=3&cursor={}",
                second.json["next_cursor"].as_str().expect("cursor")
            ),
            Some(&h.admin),
        )
        .await;
    assert_eq!(third.json["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(third.json["next_cursor"], Value::Null);

    for bad in [
        "?state=done",
        "?limit=0",
        "?limit=501",
        "?cursor=abc",
        "?mr=7",
        "?merge_request=seven",
    ] {
        let reply = h.get(&format!("/api/v1/runs{bad}"), Some(&h.admin)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "bad_request"),
            "{bad}: {}",
            reply.json
        );
    }
    let reply = h.get("/api/v1/runs?state=done", Some(&h.admin)).await;
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("queued"),
        "names the allowed states: {}",
        reply.json
    );
}

#[tokio::test]
async fn a_run_shows_steps_metrics_against_the_baseline_links_and_who() {
    let h = harness("").await;
    let baseline = h.stored_run("alpha", Some("main"), None).await;
    h.finish(baseline, RunState::Succeeded, 0.8).await;
    // A run started by a push delivery: the event names the pusher.
    let event = push_to_main(&h.sha);
    let Inserted::New(event_id) = h
        .store
        .insert_event("alpha", ForgeKind::Gitlab, "delivery-1", &event)
        .await
        .expect("event")
    else {
        panic!("a new delivery");
    };
    let run = h.store.get_run(baseline).await.expect("get").expect("run");
    let new = NewRun {
        project: run.project,
        pipeline: run.pipeline,
        sha: run.sha,
        trigger: EventKind::Push,
        event_id: Some(event_id),
        rerun_of: None,
        git_ref: run.git_ref,
        branch: run.branch,
        tag: None,
        mr: None,
        params: run.params,
        pipeline_path: run.pipeline_path,
        pipeline_yaml: run.pipeline_yaml,
        problems: Vec::new(),
        initial: RunState::Queued,
        dedup_scope: Some("main".into()),
        steps: vec!["hello".into(), "evaluate".into()],
    };
    let (id, _) = h.store.create_run(&new).await.expect("run");
    h.finish(id, RunState::Succeeded, 0.9).await;

    let reply = h.get(&format!("/api/v1/runs/{id}"), Some(&h.alpha)).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let d = &reply.json;
    assert_eq!(d["id"], id.get());
    assert_eq!(d["state"], "succeeded");
    assert_eq!(d["trigger"], "push");
    assert_eq!(d["triggered_by"], Value::Null);
    assert_eq!(
        d["event"],
        json!({"id": event_id.0, "forge": "gitlab", "actor": "ada"})
    );
    assert_eq!(d["params"], json!({"greeting": "hello"}));
    assert_eq!(d["pipeline_path"], ".ferry/quick.yaml");
    assert!(d["created_at"].as_str().expect("time").ends_with('Z'));
    assert!(d["duration_ms"].as_i64().is_some());
    let steps: Vec<(&str, &str, i64)> = d["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name"),
                s["state"].as_str().expect("state"),
                s["attempts"].as_i64().expect("attempts"),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [("hello", "succeeded", 1), ("evaluate", "succeeded", 1)]
    );
    assert!(d["steps"][0]["started_at"].is_string() && d["steps"][0]["finished_at"].is_string());
    assert_eq!(d["metrics"]["baseline_run"], baseline.get());
    assert_eq!(d["metrics"]["baseline_branch"], "main");
    let values = d["metrics"]["values"].as_array().expect("values");
    assert_eq!(values.len(), 2, "numeric metrics only: {values:?}");
    assert_eq!(values[0]["name"], "accuracy");
    assert_eq!(values[0]["value"], 0.9);
    assert_eq!(values[0]["baseline"], 0.8);
    assert!((values[0]["change"].as_f64().expect("change") - 0.1).abs() < 1e-9);
    assert_eq!(values[0]["verdict"], "better");
    assert_eq!(values[1]["name"], "loss");
    assert_eq!(values[1]["verdict"], "same");
    assert_eq!(values[1]["lower_is_better"], true);
    assert_eq!(
        d["links"],
        json!({
            "dashboard": format!("https://ferry.example.com/runs/{id}"),
            "argo": format!("https://argo.example.com/workflows/team-a/ferry-{id}"),
        })
    );
    // The first run has no baseline before it.
    let first = h
        .get(&format!("/api/v1/runs/{baseline}"), Some(&h.alpha))
        .await;
    assert_eq!(first.json["metrics"]["baseline_run"], Value::Null);
    assert_eq!(first.json["metrics"]["values"][0]["verdict"], Value::Null);

    let missing = h.get("/api/v1/runs/999", Some(&h.admin)).await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    assert_eq!(missing.json["error"]["message"], "run 999 not found");
    for bad in ["abc", "0", "-3"] {
        let reply = h.get(&format!("/api/v1/runs/{bad}"), Some(&h.admin)).await;
        assert_eq!((reply.status, reply.code()), (400, "bad_request"), "{bad}");
    }
}

#[tokio::test]
async fn reruns_repeat_a_run_and_failed_only_reruns_only_a_failure() {
    let h = harness("").await;
    let failed = h.stored_run("alpha", Some("main"), None).await;
    h.finish(failed, RunState::Failed, 0.0).await;
    let path = format!("/api/v1/runs/{failed}/rerun");

    let reply = h
        .post(&path, Some(&h.alpha), json!({"failed_only": true}))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    let rerun = reply.json["id"].as_i64().expect("id");
    assert_eq!(reply.json["rerun_of"], failed.get());
    assert_eq!(reply.json["state"], "queued");
    assert_eq!(reply.json["triggered_by"], "alpha-ci");
    assert_eq!(reply.json["trigger"], "push", "the same event context");
    assert_eq!(reply.json["ref"], "refs/heads/main");
    let steps = h
        .store
        .steps(RunId::new(rerun).expect("id"))
        .await
        .expect("steps");
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect::<Vec<_>>(),
        [
            ("hello", StepState::Pending),
            ("evaluate", StepState::Pending)
        ]
    );

    // The latest run of that pipeline at that commit is now the queued rerun: nothing to do.
    for (query, body) in [
        ("", json!({"failed_only": true})),
        ("?failed=true", json!({})),
    ] {
        let again = h
            .post(&format!("{path}{query}"), Some(&h.alpha), body)
            .await;
        assert_eq!(
            (again.status, again.code()),
            (409, "conflict"),
            "{}",
            again.json
        );
        assert_eq!(
            again.json["error"]["message"],
            format!(
                "run {rerun} is the latest run of this pipeline at this commit and it is queued, not failed"
            )
        );
    }
    // "All" repeats it whatever its state (an empty body is `{}`).
    let all = h.call("POST", &path, Some(&h.admin), "").await;
    assert_eq!(all.status, 201);
    assert_eq!(all.json["triggered_by"], "admin");

    let succeeded = h.stored_run("alpha", Some("dev"), None).await;
    h.finish(succeeded, RunState::Succeeded, 0.9).await;
    let refused = h
        .post(
            &format!("/api/v1/runs/{succeeded}/rerun?failed=true"),
            Some(&h.alpha),
            json!({}),
        )
        .await;
    assert_eq!(refused.status, 409);

    // An invalid pipeline is never rerun.
    let invalid = NewRun {
        project: "alpha".into(),
        pipeline: "broken".into(),
        sha: h.sha.clone(),
        trigger: EventKind::Push,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        mr: None,
        params: Default::default(),
        pipeline_path: ".ferry/broken.yaml".into(),
        pipeline_yaml: "version: 1\n".into(),
        problems: vec![Problem {
            file: ".ferry/broken.yaml".into(),
            line: 1,
            column: 1,
            path: "name".into(),
            message: "missing field `name`".into(),
        }],
        initial: RunState::Failed,
        dedup_scope: None,
        steps: vec![],
    };
    let (invalid, _) = h.store.create_run(&invalid).await.expect("run");
    let reply = h
        .post(
            &format!("/api/v1/runs/{invalid}/rerun"),
            Some(&h.admin),
            json!({}),
        )
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.json["error"]["details"][0]["message"],
        ".ferry/broken.yaml:1:1: name: missing field `name`"
    );

    let missing = h
        .post("/api/v1/runs/999/rerun", Some(&h.admin), json!({}))
        .await;
    assert_eq!(missing.status, 404);
    let unknown = h.post(&path, Some(&h.admin), json!({"failed": true})).await;
    assert_eq!((unknown.status, unknown.code()), (422, "validation_failed"));
    let bad_query = h
        .post(&format!("{path}?failed=maybe"), Some(&h.admin), json!({}))
        .await;
    assert_eq!(bad_query.status, 400);
}

#[tokio::test]
async fn cancelling_a_queued_run_cancels_it_and_its_steps_and_finished_runs_refuse() {
    let h = harness("").await;
    let id = h.stored_run("alpha", Some("main"), None).await;
    let path = format!("/api/v1/runs/{id}/cancel");
    let reply = h.post(&path, Some(&h.alpha), json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["state"], "cancelled");
    assert_eq!(reply.json["message"], "cancelled by alpha-ci");
    let steps = h.store.steps(id).await.expect("steps");
    assert!(
        steps.iter().all(|s| s.state == StepState::Cancelled),
        "{steps:?}"
    );
    let again = h.post(&path, Some(&h.alpha), json!({})).await;
    assert_eq!((again.status, again.code()), (409, "conflict"));
    assert_eq!(
        again.json["error"]["message"],
        format!("run {id} is already cancelled")
    );
    let done = h.stored_run("alpha", Some("main"), None).await;
    h.finish(done, RunState::Succeeded, 0.9).await;
    let reply = h
        .post(
            &format!("/api/v1/runs/{done}/cancel"),
            Some(&h.admin),
            json!({}),
        )
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        h.post("/api/v1/runs/999/cancel", Some(&h.admin), json!({}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn deliveries_whose_planning_failed_are_listed_and_a_failed_one_can_be_retried() {
    let h = harness("").await;
    let insert = |project: &'static str, key: &'static str, sha: &str| {
        let event = push_to_main(sha);
        let store = h.store.clone();
        async move {
            store
                .insert_event(project, ForgeKind::Gitlab, key, &event)
                .await
                .expect("insert")
                .id()
        }
    };
    // alpha: a commit that was force-pushed away, given up on; beta: the forge is down.
    let error = "commit 1111 is not in the mirror";
    let gone = ferry_tests::failed_delivery(&h.store, "alpha", "d-1", error).await;
    let down = insert("beta", "d-2", &h.sha).await;
    h.store
        .mark_event_failed_attempt(
            down,
            "fetching `beta` failed: connection refused",
            0,
            Failure::Transient,
        )
        .await
        .expect("fail");
    let planned = insert("alpha", "d-3", &h.sha).await;
    h.store.mark_event_planned(planned).await.expect("planned");

    let ids = |reply: &Reply| -> Vec<i64> {
        reply.json["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", reply.json))
            .iter()
            .map(|e| e["id"].as_i64().expect("id"))
            .collect()
    };
    let all = h.get("/api/v1/events", Some(&h.admin)).await;
    assert_eq!(all.status, 200, "{}", all.json);
    assert_eq!(
        ids(&all),
        vec![down.0, gone.0],
        "newest first; planned ones are not listed"
    );
    let first = &all.json["events"][0];
    assert_eq!(first["state"], "retrying");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["delivery_key"], "d-2");
    assert_eq!(
        first["last_error"],
        "fetching `beta` failed: connection refused"
    );
    assert_eq!(first["event"]["kind"]["type"], "branch_push");
    assert!(first["next_attempt_at"].is_string(), "{first}");
    let second = &all.json["events"][1];
    assert_eq!(
        (second["state"].as_str(), second["attempts"].as_i64()),
        (Some("failed"), Some(MAX_EVENT_ATTEMPTS))
    );
    assert!(second["next_attempt_at"].is_null(), "{second}");

    let failed = h.get("/api/v1/events?state=failed", Some(&h.admin)).await;
    assert_eq!(ids(&failed), vec![gone.0]);
    let limited = h.get("/api/v1/events?limit=1", Some(&h.admin)).await;
    assert_eq!(ids(&limited), vec![down.0]);
    // A project token sees its own project's only, and may not ask for another.
    let own = h.get("/api/v1/events", Some(&h.alpha)).await;
    assert_eq!(ids(&own), vec![gone.0]);
    assert_eq!(
        h.get("/api/v1/events?project=beta", Some(&h.alpha))
            .await
            .status,
        403
    );
    assert_eq!(h.get("/api/v1/events", None).await.status, 401);
    assert_eq!(
        h.get("/api/v1/events?limit=0", Some(&h.admin)).await.status,
        400
    );
    assert_eq!(
        h.get("/api/v1/events?state=stuck", Some(&h.admin))
            .await
            .code(),
        "bad_request"
    );

    // Retrying: only a failed delivery, only by a token that covers its project.
    let path = |id: i64| format!("/api/v1/events/{id}/retry");
    assert_eq!(h.post(&path(gone.0), None, json!({})).await.status, 401);
    let refused = h.post(&path(down.0), Some(&h.alpha), json!({})).await;
    assert_eq!(refused.status, 403, "{}", refused.json);
    let busy = h.post(&path(down.0), Some(&h.admin), json!({})).await;
    assert_eq!(busy.status, 409, "{}", busy.json);
    assert_eq!(
        busy.json["error"]["message"],
        format!(
            "event {} is pending; only a failed one can be retried",
            down.0
        )
    );
    assert_eq!(
        h.post(&path(999_999), Some(&h.admin), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        h.post("/api/v1/events/abc/retry", Some(&h.admin), json!({}))
            .await
            .status,
        400
    );
    let retried = h.post(&path(gone.0), Some(&h.alpha), json!({})).await;
    assert_eq!(retried.status, 200, "{}", retried.json);
    assert_eq!(retried.json["state"], "retrying");
    assert_eq!(retried.json["attempts"], MAX_EVENT_ATTEMPTS - 1);
    let stored = h.store.event_by_id(gone).await.expect("get").expect("kept");
    assert_eq!(stored.state, ferry_engine::store::EventState::Pending);
    assert!(stored.next_attempt_at <= ferry_engine::store::now_millis());
    let again = h.post(&path(gone.0), Some(&h.admin), json!({})).await;
    assert_eq!(again.status, 409, "{}", again.json);
}
