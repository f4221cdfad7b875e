//! The fake Kubernetes API, driven by the real `kube` client and kube-runtime's watcher: what
//! ferry's Argo executor will rely on (create with 409/422, get, list with selectors and pages,
//! merge patch, delete, watch with replay, bookmarks, dropped connections and `410` relists,
//! injected `429`/`500`), and the Argo status documents of the controller stand-in.
//!
//! The schema checks need `../shared/argo`; without it those parts print a SKIPPED line.

use std::pin::pin;
use std::time::Duration;

use axum::http::{Method, Request, StatusCode};
use ferry_engine::pipeline::EventKind;
use ferry_tests::fake_k8s::{
    self, FakeKube, Fault, FaultAction, NodePhase, Options, StatusBuilder, TaskOutcome,
    WorkflowPhase, decompress_nodes, node_id,
};
use ferry_tests::{argo_schemas, branch_context, example, profile, render};
use futures_util::StreamExt;
use kube::api::{
    DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower::ServiceExt;

const NS: &str = "ml-team";
const COLLECTION: &str = "/apis/argoproj.io/v1alpha1/namespaces/ml-team/workflows";

/// The `train-eval-deploy` example rendered for a push to main as run `run_id`.
fn manifest(run_id: u64) -> Value {
    let pipeline = example("train-eval-deploy").load();
    let mut ctx = branch_context(&pipeline, EventKind::Push, "main");
    ctx.run_id = run_id;
    render(&pipeline, &profile(), &ctx, "train-eval-deploy").manifest
}

fn object(manifest: Value) -> DynamicObject {
    serde_json::from_value(manifest).unwrap_or_else(|e| panic!("not a DynamicObject: {e}"))
}

async fn fake_and_api() -> (FakeKube, Api<DynamicObject>) {
    let fake = FakeKube::start().await;
    let client = fake.client().await.unwrap_or_else(|e| panic!("{e:#}"));
    let api = fake_k8s::workflows(client, NS);
    (fake, api)
}

async fn create(api: &Api<DynamicObject>, run_id: u64) -> DynamicObject {
    api.create(&PostParams::default(), &object(manifest(run_id)))
        .await
        .unwrap_or_else(|e| panic!("creating ferry-{run_id}: {e}"))
}

/// The `Status` of a failed call.
fn api_status<T: std::fmt::Debug>(result: kube::Result<T>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected a Kubernetes Status error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Create, get, list, patch, delete
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn crud_through_the_kube_client() {
    let (fake, api) = fake_and_api().await;
    let created = create(&api, 42).await;
    assert_eq!(created.name_any(), "ferry-42");
    let meta = &created.metadata;
    assert!(
        meta.uid.as_deref().is_some_and(|u| u.len() == 36),
        "{meta:?}"
    );
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv: u64 = created
        .resource_version()
        .and_then(|r| r.parse().ok())
        .unwrap_or_default();
    assert_eq!(rv, fake.resource_version());

    let got = api.get("ferry-42").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.metadata.uid, meta.uid);
    assert_eq!(got.data["spec"], manifest(42)["spec"]);

    create(&api, 43).await;
    let list = api
        .list(&ListParams::default().labels("ferry.dev/run-id=42"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        list.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["ferry-42"]
    );
    assert_eq!(
        list.metadata.resource_version,
        Some(fake.resource_version().to_string())
    );

    let patch = json!({"spec": {"shutdown": "Terminate"}, "metadata": {"labels": {"ferry.dev/cancelled": "true"}}});
    let patched = api
        .patch("ferry-42", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.data["spec"]["shutdown"], "Terminate");
    assert_eq!(
        patched.labels()["ferry.dev/run-id"],
        "42",
        "merge patch keeps other labels"
    );
    assert_eq!(patched.metadata.generation, Some(2));
    assert!(patched.resource_version() > created.resource_version());

    let deleted = api
        .delete("ferry-42", &DeleteParams::background())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = deleted
        .right()
        .unwrap_or_else(|| panic!("an immediate deletion answers a Status"));
    assert!(status.is_success(), "{status:?}");
    let gone = api_status(api.get("ferry-42").await);
    assert!(gone.is_not_found(), "{gone:?}");
    assert_eq!(gone.message, "workflows.argoproj.io \"ferry-42\" not found");
    assert_eq!(fake.workflows().len(), 1);
    assert_eq!(fake.count(Method::POST, COLLECTION), 2);
}

#[tokio::test]
async fn in_process_client_needs_no_socket() {
    let fake = FakeKube::start().await;
    let api = fake_k8s::workflows(fake.client_in_process(), NS);
    create(&api, 7).await;
    let got = api.get("ferry-7").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.labels()["ferry.dev/run-id"], "7");
}

#[tokio::test]
async fn create_answers_409_and_422_like_the_api_server() {
    let (_fake, api) = fake_and_api().await;
    create(&api, 42).await;
    let again = api_status(
        api.create(&PostParams::default(), &object(manifest(42)))
            .await,
    );
    assert_eq!(
        (again.code, again.reason.as_str()),
        (409, "AlreadyExists"),
        "{again:?}"
    );
    assert!(again.is_already_exists());

    let mut bad_name = manifest(1);
    bad_name["metadata"]["name"] = "Ferry_1".into();
    let err = api_status(api.create(&PostParams::default(), &object(bad_name)).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .contains("metadata.name: Invalid value: \"Ferry_1\""),
        "{}",
        err.message
    );

    let mut bad_label = manifest(2);
    bad_label["metadata"]["labels"]["ferry.dev/branch"] = "feature/x".into();
    let err = api_status(api.create(&PostParams::default(), &object(bad_label)).await);
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("metadata.labels.ferry.dev/branch"),
        "{}",
        err.message
    );

    let mut generated = manifest(3);
    let meta = generated["metadata"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("metadata"));
    meta.remove("name");
    meta.insert("generateName".into(), "ferry-3-".into());
    let made = api
        .create(&PostParams::default(), &object(generated))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = made.name_any();
    assert!(
        name.starts_with("ferry-3-") && name.len() == "ferry-3-".len() + 5,
        "{name}"
    );
    assert!(fake_k8s::is_dns1123_subdomain(&name));

    let mut nameless = manifest(4);
    nameless["metadata"]
        .as_object_mut()
        .map(|m| m.remove("name"));
    let err = api_status(api.create(&PostParams::default(), &object(nameless)).await);
    assert!(
        err.message.contains("name or generateName is required"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn create_checks_the_body_against_argos_schemas() {
    let (fake, api) = fake_and_api().await;
    if !fake.schema_checked() {
        println!("SKIPPED: ../shared/argo not found; the fake runs without schema checks");
        return;
    }
    let mut broken = manifest(5);
    broken["spec"]["templates"][1]["container"]["imagePullPolicee"] = "Always".into();
    broken["spec"]["entrypoint"] = json!(7);
    let err = api_status(api.create(&PostParams::default(), &object(broken)).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{err:?}");
    assert!(
        err.message
            .starts_with("Workflow.argoproj.io \"ferry-5\" is invalid: ["),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("spec.templates[1].container"),
        "{}",
        err.message
    );
    assert!(err.message.contains("imagePullPolicee"), "{}", err.message);
    assert!(err.message.contains("spec.entrypoint"), "{}", err.message);
    let causes = err.details.map(|d| d.causes).unwrap_or_default();
    assert!(
        causes.iter().any(|c| c.field == "spec.entrypoint"),
        "{causes:?}"
    );
    assert!(
        fake.get(NS, "ferry-5").is_none(),
        "an invalid body is not stored"
    );

    let invalid_patch = json!({"spec": {"templates": [{"name": "x", "bogus": 1}]}});
    create(&api, 6).await;
    let err = api_status(
        api.patch(
            "ferry-6",
            &PatchParams::default(),
            &Patch::Merge(&invalid_patch),
        )
        .await,
    );
    assert_eq!(
        err.code, 422,
        "a patch that breaks the schema is refused too"
    );
    assert!(err.message.contains("bogus"), "{}", err.message);
}

#[tokio::test]
async fn patch_types_and_preconditions() {
    let (fake, api) = fake_and_api().await;
    let created = create(&api, 8).await;
    let strategic = api_status(
        api.patch(
            "ferry-8",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await,
    );
    assert_eq!(strategic.code, 415, "{strategic:?}");

    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"suspend": true}});
    let conflict = api_status(
        api.patch("ferry-8", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

    let noop = json!({"spec": {"entrypoint": created.data["spec"]["entrypoint"]}});
    let rv = fake.resource_version();
    api.patch("ferry-8", &PatchParams::default(), &Patch::Merge(&noop))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.resource_version(), rv, "a no-op patch changes nothing");

    let missing = api_status(
        api.patch("ferry-99", &PatchParams::default(), &Patch::Merge(&noop))
            .await,
    );
    assert!(missing.is_not_found());
}

#[tokio::test]
async fn delete_waits_for_finalizers() {
    let (fake, api) = fake_and_api().await;
    let mut with_finalizer = manifest(9);
    with_finalizer["metadata"]["finalizers"] = json!(["workflows.argoproj.io/artifact-gc"]);
    api.create(&PostParams::default(), &object(with_finalizer))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = api
        .delete("ferry-9", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pending = answer
        .left()
        .unwrap_or_else(|| panic!("a deletion held by a finalizer answers the object"));
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(fake.get(NS, "ferry-9").is_some());
    let release = json!({"metadata": {"finalizers": null}});
    api.patch("ferry-9", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fake.get(NS, "ferry-9").is_none(),
        "gone once the last finalizer is removed"
    );

    create(&api, 10).await;
    let uid = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let refused = api_status(api.delete("ferry-10", &uid).await);
    assert_eq!(refused.code, 409);
}

#[tokio::test]
async fn list_selectors_and_pages() {
    let (fake, api) = fake_and_api().await;
    for id in 1..=5 {
        create(&api, id).await;
    }
    let names = |list: kube::core::ObjectList<DynamicObject>| {
        list.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>()
    };
    for (selector, expected) in [
        ("ferry.dev/run-id in (1,3)", vec!["ferry-1", "ferry-3"]),
        (
            "ferry.dev/run-id notin (1,2,3),ferry.dev/project",
            vec!["ferry-4", "ferry-5"],
        ),
        ("!ferry.dev/project", vec![]),
        (
            "ferry.dev/run-id!=2,ferry.dev/run-id!=4,ferry.dev/run-id!=5",
            vec!["ferry-1", "ferry-3"],
        ),
    ] {
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(list), expected, "{selector}");
    }
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=ferry-2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(by_name), ["ferry-2"]);
    let bad = api_status(
        api.list(&ListParams::default().fields("status.phase=Running"))
            .await,
    );
    assert_eq!(bad.code, 400);

    // Pages are read at the first page's version: a change in between does not show.
    let first = api
        .list(&ListParams::default().limit(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let token = first.metadata.continue_.clone().unwrap_or_default();
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    fake.delete_now(NS, "ferry-4")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut seen = names(first);
    let mut token = Some(token);
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        token = page.metadata.continue_.clone();
        seen.extend(names(page));
    }
    assert_eq!(
        seen,
        ["ferry-1", "ferry-2", "ferry-3", "ferry-4", "ferry-5"]
    );

    // Once history is compacted, an old continue token expires.
    let first = api
        .list(&ListParams::default().limit(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fake.delete_now(NS, "ferry-5")
        .unwrap_or_else(|e| panic!("{e:#}"));
    fake.compact();
    let token = first.metadata.continue_.unwrap_or_default();
    let expired = api_status(
        api.list(&ListParams::default().limit(1).continue_token(&token))
            .await,
    );
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));

    let all = fake_k8s::workflows(
        fake.client().await.unwrap_or_else(|e| panic!("{e:#}")),
        "other",
    );
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .is_empty()
    );
    let everywhere: Api<DynamicObject> =
        Api::all_with(api.clone().into_client(), &fake_k8s::workflow_resource());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .len(),
        3
    );
}

// ---------------------------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------------------------

type WatcherItem = Result<Event<DynamicObject>, watcher::Error>;

/// A kube-runtime watcher driven in a task; its events arrive here in order.
struct Watched {
    rx: mpsc::UnboundedReceiver<WatcherItem>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    fn spawn(api: Api<DynamicObject>, config: watcher::Config) -> Watched {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = pin!(watcher::watcher(api, config));
            while let Some(item) = stream.next().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        Watched { rx, task }
    }

    /// Events up to and including the first for which `done` holds (30 s at most).
    async fn until(&mut self, what: &str, done: impl Fn(&WatcherItem) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.rx.recv()).await;
            let Ok(Some(item)) = next else {
                panic!("watcher: no {what}; saw {seen:?}");
            };
            seen.push(describe(&item));
            if done(&item) {
                return seen;
            }
        }
    }
}

