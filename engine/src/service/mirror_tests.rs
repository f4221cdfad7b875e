//! Mirrors against real repositories made on disk and fetched over `file://`.

use std::collections::BTreeMap;
use std::sync::Arc;

use git2::{Oid, Repository, Signature};
use tempfile::TempDir;

use super::*;
use crate::event::{Actor, MergeRequestEvent, RepoIdentity, TagPush};

/// A non-bare upstream repository whose commits are written as whole snapshots.
struct Upstream {
    dir: TempDir,
    repo: Repository,
}

impl Upstream {
    fn new() -> Upstream {
        let dir = TempDir::new().expect("temp dir");
        let repo = Repository::init(dir.path()).expect("init upstream");
        Upstream { dir, repo }
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Commits exactly `files` (path, content) on top of `parents` and points `refs/heads/<branch>`
    /// at it (forced, like a force push).
    fn commit(&self, branch: &str, parents: &[Oid], files: &[(&str, &str)], message: &str) -> Oid {
        let tree = self.tree(files);
        let tree = self.repo.find_tree(tree).expect("tree");
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p).expect("parent"))
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let sig = Signature::new(
            "Test",
            "test@example.com",
            &git2::Time::new(1_700_000_000, 0),
        )
        .expect("signature");
        let oid = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .expect("commit");
        self.set_branch(branch, oid);
        oid
    }

    fn set_branch(&self, branch: &str, oid: Oid) {
        self.repo
            .reference(&format!("refs/heads/{branch}"), oid, true, "test")
            .expect("set branch");
    }

    fn delete_branch(&self, branch: &str) {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .expect("branch")
            .delete()
            .expect("delete");
    }

    /// A tree from `path -> content`; contents starting with `link:` become symbolic links.
    fn tree(&self, files: &[(&str, &str)]) -> Oid {
        let mut root: BTreeMap<String, Vec<(&str, &str)>> = BTreeMap::new();
        let mut builder = self.repo.treebuilder(None).expect("builder");
        for (path, content) in files {
            match path.split_once('/') {
                Some((dir, rest)) => root
                    .entry(dir.to_owned())
                    .or_default()
                    .push((rest, content)),
                None => {
                    let (mode, bytes) = match content.strip_prefix("link:") {
                        Some(target) => (0o120000, target),
                        None => (0o100644, *content),
                    };
                    let blob = self.repo.blob(bytes.as_bytes()).expect("blob");
                    builder.insert(path, blob, mode).expect("insert blob");
                }
            }
        }
        for (dir, entries) in root {
            let sub = self.tree(&entries);
            builder.insert(&dir, sub, 0o040000).expect("insert tree");
        }
        builder.write().expect("write tree")
    }
}

/// Mirrors in a temp dir (kept alive with them).
fn mirrors() -> (TempDir, Mirrors) {
    let dir = TempDir::new().expect("temp dir");
    let mirrors = Mirrors::new(dir.path().join("mirrors"));
    (dir, mirrors)
}

fn fetch(mirrors: &Mirrors, up: &Upstream) {
    mirrors
        .fetch(
            "group/app",
            &up.url(),
            &Credentials::None,
            &DEFAULT_REFSPECS,
        )
        .expect("fetch");
}

fn sha(oid: Oid) -> String {
    oid.to_string()
}

fn event(kind: EventKind) -> Event {
    Event {
        forge: ForgeKind::Github,
        repo: RepoIdentity {
            full_name: "group/app".into(),
            urls: Vec::new(),
        },
        kind,
    }
}

fn push(branch: &str, before: Option<Oid>, after: Option<Oid>, change: BranchChange) -> Event {
    event(EventKind::BranchPush(BranchPush {
        branch: branch.into(),
        before: before.map(sha),
        after: after.map(sha),
        change,
        head_message: None,
        pusher: Actor::default(),
        default_branch: Some("main".into()),
    }))
}

