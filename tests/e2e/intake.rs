//! Webhook intake over HTTP: every official fixture, the negative cases, redeliveries and 50
//! concurrent copies of one delivery (issue: event intake).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry::server::metrics::Metrics;
use ferry::server::{AppState, read_secrets, router};
use ferry_engine::config::Config;
use ferry_engine::store::Store;
use ferry_tests::{TempDir, shared_fixtures_dir};
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

const SECRET: &str = "It's a Secret to Everybody";

/// Every repository the fixtures name, as projects (the GitHub App ping names none).
const CONFIG: &str = "projects:
  - { name: diaspora, repo: http://example.com/mike/diaspora.git, forge: gitlab, webhook_secret_env: S }
  - { name: gitlab-test, repo: http://example.com/gitlabhq/gitlab-test.git, forge: gitlab, webhook_secret_env: S }
  - { name: gitlab-org-test, repo: http://example.com/gitlab-org/gitlab-test.git, forge: gitlab, webhook_secret_env: S }
  - { name: example, repo: http://example.com/jsmith/example.git, forge: gitlab, webhook_secret_env: S }
  - { name: hello-world, repo: https://github.com/Codertocat/Hello-World.git, forge: github, webhook_secret_env: S }
  - { name: octo-hello, repo: https://github.com/Octocoders/Hello-World.git, forge: github, webhook_secret_env: S }
  - { name: gh-hello, repo: https://github.com/github/hello-world.git, forge: github, webhook_secret_env: S }
  - { name: ouro, repo: https://github.com/gagbo/ouro-closures.git, forge: github, webhook_secret_env: S }
";

struct Server {
    app: Router,
    store: Store,
    _dir: TempDir,
}

async fn server() -> Server {
    let dir = TempDir::new("intake");
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let store = Store::open(&url).await.expect("store opens");
    let config = Config::from_yaml("ferry.yaml", CONFIG).expect("config");
    let secrets = read_secrets(&config, |_| Some(SECRET.to_owned())).expect("secrets");
    let config = Arc::new(config);
    let data = dir.path().join("data");
    let planner = ferry_engine::service::planner::Planner::new(
        store.clone(),
        config.clone(),
        Arc::new(ferry_engine::profile::Profile::default()),
        data.clone(),
    );
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let executor = ferry_engine::executor::local::LocalExecutor::new(
        ferry_engine::executor::local::LocalSettings {
            gpus: Some(0),
            ..ferry_engine::executor::local::LocalSettings::new(&data)
        },
        tx,
    );
    let state = AppState {
        config,
        store: store.clone(),
        secrets: Arc::new(secrets),
        metrics: Arc::new(Metrics::default()),
        planner_wake: Arc::new(Notify::new()),
        planner: Arc::new(planner),
        executor: Arc::new(executor),
        live: Default::default(),
    };
    Server {
        app: router(state),
        store,
        _dir: dir,
    }
}

async fn post(app: &Router, path: &str, headers: &[(String, String)], body: Vec<u8>) -> StatusCode {
    let mut req = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("response");
    response.status()
}

/// Request headers as (name, value).
type Headers = Vec<(String, String)>;

/// One fixture delivery: (file, forge path, headers, body).
type Delivery = (String, String, Headers, Vec<u8>);

/// Every fixture in index.json.
fn fixtures() -> Option<Vec<Delivery>> {
    let dir = shared_fixtures_dir()?;
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).expect("index"))
            .expect("json");
    let list = index["fixtures"]
        .as_array()
        .expect("fixtures")
        .iter()
        .map(|f| {
            let file = f["file"].as_str().expect("file").to_owned();
            let forge = f["forge"].as_str().expect("forge");
            let headers = f["headers"]
                .as_object()
                .expect("headers")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let body = std::fs::read(dir.join(&file)).expect("fixture");
            (file, format!("/hooks/{forge}"), headers, body)
        });
    Some(list.collect())
}

/// Fixtures that are valid but start nothing: answered 202 and not stored.
const IGNORED: [&str; 4] = [
    "gitlab/pipeline.json",
    "github/issue_comment.created.on_issue.json",
    "github/issue_comment.edited.on_pr.octocrab.json",
    "github/ping.app_hook.octocrab.json",
];

#[tokio::test]
async fn every_fixture_is_stored_once_and_redeliveries_change_nothing() {
    let Some(fixtures) = fixtures() else {
        eprintln!("SKIPPED: ../shared/fixtures not found; webhook intake tests need it");
        return;
    };
    let s = server().await;
    let mut stored = 0;
    for (file, path, headers, body) in &fixtures {
        let first = post(&s.app, path, headers, body.clone()).await;
        assert_eq!(first, StatusCode::ACCEPTED, "{file}");
        let again = post(&s.app, path, headers, body.clone()).await;
        if IGNORED.contains(&file.as_str()) {
            assert_eq!(
                again,
                StatusCode::ACCEPTED,
                "{file}: ignored deliveries stay 202"
            );
        } else {
            stored += 1;
            assert_eq!(again, StatusCode::OK, "{file}: a redelivery answers 200");
        }
    }
    assert_eq!(s.store.event_count().await.expect("count"), stored);
    assert_eq!(
        stored,
        i64::try_from(fixtures.len() - IGNORED.len()).expect("small")
    );
}

fn gitlab_push() -> Option<(Headers, Vec<u8>)> {
    let dir = shared_fixtures_dir()?;
    let body = std::fs::read(dir.join("gitlab/push.json")).expect("push.json");
    let headers = vec![
        ("X-Gitlab-Event".to_owned(), "Push Hook".to_owned()),
        ("X-Gitlab-Token".to_owned(), SECRET.to_owned()),
    ];
    Some((headers, body))
}

#[tokio::test]
async fn bad_secrets_malformed_and_oversized_bodies_store_nothing() {
    let Some((headers, body)) = gitlab_push() else {
        eprintln!("SKIPPED: ../shared/fixtures not found");
        return;
    };
    let s = server().await;
    let mut wrong = headers.clone();
    wrong[1].1 = "not the secret".into();
    assert_eq!(
        post(&s.app, "/hooks/gitlab", &wrong, body.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&s.app, "/hooks/gitlab", &headers[..1], body.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let gh = vec![
        ("X-GitHub-Event".to_owned(), "push".to_owned()),
        ("X-Hub-Signature-256".to_owned(), "sha256=00".to_owned()),
    ];
    let gh_body = std::fs::read(
        shared_fixtures_dir()
            .expect("dir")
            .join("github/push.branch_created.json"),
    )
    .expect("fixture");
    assert_eq!(
        post(&s.app, "/hooks/github", &gh, gh_body).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&s.app, "/hooks/gitlab", &headers, b"{not json".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    let huge = vec![b' '; 26 * 1024 * 1024];
    assert_eq!(
        post(&s.app, "/hooks/gitlab", &headers, huge).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(s.store.event_count().await.expect("count"), 0);
    let unknown = String::from_utf8(body)
        .expect("utf8")
        .replace("mike/diaspora", "someone/else");
    assert_eq!(
        post(&s.app, "/hooks/gitlab", &headers, unknown.into_bytes()).await,
        StatusCode::ACCEPTED,
        "unknown repositories get 202"
    );
    assert_eq!(s.store.event_count().await.expect("count"), 0);
}

#[tokio::test]
async fn fifty_concurrent_copies_of_one_delivery_store_one_event() {
    let Some((mut headers, body)) = gitlab_push() else {
        eprintln!("SKIPPED: ../shared/fixtures not found");
        return;
    };
    headers.push(("Idempotency-Key".into(), "same-delivery".into()));
    let s = server().await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app, headers, body) = (s.app.clone(), headers.clone(), body.clone());
            tokio::spawn(async move { post(&app, "/hooks/gitlab", &headers, body).await })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.expect("task"));
    }
    assert_eq!(
        codes.iter().filter(|c| **c == StatusCode::ACCEPTED).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(codes.iter().filter(|c| **c == StatusCode::OK).count(), 49);
    assert_eq!(s.store.event_count().await.expect("count"), 1);
    assert!(
        s.store
            .event_by_key("gitlab:same-delivery")
            .await
            .expect("query")
            .is_some()
    );
}
