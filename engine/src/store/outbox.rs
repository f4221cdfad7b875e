//! The outbox: one row per run or step state change, written in the same transaction as the
//! change, for the reporter to send to the forge.
//!
//! Because the row commits with the state change, a crash can never lose a report nor report a
//! change that was rolled back. The reporter reads [`Store::pending_outbox`] (oldest first, due
//! rows only), sends (coalescing to the latest state of each run), then calls
//! [`Store::mark_outbox_sent`] or [`Store::mark_outbox_failed_attempt`].
//!
//! Payloads: kind [`OUTBOX_RUN`] carries `{"run": <id>, "state": "<run state>"}`; kind
//! [`OUTBOX_STEP`] carries `{"run": <id>, "step": "<name>", "state": "<step state>"}`.

use super::{
    Columns, OutboxId, RunId, Store, StoreError, UnixMillis, now_millis, with_pool, write_tx,
};

/// Outbox kind of a run state change.
pub const OUTBOX_RUN: &str = "run";
/// Outbox kind of a step state change.
pub const OUTBOX_STEP: &str = "step";

/// One unsent (or sent) report.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// Its id (increasing in commit order within one process; use it to order reports).
    pub id: OutboxId,
    /// The run it is about.
    pub run_id: RunId,
    /// [`OUTBOX_RUN`] or [`OUTBOX_STEP`].
    pub kind: String,
    /// What to report.
    pub payload: serde_json::Value,
    /// When the change happened.
    pub created_at: UnixMillis,
    /// When it was sent, if it was.
    pub sent_at: Option<UnixMillis>,
    /// Failed sending attempts so far.
    pub attempts: i64,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Not sent again before this time.
    pub next_attempt_at: UnixMillis,
}

/// What [`Store::change_mark`] reads: the newest outbox row's id and how many rows the newest
/// [`ChangeMark::WINDOW`] ids hold. Every state change adds an outbox row and rows are never
/// deleted, so the mark differs after any commit: a new newest row moves `latest`, and a row
/// with a lower id committed after a newer one (PostgreSQL assigns ids at insert, not at commit)
/// moves `recent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeMark {
    /// The newest outbox row's id (0 with none).
    pub latest: i64,
    /// How many rows have ids in `(latest - WINDOW, latest]`.
    pub recent: i64,
}

impl ChangeMark {
    /// How far back late commits are noticed, in ids.
    pub const WINDOW: i64 = 1024;
}

impl std::fmt::Display for ChangeMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.latest, self.recent)
    }
}

/// Inserts an outbox row inside the transaction `$tx` (used by the run and step transitions).
macro_rules! insert_outbox {
    ($tx:ident, $run_id:expr, $kind:expr, $payload:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO outbox (run_id, kind, payload_json, created_at, attempts, next_attempt_at) \
             VALUES ($1, $2, $3, $4, 0, $4)",
        )
        .bind($run_id)
        .bind($kind)
        .bind($payload)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}
pub(crate) use insert_outbox;

fn outbox_from_row(row: &impl Columns) -> Result<OutboxItem, StoreError> {
    let run = row.int("run_id")?;
    Ok(OutboxItem {
        id: OutboxId(row.int("id")?),
        run_id: RunId::new(run)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox run id {run}")))?,
        kind: row.text("kind")?,
        payload: serde_json::from_str(&row.text("payload_json")?)?,
        created_at: row.int("created_at")?,
        sent_at: row.opt_int("sent_at")?,
        attempts: row.int("attempts")?,
        last_error: row.opt_text("last_error")?,
        next_attempt_at: row.int("next_attempt_at")?,
    })
}

