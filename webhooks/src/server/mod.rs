//! `ferry serve`: the HTTP server and the background planner, on one tokio runtime.
//!
//! Start-up reads the config once (or starts on embedded defaults), reads the secrets it names from
//! the environment, opens the store (running migrations), starts the planner (which first plans
//! whatever was stored but not planned before a restart), and serves until SIGINT/SIGTERM. Shutdown
//! stops accepting, lets in-flight requests and the current planning pass finish, then closes the
//! database.

pub mod api;
pub mod dashboard;
pub(crate) mod demo;
mod hooks;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::collections::HashMap;

use ferry_engine::config::ExecutorKind;
use ferry_engine::config::{Config, ProjectForge, redact_url};
use ferry_engine::executor::local::{LocalExecutor, LocalSettings};
use ferry_engine::executor::{Executor, argo};
use ferry_engine::forge::report::ForgeCredentials;
use ferry_engine::profile::Profile;
use ferry_engine::render::Renderer;
use ferry_engine::service::dispatch::Dispatcher;
use ferry_engine::service::intake::{Secret, Secrets};
use ferry_engine::service::manual::ManualRequest;
use ferry_engine::service::mirror::{Credentials, SecretString};
use ferry_engine::service::planner::Planner;
use ferry_engine::service::report::Reporter;
use ferry_engine::store::{Backend, Replica, Store};
use tokio::sync::{Notify, mpsc, watch};

use self::metrics::Metrics;

/// GitHub's largest webhook payload; GitLab's are smaller.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The config, read once.
    pub config: Arc<Config>,
    /// The store.
    pub store: Store,
    /// Webhook secrets by project.
    pub secrets: Arc<Secrets>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Wakes the planner when a new event is stored.
    pub planner_wake: Arc<Notify>,
    /// The planner (manual runs go through it).
    pub planner: Arc<Planner>,
    /// The executor runs go to (`/readyz` pings it).
    pub executor: Arc<dyn Executor>,
    /// The dashboard's live-update feed (closed when shutdown starts).
    pub live: dashboard::Live,
}

/// The configuration to start with, and where it came from.
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// The profile it names (empty when none).
    pub profile: Profile,
    /// A sentence for the start-up log.
    pub source: String,
    /// True when no config file was found: the embedded defaults, with the demo project.
    pub embedded: bool,
}

/// Reads `path`, or `./ferry.yaml`, or falls back to embedded defaults when neither exists.
pub fn load_config(path: Option<&Path>, database_override: Option<String>) -> Result<Loaded> {
    let default = Path::new("ferry.yaml");
    let (mut config, base, source) = match path {
        Some(p) => (read_config(p)?, p.parent().map(Path::to_path_buf), format!("config {}", p.display())),
        None if default.exists() => (read_config(default)?, None, "config ./ferry.yaml".to_owned()),
        None => (
            Config::default(),
            None,
            "no ferry.yaml: starting on embedded defaults (127.0.0.1:8080, sqlite://ferry.db, local executor, the demo project)".to_owned(),
        ),
    };
    let embedded = path.is_none() && !default.exists();
    if let Some(url) = database_override {
        config.database_url = url;
    }
    // Like `profile_file`, a relative `argo.kubeconfig` is relative to the config file.
    if let (Some(file), Some(base)) = (&config.argo.kubeconfig, &base)
        && file.is_relative()
    {
        config.argo.kubeconfig = Some(base.join(file));
    }
    let profile = match (&config.profile, &config.profile_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => {
            let file = base.map_or(file.clone(), |b| b.join(file));
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read profile_file {}", file.display()))?;
            Profile::from_yaml(&file.display().to_string(), &text)
                .map_err(|e| anyhow!("invalid profile:\n{e}"))?
        }
        (None, None) => Profile::default(),
    };
    Ok(Loaded {
        config,
        profile,
        source,
        embedded,
    })
}

fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    Config::from_yaml(&path.display().to_string(), &text)
        .map_err(|e| anyhow!("invalid config:\n{e}"))
}

