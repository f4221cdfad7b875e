//! `ferry run PIPELINE [--param k=v]...`: one pipeline from the current working tree, with the
//! local executor, as a `manual` event, with live progress. Exit code 0 only when the run
//! succeeded.
//!
//! Runs and logs go under `--data-dir` (default: `.git/ferry` of the current repository, so
//! nothing appears in the working tree; outside a repository, `ferry-run` in the system's
//! temporary directory). No database is involved: the executor's observations drive the table.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ferry_engine::executor::local::{LocalExecutor, LocalSettings};
use ferry_engine::executor::{
    CancelMode, Executor, Job, LogRequest, Observation, Phase, Source, StepObservation, SubmitError,
};
use ferry_engine::pipeline::{self, EventKind};
use ferry_engine::render::{RunContext, decide_skips};
use ferry_engine::service::dispatch::{LOG_TAIL_BYTES, LOG_TAIL_LINES};
use ferry_engine::service::summary::redact;
use ferry_engine::store::{RunId, StepState};
use tokio::sync::mpsc;

use super::progress::Progress;
use super::repo;

/// Arguments of `ferry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A pipeline file, or the name of a pipeline under `./.ferry`.
    pipeline: String,
    /// Parameter override `key=value` (repeatable; only declared parameters).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// The cluster profile to validate against (GPU types, limits); optional locally.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Where runs and their logs go (default: `.git/ferry` of the current repository).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// GPUs the run may use (default: detected with `nvidia-smi -L`).
    #[arg(long)]
    gpus: Option<u32>,
}

