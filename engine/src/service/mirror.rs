//! Git mirrors: one bare repository per project, fetched on demand (flow step 2, "Plan").
//!
//! Planning fetches the event's commit into the project's mirror under `root/<project>.git`,
//! reads `.ferry/**/*.yaml` at that commit ([`Mirrors::pipeline_files`]) and computes the files
//! the event changed ([`Mirrors::changes_for`]) for the `paths` filters of `on`.
//!
//! The API blocks; async callers run it in `spawn_blocking`. Fetches of one project are
//! serialised by a lock per project; different projects fetch in parallel. Reads take no lock:
//! they open the repository afresh, and git moves a ref only after the objects it names are
//! written. Credentials never reach an error message: URLs are shown without their password and
//! the token is scrubbed from libgit2's messages.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use git2::{
    AutotagOption, Commit, Cred, CredentialType, ErrorCode, FetchOptions, FetchPrune, ObjectType,
    Oid, RemoteCallbacks, Repository, Tree,
};

pub use super::matching::Changes;
pub use crate::config::redact_url;
use crate::config::url_password;
use crate::event::{
    BranchChange, BranchPush, Event, EventKind, ForgeKind, MergeRequestAction, TagChange,
};
use crate::pipeline::is_pipeline_file;

/// Fetches every branch, overwriting force-pushed ones.
pub const BRANCHES: &str = "+refs/heads/*:refs/heads/*";
/// Fetches every tag, overwriting moved ones.
pub const TAGS: &str = "+refs/tags/*:refs/tags/*";
/// What [`Mirrors::ensure_commit`] fetches: branches and tags.
pub const DEFAULT_REFSPECS: [&str; 2] = [BRANCHES, TAGS];

/// Where pipeline files live, relative to the repository root.
const PIPELINE_DIR: &str = ".ferry";

/// The refspec fetching merge request `number`'s head (also from forks) to
/// [`merge_request_ref`].
pub fn merge_request_refspec(forge: ForgeKind, number: u64) -> String {
    match forge {
        ForgeKind::Gitlab => format!(
            "+refs/merge-requests/{number}/head:{}",
            merge_request_ref(number)
        ),
        ForgeKind::Github => format!("+refs/pull/{number}/head:{}", merge_request_ref(number)),
    }
}

/// The mirror's ref for merge request `number`'s head: `refs/ferry/mr/<number>`.
pub fn merge_request_ref(number: u64) -> String {
    format!("refs/ferry/mr/{number}")
}

/// A string that never prints: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> SecretString {
        SecretString(secret.into())
    }

    /// The secret itself, for handing to libgit2.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

/// How to authenticate a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Anonymous (public repositories, `file://`).
    None,
    /// HTTPS basic authentication with a token as the password.
    Token {
        /// User name (`oauth2` for GitLab tokens, `x-access-token` for GitHub App tokens).
        username: String,
        /// The token.
        token: SecretString,
    },
    /// SSH keys from the running ssh-agent (`SSH_AUTH_SOCK`).
    SshAgent,
}

