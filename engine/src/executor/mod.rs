//! Executors: where runs happen.
//!
//! The service hands an executor a [`Job`] (a queued run with its validated pipeline and context)
//! and the executor reports back through a channel of [`Observation`]s. An observation is a
//! *snapshot* of one run as the executor sees it (level-triggered, like a Kubernetes controller):
//! the service compares it with the store and walks the run and step state machines to match, so a
//! missed or repeated observation is harmless. Argo's watcher naturally produces whole objects; the
//! local executor sends a snapshot after every change of any step.
//!
//! Chosen by `executor:` in `ferry.yaml`: `local` (processes on this machine, the embedded
//! default) or `argo` (Argo Workflows through the Kubernetes API).

pub mod argo;
pub mod local;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::pipeline::Pipeline;
use crate::render::{RunContext, SkippedStep};
use crate::store::{Run, RunId, StepState};

/// A boxed future, so that [`Executor`] can be used as `dyn Executor`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where observations go: the service's observer task reads the other end.
pub type Observations = mpsc::Sender<Observation>;

/// Where a run's source code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The commit `context.sha` in the project's bare mirror at this path (the service's runs).
    Mirror(PathBuf),
    /// A directory used as it is (`ferry run` on the current working tree).
    Dir(PathBuf),
}

/// One run to start.
#[derive(Debug, Clone)]
pub struct Job {
    /// The store's run id.
    pub run_id: RunId,
    /// The pipeline as validated at the run's commit.
    pub pipeline: Arc<Pipeline>,
    /// Everything the run depends on besides the pipeline (ref, sha, params, namespace...).
    pub context: RunContext,
    /// Steps decided out when the run was created (the service records them `skipped` in the
    /// store once the executor has taken the run); the executor does not run them, and steps that
    /// need them are in this list too.
    pub skipped: Vec<SkippedStep>,
    /// The source code.
    pub source: Source,
}

/// Why a submission did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// It will never work as it is (the API server refused the manifest with `422`, the pipeline
    /// cannot be rendered, the commit is missing): the run fails with this message.
    #[error("{0}")]
    Rejected(String),
    /// It may work later (connection refused, `429`, `5xx`, timeouts): the run stays queued and is
    /// submitted again after a back-off.
    #[error("{0}")]
    Unavailable(String),
}

/// An executor operation other than submit failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

/// How to cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelMode {
    /// Stop scheduling new steps and let exit handlers run (Argo `shutdown: Stop`); the local
    /// executor stops its processes with `SIGTERM`, then `SIGKILL` after a grace period.
    #[default]
    Stop,
    /// Kill everything now (Argo `shutdown: Terminate`; locally `SIGKILL`).
    Terminate,
}

/// The phase of a run as the executor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing started yet.
    Pending,
    /// At least one step started.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with a failure (or errored).
    Failed,
    /// Stopped on request.
    Cancelled,
    /// The executor no longer has the run (workflow deleted by TTL or by hand, local processes
    /// lost to a restart). With `requeue`, the run should be run again (the pipeline allows
    /// retries).
    Gone {
        /// Whether a new attempt of the run should be queued.
        requeue: bool,
    },
}

impl Phase {
    /// Whether the run is over as far as the executor is concerned.
    pub fn is_final(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }
}

/// One step as the executor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepObservation {
    /// The step's name in the pipeline.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// How many attempts have started (0 while pending; 2 after one retry).
    pub attempts: u32,
    /// What the executor says about it: a failure message, a skip reason, the last attempt's
    /// error.
    pub message: Option<String>,
    /// The metrics it published (a JSON object), once it succeeded.
    pub metrics: Option<Value>,
}

/// A snapshot of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The run.
    pub run_id: RunId,
    /// Its phase.
    pub phase: Phase,
    /// The executor's message for the run (Argo's `status.message`, why it is gone...).
    pub message: Option<String>,
    /// The steps the executor knows about; steps not listed keep their stored state. Empty when
    /// the executor cannot see steps (Argo node status offloaded to a database): the phase alone
    /// then decides, and `message` says so.
    pub steps: Vec<StepObservation>,
}

