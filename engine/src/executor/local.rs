//! The local executor: runs pipelines as processes on this machine (ferry's embedded default, and
//! `ferry run` on a working tree).
//!
//! Each submitted run gets a directory `data_dir/runs/<run id>/` holding:
//! - `src/`: the source at the run's commit ([`Source::Mirror`]): a plain checkout of the commit's
//!   tree made with git2 from the bare mirror (no `.git` directory, not a `git worktree`, so
//!   nothing in the mirror refers to it), deleted when the run is over. [`Source::Dir`] runs in
//!   the given directory as it is and makes no `src/`.
//! - `workspace/`: what `/workspace` is on Argo, shared by every step of the run
//!   (`FERRY_WORKSPACE`); in a `metrics:` path, `/workspace/...` means this directory. Unlike an
//!   Argo run without `workspace:` (an empty directory per pod), it is always shared.
//! - `logs/<step>.log`: each attempt's output, after a header line; a step with `nodes: N > 1`
//!   writes its processes' output to `logs/<step>.node<R>.log` and ferry's own lines to
//!   `logs/<step>.log`.
//! - `scratch/<step>[.node<R>]`: `FERRY_SCRATCH`, removed when the step is over.
//! - `pids`: the process group of every process started, so that after a crash of ferry
//!   [`Executor::reconcile`] can kill what is left; `finished`: the steps that are over, so that it
//!   knows which steps a requeued run would still have to do.
//!
//! **How a run goes** (one tokio task per run, `run.rs`; one per running step, `step.rs`) mirrors
//! the Argo manifest that `render` makes, so that a pipeline behaves the same on both:
//! - a step starts once every step in its `needs` succeeded; a step whose need failed or was
//!   skipped is skipped (`needs `x`, which failed` / `which is skipped`), as Argo's
//!   `depends: x.Succeeded` does; steps in `job.skipped` (the creation-time gates) never run;
//! - after a failure no new step starts (Argo's DAG `failFast`): steps that have not started are
//!   skipped, running ones finish, then the run fails naming its first failed step;
//! - `if.metrics` is decided when the step is ready, from the metrics its source steps published
//!   (a missing key makes its comparison false, as the rendered `when` does);
//! - each step runs `sh -e -c <run> ferry-script` (what the Argo wrapper runs) in its own process
//!   group, in the source directory, with a clean environment: `PATH`, `HOME`, `LANG`, `TMPDIR`
//!   and `USER` from ferry's, then every `FERRY_*` variable a pod gets (`render/context_step.rs`),
//!   `FERRY_PARAM_*`, the GPU and `torchrun` variables, the step's `env`, and its `secret_env`;
//! - `retries`, `timeout` (per attempt, like `activeDeadlineSeconds`) and the metrics file check
//!   (the wrapper's messages) behave as on Argo; when an attempt's main process ends, whatever it
//!   left running in its process group is killed, as a pod's end kills its container.
//!
//! **Cluster concepts** have no local meaning and are ignored: images and environments, volumes,
//! queues, priorities, node groups, CPU / memory / shm / scratch sizes, GPU types and vGPU slices
//! (a step gets whole GPUs of any kind).
//!
//! **Secrets**: a `secret_env` entry `VAR: name/key` takes the value of ferry's environment
//! variable `FERRY_SECRET_<NAME>_<KEY>` (upper-cased, every character outside `[A-Z0-9]` made
//! `_`); when it is unset the step fails naming that variable. Where the environment comes from
//! is [`EnvSource`]: ferry's own by default, a fixed map for tests and embedders.
//!
//! **GPUs**: the executor hands out the devices it knows (configured, or found with
//! `nvidia-smi -L`) exclusively: each running process gets its own through
//! `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` (none for a step without GPUs). A step that
//! needs more than are free stays pending until enough are released (by any run); one that needs
//! more than the machine has fails at once. `nodes: N` starts N processes, each with its share of
//! GPUs, with `MASTER_ADDR=127.0.0.1`, a free `MASTER_PORT`, `WORLD_SIZE=N`, `NNODES=N`,
//! `NODE_RANK` = `RANK` = 0..N-1 and `NPROC_PER_NODE`, so `torchrun` works unchanged; one
//! failing stops the others.
//!
//! **Cancelling**: [`CancelMode::Stop`] sends `SIGTERM` to every process group of the run and
//! `SIGKILL` after the grace period; [`CancelMode::Terminate`] sends `SIGKILL`. Dropping the
//! executor terminates its runs the same way.

