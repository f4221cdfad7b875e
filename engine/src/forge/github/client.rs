//! GitHub reporting with `octocrab`: commit statuses (token) or check runs (GitHub App) per
//! pipeline, commit statuses per step, and one PR comment per pipeline run; for comment commands,
//! collaborator permissions, pull request heads and reactions on comments.
//!
//! Calls go through octocrab's raw verbs (`_get`, `_post`, `_patch`) with paths relative to the
//! base URI, so that octocrab adds the credentials (it only does for relative paths or
//! `api.github.com`) and the answer's headers stay readable: `x-ratelimit-remaining`,
//! `x-ratelimit-reset` and `retry-after` decide when to call again. octocrab is built without its
//! `retry` feature: its retry layer would also repeat `POST`s, which makes duplicate comments.
//!
//! With an App, the client finds the repository's installation (`GET
//! /repos/{owner}/{repo}/installation`, signed with the App's JWT) once; octocrab then fetches
//! and renews the installation token by itself.

use std::time::{Duration, SystemTime};

use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use serde_json::{Value, json};

use crate::event::Actor;
use crate::forge::report::{
    Access, BoxFuture, CheckRunReport, Forge, ForgeCredentials, ForgeError, MergeRequestHead,
    RateGate, Reaction, StatusReport, StatusState, classify, clip, error_message,
};

/// GitHub's limit on a status description, in characters (clipped in bytes, which is stricter).
const MAX_DESCRIPTION: usize = 140;
/// GitHub's limit on a check run's output summary.
const MAX_SUMMARY: usize = 65_535;
/// Items a page holds.
const PER_PAGE: usize = 100;
/// Most pages of comments searched for a run's marker.
const MAX_PAGES: u32 = 20;

/// One GitHub repository's reporting client.
pub struct GithubForge {
    client: Octocrab,
    /// `owner/repo`.
    repo: String,
    /// Whether pipelines are reported as check runs (the client is an App installation's).
    check_runs: bool,
    gate: RateGate,
}

impl std::fmt::Debug for GithubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubForge")
            .field("repo", &self.repo)
            .field("check_runs", &self.check_runs)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Unavailable {
        message: e.to_string(),
        retry_after: None,
    }
}

fn setup(e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Setup(e.to_string())
}

fn builder(
    url: &str,
) -> Result<
    octocrab::OctocrabBuilder<
        octocrab::NoSvc,
        octocrab::DefaultOctocrabBuilderConfig,
        octocrab::NoAuth,
        octocrab::NotLayerReady,
    >,
    ForgeError,
> {
    Octocrab::builder()
        .base_uri(url.trim_end_matches('/'))
        .map_err(setup)
        .map(|b| {
            b.set_connect_timeout(Some(Duration::from_secs(10)))
                .set_read_timeout(Some(Duration::from_secs(30)))
        })
}

impl GithubForge {
    /// A client for `repo` (`owner/repo`) on the GitHub API at `url` (`https://api.github.com`,
    /// or `https://HOST/api/v3` for GitHub Enterprise). With a token nothing is called here; with
    /// an App the repository's installation is looked up.
    pub async fn connect(
        url: &str,
        repo: &str,
        credentials: &ForgeCredentials,
    ) -> Result<GithubForge, ForgeError> {
        let (client, check_runs) = match credentials {
            ForgeCredentials::None => {
                return Err(ForgeError::Setup(format!(
                    "no GitHub token or App configured for {repo}"
                )));
            }
            ForgeCredentials::Token(token) => {
                let client = builder(url)?
                    .personal_token(token.expose().to_owned())
                    .build()
                    .map_err(setup)?;
                (client, false)
            }
            ForgeCredentials::GithubApp {
                app_id,
                private_key,
            } => {
                let app = builder(url)?
                    .app_from_rsa_pem(AppId(*app_id), private_key.expose().as_bytes())
                    .map_err(setup)?
                    .build()
                    .map_err(setup)?;
                let installation = installation_id(&app, repo).await?;
                (app.installation(installation).map_err(setup)?, true)
            }
        };
        Ok(GithubForge {
            client,
            repo: repo.to_owned(),
            check_runs,
            gate: RateGate::default(),
        })
    }