fn mr(target: &str, head: Oid, action: MergeRequestAction) -> Event {
    event(EventKind::MergeRequest(MergeRequestEvent {
        number: 7,
        action,
        source_branch: "feature".into(),
        target_branch: target.into(),
        head_sha: sha(head),
        draft: false,
        from_fork: false,
        source_repo_url: None,
        author: Actor::default(),
        title: "t".into(),
        head_message: None,
    }))
}

fn changed(paths: &[&str]) -> Changes {
    Changes::Files(paths.iter().map(|p| (*p).to_owned()).collect())
}

fn changes(mirrors: &Mirrors, event: &Event) -> Changes {
    mirrors
        .changes_for("group/app", event, "main")
        .expect("changes")
}

const BASE: [(&str, &str); 3] = [
    ("README.md", "hello"),
    ("model/net.py", "net = 1"),
    ("train.py", "train"),
];

#[test]
fn pipeline_files_reads_yaml_under_ferry_recursively() {
    let up = Upstream::new();
    let head = up.commit(
        "main",
        &[],
        &[
            (".ferry/train.yaml", "version: 1\nname: train\n"),
            (".ferry/sub/x.yml", "version: 1\nname: x\n"),
            (".ferry/sub/deeper/y.yaml", "y"),
            (".ferry/README.md", "not a pipeline"),
            (".ferry/notes.yaml.bak", "no"),
            (".ferry/link.yaml", "link:train.yaml"),
            ("other.yaml", "outside .ferry"),
            ("sub/.ferry/z.yaml", "not at the root"),
        ],
        "pipelines",
    );
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    let files = mirrors
        .pipeline_files("group/app", &sha(head))
        .expect("files");
    let expected: Vec<(String, Vec<u8>)> = vec![
        (".ferry/sub/deeper/y.yaml".into(), b"y".to_vec()),
        (".ferry/sub/x.yml".into(), b"version: 1\nname: x\n".to_vec()),
        (
            ".ferry/train.yaml".into(),
            b"version: 1\nname: train\n".to_vec(),
        ),
    ];
    assert_eq!(files, expected);
    let loaded = crate::pipeline::load_files(&files[1..], None);
    assert_eq!(
        loaded.pipelines.len() + usize::from(!loaded.problems.is_empty()),
        1
    );

    let bare = up.commit("main", &[head], &BASE, "no pipelines");
    assert!(
        mirrors.pipeline_files("group/app", &sha(bare)).is_err(),
        "not fetched yet"
    );
    fetch(&mirrors, &up);
    assert_eq!(
        mirrors
            .pipeline_files("group/app", &sha(bare))
            .expect("files"),
        Vec::new()
    );
    let file = up.commit(
        "main",
        &[bare],
        &[(".ferry", "a file, not a directory")],
        "odd",
    );
    fetch(&mirrors, &up);
    assert_eq!(
        mirrors
            .pipeline_files("group/app", &sha(file))
            .expect("files"),
        Vec::new()
    );
}

