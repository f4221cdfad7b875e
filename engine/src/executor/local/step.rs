//! One running step: its attempts, its processes (one per node), timeouts, cancellation, logs and
//! metrics. The run task starts it with everything decided ([`Launch`]) and hears back through
//! [`StepEvent`]s.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::Signal;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::procs::{record, signal_groups};
use crate::executor::CancelMode;

/// What a step task tells its run task.
#[derive(Debug)]
pub(super) enum StepEvent {
    /// An attempt is starting.
    Attempt {
        /// The step's index in the pipeline.
        index: usize,
        /// 1 for the first attempt.
        attempt: u32,
        /// Why the attempt before failed.
        previous: Option<String>,
    },
    /// The step is over.
    Done {
        /// The step's index in the pipeline.
        index: usize,
        /// How it ended.
        outcome: Outcome,
    },
}

/// How a step ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Every process of an attempt exited with 0 and the metrics (if declared) were read.
    Succeeded(Option<Value>),
    /// The last attempt failed, for this reason.
    Failed(String),
    /// The run was cancelled.
    Cancelled,
}

/// Everything a step task needs, decided by the run task.
#[derive(Debug)]
pub(super) struct Launch {
    /// The step's index in the pipeline.
    pub index: usize,
    /// The step's name.
    pub name: String,
    /// Its script.
    pub script: String,
    /// How many processes to start.
    pub nodes: u32,
    /// GPUs per process.
    pub gpus_per_node: u32,
    /// The devices held for the step, `gpus_per_node` per node in rank order.
    pub gpus: Vec<u32>,
    /// Extra attempts.
    pub retries: u32,
    /// Time limit of each attempt, in seconds.
    pub timeout_secs: Option<u64>,
    /// The variables every process gets (see `env::step_env`).
    pub env: Vec<(String, String)>,
    /// The metrics file to read after success.
    pub metrics: Option<PathBuf>,
    /// Where the processes start.
    pub cwd: PathBuf,
    /// The run's directory (for its `pids` file).
    pub run_dir: PathBuf,
    /// The run's log directory.
    pub logs: PathBuf,
    /// The run's scratch directory.
    pub scratch: PathBuf,
    /// Time between `SIGTERM` and `SIGKILL`.
    pub grace: Duration,
}

/// How one attempt ended.
enum End {
    /// Every process exited with 0.
    Exited,
    /// A process failed, or the attempt timed out.
    Failed(String),
    /// Cancelled.
    Cancelled,
}

type Cancel = watch::Receiver<Option<CancelMode>>;

/// The path of a step's log file, or of one node's when it has several.
pub(super) fn log_path(logs: &Path, step: &str, node: Option<u32>) -> PathBuf {
    match node {
        Some(n) => logs.join(format!("{step}.node{n}.log")),
        None => logs.join(format!("{step}.log")),
    }
}

/// Runs the step to its end and reports through `events`.
pub(super) async fn run(
    launch: Launch,
    mut cancel: Cancel,
    events: mpsc::UnboundedSender<StepEvent>,
) {
    let reporter = Reporter {
        index: launch.index,
        events,
        done: false,
    };
    let outcome = launch.attempts(&reporter, &mut cancel).await;
    let scratch: Vec<PathBuf> = (0..launch.nodes).map(|r| launch.scratch_dir(r)).collect();
    // Best effort, off the runtime's threads: scratch may be large.
    let _ = tokio::task::spawn_blocking(move || {
        for dir in scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    })
    .await;
    reporter.finish(outcome);
}

/// Sends the step's events; reports a failure if the task ends without an outcome (a panic), so
/// that the run does not wait for it forever.
struct Reporter {
    index: usize,
    events: mpsc::UnboundedSender<StepEvent>,
    done: bool,
}

impl Reporter {
    fn attempt(&self, attempt: u32, previous: Option<String>) {
        let index = self.index;
        let _ = self.events.send(StepEvent::Attempt {
            index,
            attempt,
            previous,
        });
    }

    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        let _ = self.events.send(StepEvent::Done {
            index: self.index,
            outcome,
        });
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if !self.done {
            let outcome = Outcome::Failed("the local executor lost track of the step".to_owned());
            let _ = self.events.send(StepEvent::Done {
                index: self.index,
                outcome,
            });
        }
    }
}

