//! The durable store: deliveries (events), runs, steps, the outbox, the reporter's memory of
//! the forge (`forge_state`), approvals and cancel requests (`control`), the answers to comment
//! commands (`answers`) and the HTTP API's tokens (`tokens`), in SQLite or PostgreSQL.
//!
//! One [`Store`] wraps either a SQLite pool (the default, `sqlite://ferry.db`) or a PostgreSQL
//! pool (`postgres://` / `postgresql://` URLs, for several replicas). Every query is one SQL text
//! shared by both backends (numbered `$n` parameters, `ON CONFLICT`, `RETURNING`); only the schema
//! DDL ([`schema`]) and SQLite's batched delivery insert ([`group_commit`]) differ. Queries are
//! runtime `sqlx::query`, no compile-time macros.
//!
//! Guarantees the rest of ferry builds on:
//! - **Store before acknowledge**: [`Store::insert_event`] returns only after the delivery is
//!   committed durably (SQLite in WAL mode with `synchronous=FULL`: the WAL is fsynced at every
//!   commit, so an acknowledged delivery survives a process crash *and* a power loss. `NORMAL`
//!   would survive a process crash but may lose the last commits on power loss, which breaks the
//!   promise made by a `202`, so it is not used).
//! - **Idempotency**: a delivery key is stored once ([`Inserted::Duplicate`] for redeliveries); an
//!   event-triggered run is created once per dedup key ([`Store::create_run`]).
//! - **Compare-and-set transitions**: [`Store::transition_run`] and [`Store::transition_step`]
//!   check the state machine first ([`states`]), then update only if the row is still in the
//!   expected state, and write the matching outbox row in the same transaction.
//!
//! Times are milliseconds since the Unix epoch ([`UnixMillis`]), stored as 64-bit integers.
//!
//! SQLite writers in one process are serialised by an async mutex (plus `BEGIN IMMEDIATE` and a
//! busy timeout against other processes), so concurrent requests queue fairly instead of spinning
//! in SQLite's busy handler.

mod answers;
mod claims;
mod control;
mod events;
mod forge_state;
mod group_commit;
mod logs;
mod outbox;
mod quota;
mod runs;
pub mod schema;
pub mod states;
mod stats;
mod steps;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_claims;
#[cfg(test)]
mod tests_commands;
#[cfg(test)]
mod tests_forge;
#[cfg(test)]
mod tests_quota;
#[cfg(test)]
mod tests_runs;
#[cfg(test)]
mod tests_tokens;
mod tokens;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

pub use answers::{AnswerKind, NewAnswer, StoredAnswer};
pub use claims::{ClaimKind, DEFAULT_LEASE, Replica};
pub use control::{CancelOutcome, WaitReason};
pub use events::{Failure, Inserted, MAX_EVENT_ATTEMPTS, StoredEvent};
pub use forge_state::{CommentKind, ForgeComment};
pub use logs::LogTail;
pub use outbox::{ChangeMark, OUTBOX_RUN, OUTBOX_STEP, OutboxItem};
pub use runs::{NewRun, Page, Run, RunFilter, RunPage};
pub use states::{EventState, RunState, StepState};
pub use stats::StoreStats;
pub use steps::{Step, StepChange};
pub use tokens::{
    ApiToken, LAST_USE_RESOLUTION_MS, TOKEN_PREFIX, TokenId, TokenScope, TokenSecret,
};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// The current time in [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long a SQLite connection waits for another process's write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The id of a stored delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub i64);

/// The id of a run: a positive integer assigned by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(i64);

impl RunId {
    /// A run id from its number; `None` unless it is positive.
    pub fn new(id: i64) -> Option<RunId> {
        (id > 0).then_some(RunId(id))
    }

    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboxId(pub i64);

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (or `sqlite::memory:`).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error(
        "unsupported database URL {0:?}: expected sqlite:..., postgres://... or postgresql://..."
    )]
    UnsupportedUrl(String),
    /// The database failed (connection, constraint, I/O, ...).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A schema migration failed; nothing of it was applied.
    #[error("database migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// What failed.
        source: sqlx::Error,
    },
    /// No row with that id.
    #[error("{entity} {id} not found")]
    NotFound {
        /// `event`, `run`, `step` or `outbox row`.
        entity: &'static str,
        /// The id (for steps, `run/name`).
        id: String,
    },
    /// A compare-and-set found the row in another state than expected; nothing was written.
    #[error("{entity} {id} is {actual}, not {expected}")]
    Conflict {
        /// `event`, `run` or `step`.
        entity: &'static str,
        /// The id (for steps, `run/name`).
        id: String,
        /// The state the caller expected.
        expected: String,
        /// The state the row is in.
        actual: String,
    },
    /// The run state machine forbids this transition; nothing was written.
    #[error("illegal run transition {from} -> {to}")]
    IllegalTransition {
        /// Current state.
        from: RunState,
        /// Requested state.
        to: RunState,
    },
    /// The step state machine forbids this transition; nothing was written.
    #[error("illegal step transition {from} -> {to}")]
    IllegalStepTransition {
        /// Current state.
        from: StepState,
        /// Requested state.
        to: StepState,
    },
    /// Runs are created `queued` (or `failed`, for invalid pipelines) only.
    #[error("a run cannot be created in state {0}; use queued or failed")]
    InvalidInitialState(RunState),
    /// JSON could not be written or read.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value is not one this version of ferry understands.
    #[error("unexpected stored value: {0}")]
    Corrupt(String),
    /// A row with this unique name already exists; nothing was written.
    #[error("{entity} `{key}` already exists")]
    Duplicate {
        /// `token`.
        entity: &'static str,
        /// The name.
        key: String,
    },
    /// The operating system's random source failed.
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
    /// The group commit holding this delivery failed; nothing in it was stored.
    #[error("group commit failed: {0}")]
    GroupCommit(String),
}

