//! Reporting to a forge: the [`Forge`] plug point (step 5 of the flow, "Report").
//!
//! The reporter (`service::report`) decides *what* to say and remembers what it said; a [`Forge`]
//! only knows *how* to say it on one forge: set a commit status, find / create / edit a note on a
//! merge request, and (GitHub App) find / create / update a check run; for comment commands, it
//! also tells what a person may do ([`Access`]), a merge request's head, and reacts to comments. GitLab is
//! `gitlab::client::GitlabForge` (the `gitlab` crate), GitHub `github::client::GithubForge`
//! (`octocrab`); [`connect`] builds the right one for a project from its configuration.
//!
//! Error policy, shared by both: an answer that may change if asked again later (`429`, `5xx`,
//! `408`, GitHub's rate-limit `403`, a connection failure or timeout) is
//! [`ForgeError::Unavailable`], with the wait the forge asked for ([`retry_after`]); any other
//! refusal is [`ForgeError::Rejected`] and is never retried. Neither client retries by itself:
//! a blind retry of a `POST` is how duplicate notes happen, so retries belong to the reporter,
//! which knows what a call did.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use super::commands::{Access, MergeRequestHead, Reaction};
use crate::config::{ProjectConfig, ProjectForge, canonical_repo_url};
use crate::event::Actor;
pub use crate::executor::BoxFuture;
use crate::service::mirror::SecretString;

/// GitLab's and GitHub's limit on a status description, in bytes for GitLab (GitHub's is 140
/// characters; its client clips further).
pub const MAX_DESCRIPTION: usize = 255;

/// The state of a commit status, in GitLab's words; each forge maps them to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusState {
    /// Expected, not started (a queued or waiting run).
    Pending,
    /// In progress.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with a failure.
    Failed,
    /// Cancelled.
    Canceled,
    /// Not run.
    Skipped,
}

impl StatusState {
    /// GitLab's word, also what the reporter remembers as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Running => "running",
            StatusState::Success => "success",
            StatusState::Failed => "failed",
            StatusState::Canceled => "canceled",
            StatusState::Skipped => "skipped",
        }
    }

    /// Whether nothing follows this state.
    pub fn is_final(self) -> bool {
        match self {
            StatusState::Pending | StatusState::Running => false,
            StatusState::Success
            | StatusState::Failed
            | StatusState::Canceled
            | StatusState::Skipped => true,
        }
    }
}

/// One commit status: a context (`ferry/<pipeline>` or `ferry/<pipeline>/<step>`) on a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The commit.
    pub sha: String,
    /// The context name.
    pub context: String,
    /// The state.
    pub state: StatusState,
    /// One line for people; clipped to [`MAX_DESCRIPTION`] bytes by [`StatusReport::new`].
    pub description: String,
    /// The link behind the status (the dashboard's run page).
    pub target_url: Option<String>,
    /// The ref (branch name, or the MR's source branch), when known; GitLab keeps statuses of
    /// different refs apart.
    pub git_ref: Option<String>,
}

impl StatusReport {
    /// A status whose description is clipped to [`MAX_DESCRIPTION`] bytes.
    pub fn new(
        sha: &str,
        context: String,
        state: StatusState,
        description: &str,
        target_url: Option<String>,
        git_ref: Option<String>,
    ) -> StatusReport {
        StatusReport {
            sha: sha.to_owned(),
            context,
            state,
            description: clip(description, MAX_DESCRIPTION),
            target_url,
            git_ref,
        }
    }
}

/// A GitHub check run for one pipeline run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunReport {
    /// The commit.
    pub sha: String,
    /// The check's name (`ferry/<pipeline>`).
    pub name: String,
    /// The state (mapped to GitHub's status and conclusion).
    pub state: StatusState,
    /// The output's title (one line).
    pub title: String,
    /// The output's summary (markdown).
    pub summary: String,
    /// The dashboard's run page.
    pub details_url: Option<String>,
    /// Ferry's id for it (`ferry:run:<id>`), to find it again after a crash.
    pub external_id: String,
}

