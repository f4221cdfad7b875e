//! A wire-level fake of the Kubernetes API for Argo `Workflow`s (`argoproj.io/v1alpha1`,
//! plural `workflows`, namespaced), speaking HTTP and JSON the way `kube` (kube-client and
//! kube-runtime's watcher) uses them, plus a scriptable stand-in for the Argo controller.
//! ferry's Argo executor is tested against it through the real `kube` client, in process or
//! over 127.0.0.1 from a spawned `ferry serve`.
//!
//! # Using it
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use ferry_tests::fake_k8s::{self, FakeKube, Fault, TaskOutcome};
//! let fake = FakeKube::start().await; // 127.0.0.1:<free port>
//! let api = fake_k8s::workflows(fake.client().await?, "ml-team"); // Api<DynamicObject>
//! fake.write_kubeconfig(std::path::Path::new("kubeconfig"))?; // for a spawned `ferry serve`
//!
//! // ... the code under test creates `ferry-12` in `ml-team` ...
//! fake.wait_until("ferry-12 exists", |f| f.get("ml-team", "ferry-12").is_some()).await;
//! let status = fake
//!     .status_builder("ml-team", "ferry-12")?
//!     .task("train", TaskOutcome::succeeded().attempts(2))
//!     .task("evaluate", TaskOutcome::failed("accuracy 0.81 < 0.92"))
//!     .task("deploy", TaskOutcome::omitted())
//!     .build();
//! fake.set_status("ml-team", "ferry-12", status)?; // MODIFIED to every watch
//! fake.inject(Fault::too_many_requests(1).times(2).method(axum::http::Method::POST));
//! # Ok(()) }
//! ```
//!
//! ## Server ([`FakeKube`])
//! - `FakeKube::start().await` / `FakeKube::start_with(Options { .. }).await`: serve on
//!   127.0.0.1:0. [`Options`]: `token` (require `Authorization: Bearer <token>`),
//!   `history_limit` (changes kept for watch replay; older versions get `410`),
//!   `bookmark_interval` (periodic `BOOKMARK`s), `schema_checks`, `namespace` (the
//!   kubeconfig's default namespace).
//! - `url()`, `addr()`, `kubeconfig() -> String`, `write_kubeconfig(path)`,
//!   `client().await -> anyhow::Result<kube::Client>` (through the socket and a kubeconfig,
//!   as `ferry serve` connects), `client_in_process() -> kube::Client` (no socket),
//!   `router() -> axum::Router`.
//! - `schema_checked() -> bool`: whether bodies are checked against `../shared/argo` (when it
//!   is absent the fake still runs, unchecked; print a SKIPPED line in tests that need it).
//!
//! ## Served API
//! `GET /apis/argoproj.io/v1alpha1/workflows` and `.../namespaces/{ns}/workflows`: list
//! (`labelSelector`, `fieldSelector` on `metadata.name`/`metadata.namespace`, `limit` and
//! `continue` pages consistent at one resourceVersion, `resourceVersionMatch=Exact`) and watch
//! (`watch=true|1`, `resourceVersion` replay, `allowWatchBookmarks`, `sendInitialEvents`,
//! `timeoutSeconds`); `POST` (schema, name, label checks; `422 Invalid` naming fields, `409
//! AlreadyExists`, `generateName`, `dryRun=All`); `GET`, `PATCH` (`merge-patch+json` only,
//! else `415`; `metadata.resourceVersion` is a precondition) and `DELETE` (`preconditions`;
//! immediate `Success` Status, or `deletionTimestamp` while finalizers remain) of
//! `.../workflows/{name}`; `GET /version`. Errors are Kubernetes `Status` objects. Every object
//! carries `uid`, `resourceVersion` (one counter for the whole fake), `creationTimestamp`,
//! `generation`. Pods (list by label), their logs (`container`, `tailLines`, `limitBytes`) and
//! secrets (`GET`) are served from what the test added: `add_pod(ns, workflow, node_name, log)`,
//! `add_secret(ns, name, &[(key, value)])`, `forbid_secrets(true)` (answers `403`).
//!
//! ## Controller stand-in
//! `get(ns, name)`, `workflows()`, `create(ns, object)` (as a POST would),
//! `set_status(ns, name, status)`, `update(ns, name, |obj| ..)`, `delete_now(ns, name)` (as
//! the TTL controller does: `DELETED` at once, finalizers or not), and
//! `status_builder(ns, name)` -> [`StatusBuilder`] (or `StatusBuilder::for_workflow(&json)`),
//! which reads the workflow's entrypoint DAG and templates. Per task that has started:
//! `.task(name, TaskOutcome::pending() | running() | succeeded() | failed(msg) | errored(msg)
//! | skipped() | omitted())`, where `skipped` is a false `when` and `omitted` an unmet
//! `depends`, refined with `.attempts(n)`, `.output(name, value)`, `.metrics(&json)`,
//! `.message(..)`. For the workflow: optional `.phase(..)`, `.message(..)`, `.compressed()` or
//! `.offloaded()`; then `.build()`. A task whose template is a `suspend` becomes a `Suspend`
//! node (Running until resumed). Tasks whose template has a `retryStrategy` become `Retry`
//! nodes with `Pod` attempts `task(0)`,
//! `task(1)`..; a failure their policy retries uses every allowed attempt unless
//! `.attempts(n)` says otherwise, and the Retry node then says `No more retries left` while
//! the last attempt carries the message. Node ids are Argo's (`node_id(workflow, name)`);
//! `decompress_nodes` reads `compressedNodes`. The documents pass Argo's strict schemas.
//!
//! ## Watches, faults, the request log
//! `drop_watches()` (cut every open watch connection), `send_bookmarks()`, `compact()`
//! (forget history: older versions now get `410 Expired`), `expire_history()` (both at once,
//! so every re-watch gets `410` and relists), `open_watches()`,
//! `resource_version()`; `inject(Fault)` ([`Fault::too_many_requests`],
//! [`Fault::internal_error`], [`Fault::invalid`] (`422` with a message), [`Fault::delay`],
//! narrowed by `.method()`, `.path_contains()`, `.watch()`, counted by `.times(n)`),
//! `clear_faults()`; `requests() -> Vec<RequestRecord>` (each with the `Instant` it arrived,
//! for benchmarks), `count(method, path)`, `clear_requests()`;
//! `wait_until(what, |fake| cond).await` (woken by every request and change; panics with the
//! request log after 30 s).
//!
//! ## Worth knowing
//! - `client()` is kube's default client, which retries `429`/`503`/`504` itself (honouring
//!   `Retry-After`): an injected 429 shows up as a retry in `requests()`, not as an error.
//!   `client_in_process()` has no retry layer, so there the 429 reaches the caller.
//! - A dropped watch ends the response with an error (a reset connection); kube reads it as
//!   the end of the stream and re-watches from its last version without relisting.
//! - Not reproduced: PUT, server-side apply, strategic and JSON patches (`415`), a status
//!   subresource (Argo's CRD has none, so status changes bump `generation`), `managedFields`,
//!   deleting collections, `NotOlderThan` waits for a future version (the current state is
//!   answered), defaulting and pruning.