/// Why a mirror operation failed. Messages name the URL without its password, never a token.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The project name cannot name a mirror.
    #[error("project name `{project}` cannot name a mirror: it is empty")]
    InvalidProject {
        /// The name.
        project: String,
    },
    /// Not a full commit id.
    #[error("`{sha}` is not a commit id (40 hexadecimal digits)")]
    InvalidSha {
        /// What was given.
        sha: String,
    },
    /// The project was never fetched.
    #[error("project `{project}` has no mirror yet: fetch it first")]
    NotMirrored {
        /// The project.
        project: String,
    },
    /// The mirror could not be created or opened.
    #[error("cannot open or create the mirror of `{project}` at {}: {message}", path.display())]
    Open {
        /// The project.
        project: String,
        /// The mirror's directory.
        path: PathBuf,
        /// What libgit2 said.
        message: String,
    },
    /// The forge refused the credentials, or none were configured for a private repository.
    #[error("authentication to {url} failed for `{project}`: {message}")]
    Auth {
        /// The project.
        project: String,
        /// The URL, without its password.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Fetching failed (network, bad URL, missing repository).
    #[error("fetching `{project}` from {url} failed: {message}")]
    Fetch {
        /// The project.
        project: String,
        /// The URL, without its password.
        url: String,
        /// What libgit2 said, with secrets scrubbed.
        message: String,
    },
    /// The commit is not in the mirror.
    #[error("commit {sha} is not in the mirror of `{project}` {detail}")]
    CommitNotFound {
        /// The project.
        project: String,
        /// The commit.
        sha: String,
        /// `after fetching <url>`, or a hint to fetch.
        detail: String,
    },
    /// Reading the mirror failed.
    #[error("reading the mirror of `{project}` failed: {message}")]
    Git {
        /// The project.
        project: String,
        /// What libgit2 said.
        message: String,
    },
    /// A blocking task around the mirror failed (for callers that wrap it).
    #[error("internal error around the git mirror: {0}")]
    Internal(String),
}