fn describe(item: &WatcherItem) -> String {
    match item {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply {}", o.name_any()),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!(
            "Apply {} {}",
            o.name_any(),
            o.data["status"]["phase"].as_str().unwrap_or("-")
        ),
        Ok(Event::Delete(o)) => format!("Delete {}", o.name_any()),
        Err(e) => format!("Err {e}"),
    }
}

fn is(prefix: &'static str) -> impl Fn(&WatcherItem) -> bool {
    move |item| describe(item).starts_with(prefix)
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted_for_its_selector() {
    let (fake, api) = fake_and_api().await;
    create(&api, 1).await;
    let mut watched = Watched::spawn(
        api.clone(),
        watcher::Config::default().labels("ferry.dev/run-id in (1,2)"),
    );
    assert_eq!(
        watched.until("InitDone", is("InitDone")).await,
        ["Init", "InitApply ferry-1", "InitDone"]
    );
    fake.wait_until("the watch is open", |f| f.open_watches() == 1)
        .await;

    create(&api, 3).await; // not selected
    create(&api, 2).await;
    let running = fake
        .status_builder(NS, "ferry-2")
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::running())
        .build();
    fake.set_status(NS, "ferry-2", running)
        .unwrap_or_else(|e| panic!("{e:#}"));
    fake.delete_now(NS, "ferry-2")
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        watched.until("Delete ferry-2", is("Delete")).await,
        ["Apply ferry-2 -", "Apply ferry-2 Running", "Delete ferry-2"]
    );
    // Relabelled out of the selector: a DELETED for this watch.
    fake.update(NS, "ferry-1", |wf| {
        wf["metadata"]["labels"]["ferry.dev/run-id"] = "100".into()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        watched.until("Delete ferry-1", is("Delete")).await,
        ["Delete ferry-1"]
    );
}

