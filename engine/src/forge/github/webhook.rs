//! GitHub webhook deliveries: signature check and the lenient payload structs for the events
//! ferry acts on (`push`, `pull_request`, `issue_comment`, `check_run`, `check_suite`, `ping`),
//! normalised into [`EventKind`].
//!
//! The structs name only the fields ferry reads; everything that can be missing is an `Option`
//! or defaults, and unknown fields are ignored. Field meanings: GitHub's "Webhook events and
//! payloads" docs.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::Sha256;

use crate::event::{
    Actor, BranchChange, BranchPush, CommentEvent, Event, EventKind, ForgeKind, MergeRequestAction,
    MergeRequestEvent, RepoIdentity, Rerequested, TagChange, TagPush,
};
use crate::forge::{IntakeError, Parsed, from_body, identity, null_default, real_sha};

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the HMAC-SHA256 of the raw body under the
/// secret; the final comparison is constant-time (`Mac::verify_slice`).
pub fn verify_signature(
    signature: Option<&str>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), IntakeError> {
    let hex_digest = signature
        .and_then(|value| value.strip_prefix("sha256="))
        .ok_or(IntakeError::Unauthorized)?;
    let given = hex::decode(hex_digest).map_err(|_| IntakeError::Unauthorized)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| IntakeError::Unauthorized)?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| IntakeError::Unauthorized)
}

/// `repository`.
#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

impl Repository {
    fn identity(&self) -> Result<RepoIdentity, IntakeError> {
        let urls = [
            &self.clone_url,
            &self.ssh_url,
            &self.html_url,
            &self.git_url,
        ];
        identity(self.full_name.clone(), urls.map(Option::as_deref))
    }
}

/// The one field read before verification. `None` for GitHub App hook pings.
#[derive(Debug, Deserialize)]
struct Origin {
    #[serde(default)]
    repository: Option<Repository>,
}

/// `sender`, `pull_request.user`, `comment.user`.
#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default, deserialize_with = "null_default")]
    login: String,
    #[serde(default)]
    id: Option<u64>,
}

impl User {
    fn actor(user: Option<&User>) -> Actor {
        user.map(|user| Actor {
            login: user.login.clone(),
            id: user.id,
        })
        .unwrap_or_default()
    }
}

/// `push`.
#[derive(Debug, Deserialize)]
struct PushEvent {
    repository: Repository,
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default, deserialize_with = "null_default")]
    created: bool,
    #[serde(default, deserialize_with = "null_default")]
    deleted: bool,
    #[serde(default, deserialize_with = "null_default")]
    forced: bool,
    #[serde(default)]
    head_commit: Option<Commit>,
    #[serde(default)]
    pusher: Option<Pusher>,
    #[serde(default)]
    sender: Option<User>,
}

/// `head_commit`.
#[derive(Debug, Deserialize)]
struct Commit {
    #[serde(default)]
    message: Option<String>,
}

/// `pusher` (a git identity: `name` is the login for pushes over the web or git).
#[derive(Debug, Deserialize)]
struct Pusher {
    #[serde(default)]
    name: Option<String>,
}

impl PushEvent {
    /// The pusher's login, with the sender's id when the sender is the pusher.
    fn pusher(&self) -> Actor {
        let login = self
            .pusher
            .as_ref()
            .and_then(|p| p.name.clone())
            .unwrap_or_default();
        let id = self
            .sender
            .as_ref()
            .filter(|s| s.login == login)
            .and_then(|s| s.id);
        Actor { login, id }
    }

    fn head_message(&self) -> Option<String> {
        self.head_commit
            .as_ref()
            .and_then(|commit| commit.message.clone())
    }
}

/// `pull_request` event.
#[derive(Debug, Deserialize)]
struct PullRequestEvent {
    repository: Repository,
    action: String,
    pull_request: PullRequest,
}

/// `pull_request` object.
#[derive(Debug, Deserialize)]
struct PullRequest {
    number: u64,
    #[serde(default, deserialize_with = "null_default")]
    title: String,
    #[serde(default, deserialize_with = "null_default")]
    draft: bool,
    #[serde(default, deserialize_with = "null_default")]
    merged: bool,
    #[serde(default)]
    user: Option<User>,
    head: Branch,
    base: Branch,
}