impl Observation {
    /// A stable fingerprint of everything the service reads of the snapshot: the same snapshot
    /// twice gives the same number (the Argo executor sends it once; the dispatcher keeps this,
    /// not the snapshot, to skip a repeated one).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.run_id.hash(&mut h);
        std::mem::discriminant(&self.phase).hash(&mut h);
        if let Phase::Gone { requeue } = self.phase {
            requeue.hash(&mut h);
        }
        self.message.hash(&mut h);
        for s in &self.steps {
            s.name.hash(&mut h);
            s.state.hash(&mut h);
            s.attempts.hash(&mut h);
            s.message.hash(&mut h);
            s.metrics.as_ref().map(Value::to_string).hash(&mut h);
        }
        h.finish()
    }
}

/// The plug point: the local executor and the Argo executor implement it.
///
/// Implementations send [`Observation`]s on the channel they were built with, for every run they
/// follow, until the run's phase is final.
pub trait Executor: Send + Sync + 'static {
    /// `local` or `argo`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Starts a run. Idempotent: submitting a run the executor already has (a crash between
    /// submit and the store's write) is success, and it keeps following it.
    fn submit<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), SubmitError>>;

    /// Asks a run to stop. Cancelling a run that is already over or unknown is not an error.
    fn cancel<'a>(
        &'a self,
        run: RunId,
        namespace: Option<&'a str>,
        mode: CancelMode,
    ) -> BoxFuture<'a, Result<(), ExecError>>;

    /// Called once at start with the runs the store has as submitted or running: starts following
    /// the ones the executor still has (adopts them) and returns an observation for each run,
    /// [`Phase::Gone`] for those it no longer has.
    fn reconcile<'a>(
        &'a self,
        runs: &'a [Run],
    ) -> BoxFuture<'a, Result<Vec<Observation>, ExecError>>;

    /// Whether the executor can be reached (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>>;

    /// The last lines of one step's log (its latest attempt), with every secret value the step
    /// could see, for the summary of a failed run. `Ok(None)` when there is no log (the step
    /// never started, or its pods are gone).
    fn log_tail<'a>(
        &'a self,
        request: LogRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<FetchedLog>, ExecError>>;

    /// Whether it can follow runs another process submitted (through [`Executor::reconcile`]),
    /// so that replicas sharing a database follow every started run and take over those of a
    /// replica that died. Argo can (the workflows are on the cluster); the local executor cannot
    /// (its runs are processes of the replica that started them).
    fn follows_any_run(&self) -> bool {
        false
    }
}

/// What [`Executor::log_tail`] fetches.
#[derive(Debug, Clone, Copy)]
pub struct LogRequest<'a> {
    /// The run.
    pub run: RunId,
    /// Its namespace (`None`: the executor's default).
    pub namespace: Option<&'a str>,
    /// Its pipeline (the step's `secret_env` names the secrets it could see).
    pub pipeline: &'a Pipeline,
    /// The step's name.
    pub step: &'a str,
    /// How many lines to keep at most.
    pub lines: u32,
    /// How many bytes to keep at most (the end wins).
    pub bytes: usize,
}

/// A log tail as the executor read it: **not redacted** yet.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FetchedLog {
    /// The text (at most the lines and bytes asked for).
    pub text: String,
    /// Every secret value the step could see, for the caller to redact.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for FetchedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedLog")
            .field("bytes", &self.text.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// The last `lines` lines of `text`, and at most `bytes` of them (cut at a character boundary,
/// so a long last line keeps its end).
pub fn tail_lines(text: &str, lines: u32, bytes: usize) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    let mut start = text.len();
    for _ in 0..lines {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => {
                start = 0;
                break;
            }
        }
    }
    let mut tail = text[start..].trim_start_matches(['\n', '\r']);
    if tail.len() > bytes {
        let mut cut = tail.len() - bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = &tail[cut..];
    }
    tail.to_owned()
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    const MAX: usize = 8 * 1024;

    #[test]
    fn a_tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\nd\n", 2, MAX), "c\nd");
        assert_eq!(tail_lines("a\nb", 5, MAX), "a\nb");
        assert_eq!(tail_lines("one line", 1, MAX), "one line");
        assert_eq!(tail_lines("", 3, MAX), "");
        assert_eq!(tail_lines("a\r\nb\r\n\n", 1, MAX), "b");
    }

    #[test]
    fn a_tail_is_bounded_in_bytes_at_a_character_boundary() {
        let long = format!("first\n{}", "é".repeat(MAX));
        let tail = tail_lines(&long, 10, MAX);
        assert!(tail.len() <= MAX);
        assert!(
            tail.chars().all(|c| c == 'é'),
            "the end of the long line is kept"
        );
    }
}
