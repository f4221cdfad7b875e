//! The fake's HTTP surface: the routes of the Kubernetes API that `kube` uses for Argo
//! Workflows, one middleware that checks the bearer token, applies injected faults and logs
//! every request, and handlers that translate query parameters and bodies into store calls.
//!
//! Pods, their logs and secrets (for log tails) are served by the `pods` module.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::Shared;
use super::api_error::ApiError;
use super::faults::{self, FaultAction, RequestRecord, is_true};
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::store::{API_VERSION, Key, Preconditions};
use super::watch::{self, WatchRequest};

/// The largest request body the API server accepts (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

type Params = Query<HashMap<String, String>>;

/// The fake's routes over `shared`.
pub fn router(shared: Arc<Shared>) -> Router {
    const NS: &str = "/apis/argoproj.io/v1alpha1/namespaces/{ns}/workflows";
    Router::new()
        .route("/version", get(version))
        .route("/apis/argoproj.io/v1alpha1/workflows", get(list_all))
        .route(NS, get(list_namespace).post(create))
        .route(
            &format!("{NS}/{{name}}"),
            get(get_one).patch(patch).delete(delete),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(super::pods::list))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/log",
            get(super::pods::log),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(super::pods::secret),
        )
        .fallback(|req: Request| async move { ApiError::no_route(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), observe))
        .with_state(shared)
}

/// Checks the token, applies the first matching fault, serves, and logs the request.
async fn observe(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let at = std::time::Instant::now();
    // Creates and patches are small: kept whole for the body's digest, then passed on.
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body_sha256 = (!bytes.is_empty()).then(|| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    });
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    let mut record = RequestRecord {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        status: 0,
        fault: None,
        at,
        body_sha256,
    };
    record.fault = faults::take(&mut shared.faults(), &record);
    let response = if !authorized(shared.token.as_deref(), req.headers()) {
        ApiError::unauthorized().into_response()
    } else {
        match &record.fault {
            Some(FaultAction::TooManyRequests { retry_after_secs }) => {
                ApiError::too_many_requests(*retry_after_secs).into_response()
            }
            Some(FaultAction::InternalError) => {
                ApiError::internal("injected by the test").into_response()
            }
            Some(FaultAction::Invalid { message }) => {
                ApiError::invalid_message(message.clone()).into_response()
            }
            Some(FaultAction::Delay(d)) => {
                tokio::time::sleep(*d).await;
                next.run(req).await
            }
            None => next.run(req).await,
        }
    };
    record.status = response.status().as_u16();
    shared.requests().push(record);
    shared.changed.notify_waiters();
    response
}

fn authorized(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given == token)
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-fake",
        "platform": "linux/amd64",
    }))
    .into_response()
}

async fn list_all(State(shared): State<Arc<Shared>>, Query(q): Params) -> Response {
    list_or_watch(&shared, None, &q).unwrap_or_else(IntoResponse::into_response)
}

async fn list_namespace(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Params,
) -> Response {
    list_or_watch(&shared, Some(ns), &q).unwrap_or_else(IntoResponse::into_response)
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| is_true(v))
}

fn list_or_watch(
    shared: &Arc<Shared>,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let selectors = Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
    };
    if flag(q, "watch") {
        let timeout = match q.get("timeoutSeconds") {
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
            })?)),
            None => None,
        };
        let req = WatchRequest {
            namespace: ns,
            selectors,
            resource_version: q.get("resourceVersion").cloned(),
            bookmarks: flag(q, "allowWatchBookmarks"),
            send_initial_events: flag(q, "sendInitialEvents"),
            timeout,
        };
        let (first, rx) = shared.with_store(|s| watch::start(s, &req))?;
        let body = watch::body(Arc::clone(shared), req, first, rx);
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    list(shared, ns.as_deref(), &selectors, q)
}

fn list(
    shared: &Shared,
    ns: Option<&str>,
    selectors: &Selectors,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let limit = match q.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        )
        .filter(|l| *l > 0),
        None => None,
    };
    let (at, start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = decode_continue(token)?;
            (Some(rv), Some(key))
        }
        None if q.get("resourceVersionMatch").is_some_and(|m| m == "Exact") => {
            let rv = q
                .get("resourceVersion")
                .and_then(|rv| rv.parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("resourceVersionMatch=Exact needs a resourceVersion")
                })?;
            (Some(rv), None)
        }
        None => (None, None),
    };
    let page = shared.with_store(|s| s.page(ns, selectors, at, start.as_ref(), limit));
    let page = page.map_err(|e| match (e.code, &start) {
        (410, Some(_)) => ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        ),
        _ => e,
    })?;
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if page.remaining > 0
        && let Some(last) = &page.last
    {
        metadata["continue"] = encode_continue(page.rv, last).into();
        if selectors.is_empty() {
            metadata["remainingItemCount"] = page.remaining.into();
        }
    }
    let list = json!({
        "apiVersion": API_VERSION,
        "kind": "WorkflowList",
        "metadata": metadata,
        "items": page.items,
    });
    Ok(axum::Json(list).into_response())
}

/// A continue token: the version the list is read at and the key to continue after.
fn encode_continue(rv: u64, (ns, name): &Key) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": ns, "name": name});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["ns"].as_str().ok_or_else(bad)?.to_owned();
    let name = v["name"].as_str().ok_or_else(bad)?.to_owned();
    Ok((rv, (ns, name)))
}

/// The object with `code`, or the error's Status.
fn answer(code: StatusCode, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(object) => (code, axum::Json(object)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn json_body(bytes: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn dry_run(q: &HashMap<String, String>) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Response {
    let created =
        json_body(&body).and_then(|body| shared.with_store(|s| s.create(&ns, body, dry_run(&q))));
    answer(StatusCode::CREATED, created)
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    answer(StatusCode::OK, shared.with_store(|s| s.get(&ns, &name)))
}

async fn patch(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media != "application/merge-patch+json" {
        return ApiError::unsupported_patch(content_type).into_response();
    }
    let patched =
        json_body(&body).and_then(|p| shared.with_store(|s| s.merge_patch(&ns, &name, &p)));
    answer(StatusCode::OK, patched)
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let options = if body.is_empty() {
        Ok(Value::Null)
    } else {
        json_body(&body)
    };
    let deleted = options.and_then(|o| {
        let pre = Preconditions {
            uid: o["preconditions"]["uid"].as_str().map(str::to_owned),
            resource_version: o["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
        };
        let dry_run = o["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"));
        if dry_run {
            return shared.with_store(|s| s.get(&ns, &name));
        }
        shared.with_store(|s| s.delete(&ns, &name, &pre))
    });
    answer(StatusCode::OK, deleted)
}
