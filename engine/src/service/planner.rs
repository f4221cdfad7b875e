//! Planning: stored events become queued runs of exactly the pipelines they trigger.
//!
//! A worker takes pending events oldest first, per project in order: it fetches the commit into the
//! project's bare mirror, reads `.ferry/` at that commit, validates it against the profile,
//! computes the changed files, matches each pipeline's `on`, and creates runs with dedup keys, so
//! planning an event twice (a crash between creating runs and marking the event planned) creates
//! nothing new. A failed fetch is retried with back-off (up to 5 minutes apart) and reported in
//! the log and in `/metrics`; the project's later events wait behind it, so order is kept. An
//! outage is retried for as long as it lasts; only an event that waiting cannot help (its commit
//! is gone, its project removed) is given up after `MAX_EVENT_ATTEMPTS`
//! ([`PlanError::failure`]). An invalid pipeline file becomes a failed run carrying its problems.
//!
//! With several replicas on one PostgreSQL database, a project is planned by one replica at a
//! time: the planner claims the project ([`ClaimKind::Plan`]) before its events and renews the
//! claim before each one; a project another replica holds is skipped until its claim is released
//! or its lease runs out. An idle planner looks for other replicas' deliveries every
//! `replicas.poll_ms`.
//!
//! Runs of a merge request from a fork, or by an author without write access, are created
//! `waiting` for `/ferry ok-to-test` (`trust`); comments carrying `/ferry` commands are acted on
//! and answered through the store (`commands`).

mod backing_off;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::config::{Config, ProjectConfig};
use crate::event::{Event, EventKind as Ev, ForgeKind, MergeRequestAction};
use crate::forge::clients::Forges;
use crate::forge::report::{Forge, ForgeError};
use crate::pipeline::{self, EventKind as Trigger};
use crate::profile::Profile;
use crate::service::concurrency;
use crate::service::matching::{self, Match};
use crate::service::mirror::{Changes, Credentials, MirrorError, Mirrors};
use crate::store::{
    ClaimKind, EventId, EventState, Failure, NewRun, Replica, RunState, Store, StoreError,
    StoredEvent, WaitReason, now_millis,
};

/// How long a woken planner waits for more deliveries before its pass.
const WAKE_COALESCE: Duration = Duration::from_millis(2);
/// Longest wait between planning attempts of a failing event.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;

