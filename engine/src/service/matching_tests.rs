//! Every `on` rule: what runs, and the reason for what does not.

use super::*;
use crate::event::{Actor, CommentEvent, ForgeKind, RepoIdentity, Rerequested};
use crate::pipeline::load;

/// A valid pipeline named `p` with `on` given as YAML lines (indented by two), or none.
fn pipeline(on: Option<&str>) -> Pipeline {
    let on = on.map(|o| format!("on:\n{o}\n")).unwrap_or_default();
    let text = format!(
        "version: 1\nname: p\n{on}defaults:\n  image: img:1\nsteps:\n  - name: s\n    kind: task\n    run: echo\n"
    );
    match load(".ferry/p.yaml", &text, None) {
        Ok(p) => p,
        Err(problems) => panic!("test pipeline is invalid: {problems:?}\n{text}"),
    }
}

fn event(kind: EventKind) -> Event {
    Event {
        forge: ForgeKind::Gitlab,
        repo: RepoIdentity {
            full_name: "group/app".into(),
            urls: Vec::new(),
        },
        kind,
    }
}

fn push(branch: &str, change: BranchChange, message: &str) -> Event {
    event(EventKind::BranchPush(BranchPush {
        branch: branch.into(),
        before: Some("a".repeat(40)),
        after: (change != BranchChange::Deleted).then(|| "b".repeat(40)),
        change,
        head_message: Some(message.into()),
        pusher: Actor::default(),
        default_branch: Some("main".into()),
    }))
}

fn branch(name: &str) -> Event {
    push(name, BranchChange::Updated, "change things")
}

fn tag(name: &str, change: TagChange, message: Option<&str>) -> Event {
    event(EventKind::TagPush(TagPush {
        tag: name.into(),
        sha: (change == TagChange::Created).then(|| "c".repeat(40)),
        change,
        head_message: message.map(Into::into),
        pusher: Actor::default(),
    }))
}

fn mr_with(action: MergeRequestAction, target: &str, draft: bool, message: &str) -> Event {
    event(EventKind::MergeRequest(MergeRequestEvent {
        number: 7,
        action,
        source_branch: "feature".into(),
        target_branch: target.into(),
        head_sha: "d".repeat(40),
        draft,
        from_fork: false,
        source_repo_url: None,
        author: Actor::default(),
        title: "A change".into(),
        head_message: Some(message.into()),
    }))
}

fn mr(action: MergeRequestAction) -> Event {
    mr_with(action, "main", false, "change things")
}

fn files(paths: &[&str]) -> Changes {
    Changes::Files(paths.iter().map(|p| (*p).to_owned()).collect())
}

fn any() -> Changes {
    files(&["src/lib.rs"])
}

fn run(trigger: Trigger) -> Match {
    Match::Run { trigger }
}

/// The skip reason, failing the test when the pipeline would run.
fn skipped(m: Match) -> String {
    match m {
        Match::Skip { reason } => reason,
        Match::Run { trigger } => panic!("expected a skip, got a run ({trigger:?})"),
    }
}

#[test]
fn skip_markers_in_any_case_anywhere() {
    for message in [
        "fix [skip ci]",
        "[CI SKIP] docs",
        "wip\n\nbody [Skip Ferry]",
        "[skip CI]",
    ] {
        assert!(skip_requested(message), "{message}");
    }
    for message in [
        "skip ci",
        "[skip-ci]",
        "[ci]",
        "",
        "[skip  ci]",
        "[skip ferry",
    ] {
        assert!(!skip_requested(message), "{message}");
    }
}

#[test]
fn without_on_nothing_runs_automatically() {
    let p = pipeline(None);
    assert_eq!(
        skipped(matches(&p, &branch("main"), &any())),
        "pipeline `p` has no on.push, so pushes do not run it"
    );
    assert_eq!(
        skipped(matches(
            &p,
            &tag("v1", TagChange::Created, None),
            &Changes::All
        )),
        "pipeline `p` has no on.push, so pushes do not run it"
    );
    assert_eq!(
        skipped(matches(&p, &mr(MergeRequestAction::Opened), &any())),
        "pipeline `p` has no on.merge_request, so merge requests do not run it"
    );
}

