//! GitLab fixtures, normalised field by field; variants the docs lack are derived from them.

use serde_json::json;

use super::{Fixtures, event, parse_json};
use crate::event::{
    Actor, BranchChange, BranchPush, CommentEvent, EventKind, ForgeKind, MergeRequestAction,
    MergeRequestEvent, RepoIdentity, TagChange, TagPush,
};
use crate::forge::Parsed;

const ZEROS: &str = "0000000000000000000000000000000000000000";

fn actor(login: &str, id: u64) -> Actor {
    Actor {
        login: login.to_owned(),
        id: Some(id),
    }
}

fn branch_push(parsed: Parsed) -> BranchPush {
    match event(parsed).kind {
        EventKind::BranchPush(push) => push,
        other => panic!("not a branch push: {other:?}"),
    }
}

fn merge_request(parsed: Parsed) -> MergeRequestEvent {
    match event(parsed).kind {
        EventKind::MergeRequest(mr) => mr,
        other => panic!("not a merge request: {other:?}"),
    }
}

#[test]
fn push_hook() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("gitlab/push.json"));
    assert_eq!(event.forge, ForgeKind::Gitlab);
    assert_eq!(
        event.repo,
        RepoIdentity {
            full_name: "mike/diaspora".to_owned(),
            urls: vec![
                "http://example.com/mike/diaspora.git".to_owned(),
                "git@example.com:mike/diaspora.git".to_owned(),
                "http://example.com/mike/diaspora".to_owned(),
            ],
        }
    );
    let expected = BranchPush {
        branch: "master".to_owned(),
        before: Some("95790bf891e76fee5e1747ab589903a6a1f80f22".to_owned()),
        after: Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7".to_owned()),
        change: BranchChange::Updated,
        head_message: Some("fixed readme".to_owned()),
        pusher: actor("jsmith", 4),
        default_branch: Some("master".to_owned()),
    };
    assert_eq!(event.kind, EventKind::BranchPush(expected));
}

#[test]
fn push_hook_head_message_is_the_after_commit() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("gitlab/push.json");
    // Reorder so that the head commit is first: the message must follow `after`, not position.
    body["commits"].as_array_mut().unwrap().reverse();
    let push = branch_push(parse_json(ForgeKind::Gitlab, "Push Hook", &body));
    assert_eq!(push.head_message.as_deref(), Some("fixed readme"));
    // Unknown `after` (commit list capped at 20): the last listed commit.
    body["after"] = json!("1111111111111111111111111111111111111111");
    let push = branch_push(parse_json(ForgeKind::Gitlab, "Push Hook", &body));
    let catalan = "Update Catalan translation to e38cb41.\n\nSee https://gitlab.com/gitlab-org/gitlab for more information";
    assert_eq!(push.head_message.as_deref(), Some(catalan));
}

#[test]
fn push_hook_branch_created_and_deleted() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("gitlab/push.json");
    body["before"] = json!(ZEROS);
    body["ref"] = json!("refs/heads/feature/x");
    let created = branch_push(parse_json(ForgeKind::Gitlab, "Push Hook", &body));
    assert_eq!(created.change, BranchChange::Created);
    assert_eq!(created.branch, "feature/x");
    assert_eq!(created.before, None);
    assert_eq!(
        created.after.as_deref(),
        Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    );

    body["before"] = json!("da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    body["after"] = json!(ZEROS);
    body["checkout_sha"] = json!(null);
    body["commits"] = json!([]);
    let deleted = branch_push(parse_json(ForgeKind::Gitlab, "Push Hook", &body));
    assert_eq!(deleted.change, BranchChange::Deleted);
    assert_eq!(
        deleted.before.as_deref(),
        Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    );
    assert_eq!(deleted.after, None);
    assert_eq!(deleted.head_message, None);
}

