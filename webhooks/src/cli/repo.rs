//! The git repository of the current directory, as `ferry render` and `ferry run` read it for
//! their defaults (HEAD's commit and ref, the `origin` URL, the git directory).
//!
//! Read in process with libgit2 (already linked for the server's mirrors) rather than by running
//! `git`: each `git` process cost a `ferry render` without `--sha`/`--ref` about 2 ms, so the
//! command took 9 ms instead of 4, and it needed `git` on `PATH`. The repository is found as
//! `git` finds it (`GIT_DIR`, `GIT_CEILING_DIRECTORIES`, then upwards from the current
//! directory), and each answer matches the `git` command named on its method.

use std::path::PathBuf;

use git2::Repository;

/// The repository of the current directory, if there is one.
pub(super) struct CurrentRepo(Repository);

impl CurrentRepo {
    /// Finds the repository as `git` does; `None` outside one.
    pub(super) fn find() -> Option<CurrentRepo> {
        Repository::open_from_env().ok().map(CurrentRepo)
    }

    /// `git rev-parse HEAD`: HEAD's commit; `None` before the first commit.
    pub(super) fn head_sha(&self) -> Option<String> {
        let commit = self.0.head().ok()?.peel_to_commit().ok()?;
        Some(commit.id().to_string())
    }

    /// `git symbolic-ref -q HEAD`: the ref HEAD points at (`refs/heads/main`); `None` when
    /// HEAD is detached.
    pub(super) fn head_ref(&self) -> Option<String> {
        let head = self.0.find_reference("HEAD").ok()?;
        head.symbolic_target().ok().flatten().map(str::to_owned)
    }

    /// `git remote get-url origin` (with `url.<base>.insteadOf` applied).
    pub(super) fn origin_url(&self) -> Option<String> {
        let remote = self.0.find_remote("origin").ok()?;
        remote
            .url()
            .ok()
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
    }

    /// `git rev-parse --absolute-git-dir`: the git directory (a linked worktree's own).
    pub(super) fn git_dir(&self) -> PathBuf {
        let dir = self.0.path();
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }
}