/// Reads each project's webhook secret from the environment variable it names; every variable
/// that is unset is named at once.
pub fn read_secrets(config: &Config, env: impl Fn(&str) -> Option<String>) -> Result<Secrets> {
    let missing = missing_secrets(config, &env);
    if !missing.is_empty() {
        bail!("{}", missing.join("\n"));
    }
    let mut secrets = Secrets::new();
    for p in &config.projects {
        if let Some(value) = p.webhook_secret_env.as_deref().and_then(&env) {
            secrets.insert(p.name.clone(), Secret::new(value.into_bytes()));
        }
    }
    Ok(secrets)
}

/// Every project whose `webhook_secret_env` names a variable that is unset or empty, as the
/// sentences `ferry serve` refuses to start with.
pub fn missing_secrets(config: &Config, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    config
        .projects
        .iter()
        .filter_map(|p| {
            let var = p.webhook_secret_env.as_deref()?;
            env(var).filter(|v| !v.is_empty()).is_none().then(|| {
                format!(
                    "project `{}`: environment variable {var} (webhook_secret_env) is not set",
                    p.name
                )
            })
        })
        .collect()
}

/// Clone credentials per project, read once from the environment: the project's `token_env` as
/// an https token (GitLab's user name `oauth2`, GitHub's `x-access-token`), the ssh agent for ssh
/// URLs, nothing otherwise.
pub fn read_credentials(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> HashMap<String, Credentials> {
    let mut out = HashMap::new();
    for p in &config.projects {
        let ssh = p.repo.starts_with("ssh://") || (p.repo.contains('@') && !p.repo.contains("://"));
        let creds = match (p.token_env.as_deref().and_then(&env), ssh) {
            (_, true) => Credentials::SshAgent,
            (Some(token), false) if !token.is_empty() => {
                let username = match p.forge {
                    ProjectForge::Github => "x-access-token",
                    ProjectForge::Gitlab | ProjectForge::None => "oauth2",
                };
                Credentials::Token {
                    username: username.to_owned(),
                    token: SecretString::new(token),
                }
            }
            (Some(_) | None, false) => Credentials::None,
        };
        out.insert(p.name.clone(), creds);
    }
    out
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/hooks/gitlab", post(hooks::gitlab))
        .route("/hooks/github", post(hooks::github))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(hooks::readyz))
        .route("/metrics", get(hooks::metrics))
        .merge(api::routes())
        .merge(dashboard::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(loaded: Loaded, secrets: Secrets) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(loaded.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", loaded.config.listen))?;
    serve_with(loaded, secrets, listener, shutdown_signal()).await
}

/// Runs the server on `listener` until `shutdown` completes (tests and benchmarks start it so).
pub async fn serve_with(
    loaded: Loaded,
    secrets: Secrets,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Loaded {
        mut config,
        profile,
        source,
        embedded,
    } = loaded;
    tracing::info!(config.source = %source, database = %redact_url(&config.database_url), "starting ferry");
    // Mirrors, checkouts and logs are used from other directories (git, step processes).
    if let Ok(dir) = std::path::absolute(&config.data_dir) {
        config.data_dir = dir;
    }
    if embedded {
        let dir = demo::install(&mut config).context("setting up the demo project")?;
        tracing::info!(repository = %dir.display(), "demo project `demo` ready");
    }
    let store = Store::open(&config.database_url)
        .await
        .context("opening the database")?;
    let config = Arc::new(config);
    let profile = Arc::new(profile);
    let data_dir = PathBuf::from(&config.data_dir);
    let metrics = Arc::new(Metrics::default());
    let wake = Arc::new(Notify::new());
    let runs_wake = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (observations_tx, observations_rx) = mpsc::channel(OBSERVATION_BUFFER);
    let executor = build_executor(&config, &profile, observations_tx, &metrics).await?;
    let replica = Replica::new(Replica::generate_id(&host_name()), config.replicas.lease());
    if store.backend() == Backend::Postgres {
        tracing::info!(
            replica = replica.id(),
            lease_s = config.replicas.lease_seconds,
            poll_ms = config.replicas.poll_ms,
            "claiming work as a replica"
        );
        if !executor.follows_any_run() {
            tracing::warn!(
                executor = executor.kind(),
                "this executor runs steps inside this process: run ONE replica with it (several replicas need executor: argo)"
            );
        }
    }
    let credentials = read_credentials(&config, |var| std::env::var(var).ok());
    let forge_credentials: HashMap<String, ForgeCredentials> = config
        .projects
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                ForgeCredentials::from_env(p, |var| std::env::var(var).ok()),
            )
        })
        .collect();
    let reporter = Arc::new(
        Reporter::new(store.clone(), config.clone(), forge_credentials)
            .with_replica(replica.clone())
            .with_metrics(metrics.clone()),
    );
    let planner = Arc::new(
        Planner::new(
            store.clone(),
            config.clone(),
            profile.clone(),
            data_dir.clone(),
        )
        .with_credentials(move |p| {
            credentials
                .get(&p.name)
                .cloned()
                .unwrap_or(Credentials::None)
        })
        .with_runs_created(runs_wake.clone())
        .with_forges(reporter.forges())
        .with_replica(replica.clone())
        .with_metrics(metrics.clone()),
    );
    let dispatcher = Arc::new(
        Dispatcher::new(
            store.clone(),
            config.clone(),
            profile.clone(),
            executor.clone(),
            data_dir.clone(),
        )
        .with_replica(replica)
        .with_metrics(metrics.clone()),
    );
    let reporter_task = tokio::spawn(reporter.run(store.outbox_notify(), stop_rx.clone()));
    let planner_task = tokio::spawn(planner.clone().run(wake.clone(), stop_rx.clone()));
    let dispatcher_task = tokio::spawn(dispatcher.run(runs_wake, observations_rx, stop_rx));
    if embedded {
        start_demo(planner.clone(), data_dir.clone());
    }
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        secrets: Arc::new(secrets),
        metrics,
        planner_wake: wake,
        planner,
        executor,
        live: dashboard::Live::default(),
    };
    let live = state.live.clone();
    tracing::info!(listen = %listener.local_addr()?, "listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Event streams never end by themselves; graceful shutdown waits for responses.
            live.close();
        })
        .await?;
    tracing::info!(
        "shutting down: waiting for the planner and the dispatcher to finish their pass"
    );
    let _ = stop_tx.send(true);
    let _ = planner_task.await;
    let _ = dispatcher_task.await;
    let _ = reporter_task.await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Observations buffered between the executor and the dispatcher before the executor waits.
