//! What per-project quotas (`service::quota`) read and write: a project's runs that hold or want
//! capacity, and parking a queued run as `waiting` for capacity.
//!
//! A parked run has [`WaitReason::Quota`]; it is released with [`Store::release_run`] for that
//! reason only, so a quota never releases a run that waits for an approval, and an approval never
//! releases a run that waits for capacity.

use serde_json::json;

use super::control::WaitReason;
use super::outbox::{OUTBOX_RUN, insert_outbox};
use super::runs::{run_from_row, select_runs};
use super::{Run, RunId, RunState, Store, StoreError, now_millis, with_pool, write_tx};

impl Store {
    /// `project`'s runs that hold capacity (submitted, running) or want it (queued, or waiting for
    /// capacity), oldest first: the line a quota admits from, in order. Runs waiting for an
    /// approval are not in it.
    pub async fn quota_runs(&self, project: &str) -> Result<Vec<Run>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(select_runs!(
                "WHERE project = $1 AND (state IN ('queued', 'submitted', 'running') \
                 OR (state = 'waiting' AND wait_reason = $2)) ORDER BY id"
            ))
            .bind(project)
            .bind(WaitReason::Quota.as_str())
            .fetch_all(pool)
            .await?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// Parks a queued run for capacity: `queued` -> `waiting` with [`WaitReason::Quota`] and
    /// `message` (its status description), with its outbox row. Returns `false` (and writes
    /// nothing) when the run is no longer queued.
    pub async fn park_run(&self, id: RunId, message: &str) -> Result<bool, StoreError> {
        let now = now_millis();
        let payload = json!({"run": id.get(), "state": RunState::Waiting.as_str()}).to_string();
        let parked = write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE runs SET state = 'waiting', wait_reason = $3, message = $4, \
                 updated_at = $2 WHERE id = $1 AND state = 'queued'",
            )
            .bind(id.get())
            .bind(now)
            .bind(WaitReason::Quota.as_str())
            .bind(message)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                insert_outbox!(tx, id.get(), OUTBOX_RUN, &payload, now);
            }
            done == 1
        });
        if parked {
            self.outbox_added.notify_one();
        }
        Ok(parked)
    }
}
