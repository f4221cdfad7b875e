//! Several replicas on one PostgreSQL database: two real `ferry serve` processes (the binary
//! cargo built) share a fresh database, both with the Argo executor on the fake Kubernetes API
//! (a controller stand-in in this test finishes every workflow it sees) and the fake GitLab for
//! reports. 500 signed push hooks, each a new branch and so a new run, go to both replicas in
//! turn; halfway one replica is killed with SIGKILL and the rest go to the survivor. Then, with
//! generous deadlines and no timing assertion: every delivery is stored once, every run created
//! once, submitted once (one `201` create per workflow, any repeated create with the same body),
//! finished, and reported once per state (no status the forge accepted twice).
//!
//! Needs PostgreSQL: skipped with a message when `FERRY_TEST_POSTGRES_URL` is unset
//! (`.ci/postgres.sh` starts one). Each run creates its own database and drops it afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use ferry_engine::store::{Page, RunFilter, RunState, Store};
use ferry_tests::TempDir;
use ferry_tests::argo_serve::{SECRET, SECRET_ENV, Upstream, ZERO_SHA, post_hook, push_body};
use ferry_tests::fake_forge::{FakeForge, GITLAB_TOKEN};
use ferry_tests::fake_k8s::{FakeKube, TaskOutcome};
use sqlx::Connection as _;

const DELIVERIES: usize = 500;
const PROJECTS: usize = 4;
const NAMESPACE: &str = "ml-team";
/// Deadlines are generous: two processes and PostgreSQL share a small machine.
const WAIT: Duration = Duration::from_secs(300);
const TOKEN_ENV: &str = "FERRY_TEST_GITLAB_TOKEN";
const PIPELINE: &str = "version: 1\nname: quick\non:\n  push:\n    branches: [\"**\"]\n\
    defaults: { image: img:1 }\nsteps:\n  - { name: fit, kind: train, run: python fit.py }\n";

/// A fresh PostgreSQL database, dropped when the test is done.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    /// A new database on the server `FERRY_TEST_POSTGRES_URL` names, or `None` (and a SKIPPED line)
    /// without it.
    async fn create(test: &str) -> Option<Database> {
        let Some(admin) = std::env::var("FERRY_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!(
                "{test}: SKIPPED: FERRY_TEST_POSTGRES_URL is not set (bash .ci/postgres.sh starts a server)"
            );
            return None;
        };
        // Unique among the tests of this process (they start at once) and across processes.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "ferry_replicas_{}_{}_{}",
            std::process::id(),
            jiff::Timestamp::now().as_millisecond(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connecting to FERRY_TEST_POSTGRES_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let (base, rest) = admin.rsplit_once('/').expect("a database URL");
        let query = rest.find('?').map_or("", |i| &rest[i..]);
        let url = format!("{base}/{name}{query}");
        Some(Database { admin, name, url })
    }

    async fn drop(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin)
            .await
            .expect("admin connection");
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("drop database");
    }
}

/// One `ferry serve` process (also used by the `metrics` tests).
pub(crate) struct Replica {
    child: Child,
    pub(crate) addr: SocketAddr,
    dir: TempDir,
}