#[test]
fn reads_before_any_fetch_say_so() {
    let (_dir, mirrors) = mirrors();
    let err = mirrors
        .commit_message("group/app", &"a".repeat(40))
        .expect_err("no mirror");
    assert!(matches!(err, MirrorError::NotMirrored { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "project `group/app` has no mirror yet: fetch it first"
    );
}

#[test]
fn mirror_paths_are_escaped_and_distinct() {
    let mirrors = Mirrors::new("/m");
    let path = |p: &str| mirrors.path(p).expect("path");
    assert_eq!(path("group/app"), PathBuf::from("/m/group_2fapp.git"));
    assert_eq!(path("app-1"), PathBuf::from("/m/app-1.git"));
    assert_ne!(path("a_b"), path("a/b"));
    assert_ne!(path("a_2fb"), path("a/b"));
    assert_eq!(path("../x"), PathBuf::from("/m/_2e_2e_2fx.git"));
    assert!(matches!(
        mirrors.path(""),
        Err(MirrorError::InvalidProject { .. })
    ));
}

#[test]
fn commit_queries() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "first\n\nbody [skip ci]\n");
    let c2 = up.commit(
        "main",
        &[c1],
        &[("README.md", "hello"), ("train.py", "v2")],
        "second",
    );
    let side = up.commit("side", &[c1], &[("other", "x")], "side");
    let lonely = up.commit("lonely", &[], &[("x", "y")], "unrelated");
    let tagger =
        Signature::new("T", "t@example.com", &git2::Time::new(1_700_000_000, 0)).expect("sig");
    let object = up.repo.find_object(c2, None).expect("object");
    up.repo
        .tag("v1", &object, &tagger, "annotated", false)
        .expect("tag");
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    let p = "group/app";
    assert_eq!(
        mirrors.commit_message(p, &sha(c1)).expect("message"),
        "first\n\nbody [skip ci]\n"
    );
    assert_eq!(
        mirrors.resolve(p, "refs/heads/main").expect("resolve"),
        Some(sha(c2))
    );
    assert_eq!(
        mirrors.resolve(p, "refs/tags/v1").expect("resolve"),
        Some(sha(c2)),
        "annotated tags are peeled"
    );
    assert_eq!(
        mirrors.resolve(p, "refs/heads/nope").expect("resolve"),
        None
    );
    assert_eq!(
        mirrors.resolve(p, "refs/heads/a..b").expect("resolve"),
        None
    );
    assert_eq!(
        mirrors.merge_base(p, &sha(c2), &sha(side)).expect("base"),
        Some(sha(c1))
    );
    assert_eq!(
        mirrors.merge_base(p, &sha(c2), &sha(lonely)).expect("base"),
        None
    );
    assert!(
        mirrors
            .is_ancestor(p, &sha(c1), &sha(c2))
            .expect("ancestor")
    );
    assert!(
        mirrors
            .is_ancestor(p, &sha(c2), &sha(c2))
            .expect("ancestor")
    );
    assert!(
        !mirrors
            .is_ancestor(p, &sha(c2), &sha(c1))
            .expect("ancestor")
    );
    assert!(
        !mirrors
            .is_ancestor(p, &sha(side), &sha(c2))
            .expect("ancestor")
    );
    assert_eq!(
        mirrors.changed_files(p, &sha(c1), &sha(c2)).expect("diff"),
        vec!["model/net.py", "train.py"]
    );
    let err = mirrors.commit_message(p, "HEAD~1").expect_err("not a sha");
    assert_eq!(
        err.to_string(),
        "`HEAD~1` is not a commit id (40 hexadecimal digits)"
    );
    assert!(matches!(
        mirrors.pipeline_files(p, &sha(c1)[..12]),
        Err(MirrorError::InvalidSha { .. })
    ));
    let missing = "0123456789".repeat(4);
    let err = mirrors
        .merge_base(p, &sha(c1), &missing)
        .expect_err("missing");
    assert!(matches!(err, MirrorError::CommitNotFound { .. }), "{err:?}");
}

#[test]
fn renames_report_both_paths() {
    let up = Upstream::new();
    let c1 = up.commit(
        "main",
        &[],
        &[
            ("old/name.py", "same content, long enough to be a rename"),
            ("keep", "k"),
        ],
        "one",
    );
    let c2 = up.commit(
        "main",
        &[c1],
        &[
            ("new/name.py", "same content, long enough to be a rename"),
            ("keep", "k"),
        ],
        "two",
    );
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    assert_eq!(
        mirrors
            .changed_files("group/app", &sha(c1), &sha(c2))
            .expect("diff"),
        vec!["new/name.py", "old/name.py"]
    );
}