    /// Sends one call; the answer's body when it succeeded.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, ForgeError> {
        let response = match method {
            http::Method::POST => self.client._post(path, body).await,
            http::Method::PATCH => self.client._patch(path, body).await,
            _ => self.client._get(path).await,
        }
        .map_err(unavailable)?;
        self.gate.observe(response.headers());
        let status = response.status();
        let headers = response.headers().clone();
        let text = self
            .client
            .body_to_string(response)
            .await
            .map_err(unavailable)?;
        let message = if status.is_success() {
            String::new()
        } else {
            error_message(text.as_bytes())
        };
        classify(status, &headers, &message)?;
        Ok(text)
    }

    /// The `id` of the object an answer describes.
    fn id_of(text: &str) -> Result<i64, ForgeError> {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_i64))
            .ok_or_else(|| unavailable("an answer without an id"))
    }
}

/// The App installation that covers `repo`.
async fn installation_id(app: &Octocrab, repo: &str) -> Result<InstallationId, ForgeError> {
    let path = format!("/repos/{repo}/installation");
    let response = app._get(path.as_str()).await.map_err(unavailable)?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = app.body_to_string(response).await.map_err(unavailable)?;
    classify(status, &headers, &error_message(text.as_bytes()))?;
    GithubForge::id_of(&text)
        .and_then(|id| u64::try_from(id).map_err(setup))
        .map(InstallationId)
}

/// GitHub's commit status state (it has no running, cancelled or skipped).
fn status_word(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success | StatusState::Skipped => "success",
        StatusState::Failed => "failure",
        StatusState::Canceled => "error",
    }
}

/// A check run's `status` and `conclusion`.
fn check_words(state: StatusState) -> (&'static str, Option<&'static str>) {
    match state {
        StatusState::Pending => ("queued", None),
        StatusState::Running => ("in_progress", None),
        StatusState::Success => ("completed", Some("success")),
        StatusState::Failed => ("completed", Some("failure")),
        StatusState::Canceled => ("completed", Some("cancelled")),
        StatusState::Skipped => ("completed", Some("skipped")),
    }
}

