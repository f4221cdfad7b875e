//! Pods, their logs and secrets, as far as ferry reads them for log tails: list pods of a
//! namespace by label selector, `GET .../pods/{name}/log` (`container`, `tailLines`,
//! `limitBytes`), and `GET .../secrets/{name}`. The controller stand-in adds them
//! ([`super::FakeKube::add_pod`], [`super::FakeKube::add_secret`]); secrets can be made
//! forbidden ([`super::FakeKube::forbid_secrets`]) as with RBAC that lacks `secrets get`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::api_error::ApiError;
use super::selector::LabelSelector;
use super::{Shared, lock};

/// One pod: its object and the log of its `main` container.
#[derive(Debug, Clone)]
pub(crate) struct PodEntry {
    pub object: Value,
    pub log: String,
}

/// Pods and secrets by (namespace, name).
#[derive(Debug, Default)]
pub(crate) struct Pods {
    pub pods: BTreeMap<(String, String), PodEntry>,
    pub secrets: BTreeMap<(String, String), BTreeMap<String, String>>,
    pub secrets_forbidden: bool,
}

/// The pod object of an Argo workflow's node (labels and annotation as Argo's controller sets).
pub(crate) fn pod_object(ns: &str, name: &str, workflow: &str, node_name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": { "workflows.argoproj.io/workflow": workflow },
            "annotations": { "workflows.argoproj.io/node-name": node_name },
        },
        "spec": { "containers": [ { "name": "wait" }, { "name": "main" } ] },
        "status": { "phase": "Failed" },
    })
}

fn not_found(kind: &str, name: &str) -> ApiError {
    let mut e = ApiError::no_route(name);
    e.message = format!("{kind} \"{name}\" not found");
    e.details = Some(json!({"name": name, "kind": kind}));
    e
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let selector = match LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let pods = lock(&shared.pods);
    let items: Vec<Value> = pods
        .pods
        .iter()
        .filter(|((n, _), p)| *n == ns && selector.matches(&p.object))
        .map(|(_, p)| p.object.clone())
        .collect();
    axum::Json(json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": { "resourceVersion": "1" },
        "items": items,
    }))
    .into_response()
}

pub(crate) async fn log(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let pods = lock(&shared.pods);
    let Some(pod) = pods.pods.get(&(ns, name.clone())) else {
        return not_found("pods", &name).into_response();
    };
    match q.get("container").map(String::as_str) {
        Some("main") => {}
        Some(other) => {
            return ApiError::bad_request(format!("container {other} is not valid for pod {name}"))
                .into_response();
        }
        None => {
            return ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [wait main]"
            ))
            .into_response();
        }
    }
    let mut text = pod.log.clone();
    if let Some(n) = q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(n);
        text = lines[skip..].iter().map(|l| format!("{l}\n")).collect();
    }
    if let Some(n) = q.get("limitBytes").and_then(|n| n.parse::<usize>().ok()) {
        // The API server keeps the first bytes.
        let mut cut = n.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

pub(crate) async fn secret(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let pods = lock(&shared.pods);
    if pods.secrets_forbidden {
        let mut e = ApiError::unauthorized();
        e.code = 403;
        e.reason = "Forbidden";
        e.message = format!(
            "secrets \"{name}\" is forbidden: User \"system:serviceaccount:ferry:ferry\" cannot get \
             resource \"secrets\" in API group \"\" in the namespace \"{ns}\""
        );
        return e.into_response();
    }
    let Some(data) = pods.secrets.get(&(ns.clone(), name.clone())) else {
        return not_found("secrets", &name).into_response();
    };
    let data: BTreeMap<&String, String> =
        data.iter().map(|(k, v)| (k, STANDARD.encode(v))).collect();
    axum::Json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "type": "Opaque",
        "data": data,
    }))
    .into_response()
}
