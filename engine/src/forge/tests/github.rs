//! GitHub fixtures, normalised field by field; variants the sources lack (a comment *created* on a
//! PR, a branch deletion, a merged PR) are derived from them.

use serde_json::json;

use super::{Fixtures, event, parse_json};
use crate::event::{
    Actor, BranchChange, BranchPush, CommentEvent, EventKind, ForgeKind, MergeRequestAction,
    MergeRequestEvent, RepoIdentity, Rerequested, TagChange, TagPush,
};
use crate::forge::Parsed;

const HELLO_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const PR_SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

fn actor(login: &str, id: u64) -> Actor {
    Actor {
        login: login.to_owned(),
        id: Some(id),
    }
}

fn codertocat() -> RepoIdentity {
    RepoIdentity {
        full_name: "Codertocat/Hello-World".to_owned(),
        urls: vec![
            "https://github.com/Codertocat/Hello-World.git".to_owned(),
            "git@github.com:Codertocat/Hello-World.git".to_owned(),
            "https://github.com/Codertocat/Hello-World".to_owned(),
            "git://github.com/Codertocat/Hello-World.git".to_owned(),
        ],
    }
}

fn merge_request(parsed: Parsed) -> MergeRequestEvent {
    match event(parsed).kind {
        EventKind::MergeRequest(mr) => mr,
        other => panic!("not a pull request: {other:?}"),
    }
}

fn branch_push(parsed: Parsed) -> BranchPush {
    match event(parsed).kind {
        EventKind::BranchPush(push) => push,
        other => panic!("not a branch push: {other:?}"),
    }
}

#[test]
fn push_branch_created() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("github/push.branch_created.json"));
    assert_eq!(event.forge, ForgeKind::Github);
    assert_eq!(event.repo, codertocat());
    let expected = BranchPush {
        branch: "master".to_owned(),
        before: None,
        after: Some(HELLO_SHA.to_owned()),
        change: BranchChange::Created,
        head_message: Some("Initial commit".to_owned()),
        pusher: actor("Codertocat", 21031067),
        default_branch: Some("master".to_owned()),
    };
    assert_eq!(event.kind, EventKind::BranchPush(expected));
}

#[test]
fn push_branch_updated_forced_deleted() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("github/push.branch_created.json");
    body["created"] = json!(false);
    body["before"] = json!(PR_SHA);
    let updated = branch_push(parse_json(ForgeKind::Github, "push", &body));
    assert_eq!(updated.change, BranchChange::Updated);
    assert_eq!(updated.before.as_deref(), Some(PR_SHA));
    body["forced"] = json!(true);
    let forced = branch_push(parse_json(ForgeKind::Github, "push", &body));
    assert_eq!(forced.change, BranchChange::ForceUpdated);

    body["forced"] = json!(false);
    body["deleted"] = json!(true);
    body["before"] = json!(HELLO_SHA);
    body["after"] = json!("0000000000000000000000000000000000000000");
    body["head_commit"] = json!(null);
    body["pusher"] = json!({"name": "someone-else", "email": null});
    let deleted = branch_push(parse_json(ForgeKind::Github, "push", &body));
    assert_eq!(deleted.change, BranchChange::Deleted);
    assert_eq!(deleted.before.as_deref(), Some(HELLO_SHA));
    assert_eq!(deleted.after, None);
    assert_eq!(deleted.head_message, None);
    // The sender's id belongs to the pusher only when they are the same login.
    assert_eq!(
        deleted.pusher,
        Actor {
            login: "someone-else".to_owned(),
            id: None
        }
    );
}

#[test]
fn push_tag_created_and_deleted() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let created = event(fixtures.parse("github/push.tag_created.json"));
    assert_eq!(created.repo, codertocat());
    let expected = TagPush {
        tag: "simple-tag".to_owned(),
        sha: Some(HELLO_SHA.to_owned()),
        change: TagChange::Created,
        head_message: Some("Adding a .gitignore file".to_owned()),
        pusher: actor("Codertocat", 21031067),
    };
    assert_eq!(created.kind, EventKind::TagPush(expected));

    let deleted = event(fixtures.parse("github/push.tag_deleted.json"));
    let expected = TagPush {
        tag: "simple-tag".to_owned(),
        sha: None,
        change: TagChange::Deleted,
        head_message: None,
        pusher: actor("Codertocat", 21031067),
    };
    assert_eq!(deleted.kind, EventKind::TagPush(expected));
}

