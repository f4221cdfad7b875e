//! Dispatching: queued runs go to the executor, and what the executor observes goes into the store.
//!
//! Two loops share one [`Dispatcher`]:
//! - the **submitter** takes queued runs oldest first (those their project's quota admits,
//!   `service::quota`; the others wait for capacity), loads the pipeline the run holds (as
//!   validated at its commit) against the current profile, records the steps gated out at creation
//!   as `skipped`, and submits the run. Executors make submission idempotent (fixed workflow names,
//!   "already exists" is success), so a crash between submit and the store's write submits again
//!   harmlessly. A submission the executor rejects fails the run with its message; one that cannot
//!   be made now is retried with back-off, and the run stays queued.
//! - the **observer** applies [`Observation`]s: it compares the snapshot with the store and walks
//!   the run and step state machines to match it (through `submitted` and `running` when the
//!   executor skipped past them), every change a compare-and-set with its outbox row. A repeated
//!   or stale observation changes nothing.
//!
//! Between passes the submitter also passes cancel requests to the executor
//! ([`Dispatcher::forward_cancels`]); an observation of a run the store already finished (it was
//! cancelled while being submitted) makes the dispatcher stop it.
//!
//! On start, [`Dispatcher::reconcile`] hands the executor every run the store has as submitted or
//! running: the executor adopts what it still has, and runs it lost are failed (and queued again
//! as a new run when the executor says the pipeline allows it).
//!
//! Several replicas on one PostgreSQL database: the submitter takes queued runs through claims
//! ([`Store::claim_queued_runs`]), so each run is submitted by one replica, which moves it on
//! before it lets go of the claim. Every replica follows every started run (an executor that
//! [`Executor::follows_any_run`]: Argo): each pass it hands the runs other replicas started to
//! [`Executor::reconcile`] ([`Dispatcher::adopt_started`]), so the runs of a replica that dies are
//! still followed. Two replicas applying the same observation is harmless: every change is a
//! compare-and-set, and only the one that moves the run writes its outbox row. Reconcile on start
//! cannot fail a run another replica follows: a run is `submitted` in the store only after its
//! workflow exists, and a workflow that exists is adopted, not reported gone. An idle submitter
//! looks for other replicas' runs every `replicas.poll_ms`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::config::{Config, ProjectConfig};
use crate::executor::{
    CancelMode, Executor, Job, LogRequest, Observation, Phase, Source, StepObservation, SubmitError,
};
use crate::pipeline::{self, Pipeline};
use crate::profile::Profile;
use crate::render::{RunContext, decide_skips};
use crate::service::mirror::Mirrors;
use crate::service::quota::Quota;
use crate::store::{
    ClaimKind, NewRun, Replica, Run, RunId, RunState, Step, StepChange, StepState, Store,
    StoreError,
};

mod adopt;

/// Most queued runs one submitter pass takes.
const BATCH: u32 = 64;
/// Longest wait between submission attempts of a run the executor cannot take now.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Lines of a failed step's log kept for the summary and the dashboard.
pub const LOG_TAIL_LINES: u32 = 30;
/// Bytes of it kept at most (a summary note must stay readable and within forge limits).
pub const LOG_TAIL_BYTES: usize = 8 * 1024;
/// Longest wait for the executor to read a log tail (the observer waits meanwhile).
const LOG_TAIL_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the compare-and-set retries of one observation (each retry re-reads the store).
const MAX_STEPS: usize = 32;

/// Why a dispatcher pass failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Submits queued runs and applies observations.
pub struct Dispatcher {
    store: Store,
    config: Arc<Config>,
    profile: Arc<Profile>,
    executor: Arc<dyn Executor>,
    mirrors: Mirrors,
    /// Runs whose submission failed for now: attempts so far and when to try again.
    backoff: Mutex<HashMap<RunId, (u32, Instant)>>,
    /// The fingerprint of the last observation applied per unfinished run, so a repeated one
    /// costs no query (8 bytes a run, not the snapshot: 10,000 followed runs stay small).
    applied: Mutex<HashMap<RunId, u64>>,
    /// Submissions and their latency.
    metrics: Arc<crate::metrics::Metrics>,
    /// Runs whose cancel request this process passed to the executor.
    cancelling: Mutex<HashSet<RunId>>,
    /// Per-project limits on what is submitted.
    quota: Quota,
    /// This process, for claiming queued runs.
    replica: Replica,
    /// Started runs the executor follows for this process (submitted, reconciled or adopted).
    followed: Mutex<HashSet<RunId>>,
    /// When [`Dispatcher::adopt_started`] last looked.
    adopted_at: Mutex<Option<Instant>>,
}

