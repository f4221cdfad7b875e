//! Steering runs from outside the executor: runs that wait for an approval, approving them, and
//! cancelling (comment commands and trust, `service::commands`).
//!
//! **Approval.** A run of an untrusted merge request is created `waiting` with
//! [`WaitReason::Approval`] and a message for its status ([`Store::create_waiting_run`]); the
//! dispatcher never takes waiting runs. [`Store::approve_run`] moves it to `queued` (a
//! compare-and-set that also clears the reason and the message), so it runs at exactly the commit
//! it was created for. The reason is stored so that other kinds of waiting (quota) never release
//! a run that needs an approval, and the other way round.
//!
//! **Cancelling.** [`Store::request_cancel`] cancels a run that has not reached the executor
//! (queued or waiting) at once, in one transaction with its pending steps and its outbox row. A
//! run the executor has (submitted or running) gets `cancel_requested_at`; the dispatcher passes
//! the request to the executor ([`Store::cancel_requested_runs`]) and the executor's observation
//! then moves the run to `cancelled` like any other state change. The request survives restarts:
//! a dispatcher that starts again asks the executor again (cancelling is idempotent there).

use serde_json::json;

use super::outbox::{OUTBOX_RUN, insert_outbox};
use super::runs::{run_from_row, select_runs};
use super::{NewRun, Run, RunId, RunState, Store, StoreError, now_millis, with_pool, write_tx};

/// Why a run waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// For `/ferry ok-to-test`: the merge request comes from a fork or from an author without
    /// write access.
    Approval,
    /// For capacity: the project's `max_concurrent_runs` or `max_gpus` is used up
    /// (`service::quota`).
    Quota,
}

impl WaitReason {
    /// The word stored in `runs.wait_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Approval => "approval",
            WaitReason::Quota => "quota",
        }
    }
}

/// What [`Store::request_cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run had not reached the executor: it is cancelled now.
    Cancelled,
    /// The executor has the run: the dispatcher will ask it to stop.
    Requested,
    /// The run was already finished, in this state; nothing changed.
    Finished(RunState),
}

/// How many times a cancel re-reads a run that changed state under it.
const CANCEL_ATTEMPTS: usize = 4;

impl Store {
    /// Creates a run (like [`Store::create_run`], deduplicated the same way) in state `waiting`
    /// for `reason`, with `message` as its message (the status description). `run.initial` must
    /// be [`RunState::Queued`]: the state it goes to once released.
    pub async fn create_waiting_run(
        &self,
        run: &NewRun,
        reason: WaitReason,
        message: &str,
    ) -> Result<(RunId, bool), StoreError> {
        self.insert_run(run, Some((reason, message)), None).await
    }

    /// The runs of `project`'s merge request `mr` waiting for an approval, oldest first.
    pub async fn runs_awaiting_approval(
        &self,
        project: &str,
        mr: i64,
    ) -> Result<Vec<Run>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(select_runs!(
                "WHERE project = $1 AND mr = $2 AND state = 'waiting' AND wait_reason = $3 \
                 ORDER BY id"
            ))
            .bind(project)
            .bind(mr)
            .bind(WaitReason::Approval.as_str())
            .fetch_all(pool)
            .await?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// Releases a run waiting for an approval: `waiting` -> `queued`, clearing its wait reason
    /// and message, with its outbox row. Returns `false` (and writes nothing) when the run is not
    /// waiting for an approval (any more).
    pub async fn approve_run(&self, id: RunId) -> Result<bool, StoreError> {
        self.release_run(id, WaitReason::Approval).await
    }

    /// Releases a run waiting for `reason` (and for nothing else): `waiting` -> `queued`, clearing
    /// its wait reason and message, with its outbox row. Returns `false` (and writes nothing) when
    /// the run is not waiting for that reason (any more).
    pub async fn release_run(&self, id: RunId, reason: WaitReason) -> Result<bool, StoreError> {
        let now = now_millis();
        let payload = json!({"run": id.get(), "state": RunState::Queued.as_str()}).to_string();
        let released = write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE runs SET state = 'queued', wait_reason = NULL, message = NULL, \
                 updated_at = $2 WHERE id = $1 AND state = 'waiting' AND wait_reason = $3",
            )
            .bind(id.get())
            .bind(now)
            .bind(reason.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                insert_outbox!(tx, id.get(), OUTBOX_RUN, &payload, now);
            }
            done == 1
        });
        if released {
            self.outbox_added.notify_one();
        }
        Ok(released)
    }

    /// Cancels run `id`, with `message` as its message: at once when it has not reached the
    /// executor (queued or waiting: the run and its pending steps become `cancelled`, with the
    /// run's outbox row), else by recording the request for the dispatcher. A finished run is left
    /// as it is.
    pub async fn request_cancel(
        &self,
        id: RunId,
        message: &str,
    ) -> Result<CancelOutcome, StoreError> {
        for _ in 0..CANCEL_ATTEMPTS {
            if let Some(outcome) = self.try_cancel(id, message).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Conflict {
            entity: "run",
            id: id.to_string(),
            expected: "a state that stays put while it is cancelled".to_owned(),
            actual: "changing".to_owned(),
        })
    }

    /// One attempt of [`Store::request_cancel`]; `None` when the run changed state meanwhile.
    async fn try_cancel(
        &self,
        id: RunId,
        message: &str,
    ) -> Result<Option<CancelOutcome>, StoreError> {
        let Some(run) = self.get_run(id).await? else {
            return Err(StoreError::NotFound {
                entity: "run",
                id: id.to_string(),
            });
        };
        let now = now_millis();
        let outcome = match run.state {
            RunState::Queued | RunState::Waiting => {
                let payload =
                    json!({"run": id.get(), "state": RunState::Cancelled.as_str()}).to_string();
                write_tx!(self, |tx| {
                    let done = sqlx::query(
                        "UPDATE runs SET state = 'cancelled', wait_reason = NULL, message = $3, \
                         updated_at = $2, finished_at = $2 WHERE id = $1 AND state = $4",
                    )
                    .bind(id.get())
                    .bind(now)
                    .bind(message)
                    .bind(run.state.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done == 0 {
                        return Ok(None);
                    }
                    sqlx::query(
                        "UPDATE steps SET state = 'cancelled', finished_at = $2 \
                         WHERE run_id = $1 AND state = 'pending'",
                    )
                    .bind(id.get())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    insert_outbox!(tx, id.get(), OUTBOX_RUN, &payload, now);
                });
                self.outbox_added.notify_one();
                CancelOutcome::Cancelled
            }
            RunState::Submitted | RunState::Running => {
                let done = write_tx!(self, |tx| {
                    sqlx::query(
                        "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $2), \
                         message = $3, updated_at = $2 WHERE id = $1 AND state = $4",
                    )
                    .bind(id.get())
                    .bind(now)
                    .bind(message)
                    .bind(run.state.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                });
                if done == 0 {
                    return Ok(None);
                }
                CancelOutcome::Requested
            }
            RunState::Succeeded | RunState::Failed | RunState::Cancelled => {
                CancelOutcome::Finished(run.state)
            }
        };
        Ok(Some(outcome))
    }

    /// Runs the executor has (submitted or running) whose cancel was requested, oldest first.
    pub async fn cancel_requested_runs(&self) -> Result<Vec<Run>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(select_runs!(
                "WHERE cancel_requested_at IS NOT NULL AND state IN ('submitted', 'running') \
                 ORDER BY id"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(run_from_row).collect()
        })
    }
}