#[tokio::test]
async fn watcher_rewatches_from_its_version_after_a_dropped_connection() {
    let (fake, api) = fake_and_api().await;
    create(&api, 1).await;
    let mut watched = Watched::spawn(api.clone(), watcher::Config::default());
    watched.until("InitDone", is("InitDone")).await;
    fake.wait_until("the watch is open", |f| f.open_watches() == 1)
        .await;
    let rv = fake.resource_version();

    fake.drop_watches();
    create(&api, 2).await;
    let seen = watched.until("Apply ferry-2", is("Apply ferry-2")).await;
    assert!(
        seen.iter().all(|e| !e.starts_with("Init")),
        "no relist after a drop: {seen:?}"
    );
    let watches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .collect();
    assert!(watches.len() >= 2, "{watches:?}");
    assert!(
        watches[1..]
            .iter()
            .all(|w| w.param("resourceVersion") == Some(rv.to_string())),
        "re-watched from the version it had: {watches:?}"
    );
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET && !r.is_watch())
        .count();
    assert_eq!(lists, 1);
}

#[tokio::test]
async fn watcher_relists_after_410_expired() {
    let (fake, api) = fake_and_api().await;
    create(&api, 1).await;
    let mut watched = Watched::spawn(api.clone(), watcher::Config::default());
    watched.until("InitDone", is("InitDone")).await;
    fake.wait_until("the watch is open", |f| f.open_watches() == 1)
        .await;

    fake.expire_history();
    let seen = watched.until("a relist", is("InitDone")).await;
    assert!(
        seen[0].starts_with("Err") && seen[0].contains("Expired"),
        "{seen:?}"
    );
    assert_eq!(seen[1..], ["Init", "InitApply ferry-1", "InitDone"]);
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET && !r.is_watch())
        .count();
    assert_eq!(lists, 2, "listed again after 410");
}

