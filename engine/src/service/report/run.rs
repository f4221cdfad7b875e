//! One run's report: its statuses (or check run) and its note, from the run's current state and
//! what the forge already has (see the parent module for the policy).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::{ReportError, Reporter};
use crate::config::ProjectConfig;
use crate::forge::report::{CheckRunReport, Forge, ForgeError, StatusReport, StatusState};
use crate::pipeline;
use crate::service::operations;
use crate::service::summary::{self, Baseline, Links, SummaryInput};
use crate::store::{ClaimKind, CommentKind, Run, RunState, Step, StepState, Store};

/// Keeps going after a call the forge refused for good (logged), stops on anything else.
pub(super) fn tolerate<T>(
    what: &str,
    result: Result<T, ForgeError>,
) -> Result<Option<T>, ForgeError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ForgeError::Rejected { status, message }) => {
            tracing::warn!(status, %message, "the forge refused {what}; not retried");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn body_hash(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// The forge word for a run state.
fn run_status(state: RunState) -> StatusState {
    match state {
        RunState::Queued | RunState::Waiting | RunState::Submitted => StatusState::Pending,
        RunState::Running => StatusState::Running,
        RunState::Succeeded => StatusState::Success,
        RunState::Failed => StatusState::Failed,
        RunState::Cancelled => StatusState::Canceled,
    }
}

/// The forge word for a step state; `None` for pending steps (not reported).
fn step_status(state: StepState) -> Option<StatusState> {
    match state {
        StepState::Pending => None,
        StepState::Running => Some(StatusState::Running),
        StepState::Succeeded => Some(StatusState::Success),
        StepState::Failed => Some(StatusState::Failed),
        StepState::Skipped => Some(StatusState::Skipped),
        StepState::Cancelled => Some(StatusState::Canceled),
    }
}

/// One run's report in the making.
pub(super) struct RunReport<'a> {
    pub(super) reporter: &'a Reporter,
    pub(super) forge: &'a dyn Forge,
    pub(super) project: &'a ProjectConfig,
    pub(super) run: &'a Run,
    pub(super) steps: &'a [Step],
    pub(super) secrets: &'a [String],
    pub(super) sent: HashMap<String, String>,
    /// The stored (redacted) tail of the first failed step's log, for a failed run.
    pub(super) log_tail: Option<String>,
    pub(super) now: i64,
}

impl RunReport<'_> {
    fn store(&self) -> &Store {
        &self.reporter.store
    }

    /// Stops here unless this replica still holds the run's report claim (renewing it).
    async fn fence(&self) -> Result<(), ReportError> {
        self.reporter
            .fence(ClaimKind::Report, &self.run.id.to_string())
            .await
    }

    fn links(&self) -> Links {
        let config = &self.reporter.config;
        Links::new(
            config.public_url.as_deref(),
            config.argo.ui_url.as_deref(),
            self.project.namespace.as_deref().unwrap_or("default"),
            self.run.id,
        )
    }

    /// The ref statuses name: the branch (an MR's source branch), else the tag.
    fn status_ref(&self) -> Option<String> {
        self.run.branch.clone().or_else(|| self.run.tag.clone())
    }

    fn context(&self) -> String {
        format!("ferry/{}", self.run.pipeline)
    }

    fn input<'b>(
        &'b self,
        links: &'b Links,
        pipeline: Option<&'b pipeline::Pipeline>,
        baseline: Option<Baseline<'b>>,
    ) -> SummaryInput<'b> {
        SummaryInput {
            run: self.run,
            steps: self.steps,
            pipeline,
            baseline,
            links,
            log_tail: self.log_tail.as_deref(),
            secrets: self.secrets,
            now: self.now,
        }
    }

    /// Sends `status` unless its context already has that state; remembers it once sent.
    async fn status(&self, status: StatusReport) -> Result<(), ReportError> {
        if self.sent.get(&status.context).map(String::as_str) == Some(status.state.as_str()) {
            return Ok(());
        }
        self.fence().await?;
        if tolerate("a commit status", self.forge.set_status(&status).await)?.is_some() {
            self.store()
                .record_sent_status(self.run.id, &status.context, status.state.as_str())
                .await?;
        }
        Ok(())
    }

    /// Each step's own status (`ferry/<pipeline>/<step>`). A pipeline of one step has none:
    /// its step's states are the pipeline's own status, and a second context would repeat them.
    pub(super) async fn steps(&self, steps: &[&Step]) -> Result<(), ReportError> {
        if self.steps.len() == 1 {
            return Ok(());
        }
        let url = self.links().dashboard;
        for step in steps {
            let Some(state) = step_status(step.state) else {
                continue;
            };
            let description = summary::step_description(step, self.secrets, self.now);
            self.status(StatusReport::new(
                &self.run.sha,
                format!("{}/{}", self.context(), step.name),
                state,
                &description,
                url.clone(),
                self.status_ref(),
            ))
            .await?;
        }
        Ok(())
    }

    /// The pipeline's own status, or its check run.
    pub(super) async fn pipeline(&self) -> Result<(), ReportError> {
        let links = self.links();
        let state = run_status(self.run.state);
        let description = summary::run_description(&self.input(&links, None, None));
        if !self.forge.uses_check_runs() {
            return self
                .status(StatusReport::new(
                    &self.run.sha,
                    self.context(),
                    state,
                    &description,
                    links.dashboard.clone(),
                    self.status_ref(),
                ))
                .await;
        }
        if self.sent.get(&self.context()).map(String::as_str) == Some(state.as_str()) {
            return Ok(());
        }
        let summary = if state.is_final() {
            self.body(&links).await?
        } else {
            description.clone()
        };
        let check = CheckRunReport {
            sha: self.run.sha.clone(),
            name: self.context(),
            state,
            title: description,
            summary,
            details_url: links.dashboard.clone(),
            external_id: format!("ferry:run:{}", self.run.id),
        };
        if self
            .upsert(CommentKind::CheckRun, Target::Check(&check))
            .await?
        {
            self.store()
                .record_sent_status(self.run.id, &self.context(), state.as_str())
                .await?;
        }
        Ok(())
    }

    /// The markdown summary of the run.
    async fn body(&self, links: &Links) -> Result<String, ReportError> {
        let pipeline = pipeline::load(&self.run.pipeline_path, &self.run.pipeline_yaml, None).ok();
        let baseline_run = match self.target_branch().await? {
            Some(branch) => {
                self.store()
                    .baseline_run(&self.run.project, &self.run.pipeline, &branch, self.run.id)
                    .await?
            }
            None => None,
        };
        let baseline_steps = match &baseline_run {
            Some(b) => self.store().steps(b.id).await?,
            None => Vec::new(),
        };
        let baseline = baseline_run.as_ref().map(|run| Baseline {
            run,
            steps: &baseline_steps,
        });
        Ok(summary::render(&self.input(
            links,
            pipeline.as_ref(),
            baseline,
        )))
    }

    /// The branch a run's metrics are compared on: an MR's target branch, else the run's own.
    async fn target_branch(&self) -> Result<Option<String>, ReportError> {
        Ok(operations::metrics_branch(
            self.store(),
            self.run,
            self.project.default_branch.as_deref(),
        )
        .await?)
    }

    pub(super) async fn note(&self, mr: i64) -> Result<(), ReportError> {
        let Ok(mr) = u64::try_from(mr) else {
            return Ok(());
        };
        let links = self.links();
        let body = self.body(&links).await?;
        self.upsert(CommentKind::Note, Target::Note { mr, body: &body })
            .await
            .map(drop)
    }

    /// Creates the run's note or check run once, then edits it in place. Returns whether the
    /// forge has the new content.
    async fn upsert(&self, kind: CommentKind, target: Target<'_>) -> Result<bool, ReportError> {
        let hash = body_hash(&target.content());
        let id = self.run.id;
        self.fence().await?;
        let known = self.store().forge_comment(id, kind).await?;
        let existing = match known {
            Some(c) if c.forge_id.is_some() && c.body_hash.as_deref() == Some(hash.as_str()) => {
                return Ok(true);
            }
            Some(c) if c.forge_id.is_some() => c.forge_id,
            // A create was started and its outcome is unknown: look before creating.
            Some(_) => self.find(&target).await?,
            None if self.store().begin_forge_comment(id, kind).await? => None,
            None => self.find(&target).await?,
        };
        if let Some(forge_id) = existing {
            let edited = tolerate("an edit", self.edit(&target, forge_id).await)?;
            if edited.is_some() {
                self.store()
                    .set_forge_comment(id, kind, forge_id, &hash)
                    .await?;
            }
            return Ok(edited.is_some());
        }
        match tolerate("a create", self.create(&target).await)? {
            Some(forge_id) => {
                self.store()
                    .set_forge_comment(id, kind, forge_id, &hash)
                    .await?;
                Ok(true)
            }
            None => {
                self.store().clear_forge_comment_intent(id, kind).await?;
                Ok(false)
            }
        }
    }

    async fn find(&self, target: &Target<'_>) -> Result<Option<i64>, ForgeError> {
        match target {
            Target::Note { mr, .. } => {
                self.forge
                    .find_note(*mr, &summary::marker(self.run.id))
                    .await
            }
            Target::Check(c) => {
                self.forge
                    .find_check_run(&c.sha, &c.name, &c.external_id)
                    .await
            }
        }
    }

    async fn create(&self, target: &Target<'_>) -> Result<i64, ForgeError> {
        match target {
            Target::Note { mr, body } => self.forge.create_note(*mr, body).await,
            Target::Check(c) => self.forge.create_check_run(c).await,
        }
    }

    async fn edit(&self, target: &Target<'_>, id: i64) -> Result<(), ForgeError> {
        match target {
            Target::Note { mr, body } => self.forge.edit_note(*mr, id, body).await,
            Target::Check(c) => self.forge.update_check_run(id, c).await,
        }
    }
}

/// What [`RunReport::upsert`] writes.
enum Target<'a> {
    Note { mr: u64, body: &'a str },
    Check(&'a CheckRunReport),
}

impl Target<'_> {
    fn content(&self) -> String {
        match self {
            Target::Note { body, .. } => (*body).to_owned(),
            Target::Check(c) => format!("{}\n{}\n{}", c.state.as_str(), c.title, c.summary),
        }
    }
}