/// Why a forge call did not happen (or may not have).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// Try again later: rate limited, `5xx`, timeout, connection failure. A create that failed
    /// so may still have happened on the forge.
    #[error("forge unavailable: {message}")]
    Unavailable {
        /// What happened (status and the forge's own message, never a raw body).
        message: String,
        /// How long the forge asked us to wait (`Retry-After`, rate-limit reset), if it said.
        retry_after: Option<Duration>,
    },
    /// The forge refused the call, and would again (`400`, `401`, `403`, `404`, `422`, ...).
    #[error("forge refused ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The forge's message.
        message: String,
    },
    /// The client could not be built: a bad URL or key, or the forge refused the token.
    #[error("forge client: {0}")]
    Setup(String),
}

/// The plug point: one forge, one repository (a project). Boxed futures keep it `dyn`-usable.
///
/// Implementations never retry by themselves (see the module doc) and report rate limits they
/// see on any answer, even a successful one, through [`Forge::paused_until`].
pub trait Forge: Send + Sync + 'static {
    /// `gitlab` or `github`, for logs.
    fn kind(&self) -> &'static str;

    /// Sets one commit status. A forge that answers "already in that state" counts as success.
    fn set_status<'a>(&'a self, status: &'a StatusReport) -> BoxFuture<'a, Result<(), ForgeError>>;

    /// The id of the note on MR/PR `mr` whose body contains `marker`, if any.
    fn find_note<'a>(
        &'a self,
        mr: u64,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>>;

    /// Creates a note on MR/PR `mr`; returns its id.
    fn create_note<'a>(&'a self, mr: u64, body: &'a str) -> BoxFuture<'a, Result<i64, ForgeError>>;

    /// Replaces the body of note `id` on MR/PR `mr`.
    fn edit_note<'a>(
        &'a self,
        mr: u64,
        id: i64,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), ForgeError>>;

    /// What `user` may do in the repository. Someone the forge does not know as a member or
    /// collaborator has [`Access::None`] (not an error).
    fn access<'a>(&'a self, user: &'a Actor) -> BoxFuture<'a, Result<Access, ForgeError>>;

    /// The current head of MR/PR `mr`.
    fn merge_request_head<'a>(
        &'a self,
        mr: u64,
    ) -> BoxFuture<'a, Result<MergeRequestHead, ForgeError>>;

    /// Puts `reaction` on comment `comment` of MR/PR `mr` (GitLab award emoji, GitHub
    /// reaction). Reacting twice the same way is not an error.
    fn react<'a>(
        &'a self,
        mr: u64,
        comment: u64,
        reaction: Reaction,
    ) -> BoxFuture<'a, Result<(), ForgeError>>;

    /// Whether a pipeline's own state goes to a check run (GitHub App) instead of a commit
    /// status.
    fn uses_check_runs(&self) -> bool {
        false
    }

    /// The id of the check run on `sha` named `name` with `external_id`, if any.
    fn find_check_run<'a>(
        &'a self,
        sha: &'a str,
        name: &'a str,
        external_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>> {
        let _ = (sha, name, external_id);
        Box::pin(async { Err(no_check_runs()) })
    }

    /// Creates a check run; returns its id.
    fn create_check_run<'a>(
        &'a self,
        check: &'a CheckRunReport,
    ) -> BoxFuture<'a, Result<i64, ForgeError>> {
        let _ = check;
        Box::pin(async { Err(no_check_runs()) })
    }

    /// Updates check run `id`.
    fn update_check_run<'a>(
        &'a self,
        id: i64,
        check: &'a CheckRunReport,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        let _ = (id, check);
        Box::pin(async { Err(no_check_runs()) })
    }

    /// No call should be made before this time: the forge said the rate limit is used up.
    fn paused_until(&self) -> Option<SystemTime>;
}

fn no_check_runs() -> ForgeError {
    ForgeError::Rejected {
        status: 0,
        message: "this forge client does not report check runs".to_owned(),
    }
}

/// How ferry authenticates to a project's forge; read from the environment by the binary (the
/// variables named by `token_env`, `github_app_id_env`, `github_app_key_env`).
#[derive(Debug, Clone)]
pub enum ForgeCredentials {
    /// Nothing configured: the project's reports cannot be sent.
    None,
    /// A personal, project or bot access token (GitLab), or a token (GitHub).
    Token(SecretString),
    /// A GitHub App: its id and private key (PEM); tokens are per installation.
    GithubApp {
        /// The App's id.
        app_id: u64,
        /// The App's private key, PEM.
        private_key: SecretString,
    },
}