/// The bare mirrors of every project, under one directory.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    /// One fetch lock per project name.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Mirrors {
    /// Mirrors under `root` (created on the first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Mirrors {
        Mirrors {
            root: root.into(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The mirror directory of `project`: `root/<escaped name>.git`, where every character
    /// outside `[A-Za-z0-9-]` becomes `_` and its hex UTF-8 bytes (`group/app` is
    /// `group_2fapp.git`), so distinct names never share a mirror.
    pub fn path(&self, project: &str) -> Result<PathBuf, MirrorError> {
        if project.is_empty() {
            return Err(MirrorError::InvalidProject {
                project: project.to_owned(),
            });
        }
        let mut name = String::with_capacity(project.len() + 4);
        for byte in project.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                name.push(char::from(byte));
            } else {
                name.push_str(&format!("_{byte:02x}"));
            }
        }
        name.push_str(".git");
        Ok(self.root.join(name))
    }

    /// Fetches `refspecs` (see [`DEFAULT_REFSPECS`], [`merge_request_refspec`]) from `url` into
    /// the project's mirror, creating it first if needed, and prunes branches and tags deleted
    /// upstream. Waits while another fetch of the same project runs.
    pub fn fetch(
        &self,
        project: &str,
        url: &str,
        creds: &Credentials,
        refspecs: &[&str],
    ) -> Result<(), MirrorError> {
        let path = self.path(project)?;
        let lock = self.lock_for(project);
        let _fetching = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = Repository::open_bare(&path)
            .or_else(|_| Repository::init_bare(&path))
            .map_err(|e| MirrorError::Open {
                project: project.to_owned(),
                path: path.clone(),
                message: e.message().to_owned(),
            })?;
        let scrub = Scrubber::new(url, creds);
        let fetch_error = |e: git2::Error, auth: bool| {
            let (url, message) = (redact_url(url), scrub.clean(e.message()));
            if auth || e.code() == ErrorCode::Auth {
                MirrorError::Auth {
                    project: project.to_owned(),
                    url,
                    message,
                }
            } else {
                MirrorError::Fetch {
                    project: project.to_owned(),
                    url,
                    message,
                }
            }
        };
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(|e| fetch_error(e, false))?;
        let mut auth_failed = false;
        let result = {
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(callbacks(creds, &mut auth_failed))
                .download_tags(AutotagOption::None)
                .update_fetchhead(false)
                .prune(FetchPrune::On);
            remote.fetch(refspecs, Some(&mut options), None)
        };
        result.map_err(|e| fetch_error(e, auth_failed))
    }

    /// Makes sure commit `sha` is in the mirror: fetches branches and tags when it is missing.
    ///
    /// # Errors
    ///
    /// [`MirrorError::CommitNotFound`] when the commit is still missing after the fetch.
    pub fn ensure_commit(
        &self,
        project: &str,
        url: &str,
        creds: &Credentials,
        sha: &str,
    ) -> Result<(), MirrorError> {
        self.ensure_commit_with(project, url, creds, &DEFAULT_REFSPECS, sha)
    }

    /// [`Mirrors::ensure_commit`] fetching `refspecs` (say, with a merge request's head).
    pub fn ensure_commit_with(
        &self,
        project: &str,
        url: &str,
        creds: &Credentials,
        refspecs: &[&str],
        sha: &str,
    ) -> Result<(), MirrorError> {
        let oid = parse_sha(sha)?;
        if self.has_commit(project, oid)? {
            return Ok(());
        }
        self.fetch(project, url, creds, refspecs)?;
        if self.has_commit(project, oid)? {
            return Ok(());
        }
        Err(MirrorError::CommitNotFound {
            project: project.to_owned(),
            sha: sha.to_owned(),
            detail: format!("after fetching {}", redact_url(url)),
        })
    }

    /// Every `*.yaml` / `*.yml` regular file under `.ferry/` (recursively) at commit `sha`, with
    /// its path from the repository root (`.ferry/train.yaml`), sorted by path. Symbolic links and
    /// submodules are skipped. No `.ferry/` gives an empty list.
    pub fn pipeline_files(
        &self,
        project: &str,
        sha: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, MirrorError> {
        let repo = self.open(project)?;
        let tree = commit(&repo, project, sha)?.tree().map_err(git(project))?;
        let dir = match tree.get_path(Path::new(PIPELINE_DIR)) {
            Ok(entry) if entry.kind() == Some(ObjectType::Tree) => {
                repo.find_tree(entry.id()).map_err(git(project))?
            }
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(git(project)(e)),
        };
        let mut files = Vec::new();
        for (path, oid) in blobs(&repo, project, &dir, &format!("{PIPELINE_DIR}/"), false)? {
            if is_pipeline_file(Path::new(&path)) {
                let blob = repo.find_blob(oid).map_err(git(project))?;
                files.push((path, blob.content().to_vec()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// The full message of commit `sha` (invalid UTF-8 replaced).
    pub fn commit_message(&self, project: &str, sha: &str) -> Result<String, MirrorError> {
        let repo = self.open(project)?;
        let commit = commit(&repo, project, sha)?;
        Ok(String::from_utf8_lossy(commit.message_bytes()).into_owned())
    }

    /// Paths that differ between the trees of commits `base` and `head`, both sides of renames,
    /// sorted and unique.
    pub fn changed_files(
        &self,
        project: &str,
        base: &str,
        head: &str,
    ) -> Result<Vec<String>, MirrorError> {
        let repo = self.open(project)?;
        let (base, head) = (commit(&repo, project, base)?, commit(&repo, project, head)?);
        diff(&repo, project, &base, &head)
    }

    /// The best common ancestor of commits `a` and `b`; `None` when their histories are unrelated.
    pub fn merge_base(
        &self,
        project: &str,
        a: &str,
        b: &str,
    ) -> Result<Option<String>, MirrorError> {
        let repo = self.open(project)?;
        let (a, b) = (commit(&repo, project, a)?, commit(&repo, project, b)?);
        Ok(merge_base(&repo, project, a.id(), b.id())?.map(|oid| oid.to_string()))
    }

    /// True when commit `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(
        &self,
        project: &str,
        ancestor: &str,
        descendant: &str,
    ) -> Result<bool, MirrorError> {
        let repo = self.open(project)?;
        let (a, d) = (
            commit(&repo, project, ancestor)?.id(),
            commit(&repo, project, descendant)?.id(),
        );
        Ok(a == d || repo.graph_descendant_of(d, a).map_err(git(project))?)
    }

    /// The commit a full ref name (`refs/heads/main`, `refs/tags/v1`, `refs/ferry/mr/7`) points
    /// at, annotated tags peeled; `None` when there is no such ref.
    pub fn resolve(&self, project: &str, refname: &str) -> Result<Option<String>, MirrorError> {
        let repo = self.open(project)?;
        Ok(resolve(&repo, project, refname)?.map(|oid| oid.to_string()))
    }

    /// The files `event` changed, for the path filters of `on`; its commits must be in the
    /// mirror ([`Mirrors::ensure_commit`]).
    ///
    /// - branch update: `before..after` when `before` is an ancestor of `after`; after a force
    ///   push (or when `before` is not an ancestor), merge-base(`before`, `after`)..`after`;
    ///   when `before` is missing from the mirror or unrelated, as for a new branch;
    /// - new branch: merge-base with `refs/heads/<default_branch>`..`after`; for the default
    ///   branch itself, or with no merge base, every file of `after`'s tree;
    /// - merge request: merge-base(target branch head, head)..head (every file of the head
    ///   without a merge base); closed, merged and other actions: [`Changes::None`];
    /// - tag created: [`Changes::All`] (path filters do not apply); deletions: [`Changes::None`];
    /// - comments, re-requested checks and pings: [`Changes::None`].
    pub fn changes_for(
        &self,
        project: &str,
        event: &Event,
        default_branch: &str,
    ) -> Result<Changes, MirrorError> {
        match &event.kind {
            EventKind::BranchPush(push) => self.branch_changes(project, push, default_branch),
            EventKind::TagPush(tag) => match tag.change {
                TagChange::Created => Ok(Changes::All),
                TagChange::Deleted => Ok(Changes::None),
            },
            EventKind::MergeRequest(mr) => match mr.action {
                MergeRequestAction::Opened
                | MergeRequestAction::Updated
                | MergeRequestAction::Reopened
                | MergeRequestAction::ReadyForReview => {
                    let repo = self.open(project)?;
                    let head = commit(&repo, project, &mr.head_sha)?;
                    let target = format!("refs/heads/{}", mr.target_branch);
                    since_base(&repo, project, resolve(&repo, project, &target)?, &head)
                }
                MergeRequestAction::Closed
                | MergeRequestAction::Merged
                | MergeRequestAction::Other => Ok(Changes::None),
            },
            EventKind::Comment(_) | EventKind::Rerequested(_) | EventKind::Ping => {
                Ok(Changes::None)
            }
        }
    }

    fn branch_changes(
        &self,
        project: &str,
        push: &BranchPush,
        default_branch: &str,
    ) -> Result<Changes, MirrorError> {
        let Some(after) = push.after.as_deref() else {
            return Ok(Changes::None);
        };
        let before = match push.change {
            BranchChange::Deleted => return Ok(Changes::None),
            BranchChange::Created => None,
            BranchChange::Updated | BranchChange::ForceUpdated => {
                push.before.as_deref().filter(|b| !is_zero(b))
            }
        };
        let repo = self.open(project)?;
        let after = commit(&repo, project, after)?;
        let before = match before.and_then(|sha| parse_sha(sha).ok()) {
            Some(oid) => find_commit(&repo, project, oid)?,
            None => None,
        };
        if let Some(before) = before {
            // merge-base(before, after) is `before` itself exactly when it is an ancestor (a
            // fast-forward); after a force push it is where the old and new histories part.
            if let Some(base) = merge_base(&repo, project, before.id(), after.id())? {
                return Ok(Changes::Files(diff_from(&repo, project, base, &after)?));
            }
        }
        if push.branch == default_branch {
            return Ok(Changes::Files(tree_files(&repo, project, &after)?));
        }
        let default = resolve(&repo, project, &format!("refs/heads/{default_branch}"))?;
        since_base(&repo, project, default, &after)
    }

    fn open(&self, project: &str) -> Result<Repository, MirrorError> {
        let path = self.path(project)?;
        if !path.exists() {
            return Err(MirrorError::NotMirrored {
                project: project.to_owned(),
            });
        }
        Repository::open_bare(&path).map_err(|e| MirrorError::Open {
            project: project.to_owned(),
            path,
            message: e.message().to_owned(),
        })
    }

    fn has_commit(&self, project: &str, oid: Oid) -> Result<bool, MirrorError> {
        match self.open(project) {
            Ok(repo) => Ok(find_commit(&repo, project, oid)?.is_some()),
            Err(MirrorError::NotMirrored { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lock_for(&self, project: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.entry(project.to_owned()).or_default().clone()
    }
}

/// Credential callbacks that offer each kind of credential once, so a rejected token fails
/// instead of being retried forever. Sets `auth_failed` when they give up.
fn callbacks<'a>(creds: &'a Credentials, auth_failed: &'a mut bool) -> RemoteCallbacks<'a> {
    let mut offered = CredentialType::empty();
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |_url, url_user, allowed| {
        let user = url_user.unwrap_or("git");
        let (kind, cred) = match creds {
            Credentials::None => (
                None,
                "the repository asks for credentials and none are configured",
            ),
            Credentials::Token { .. } if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => (
                Some(CredentialType::USER_PASS_PLAINTEXT),
                "the forge rejected the token",
            ),
            Credentials::Token { .. } => (None, "the server does not accept a username and token"),
            Credentials::SshAgent if allowed.contains(CredentialType::SSH_KEY) => (
                Some(CredentialType::SSH_KEY),
                "no key in the ssh-agent was accepted",
            ),
            Credentials::SshAgent if allowed.contains(CredentialType::USERNAME) => (
                Some(CredentialType::USERNAME),
                "the server rejected the user name",
            ),
            Credentials::SshAgent => (None, "the server does not accept ssh keys"),
        };
        let Some(kind) = kind.filter(|k| !offered.contains(*k)) else {
            *auth_failed = true;
            return Err(git2::Error::from_str(cred));
        };
        offered |= kind;
        match creds {
            Credentials::Token { username, token } => {
                Cred::userpass_plaintext(username, token.expose())
            }
            Credentials::SshAgent if kind == CredentialType::USERNAME => Cred::username(user),
            Credentials::SshAgent => Cred::ssh_key_from_agent(user),
            Credentials::None => Err(git2::Error::from_str(cred)),
        }
    });
    callbacks
}

/// Removes secrets from libgit2 messages: the token, the URL's password.
struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    fn new(url: &str, creds: &Credentials) -> Scrubber {
        let mut secrets = Vec::new();
        if let Some(password) = url_password(url) {
            secrets.push(password.to_owned());
        }
        match creds {
            Credentials::Token { token, .. } => secrets.push(token.expose().to_owned()),
            Credentials::None | Credentials::SshAgent => {}
        }
        secrets.retain(|s| !s.is_empty());
        Scrubber { secrets }
    }

    fn clean(&self, message: &str) -> String {
        self.secrets.iter().fold(message.to_owned(), |m, secret| {
            m.replace(secret.as_str(), "***")
        })
    }
}

/// The password in `scheme://user:password@host/...`, if any.
fn is_zero(sha: &str) -> bool {
    sha.bytes().all(|b| b == b'0')
}

fn parse_sha(sha: &str) -> Result<Oid, MirrorError> {
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MirrorError::InvalidSha {
            sha: sha.to_owned(),
        });
    }
    Oid::from_str(sha).map_err(|_| MirrorError::InvalidSha {
        sha: sha.to_owned(),
    })
}

fn git(project: &str) -> impl Fn(git2::Error) -> MirrorError + '_ {
    move |e| MirrorError::Git {
        project: project.to_owned(),
        message: e.message().to_owned(),
    }
}

/// The commit `oid` names (peeling an annotated tag), or `None` when the mirror lacks it.
fn find_commit<'r>(
    repo: &'r Repository,
    project: &str,
    oid: Oid,
) -> Result<Option<Commit<'r>>, MirrorError> {
    match repo.find_object(oid, None) {
        Ok(object) => object.peel_to_commit().map(Some).map_err(git(project)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(git(project)(e)),
    }
}

fn commit<'r>(repo: &'r Repository, project: &str, sha: &str) -> Result<Commit<'r>, MirrorError> {
    find_commit(repo, project, parse_sha(sha)?)?.ok_or_else(|| MirrorError::CommitNotFound {
        project: project.to_owned(),
        sha: sha.to_owned(),
        detail: "(fetch it first)".to_owned(),
    })
}

