//! GitLab reporting with the `gitlab` crate's async client: commit statuses, MR notes, and for
//! comment commands member access levels, merge request heads and award emoji on notes.
//!
//! Endpoints are the crate's typed builders (`CreateCommitStatus`, `CreateMergeRequestNote`,
//! `EditMergeRequestNote`, `MergeRequestNotes`), sent through the client's
//! [`AsyncClient::rest_async`] by [`GitlabForge::send`], which mirrors the crate's own
//! `query_async` but keeps the response headers: `query_async` turns a `429` into an error that
//! keeps `Retry-After`, but a `503` into one without headers, and a success drops them all, so
//! rate-limit headers on successful answers (`RateLimit-Remaining: 0`) would be lost.
//!
//! GitLab refuses a status that does not change state (`400 Cannot transition status via :run
//! from :running`); the reporter never sends one on purpose, and one sent again after a crash
//! between the call and the store's write is taken as done.

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use gitlab::api::projects::members::AllProjectMember;
use gitlab::api::projects::merge_requests::MergeRequest;
use gitlab::api::projects::merge_requests::notes::awards::CreateMergeRequestNoteAward;
use gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes,
};
use gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};
use gitlab::api::users::Users;
use gitlab::api::{AsyncClient, Endpoint};
use gitlab::{AsyncGitlab, GitlabBuilder};

use crate::event::Actor;
use crate::forge::report::{
    Access, BoxFuture, Forge, ForgeError, MergeRequestHead, RateGate, Reaction, StatusReport,
    StatusState, classify, error_message,
};
use crate::service::mirror::SecretString;

/// Most pages of notes searched for a run's marker (100 notes a page, newest first).
const MAX_NOTE_PAGES: u32 = 20;

/// One GitLab project's reporting client.
pub struct GitlabForge {
    client: AsyncGitlab,
    /// `group/project`.
    project: String,
    gate: RateGate,
}

impl std::fmt::Debug for GitlabForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitlabForge")
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

impl GitlabForge {
    /// Connects to the GitLab at `url` (`https://gitlab.example.com`; `http://` for a local test
    /// server) for `project` (`group/project`). The crate checks the token with `GET
    /// /api/v4/user` here: a refused token is [`ForgeError::Setup`], an unreachable server
    /// [`ForgeError::Unavailable`].
    pub async fn connect(
        url: &str,
        project: &str,
        token: &SecretString,
    ) -> Result<GitlabForge, ForgeError> {
        let (insecure, host) = match url.trim_end_matches('/').split_once("://") {
            Some(("https", host)) => (false, host),
            Some(("http", host)) => (true, host),
            _ => {
                return Err(ForgeError::Setup(format!(
                    "forge_url `{url}`: expected https://HOST"
                )));
            }
        };
        let mut builder = GitlabBuilder::new(host, token.expose());
        if insecure {
            builder.insecure();
        }
        builder.user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        let client = builder.build_async().await.map_err(connect_error)?;
        Ok(GitlabForge {
            client,
            project: project.to_owned(),
            gate: RateGate::default(),
        })
    }

    /// Sends one endpoint; the answer's body when it succeeded.
    async fn send<E: Endpoint + Sync>(&self, endpoint: &E) -> Result<Bytes, ForgeError> {
        let setup = |e: &dyn std::fmt::Display| ForgeError::Setup(e.to_string());
        let mut url = endpoint
            .url_base()
            .endpoint_for(&self.client, &endpoint.endpoint())
            .map_err(|e| setup(&e))?;
        endpoint.parameters().add_to_url(&mut url);
        let request = http::Request::builder()
            .method(endpoint.method())
            .uri(url.as_str());
        let (request, body) = match endpoint.body().map_err(|e| setup(&e))? {
            Some((mime, data)) => (request.header(http::header::CONTENT_TYPE, mime), data),
            None => (request, Vec::new()),
        };
        let response =
            self.client
                .rest_async(request, body)
                .await
                .map_err(|e| ForgeError::Unavailable {
                    message: e.to_string(),
                    retry_after: None,
                })?;
        self.gate.observe(response.headers());
        let message = if response.status().is_success() {
            String::new()
        } else {
            error_message(response.body())
        };
        classify(response.status(), response.headers(), &message)?;
        Ok(response.into_body())
    }
}

impl GitlabForge {
    /// The id of the user named `login`, if GitLab knows one (`GET /users?username=`).
    async fn user_id(&self, login: &str) -> Result<Option<u64>, ForgeError> {
        #[derive(serde::Deserialize)]
        struct User {
            id: u64,
        }
        let endpoint = Users::builder()
            .username(login)
            .build()
            .map_err(builder_error)?;
        let body = self.send(&endpoint).await?;
        let users: Vec<User> =
            serde_json::from_slice(&body).map_err(|e| unexpected("a user search", e))?;
        Ok(users.first().map(|u| u.id))
    }