impl ForgeCredentials {
    /// The credentials `project` names, looked up with `env` (the binary passes
    /// `std::env::var`; the engine reads no environment): a GitHub App when both
    /// `github_app_id_env` and `github_app_key_env` are set (and the id is a number), else the
    /// token of `token_env`, else none. Empty values count as unset.
    pub fn from_env(
        project: &ProjectConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> ForgeCredentials {
        let read = |name: &Option<String>| {
            name.as_deref()
                .and_then(&env)
                .filter(|value| !value.trim().is_empty())
        };
        let app_id = read(&project.github_app_id_env).and_then(|id| id.trim().parse().ok());
        match (
            app_id,
            read(&project.github_app_key_env),
            read(&project.token_env),
        ) {
            (Some(app_id), Some(key), _) => ForgeCredentials::GithubApp {
                app_id,
                private_key: SecretString::new(key),
            },
            (_, _, Some(token)) => ForgeCredentials::Token(SecretString::new(token.trim())),
            (_, _, None) => ForgeCredentials::None,
        }
    }
}

/// Builds the forge client of `project` (`None` for `forge: none`). GitLab's client checks the
/// token (`GET /api/v4/user`) while it is built, so this needs the forge to be up; the reporter
/// calls it again later when it fails with [`ForgeError::Unavailable`].
pub async fn connect(
    project: &ProjectConfig,
    credentials: &ForgeCredentials,
) -> Result<Option<std::sync::Arc<dyn Forge>>, ForgeError> {
    let repo = repo_path(&project.repo).ok_or_else(|| {
        ForgeError::Setup(format!(
            "cannot tell the repository path from `{}`",
            project.repo
        ))
    })?;
    match project.forge {
        ProjectForge::None => Ok(None),
        ProjectForge::Gitlab => {
            let url = project.forge_url.as_deref().unwrap_or("https://gitlab.com");
            let ForgeCredentials::Token(token) = credentials else {
                return Err(ForgeError::Setup(format!(
                    "project `{}` has no GitLab token (`token_env`)",
                    project.name
                )));
            };
            let forge = super::gitlab::client::GitlabForge::connect(url, &repo, token).await?;
            Ok(Some(std::sync::Arc::new(forge)))
        }
        ProjectForge::Github => {
            let url = project
                .forge_url
                .as_deref()
                .unwrap_or("https://api.github.com");
            let forge =
                super::github::client::GithubForge::connect(url, &repo, credentials).await?;
            Ok(Some(std::sync::Arc::new(forge)))
        }
    }
}

/// The repository's path on its forge (`ml/resnet`) from its clone URL: the canonical URL
/// without its host.
pub fn repo_path(repo_url: &str) -> Option<String> {
    let canonical = canonical_repo_url(repo_url);
    let (_host, path) = canonical.split_once('/')?;
    let path = path.trim_matches('/');
    (!path.is_empty()).then(|| path.to_owned())
}

/// `text` cut to at most `max` bytes on a character boundary, ending with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let ellipsis = '…';
    let mut end = max.saturating_sub(ellipsis.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

/// How long the forge asks us to wait, from an answer's headers: `Retry-After` (seconds), and
/// when the rate limit is used up (GitLab `RateLimit-Remaining: 0`, GitHub
/// `x-ratelimit-remaining: 0`) until its reset (`RateLimit-Reset` / `x-ratelimit-reset`, Unix
/// seconds). The longest wait wins; `None` when the headers ask for none.
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let number = |name: &str| -> Option<u64> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    };
    let explicit = number("retry-after").map(Duration::from_secs);
    let exhausted = ["ratelimit-remaining", "x-ratelimit-remaining"]
        .iter()
        .any(|h| number(h) == Some(0));
    let reset = exhausted
        .then(|| number("ratelimit-reset").or_else(|| number("x-ratelimit-reset")))
        .flatten()
        .map(|at| {
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            Duration::from_secs(at).saturating_sub(now)
        });
    match (explicit, reset) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Sorts an HTTP answer into success or a [`ForgeError`]; `message` is the forge's own message
/// (already extracted from the body).
pub(crate) fn classify(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    message: &str,
) -> Result<(), ForgeError> {
    if status.is_success() {
        return Ok(());
    }
    let wait = retry_after(headers, SystemTime::now());
    let limited = status == http::StatusCode::FORBIDDEN
        && (wait.is_some() || message.to_lowercase().contains("rate limit"));
    let message = format!("{status}: {message}");
    if status.is_server_error()
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status == http::StatusCode::REQUEST_TIMEOUT
        || limited
    {
        Err(ForgeError::Unavailable {
            message,
            retry_after: wait,
        })
    } else {
        Err(ForgeError::Rejected {
            status: status.as_u16(),
            message,
        })
    }
}

/// The `message` (GitLab) or `message` + `errors` (GitHub) of an error body, clipped; never the
/// raw body.
pub(crate) fn error_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return "(no JSON message)".to_owned();
    };
    let text = match value.get("message").or_else(|| value.get("error")) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "(no message)".to_owned(),
    };
    clip(&text, 300)
}

