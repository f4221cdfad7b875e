//! The handlers of `/api/v1/runs`: thin, they check the caller's scope, translate JSON to the
//! engine's types and back, and map the engine's errors to API errors.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use ferry_engine::service::manual::{ManualError, ManualRequest};
use ferry_engine::service::mirror::MirrorError;
use ferry_engine::service::operations::{self, CancelError, CancelOutcome, RerunError};
use ferry_engine::store::{Page, Run, RunFilter, RunId, now_millis};
use serde_json::Value;

use super::auth::{Caller, Reader, Writer};
use super::error::{ApiError, ApiJson, ApiQuery, RunPath, detail};
use super::types::{
    ErrorCode, RerunQuery, RerunRequest, RunDetail, RunList, RunQuery, RunSummary, TriggerRequest,
};
use crate::server::AppState;

/// A created run: `201` with its location.
type Created = (StatusCode, HeaderMap, Json<RunSummary>);

/// `GET /api/v1/runs`.
pub async fn list(
    State(state): State<AppState>,
    Reader(caller): Reader,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> Result<Json<RunList>, ApiError> {
    // A project token sees its own project only: asking for another is `403`.
    let project = caller.project_filter(q.project)?;
    let filter = RunFilter {
        project,
        pipeline: q.pipeline,
        sha: q.sha,
        state: q.state,
        trigger: q.trigger,
        branch: q.branch,
        mr: q.merge_request,
    };
    let before = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=Page::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be from 1 to {}, not {limit}", Page::MAX_LIMIT),
        )
        .on_field("limit"));
    }
    let page = state
        .store
        .list_runs(&filter, Page { before, limit })
        .await?;
    let now = now_millis();
    Ok(Json(RunList {
        runs: page.runs.iter().map(|r| RunSummary::of(r, now)).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

fn parse_cursor(text: &str) -> Result<RunId, ApiError> {
    text.parse::<i64>()
        .ok()
        .and_then(RunId::new)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("cursor `{text}` is not one this server gave"),
            )
            .on_field("cursor")
        })
}

