//! Trigger matching: which pipelines an event starts (flow step 2, "Plan").
//!
//! Planning has read the pipelines at the event's commit and the files the event changed (see
//! `service::mirror`); this module decides, for each pipeline, whether its `on` block starts a
//! run, exactly as PIPELINE-SPEC.md says. It is pure: no git, no I/O. Every refusal carries a
//! sentence naming what did not match, for logs and the dashboard.

use crate::event::{
    BranchChange, BranchPush, Event, EventKind, MergeRequestAction, MergeRequestEvent, TagChange,
    TagPush,
};
use crate::pipeline::glob::{Glob, any_match};
use crate::pipeline::{EventKind as Trigger, PathFilter, Pipeline};

/// How many changed files a skip reason lists before summarising the rest.
const LISTED_FILES: usize = 5;

/// The files an event changed, as the path filters see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// These paths, relative to the repository root (both sides of a rename).
    Files(Vec<String>),
    /// Everything: path filters do not apply (tags).
    All,
    /// Nothing to build (a deleted branch or tag, or an event that plans nothing).
    None,
}

/// Whether a pipeline runs for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// It runs, started by this kind of trigger.
    Run {
        /// `Push`, `Tag` or `MergeRequest`.
        trigger: Trigger,
    },
    /// It does not run.
    Skip {
        /// A sentence naming what did not match.
        reason: String,
    },
}

/// True when a commit message asks ferry to skip: `[skip ci]`, `[ci skip]` or `[skip ferry]`, in
/// any case, anywhere in the message.
pub fn skip_requested(message: &str) -> bool {
    let lower = message.to_lowercase();
    ["[skip ci]", "[ci skip]", "[skip ferry]"]
        .iter()
        .any(|marker| lower.contains(marker))
}

/// Decides whether `pipeline` runs for `event`, given the files the event changed.
///
/// The head commit message, when the event carries it, is checked for skip markers too (planning
/// may also check the message read from git with [`skip_requested`]). Comments, re-requested
/// checks and pings are handled elsewhere and never match here.
pub fn matches(pipeline: &Pipeline, event: &Event, changes: &Changes) -> Match {
    let outcome = match &event.kind {
        EventKind::BranchPush(push) => branch_push(pipeline, push, changes),
        EventKind::TagPush(tag) => tag_push(pipeline, tag),
        EventKind::MergeRequest(mr) => merge_request(pipeline, mr, changes),
        EventKind::Comment(_) => {
            Err("comments are handled by the comment command parser, not by `on`".to_owned())
        }
        EventKind::Rerequested(_) => Err(
            "re-requested checks rerun earlier runs; they are not matched against `on`".to_owned(),
        ),
        EventKind::Ping => Err("a ping only tests the webhook".to_owned()),
    };
    match outcome {
        Ok(trigger) => Match::Run { trigger },
        Err(reason) => Match::Skip { reason },
    }
}

fn branch_push(
    pipeline: &Pipeline,
    push: &BranchPush,
    changes: &Changes,
) -> Result<Trigger, String> {
    match push.change {
        BranchChange::Deleted => return Err(format!("branch `{}` was deleted", push.branch)),
        BranchChange::Created | BranchChange::Updated | BranchChange::ForceUpdated => {}
    }
    let Some(rule) = &pipeline.triggers.push else {
        return Err(no_rule(pipeline, "on.push", "pushes"));
    };
    let Some(branches) = &rule.branches else {
        return Err(format!(
            "pipeline `{}` sets only on.push.tags, so branch pushes do not run it",
            pipeline.name
        ));
    };
    if !any_match(branches, &push.branch) {
        return Err(format!(
            "branch `{}` matches none of on.push.branches ({})",
            push.branch,
            list(branches)
        ));
    }
    not_skipped(push.head_message.as_deref())?;
    paths(&rule.paths, changes, "on.push")?;
    Ok(Trigger::Push)
}

fn tag_push(pipeline: &Pipeline, tag: &TagPush) -> Result<Trigger, String> {
    match tag.change {
        TagChange::Deleted => return Err(format!("tag `{}` was deleted", tag.tag)),
        TagChange::Created => {}
    }
    let Some(rule) = &pipeline.triggers.push else {
        return Err(no_rule(pipeline, "on.push", "pushes"));
    };
    let Some(tags) = &rule.tags else {
        return Err(format!(
            "pipeline `{}` has no on.push.tags, so tag pushes do not run it",
            pipeline.name
        ));
    };
    if !any_match(tags, &tag.tag) {
        return Err(format!(
            "tag `{}` matches none of on.push.tags ({})",
            tag.tag,
            list(tags)
        ));
    }
    not_skipped(tag.head_message.as_deref())?;
    Ok(Trigger::Tag)
}

