//! The Argo executor: runs as Argo Workflows, through the Kubernetes API (`kube`).
//!
//! *Submit* renders the run and creates the Workflow `ferry-<run id>` in the run's namespace. The
//! name is fixed, so a repeated submit meets `409 AlreadyExists`: if the existing workflow carries
//! this run's `ferry.dev/run-id` label it is adopted (a crash between create and the store's write
//! is harmless), otherwise the submit is rejected. Transient API failures are retried inside
//! submit a few times (`api`), then reported as [`SubmitError::Unavailable`] for the service to
//! try again later.
//!
//! *Following* is level-triggered (`follow`): one watcher per namespace in use turns every change
//! of a followed run's workflow into an [`Observation`] (`status`) and sends it unless it repeats
//! the last one, until the run's phase is final. *Reconcile* lists the workflows of the runs the
//! store still has open, adopts those that exist and reports the others gone. *Cancel* sets
//! `spec.shutdown` with a merge patch; Argo then stops the workflow.
//!
//! Built from `argo:` in `ferry.yaml` ([`ArgoSettings::for_config`], [`client_from`]).

mod api;
mod follow;
pub mod status;
pub mod workflow;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{
    BoxFuture, CancelMode, ExecError, Executor, Job, Observation, Observations, SubmitError,
};
use crate::config::Config;
use crate::profile::Profile;
use crate::render::Renderer;
use crate::store::{Run, RunId};
use api::{Failure, Verdict, retrying};
use follow::{Follower, gone};
use status::observe;
use workflow::{RUN_ID_LABEL, Workflow, run_id_of, workflow_name, workflow_resource};

/// Resolves the namespace of a stored run (from its project's configuration).
pub type NamespaceOf = Arc<dyn Fn(&Run) -> String + Send + Sync>;

/// Capped exponential back-off: `first`, twice that, and so on up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl BackoffPolicy {
    /// The delay before retry number `attempt` (counted from 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// How the Argo executor talks to the cluster.
#[derive(Clone)]
pub struct ArgoSettings {
    /// The namespace of runs whose context names none, and of `ping`.
    pub namespace: String,
    /// The namespace of a stored run (reconcile); by default [`ArgoSettings::namespace`].
    pub namespace_of: NamespaceOf,
    /// Retries of a transient failure inside one call (after the first try).
    pub retries: u32,
    /// The back-off between those retries.
    pub retry_backoff: BackoffPolicy,
    /// The longest `Retry-After` waited for inside a call; a longer one ends the call as
    /// unavailable (the service submits again later).
    pub max_retry_after: Duration,
    /// The time limit of one API request (watches excepted).
    pub request_timeout: Duration,
    /// The back-off of a watcher after an error.
    pub watch_backoff: BackoffPolicy,
    /// How long the server keeps one watch request open before the watcher re-watches.
    pub watch_timeout_secs: u32,
    /// Objects per page of a list (the watcher's relists and reconcile).
    pub list_page_size: u32,
}

impl std::fmt::Debug for ArgoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgoSettings")
            .field("namespace", &self.namespace)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("request_timeout", &self.request_timeout)
            .field("watch_backoff", &self.watch_backoff)
            .field("watch_timeout_secs", &self.watch_timeout_secs)
            .field("list_page_size", &self.list_page_size)
            .finish_non_exhaustive()
    }
}

impl ArgoSettings {
    /// Defaults, with every run in `namespace`: 3 retries from 250 ms up to 4 s, `Retry-After` up
    /// to 30 s, 20 s per request; watchers back off from 800 ms up to 30 s (client-go's figures)
    /// and re-watch every 290 s; lists in pages of 500.
    pub fn new(namespace: impl Into<String>) -> ArgoSettings {
        let namespace = namespace.into();
        let default = namespace.clone();
        ArgoSettings {
            namespace,
            namespace_of: Arc::new(move |_| default.clone()),
            retries: 3,
            retry_backoff: BackoffPolicy {
                first: Duration::from_millis(250),
                max: Duration::from_secs(4),
            },
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            watch_backoff: BackoffPolicy {
                first: Duration::from_millis(800),
                max: Duration::from_secs(30),
            },
            watch_timeout_secs: 290,
            list_page_size: 500,
        }
    }