#[tokio::test]
async fn raw_watch_replays_history_and_reports_expired_versions() {
    let (fake, api) = fake_and_api().await;
    let first = create(&api, 1).await;
    let rv = first.resource_version().unwrap_or_default();
    create(&api, 2).await;
    fake.delete_now(NS, "ferry-1")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match stream.next().await {
            Some(Ok(WatchEvent::Added(o))) => kinds.push(format!("ADDED {}", o.name_any())),
            Some(Ok(WatchEvent::Deleted(o))) => kinds.push(format!("DELETED {}", o.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED ferry-2", "DELETED ferry-1"]);

    fake.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (410, "Expired"),
                "{status:?}"
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the ERROR"
    );
}

/// The first event of a raw watch from `rv`.
async fn first_event(api: &Api<DynamicObject>, rv: &str) -> WatchEvent<DynamicObject> {
    let stream = api.watch(&WatchParams::default(), rv).await;
    let mut stream = stream.unwrap_or_else(|e| panic!("{e}")).boxed();
    match stream.next().await {
        Some(Ok(event)) => event,
        other => panic!("no first event from {rv}: {other:?}"),
    }
}

#[tokio::test]
async fn a_history_limit_expires_versions_it_no_longer_holds() {
    let options = Options {
        history_limit: Some(2),
        ..Options::default()
    };
    let fake = FakeKube::start_with(options).await;
    let api = fake_k8s::workflows(fake.client().await.unwrap_or_else(|e| panic!("{e:#}")), NS);
    let rv = create(&api, 1).await.resource_version().unwrap_or_default();
    create(&api, 2).await;
    create(&api, 3).await;
    match first_event(&api, &rv).await {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "ferry-2"),
        other => panic!("expected ADDED ferry-2, got {other:?}"),
    }
    create(&api, 4).await;
    match first_event(&api, &rv).await {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_on_demand_periodic_and_for_streaming_lists() {
    let (fake, api) = fake_and_api().await;
    create(&api, 1).await;
    let rv = fake.resource_version().to_string();
    let mut with = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let mut without = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    fake.wait_until("two open watches", |f| f.open_watches() == 2)
        .await;
    fake.send_bookmarks();
    create(&api, 2).await;
    match with.next().await {
        Some(Ok(WatchEvent::Bookmark(b))) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
    match without.next().await {
        Some(Ok(WatchEvent::Added(o))) => {
            assert_eq!(o.name_any(), "ferry-2", "no bookmark unless allowed")
        }
        other => panic!("expected ADDED, got {other:?}"),
    }

    let periodic = FakeKube::start_with(Options {
        bookmark_interval: Some(Duration::from_millis(20)),
        ..Options::default()
    })
    .await;
    let api2 = fake_k8s::workflows(
        periodic.client().await.unwrap_or_else(|e| panic!("{e:#}")),
        NS,
    );
    let mut stream = api2
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    assert!(matches!(
        stream.next().await,
        Some(Ok(WatchEvent::Bookmark(_)))
    ));

    let mut streaming = Watched::spawn(api.clone(), watcher::Config::default().streaming_lists());
    let seen = streaming.until("InitDone", is("InitDone")).await;
    assert_eq!(
        seen,
        ["Init", "InitApply ferry-1", "InitApply ferry-2", "InitDone"]
    );
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.is_watch() || r.method != Method::GET),
        "no list with streaming lists"
    );
}

#[tokio::test]
async fn watch_timeout_ends_the_stream_and_the_watcher_rewatches_without_relisting() {
    let (fake, api) = fake_and_api().await;
    let _watched = Watched::spawn(api.clone(), watcher::Config::default().timeout(1));
    fake.wait_until("a second watch", |f| {
        f.requests().iter().filter(|r| r.is_watch()).count() >= 2
    })
    .await;
    let requests = fake.requests();
    assert_eq!(
        requests.iter().filter(|r| !r.is_watch()).count(),
        1,
        "one list: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.is_watch())
            .all(|r| r.param("timeoutSeconds").as_deref() == Some("1"))
    );
}

// ---------------------------------------------------------------------------------------------
// Faults, the token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn injected_faults_reach_the_client() {
    let (fake, api) = fake_and_api().await;
    // kube's own client retries 429 (honouring Retry-After): the log shows the retry.
    fake.inject(
        Fault::too_many_requests(0)
            .method(Method::POST)
            .path_contains("/workflows"),
    );
    create(&api, 1).await;
    let posts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST)
        .collect();
    assert_eq!(
        posts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 201]
    );
    assert_eq!(
        posts[0].fault,
        Some(FaultAction::TooManyRequests {
            retry_after_secs: 0
        })
    );

    // 500 is not retried: the caller sees it.
    fake.inject(Fault::internal_error().times(2).method(Method::GET));
    let err = api_status(api.get("ferry-1").await);
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    assert_eq!(api_status(api.list(&ListParams::default()).await).code, 500);
    api.get("ferry-1")
        .await
        .unwrap_or_else(|e| panic!("only two were injected: {e}"));

    // Without kube's retry layer (in process), the 429 itself reaches the caller.
    let raw = fake_k8s::workflows(fake.client_in_process(), NS);
    fake.inject(Fault::too_many_requests(3));
    let err = api_status(raw.get("ferry-1").await);
    assert_eq!((err.code, err.reason.as_str()), (429, "TooManyRequests"));

    fake.inject(Fault::delay(Duration::from_millis(10)).path_contains("ferry-1"));
    raw.get("ferry-1")
        .await
        .unwrap_or_else(|e| panic!("a delayed request still answers: {e}"));
    let last = fake
        .requests()
        .pop()
        .unwrap_or_else(|| panic!("no request logged"));
    assert_eq!(
        last.fault,
        Some(FaultAction::Delay(Duration::from_millis(10)))
    );
    assert_eq!(fake.count(Method::GET, &format!("{COLLECTION}/ferry-1")), 4);
}