#[test]
fn branch_update_is_before_to_after() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "one");
    let c2 = up.commit(
        "main",
        &[c1],
        &[
            ("README.md", "hello"),
            ("model/net.py", "net = 2"),
            ("train.py", "train"),
        ],
        "two",
    );
    let c3 = up.commit(
        "main",
        &[c2],
        &[
            ("README.md", "hi"),
            ("model/net.py", "net = 2"),
            ("train.py", "train"),
        ],
        "three",
    );
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    assert_eq!(
        changes(
            &mirrors,
            &push("main", Some(c1), Some(c3), BranchChange::Updated)
        ),
        changed(&["README.md", "model/net.py"])
    );
    assert_eq!(
        changes(
            &mirrors,
            &push("main", Some(c2), Some(c3), BranchChange::Updated)
        ),
        changed(&["README.md"])
    );
    // The forge calling a fast-forward forced changes nothing.
    assert_eq!(
        changes(
            &mirrors,
            &push("main", Some(c2), Some(c3), BranchChange::ForceUpdated)
        ),
        changed(&["README.md"])
    );
}

#[test]
fn force_push_diffs_from_where_histories_part() {
    let up = Upstream::new();
    let base = up.commit("main", &[], &BASE, "base");
    let old = up.commit(
        "feature",
        &[base],
        &[
            ("README.md", "hello"),
            ("model/net.py", "old"),
            ("train.py", "train"),
        ],
        "old",
    );
    let new = up.commit(
        "feature",
        &[base],
        &[
            ("README.md", "hello"),
            ("model/net.py", "net = 1"),
            ("train.py", "new"),
        ],
        "new",
    );
    let (_dir, mirrors) = mirrors();
    // The mirror saw the old head before the force push.
    up.set_branch("keep-old", old);
    fetch(&mirrors, &up);
    for change in [BranchChange::ForceUpdated, BranchChange::Updated] {
        assert_eq!(
            changes(&mirrors, &push("feature", Some(old), Some(new), change)),
            changed(&["train.py"]),
            "{change:?}"
        );
    }
}

#[test]
fn force_push_to_unrelated_history_or_unknown_before_is_a_new_branch() {
    let up = Upstream::new();
    let base = up.commit("main", &[], &BASE, "base");
    let old = up.commit("feature", &[base], &[("a", "1")], "old");
    let unrelated = up.commit("feature", &[], &[("x/y", "1"), ("z", "2")], "orphan");
    let (_dir, mirrors) = mirrors();
    up.set_branch("keep-old", old);
    fetch(&mirrors, &up);
    // No merge base with `before`, none with main either: every file of the new head.
    assert_eq!(
        changes(
            &mirrors,
            &push(
                "feature",
                Some(old),
                Some(unrelated),
                BranchChange::ForceUpdated
            )
        ),
        changed(&["x/y", "z"])
    );
    // `before` never reached the mirror: as for a new branch, against main.
    let next = up.commit(
        "feature",
        &[base],
        &[
            ("README.md", "hello"),
            ("model/net.py", "net = 1"),
            ("train.py", "changed"),
        ],
        "n",
    );
    fetch(&mirrors, &up);
    let unknown = Oid::from_str(&"1234".repeat(10)).expect("oid");
    assert_eq!(
        changes(
            &mirrors,
            &push(
                "feature",
                Some(unknown),
                Some(next),
                BranchChange::ForceUpdated
            )
        ),
        changed(&["train.py"])
    );
    let zeros = Oid::from_str(&"0".repeat(40)).expect("oid");
    assert_eq!(
        changes(
            &mirrors,
            &push("feature", Some(zeros), Some(next), BranchChange::Updated)
        ),
        changed(&["train.py"])
    );
    let event = match push("feature", None, Some(next), BranchChange::Updated).kind {
        EventKind::BranchPush(p) => event(EventKind::BranchPush(BranchPush {
            before: Some("not a sha".into()),
            ..p
        })),
        other => panic!("{other:?}"),
    };
    assert_eq!(changes(&mirrors, &event), changed(&["train.py"]));
}

