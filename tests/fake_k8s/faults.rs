//! Fault injection and the request log: tests make the next N requests (all, or those matching
//! a method and path) answer `429` with `Retry-After` or `500`, or wait before being served,
//! and read back every request the fake answered to assert that retries happened.

use std::time::{Duration, Instant};

use axum::http::Method;

/// What an injected fault does to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// `429 TooManyRequests` with `Retry-After: <secs>`.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// `500 InternalError`.
    InternalError,
    /// `422 Invalid` with this message, as an admission policy (a `ValidatingAdmissionPolicy`
    /// whose validation sets no `reason`) or the API server's own validation answers.
    Invalid {
        /// `Status.message`.
        message: String,
    },
    /// The request is served normally after this delay.
    Delay(Duration),
}

/// A fault for the next requests that match; build with [`Fault::too_many_requests`],
/// [`Fault::internal_error`], [`Fault::invalid`] or [`Fault::delay`], narrow with [`Fault::method`],
/// [`Fault::path_contains`] and [`Fault::watch`], and set the count with [`Fault::times`]
/// (default 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    action: FaultAction,
    method: Option<Method>,
    path_contains: Option<String>,
    watch: Option<bool>,
    remaining: usize,
}

impl Fault {
    fn new(action: FaultAction) -> Fault {
        Fault {
            action,
            method: None,
            path_contains: None,
            watch: None,
            remaining: 1,
        }
    }

    /// Answer `429` with `Retry-After: retry_after_secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Fault {
        Fault::new(FaultAction::TooManyRequests { retry_after_secs })
    }

    /// Answer `500`.
    pub fn internal_error() -> Fault {
        Fault::new(FaultAction::InternalError)
    }

    /// Answer `422 Invalid` with `message`.
    pub fn invalid(message: impl Into<String>) -> Fault {
        Fault::new(FaultAction::Invalid {
            message: message.into(),
        })
    }

    /// Serve the request after `delay`.
    pub fn delay(delay: Duration) -> Fault {
        Fault::new(FaultAction::Delay(delay))
    }

    /// Apply to the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Fault {
        self.remaining = n;
        self
    }

    /// Only requests with this method.
    pub fn method(mut self, method: Method) -> Fault {
        self.method = Some(method);
        self
    }

    /// Only requests whose path contains `part`.
    pub fn path_contains(mut self, part: &str) -> Fault {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// Only watch requests (`true`) or only other requests (`false`).
    pub fn watch(mut self, watch: bool) -> Fault {
        self.watch = Some(watch);
        self
    }

    /// Whether the fault applies to this request.
    fn matches(&self, request: &RequestRecord) -> bool {
        self.remaining > 0
            && self.method.as_ref().is_none_or(|m| *m == request.method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| request.path.contains(p))
            && self.watch.is_none_or(|w| w == request.is_watch())
    }
}

/// Takes one use of the first fault that applies to a request and returns its action.
pub fn take(faults: &mut Vec<Fault>, request: &RequestRecord) -> Option<FaultAction> {
    let fault = faults.iter_mut().find(|f| f.matches(request))?;
    fault.remaining -= 1;
    let action = fault.action.clone();
    faults.retain(|f| f.remaining > 0);
    Some(action)
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string (may be empty).
    pub query: String,
    /// The status code of the answer (for a watch: of its headers, sent before the events).
    pub status: u16,
    /// The injected fault that answered or delayed it, if any.
    pub fault: Option<FaultAction>,
    /// When it arrived (before faults, checks and the store), for benchmarks.
    pub at: Instant,
    /// The SHA-256 of its body (hex), when it had one: tells repeated creates apart.
    pub body_sha256: Option<String>,
}

impl RequestRecord {
    /// The value of one query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        url_params(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether it was a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|v| is_true(&v))
    }
}

/// `true` and `1` are true, as the API server reads boolean parameters.
pub fn is_true(value: &str) -> bool {
    matches!(value, "true" | "1")
}

/// The decoded `key=value` pairs of a query string.
pub fn url_params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
