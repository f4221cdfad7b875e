//! The JSON of `/api/v1`: what requests carry and what answers hold. The OpenAPI document's
//! schemas are derived from these types (schemars), and the CLI client reads answers into them, so
//! the server, the document and the client cannot drift apart.
//!
//! Times are RFC 3339 strings in UTC with milliseconds; durations are milliseconds. States and
//! triggers are the words DESIGN.md fixes (`queued` ... `cancelled`, `push` ... `comment`).

use std::collections::BTreeMap;

use ferry_engine::pipeline::EventKind;
use ferry_engine::problem::Problem;
use ferry_engine::service::operations::{self, Verdict};
use ferry_engine::store::{Run, RunState, Step, StepState, UnixMillis};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run, as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    /// The run's id.
    pub id: i64,
    /// The configured project.
    pub project: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// Its state.
    pub state: RunState,
    /// What started it.
    pub trigger: EventKind,
    /// Who asked for it through the API (the token's name); null for runs started by events.
    pub triggered_by: Option<String>,
    /// The commit.
    pub sha: String,
    /// The full ref (`refs/heads/main`).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch, for branch and merge-request runs.
    pub branch: Option<String>,
    /// The tag, for tag runs.
    pub tag: Option<String>,
    /// The merge request (pull request) number.
    pub merge_request: Option<i64>,
    /// The run this one reruns.
    pub rerun_of: Option<i64>,
    /// The executor's last word on the run (why it failed, who cancelled it).
    pub message: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it started running.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// How long it ran (to now while it runs).
    pub duration_ms: Option<i64>,
}