#[test]
fn new_branch_diffs_against_the_default_branch() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "one");
    let feature = up.commit(
        "feature/x",
        &[c1],
        &[
            ("README.md", "hello"),
            ("model/net.py", "net = 1"),
            ("train.py", "train"),
            ("new.txt", "n"),
        ],
        "f",
    );
    // main moves on after the branch point; its changes are not the branch's.
    up.commit(
        "main",
        &[c1],
        &[
            ("README.md", "changed on main"),
            ("model/net.py", "net = 1"),
            ("train.py", "train"),
        ],
        "m",
    );
    up.set_branch("empty", c1);
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    assert_eq!(
        changes(
            &mirrors,
            &push("feature/x", None, Some(feature), BranchChange::Created)
        ),
        changed(&["new.txt"])
    );
    assert_eq!(
        changes(
            &mirrors,
            &push("empty", None, Some(c1), BranchChange::Created)
        ),
        changed(&[])
    );
    // The default branch itself, new: every file.
    assert_eq!(
        changes(
            &mirrors,
            &push("main", None, Some(c1), BranchChange::Created)
        ),
        changed(&["README.md", "model/net.py", "train.py"])
    );
    // A default branch the mirror does not have: every file of the head.
    let every = mirrors
        .changes_for(
            "group/app",
            &push("feature/x", None, Some(feature), BranchChange::Created),
            "trunk",
        )
        .expect("changes");
    assert_eq!(
        every,
        changed(&["README.md", "model/net.py", "new.txt", "train.py"])
    );
}

#[test]
fn merge_request_diffs_from_the_merge_base_with_the_target() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "one");
    up.commit(
        "main",
        &[c1],
        &[
            ("README.md", "main moved"),
            ("model/net.py", "net = 1"),
            ("train.py", "train"),
        ],
        "m",
    );
    let head = up.commit(
        "feature",
        &[c1],
        &[
            ("README.md", "hello"),
            ("model/net.py", "net = 9"),
            ("train.py", "train"),
        ],
        "f",
    );
    // GitHub keeps pull request heads under refs/pull/N/head (forks included).
    up.repo
        .reference("refs/pull/7/head", head, true, "pr")
        .expect("pr ref");
    up.delete_branch("feature");
    let (_dir, mirrors) = mirrors();
    let spec = merge_request_refspec(ForgeKind::Github, 7);
    assert_eq!(spec, "+refs/pull/7/head:refs/ferry/mr/7");
    assert_eq!(
        merge_request_refspec(ForgeKind::Gitlab, 7),
        "+refs/merge-requests/7/head:refs/ferry/mr/7"
    );
    mirrors
        .fetch(
            "group/app",
            &up.url(),
            &Credentials::None,
            &[BRANCHES, TAGS, &spec],
        )
        .expect("fetch");
    assert_eq!(
        mirrors
            .resolve("group/app", &merge_request_ref(7))
            .expect("resolve"),
        Some(sha(head))
    );
    assert_eq!(
        changes(&mirrors, &mr("main", head, MergeRequestAction::Opened)),
        changed(&["model/net.py"])
    );
    assert_eq!(
        changes(
            &mirrors,
            &mr("main", head, MergeRequestAction::ReadyForReview)
        ),
        changed(&["model/net.py"])
    );
    assert_eq!(
        changes(&mirrors, &mr("gone", head, MergeRequestAction::Updated)),
        changed(&["README.md", "model/net.py", "train.py"])
    );
    for action in [
        MergeRequestAction::Closed,
        MergeRequestAction::Merged,
        MergeRequestAction::Other,
    ] {
        assert_eq!(
            changes(&mirrors, &mr("main", head, action)),
            Changes::None,
            "{action:?}"
        );
    }
}

