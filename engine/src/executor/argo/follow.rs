//! Following runs: one watcher per namespace, a small table of followed runs, observations out.
//!
//! Each namespace in use gets one `kube::runtime::watcher` on the `ferry.dev/run-id` label. The
//! watcher lists, then watches from the list's resource version, re-watches when the server
//! closes the stream, and relists after `410 Gone`; errors come out of the stream once and the
//! stream waits out a back-off before it tries again, so a dead API server costs one warning per
//! back-off step, not a hot loop.
//!
//! Memory is per followed run, not per object: the table holds a run's namespace (shared), the
//! fingerprint of the last observation sent and three small markers, and objects are dropped as
//! soon as they are mapped (`Workflow` keeps only the fields the mapping reads). A run leaves the
//! table when its final observation is sent; workflows of runs not in the table (finished long
//! ago, or not ferry's to follow) are ignored.
//!
//! A workflow deleted while its run is unfinished makes the run [`Phase::Gone`]: seen directly as
//! a delete event, or, when the delete fell into a gap that ended in a relist, as a run whose
//! workflow was seen before and is missing from a complete list begun after the run joined the
//! table. (A list begun earlier may predate the workflow itself.)

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt as _;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use tokio::task::AbortHandle;

use super::status::observe;
use super::workflow::{RUN_ID_LABEL, Workflow, run_id_of, workflow_name, workflow_resource};
use super::{ArgoSettings, BackoffPolicy};
use crate::executor::{Observation, Observations, Phase};
use crate::store::RunId;

/// One followed run.
#[derive(Debug)]
struct Followed {
    namespace: Arc<str>,
    /// The last observation sent.
    sent: Option<u64>,
    /// Whether the workflow was seen to exist: by this namespace's watcher, or by a list made
    /// before the run joined the table (reconcile).
    seen: bool,
    /// How many lists the namespace's watcher had begun when the run joined the table: only a
    /// list begun after that can tell that the workflow is missing.
    joined: u64,
    /// The watcher's list that last contained the workflow.
    listed: u64,
}

/// A namespace's watcher.
struct Watch {
    task: AbortHandle,
    /// How many lists it has begun (each relist is one more).
    lists: Arc<AtomicU64>,
}

