//! Concurrency groups: a newer run stops the older runs of its group, and a merge request that
//! closes or a branch that is deleted stops its runs.
//!
//! A pipeline's `concurrency.group` puts each of its runs in a group within the project and the
//! pipeline: `merge_request` (the merge request's runs; a push run's branch), `branch` (the
//! branch, an MR run's source branch), `pipeline` (every run), or `none`. A run's group is
//! computed from the ref it builds, so manual and comment runs join the group of their ref.
//! With `cancel_in_progress`, creating a run cancels the unfinished runs of its group with a
//! smaller id, never a newer one ([`cancel_superseded`]): queued and waiting ones at once, those
//! the executor has through the cancel request the dispatcher passes on
//! ([`Store::request_cancel`]). The message names the newer run, and the reporters show it. The
//! newer run's pipeline decides, as it is the one that says how its ref is built now.
//!
//! Runs created `waiting` for an approval supersede nothing until they are approved: an author
//! without write access cannot stop anyone's runs.
//!
//! The planner also cancels the unfinished runs of a merge request that is closed or merged, and
//! the push runs of a branch that is deleted ([`cancel_ended`]).

use crate::event::{BranchChange, Event, EventKind as Ev, MergeRequestAction};
use crate::pipeline::{self, Concurrency, ConcurrencyGroup, EventKind};
use crate::store::{CancelOutcome, NewRun, Run, RunId, Store, StoreError};

/// Where a run builds: the parts of a run its group is computed from.
#[derive(Debug, Clone, Copy)]
struct Place<'a> {
    branch: Option<&'a str>,
    tag: Option<&'a str>,
    mr: Option<i64>,
    git_ref: &'a str,
}

