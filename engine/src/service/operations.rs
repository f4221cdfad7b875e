//! Operations people ask for by hand (the HTTP API, the CLI client, the dashboard): a run in full
//! (steps, metrics against the baseline, links, who asked), reruns, and cancelling.
//!
//! **Reruns.** A rerun is a new run of the same pipeline at the same commit with the same event
//! context (trigger, ref, branch, tag, merge request, event) and the same parameters, from the
//! pipeline file stored with the run (the file at that commit). "All" repeats the run asked for,
//! whatever its state. "Failed only" looks at the *latest* run of that pipeline at that commit in
//! the same context (the run asked for, or a later rerun of it) and repeats it only if it failed;
//! otherwise nothing is created ([`RerunError::NotFailed`]), so pressing "rerun failed" twice
//! queues one run, not two. A run whose pipeline was invalid at its commit is never rerun: the
//! same file would fail the same way.
//!
//! **Cancelling** ([`Planner::cancel`]): a run not yet handed to the executor (queued, waiting) is
//! cancelled in the store at once, its pending steps with it; a submitted or running run gets a
//! durable cancel request that the dispatcher passes to the executor, and the executor's
//! observation of the stopped run finishes it in the store as usual. A finished run cannot be
//! cancelled.

use crate::config::Config;
use crate::event::{Actor, EventKind as ForgeEventKind, ForgeKind};
use crate::problem::Problem;
use crate::service::concurrency;
use crate::service::planner::Planner;
use crate::service::summary::{Links, lower_is_better, metrics_of};
use crate::store::{NewRun, Page, Run, RunFilter, RunId, RunState, Step, Store, StoreError};

/// How one metric compares with the baseline's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It improved.
    Better,
    /// It got worse.
    Worse,
    /// It did not change.
    Same,
}

impl Verdict {
    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Same => "same",
        }
    }
}

/// One metric a step published, next to the baseline run's value of the same step and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricComparison {
    /// The step that published it.
    pub step: String,
    /// The metric's name.
    pub name: String,
    /// This run's value.
    pub value: f64,
    /// The baseline's value, when it has one.
    pub baseline: Option<f64>,
    /// `value - baseline`.
    pub change: Option<f64>,
    /// Whether lower is better for this metric (see `summary::lower_is_better`).
    pub lower_is_better: bool,
    /// Better, worse or the same, when there is a baseline value.
    pub verdict: Option<Verdict>,
}

/// Where an event-triggered run came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOrigin {
    /// The stored delivery.
    pub event_id: i64,
    /// Its forge.
    pub forge: ForgeKind,
    /// The forge user who pushed, opened the merge request or commented, when the event says.
    pub actor: Option<Actor>,
}

/// A run in full.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Its steps, in pipeline order.
    pub steps: Vec<Step>,
    /// The branch its metrics are compared on (an MR's target branch, else its own).
    pub baseline_branch: Option<String>,
    /// The latest succeeded run of the same pipeline on that branch before this one.
    pub baseline: Option<Run>,
    /// Every numeric metric its steps published, with the baseline's.
    pub metrics: Vec<MetricComparison>,
    /// Links to the dashboard and the Argo UI (when their base URLs are configured).
    pub links: Links,
    /// The delivery behind an event-triggered run.
    pub origin: Option<EventOrigin>,
}