/// The followed runs and the watchers, shared by the executor and its watcher tasks.
pub struct Follower {
    client: kube::Client,
    settings: ArgoSettings,
    tx: Observations,
    runs: Mutex<HashMap<RunId, Followed>>,
    watchers: Mutex<HashMap<Arc<str>, Watch>>,
    /// Where failed watches are counted (`ferry_executor_errors_total{operation="watch"}`).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl Follower {
    /// A follower sending on `tx`.
    pub fn new(client: kube::Client, settings: ArgoSettings, tx: Observations) -> Follower {
        Follower {
            client,
            settings,
            tx,
            runs: Mutex::default(),
            watchers: Mutex::default(),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Counts failed watches in `metrics` (the first call wins).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<RunId, Followed>> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts following a run (idempotent); `seen` when its workflow was just listed. Returns
    /// whether the run was new to the table.
    pub fn follow(self: &Arc<Self>, run: RunId, namespace: &str, seen: bool) -> bool {
        let (namespace, lists) = self.ensure_watcher(namespace);
        let joined = lists.load(Ordering::SeqCst);
        let mut runs = self.runs();
        let new = !runs.contains_key(&run);
        let entry = runs.entry(run).or_insert(Followed {
            namespace,
            sent: None,
            seen: false,
            joined,
            listed: 0,
        });
        entry.seen |= seen;
        new
    }

    /// Stops following a run.
    pub fn unfollow(&self, run: RunId) {
        self.runs().remove(&run);
    }

    /// How many runs are followed.
    pub fn len(&self) -> usize {
        self.runs().len()
    }

    /// Records an observation as sent without sending it (the caller returns it itself); a final
    /// one ends the following.
    pub fn record(&self, o: &Observation) {
        let mut runs = self.runs();
        if o.phase.is_final() {
            runs.remove(&o.run_id);
        } else if let Some(f) = runs.get_mut(&o.run_id) {
            f.sent = Some(o.fingerprint());
        }
    }

    /// Sends an observation of a followed run unless it repeats the last one sent. Returns `false`
    /// when nobody listens any more.
    pub async fn offer(&self, o: Observation) -> bool {
        let print = o.fingerprint();
        {
            let mut runs = self.runs();
            let Some(f) = runs.get_mut(&o.run_id) else {
                return true;
            };
            if f.sent == Some(print) {
                return true;
            }
            if o.phase.is_final() {
                runs.remove(&o.run_id);
            } else {
                f.sent = Some(print);
            }
        }
        tracing::debug!(run.id = %o.run_id, phase = ?o.phase, steps = o.steps.len(), "workflow observed");
        self.tx.send(o).await.is_ok()
    }

    /// The namespace as shared by the table and its watcher's list count, the watcher running.
    fn ensure_watcher(self: &Arc<Self>, namespace: &str) -> (Arc<str>, Arc<AtomicU64>) {
        let mut watchers = self
            .watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((ns, w)) = watchers.get_key_value(namespace) {
            return (ns.clone(), w.lists.clone());
        }
        let ns: Arc<str> = Arc::from(namespace);
        let lists = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(self.clone().watch(ns.clone(), lists.clone()));
        let watch = Watch {
            task: task.abort_handle(),
            lists: lists.clone(),
        };
        watchers.insert(ns.clone(), watch);
        tracing::info!(namespace, "watching workflows");
        (ns, lists)
    }

    /// Stops every watcher.
    pub fn stop(&self) {
        let watchers = self
            .watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for w in watchers.values() {
            w.task.abort();
        }
    }

    /// The watcher task of one namespace.
    async fn watch(self: Arc<Self>, namespace: Arc<str>, lists: Arc<AtomicU64>) {
        let api: Api<Workflow> =
            Api::namespaced_with(self.client.clone(), &namespace, &workflow_resource());
        let config = watcher::Config::default()
            .labels(RUN_ID_LABEL)
            .timeout(self.settings.watch_timeout_secs)
            .page_size(self.settings.list_page_size);
        let mut stream =
            pin!(watcher::watcher(api, config).backoff(Steps::new(self.settings.watch_backoff)));
        while let Some(item) = stream.next().await {
            let open = match item {
                Ok(event) => self.on_event(&namespace, event, &lists).await,
                Err(e) => {
                    if log_watch_error(&namespace, &e)
                        && let Some(metrics) = self.metrics.get()
                    {
                        metrics.inc(
                            "ferry_executor_errors_total",
                            "Executor calls that failed, by operation (submit, cancel, reconcile, watch).",
                            &[("executor", "argo"), ("operation", "watch")],
                        );
                    }
                    true
                }
            };
            if !open {
                tracing::debug!(namespace = %namespace, "observations channel closed; watcher stops");
                return;
            }
        }
    }

    async fn on_event(
        &self,
        namespace: &Arc<str>,
        event: Event<Workflow>,
        lists: &AtomicU64,
    ) -> bool {
        match event {
            Event::Init => {
                lists.fetch_add(1, Ordering::SeqCst);
                true
            }
            Event::InitApply(wf) => {
                self.mark_seen(&wf, Some(lists.load(Ordering::SeqCst)));
                self.observed(&wf, false).await
            }
            Event::Apply(wf) => {
                self.mark_seen(&wf, None);
                self.observed(&wf, false).await
            }
            Event::Delete(wf) => self.observed(&wf, true).await,
            Event::InitDone => self.sweep(namespace, lists.load(Ordering::SeqCst)).await,
        }
    }

    fn mark_seen(&self, wf: &Workflow, list: Option<u64>) {
        let Some(run) = run_id_of(wf) else { return };
        if let Some(f) = self.runs().get_mut(&run) {
            f.seen = true;
            if let Some(list) = list {
                f.listed = list;
            }
        }
    }

    async fn observed(&self, wf: &Workflow, deleted: bool) -> bool {
        let Some(run) = run_id_of(wf) else {
            return true;
        };
        let o = observe(run, wf);
        let o = if deleted && !o.phase.is_final() {
            gone(run, "was deleted (TTL or by hand) before it finished")
        } else {
            o
        };
        self.offer(o).await
    }

    /// After a complete list: runs seen before that the list lacks were deleted in a gap.
    async fn sweep(&self, namespace: &Arc<str>, list: u64) -> bool {
        let missing: Vec<RunId> = self
            .runs()
            .iter()
            .filter(|(_, f)| {
                f.namespace == *namespace && f.seen && f.joined < list && f.listed != list
            })
            .map(|(run, _)| *run)
            .collect();
        for run in missing {
            if !self
                .offer(gone(run, "was deleted (TTL or by hand) before it finished"))
                .await
            {
                return false;
            }
        }
        true
    }
}

/// A run whose workflow is gone; `what` completes "workflow ferry-N ...".
pub fn gone(run: RunId, what: &str) -> Observation {
    Observation {
        run_id: run,
        phase: Phase::Gone { requeue: false },
        message: Some(format!("workflow {} {what}", workflow_name(run))),
        steps: Vec::new(),
    }
}

/// Logs a watch error; whether it was a failure (a `410 Gone` is the normal way to relist).
fn log_watch_error(namespace: &str, e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::info!(
                namespace,
                "workflow watch history expired (410 Gone); relisting"
            );
            false
        }
        _ => {
            tracing::warn!(namespace, error = %e, "workflow watch failed; retrying after back-off");
            true
        }
    }
}

/// The watcher's back-off: capped exponential steps, reset by every event that gets through.
struct Steps {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Steps {
    fn new(policy: BackoffPolicy) -> Steps {
        Steps { policy, attempt: 0 }
    }
}

impl Iterator for Steps {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Some(delay)
    }
}

impl Backoff for Steps {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}