#[test]
fn merge_request_only_never_runs_on_push() {
    let p = pipeline(Some("  merge_request: {}"));
    assert_eq!(
        skipped(matches(&p, &branch("main"), &any())),
        "pipeline `p` has no on.push, so pushes do not run it"
    );
    assert_eq!(
        matches(&p, &mr(MergeRequestAction::Opened), &any()),
        run(Trigger::MergeRequest)
    );
}

#[test]
fn empty_push_runs_every_branch_and_no_tag() {
    let p = pipeline(Some("  push: {}"));
    for name in ["main", "feature/a/b", "x"] {
        assert_eq!(
            matches(&p, &branch(name), &any()),
            run(Trigger::Push),
            "{name}"
        );
    }
    assert_eq!(
        skipped(matches(
            &p,
            &tag("v1", TagChange::Created, None),
            &Changes::All
        )),
        "pipeline `p` has no on.push.tags, so tag pushes do not run it"
    );
}

#[test]
fn branch_globs_with_slashes() {
    let p = pipeline(Some(
        "  push:\n    branches: [main, \"release/*\", \"feature/**\"]",
    ));
    for name in ["main", "release/1.0", "feature/a", "feature/a/b/c"] {
        assert_eq!(
            matches(&p, &branch(name), &any()),
            run(Trigger::Push),
            "{name}"
        );
    }
    assert_eq!(
        skipped(matches(&p, &branch("release/1/hotfix"), &any())),
        "branch `release/1/hotfix` matches none of on.push.branches (`main`, `release/*`, `feature/**`)"
    );
    assert!(
        skipped(matches(&p, &branch("mainline"), &any()))
            .starts_with("branch `mainline` matches none")
    );
}

#[test]
fn new_and_force_pushed_branches_match_like_updates() {
    let p = pipeline(Some("  push:\n    branches: [main]"));
    for change in [
        BranchChange::Created,
        BranchChange::Updated,
        BranchChange::ForceUpdated,
    ] {
        assert_eq!(
            matches(&p, &push("main", change, "x"), &any()),
            run(Trigger::Push),
            "{change:?}"
        );
    }
}

#[test]
fn only_tags_means_no_branch_runs() {
    let p = pipeline(Some("  push:\n    tags: [\"v*\"]"));
    assert_eq!(
        skipped(matches(&p, &branch("main"), &any())),
        "pipeline `p` sets only on.push.tags, so branch pushes do not run it"
    );
    assert_eq!(
        matches(&p, &tag("v1.2.3", TagChange::Created, None), &Changes::All),
        run(Trigger::Tag)
    );
    assert_eq!(
        skipped(matches(
            &p,
            &tag("release-1", TagChange::Created, None),
            &Changes::All
        )),
        "tag `release-1` matches none of on.push.tags (`v*`)"
    );
}

#[test]
fn branches_and_tags_together() {
    let p = pipeline(Some(
        "  push:\n    branches: [main]\n    tags: [\"v[0-9]*\"]",
    ));
    assert_eq!(matches(&p, &branch("main"), &any()), run(Trigger::Push));
    assert_eq!(
        matches(&p, &tag("v2", TagChange::Created, None), &Changes::All),
        run(Trigger::Tag)
    );
    assert!(
        skipped(matches(
            &p,
            &tag("vx", TagChange::Created, None),
            &Changes::All
        ))
        .contains("`v[0-9]*`")
    );
}

