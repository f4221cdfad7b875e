//! The Argo executor: runs as Argo Workflows, through the Kubernetes API (`kube`).
//!
//! *Submit* renders the run and creates the Workflow `ferry-<run id>` in the run's namespace. The
//! name is fixed, so a repeated submit meets `409 AlreadyExists`: if the existing workflow carries
//! this run's `ferry.dev/run-id` label it is adopted (a crash between create and the store's write
//! is harmless), otherwise the submit is rejected. Transient API failures are retried inside
//! submit a few times (`client`), then reported as [`SubmitError::Unavailable`] for the service to
//! try again later.
//!
//! *Following* is level-triggered (`follow`): one watcher per namespace in use turns every change
//! of a followed run's workflow into an [`Observation`] (`status`) and sends it unless it repeats
//! the last one, until the run's phase is final. *Reconcile* lists the workflows of the runs the
//! store still has open, adopts those that exist and reports the others gone. *Cancel* sets
//! `spec.shutdown` with a merge patch; Argo then stops the workflow.
//!
//! Built from `argo:` in `ferry.yaml`: [`client_from`] its `kubeconfig`, then
//! [`ArgoSettings::for_config`] and [`ArgoExecutor::new`].

mod client;
mod config;
mod follow;
mod logs;
pub mod status;
pub mod workflow;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kube::api::{Api, ListParams, Patch, PatchParams};

use super::{
    BoxFuture, CancelMode, ExecError, Executor, FetchedLog, Job, LogRequest, Observation,
    Observations, SubmitError,
};
use crate::profile::Profile;
use crate::render::Renderer;
use crate::store::{Run, RunId};
use client::{Failure, Verdict, retrying};
use follow::{Follower, gone};
use status::observe;
use workflow::{RUN_ID_LABEL, Workflow, run_id_of, workflow_name, workflow_resource};

pub use client::client_from;
pub use config::{ArgoSettings, BackoffPolicy, NamespaceOf};

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

    /// Counts failed workflow watches in `metrics` (`ferry_executor_errors_total{executor="argo",
    /// operation="watch"}`); submit, cancel and reconcile failures are counted by the dispatcher.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> ArgoExecutor {
        self.follower.set_metrics(metrics);
        self
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
        let result = match self.create(namespace, &name, body).await {
            Ok(None) => {
                tracing::info!(run.id = %job.run_id, namespace, workflow = %name, "workflow created");
                Ok(())
            }
            Ok(Some(existing)) => self.adopt(job.run_id, namespace, &existing).await,
            Err(f) => Err(submit_error(&f, &name, namespace)),
        };
        if result.is_err() && new {
            self.follower.unfollow(job.run_id);
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
            match client::create(&api, &self.client, body.clone()).await {
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
            field_manager: Some(client::FIELD_MANAGER.to_owned()),
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
        let wanted: HashSet<RunId> = wanted.iter().copied().collect();
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

/// What a failed create means for the run (the service logs it and records it on the run).
fn submit_error(f: &Failure, name: &str, namespace: &str) -> SubmitError {
    match f.verdict {
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

    fn log_tail<'a>(
        &'a self,
        request: LogRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<FetchedLog>, ExecError>> {
        Box::pin(self.fetch_log_tail(request))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(self.ping_api())
    }

    fn follows_any_run(&self) -> bool {
        true
    }
}
