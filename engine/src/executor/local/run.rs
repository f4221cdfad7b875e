//! One run: a task that decides which steps start, skip or fail, starts step tasks, and sends a
//! snapshot [`Observation`] after every change.
//!
//! The decisions mirror the rendered Argo DAG (see the parent module): `depends: x.Succeeded`,
//! `when` from `if.metrics`, `failFast`. The task waits, without polling, for a step event, a
//! cancel request, or (while a step waits for GPUs) a release of GPUs by any run.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::env::{Places, step_env};
use super::gpu::Pool;
use super::step::{self, Launch, Outcome, StepEvent};
use super::{EnvSource, Registry, lock, procs};
use crate::executor::{CancelMode, Job, Observation, Observations, Phase, StepObservation};
use crate::pipeline::MetricsGate;
use crate::store::StepState;

/// The file of a run directory listing the steps that are over, one name a line.
pub(super) const FINISHED_FILE: &str = "finished";

/// The directories of a run.
#[derive(Debug, Clone)]
pub(super) struct RunPaths {
    /// `runs/<id>`.
    pub dir: PathBuf,
    /// Where steps run.
    pub src: PathBuf,
    /// Whether `src` is the run's own checkout (deleted at the end).
    pub owns_src: bool,
}

impl RunPaths {
    /// The paths of the run in `dir` whose steps run in `src`.
    pub(super) fn new(dir: PathBuf, src: PathBuf, owns_src: bool) -> RunPaths {
        RunPaths { dir, src, owns_src }
    }

    fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    /// A metrics path as the step sees it: `/workspace/...` is the run's workspace, another
    /// absolute path is itself, a relative one is under the source.
    fn metrics(&self, declared: &str) -> PathBuf {
        if let Some(rest) = declared.strip_prefix("/workspace/") {
            self.workspace().join(rest)
        } else if declared.starts_with('/') {
            PathBuf::from(declared)
        } else {
            self.src.join(declared.trim_start_matches("./"))
        }
    }
}

/// The variable that tells a run's processes apart from any other's (see `procs`).
pub(super) fn workspace_marker(workspace: &Path) -> String {
    format!("FERRY_WORKSPACE={}", workspace.display())
}

/// The steps of the run in `dir` that were over when ferry last wrote it down.
pub(super) fn finished_steps(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join(FINISHED_FILE))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A run to drive, with what it shares with the executor.
pub(super) struct RunTask {
    /// The run.
    pub job: Job,
    /// Its directories.
    pub paths: RunPaths,
    /// Where inherited variables and secrets come from.
    pub env: EnvSource,
    /// Time between `SIGTERM` and `SIGKILL`.
    pub grace: Duration,
    /// The machine's GPUs.
    pub gpus: Arc<Pool>,
    /// Where snapshots go.
    pub observations: Observations,
    /// The last snapshot sent, for reconcile.
    pub latest: Arc<Mutex<Option<Observation>>>,
    /// The executor's runs, which the task leaves at the end.
    pub registry: Weak<Registry>,
}

type Cancel = watch::Receiver<Option<CancelMode>>;

/// Where the run stands.
struct Tracker {
    steps: Vec<StepObservation>,
    /// GPUs held by each step.
    held: Vec<Vec<u32>>,
    /// Steps whose task was started (they stay `Pending` until their first attempt begins).
    launched: Vec<bool>,
    running: usize,
    started: bool,
    first_failure: Option<usize>,
    cancelled: bool,
}

/// What to do with a pending step.
enum Decision {
    /// Its needs are not all over yet.
    Wait,
    Skip(String),
    Fail(String),
    Start,
}