#[tokio::test]
async fn a_token_in_the_kubeconfig_is_required_and_sent() {
    let fake = FakeKube::start_with(Options {
        token: Some("s3cret".into()),
        namespace: NS.into(),
        ..Options::default()
    })
    .await;
    let dir = ferry_tests::TempDir::new("kubeconfig");
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("{e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.default_namespace, NS);
    let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("{e}"));
    let api: Api<DynamicObject> =
        Api::default_namespaced_with(client, &fake_k8s::workflow_resource());
    assert!(api.list(&ListParams::default()).await.is_ok());

    let anonymous = Request::get(COLLECTION)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = fake
        .router()
        .oneshot(anonymous)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// The controller stand-in's status documents
// ---------------------------------------------------------------------------------------------

/// The stored workflow with this status, checked against Argo's strict schemas when present.
fn assert_schema_valid(workflow: &Value, status: &Value) {
    let Some(schemas) = argo_schemas() else {
        return;
    };
    let mut whole = workflow.clone();
    whole["status"] = status.clone();
    let errors = schemas.errors(&whole);
    assert!(
        errors.is_empty(),
        "the status fails Argo's strict schemas:\n{}",
        errors.join("\n")
    );
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_object()
        .and_then(|nodes| nodes.values().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {status:#}"))
}

#[tokio::test]
async fn status_of_a_failed_run_with_retries() {
    let fake = FakeKube::start().await;
    let stored = fake
        .create(NS, manifest(12))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = fake
        .status_builder(NS, "ferry-12")
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::succeeded().attempts(2))
        .task("evaluate", TaskOutcome::failed("accuracy 0.81 below 0.92"))
        .task("deploy", TaskOutcome::omitted())
        .build();
    assert_schema_valid(&stored, &status);
    assert_eq!(status["phase"], "Failed");
    let train = node(&status, "ferry-12.train");
    assert_eq!(
        (train["type"].as_str(), train["phase"].as_str()),
        (Some("Retry"), Some("Succeeded"))
    );
    assert_eq!(train["id"], node_id("ferry-12", "ferry-12.train"));
    let attempts: Vec<&Value> = ["ferry-12.train(0)", "ferry-12.train(1)"]
        .iter()
        .map(|n| node(&status, n))
        .collect();
    assert_eq!(
        train["children"],
        json!([attempts[0]["id"], attempts[1]["id"]])
    );
    assert_eq!(attempts[0]["phase"], "Failed");
    assert_eq!(attempts[1]["displayName"], "train(1)");
    assert_eq!(attempts[1]["nodeFlag"]["retried"], true);
    let evaluate = node(&status, "ferry-12.evaluate");
    assert_eq!(
        attempts[1]["children"],
        json!([evaluate["id"]]),
        "the dependent hangs off the last attempt"
    );
    // evaluate's retryStrategy (limit 1, Always) was used up: two attempts, as Argo would.
    assert_eq!(evaluate["message"], "No more retries left");
    let last = node(&status, "ferry-12.evaluate(1)");
    assert_eq!(
        (last["phase"].as_str(), last["message"].as_str()),
        (Some("Failed"), Some("accuracy 0.81 below 0.92"))
    );
    assert_eq!(
        node(&status, "ferry-12.evaluate(0)")["message"],
        "Error (exit code 1)"
    );
    let deploy = node(&status, "ferry-12.deploy");
    assert_eq!(
        (deploy["type"].as_str(), deploy["phase"].as_str()),
        (Some("Skipped"), Some(NodePhase::Omitted.as_str()))
    );
    let root = &status["nodes"]["ferry-12"];
    assert_eq!(
        (root["type"].as_str(), root["phase"].as_str()),
        (Some("DAG"), Some("Failed"))
    );
    assert_eq!(
        status["message"],
        format!(
            "child '{}' failed",
            evaluate["id"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(status["progress"], "4/4");

    let watched = fake
        .set_status(NS, "ferry-12", status.clone())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(watched["status"], status);
}

#[tokio::test]
async fn status_of_a_succeeded_run_with_a_skipped_deploy_and_metrics() {
    let workflow = {
        let mut w = manifest(13);
        w["metadata"]["creationTimestamp"] = "2026-03-01T10:00:00Z".into();
        w
    };
    let builder = StatusBuilder::for_workflow(&workflow)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::succeeded())
        .task(
            "evaluate",
            TaskOutcome::succeeded().metrics(&json!({"accuracy": 0.9, "loss": 0.4})),
        )
        .task("deploy", TaskOutcome::skipped());
    assert_eq!(builder.workflow_phase(), WorkflowPhase::Succeeded);
    let status = builder.clone().build();
    assert_schema_valid(&workflow, &status);
    assert_eq!(status["startedAt"], "2026-03-01T10:00:00Z");
    let evaluate = node(&status, "ferry-13.evaluate(0)");
    let metrics = &evaluate["outputs"]["parameters"][0];
    assert_eq!(metrics["name"], "metrics");
    let parsed: Value =
        serde_json::from_str(metrics["value"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(parsed["accuracy"], 0.9);
    assert_eq!(
        node(&status, "ferry-13.evaluate")["outputs"],
        evaluate["outputs"],
        "a Retry node copies its outputs"
    );
    let deploy = node(&status, "ferry-13.deploy");
    assert_eq!(
        (deploy["phase"].as_str(), deploy["message"].as_str()),
        (Some("Skipped"), Some("when 'false' evaluated false"))
    );

    let compressed = builder.clone().compressed().build();
    assert!(compressed.get("nodes").is_none());
    let nodes = decompress_nodes(compressed["compressedNodes"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(nodes, status["nodes"]);
    let offloaded = builder.offloaded().build();
    assert!(offloaded.get("nodes").is_none() && offloaded.get("compressedNodes").is_none());
    assert!(
        offloaded["offloadNodeStatusVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("fnv:"))
    );
    assert_schema_valid(&workflow, &offloaded);
}

#[tokio::test]
async fn status_while_running_and_pending() {
    let workflow = manifest(14);
    let running = StatusBuilder::for_workflow(&workflow)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::running().attempts(3))
        .build();
    assert_schema_valid(&workflow, &running);
    assert_eq!(running["phase"], "Running");
    assert!(running.get("finishedAt").is_none());
    assert_eq!(node(&running, "ferry-14.train")["phase"], "Running");
    assert_eq!(node(&running, "ferry-14.train(2)")["phase"], "Running");
    assert_eq!(running["progress"], "2/3");
    let pending = StatusBuilder::for_workflow(&workflow)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .phase(WorkflowPhase::Pending)
        .message("Workload is waiting for the queue")
        .build();
    assert_schema_valid(&workflow, &pending);
    assert_eq!(pending["phase"], "Pending");
    let errored = StatusBuilder::for_workflow(&workflow)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::errored("pod deleted"))
        .build();
    assert_eq!(errored["phase"], "Error");
}

#[tokio::test]
async fn status_with_a_suspended_approval_gate() {
    let mut workflow = manifest(15);
    let templates = workflow["spec"]["templates"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("templates"));
    templates.push(json!({"name": "approve", "suspend": {}}));
    let dag = templates[0]["dag"]["tasks"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("the DAG comes first"));
    dag.push(json!({"name": "approve", "template": "approve", "depends": "evaluate.Succeeded"}));
    let status = StatusBuilder::for_workflow(&workflow)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .task("train", TaskOutcome::succeeded())
        .task("evaluate", TaskOutcome::succeeded())
        .task("approve", TaskOutcome::running())
        .build();
    assert_schema_valid(&workflow, &status);
    assert_eq!(status["phase"], "Running");
    let approve = node(&status, "ferry-15.approve");
    assert_eq!(
        (approve["type"].as_str(), approve["phase"].as_str()),
        (Some("Suspend"), Some("Running"))
    );
    assert!(approve.get("finishedAt").is_none());
    assert_eq!(
        node(&status, "ferry-15.evaluate(0)")["children"],
        json!([approve["id"]])
    );
    assert_eq!(status["progress"], "2/2", "a Suspend node is no pod");
}
