//! Following the runs other replicas started (several replicas on one PostgreSQL database): each
//! pass, at most once per `replicas.poll_ms`, the runs the store has as submitted or running that
//! this process does not follow yet go to the executor's reconcile, which adopts those whose
//! workflow exists. So every replica follows every started run, and the runs of a replica that
//! dies go on being followed. Also where claims left behind by dead replicas are dropped.

use std::time::Instant;

use super::{DispatchError, Dispatcher};
use crate::store::{Backend, Run, RunId, RunState};

impl Dispatcher {
    /// Remembers that the executor follows `runs` for this process.
    pub(super) fn mark_followed(&self, runs: impl IntoIterator<Item = RunId>) {
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(runs);
    }

    /// Hands the runs other replicas started (submitted or running in the store, not followed
    /// here) to the executor's reconcile, at most once per `replicas.poll_ms`, on PostgreSQL and
    /// with an executor that [`follows_any_run`]. Returns how many runs it adopted.
    ///
    /// [`follows_any_run`]: crate::executor::Executor::follows_any_run
    pub async fn adopt_started(&self) -> Result<usize, DispatchError> {
        if self.store.backend() != Backend::Postgres || !self.executor.follows_any_run() {
            return Ok(0);
        }
        {
            let mut last = self.adopted_at.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.config.replicas.poll()) {
                return Ok(0);
            }
            *last = Some(Instant::now());
        }
        self.store.drop_lapsed_claims(&self.replica).await?;
        let new: Vec<RunId> = {
            let ids = self.store.started_run_ids().await?;
            let followed = self.followed.lock().unwrap_or_else(|e| e.into_inner());
            ids.into_iter()
                .filter(|id| !followed.contains(id))
                .collect()
        };
        let mut runs = Vec::with_capacity(new.len());
        for id in new {
            if let Some(run) = self.store.get_run(id).await?
                && matches!(run.state, RunState::Submitted | RunState::Running)
            {
                runs.push(run);
            }
        }
        if runs.is_empty() {
            return Ok(0);
        }
        self.follow_again(&runs).await;
        Ok(runs.len())
    }

    /// Has the executor follow `runs` again and applies what it says of each.
    pub(super) async fn follow_again(&self, runs: &[Run]) -> bool {
        match self.executor.reconcile(runs).await {
            Ok(observations) => {
                self.mark_followed(runs.iter().map(|r| r.id));
                for obs in &observations {
                    self.apply_logged(obs).await;
                }
                tracing::info!(
                    runs = runs.len(),
                    executor = self.executor.kind(),
                    "following started runs"
                );
                true
            }
            Err(e) => {
                // The runs stay as they are; the next pass (or the executor's watch) tries again.
                self.count_error("reconcile");
                tracing::error!(error = %e, "the executor could not reconcile; runs left as they are");
                false
            }
        }
    }
}
