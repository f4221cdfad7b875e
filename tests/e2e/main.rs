//! End-to-end tests of ferry: the engine's public API and the `ferry` binary, from the outside.
//!
//! - `argo_schema`: every example, rendered for several kinds of run, validates against Argo's
//!   JSON schema and full CRD in strict mode; inner PyTorchJob / JobSet manifests parse.
//! - `snapshot`: the push-to-main manifest of every example, as insta snapshots.
//! - `distributed`: the pods of PyTorchJob / JobSet steps get the torchrun variables and workspace.
//! - `gates`: skipped steps, `depends` and `when` follow `needs`, `if.events` and `if.metrics`.
//! - `injection`: hostile refs, tags and parameter values never change a manifest's structure.
//! - `dashboard`: the dashboard in headless Chromium: sign in, list, run page, rerun, live updates.
//! - `cli`: `ferry validate`, `ferry schema` and `ferry render` as a user runs them.
//! - `hostile_yaml`: alias bombs, huge files and deep nesting are refused.
//! - `intake`: webhook deliveries over HTTP: fixtures, bad secrets, redeliveries, concurrency.
//! - `planning`: pushes to real git repositories become exactly the runs they trigger.
//! - `executing`: runs executed by the local executor through the dispatcher; the embedded-defaults
//!   demo; restarts; `ferry run`.
//! - `argo_executor`: the Argo executor against the fake Kubernetes API: create, `409`, `422`,
//!   retries, watch to observations, dropped watches and `410`, cancel, TTL deletion, reconcile.
//! - `fake_k8s`: the fake Kubernetes API through the real `kube` client and watcher; the Argo
//!   status documents of its controller stand-in.
//! - `api`: the HTTP API (every route, errors, tokens and their scopes, `dashboard_public`, the
//!   OpenAPI document against the router) and the CLI client against a whole server, with a run
//!   executed by the local executor.
//! - `commands`: `/ferry` comment commands and `/ferry ok-to-test` on a fake GitLab / GitHub:
//!   who may, what runs, cancels through the local executor, one answer per comment.
//! - `concurrency`: `cancel_in_progress` superseding older runs (a burst of pushes under a limit
//!   of one ends with only the newest run), closed merge requests and deleted branches cancelling
//!   their runs, per-project quotas waiting in order and reported as pending.
//! - `serve_argo`: `ferry serve` with `executor: argo` from a signed push over HTTP to the
//!   workflow on the fake API and the run's end in the store; refusals, outages, restarts.
//! - `report`: runs become commit statuses, check runs and one note per run on a fake GitLab /
//!   GitHub, through the real clients: exact calls, budget, outages, crashes, restarts, summaries.
//! - `metrics`: `/metrics` of a `ferry serve` process after a delivery, a run, failed submissions
//!   and a forge `429`: every series and its value.
//! - `replicas`: two `ferry serve` processes on one PostgreSQL with the Argo executor, one killed
//!   halfway through 500 deliveries: every run created, submitted and reported exactly once.
//! - `helm`: the Helm chart renders a `ferry.yaml` and profile that ferry's own parsers accept
//!   (with the helm `deploy/check.sh` caches); the Kueue / PriorityClass examples match the profile.

mod api;
mod argo_executor;
mod argo_schema;
mod cli;
mod commands;
mod concurrency;
mod dashboard;
mod distributed;
mod executing;
mod fake_k8s;
mod gates;
mod helm;
mod hostile_yaml;
mod injection;
mod intake;
mod metrics;
mod planning;
mod replicas;
mod report;
mod serve_argo;
mod snapshot;
mod ssh_clone;

/// Runs `ferry ARGS` in `dir`, with the binary cargo built for this package from the real
/// `main.rs` (never a stale one).
pub fn ferry(dir: &std::path::Path, args: &[&str]) -> ferry_tests::Run {
    ferry_tests::ferry_at(
        std::path::Path::new(env!("CARGO_BIN_EXE_ferry-under-test")),
        dir,
        args,
    )
}
