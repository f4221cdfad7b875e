//! Log tails: the last lines of the first failed step's log, fetched once from the executor when
//! the run fails (pod logs through the API server for Argo, the log file locally) and kept here,
//! already redacted, so that the summary, the dashboard and the API show the same text even after
//! the pods are gone. Secret values never reach this table: the dispatcher replaces every value
//! the run can see with `***` before storing.

use super::{Columns, RunId, Store, StoreError, now_millis, with_pool, write_tx};

/// The stored log tail of one step of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    /// The step it is of.
    pub step: String,
    /// Its last lines, redacted.
    pub text: String,
}

impl Store {
    /// Stores the tail of `step`'s log for `run`; a tail stored before is kept (the first fetch
    /// wins, so a repeated observation never rewrites what was reported). Returns whether it was
    /// stored now.
    pub async fn set_log_tail(
        &self,
        run: RunId,
        step: &str,
        text: &str,
    ) -> Result<bool, StoreError> {
        let added = write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO step_logs (run_id, step, tail, fetched_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (run_id, step) DO NOTHING",
            )
            .bind(run.get())
            .bind(step)
            .bind(text)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(added == 1)
    }

    /// The log tails stored for `run`, in the pipeline's step order.
    pub async fn log_tails(&self, run: RunId) -> Result<Vec<LogTail>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT l.step, l.tail FROM step_logs l \
                 LEFT JOIN steps s ON s.run_id = l.run_id AND s.name = l.step \
                 WHERE l.run_id = $1 ORDER BY s.position, l.step",
            )
            .bind(run.get())
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(LogTail {
                        step: r.text("step")?,
                        text: r.text("tail")?,
                    })
                })
                .collect()
        })
    }
}
