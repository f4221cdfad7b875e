//! The HTTP API (`/api/v1`) and its OpenAPI document (`/api/openapi.json`).
//!
//! One table, [`endpoints`], describes every route of the server: method, path, what it needs
//! (a token to read, a token to write, a webhook secret, nothing), its query and body types and
//! its answers. The API's routes are built from that table ([`routes`]) and the OpenAPI document
//! is generated from it ([`openapi::document`], schemas derived from the types in [`types`]), so a
//! route cannot exist without being documented, nor be documented without existing. The webhook
//! and probe routes are wired in `server::router`; they are in the table for the document, and a
//! test checks the two lists agree.
//!
//! Routes: `GET /api/v1/runs` (filters, cursor paging), `GET /api/v1/runs/{id}` (steps, metrics
//! against the baseline, links, who), `POST /api/v1/runs` (trigger), `POST
//! /api/v1/runs/{id}/rerun`, `POST /api/v1/runs/{id}/cancel`; `GET /api/v1/events` (deliveries
//! whose planning failed), `POST /api/v1/events/{id}/retry`. Errors have one shape
//! ([`error`]); callers are authenticated by bearer tokens ([`auth`]).

pub mod auth;
pub mod error;
mod events;
pub mod openapi;
mod runs;
pub mod types;

use axum::Json;
use axum::Router;
use axum::http::Method;
use axum::routing::{MethodRouter, any, get, post};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use self::error::ApiError;
use self::types::{
    DeliveryList, DeliveryQuery, DeliverySummary, ErrorCode, RerunQuery, RerunRequest, RunDetail,
    RunList, RunQuery, RunSummary, TriggerRequest,
};
use crate::server::AppState;

/// Makes a JSON Schema (a `$ref` to a named schema, or an inline one) in a generator.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing.
    Open,
    /// A bearer token, unless `dashboard_public: true`.
    Read,
    /// A bearer token.
    Write,
    /// The project's webhook secret (GitLab `X-Gitlab-Token`, GitHub `X-Hub-Signature-256`).
    WebhookSecret,
}

/// What an answer carries.
#[derive(Clone, Copy)]
pub enum Content {
    /// JSON of this schema.
    Json(SchemaFn),
    /// Plain text.
    Text,
}

/// One answer of a route.
#[derive(Clone, Copy)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// When it is given.
    pub description: &'static str,
    /// Its body.
    pub content: Content,
}

/// One route of the server.
pub struct Endpoint {
    /// The method.
    pub method: Method,
    /// The path, with `{name}` parameters (axum's syntax, and OpenAPI's).
    pub path: &'static str,
    /// The OpenAPI `operationId`.
    pub operation_id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// The OpenAPI tag.
    pub tag: &'static str,
    /// What it needs from the caller.
    pub access: Access,
    /// Path parameters: name and description (each an integer id).
    pub path_params: &'static [(&'static str, &'static str)],
    /// The query's type (its fields become query parameters).
    pub query: Option<SchemaFn>,
    /// The request body.
    pub body: Option<Content>,
    /// Successful answers.
    pub answers: Vec<Answer>,
    /// Error statuses it may answer (each with the common error body).
    pub errors: &'static [u16],
    /// The handler, for the routes this module serves; `None` for routes `server::router` wires.
    pub handler: Option<fn() -> MethodRouter<AppState>>,
}

fn json<T: JsonSchema>(status: u16, description: &'static str) -> Answer {
    Answer {
        status,
        description,
        content: Content::Json(SchemaGenerator::subschema_for::<T>),
    }
}

fn text(status: u16, description: &'static str) -> Answer {
    Answer {
        status,
        description,
        content: Content::Text,
    }
}

const RUN_ID: &[(&str, &str)] = &[("id", "The run's id (a positive integer).")];
const EVENT_ID: &[(&str, &str)] = &[("id", "The event's id (a positive integer).")];

/// Every route of the server.
pub fn endpoints() -> Vec<Endpoint> {
    let mut all = api_endpoints();
    all.extend(server_endpoints());
    all
}

