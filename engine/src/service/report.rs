//! The reporter: outbox rows become commit statuses, check runs and MR notes on the forge
//! (step 5 of the flow).
//!
//! Each pass reads the due rows ([`Store::pending_outbox`]), groups them by run (oldest first)
//! and reports each run's **current** state, not each row: a run that went running -> succeeded
//! while the forge was down gets its final statuses only, and every step named by a row gets its
//! current (so, in the end, final) state. What each status context last got is remembered in the
//! store ([`Store::sent_statuses`]), so no state is sent twice (GitLab refuses that) and a pass
//! that repeats after a crash costs nothing. Then the rows are marked sent.
//!
//! What a run costs on the forge (the budget: steps + 2 calls beyond the per-step statuses):
//! each step gets `running` and its final status; the pipeline gets `pending` (queued), `running`
//! and its final status (GitHub App: a check run created, then updated twice); an MR/PR run
//! gets one note, created when the run starts and edited when it ends. For a pipeline of three
//! steps that is 3 + 2 = 5 calls beyond the step statuses, with nothing else in the normal case:
//! the search for a note's marker only happens after a create whose outcome is unknown.
//!
//! Notes are created once (see `store::forge_state`): the intent is stored before the create, the
//! id right after; an intent without an id means "search the MR for `<!-- ferry:run:<id> -->`
//! before creating".
//!
//! Failures: a call the forge may accept later ([`ForgeError::Unavailable`]) stops the run's
//! report; its rows are due again after the wait the forge asked for (`Retry-After`, rate-limit
//! reset) or else an exponential back-off, and everything already sent stays remembered. A call
//! the forge refuses for good is logged once and dropped. Runs of projects with `forge: none` (or
//! no longer configured) are marked sent without any call. Unsent rows survive restarts: a new
//! reporter on the same store sends them.
//!
//! One reporter per database: two replicas reporting the same rows at the same moment could both
//! create a run's note.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify, watch};

use crate::config::{Config, ProjectConfig, ProjectForge};
use crate::event::EventKind;
use crate::forge::report::{
    CheckRunReport, Forge, ForgeCredentials, ForgeError, StatusReport, StatusState, connect,
};
use crate::pipeline;
use crate::service::summary::{self, Baseline, Links, SummaryInput};
use crate::store::{
    CommentKind, OUTBOX_RUN, OUTBOX_STEP, OutboxItem, Run, RunId, RunState, Step, StepState,
    Store, StoreError, now_millis,
};

/// Most rows one pass reads.
const BATCH: u32 = 256;
/// Longest time between passes when nothing wakes the reporter.
const PERIODIC: Duration = Duration::from_secs(30);
/// How long a woken reporter waits for more changes before its pass.
const WAKE_COALESCE: Duration = Duration::from_millis(20);

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed; the rows stay unsent.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The forge did not take a call.
    #[error(transparent)]
    Forge(#[from] ForgeError),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Rows reported (or found to need no call) and marked sent.
    pub sent: usize,
    /// Rows left for later (the forge is unavailable or rate limited).
    pub deferred: usize,
}

/// A project's forge client, or why there is none yet.
enum Slot {
    Ready(Arc<dyn Forge>),
    Failed {
        until: Instant,
        attempts: u32,
        error: ForgeError,
    },
}