    /// Defaults for a server configuration: the default namespace is `argo.namespace`, else the
    /// client's (its kubeconfig context's, or `default`); a run's namespace is its project's
    /// `namespace`, else the default.
    pub fn for_config(config: &Config, client: &kube::Client) -> ArgoSettings {
        let default = config
            .argo
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let by_project: BTreeMap<String, String> = config
            .projects
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.namespace.clone()?)))
            .collect();
        let fallback = default.clone();
        ArgoSettings {
            namespace_of: Arc::new(move |run: &Run| {
                by_project
                    .get(&run.project)
                    .cloned()
                    .unwrap_or_else(|| fallback.clone())
            }),
            ..ArgoSettings::new(default)
        }
    }
}

/// A client for the cluster: from the kubeconfig at `path`, or inferred (`KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster service account) when there is none. The client's own
/// retry layer is off: the executor retries under its own policy (`api`).
pub async fn client_from(path: Option<&Path>) -> Result<kube::Client, ExecError> {
    let mut config = match path {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                ExecError(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| ExecError(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            ExecError(format!(
                "no Kubernetes configuration found (KUBECONFIG, ~/.kube/config, in-cluster): {e}"
            ))
        })?,
    };
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| ExecError(format!("cannot build a Kubernetes client: {e}")))
}

/// Runs as Argo Workflows.
pub struct ArgoExecutor {
    client: kube::Client,
    renderer: Arc<Renderer>,
    profile: Arc<Profile>,
    settings: ArgoSettings,
    follower: Arc<Follower>,
}

impl std::fmt::Debug for ArgoExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgoExecutor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for ArgoExecutor {
    fn drop(&mut self) {
        self.follower.stop();
    }
}

impl ArgoExecutor {
    /// An executor sending the observations of the runs it follows on `observations`. Watchers
    /// start with the first run in each namespace (they need a Tokio runtime then).
    pub fn new(
        client: kube::Client,
        renderer: Arc<Renderer>,
        profile: Arc<Profile>,
        observations: Observations,
        settings: ArgoSettings,
    ) -> ArgoExecutor {
        let follower = Arc::new(Follower::new(
            client.clone(),
            settings.clone(),
            observations,
        ));
        ArgoExecutor {
            client,
            renderer,
            profile,
            settings,
            follower,
        }
    }

    /// How many runs are followed (unfinished, as far as the executor knows).
    pub fn followed(&self) -> usize {
        self.follower.len()
    }

    fn api(&self, namespace: &str) -> Api<Workflow> {
        Api::namespaced_with(self.client.clone(), namespace, &workflow_resource())
    }

    async fn submit_job(&self, job: &Job) -> Result<(), SubmitError> {
        if job.context.run_id != job.run_id.get().unsigned_abs() {
            return Err(SubmitError::Rejected(format!(
                "run {} has the context of run {}",
                job.run_id, job.context.run_id
            )));
        }
        let rendered = self
            .renderer
            .render(&job.pipeline, &self.profile, &job.context)
            .map_err(|e| SubmitError::Rejected(e.to_string()))?;
        let body = serde_json::to_vec(&rendered.manifest)
            .map_err(|e| SubmitError::Rejected(format!("manifest is not serialisable: {e}")))?;
        let namespace = job
            .context
            .namespace
            .as_deref()
            .unwrap_or(&self.settings.namespace);
        let name = workflow_name(job.run_id);
        let new = self.follower.follow(job.run_id, namespace, false);
        let outcome = self.create(namespace, &name, body).await;
        let result = match outcome {
            Ok(None) => {
                tracing::info!(run.id = %job.run_id, namespace, workflow = %name, "workflow created");
                Ok(())
            }
            Ok(Some(existing)) => self.adopt(job.run_id, namespace, &existing).await,
            Err(f) => Err(match f.verdict {
                Verdict::Rejected => SubmitError::Rejected(format!(
                    "Kubernetes refused workflow {name} in namespace {namespace}: {}",
                    f.message
                )),
                Verdict::Retry | Verdict::Unavailable | Verdict::NotFound => {
                    SubmitError::Unavailable(format!(
                        "cannot create workflow {name} in namespace {namespace}: {}",
                        f.message
                    ))
                }
            }),
        };
        if let Err(e) = &result {
            tracing::warn!(run.id = %job.run_id, namespace, error = %e, "submit failed");
            if new {
                self.follower.unfollow(job.run_id);
            }
        }
        result
    }