mod env;
mod gpu;
mod logs;
mod procs;
mod run;
mod source;
mod step;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{
    BoxFuture, CancelMode, ExecError, Executor, FetchedLog, Job, LogRequest, Observation,
    Observations, Phase, Source, SubmitError,
};
use crate::store::{Run, RunId};

/// The grace period between `SIGTERM` and `SIGKILL` unless configured otherwise.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the environment variables that steps inherit (`PATH`, `HOME`, ...) and the local
/// stand-ins for Kubernetes secrets (`FERRY_SECRET_*`) come from.
#[derive(Clone, Default)]
pub enum EnvSource {
    /// The environment of the ferry process, read when a step starts.
    #[default]
    Process,
    /// These variables only.
    Fixed(Arc<BTreeMap<String, String>>),
}

impl EnvSource {
    /// A fixed set of variables.
    pub fn fixed(vars: impl IntoIterator<Item = (String, String)>) -> EnvSource {
        EnvSource::Fixed(Arc::new(vars.into_iter().collect()))
    }

    /// The value of `name`, when it is set (and valid UTF-8).
    fn get(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Fixed(vars) => vars.get(name).cloned(),
        }
    }
}

impl fmt::Debug for EnvSource {
    /// Names only: the values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvSource::Process => f.write_str("Process"),
            EnvSource::Fixed(vars) => f.debug_tuple("Fixed").field(&vars.keys()).finish(),
        }
    }
}

/// How the local executor is set up (`local:` in `ferry.yaml`, plus `data_dir`).
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Runs go under `data_dir/runs/<run id>/`.
    pub data_dir: PathBuf,
    /// GPUs to hand out, as device indices `0..n`; `None` detects them with `nvidia-smi -L`
    /// (none when it is not on `PATH` or fails).
    pub gpus: Option<u32>,
    /// Time between `SIGTERM` and `SIGKILL` when stopping processes.
    pub stop_grace: Duration,
    /// Where inherited variables and secrets come from.
    pub env: EnvSource,
}

impl LocalSettings {
    /// Settings with runs under `data_dir`, detected GPUs, [`DEFAULT_STOP_GRACE`] and ferry's own
    /// environment.
    pub fn new(data_dir: impl Into<PathBuf>) -> LocalSettings {
        LocalSettings {
            data_dir: data_dir.into(),
            gpus: None,
            stop_grace: DEFAULT_STOP_GRACE,
            env: EnvSource::Process,
        }
    }
}

/// Runs pipelines as local processes; see the module documentation.
pub struct LocalExecutor {
    shared: Arc<Shared>,
}

/// What the executor and its run tasks share.
struct Shared {
    settings: LocalSettings,
    observations: Observations,
    gpus: Arc<gpu::Pool>,
    /// The runs not over yet (a repeated submit of one is a no-op); a run task removes its own
    /// entry at the end, through a weak reference, so that dropping the executor drops the
    /// cancel senders and so terminates every run.
    runs: Arc<Registry>,
}

/// The runs of an executor, by id.
type Registry = Mutex<HashMap<RunId, RunEntry>>;

/// A run the executor has.
struct RunEntry {
    /// Carries a cancel request to the run's tasks; dropping it terminates them.
    cancel: watch::Sender<Option<CancelMode>>,
    /// The last snapshot sent, for [`Executor::reconcile`] of a run that is still here.
    latest: Arc<Mutex<Option<Observation>>>,
}

impl fmt::Debug for LocalExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalExecutor")
            .field("settings", &self.shared.settings)
            .field("gpus", &self.shared.gpus.total())
            .finish_non_exhaustive()
    }
}