    /// A member's access level (`GET /projects/:id/members/all/:user_id`, inherited
    /// memberships included); not a member is [`Access::None`].
    async fn member_access(&self, user: u64) -> Result<Access, ForgeError> {
        #[derive(serde::Deserialize)]
        struct Member {
            access_level: u64,
            #[serde(default)]
            state: Option<String>,
        }
        let endpoint = AllProjectMember::builder()
            .project(self.project.as_str())
            .user(user)
            .build()
            .map_err(builder_error)?;
        match self.send(&endpoint).await {
            Ok(body) => {
                let member: Member =
                    serde_json::from_slice(&body).map_err(|e| unexpected("a member", e))?;
                if member.state.as_deref().is_some_and(|s| s != "active") {
                    return Ok(Access::None);
                }
                Ok(Access::from_gitlab_level(member.access_level))
            }
            Err(ForgeError::Rejected { status: 404, .. }) => Ok(Access::None),
            Err(e) => Err(e),
        }
    }
}

/// The client's build error (its `GET /api/v4/user` check failed): unreachable, `5xx` and `429`
/// are worth retrying, anything else is setup. The crate's check keeps no headers (except in
/// its own rate-limit error), so a `Retry-After` on that one call is replaced by the back-off.
fn connect_error(e: gitlab::GitlabError) -> ForgeError {
    use gitlab::api::ApiError;
    let message = e.to_string();
    let retry = |retry_after| ForgeError::Unavailable {
        message: message.clone(),
        retry_after,
    };
    match &e {
        gitlab::GitlabError::Communication { .. } => retry(None),
        gitlab::GitlabError::Http { status } if status.is_server_error() => retry(None),
        gitlab::GitlabError::Api { source } => match source {
            ApiError::GitlabRateLimited { retry_after, .. } => retry(Some(*retry_after)),
            ApiError::GitlabService { status, .. }
            | ApiError::GitlabWithStatus { status, .. }
            | ApiError::GitlabObjectWithStatus { status, .. }
            | ApiError::GitlabUnrecognizedWithStatus { status, .. }
                if status.is_server_error() || *status == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                retry(None)
            }
            ApiError::Client { .. } => retry(None),
            _ => ForgeError::Setup(message),
        },
        _ => ForgeError::Setup(message),
    }
}

fn gitlab_state(state: StatusState) -> CommitStatusState {
    match state {
        StatusState::Pending => CommitStatusState::Pending,
        StatusState::Running => CommitStatusState::Running,
        StatusState::Success => CommitStatusState::Success,
        StatusState::Failed => CommitStatusState::Failed,
        StatusState::Canceled => CommitStatusState::Canceled,
        StatusState::Skipped => CommitStatusState::Skipped,
    }
}

fn builder_error(e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Rejected {
        status: 0,
        message: e.to_string(),
    }
}

/// An answer that does not parse: the forge (or a proxy) is not itself; worth another try.
fn unexpected(what: &str, e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Unavailable {
        message: format!("unexpected answer to {what}: {e}"),
        retry_after: None,
    }
}

/// The `id` of a created note.
fn note_id(body: &[u8]) -> Result<i64, ForgeError> {
    #[derive(serde::Deserialize)]
    struct Note {
        id: i64,
    }
    serde_json::from_slice::<Note>(body)
        .map(|n| n.id)
        .map_err(|e| ForgeError::Unavailable {
            message: format!("unexpected answer to a note: {e}"),
            retry_after: None,
        })
}

