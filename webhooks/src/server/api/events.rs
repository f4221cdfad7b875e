//! `GET /api/v1/events` and `POST /api/v1/events/{id}/retry`: the deliveries whose planning
//! failed, for an operator. A delivery retried with back-off (an outage of the forge, the network
//! or the database) is listed as `retrying`; one given up on (its commit is not in the
//! repository, its project was removed) as `failed`, and a retry puts it back in line.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use ferry_engine::store::{EventId, EventState, StoreError, StoredEvent, now_millis};

use super::auth::{Reader, Writer};
use super::error::{ApiError, ApiQuery, positive_id};
use super::types::{
    DeliveryFilter, DeliveryList, DeliveryQuery, DeliveryState, DeliverySummary, ErrorCode, rfc3339,
};
use crate::server::AppState;

/// The most deliveries one answer lists.
const MAX_LIMIT: u32 = 500;

/// `GET /api/v1/events`.
pub async fn list(
    State(state): State<AppState>,
    Reader(caller): Reader,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let project = caller.project_filter(q.project)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit {limit} is outside 1 to {MAX_LIMIT}"),
        )
        .on_field("limit"));
    }
    let wanted = q.state.map(|s| match s {
        DeliveryFilter::Retrying => EventState::Pending,
        DeliveryFilter::Failed => EventState::Failed,
    });
    let events = state
        .store
        .troubled_events(project.as_deref(), wanted, limit)
        .await?;
    Ok(Json(DeliveryList {
        events: events.iter().map(summary).collect(),
    }))
}

/// `POST /api/v1/events/{id}/retry`: a `failed` delivery back in line, planned at once.
pub async fn retry(
    State(state): State<AppState>,
    writer: Writer,
    EventPath(id): EventPath,
) -> Result<Json<DeliverySummary>, ApiError> {
    let event = existing(&state, id).await?;
    writer.caller().check(&event.project)?;
    state.store.retry_event(id).await.map_err(|e| match e {
        StoreError::Conflict { actual, .. } => ApiError::new(
            ErrorCode::Conflict,
            format!(
                "event {} is {actual}; only a failed one can be retried",
                id.0
            ),
        ),
        StoreError::NotFound { .. } => not_found(id),
        other => other.into(),
    })?;
    tracing::info!(event.id = id.0, project = %event.project, by = %writer.0.name, "delivery put back in line by hand");
    state.planner_wake.notify_one();
    Ok(Json(summary(&existing(&state, id).await?)))
}

async fn existing(state: &AppState, id: EventId) -> Result<StoredEvent, ApiError> {
    state
        .store
        .event_by_id(id)
        .await?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: EventId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("event {} not found", id.0))
}

fn summary(e: &StoredEvent) -> DeliverySummary {
    let state = match e.state {
        EventState::Failed => DeliveryState::Failed,
        // A pending event listed here has failed at least once; one put back in line by hand
        // is pending too, until it is planned.
        EventState::Pending => DeliveryState::Retrying,
        EventState::Planned => DeliveryState::Planned,
    };
    DeliverySummary {
        id: e.id.0,
        project: e.project.clone(),
        forge: e.forge.as_str().to_owned(),
        delivery_key: e.delivery_key.clone(),
        state,
        attempts: e.attempts,
        last_error: e.last_error.clone(),
        received_at: rfc3339(e.received_at),
        next_attempt_at: (e.state == EventState::Pending)
            .then(|| rfc3339(e.next_attempt_at.max(now_millis()))),
        event: serde_json::to_value(&e.event).unwrap_or_default(),
    }
}

/// The `{id}` of an event's route: a positive integer, else `400`.
pub struct EventPath(pub EventId);

impl<S: Send + Sync> FromRequestParts<S> for EventPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = positive_id(parts, state, "event").await?;
        Ok(EventPath(EventId(id)))
    }
}
