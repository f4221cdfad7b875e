//! Runs: one row per run of one pipeline at one commit.
//!
//! Event-triggered runs carry a dedup key, `project|pipeline|sha|trigger|scope` (the scope tells
//! apart runs of one commit for different contexts, such as a branch or an MR number), unique in
//! the table: planning the same event twice creates nothing new. Manual runs and reruns have no
//! dedup key. State changes go through [`Store::transition_run`], a compare-and-set checked against
//! [`RunState::can_go_to`] that writes an outbox row in the same transaction.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::pipeline::EventKind;
use crate::problem::Problem;

use super::control::WaitReason;
use super::outbox::{OUTBOX_RUN, insert_outbox};
use super::states::RunState;
use super::{
    Columns, EventId, RunId, Store, StoreError, UnixMillis, now_millis, parse_word, with_pool,
    write_tx,
};

/// What [`Store::create_run`] needs.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The configured project.
    pub project: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The commit.
    pub sha: String,
    /// What triggered it.
    pub trigger: EventKind,
    /// The stored delivery that caused it, for event-triggered runs.
    pub event_id: Option<EventId>,
    /// The run this one reruns.
    pub rerun_of: Option<RunId>,
    /// Full ref (`refs/heads/main`, `refs/tags/v1`, `refs/merge-requests/7/head`).
    pub git_ref: String,
    /// Branch name, when the ref is a branch (or an MR's source branch).
    pub branch: Option<String>,
    /// Tag name, for tag runs.
    pub tag: Option<String>,
    /// MR / PR number.
    pub mr: Option<i64>,
    /// Parameter values, after defaults.
    pub params: BTreeMap<String, Value>,
    /// The pipeline file, relative to the repository root (`.ferry/train.yaml`).
    pub pipeline_path: String,
    /// The pipeline file's text at that commit, as validated.
    pub pipeline_yaml: String,
    /// Validation problems; non-empty for a run created `failed` because the pipeline is invalid.
    pub problems: Vec<Problem>,
    /// [`RunState::Queued`], or [`RunState::Failed`] for an invalid pipeline.
    pub initial: RunState,
    /// For event-triggered runs, the event scope that makes the dedup key; `None` for manual runs
    /// and reruns (never deduplicated).
    pub dedup_scope: Option<String>,
    /// Step names, in pipeline order, inserted `pending` with the run.
    pub steps: Vec<String>,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Its id.
    pub id: RunId,
    /// The configured project.
    pub project: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The commit.
    pub sha: String,
    /// What triggered it.
    pub trigger: EventKind,
    /// The delivery that caused it.
    pub event_id: Option<EventId>,
    /// The run this one reruns.
    pub rerun_of: Option<RunId>,
    /// Full ref.
    pub git_ref: String,
    /// Branch name.
    pub branch: Option<String>,
    /// Tag name.
    pub tag: Option<String>,
    /// MR / PR number.
    pub mr: Option<i64>,
    /// Parameter values.
    pub params: BTreeMap<String, Value>,
    /// The pipeline file's path.
    pub pipeline_path: String,
    /// The pipeline file's text.
    pub pipeline_yaml: String,
    /// Its state.
    pub state: RunState,
    /// Validation problems.
    pub problems: Vec<Problem>,
    /// The dedup key, for event-triggered runs.
    pub dedup_key: Option<String>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it last changed.
    pub updated_at: UnixMillis,
    /// When it first entered `running`.
    pub started_at: Option<UnixMillis>,
    /// When it reached a terminal state.
    pub finished_at: Option<UnixMillis>,
    /// The executor's last message about it (a failure, a lost workflow).
    pub message: Option<String>,
    /// Who asked for it through the API (the token's name); `None` for runs started by events.
    pub triggered_by: Option<String>,
}

/// Which runs [`Store::list_runs`] returns; `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// Only this commit.
    pub sha: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs with this trigger.
    pub trigger: Option<EventKind>,
    /// Only this branch.
    pub branch: Option<String>,
    /// Only this MR.
    pub mr: Option<i64>,
}

/// A page request: newest first, ids below `before`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Only runs with a smaller id (the previous page's [`RunPage::next`]); `None` for the first.
    pub before: Option<RunId>,
    /// At most this many runs (capped at [`Page::MAX_LIMIT`]).
    pub limit: u32,
}

impl Page {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 500;

    /// The first page of `limit` runs.
    pub fn first(limit: u32) -> Page {
        Page {
            before: None,
            limit,
        }
    }
}

