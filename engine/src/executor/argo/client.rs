//! The Kubernetes client, and calls to the API under one error policy.
//!
//! The policy, in one place: every call has a time limit; connection errors, time-outs, `429`,
//! `408` and `5xx` are *transient* and retried a few times with capped exponential back-off
//! (`429`'s `Retry-After` is honoured, from the header or from the `Status` body); `401`/`403`
//! and unreadable answers make ferry *unavailable* for now (the operator can fix them; the run is
//! submitted again later); the other `4xx` *reject* the request with the API server's message.
//! The client's own retry layer is switched off ([`client_from`]), so this is the only one.
//!
//! `create` is sent as a raw request rather than through `Api::create`: kube turns an error answer
//! into a `Status` and drops the headers, and `Retry-After` lives in a header.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;

use super::ArgoSettings;
use super::workflow::Workflow;
use crate::executor::ExecError;

/// A client for the cluster: from the kubeconfig at `path`, or inferred (`KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster service account) when there is none. The client's own
/// retry layer is off: the executor retries under its own policy (this module's).
pub async fn client_from(path: Option<&Path>) -> Result<kube::Client, ExecError> {
    let mut config = match path {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                ExecError(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| ExecError(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            ExecError(format!(
                "no Kubernetes configuration found (KUBECONFIG, ~/.kube/config, in-cluster): {e}"
            ))
        })?,
    };
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| ExecError(format!("cannot build a Kubernetes client: {e}")))
}

/// The field manager ferry writes as.
pub const FIELD_MANAGER: &str = "ferry";

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again soon (connection, time-out, `429`, `5xx`).
    Retry,
    /// Not now: the caller gives up for this time (`401`, `403`, an unreadable answer).
    Unavailable,
    /// Never as it is (`400`, `422`, a missing namespace).
    Rejected,
    /// The object is not there (`404`).
    NotFound,
}

/// A failed call.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What to do.
    pub verdict: Verdict,
    /// The HTTP status, when there was an answer.
    pub code: Option<u16>,
    /// What happened, for logs and for the run's message.
    pub message: String,
    /// How long the server asked to wait.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure from an error of the kube client.
    pub fn from_kube(e: kube::Error) -> Failure {
        match e {
            kube::Error::Api(status) => Failure::from_status(status.code, *status, None),
            kube::Error::HyperError(e) => {
                Failure::transient(format!("cannot reach the Kubernetes API: {e}"))
            }
            kube::Error::Service(e) => {
                Failure::transient(format!("cannot reach the Kubernetes API: {e}"))
            }
            kube::Error::BuildRequest(e) => Failure::new(Verdict::Rejected, None, e.to_string()),
            other => Failure::new(Verdict::Unavailable, None, other.to_string()),
        }
    }

    /// A failure from an error answer: its status code, its body and its `Retry-After` header.
    pub fn from_answer(code: u16, body: &[u8], retry_after: Option<Duration>) -> Failure {
        let status = serde_json::from_slice::<Status>(body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body);
            Status::failure(text.trim(), "").with_code(code)
        });
        Failure::from_status(code, status, retry_after)
    }

    fn from_status(code: u16, status: Status, header: Option<Duration>) -> Failure {
        let from_body = status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s)));
        let missing_namespace = status
            .details
            .as_ref()
            .is_some_and(|d| d.kind == "namespaces");
        let verdict = match code {
            404 if missing_namespace => Verdict::Rejected,
            404 => Verdict::NotFound,
            408 | 429 | 500..=599 => Verdict::Retry,
            401 | 403 => Verdict::Unavailable,
            _ => Verdict::Rejected,
        };
        let message = match (status.message.trim(), status.reason.as_str()) {
            ("", "") => format!("HTTP {code}"),
            ("", reason) => format!("{code} {reason}"),
            (message, _) => message.to_owned(),
        };
        Failure {
            verdict,
            code: Some(code),
            message,
            retry_after: header.or(from_body),
        }
    }

    fn new(verdict: Verdict, code: Option<u16>, message: String) -> Failure {
        Failure {
            verdict,
            code,
            message,
            retry_after: None,
        }
    }

    /// A transient failure without an answer.
    pub fn transient(message: String) -> Failure {
        Failure::new(Verdict::Retry, None, message)
    }
}