/// Sends the outbox to the forges.
pub struct Reporter {
    store: Store,
    config: Arc<Config>,
    credentials: HashMap<String, ForgeCredentials>,
    /// Per project, secret values to redact from what is sent.
    secrets: HashMap<String, Vec<String>>,
    forges: Mutex<HashMap<String, Slot>>,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Reporter {
    /// A reporter for the projects of `config`; `credentials` holds each project's forge
    /// credentials by project name (read from the environment by the caller). Forge clients are
    /// built on first use and built again after a failure.
    pub fn new(
        store: Store,
        config: Arc<Config>,
        credentials: HashMap<String, ForgeCredentials>,
    ) -> Reporter {
        let secrets = credentials
            .iter()
            .map(|(project, c)| (project.clone(), credential_values(c)))
            .collect();
        Reporter {
            store,
            config,
            credentials,
            secrets,
            forges: Mutex::new(HashMap::new()),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
        }
    }

    /// Sets the exponential back-off used when the forge says nothing about when to come back
    /// (default 1 s doubling up to 10 min).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Reporter {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// Adds secret values of `project` (beyond its forge credentials, which are always
    /// redacted) to replace by `***` in everything sent.
    pub fn with_secret_values(mut self, project: &str, values: Vec<String>) -> Reporter {
        self.secrets
            .entry(project.to_owned())
            .or_default()
            .extend(values);
        self
    }

    /// Passes until `stop` says so: woken by `wake` (the store's
    /// [`Store::outbox_notify`]), when deferred rows fall due, and every 30 s (rows written by
    /// other processes).
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.pass().await {
                tracing::error!(error = %e, "reporting pass failed");
            }
            let sleep = self.until_next_due().await;
            tokio::select! {
                () = wake.notified() => tokio::time::sleep(WAKE_COALESCE).await,
                () = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn until_next_due(&self) -> Duration {
        match self.store.first_outbox_due_at().await {
            Ok(Some(at)) => {
                let wait = u64::try_from(at - now_millis()).unwrap_or(0);
                Duration::from_millis(wait).clamp(Duration::from_millis(5), PERIODIC)
            }
            Ok(None) => PERIODIC,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                Duration::from_secs(1)
            }
        }
    }

    /// One pass over the due rows.
    pub async fn pass(&self) -> Result<PassStats, ReportError> {
        let rows = self.store.pending_outbox(BATCH).await?;
        let mut groups: Vec<(RunId, Vec<OutboxItem>)> = Vec::new();
        for row in rows {
            match groups.iter_mut().find(|(id, _)| *id == row.run_id) {
                Some((_, items)) => items.push(row),
                None => groups.push((row.run_id, vec![row])),
            }
        }
        let mut stats = PassStats::default();
        for (run, items) in groups {
            match self.report_run(run, &items).await {
                Ok(()) => {
                    for item in &items {
                        self.store.mark_outbox_sent(item.id).await?;
                    }
                    stats.sent += items.len();
                }
                Err(ReportError::Forge(e)) => {
                    self.defer(&items, &e).await?;
                    stats.deferred += items.len();
                }
                Err(e @ ReportError::Store(_)) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// Leaves `items` for later, when the forge asked or after a back-off.
    async fn defer(&self, items: &[OutboxItem], error: &ForgeError) -> Result<(), StoreError> {
        let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0);
        let wait = match error {
            ForgeError::Unavailable {
                retry_after: Some(wait),
                ..
            } => (*wait).max(Duration::from_millis(1)),
            ForgeError::Unavailable { .. } | ForgeError::Rejected { .. } | ForgeError::Setup(_) => {
                self.backoff(attempts)
            }
        };
        let retry_at = now_millis() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
        let run = items.first().map(|i| i.run_id.get()).unwrap_or_default();
        tracing::warn!(run, rows = items.len(), attempts = attempts + 1,
            retry_in_ms = wait.as_millis() as u64, error = %error, "report deferred");
        for item in items {
            self.store
                .mark_outbox_failed_attempt(item.id, &error.to_string(), retry_at)
                .await?;
        }
        Ok(())
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        self.min_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff)
    }

    /// The forge client of `project`, built on first use (`None` for `forge: none`).
    async fn forge(&self, project: &ProjectConfig) -> Result<Option<Arc<dyn Forge>>, ForgeError> {
        let mut forges = self.forges.lock().await;
        let attempts = match forges.get(&project.name) {
            Some(Slot::Ready(forge)) => return Ok(Some(Arc::clone(forge))),
            Some(Slot::Failed {
                until,
                attempts,
                error,
            }) => {
                if *until > Instant::now() {
                    return Err(error.clone());
                }
                *attempts
            }
            None => 0,
        };
        let none = ForgeCredentials::None;
        let credentials = self.credentials.get(&project.name).unwrap_or(&none);
        match connect(project, credentials).await {
            Ok(Some(forge)) => {
                forges.insert(project.name.clone(), Slot::Ready(Arc::clone(&forge)));
                Ok(Some(forge))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                let wait = match &error {
                    ForgeError::Unavailable {
                        retry_after: Some(wait),
                        ..
                    } => *wait,
                    _ => self.backoff(i64::from(attempts)),
                };
                tracing::warn!(project = %project.name, error = %error, "cannot reach the forge");
                forges.insert(
                    project.name.clone(),
                    Slot::Failed {
                        until: Instant::now() + wait,
                        attempts: attempts + 1,
                        error: error.clone(),
                    },
                );
                Err(error)
            }
        }
    }

    /// Reports the current state of one run, for the rows `items`.
    async fn report_run(&self, id: RunId, items: &[OutboxItem]) -> Result<(), ReportError> {
        let Some(run) = self.store.get_run(id).await? else {
            tracing::warn!(run = %id, "outbox rows of a run the store does not have; dropped");
            return Ok(());
        };
        let Some(project) = self.config.project(&run.project) else {
            tracing::debug!(run = %id, project = %run.project, "project no longer configured");
            return Ok(());
        };
        if project.forge == ProjectForge::None {
            return Ok(());
        }
        let Some(forge) = self.forge(project).await? else {
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
        let run_changed = items.iter().any(|i| i.kind == OUTBOX_RUN);
        let named: BTreeSet<&str> = items
            .iter()
            .filter(|i| i.kind == OUTBOX_STEP)
            .filter_map(|i| i.payload.get("step").and_then(|s| s.as_str()))
            .collect();
        let steps = self.store.steps(run.id).await?;
        let report = RunReport {
            reporter: self,
            forge: forge.as_ref(),
            project,
            run: &run,
            steps: &steps,
            secrets: self.secrets.get(&project.name).map_or(&[][..], Vec::as_slice),
            sent: self.store.sent_statuses(run.id).await?,
            now: now_millis(),
        };
        let changed_steps: Vec<&Step> = steps
            .iter()
            .filter(|s| named.contains(s.name.as_str()))
            .collect();
        if run.state.is_terminal() {
            report.steps(&changed_steps).await?;
        }
        if run_changed {
            report.pipeline().await?;
        }
        if !run.state.is_terminal() {
            report.steps(&changed_steps).await?;
        }
        let note_due = run.state == RunState::Running || run.state.is_terminal();
        if let (true, true, Some(mr)) = (run_changed, note_due, run.mr) {
            report.note(mr).await?;
        }
        Ok(())
    }
}

/// The secret values inside credentials (never sent anywhere).
fn credential_values(credentials: &ForgeCredentials) -> Vec<String> {
    match credentials {
        ForgeCredentials::None => Vec::new(),
        ForgeCredentials::Token(token) => vec![token.expose().to_owned()],
        ForgeCredentials::GithubApp { private_key, .. } => {
            vec![private_key.expose().to_owned()]
        }
    }
}

/// Keeps going after a call the forge refused for good (logged), stops on anything else.
fn tolerate<T>(what: &str, result: Result<T, ForgeError>) -> Result<Option<T>, ForgeError> {
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
struct RunReport<'a> {
    reporter: &'a Reporter,
    forge: &'a dyn Forge,
    project: &'a ProjectConfig,
    run: &'a Run,
    steps: &'a [Step],
    secrets: &'a [String],
    sent: HashMap<String, String>,
    now: i64,
}

impl RunReport<'_> {
    fn store(&self) -> &Store {
        &self.reporter.store
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
            log_tail: None,
            secrets: self.secrets,
            now: self.now,
        }
    }

    /// Sends `status` unless its context already has that state; remembers it once sent.
    async fn status(&self, status: StatusReport) -> Result<(), ReportError> {
        if self.sent.get(&status.context).map(String::as_str) == Some(status.state.as_str()) {
            return Ok(());
        }
        if tolerate("a commit status", self.forge.set_status(&status).await)?.is_some() {
            self.store()
                .record_sent_status(self.run.id, &status.context, status.state.as_str())
                .await?;
        }
        Ok(())
    }

    async fn steps(&self, steps: &[&Step]) -> Result<(), ReportError> {
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
                self.run.branch.clone(),
            ))
            .await?;
        }
        Ok(())
    }

    /// The pipeline's own status, or its check run.
    async fn pipeline(&self) -> Result<(), ReportError> {
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
                    self.run.branch.clone(),
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
        if self.upsert(CommentKind::CheckRun, Target::Check(&check)).await? {
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
        Ok(summary::render(&self.input(links, pipeline.as_ref(), baseline)))
    }

    /// The branch a run's metrics are compared on: an MR's target branch, else the run's own.
    async fn target_branch(&self) -> Result<Option<String>, ReportError> {
        if self.run.mr.is_none() {
            return Ok(self.run.branch.clone());
        }
        let event = match self.run.event_id {
            Some(id) => self.store().event_by_id(id).await?,
            None => None,
        };
        let from_event = event.and_then(|e| match e.event.kind {
            EventKind::MergeRequest(mr) => Some(mr.target_branch),
            EventKind::Comment(c) => c.target_branch,
            EventKind::BranchPush(_)
            | EventKind::TagPush(_)
            | EventKind::Rerequested(_)
            | EventKind::Ping => None,
        });
        Ok(from_event.or_else(|| {
            Some(
                self.project
                    .default_branch
                    .clone()
                    .unwrap_or_else(|| "main".to_owned()),
            )
        }))
    }

    async fn note(&self, mr: i64) -> Result<(), ReportError> {
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
