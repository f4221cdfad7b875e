//! Schema migrations, embedded per backend and applied by [`crate::store::Store::open`].
//!
//! Each migration has a version, a name and one SQL text per backend; the versions applied are
//! recorded in `ferry_migrations`. Applying runs in one transaction that first takes a lock
//! (SQLite: `BEGIN IMMEDIATE`, the database's write lock; PostgreSQL: a transaction-scoped
//! advisory lock), so two processes starting at once apply each migration exactly once, and a
//! migration that fails leaves nothing behind. Running the migrations again is a no-op.
//!
//! Both schemas store times as 64-bit integers (milliseconds since the epoch) and every integer
//! column as 64 bits (`BIGINT` on PostgreSQL), so that one SQL text and one row decoder serve both.

use super::{Store, StoreError, now_millis};

/// One migration.
pub struct Migration {
    /// Version, increasing from 1.
    pub version: i64,
    /// Short name.
    pub name: &'static str,
    /// DDL for SQLite.
    pub sqlite: &'static str,
    /// DDL for PostgreSQL.
    pub postgres: &'static str,
}

/// The key of the PostgreSQL advisory lock held while migrating ("ferry" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x66_65_72_72_79;

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS ferry_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events, runs, steps, outbox",
        sqlite: V1_SQLITE,
        postgres: V1_POSTGRES,
    },
    Migration {
        version: 2,
        name: "oldest pending event per project",
        sqlite: V2,
        postgres: V2,
    },
    Migration {
        version: 3,
        name: "run messages from the executor",
        sqlite: V3,
        postgres: V3,
    },
    Migration {
        version: 4,
        name: "forge notes and sent statuses",
        sqlite: V4,
        postgres: V4,
    },
    Migration {
        version: 5,
        name: "comment commands: approvals, cancel requests, answers",
        sqlite: V5_SQLITE,
        postgres: V5_POSTGRES,
    },
    Migration {
        version: 7,
        name: "API tokens; who triggered a run",
        sqlite: V7_SQLITE,
        postgres: V7_POSTGRES,
    },
    Migration {
        version: 9,
        name: "claims of replicas",
        sqlite: V9,
        postgres: V9,
    },
    Migration {
        version: 10,
        name: "log tails of failed steps",
        sqlite: V10_SQLITE,
        postgres: V10_POSTGRES,
    },
];

/// Claims of replicas sharing one PostgreSQL database (see `store::claims`): who plans a
/// project, submits a run or reports a run, until when. SQLite creates the table but never writes
/// it (one process).
const V9: &str = "
CREATE TABLE claims (
    kind TEXT NOT NULL CHECK (kind IN ('plan', 'submit', 'report', 'answer')),
    item TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claim_until BIGINT NOT NULL,
    PRIMARY KEY (kind, item)
);
";

/// Log tails (`store::logs`): the redacted last lines of a failed step's log, fetched once.
const V10_SQLITE: &str = "
CREATE TABLE step_logs (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step TEXT NOT NULL,
    tail TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
";

const V10_POSTGRES: &str = "
CREATE TABLE step_logs (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    step TEXT NOT NULL,
    tail TEXT NOT NULL,
    fetched_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);
";

/// Comment commands and trust (`service::commands`): why a run waits (`approval`: for
/// `/ferry ok-to-test`), a cancel asked of a started run (the dispatcher passes it to the
/// executor), runs per merge request, and the answers to comments, sent once each by the
/// reporter (`comment_key` is unique: a comment is never answered twice).
const V5_SQLITE: &str = "
ALTER TABLE runs ADD COLUMN wait_reason TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested_at INTEGER;
CREATE INDEX runs_mr ON runs (project, mr, id) WHERE mr IS NOT NULL;
CREATE INDEX runs_cancel_requested ON runs (id)
    WHERE cancel_requested_at IS NOT NULL AND state IN ('submitted', 'running');
CREATE TABLE comment_answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    comment_key TEXT NOT NULL UNIQUE,
    mr INTEGER NOT NULL,
    comment_id INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('reaction', 'reply')),
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    tried_at INTEGER,
    sent_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX comment_answers_unsent ON comment_answers (next_attempt_at, id) WHERE sent_at IS NULL;
";

/// [`V5_SQLITE`] for PostgreSQL.
const V5_POSTGRES: &str = "
ALTER TABLE runs ADD COLUMN wait_reason TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested_at BIGINT;
CREATE INDEX runs_mr ON runs (project, mr, id) WHERE mr IS NOT NULL;
CREATE INDEX runs_cancel_requested ON runs (id)
    WHERE cancel_requested_at IS NOT NULL AND state IN ('submitted', 'running');
CREATE TABLE comment_answers (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project TEXT NOT NULL,
    comment_key TEXT NOT NULL UNIQUE,
    mr BIGINT NOT NULL,
    comment_id BIGINT,
    kind TEXT NOT NULL CHECK (kind IN ('reaction', 'reply')),
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    tried_at BIGINT,
    sent_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX comment_answers_unsent ON comment_answers (next_attempt_at, id) WHERE sent_at IS NULL;
";

/// Bearer tokens of the HTTP API (see `store::tokens`): only the SHA-256 of each token is kept. A
/// name is unique among the tokens not revoked. `scope` is `admin` (every project, `project` NULL)
/// or `project` (that project only). Runs remember who asked for them through the API (the token's
/// name); event-triggered runs leave it NULL (their event names the forge user).
const V7_SQLITE: &str = "
ALTER TABLE runs ADD COLUMN triggered_by TEXT;
CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('admin', 'project')),
    project TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER,
    CHECK ((scope = 'admin') = (project IS NULL))
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
";