/// `pull_request.head` / `.base`.
#[derive(Debug, Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// `null` when the fork was deleted.
    #[serde(default)]
    repo: Option<BranchRepo>,
}

/// `pull_request.head.repo` / `.base.repo`.
#[derive(Debug, Deserialize)]
struct BranchRepo {
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    clone_url: Option<String>,
}

/// `issue_comment`.
#[derive(Debug, Deserialize)]
struct IssueCommentEvent {
    repository: Repository,
    action: String,
    issue: Issue,
    comment: Comment,
}

/// `issue` of an `issue_comment`.
#[derive(Debug, Deserialize)]
struct Issue {
    number: u64,
    /// Present (non-null) only when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<IgnoredAny>,
}

/// `comment` of an `issue_comment`.
#[derive(Debug, Deserialize)]
struct Comment {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, deserialize_with = "null_default")]
    body: String,
    #[serde(default)]
    user: Option<User>,
}

/// `check_run` event.
#[derive(Debug, Deserialize)]
struct CheckRunEvent {
    repository: Repository,
    action: String,
    check_run: CheckRun,
    #[serde(default)]
    sender: Option<User>,
}

/// `check_run` object.
#[derive(Debug, Deserialize)]
struct CheckRun {
    name: String,
    head_sha: String,
    #[serde(default)]
    check_suite: Option<CheckSuite>,
}

/// `check_suite` event.
#[derive(Debug, Deserialize)]
struct CheckSuiteEvent {
    repository: Repository,
    action: String,
    check_suite: CheckSuite,
    #[serde(default)]
    sender: Option<User>,
}

/// `check_suite` object (also `check_run.check_suite`).
#[derive(Debug, Default, Deserialize)]
struct CheckSuite {
    #[serde(default, deserialize_with = "null_default")]
    head_sha: String,
    #[serde(default)]
    head_branch: Option<String>,
}

/// Reads only `repository` from an unverified body; a body without one (a GitHub App hook's
/// ping) is [`IntakeError::Malformed`].
pub fn repo_identity(body: &[u8]) -> Result<RepoIdentity, IntakeError> {
    match from_body::<Origin>(body)?.repository {
        Some(repository) => repository.identity(),
        None => Err(IntakeError::Malformed(
            "missing field `repository`".to_owned(),
        )),
    }
}

/// Parses a verified body according to its `X-GitHub-Event` header value.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, IntakeError> {
    match event {
        "push" => push(from_body(body)?),
        "pull_request" => pull_request(from_body(body)?),
        "issue_comment" => issue_comment(from_body(body)?),
        "check_run" => check_run(from_body(body)?),
        "check_suite" => check_suite(from_body(body)?),
        "ping" => ping(from_body(body)?),
        other => Ok(Parsed::ignored(format!(
            "GitHub event `{other}` is not used by ferry"
        ))),
    }
}

fn event(repository: &Repository, kind: EventKind) -> Result<Parsed, IntakeError> {
    Ok(Parsed::Event(Event {
        forge: ForgeKind::Github,
        repo: repository.identity()?,
        kind,
    }))
}

fn push(push: PushEvent) -> Result<Parsed, IntakeError> {
    if let Some(branch) = push.git_ref.strip_prefix("refs/heads/") {
        let change = if push.deleted {
            BranchChange::Deleted
        } else if push.created {
            BranchChange::Created
        } else if push.forced {
            BranchChange::ForceUpdated
        } else {
            BranchChange::Updated
        };
        let branch_push = BranchPush {
            branch: branch.to_owned(),
            before: real_sha(&push.before),
            after: real_sha(&push.after),
            change,
            head_message: push.head_message(),
            pusher: push.pusher(),
            default_branch: push.repository.default_branch.clone(),
        };
        return event(&push.repository, EventKind::BranchPush(branch_push));
    }
    if let Some(tag) = push.git_ref.strip_prefix("refs/tags/") {
        let (change, sha) = if push.deleted {
            (TagChange::Deleted, None)
        } else {
            (TagChange::Created, real_sha(&push.after))
        };
        let tag_push = TagPush {
            tag: tag.to_owned(),
            sha,
            change,
            head_message: push.head_message(),
            pusher: push.pusher(),
        };
        return event(&push.repository, EventKind::TagPush(tag_push));
    }
    Ok(Parsed::ignored(format!(
        "push to `{}`, neither a branch nor a tag",
        push.git_ref
    )))
}