const OBSERVATION_BUFFER: usize = 4096;

/// The executor `ferry.yaml` chooses.
async fn build_executor(
    config: &Config,
    profile: &Arc<Profile>,
    observations: mpsc::Sender<ferry_engine::executor::Observation>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Executor>> {
    match config.executor {
        ExecutorKind::Local => {
            let settings = LocalSettings {
                gpus: config.local.gpus,
                ..LocalSettings::new(&config.data_dir)
            };
            let executor = LocalExecutor::new(settings, observations);
            tracing::info!(gpus = executor.gpus(), "local executor");
            Ok(Arc::new(executor))
        }
        ExecutorKind::Argo => {
            let client = argo::client_from(config.argo.kubeconfig.as_deref())
                .await
                .map_err(|e| anyhow!("connecting to Kubernetes: {e}"))?;
            let settings = argo::ArgoSettings::for_config(config, client.default_namespace());
            tracing::info!(namespace = %settings.namespace, "argo executor");
            let executor = argo::ArgoExecutor::new(
                client,
                Arc::new(Renderer::embedded()),
                profile.clone(),
                observations,
                settings,
            )
            .with_metrics(metrics.clone());
            Ok(Arc::new(executor))
        }
    }
}

/// This machine's (or pod's) name for the replica id: `HOSTNAME`, else `/etc/hostname`, else
/// `ferry`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".to_owned())
}