const V7_POSTGRES: &str = "
ALTER TABLE runs ADD COLUMN triggered_by TEXT;
CREATE TABLE api_tokens (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('admin', 'project')),
    project TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT,
    CHECK ((scope = 'admin') = (project IS NULL))
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
";

/// What the reporter remembers about the forge (see `store::forge_state`): each run's note or
/// check run id (`forge_id` NULL while a create is in flight), and the last state sent per status
/// context of a run.
const V4: &str = "
CREATE TABLE forge_comments (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    kind TEXT NOT NULL CHECK (kind IN ('note', 'check_run')),
    forge_id BIGINT,
    body_hash TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, kind)
);
CREATE TABLE forge_statuses (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, context)
);
";

/// Planning reads each project's oldest pending event; this keeps that a lookup, not a scan.
/// The executor's last word on a run (why it failed, that it is gone, that node status is
/// offloaded).
const V3: &str = "ALTER TABLE runs ADD COLUMN message TEXT;";

const V2: &str = "CREATE INDEX events_project_pending ON events (project, state, id);";

const V1_SQLITE: &str = r#"
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    forge TEXT NOT NULL,
    delivery_key TEXT NOT NULL UNIQUE,
    event_json TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'planned', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX events_pending ON events (state, next_attempt_at, id);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    sha TEXT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('push', 'tag', 'merge_request', 'manual', 'comment')),
    event_id INTEGER REFERENCES events (id),
    rerun_of INTEGER REFERENCES runs (id),
    git_ref TEXT NOT NULL,
    branch TEXT,
    tag TEXT,
    mr INTEGER,
    params_json TEXT NOT NULL,
    pipeline_path TEXT NOT NULL,
    pipeline_yaml TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'waiting', 'submitted', 'running', 'succeeded', 'failed', 'cancelled')),
    problems_json TEXT NOT NULL,
    dedup_key TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX runs_project ON runs (project, id);
CREATE INDEX runs_commit ON runs (project, sha, pipeline);
CREATE INDEX runs_state ON runs (state, id);

CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    metrics_json TEXT,
    started_at INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    kind TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX outbox_unsent ON outbox (next_attempt_at, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_run ON outbox (run_id, id);
"#;

const V1_POSTGRES: &str = r#"
CREATE TABLE events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project TEXT NOT NULL,
    forge TEXT NOT NULL,
    delivery_key TEXT NOT NULL UNIQUE,
    event_json TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'planned', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX events_pending ON events (state, next_attempt_at, id);

CREATE TABLE runs (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    sha TEXT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('push', 'tag', 'merge_request', 'manual', 'comment')),
    event_id BIGINT REFERENCES events (id),
    rerun_of BIGINT REFERENCES runs (id),
    git_ref TEXT NOT NULL,
    branch TEXT,
    tag TEXT,
    mr BIGINT,
    params_json TEXT NOT NULL,
    pipeline_path TEXT NOT NULL,
    pipeline_yaml TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'waiting', 'submitted', 'running', 'succeeded', 'failed', 'cancelled')),
    problems_json TEXT NOT NULL,
    dedup_key TEXT UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX runs_project ON runs (project, id);
CREATE INDEX runs_commit ON runs (project, sha, pipeline);
CREATE INDEX runs_state ON runs (state, id);

CREATE TABLE steps (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    attempts BIGINT NOT NULL DEFAULT 0,
    message TEXT,
    metrics_json TEXT,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE outbox (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES runs (id),
    kind TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX outbox_unsent ON outbox (next_attempt_at, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_run ON outbox (run_id, id);
"#;

/// The highest migration version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies the migrations the database lacks, in one locked transaction. Returns how many were
/// applied (0 when the schema was already current).
pub async fn migrate(store: &Store) -> Result<usize, StoreError> {
    let postgres = matches!(store.backend(), super::Backend::Postgres);
    let applied = super::write_tx!(store, |tx| {
        if postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::raw_sql(CREATE_MIGRATIONS_TABLE)
            .execute(&mut *tx)
            .await?;
        let mut applied = 0;
        for migration in MIGRATIONS {
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM ferry_migrations WHERE version = $1")
                    .bind(migration.version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            let ddl = if postgres {
                migration.postgres
            } else {
                migration.sqlite
            };
            sqlx::raw_sql(ddl)
                .execute(&mut *tx)
                .await
                .map_err(|source| StoreError::Migration {
                    version: migration.version,
                    name: migration.name,
                    source,
                })?;
            sqlx::query(
                "INSERT INTO ferry_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
            applied += 1;
        }
        applied
    });
    Ok(applied)
}

/// The versions recorded as applied, ascending.
pub async fn applied_versions(store: &Store) -> Result<Vec<i64>, StoreError> {
    let rows: Vec<(i64,)> = super::with_pool!(store, |pool| {
        sqlx::query_as("SELECT version FROM ferry_migrations ORDER BY version")
            .fetch_all(pool)
            .await?
    });
    Ok(rows.into_iter().map(|(v,)| v).collect())
}
