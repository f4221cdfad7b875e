//! What `ferry render` and `ferry run` read from the git repository of the current directory for
//! their defaults: HEAD's commit and branch, the `origin` URL, the git directory.
//!
//! Asked of `git` itself, so that every answer is what `git` would say (`GIT_DIR`, worktrees,
//! `url.<base>.insteadOf`, `safe.directory`). Each `git` process costs about 2 ms, a third of a
//! `ferry render`, so the commit and the branch come from one `git rev-parse`. libgit2, already
//! linked for the server, was measured and rejected here: its first use initialises OpenSSL,
//! which took 35 ms, eight times the whole render.

use std::path::PathBuf;
use std::process::Command;

/// Runs `git ARGS` in the current directory; its trimmed standard output when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A full ref from `git rev-parse --symbolic-full-name HEAD`, which says `HEAD` when detached.
fn branch_ref(name: &str) -> Option<String> {
    (name != "HEAD" && name.starts_with("refs/")).then(|| name.to_owned())
}

/// HEAD's commit and the ref HEAD points at, each only if asked for: `(sha, ref)`. The ref is
/// `None` when HEAD is detached; the commit is `None` before the first commit (or outside a
/// repository).
pub(super) fn head(want_sha: bool, want_ref: bool) -> (Option<String>, Option<String>) {
    match (want_sha, want_ref) {
        (true, true) => match git(&["rev-parse", "HEAD", "--symbolic-full-name", "HEAD"]) {
            Some(out) => {
                let mut lines = out.lines();
                let sha = lines.next().map(str::to_owned);
                let name = lines.next().and_then(branch_ref);
                (sha, name)
            }
            // No commit yet: `rev-parse` fails as a whole, but HEAD still names a branch.
            None => (None, head(false, true).1),
        },
        (true, false) => (git(&["rev-parse", "HEAD"]), None),
        (false, true) => (None, git(&["symbolic-ref", "-q", "HEAD"])),
        (false, false) => (None, None),
    }
}

/// `git remote get-url origin` (with `url.<base>.insteadOf` applied).
pub(super) fn origin_url() -> Option<String> {
    git(&["remote", "get-url", "origin"])
}

/// `git rev-parse --absolute-git-dir`: the git directory (a linked worktree's own).
pub(super) fn git_dir() -> Option<PathBuf> {
    git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from)
}