/// `GET /api/v1/runs/{id}`.
pub async fn show(
    State(state): State<AppState>,
    Reader(caller): Reader,
    RunPath(id): RunPath,
) -> Result<Json<RunDetail>, ApiError> {
    let detail = operations::run_detail(&state.store, &state.config, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    caller.check(&detail.run.project)?;
    Ok(Json(RunDetail::of(&detail, now_millis())))
}

/// `POST /api/v1/runs`.
pub async fn trigger(
    State(state): State<AppState>,
    writer: Writer,
    ApiJson(req): ApiJson<TriggerRequest>,
) -> Result<Created, ApiError> {
    writer.caller().check(&req.project)?;
    let params = param_texts(&req.params)?;
    let request = ManualRequest {
        project: req.project,
        pipeline: req.pipeline,
        git_ref: req.git_ref,
        sha: req.sha,
        params,
        triggered_by: Some(writer.0.name.clone()),
        ..ManualRequest::default()
    };
    let id = state
        .planner
        .trigger(&request)
        .await
        .map_err(manual_error)?;
    created(&state, id).await
}

/// Parameter values as the text the pipeline sees; objects, arrays and null are refused.
fn param_texts(params: &BTreeMap<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (name, value) in params {
        match value {
            Value::String(s) => out.push((name.clone(), s.clone())),
            Value::Number(n) => out.push((name.clone(), n.to_string())),
            Value::Bool(b) => out.push((name.clone(), b.to_string())),
            Value::Null | Value::Array(_) | Value::Object(_) => bad.push(detail(
                Some(&format!("params.{name}")),
                "a parameter value is a string, a number or a boolean",
            )),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(
            ApiError::new(ErrorCode::ValidationFailed, "invalid parameter values")
                .with_details(bad),
        )
    }
}

fn manual_error(e: ManualError) -> ApiError {
    let invalid = |field: &str, e: &ManualError| {
        ApiError::new(ErrorCode::ValidationFailed, e.to_string()).on_field(field)
    };
    match &e {
        ManualError::UnknownProject(_) => invalid("project", &e),
        ManualError::UnknownRef(_) => invalid("ref", &e),
        ManualError::UnknownPipeline { .. } => invalid("pipeline", &e),
        ManualError::Invalid(problems) => ApiError::new(
            ErrorCode::ValidationFailed,
            "the pipeline is invalid at this commit",
        )
        .with_details(
            problems
                .0
                .iter()
                .map(|p| detail(None, p.to_string()))
                .collect(),
        ),
        ManualError::UndeclaredParams(params) => ApiError::new(
            ErrorCode::ValidationFailed,
            "parameters the pipeline does not declare",
        )
        .with_details(
            params
                .iter()
                .map(|p| detail(Some(&format!("params.{}", p.name)), p.to_string()))
                .collect(),
        ),
        ManualError::Git(MirrorError::InvalidSha { .. } | MirrorError::CommitNotFound { .. }) => {
            invalid("sha", &e)
        }
        ManualError::Git(_) => ApiError::new(ErrorCode::GitError, e.to_string()),
        ManualError::Store(_) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
    }
}

/// `POST /api/v1/runs/{id}/rerun`.
pub async fn rerun(
    State(state): State<AppState>,
    writer: Writer,
    RunPath(id): RunPath,
    ApiQuery(q): ApiQuery<RerunQuery>,
    ApiJson(body): ApiJson<RerunRequest>,
) -> Result<Created, ApiError> {
    let run = existing(&state, &writer.caller(), id).await?;
    let failed_only = body.failed_only || q.failed == Some(true);
    let new = state
        .planner
        .rerun(&run, failed_only, Some(&writer.0.name))
        .await
        .map_err(|e| match e {
            RerunError::NotFailed { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
            RerunError::InvalidPipeline(ref problems) => {
                ApiError::new(ErrorCode::Conflict, e.to_string()).with_details(
                    problems
                        .iter()
                        .map(|p| detail(None, p.to_string()))
                        .collect(),
                )
            }
            RerunError::Store(s) => s.into(),
        })?;
    created(&state, new).await
}

/// `POST /api/v1/runs/{id}/cancel`: `200` when the run is cancelled, `202` when the executor was
/// asked to stop it (its state follows shortly).
pub async fn cancel(
    State(state): State<AppState>,
    writer: Writer,
    RunPath(id): RunPath,
) -> Result<(StatusCode, Json<RunSummary>), ApiError> {
    let run = existing(&state, &writer.caller(), id).await?;
    let reason = format!("cancelled by {}", writer.0.name);
    let status = match cancel_run(&state, &run, &reason).await? {
        CancelOutcome::Cancelled => StatusCode::OK,
        CancelOutcome::Requested => StatusCode::ACCEPTED,
        CancelOutcome::Finished(state) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("run {id} is already {state}"),
            ));
        }
    };
    let now = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok((status, Json(RunSummary::of(&now, now_millis()))))
}

/// Cancels `run` through the planner (the same path as `/ferry cancel`).
async fn cancel_run(state: &AppState, run: &Run, reason: &str) -> Result<CancelOutcome, ApiError> {
    state
        .planner
        .cancel(run.id, reason)
        .await
        .map_err(|e| match e {
            CancelError::NotFound(id) => not_found(id),
            CancelError::Finished { .. } | CancelError::Contended(_) => {
                ApiError::new(ErrorCode::Conflict, e.to_string())
            }
            CancelError::Store(s) => s.into(),
        })
}

/// Run `id`, if it exists (`404`) and the caller may act on its project (`403`).
async fn existing(state: &AppState, caller: &Caller, id: RunId) -> Result<Run, ApiError> {
    let run = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    caller.check(&run.project)?;
    Ok(run)
}

fn not_found(id: RunId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("run {id} not found"))
}

async fn created(state: &AppState, id: RunId) -> Result<Created, ApiError> {
    let run = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/runs/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(RunSummary::of(&run, now_millis())),
    ))
}
