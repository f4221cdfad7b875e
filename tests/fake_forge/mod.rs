//! A wire-level fake of the GitLab and GitHub REST APIs that ferry's reporter uses, served on
//! 127.0.0.1 for the real `gitlab` and `octocrab` clients.
//!
//! It records every call (method, path, query, decoded body, answer status) and keeps the state
//! the forge would: GitLab commit statuses with GitLab's state-transition rule (a status in
//! `pending`/`running` for the same sha, name and ref is updated; repeating its state answers
//! `400 Cannot transition status via :run from :running`; a finished one is replaced by a new
//! one), MR notes, GitHub statuses, issue comments and check runs, plus the `x-ratelimit-*`
//! headers on every GitHub answer. For comment commands: people with a role each
//! ([`FakeForge::set_user`]: GitLab member access levels, GitHub collaborator permissions),
//! merge request heads ([`FakeForge::set_merge_request`]) and reactions on comments (GitLab
//! answers a repeated award `404 ... has already been taken`, GitHub `200` with the existing one). Scripted failures: the next N calls answer `5xx` or `429`
//! with `Retry-After` without doing anything ([`FakeForge::fail_next`]), or do their work and
//! then answer `502` as if the answer was lost ([`FakeForge::lose_answer_to`]).

mod github;
mod gitlab;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The GitLab token the fake accepts.
pub const GITLAB_TOKEN: &str = "glpat-fake-token-0123456789";
/// The GitHub token the fake accepts.
pub const GITHUB_TOKEN: &str = "ghp_fake_token_0123456789";
/// The installation token the fake hands to a GitHub App.
pub const INSTALLATION_TOKEN: &str = "ghs_fake_installation_token";

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `GET`, `POST`, `PUT`, `PATCH`.
    pub method: String,
    /// The path, percent-encoding kept (`/api/v4/projects/ml%2Fresnet/statuses/<sha>`).
    pub path: String,
    /// The query string (empty when none).
    pub query: String,
    /// The body: JSON as sent, or a form decoded into a JSON object of strings.
    pub body: Value,
    /// The status the fake answered.
    pub status: u16,
    /// When it came, in milliseconds since the fake started.
    pub at_ms: u64,
}

impl Call {
    /// `METHOD path` (no query), for assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// A string field of the body.
    pub fn field(&self, name: &str) -> &str {
        self.body.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// A GitLab commit status as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitlabStatus {
    /// Its id.
    pub id: u64,
    /// Commit.
    pub sha: String,
    /// Context name.
    pub name: String,
    /// Ref.
    pub git_ref: String,
    /// `created`, `pending`, `running`, `success`, ...
    pub state: String,
    /// Description.
    pub description: String,
    /// Link.
    pub target_url: String,
}

/// A note (GitLab) or issue comment (GitHub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Its id.
    pub id: u64,
    /// Markdown.
    pub body: String,
    /// How many times it was edited.
    pub edits: u32,
}

/// A GitHub check run as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRun {
    /// Its id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Commit.
    pub head_sha: String,
    /// Ferry's id for it.
    pub external_id: String,
    /// `queued`, `in_progress`, `completed`.
    pub status: String,
    /// Conclusion once completed.
    pub conclusion: Option<String>,
    /// `output.summary`.
    pub summary: String,
}

/// A person's role in the repository; each forge answers with its own words for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// GitLab guest (10); GitHub read.
    Guest,
    /// GitLab reporter (20); GitHub triage.
    Reporter,
    /// GitLab developer (30); GitHub write.
    Developer,
    /// GitLab maintainer (40); GitHub maintain.
    Maintainer,
    /// GitLab owner (50); GitHub admin.
    Owner,
}

impl Role {
    /// GitLab's access level.
    pub fn gitlab_level(self) -> u64 {
        match self {
            Role::Guest => 10,
            Role::Reporter => 20,
            Role::Developer => 30,
            Role::Maintainer => 40,
            Role::Owner => 50,
        }
    }

    /// GitHub's `permission` and `role_name`.
    pub fn github_words(self) -> (&'static str, &'static str) {
        match self {
            Role::Guest => ("read", "read"),
            Role::Reporter => ("read", "triage"),
            Role::Developer => ("write", "write"),
            Role::Maintainer => ("write", "maintain"),
            Role::Owner => ("admin", "admin"),
        }
    }
}

/// A person the fake knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// GitLab user id.
    pub id: u64,
    /// Login.
    pub login: String,
    /// Role in the repository; `None`: not a member.
    pub role: Option<Role>,
}

/// A merge request's head as the fake has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    /// Head commit.
    pub sha: String,
    /// Source branch.
    pub source_branch: String,
    /// Target branch.
    pub target_branch: String,
}