mod api_error;
mod argo;
mod faults;
mod http;
mod pods;
mod selector;
mod status;
mod store;
mod validate;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use argo::{
    NodePhase, NodesForm, TaskOutcome, WorkflowPhase, compress_nodes, decompress_nodes, node_id,
};
pub use faults::{Fault, FaultAction, RequestRecord};
pub use selector::{FieldSelector, LabelSelector};
pub use status::StatusBuilder;
pub use validate::is_dns1123_subdomain;

use store::Store;

/// How long [`FakeKube::wait_until`] waits before it fails the test.
const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// How the fake is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kubeconfig context's namespace (and `client_in_process`'s default namespace).
    pub namespace: String,
    /// Require `Authorization: Bearer <token>` (the kubeconfig carries it).
    pub token: Option<String>,
    /// Keep at most this many changes for watch replay (`None`: all).
    pub history_limit: Option<usize>,
    /// Send a `BOOKMARK` to every watch that allows them at this interval.
    pub bookmark_interval: Option<Duration>,
    /// Check created and patched bodies against Argo's schemas when `../shared/argo` exists.
    pub schema_checks: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            namespace: "default".into(),
            token: None,
            history_limit: None,
            bookmark_interval: None,
            schema_checks: true,
        }
    }
}

/// State shared by the routes, the watch streams and the test's handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<RequestRecord>>,
    token: Option<String>,
    /// Pods with logs, and secrets.
    pods: Mutex<pods::Pods>,
    /// Woken after every request and every change.
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Runs `f` on the store under its lock, then wakes waiters.
    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut lock(&self.store));
        self.changed.notify_waiters();
        out
    }

    fn faults(&self) -> MutexGuard<'_, Vec<Fault>> {
        lock(&self.faults)
    }

    fn requests(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        lock(&self.requests)
    }
}