fn merge_request(
    pipeline: &Pipeline,
    mr: &MergeRequestEvent,
    changes: &Changes,
) -> Result<Trigger, String> {
    let n = mr.number;
    let what = match mr.action {
        MergeRequestAction::Opened
        | MergeRequestAction::Updated
        | MergeRequestAction::Reopened
        | MergeRequestAction::ReadyForReview => None,
        MergeRequestAction::Closed => Some("was closed"),
        MergeRequestAction::Merged => Some("was merged"),
        MergeRequestAction::Other => Some("changed without new commits"),
    };
    if let Some(what) = what {
        return Err(format!(
            "merge request !{n} {what}; only opening, reopening, new commits and marking ready start runs"
        ));
    }
    let Some(rule) = &pipeline.triggers.merge_request else {
        return Err(no_rule(pipeline, "on.merge_request", "merge requests"));
    };
    if let Some(targets) = &rule.target_branches
        && !any_match(targets, &mr.target_branch)
    {
        return Err(format!(
            "target branch `{}` of merge request !{n} matches none of on.merge_request.target_branches ({})",
            mr.target_branch,
            list(targets)
        ));
    }
    if mr.draft && !rule.drafts {
        return Err(format!(
            "merge request !{n} is a draft and on.merge_request.drafts is not true"
        ));
    }
    if mr.action == MergeRequestAction::ReadyForReview && rule.drafts {
        return Err(format!(
            "merge request !{n} was marked ready, but pipeline `{}` runs drafts, so its head already ran",
            pipeline.name
        ));
    }
    not_skipped(mr.head_message.as_deref())?;
    paths(&rule.paths, changes, "on.merge_request")?;
    Ok(Trigger::MergeRequest)
}

fn no_rule(pipeline: &Pipeline, field: &str, what: &str) -> String {
    format!(
        "pipeline `{}` has no {field}, so {what} do not run it",
        pipeline.name
    )
}

fn not_skipped(message: Option<&str>) -> Result<(), String> {
    match message {
        Some(m) if skip_requested(m) => Err(
            "the head commit message asks to skip CI ([skip ci], [ci skip] or [skip ferry])"
                .to_owned(),
        ),
        Some(_) | None => Ok(()),
    }
}

/// Applies `paths` / `paths_ignore` (under `field`, e.g. `on.push`) to the changed files.
///
/// A pipeline that declares neither filter runs on any push, even one that changes no file (an
/// empty commit, a new branch at an existing commit).
fn paths(filter: &PathFilter, changes: &Changes, field: &str) -> Result<(), String> {
    let files = match changes {
        Changes::All => return Ok(()),
        Changes::None => return Err("the event changed nothing that can be built".to_owned()),
        Changes::Files(files) => files,
    };
    if filter.include.is_none() && filter.exclude.is_empty() {
        return Ok(());
    }
    if files.is_empty() {
        return Err(format!("no file changed, and {field} filters on paths"));
    }
    let included: Vec<&String> = match &filter.include {
        Some(globs) => files.iter().filter(|f| any_match(globs, f)).collect(),
        None => files.iter().collect(),
    };
    if included.is_empty() {
        let globs = filter.include.as_deref().unwrap_or_default();
        return Err(format!(
            "no changed file ({}) matches {field}.paths ({})",
            sample(files.iter()),
            list(globs)
        ));
    }
    if included.iter().all(|f| any_match(&filter.exclude, f)) {
        let which = if filter.include.is_some() {
            format!("every changed file matching {field}.paths")
        } else {
            "every changed file".to_owned()
        };
        return Err(format!(
            "{which} ({}) is matched by {field}.paths_ignore ({})",
            sample(included.into_iter()),
            list(&filter.exclude)
        ));
    }
    Ok(())
}

/// `` `a`, `b` `` for globs.
fn list(globs: &[Glob]) -> String {
    let quoted: Vec<String> = globs.iter().map(|g| format!("`{}`", g.as_str())).collect();
    quoted.join(", ")
}

/// The first few files, then how many more.
fn sample<'a>(files: impl ExactSizeIterator<Item = &'a String>) -> String {
    let total = files.len();
    let shown: Vec<&str> = files.take(LISTED_FILES).map(String::as_str).collect();
    match total - shown.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
#[path = "matching_tests.rs"]
mod tests;