/// Reads run `id` in full; `None` when there is no such run.
pub async fn run_detail(
    store: &Store,
    config: &Config,
    id: RunId,
) -> Result<Option<RunDetail>, StoreError> {
    let Some(run) = store.get_run(id).await? else {
        return Ok(None);
    };
    let steps = store.steps(id).await?;
    let project = config.project(&run.project);
    let default_branch = project.and_then(|p| p.default_branch.as_deref());
    let baseline_branch = metrics_branch(store, &run, default_branch).await?;
    let baseline = match &baseline_branch {
        Some(branch) => {
            store
                .baseline_run(&run.project, &run.pipeline, branch, run.id)
                .await?
        }
        None => None,
    };
    let baseline_steps = match &baseline {
        Some(b) => store.steps(b.id).await?,
        None => Vec::new(),
    };
    let namespace = project
        .and_then(|p| p.namespace.as_deref())
        .or(config.argo.namespace.as_deref())
        .unwrap_or("default");
    let links = Links::new(
        config.public_url.as_deref(),
        config.argo.ui_url.as_deref(),
        namespace,
        run.id,
    );
    let origin = match run.event_id {
        Some(event) => store.event_by_id(event).await?.map(|e| EventOrigin {
            event_id: event.0,
            forge: e.event.forge,
            actor: actor_of(&e.event.kind).cloned(),
        }),
        None => None,
    };
    Ok(Some(RunDetail {
        metrics: compare_metrics(&steps, &baseline_steps),
        run,
        steps,
        baseline_branch,
        baseline,
        links,
        origin,
    }))
}

/// The branch a run's metrics are compared on: a merge request's target branch (from its event;
/// the project's default branch, else `main`, when the event does not say), else the run's own
/// branch (`None` for tag runs).
pub async fn metrics_branch(
    store: &Store,
    run: &Run,
    default_branch: Option<&str>,
) -> Result<Option<String>, StoreError> {
    if run.mr.is_none() {
        return Ok(run.branch.clone());
    }
    let event = match run.event_id {
        Some(id) => store.event_by_id(id).await?,
        None => None,
    };
    let from_event = event.and_then(|e| match e.event.kind {
        ForgeEventKind::MergeRequest(mr) => Some(mr.target_branch),
        ForgeEventKind::Comment(c) => c.target_branch,
        ForgeEventKind::BranchPush(_)
        | ForgeEventKind::TagPush(_)
        | ForgeEventKind::Rerequested(_)
        | ForgeEventKind::Ping => None,
    });
    Ok(from_event.or_else(|| Some(default_branch.unwrap_or("main").to_owned())))
}

fn actor_of(kind: &ForgeEventKind) -> Option<&Actor> {
    match kind {
        ForgeEventKind::BranchPush(p) => Some(&p.pusher),
        ForgeEventKind::TagPush(t) => Some(&t.pusher),
        ForgeEventKind::MergeRequest(mr) => Some(&mr.author),
        ForgeEventKind::Comment(c) => Some(&c.author),
        ForgeEventKind::Rerequested(r) => Some(&r.sender),
        ForgeEventKind::Ping => None,
    }
}

/// Every numeric metric of `steps`, in (step, metric) order, with the value of the same step and
/// metric in `baseline`.
pub fn compare_metrics(steps: &[Step], baseline: &[Step]) -> Vec<MetricComparison> {
    let base = metrics_of(baseline);
    metrics_of(steps)
        .into_iter()
        .map(|((step, name), value)| {
            let baseline = base.get(&(step.clone(), name.clone())).copied();
            let lower = lower_is_better(&name);
            let change = baseline.map(|b| value - b);
            let verdict = change.map(|delta| {
                if delta == 0.0 {
                    Verdict::Same
                } else if (delta < 0.0) == lower {
                    Verdict::Better
                } else {
                    Verdict::Worse
                }
            });
            MetricComparison {
                step,
                name,
                value,
                baseline,
                change,
                lower_is_better: lower,
                verdict,
            }
        })
        .collect()
}