/// The routes of `/api`, served by this module.
fn api_endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::GET,
            path: "/api/v1/runs",
            operation_id: "listRuns",
            summary: "Runs, newest first, filtered and paged with a cursor",
            tag: "runs",
            access: Access::Read,
            path_params: &[],
            query: Some(<RunQuery as JsonSchema>::json_schema),
            body: None,
            answers: vec![json::<RunList>(200, "A page of runs.")],
            errors: &[400, 401, 403],
            handler: Some(|| get(runs::list)),
        },
        Endpoint {
            method: Method::POST,
            path: "/api/v1/runs",
            operation_id: "triggerRun",
            summary: "Run one pipeline of a project at a ref or commit, with parameters",
            tag: "runs",
            access: Access::Write,
            path_params: &[],
            query: None,
            body: Some(Content::Json(
                SchemaGenerator::subschema_for::<TriggerRequest>,
            )),
            answers: vec![json::<RunSummary>(201, "The new run, queued.")],
            errors: &[400, 401, 403, 422, 502],
            handler: Some(|| post(runs::trigger)),
        },
        Endpoint {
            method: Method::GET,
            path: "/api/v1/runs/{id}",
            operation_id: "getRun",
            summary: "A run with its steps, metrics against the baseline, links and trigger",
            tag: "runs",
            access: Access::Read,
            path_params: RUN_ID,
            query: None,
            body: None,
            answers: vec![json::<RunDetail>(200, "The run.")],
            errors: &[400, 401, 403, 404],
            handler: Some(|| get(runs::show)),
        },
        Endpoint {
            method: Method::POST,
            path: "/api/v1/runs/{id}/rerun",
            operation_id: "rerunRun",
            summary: "A new run of the same pipeline at the same commit, with the same context",
            tag: "runs",
            access: Access::Write,
            path_params: RUN_ID,
            query: Some(<RerunQuery as JsonSchema>::json_schema),
            body: Some(Content::Json(
                SchemaGenerator::subschema_for::<RerunRequest>,
            )),
            answers: vec![json::<RunSummary>(201, "The new run, queued.")],
            errors: &[400, 401, 403, 404, 409, 422],
            handler: Some(|| post(runs::rerun)),
        },
        Endpoint {
            method: Method::POST,
            path: "/api/v1/runs/{id}/cancel",
            operation_id: "cancelRun",
            summary: "Cancel a run that has not finished",
            tag: "runs",
            access: Access::Write,
            path_params: RUN_ID,
            query: None,
            body: None,
            answers: vec![
                json::<RunSummary>(200, "Cancelled (it had not started)."),
                json::<RunSummary>(202, "The executor was asked to stop it; its state follows."),
            ],
            errors: &[400, 401, 403, 404, 409, 503],
            handler: Some(|| post(runs::cancel)),
        },
        Endpoint {
            method: Method::GET,
            path: "/api/v1/events",
            operation_id: "listTroubledEvents",
            summary: "Deliveries whose planning failed: retrying (an outage) or failed (given up), newest first",
            tag: "events",
            access: Access::Read,
            path_params: &[],
            query: Some(<DeliveryQuery as JsonSchema>::json_schema),
            body: None,
            answers: vec![json::<DeliveryList>(200, "The deliveries.")],
            errors: &[400, 401, 403],
            handler: Some(|| get(events::list)),
        },
        Endpoint {
            method: Method::POST,
            path: "/api/v1/events/{id}/retry",
            operation_id: "retryEvent",
            summary: "Put a failed delivery back in line; it is planned at once",
            tag: "events",
            access: Access::Write,
            path_params: EVENT_ID,
            query: None,
            body: None,
            answers: vec![json::<DeliverySummary>(200, "Back in line.")],
            errors: &[400, 401, 403, 404, 409],
            handler: Some(|| post(events::retry)),
        },
        Endpoint {
            method: Method::GET,
            path: "/api/openapi.json",
            operation_id: "openapi",
            summary: "This document",
            tag: "meta",
            access: Access::Open,
            path_params: &[],
            query: None,
            body: None,
            answers: vec![Answer {
                status: 200,
                description: "The OpenAPI 3.1 document of this server.",
                content: Content::Json(|_| schemars::json_schema!({"type": "object"})),
            }],
            errors: &[],
            handler: Some(|| get(|| async { Json(openapi::document()) })),
        },
    ]
}