impl Dispatcher {
    /// A dispatcher over `executor`, finding mirrors under `data_dir/mirrors` like the planner.
    pub fn new(
        store: Store,
        config: Arc<Config>,
        profile: Arc<Profile>,
        executor: Arc<dyn Executor>,
        data_dir: PathBuf,
    ) -> Dispatcher {
        Dispatcher {
            quota: Quota::new(store.clone(), Arc::clone(&config), Arc::clone(&profile)),
            store,
            config,
            profile,
            executor,
            mirrors: Mirrors::new(data_dir.join("mirrors")),
            backoff: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
            cancelling: Mutex::new(HashSet::new()),
            replica: Replica::default(),
            followed: Mutex::new(HashSet::new()),
            adopted_at: Mutex::new(None),
        }
    }

    /// Claims queued runs as `replica` (shared with the planner and the reporter).
    pub fn with_replica(mut self, replica: Replica) -> Dispatcher {
        self.replica = replica;
        self
    }

    /// Records submissions in `metrics`: `ferry_submissions_total{executor, outcome}` and
    /// `ferry_submit_latency_seconds{executor}` (from the run's creation to its submission).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Dispatcher {
        self.metrics = metrics;
        self
    }

    fn count_submission(&self, outcome: &str) {
        self.metrics.inc(
            "ferry_submissions_total",
            "Runs handed to the executor, by outcome (submitted, rejected, unavailable).",
            &[("executor", self.executor.kind()), ("outcome", outcome)],
        );
    }

    /// Counts a failed executor call: `ferry_executor_errors_total{executor, operation}`.
    fn count_error(&self, operation: &str) {
        self.metrics.inc(
            "ferry_executor_errors_total",
            "Executor calls that failed, by operation (submit, cancel, reconcile, watch).",
            &[("executor", self.executor.kind()), ("operation", operation)],
        );
    }

    /// The executor runs go to.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// Reconciles, then submits and observes until `stop` says so: the submitter wakes on `wake`
    /// (the planner and the API notify it) and when a back-off falls due.
    pub async fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        mut observations: mpsc::Receiver<Observation>,
        mut stop: watch::Receiver<bool>,
    ) {
        if let Err(e) = self.reconcile().await {
            tracing::error!(error = %e, executor = self.executor.kind(), "reconcile on start failed");
        }
        let observer = {
            let me = Arc::clone(&self);
            let mut stop = stop.clone();
            let wake = Arc::clone(&wake);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        obs = observations.recv() => match obs {
                            Some(obs) => {
                                me.apply_logged(&obs).await;
                                // A finished run frees capacity a waiting run may take.
                                if obs.phase.is_final() {
                                    wake.notify_one();
                                }
                            }
                            None => return,
                        },
                        _ = stop.changed() => if *stop.borrow() { return },
                    }
                }
            })
        };
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.forward_cancels().await {
                tracing::error!(error = %e, "passing cancel requests to the executor failed");
            }
            if let Err(e) = self.adopt_started().await {
                tracing::error!(error = %e, "following the runs other replicas started failed");
            }
            let sleep = match self.submit_queued().await {
                // A whole batch went out: more may be queued behind it (after a restart, a
                // burst), so the next pass starts at once rather than at the next wake.
                Ok(n) if n >= BATCH as usize => continue,
                Ok(_) => self.until_next_retry(),
                Err(e) => {
                    tracing::error!(error = %e, "submitting queued runs failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                // No pause to gather more: a pass takes every queued run, and a wake during a
                // pass leaves a permit that starts the next one.
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = observer.await;
    }

    fn until_next_retry(&self) -> Duration {
        let now = Instant::now();
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff
            .values()
            .map(|(_, at)| at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_millis(5))
            .min(self.idle_poll())
    }

    /// Hands every run the store has as submitted or running to the executor: those it still has
    /// are followed again, the rest are applied as [`Phase::Gone`].
    pub async fn reconcile(&self) -> Result<usize, DispatchError> {
        let mut runs = self
            .store
            .runs_in_state(RunState::Submitted, u32::MAX)
            .await?;
        runs.extend(
            self.store
                .runs_in_state(RunState::Running, u32::MAX)
                .await?,
        );
        if runs.is_empty() {
            return Ok(0);
        }
        Ok(if self.follow_again(&runs).await {
            runs.len()
        } else {
            0
        })
    }

    fn idle_poll(&self) -> Duration {
        self.config.replicas.idle_poll(self.store.backend())
    }

    /// One submitter pass: every queued run that is not backing off, that no other replica
    /// claimed, and that its project's quota admits ([`Quota::admit`]) is submitted. Returns how
    /// many were submitted.
    pub async fn submit_queued(&self) -> Result<usize, DispatchError> {
        let mut submitted = 0;
        let now = Instant::now();
        let claimed = self.store.claim_queued_runs(&self.replica, BATCH).await?;
        // A limited project's line is read from the store, claimed or not: every replica then
        // admits the same front of the line, and each submits only what it holds (the fence
        // below), so a quota is not spent twice.
        let admission = self.quota.admit(claimed).await?;
        for (run, message) in &admission.fail {
            tracing::warn!(run = %run.id, project = %run.project, %message, "the run can never fit its project's quota");
            self.finish_unsubmitted(run, message).await?;
        }
        for run in admission.submit {
            let due = {
                let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                backoff.get(&run.id).is_none_or(|(_, at)| *at <= now)
            };
            let item = run.id.to_string();
            // Fenced: a claim that lapsed while this batch was going out, and that another
            // replica took, is not submitted here too.
            let held = due
                && self
                    .store
                    .renew_claim(&self.replica, ClaimKind::Submit, &item)
                    .await?;
            let result = if held {
                self.submit(&run).await
            } else {
                Ok(false)
            };
            // The run has moved on (or stays queued for whoever tries next).
            self.store
                .release_claim(&self.replica, ClaimKind::Submit, &item)
                .await?;
            if result? {
                submitted += 1;
            }
        }
        Ok(submitted)
    }

    /// Submits one queued run; `Ok(false)` when it failed or must wait.
    async fn submit(&self, run: &Run) -> Result<bool, DispatchError> {
        let job = match self.job(run) {
            Ok(job) => job,
            Err(message) => {
                self.finish_unsubmitted(run, &message).await?;
                return Ok(false);
            }
        };
        // The executor first: the steps decided out at creation are not in what it runs, so
        // recording them can follow the submission, which then waits for no commit of its own
        // (push -> workflow created, docs/PERFORMANCE.md). After a crash in between, the next
        // submission decides them again, the same way.
        let submitted = self.executor.submit(&job).await;
        if !matches!(submitted, Err(SubmitError::Unavailable(_))) {
            self.record_skips(run, &job).await?;
        }
        match submitted {
            Ok(()) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&run.id);
                self.mark_followed([run.id]);
                self.count_submission("submitted");
                let latency = (crate::store::now_millis() - run.created_at).max(0) as f64 / 1000.0;
                self.metrics.observe(
                    "ferry_submit_latency_seconds",
                    "Seconds from a run's creation to its submission to the executor.",
                    &[("executor", self.executor.kind())],
                    latency,
                );
                self.walk_run(run.id, RunState::Submitted, None).await?;
                Ok(true)
            }
            Err(SubmitError::Rejected(message)) => {
                self.count_submission("rejected");
                self.backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&run.id);
                tracing::warn!(run = %run.id, %message, "the executor rejected the run");
                self.finish_unsubmitted(run, &message).await?;
                Ok(false)
            }
            Err(SubmitError::Unavailable(message)) => {
                self.count_submission("unavailable");
                self.count_error("submit");
                let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                let attempts = backoff.get(&run.id).map_or(0, |(n, _)| *n) + 1;
                let wait = Duration::from_millis(250)
                    .saturating_mul(1 << attempts.min(10))
                    .min(MAX_BACKOFF);
                backoff.insert(run.id, (attempts, Instant::now() + wait));
                tracing::warn!(run = %run.id, attempts, retry_in_ms = wait.as_millis() as u64,
                    %message, "the executor is unavailable; the run stays queued");
                Ok(false)
            }
        }
    }

    /// Records the steps the job decided out at creation as skipped, with the reason.
    async fn record_skips(&self, run: &Run, job: &Job) -> Result<(), DispatchError> {
        for skip in &job.skipped {
            let change = StepChange {
                message: Some(skip.reason.clone()),
                metrics: None,
            };
            match self
                .store
                .transition_step(
                    run.id,
                    &skip.step,
                    StepState::Pending,
                    StepState::Skipped,
                    &change,
                )
                .await
            {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Fails a run that never reached the executor, with `message`; its steps are skipped first,
    /// so that a run seen finished (by the reporter, the API) has final steps, as in [`apply`].
    ///
    /// [`apply`]: Dispatcher::apply
    async fn finish_unsubmitted(&self, run: &Run, message: &str) -> Result<(), DispatchError> {
        self.settle_steps(run.id, RunState::Failed, message).await?;
        self.walk_run(run.id, RunState::Failed, Some(message))
            .await?;
        Ok(())
    }

    /// The job for a queued run, or why it cannot run.
    fn job(&self, run: &Run) -> Result<Job, String> {
        let project = self
            .config
            .project(&run.project)
            .ok_or_else(|| format!("project `{}` is no longer configured", run.project))?;
        let pipeline = pipeline::load(&run.pipeline_path, &run.pipeline_yaml, Some(&self.profile))
            .map_err(|problems| {
                format!(
                    "the pipeline is not valid against the current cluster profile: {}",
                    problems
                        .0
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })?;
        let context = self.context(run, project, &pipeline);
        let skipped = decide_skips(&pipeline, &context);
        let source = self
            .mirrors
            .path(&run.project)
            .map(Source::Mirror)
            .map_err(|e| e.to_string())?;
        Ok(Job {
            run_id: run.id,
            pipeline: Arc::new(pipeline),
            context,
            skipped,
            source,
        })
    }

    /// The render context of a stored run.
    fn context(&self, run: &Run, project: &ProjectConfig, _pipeline: &Pipeline) -> RunContext {
        let params = run
            .params
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        RunContext {
            run_id: u64::try_from(run.id.get()).unwrap_or_default(),
            project: run.project.clone(),
            repo_url: project.repo.clone(),
            sha: run.sha.clone(),
            git_ref: run.git_ref.clone(),
            branch: run.branch.clone(),
            tag: run.tag.clone(),
            merge_request: run.mr.and_then(|n| u64::try_from(n).ok()),
            event: run.trigger,
            params,
            namespace: project.namespace.clone(),
            dashboard_url: self
                .config
                .public_url
                .as_ref()
                .map(|base| format!("{}/runs/{}", base.trim_end_matches('/'), run.id)),
        }
    }

    async fn apply_logged(&self, obs: &Observation) {
        if let Err(e) = self.apply(obs).await {
            tracing::error!(run = %obs.run_id, error = %e, "applying an executor observation failed");
        }
    }

    /// Brings the store in line with one observation. Idempotent.
    pub async fn apply(&self, obs: &Observation) -> Result<(), DispatchError> {
        let print = obs.fingerprint();
        {
            let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            if applied.get(&obs.run_id) == Some(&print) {
                return Ok(());
            }
        }
        let Some(run) = self.store.get_run(obs.run_id).await? else {
            tracing::warn!(run = %obs.run_id, "an observation for a run the store does not have");
            return Ok(());
        };
        if run.state.is_terminal() {
            if !obs.phase.is_final() {
                // Cancelled in the store while it was being submitted: it must not go on.
                self.stop(&run, "it is over in the store").await;
            }
            self.forget(obs.run_id);
            return Ok(());
        }
        if !obs.steps.is_empty() {
            // In the pipeline's order (the store's), which is also the order steps can start in
            // (`needs` names earlier steps): the outbox then says `train succeeded` before
            // `evaluate running`, whatever order the executor listed them in.
            let stored = self.store.steps(obs.run_id).await?;
            for seen in &obs.steps {
                if !stored.iter().any(|s| s.name == seen.name) {
                    tracing::warn!(run = %obs.run_id, step = %seen.name,
                        "the executor reports a step the run does not have");
                }
            }
            for step in stored {
                if let Some(seen) = obs.steps.iter().find(|s| s.name == step.name) {
                    self.walk_step(step, seen).await?;
                }
            }
        }
        let message = obs.message.as_deref();
        match obs.phase {
            Phase::Pending => {
                self.walk_run(obs.run_id, RunState::Submitted, message)
                    .await?;
            }
            Phase::Running => {
                self.walk_run(obs.run_id, RunState::Running, message)
                    .await?;
            }
            Phase::Succeeded | Phase::Failed | Phase::Cancelled | Phase::Gone { .. } => {
                let to = match obs.phase {
                    Phase::Succeeded => RunState::Succeeded,
                    Phase::Cancelled => RunState::Cancelled,
                    _ => RunState::Failed,
                };
                let text = obs.message.clone().unwrap_or_else(|| match obs.phase {
                    Phase::Gone { .. } => "the executor no longer has this run".to_owned(),
                    _ => format!("the run {}", to.as_str()),
                });
                self.settle_steps(obs.run_id, to, &text).await?;
                if to == RunState::Failed {
                    // Before the run's final state: the reporter's summary then has it.
                    self.keep_log_tail(&run).await;
                }
                let moved = self
                    .walk_run(obs.run_id, to, message.or(Some(&text)))
                    .await?;
                if moved && matches!(obs.phase, Phase::Gone { requeue: true }) {
                    self.requeue(&run).await?;
                }
                self.forget(obs.run_id);
                return Ok(());
            }
        }
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(obs.run_id, print);
        Ok(())
    }

    /// Fetches the tail of the first failed step's log from the executor and stores it
    /// redacted, once per run. Best effort: a log that cannot be read is logged and the run
    /// finishes without it.
    async fn keep_log_tail(&self, run: &Run) {
        let steps = match self.store.steps(run.id).await {
            Ok(steps) => steps,
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "no log tail: reading the steps failed");
                return;
            }
        };
        let Some(step) = steps.iter().find(|s| s.state == StepState::Failed) else {
            return;
        };
        // Only the step's secrets and the namespace are needed, not a whole job (mirror, render
        // context, skips), and the pipeline is read as the run holds it: a profile changed since
        // must not cost a failed run its log.
        let pipeline = match pipeline::load(&run.pipeline_path, &run.pipeline_yaml, None) {
            Ok(p) => p,
            Err(problems) => {
                tracing::warn!(run = %run.id, error = %problems, "no log tail: the pipeline does not load");
                return;
            }
        };
        let namespace = self
            .config
            .project(&run.project)
            .and_then(|p| p.namespace.as_deref());
        let request = LogRequest {
            run: run.id,
            namespace,
            pipeline: &pipeline,
            step: &step.name,
            lines: LOG_TAIL_LINES,
            bytes: LOG_TAIL_BYTES,
        };
        let fetched =
            match tokio::time::timeout(LOG_TAIL_TIMEOUT, self.executor.log_tail(request)).await {
                Ok(Ok(Some(fetched))) => fetched,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(run = %run.id, step = %step.name, error = %e,
                        "the failed step's log could not be read");
                    return;
                }
                Err(_) => {
                    tracing::warn!(run = %run.id, step = %step.name,
                        "the failed step's log could not be read in time");
                    return;
                }
            };
        let text = crate::service::summary::redact(&fetched.text, &fetched.secrets);
        if let Err(e) = self.store.set_log_tail(run.id, &step.name, &text).await {
            tracing::warn!(run = %run.id, error = %e, "storing the log tail failed");
        }
    }

    /// Passes cancel requests ([`Store::request_cancel`] of a started run) to the executor, once
    /// per run in this process (again after a restart: cancelling is idempotent). The executor's
    /// observation then moves the run to `cancelled`. Returns how many were passed.
    pub async fn forward_cancels(&self) -> Result<usize, DispatchError> {
        let mut asked = 0;
        for run in self.store.cancel_requested_runs().await? {
            let first = self
                .cancelling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(run.id);
            if !first {
                continue;
            }
            if self.stop(&run, "its cancel was requested").await {
                asked += 1;
            } else {
                // Asked again at the next pass.
                self.cancelling
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&run.id);
            }
        }
        Ok(asked)
    }

    /// Asks the executor to stop `run`; whether it took the request.
    async fn stop(&self, run: &Run, why: &str) -> bool {
        let project = self.config.project(&run.project);
        let namespace = project.and_then(|p| p.namespace.as_deref());
        match self
            .executor
            .cancel(run.id, namespace, CancelMode::Stop)
            .await
        {
            Ok(()) => {
                tracing::info!(run = %run.id, project = %run.project, "asked the executor to stop the run: {why}");
                true
            }
            Err(e) => {
                self.count_error("cancel");
                tracing::warn!(run = %run.id, error = %e, "the executor did not take a cancel; asking again later");
                false
            }
        }
    }

    fn forget(&self, run: RunId) {
        self.cancelling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
    }

    /// Queues a new run repeating `run` (the executor lost it and the pipeline allows retries).
    async fn requeue(&self, run: &Run) -> Result<(), DispatchError> {
        let steps = self.store.steps(run.id).await?;
        let new = NewRun {
            project: run.project.clone(),
            pipeline: run.pipeline.clone(),
            sha: run.sha.clone(),
            trigger: run.trigger,
            event_id: run.event_id,
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
            dedup_scope: None,
            steps: steps.into_iter().map(|s| s.name).collect(),
        };
        let (id, _) = self.store.create_run(&new).await?;
        tracing::info!(run = %run.id, new_run = %id, "queued the lost run again");
        Ok(())
    }

    /// Moves the run toward `to` through the legal path (`queued -> submitted -> running -> to`),
    /// re-reading on conflicts. Returns whether it reached `to` now (false when it already was
    /// there or is past it).
    async fn walk_run(
        &self,
        id: RunId,
        to: RunState,
        message: Option<&str>,
    ) -> Result<bool, DispatchError> {
        let mut reached = false;
        for _ in 0..MAX_STEPS {
            let Some(run) = self.store.get_run(id).await? else {
                return Ok(false);
            };
            let cur = run.state;
            let Some(next) = next_run_state(cur, to) else {
                return Ok(reached);
            };
            let msg = if next == to { message } else { None };
            match self.store.transition_run_with(id, cur, next, msg).await {
                Ok(()) => {
                    reached = next == to;
                    tracing::info!(run = %id, project = %run.project, pipeline = %run.pipeline,
                        state = %next, message = msg.unwrap_or(""), "run {}", next);
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(reached)
    }

    /// Moves one step toward what the executor saw, counting attempts.
    async fn walk_step(&self, mut step: Step, seen: &StepObservation) -> Result<(), DispatchError> {
        for _ in 0..MAX_STEPS {
            let Some(next) = next_step_state(&step, seen) else {
                return Ok(());
            };
            let change = if next == seen.state {
                StepChange {
                    message: seen.message.clone(),
                    metrics: seen.metrics.clone(),
                }
            } else {
                StepChange::default()
            };
            match self
                .store
                .transition_step(step.run_id, &step.name, step.state, next, &change)
                .await
            {
                Ok(()) => {
                    step.attempts += i64::from(next == StepState::Running);
                    step.state = next;
                    tracing::info!(run = %step.run_id, step = %step.name, state = %next,
                        attempt = step.attempts, message = seen.message.as_deref().unwrap_or(""),
                        "step {}", next);
                }
                Err(StoreError::Conflict { .. }) => {
                    let fresh = self.store.steps(step.run_id).await?;
                    match fresh.into_iter().find(|s| s.name == step.name) {
                        Some(s) => step = s,
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Gives every unfinished step of a finished run its final state: cancelled with a cancelled
    /// run; otherwise a running step failed (with the run's message) and a pending one skipped.
    async fn settle_steps(
        &self,
        run: RunId,
        to: RunState,
        message: &str,
    ) -> Result<(), DispatchError> {
        for step in self.store.steps(run).await? {
            let next = match (to, step.state) {
                (_, s) if s.is_terminal() => continue,
                (RunState::Cancelled, _) => StepState::Cancelled,
                (_, StepState::Running) => StepState::Failed,
                (_, _) => StepState::Skipped,
            };
            let note = match next {
                StepState::Skipped => format!("not run: {message}"),
                _ => message.to_owned(),
            };
            let change = StepChange {
                message: Some(note),
                metrics: None,
            };
            match self
                .store
                .transition_step(run, &step.name, step.state, next, &change)
                .await
            {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The next state on the legal path from `cur` toward `to` (`queued -> submitted -> running ->
/// to`); `None` when the run is there, finished, or past it (a stale observation: a running run
/// never goes back to submitted).
pub(crate) fn next_run_state(cur: RunState, to: RunState) -> Option<RunState> {
    if cur == to || cur.is_terminal() {
        return None;
    }
    if cur.can_go_to(to) {
        return Some(to);
    }
    match cur {
        RunState::Queued | RunState::Waiting => Some(RunState::Submitted),
        RunState::Submitted => Some(RunState::Running),
        RunState::Running | RunState::Succeeded | RunState::Failed | RunState::Cancelled => None,
    }
}

/// The next state on the legal path from the stored step toward what the executor saw. Attempts
/// are counted by entering `running` once per attempt (`running -> running` is a retry), so a step
/// seen finished after three attempts goes pending -> running x3 -> its final state.
pub(crate) fn next_step_state(step: &Step, seen: &StepObservation) -> Option<StepState> {
    use StepState::*;
    if step.state.is_terminal() {
        return None;
    }
    let more = i64::from(seen.attempts) > step.attempts;
    match (seen.state, step.state) {
        (Pending, _) => None,
        (Skipped, Pending) => Some(Skipped),
        // A started step cannot become skipped; the run's end settles it.
        (Skipped, _) => None,
        (Running, Pending) => Some(Running),
        (Running, _) => more.then_some(Running),
        (Succeeded, Pending) => Some(Running),
        (_, Pending | Running) if more => Some(Running),
        (to, _) => Some(to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: StepState, attempts: i64) -> Step {
        Step {
            run_id: RunId::new(1).expect("id"),
            name: "train".into(),
            position: 0,
            state,
            attempts,
            message: None,
            metrics: None,
            started_at: None,
            finished_at: None,
        }
    }

    fn seen(state: StepState, attempts: u32) -> StepObservation {
        StepObservation {
            name: "train".into(),
            state,
            attempts,
            message: None,
            metrics: None,
        }
    }

    /// Follows `next_step_state` the way the dispatcher does, returning the path taken.
    fn path(mut s: Step, o: &StepObservation) -> Vec<StepState> {
        let mut out = Vec::new();
        while let Some(next) = next_step_state(&s, o) {
            assert!(
                s.state.can_go_to(next),
                "{} -> {} is illegal",
                s.state,
                next
            );
            out.push(next);
            s.attempts += i64::from(next == StepState::Running);
            s.state = next;
            assert!(out.len() < 10, "no end: {out:?}");
        }
        out
    }

    #[test]
    fn step_paths_count_attempts_and_stay_legal() {
        use StepState::*;
        assert_eq!(
            path(step(Pending, 0), &seen(Succeeded, 3)),
            [Running, Running, Running, Succeeded]
        );
        assert_eq!(path(step(Running, 1), &seen(Running, 2)), [Running]);
        assert_eq!(path(step(Running, 2), &seen(Running, 2)), []);
        assert_eq!(
            path(step(Pending, 0), &seen(Succeeded, 0)),
            [Running, Succeeded]
        );
        assert_eq!(path(step(Pending, 0), &seen(Failed, 0)), [Failed]);
        assert_eq!(
            path(step(Pending, 0), &seen(Failed, 2)),
            [Running, Running, Failed]
        );
        assert_eq!(path(step(Pending, 0), &seen(Skipped, 0)), [Skipped]);
        assert_eq!(path(step(Running, 1), &seen(Skipped, 0)), []);
        assert_eq!(path(step(Running, 1), &seen(Cancelled, 1)), [Cancelled]);
        assert_eq!(path(step(Pending, 0), &seen(Pending, 0)), []);
        assert_eq!(path(step(Succeeded, 1), &seen(Failed, 2)), []);
        // A stale observation (fewer attempts than stored) never goes back.
        assert_eq!(path(step(Running, 3), &seen(Running, 1)), []);
    }

    #[test]
    fn run_paths_go_through_submitted_and_never_back() {
        use RunState::*;
        let walk = |mut cur: RunState, to: RunState| {
            let mut out = Vec::new();
            while let Some(next) = next_run_state(cur, to) {
                assert!(cur.can_go_to(next));
                out.push(next);
                cur = next;
            }
            out
        };
        assert_eq!(walk(Queued, Running), [Submitted, Running]);
        assert_eq!(walk(Queued, Succeeded), [Submitted, Succeeded]);
        assert_eq!(walk(Queued, Failed), [Failed]);
        assert_eq!(walk(Submitted, Submitted), []);
        assert_eq!(walk(Running, Submitted), []);
        assert_eq!(walk(Succeeded, Failed), []);
        assert_eq!(walk(Waiting, Running), [Submitted, Running]);
    }
}
