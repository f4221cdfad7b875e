//! The forge-neutral event: what a GitLab or GitHub delivery means to ferry.
//!
//! Webhook payloads are parsed once, at the edge (`forge::gitlab::webhook`,
//! `forge::github::webhook`), into an [`Event`]; everything after intake (storage, planning,
//! matching) sees only this type. It is stored as JSON with its delivery, so it derives serde.

use serde::{Deserialize, Serialize};

/// Which forge a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    /// GitLab (gitlab.com or self-managed).
    Gitlab,
    /// GitHub.
    Github,
}

impl ForgeKind {
    /// The lower-case word used in URLs, config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Github => "github",
        }
    }
}

/// The repository a delivery is about, as the payload names it. Only this is read from a body
/// before its signature is checked: it selects the project whose secret verifies the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoIdentity {
    /// `group/sub/name` (GitLab `path_with_namespace`) or `owner/name` (GitHub `full_name`).
    pub full_name: String,
    /// Every URL the payload gives for the repository (https clone, ssh clone, web), for matching
    /// against a project's configured `repo`.
    pub urls: Vec<String>,
}

/// A person on the forge.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Actor {
    /// Login / username.
    pub login: String,
    /// Numeric id on the forge, when the payload has it.
    pub id: Option<u64>,
}

/// A normalised delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Which forge.
    pub forge: ForgeKind,
    /// The repository.
    pub repo: RepoIdentity,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A branch was created, updated, force-updated or deleted.
    BranchPush(BranchPush),
    /// A tag was created or deleted.
    TagPush(TagPush),
    /// Something happened to a merge request (pull request).
    MergeRequest(MergeRequestEvent),
    /// A comment on a merge request.
    Comment(CommentEvent),
    /// A check run or check suite was re-requested (GitHub).
    Rerequested(Rerequested),
    /// The forge testing the hook (GitHub `ping`).
    Ping,
}

/// How a branch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchChange {
    /// New branch (`before` is all zeros).
    Created,
    /// Fast-forward or not known to be forced (GitLab does not say; planning checks ancestry).
    Updated,
    /// The forge says the push was forced.
    ForceUpdated,
    /// Branch deleted (`after` is all zeros).
    Deleted,
}

/// A branch push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPush {
    /// Branch name, without `refs/heads/`.
    pub branch: String,
    /// Previous head; `None` for a new branch.
    pub before: Option<String>,
    /// New head; `None` for a deleted branch.
    pub after: Option<String>,
    /// How it changed.
    pub change: BranchChange,
    /// Message of the head commit, when the payload has it (for `[skip ci]`).
    pub head_message: Option<String>,
    /// Who pushed.
    pub pusher: Actor,
    /// The repository's default branch, when the payload says.
    pub default_branch: Option<String>,
}

/// How a tag changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagChange {
    /// New tag (or moved).
    Created,
    /// Tag deleted.
    Deleted,
}

/// A tag push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagPush {
    /// Tag name, without `refs/tags/`.
    pub tag: String,
    /// The commit the tag points at (for annotated tags, the commit, not the tag object, when the
    /// payload gives it); `None` when deleted.
    pub sha: Option<String>,
    /// How it changed.
    pub change: TagChange,
    /// Message of the head commit, when given.
    pub head_message: Option<String>,
    /// Who pushed.
    pub pusher: Actor,
}

/// What happened to a merge request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeRequestAction {
    /// Opened.
    Opened,
    /// New commits were pushed to it.
    Updated,
    /// Reopened.
    Reopened,
    /// Closed without merging.
    Closed,
    /// Merged.
    Merged,
    /// Marked ready (no longer a draft).
    ReadyForReview,
    /// Anything else (title edits, labels, approvals): stored, plans nothing.
    Other,
}

/// A merge request event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRequestEvent {
    /// The MR / PR number (GitLab `iid`, GitHub `number`).
    pub number: u64,
    /// What happened.
    pub action: MergeRequestAction,
    /// Source branch.
    pub source_branch: String,
    /// Target branch.
    pub target_branch: String,
    /// Head commit of the source branch.
    pub head_sha: String,
    /// Whether it is a draft.
    pub draft: bool,
    /// Whether the source branch lives in another repository (a fork).
    pub from_fork: bool,
    /// Clone URL of the source repository (differs from the target's for forks).
    pub source_repo_url: Option<String>,
    /// Author of the merge request.
    pub author: Actor,
    /// Title.
    pub title: String,
    /// Message of the head commit, when given.
    pub head_message: Option<String>,
}

/// A comment on a merge request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentEvent {
    /// The MR / PR number.
    pub number: u64,
    /// The comment text, kept verbatim for the command parser.
    pub body: String,
    /// Who wrote it.
    pub author: Actor,
    /// The comment's id on the forge.
    pub comment_id: Option<u64>,
    /// Head commit of the merge request, when the payload has it (GitLab does; GitHub's
    /// `issue_comment` does not, and planning asks the forge).
    pub head_sha: Option<String>,
    /// Source branch, when given.
    pub source_branch: Option<String>,
    /// Target branch, when given.
    pub target_branch: Option<String>,
}

/// A re-requested check (GitHub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rerequested {
    /// Commit the check is on.
    pub head_sha: String,
    /// Branch, when given.
    pub head_branch: Option<String>,
    /// The check run's name (`ferry/<pipeline>`), for a check run; `None` for a whole suite.
    pub check_name: Option<String>,
    /// Who asked.
    pub sender: Actor,
}