/// A reaction (GitHub) or award emoji (GitLab) on a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The comment's id.
    pub comment: u64,
    /// GitHub's content (`+1`) or GitLab's name (`thumbsup`).
    pub name: String,
}

/// A scripted answer for the next call (that matches).
#[derive(Debug, Clone)]
struct Failure {
    status: u16,
    retry_after: Option<u64>,
    /// Do the work, then answer `status` (a lost answer).
    process: bool,
    /// Only for a call with this method whose path contains this text.
    only: Option<(String, String)>,
}

/// Everything the fake knows.
#[derive(Debug, Default)]
pub struct ForgeState {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// GitLab statuses, oldest first.
    pub gitlab_statuses: Vec<GitlabStatus>,
    /// GitHub statuses as posted: (sha, context, state, description).
    pub github_statuses: Vec<(String, String, String, String)>,
    /// Notes / comments per MR / PR number.
    pub notes: BTreeMap<u64, Vec<Note>>,
    /// GitHub check runs.
    pub check_runs: Vec<CheckRun>,
    /// The `x-ratelimit-remaining` GitHub answers carry.
    pub github_remaining: u64,
    /// People and their roles (permissions).
    pub users: Vec<User>,
    /// Merge requests / pull requests by number.
    pub merge_requests: BTreeMap<u64, MergeRequest>,
    /// Reactions on comments, in order.
    pub reactions: Vec<Reaction>,
    next_id: u64,
    failures: VecDeque<Failure>,
    started: Option<std::time::Instant>,
}

impl ForgeState {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// What a handler answers.
pub(crate) struct Answer {
    status: StatusCode,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub(crate) fn json(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
            headers: Vec::new(),
        }
    }

    pub(crate) fn not_found() -> Answer {
        Answer::json(404, json!({"message": "404 Not Found"}))
    }
}

/// A running fake forge; stops when dropped.
pub struct FakeForge {
    addr: SocketAddr,
    state: Arc<Mutex<ForgeState>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<ForgeState>>,
    changed: Arc<Notify>,
}

