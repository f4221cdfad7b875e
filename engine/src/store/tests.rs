//! One suite, run for real against every backend: SQLite (a temporary file) always, and
//! PostgreSQL when `FERRY_TEST_POSTGRES_URL` names a server (`.ci/postgres.sh` starts one). Each
//! test gets its own database: a fresh SQLite file, or a fresh PostgreSQL schema (selected with
//! `search_path` in the URL) that is dropped afterwards. Without the variable, each test prints
//! `SKIPPED (postgres): FERRY_TEST_POSTGRES_URL is not set` and runs on SQLite alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

use super::*;
use crate::event::{Actor, BranchChange, BranchPush, Event, ForgeKind, RepoIdentity};
use crate::pipeline::EventKind as Trigger;

/// A database for one test, removed when the test is done.
pub(super) struct TestDb {
    pub(super) backend: Backend,
    pub(super) url: String,
    pub(super) store: Store,
    pub(super) _dir: Option<tempfile::TempDir>,
    pub(super) pg_schema: Option<(String, String)>,
}

impl TestDb {
    pub(super) async fn finish(self) {
        self.store.close().await;
        if let Some((admin, schema)) = self.pg_schema {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("admin connection");
            let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await
                .expect("drop schema");
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unopened databases for `test`: a SQLite URL always, a PostgreSQL one when configured.
pub(super) async fn fresh_urls(
    test: &str,
) -> Vec<(
    Backend,
    String,
    Option<tempfile::TempDir>,
    Option<(String, String)>,
)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ferry.db");
    let mut out = vec![(
        Backend::Sqlite,
        format!("sqlite://{}", path.display()),
        Some(dir),
        None,
    )];
    match std::env::var("FERRY_TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            let schema = format!("ferry_test_{}", unique_suffix());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to FERRY_TEST_POSTGRES_URL");
            let create = format!("CREATE SCHEMA {schema}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&mut conn)
                .await
                .expect("create schema");
            let sep = if admin.contains('?') { '&' } else { '?' };
            let url = format!("{admin}{sep}options[search_path]={schema}");
            out.push((Backend::Postgres, url, None, Some((admin, schema))));
        }
        _ => {
            // Straight to the process's stderr, past libtest's capture, so that it always shows.
            let line = format!("{test}: SKIPPED (postgres): FERRY_TEST_POSTGRES_URL is not set\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        }
    }
    out
}

/// Opened, migrated databases for `test`, one per available backend.
pub(super) async fn backends(test: &str) -> Vec<TestDb> {
    let mut dbs = Vec::new();
    for (backend, url, dir, pg_schema) in fresh_urls(test).await {
        eprintln!("{test}: running on {backend:?}");
        let store = Store::open(&url).await.expect("open store");
        assert_eq!(store.backend(), backend);
        dbs.push(TestDb {
            backend,
            url,
            store,
            _dir: dir,
            pg_schema,
        });
    }
    dbs
}

pub(super) fn push_event(sha: &str) -> Event {
    Event {
        forge: ForgeKind::Gitlab,
        repo: RepoIdentity {
            full_name: "ml/resnet".into(),
            urls: vec!["https://gitlab.example.com/ml/resnet.git".into()],
        },
        kind: crate::event::EventKind::BranchPush(BranchPush {
            branch: "main".into(),
            before: Some("0".repeat(40)),
            after: Some(sha.into()),
            change: BranchChange::Updated,
            head_message: Some("train more".into()),
            pusher: Actor {
                login: "ada".into(),
                id: Some(7),
            },
            default_branch: Some("main".into()),
        }),
    }
}

pub(super) fn new_run(project: &str, pipeline: &str, sha: &str, scope: Option<&str>) -> NewRun {
    NewRun {
        project: project.into(),
        pipeline: pipeline.into(),
        sha: sha.into(),
        trigger: Trigger::Push,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        mr: None,
        params: BTreeMap::from([("lr".to_string(), serde_json::json!(0.1))]),
        pipeline_path: format!(".ferry/{pipeline}.yaml"),
        pipeline_yaml: "name: train\n".into(),
        problems: Vec::new(),
        initial: RunState::Queued,
        dedup_scope: scope.map(str::to_string),
        steps: vec!["prepare".into(), "train".into()],
    }
}

pub(super) async fn count(store: &Store, table_sql: &'static str) -> i64 {
    let (n,): (i64,) = with_pool!(store, |pool| sqlx::query_as(table_sql)
        .fetch_one(pool)
        .await
        .expect("count"));
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_inserts_of_one_key_store_one_event() {
    for db in backends("fifty_concurrent_inserts").await {
        let event = push_event(&"a".repeat(40));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, event) = (db.store.clone(), event.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .insert_event("resnet", ForgeKind::Gitlab, "delivery-1", &event)
                    .await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("task").expect("insert"));
        }
        let new: Vec<_> = results
            .iter()
            .filter(|r| matches!(r, Inserted::New(_)))
            .collect();
        assert_eq!(
            new.len(),
            1,
            "{:?}: exactly one New, got {results:?}",
            db.backend
        );
        let id = results[0].id();
        assert!(
            results.iter().all(|r| r.id() == id),
            "{:?}: one id",
            db.backend
        );
        assert_eq!(count(&db.store, "SELECT COUNT(*) FROM events").await, 1);
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_deliveries_store_each_key_once_with_one_id() {
    for db in backends("mixed_deliveries").await {
        let event = push_event(&"c".repeat(40));
        // 20 keys stored before; then 100 keys delivered three times each, all at once (SQLite
        // groups them into multi-row inserts: in-batch repeats and stored keys both occur).
        for k in 0..20 {
            db.store
                .insert_event("resnet", ForgeKind::Gitlab, &format!("key-{k}"), &event)
                .await
                .expect("insert before");
        }
        let mut tasks = Vec::new();
        for round in 0..3 {
            for k in 0..100 {
                let (store, event) = (db.store.clone(), event.clone());
                tasks.push(tokio::spawn(async move {
                    let key = format!("key-{k}");
                    let r = store
                        .insert_event("resnet", ForgeKind::Gitlab, &key, &event)
                        .await;
                    (round, key, r)
                }));
            }
        }
        let mut by_key: std::collections::BTreeMap<String, Vec<Inserted>> = Default::default();
        for task in tasks {
            let (_, key, r) = task.await.expect("task");
            by_key.entry(key).or_default().push(r.expect("insert"));
        }
        assert_eq!(by_key.len(), 100);
        for (key, results) in &by_key {
            let k: usize = key["key-".len()..].parse().expect("number");
            let new = results
                .iter()
                .filter(|r| matches!(r, Inserted::New(_)))
                .count();
            assert_eq!(
                new,
                usize::from(k >= 20),
                "{:?}: {key}: {results:?}",
                db.backend
            );
            let id = results[0].id();
            assert!(
                results.iter().all(|r| r.id() == id),
                "{:?}: {key}: {results:?}",
                db.backend
            );
            let stored = db
                .store
                .event_by_key(key)
                .await
                .expect("read")
                .expect("stored");
            assert_eq!(stored.id, id, "{:?}: {key}", db.backend);
        }
        assert_eq!(count(&db.store, "SELECT COUNT(*) FROM events").await, 100);
        db.finish().await;
    }
}

#[tokio::test]
async fn redelivery_is_a_duplicate_and_changes_nothing() {
    for db in backends("redelivery").await {
        let s = &db.store;
        let first = push_event(&"b".repeat(40));
        let Inserted::New(id) = s
            .insert_event("resnet", ForgeKind::Gitlab, "k1", &first)
            .await
            .expect("insert")
        else {
            panic!("first delivery must be new");
        };
        let before = s.event_by_id(id).await.expect("get").expect("stored");
        assert_eq!(before.event, first);
        assert_eq!(
            (before.state, before.attempts, before.forge),
            (EventState::Pending, 0, ForgeKind::Gitlab)
        );
        let other = push_event(&"c".repeat(40));
        let again = s
            .insert_event("other", ForgeKind::Github, "k1", &other)
            .await
            .expect("insert");
        assert_eq!(again, Inserted::Duplicate(id));
        assert_eq!(
            s.event_by_id(id).await.expect("get").expect("stored"),
            before
        );
        assert_eq!(count(s, "SELECT COUNT(*) FROM events").await, 1);
        db.finish().await;
    }
}

#[tokio::test]
async fn pending_events_retries_and_planning() {
    for db in backends("pending_events").await {
        let s = &db.store;
        let mut ids = Vec::new();
        for (i, project) in ["p1", "p2", "p1"].iter().enumerate() {
            let key = format!("key-{i}");
            ids.push(
                s.insert_event(
                    project,
                    ForgeKind::Gitlab,
                    &key,
                    &push_event(&"d".repeat(40)),
                )
                .await
                .expect("insert")
                .id(),
            );
        }
        let first = s.first_pending_event("p1").await.expect("first");
        assert_eq!(first.map(|e| e.id), Some(ids[0]));
        let p1: Vec<_> = s
            .pending_events("p1", 10)
            .await
            .expect("pending")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(p1, vec![ids[0], ids[2]], "oldest first");
        assert_eq!(s.pending_events("p1", 1).await.expect("pending").len(), 1);

        // A failed attempt with a retry in the future blocks its project (order is kept), not others.
        let later = now_millis() + 60_000;
        assert_eq!(
            s.mark_event_failed_attempt(ids[0], "git fetch failed", later, Failure::Transient)
                .await
                .expect("fail"),
            EventState::Pending
        );
        let p1: Vec<_> = s
            .pending_events("p1", 10)
            .await
            .expect("pending")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            p1,
            vec![ids[0], ids[2]],
            "still in order; the first is not due"
        );
        let e0 = s.event_by_id(ids[0]).await.expect("get").expect("stored");
        assert_eq!(
            (e0.attempts, e0.last_error.as_deref(), e0.next_attempt_at),
            (1, Some("git fetch failed"), later)
        );
        let first = s
            .first_pending_event("p1")
            .await
            .expect("first")
            .expect("some");
        assert_eq!(
            (first.id, first.next_attempt_at),
            (ids[0], later),
            "p1 waits behind its backing-off event"
        );
        let other = s
            .first_pending_event("p2")
            .await
            .expect("first")
            .expect("some");
        assert_eq!(other.id, ids[1], "other projects are not held back");
        s.mark_event_planned(ids[1]).await.expect("planned");
        s.mark_event_planned(ids[1]).await.expect("planned again");
        assert_eq!(s.first_pending_event("p2").await.expect("first"), None);

        // An outage is retried however long it lasts: past the maximum, still pending.
        for _ in 0..MAX_EVENT_ATTEMPTS + 5 {
            let state = s
                .mark_event_failed_attempt(ids[0], "forge down", 0, Failure::Transient)
                .await
                .expect("fail");
            assert_eq!(state, EventState::Pending);
        }
        let stats = s.stats().await.expect("stats");
        assert_eq!((stats.events_retrying, stats.events_failed), (1, 0));
        assert_eq!(s.troubled_event_counts().await.expect("counts"), (1, 0));
        // A permanent failure ends it once the attempts reach the maximum: the first one now.
        let state = s
            .mark_event_failed_attempt(ids[0], "commit gone", 0, Failure::Permanent)
            .await
            .expect("fail");
        assert_eq!(state, EventState::Failed);
        assert_eq!(
            s.event_by_id(ids[0])
                .await
                .expect("get")
                .expect("stored")
                .attempts,
            MAX_EVENT_ATTEMPTS + 7
        );
        let stats = s.stats().await.expect("stats");
        assert_eq!((stats.events_retrying, stats.events_failed), (0, 1));
        assert!(matches!(
            s.mark_event_planned(ids[0]).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(
            s.first_pending_event("p1")
                .await
                .expect("first")
                .map(|e| e.id),
            Some(ids[2]),
            "an event failed for good no longer blocks its project"
        );
        s.mark_event_planned(ids[2]).await.expect("planned");
        assert!(matches!(
            s.mark_event_failed_attempt(ids[2], "x", 0, Failure::Permanent)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.mark_event_planned(EventId(999_999)).await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(s.event_by_id(EventId(999_999)).await.expect("get"), None);

        // What needs attention: the failed event, newest first, by project and state.
        let ids_of = |events: Vec<StoredEvent>| events.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(
            ids_of(s.troubled_events(None, None, 10).await.expect("list")),
            vec![ids[0]]
        );
        let event = push_event(&"e".repeat(40));
        let retrying = s.insert_event("p2", ForgeKind::Gitlab, "key-3", &event);
        let retrying = retrying.await.expect("insert").id();
        s.mark_event_failed_attempt(retrying, "forge down", 0, Failure::Transient)
            .await
            .expect("fail");
        assert_eq!(
            ids_of(s.troubled_events(None, None, 10).await.expect("list")),
            vec![retrying, ids[0]]
        );
        assert_eq!(
            ids_of(s.troubled_events(Some("p1"), None, 10).await.expect("list")),
            vec![ids[0]]
        );
        assert_eq!(
            ids_of(
                s.troubled_events(None, Some(EventState::Pending), 10)
                    .await
                    .expect("list")
            ),
            vec![retrying]
        );
        assert_eq!(
            ids_of(s.troubled_events(None, None, 1).await.expect("list")),
            vec![retrying]
        );

        // Retried by hand: pending and due, with one attempt left; only a failed event can be.
        s.retry_event(ids[0]).await.expect("retry");
        let e0 = s.event_by_id(ids[0]).await.expect("get").expect("stored");
        assert_eq!(
            (e0.state, e0.attempts),
            (EventState::Pending, MAX_EVENT_ATTEMPTS - 1)
        );
        assert!(e0.next_attempt_at <= now_millis());
        assert!(matches!(
            s.retry_event(ids[0]).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.retry_event(EventId(999_999)).await,
            Err(StoreError::NotFound { .. })
        ));
        // A commit still missing fails it again at once; an outage would not.
        let state = s
            .mark_event_failed_attempt(ids[0], "commit gone", 0, Failure::Permanent)
            .await
            .expect("fail");
        assert_eq!(state, EventState::Failed);
        db.finish().await;
    }
}

#[tokio::test]
async fn data_survives_a_restart() {
    for db in backends("restart").await {
        let event = push_event(&"5".repeat(40));
        let eid = db
            .store
            .insert_event("resnet", ForgeKind::Gitlab, "k", &event)
            .await
            .expect("insert")
            .id();
        let (rid, _) = db
            .store
            .create_run(&new_run("resnet", "train", &"5".repeat(40), Some("main")))
            .await
            .expect("create");
        db.store
            .transition_run(rid, RunState::Queued, RunState::Submitted)
            .await
            .expect("submit");
        // A second process sees committed data while the first is still running...
        let other = Store::open(&db.url).await.expect("open second");
        assert_eq!(
            other
                .get_run(rid)
                .await
                .expect("get")
                .expect("stored")
                .state,
            RunState::Submitted
        );
        other.close().await;
        // ...and after the first stops, a restart sees everything.
        let TestDb {
            backend,
            url,
            store,
            _dir,
            pg_schema,
        } = db;
        store.close().await;
        let store = Store::open(&url).await.expect("reopen");
        assert_eq!(
            store
                .event_by_id(eid)
                .await
                .expect("get")
                .expect("stored")
                .event,
            event
        );
        assert_eq!(
            store
                .get_run(rid)
                .await
                .expect("get")
                .expect("stored")
                .state,
            RunState::Submitted
        );
        assert_eq!(
            store
                .insert_event("resnet", ForgeKind::Gitlab, "k", &event)
                .await
                .expect("insert"),
            Inserted::Duplicate(eid)
        );
        TestDb {
            backend,
            url,
            store,
            _dir,
            pg_schema,
        }
        .finish()
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_idempotent_and_survive_concurrent_starts() {
    for (backend, url, dir, pg_schema) in fresh_urls("migrations").await {
        eprintln!("migrations: running on {backend:?}");
        // Two processes starting at once on an empty database.
        let (a, b) = tokio::join!(Store::open(&url), Store::open(&url));
        let (a, b) = (a.expect("open a"), b.expect("open b"));
        assert_eq!(
            schema::applied_versions(&a).await.expect("versions"),
            schema::MIGRATIONS
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            schema::migrate(&a).await.expect("again"),
            0,
            "running the migrations again applies nothing"
        );
        b.close().await;
        let c = Store::open(&url).await.expect("open c");
        assert_eq!(
            schema::applied_versions(&c).await.expect("versions"),
            schema::MIGRATIONS
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>()
        );
        c.close().await;
        TestDb {
            backend,
            url,
            store: a,
            _dir: dir,
            pg_schema,
        }
        .finish()
        .await;
    }
}

#[tokio::test]
async fn sqlite_is_wal_with_full_sync_and_urls_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let store = Store::open(&url).await.expect("creates the file");
    let (mode,): (String,) = with_pool!(&store, |pool| sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .expect("pragma"));
    let (sync,): (i64,) = with_pool!(&store, |pool| sqlx::query_as("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .expect("pragma"));
    assert_eq!(
        (mode.as_str(), sync),
        ("wal", 2),
        "WAL with synchronous=FULL"
    );
    store.close().await;
    let memory = Store::open("sqlite::memory:").await.expect("in memory");
    let id = memory
        .insert_event("p", ForgeKind::Github, "k", &push_event("x"))
        .await
        .expect("insert")
        .id();
    assert!(memory.event_by_id(id).await.expect("get").is_some());
    assert!(
        matches!(Store::open("mysql://u:secret@h/db").await, Err(StoreError::UnsupportedUrl(u)) if !u.contains("secret"))
    );
}

/// PostgreSQL over TLS: a `database_url` with `sslmode=require` connects encrypted (rustls on
/// aws-lc-rs, the one TLS stack) and the store works through it. `.ci/postgres.sh` starts its
/// cluster with a self-signed certificate; `require` encrypts without checking it, as libpq does.
#[tokio::test]
async fn postgres_with_sslmode_require_connects_over_tls() {
    let Some((_, url, _, pg_schema)) = fresh_urls("postgres_tls")
        .await
        .into_iter()
        .find(|(backend, ..)| *backend == Backend::Postgres)
    else {
        return; // fresh_urls said why
    };
    let mut admin = sqlx::PgConnection::connect(&pg_schema.as_ref().expect("schema").0)
        .await
        .expect("admin connection");
    let (ssl,): (String,) = sqlx::query_as("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("show ssl");
    if ssl != "on" {
        let line = "postgres_tls: SKIPPED: the test cluster has no TLS (ssl = off)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    }
    let store = Store::open(&format!("{url}&sslmode=require"))
        .await
        .expect("open over TLS");
    let Pools::Postgres(pool) = &store.pools else {
        panic!("a postgres:// URL opens PostgreSQL");
    };
    let (encrypted, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the connection is not encrypted");
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{version:?}"
    );
    let stored = store
        .insert_event(
            "resnet",
            ForgeKind::Gitlab,
            "tls-1",
            &push_event(&"f".repeat(40)),
        )
        .await
        .expect("insert over TLS");
    assert!(matches!(stored, Inserted::New(_)));
    store.close().await;
    let schema = &pg_schema.as_ref().expect("schema").1;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .expect("drop schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_processes_may_create_and_open_one_sqlite_database_at_once() {
    // Each `Store::open` is its own pool, as each process has its own: the first creates the file
    // and switches it to WAL while the others connect and migrate.
    for round in 0..20 {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::open(&url).await })
            })
            .collect();
        for open in opens {
            let store = open
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            store.close().await;
        }
    }
}
