//! What each command does: runs created, rerun, cancelled or approved, and what to say about it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::text::code_span;
use super::{Ctx, Said};
use crate::pipeline::{self, EventKind as Trigger, Pipeline, UndeclaredParam};
use crate::service::concurrency;
use crate::service::mirror::{MirrorError, merge_request_ref};
use crate::service::planner::{PlanError, Planner, refspecs, text_of};
use crate::store::{CancelOutcome, NewRun, Page, Run, RunFilter, RunId, RunState};

/// Most runs of a merge request looked at by `rerun` and `cancel`.
const MR_RUNS: u32 = 500;

/// `#1, #2`.
fn ids(list: &[RunId]) -> String {
    list.iter()
        .map(|id| format!("#{id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `/ferry run` asked for, found among the pipelines of the head.
enum Chosen<'a> {
    Pipelines(Vec<&'a Pipeline>),
    Nothing(String),
}

fn stem(file: &str) -> Option<&str> {
    Path::new(file).file_stem().and_then(|s| s.to_str())
}

fn choose<'a>(loaded: &'a pipeline::Loaded, name: Option<&str>, short: &str) -> Chosen<'a> {
    let Some(name) = name else {
        if loaded.pipelines.is_empty() {
            return Chosen::Nothing(format!("there is no valid pipeline at {short}."));
        }
        return Chosen::Pipelines(loaded.pipelines.iter().collect());
    };
    if let Some(p) = loaded
        .pipelines
        .iter()
        .find(|p| p.name == name || stem(&p.file) == Some(name))
    {
        return Chosen::Pipelines(vec![p]);
    }
    let problems: Vec<String> = loaded
        .problems
        .iter()
        .filter(|p| stem(&p.file) == Some(name))
        .map(|p| format!("- {}", code_span(&p.to_string())))
        .collect();
    if !problems.is_empty() {
        return Chosen::Nothing(format!(
            "pipeline {} is invalid at {short}:\n\n{}",
            code_span(name),
            problems.join("\n")
        ));
    }
    let names: Vec<String> = loaded
        .pipelines
        .iter()
        .map(|p| code_span(&p.name))
        .collect();
    Chosen::Nothing(format!(
        "there is no pipeline {} at {short} (pipelines: {}).",
        code_span(name),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    ))
}

fn undeclared(bad: &[UndeclaredParam]) -> String {
    let lines: Vec<String> = bad
        .iter()
        .map(|u| {
            format!(
                "- {} is not declared by pipeline {} (declared: {})",
                code_span(&u.name),
                code_span(&u.pipeline),
                u.declared
            )
        })
        .collect();
    format!(
        "nothing was run: a pipeline takes only the parameters it declares.\n\n{}",
        lines.join("\n")
    )
}

impl Planner {
    /// `/ferry run [PIPELINE] [key=value ...]`: runs at the head, all or nothing.
    pub(super) async fn run_command(
        &self,
        ctx: &Ctx<'_>,
        index: usize,
        name: Option<&str>,
        params: &[(String, String)],
    ) -> Result<Said, PlanError> {
        let short = ctx.short_head();
        let Some(files) = self.read_head(ctx).await? else {
            return Ok(Said::Told(unreadable(&short)));
        };
        let loaded = pipeline::load_files(&files, Some(&self.profile));
        let chosen = match choose(&loaded, name, &short) {
            Chosen::Pipelines(list) => list,
            Chosen::Nothing(text) => return Ok(Said::Told(text)),
        };
        let mut resolved = Vec::new();
        let mut bad = Vec::new();
        for p in chosen {
            match p.resolve_params(params) {
                Ok(values) => resolved.push((p, values)),
                Err(list) => bad.extend(list),
            }
        }
        if !bad.is_empty() {
            return Ok(Said::Told(undeclared(&bad)));
        }
        let mut queued = Vec::new();
        for (p, values) in resolved {
            let head = ctx.head()?;
            let run = NewRun {
                project: ctx.project.name.clone(),
                pipeline: p.name.clone(),
                sha: head.sha.clone(),
                trigger: Trigger::Comment,
                event_id: Some(ctx.event.id),
                rerun_of: None,
                git_ref: merge_request_ref(ctx.comment.number),
                branch: Some(head.source_branch.clone()).filter(|b| !b.is_empty()),
                tag: None,
                mr: Some(ctx.mr),
                params: values
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect::<BTreeMap<_, _>>(),
                pipeline_path: p.file.clone(),
                pipeline_yaml: text_of(&files, &p.file),
                problems: Vec::new(),
                initial: RunState::Queued,
                dedup_scope: Some(ctx.scope(index)),
                steps: p.steps.iter().map(|s| s.name.clone()).collect(),
            };
            let (id, _) = self.store.create_run(&run).await?;
            // Also when it existed (the comment planned again): cancelling is idempotent.
            concurrency::cancel_superseded_with(&self.store, id, &run, p.concurrency).await?;
            queued.push(format!("{} as run #{id}", code_span(&p.name)));
        }
        Ok(Said::Done(format!(
            "queued {} at {short}.",
            queued.join(", ")
        )))
    }

    /// `/ferry rerun [PIPELINE] [--all]`: a new run of each chosen pipeline's latest finished
    /// run at the head (failed ones only, unless named or `--all`).
    pub(super) async fn rerun_command(
        &self,
        ctx: &Ctx<'_>,
        index: usize,
        name: Option<&str>,
        all: bool,
    ) -> Result<Said, PlanError> {
        let short = ctx.short_head();
        let head = ctx.head()?.sha.clone();
        // Runs this comment created (when it is acted on again after a crash) do not count.
        let own = format!("|comment:{}:", ctx.key);
        let runs = self.mr_runs(ctx, Some(&head)).await?;
        let mut latest: Vec<&Run> = Vec::new();
        for run in runs
            .iter()
            .filter(|r| !r.dedup_key.as_deref().is_some_and(|k| k.contains(&own)))
        {
            if !latest.iter().any(|l| l.pipeline == run.pipeline) {
                latest.push(run);
            }
        }
        latest.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
        if let Some(name) = name {
            latest.retain(|r| r.pipeline == name);
            if latest.is_empty() {
                return Ok(Said::Told(format!(
                    "pipeline {} has no run at {short} on this merge request; \
                     `/ferry run` starts one.",
                    code_span(name)
                )));
            }
        }
        let mut rerun = Vec::new();
        let mut notes = Vec::new();
        for run in latest {
            let label = code_span(&run.pipeline);
            if !run.state.is_terminal() {
                notes.push(format!("{label} is still {} (run #{})", run.state, run.id));
            } else if !run.problems.is_empty() {
                notes.push(format!("{label} is invalid at {short}; push a fix"));
            } else if name.is_some() || all || run.state == RunState::Failed {
                let new = self.comment_rerun(ctx, index, run).await?;
                rerun.push(format!("{label} (run #{} again as #{new})", run.id));
            }
        }
        if rerun.is_empty() {
            let mut text =
                format!("nothing to rerun at {short}: no pipeline's last run there failed.");
            if !notes.is_empty() {
                text = format!("nothing to rerun at {short}: {}.", notes.join("; "));
            } else if !all {
                text.push_str(" `/ferry rerun --all` runs every pipeline again.");
            }
            return Ok(Said::Told(text));
        }
        let mut text = format!("rerunning {}", rerun.join(", "));
        if !notes.is_empty() {
            text.push_str(&format!("; {}", notes.join("; ")));
        }
        text.push('.');
        Ok(Said::Done(text))
    }

    /// A new run repeating `run`: same commit, context and parameters.
    async fn comment_rerun(
        &self,
        ctx: &Ctx<'_>,
        index: usize,
        run: &Run,
    ) -> Result<RunId, PlanError> {
        let steps = self.store.steps(run.id).await?;
        let new = NewRun {
            project: run.project.clone(),
            pipeline: run.pipeline.clone(),
            sha: run.sha.clone(),
            trigger: Trigger::Comment,
            event_id: Some(ctx.event.id),
            rerun_of: Some(run.id),
            git_ref: run.git_ref.clone(),
            branch: run.branch.clone(),
            tag: run.tag.clone(),
            mr: run.mr,
            params: run.params.clone(),
            pipeline_path: run.pipeline_path.clone(),
            pipeline_yaml: run.pipeline_yaml.clone(),
            problems: Vec::new(),
            initial: RunState::Queued,
            dedup_scope: Some(ctx.scope(index)),
            steps: steps.into_iter().map(|s| s.name).collect(),
        };
        let (id, _) = self.store.create_run(&new).await?;
        concurrency::cancel_superseded(&self.store, id, &new).await?;
        Ok(id)
    }

    /// `/ferry cancel [PIPELINE]`: the merge request's unfinished runs, at any commit.
    pub(super) async fn cancel_command(
        &self,
        ctx: &Ctx<'_>,
        name: Option<&str>,
    ) -> Result<Said, PlanError> {
        let runs = self.mr_runs(ctx, None).await?;
        let active: Vec<&Run> = runs
            .iter()
            .filter(|r| !r.state.is_terminal() && name.is_none_or(|n| r.pipeline == n))
            .collect();
        if active.is_empty() {
            let of = name
                .map(|n| format!(" of {}", code_span(n)))
                .unwrap_or_default();
            return Ok(Said::Told(format!(
                "nothing to cancel: this merge request has no queued or running run{of}."
            )));
        }
        let login = &ctx.comment.author.login;
        let message = format!("cancelled by @{login} with /ferry cancel");
        let (mut cancelled, mut stopping) = (Vec::new(), Vec::new());
        for run in active {
            match self.store.request_cancel(run.id, &message).await? {
                CancelOutcome::Cancelled => cancelled.push(run.id),
                CancelOutcome::Requested => stopping.push(run.id),
                CancelOutcome::Finished(_) => {}
            }
        }
        let mut parts = Vec::new();
        if !cancelled.is_empty() {
            parts.push(format!("cancelled {}", ids(&cancelled)));
        }
        if !stopping.is_empty() {
            parts.push(format!("stopping {}", ids(&stopping)));
        }
        if parts.is_empty() {
            return Ok(Said::Told(
                "nothing to cancel: the runs just finished.".to_owned(),
            ));
        }
        Ok(Said::Done(format!("{}.", parts.join("; "))))
    }

    /// `/ferry ok-to-test`: queues the runs waiting for an approval at the head commit.
    pub(super) async fn ok_to_test(&self, ctx: &Ctx<'_>) -> Result<Said, PlanError> {
        let short = ctx.short_head();
        let head = ctx.head()?.sha.clone();
        let waiting = self
            .store
            .runs_awaiting_approval(&ctx.project.name, ctx.mr)
            .await?;
        let mut approved = Vec::new();
        for run in waiting.iter().filter(|r| r.sha == head) {
            if self.store.approve_run(run.id).await? {
                concurrency::cancel_superseded_by(&self.store, run).await?;
                approved.push(run.id);
            }
        }
        if approved.is_empty() {
            return Ok(Said::Told(format!(
                "nothing waits for an approval at the head commit {short}."
            )));
        }
        tracing::info!(project = %ctx.project.name, mr = ctx.mr, sha = %head,
            by = %ctx.comment.author.login, runs = approved.len(), "merge request approved");
        Ok(Said::Done(format!(
            "approved {short}: queued {}.",
            ids(&approved)
        )))
    }

    /// The merge request's runs (at `sha` when given), newest first.
    async fn mr_runs(&self, ctx: &Ctx<'_>, sha: Option<&str>) -> Result<Vec<Run>, PlanError> {
        let filter = RunFilter {
            project: Some(ctx.project.name.clone()),
            sha: sha.map(str::to_owned),
            mr: Some(ctx.mr),
            ..RunFilter::default()
        };
        Ok(self
            .store
            .list_runs(&filter, Page::first(MR_RUNS))
            .await?
            .runs)
    }

    /// The pipeline files at the head (fetching the merge request's head ref when the commit is
    /// missing); `None` when the commit cannot be found even so.
    async fn read_head(&self, ctx: &Ctx<'_>) -> Result<Option<Vec<(String, Vec<u8>)>>, PlanError> {
        let sha = ctx.head()?.sha.clone();
        let (mirrors, creds, project) = (
            self.mirrors.clone(),
            (self.credentials)(ctx.project),
            ctx.project.clone(),
        );
        let (forge, mr) = (ctx.event.forge, ctx.comment.number);
        let read = tokio::task::spawn_blocking(move || {
            let specs = refspecs(forge, Some(mr));
            let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
            mirrors.ensure_commit_with(&project.name, &project.repo, &creds, &specs, &sha)?;
            mirrors.pipeline_files(&project.name, &sha)
        })
        .await
        .map_err(|e| MirrorError::Internal(e.to_string()))?;
        match read {
            Ok(files) => Ok(Some(files)),
            Err(MirrorError::CommitNotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn unreadable(short: &str) -> String {
    format!(
        "the head commit {short} could not be fetched (was the merge request force-pushed?); \
         nothing was run."
    )
}