/// Runs `ferry run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let profile = args
        .profile
        .as_deref()
        .map(super::load_profile)
        .transpose()?;
    let (file, text) = super::render::find_pipeline(&args.pipeline)?;
    let pipeline = match pipeline::load(&file, &text, profile.as_ref()) {
        Ok(p) => p,
        Err(problems) => {
            println!("{problems}");
            return Ok(ExitCode::from(1));
        }
    };
    let overrides = super::render::parse_params(&args.params)?;
    let params = pipeline.resolve_params(&overrides).map_err(|bad| {
        anyhow!(
            bad.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let root = source_root(Path::new(&file))?;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => repo::git_dir()
            .map(|g| g.join("ferry"))
            .unwrap_or_else(|| std::env::temp_dir().join("ferry-run")),
    };
    let run_id = next_run_id(&data_dir.join("runs"))?;
    let (sha, git_ref) = repo::head(true, true);
    let sha = sha.unwrap_or_else(|| "0".repeat(40));
    let git_ref = git_ref.unwrap_or_else(|| "HEAD".into());
    let context = RunContext {
        run_id: u64::try_from(run_id.get()).unwrap_or_default(),
        project: "local".into(),
        repo_url: repo::origin_url().unwrap_or_else(|| format!("file://{}", root.display())),
        sha,
        branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
        tag: None,
        git_ref,
        merge_request: None,
        event: EventKind::Manual,
        params,
        namespace: None,
        dashboard_url: None,
    };
    let skipped = decide_skips(&pipeline, &context);
    let steps: Vec<String> = pipeline.steps.iter().map(|s| s.name.clone()).collect();
    let job = Job {
        run_id,
        pipeline: Arc::new(pipeline),
        context,
        skipped,
        source: Source::Dir(root),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(follow(job, steps, data_dir, args.gpus))
}

async fn follow(
    job: Job,
    steps: Vec<String>,
    data_dir: PathBuf,
    gpus: Option<u32>,
) -> Result<ExitCode> {
    let (tx, mut rx) = mpsc::channel(256);
    let settings = LocalSettings {
        gpus,
        ..LocalSettings::new(&data_dir)
    };
    let executor = LocalExecutor::new(settings, tx);
    let logs = executor.run_dir(job.run_id).join("logs");
    let mut progress = Progress::new(&steps, logs.clone());
    let started = Instant::now();
    let skipped = Observation {
        run_id: job.run_id,
        phase: Phase::Pending,
        message: None,
        steps: job
            .skipped
            .iter()
            .map(|s| StepObservation {
                name: s.step.clone(),
                state: StepState::Skipped,
                attempts: 0,
                message: Some(s.reason.clone()),
                metrics: None,
            })
            .collect(),
    };
    let tty = std::io::stdout().is_terminal();
    let mut out = Output { tty, drawn: 0 };
    out.lines(&progress.observe(&skipped, Instant::now()));
    println!(
        "run {} of `{}` ({} steps); logs in {}",
        job.run_id,
        job.pipeline.name,
        steps.len(),
        logs.display()
    );
    match executor.submit(&job).await {
        Ok(()) => {}
        Err(SubmitError::Rejected(m) | SubmitError::Unavailable(m)) => bail!("cannot run: {m}"),
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut interrupts = 0;
    loop {
        tokio::select! {
            obs = rx.recv() => {
                let Some(obs) = obs else { break };
                if obs.run_id != job.run_id {
                    continue;
                }
                let changes = progress.observe(&obs, Instant::now());
                if tty {
                    out.table(&progress.table(Instant::now()));
                } else {
                    out.lines(&changes);
                }
                if obs.phase.is_final() {
                    break;
                }
            }
            _ = tick.tick(), if tty => out.table(&progress.table(Instant::now())),
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                let mode = if interrupts == 1 { CancelMode::Stop } else { CancelMode::Terminate };
                eprintln!("\ncancelling ({mode:?}); press Ctrl-C again to kill at once");
                if let Err(e) = executor.cancel(job.run_id, None, mode).await {
                    eprintln!("cancel failed: {e}");
                }
            }
        }
    }
    let phase = progress.phase();
    let word = match phase {
        Phase::Succeeded => "succeeded",
        Phase::Failed => "failed",
        Phase::Cancelled => "was cancelled",
        Phase::Gone { .. } => "was lost",
        Phase::Pending | Phase::Running => "stopped reporting",
    };
    let mut summary = format!(
        "run {} {word} after {:.1}s",
        job.run_id,
        started.elapsed().as_secs_f64()
    );
    if let (Some(m), false) = (progress.message(), phase == Phase::Succeeded) {
        summary.push_str(&format!(": {m}"));
    }
    if let Some(step) = progress.first_failed() {
        print_tail(&executor, &job, step).await;
    }
    println!("{summary}\nlogs: {}", logs.display());
    Ok(if phase == Phase::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the end of a failed step's log (its latest attempt), secrets redacted as in the merge
/// request summary, so that the reason is on screen without opening the log file.
async fn print_tail(executor: &LocalExecutor, job: &Job, step: &str) {
    let request = LogRequest {
        run: job.run_id,
        namespace: None,
        pipeline: &job.pipeline,
        step,
        // As much as a merge request's summary shows.
        lines: LOG_TAIL_LINES,
        bytes: LOG_TAIL_BYTES,
    };
    match executor.log_tail(request).await {
        Ok(Some(log)) if !log.text.trim().is_empty() => {
            println!("--- the end of `{step}`'s log ---");
            println!("{}", redact(&log.text, &log.secrets));
            println!("---");
        }
        Ok(_) => println!("`{step}` wrote nothing to its log"),
        Err(e) => eprintln!("cannot read `{step}`'s log: {e}"),
    }
}

/// Where progress goes: redrawn in place on a terminal, one line per change otherwise.
struct Output {
    tty: bool,
    drawn: usize,
}

impl Output {
    fn table(&mut self, table: &str) {
        let mut stdout = std::io::stdout().lock();
        if self.drawn > 0 {
            // Up to the table's first line, then clear to the end of the screen.
            let _ = write!(stdout, "\x1b[{}A\x1b[J", self.drawn);
        }
        let _ = write!(stdout, "{table}");
        let _ = stdout.flush();
        self.drawn = table.lines().count();
    }

    fn lines(&mut self, lines: &[String]) {
        if self.tty {
            return;
        }
        for line in lines {
            println!("{line}");
        }
    }
}

/// The directory a pipeline file's steps run in: the one holding its `.ferry` directory, or the
/// current directory for a file elsewhere.
fn source_root(file: &Path) -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    let absolute = cwd.join(file);
    let root = absolute
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == ".ferry"))
        .and_then(Path::parent)
        .map_or(cwd, Path::to_path_buf);
    Ok(root)
}

/// The next free run number under `runs` (one more than the highest), its directory created.
fn next_run_id(runs: &Path) -> Result<RunId> {
    std::fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
    let mut next = std::fs::read_dir(runs)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    loop {
        match std::fs::create_dir(runs.join(next.to_string())) {
            Ok(()) => return RunId::new(next).ok_or_else(|| anyhow!("run id {next}")),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => next += 1,
            Err(e) => {
                return Err(e).with_context(|| format!("creating a run under {}", runs.display()));
            }
        }
    }
}