impl RunTask {
    /// Runs the job to its end.
    pub(super) async fn drive(self, mut cancel: Cancel) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut released = self.gpus.subscribe();
        let mut t = Tracker::new(&self.job);
        let mut sent: Option<Observation> = None;
        let mut watching = true;
        tracing::info!(run.id = %self.job.run_id, pipeline = %self.job.pipeline.name, "local run started");
        loop {
            released.borrow_and_update();
            let waiting = self.schedule(&mut t, &cancel, &events_tx);
            if t.running == 0 && !waiting {
                break;
            }
            self.publish(&t, &mut sent).await;
            tokio::select! {
                Some(event) = events.recv() => self.apply(&mut t, event),
                changed = cancel.changed(), if watching => {
                    watching = changed.is_ok();
                    t.cancel_pending(&self.paths.dir);
                }
                _ = released.changed(), if waiting => {}
            }
        }
        self.clean_up().await;
        self.publish(&t, &mut sent).await;
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).remove(&self.job.run_id);
        }
        tracing::info!(run.id = %self.job.run_id, phase = ?t.phase(), "local run over");
    }

    /// Decides every pending step that can be decided; returns whether one waits for GPUs.
    fn schedule(
        &self,
        t: &mut Tracker,
        cancel: &Cancel,
        events: &mpsc::UnboundedSender<StepEvent>,
    ) -> bool {
        if t.cancelled || cancel.borrow().is_some() || cancel.has_changed().is_err() {
            t.cancel_pending(&self.paths.dir);
            return false;
        }
        let mut waiting = false;
        for i in 0..t.steps.len() {
            if t.steps[i].state != StepState::Pending || t.launched[i] {
                continue;
            }
            match self.decide(t, i) {
                Decision::Wait => {}
                Decision::Skip(reason) => t.finish(&self.paths.dir, i, StepState::Skipped, reason),
                Decision::Fail(reason) => t.finish(&self.paths.dir, i, StepState::Failed, reason),
                Decision::Start => waiting |= !self.start(t, i, cancel, events),
            }
        }
        waiting
    }

    fn decide(&self, t: &Tracker, i: usize) -> Decision {
        let steps = &self.job.pipeline.steps;
        let step = &steps[i];
        let mut ready = true;
        for &n in &step.needs {
            let need = &steps[n].name;
            match t.steps[n].state {
                StepState::Failed => {
                    return Decision::Skip(format!("needs `{need}`, which failed"));
                }
                StepState::Skipped | StepState::Cancelled => {
                    return Decision::Skip(format!("needs `{need}`, which is skipped"));
                }
                StepState::Pending | StepState::Running => ready = false,
                StepState::Succeeded => {}
            }
        }
        if !ready {
            return Decision::Wait;
        }
        if let Some(failed) = t.first_failure {
            return Decision::Skip(format!("not started: step `{}` failed", steps[failed].name));
        }
        if let Some(gate) = &step.gate.metrics
            && let Some(reason) = gate_reason(gate, t)
        {
            return Decision::Skip(reason);
        }
        let (per_node, nodes) = (step.resources.gpu, step.nodes);
        let needed = u64::from(per_node) * u64::from(nodes);
        let total = self.gpus.total();
        if needed > total as u64 {
            let each = if nodes > 1 {
                format!(" ({per_node} on each of {nodes} nodes)")
            } else {
                String::new()
            };
            return Decision::Fail(format!(
                "needs {needed} GPUs{each}, but the local executor has {total}"
            ));
        }
        Decision::Start
    }

    /// Starts step `i` if its GPUs are free; returns false when it must wait for GPUs.
    fn start(
        &self,
        t: &mut Tracker,
        i: usize,
        cancel: &Cancel,
        events: &mpsc::UnboundedSender<StepEvent>,
    ) -> bool {
        let step = &self.job.pipeline.steps[i];
        let needed = (step.resources.gpu as usize).saturating_mul(step.nodes as usize);
        let Some(devices) = self.gpus.take(needed) else {
            t.note_waiting(i, format!("waiting for {needed} free GPUs"));
            return false;
        };
        let workspace = self.paths.workspace();
        let metrics = step.metrics.as_deref().map(|m| self.paths.metrics(m));
        let places = Places {
            workspace: &workspace,
            metrics: metrics.as_deref(),
        };
        let env = match step_env(&self.job, step, &places, &self.env) {
            Ok(env) => env,
            Err(reason) => {
                self.gpus.give_back(devices);
                t.finish(&self.paths.dir, i, StepState::Failed, reason);
                return true;
            }
        };
        let launch = Launch {
            index: i,
            name: step.name.clone(),
            script: step.run.clone(),
            nodes: step.nodes.max(1),
            gpus_per_node: step.resources.gpu,
            gpus: devices.clone(),
            retries: step.retries,
            timeout_secs: step.timeout_secs,
            env,
            metrics,
            cwd: self.paths.src.clone(),
            run_dir: self.paths.dir.clone(),
            logs: self.paths.dir.join("logs"),
            scratch: self.paths.dir.join("scratch"),
            grace: self.grace,
        };
        t.held[i] = devices;
        t.launched[i] = true;
        t.running += 1;
        t.steps[i].message = None;
        tokio::spawn(step::run(launch, cancel.clone(), events.clone()));
        true
    }

    fn apply(&self, t: &mut Tracker, event: StepEvent) {
        match event {
            StepEvent::Attempt {
                index,
                attempt,
                previous,
            } => {
                let step = &mut t.steps[index];
                step.state = StepState::Running;
                step.attempts = attempt;
                step.message = previous.map(|e| format!("attempt {} failed: {e}", attempt - 1));
                t.started = true;
            }
            StepEvent::Done { index, outcome } => {
                t.running = t.running.saturating_sub(1);
                self.gpus.give_back(std::mem::take(&mut t.held[index]));
                let dir = &self.paths.dir;
                match outcome {
                    Outcome::Succeeded(metrics) => {
                        t.steps[index].metrics = metrics;
                        t.finish_quietly(dir, index, StepState::Succeeded, None);
                    }
                    Outcome::Failed(reason) => t.finish(dir, index, StepState::Failed, reason),
                    Outcome::Cancelled => {
                        let reason = "cancelled".to_owned();
                        t.finish(dir, index, StepState::Cancelled, reason);
                    }
                }
            }
        }
    }

    /// Sends the run's snapshot unless it is the same as the last one sent.
    async fn publish(&self, t: &Tracker, sent: &mut Option<Observation>) {
        let observation = Observation {
            run_id: self.job.run_id,
            phase: t.phase(),
            message: t.message(&self.job),
            steps: t.steps.clone(),
        };
        if sent.as_ref() == Some(&observation) {
            return;
        }
        *lock(&self.latest) = Some(observation.clone());
        *sent = Some(observation.clone());
        // A closed channel means the service is shutting down; the run goes on regardless.
        let _ = self.observations.send(observation).await;
    }

    /// Forgets the run's process groups (none is left) and deletes its checkout.
    async fn clean_up(&self) {
        let paths = self.paths.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(paths.dir.join(procs::PIDS_FILE));
            if paths.owns_src {
                let _ = std::fs::remove_dir_all(&paths.src);
            }
        })
        .await;
    }
}