impl RunSummary {
    /// The summary of a stored run; running durations are measured to `now`.
    pub fn of(run: &Run, now: UnixMillis) -> RunSummary {
        RunSummary {
            id: run.id.get(),
            project: run.project.clone(),
            pipeline: run.pipeline.clone(),
            state: run.state,
            trigger: run.trigger,
            triggered_by: run.triggered_by.clone(),
            sha: run.sha.clone(),
            git_ref: run.git_ref.clone(),
            branch: run.branch.clone(),
            tag: run.tag.clone(),
            merge_request: run.mr,
            rerun_of: run.rerun_of.map(|r| r.get()),
            message: run.message.clone(),
            created_at: rfc3339(run.created_at),
            started_at: run.started_at.map(rfc3339),
            finished_at: run.finished_at.map(rfc3339),
            duration_ms: duration(run.started_at, run.finished_at, now),
        }
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    /// The runs.
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A run in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunDetail {
    /// What lists show.
    #[serde(flatten)]
    pub run: RunSummary,
    /// Parameter values, after defaults.
    pub params: BTreeMap<String, Value>,
    /// The pipeline file, from the repository root.
    pub pipeline_path: String,
    /// Why the pipeline was invalid at this commit (then the run failed without starting).
    pub problems: Vec<ProblemView>,
    /// The steps, in pipeline order.
    pub steps: Vec<StepView>,
    /// The metrics the steps published, against the baseline.
    pub metrics: MetricsView,
    /// Where to look at the run.
    pub links: LinksView,
    /// The webhook delivery behind an event-triggered run.
    pub event: Option<EventView>,
}

impl RunDetail {
    /// The detail of a run as the engine reads it.
    pub fn of(detail: &operations::RunDetail, now: UnixMillis) -> RunDetail {
        RunDetail {
            run: RunSummary::of(&detail.run, now),
            params: detail.run.params.clone(),
            pipeline_path: detail.run.pipeline_path.clone(),
            problems: detail.run.problems.iter().map(ProblemView::of).collect(),
            steps: detail.steps.iter().map(|s| StepView::of(s, now)).collect(),
            metrics: MetricsView {
                baseline_run: detail.baseline.as_ref().map(|b| b.id.get()),
                baseline_branch: detail.baseline_branch.clone(),
                values: detail.metrics.iter().map(MetricView::of).collect(),
            },
            links: LinksView {
                dashboard: detail.links.dashboard.clone(),
                argo: detail.links.argo.clone(),
            },
            event: detail.origin.as_ref().map(|o| EventView {
                id: o.event_id,
                forge: o.forge.as_str().to_owned(),
                actor: o.actor.as_ref().map(|a| a.login.clone()),
            }),
        }
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepView {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// How many attempts started (retries count).
    pub attempts: i64,
    /// The last message (a failure, a skip reason).
    pub message: Option<String>,
    /// The metrics it published.
    pub metrics: Option<Value>,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// How long it ran (to now while it runs).
    pub duration_ms: Option<i64>,
}

impl StepView {
    fn of(step: &Step, now: UnixMillis) -> StepView {
        StepView {
            name: step.name.clone(),
            state: step.state,
            attempts: step.attempts,
            message: step.message.clone(),
            metrics: step.metrics.clone(),
            started_at: step.started_at.map(rfc3339),
            finished_at: step.finished_at.map(rfc3339),
            duration_ms: duration(step.started_at, step.finished_at, now),
        }
    }
}

/// A validation problem of the pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProblemView {
    /// The file.
    pub file: String,
    /// Line, from 1 (0 when unknown).
    pub line: u32,
    /// Column, from 1 (0 when unknown).
    pub column: u32,
    /// The field's path (`steps[1].resources.gpu`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ProblemView {
    fn of(p: &Problem) -> ProblemView {
        ProblemView {
            file: p.file.clone(),
            line: p.line,
            column: p.column,
            path: p.path.clone(),
            message: p.message.clone(),
        }
    }
}

/// Metrics against the baseline: the latest succeeded run of the same pipeline on the branch the
/// run is compared on (a merge request's target branch, else its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricsView {
    /// The baseline run, when there is one.
    pub baseline_run: Option<i64>,
    /// The branch the run is compared on (null for tag runs).
    pub baseline_branch: Option<String>,
    /// Every numeric metric, by step and name.
    pub values: Vec<MetricView>,
}

/// One metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricView {
    /// The step that published it.
    pub step: String,
    /// Its name.
    pub name: String,
    /// This run's value.
    pub value: f64,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// `value - baseline`.
    pub change: Option<f64>,
    /// Lower is better for names with loss, error, perplexity, latency, wer or cer.
    pub lower_is_better: bool,
    /// Better, worse or the same as the baseline.
    pub verdict: Option<Verdict>,
}

impl MetricView {
    fn of(m: &operations::MetricComparison) -> MetricView {
        MetricView {
            step: m.step.clone(),
            name: m.name.clone(),
            value: m.value,
            baseline: m.baseline,
            change: m.change,
            lower_is_better: m.lower_is_better,
            verdict: m.verdict,
        }
    }
}

/// Links of a run (null when the base URL is not configured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinksView {
    /// The dashboard's page of the run (`public_url/runs/<id>`).
    pub dashboard: Option<String>,
    /// The workflow in the Argo UI (`argo.ui_url/workflows/<namespace>/ferry-<id>`).
    pub argo: Option<String>,
}

/// The webhook delivery behind a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventView {
    /// The stored delivery's id.
    pub id: i64,
    /// `gitlab` or `github`.
    pub forge: String,
    /// The forge user who pushed, opened the merge request or commented.
    pub actor: Option<String>,
}

/// `POST /api/v1/runs`: run one pipeline by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// The configured project.
    pub project: String,
    /// The pipeline's name (or its file name without `.yaml`).
    pub pipeline: String,
    /// A branch, a tag or a full ref (default: the project's default branch). With `sha`, it only
    /// names the run's branch or tag.
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
    /// A commit (40 hexadecimal digits).
    #[serde(default)]
    pub sha: Option<String>,
    /// Parameter values (strings, numbers or booleans); each must be declared by the pipeline.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub params: BTreeMap<String, Value>,
}

/// A parameter value (numbers and booleans are passed on as their text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    /// Text.
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

/// `POST /api/v1/runs/{id}/rerun`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// Only if the latest run of this pipeline at this commit failed (else `409`); otherwise the
    /// run is repeated whatever its state.
    #[serde(default)]
    pub failed_only: bool,
}