/// Why an event could not be planned now.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Fetching or reading the repository failed (retried).
    #[error("git: {0}")]
    Git(#[from] MirrorError),
    /// The event names a project the config no longer has.
    #[error("project `{0}` is not configured")]
    UnknownProject(String),
    /// The forge could not be asked (who may run commands, a merge request's head) (retried).
    #[error("forge: {0}")]
    Forge(#[from] ForgeError),
}

impl PlanError {
    /// Whether waiting cannot help, so that the event may be given up on after
    /// [`crate::store::MAX_EVENT_ATTEMPTS`]: the commit is not in the repository (force-pushed
    /// away), the project is no longer configured, the forge refused a question. An outage of
    /// the forge, the network or the database is transient: a push is never dropped because
    /// GitLab was down for an hour.
    pub fn failure(&self) -> Failure {
        match self {
            PlanError::Store(_) => Failure::Transient,
            PlanError::Git(e) => match e {
                MirrorError::CommitNotFound { .. }
                | MirrorError::InvalidSha { .. }
                | MirrorError::InvalidProject { .. }
                | MirrorError::Git { .. } => Failure::Permanent,
                MirrorError::Fetch { .. }
                | MirrorError::Auth { .. }
                | MirrorError::Open { .. }
                | MirrorError::NotMirrored { .. }
                | MirrorError::Internal(_) => Failure::Transient,
            },
            PlanError::UnknownProject(_) => Failure::Permanent,
            PlanError::Forge(ForgeError::Unavailable { .. }) => Failure::Transient,
            PlanError::Forge(ForgeError::Rejected { .. } | ForgeError::Setup(_)) => {
                Failure::Permanent
            }
        }
    }
}

/// The planning worker.
pub struct Planner {
    pub(super) store: Store,
    pub(super) config: Arc<Config>,
    pub(super) profile: Arc<Profile>,
    pub(super) mirrors: Arc<Mirrors>,
    pub(super) credentials: Arc<dyn Fn(&ProjectConfig) -> Credentials + Send + Sync>,
    /// Notified when new runs were created (wakes the dispatcher).
    pub(super) runs_created: Option<Arc<Notify>>,
    /// Where planning failures are counted.
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// The forge clients, for comment commands and trust; `None`: no forge is asked (only the
    /// fork rule applies, and comments are not answered).
    pub(super) forges: Option<Arc<Forges>>,
    /// This process, for claiming projects.
    pub(super) replica: Replica,
    /// Projects whose oldest pending event is backing off, and until when.
    backing_off: backing_off::BackingOff,
}

impl Planner {
    /// A planner keeping mirrors under `data_dir/mirrors`, cloning without credentials.
    pub fn new(
        store: Store,
        config: Arc<Config>,
        profile: Arc<Profile>,
        data_dir: PathBuf,
    ) -> Planner {
        Planner {
            store,
            config,
            profile,
            mirrors: Arc::new(Mirrors::new(data_dir.join("mirrors"))),
            credentials: Arc::new(|_| Credentials::None),
            runs_created: None,
            metrics: Arc::default(),
            forges: None,
            replica: Replica::default(),
            backing_off: Default::default(),
        }
    }

    /// Claims projects as `replica` (shared with the dispatcher and the reporter).
    pub fn with_replica(mut self, replica: Replica) -> Planner {
        self.replica = replica;
        self
    }

    /// Uses `f` to find each project's clone credentials (read from the environment at the edge).
    pub fn with_credentials(
        mut self,
        f: impl Fn(&ProjectConfig) -> Credentials + Send + Sync + 'static,
    ) -> Planner {
        self.credentials = Arc::new(f);
        self
    }

    /// Counts planning failures in `metrics` (`ferry_planning_failures_total`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Planner {
        self.metrics = metrics;
        self
    }

    /// Notifies `wake` whenever planning created runs (the dispatcher's wake).
    pub fn with_runs_created(mut self, wake: Arc<Notify>) -> Planner {
        self.runs_created = Some(wake);
        self
    }

    /// Asks the forge through `forges` (shared with the reporter, [`crate::service::report::
    /// Reporter::forges`]) who may use comment commands and whether a merge request's author
    /// has write access; without it comments are not acted on and only the fork rule decides
    /// which merge requests wait for `/ferry ok-to-test`.
    pub fn with_forges(mut self, forges: Arc<Forges>) -> Planner {
        self.forges = Some(forges);
        self
    }

    /// The forge client of `project`, when there is one.
    pub(super) async fn forge(
        &self,
        project: &ProjectConfig,
    ) -> Result<Option<Arc<dyn Forge>>, ForgeError> {
        match &self.forges {
            Some(forges) => forges.get(project).await,
            None => Ok(None),
        }
    }

    /// Wakes the dispatcher (runs were queued, or cancels requested).
    pub(super) fn wake_dispatcher(&self) {
        if let Some(wake) = &self.runs_created {
            wake.notify_one();
        }
    }

    /// Plans until `stop` says so: on start (events left from before a restart), whenever `wake`
    /// is notified, and when a retry falls due.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.plan_pending().await {
                tracing::error!(error = %e, "planning pass failed");
            }
            let sleep = self.until_next_due().await;
            tokio::select! {
                // A burst of deliveries wakes the planner once per pass, not once per delivery.
                () = wake.notified() => tokio::time::sleep(WAKE_COALESCE).await,
                () = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// How long to sleep: until the earliest due time of a project's oldest pending event.
    async fn until_next_due(&self) -> Duration {
        let mut due: Option<i64> = None;
        for project in &self.config.projects {
            if let Ok(Some(at)) = self.oldest_due(&project.name).await {
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        match due {
            Some(at) => Duration::from_millis(
                u64::try_from(at - now_millis())
                    .unwrap_or(0)
                    .clamp(10, 60_000),
            ),
            None => Duration::from_secs(60),
        }
        .min(self.idle_poll())
    }

    fn idle_poll(&self) -> Duration {
        self.config.replicas.idle_poll(self.store.backend())
    }

    /// One pass over the configured projects, each project's events strictly in order: a project
    /// stops at its first event that is backing off or fails now. Returns how many events were
    /// planned.
    pub async fn plan_pending(&self) -> Result<usize, PlanError> {
        let mut planned = 0;
        for project in &self.config.projects {
            // Cheap check first: most wakes find the oldest event of a project backing off.
            if !self.due(&project.name).await? {
                continue;
            }
            let name = project.name.as_str();
            if !self
                .store
                .claim(&self.replica, ClaimKind::Plan, name)
                .await?
            {
                continue;
            }
            let result = self.plan_project(name).await;
            self.store
                .release_claim(&self.replica, ClaimKind::Plan, name)
                .await?;
            planned += result?;
        }
        Ok(planned)
    }

    /// Whether the oldest pending event of `project` is due.
    async fn due(&self, project: &str) -> Result<bool, StoreError> {
        Ok(matches!(self.oldest_due(project).await?, Some(at) if at <= now_millis()))
    }

    /// When the oldest pending event of `project` is due, if it has one: from memory while it is
    /// known to be backing off (no store query per wake during a burst), else from the store.
    async fn oldest_due(&self, project: &str) -> Result<Option<i64>, StoreError> {
        let now = now_millis();
        if let Some(at) = self.backing_off.until(project, now) {
            return Ok(Some(at));
        }
        let due = self.store.first_pending_due_at(project).await?;
        self.backing_off.note(project, due, now);
        Ok(due)
    }

    /// Plans the events of a claimed project in order, while the claim holds.
    async fn plan_project(&self, project: &str) -> Result<usize, PlanError> {
        let mut planned = 0;
        loop {
            if planned > 0 {
                let held = self
                    .store
                    .renew_claim(&self.replica, ClaimKind::Plan, project)
                    .await?;
                if !held {
                    break;
                }
            }
            let Some(stored) = self.store.first_pending_event(project).await? else {
                break;
            };
            if stored.next_attempt_at > now_millis() {
                break;
            }
            match self.plan_one(&stored).await {
                Ok(()) => planned += 1,
                Err(e) => {
                    self.failed(&stored, &e).await?;
                    break;
                }
            }
        }
        Ok(planned)
    }

    async fn failed(&self, stored: &StoredEvent, error: &PlanError) -> Result<(), StoreError> {
        let backoff = (1_000i64 << stored.attempts.clamp(0, 20)).min(MAX_BACKOFF_MS);
        let kind = match error {
            PlanError::Store(_) => "store",
            PlanError::Git(_) => "git",
            PlanError::UnknownProject(_) => "config",
            PlanError::Forge(_) => "forge",
        };
        self.metrics.inc(
            "ferry_planning_failures_total",
            "Failed planning attempts (fetches, reads), retried with back-off.",
            &[("project", &stored.project), ("kind", kind)],
        );
        tracing::warn!(event.id = stored.id.0, project = %stored.project, attempts = stored.attempts + 1, retry_in_ms = backoff, error = %error, "planning failed; will retry");
        let now = now_millis();
        let retry_at = now + backoff;
        let state = self
            .store
            .mark_event_failed_attempt(stored.id, &error.to_string(), retry_at, error.failure())
            .await?;
        match state {
            EventState::Pending => self.backing_off.note(&stored.project, Some(retry_at), now),
            EventState::Failed => {
                tracing::error!(event.id = stored.id.0, project = %stored.project, attempts = stored.attempts + 1, error = %error, "planning gave up on this event: trying again cannot help");
            }
            EventState::Planned => {}
        }
        Ok(())
    }

    async fn plan_one(&self, stored: &StoredEvent) -> Result<(), PlanError> {
        let project = self
            .config
            .project(&stored.project)
            .ok_or_else(|| PlanError::UnknownProject(stored.project.clone()))?;
        if let Ev::Comment(comment) = &stored.event.kind {
            self.plan_comment(project, stored, comment).await?;
        }
        if concurrency::cancel_ended(&self.store, &project.name, &stored.event).await? > 0 {
            self.wake_dispatcher();
        }
        if let Some(target) = Target::of(&stored.event) {
            let created = self
                .plan_target(project, stored.id, &stored.event, &target)
                .await?;
            tracing::info!(event.id = stored.id.0, project = %project.name, sha = %target.sha, runs = created, "event planned");
            if created > 0 {
                self.wake_dispatcher();
            }
        }
        self.store.mark_event_planned(stored.id).await?;
        Ok(())
    }

    async fn plan_target(
        &self,
        project: &ProjectConfig,
        event_id: EventId,
        event: &Event,
        target: &Target,
    ) -> Result<usize, PlanError> {
        let mirrors = self.mirrors.clone();
        let (p, creds, ev, tgt) = (
            project.clone(),
            (self.credentials)(project),
            event.clone(),
            target.clone(),
        );
        let default_branch = project
            .default_branch
            .clone()
            .or_else(|| default_branch_of(event))
            .unwrap_or_else(|| "main".into());
        let read = tokio::task::spawn_blocking(move || -> Result<Read, MirrorError> {
            let refspecs = refspecs(ev.forge, tgt.mr);
            let specs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
            // Fetches only when the commit is missing: a warm mirror answers without the network.
            mirrors.ensure_commit_with(&p.name, &p.repo, &creds, &specs, &tgt.sha)?;
            Ok(Read {
                files: mirrors.pipeline_files(&p.name, &tgt.sha)?,
                message: mirrors.commit_message(&p.name, &tgt.sha)?,
                changes: mirrors.changes_for(&p.name, &ev, &default_branch)?,
            })
        })
        .await
        .map_err(|e| MirrorError::Internal(e.to_string()))??;
        let message = target.message.clone().unwrap_or(read.message);
        if matching::skip_requested(&message) {
            tracing::info!(project = %project.name, sha = %target.sha, "head commit asks to skip CI");
            return Ok(0);
        }
        let loaded = pipeline::load_files(&read.files, Some(&self.profile));
        let matched: Vec<(&pipeline::Pipeline, Trigger)> = loaded
            .pipelines
            .iter()
            .filter_map(|p| match matching::matches(p, event, &read.changes) {
                Match::Run { trigger } => Some((p, trigger)),
                Match::Skip { .. } => None,
            })
            .collect();
        // The forge is asked only when a merge request triggers something.
        let waits = match &event.kind {
            Ev::MergeRequest(mr) if !matched.is_empty() => {
                self.approval_needed(project, mr).await?
            }
            _ => None,
        };
        let mut created = 0;
        for (p, trigger) in matched {
            let yaml = text_of(&read.files, &p.file);
            let mut run = target.new_run(
                project,
                event_id,
                trigger,
                &p.name,
                &p.file,
                yaml,
                Vec::new(),
                p.steps.iter().map(|s| s.name.clone()).collect(),
            );
            run.params = p
                .params
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let new = match &waits {
                Some(why) => {
                    self.store
                        .create_waiting_run(&run, WaitReason::Approval, why)
                        .await?
                        .1
                }
                None => {
                    let (id, new) = self.store.create_run(&run).await?;
                    // Also when the run existed: planning again after a failure in between
                    // finishes what the first attempt started (cancelling is idempotent).
                    concurrency::cancel_superseded_with(&self.store, id, &run, p.concurrency)
                        .await?;
                    new
                }
            };
            created += usize::from(new);
        }
        created += self
            .failed_runs(project, event_id, target, &read.files, &loaded.problems)
            .await?;
        if let Some(mr) = target.mr {
            self.supersede_unapproved(project, mr, &target.sha).await?;
        }
        Ok(created)
    }

    /// One failed run per invalid file, carrying its problems.
    async fn failed_runs(
        &self,
        project: &ProjectConfig,
        event_id: EventId,
        target: &Target,
        files: &[(String, Vec<u8>)],
        problems: &[crate::problem::Problem],
    ) -> Result<usize, PlanError> {
        let mut created = 0;
        let mut by_file: Vec<(&str, Vec<crate::problem::Problem>)> = Vec::new();
        for p in problems {
            match by_file.iter_mut().find(|(f, _)| *f == p.file) {
                Some((_, list)) => list.push(p.clone()),
                None => by_file.push((&p.file, vec![p.clone()])),
            }
        }
        for (file, list) in by_file {
            let name = std::path::Path::new(file)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(file)
                .to_owned();
            let mut run = target.new_run(
                project,
                event_id,
                target.trigger,
                &name,
                file,
                text_of(files, file),
                list,
                Vec::new(),
            );
            run.initial = RunState::Failed;
            created += usize::from(self.store.create_run(&run).await?.1);
        }
        Ok(created)
    }
}

/// What planning read from the mirror.
struct Read {
    files: Vec<(String, Vec<u8>)>,
    message: String,
    changes: Changes,
}

/// The text of `file` among `files` (empty when missing).
pub(super) fn text_of(files: &[(String, Vec<u8>)], file: &str) -> String {
    files
        .iter()
        .find(|(f, _)| f == file)
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn default_branch_of(event: &Event) -> Option<String> {
    match &event.kind {
        Ev::BranchPush(p) => p.default_branch.clone(),
        Ev::TagPush(_) | Ev::MergeRequest(_) | Ev::Comment(_) | Ev::Rerequested(_) | Ev::Ping => {
            None
        }
    }
}

/// Branches, tags, and the merge request's head when there is one (forks push there only).
pub(super) fn refspecs(forge: ForgeKind, mr: Option<u64>) -> Vec<String> {
    let mut specs = vec![
        "+refs/heads/*:refs/heads/*".to_owned(),
        "+refs/tags/*:refs/tags/*".to_owned(),
    ];
    if let Some(n) = mr {
        specs.push(match forge {
            ForgeKind::Gitlab => format!("+refs/merge-requests/{n}/head:refs/ferry/mr/{n}"),
            ForgeKind::Github => format!("+refs/pull/{n}/head:refs/ferry/mr/{n}"),
        });
    }
    specs
}

/// The commit an event builds and its context, for events that can start runs.
#[derive(Debug, Clone)]
struct Target {
    sha: String,
    git_ref: String,
    branch: Option<String>,
    tag: Option<String>,
    mr: Option<u64>,
    trigger: Trigger,
    message: Option<String>,
    scope: String,
}

impl Target {
    fn of(event: &Event) -> Option<Target> {
        match &event.kind {
            Ev::BranchPush(p) => Some(Target {
                sha: p.after.clone()?,
                git_ref: format!("refs/heads/{}", p.branch),
                branch: Some(p.branch.clone()),
                tag: None,
                mr: None,
                trigger: Trigger::Push,
                message: p.head_message.clone(),
                scope: format!("push:{}", p.branch),
            }),
            Ev::TagPush(t) => Some(Target {
                sha: t.sha.clone()?,
                git_ref: format!("refs/tags/{}", t.tag),
                branch: None,
                tag: Some(t.tag.clone()),
                mr: None,
                trigger: Trigger::Tag,
                message: t.head_message.clone(),
                scope: format!("tag:{}", t.tag),
            }),
            Ev::MergeRequest(m) => match m.action {
                MergeRequestAction::Opened
                | MergeRequestAction::Updated
                | MergeRequestAction::Reopened
                | MergeRequestAction::ReadyForReview => Some(Target {
                    sha: m.head_sha.clone(),
                    git_ref: format!("refs/ferry/mr/{}", m.number),
                    branch: Some(m.source_branch.clone()),
                    tag: None,
                    mr: Some(m.number),
                    trigger: Trigger::MergeRequest,
                    message: m.head_message.clone(),
                    scope: format!("mr:{}", m.number),
                }),
                MergeRequestAction::Closed
                | MergeRequestAction::Merged
                | MergeRequestAction::Other => None,
            },
            Ev::Comment(_) | Ev::Rerequested(_) | Ev::Ping => None,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a run row has this many independent parts"
    )]
    fn new_run(
        &self,
        project: &ProjectConfig,
        event_id: EventId,
        trigger: Trigger,
        pipeline: &str,
        path: &str,
        yaml: String,
        problems: Vec<crate::problem::Problem>,
        steps: Vec<String>,
    ) -> NewRun {
        NewRun {
            project: project.name.clone(),
            pipeline: pipeline.to_owned(),
            sha: self.sha.clone(),
            trigger,
            event_id: Some(event_id),
            rerun_of: None,
            git_ref: self.git_ref.clone(),
            branch: self.branch.clone(),
            tag: self.tag.clone(),
            mr: self.mr.and_then(|m| i64::try_from(m).ok()),
            params: Default::default(),
            pipeline_path: path.to_owned(),
            pipeline_yaml: yaml,
            problems,
            initial: RunState::Queued,
            dedup_scope: Some(self.scope.clone()),
            steps,
        }
    }
}