impl Default for Page {
    fn default() -> Page {
        Page::first(50)
    }
}

/// One page of runs.
#[derive(Debug, Clone)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<Run>,
    /// The `before` of the next page, when there are more runs.
    pub next: Option<RunId>,
}

/// The word stored for a trigger.
pub(crate) fn trigger_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Push => "push",
        EventKind::Tag => "tag",
        EventKind::MergeRequest => "merge_request",
        EventKind::Manual => "manual",
        EventKind::Comment => "comment",
    }
}

fn parse_trigger(word: &str) -> Option<EventKind> {
    [
        EventKind::Push,
        EventKind::Tag,
        EventKind::MergeRequest,
        EventKind::Manual,
        EventKind::Comment,
    ]
    .into_iter()
    .find(|k| trigger_word(*k) == word)
}

fn problems_to_json(problems: &[Problem]) -> String {
    let list: Vec<Value> = problems
        .iter()
        .map(|p| {
            json!({"file": p.file, "line": p.line, "column": p.column, "path": p.path,
                   "message": p.message})
        })
        .collect();
    Value::Array(list).to_string()
}

fn problems_from_json(text: &str) -> Result<Vec<Problem>, StoreError> {
    let list: Vec<BTreeMap<String, Value>> = serde_json::from_str(text)?;
    let text_of = |m: &BTreeMap<String, Value>, k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let num_of = |m: &BTreeMap<String, Value>, k: &str| {
        m.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    Ok(list
        .iter()
        .map(|m| Problem {
            file: text_of(m, "file"),
            line: num_of(m, "line"),
            column: num_of(m, "column"),
            path: text_of(m, "path"),
            message: text_of(m, "message"),
        })
        .collect())
}

/// `SELECT <every run column> FROM runs <rest>`.
macro_rules! select_runs {
    ($rest:literal) => {
        concat!(
            "SELECT id, project, pipeline, sha, trigger, event_id, rerun_of, git_ref, branch, tag, \
             mr, params_json, pipeline_path, pipeline_yaml, state, problems_json, dedup_key, \
             created_at, updated_at, started_at, finished_at, message, triggered_by FROM runs ",
            $rest
        )
    };
}
pub(super) use select_runs;

pub(super) fn run_id(id: i64) -> Result<RunId, StoreError> {
    RunId::new(id).ok_or_else(|| StoreError::Corrupt(format!("run id {id}")))
}

pub(super) fn run_from_row(row: &impl Columns) -> Result<Run, StoreError> {
    Ok(Run {
        id: run_id(row.int("id")?)?,
        project: row.text("project")?,
        pipeline: row.text("pipeline")?,
        sha: row.text("sha")?,
        trigger: parse_word("trigger", &row.text("trigger")?, parse_trigger)?,
        event_id: row.opt_int("event_id")?.map(EventId),
        rerun_of: row.opt_int("rerun_of")?.map(run_id).transpose()?,
        git_ref: row.text("git_ref")?,
        branch: row.opt_text("branch")?,
        tag: row.opt_text("tag")?,
        mr: row.opt_int("mr")?,
        params: serde_json::from_str(&row.text("params_json")?)?,
        pipeline_path: row.text("pipeline_path")?,
        pipeline_yaml: row.text("pipeline_yaml")?,
        state: parse_word("run state", &row.text("state")?, RunState::parse)?,
        problems: problems_from_json(&row.text("problems_json")?)?,
        dedup_key: row.opt_text("dedup_key")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        started_at: row.opt_int("started_at")?,
        finished_at: row.opt_int("finished_at")?,
        message: row.opt_text("message")?,
        triggered_by: row.opt_text("triggered_by")?,
    })
}

impl Store {
    /// Creates a run (with its steps, `pending`, and an outbox row announcing its initial state),
    /// in one transaction. Returns its id and whether it was created: a run with the same dedup
    /// key that already exists is returned with `false`, and nothing is written.
    pub async fn create_run(&self, run: &NewRun) -> Result<(RunId, bool), StoreError> {
        self.insert_run(run, None, None).await
    }

    /// [`Store::create_run`], recording who asked for the run (an API token's name).
    pub async fn create_run_by(
        &self,
        run: &NewRun,
        triggered_by: Option<&str>,
    ) -> Result<(RunId, bool), StoreError> {
        self.insert_run(run, None, triggered_by).await
    }

    /// [`Store::create_run`], or with `wait` a run created `waiting` for that reason, with that
    /// message (see `Store::create_waiting_run`); `triggered_by` names who asked through the API.
    pub(super) async fn insert_run(
        &self,
        run: &NewRun,
        wait: Option<(WaitReason, &str)>,
        triggered_by: Option<&str>,
    ) -> Result<(RunId, bool), StoreError> {
        match (run.initial, wait) {
            (RunState::Queued | RunState::Failed, None) | (RunState::Queued, Some(_)) => {}
            (
                RunState::Waiting
                | RunState::Submitted
                | RunState::Running
                | RunState::Succeeded
                | RunState::Cancelled,
                _,
            )
            | (RunState::Failed, Some(_)) => {
                return Err(StoreError::InvalidInitialState(run.initial));
            }
        }
        let initial = match wait {
            Some(_) => RunState::Waiting,
            None => run.initial,
        };
        let (wait_reason, message) = match wait {
            Some((reason, message)) => (Some(reason.as_str()), Some(message)),
            None => (None, None),
        };
        let trigger = trigger_word(run.trigger);
        let dedup_key = run.dedup_scope.as_ref().map(|scope| {
            format!(
                "{}|{}|{}|{}|{}",
                run.project, run.pipeline, run.sha, trigger, scope
            )
        });
        let params = serde_json::to_string(&run.params)?;
        let problems = problems_to_json(&run.problems);
        let now = now_millis();
        let finished = initial.is_terminal().then_some(now);
        let payload = |id: i64| json!({"run": id, "state": initial.as_str()}).to_string();
        let created = write_tx!(self, |tx| {
            let new: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO runs (project, pipeline, sha, trigger, event_id, rerun_of, git_ref, \
                 branch, tag, mr, params_json, pipeline_path, pipeline_yaml, state, problems_json, \
                 dedup_key, created_at, updated_at, finished_at, wait_reason, message, \
                 triggered_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                 $15, $16, $17, $17, $18, $19, $20, $21) ON CONFLICT (dedup_key) DO NOTHING \
                 RETURNING id",
            )
            .bind(&run.project)
            .bind(&run.pipeline)
            .bind(&run.sha)
            .bind(trigger)
            .bind(run.event_id.map(|e| e.0))
            .bind(run.rerun_of.map(RunId::get))
            .bind(&run.git_ref)
            .bind(&run.branch)
            .bind(&run.tag)
            .bind(run.mr)
            .bind(&params)
            .bind(&run.pipeline_path)
            .bind(&run.pipeline_yaml)
            .bind(initial.as_str())
            .bind(&problems)
            .bind(&dedup_key)
            .bind(now)
            .bind(finished)
            .bind(wait_reason)
            .bind(message)
            .bind(triggered_by)
            .fetch_optional(&mut *tx)
            .await?;
            match new {
                Some((id,)) => {
                    for (position, name) in run.steps.iter().enumerate() {
                        sqlx::query(
                            "INSERT INTO steps (run_id, name, position, state, attempts) \
                             VALUES ($1, $2, $3, 'pending', 0)",
                        )
                        .bind(id)
                        .bind(name)
                        .bind(i64::try_from(position).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await?;
                    }
                    insert_outbox!(tx, id, OUTBOX_RUN, payload(id), now);
                    (id, true)
                }
                None => {
                    let (id,): (i64,) = sqlx::query_as("SELECT id FROM runs WHERE dedup_key = $1")
                        .bind(&dedup_key)
                        .fetch_one(&mut *tx)
                        .await?;
                    (id, false)
                }
            }
        });
        if created.1 {
            self.outbox_added.notify_one();
        }
        Ok((run_id(created.0)?, created.1))
    }

    /// The run with this id.
    pub async fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(select_runs!("WHERE id = $1"))
                .bind(id.get())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(run_from_row).transpose()
        })
    }

    /// Runs matching `filter`, newest first, one page at a time.
    pub async fn list_runs(&self, filter: &RunFilter, page: Page) -> Result<RunPage, StoreError> {
        let limit = page.limit.clamp(1, Page::MAX_LIMIT);
        let mut runs = with_pool!(self, |pool| {
            let rows = sqlx::query(select_runs!(
                "WHERE ($1 IS NULL OR project = $1) AND ($2 IS NULL OR pipeline = $2) \
                 AND ($3 IS NULL OR sha = $3) AND ($4 IS NULL OR state = $4) \
                 AND ($5 IS NULL OR trigger = $5) AND ($6 IS NULL OR branch = $6) \
                 AND ($7 IS NULL OR mr = $7) AND ($8 IS NULL OR id < $8) \
                 ORDER BY id DESC LIMIT $9"
            ))
            .bind(&filter.project)
            .bind(&filter.pipeline)
            .bind(&filter.sha)
            .bind(filter.state.map(RunState::as_str))
            .bind(filter.trigger.map(trigger_word))
            .bind(&filter.branch)
            .bind(filter.mr)
            .bind(page.before.map(RunId::get))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(run_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let more = runs.len() > limit as usize;
        runs.truncate(limit as usize);
        let next = if more {
            runs.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    /// Every run that is not finished (queued, waiting, submitted, running), of one project or of
    /// all, oldest first: for reconciling with the executor on start and for concurrency limits.
    pub async fn active_runs(&self, project: Option<&str>) -> Result<Vec<Run>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(select_runs!(
                "WHERE state IN ('queued', 'waiting', 'submitted', 'running') \
                 AND ($1 IS NULL OR project = $1) ORDER BY id"
            ))
            .bind(project)
            .fetch_all(pool)
            .await?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// Runs in `state`, oldest first, at most `limit` (through the `runs_state` index): the
    /// dispatcher's queue, and the runs to reconcile on start.
    pub async fn runs_in_state(&self, state: RunState, limit: u32) -> Result<Vec<Run>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(select_runs!("WHERE state = $1 ORDER BY id LIMIT $2"))
                .bind(state.as_str())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(run_from_row).collect()
        })
    }

    /// The latest succeeded run of `project`'s `pipeline` on `branch` that is not an MR run and
    /// was created before `before`: the baseline a summary compares metrics with.
    pub async fn baseline_run(
        &self,
        project: &str,
        pipeline: &str,
        branch: &str,
        before: RunId,
    ) -> Result<Option<Run>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(select_runs!(
                "WHERE project = $1 AND pipeline = $2 AND branch = $3 AND mr IS NULL \
                 AND state = 'succeeded' AND id < $4 ORDER BY id DESC LIMIT 1"
            ))
            .bind(project)
            .bind(pipeline)
            .bind(branch)
            .bind(before.get())
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(run_from_row).transpose()
        })
    }

    /// Moves a run from `from` to `to` if it is still in `from` (compare-and-set), and writes the
    /// outbox row `{"run": id, "state": to}` in the same transaction.
    ///
    /// An illegal transition is refused before anything is written
    /// ([`StoreError::IllegalTransition`]); a run no longer in `from` gives
    /// [`StoreError::Conflict`] with its actual state, and nothing is written. Entering `running`
    /// sets `started_at` (once); entering a terminal state sets `finished_at`.
    pub async fn transition_run(
        &self,
        id: RunId,
        from: RunState,
        to: RunState,
    ) -> Result<(), StoreError> {
        self.transition_run_with(id, from, to, None).await
    }

    /// [`Store::transition_run`], also recording `message` as the run's message when given, except
    /// when a run whose cancel was requested becomes `cancelled`: it keeps the request's message
    /// (who cancelled it, or which run superseded it), not the executor's "cancelled".
    pub async fn transition_run_with(
        &self,
        id: RunId,
        from: RunState,
        to: RunState,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        if !from.can_go_to(to) {
            return Err(StoreError::IllegalTransition { from, to });
        }
        let now = now_millis();
        let started = (to == RunState::Running).then_some(now);
        let finished = to.is_terminal().then_some(now);
        let payload = json!({"run": id.get(), "state": to.as_str()}).to_string();
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE runs SET state = $3, updated_at = $4, \
                 started_at = COALESCE(started_at, $5), finished_at = COALESCE($6, finished_at), \
                 message = CASE WHEN $3 = 'cancelled' AND cancel_requested_at IS NOT NULL \
                 THEN message ELSE COALESCE($7, message) END WHERE id = $1 AND state = $2",
            )
            .bind(id.get())
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(now)
            .bind(started)
            .bind(finished)
            .bind(message)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                let state: Option<(String,)> =
                    sqlx::query_as("SELECT state FROM runs WHERE id = $1")
                        .bind(id.get())
                        .fetch_optional(&mut *tx)
                        .await?;
                return Err(match state {
                    None => StoreError::NotFound {
                        entity: "run",
                        id: id.to_string(),
                    },
                    Some((actual,)) => StoreError::Conflict {
                        entity: "run",
                        id: id.to_string(),
                        expected: from.as_str().to_string(),
                        actual,
                    },
                });
            }
            insert_outbox!(tx, id.get(), OUTBOX_RUN, &payload, now);
        });
        self.outbox_added.notify_one();
        Ok(())
    }
}
