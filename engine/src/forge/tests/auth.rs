//! Secrets, signatures and delivery keys: who may deliver, and how a redelivery is recognised.

use super::{Fixtures, headers};
use crate::event::ForgeKind;
use crate::forge::{HeaderSource, IntakeError, delivery_key, verify};

#[test]
fn github_documented_test_vector() {
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let secret = b"It's a Secret to Everybody";
    let headers = headers(&[("X-Hub-Signature-256", sig)]);
    assert_eq!(
        verify(ForgeKind::Github, &headers, b"Hello, World!", secret),
        Ok(())
    );
    let with_newline = verify(ForgeKind::Github, &headers, b"Hello, World!\n", secret);
    assert_eq!(with_newline, Err(IntakeError::Unauthorized));
}

#[test]
fn gitlab_token_must_match() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let secret = fixtures.secret.as_bytes();
    let body = &fixtures.get("gitlab/push.json").body;
    let check = |pairs: &[(&str, &str)], secret: &[u8]| {
        verify(ForgeKind::Gitlab, &headers(pairs), body, secret)
    };
    assert_eq!(
        check(&[("x-gitlab-token", "It's a Secret to Everybody")], secret),
        Ok(())
    );
    let unauthorized = Err(IntakeError::Unauthorized);
    assert_eq!(
        check(&[("X-Gitlab-Token", "It's a Secret to Everybody!")], secret),
        unauthorized
    );
    assert_eq!(
        check(&[("X-Gitlab-Token", "It's a Secret")], secret),
        unauthorized
    );
    assert_eq!(check(&[("X-Gitlab-Token", "")], secret), unauthorized);
    assert_eq!(
        check(&[("X-Gitlab-Event", "Push Hook")], secret),
        unauthorized
    );
    // A GitHub signature is no GitLab token.
    let github_sig =
        fixtures.get("github/push.branch_created.json").headers["X-Hub-Signature-256"].clone();
    assert_eq!(
        check(&[("X-Hub-Signature-256", &github_sig)], secret),
        unauthorized
    );
    // No configured secret never authorises, even an empty token.
    assert_eq!(check(&[("X-Gitlab-Token", "")], b""), unauthorized);
}

#[test]
fn github_signature_must_match_the_exact_body() {
    let Some(fixtures) = Fixtures::load() else {
        return;
    };
    let secret = fixtures.secret.as_bytes();
    let fixture = fixtures.get("github/pull_request.opened.json");
    let good = fixture.headers["X-Hub-Signature-256"].as_str();
    let check = |pairs: &[(&str, String)], body: &[u8], secret: &[u8]| {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        verify(ForgeKind::Github, &headers(&pairs), body, secret)
    };
    let sig = |value: &str| [("X-Hub-Signature-256", value.to_owned())];
    assert_eq!(check(&sig(good), &fixture.body, secret), Ok(()));

    let unauthorized = Err(IntakeError::Unauthorized);
    let mut modified = fixture.body.clone();
    let at = modified.iter().position(|b| *b == b'2').unwrap();
    modified[at] = b'3';
    assert_eq!(check(&sig(good), &modified, secret), unauthorized);
    assert_eq!(
        check(&sig(good), &fixture.body[..fixture.body.len() - 1], secret),
        unauthorized
    );
    assert_eq!(
        check(&sig(good), &fixture.body, b"another secret"),
        unauthorized
    );
    assert_eq!(check(&sig(good), &fixture.body, b""), unauthorized);
    let other = &fixtures.get("github/pull_request.closed.json").headers["X-Hub-Signature-256"];
    assert_eq!(check(&sig(other), &fixture.body, secret), unauthorized);
    let hex = &good["sha256=".len()..];
    assert_eq!(check(&sig(hex), &fixture.body, secret), unauthorized);
    assert_eq!(
        check(&sig(&format!("sha1={hex}")), &fixture.body, secret),
        unauthorized
    );
    assert_eq!(
        check(&sig(&good.to_uppercase()), &fixture.body, secret),
        unauthorized
    );
    assert_eq!(
        check(&sig(&good[..good.len() - 2]), &fixture.body, secret),
        unauthorized
    );
    assert_eq!(
        check(&sig("sha256=zz"), &fixture.body, secret),
        unauthorized
    );
    assert_eq!(check(&sig("sha256="), &fixture.body, secret), unauthorized);
    assert_eq!(
        check(
            &[("X-GitHub-Event", "pull_request".to_owned())],
            &fixture.body,
            secret
        ),
        unauthorized
    );
}

#[test]
fn delivery_keys() {
    let body = b"Hello, World!";
    let body_hash = "dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f";
    let key = |forge, pairs: &[(&str, &str)]| delivery_key(forge, &headers(pairs), body);
    let (idem, event, hook) = ("f5e5f430-f57b", "13792a34-cac6", "02affd2d-2cba");
    let all = [
        ("Idempotency-Key", idem),
        ("X-Gitlab-Event-UUID", event),
        ("X-Gitlab-Webhook-UUID", hook),
    ];
    assert_eq!(key(ForgeKind::Gitlab, &all), "gitlab:f5e5f430-f57b");
    assert_eq!(
        key(ForgeKind::Gitlab, &all[1..]),
        "gitlab:13792a34-cac6:02affd2d-2cba"
    );
    assert_eq!(key(ForgeKind::Gitlab, &all[1..2]), "gitlab:13792a34-cac6");
    assert_eq!(
        key(ForgeKind::Gitlab, &[("idempotency-key", " abc ")]),
        "gitlab:abc"
    );
    assert_eq!(
        key(ForgeKind::Gitlab, &all[2..]),
        format!("gitlab:sha256:{body_hash}")
    );
    assert_eq!(
        key(ForgeKind::Gitlab, &[("Idempotency-Key", "")]),
        format!("gitlab:sha256:{body_hash}")
    );
    assert_eq!(
        key(ForgeKind::Gitlab, &[]),
        format!("gitlab:sha256:{body_hash}")
    );

    let delivery = [("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")];
    assert_eq!(
        key(ForgeKind::Github, &delivery),
        "github:72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    assert_eq!(
        key(ForgeKind::Github, &[("x-github-delivery", "abc")]),
        "github:abc"
    );
    assert_eq!(
        key(ForgeKind::Github, &all),
        format!("github:sha256:{body_hash}")
    );
    assert_eq!(
        key(ForgeKind::Github, &[]),
        format!("github:sha256:{body_hash}")
    );
    assert_eq!(
        delivery_key(ForgeKind::Github, &headers(&[]), b""),
        "github:sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn header_lookup_ignores_case() {
    let map = headers(&[("X-GitHub-Event", "push")]);
    assert_eq!(HeaderSource::get(&map, "x-github-event"), Some("push"));
    assert_eq!(HeaderSource::get(&map, "X-GITHUB-EVENT"), Some("push"));
    assert_eq!(HeaderSource::get(&map, "X-GitHub-Delivery"), None);
}