impl FakeForge {
    /// Starts the fake on 127.0.0.1 (a free port).
    pub async fn start() -> FakeForge {
        let state = Arc::new(Mutex::new(ForgeState {
            github_remaining: 4999,
            started: Some(std::time::Instant::now()),
            ..ForgeState::default()
        }));
        let changed = Arc::new(Notify::new());
        let shared = Shared {
            state: state.clone(),
            changed: changed.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake forge");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeForge {
            addr,
            state,
            changed,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Reads the state.
    pub fn with<T>(&self, f: impl FnOnce(&ForgeState) -> T) -> T {
        f(&self.state.lock().expect("fake forge state"))
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    /// Calls after the first `from`, without the client's own `GET /api/v4/user` checks.
    pub fn calls_since(&self, from: usize) -> Vec<Call> {
        self.with(|s| {
            s.calls
                .iter()
                .skip(from)
                .filter(|c| c.path != "/api/v4/user")
                .cloned()
                .collect()
        })
    }

    /// The notes of MR / PR `mr`.
    pub fn notes(&self, mr: u64) -> Vec<Note> {
        self.with(|s| s.notes.get(&mr).cloned().unwrap_or_default())
    }

    /// Adds a note as if it had been created on the forge (by ferry before a crash, or by a
    /// person).
    pub fn add_note(&self, mr: u64, body: &str) -> u64 {
        let mut s = self.state.lock().expect("fake forge state");
        let id = s.next_id();
        s.notes.entry(mr).or_default().push(Note {
            id,
            body: body.to_owned(),
            edits: 0,
        });
        id
    }

    /// The next `n` calls answer `status` (with `Retry-After: retry_after` when given) and do
    /// nothing.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        let mut s = self.state.lock().expect("fake forge state");
        for _ in 0..n {
            s.failures.push_back(Failure {
                status,
                retry_after,
                process: false,
                only: None,
            });
        }
    }

    /// The next call with `method` whose path contains `path` answers `status` (with
    /// `Retry-After: retry_after` when given) and does nothing.
    pub fn fail_next_to(&self, method: &str, path: &str, status: u16, retry_after: Option<u64>) {
        let mut s = self.state.lock().expect("fake forge state");
        s.failures.push_back(Failure {
            status,
            retry_after,
            process: false,
            only: Some((method.to_owned(), path.to_owned())),
        });
    }

    /// The next call with `method` whose path contains `path` does its work, then answers `502`
    /// (the answer is lost on the way).
    pub fn lose_answer_to(&self, method: &str, path: &str) {
        let mut s = self.state.lock().expect("fake forge state");
        s.failures.push_back(Failure {
            status: 502,
            retry_after: None,
            process: true,
            only: Some((method.to_owned(), path.to_owned())),
        });
    }

    /// Makes `login` (GitLab user `id`) a member with `role`, or not a member with `None`.
    pub fn set_user(&self, id: u64, login: &str, role: Option<Role>) {
        let mut s = self.state.lock().expect("fake forge state");
        s.users.retain(|u| u.id != id && u.login != login);
        s.users.push(User {
            id,
            login: login.to_owned(),
            role,
        });
    }

    /// Sets merge request `number`'s head.
    pub fn set_merge_request(&self, number: u64, sha: &str, source: &str, target: &str) {
        let mr = MergeRequest {
            sha: sha.to_owned(),
            source_branch: source.to_owned(),
            target_branch: target.to_owned(),
        };
        self.state
            .lock()
            .expect("fake forge state")
            .merge_requests
            .insert(number, mr);
    }

    /// Every reaction so far.
    pub fn reactions(&self) -> Vec<Reaction> {
        self.with(|s| s.reactions.clone())
    }

    /// Sets the `x-ratelimit-remaining` of GitHub answers.
    pub fn set_github_remaining(&self, remaining: u64) {
        self.state
            .lock()
            .expect("fake forge state")
            .github_remaining = remaining;
    }

    /// Waits until `done` holds (checked after every call), or panics after `limit`.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&ForgeState) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if self.with(&done) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            let calls: Vec<String> = self.calls().iter().map(|c| format!("{c:?}")).collect();
            panic!(
                "the fake forge did not reach the expected state in {limit:?}; calls:\n{}",
                calls.join("\n")
            );
        }
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decodes `application/x-www-form-urlencoded` into a JSON object of strings.
fn form_to_json(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let mut map = serde_json::Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(decode(k), Value::String(decode(v)));
    }
    Value::Object(map)
}

/// Percent-decoding with `+` as a space.
pub(crate) fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key=value` pairs of a query string, decoded.
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

async fn handle(
    AxumState(shared): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let decoded = if body.is_empty() {
        Value::Null
    } else if is_json {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    } else {
        form_to_json(&body)
    };
    let github = !path.starts_with("/api/v4/");
    let answer = {
        let mut state = shared.state.lock().expect("fake forge state");
        let started = *state.started.get_or_insert_with(std::time::Instant::now);
        let at = state.failures.iter().position(|f| {
            f.only
                .as_ref()
                .is_none_or(|(m, p)| *m == method.as_str() && path.contains(p.as_str()))
        });
        let failure = at.and_then(|i| state.failures.remove(i));
        let mut answer = match &failure {
            Some(f) if !f.process => Answer::json(f.status, json!({"message": "scripted failure"})),
            Some(_) | None => {
                let req = Request {
                    method: &method,
                    path: &path,
                    query: &query,
                    headers: &headers,
                    body: &decoded,
                };
                if github {
                    github::handle(&mut state, &req)
                } else {
                    gitlab::handle(&mut state, &req)
                }
            }
        };
        if let Some(f) = &failure {
            if f.process {
                answer = Answer::json(f.status, json!({"message": "bad gateway"}));
            }
            if let Some(secs) = f.retry_after {
                answer.headers.push(("retry-after", secs.to_string()));
            }
        }
        if github {
            let remaining = state.github_remaining;
            answer
                .headers
                .push(("x-ratelimit-remaining", remaining.to_string()));
            answer
                .headers
                .push(("x-ratelimit-limit", "5000".to_owned()));
            let reset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() + 2)
                .unwrap_or(0);
            answer
                .headers
                .push(("x-ratelimit-reset", reset.to_string()));
        }
        state.calls.push(Call {
            method: method.to_string(),
            path,
            query,
            body: decoded,
            status: answer.status.as_u16(),
            at_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        answer
    };
    shared.changed.notify_waiters();
    let mut response = (answer.status, axum::Json(answer.body)).into_response();
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A request as the per-forge handlers see it.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a Value,
}

impl Request<'_> {
    /// The path's segments after `prefix`.
    pub(crate) fn segments(&self, prefix: &str) -> Vec<&str> {
        self.path
            .strip_prefix(prefix)
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A string field of the body.
    pub(crate) fn field(&self, name: &str) -> String {
        self.body
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    /// The `Authorization` header.
    pub(crate) fn authorization(&self) -> &str {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// One page (`page`, `per_page`) of `items`.
    pub(crate) fn page<T: Clone>(&self, items: &[T]) -> Vec<T> {
        let per_page: usize = query_param(self.query, "per_page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let page: usize = query_param(self.query, "page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        items
            .iter()
            .skip(per_page * page.saturating_sub(1))
            .take(per_page)
            .cloned()
            .collect()
    }
}
