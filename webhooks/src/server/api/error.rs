//! The API's errors and its readers of request input.
//!
//! Policy: every error is `{"error": {"code", "message", "details"}}` with one code per status
//! ([`ErrorCode`]); messages name the field or value at fault; `details` lists every problem when
//! there are several (undeclared parameters, pipeline validation problems). Server faults (5xx)
//! are logged once here, with the error; client faults are not logged. Request bodies and tokens
//! are never logged.
//!
//! Input is read here rather than with axum's `Json`/`Query` extractors so that their rejections
//! take the same shape: malformed JSON is `400`, JSON of the wrong shape (a missing or unknown
//! field, a wrong type) is `422`, a bad query string is `400`. Bodies are read as JSON whatever
//! their content type (`curl -d` sends a form type), and an empty body means `{}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_engine::store::{RunId, StoreError};
use serde::de::DeserializeOwned;

use super::types::{ErrorBody, ErrorCode, ErrorDetail, ErrorInfo};

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The code (and with it the status).
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// Each problem.
    pub details: Vec<ErrorDetail>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The same error, listing `details`.
    pub fn with_details(mut self, details: Vec<ErrorDetail>) -> ApiError {
        self.details = details;
        self
    }

    /// The same error, with one detail about `field`.
    pub fn on_field(self, field: &str) -> ApiError {
        let message = self.message.clone();
        self.with_details(vec![detail(Some(field), message)])
    }
}

/// One problem, about `field` when given.
pub fn detail(field: Option<&str>, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail {
        field: field.map(str::to_owned),
        message: message.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = ?self.code, error = %self.message, "API request failed");
        }
        let unauthorized = self.code == ErrorCode::Unauthorized;
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let code = match e {
            StoreError::Database(_) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

/// A JSON request body: empty means `{}`; malformed JSON is `400`, the wrong shape `422`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
        json_body(&body).map(ApiJson)
    }
}

fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => ErrorCode::ValidationFailed,
            serde_json::error::Category::Io
            | serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof => ErrorCode::BadRequest,
        };
        ApiError::new(code, format!("request body: {e}"))
    })
}

/// A query string (absent means every field at its default); a bad one is `400`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
    }
}

/// The `{id}` of a run's route: a positive integer, else `400`.
pub struct RunPath(pub RunId);

impl<S: Send + Sync> FromRequestParts<S> for RunPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = positive_id(parts, state, "run").await?;
        RunId::new(id)
            .map(RunPath)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, format!("run id {id}")))
    }
}

/// The `{id}` path parameter as a positive integer; `400` naming `what` (`run`, `event`) else.
pub async fn positive_id<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    what: &str,
) -> Result<i64, ApiError> {
    let Path(raw) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("{what} id `{raw}` is not a positive integer"),
        )
        .on_field("id")
    })
}