/// The time before which a forge should not be called, as learnt from its answers.
#[derive(Debug, Default)]
pub(crate) struct RateGate(Mutex<Option<SystemTime>>);

impl RateGate {
    /// Notes the rate-limit headers of an answer.
    pub(crate) fn observe(&self, headers: &http::HeaderMap) {
        let now = SystemTime::now();
        let until = retry_after(headers, now).map(|wait| now + wait);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// When calls may resume, if they must wait.
    pub(crate) fn until(&self) -> Option<SystemTime> {
        let until = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        until.filter(|t| *t > SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn waits_come_from_retry_after_and_exhausted_limits() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(retry_after(&headers(&[]), now), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        // GitLab: the reset only counts once the limit is used up.
        let gitlab = [("ratelimit-remaining", "3"), ("ratelimit-reset", "1060")];
        assert_eq!(retry_after(&headers(&gitlab), now), None);
        let gitlab = [("ratelimit-remaining", "0"), ("ratelimit-reset", "1060")];
        assert_eq!(
            retry_after(&headers(&gitlab), now),
            Some(Duration::from_secs(60))
        );
        let github = [
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1030"),
            ("retry-after", "5"),
        ];
        assert_eq!(
            retry_after(&headers(&github), now),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn answers_sort_into_retry_or_refusal() {
        let none = headers(&[]);
        assert!(classify(http::StatusCode::CREATED, &none, "").is_ok());
        for status in [502, 503, 429, 408] {
            let status = http::StatusCode::from_u16(status).expect("status");
            assert!(matches!(
                classify(status, &none, "x"),
                Err(ForgeError::Unavailable { .. })
            ));
        }
        let limited = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")]);
        assert!(matches!(
            classify(
                http::StatusCode::FORBIDDEN,
                &limited,
                "API rate limit exceeded"
            ),
            Err(ForgeError::Unavailable { .. })
        ));
        assert_eq!(
            classify(http::StatusCode::FORBIDDEN, &none, "no access"),
            Err(ForgeError::Rejected {
                status: 403,
                message: "403 Forbidden: no access".into()
            })
        );
    }

    #[test]
    fn descriptions_are_clipped_on_character_boundaries() {
        assert_eq!(clip("short", 255), "short");
        let long = "é".repeat(200);
        let clipped = clip(&long, 255);
        assert!(clipped.len() <= 255, "{}", clipped.len());
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn credentials_prefer_an_app_then_a_token() {
        let text = "projects:\n  - { name: p, repo: https://github.com/o/r, forge: github, webhook_secret_env: S, token_env: T, github_app_id_env: A, github_app_key_env: K }\n";
        let config = crate::config::Config::from_yaml("ferry.yaml", text).expect("config");
        let project = &config.projects[0];
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let app =
            ForgeCredentials::from_env(project, env(&[("A", "12"), ("K", "pem"), ("T", "t")]));
        assert!(matches!(
            app,
            ForgeCredentials::GithubApp { app_id: 12, .. }
        ));
        let token =
            ForgeCredentials::from_env(project, env(&[("A", "x"), ("K", "pem"), ("T", "t")]));
        assert!(matches!(token, ForgeCredentials::Token(t) if t.expose() == "t"));
        let none = ForgeCredentials::from_env(project, env(&[("T", " ")]));
        assert!(matches!(none, ForgeCredentials::None));
    }

    #[test]
    fn repository_paths_come_from_clone_urls() {
        assert_eq!(
            repo_path("https://gitlab.example.com/ml/resnet.git").as_deref(),
            Some("ml/resnet")
        );
        assert_eq!(
            repo_path("git@github.com:org/repo.git").as_deref(),
            Some("org/repo")
        );
        assert_eq!(repo_path("https://example.com/").as_deref(), None);
    }
}
