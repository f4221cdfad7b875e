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
//! each step gets `running` and its final status; the pipeline gets `running` and its final
//! status (GitHub App: a check run created, then updated); an MR/PR run gets one note, created
//! when the run starts and edited when it ends. That is 4 calls beyond the step statuses, with
//! nothing else in the normal case: the search for a note's marker only happens after a create
//! whose outcome is unknown. Two rules keep short pipelines within the budget too:
//! - `pending` is only worth a call for a run that is still queued `report.pending_after_ms`
//!   after it was created (its rows are postponed until then, and most runs are running by
//!   then), or that waits for quota or approval (reported at once, with the reason);
//! - a pipeline of one step has no separate step status: the pipeline's status is its step's.
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
//! Answers to comment commands (`store::answers`) go out in the same pass, after the runs: a
//! reaction, or a reply created once (see `answer`).
//!
//! Several replicas on one PostgreSQL database: a run's rows are reported by the replica that
//! claims the run ([`ClaimKind::Report`]; an answer, [`ClaimKind::Answer`]). The claim is renewed
//! before every forge call (`Reporter::fence`): a replica that stalled past its lease, and
//! whose run another replica took over, stops before its next call instead of sending it a second
//! time. What each status context last got is recorded right after the call, before the claim is
//! let go, so the replica that reports the run next starts from it. An idle reporter looks for
//! other replicas' rows every `replicas.poll_ms`.

mod answer;
mod run;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use crate::config::{Config, ProjectForge};
use crate::forge::clients::Forges;
use crate::forge::report::{ForgeCredentials, ForgeError};
use crate::store::{
    ClaimKind, OUTBOX_RUN, OUTBOX_STEP, OutboxItem, Replica, RunId, RunState, Step, Store,
    StoreError, now_millis,
};

use run::RunReport;

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
    /// Another replica took over the claim (this one's lease ran out); the rows are its now.
    #[error("the claim on {0} was lost to another replica")]
    ClaimLost(String),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Rows reported (or found to need no call) and marked sent.
    pub sent: usize,
    /// Rows left for later (the forge is unavailable or rate limited).
    pub deferred: usize,
    /// Rows of runs queued for less than `report.pending_after_ms`, due again then.
    pub postponed: usize,
}

/// What reporting a run came to.
enum Reported {
    /// The forge has the run's current state (or needed no call).
    Done,
    /// Nothing to send before this time: the run has been queued only briefly.
    NotBefore(crate::store::UnixMillis),
}