#[test]
fn tag_push_hook() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("gitlab/tag_push.json"));
    assert_eq!(event.repo.full_name, "jsmith/example");
    assert_eq!(
        event.repo.urls,
        [
            "http://example.com/jsmith/example.git",
            "git@example.com:jsmith/example.git",
            "http://example.com/jsmith/example",
            "ssh://git@example.com/jsmith/example.git",
        ]
    );
    let expected = TagPush {
        tag: "v1.0.0".to_owned(),
        sha: Some("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7".to_owned()),
        change: TagChange::Created,
        head_message: None,
        // The docs example has no `user_username`: the id is all it names.
        pusher: Actor {
            login: String::new(),
            id: Some(1),
        },
    };
    assert_eq!(event.kind, EventKind::TagPush(expected));
}

#[test]
fn tag_push_hook_deleted_and_checkout_sha() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("gitlab/tag_push.json");
    body["checkout_sha"] = json!("2222222222222222222222222222222222222222");
    let EventKind::TagPush(moved) =
        event(parse_json(ForgeKind::Gitlab, "Tag Push Hook", &body)).kind
    else {
        panic!("not a tag push")
    };
    assert_eq!(
        moved.sha.as_deref(),
        Some("2222222222222222222222222222222222222222")
    );

    body["before"] = json!("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7");
    body["after"] = json!(ZEROS);
    body["checkout_sha"] = json!(null);
    let EventKind::TagPush(deleted) =
        event(parse_json(ForgeKind::Gitlab, "Tag Push Hook", &body)).kind
    else {
        panic!("not a tag push")
    };
    assert_eq!(deleted.change, TagChange::Deleted);
    assert_eq!(deleted.sha, None);
    assert_eq!(deleted.tag, "v1.0.0");
}

#[test]
fn merge_request_hook() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("gitlab/merge_request.json"));
    assert_eq!(event.repo.full_name, "gitlabhq/gitlab-test");
    assert_eq!(
        event.repo.urls,
        [
            "http://example.com/gitlabhq/gitlab-test.git",
            "git@example.com:gitlabhq/gitlab-test.git",
            "http://example.com/gitlabhq/gitlab-test",
        ]
    );
    let expected = MergeRequestEvent {
        number: 1,
        // `changes.draft` goes true -> false, but the action is `open`, not `update`.
        action: MergeRequestAction::Opened,
        source_branch: "ms-viewport".to_owned(),
        target_branch: "master".to_owned(),
        head_sha: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".to_owned(),
        draft: false,
        from_fork: false,
        source_repo_url: Some("http://example.com/awesome_space/awesome_project.git".to_owned()),
        author: actor("root", 1),
        title: "MS-Viewport".to_owned(),
        head_message: Some("fixed readme".to_owned()),
    };
    assert_eq!(event.kind, EventKind::MergeRequest(expected));
}

#[test]
fn merge_request_actions() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let base = fixtures.json("gitlab/merge_request.json");
    let action_of = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut body = base.clone();
        edit(&mut body);
        merge_request(parse_json(ForgeKind::Gitlab, "Merge Request Hook", &body)).action
    };
    let set = |action: &'static str| {
        move |b: &mut serde_json::Value| b["object_attributes"]["action"] = json!(action)
    };
    assert_eq!(action_of(&set("open")), MergeRequestAction::Opened);
    assert_eq!(action_of(&set("reopen")), MergeRequestAction::Reopened);
    assert_eq!(action_of(&set("close")), MergeRequestAction::Closed);
    assert_eq!(action_of(&set("merge")), MergeRequestAction::Merged);
    assert_eq!(action_of(&set("approved")), MergeRequestAction::Other);
    // `update` with the fixture's draft true -> false change: ready for review.
    assert_eq!(
        action_of(&set("update")),
        MergeRequestAction::ReadyForReview
    );
    let update_with = |changes: serde_json::Value, oldrev: Option<&'static str>| {
        move |b: &mut serde_json::Value| {
            b["object_attributes"]["action"] = json!("update");
            b["changes"] = changes.clone();
            if let Some(rev) = oldrev {
                b["object_attributes"]["oldrev"] = json!(rev);
            }
        }
    };
    let labels_only = json!({"labels": {"previous": [], "current": []}});
    assert_eq!(
        action_of(&update_with(labels_only.clone(), None)),
        MergeRequestAction::Other
    );
    let oldrev = Some("95790bf891e76fee5e1747ab589903a6a1f80f22");
    assert_eq!(
        action_of(&update_with(labels_only, oldrev)),
        MergeRequestAction::Updated
    );
    let wip = json!({"work_in_progress": {"previous": true, "current": false}});
    assert_eq!(
        action_of(&update_with(wip, None)),
        MergeRequestAction::ReadyForReview
    );
    let to_draft = json!({"draft": {"previous": false, "current": true}});
    assert_eq!(
        action_of(&update_with(to_draft, None)),
        MergeRequestAction::Other
    );
}

