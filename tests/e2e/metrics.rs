//! `/metrics` of a real `ferry serve` process (SQLite, the Argo executor on the fake Kubernetes
//! API, the fake GitLab for reports): after a delivery and its redelivery, a run that the API
//! server first refuses with `500`s and then runs to the end, and a `429` with `Retry-After` from
//! the forge, every series the operator guide lists is there with the value those events make.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::Method;
use ferry_engine::store::{RunState, Store};
use ferry_tests::TempDir;
use ferry_tests::argo_serve::{Upstream, ZERO_SHA, post_hook, push_body};
use ferry_tests::fake_forge::FakeForge;
use ferry_tests::fake_k8s::{FakeKube, Fault, TaskOutcome};

use super::replicas::Replica;

const PIPELINE: &str = "version: 1\nname: quick\non:\n  push:\n    branches: [\"**\"]\n\
    defaults: { image: img:1 }\nsteps:\n  - { name: fit, kind: train, run: python fit.py }\n";
const WAIT: Duration = Duration::from_secs(120);

/// The samples of a Prometheus text page: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_deliveries_runs_submissions_forge_calls_and_errors() {
    let fake = FakeKube::start().await;
    let forge = FakeForge::start().await;
    let upstream = Upstream::new();
    let sha = upstream.commit(".ferry/quick.yaml", PIPELINE, "quick pipeline");
    let db_dir = TempDir::new("metrics-db");
    let database = format!("sqlite://{}", db_dir.path().join("ferry.db").display());
    let config = format!(
        "executor: argo\nargo: {{ kubeconfig: kubeconfig, namespace: ferry-default }}\n\
         profile_file: profile.yaml\nprojects:\n  - {{ name: p0, repo: \"{}\", forge: gitlab, \
         forge_url: \"{}\", token_env: FERRY_TEST_GITLAB_TOKEN, \
         webhook_secret_env: FERRY_RESNET_WEBHOOK_SECRET, namespace: ml-team }}\n",
        upstream.url(),
        forge.url()
    );
    // The first submission fails (four tries: the first and three retries), the next works.
    fake.inject(Fault::internal_error().times(4).method(Method::POST));
    // The first commit status meets a rate limit: 429 with Retry-After: 1.
    forge.fail_next_to("POST", "/statuses/", 429, Some(1));
    let mut server = Replica::start("metrics", &config, &fake.kubeconfig(), &database);
    server.ready().await;

    let body = push_body(&upstream.url(), "feature", ZERO_SHA, &sha, "quick");
    assert_eq!(post_hook(server.addr, "delivery-1", &body).await, 202);
    assert_eq!(
        post_hook(server.addr, "delivery-1", &body).await,
        200,
        "a redelivery"
    );
    assert_eq!(hook_with_wrong_token(server.addr, &body).await, 401);

    // The controller stand-in finishes the workflow once it exists.
    fake.wait_until("the workflow is created", |f| f.workflows().len() == 1)
        .await;
    let name = fake.workflows()[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let status = fake
        .status_builder("ml-team", &name)
        .expect("builder")
        .task("fit", TaskOutcome::succeeded())
        .build();
    fake.set_status("ml-team", &name, status).expect("status");

    let store = Store::open(&database).await.expect("store");
    let deadline = Instant::now() + WAIT;
    loop {
        let runs = store
            .runs_in_state(RunState::Succeeded, 10)
            .await
            .expect("runs");
        let unsent = store.stats().await.expect("stats").outbox_unsent;
        if runs.len() == 1 && unsent == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish and report:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, text) = server.get("/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    let m = samples(&text);
    let value = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    // Deliveries by forge, event and outcome.
    assert_eq!(
        value(r#"ferry_deliveries_total{event="push",forge="gitlab",outcome="stored"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ferry_deliveries_total{event="push",forge="gitlab",outcome="duplicate"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ferry_deliveries_total{event="push",forge="gitlab",outcome="unauthorized"}"#),
        1.0,
        "a refused delivery is labelled with the event its header announces"
    );
    // Runs by state, the outbox, pending deliveries.
    assert_eq!(value(r#"ferry_runs{state="succeeded"}"#), 1.0);
    assert_eq!(value("ferry_outbox_depth{}"), 0.0);
    assert_eq!(value("ferry_events_pending{}"), 0.0);
    assert_eq!(value("ferry_events_retrying{}"), 0.0);
    assert_eq!(value("ferry_events_failed{}"), 0.0);
    // Submissions and their latency; the executor's failed submission.
    assert_eq!(
        value(r#"ferry_submissions_total{executor="argo",outcome="unavailable"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ferry_submissions_total{executor="argo",outcome="submitted"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ferry_submit_latency_seconds_count{executor="argo"}"#),
        1.0
    );
    assert!(value(r#"ferry_submit_latency_seconds_sum{executor="argo"}"#) > 0.0);
    assert_eq!(
        value(r#"ferry_executor_errors_total{executor="argo",operation="submit"}"#),
        1.0
    );
    // Forge calls by outcome, and the wait the 429 asked for.
    let statuses_ok = forge
        .calls()
        .iter()
        .filter(|c| c.path.contains("/statuses/") && (200..300).contains(&c.status))
        .count();
    assert!(
        statuses_ok >= 1,
        "the pipeline's final status (of one step: no separate step status; `running` may be \
         coalesced away behind the 429)"
    );
    assert_eq!(
        value(r#"ferry_forge_calls_total{forge="gitlab",outcome="rate_limited"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ferry_forge_calls_total{forge="gitlab",outcome="ok"}"#),
        statuses_ok as f64
    );
    assert_eq!(
        value(r#"ferry_forge_rate_limit_waits_total{forge="gitlab"}"#),
        1.0
    );
    store.close().await;
}

/// A GitLab push hook with a wrong `X-Gitlab-Token`; the HTTP status.
async fn hook_with_wrong_token(addr: std::net::SocketAddr, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /hooks/gitlab HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Gitlab-Event: Push Hook\r\n\
         X-Gitlab-Token: not-the-secret\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("answer");
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}