/// Runs `op` under the time limit, retrying transient failures with back-off.
pub async fn retrying<T, F, Fut>(
    settings: &ArgoSettings,
    what: &str,
    mut op: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0;
    loop {
        let failure = match tokio::time::timeout(settings.request_timeout, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(f)) => f,
            Err(_) => Failure::transient(format!(
                "no answer from the Kubernetes API within {} s",
                settings.request_timeout.as_secs_f32()
            )),
        };
        if failure.verdict != Verdict::Retry || attempt >= settings.retries {
            return Err(failure);
        }
        if let Some(wait) = failure
            .retry_after
            .filter(|w| *w > settings.max_retry_after)
        {
            return Err(Failure {
                message: format!(
                    "{} (asked to retry after {} s)",
                    failure.message,
                    wait.as_secs()
                ),
                ..failure
            });
        }
        let delay = settings
            .retry_backoff
            .delay(attempt)
            .max(failure.retry_after.unwrap_or_default());
        tracing::warn!(
            call = what,
            attempt = attempt + 1,
            http.status = failure.code,
            retry.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %failure.message,
            "Kubernetes API call failed; retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// `POST`s a workflow manifest to the collection of `api`.
pub async fn create(
    api: &Api<Workflow>,
    client: &kube::Client,
    body: Vec<u8>,
) -> Result<(), Failure> {
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    let request = kube::core::Request::new(api.resource_url())
        .create(&params, body)
        .map_err(|e| Failure::new(Verdict::Rejected, None, e.to_string()))?;
    let answer = client
        .send(request.map(kube::client::Body::from))
        .await
        .map_err(Failure::from_kube)?;
    let code = answer.status().as_u16();
    if (200..300).contains(&code) {
        return Ok(());
    }
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = answer
        .into_body()
        .collect_bytes()
        .await
        .map_err(Failure::from_kube)?;
    Err(Failure::from_answer(code, &body, retry_after))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::json;

    use super::*;

    fn status(code: u16, reason: &str, message: &str, details: serde_json::Value) -> Vec<u8> {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "details": details, "code": code})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn answers_are_classified_by_the_policy() {
        let invalid = status(
            422,
            "Invalid",
            "Workflow.argoproj.io \"ferry-12\" is invalid: spec.templates[1].container.image: Required value",
            json!({"name": "ferry-12", "group": "argoproj.io", "kind": "Workflow",
                   "causes": [{"reason": "FieldValueRequired", "field": "spec.templates[1].container.image"}]}),
        );
        let f = Failure::from_answer(422, &invalid, None);
        assert_eq!((f.verdict, f.code), (Verdict::Rejected, Some(422)));
        assert!(
            f.message.ends_with("container.image: Required value"),
            "{}",
            f.message
        );

        let busy = status(
            429,
            "TooManyRequests",
            "too many requests",
            json!({"retryAfterSeconds": 3}),
        );
        let f = Failure::from_answer(429, &busy, None);
        assert_eq!(
            (f.verdict, f.retry_after),
            (Verdict::Retry, Some(Duration::from_secs(3)))
        );
        let f = Failure::from_answer(
            429,
            b"Too many requests, please try again later.\n",
            Some(Duration::from_secs(7)),
        );
        assert_eq!(
            (f.verdict, f.retry_after),
            (Verdict::Retry, Some(Duration::from_secs(7)))
        );
        assert_eq!(f.message, "Too many requests, please try again later.");

        let f = Failure::from_answer(503, b"", None);
        assert_eq!(
            (f.verdict, f.message.as_str()),
            (Verdict::Retry, "HTTP 503")
        );
        let no_ns = status(
            404,
            "NotFound",
            "namespaces \"ml-team\" not found",
            json!({"name": "ml-team", "kind": "namespaces"}),
        );
        assert_eq!(
            Failure::from_answer(404, &no_ns, None).verdict,
            Verdict::Rejected
        );
        let no_wf = status(
            404,
            "NotFound",
            "workflows.argoproj.io \"ferry-12\" not found",
            json!({"name": "ferry-12", "group": "argoproj.io", "kind": "workflows"}),
        );
        assert_eq!(
            Failure::from_answer(404, &no_wf, None).verdict,
            Verdict::NotFound
        );
        let forbidden = status(
            403,
            "Forbidden",
            "workflows.argoproj.io is forbidden: User \"system:serviceaccount:ferry:ferry\" cannot create resource \"workflows\"",
            json!({}),
        );
        assert_eq!(
            Failure::from_answer(403, &forbidden, None).verdict,
            Verdict::Unavailable
        );
        let f = Failure::from_answer(400, &status(400, "BadRequest", "", json!({})), None);
        assert_eq!(
            (f.verdict, f.message.as_str()),
            (Verdict::Rejected, "400 BadRequest")
        );
    }

    fn quick() -> ArgoSettings {
        let mut s = ArgoSettings::new("ml-team");
        s.retry_backoff.first = Duration::from_millis(1);
        s.retry_backoff.max = Duration::from_millis(4);
        s.max_retry_after = Duration::from_secs(2);
        s
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_others_are_not() {
        let calls = AtomicU32::new(0);
        let out = retrying(&quick(), "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Failure::from_answer(
                    500,
                    b"etcdserver: leader changed",
                    None,
                )),
                _ => Ok("created"),
            }
        })
        .await;
        assert_eq!(out.map_err(|f| f.message), Ok("created"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let out: Result<(), Failure> = retrying(&quick(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::from_answer(422, b"invalid", None))
        })
        .await;
        assert_eq!(out.map_err(|f| f.verdict), Err(Verdict::Rejected));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let out: Result<(), Failure> = retrying(&quick(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::transient("connection refused".into()))
        })
        .await;
        assert_eq!(
            out.map_err(|f| f.message),
            Err("connection refused".to_owned())
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "the first try and 3 retries"
        );
    }

    #[tokio::test]
    async fn a_retry_after_longer_than_allowed_ends_the_call_at_once() {
        let calls = AtomicU32::new(0);
        let out: Result<(), Failure> = retrying(&quick(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::from_answer(
                429,
                b"slow down",
                Some(Duration::from_secs(120)),
            ))
        })
        .await;
        let f = out.expect_err("gives up");
        assert_eq!(f.verdict, Verdict::Retry);
        assert_eq!(f.message, "slow down (asked to retry after 120 s)");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_without_an_answer_times_out_and_is_retried() {
        let mut settings = quick();
        settings.request_timeout = Duration::from_millis(20);
        settings.retries = 1;
        let calls = AtomicU32::new(0);
        let out: Result<(), Failure> = retrying(&settings, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        })
        .await;
        let f = out.expect_err("times out");
        assert!(
            f.message
                .starts_with("no answer from the Kubernetes API within"),
            "{}",
            f.message
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
