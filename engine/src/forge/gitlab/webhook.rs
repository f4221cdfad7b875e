//! GitLab webhook deliveries: token check, delivery id, and the lenient payload structs for the
//! hooks ferry acts on (`Push Hook`, `Tag Push Hook`, `Merge Request Hook`, `Note Hook`),
//! normalised into [`EventKind`].
//!
//! The structs name only the fields ferry reads; everything that can be missing is an `Option`
//! or defaults, and unknown fields are ignored (GitLab adds fields between versions and its own
//! documented examples disagree on some). Field meanings: GitLab's "Webhook events" docs.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::event::{
    Actor, BranchChange, BranchPush, CommentEvent, Event, EventKind, ForgeKind, MergeRequestAction,
    MergeRequestEvent, RepoIdentity, TagChange, TagPush,
};
use crate::forge::{
    HeaderSource, IntakeError, Parsed, from_body, header, identity, is_zero_sha, null_default,
    real_sha,
};

/// Checks `X-Gitlab-Token` against the secret in constant time. Both sides are hashed first, so
/// the comparison takes the same time whatever their lengths.
pub fn verify_token(token: Option<&str>, secret: &[u8]) -> Result<(), IntakeError> {
    let token = token.ok_or(IntakeError::Unauthorized)?;
    let given = Sha256::digest(token.as_bytes());
    let expected = Sha256::digest(secret);
    if bool::from(given.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(IntakeError::Unauthorized)
    }
}

/// The delivery id from the headers (without the `gitlab:` prefix): `Idempotency-Key`, else
/// `X-Gitlab-Event-UUID[:X-Gitlab-Webhook-UUID]`; `None` when neither is sent.
pub fn delivery_id(headers: &dyn HeaderSource) -> Option<String> {
    if let Some(key) = header(headers, "Idempotency-Key") {
        return Some(key.to_owned());
    }
    let event = header(headers, "X-Gitlab-Event-UUID")?;
    Some(match header(headers, "X-Gitlab-Webhook-UUID") {
        Some(webhook) => format!("{event}:{webhook}"),
        None => event.to_owned(),
    })
}

/// The project a GitLab payload is about (`project`, with `repository` for extra URLs).
#[derive(Debug, Deserialize)]
struct Origin {
    project: Project,
    #[serde(default)]
    repository: Option<Repository>,
}

/// `project` (also `object_attributes.source` on merge requests).
#[derive(Debug, Default, Deserialize)]
struct Project {
    #[serde(default)]
    path_with_namespace: Option<String>,
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    http_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

/// `repository` (an older, partial copy of the project's URLs).
#[derive(Debug, Default, Deserialize)]
struct Repository {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    homepage: Option<String>,
}

impl Origin {
    fn identity(&self) -> Result<RepoIdentity, IntakeError> {
        let name = self.project.path_with_namespace.clone().ok_or_else(|| {
            IntakeError::Malformed("missing field `project.path_with_namespace`".to_owned())
        })?;
        let project = &self.project;
        let repository = self.repository.as_ref();
        let urls = [
            project.git_http_url.as_deref(),
            project.git_ssh_url.as_deref(),
            project.web_url.as_deref(),
            project.http_url.as_deref(),
            project.ssh_url.as_deref(),
            repository.and_then(|r| r.git_http_url.as_deref()),
            repository.and_then(|r| r.git_ssh_url.as_deref()),
            repository.and_then(|r| r.url.as_deref()),
            repository.and_then(|r| r.homepage.as_deref()),
        ];
        identity(name, urls)
    }
}

/// A commit in `commits` or `last_commit`.
#[derive(Debug, Deserialize)]
struct Commit {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: Option<String>,
}

/// `user` on merge request and note hooks.
#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    username: Option<String>,
}

impl User {
    fn actor(&self) -> Actor {
        Actor {
            login: self.username.clone().unwrap_or_default(),
            id: self.id,
        }
    }
}

/// `Push Hook` and `Tag Push Hook` (same shape).
#[derive(Debug, Deserialize)]
struct PushHook {
    #[serde(flatten)]
    origin: Origin,
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    user_id: Option<u64>,
    #[serde(default)]
    user_username: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    commits: Vec<Commit>,
}

impl PushHook {
    fn pusher(&self) -> Actor {
        Actor {
            login: self.user_username.clone().unwrap_or_default(),
            id: self.user_id,
        }
    }

    /// The message of commit `sha`, else of the last listed commit.
    fn message_of(&self, sha: &str) -> Option<String> {
        self.commits
            .iter()
            .find(|commit| commit.id == sha)
            .or_else(|| self.commits.last())
            .and_then(|commit| commit.message.clone())
    }
}