/// Why an `if.metrics` gate keeps its step out, from the metrics its sources published; `None`
/// when the expression holds.
fn gate_reason(gate: &MetricsGate, t: &Tracker) -> Option<String> {
    let lookup = |metric: &crate::pipeline::expr::MetricRef| {
        let source = gate.sources.get(metric)?;
        t.steps[*source]
            .metrics
            .as_ref()?
            .get(&metric.name)?
            .as_f64()
    };
    let evaluation = gate.expr.eval(&lookup);
    if evaluation.value {
        return None;
    }
    let mut reason = format!("`if.metrics` is false: {}", gate.text);
    if !evaluation.missing.is_empty() {
        let names: Vec<String> = evaluation
            .missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect();
        reason.push_str(&format!(" (no metric {})", names.join(", ")));
    }
    Some(reason)
}

impl Tracker {
    fn new(job: &Job) -> Tracker {
        let steps: Vec<StepObservation> = job
            .pipeline
            .steps
            .iter()
            .map(|step| {
                let skipped = job.skipped.iter().find(|s| s.step == step.name);
                StepObservation {
                    name: step.name.clone(),
                    state: match skipped {
                        Some(_) => StepState::Skipped,
                        None => StepState::Pending,
                    },
                    attempts: 0,
                    message: skipped.map(|s| s.reason.clone()),
                    metrics: None,
                }
            })
            .collect();
        Tracker {
            held: vec![Vec::new(); steps.len()],
            launched: vec![false; steps.len()],
            steps,
            running: 0,
            started: false,
            first_failure: None,
            cancelled: false,
        }
    }

    /// Moves step `i` to a terminal state with a message, and writes it down.
    fn finish(&mut self, dir: &Path, i: usize, state: StepState, message: String) {
        self.finish_quietly(dir, i, state, Some(message));
    }

    fn finish_quietly(&mut self, dir: &Path, i: usize, state: StepState, message: Option<String>) {
        let step = &mut self.steps[i];
        step.state = state;
        step.message = message;
        if state == StepState::Failed && self.first_failure.is_none() {
            self.first_failure = Some(i);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(FINISHED_FILE));
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{}", step.name);
        }
    }

    fn note_waiting(&mut self, i: usize, message: String) {
        self.steps[i].message = Some(message);
    }

    /// Cancels every step that has not been launched (launched ones are stopped by their tasks).
    fn cancel_pending(&mut self, dir: &Path) {
        self.cancelled = true;
        for i in 0..self.steps.len() {
            if self.steps[i].state == StepState::Pending && !self.launched[i] {
                let reason = "cancelled before it started".to_owned();
                self.finish(dir, i, StepState::Cancelled, reason);
            }
        }
    }

    fn phase(&self) -> Phase {
        if !self.steps.iter().all(|s| s.state.is_terminal()) {
            return if self.started {
                Phase::Running
            } else {
                Phase::Pending
            };
        }
        if self.cancelled {
            Phase::Cancelled
        } else if self.first_failure.is_some() {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    }

    fn message(&self, job: &Job) -> Option<String> {
        match self.phase() {
            Phase::Failed => self.first_failure.map(|i| {
                let step = &self.steps[i];
                let reason = step.message.as_deref().unwrap_or("failed");
                format!("step `{}` failed: {reason}", job.pipeline.steps[i].name)
            }),
            Phase::Cancelled => Some("cancelled".to_owned()),
            Phase::Pending | Phase::Running | Phase::Succeeded | Phase::Gone { .. } => None,
        }
    }
}
