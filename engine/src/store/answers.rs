//! Answers to comment commands: one row per answered comment, sent by the reporter.
//!
//! The planner decides the answer and stores it ([`Store::insert_answer`]); it never calls the
//! forge itself, so an answer survives a crash or a forge outage like a status does. The
//! comment's key is unique: a comment is answered at most once, however often it is delivered
//! or planned ([`Store::comment_answered`] lets the planner skip one it already answered).
//!
//! **Sent once.** A reply is a create (a note or comment), which a lost answer makes uncertain:
//! the reporter marks the row tried ([`Store::begin_answer`]) before its first create, and a row
//! already tried is looked for on the merge request (by its hidden marker) before anything is
//! created again. Reactions need no search: both forges keep one reaction per person and emoji.

use super::{Columns, Store, StoreError, UnixMillis, now_millis, parse_word, with_pool, write_tx};

/// How a comment is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerKind {
    /// A reaction (GitLab award emoji, GitHub reaction) on the comment: "done".
    Reaction,
    /// A reply: a note (comment) on the merge request.
    Reply,
}

impl AnswerKind {
    /// The word stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Reaction => "reaction",
            AnswerKind::Reply => "reply",
        }
    }

    fn parse(word: &str) -> Option<AnswerKind> {
        [AnswerKind::Reaction, AnswerKind::Reply]
            .into_iter()
            .find(|k| k.as_str() == word)
    }
}

/// An answer to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAnswer {
    /// The configured project.
    pub project: String,
    /// What identifies the comment (unique): `<mr>:<comment id>` on the project.
    pub comment_key: String,
    /// The merge request / pull request.
    pub mr: u64,
    /// The comment's id on the forge (a reaction needs it).
    pub comment_id: Option<u64>,
    /// Reaction or reply.
    pub kind: AnswerKind,
    /// The reply's markdown, or the reaction's name (`+1`).
    pub body: String,
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// Its id.
    pub id: i64,
    /// The answer.
    pub answer: NewAnswer,
    /// Whether a send was started before (its outcome may be unknown).
    pub tried: bool,
    /// Failed attempts so far.
    pub attempts: i64,
    /// When it was sent, if it was.
    pub sent_at: Option<UnixMillis>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
}

fn answer_from_row(row: &impl Columns) -> Result<StoredAnswer, StoreError> {
    let unsigned = |n: i64, what: &str| {
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("answer {what} {n}")))
    };
    Ok(StoredAnswer {
        id: row.int("id")?,
        answer: NewAnswer {
            project: row.text("project")?,
            comment_key: row.text("comment_key")?,
            mr: unsigned(row.int("mr")?, "mr")?,
            comment_id: row
                .opt_int("comment_id")?
                .map(|n| unsigned(n, "comment id"))
                .transpose()?,
            kind: parse_word("answer kind", &row.text("kind")?, AnswerKind::parse)?,
            body: row.text("body")?,
        },
        tried: row.opt_int("tried_at")?.is_some(),
        attempts: row.int("attempts")?,
        sent_at: row.opt_int("sent_at")?,
        last_error: row.opt_text("last_error")?,
    })
}

/// `SELECT <every answer column> FROM comment_answers <rest>`.
macro_rules! select_answers {
    ($rest:literal) => {
        concat!(
            "SELECT id, project, comment_key, mr, comment_id, kind, body, tried_at, sent_at, \
             attempts, last_error FROM comment_answers ",
            $rest
        )
    };
}