/// The webhook and probe routes, wired by `server::router`.
fn server_endpoints() -> Vec<Endpoint> {
    let hook = |path, operation_id, summary| Endpoint {
        method: Method::POST,
        path,
        operation_id,
        summary,
        tag: "webhooks",
        access: Access::WebhookSecret,
        path_params: &[],
        query: None,
        body: Some(Content::Json(
            |_| schemars::json_schema!({"type": "object", "description": "The forge's payload."}),
        )),
        answers: vec![
            text(200, "A redelivery: nothing new was stored."),
            text(202, "Stored (or valid and ignored)."),
            text(400, "Malformed."),
            text(401, "A wrong or missing secret: nothing was stored."),
            text(413, "The body is too large."),
            text(
                503,
                "The database failed: nothing was stored, the forge retries.",
            ),
        ],
        errors: &[],
        handler: None,
    };
    let probe = |path, operation_id, summary, answers| Endpoint {
        method: Method::GET,
        path,
        operation_id,
        summary,
        tag: "operations",
        access: Access::Open,
        path_params: &[],
        query: None,
        body: None,
        answers,
        errors: &[],
        handler: None,
    };
    vec![
        hook(
            "/hooks/gitlab",
            "gitlabWebhook",
            "A GitLab webhook delivery (push, tag push, merge request, note)",
        ),
        hook(
            "/hooks/github",
            "githubWebhook",
            "A GitHub webhook delivery (push, pull_request, issue_comment, check runs)",
        ),
        probe(
            "/healthz",
            "healthz",
            "Liveness: 200 once started",
            vec![text(200, "Started.")],
        ),
        probe(
            "/readyz",
            "readyz",
            "Readiness: the database and the executor answer",
            vec![
                text(200, "Ready."),
                text(503, "The database or the executor is unreachable."),
            ],
        ),
        probe(
            "/metrics",
            "metrics",
            "Prometheus metrics (every series prefixed `ferry_`)",
            vec![text(200, "The metrics in Prometheus' text format.")],
        ),
    ]
}

/// The routes of `/api`, for `server::router` to merge. Unknown paths under `/api` and wrong
/// methods answer the common error body.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for endpoint in api_endpoints() {
        if let Some(handler) = endpoint.handler {
            router = router.route(endpoint.path, handler());
        }
    }
    router
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method (see /api/openapi.json)",
            )
        })
        .route(
            "/api/{*rest}",
            any(|| async {
                ApiError::new(ErrorCode::NotFound, "no such route (see /api/openapi.json)")
            }),
        )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(METHOD, path)` of every `.route("path", method(...))` in `server::router`'s source.
    fn routes_in_server_source() -> BTreeSet<(String, String)> {
        let source = include_str!("../mod.rs");
        let mut out = BTreeSet::new();
        for piece in source.split(".route(\"").skip(1) {
            let Some((path, rest)) = piece.split_once('"') else {
                continue;
            };
            let method = rest
                .trim_start_matches([',', ' ', '\n'])
                .split('(')
                .next()
                .unwrap_or_default()
                .to_uppercase();
            out.insert((method, path.to_owned()));
        }
        out
    }

    #[test]
    fn every_route_of_the_server_is_in_the_table_and_api_routes_come_from_it() {
        let wired = routes_in_server_source();
        assert!(
            wired.iter().all(|(_, path)| !path.starts_with("/api")),
            "API routes are added through `api::endpoints`, not in `server::router`: {wired:?}"
        );
        assert!(
            include_str!("../mod.rs").contains(".merge(api::routes())"),
            "server::router merges api::routes()"
        );
        let documented: BTreeSet<(String, String)> = server_endpoints()
            .iter()
            .map(|e| (e.method.as_str().to_owned(), e.path.to_owned()))
            .collect();
        assert_eq!(
            wired, documented,
            "server::router and server_endpoints() differ"
        );
        assert!(api_endpoints().iter().all(|e| e.handler.is_some()));
        assert!(server_endpoints().iter().all(|e| e.handler.is_none()));
    }

    #[test]
    fn operation_ids_are_unique_and_refs_resolve() {
        let all = endpoints();
        let ids: BTreeSet<_> = all.iter().map(|e| e.operation_id).collect();
        assert_eq!(ids.len(), all.len(), "operationIds are unique");
        let doc = openapi::document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"").skip(1) {
            let target = piece.split('"').next().unwrap_or_default();
            let pointer = target.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
        let list = &doc["paths"]["/api/v1/runs"]["get"]["parameters"];
        let params = list.as_array().expect("parameters");
        assert_eq!(params.len(), 9, "{list}");
        for p in params {
            assert!(
                !p.to_string().contains("null"),
                "query parameters are never null: {p}"
            );
        }
        for e in &all {
            for (name, _) in e.path_params {
                assert!(e.path.contains(&format!("{{{name}}}")), "{} {name}", e.path);
            }
        }
    }
}
