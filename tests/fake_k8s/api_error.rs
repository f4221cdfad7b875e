//! Kubernetes `Status` answers: every error the fake gives is one, with the code, reason and
//! message wording the API server uses, so the `kube` client turns it into the same
//! `kube::Error::Api` it would get from a real cluster.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::validate::Cause;

/// An error answer: HTTP code, `reason`, `message` and optional `details`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`.
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 and some 5xx).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_name(mut self, name: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": "argoproj.io", "kind": "workflows"}));
        self
    }

    /// `404 NotFound` for a workflow.
    pub fn not_found(name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("workflows.argoproj.io \"{name}\" not found"),
        )
        .with_name(name)
    }

    /// `404 NotFound` for a path the fake does not serve.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// `409 AlreadyExists`.
    pub fn already_exists(name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("workflows.argoproj.io \"{name}\" already exists"),
        )
        .with_name(name)
    }

    /// `409 Conflict` (a failed precondition).
    pub fn conflict(name: &str, message: String) -> ApiError {
        ApiError::new(409, "Conflict", message).with_name(name)
    }

    /// `422 Invalid`, listing every cause with its field path.
    pub fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
        let listed: Vec<String> = causes.iter().map(ToString::to_string).collect();
        let joined = match listed.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("Workflow.argoproj.io \"{name}\" is invalid: {joined}"),
        );
        err.details = Some(json!({
            "name": name,
            "group": "argoproj.io",
            "kind": "Workflow",
            "causes": causes.iter().map(Cause::to_json).collect::<Vec<_>>(),
        }));
        err
    }

    /// `422 Invalid` with only a message (an admission policy's denial).
    pub fn invalid_message(message: String) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// `410 Expired` (a version older than retained history).
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// `415 UnsupportedMediaType` for a patch type the fake does not apply.
    pub fn unsupported_patch(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// `401 Unauthorized`.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `429 TooManyRequests` with `Retry-After`.
    pub fn too_many_requests(retry_after: u64) -> ApiError {
        let mut err = ApiError::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        );
        err.details = Some(json!({"retryAfterSeconds": retry_after}));
        err.retry_after = Some(retry_after);
        err
    }

    /// `500 InternalError`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        let mut err = ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        );
        err.details = Some(json!({"causes": [{"message": message}]}));
        err
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// The `Success` Status a custom resource's immediate deletion answers.
    pub fn deleted_status(name: &str, uid: &Value) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": "argoproj.io", "kind": "workflows", "uid": uid},
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, axum::Json(self.to_status())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