impl Store {
    /// Whether `project`'s comment `comment_key` already has an answer (sent or not).
    pub async fn comment_answered(
        &self,
        project: &str,
        comment_key: &str,
    ) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT id FROM comment_answers WHERE comment_key = $1")
                .bind(format!("{project}|{comment_key}"))
                .fetch_optional(pool)
                .await?
        });
        Ok(row.is_some())
    }

    /// Stores an answer for the reporter. Returns `false`, writing nothing, when the comment
    /// already has one.
    pub async fn insert_answer(&self, answer: &NewAnswer) -> Result<bool, StoreError> {
        let now = now_millis();
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let added = write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO comment_answers (project, comment_key, mr, comment_id, kind, body, \
                 created_at, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $7) \
                 ON CONFLICT (comment_key) DO NOTHING",
            )
            .bind(&answer.project)
            .bind(format!("{}|{}", answer.project, answer.comment_key))
            .bind(int(answer.mr))
            .bind(answer.comment_id.map(int))
            .bind(answer.kind.as_str())
            .bind(&answer.body)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        if added == 1 {
            self.outbox_added.notify_one();
        }
        Ok(added == 1)
    }

    /// Up to `limit` unsent answers that are due now, oldest first.
    pub async fn pending_answers(&self, limit: u32) -> Result<Vec<StoredAnswer>, StoreError> {
        let mut answers = with_pool!(self, |pool| {
            let rows = sqlx::query(select_answers!(
                "WHERE sent_at IS NULL AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
            ))
            .bind(now_millis())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(answer_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        for a in &mut answers {
            strip_project(&mut a.answer);
        }
        Ok(answers)
    }

    /// The answer to `project`'s comment `comment_key`, if there is one.
    pub async fn answer_for(
        &self,
        project: &str,
        comment_key: &str,
    ) -> Result<Option<StoredAnswer>, StoreError> {
        let key = format!("{project}|{comment_key}");
        let answer = with_pool!(self, |pool| {
            let row = sqlx::query(select_answers!("WHERE comment_key = $1"))
                .bind(&key)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(answer_from_row).transpose()?
        });
        Ok(answer.map(|mut a| {
            strip_project(&mut a.answer);
            a
        }))
    }

    /// When the earliest unsent answer falls due, if one is unsent.
    pub async fn first_answer_due_at(&self) -> Result<Option<UnixMillis>, StoreError> {
        let row: (Option<i64>,) = with_pool!(self, |pool| {
            sqlx::query_as("SELECT MIN(next_attempt_at) FROM comment_answers WHERE sent_at IS NULL")
                .fetch_one(pool)
                .await?
        });
        Ok(row.0)
    }

    /// Marks answer `id` as tried (a send is about to start). Returns whether it had been tried
    /// before: then its outcome is unknown and the forge must be searched first.
    pub async fn begin_answer(&self, id: i64) -> Result<bool, StoreError> {
        let first = write_tx!(self, |tx| {
            sqlx::query(
                "UPDATE comment_answers SET tried_at = $2 WHERE id = $1 AND tried_at IS NULL",
            )
            .bind(id)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(first == 0)
    }

    /// Whether answer `id` was sent (by any replica).
    pub async fn answer_sent(&self, id: i64) -> Result<bool, StoreError> {
        let row: Option<(Option<i64>,)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT sent_at FROM comment_answers WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.is_some_and(|(at,)| at.is_some()))
    }

    /// Marks answer `id` sent (idempotent).
    pub async fn mark_answer_sent(&self, id: i64) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            sqlx::query(
                "UPDATE comment_answers SET sent_at = $2 WHERE id = $1 AND sent_at IS NULL",
            )
            .bind(id)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// Records a failed attempt of answer `id`; it is due again at `retry_at`.
    pub async fn mark_answer_failed_attempt(
        &self,
        id: i64,
        error: &str,
        retry_at: UnixMillis,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            sqlx::query(
                "UPDATE comment_answers SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(error)
            .bind(retry_at)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }
}

/// The stored key is `<project>|<comment key>` (unique across projects); callers see theirs.
fn strip_project(answer: &mut NewAnswer) {
    let prefix = format!("{}|", answer.project);
    if let Some(key) = answer.comment_key.strip_prefix(&prefix) {
        answer.comment_key = key.to_owned();
    }
}