fn pull_request(payload: PullRequestEvent) -> Result<Parsed, IntakeError> {
    let pr = &payload.pull_request;
    let action = match payload.action.as_str() {
        "opened" => MergeRequestAction::Opened,
        "synchronize" => MergeRequestAction::Updated,
        "reopened" => MergeRequestAction::Reopened,
        "closed" if pr.merged => MergeRequestAction::Merged,
        "closed" => MergeRequestAction::Closed,
        "ready_for_review" => MergeRequestAction::ReadyForReview,
        _ => MergeRequestAction::Other,
    };
    let head_repo = pr.head.repo.as_ref();
    let base_name = pr
        .base
        .repo
        .as_ref()
        .and_then(|repo| repo.full_name.as_deref());
    let base_name = base_name.unwrap_or(&payload.repository.full_name);
    let head_name = head_repo.and_then(|repo| repo.full_name.as_deref());
    let mr = MergeRequestEvent {
        number: pr.number,
        action,
        source_branch: pr.head.git_ref.clone(),
        target_branch: pr.base.git_ref.clone(),
        head_sha: pr.head.sha.clone(),
        draft: pr.draft,
        // A deleted fork (`head.repo: null`) or an unnamed head repo counts as a fork.
        from_fork: head_name.is_none_or(|head| head != base_name),
        source_repo_url: head_repo.and_then(|repo| repo.clone_url.clone()),
        author: User::actor(pr.user.as_ref()),
        title: pr.title.clone(),
        head_message: None,
    };
    event(&payload.repository, EventKind::MergeRequest(mr))
}

fn issue_comment(payload: IssueCommentEvent) -> Result<Parsed, IntakeError> {
    if payload.issue.pull_request.is_none() {
        return Ok(Parsed::ignored("comment on an issue, not a pull request"));
    }
    if payload.action != "created" {
        return Ok(Parsed::ignored(format!(
            "comment {}, not created",
            payload.action
        )));
    }
    let comment = CommentEvent {
        number: payload.issue.number,
        body: payload.comment.body.clone(),
        author: User::actor(payload.comment.user.as_ref()),
        comment_id: payload.comment.id,
        head_sha: None,
        source_branch: None,
        target_branch: None,
    };
    event(&payload.repository, EventKind::Comment(comment))
}

fn check_run(payload: CheckRunEvent) -> Result<Parsed, IntakeError> {
    if payload.action != "rerequested" {
        return Ok(Parsed::ignored(format!("check_run {}", payload.action)));
    }
    let run = &payload.check_run;
    let rerequested = Rerequested {
        head_sha: run.head_sha.clone(),
        head_branch: run
            .check_suite
            .as_ref()
            .and_then(|suite| suite.head_branch.clone()),
        check_name: Some(run.name.clone()),
        sender: User::actor(payload.sender.as_ref()),
    };
    event(&payload.repository, EventKind::Rerequested(rerequested))
}

fn check_suite(payload: CheckSuiteEvent) -> Result<Parsed, IntakeError> {
    if payload.action != "rerequested" {
        return Ok(Parsed::ignored(format!("check_suite {}", payload.action)));
    }
    let suite = &payload.check_suite;
    if suite.head_sha.is_empty() {
        return Err(IntakeError::Malformed(
            "missing field `check_suite.head_sha`".to_owned(),
        ));
    }
    let rerequested = Rerequested {
        head_sha: suite.head_sha.clone(),
        head_branch: suite.head_branch.clone(),
        check_name: None,
        sender: User::actor(payload.sender.as_ref()),
    };
    event(&payload.repository, EventKind::Rerequested(rerequested))
}

fn ping(payload: Origin) -> Result<Parsed, IntakeError> {
    match &payload.repository {
        Some(repository) => event(repository, EventKind::Ping),
        None => Ok(Parsed::ignored("ping of a GitHub App hook (no repository)")),
    }
}