/// Whether the run was cancelled (or the executor dropped).
fn cancelled(cancel: &Cancel) -> bool {
    cancel.borrow().is_some() || cancel.has_changed().is_err()
}

impl Launch {
    async fn attempts(&self, reporter: &Reporter, cancel: &mut Cancel) -> Outcome {
        let max = self.retries.saturating_add(1);
        let mut previous: Option<String> = None;
        for attempt in 1..=max {
            if cancelled(cancel) {
                return Outcome::Cancelled;
            }
            reporter.attempt(attempt, previous.clone());
            self.note(&format!(
                "--- ferry: step `{}`, attempt {attempt} of {max} ---",
                self.name
            ));
            let error = match self.attempt(cancel).await {
                End::Cancelled => {
                    self.note("ferry: cancelled");
                    return Outcome::Cancelled;
                }
                End::Exited => match self.read_metrics() {
                    Ok(metrics) => return Outcome::Succeeded(metrics),
                    Err(error) => error,
                },
                End::Failed(error) => error,
            };
            self.note(&format!("ferry: attempt {attempt} failed: {error}"));
            previous = Some(error);
        }
        Outcome::Failed(previous.unwrap_or_default())
    }

    /// Starts the processes of one attempt and waits for them.
    async fn attempt(&self, cancel: &mut Cancel) -> End {
        let port = match (self.nodes > 1).then(free_port).transpose() {
            Ok(port) => port,
            Err(e) => return End::Failed(format!("no free port for MASTER_PORT: {e}")),
        };
        let mut groups = Vec::new();
        let mut waits = JoinSet::new();
        for rank in 0..self.nodes {
            let mut child = match self.spawn(rank, port) {
                Ok(child) => child,
                Err(e) => {
                    signal_groups(&groups, Signal::KILL);
                    return End::Failed(format!("could not start /bin/sh: {e}"));
                }
            };
            if let Some(group) = child.id().and_then(|id| i32::try_from(id).ok()) {
                groups.push(group);
                if let Err(e) = record(&self.run_dir, group) {
                    tracing::warn!(step = %self.name, error = %e, "cannot record a process group");
                }
            }
            waits.spawn(async move { (rank, child.wait().await) });
        }
        self.supervise(&groups, waits, cancel).await
    }