/// Sends the outbox to the forges.
pub struct Reporter {
    store: Store,
    config: Arc<Config>,
    credentials: HashMap<String, ForgeCredentials>,
    /// Per project, secret values to redact from what is sent.
    secrets: HashMap<String, Vec<String>>,
    forges: Arc<Forges>,
    /// This process, for claiming runs and answers.
    replica: Replica,
    /// Where forge calls are counted.
    metrics: Arc<crate::metrics::Metrics>,
    /// The back-off of [`Reporter::with_backoff`], if set.
    backoff: Option<(Duration, Duration)>,
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
            forges: Arc::new(Forges::new(credentials.clone())),
            credentials,
            secrets,
            replica: Replica::default(),
            metrics: Arc::default(),
            backoff: None,
        }
    }

    /// Claims runs and answers as `replica` (shared with the planner and the dispatcher).
    pub fn with_replica(mut self, replica: Replica) -> Reporter {
        self.replica = replica;
        self
    }

    /// Counts every forge call in `metrics` (`ferry_forge_calls_total{forge, outcome}`,
    /// `ferry_forge_rate_limit_waits_total{forge}`), the planner's too when it shares
    /// [`Reporter::forges`]. Call it before [`Reporter::forges`].
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Reporter {
        self.metrics = metrics;
        self.forges = Arc::new(self.build_forges());
        self
    }

    fn build_forges(&self) -> Forges {
        let forges = Forges::new(self.credentials.clone()).with_metrics(self.metrics.clone());
        match self.backoff {
            Some((min, max)) => forges.with_backoff(min, max),
            None => forges,
        }
    }

    /// Sets the exponential back-off used when the forge says nothing about when to come back
    /// (default 1 s doubling up to 10 min). Call it before [`Reporter::forges`].
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Reporter {
        self.backoff = Some((min, max));
        self.forges = Arc::new(self.build_forges());
        self
    }

    /// The forge clients this reporter uses, to share with the planner (comment commands).
    pub fn forges(&self) -> Arc<Forges> {
        Arc::clone(&self.forges)
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
        let due = async {
            let rows = self.store.first_outbox_due_at().await?;
            let answers = self.store.first_answer_due_at().await?;
            Ok::<_, StoreError>(rows.into_iter().chain(answers).min())
        };
        match due.await {
            Ok(Some(at)) => {
                let wait = u64::try_from(at - now_millis()).unwrap_or(0);
                Duration::from_millis(wait)
                    .clamp(Duration::from_millis(5), PERIODIC)
                    .min(self.config.replicas.idle_poll(self.store.backend()))
            }
            Ok(None) => PERIODIC.min(self.config.replicas.idle_poll(self.store.backend())),
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
            let item = run.to_string();
            if !self
                .store
                .claim(&self.replica, ClaimKind::Report, &item)
                .await?
            {
                continue;
            }
            let result = self.report_claimed(run, &items, &mut stats).await;
            self.store
                .release_claim(&self.replica, ClaimKind::Report, &item)
                .await?;
            result?;
        }
        let answers = self.send_answers().await?;
        stats.sent += answers.sent;
        stats.deferred += answers.deferred;
        Ok(stats)
    }

    /// Reports one claimed run's rows and marks them sent, or defers them.
    async fn report_claimed(
        &self,
        run: RunId,
        items: &[OutboxItem],
        stats: &mut PassStats,
    ) -> Result<(), ReportError> {
        match self.report_run(run, items).await {
            Ok(Reported::Done) => {
                for item in items {
                    self.store.mark_outbox_sent(item.id).await?;
                }
                stats.sent += items.len();
            }
            Ok(Reported::NotBefore(at)) => {
                for item in items {
                    self.store.postpone_outbox(item.id, at).await?;
                }
                stats.postponed += items.len();
            }
            Err(ReportError::Forge(e)) => {
                self.defer(items, &e).await?;
                stats.deferred += items.len();
            }
            Err(ReportError::ClaimLost(what)) => {
                tracing::warn!(run = %run, claim = %what, "another replica took over the run's report; stopped");
            }
            Err(e @ ReportError::Store(_)) => return Err(e),
        }
        Ok(())
    }

    /// Renews this replica's claim on `item` before a forge call; [`ReportError::ClaimLost`] when
    /// another replica holds it now (the call must not be made).
    pub(super) async fn fence(&self, kind: ClaimKind, item: &str) -> Result<(), ReportError> {
        if self.store.renew_claim(&self.replica, kind, item).await? {
            Ok(())
        } else {
            Err(ReportError::ClaimLost(format!("{} {item}", kind.as_str())))
        }
    }

    /// How long to wait before trying again after `error`, the `attempts`-th failure: what the
    /// forge asked for, else the back-off.
    fn retry_wait(&self, attempts: i64, error: &ForgeError) -> Duration {
        match error {
            ForgeError::Unavailable {
                retry_after: Some(wait),
                ..
            } => (*wait).max(Duration::from_millis(1)),
            ForgeError::Unavailable { .. } | ForgeError::Rejected { .. } | ForgeError::Setup(_) => {
                self.backoff(attempts)
            }
        }
    }

    /// Leaves `items` for later, when the forge asked or after a back-off.
    async fn defer(&self, items: &[OutboxItem], error: &ForgeError) -> Result<(), StoreError> {
        let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0);
        let wait = self.retry_wait(attempts, error);
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
        self.forges.backoff(attempts)
    }

    /// Reports the current state of one run, for the rows `items`.
    async fn report_run(&self, id: RunId, items: &[OutboxItem]) -> Result<Reported, ReportError> {
        let Some(run) = self.store.get_run(id).await? else {
            tracing::warn!(run = %id, "outbox rows of a run the store does not have; dropped");
            return Ok(Reported::Done);
        };
        let Some(project) = self.config.project(&run.project) else {
            tracing::debug!(run = %id, project = %run.project, "project no longer configured");
            return Ok(Reported::Done);
        };
        if project.forge == ProjectForge::None {
            return Ok(Reported::Done);
        }
        if let Some(at) = self.pending_not_before(&run) {
            return Ok(Reported::NotBefore(at));
        }
        let Some(forge) = self.forges.get(project).await? else {
            return Ok(Reported::Done);
        };
        if let Some(until) = forge.paused_until() {
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            return Err(ForgeError::Unavailable {
                message: "rate limit used up".to_owned(),
                retry_after: Some(wait),
            }
            .into());
        }
        // A row about an earlier state (a postponed `queued`, due after the run started) is
        // covered by the row its next transition wrote: only rows about the current state (or
        // without one) make the pipeline's status and the note due.
        let run_changed = items.iter().any(|i| {
            i.kind == OUTBOX_RUN
                && i.payload
                    .get("state")
                    .and_then(|s| s.as_str())
                    .is_none_or(|s| s == run.state.as_str())
        });
        let named: BTreeSet<&str> = items
            .iter()
            .filter(|i| i.kind == OUTBOX_STEP)
            .filter_map(|i| i.payload.get("step").and_then(|s| s.as_str()))
            .collect();
        let steps = self.store.steps(run.id).await?;
        let log_tail = match run.state {
            RunState::Failed => self.store.log_tails(run.id).await?.into_iter().next(),
            _ => None,
        };
        let report = RunReport {
            reporter: self,
            forge: forge.as_ref(),
            project,
            run: &run,
            steps: &steps,
            secrets: self
                .secrets
                .get(&project.name)
                .map_or(&[][..], Vec::as_slice),
            sent: self.store.sent_statuses(run.id).await?,
            log_tail: log_tail.map(|t| t.text),
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
        if run_changed && !matches!(run.state, RunState::Queued | RunState::Submitted) {
            // Rows postponed while the run was queued are covered now.
            self.store
                .settle_superseded_run_rows(run.id, run.state.as_str())
                .await?;
        }
        Ok(Reported::Done)
    }

    /// For a run that is queued or submitted, not yet running, and younger than
    /// `report.pending_after_ms`: when its `pending` becomes worth a call. Most runs start within
    /// that time and go straight to `running`; a run waiting for quota or approval (`Waiting`)
    /// is reported at once, with its reason.
    fn pending_not_before(&self, run: &crate::store::Run) -> Option<crate::store::UnixMillis> {
        if !matches!(run.state, RunState::Queued | RunState::Submitted) {
            return None;
        }
        let grace = i64::try_from(self.config.report.pending_after_ms).unwrap_or(i64::MAX / 2);
        let at = run.created_at.saturating_add(grace);
        (at > now_millis()).then_some(at)
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
