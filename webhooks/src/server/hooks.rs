//! Webhook and operational handlers: thin, they delegate to `ferry_engine::service::intake`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_engine::event::ForgeKind;
use ferry_engine::forge::HeaderSource;
use ferry_engine::service::intake::{self, Outcome};

use super::AppState;
use ferry_engine::metrics::render_gauges;

/// axum's headers as the engine reads them.
struct Headers<'a>(&'a HeaderMap);

impl HeaderSource for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `POST /hooks/gitlab`.
pub async fn gitlab(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    receive(state, ForgeKind::Gitlab, headers, body).await
}

/// `POST /hooks/github`.
pub async fn github(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    receive(state, ForgeKind::Github, headers, body).await
}

async fn receive(state: AppState, forge: ForgeKind, headers: HeaderMap, body: Bytes) -> Response {
    let result = intake::receive(
        &state.store,
        &state.config,
        &state.secrets,
        forge,
        &Headers(&headers),
        &body,
    )
    .await;
    // What the headers announce, for deliveries that were not parsed.
    let announced = ferry_engine::forge::header_event_name(forge, &Headers(&headers));
    let (status, outcome, event) = match &result {
        Ok(Outcome::Stored { project, event }) => {
            tracing::info!(forge = forge.as_str(), project, event, "delivery stored");
            state.planner_wake.notify_one();
            (StatusCode::ACCEPTED, "stored", *event)
        }
        Ok(Outcome::Duplicate { project, event }) => {
            tracing::info!(forge = forge.as_str(), project, event, "redelivery ignored");
            (StatusCode::OK, "duplicate", *event)
        }
        Ok(Outcome::Ignored { reason }) => {
            tracing::info!(forge = forge.as_str(), reason, "delivery ignored");
            (StatusCode::ACCEPTED, "ignored", announced)
        }
        Ok(Outcome::Unauthorized) => {
            tracing::warn!(
                forge = forge.as_str(),
                "delivery refused: wrong or missing secret"
            );
            (StatusCode::UNAUTHORIZED, "unauthorized", announced)
        }
        Ok(Outcome::Malformed(why)) => {
            tracing::warn!(forge = forge.as_str(), error = %why, "delivery refused: malformed");
            (StatusCode::BAD_REQUEST, "malformed", announced)
        }
        Err(e) => {
            tracing::error!(forge = forge.as_str(), error = %e, "delivery not stored: database error");
            (StatusCode::SERVICE_UNAVAILABLE, "store_error", announced)
        }
    };
    state.metrics.inc(
        "ferry_deliveries_total",
        "Webhook deliveries by forge, event and outcome.",
        &[
            ("event", event),
            ("forge", forge.as_str()),
            ("outcome", outcome),
        ],
    );
    (status, format!("{outcome}\n")).into_response()
}

/// `GET /readyz`: the database answers.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if let Err(e) = state.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response();
    }
    match state.executor.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("executor ({}): {e}\n", state.executor.kind()),
        )
            .into_response(),
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    match state.store.stats().await {
        Ok(stats) => {
            let runs: Vec<_> = stats
                .runs
                .iter()
                .map(|(s, n)| (vec![("state", s.as_str().to_owned())], *n as f64))
                .collect();
            text.push_str(&render_gauges(
                "ferry_runs",
                "Runs in the store by state.",
                &runs,
            ));
            text.push_str(&render_gauges(
                "ferry_outbox_depth",
                "State changes not yet reported to the forge.",
                &[(Vec::new(), stats.outbox_unsent as f64)],
            ));
            text.push_str(&render_gauges(
                "ferry_events_pending",
                "Stored deliveries not yet planned.",
                &[(Vec::new(), stats.events_pending as f64)],
            ));
            text.push_str(&render_gauges(
                "ferry_events_retrying",
                "Stored deliveries whose planning failed and is retried with back-off (a forge, git or database outage, or a missing commit).",
                &[(Vec::new(), stats.events_retrying as f64)],
            ));
            text.push_str(&render_gauges(
                "ferry_events_failed",
                "Stored deliveries given up on: their commit is not in the repository, or their project is no longer configured.",
                &[(Vec::new(), stats.events_failed as f64)],
            ));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: reading the store failed"),
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
