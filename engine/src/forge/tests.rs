//! Intake tests against the third-party payloads in `shared/fixtures` (read at test time, with
//! their headers from `index.json` and signatures from `SIGNATURES.md`), plus negative cases.
//! Per-forge expectations live in `tests/gitlab.rs` and `tests/github.rs`; secrets, signatures and
//! delivery keys in `tests/auth.rs`.
#![expect(clippy::unwrap_used, reason = "a test panics on unexpected input")]

mod auth;
mod github;
mod gitlab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{IntakeError, Parsed, header_event_name, parse, repo_identity, verify};
use crate::event::{Event, ForgeKind};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");

/// One delivery from `index.json`: its file's bytes and the headers to send.
struct Fixture {
    file: String,
    forge: ForgeKind,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// The fixture set: the secret and every delivery in `index.json`; `None` (after printing
/// `SKIPPED`) when the fixtures directory is absent.
struct Fixtures {
    secret: String,
    all: Vec<Fixture>,
}

impl Fixtures {
    fn load() -> Option<Self> {
        let dir = Path::new(FIXTURES);
        if !dir.is_dir() {
            println!("SKIPPED: ../shared/fixtures not found");
            return None;
        }
        let index: Value = serde_json::from_slice(&read(&dir.join("index.json"))).unwrap();
        let secret = index["secret"].as_str().unwrap().to_owned();
        let all = index["fixtures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| load_entry(dir, entry));
        Some(Fixtures {
            secret,
            all: all.collect(),
        })
    }

    fn get(&self, file: &str) -> &Fixture {
        self.all
            .iter()
            .find(|f| f.file == file)
            .unwrap_or_else(|| panic!("{file} not in index"))
    }

    /// Verifies `file` with the index's secret and parses it, checking that the pre-verification
    /// identity matches the event's.
    fn parse(&self, file: &str) -> Parsed {
        let fixture = self.get(file);
        let (forge, headers, body) = (fixture.forge, &fixture.headers, &fixture.body[..]);
        verify(forge, headers, body, self.secret.as_bytes()).unwrap();
        let parsed = parse(forge, headers, body).unwrap();
        if let Parsed::Event(event) = &parsed {
            assert_eq!(
                repo_identity(forge, headers, body).unwrap(),
                event.repo,
                "{file}"
            );
            assert_eq!(event.forge, forge);
        }
        parsed
    }

    /// The fixture's body as JSON, for tests that derive a variant the sources lack.
    fn json(&self, file: &str) -> Value {
        serde_json::from_slice(&self.get(file).body).unwrap()
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn load_entry(dir: &Path, entry: &Value) -> Fixture {
    let file = entry["file"].as_str().unwrap().to_owned();
    let forge = match entry["forge"].as_str().unwrap() {
        "gitlab" => ForgeKind::Gitlab,
        "github" => ForgeKind::Github,
        other => panic!("unknown forge {other}"),
    };
    let headers = entry["headers"].as_object().unwrap().iter();
    let headers = headers
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let body = read(&dir.join(&file));
    assert_eq!(
        body.len() as u64,
        entry["bytes"].as_u64().unwrap(),
        "{file} size"
    );
    Fixture {
        file,
        forge,
        headers,
        body,
    }
}

/// `file -> X-Hub-Signature-256` from the GitHub table in SIGNATURES.md.
fn signatures_md() -> HashMap<String, String> {
    let text = String::from_utf8(read(&Path::new(FIXTURES).join("SIGNATURES.md"))).unwrap();
    let rows = text.lines().filter(|line| line.starts_with("| github/"));
    rows.map(|row| {
        let cells: Vec<&str> = row.split('|').map(|c| c.trim().trim_matches('`')).collect();
        (cells[1].to_owned(), cells[4].to_owned())
    })
    .collect()
}

/// Unwraps an event, panicking with the ignore reason otherwise.
fn event(parsed: Parsed) -> Event {
    match parsed {
        Parsed::Event(event) => event,
        Parsed::Ignored { reason } => panic!("ignored: {reason}"),
    }
}

/// Headers from pairs.
fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Parses a derived body (not verified: the tests that use it are about parsing).
fn parse_json(forge: ForgeKind, event_header: &str, body: &Value) -> Parsed {
    let name = match forge {
        ForgeKind::Gitlab => "X-Gitlab-Event",
        ForgeKind::Github => "X-GitHub-Event",
    };
    parse(
        forge,
        &headers(&[(name, event_header)]),
        &serde_json::to_vec(body).unwrap(),
    )
    .unwrap()
}

#[test]
fn every_fixture_verifies_and_parses() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let mut ignored = Vec::new();
    for fixture in &fixtures.all {
        if let Parsed::Ignored { .. } = fixtures.parse(&fixture.file) {
            ignored.push(fixture.file.as_str());
        }
    }
    ignored.sort_unstable();
    let expected_ignored = [
        "github/issue_comment.created.on_issue.json",
        "github/issue_comment.edited.on_pr.octocrab.json",
        "github/ping.app_hook.octocrab.json",
        "gitlab/pipeline.json",
    ];
    assert_eq!(ignored, expected_ignored);
    assert_eq!(fixtures.all.len(), 19);
}

#[test]
fn index_lists_every_payload_file() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    for forge in ["gitlab", "github"] {
        let dir: PathBuf = Path::new(FIXTURES).join(forge);
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                fixtures.get(&format!("{forge}/{name}"));
            }
        }
    }
}