impl Replica {
    /// Starts `ferry serve` in its own directory (own data dir and mirrors) on `database`.
    pub(crate) fn start(name: &str, config: &str, kubeconfig: &str, database: &str) -> Replica {
        let dir = TempDir::new(name);
        dir.write("kubeconfig", kubeconfig);
        dir.write(
            "profile.yaml",
            &ferry_tests::read(&ferry_tests::workspace_root().join("examples/profile.yaml")),
        );
        let addr = free_port();
        dir.write(
            "ferry.yaml",
            &format!(
                "listen: {addr}\ndata_dir: {}\n{config}",
                dir.path().join("data").display()
            ),
        );
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
            .args(["serve", "--config", "ferry.yaml"])
            .current_dir(dir.path())
            .env("FERRY_DATABASE_URL", database)
            .env(SECRET_ENV, SECRET)
            .env(TOKEN_ENV, GITLAB_TOKEN)
            .env("FERRY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ferry serve starts");
        Replica { child, addr, dir }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `GET path`: the status and the body, `None` when it does not answer.
    pub(crate) async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connect = tokio::net::TcpStream::connect(self.addr);
        let mut s = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .ok()?
            .ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// Waits until it answers `/healthz`.
    pub(crate) async fn ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((200, _)) = self.get("/healthz").await {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("ferry serve exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "ferry serve not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, claims left behind until their lease runs out.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("address")
}

/// One upstream repository per project, each holding the quick pipeline.
fn upstreams() -> Vec<Upstream> {
    (0..PROJECTS)
        .map(|_| {
            let up = Upstream::new();
            up.commit(".ferry/quick.yaml", PIPELINE, "quick pipeline");
            up
        })
        .collect()
}

/// The `replicas`, executor and projects part of `ferry.yaml`.
fn config(upstreams: &[Upstream], forge: &FakeForge) -> String {
    let mut text = String::from(
        "executor: argo\nargo: { kubeconfig: kubeconfig, namespace: ferry-default }\n\
         profile_file: profile.yaml\nreplicas: { lease_seconds: 8, poll_ms: 200 }\nprojects:\n",
    );
    for (i, up) in upstreams.iter().enumerate() {
        text.push_str(&format!(
            "  - {{ name: p{i}, repo: \"{}\", forge: gitlab, forge_url: \"{}\", token_env: {TOKEN_ENV}, \
             webhook_secret_env: {SECRET_ENV}, namespace: {NAMESPACE} }}\n",
            up.url(),
            forge.url()
        ));
    }
    text
}

/// Finishes every workflow the fake has (the Argo controller's part), until `stop`.
fn controller(fake: FakeKube, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<FakeKube> {
    tokio::spawn(async move {
        let mut done = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) {
            for wf in fake.workflows() {
                let name = wf["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if done.contains(&name) {
                    continue;
                }
                let status = fake
                    .status_builder(NAMESPACE, &name)
                    .map(|b| b.task("fit", TaskOutcome::succeeded()).build());
                if let Ok(status) = status
                    && fake.set_status(NAMESPACE, &name, status).is_ok()
                {
                    done.insert(name);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fake
    })
}

/// Polls `probe` every 200 ms until it holds, for at most [`WAIT`].
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    logs: &dyn Fn() -> String,
    mut probe: impl FnMut() -> F,
) {
    let deadline = Instant::now() + WAIT;
    while !probe().await {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_work_and_the_survivor_finishes_it_exactly_once() {
    let Some(db) = Database::create("replicas").await else {
        return;
    };
    let fake = FakeKube::start().await;
    let forge = FakeForge::start().await;
    let upstreams = upstreams();
    let config = config(&upstreams, &forge);
    let kubeconfig = fake.kubeconfig();
    let mut a = Replica::start("replica-a", &config, &kubeconfig, &db.url);
    let mut b = Replica::start("replica-b", &config, &kubeconfig, &db.url);
    a.ready().await;
    b.ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let controller = controller(fake, stop.clone());

    // 500 pushes, each a new branch at its repository's head: one run each. Half to each
    // replica in turn; after the first half, A is killed and B gets the rest.
    let heads: Vec<String> = upstreams
        .iter()
        .map(|u| u.git(&["rev-parse", "HEAD"]))
        .collect();
    let mut c = None;
    let mut held_by_a = Vec::new();
    for i in 0..DELIVERIES {
        if i == DELIVERIES / 2 {
            a.kill();
            // What A was working on when it died (its claims stay until their lease runs out).
            held_by_a = claims_of(&db.url, &replica_id(&a.log())).await;
        }
        if i == DELIVERIES * 3 / 4 {
            // A replacement starts while B follows its runs and A's orphans: its reconcile on
            // start must adopt them, not fail them.
            let mut replacement = Replica::start("replica-c", &config, &kubeconfig, &db.url);
            replacement.ready().await;
            c = Some(replacement);
        }
        let p = i % PROJECTS;
        let body = push_body(
            &upstreams[p].url(),
            &format!("r-{i}"),
            ZERO_SHA,
            &heads[p],
            "quick",
        );
        let target = if i < DELIVERIES / 2 && i % 2 == 0 {
            a.addr
        } else {
            b.addr
        };
        assert_eq!(
            post_hook(target, &format!("delivery-{i}"), &body).await,
            202,
            "delivery {i}"
        );
    }

    let store = Store::open(&db.url).await.expect("store");
    let logs = || {
        let c = c.as_ref().map(Replica::log).unwrap_or_default();
        format!("--- replica b ---\n{}\n--- replica c ---\n{c}", b.log())
    };
    assert_eq!(
        store.event_count().await.expect("events"),
        DELIVERIES as i64,
        "every delivery stored once"
    );
    until("every run to finish", &logs, || async {
        let runs = all_runs(&store).await;
        runs.len() >= DELIVERIES && runs.iter().all(|r| r.state.is_terminal())
    })
    .await;
    until("every report to go out", &logs, || async {
        store
            .stats()
            .await
            .map(|s| s.outbox_unsent == 0)
            .unwrap_or(false)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let fake = controller.await.expect("controller");

    // Every run once: one per delivery (branch), all succeeded.
    let runs = all_runs(&store).await;
    assert_eq!(runs.len(), DELIVERIES, "one run per delivery");
    let branches: BTreeSet<String> = runs.iter().filter_map(|r| r.branch.clone()).collect();
    assert_eq!(branches.len(), DELIVERIES, "no branch planned twice");
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.state != RunState::Succeeded)
        .collect();
    assert!(
        failed.is_empty(),
        "runs that did not succeed: {failed:#?}\n{}",
        logs()
    );

    // Submitted once: one 201 create per workflow; a repeated create (a replica killed between
    // the create and the store's write) carries the same body and meets 409.
    let mut creates: BTreeMap<String, Vec<(u16, Option<String>)>> = BTreeMap::new();
    let collection = format!("/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}/workflows");
    for r in fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST && r.path == collection)
    {
        creates
            .entry(r.body_sha256.clone().unwrap_or_default())
            .or_default()
            .push((r.status, r.body_sha256.clone()));
    }
    let created: usize = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST && r.status == 201)
        .count();
    assert_eq!(created, DELIVERIES, "one workflow created per run");
    assert_eq!(fake.workflows().len(), DELIVERIES);
    for run in &runs {
        let wf = fake
            .get(NAMESPACE, &format!("ferry-{}", run.id))
            .expect("the run's workflow");
        assert_eq!(
            wf["metadata"]["labels"]["ferry.dev/run-id"],
            run.id.to_string()
        );
    }
    for (body, answers) in &creates {
        let ok = answers.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(
            ok, 1,
            "every create body was accepted exactly once ({body}): {answers:?}"
        );
    }
    let repeats = creates.values().map(|a| a.len() - 1).sum::<usize>();
    // A's submitter is sequential: at most the one run it was submitting when killed (created,
    // not yet recorded) is created again, by whoever takes its claim over.
    println!("repeated creates (same body, 409): {repeats}; A held {held_by_a:?}");
    assert!(
        repeats <= 1,
        "only a create in flight at the kill repeats: {creates:#?}"
    );

    // Reported once per state: no status the forge accepted twice, and each run's pipeline
    // status ends `success`.
    let mut accepted: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut refused = 0;
    for call in forge
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.contains("/statuses/"))
    {
        if (200..300).contains(&call.status) {
            let key = (
                call.field("ref").to_owned(),
                call.field("name").to_owned(),
                call.field("state").to_owned(),
            );
            *accepted.entry(key).or_default() += 1;
        } else {
            refused += 1;
        }
    }
    // The one status call A had in flight when killed (sent, not yet recorded) may go out again:
    // the forge cannot tell a retry from a new call. Anything else twice is a claim failure.
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    let reported_by_a: Vec<String> = held_by_a
        .iter()
        .filter(|(kind, _)| kind == "report")
        .filter_map(|(_, run)| runs.iter().find(|r| r.id.to_string() == *run))
        .filter_map(|r| r.branch.clone())
        .collect();
    assert!(
        twice.len() <= 1
            && twice
                .iter()
                .all(|((branch, _, _), n)| **n == 2 && reported_by_a.contains(branch)),
        "statuses sent twice: {twice:?} (A was reporting {reported_by_a:?})"
    );
    for run in &runs {
        let branch = run.branch.clone().unwrap_or_default();
        assert!(
            accepted.contains_key(&(
                branch.clone(),
                "ferry/quick".to_owned(),
                "success".to_owned()
            )),
            "run {} ({branch}) was reported succeeded",
            run.id
        );
    }
    println!("status calls the forge refused (a state repeated after the kill): {refused}");

    for (name, r) in [("a", Some(&a)), ("b", Some(&b)), ("c", c.as_ref())] {
        let log = r.map(Replica::log).unwrap_or_default();
        println!(
            "replica {name}: {} events planned, {} workflows created, {} runs followed from others",
            log.matches("event planned").count(),
            log.matches("workflow created").count(),
            log.matches("following started runs").count(),
        );
    }
    store.close().await;
    drop((a, b, c));
    db.drop().await;
}

/// The id `ferry serve` logged for itself (`claiming work as a replica replica=ID`).
fn replica_id(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("claiming work as a replica"))
        .and_then(|l| l.split("replica=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no replica id in the log:\n{log}"))
        .trim_matches('"')
        .to_owned()
}

/// The (kind, item) claims `replica` holds.
async fn claims_of(url: &str, replica: &str) -> Vec<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_as("SELECT kind, item FROM claims WHERE claimed_by = $1 ORDER BY kind, item")
        .bind(replica)
        .fetch_all(&mut conn)
        .await
        .expect("claims")
}

async fn all_runs(store: &Store) -> Vec<ferry_engine::store::Run> {
    let mut out = Vec::new();
    let mut page = Page::first(200);
    loop {
        let got = store
            .list_runs(&RunFilter::default(), page)
            .await
            .expect("runs");
        out.extend(got.runs);
        match got.next {
            Some(before) => page.before = Some(before),
            None => return out,
        }
    }
}

/// The reporter on PostgreSQL leaves a run another live replica is reporting alone and takes it
/// over once that replica's lease ran out; a lapsed claim taken over cannot be renewed (the
/// fence the reporter checks before every forge call).
#[tokio::test]
async fn a_reporter_skips_runs_another_replica_reports_and_takes_over_lapsed_ones() {
    use ferry_engine::config::Config;
    use ferry_engine::forge::report::ForgeCredentials;
    use ferry_engine::pipeline::EventKind;
    use ferry_engine::service::mirror::SecretString;
    use ferry_engine::service::report::Reporter;
    use ferry_engine::store::{ClaimKind, NewRun, Replica as Claimer};

    let Some(db) = Database::create("replicas_report").await else {
        return;
    };
    let forge = FakeForge::start().await;
    let store = Store::open(&db.url).await.expect("store");
    // `pending_after_ms: 0`: the queued run is reported at once.
    let yaml = format!(
        "report: {{ pending_after_ms: 0 }}\nprojects:\n  - {{ name: resnet, repo: https://gitlab.example.com/ml/resnet.git, \
         forge: gitlab, forge_url: \"{}\", token_env: T, webhook_secret_env: S }}\n",
        forge.url()
    );
    let config = Arc::new(Config::from_yaml("ferry.yaml", &yaml).expect("config"));
    let credentials = std::collections::HashMap::from([(
        "resnet".to_owned(),
        ForgeCredentials::Token(SecretString::new(GITLAB_TOKEN)),
    )]);
    let me = Claimer::new("me", Duration::from_secs(60));
    let reporter = Reporter::new(store.clone(), config, credentials).with_replica(me.clone());
    let run = NewRun {
        project: "resnet".into(),
        pipeline: "train".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        trigger: EventKind::Push,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        mr: None,
        params: Default::default(),
        pipeline_path: ".ferry/train.yaml".into(),
        pipeline_yaml: "version: 1\nname: train\nsteps:\n  - { name: fit, run: x, image: i }\n"
            .into(),
        problems: Vec::new(),
        initial: RunState::Queued,
        dedup_scope: None,
        steps: vec!["fit".into()],
    };
    let (id, _) = store.create_run(&run).await.expect("run");
    let item = id.to_string();
    let statuses = || {
        forge
            .calls()
            .iter()
            .filter(|c| c.path.contains("/statuses/"))
            .count()
    };

    // Another live replica reports the run: nothing is sent from here, the row stays unsent.
    let other = Claimer::new("other", Duration::from_secs(60));
    assert!(
        store
            .claim(&other, ClaimKind::Report, &item)
            .await
            .expect("claim")
    );
    let stats = reporter.pass().await.expect("pass");
    assert_eq!((stats.sent, stats.deferred), (0, 0));
    assert_eq!(statuses(), 0);
    assert_eq!(store.stats().await.expect("stats").outbox_unsent, 1);

    // It dies (a lease that already ran out): this replica takes the run over and reports it.
    let dead = Claimer::new("other", Duration::ZERO);
    assert!(
        store
            .claim(&dead, ClaimKind::Report, &item)
            .await
            .expect("lapse")
    );
    let stats = reporter.pass().await.expect("pass");
    assert_eq!(stats.sent, 1);
    assert_eq!(statuses(), 1, "the pipeline's pending status, once");
    assert_eq!(
        store
            .claim_holder(ClaimKind::Report, &item)
            .await
            .expect("holder"),
        None,
        "released once reported"
    );

    // A replica whose lease ran out and whose claim was taken over is fenced: the renewal the
    // reporter makes before every forge call fails (`ReportError::ClaimLost`), so it stops.
    assert!(
        store
            .claim(
                &Claimer::new("me", Duration::ZERO),
                ClaimKind::Report,
                &item
            )
            .await
            .expect("mine")
    );
    assert!(
        store
            .claim(&other, ClaimKind::Report, &item)
            .await
            .expect("taken over")
    );
    assert!(
        !store
            .renew_claim(&me, ClaimKind::Report, &item)
            .await
            .expect("fenced")
    );
    store.close().await;
    db.drop().await;
}