impl LocalExecutor {
    /// An executor that sends its observations on `observations`. With `settings.gpus` unset,
    /// runs `nvidia-smi -L` once to count the GPUs. A relative `data_dir` is taken from the
    /// current directory now (checkouts and steps run elsewhere).
    pub fn new(mut settings: LocalSettings, observations: Observations) -> LocalExecutor {
        if let Ok(dir) = std::path::absolute(&settings.data_dir) {
            settings.data_dir = dir;
        }
        let devices = match settings.gpus {
            Some(n) => (0..n).collect(),
            None => gpu::detect(),
        };
        LocalExecutor {
            shared: Arc::new(Shared {
                gpus: Arc::new(gpu::Pool::new(devices)),
                settings,
                observations,
                runs: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }

    /// How many GPUs the executor hands out.
    pub fn gpus(&self) -> usize {
        self.shared.gpus.total()
    }

    /// The directory of a run: `data_dir/runs/<run id>`.
    pub fn run_dir(&self, run: RunId) -> PathBuf {
        run_dir(&self.shared.settings.data_dir, run)
    }

    /// The log file of a step (of its node `node` when it has several).
    pub fn log_path(&self, run: RunId, step: &str, node: Option<u32>) -> PathBuf {
        step::log_path(&self.run_dir(run).join("logs"), step, node)
    }

    async fn start(&self, job: &Job) -> Result<(), SubmitError> {
        let (cancel, cancel_rx) = watch::channel(None);
        let latest = Arc::new(Mutex::new(None));
        {
            let mut runs = lock(&self.shared.runs);
            if runs.contains_key(&job.run_id) {
                return Ok(());
            }
            let entry = RunEntry {
                cancel,
                latest: latest.clone(),
            };
            runs.insert(job.run_id, entry);
        }
        let dir = self.run_dir(job.run_id);
        let prepared = prepare(dir.clone(), job.source.clone(), job.context.sha.clone()).await;
        let src = match prepared {
            Ok(src) => src,
            Err(e) => {
                lock(&self.shared.runs).remove(&job.run_id);
                return Err(e);
            }
        };
        let settings = &self.shared.settings;
        let run = run::RunTask {
            job: job.clone(),
            paths: run::RunPaths::new(dir, src, matches!(job.source, Source::Mirror(_))),
            env: settings.env.clone(),
            grace: settings.stop_grace,
            gpus: self.shared.gpus.clone(),
            observations: self.shared.observations.clone(),
            latest,
            registry: Arc::downgrade(&self.shared.runs),
        };
        tokio::spawn(run.drive(cancel_rx));
        Ok(())
    }

    /// The latest snapshot of a run this executor has (submitted since it started and not over);
    /// a run still being prepared is pending.
    fn live(&self, run: RunId) -> Option<Observation> {
        let runs = lock(&self.shared.runs);
        let entry = runs.get(&run)?;
        let latest = lock(&entry.latest).clone();
        Some(latest.unwrap_or(Observation {
            run_id: run,
            phase: Phase::Pending,
            message: None,
            steps: Vec::new(),
        }))
    }
}

/// A run lost to a restart: kills what is left of its processes, deletes its checkout and
/// scratch space (its workspace and logs stay), and says it is gone.
fn gone(data_dir: &Path, run: &Run) -> Observation {
    let dir = run_dir(data_dir, run.id);
    procs::kill_leftovers(&dir, &run::workspace_marker(&dir.join("workspace")));
    let requeue = requeue(run, &dir);
    for sub in ["src", "scratch"] {
        // Best effort: what cannot be deleted now is replaced if the run is submitted again.
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    Observation {
        run_id: run.id,
        phase: Phase::Gone { requeue },
        message: Some("interrupted by a restart of ferry".to_owned()),
        steps: Vec::new(),
    }
}

impl Executor for LocalExecutor {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn submit<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), SubmitError>> {
        Box::pin(self.start(job))
    }

    fn cancel<'a>(
        &'a self,
        run: RunId,
        _namespace: Option<&'a str>,
        mode: CancelMode,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            if let Some(entry) = lock(&self.shared.runs).get(&run) {
                entry.cancel.send_if_modified(|current| {
                    let stronger = match current {
                        None => true,
                        Some(CancelMode::Stop) => mode == CancelMode::Terminate,
                        Some(CancelMode::Terminate) => false,
                    };
                    if stronger {
                        *current = Some(mode);
                    }
                    stronger
                });
            }
            Ok(())
        })
    }

