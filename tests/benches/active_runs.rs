//! Server memory idle and with 10,000 active runs (targets: <= 20 MiB / <= 100 MiB RSS), and how
//! fast the Argo executor's watcher brings 10,000 status updates into the store.
//!
//! Runs the real `ferry serve` process (this package's copy of the binary, built with the bench
//! profile) with `executor: argo` against the fake Kubernetes API served by this process over
//! loopback, and reads its `VmRSS` / `VmHWM` from `/proc/<pid>/status`:
//!
//! 1. start it on an empty database: RSS when idle; then one push (clones the mirror) and its
//!    workflow; stop it (SIGTERM);
//! 2. store N queued runs of the example pipeline at that commit through the store API (as N
//!    pushes would have left them) and start it again, the project now without a forge (so no
//!    forge API is measured): it submits all of them (N workflows) and follows them with one
//!    watcher; RSS once all are `submitted`;
//! 3. the controller stand-in sets every workflow's status to "train running"; the time until the
//!    store has every run `running` (the dispatcher applies observations in watch order, so the
//!    last run reaching it means all did) and RSS at the end.
//!
//! `cargo bench -p ferry-tests --bench active_runs -- [runs]` (default 10000).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_engine::pipeline::EventKind;
use ferry_engine::store::{NewRun, RunId, RunState, Store};
use ferry_tests::argo_serve::{
    NAMESPACE, PIPELINE, PROJECT, SECRET, SECRET_ENV, Site, Upstream, post_hook, push_body,
};
use ferry_tests::fake_k8s::{FakeKube, Options, TaskOutcome};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let runs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(10_000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(runs))
}

async fn bench(n: usize) -> anyhow::Result<()> {
    let fake = FakeKube::start_with(Options {
        // The fake keeps every object as a JSON tree; replay history and schema checks would
        // only cost this process memory and time.
        history_limit: Some(2_000),
        schema_checks: false,
        ..Options::default()
    })
    .await;
    let upstream = Upstream::new();
    let listen = free_port()?;
    let site = Site::new(&fake, &upstream, listen);
    let sha = upstream.git(&["rev-parse", "HEAD"]);

    // 1. Idle, then one push.
    let mut serve = Serve::start(&site, "1")?;
    serve.wait_healthy(listen).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("idle after start: {}", serve.memory()?);
    let body = push_body(&upstream.url(), "main", ZERO, &sha, "base");
    if post_hook(listen, "warm-up", &body).await != 202 {
        bail!("the warm-up push was not accepted");
    }
    fake.wait_until("the warm-up workflow", |f| !f.workflows().is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("after one push and its workflow: {}", serve.memory()?);
    serve.stop()?;

    // 2. N queued runs, submitted and followed. The project has no forge from now on: the
    // reporter has nothing to send (it marks each report done), so what is measured is the
    // executor, the watcher and the dispatcher, not a forge's API.
    let config = std::fs::read_to_string(site.config_path())?;
    std::fs::write(
        site.config_path(),
        config.replace("forge: gitlab", "forge: none"),
    )?;
    let store = site.store().await;
    let started = Instant::now();
    let ids = seed(&store, &upstream, &sha, n).await?;
    println!(
        "stored {n} queued runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let serve = Serve::start(&site, "2")?;
    let started = Instant::now();
    let last = *ids.last().context("no runs")?;
    wait_state(&store, last, RunState::Submitted, Duration::from_secs(1800)).await?;
    let submitted = started.elapsed();
    let all = store
        .runs_in_state(RunState::Submitted, u32::MAX)
        .await?
        .len();
    println!(
        "start + submit {n} runs: {:.1} s ({:.0} workflows/s); {all} runs submitted, {} workflows",
        submitted.as_secs_f64(),
        n as f64 / submitted.as_secs_f64(),
        fake.workflows().len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("{n} runs submitted and followed: {}", serve.memory()?);

    // 3. A status update for every workflow.
    let started = Instant::now();
    for id in &ids {
        let name = format!("ferry-{id}");
        let status = fake
            .status_builder(NAMESPACE, &name)?
            .task("train", TaskOutcome::running())
            .build();
        fake.set_status(NAMESPACE, &name, status)?;
    }
    let written = started.elapsed();
    wait_state(&store, last, RunState::Running, Duration::from_secs(1800)).await?;
    let applied = started.elapsed();
    let running = store
        .runs_in_state(RunState::Running, u32::MAX)
        .await?
        .len();
    println!(
        "{n} status updates: written to the fake in {:.1} s; all in the store after {:.1} s ({:.0} updates/s); {running} runs running",
        written.as_secs_f64(),
        applied.as_secs_f64(),
        n as f64 / applied.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("{n} runs running and followed: {}", serve.memory()?);
    serve.stop()?;
    store.close().await;
    Ok(())
}

const ZERO: &str = ferry_tests::argo_serve::ZERO_SHA;

/// Stores `n` queued runs of the example pipeline at `sha` on main.
async fn seed(
    store: &Store,
    upstream: &Upstream,
    sha: &str,
    n: usize,
) -> anyhow::Result<Vec<RunId>> {
    let yaml = std::fs::read_to_string(upstream.path().join(".ferry/train.yaml"))?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let run = NewRun {
            project: PROJECT.into(),
            pipeline: PIPELINE.into(),
            sha: sha.into(),
            trigger: EventKind::Push,
            event_id: None,
            rerun_of: None,
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            mr: None,
            params: BTreeMap::new(),
            pipeline_path: ".ferry/train.yaml".into(),
            pipeline_yaml: yaml.clone(),
            problems: Vec::new(),
            initial: RunState::Queued,
            dedup_scope: None,
            steps: vec!["train".into(), "evaluate".into(), "deploy".into()],
        };
        ids.push(store.create_run(&run).await?.0);
    }
    Ok(ids)
}

/// Polls until run `id` is in `state`.
async fn wait_state(
    store: &Store,
    id: RunId,
    state: RunState,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let run = store.get_run(id).await?.context("the run")?;
        if run.state == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("run {id} is {} after {limit:?}, not {state}", run.state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A `ferry serve` process (killed if the bench fails before stopping it).
struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Serve {
    fn start(site: &Site, tag: &str) -> anyhow::Result<Serve> {
        let config = site.config_path();
        let dir = config.parent().context("the site's directory")?;
        let log = std::fs::File::create(dir.join(format!("serve-{tag}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
            .args(["serve", "--config"])
            .arg(&config)
            .env(SECRET_ENV, SECRET)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ferry serve")?;
        Ok(Serve { child })
    }

    async fn wait_healthy(&mut self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("ferry serve exited: {status}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("ferry serve did not listen on {addr} within 30 s")
    }

    /// `VmRSS` and `VmHWM` from `/proc/<pid>/status`.
    fn memory(&self) -> anyhow::Result<String> {
        let status = std::fs::read_to_string(
            Path::new("/proc")
                .join(self.child.id().to_string())
                .join("status"),
        )?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kib: f64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("unreadable {line:?}"))?;
            Ok(kib / 1024.0)
        };
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map(str::trim)
            .unwrap_or("?");
        Ok(format!(
            "RSS {:.1} MiB (peak {:.1} MiB; anonymous {:.1}, file-backed {:.1}; {threads} threads)",
            field("VmRSS:")?,
            field("VmHWM:")?,
            field("RssAnon:")?,
            field("RssFile:")?
        ))
    }

    /// SIGTERM, then waits for it to exit.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let exit = self.child.wait()?;
        println!("ferry serve stopped: {exit}");
        if !exit.success() {
            bail!("ferry serve exited with {exit}");
        }
        Ok(())
    }
}
