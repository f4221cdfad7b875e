//! Steps: one row per step of a run, with its own state machine ([`StepState`]).
//!
//! [`Store::transition_step`] is a compare-and-set like [`Store::transition_run`]: checked
//! against [`StepState::can_go_to`] first, then applied only if the step is still in the expected
//! state, with the outbox row `{"run": id, "step": name, "state": to}` in the same transaction.
//! Every entry into `running` (the first attempt, and each retry: running -> running) increments
//! `attempts`.

use serde_json::{Value, json};

use super::outbox::{OUTBOX_STEP, insert_outbox};
use super::states::StepState;
use super::{Columns, RunId, Store, StoreError, UnixMillis, parse_word, with_pool, write_tx};

/// A stored step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The run it belongs to.
    pub run_id: RunId,
    /// Its name, unique in the run.
    pub name: String,
    /// Its index in the pipeline, from 0.
    pub position: i64,
    /// Its state.
    pub state: StepState,
    /// How many times it entered `running`.
    pub attempts: i64,
    /// The last message (executor status, error, skip reason).
    pub message: Option<String>,
    /// Metrics reported by an evaluation step.
    pub metrics: Option<Value>,
    /// When it first entered `running`.
    pub started_at: Option<UnixMillis>,
    /// When it reached a terminal state.
    pub finished_at: Option<UnixMillis>,
}

/// What a step transition records besides the state; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct StepChange {
    /// A new message.
    pub message: Option<String>,
    /// New metrics.
    pub metrics: Option<Value>,
}

fn step_from_row(row: &impl Columns) -> Result<Step, StoreError> {
    let run = row.int("run_id")?;
    Ok(Step {
        run_id: RunId::new(run).ok_or_else(|| StoreError::Corrupt(format!("step run id {run}")))?,
        name: row.text("name")?,
        position: row.int("position")?,
        state: parse_word("step state", &row.text("state")?, StepState::parse)?,
        attempts: row.int("attempts")?,
        message: row.opt_text("message")?,
        metrics: row
            .opt_text("metrics_json")?
            .map(|m| serde_json::from_str(&m))
            .transpose()?,
        started_at: row.opt_int("started_at")?,
        finished_at: row.opt_int("finished_at")?,
    })
}

impl Store {
    /// Adds `pending` steps to a run, in pipeline order (positions continue after the steps it
    /// already has). Idempotent: names the run already has are left as they are.
    pub async fn insert_steps(&self, run: RunId, names: &[&str]) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE id = $1")
                .bind(run.get())
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    entity: "run",
                    id: run.to_string(),
                });
            }
            let (next,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM steps WHERE run_id = $1")
                .bind(run.get())
                .fetch_one(&mut *tx)
                .await?;
            let mut position = next;
            for name in names {
                let added = sqlx::query(
                    "INSERT INTO steps (run_id, name, position, state, attempts) \
                     VALUES ($1, $2, $3, 'pending', 0) ON CONFLICT (run_id, name) DO NOTHING",
                )
                .bind(run.get())
                .bind(*name)
                .bind(position)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                position += i64::try_from(added).unwrap_or(0);
            }
        });
        Ok(())
    }

    /// The steps of a run, in pipeline order.
    pub async fn steps(&self, run: RunId) -> Result<Vec<Step>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT run_id, name, position, state, attempts, message, metrics_json, \
                 started_at, finished_at FROM steps WHERE run_id = $1 ORDER BY position, name",
            )
            .bind(run.get())
            .fetch_all(pool)
            .await?;
            rows.iter().map(step_from_row).collect()
        })
    }

    /// Moves a step from `from` to `to` if it is still in `from` (compare-and-set), records
    /// `change`, and writes the outbox row in the same transaction.
    ///
    /// Illegal transitions give [`StoreError::IllegalStepTransition`] before anything is written;
    /// a step no longer in `from` gives [`StoreError::Conflict`]. `running -> running` is a retry
    /// attempt.
    pub async fn transition_step(
        &self,
        run: RunId,
        name: &str,
        from: StepState,
        to: StepState,
        change: &StepChange,
    ) -> Result<(), StoreError> {
        if !from.can_go_to(to) {
            return Err(StoreError::IllegalStepTransition { from, to });
        }
        let now = super::now_millis();
        let attempt = i64::from(to == StepState::Running);
        let started = (to == StepState::Running).then_some(now);
        let finished = to.is_terminal().then_some(now);
        let metrics = change.metrics.as_ref().map(Value::to_string);
        let payload = json!({"run": run.get(), "step": name, "state": to.as_str()}).to_string();
        let id = || format!("{run}/{name}");
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE steps SET state = $4, attempts = attempts + $5, \
                 message = COALESCE($6, message), metrics_json = COALESCE($7, metrics_json), \
                 started_at = COALESCE(started_at, $8), finished_at = COALESCE($9, finished_at) \
                 WHERE run_id = $1 AND name = $2 AND state = $3",
            )
            .bind(run.get())
            .bind(name)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(attempt)
            .bind(&change.message)
            .bind(&metrics)
            .bind(started)
            .bind(finished)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                let state: Option<(String,)> =
                    sqlx::query_as("SELECT state FROM steps WHERE run_id = $1 AND name = $2")
                        .bind(run.get())
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                return Err(match state {
                    None => StoreError::NotFound {
                        entity: "step",
                        id: id(),
                    },
                    Some((actual,)) => StoreError::Conflict {
                        entity: "step",
                        id: id(),
                        expected: from.as_str().to_string(),
                        actual,
                    },
                });
            }
            insert_outbox!(tx, run.get(), OUTBOX_STEP, &payload, now);
        });
        self.outbox_added.notify_one();
        Ok(())
    }
}
