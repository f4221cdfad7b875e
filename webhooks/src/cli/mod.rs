//! Command-line verbs: `serve`, `validate`, `render`, `run`, `schema`; `token` (the API's tokens,
//! on the server's database); and the API client verbs `runs`, `trigger` and `events`.

mod client;
mod events;
mod progress;
mod render;
mod repo;
mod run;
mod runs;
mod token;
mod yaml;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_engine::pipeline;
use ferry_engine::profile::Profile;

/// Ferry turns git pushes into GPU training on Kubernetes (Argo Workflows).
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: webhooks, planning, the executor, reporting to the forges, the API and the dashboard.
    Serve {
        /// The config file (default: ./ferry.yaml, else embedded defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Listen here instead of the config's `listen` (`127.0.0.1:0` picks a free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Check the config, the profile and the environment variables they name, print what
        /// ferry would start with, and exit: 0 when it would start, 1 otherwise. Connects to
        /// nothing (no database, forge or cluster).
        #[arg(long)]
        check: bool,
    },
    /// Check pipeline files and print every problem as file:line:col: field: message.
    Validate {
        /// A pipeline file, a `.ferry` directory, or a repository root (default: `.`).
        path: Option<PathBuf>,
        /// The cluster profile; without it, checks that need one are skipped.
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Print the Argo Workflow of a pipeline.
    Render(render::RenderArgs),
    /// Run a pipeline from the working tree with the local executor, with live progress.
    Run(run::RunArgs),

    /// Print a JSON Schema (for yaml-language-server and other editors): of pipeline files, or
    /// of the cluster profile or `ferry.yaml`.
    Schema {
        /// Which file's schema.
        #[arg(value_enum, default_value_t = SchemaKind::Pipeline)]
        kind: SchemaKind,
    },

    /// Manage the HTTP API's bearer tokens (on the server's database).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List, show, rerun or cancel runs on a ferry server (FERRY_SERVER, FERRY_TOKEN).
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Webhook deliveries whose planning failed, and retrying them (FERRY_SERVER, FERRY_TOKEN).
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Run a pipeline on a ferry server (FERRY_SERVER, FERRY_TOKEN).
    Trigger(runs::TriggerArgs),
}

/// The files `ferry schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SchemaKind {
    /// `.ferry/*.yaml`.
    Pipeline,
    /// The cluster profile (`profile_file`, or `profile` inline in `ferry.yaml`).
    Profile,
    /// `ferry.yaml`.
    Config,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs one command; the exit code is 1 when the input has problems.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            check: true,
            ..
        } => check_config(config.as_deref()),
        Command::Serve {
            config,
            log_format,
            listen,
            check: false,
        } => serve(config.as_deref(), log_format, listen),
        Command::Validate { path, profile } => validate(
            path.as_deref().unwrap_or(Path::new(".")),
            profile.as_deref(),
        ),
        Command::Render(args) => render::render(args),
        Command::Run(args) => run::run(args),

        Command::Schema { kind } => {
            let schema = match kind {
                SchemaKind::Pipeline => pipeline::json_schema(),
                SchemaKind::Profile => schemars::schema_for!(Profile).to_value(),
                SchemaKind::Config => {
                    schemars::schema_for!(ferry_engine::config::Config).to_value()
                }
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(command) => token::token(command),
        Command::Runs(command) => runs::runs(command),
        Command::Events(command) => events::events(command),
        Command::Trigger(args) => runs::trigger(args),
    }
}

fn serve(
    config: Option<&Path>,
    format: LogFormat,
    listen: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    init_logs(format);
    let mut loaded = crate::server::load_config(config, std::env::var("FERRY_DATABASE_URL").ok())?;
    if let Some(addr) = listen {
        loaded.config.listen = addr;
    }
    let secrets = crate::server::read_secrets(&loaded.config, |var| std::env::var(var).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::serve(loaded, secrets))?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry serve --check`: what `ferry serve` would start with, or every reason it would not.
fn check_config(config: Option<&Path>) -> Result<ExitCode> {
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let loaded = match crate::server::load_config(config, env("FERRY_DATABASE_URL")) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    let c = &loaded.config;
    let mut errors = crate::server::missing_secrets(c, env);
    let mut warnings = Vec::new();
    for p in &c.projects {
        for (key, var) in [
            ("token_env", &p.token_env),
            ("github_app_id_env", &p.github_app_id_env),
            ("github_app_key_env", &p.github_app_key_env),
        ] {
            if let Some(var) = var.as_deref().filter(|v| env(v).is_none()) {
                warnings.push(format!(
                    "project `{}`: environment variable {var} ({key}) is not set",
                    p.name
                ));
            }
        }
    }
    if let Some(file) = c.argo.kubeconfig.as_deref().filter(|f| !f.is_file()) {
        let message = format!("argo.kubeconfig {} is not a file", file.display());
        if c.executor == ferry_engine::config::ExecutorKind::Argo {
            errors.push(message);
        } else {
            warnings.push(message);
        }
    }
    let names: Vec<&str> = c.projects.iter().map(|p| p.name.as_str()).collect();
    println!("{}", loaded.source);
    println!("listen      {}", c.listen);
    println!(
        "database    {}",
        ferry_engine::config::redact_url(&c.database_url)
    );
    println!("data_dir    {}", c.data_dir.display());
    println!("executor    {}", executor_word(c.executor));
    println!(
        "profile     {} GPU types, {} queues, {} priorities, {} node groups",
        loaded.profile.gpu_types.len(),
        loaded.profile.queues.len(),
        loaded.profile.priorities.len(),
        loaded.profile.node_groups.len()
    );
    println!(
        "projects    {}",
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(", ")
        }
    );
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        println!("ok: ferry serve would start with this");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("ferry serve would refuse to start");
        Ok(ExitCode::from(1))
    }
}

fn executor_word(kind: ferry_engine::config::ExecutorKind) -> &'static str {
    match kind {
        ferry_engine::config::ExecutorKind::Local => "local",
        ferry_engine::config::ExecutorKind::Argo => "argo",
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Reads and checks a profile file, printing its problems.
pub(crate) fn load_profile(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read profile {}", path.display()))?;
    Profile::from_yaml(&path.display().to_string(), &text)
        .map_err(|problems| anyhow::anyhow!("invalid profile:\n{problems}"))
}

fn validate(path: &Path, profile: Option<&Path>) -> Result<ExitCode> {
    let profile = profile.map(load_profile).transpose()?;
    let files =
        pipeline::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?;
    if files.is_empty() {
        eprintln!("no pipeline files (*.yaml, *.yml) under {}", path.display());
        return Ok(ExitCode::from(1));
    }
    if profile.is_none() {
        eprintln!(
            "note: no --profile given; GPU types, queues, priorities, node groups, volume presets, environments and limits were not checked"
        );
    }
    let loaded = pipeline::load_files(&files, profile.as_ref());
    for problem in &loaded.problems {
        println!("{problem}");
    }
    let bad = files.len() - loaded.pipelines.len();
    eprintln!(
        "{} file(s): {} valid, {} with problems",
        files.len(),
        loaded.pipelines.len(),
        bad
    );
    Ok(if loaded.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