impl Forge for GitlabForge {
    fn kind(&self) -> &'static str {
        "gitlab"
    }

    fn set_status<'a>(&'a self, status: &'a StatusReport) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let mut builder = CreateCommitStatus::builder();
            builder
                .project(self.project.as_str())
                .commit(status.sha.as_str())
                .state(gitlab_state(status.state))
                .name(status.context.as_str())
                .description(status.description.as_str());
            if let Some(url) = &status.target_url {
                builder.target_url(url.as_str());
            }
            if let Some(git_ref) = &status.git_ref {
                builder.ref_(git_ref.as_str());
            }
            let endpoint = builder.build().map_err(builder_error)?;
            match self.send(&endpoint).await {
                Ok(_) => Ok(()),
                Err(ForgeError::Rejected {
                    status: 400,
                    message,
                }) if message.contains("Cannot transition status") => {
                    tracing::debug!(context = %status.context, %message,
                        "GitLab already has this status; taken as sent");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn find_note<'a>(
        &'a self,
        mr: u64,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Note {
                id: i64,
                #[serde(default)]
                body: String,
            }
            for page in 1..=MAX_NOTE_PAGES {
                let endpoint = Paged {
                    inner: MergeRequestNotes::builder()
                        .project(self.project.as_str())
                        .merge_request(mr)
                        .sort(gitlab::api::common::SortOrder::Descending)
                        .build()
                        .map_err(builder_error)?,
                    page,
                };
                let body = self.send(&endpoint).await?;
                let notes: Vec<Note> =
                    serde_json::from_slice(&body).map_err(|e| ForgeError::Unavailable {
                        message: format!("unexpected list of notes: {e}"),
                        retry_after: None,
                    })?;
                if let Some(note) = notes.iter().find(|n| n.body.contains(marker)) {
                    return Ok(Some(note.id));
                }
                if notes.len() < PER_PAGE {
                    break;
                }
            }
            Ok(None)
        })
    }

    fn create_note<'a>(&'a self, mr: u64, body: &'a str) -> BoxFuture<'a, Result<i64, ForgeError>> {
        Box::pin(async move {
            let endpoint = CreateMergeRequestNote::builder()
                .project(self.project.as_str())
                .merge_request(mr)
                .body(body)
                .build()
                .map_err(builder_error)?;
            note_id(&self.send(&endpoint).await?)
        })
    }

    fn edit_note<'a>(
        &'a self,
        mr: u64,
        id: i64,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let note = u64::try_from(id).map_err(builder_error)?;
            let endpoint = EditMergeRequestNote::builder()
                .project(self.project.as_str())
                .merge_request(mr)
                .note(note)
                .body(body)
                .build()
                .map_err(builder_error)?;
            self.send(&endpoint).await.map(drop)
        })
    }

    fn access<'a>(&'a self, user: &'a Actor) -> BoxFuture<'a, Result<Access, ForgeError>> {
        Box::pin(async move {
            let id = match user.id {
                Some(id) => id,
                None if user.login.is_empty() => return Ok(Access::None),
                None => match self.user_id(&user.login).await? {
                    Some(id) => id,
                    None => return Ok(Access::None),
                },
            };
            self.member_access(id).await
        })
    }

    fn merge_request_head<'a>(
        &'a self,
        mr: u64,
    ) -> BoxFuture<'a, Result<MergeRequestHead, ForgeError>> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Mr {
                #[serde(default)]
                sha: Option<String>,
                source_branch: String,
                target_branch: String,
            }
            let endpoint = MergeRequest::builder()
                .project(self.project.as_str())
                .merge_request(mr)
                .build()
                .map_err(builder_error)?;
            let body = self.send(&endpoint).await?;
            let found: Mr =
                serde_json::from_slice(&body).map_err(|e| unexpected("a merge request", e))?;
            Ok(MergeRequestHead {
                sha: found
                    .sha
                    .ok_or_else(|| unexpected("a merge request", "no `sha`"))?,
                source_branch: found.source_branch,
                target_branch: found.target_branch,
            })
        })
    }

    fn react<'a>(
        &'a self,
        mr: u64,
        comment: u64,
        reaction: Reaction,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let endpoint = CreateMergeRequestNoteAward::builder()
                .project(self.project.as_str())
                .merge_request(mr)
                .note(comment)
                .name(reaction.gitlab_name())
                .build()
                .map_err(builder_error)?;
            match self.send(&endpoint).await {
                Ok(_) => Ok(()),
                // GitLab keeps one award per person and emoji, and says so with a 404.
                Err(ForgeError::Rejected { message, .. })
                    if message.contains("has already been taken") =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn paused_until(&self) -> Option<SystemTime> {
        self.gate.until()
    }
}

/// Notes a page holds.
const PER_PAGE: usize = 100;

/// One page of a list endpoint (the crate's pager hides the headers; a page at a time is all
/// the marker search needs).
struct Paged<E> {
    inner: E,
    page: u32,
}

impl<E: Endpoint> Endpoint for Paged<E> {
    fn method(&self) -> http::Method {
        self.inner.method()
    }

    fn endpoint(&self) -> Cow<'static, str> {
        self.inner.endpoint()
    }

    fn parameters(&self) -> gitlab::api::QueryParams<'_> {
        let mut params = self.inner.parameters();
        params
            .push("per_page", PER_PAGE as u64)
            .push("page", u64::from(self.page));
        params
    }
}