fn resolve(repo: &Repository, project: &str, refname: &str) -> Result<Option<Oid>, MirrorError> {
    match repo.find_reference(refname) {
        Ok(reference) => Ok(Some(reference.peel_to_commit().map_err(git(project))?.id())),
        Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => Ok(None),
        Err(e) => Err(git(project)(e)),
    }
}

fn merge_base(
    repo: &Repository,
    project: &str,
    a: Oid,
    b: Oid,
) -> Result<Option<Oid>, MirrorError> {
    match repo.merge_base(a, b) {
        Ok(oid) => Ok(Some(oid)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(git(project)(e)),
    }
}

/// merge-base(`base`, `head`)..`head`; every file of `head` when there is no base or no merge
/// base.
fn since_base(
    repo: &Repository,
    project: &str,
    base: Option<Oid>,
    head: &Commit<'_>,
) -> Result<Changes, MirrorError> {
    let merge = match base {
        Some(base) => merge_base(repo, project, base, head.id())?,
        None => None,
    };
    match merge {
        Some(merge) => Ok(Changes::Files(diff_from(repo, project, merge, head)?)),
        None => Ok(Changes::Files(tree_files(repo, project, head)?)),
    }
}

fn diff_from(
    repo: &Repository,
    project: &str,
    base: Oid,
    head: &Commit<'_>,
) -> Result<Vec<String>, MirrorError> {
    let base = repo.find_commit(base).map_err(git(project))?;
    diff(repo, project, &base, head)
}

fn diff(
    repo: &Repository,
    project: &str,
    base: &Commit<'_>,
    head: &Commit<'_>,
) -> Result<Vec<String>, MirrorError> {
    let (old, new) = (
        base.tree().map_err(git(project))?,
        head.tree().map_err(git(project))?,
    );
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(git(project))?;
    let mut paths = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path_bytes() {
                paths.insert(String::from_utf8_lossy(path).into_owned());
            }
        }
    }
    Ok(paths.into_iter().collect())
}