#[test]
fn path_filters_do_not_apply_to_tags() {
    let p = pipeline(Some(
        "  push:\n    tags: [\"v*\"]\n    paths: [\"model/**\"]",
    ));
    assert_eq!(
        matches(&p, &tag("v1", TagChange::Created, None), &Changes::All),
        run(Trigger::Tag)
    );
    assert_eq!(
        matches(
            &p,
            &tag("v1", TagChange::Created, None),
            &files(&["docs/a.md"])
        ),
        run(Trigger::Tag)
    );
    assert_eq!(
        matches(&p, &tag("v1", TagChange::Created, None), &Changes::None),
        run(Trigger::Tag)
    );
}

#[test]
fn paths_need_one_matching_file() {
    let p = pipeline(Some("  push:\n    paths: [\"model/**\", train.py]"));
    assert_eq!(
        matches(&p, &branch("main"), &files(&["docs/a.md", "model/net.py"])),
        run(Trigger::Push)
    );
    assert_eq!(
        matches(&p, &branch("main"), &files(&["model/a/b/c.py"])),
        run(Trigger::Push)
    );
    assert_eq!(
        matches(&p, &branch("main"), &files(&["train.py"])),
        run(Trigger::Push)
    );
    assert_eq!(
        skipped(matches(
            &p,
            &branch("main"),
            &files(&["src/train.py", "models/x.py"])
        )),
        "no changed file (src/train.py, models/x.py) matches on.push.paths (`model/**`, `train.py`)"
    );
}

#[test]
fn paths_ignore_only_changes_do_not_run() {
    let p = pipeline(Some(
        "  push:\n    paths_ignore: [\"docs/**\", \"**/*.md\"]",
    ));
    assert_eq!(
        skipped(matches(
            &p,
            &branch("main"),
            &files(&["README.md", "docs/guide.txt", "model/notes.md"])
        )),
        "every changed file (README.md, docs/guide.txt, model/notes.md) is matched by on.push.paths_ignore (`docs/**`, `**/*.md`)"
    );
    assert_eq!(
        matches(&p, &branch("main"), &files(&["README.md", "train.py"])),
        run(Trigger::Push)
    );
}

#[test]
fn a_file_matched_by_paths_ignore_does_not_count() {
    let p = pipeline(Some(
        "  push:\n    paths: [\"model/**\"]\n    paths_ignore: [\"**/*.md\"]",
    ));
    assert_eq!(
        skipped(matches(
            &p,
            &branch("main"),
            &files(&["model/README.md", "src/x.rs"])
        )),
        "every changed file matching on.push.paths (model/README.md) is matched by on.push.paths_ignore (`**/*.md`)"
    );
    assert_eq!(
        matches(
            &p,
            &branch("main"),
            &files(&["model/README.md", "model/net.py"])
        ),
        run(Trigger::Push)
    );
}

#[test]
fn long_file_lists_are_summarised() {
    let p = pipeline(Some("  push:\n    paths: [\"model/**\"]"));
    let many: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let reason = skipped(matches(&p, &branch("main"), &Changes::Files(many)));
    assert_eq!(
        reason,
        "no changed file (f0, f1, f2, f3, f4 and 3 more) matches on.push.paths (`model/**`)"
    );
}

#[test]
fn all_none_and_empty_changes() {
    let filtered = pipeline(Some("  push:\n    paths: [\"model/**\"]"));
    assert_eq!(
        matches(&filtered, &branch("main"), &Changes::All),
        run(Trigger::Push)
    );
    assert_eq!(
        skipped(matches(&filtered, &branch("main"), &Changes::None)),
        "the event changed nothing that can be built"
    );
    assert_eq!(
        skipped(matches(&filtered, &branch("main"), &files(&[]))),
        "no file changed, and on.push filters on paths"
    );
    let ignoring = pipeline(Some("  push:\n    paths_ignore: [\"docs/**\"]"));
    assert_eq!(
        skipped(matches(&ignoring, &branch("main"), &files(&[]))),
        "no file changed, and on.push filters on paths"
    );
    // Without filters every push runs, even one that changes no file (an empty commit, a new
    // branch at an existing commit); `None` still means there is nothing to build.
    let unfiltered = pipeline(Some("  push: {}"));
    assert_eq!(
        matches(&unfiltered, &branch("main"), &files(&[])),
        run(Trigger::Push)
    );
    assert_eq!(
        matches(&unfiltered, &branch("main"), &Changes::All),
        run(Trigger::Push)
    );
    assert_eq!(
        skipped(matches(&unfiltered, &branch("main"), &Changes::None)),
        "the event changed nothing that can be built"
    );
}