#[test]
fn push_to_other_refs_is_ignored() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("github/push.tag_created.json");
    body["ref"] = json!("refs/notes/commits");
    assert_eq!(
        parse_json(ForgeKind::Github, "push", &body),
        Parsed::ignored("push to `refs/notes/commits`, neither a branch nor a tag")
    );
}

fn hello_world_pr(action: MergeRequestAction) -> MergeRequestEvent {
    MergeRequestEvent {
        number: 2,
        action,
        source_branch: "changes".to_owned(),
        target_branch: "master".to_owned(),
        head_sha: PR_SHA.to_owned(),
        draft: false,
        from_fork: false,
        source_repo_url: Some("https://github.com/Codertocat/Hello-World.git".to_owned()),
        author: actor("Codertocat", 21031067),
        title: "Update the README with new information.".to_owned(),
        head_message: None,
    }
}

#[test]
fn pull_request_fixtures() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    for (file, action) in [
        (
            "github/pull_request.opened.json",
            MergeRequestAction::Opened,
        ),
        (
            "github/pull_request.synchronize.json",
            MergeRequestAction::Updated,
        ),
        (
            "github/pull_request.reopened.json",
            MergeRequestAction::Reopened,
        ),
        (
            "github/pull_request.closed.json",
            MergeRequestAction::Closed,
        ),
    ] {
        let event = event(fixtures.parse(file));
        assert_eq!(event.repo, codertocat(), "{file}");
        assert_eq!(
            event.kind,
            EventKind::MergeRequest(hello_world_pr(action)),
            "{file}"
        );
    }
}

#[test]
fn pull_request_synchronize_octocrab() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("github/pull_request.synchronize.octocrab.json"));
    assert_eq!(event.repo.full_name, "gagbo/ouro-closures");
    assert_eq!(
        event.repo.urls[0],
        "https://github.com/gagbo/ouro-closures.git"
    );
    let expected = MergeRequestEvent {
        number: 5,
        action: MergeRequestAction::Updated,
        source_branch: "test_pr_O".to_owned(),
        target_branch: "trunk".to_owned(),
        head_sha: "7e39d83fc6a99f2c6a02cc7637c4de8db50da6ca".to_owned(),
        draft: false,
        from_fork: false,
        source_repo_url: Some("https://github.com/gagbo/ouro-closures.git".to_owned()),
        author: actor("gagbo", 10496163),
        title: "[do not merge] test commit".to_owned(),
        head_message: None,
    };
    assert_eq!(event.kind, EventKind::MergeRequest(expected));
}

#[test]
fn pull_request_derived_actions_draft_and_forks() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("github/pull_request.closed.json");
    body["pull_request"]["merged"] = json!(true);
    assert_eq!(
        merge_request(parse_json(ForgeKind::Github, "pull_request", &body)).action,
        MergeRequestAction::Merged
    );
    for (action, expected) in [
        ("ready_for_review", MergeRequestAction::ReadyForReview),
        ("labeled", MergeRequestAction::Other),
        ("converted_to_draft", MergeRequestAction::Other),
    ] {
        body["action"] = json!(action);
        let mr = merge_request(parse_json(ForgeKind::Github, "pull_request", &body));
        assert_eq!(mr.action, expected, "{action}");
    }

    body["pull_request"]["draft"] = json!(true);
    body["pull_request"]["head"]["repo"]["full_name"] = json!("evil/Hello-World");
    body["pull_request"]["head"]["repo"]["clone_url"] =
        json!("https://github.com/evil/Hello-World.git");
    let fork = merge_request(parse_json(ForgeKind::Github, "pull_request", &body));
    assert!(fork.draft);
    assert!(fork.from_fork);
    assert_eq!(
        fork.source_repo_url.as_deref(),
        Some("https://github.com/evil/Hello-World.git")
    );

    body["pull_request"]["head"]["repo"] = json!(null);
    let deleted_fork = merge_request(parse_json(ForgeKind::Github, "pull_request", &body));
    assert!(deleted_fork.from_fork);
    assert_eq!(deleted_fork.source_repo_url, None);
}