#[test]
fn tags_change_everything_and_deletions_nothing() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "one");
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    let tag = |change| {
        event(EventKind::TagPush(TagPush {
            tag: "v1".into(),
            sha: Some(sha(c1)),
            change,
            head_message: None,
            pusher: Actor::default(),
        }))
    };
    assert_eq!(changes(&mirrors, &tag(TagChange::Created)), Changes::All);
    assert_eq!(changes(&mirrors, &tag(TagChange::Deleted)), Changes::None);
    assert_eq!(
        changes(
            &mirrors,
            &push("main", Some(c1), None, BranchChange::Deleted)
        ),
        Changes::None
    );
    assert_eq!(changes(&mirrors, &event(EventKind::Ping)), Changes::None);
}

#[test]
fn fetch_prunes_deleted_branches_and_moves_tags() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "one");
    up.commit("gone", &[c1], &[("a", "b")], "gone");
    up.repo
        .reference("refs/tags/t", c1, true, "tag")
        .expect("tag");
    let (_dir, mirrors) = mirrors();
    fetch(&mirrors, &up);
    assert!(
        mirrors
            .resolve("group/app", "refs/heads/gone")
            .expect("resolve")
            .is_some()
    );
    up.delete_branch("gone");
    let c2 = up.commit("main", &[c1], &[("x", "y")], "two");
    up.repo
        .reference("refs/tags/t", c2, true, "moved")
        .expect("tag");
    fetch(&mirrors, &up);
    assert_eq!(
        mirrors
            .resolve("group/app", "refs/heads/gone")
            .expect("resolve"),
        None
    );
    assert_eq!(
        mirrors
            .resolve("group/app", "refs/tags/t")
            .expect("resolve"),
        Some(sha(c2))
    );
}

#[test]
fn ensure_commit_fetches_only_when_missing() {
    let up = Upstream::new();
    let c1 = up.commit("main", &[], &BASE, "one");
    let (_dir, mirrors) = mirrors();
    let p = "group/app";
    // Not mirrored yet: the first call creates the mirror.
    mirrors
        .ensure_commit(p, &up.url(), &Credentials::None, &sha(c1))
        .expect("ensure");
    assert_eq!(
        mirrors.resolve(p, "refs/heads/main").expect("resolve"),
        Some(sha(c1))
    );
    let c2 = up.commit("main", &[c1], &[("x", "1")], "two");
    mirrors
        .ensure_commit(p, &up.url(), &Credentials::None, &sha(c2))
        .expect("ensure");
    assert_eq!(mirrors.commit_message(p, &sha(c2)).expect("message"), "two");
    // Present already: no fetch, so even a broken URL is fine.
    mirrors
        .ensure_commit(p, "file:///nonexistent/repo", &Credentials::None, &sha(c1))
        .expect("no fetch needed");

    let missing = "abcdef0123".repeat(4);
    let err = mirrors
        .ensure_commit(p, &up.url(), &Credentials::None, &missing)
        .expect_err("missing");
    assert!(matches!(err, MirrorError::CommitNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "commit {missing} is not in the mirror of `group/app` after fetching {}",
            up.url()
        )
    );
    let err = mirrors.pipeline_files(p, &missing).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!("commit {missing} is not in the mirror of `group/app` (fetch it first)")
    );
}