impl<'a> Place<'a> {
    fn of_new(run: &'a NewRun) -> Place<'a> {
        Place {
            branch: run.branch.as_deref(),
            tag: run.tag.as_deref(),
            mr: run.mr,
            git_ref: &run.git_ref,
        }
    }

    fn of(run: &'a Run) -> Place<'a> {
        Place {
            branch: run.branch.as_deref(),
            tag: run.tag.as_deref(),
            mr: run.mr,
            git_ref: &run.git_ref,
        }
    }

    /// The branch, else the tag, else the full ref.
    fn ref_key(self) -> String {
        match (self.branch, self.tag) {
            (Some(b), _) => format!("branch:{b}"),
            (None, Some(t)) => format!("tag:{t}"),
            (None, None) => format!("ref:{}", self.git_ref),
        }
    }

    /// The run's group within its pipeline; `None` for `group: none`.
    fn group(self, group: ConcurrencyGroup) -> Option<String> {
        match group {
            ConcurrencyGroup::MergeRequest => Some(match self.mr {
                Some(n) => format!("mr:{n}"),
                None => self.ref_key(),
            }),
            ConcurrencyGroup::Branch => Some(self.ref_key()),
            ConcurrencyGroup::Pipeline => Some(String::new()),
            ConcurrencyGroup::None => None,
        }
    }
}

/// Cancels the older unfinished runs of the group of `newer` (just created from `run`) when its
/// pipeline says `cancel_in_progress`. Returns how many it cancelled or asked to stop.
pub async fn cancel_superseded(
    store: &Store,
    newer: RunId,
    run: &NewRun,
) -> Result<usize, StoreError> {
    match concurrency_of(&run.pipeline_path, &run.pipeline_yaml) {
        Some(c) => cancel_superseded_with(store, newer, run, c).await,
        None => Ok(0),
    }
}

/// [`cancel_superseded`] with the pipeline's `concurrency` already at hand.
pub async fn cancel_superseded_with(
    store: &Store,
    newer: RunId,
    run: &NewRun,
    concurrency: Concurrency,
) -> Result<usize, StoreError> {
    let who = Newer {
        id: newer,
        project: &run.project,
        pipeline: &run.pipeline,
        sha: &run.sha,
        place: Place::of_new(run),
    };
    supersede(store, who, concurrency).await
}

/// [`cancel_superseded`] for a stored run that just became `queued` (an approved one).
pub async fn cancel_superseded_by(store: &Store, run: &Run) -> Result<usize, StoreError> {
    let Some(concurrency) = concurrency_of(&run.pipeline_path, &run.pipeline_yaml) else {
        return Ok(0);
    };
    let who = Newer {
        id: run.id,
        project: &run.project,
        pipeline: &run.pipeline,
        sha: &run.sha,
        place: Place::of(run),
    };
    supersede(store, who, concurrency).await
}

/// The `concurrency` of a run's pipeline text. The text was validated when the run was created;
/// one that does not load (`None`) groups nothing.
fn concurrency_of(path: &str, text: &str) -> Option<Concurrency> {
    pipeline::load(path, text, None).ok().map(|p| p.concurrency)
}

/// The run that supersedes.
struct Newer<'a> {
    id: RunId,
    project: &'a str,
    pipeline: &'a str,
    sha: &'a str,
    place: Place<'a>,
}

async fn supersede(
    store: &Store,
    newer: Newer<'_>,
    concurrency: Concurrency,
) -> Result<usize, StoreError> {
    if !concurrency.cancel_in_progress {
        return Ok(0);
    }
    let Some(group) = newer.place.group(concurrency.group) else {
        return Ok(0);
    };
    let short = newer.sha.get(..7).unwrap_or(newer.sha);
    let message = format!("superseded by run {} ({short})", newer.id);
    let older: Vec<Run> = store
        .active_runs(Some(newer.project))
        .await?
        .into_iter()
        .filter(|o| {
            o.id < newer.id
                && o.pipeline == newer.pipeline
                && Place::of(o).group(concurrency.group).as_ref() == Some(&group)
        })
        .collect();
    cancel_all(store, &older, &message).await
}

/// Cancels the unfinished runs of a merge request that `event` closes or merges, and the push
/// runs of a branch it deletes. Returns how many were cancelled or asked to stop.
pub async fn cancel_ended(
    store: &Store,
    project: &str,
    event: &Event,
) -> Result<usize, StoreError> {
    match &event.kind {
        Ev::MergeRequest(mr) => {
            let why = match mr.action {
                MergeRequestAction::Closed => "the merge request was closed",
                MergeRequestAction::Merged => "the merge request was merged",
                MergeRequestAction::Opened
                | MergeRequestAction::Updated
                | MergeRequestAction::Reopened
                | MergeRequestAction::ReadyForReview
                | MergeRequestAction::Other => return Ok(0),
            };
            match i64::try_from(mr.number) {
                Ok(number) => cancel_merge_request_runs(store, project, number, why).await,
                Err(_) => Ok(0),
            }
        }
        Ev::BranchPush(push) if push.change == BranchChange::Deleted => {
            let why = format!("the branch {} was deleted", push.branch);
            cancel_branch_runs(store, project, &push.branch, &why).await
        }
        Ev::BranchPush(_) | Ev::TagPush(_) | Ev::Comment(_) | Ev::Rerequested(_) | Ev::Ping => {
            Ok(0)
        }
    }
}

/// Cancels the unfinished runs of `project`'s merge request `mr` (it was closed or merged).
pub async fn cancel_merge_request_runs(
    store: &Store,
    project: &str,
    mr: i64,
    why: &str,
) -> Result<usize, StoreError> {
    let runs: Vec<Run> = store
        .active_runs(Some(project))
        .await?
        .into_iter()
        .filter(|r| r.mr == Some(mr))
        .collect();
    cancel_all(store, &runs, why).await
}

/// Cancels the unfinished push runs of `project`'s `branch` (it was deleted).
pub async fn cancel_branch_runs(
    store: &Store,
    project: &str,
    branch: &str,
    why: &str,
) -> Result<usize, StoreError> {
    let runs: Vec<Run> = store
        .active_runs(Some(project))
        .await?
        .into_iter()
        .filter(|r| {
            r.trigger == EventKind::Push && r.mr.is_none() && r.branch.as_deref() == Some(branch)
        })
        .collect();
    cancel_all(store, &runs, why).await
}

/// Cancels each of `runs` with `message`; how many were cancelled or asked to stop.
async fn cancel_all(store: &Store, runs: &[Run], message: &str) -> Result<usize, StoreError> {
    let mut cancelled = 0;
    for run in runs {
        match store.request_cancel(run.id, message).await? {
            CancelOutcome::Cancelled | CancelOutcome::Requested => {
                tracing::info!(run = %run.id, project = %run.project, pipeline = %run.pipeline,
                    sha = %run.sha, %message, "run cancelled");
                cancelled += 1;
            }
            CancelOutcome::Finished(_) => {}
        }
    }
    Ok(cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place<'a>(branch: Option<&'a str>, mr: Option<i64>, git_ref: &'a str) -> Place<'a> {
        Place {
            branch,
            tag: None,
            mr,
            git_ref,
        }
    }

    #[test]
    fn groups_follow_the_ref() {
        use ConcurrencyGroup as G;
        let mr = place(Some("feat"), Some(7), "refs/ferry/mr/7");
        let push = place(Some("feat"), None, "refs/heads/feat");
        let manual_on_mr_ref = place(None, None, "refs/merge-requests/7/head");
        assert_eq!(mr.group(G::MergeRequest).as_deref(), Some("mr:7"));
        assert_eq!(push.group(G::MergeRequest).as_deref(), Some("branch:feat"));
        assert_ne!(mr.group(G::MergeRequest), push.group(G::MergeRequest));
        assert_eq!(mr.group(G::Branch), push.group(G::Branch));
        assert_eq!(mr.group(G::Pipeline), manual_on_mr_ref.group(G::Pipeline));
        assert_eq!(
            manual_on_mr_ref.group(G::Branch).as_deref(),
            Some("ref:refs/merge-requests/7/head")
        );
        let tag = Place {
            tag: Some("v1"),
            ..place(None, None, "refs/tags/v1")
        };
        assert_eq!(tag.group(G::MergeRequest).as_deref(), Some("tag:v1"));
        assert_eq!(mr.group(G::None), None);
    }
}
