//! Trust: which merge requests run by themselves, and which wait for `/ferry ok-to-test`.
//!
//! A merge request from a fork, or opened (GitLab: updated) by someone without write access,
//! runs code nobody trusted yet on the project's GPUs and with its secrets. Its runs are created
//! `waiting` (`WaitReason::Approval`) with a message that becomes their pending commit status;
//! `/ferry ok-to-test` from someone with write access queues the runs of the head commit it was
//! given for (`service::commands`). The approval is pinned to that commit: the runs were created
//! for it, and a later push creates new waiting runs and cancels the old ones
//! ([`Planner::supersede_unapproved`]), so it needs a new approval.
//!
//! Who has write access is the forge's answer ([`Forge::access`]). Without a forge client
//! (`forge: none`) only the fork rule applies. A forge that cannot answer now delays planning
//! (retried); one that refuses the question counts as "no access": the run waits.
//!
//! [`Forge::access`]: crate::forge::report::Forge::access

use crate::config::ProjectConfig;
use crate::event::MergeRequestEvent;
use crate::forge::report::ForgeError;
use crate::service::planner::{PlanError, Planner};
use crate::store::CancelOutcome;

/// Why a run waits, as its status says it (after "waiting: ").
fn waiting_message(why: &str) -> String {
    format!("someone with write access must comment /ferry ok-to-test ({why})")
}

impl Planner {
    /// `None` when merge request `mr`'s runs may start by themselves, else the message of their
    /// waiting status.
    pub(super) async fn approval_needed(
        &self,
        project: &ProjectConfig,
        mr: &MergeRequestEvent,
    ) -> Result<Option<String>, PlanError> {
        if mr.from_fork {
            return Ok(Some(waiting_message("merge request from a fork")));
        }
        let who = &mr.author.login;
        let access = match self.forge(project).await {
            Ok(Some(forge)) => forge.access(&mr.author).await,
            Ok(None) => return Ok(None),
            Err(e) => Err(e),
        };
        match access {
            Ok(access) if access.may_command() => Ok(None),
            Ok(access) => {
                tracing::info!(project = %project.name, mr = mr.number, author = %who,
                    access = ?access, "merge request author has no write access; runs wait");
                let author = if who.is_empty() {
                    "the author".to_owned()
                } else {
                    format!("@{who}")
                };
                Ok(Some(waiting_message(&format!(
                    "{author} has no write access"
                ))))
            }
            Err(e @ ForgeError::Unavailable { .. }) => Err(e.into()),
            Err(e @ (ForgeError::Rejected { .. } | ForgeError::Setup(_))) => {
                tracing::warn!(project = %project.name, mr = mr.number, author = %who, error = %e,
                    "cannot check the merge request author's access; runs wait");
                Ok(Some(waiting_message(
                    "the author's access could not be checked",
                )))
            }
        }
    }

    /// Cancels merge request `mr`'s runs that wait for an approval at another commit than
    /// `head`: nobody can approve them any more (an approval is for the head).
    pub(super) async fn supersede_unapproved(
        &self,
        project: &ProjectConfig,
        mr: u64,
        head: &str,
    ) -> Result<(), PlanError> {
        let Ok(number) = i64::try_from(mr) else {
            return Ok(());
        };
        let short = head.get(..8).unwrap_or(head);
        let message = format!("superseded by {short}, which needs its own /ferry ok-to-test");
        for run in self
            .store
            .runs_awaiting_approval(&project.name, number)
            .await?
        {
            if run.sha == head {
                continue;
            }
            let outcome = self.store.request_cancel(run.id, &message).await?;
            if outcome == CancelOutcome::Cancelled {
                tracing::info!(run = %run.id, project = %project.name, mr, sha = %run.sha,
                    "unapproved run superseded by a newer commit");
            }
        }
        Ok(())
    }
}
