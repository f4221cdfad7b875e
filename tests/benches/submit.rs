//! Push received -> Workflow created, with a warm git mirror and the fake Kubernetes API on
//! loopback (target: p50 <= 15 ms, p99 <= 50 ms).
//!
//! Starts the fake API and `ferry serve` (`executor: argo`, SQLite with `synchronous=FULL`) in
//! this process, warms the project's mirror with one push, then sends N signed GitLab push hooks
//! one at a time over fresh loopback connections and measures, for each, from just before its
//! request is written to the moment the fake API receives the `POST` that creates its workflow
//! (the request log's arrival time). Every push is a new branch `release/bench-<i>` at the same
//! commit, which the warm-up's fetch brought into the mirror: each plans a run of its own (the
//! dedup scope is the branch) and none needs the network. Between pushes it waits until the run
//! is `submitted` in the store and 20 ms more, so each push meets an idle server.
//!
//! `cargo bench -p ferry-tests --bench submit -- [pushes]` (default 300).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::http::Method;
use ferry_engine::store::{Page, RunFilter, RunState, Store};
use ferry_tests::argo_serve::{NAMESPACE, Server, Site, Upstream, ZERO_SHA, push_body};
use ferry_tests::fake_k8s::FakeKube;

/// As the `ferry` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let pushes = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(300);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(pushes))
}

async fn bench(pushes: usize) -> anyhow::Result<()> {
    let fake = FakeKube::start().await;
    let upstream = Upstream::new();
    upstream.git(&["checkout", "-q", "-b", "release/bench-0"]);
    let sha = upstream.commit("model/net.py", "layers = 152\n", "bench");
    for i in 1..=pushes {
        upstream.git(&["branch", &format!("release/bench-{i}")]);
    }
    let site = Site::new(&fake, &upstream, "127.0.0.1:8080".parse()?);
    let server = site.serve().await;
    let store = site.store().await;
    let bench = Bench {
        fake: &fake,
        server: &server,
        store: &store,
        url: upstream.url(),
        sha,
    };
    let warm = bench.one(0).await?;
    println!(
        "schema checks: {}; warm-up push (clones the mirror): {:.1} ms",
        fake.schema_checked(),
        ms(warm)
    );
    let mut samples = Vec::with_capacity(pushes);
    for i in 1..=pushes {
        samples.push(bench.one(i).await?);
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len().max(1))?;
    println!(
        "push -> workflow created, {pushes} pushes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {:.2} ms, min {:.2} ms",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        ms(mean),
        ms(samples[0]),
    );
    server.stop().await;
    store.close().await;
    Ok(())
}

struct Bench<'a> {
    fake: &'a FakeKube,
    server: &'a Server,
    store: &'a Store,
    url: String,
    sha: String,
}

impl Bench<'_> {
    /// One push: the time from sending it to the create arriving at the fake.
    async fn one(&self, i: usize) -> anyhow::Result<Duration> {
        let branch = format!("release/bench-{i}");
        let body = push_body(&self.url, &branch, ZERO_SHA, &self.sha, "bench");
        let collection = format!("/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}/workflows");
        self.fake.clear_requests();
        let sent = Instant::now();
        let status = self.server.push(&format!("bench-{i}"), &body).await;
        if status != 202 {
            bail!("push {i} answered {status}");
        }
        self.fake
            .wait_until("the workflow's create", |f| {
                f.count(Method::POST, &collection) > 0
            })
            .await;
        let create = self
            .fake
            .requests()
            .into_iter()
            .find(|r| r.method == Method::POST && r.path == collection)
            .context("the create request")?;
        if create.status != 201 {
            bail!("push {i}: the create answered {}", create.status);
        }
        self.settle(&branch).await?;
        Ok(create.at.saturating_duration_since(sent))
    }

    /// Waits until the branch's run is submitted, then 20 ms more.
    async fn settle(&self, branch: &str) -> anyhow::Result<()> {
        let filter = RunFilter {
            branch: Some(branch.to_owned()),
            ..RunFilter::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let runs = self.store.list_runs(&filter, Page::first(2)).await?.runs;
            if runs.iter().any(|r| r.state == RunState::Submitted) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the run of {branch} was not submitted within 30 s: {runs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