/// The query of `POST /api/v1/runs/{id}/rerun` (the same as the body's `failed_only`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunQuery {
    /// `true`: only if the latest run failed.
    #[serde(default)]
    pub failed: Option<bool>,
}

/// The query of `GET /api/v1/runs`; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    /// Only this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Only this pipeline.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Only this branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// Only this merge request (pull request) number.
    #[serde(default)]
    pub merge_request: Option<i64>,
    /// Only runs in this state.
    #[serde(default)]
    pub state: Option<RunState>,
    /// Only this commit.
    #[serde(default)]
    pub sha: Option<String>,
    /// Only runs with this trigger.
    #[serde(default)]
    pub trigger: Option<EventKind>,
    /// The previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
    /// At most this many runs (1 to 500, default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Where a delivery whose planning failed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Retried with back-off (an outage is retried until it ends); the project's later deliveries
    /// wait behind it.
    Retrying,
    /// Given up on: its commit is not in the repository, or its project is no longer configured.
    /// `POST /api/v1/events/{id}/retry` puts it back in line.
    Failed,
    /// Planned: its runs exist (seen only in the answer of a retry that was planned at once).
    Planned,
}

/// Which deliveries `GET /api/v1/events` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFilter {
    /// Only those retried with back-off.
    Retrying,
    /// Only those given up on.
    Failed,
}

/// A stored delivery whose planning failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliverySummary {
    /// The event's id.
    pub id: i64,
    /// The configured project.
    pub project: String,
    /// `gitlab` or `github`.
    pub forge: String,
    /// The key it was stored under (the forge's delivery id, or the body's SHA-256).
    pub delivery_key: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Failed planning attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the webhook was received.
    pub received_at: String,
    /// When it is tried next (retrying deliveries).
    pub next_attempt_at: Option<String>,
    /// The normalised event (`{"type": "branch_push", ...}`).
    pub event: Value,
}

/// An answer of `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub events: Vec<DeliverySummary>,
}

/// The query of `GET /api/v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Only deliveries in this state (default: both).
    #[serde(default)]
    pub state: Option<DeliveryFilter>,
    /// At most this many (1 to 500, default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Every error: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    /// A stable word per HTTP status.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// Each problem, with the field it is about when there is one.
    pub details: Vec<ErrorDetail>,
}

/// The error codes, one per HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request cannot be read (malformed JSON, a bad query parameter or run id).
    BadRequest,
    /// 401: no bearer token, or an unknown or revoked one.
    Unauthorized,
    /// 403: the token's scope does not cover the project.
    Forbidden,
    /// 404: no such run or route.
    NotFound,
    /// 405: the route exists for other methods.
    MethodNotAllowed,
    /// 409: the run's state does not allow it (cancel a finished run, rerun-failed a run that
    /// did not fail, rerun an invalid pipeline).
    Conflict,
    /// 422: the request is well-formed but wrong (undeclared parameters, unknown project,
    /// pipeline, ref or commit, an invalid pipeline file); `details` names each problem.
    ValidationFailed,
    /// 500: a bug.
    Internal,
    /// 502: the repository could not be fetched.
    GitError,
    /// 503: the database or the executor cannot be reached.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status of the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::ValidationFailed => 422,
            ErrorCode::Internal => 500,
            ErrorCode::GitError => 502,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// One problem of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// The field (`params.epochs`, `sha`), when the problem is about one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Milliseconds between start and finish (or `now` while running).
fn duration(
    started: Option<UnixMillis>,
    finished: Option<UnixMillis>,
    now: UnixMillis,
) -> Option<i64> {
    started.map(|s| (finished.unwrap_or(now) - s).max(0))
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ms: UnixMillis) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn durations_run_to_now_until_finished() {
        assert_eq!(duration(None, None, 50), None);
        assert_eq!(duration(Some(10), None, 50), Some(40));
        assert_eq!(duration(Some(10), Some(30), 50), Some(20));
    }
}