#[test]
fn issue_comment_on_plain_issue_is_ignored() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    assert_eq!(
        fixtures.parse("github/issue_comment.created.on_issue.json"),
        Parsed::ignored("comment on an issue, not a pull request")
    );
}

#[test]
fn issue_comment_edited_on_pr_is_ignored() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    assert_eq!(
        fixtures.parse("github/issue_comment.edited.on_pr.octocrab.json"),
        Parsed::ignored("comment edited, not created")
    );
}

#[test]
fn issue_comment_created_on_pr() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut body = fixtures.json("github/issue_comment.edited.on_pr.octocrab.json");
    body["action"] = json!("created");
    let event = event(parse_json(ForgeKind::Github, "issue_comment", &body));
    assert_eq!(event.repo.full_name, "gagbo/ouro-closures");
    let EventKind::Comment(comment) = event.kind else {
        panic!("not a comment")
    };
    assert!(
        comment
            .body
            .starts_with("# ![Autometrics logo](https://explorer.autometrics.dev/")
    );
    assert_eq!(comment.body.chars().count(), 285);
    let expected = CommentEvent {
        number: 5,
        body: comment.body.clone(),
        author: actor("gagbo-test-app[bot]", 139451816),
        comment_id: Some(1640255529),
        head_sha: None,
        source_branch: None,
        target_branch: None,
    };
    assert_eq!(comment, expected);
}

#[test]
fn check_run_rerequested() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("github/check_run.rerequested.json"));
    assert_eq!(
        event.repo,
        RepoIdentity {
            full_name: "github/hello-world".to_owned(),
            urls: vec![
                "http://github.com/github/hello-world.git".to_owned(),
                "ssh://git@localhost:3035/github/hello-world.git".to_owned(),
                "http://github.com/github/hello-world".to_owned(),
                "git://github.com/github/hello-world.git".to_owned(),
            ],
        }
    );
    let expected = Rerequested {
        head_sha: "d6fde92930d4715a2b49857d24b940956b26d2d3".to_owned(),
        head_branch: Some("master".to_owned()),
        check_name: Some("randscape".to_owned()),
        sender: actor("octocat", 5346),
    };
    assert_eq!(event.kind, EventKind::Rerequested(expected));
}

#[test]
fn check_suite_rerequested() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("github/check_suite.rerequested.json"));
    assert_eq!(event.repo, codertocat());
    let expected = Rerequested {
        head_sha: PR_SHA.to_owned(),
        head_branch: Some("changes".to_owned()),
        check_name: None,
        sender: actor("octocoders-linter[bot]", 49795351),
    };
    assert_eq!(event.kind, EventKind::Rerequested(expected));
}

#[test]
fn check_events_other_than_rerequested_are_ignored() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut run = fixtures.json("github/check_run.rerequested.json");
    run["action"] = json!("completed");
    assert_eq!(
        parse_json(ForgeKind::Github, "check_run", &run),
        Parsed::ignored("check_run completed")
    );
    let mut suite = fixtures.json("github/check_suite.rerequested.json");
    suite["action"] = json!("requested");
    assert_eq!(
        parse_json(ForgeKind::Github, "check_suite", &suite),
        Parsed::ignored("check_suite requested")
    );
}

#[test]
fn ping_repo_hook() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let event = event(fixtures.parse("github/ping.repo_hook.json"));
    assert_eq!(event.repo.full_name, "Octocoders/Hello-World");
    assert_eq!(
        event.repo.urls,
        [
            "https://github.com/Octocoders/Hello-World.git",
            "git@github.com:Octocoders/Hello-World.git",
            "https://github.com/Octocoders/Hello-World",
            "git://github.com/Octocoders/Hello-World.git",
        ]
    );
    assert_eq!(event.kind, EventKind::Ping);
}