/// `Merge Request Hook`.
#[derive(Debug, Deserialize)]
struct MergeRequestHook {
    #[serde(flatten)]
    origin: Origin,
    #[serde(default)]
    user: Option<User>,
    object_attributes: MergeRequestAttributes,
    #[serde(default)]
    changes: Option<MergeRequestChanges>,
}

/// `object_attributes` of a merge request hook.
#[derive(Debug, Deserialize)]
struct MergeRequestAttributes {
    iid: u64,
    #[serde(default)]
    action: Option<String>,
    source_branch: String,
    target_branch: String,
    #[serde(default)]
    source_project_id: Option<u64>,
    #[serde(default)]
    target_project_id: Option<u64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    draft: bool,
    #[serde(default, deserialize_with = "null_default")]
    work_in_progress: bool,
    /// Present on `update` when new commits were pushed.
    #[serde(default)]
    oldrev: Option<String>,
    #[serde(default)]
    last_commit: Option<Commit>,
    #[serde(default)]
    source: Option<Project>,
}

/// `changes` of a merge request hook (only the draft flags).
#[derive(Debug, Default, Deserialize)]
struct MergeRequestChanges {
    #[serde(default)]
    draft: Option<Change>,
    #[serde(default)]
    work_in_progress: Option<Change>,
}

/// One `{previous, current}` change of a boolean attribute.
#[derive(Debug, Default, Deserialize)]
struct Change {
    #[serde(default)]
    previous: Option<bool>,
    #[serde(default)]
    current: Option<bool>,
}

impl Change {
    fn draft_to_ready(change: Option<&Change>) -> bool {
        change.is_some_and(|c| c.previous == Some(true) && c.current == Some(false))
    }
}

/// `Note Hook`.
#[derive(Debug, Deserialize)]
struct NoteHook {
    #[serde(flatten)]
    origin: Origin,
    #[serde(default)]
    user: Option<User>,
    object_attributes: NoteAttributes,
    #[serde(default)]
    merge_request: Option<NoteMergeRequest>,
}

/// `object_attributes` of a note hook.
#[derive(Debug, Deserialize)]
struct NoteAttributes {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, deserialize_with = "null_default")]
    note: String,
    #[serde(default, deserialize_with = "null_default")]
    noteable_type: String,
    /// `create` / `update` (newer GitLab only).
    #[serde(default)]
    action: Option<String>,
    /// Notes GitLab writes itself ("added 1 commit"), which quote commit titles.
    #[serde(default, deserialize_with = "null_default")]
    system: bool,
}

/// `merge_request` of a note hook on a merge request.
#[derive(Debug, Deserialize)]
struct NoteMergeRequest {
    iid: u64,
    #[serde(default)]
    source_branch: Option<String>,
    #[serde(default)]
    target_branch: Option<String>,
    #[serde(default)]
    last_commit: Option<Commit>,
}

/// Reads only the project identity from an unverified body.
pub fn repo_identity(body: &[u8]) -> Result<RepoIdentity, IntakeError> {
    from_body::<Origin>(body)?.identity()
}

/// Parses a verified body according to its `X-Gitlab-Event` header value.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, IntakeError> {
    match event {
        "Push Hook" => push(from_body(body)?),
        "Tag Push Hook" => tag_push(from_body(body)?),
        "Merge Request Hook" => merge_request(from_body(body)?),
        "Note Hook" => note(from_body(body)?),
        other => Ok(Parsed::ignored(format!(
            "GitLab event `{other}` is not used by ferry"
        ))),
    }
}

fn event(origin: &Origin, kind: EventKind) -> Result<Parsed, IntakeError> {
    Ok(Parsed::Event(Event {
        forge: ForgeKind::Gitlab,
        repo: origin.identity()?,
        kind,
    }))
}

fn push(hook: PushHook) -> Result<Parsed, IntakeError> {
    let branch = hook
        .git_ref
        .strip_prefix("refs/heads/")
        .unwrap_or(&hook.git_ref)
        .to_owned();
    let (before, after) = (real_sha(&hook.before), real_sha(&hook.after));
    let change = if is_zero_sha(&hook.after) {
        BranchChange::Deleted
    } else if is_zero_sha(&hook.before) {
        BranchChange::Created
    } else {
        BranchChange::Updated
    };
    let head_message = after.as_deref().and_then(|sha| hook.message_of(sha));
    let push = BranchPush {
        branch,
        before,
        after,
        change,
        head_message,
        pusher: hook.pusher(),
        default_branch: hook.origin.project.default_branch.clone(),
    };
    event(&hook.origin, EventKind::BranchPush(push))
}

