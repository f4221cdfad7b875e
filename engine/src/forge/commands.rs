//! What comment commands need from a forge besides reporting: what a person may do in the
//! repository ([`Access`]), a merge request's current head ([`MergeRequestHead`]) and the
//! reaction ferry answers a comment with ([`Reaction`]). The [`Forge`] trait asks for them;
//! each forge's client maps its own words onto these.
//!
//! [`Forge`]: crate::forge::report::Forge

/// What a person may do in a repository, as its forge says: GitLab's member access level,
/// GitHub's collaborator permission. Ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Not a member (or blocked, or unknown to the forge).
    None,
    /// May read: GitLab guest, planner or reporter; GitHub read or triage.
    Read,
    /// May push: GitLab developer; GitHub write.
    Write,
    /// GitLab maintainer; GitHub maintain.
    Maintain,
    /// GitLab owner (or administrator); GitHub admin.
    Admin,
}

impl Access {
    /// Whether comment commands (and `/ferry ok-to-test`) are allowed: developer / write access
    /// or more.
    pub fn may_command(self) -> bool {
        match self {
            Access::None | Access::Read => false,
            Access::Write | Access::Maintain | Access::Admin => true,
        }
    }

    /// From a GitLab access level (10 guest, 15 planner, 20 reporter, 30 developer,
    /// 40 maintainer, 50 owner; 0 and 5 are no access).
    pub fn from_gitlab_level(level: u64) -> Access {
        match level {
            0..=9 => Access::None,
            10..=29 => Access::Read,
            30..=39 => Access::Write,
            40..=49 => Access::Maintain,
            _ => Access::Admin,
        }
    }

    /// From GitHub's answer about a collaborator: its `role_name` (`admin`, `maintain`, `write`,
    /// `triage`, `read`, or a custom role's name) when known, else its `permission` (`admin`,
    /// `write`, `read`, `none`; maintain counts as write there, triage as read).
    pub fn from_github(permission: &str, role_name: Option<&str>) -> Access {
        let from_word = |word: &str| match word {
            "admin" => Some(Access::Admin),
            "maintain" => Some(Access::Maintain),
            "write" => Some(Access::Write),
            "triage" | "read" => Some(Access::Read),
            _ => None,
        };
        role_name
            .and_then(from_word)
            .or_else(|| from_word(permission))
            .unwrap_or(Access::None)
    }
}

/// A merge request's head as the forge has it now (GitHub's comment events do not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequestHead {
    /// The head commit.
    pub sha: String,
    /// The source branch.
    pub source_branch: String,
    /// The target branch.
    pub target_branch: String,
}

/// A reaction on a comment, ferry's short answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reaction {
    /// 👍: done.
    ThumbsUp,
}

impl Reaction {
    /// GitLab's award emoji name.
    pub fn gitlab_name(self) -> &'static str {
        match self {
            Reaction::ThumbsUp => "thumbsup",
        }
    }

    /// GitHub's reaction content (also the word stored with an answer).
    pub fn github_content(self) -> &'static str {
        match self {
            Reaction::ThumbsUp => "+1",
        }
    }

    /// The reaction whose GitHub content is `word`.
    pub fn parse(word: &str) -> Option<Reaction> {
        [Reaction::ThumbsUp]
            .into_iter()
            .find(|r| r.github_content() == word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_comes_from_gitlab_levels_and_github_roles() {
        use Access::{Admin, Maintain, Read, Write};
        let no = Access::None;
        let levels = [0, 5, 10, 15, 20, 30, 40, 50, 60];
        let access: Vec<Access> = levels.into_iter().map(Access::from_gitlab_level).collect();
        assert_eq!(
            access,
            [no, no, Read, Read, Read, Write, Maintain, Admin, Admin]
        );
        assert_eq!(Access::from_github("write", Some("maintain")), Maintain);
        assert_eq!(Access::from_github("read", Some("triage")), Read);
        assert_eq!(Access::from_github("write", Some("custom-ml-role")), Write);
        assert_eq!(Access::from_github("admin", None), Admin);
        assert_eq!(Access::from_github("none", None), no);
        assert_eq!(Access::from_github("", Some("")), no);
        let allowed: Vec<bool> = [no, Read, Write, Maintain, Admin]
            .into_iter()
            .map(Access::may_command)
            .collect();
        assert_eq!(allowed, [false, false, true, true, true]);
    }
}
