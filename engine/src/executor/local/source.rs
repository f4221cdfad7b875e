//! A run's source: the tree of its commit, checked out of the project's bare mirror with git2.
//!
//! A plain checkout (no `.git`, no `git worktree` registered in the mirror) is enough for steps,
//! which see the same files as `/src` on Argo, and leaves nothing in the mirror to clean up.

use std::path::Path;

use git2::build::CheckoutBuilder;
use git2::{ErrorCode, Oid, Repository};

use crate::executor::SubmitError;

/// Writes the tree of commit `sha` of the bare repository `mirror` into `dest`, replacing what
/// `dest` held.
///
/// # Errors
///
/// [`SubmitError::Rejected`] when the mirror or the commit is missing (running again cannot
/// help), [`SubmitError::Unavailable`] for other failures (a full disk, say).
pub(super) fn checkout(mirror: &Path, sha: &str, dest: &Path) -> Result<(), SubmitError> {
    let shown = mirror.display();
    let repo = Repository::open_bare(mirror).map_err(|e| {
        SubmitError::Rejected(format!(
            "cannot open the git mirror {shown}: {}",
            e.message()
        ))
    })?;
    let oid = Oid::from_str(sha)
        .map_err(|_| SubmitError::Rejected(format!("`{sha}` is not a commit id")))?;
    let commit = repo.find_commit(oid).map_err(|e| match e.code() {
        ErrorCode::NotFound => {
            SubmitError::Rejected(format!("commit {sha} is not in the git mirror {shown}"))
        }
        _ => SubmitError::Unavailable(format!("reading commit {sha} failed: {}", e.message())),
    })?;
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        SubmitError::Unavailable(format!("{what} {}: {e}", dest.display()))
    };
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| unavailable("cannot clear", &e))?;
    }
    std::fs::create_dir_all(dest).map_err(|e| unavailable("cannot create", &e))?;
    let mut options = CheckoutBuilder::new();
    options.target_dir(dest).force().update_index(false);
    repo.checkout_tree(commit.as_object(), Some(&mut options))
        .map_err(|e| unavailable(&format!("checking out {sha} into"), &e.message()))
}
