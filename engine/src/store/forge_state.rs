//! What the reporter remembers about the forge: the id of each run's summary note (or check run)
//! and the last commit-status state sent per run and context.
//!
//! **Notes are created once.** Before the reporter asks the forge to create a run's note it
//! records the intent ([`Store::begin_forge_comment`]: a row with no forge id). The forge's id is
//! stored as soon as the create answers ([`Store::set_forge_comment`]). A row still without an id
//! at the next attempt means a create may have reached the forge without its answer reaching us
//! (a crash, a timeout, a `502` from a proxy): the reporter then searches the MR's notes for the
//! run's hidden marker before creating anything. A create the forge refused outright clears the
//! intent ([`Store::clear_forge_comment_intent`]).
//!
//! **Statuses are never sent twice in the same state.** GitLab answers `400 Cannot transition
//! status` to a repeated state; [`Store::sent_statuses`] tells the reporter what each context of a
//! run last got. The memory is per run (a run has one commit, so per commit and context within
//! it): a rerun at the same commit shares the context names, and its first state may equal the
//! previous run's last one, which must still be sent (with the new run's link).

use std::collections::HashMap;

use super::{Columns, RunId, Store, StoreError, now_millis, with_pool, write_tx};

/// Which object a [`ForgeComment`] row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommentKind {
    /// The run's summary note on the MR (GitLab) or comment on the PR (GitHub).
    Note,
    /// The pipeline's check run (GitHub App).
    CheckRun,
}

impl CommentKind {
    /// The word stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CommentKind::Note => "note",
            CommentKind::CheckRun => "check_run",
        }
    }
}

/// A stored note (or check run) of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeComment {
    /// The forge's id; `None` while a create is in flight (or was interrupted).
    pub forge_id: Option<i64>,
    /// A hash of the body last written, to skip edits that change nothing.
    pub body_hash: Option<String>,
}

impl Store {
    /// The note (or check run) of `run`, if one was created or started.
    pub async fn forge_comment(
        &self,
        run: RunId,
        kind: CommentKind,
    ) -> Result<Option<ForgeComment>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT forge_id, body_hash FROM forge_comments WHERE run_id = $1 AND kind = $2",
            )
            .bind(run.get())
            .bind(kind.as_str())
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(ForgeComment {
                    forge_id: r.opt_int("forge_id")?,
                    body_hash: r.opt_text("body_hash")?,
                })
            })
            .transpose()
        })
    }

    /// Records that a create of `run`'s note is about to be sent. Returns `false` when a row
    /// already exists (a create started before: search the forge first).
    pub async fn begin_forge_comment(
        &self,
        run: RunId,
        kind: CommentKind,
    ) -> Result<bool, StoreError> {
        let added = write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO forge_comments (run_id, kind, forge_id, body_hash, updated_at) \
                 VALUES ($1, $2, NULL, NULL, $3) ON CONFLICT (run_id, kind) DO NOTHING",
            )
            .bind(run.get())
            .bind(kind.as_str())
            .bind(now_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(added == 1)
    }

    /// Stores the forge's id of `run`'s note and the hash of the body it now has.
    pub async fn set_forge_comment(
        &self,
        run: RunId,
        kind: CommentKind,
        forge_id: i64,
        body_hash: &str,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO forge_comments (run_id, kind, forge_id, body_hash, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, kind) DO UPDATE SET \
                 forge_id = excluded.forge_id, body_hash = excluded.body_hash, \
                 updated_at = excluded.updated_at",
            )
            .bind(run.get())
            .bind(kind.as_str())
            .bind(forge_id)
            .bind(body_hash)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// Forgets an intent to create `run`'s note (the forge refused the create: nothing exists).
    /// A row that has a forge id is kept.
    pub async fn clear_forge_comment_intent(
        &self,
        run: RunId,
        kind: CommentKind,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            sqlx::query(
                "DELETE FROM forge_comments WHERE run_id = $1 AND kind = $2 AND forge_id IS NULL",
            )
            .bind(run.get())
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// The last state sent per status context of `run` (forge words: `running`, `success`, ...).
    pub async fn sent_statuses(&self, run: RunId) -> Result<HashMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT context, state FROM forge_statuses WHERE run_id = $1")
                .bind(run.get())
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Records that `context` of `run` was sent in `state`.
    pub async fn record_sent_status(
        &self,
        run: RunId,
        context: &str,
        state: &str,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO forge_statuses (run_id, context, state, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, context) DO UPDATE SET \
                 state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(run.get())
            .bind(context)
            .bind(state)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }
}