    fn spawn(&self, rank: u32, port: Option<u16>) -> std::io::Result<Child> {
        let node = (self.nodes > 1).then_some(rank);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&self.logs, &self.name, node))?;
        let scratch = self.scratch_dir(rank);
        std::fs::create_dir_all(&scratch)?;
        let mut command = Command::new("/bin/sh");
        command
            .args(["-e", "-c", self.script.as_str(), "ferry-script"])
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(self.process_env(rank, port, &scratch))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        command.spawn()
    }

    /// The variables that differ between the processes of a step: scratch, GPUs and, with
    /// several nodes, what `torchrun` reads (as the training operator sets them on Argo).
    fn process_env(&self, rank: u32, port: Option<u16>, scratch: &Path) -> Vec<(String, String)> {
        let per = usize::try_from(self.gpus_per_node).unwrap_or(usize::MAX);
        let start = usize::try_from(rank)
            .unwrap_or(usize::MAX)
            .saturating_mul(per);
        let devices: Vec<String> = self
            .gpus
            .iter()
            .skip(start)
            .take(per)
            .map(u32::to_string)
            .collect();
        let devices = devices.join(",");
        let nvidia = if devices.is_empty() {
            "void".to_owned()
        } else {
            devices.clone()
        };
        let mut env = vec![
            ("FERRY_SCRATCH", scratch.display().to_string()),
            ("CUDA_VISIBLE_DEVICES", devices),
            ("NVIDIA_VISIBLE_DEVICES", nvidia),
            ("NODE_RANK", rank.to_string()),
        ];
        if let Some(port) = port {
            let nodes = self.nodes.to_string();
            env.extend([
                ("MASTER_ADDR", "127.0.0.1".to_owned()),
                ("MASTER_PORT", port.to_string()),
                ("WORLD_SIZE", nodes.clone()),
                ("NNODES", nodes),
                ("RANK", rank.to_string()),
                ("NPROC_PER_NODE", self.gpus_per_node.max(1).to_string()),
            ]);
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Waits for every process of an attempt, stopping them all on the first failure, the
    /// timeout or a cancel; then kills whatever is left in their groups.
    async fn supervise(
        &self,
        groups: &[i32],
        mut waits: JoinSet<(u32, std::io::Result<ExitStatus>)>,
        cancel: &mut Cancel,
    ) -> End {
        let deadline = self
            .timeout_secs
            .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
        let (mut end, mut kill_at, mut watching) = (None, None, true);
        loop {
            tokio::select! {
                joined = waits.join_next() => {
                    let Some(joined) = joined else { break };
                    if let Some(error) = self.failure(joined) && end.is_none() {
                        end = Some(End::Failed(error));
                        self.stop(groups, &mut kill_at);
                    }
                }
                () = sleep_until(deadline), if end.is_none() => {
                    let secs = self.timeout_secs.unwrap_or_default();
                    end = Some(End::Failed(format!("timed out after {secs}s")));
                    self.stop(groups, &mut kill_at);
                }
                () = sleep_until(kill_at) => {
                    signal_groups(groups, Signal::KILL);
                    kill_at = None;
                }
                changed = cancel.changed(), if watching => {
                    let mode = match changed {
                        Ok(()) => *cancel.borrow_and_update(),
                        Err(_) => {
                            watching = false;
                            Some(CancelMode::Terminate)
                        }
                    };
                    match mode {
                        Some(CancelMode::Stop) => self.stop(groups, &mut kill_at),
                        Some(CancelMode::Terminate) => signal_groups(groups, Signal::KILL),
                        None => continue,
                    }
                    end = Some(End::Cancelled);
                }
            }
        }
        signal_groups(groups, Signal::KILL);
        end.unwrap_or(End::Exited)
    }

    /// `SIGTERM` now, `SIGKILL` after the grace period (unless already planned).
    fn stop(&self, groups: &[i32], kill_at: &mut Option<Instant>) {
        signal_groups(groups, Signal::TERM);
        kill_at.get_or_insert_with(|| Instant::now() + self.grace);
    }

    /// Why a process's end fails the attempt; `None` when it exited with 0.
    fn failure(
        &self,
        joined: Result<(u32, std::io::Result<ExitStatus>), JoinError>,
    ) -> Option<String> {
        let (rank, text) = match joined {
            Ok((_, Ok(status))) if status.success() => return None,
            Ok((rank, Ok(status))) => (rank, describe(status)),
            Ok((rank, Err(e))) => (rank, format!("could not be waited for: {e}")),
            Err(e) => return Some(format!("waiting for a process failed: {e}")),
        };
        Some(if self.nodes > 1 {
            format!("node {rank} {text}")
        } else {
            text
        })
    }

    /// The step's metrics object, checked as the Argo wrapper checks it (same messages).
    fn read_metrics(&self) -> Result<Option<Value>, String> {
        let Some(path) = &self.metrics else {
            return Ok(None);
        };
        let shown = path.display();
        let result = match std::fs::read(path) {
            Ok(bytes) if !bytes.is_empty() => match serde_json::from_slice::<Value>(&bytes) {
                Ok(object @ Value::Object(_)) => Ok(Some(object)),
                Ok(_) | Err(_) => Err(format!("metrics file {shown} is not a JSON object")),
            },
            Ok(_) | Err(_) => Err(format!("metrics file {shown} was not written")),
        };
        if let Err(error) = &result {
            self.note(&format!("ferry: {error}"));
        }
        result
    }

    fn scratch_dir(&self, rank: u32) -> PathBuf {
        match self.nodes {
            1 => self.scratch.join(&self.name),
            _ => self.scratch.join(format!("{}.node{rank}", self.name)),
        }
    }

    /// Appends one of ferry's own lines to the step's log (best effort: a log that cannot be
    /// written must not fail the step).
    fn note(&self, line: &str) {
        let path = log_path(&self.logs, &self.name, None);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// `exited with code 3`, `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => match signal_name(signal) {
            Some(name) => format!("was killed by signal {signal} ({name})"),
            None => format!("was killed by signal {signal}"),
        },
        None => format!("ended with {status}"),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [(i32, &str); 9] = [
        (1, "SIGHUP"),
        (2, "SIGINT"),
        (3, "SIGQUIT"),
        (4, "SIGILL"),
        (6, "SIGABRT"),
        (9, "SIGKILL"),
        (11, "SIGSEGV"),
        (13, "SIGPIPE"),
        (15, "SIGTERM"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == signal)
        .map(|(_, name)| *name)
}

/// Completes at `at`; never when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}