#[test]
fn concurrent_fetches_of_one_project_serialise() {
    let up = Upstream::new();
    let mut head = up.commit("main", &[], &BASE, "one");
    for i in 0..20 {
        head = up.commit(&format!("b{i}"), &[head], &[("f", &i.to_string())], "more");
    }
    up.set_branch("main", head);
    let (_dir, mirrors) = mirrors();
    let mirrors = Arc::new(mirrors);
    let url = up.url();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (mirrors, url) = (mirrors.clone(), url.clone());
            std::thread::spawn(move || {
                let project = if i % 4 == 3 { "other/app" } else { "group/app" };
                mirrors.fetch(project, &url, &Credentials::None, &DEFAULT_REFSPECS)
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread").expect("fetch");
    }
    for project in ["group/app", "other/app"] {
        assert_eq!(
            mirrors
                .resolve(project, "refs/heads/main")
                .expect("resolve"),
            Some(sha(head))
        );
        assert_eq!(
            mirrors.resolve(project, "refs/heads/b19").expect("resolve"),
            Some(sha(head))
        );
        assert_eq!(
            mirrors
                .changed_files(project, &sha(head), &sha(head))
                .expect("diff"),
            Vec::<String>::new()
        );
    }
}

#[test]
fn bad_urls_give_clear_errors_without_secrets() {
    let (_dir, mirrors) = mirrors();
    let creds = Credentials::Token {
        username: "oauth2".into(),
        token: SecretString::new("glpat-TOKEN-123"),
    };
    assert!(!format!("{creds:?}").contains("TOKEN-123"));
    let url = "https://ferry:url-PASSWORD-456@127.0.0.1:1/group/app.git";
    let err = mirrors
        .fetch("group/app", url, &creds, &DEFAULT_REFSPECS)
        .expect_err("nothing listens on port 1");
    let (text, debug) = (err.to_string(), format!("{err:?}"));
    for shown in [&text, &debug] {
        assert!(
            !shown.contains("TOKEN-123") && !shown.contains("PASSWORD-456"),
            "{shown}"
        );
    }
    assert!(matches!(err, MirrorError::Fetch { .. }), "{debug}");
    assert!(
        text.starts_with(
            "fetching `group/app` from https://ferry:***@127.0.0.1:1/group/app.git failed: "
        ),
        "{text}"
    );
    let err = mirrors
        .fetch(
            "group/app",
            "file:///nonexistent/ferry/repo",
            &Credentials::None,
            &DEFAULT_REFSPECS,
        )
        .expect_err("no repo");
    assert!(
        err.to_string()
            .starts_with("fetching `group/app` from file:///nonexistent/ferry/repo failed: "),
        "{err}"
    );
    assert_eq!(redact_url("https://user@host/x"), "https://user@host/x");
    assert_eq!(redact_url("git@host:x.git"), "git@host:x.git");
}

/// An HTTP server on loopback that answers every request `401` and records request heads.
fn unauthorised_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://127.0.0.1:{}/group/app.git",
        listener.local_addr().expect("addr").port()
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                head.push_str(&line);
                line.clear();
            }
            record.lock().expect("lock").push(head);
            let reply = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let _ignored = stream.write_all(reply.as_bytes());
        }
    });
    (url, seen)
}

#[test]
fn rejected_credentials_fail_once_without_secrets() {
    let (url, seen) = unauthorised_server();
    let (_dir, mirrors) = mirrors();
    let err = mirrors
        .fetch("group/app", &url, &Credentials::None, &DEFAULT_REFSPECS)
        .expect_err("401");
    assert!(matches!(err, MirrorError::Auth { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "authentication to {url} failed for `group/app`: the repository asks for credentials and none are configured"
        )
    );
    let creds = Credentials::Token {
        username: "oauth2".into(),
        token: SecretString::new("glpat-TOKEN-123"),
    };
    let err = mirrors
        .fetch("group/app", &url, &creds, &DEFAULT_REFSPECS)
        .expect_err("401");
    assert!(matches!(err, MirrorError::Auth { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("authentication to {url} failed for `group/app`: the forge rejected the token")
    );
    assert!(!format!("{err:?}").contains("TOKEN-123"));
    let seen = seen.lock().expect("lock");
    let with_auth = seen
        .iter()
        .filter(|head| head.to_ascii_lowercase().contains("authorization: basic"))
        .count();
    assert_eq!(
        with_auth, 1,
        "the token is offered once, not retried: {seen:#?}"
    );
    assert!(seen.len() <= 4, "{seen:#?}");
}