/// The fake API server, serving on 127.0.0.1 until dropped.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    namespace: String,
    token: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.with_store(Store::drop_watches);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The `ApiResource` of Argo Workflows.
pub fn workflow_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow");
    ApiResource::from_gvk_with_plural(&gvk, "workflows")
}

/// `Api<DynamicObject>` for Workflows in `namespace`.
pub fn workflows(client: kube::Client, namespace: &str) -> kube::Api<DynamicObject> {
    kube::Api::namespaced_with(client, namespace, &workflow_resource())
}

impl FakeKube {
    /// Starts with default [`Options`].
    pub async fn start() -> FakeKube {
        FakeKube::start_with(Options::default()).await
    }

    /// Starts on 127.0.0.1 at a free port.
    pub async fn start_with(options: Options) -> FakeKube {
        let schemas = if options.schema_checks {
            crate::argo_schemas()
        } else {
            None
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(schemas, options.history_limit)),
            faults: Mutex::default(),
            requests: Mutex::default(),
            token: options.token.clone(),
            pods: Mutex::default(),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 for the fake Kubernetes API");
        let addr = listener.local_addr().expect("the fake's local address");
        let router = http::router(Arc::clone(&shared));
        let mut tasks = vec![tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        })];
        if let Some(every) = options.bookmark_interval {
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    shared.with_store(Store::bookmark);
                }
            }));
        }
        FakeKube {
            shared,
            addr,
            namespace: options.namespace,
            token: options.token,
            tasks,
        }
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The routes, for serving in process (`kube::Client::new(router, namespace)`).
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.shared))
    }

    /// Whether bodies are checked against Argo's schemas (`../shared/argo` was found).
    pub fn schema_checked(&self) -> bool {
        lock(&self.shared.store).schema_checked()
    }

    /// A kubeconfig for this server (plain http, the token if any, the default namespace).
    pub fn kubeconfig(&self) -> String {
        let user = match &self.token {
            Some(token) => format!("{{token: {token:?}}}"),
            None => "{}".into(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\n\
             current-context: fake\nusers:\n- name: fake\n  user: {user}\npreferences: {{}}\n",
            url = self.url(),
            ns = self.namespace,
        )
    }

    /// Writes [`FakeKube::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A `kube::Client` connected through the socket, configured from the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig())
            .context("parsing the fake's kubeconfig")?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .context("loading the fake's kubeconfig")?;
        kube::Client::try_from(config).context("building a client for the fake")
    }

    /// A `kube::Client` that calls the routes in process, without a socket.
    pub fn client_in_process(&self) -> kube::Client {
        kube::Client::new(self.router(), self.namespace.clone())
    }

    // --- objects and the controller stand-in -------------------------------------------------

    /// One workflow as stored.
    pub fn get(&self, ns: &str, name: &str) -> Option<Value> {
        lock(&self.shared.store).get(ns, name).ok()
    }

    /// Every workflow, by namespace and name.
    pub fn workflows(&self) -> Vec<Value> {
        lock(&self.shared.store).all()
    }

    /// Creates a workflow as a `POST` would (same checks), emitting `ADDED`.
    pub fn create(&self, ns: &str, object: Value) -> anyhow::Result<Value> {
        Ok(self.shared.with_store(|s| s.create(ns, object, false))?)
    }

    /// Replaces `status` (as the Argo controller does), emitting `MODIFIED`.
    pub fn set_status(&self, ns: &str, name: &str, status: Value) -> anyhow::Result<Value> {
        self.update(ns, name, |wf| wf["status"] = status)
    }

    /// Changes a workflow with `f` (no schema checks), emitting `MODIFIED` unless nothing changed.
    pub fn update(
        &self,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Value> {
        Ok(self.shared.with_store(|s| {
            let mut next = s.get(ns, name)?;
            f(&mut next);
            s.update(ns, name, next)
        })?)
    }

    /// Deletes a workflow at once, finalizers or not (the TTL controller), emitting `DELETED`.
    pub fn delete_now(&self, ns: &str, name: &str) -> anyhow::Result<Value> {
        Ok(self.shared.with_store(|s| s.remove(ns, name))?)
    }

    /// A [`StatusBuilder`] for a stored workflow.
    pub fn status_builder(&self, ns: &str, name: &str) -> anyhow::Result<StatusBuilder> {
        let workflow = self
            .get(ns, name)
            .with_context(|| format!("no workflow {ns}/{name}"))?;
        StatusBuilder::for_workflow(&workflow)
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    // --- watches ------------------------------------------------------------------------------

    /// Cuts every open watch connection (the client sees a reset, then re-watches).
    pub fn drop_watches(&self) {
        self.shared.with_store(Store::drop_watches);
    }

    /// Sends a `BOOKMARK` at the current version to every watch that allows them.
    pub fn send_bookmarks(&self) {
        self.shared.with_store(Store::bookmark);
    }

    /// Forgets history: a watch or list page from an older version now gets `410 Expired`.
    pub fn compact(&self) {
        self.shared.with_store(Store::compact);
    }

    /// Drops every watch and expires every version they had seen, in one step (etcd compaction
    /// while the clients were disconnected): each re-watch gets `410 Expired` and relists.
    pub fn expire_history(&self) {
        self.shared.with_store(Store::expire);
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        lock(&self.shared.store).open_watches()
    }

    // --- faults and the request log -----------------------------------------------------------

    /// Adds a fault for the next matching requests (faults apply in the order added).
    pub fn inject(&self, fault: Fault) {
        self.shared.faults().push(fault);
    }

    /// Adds the pod Argo's controller would have made for node `node_name` (`ferry-7.train`,
    /// `ferry-7.train(1)`) of `workflow`, whose `main` container logged `log`. Returns its name.
    pub fn add_pod(&self, ns: &str, workflow: &str, node_name: &str, log: &str) -> String {
        let mut pods = lock(&self.shared.pods);
        let name = format!("{workflow}-{}", 1000 + pods.pods.len());
        let object = pods::pod_object(ns, &name, workflow, node_name);
        pods.pods.insert(
            (ns.to_owned(), name.clone()),
            pods::PodEntry {
                object,
                log: log.to_owned(),
            },
        );
        drop(pods);
        self.shared.changed.notify_waiters();
        name
    }

    /// Adds (or replaces) secret `name` in `ns` with these keys and values.
    pub fn add_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        lock(&self.shared.pods)
            .secrets
            .insert((ns.to_owned(), name.to_owned()), data);
    }

    /// Makes every secret read answer `403 Forbidden` (RBAC without `secrets get`).
    pub fn forbid_secrets(&self, forbidden: bool) {
        lock(&self.shared.pods).secrets_forbidden = forbidden;
    }

    /// Removes every pod (as pod garbage collection would).
    pub fn delete_pods(&self) {
        lock(&self.shared.pods).pods.clear();
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.shared.faults().clear();
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests().clone()
    }

    /// How many requests had this method and exactly this path.
    pub fn count(&self, method: Method, path: &str) -> usize {
        self.shared
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.requests().clear();
    }

    /// Waits until `cond` holds, re-checking after every request and change; panics with
    /// `what` and the request log when it has not held within 30 seconds.
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&FakeKube) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let log: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {}?{} -> {}", r.method, r.path, r.query, r.status))
                    .collect();
                panic!(
                    "fake Kubernetes API: gave up waiting for {what}; requests:\n{}",
                    log.join("\n")
                );
            }
        }
    }
}