#[test]
fn index_signatures_match_signatures_md() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let table = signatures_md();
    let github: Vec<&Fixture> = fixtures
        .all
        .iter()
        .filter(|f| f.forge == ForgeKind::Github)
        .collect();
    assert_eq!(table.len(), github.len());
    assert_eq!(github.len(), 14);
    for fixture in github {
        let signature = &table[&fixture.file];
        assert_eq!(
            fixture.headers.get("X-Hub-Signature-256"),
            Some(signature),
            "{}",
            fixture.file
        );
        let headers = headers(&[("x-hub-signature-256", signature)]);
        let secret = fixtures.secret.as_bytes();
        assert_eq!(
            verify(ForgeKind::Github, &headers, &fixture.body, secret),
            Ok(())
        );
    }
}

#[test]
fn malformed_bodies() {
    let malformed = |result: Result<Parsed, IntakeError>| {
        assert!(
            matches!(result, Err(IntakeError::Malformed(_))),
            "{result:?}"
        );
    };
    for (forge, header, event) in [
        (ForgeKind::Gitlab, "X-Gitlab-Event", "Push Hook"),
        (ForgeKind::Github, "X-GitHub-Event", "push"),
    ] {
        let h = headers(&[(header, event)]);
        for body in [&b"{not json"[..], b"", b"[]", b"{\"ref\": 5}"] {
            malformed(parse(forge, &h, body));
            let identity = repo_identity(forge, &h, body);
            assert!(
                matches!(identity, Err(IntakeError::Malformed(_))),
                "{identity:?}"
            );
        }
        malformed(parse(forge, &headers(&[]), b"{}"));
    }
}

#[test]
fn missing_required_fields_are_malformed() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let cases = [
        ("gitlab/push.json", ForgeKind::Gitlab, "Push Hook", "/ref"),
        (
            "gitlab/merge_request.json",
            ForgeKind::Gitlab,
            "Merge Request Hook",
            "/object_attributes/iid",
        ),
        (
            "gitlab/push.json",
            ForgeKind::Gitlab,
            "Push Hook",
            "/project/path_with_namespace",
        ),
        (
            "github/push.tag_created.json",
            ForgeKind::Github,
            "push",
            "/after",
        ),
        (
            "github/pull_request.opened.json",
            ForgeKind::Github,
            "pull_request",
            "/pull_request/head",
        ),
        (
            "github/check_run.rerequested.json",
            ForgeKind::Github,
            "check_run",
            "/repository/full_name",
        ),
    ];
    for (file, forge, event_header, pointer) in cases {
        let mut body = fixtures.json(file);
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = if parent.is_empty() {
            &mut body
        } else {
            body.pointer_mut(parent).unwrap()
        };
        parent.as_object_mut().unwrap().remove(key).unwrap();
        let name = if forge == ForgeKind::Gitlab {
            "X-Gitlab-Event"
        } else {
            "X-GitHub-Event"
        };
        let result = parse(
            forge,
            &headers(&[(name, event_header)]),
            &serde_json::to_vec(&body).unwrap(),
        );
        let Err(IntakeError::Malformed(message)) = result else {
            panic!("{file} {pointer}: {result:?}")
        };
        let field = key.trim_start_matches('/');
        assert!(message.contains(field), "{file}: {message}");
    }
}

#[test]
fn unknown_events_are_ignored() {
    let gitlab = parse_json(ForgeKind::Gitlab, "Wiki Page Hook", &serde_json::json!({}));
    assert_eq!(
        gitlab,
        Parsed::ignored("GitLab event `Wiki Page Hook` is not used by ferry")
    );
    let github = parse_json(ForgeKind::Github, "star", &serde_json::json!({}));
    assert_eq!(
        github,
        Parsed::ignored("GitHub event `star` is not used by ferry")
    );
}

#[test]
fn github_app_ping_has_no_repository() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let fixture = fixtures.get("github/ping.app_hook.octocrab.json");
    let identity = repo_identity(ForgeKind::Github, &fixture.headers, &fixture.body);
    assert_eq!(
        identity,
        Err(IntakeError::Malformed(
            "missing field `repository`".to_owned()
        ))
    );
    let parsed = fixtures.parse("github/ping.app_hook.octocrab.json");
    assert_eq!(
        parsed,
        Parsed::ignored("ping of a GitHub App hook (no repository)")
    );
}

#[test]
fn the_announced_event_labels_deliveries_that_were_not_parsed() {
    let gitlab = |v: &str| header_event_name(ForgeKind::Gitlab, &headers(&[("X-Gitlab-Event", v)]));
    let github = |v: &str| header_event_name(ForgeKind::Github, &headers(&[("X-GitHub-Event", v)]));
    assert_eq!(gitlab("Push Hook"), "push");
    assert_eq!(gitlab("Tag Push Hook"), "tag_push");
    assert_eq!(gitlab("Merge Request Hook"), "merge_request");
    assert_eq!(gitlab("Note Hook"), "comment");
    assert_eq!(gitlab("Pipeline Hook"), "unknown");
    assert_eq!(github("pull_request"), "merge_request");
    assert_eq!(github("check_suite"), "rerequested");
    assert_eq!(github("ping"), "ping");
    assert_eq!(github("anything else"), "unknown");
    assert_eq!(
        header_event_name(ForgeKind::Github, &headers(&[])),
        "unknown"
    );
}