impl Store {
    /// Up to `limit` unsent outbox rows that are due now, oldest first.
    pub async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, run_id, kind, payload_json, created_at, sent_at, attempts, last_error, \
                 next_attempt_at FROM outbox WHERE sent_at IS NULL AND next_attempt_at <= $1 \
                 ORDER BY id LIMIT $2",
            )
            .bind(now_millis())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(outbox_from_row).collect()
        })
    }

    /// When the earliest unsent row falls due (it may be now or past), if any row is unsent.
    pub async fn first_outbox_due_at(&self) -> Result<Option<UnixMillis>, StoreError> {
        let row: (Option<i64>,) = with_pool!(self, |pool| {
            sqlx::query_as("SELECT MIN(next_attempt_at) FROM outbox WHERE sent_at IS NULL")
                .fetch_one(pool)
                .await?
        });
        Ok(row.0)
    }

    /// A mark that changes with every run or step state change committed by any process on this
    /// database (see [`ChangeMark`]); the dashboard polls it for its live updates. Two index
    /// lookups on the outbox's primary key.
    pub async fn change_mark(&self) -> Result<ChangeMark, StoreError> {
        let row: (Option<i64>, i64) = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT MAX(id), COUNT(*) FROM outbox \
                 WHERE id > (SELECT COALESCE(MAX(id), 0) FROM outbox) - $1",
            )
            .bind(ChangeMark::WINDOW)
            .fetch_one(pool)
            .await?
        });
        Ok(ChangeMark {
            latest: row.0.unwrap_or(0),
            recent: row.1,
        })
    }

    /// Every outbox row of a run, sent or not, oldest first.
    pub async fn outbox_for_run(&self, run: RunId) -> Result<Vec<OutboxItem>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, run_id, kind, payload_json, created_at, sent_at, attempts, last_error, \
                 next_attempt_at FROM outbox WHERE run_id = $1 ORDER BY id",
            )
            .bind(run.get())
            .fetch_all(pool)
            .await?;
            rows.iter().map(outbox_from_row).collect()
        })
    }

    /// Marks an outbox row sent. Idempotent: a row already sent keeps its first `sent_at`.
    pub async fn mark_outbox_sent(&self, id: OutboxId) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let done =
                sqlx::query("UPDATE outbox SET sent_at = $2 WHERE id = $1 AND sent_at IS NULL")
                    .bind(id.0)
                    .bind(now_millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if done == 0 {
                let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM outbox WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound {
                        entity: "outbox row",
                        id: id.0.to_string(),
                    });
                }
            }
        });
        Ok(())
    }

    /// Records a failed sending attempt: increments `attempts`, keeps `error` and makes the row
    /// due again at `retry_at` (the reporter computes it, honouring rate-limit headers).
    pub async fn mark_outbox_failed_attempt(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: UnixMillis,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 \
                 WHERE id = $1",
            )
            .bind(id.0)
            .bind(error)
            .bind(retry_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                return Err(StoreError::NotFound {
                    entity: "outbox row",
                    id: id.0.to_string(),
                });
            }
        });
        Ok(())
    }

    /// Makes an unsent row due at `at` without counting an attempt: the reporter has nothing to
    /// send for it yet (a run queued for less than `report.pending_after_ms`). A row already
    /// sent is left alone.
    pub async fn postpone_outbox(&self, id: OutboxId, at: UnixMillis) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE outbox SET next_attempt_at = $2 WHERE id = $1 AND sent_at IS NULL")
                .bind(id.0)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// Marks sent the unsent run rows of `run` about a state other than `current`: rows the
    /// reporter postponed while the run was queued, which the row of a later transition (sent
    /// now) covers. Step rows are left alone: each names a step that may still need its status.
    pub async fn settle_superseded_run_rows(
        &self,
        run: RunId,
        current: &str,
    ) -> Result<usize, StoreError> {
        let unsent: Vec<(i64, String)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, payload_json FROM outbox \
                 WHERE run_id = $1 AND kind = $2 AND sent_at IS NULL",
            )
            .bind(run.get())
            .bind(OUTBOX_RUN)
            .fetch_all(pool)
            .await?
        });
        let stale: Vec<i64> = unsent
            .into_iter()
            .filter(|(_, payload)| {
                serde_json::from_str::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|p| p.get("state").and_then(|s| s.as_str()).map(str::to_owned))
                    .is_some_and(|state| state != current)
            })
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        // One transaction (one fsync on SQLite) for all of them; a row sent meanwhile stays as
        // it is.
        let now = now_millis();
        write_tx!(self, |tx| {
            for id in &stale {
                sqlx::query("UPDATE outbox SET sent_at = $2 WHERE id = $1 AND sent_at IS NULL")
                    .bind(*id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(stale.len())
    }
}