#[test]
fn deletions_start_nothing() {
    let p = pipeline(Some("  push:\n    branches: [\"**\"]\n    tags: [\"**\"]"));
    assert_eq!(
        skipped(matches(
            &p,
            &push("main", BranchChange::Deleted, ""),
            &Changes::None
        )),
        "branch `main` was deleted"
    );
    assert_eq!(
        skipped(matches(
            &p,
            &tag("v1", TagChange::Deleted, None),
            &Changes::None
        )),
        "tag `v1` was deleted"
    );
}

#[test]
fn skip_markers_skip_pushes_tags_and_merge_requests() {
    let p = pipeline(Some(
        "  push:\n    tags: [\"v*\"]\n    branches: [main]\n  merge_request: {}",
    ));
    let reason = "the head commit message asks to skip CI ([skip ci], [ci skip] or [skip ferry])";
    assert_eq!(
        skipped(matches(
            &p,
            &push("main", BranchChange::Updated, "docs [skip ci]"),
            &any()
        )),
        reason
    );
    assert_eq!(
        skipped(matches(
            &p,
            &tag("v1", TagChange::Created, Some("[CI SKIP]")),
            &Changes::All
        )),
        reason
    );
    assert_eq!(
        skipped(matches(
            &p,
            &mr_with(
                MergeRequestAction::Updated,
                "main",
                false,
                "wip [skip ferry]"
            ),
            &any()
        )),
        reason
    );
    assert_eq!(
        matches(&p, &tag("v1", TagChange::Created, None), &Changes::All),
        run(Trigger::Tag)
    );
}

#[test]
fn merge_request_actions() {
    let p = pipeline(Some("  merge_request: {}"));
    for action in [
        MergeRequestAction::Opened,
        MergeRequestAction::Updated,
        MergeRequestAction::Reopened,
        MergeRequestAction::ReadyForReview,
    ] {
        assert_eq!(
            matches(&p, &mr(action), &any()),
            run(Trigger::MergeRequest),
            "{action:?}"
        );
    }
    let suffix = "only opening, reopening, new commits and marking ready start runs";
    assert_eq!(
        skipped(matches(&p, &mr(MergeRequestAction::Closed), &Changes::None)),
        format!("merge request !7 was closed; {suffix}")
    );
    assert_eq!(
        skipped(matches(&p, &mr(MergeRequestAction::Merged), &Changes::None)),
        format!("merge request !7 was merged; {suffix}")
    );
    assert_eq!(
        skipped(matches(&p, &mr(MergeRequestAction::Other), &Changes::None)),
        format!("merge request !7 changed without new commits; {suffix}")
    );
}

#[test]
fn merge_request_target_branches() {
    let p = pipeline(Some(
        "  merge_request:\n    target_branches: [main, \"release/*\"]",
    ));
    assert_eq!(
        matches(
            &p,
            &mr_with(MergeRequestAction::Opened, "release/2", false, "x"),
            &any()
        ),
        run(Trigger::MergeRequest)
    );
    assert_eq!(
        skipped(matches(
            &p,
            &mr_with(MergeRequestAction::Opened, "dev", false, "x"),
            &any()
        )),
        "target branch `dev` of merge request !7 matches none of on.merge_request.target_branches (`main`, `release/*`)"
    );
    let every = pipeline(Some("  merge_request: {}"));
    assert_eq!(
        matches(
            &every,
            &mr_with(MergeRequestAction::Opened, "any/thing", false, "x"),
            &any()
        ),
        run(Trigger::MergeRequest)
    );
}