fn tag_push(hook: PushHook) -> Result<Parsed, IntakeError> {
    let tag = hook
        .git_ref
        .strip_prefix("refs/tags/")
        .unwrap_or(&hook.git_ref)
        .to_owned();
    let (change, sha) = if is_zero_sha(&hook.after) {
        (TagChange::Deleted, None)
    } else {
        let checkout = hook.checkout_sha.as_deref().and_then(real_sha);
        (
            TagChange::Created,
            checkout.or_else(|| real_sha(&hook.after)),
        )
    };
    let head_message = sha.as_deref().and_then(|sha| hook.message_of(sha));
    let push = TagPush {
        tag,
        sha,
        change,
        head_message,
        pusher: hook.pusher(),
    };
    event(&hook.origin, EventKind::TagPush(push))
}

fn merge_request(hook: MergeRequestHook) -> Result<Parsed, IntakeError> {
    let attrs = &hook.object_attributes;
    let last_commit = attrs
        .last_commit
        .as_ref()
        .filter(|commit| !commit.id.is_empty());
    let last_commit = last_commit.ok_or_else(|| {
        IntakeError::Malformed("missing field `object_attributes.last_commit.id`".to_owned())
    })?;
    let mr = MergeRequestEvent {
        number: attrs.iid,
        action: merge_request_action(attrs, hook.changes.as_ref()),
        source_branch: attrs.source_branch.clone(),
        target_branch: attrs.target_branch.clone(),
        head_sha: last_commit.id.clone(),
        draft: attrs.draft || attrs.work_in_progress,
        // Unknown project ids count as a fork: the cautious side of the access policy.
        from_fork: match (attrs.source_project_id, attrs.target_project_id) {
            (Some(source), Some(target)) => source != target,
            _ => true,
        },
        source_repo_url: attrs
            .source
            .as_ref()
            .and_then(|source| source.git_http_url.clone()),
        // GitLab names the MR author only by id; `user` is whoever triggered this delivery.
        author: hook.user.as_ref().map(User::actor).unwrap_or_default(),
        title: attrs.title.clone().unwrap_or_default(),
        head_message: last_commit.message.clone(),
    };
    event(&hook.origin, EventKind::MergeRequest(mr))
}

fn merge_request_action(
    attrs: &MergeRequestAttributes,
    changes: Option<&MergeRequestChanges>,
) -> MergeRequestAction {
    match attrs.action.as_deref().unwrap_or_default() {
        "open" => MergeRequestAction::Opened,
        "reopen" => MergeRequestAction::Reopened,
        "close" => MergeRequestAction::Closed,
        "merge" => MergeRequestAction::Merged,
        "update" if attrs.oldrev.as_deref().is_some_and(|rev| !rev.is_empty()) => {
            MergeRequestAction::Updated
        }
        "update"
            if changes.is_some_and(|c| {
                Change::draft_to_ready(c.draft.as_ref())
                    || Change::draft_to_ready(c.work_in_progress.as_ref())
            }) =>
        {
            MergeRequestAction::ReadyForReview
        }
        _ => MergeRequestAction::Other,
    }
}

fn note(hook: NoteHook) -> Result<Parsed, IntakeError> {
    let attrs = &hook.object_attributes;
    if attrs.noteable_type != "MergeRequest" {
        let noteable = &attrs.noteable_type;
        return Ok(Parsed::ignored(format!(
            "note on `{noteable}`, not on a merge request"
        )));
    }
    if attrs.system {
        return Ok(Parsed::ignored("system note written by GitLab"));
    }
    if let Some(action) = attrs.action.as_deref().filter(|action| *action != "create") {
        return Ok(Parsed::ignored(format!("comment {action}, not created")));
    }
    let mr = hook.merge_request.as_ref().ok_or_else(|| {
        IntakeError::Malformed("note on a merge request without `merge_request`".to_owned())
    })?;
    let comment = CommentEvent {
        number: mr.iid,
        body: attrs.note.clone(),
        author: hook.user.as_ref().map(User::actor).unwrap_or_default(),
        comment_id: attrs.id,
        head_sha: mr
            .last_commit
            .as_ref()
            .and_then(|commit| real_sha(&commit.id)),
        source_branch: mr.source_branch.clone(),
        target_branch: mr.target_branch.clone(),
    };
    event(&hook.origin, EventKind::Comment(comment))
}