/// Every file (and submodule) path in `commit`'s tree, sorted.
fn tree_files(
    repo: &Repository,
    project: &str,
    commit: &Commit<'_>,
) -> Result<Vec<String>, MirrorError> {
    let tree = commit.tree().map_err(git(project))?;
    let mut paths: Vec<String> = blobs(repo, project, &tree, "", true)?
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    paths.sort();
    Ok(paths)
}

/// `(path, id)` of the files under `tree`, paths prefixed with `prefix`: regular files, plus
/// symbolic links and submodules when `every_kind`. Walks with an explicit stack (no recursion,
/// and no panic on names that are not UTF-8).
fn blobs(
    repo: &Repository,
    project: &str,
    tree: &Tree<'_>,
    prefix: &str,
    every_kind: bool,
) -> Result<Vec<(String, Oid)>, MirrorError> {
    let mut out = Vec::new();
    let mut pending = vec![(prefix.to_owned(), tree.clone())];
    while let Some((dir, tree)) = pending.pop() {
        for entry in tree.iter() {
            let path = format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes()));
            match entry.kind() {
                Some(ObjectType::Tree) => pending.push((
                    format!("{path}/"),
                    repo.find_tree(entry.id()).map_err(git(project))?,
                )),
                Some(ObjectType::Blob) if every_kind || is_regular(entry.filemode()) => {
                    out.push((path, entry.id()))
                }
                Some(ObjectType::Commit) if every_kind => out.push((path, entry.id())),
                Some(_) | None => {}
            }
        }
    }
    Ok(out)
}

/// `100644` or `100755` (not a symbolic link, `120000`).
fn is_regular(mode: i32) -> bool {
    mode & 0o170000 == 0o100000
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;