#[test]
fn drafts_wait_until_ready_unless_asked() {
    let p = pipeline(Some("  merge_request: {}"));
    assert_eq!(
        skipped(matches(
            &p,
            &mr_with(MergeRequestAction::Opened, "main", true, "x"),
            &any()
        )),
        "merge request !7 is a draft and on.merge_request.drafts is not true"
    );
    assert_eq!(
        skipped(matches(
            &p,
            &mr_with(MergeRequestAction::Updated, "main", true, "x"),
            &any()
        )),
        "merge request !7 is a draft and on.merge_request.drafts is not true"
    );
    assert_eq!(
        matches(
            &p,
            &mr_with(MergeRequestAction::ReadyForReview, "main", false, "x"),
            &any()
        ),
        run(Trigger::MergeRequest)
    );

    let drafts = pipeline(Some("  merge_request:\n    drafts: true"));
    assert_eq!(
        matches(
            &drafts,
            &mr_with(MergeRequestAction::Opened, "main", true, "x"),
            &any()
        ),
        run(Trigger::MergeRequest)
    );
    assert_eq!(
        skipped(matches(
            &drafts,
            &mr_with(MergeRequestAction::ReadyForReview, "main", false, "x"),
            &any()
        )),
        "merge request !7 was marked ready, but pipeline `p` runs drafts, so its head already ran"
    );
}

#[test]
fn merge_request_paths() {
    let p = pipeline(Some(
        "  merge_request:\n    paths: [\"model/**\"]\n    paths_ignore: [\"**/*.md\"]",
    ));
    assert_eq!(
        matches(
            &p,
            &mr(MergeRequestAction::Updated),
            &files(&["model/net.py"])
        ),
        run(Trigger::MergeRequest)
    );
    assert_eq!(
        skipped(matches(
            &p,
            &mr(MergeRequestAction::Updated),
            &files(&["src/a.rs"])
        )),
        "no changed file (src/a.rs) matches on.merge_request.paths (`model/**`)"
    );
    assert_eq!(
        skipped(matches(
            &p,
            &mr(MergeRequestAction::Updated),
            &files(&["model/a.md"])
        )),
        "every changed file matching on.merge_request.paths (model/a.md) is matched by on.merge_request.paths_ignore (`**/*.md`)"
    );
    // Push path filters do not leak into merge requests, nor the other way round.
    let push_only = pipeline(Some(
        "  push:\n    paths: [\"model/**\"]\n  merge_request: {}",
    ));
    assert_eq!(
        matches(
            &push_only,
            &mr(MergeRequestAction::Updated),
            &files(&["src/a.rs"])
        ),
        run(Trigger::MergeRequest)
    );
}

#[test]
fn events_handled_elsewhere_never_match() {
    let p = pipeline(Some("  push: {}\n  merge_request: {}"));
    let comment = event(EventKind::Comment(CommentEvent {
        number: 7,
        body: "/ferry run".into(),
        author: Actor::default(),
        comment_id: None,
        head_sha: None,
        source_branch: None,
        target_branch: None,
    }));
    let rerequested = event(EventKind::Rerequested(Rerequested {
        head_sha: "e".repeat(40),
        head_branch: Some("main".into()),
        check_name: None,
        sender: Actor::default(),
    }));
    assert_eq!(
        skipped(matches(&p, &comment, &Changes::All)),
        "comments are handled by the comment command parser, not by `on`"
    );
    assert_eq!(
        skipped(matches(&p, &rerequested, &Changes::All)),
        "re-requested checks rerun earlier runs; they are not matched against `on`"
    );
    assert_eq!(
        skipped(matches(&p, &event(EventKind::Ping), &Changes::All)),
        "a ping only tests the webhook"
    );
}