fn check_body(check: &CheckRunReport, with_identity: bool) -> Value {
    let (status, conclusion) = check_words(check.state);
    let mut body = json!({
        "status": status,
        "output": {
            "title": clip(&check.title, 255),
            "summary": clip(&check.summary, MAX_SUMMARY),
        },
    });
    if let Some(conclusion) = conclusion {
        body["conclusion"] = json!(conclusion);
    }
    if let Some(url) = &check.details_url {
        body["details_url"] = json!(url);
    }
    if with_identity {
        body["name"] = json!(check.name);
        body["head_sha"] = json!(check.sha);
        body["external_id"] = json!(check.external_id);
    }
    body
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Forge for GithubForge {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn set_status<'a>(&'a self, status: &'a StatusReport) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let mut body = json!({
                "state": status_word(status.state),
                "context": status.context,
                "description": clip(&status.description, MAX_DESCRIPTION),
            });
            if let Some(url) = &status.target_url {
                body["target_url"] = json!(url);
            }
            let path = format!("/repos/{}/statuses/{}", self.repo, status.sha);
            self.send(http::Method::POST, &path, Some(&body))
                .await
                .map(drop)
        })
    }

    fn find_note<'a>(
        &'a self,
        mr: u64,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>> {
        Box::pin(async move {
            for page in 1..=MAX_PAGES {
                let path = format!(
                    "/repos/{}/issues/{mr}/comments?per_page={PER_PAGE}&page={page}",
                    self.repo
                );
                let text = self.send(http::Method::GET, &path, None).await?;
                let comments: Vec<Value> = serde_json::from_str(&text).map_err(unavailable)?;
                let found = comments.iter().find(|c| {
                    c.get("body")
                        .and_then(Value::as_str)
                        .is_some_and(|b| b.contains(marker))
                });
                if let Some(id) = found.and_then(|c| c.get("id")).and_then(Value::as_i64) {
                    return Ok(Some(id));
                }
                if comments.len() < PER_PAGE {
                    break;
                }
            }
            Ok(None)
        })
    }

    fn create_note<'a>(&'a self, mr: u64, body: &'a str) -> BoxFuture<'a, Result<i64, ForgeError>> {
        Box::pin(async move {
            let path = format!("/repos/{}/issues/{mr}/comments", self.repo);
            let text = self
                .send(http::Method::POST, &path, Some(&json!({ "body": body })))
                .await?;
            GithubForge::id_of(&text)
        })
    }

    fn edit_note<'a>(
        &'a self,
        _mr: u64,
        id: i64,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let path = format!("/repos/{}/issues/comments/{id}", self.repo);
            self.send(http::Method::PATCH, &path, Some(&json!({ "body": body })))
                .await
                .map(drop)
        })
    }

    fn access<'a>(&'a self, user: &'a Actor) -> BoxFuture<'a, Result<Access, ForgeError>> {
        Box::pin(async move {
            if user.login.is_empty() {
                return Ok(Access::None);
            }
            let path = format!(
                "/repos/{}/collaborators/{}/permission",
                self.repo,
                encode(&user.login)
            );
            let text = match self.send(http::Method::GET, &path, None).await {
                Ok(text) => text,
                Err(ForgeError::Rejected { status: 404, .. }) => return Ok(Access::None),
                Err(e) => return Err(e),
            };
            let answer: Value = serde_json::from_str(&text).map_err(unavailable)?;
            let word = |key: &str| answer.get(key).and_then(Value::as_str);
            Ok(Access::from_github(
                word("permission").unwrap_or(""),
                word("role_name"),
            ))
        })
    }

    fn merge_request_head<'a>(
        &'a self,
        mr: u64,
    ) -> BoxFuture<'a, Result<MergeRequestHead, ForgeError>> {
        Box::pin(async move {
            let path = format!("/repos/{}/pulls/{mr}", self.repo);
            let text = self.send(http::Method::GET, &path, None).await?;
            let pr: Value = serde_json::from_str(&text).map_err(unavailable)?;
            let field = |pointer: &str| {
                pr.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| unavailable(format!("a pull request without `{pointer}`")))
            };
            Ok(MergeRequestHead {
                sha: field("/head/sha")?,
                source_branch: field("/head/ref")?,
                target_branch: field("/base/ref")?,
            })
        })
    }

    fn react<'a>(
        &'a self,
        _mr: u64,
        comment: u64,
        reaction: Reaction,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            // GitHub answers `200` with the existing reaction when it is there already.
            let path = format!("/repos/{}/issues/comments/{comment}/reactions", self.repo);
            let body = json!({ "content": reaction.github_content() });
            self.send(http::Method::POST, &path, Some(&body))
                .await
                .map(drop)
        })
    }

    fn uses_check_runs(&self) -> bool {
        self.check_runs
    }

    fn find_check_run<'a>(
        &'a self,
        sha: &'a str,
        name: &'a str,
        external_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>> {
        Box::pin(async move {
            let path = format!(
                "/repos/{}/commits/{sha}/check-runs?check_name={}&filter=all&per_page={PER_PAGE}",
                self.repo,
                encode(name)
            );
            let text = self.send(http::Method::GET, &path, None).await?;
            let list: Value = serde_json::from_str(&text).map_err(unavailable)?;
            let runs = list.get("check_runs").and_then(Value::as_array);
            Ok(runs
                .into_iter()
                .flatten()
                .find(|r| r.get("external_id").and_then(Value::as_str) == Some(external_id))
                .and_then(|r| r.get("id").and_then(Value::as_i64)))
        })
    }

    fn create_check_run<'a>(
        &'a self,
        check: &'a CheckRunReport,
    ) -> BoxFuture<'a, Result<i64, ForgeError>> {
        Box::pin(async move {
            let path = format!("/repos/{}/check-runs", self.repo);
            let text = self
                .send(http::Method::POST, &path, Some(&check_body(check, true)))
                .await?;
            GithubForge::id_of(&text)
        })
    }

    fn update_check_run<'a>(
        &'a self,
        id: i64,
        check: &'a CheckRunReport,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let path = format!("/repos/{}/check-runs/{id}", self.repo);
            self.send(http::Method::PATCH, &path, Some(&check_body(check, false)))
                .await
                .map(drop)
        })
    }

    fn paused_until(&self) -> Option<SystemTime> {
        self.gate.until()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_github_words() {
        assert_eq!(status_word(StatusState::Running), "pending");
        assert_eq!(status_word(StatusState::Canceled), "error");
        assert_eq!(
            check_words(StatusState::Canceled),
            ("completed", Some("cancelled"))
        );
        assert_eq!(check_words(StatusState::Pending), ("queued", None));
        assert_eq!(encode("ferry/train eval"), "ferry%2Ftrain%20eval");
    }
}