    /// Creates the workflow; `Some(existing)` when one of that name was already there.
    async fn create(
        &self,
        namespace: &str,
        name: &str,
        body: Vec<u8>,
    ) -> Result<Option<Workflow>, Failure> {
        let api = self.api(namespace);
        retrying(&self.settings, "create workflow", || async {
            match api::create(&api, &self.client, body.clone()).await {
                Ok(()) => Ok(None),
                Err(f) if f.code == Some(409) => match api.get_opt(name).await {
                    Ok(Some(existing)) => Ok(Some(existing)),
                    Ok(None) => Err(Failure::transient(format!(
                        "workflow {name} existed, then vanished"
                    ))),
                    Err(e) => Err(Failure::from_kube(e)),
                },
                Err(f) => Err(f),
            }
        })
        .await
    }

    /// Takes over an existing workflow when it is this run's.
    async fn adopt(&self, run: RunId, namespace: &str, wf: &Workflow) -> Result<(), SubmitError> {
        let name = workflow_name(run);
        match run_id_of(wf) {
            Some(owner) if owner == run => {
                tracing::info!(run.id = %run, namespace, workflow = %name, "workflow already exists; adopted");
                self.follower.offer(observe(run, wf)).await;
                Ok(())
            }
            owner => {
                let label = wf
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(RUN_ID_LABEL));
                let whose = match (owner, label) {
                    (Some(other), _) => format!("it belongs to run {other}"),
                    (None, Some(value)) => format!("its {RUN_ID_LABEL} label is `{value}`"),
                    (None, None) => format!("it has no {RUN_ID_LABEL} label"),
                };
                Err(SubmitError::Rejected(format!(
                    "workflow {name} already exists in namespace {namespace} and is not this run's: {whose}"
                )))
            }
        }
    }

    async fn cancel_run(
        &self,
        run: RunId,
        namespace: Option<&str>,
        mode: CancelMode,
    ) -> Result<(), ExecError> {
        let namespace = namespace.unwrap_or(&self.settings.namespace);
        let name = workflow_name(run);
        let strategy = match mode {
            CancelMode::Stop => "Stop",
            CancelMode::Terminate => "Terminate",
        };
        let patch = serde_json::json!({ "spec": { "shutdown": strategy } });
        let api = self.api(namespace);
        let params = PatchParams {
            field_manager: Some(api::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let result = retrying(&self.settings, "cancel workflow", || async {
            api.patch(&name, &params, &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(Failure::from_kube)
        })
        .await;
        match result {
            Ok(()) => {
                tracing::info!(run.id = %run, namespace, workflow = %name, strategy, "workflow shutdown requested");
                Ok(())
            }
            Err(f) if f.verdict == Verdict::NotFound => {
                tracing::debug!(run.id = %run, namespace, "cancel: workflow already gone");
                Ok(())
            }
            Err(f) => Err(ExecError(format!(
                "cannot stop workflow {name} in namespace {namespace}: {}",
                f.message
            ))),
        }
    }

    async fn reconcile_runs(&self, runs: &[Run]) -> Result<Vec<Observation>, ExecError> {
        let mut by_namespace: BTreeMap<String, Vec<RunId>> = BTreeMap::new();
        for run in runs {
            by_namespace
                .entry((self.settings.namespace_of)(run))
                .or_default()
                .push(run.id);
        }
        let mut out = Vec::with_capacity(runs.len());
        for (namespace, ids) in by_namespace {
            let mut found = self.list_runs(&namespace, &ids).await?;
            for run in ids {
                let o = match found.remove(&run) {
                    Some(o) => {
                        if !o.phase.is_final() {
                            self.follower.follow(run, &namespace, true);
                            self.follower.record(&o);
                        }
                        o
                    }
                    None => gone(
                        run,
                        &format!("is gone from namespace {namespace} (deleted by TTL or by hand)"),
                    ),
                };
                out.push(o);
            }
        }
        tracing::info!(
            runs = runs.len(),
            followed = self.follower.len(),
            "reconciled with Argo"
        );
        Ok(out)
    }

    /// The current observations of the runs `wanted` among the workflows of a namespace.
    async fn list_runs(
        &self,
        namespace: &str,
        wanted: &[RunId],
    ) -> Result<BTreeMap<RunId, Observation>, ExecError> {
        let api = self.api(namespace);
        let mut found = BTreeMap::new();
        let mut next: Option<String> = None;
        loop {
            let mut params = ListParams::default()
                .labels(RUN_ID_LABEL)
                .limit(self.settings.list_page_size);
            if let Some(token) = next.take() {
                params = params.continue_token(&token);
            }
            let page = retrying(&self.settings, "list workflows", || async {
                api.list(&params).await.map_err(Failure::from_kube)
            })
            .await
            .map_err(|f| {
                ExecError(format!(
                    "cannot list workflows in namespace {namespace}: {}",
                    f.message
                ))
            })?;
            for wf in &page.items {
                if let Some(run) = run_id_of(wf).filter(|r| wanted.contains(r)) {
                    found.insert(run, observe(run, wf));
                }
            }
            match page.metadata.continue_.filter(|t| !t.is_empty()) {
                Some(token) => next = Some(token),
                None => return Ok(found),
            }
        }
    }

    async fn ping_api(&self) -> Result<(), ExecError> {
        let api = self.api(&self.settings.namespace);
        let params = ListParams::default().limit(1);
        match tokio::time::timeout(self.settings.request_timeout, api.list(&params)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ExecError(format!(
                "cannot list workflows in namespace {}: {}",
                self.settings.namespace,
                Failure::from_kube(e).message
            ))),
            Err(_) => Err(ExecError(format!(
                "no answer from the Kubernetes API within {} s",
                self.settings.request_timeout.as_secs_f32()
            ))),
        }
    }
}

impl Executor for ArgoExecutor {
    fn kind(&self) -> &'static str {
        "argo"
    }

    fn submit<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), SubmitError>> {
        Box::pin(self.submit_job(job))
    }

    fn cancel<'a>(
        &'a self,
        run: RunId,
        namespace: Option<&'a str>,
        mode: CancelMode,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.cancel_run(run, namespace, mode))
    }

    fn reconcile<'a>(
        &'a self,
        runs: &'a [Run],
    ) -> BoxFuture<'a, Result<Vec<Observation>, ExecError>> {
        Box::pin(self.reconcile_runs(runs))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(self.ping_api())
    }
}

#[cfg(test)]
mod tests {
    use super::workflow::label_run_id;
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = BackoffPolicy {
            first: Duration::from_millis(250),
            max: Duration::from_secs(4),
        };
        let delays: Vec<u128> = (0..7).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(4));
    }

    #[test]
    fn run_id_labels_parse_strictly() {
        assert_eq!(label_run_id("12").map(RunId::get), Some(12));
        assert_eq!(label_run_id("0"), None);
        assert_eq!(label_run_id("-3"), None);
        assert_eq!(label_run_id("12a"), None);
        assert_eq!(label_run_id(""), None);
    }
}