/// Why a rerun was not created.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    /// "Failed only" was asked, and the pipeline's latest run at that commit did not fail.
    #[error(
        "run {latest} is the latest run of this pipeline at this commit and it is {state}, not failed"
    )]
    NotFailed {
        /// That latest run.
        latest: RunId,
        /// Its state.
        state: RunState,
    },
    /// The pipeline file was invalid at the run's commit: a rerun would fail the same way.
    #[error("the pipeline was invalid at this commit; push a fix instead of rerunning")]
    InvalidPipeline(Vec<Problem>),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl Planner {
    /// Queues a rerun of `run` (see the module doc for "all" and "failed only"), recording
    /// `triggered_by`, and wakes the dispatcher. Returns the new run's id.
    pub async fn rerun(
        &self,
        run: &Run,
        failed_only: bool,
        triggered_by: Option<&str>,
    ) -> Result<RunId, RerunError> {
        let source = if failed_only {
            let latest = self.latest_in_context(run).await?;
            if latest.state != RunState::Failed {
                return Err(RerunError::NotFailed {
                    latest: latest.id,
                    state: latest.state,
                });
            }
            latest
        } else {
            run.clone()
        };
        if !source.problems.is_empty() {
            return Err(RerunError::InvalidPipeline(source.problems));
        }
        let steps = self.store.steps(source.id).await?;
        let new = NewRun {
            project: source.project.clone(),
            pipeline: source.pipeline.clone(),
            sha: source.sha.clone(),
            trigger: source.trigger,
            event_id: source.event_id,
            rerun_of: Some(source.id),
            git_ref: source.git_ref.clone(),
            branch: source.branch.clone(),
            tag: source.tag.clone(),
            mr: source.mr,
            params: source.params.clone(),
            pipeline_path: source.pipeline_path.clone(),
            pipeline_yaml: source.pipeline_yaml.clone(),
            problems: Vec::new(),
            initial: RunState::Queued,
            dedup_scope: None,
            steps: steps.into_iter().map(|s| s.name).collect(),
        };
        let (id, _) = self.store.create_run_by(&new, triggered_by).await?;
        concurrency::cancel_superseded(&self.store, id, &new).await?;
        tracing::info!(run = %id, rerun_of = %source.id, project = %new.project,
            pipeline = %new.pipeline, sha = %new.sha, failed_only, "rerun queued");
        if let Some(wake) = &self.runs_created {
            wake.notify_one();
        }
        Ok(id)
    }

    /// The newest run of `run`'s pipeline at its commit in the same context (same merge request,
    /// or none): `run` itself or a later rerun.
    async fn latest_in_context(&self, run: &Run) -> Result<Run, StoreError> {
        let filter = RunFilter {
            project: Some(run.project.clone()),
            pipeline: Some(run.pipeline.clone()),
            sha: Some(run.sha.clone()),
            mr: run.mr,
            ..RunFilter::default()
        };
        let mut page = Page::first(Page::MAX_LIMIT);
        loop {
            let found = self.store.list_runs(&filter, page).await?;
            if let Some(latest) = found.runs.into_iter().find(|r| r.mr == run.mr) {
                return Ok(latest);
            }
            match found.next {
                Some(before) => page.before = Some(before),
                None => return Ok(run.clone()),
            }
        }
    }
}

pub use crate::store::CancelOutcome;

/// Why a run could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such run.
    #[error("run {0} not found")]
    NotFound(RunId),
    /// The run is already finished.
    #[error("run {id} is already {state}")]
    Finished {
        /// The run.
        id: RunId,
        /// Its final state.
        state: RunState,
    },
    /// The run kept changing state under every attempt; try again.
    #[error("run {0} kept changing state; try again")]
    Contended(RunId),
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
}

impl Planner {
    /// Cancels run `id` (see the module doc) through the store, recording `reason` as its message:
    /// a queued or waiting run is cancelled at once ([`CancelOutcome::Cancelled`]); a started
    /// one gets a durable cancel request that the dispatcher passes to the executor
    /// ([`CancelOutcome::Requested`]), woken now, and again after a restart if need be. The
    /// same path serves `/ferry cancel`.
    pub async fn cancel(&self, id: RunId, reason: &str) -> Result<CancelOutcome, CancelError> {
        match self.store.request_cancel(id, reason).await {
            Ok(CancelOutcome::Finished(state)) => Err(CancelError::Finished { id, state }),
            Ok(outcome) => {
                tracing::info!(run = %id, reason, ?outcome, "cancel requested");
                if outcome == CancelOutcome::Requested {
                    self.wake_dispatcher();
                }
                Ok(outcome)
            }
            Err(StoreError::NotFound { .. }) => Err(CancelError::NotFound(id)),
            Err(StoreError::Conflict { .. }) => Err(CancelError::Contended(id)),
            Err(e) => Err(CancelError::Store(e)),
        }
    }
}
