//! The dashboard at `/`: server-rendered pages for people, with no JavaScript build step.
//!
//! - `GET /`: the runs list with filters and state badges ([`list`]).
//! - `GET /runs/{id}`: one run: its step graph as SVG, durations, GPU usage, metrics against the
//!   baseline, a log tail, and rerun / cancel buttons ([`run`], [`graph`], [`logs`]).
//! - `GET /events`: server-sent events saying when runs changed ([`live`]).
//! - `POST /login`, `POST /logout`: the sign-in cookie ([`auth`]).
//! - `GET /assets/app.js`, `GET /assets/app.css`, `GET /assets/favicon.svg`: the only script,
//!   stylesheet and icon, embedded in the binary.
//!
//! **Why server-rendered.** The pages are plain HTML made by Rust functions from the store's
//! data, so they work with scripts off (minus live updates and buttons), need no npm build, and
//! cost the server a few store reads per page. The script adds only what HTML cannot do: the
//! sign-in box, the buttons (which call `/api/v1`, the same API the CLI uses, so the dashboard
//! has no write path of its own) and live updates.
//!
//! **Safety.** Every value is HTML-escaped where it is written ([`html::Esc`]); responses carry a
//! strict Content-Security-Policy (scripts, styles and connections from this origin only, no
//! inline script or style, no framing) plus `nosniff` and `no-referrer`. Reads are public only
//! with `dashboard_public: true`; otherwise they need a token ([`auth`]).

mod auth;
mod graph;
mod html;
mod list;
mod live;
mod logs;
mod run;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_engine::pipeline;
use ferry_engine::service::operations::run_detail;
use ferry_engine::store::{Page, RunId, StoreError, now_millis};
use serde::Deserialize;

use self::auth::Access;
use self::html::{Esc, Frame, page};
use self::list::{ListQuery, ListView};
use self::run::{LogView, RunView};
use super::AppState;

pub use self::live::Live;

/// The Content-Security-Policy of every dashboard response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

/// The dashboard's routes (merged into the server's router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(list_page))
        .route("/runs/{id}", get(run_page))
        .route("/events", get(events))
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(stylesheet))
        .route("/assets/favicon.svg", get(icon))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn icon() -> Response {
    asset("image/svg+xml", include_str!("assets/favicon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An HTML page; never cached (it is live data, and it may be private).
fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// What every page's frame needs from the state.
struct Framing {
    mark: String,
    private: bool,
}

async fn framing(state: &AppState) -> Result<Framing, StoreError> {
    Ok(Framing {
        mark: state.store.change_mark().await?.to_string(),
        private: !state.config.dashboard_public,
    })
}

fn full_page(status: StatusCode, framing: &Framing, title: &str, body: &str) -> Response {
    let frame = Frame {
        title,
        mark: &framing.mark,
        private: framing.private,
    };
    html_response(status, page(&frame, body))
}

/// A page with only a message (errors, not found, sign in); `body` is HTML.
fn bare_page(status: StatusCode, title: &str, body: &str) -> Response {
    let framing = Framing {
        mark: String::new(),
        private: true,
    };
    full_page(status, &framing, title, body)
}

fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", Esc(title), Esc(message));
    bare_page(status, title, &body)
}

fn store_failed(e: &StoreError) -> Response {
    tracing::error!(error = %e, "dashboard: the store failed");
    message_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Database error",
        "The database could not be read; try again shortly.",
    )
}

/// The answer to a read without a valid token: the sign-in box and how to get a token.
fn sign_in_page() -> Response {
    let body = "<div id=\"denied\"><h1>Sign in</h1><p>This dashboard needs an API token. \
                Paste one into the box above; an administrator creates one with \
                <code>ferry token create --project PROJECT --name NAME</code>.</p></div>";
    bare_page(StatusCode::UNAUTHORIZED, "Sign in", body)
}

async fn list_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    if auth::access(&state, &headers).await == Access::Denied {
        return sign_in_page();
    }
    let framing = match framing(&state).await {
        Ok(f) => f,
        Err(e) => return store_failed(&e),
    };
    let (runs, next, error) = match query.parse() {
        Ok((filter, before)) => {
            let page = Page {
                before,
                limit: list::PAGE,
            };
            match state.store.list_runs(&filter, page).await {
                Ok(p) => (p.runs, p.next, None),
                Err(e) => return store_failed(&e),
            }
        }
        Err(message) => (Vec::new(), None, Some(message)),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    // The notice is worth a cheap query, not a failed page.
    let troubled = match state.store.troubled_event_counts().await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: counting troubled deliveries failed");
            (0, 0)
        }
    };
    let view = ListView {
        troubled,
        query: &query,
        projects: state
            .config
            .projects
            .iter()
            .map(|p| p.name.as_str())
            .collect(),
        runs: &runs,
        next,
        error,
        now: now_millis(),
    };
    full_page(status, &framing, "Runs", &list::render(&view))
}

/// The run page's query string.
#[derive(Debug, Default, Deserialize)]
struct RunQuery {
    /// The step whose log to show.
    #[serde(default)]
    step: Option<String>,
}

async fn run_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<RunQuery>,
) -> Response {
    if auth::access(&state, &headers).await == Access::Denied {
        return sign_in_page();
    }
    let not_found = || {
        message_page(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("There is no run {id}."),
        )
    };
    let Some(run_id) = id.parse::<i64>().ok().and_then(RunId::new) else {
        return not_found();
    };
    let framing = match framing(&state).await {
        Ok(f) => f,
        Err(e) => return store_failed(&e),
    };
    let detail = match run_detail(&state.store, &state.config, run_id).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(),
        Err(e) => return store_failed(&e),
    };
    let run = &detail.run;
    let pipeline = pipeline::load(&run.pipeline_path, &run.pipeline_yaml, None).ok();
    // Only the run's own step names are ever looked up.
    let step = query
        .step
        .as_deref()
        .and_then(|asked| detail.steps.iter().find(|s| s.name == asked))
        .map(|s| s.name.as_str())
        .or_else(|| run::default_log_step(&detail.steps))
        .map(str::to_owned);
    let lines = match &step {
        Some(name) => logs::tail(&state, run, name).await,
        None => None,
    };
    let log = LogView { step, lines };
    let view = RunView {
        detail: &detail,
        pipeline: pipeline.as_ref(),
        log: &log,
        now: now_millis(),
    };
    let title = format!("Run #{} {}/{}", run.id, run.project, run.pipeline);
    full_page(StatusCode::OK, &framing, &title, &run::render(&view))
}

async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if auth::access(&state, &headers).await == Access::Denied {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    }
    let mut response = state.live.events(&state.store).into_response();
    // Proxies must not buffer the stream.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}