/// Queues one run of the demo pipeline and says how to follow it.
fn start_demo(planner: Arc<Planner>, data_dir: PathBuf) {
    tokio::spawn(async move {
        let request = ManualRequest {
            project: demo::PROJECT.into(),
            pipeline: demo::PIPELINE.into(),
            ..ManualRequest::default()
        };
        match planner.trigger(&request).await {
            Ok(run) => tracing::info!(
                run = %run,
                logs = %data_dir.join("runs").join(run.to_string()).join("logs").display(),
                "demo run queued: watch its steps in this log"
            ),
            Err(e) => tracing::error!(error = %e, "could not start the demo run"),
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("postgres://ferry:hunter2@db/ferry"),
            "postgres://ferry:***@db/ferry"
        );
        assert_eq!(redact_url("sqlite://ferry.db"), "sqlite://ferry.db");
    }

    #[test]
    fn every_unset_webhook_secret_is_named_at_once() {
        let text = "projects:
  - { name: a, repo: https://gitlab.example.com/a.git, forge: gitlab, webhook_secret_env: SA }
  - { name: b, repo: https://gitlab.example.com/b.git, forge: gitlab, webhook_secret_env: SB }
  - { name: c, repo: https://gitlab.example.com/c.git, forge: gitlab, webhook_secret_env: SC }
  - { name: d, repo: https://gitlab.example.com/d.git, forge: none }
";
        let config = Config::from_yaml("ferry.yaml", text).expect("valid");
        let env = |var: &str| match var {
            "SA" => Some("secret".to_owned()),
            "SB" => Some(String::new()),
            _ => None,
        };
        let err = read_secrets(&config, env).expect_err("two are missing");
        assert_eq!(
            err.to_string(),
            "project `b`: environment variable SB (webhook_secret_env) is not set\n\
             project `c`: environment variable SC (webhook_secret_env) is not set"
        );
        let all = |var: &str| Some(format!("{var}-value"));
        let secrets = read_secrets(&config, all).expect("all set");
        assert_eq!(secrets.len(), 3);
    }

    #[test]
    fn clone_credentials_come_from_token_env() {
        let text = "projects:
  - { name: a, repo: https://gitlab.example.com/a.git, forge: gitlab, webhook_secret_env: S, token_env: TOKEN_A }
  - { name: b, repo: https://github.com/o/b.git, forge: github, webhook_secret_env: S, token_env: TOKEN_B }
  - { name: c, repo: git@gitlab.example.com:o/c.git, forge: gitlab, webhook_secret_env: S }
  - { name: d, repo: https://gitlab.example.com/d.git, forge: gitlab, webhook_secret_env: S, token_env: UNSET }
";
        let config = Config::from_yaml("ferry.yaml", text).expect("valid");
        let creds = read_credentials(&config, |var| {
            (var != "UNSET").then(|| format!("{var}-value"))
        });
        assert_eq!(
            creds["a"],
            Credentials::Token {
                username: "oauth2".into(),
                token: SecretString::new("TOKEN_A-value".to_owned())
            }
        );
        assert_eq!(
            creds["b"],
            Credentials::Token {
                username: "x-access-token".into(),
                token: SecretString::new("TOKEN_B-value".to_owned())
            }
        );
        assert_eq!(creds["c"], Credentials::SshAgent);
        assert_eq!(creds["d"], Credentials::None);
        assert!(
            !format!("{:?}", creds["a"]).contains("TOKEN_A-value"),
            "tokens never print"
        );
    }

    #[test]
    fn missing_secret_env_names_the_variable() {
        let text = "projects:\n  - { name: resnet, repo: https://x/y.git, forge: gitlab, webhook_secret_env: RESNET_SECRET }\n";
        let config = Config::from_yaml("ferry.yaml", text).expect("valid");
        let err = read_secrets(&config, |_| None)
            .expect_err("missing")
            .to_string();
        assert_eq!(
            err,
            "project `resnet`: environment variable RESNET_SECRET (webhook_secret_env) is not set"
        );
        let ok = read_secrets(&config, |_| Some("s3cret".into())).expect("set");
        assert_eq!(ok["resnet"].expose(), b"s3cret");
    }
}
