//! Answers to comment commands: each stored answer (`store::answers`) becomes one reaction on
//! the comment or one reply on the merge request.
//!
//! A reply is created once: the row is marked tried before the first create, and a row tried
//! before (a crash, a lost answer, an outage in the middle of the call) is looked for on the merge
//! request by its marker ([`crate::service::commands::reply_marker`]) before anything is
//! created again. Reacting twice is harmless on both forges, so reactions are simply sent again.
//! Failures follow the reporter's policy: a call the forge may take later is retried after the
//! wait it asked for or a back-off; one it refuses for good is logged and dropped.

use std::time::{Duration, SystemTime};

use super::run::tolerate;
use super::{BATCH, PassStats, ReportError, Reporter};
use crate::forge::report::{ForgeError, Reaction};
use crate::service::commands::reply_marker;
use crate::store::{AnswerKind, ClaimKind, StoreError, StoredAnswer, now_millis};

impl Reporter {
    /// Sends the due answers.
    pub(super) async fn send_answers(&self) -> Result<PassStats, ReportError> {
        let mut stats = PassStats::default();
        for stored in self.store.pending_answers(BATCH).await? {
            let item = stored.id.to_string();
            if !self
                .store
                .claim(&self.replica, ClaimKind::Answer, &item)
                .await?
            {
                continue;
            }
            let result = self.send_claimed_answer(&stored, &mut stats).await;
            self.store
                .release_claim(&self.replica, ClaimKind::Answer, &item)
                .await?;
            result?;
        }
        Ok(stats)
    }

    async fn send_claimed_answer(
        &self,
        stored: &StoredAnswer,
        stats: &mut PassStats,
    ) -> Result<(), ReportError> {
        // Sent by another replica since the read: nothing to do.
        if self.store.answer_sent(stored.id).await? {
            return Ok(());
        }
        match self.send_answer(stored).await {
            Ok(()) => {
                self.store.mark_answer_sent(stored.id).await?;
                stats.sent += 1;
            }
            Err(ReportError::Forge(e)) => {
                self.defer_answer(stored, &e).await?;
                stats.deferred += 1;
            }
            Err(ReportError::ClaimLost(what)) => {
                tracing::warn!(answer = stored.id, claim = %what, "another replica took over the answer; stopped");
            }
            Err(e @ ReportError::Store(_)) => return Err(e),
        }
        Ok(())
    }

    async fn send_answer(&self, stored: &StoredAnswer) -> Result<(), ReportError> {
        let answer = &stored.answer;
        let Some(project) = self.config.project(&answer.project) else {
            tracing::debug!(project = %answer.project, "project no longer configured; answer dropped");
            return Ok(());
        };
        let Some(forge) = self.forges.get(project).await? else {
            return Ok(());
        };
        if let Some(until) = forge.paused_until() {
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            return Err(ForgeError::Unavailable {
                message: "rate limit used up".to_owned(),
                retry_after: Some(wait),
            }
            .into());
        }
        self.fence(ClaimKind::Answer, &stored.id.to_string())
            .await?;
        match answer.kind {
            AnswerKind::Reaction => {
                let reaction = Reaction::parse(&answer.body);
                let (Some(comment), Some(reaction)) = (answer.comment_id, reaction) else {
                    tracing::warn!(
                        answer = stored.id,
                        "a reaction without a comment id or a known emoji; dropped"
                    );
                    return Ok(());
                };
                tolerate(
                    "a reaction",
                    forge.react(answer.mr, comment, reaction).await,
                )?;
            }
            AnswerKind::Reply => {
                let tried_before = self.store.begin_answer(stored.id).await?;
                if tried_before {
                    let marker = reply_marker(&answer.comment_key);
                    if forge.find_note(answer.mr, &marker).await?.is_some() {
                        return Ok(());
                    }
                }
                tolerate("a reply", forge.create_note(answer.mr, &answer.body).await)?;
            }
        }
        tracing::info!(project = %answer.project, mr = answer.mr, kind = answer.kind.as_str(),
            "comment answered");
        Ok(())
    }

    async fn defer_answer(
        &self,
        stored: &StoredAnswer,
        error: &ForgeError,
    ) -> Result<(), StoreError> {
        let wait = self.retry_wait(stored.attempts, error);
        let retry_at = now_millis() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
        tracing::warn!(answer = stored.id, attempts = stored.attempts + 1,
            retry_in_ms = wait.min(Duration::from_secs(86_400)).as_millis() as u64,
            error = %error, "answer deferred");
        self.store
            .mark_answer_failed_attempt(stored.id, &error.to_string(), retry_at)
            .await
    }
}