    fn reconcile<'a>(
        &'a self,
        runs: &'a [Run],
    ) -> BoxFuture<'a, Result<Vec<Observation>, ExecError>> {
        Box::pin(async move {
            let live: Vec<Option<Observation>> = runs.iter().map(|r| self.live(r.id)).collect();
            let (data_dir, runs) = (self.shared.settings.data_dir.clone(), runs.to_vec());
            // Reading /proc and the run directories blocks.
            let observed = tokio::task::spawn_blocking(move || {
                let pairs = runs.iter().zip(live);
                pairs
                    .map(|(run, live)| live.unwrap_or_else(|| gone(&data_dir, run)))
                    .collect()
            });
            observed
                .await
                .map_err(|e| ExecError(format!("reconciling local runs failed: {e}")))
        })
    }

    fn log_tail<'a>(
        &'a self,
        request: LogRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<FetchedLog>, ExecError>> {
        Box::pin(async move {
            let logs = self.run_dir(request.run).join("logs");
            let secrets =
                logs::secret_values(request.pipeline, request.step, &self.shared.settings.env);
            let (step, lines, bytes) = (request.step.to_owned(), request.lines, request.bytes);
            let text =
                tokio::task::spawn_blocking(move || logs::step_tail(&logs, &step, lines, bytes))
                    .await
                    .map_err(|e| ExecError(format!("reading the log failed: {e}")))?
                    .map_err(|e| ExecError(format!("reading the log failed: {e}")))?;
            Ok(text.map(|text| FetchedLog { text, secrets }))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async { Ok(()) })
    }
}

fn run_dir(data_dir: &Path, run: RunId) -> PathBuf {
    data_dir.join("runs").join(run.to_string())
}

/// Makes the run's directories and, for a mirror, checks the commit out; returns the directory
/// steps run in.
async fn prepare(dir: PathBuf, source: Source, sha: String) -> Result<PathBuf, SubmitError> {
    let made = tokio::task::spawn_blocking(move || {
        // A run submitted again after a restart starts with none of its steps over.
        match std::fs::remove_file(dir.join(run::FINISHED_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                let shown = dir.join(run::FINISHED_FILE);
                return Err(SubmitError::Unavailable(format!(
                    "cannot remove {}: {e}",
                    shown.display()
                )));
            }
            Ok(()) | Err(_) => {}
        }
        for sub in ["workspace", "logs", "scratch"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                SubmitError::Unavailable(format!("cannot create {}: {e}", dir.join(sub).display()))
            })?;
        }
        match source {
            Source::Dir(path) => Ok(path),
            Source::Mirror(mirror) => {
                let src = dir.join("src");
                source::checkout(&mirror, &sha, &src)?;
                Ok(src)
            }
        }
    })
    .await;
    made.map_err(|e| SubmitError::Unavailable(format!("preparing the run failed: {e}")))?
}

/// Whether a run lost to a restart should run again: some step that had not finished allows
/// retries.
fn requeue(run: &Run, dir: &Path) -> bool {
    let Ok(pipeline) = crate::pipeline::load(&run.pipeline_path, &run.pipeline_yaml, None) else {
        return false;
    };
    let finished = run::finished_steps(dir);
    pipeline
        .steps
        .iter()
        .any(|s| s.retries > 0 && !finished.contains(&s.name))
}

/// Locks a mutex, going on after a panic elsewhere (the data stays consistent: every critical
/// section is a single insert, remove or replace).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