#[test]
fn merge_request_draft_and_fork() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("gitlab/merge_request.json");
    body["object_attributes"]["work_in_progress"] = json!(true);
    body["object_attributes"]["source_project_id"] = json!(99);
    let mr = merge_request(parse_json(ForgeKind::Gitlab, "Merge Request Hook", &body));
    assert!(mr.draft);
    assert!(mr.from_fork);
    body["object_attributes"]["work_in_progress"] = json!(false);
    body["object_attributes"]["draft"] = json!(true);
    body["object_attributes"]["source_project_id"] = json!(14);
    let mr = merge_request(parse_json(ForgeKind::Gitlab, "Merge Request Hook", &body));
    assert!(mr.draft);
    assert!(!mr.from_fork);
}

#[test]
fn note_hook_on_merge_request() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("gitlab/note_merge_request.json"));
    assert_eq!(event.repo.full_name, "gitlab-org/gitlab-test");
    assert_eq!(
        event.repo.urls,
        [
            "http://example.com/gitlab-org/gitlab-test.git",
            "git@example.com:gitlab-org/gitlab-test.git",
            "http://example.com/gitlab-org/gitlab-test",
            "http://localhost/gitlab-org/gitlab-test.git",
        ]
    );
    let expected = CommentEvent {
        number: 1,
        body: "This MR needs work.".to_owned(),
        author: actor("root", 1),
        comment_id: Some(1244),
        head_sha: Some("562e173be03b8ff2efb05345d12df18815438a4b".to_owned()),
        source_branch: Some("master".to_owned()),
        target_branch: Some("markdown".to_owned()),
    };
    assert_eq!(event.kind, EventKind::Comment(expected));
}

#[test]
fn note_hook_ignored_cases() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let base = fixtures.json("gitlab/note_merge_request.json");
    let ignored = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body["object_attributes"][field] = value;
        parse_json(ForgeKind::Gitlab, "Note Hook", &body)
    };
    assert_eq!(
        ignored("noteable_type", json!("Issue")),
        Parsed::ignored("note on `Issue`, not on a merge request")
    );
    assert_eq!(
        ignored("noteable_type", json!("Commit")),
        Parsed::ignored("note on `Commit`, not on a merge request")
    );
    assert_eq!(
        ignored("action", json!("update")),
        Parsed::ignored("comment update, not created")
    );
    assert_eq!(
        ignored("system", json!(true)),
        Parsed::ignored("system note written by GitLab")
    );
}

#[test]
fn pipeline_hook_is_ignored() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    assert_eq!(
        fixtures.parse("gitlab/pipeline.json"),
        Parsed::ignored("GitLab event `Pipeline Hook` is not used by ferry")
    );
    // Its identity is still readable, so the server can pick the secret before ignoring it.
    let fixture = fixtures.get("gitlab/pipeline.json");
    let identity = crate::forge::repo_identity(ForgeKind::Gitlab, &fixture.headers, &fixture.body);
    assert_eq!(identity.unwrap().full_name, "gitlab-org/gitlab-test");
}