/// The pools behind a [`Store`].
#[derive(Debug, Clone)]
enum Pools {
    Sqlite {
        pool: SqlitePool,
        /// Serialises this process's write transactions.
        write: Arc<tokio::sync::Mutex<()>>,
        /// Deliveries waiting for the next group commit ([`group_commit`]).
        queue: Arc<group_commit::GroupCommit>,
    },
    Postgres(PgPool),
}

/// The durable store. Cheap to clone (shares its pool).
#[derive(Debug, Clone)]
pub struct Store {
    pools: Pools,
    /// Notified after every commit that adds outbox rows (in this process), for the reporter.
    outbox_added: Arc<tokio::sync::Notify>,
}

/// Runs `$body` inside one write transaction named `$tx`, once per backend (the body is
/// type-checked for each). The transaction commits when the body yields a value; an early return
/// (`?` or `return`) drops it, which rolls back.
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match &$store.pools {
            $crate::store::Pools::Sqlite { pool, write, .. } => {
                let _guard = write.lock().await;
                #[allow(unused_mut)]
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::store::Pools::Postgres(pool) => {
                #[allow(unused_mut)]
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's pool (for reads), once per backend.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pools {
            $crate::store::Pools::Sqlite { pool: $pool, .. } => $body,
            $crate::store::Pools::Postgres($pool) => $body,
        }
    };
}

pub(crate) use {with_pool, write_tx};

/// Typed column access shared by both backends' rows.
pub(crate) trait Columns {
    /// A non-null integer column.
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    /// A nullable integer column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A non-null text column.
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
        }
    };
}
impl_columns!(SqliteRow);
impl_columns!(PgRow);

impl StoreError {
    /// Whether SQLite answered `SQLITE_BUSY` ("database is locked", any extended code). Only
    /// meaningful for SQLite: PostgreSQL's codes are SQLSTATEs.
    fn is_sqlite_busy(&self) -> bool {
        let source = match self {
            StoreError::Database(e) | StoreError::Migration { source: e, .. } => e,
            _ => return false,
        };
        match source {
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|code| code & 0xff == 5),
            _ => false,
        }
    }
}

/// Whether a URL names PostgreSQL.
fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Store {
    /// Opens (creating a SQLite file if missing) and migrates the database at `url`.
    ///
    /// `postgres://` and `postgresql://` URLs open PostgreSQL; `sqlite:` URLs (`sqlite://ferry.db`,
    /// `sqlite:///abs/path.db`, `sqlite::memory:`) open SQLite in WAL mode with
    /// `synchronous=FULL`, foreign keys on and a busy timeout. Migrations are applied before this
    /// returns; several processes may open the same database at once.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if is_postgres_url(url) {
            return Store::open_once(url).await;
        }
        // Two processes creating one new SQLite file at once (`ferry serve` and `ferry token
        // create`, a test and its server) can meet where SQLite answers `SQLITE_BUSY` at once
        // instead of waiting (switching a new file to WAL, a lock upgrade it refuses to avoid
        // deadlock). Opening is idempotent, so it is tried again for as long as the busy timeout.
        let deadline = tokio::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            match Store::open_once(url).await {
                Err(e) if e.is_sqlite_busy() && tokio::time::Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "the database is busy while opening; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                done => return done,
            }
        }
    }

    async fn open_once(url: &str) -> Result<Store, StoreError> {
        let pools = if is_postgres_url(url) {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            Pools::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            // A SQLite connection is a file handle, not a socket that can go stale: no ping (a
            // round trip to the connection's thread) before each use.
            let mut pool_options = SqlitePoolOptions::new()
                .max_connections(8)
                .test_before_acquire(false);
            if in_memory {
                // The database lives as long as one connection does.
                pool_options = pool_options
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            }
            let pool = pool_options.connect_with(options).await?;
            Pools::Sqlite {
                pool,
                write: Arc::new(tokio::sync::Mutex::new(())),
                queue: Arc::default(),
            }
        } else {
            return Err(StoreError::UnsupportedUrl(crate::config::redact_url(url)));
        };
        let store = Store {
            pools,
            outbox_added: Arc::new(tokio::sync::Notify::new()),
        };
        schema::migrate(&store).await?;
        Ok(store)
    }

    /// Notified (one stored permit, so no wake is lost) after each commit of this process that
    /// adds an outbox row: the reporter waits on it. Rows written by other processes are found by
    /// the reporter's periodic pass.
    pub fn outbox_notify(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.outbox_added)
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned. SQLite checkpoints its WAL
    /// when the last connection closes.
    pub async fn close(self) {
        match self.pools {
            Pools::Sqlite { pool, .. } => pool.close().await,
            Pools::Postgres(pool) => pool.close().await,
        }
    }
}

/// Maps a stored word to a state, or reports a corrupt value.
pub(crate) fn parse_word<T>(
    what: &str,
    word: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(word).ok_or_else(|| StoreError::Corrupt(format!("unknown {what} {word:?}")))
}
