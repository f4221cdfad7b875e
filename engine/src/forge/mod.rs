//! Webhook intake: from a forge's raw delivery (headers + body bytes) to an [`Event`]; reporting
//! back to the forge is [`report`] (the `Forge` plug point) with each forge's `client` module.
//!
//! This is step 1 of "the flow of one push" (see `DESIGN.md`), without the HTTP framework: the
//! server's extractor calls, in this order,
//!
//! 1. [`repo_identity`] — reads *only* the repository from the unverified body, to pick the
//!    project (and so the secret) the delivery claims to be for;
//! 2. [`verify`] — the GitLab token or GitHub HMAC signature, in constant time
//!    ([`IntakeError::Unauthorized`] → `401`, nothing stored);
//! 3. [`delivery_key`] — the idempotency key the delivery is stored under;
//! 4. [`parse`] — the forge-neutral [`Event`], or [`Parsed::Ignored`] for a valid delivery ferry
//!    does not act on (answered `202` all the same: GitLab disables hooks that keep failing).
//!    Invalid JSON or a missing required field is [`IntakeError::Malformed`] → `400`.
//!
//! Each forge has its own lenient payload structs in `<forge>/webhook.rs`; nothing outside this
//! module sees them. Header names are matched case-insensitively through [`HeaderSource`], so the
//! engine needs no HTTP crate.

pub mod clients;
pub mod commands;
pub mod counted;
pub mod github;
pub mod gitlab;
pub mod report;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::event::{Event, ForgeKind, RepoIdentity};

/// Read access to a delivery's headers by name, case-insensitively.
///
/// The server implements it for its framework's header map (through a newtype: the orphan rule
/// forbids implementing it for `http::HeaderMap` directly outside this crate).
pub trait HeaderSource {
    /// The value of the header `name` (any case), if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
}

impl HeaderSource for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// The secret token or signature is missing or wrong (`401`; store nothing).
    #[error("webhook secret or signature missing or wrong")]
    Unauthorized,
    /// The body is not valid JSON, or lacks a field the event needs (`400`).
    #[error("malformed webhook payload: {0}")]
    Malformed(String),
}

/// The outcome of parsing a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per delivery, moved once; boxing would only add noise"
)]
pub enum Parsed {
    /// Something ferry acts on (or at least stores).
    Event(Event),
    /// A valid delivery ferry does not act on (pipeline hooks, comments on plain issues, unknown
    /// event types, edited comments, ...). Answered `202`.
    Ignored {
        /// Why, for the log.
        reason: String,
    },
}

impl Parsed {
    /// A [`Parsed::Ignored`] with the given reason.
    pub(crate) fn ignored(reason: impl Into<String>) -> Self {
        Parsed::Ignored {
            reason: reason.into(),
        }
    }
}

/// The repository a delivery names, read from the unverified body with a minimal struct (nothing
/// else in the body is looked at before [`verify`]).
///
/// The headers are unused today (both forges name the repository only in the body) but keep the
/// entry points uniform.
pub fn repo_identity(
    forge: ForgeKind,
    _headers: &dyn HeaderSource,
    body: &[u8],
) -> Result<RepoIdentity, IntakeError> {
    match forge {
        ForgeKind::Gitlab => gitlab::webhook::repo_identity(body),
        ForgeKind::Github => github::webhook::repo_identity(body),
    }
}

/// The key a delivery is deduplicated under, prefixed with the forge (`gitlab:` / `github:`).
///
/// GitLab: `Idempotency-Key` (stable across retries), else `X-Gitlab-Event-UUID` +
/// `:` + `X-Gitlab-Webhook-UUID` (or the event UUID alone). GitHub: `X-GitHub-Delivery` (kept by
/// redeliveries). With none of them: `sha256:` + the hex SHA-256 of the body.
pub fn delivery_key(forge: ForgeKind, headers: &dyn HeaderSource, body: &[u8]) -> String {
    let from_headers = match forge {
        ForgeKind::Gitlab => gitlab::webhook::delivery_id(headers),
        ForgeKind::Github => header(headers, "X-GitHub-Delivery").map(str::to_owned),
    };
    let id =
        from_headers.unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))));
    format!("{}:{id}", forge.as_str())
}

/// Checks that the delivery carries the project's secret: GitLab's `X-Gitlab-Token` equals it,
/// GitHub's `X-Hub-Signature-256` is `sha256=` + the hex HMAC-SHA256 of the raw `body` under it.
/// Both comparisons are constant-time.
///
/// A missing header, or an empty configured `secret`, is [`IntakeError::Unauthorized`].
pub fn verify(
    forge: ForgeKind,
    headers: &dyn HeaderSource,
    body: &[u8],
    secret: &[u8],
) -> Result<(), IntakeError> {
    if secret.is_empty() {
        return Err(IntakeError::Unauthorized);
    }
    match forge {
        ForgeKind::Gitlab => {
            gitlab::webhook::verify_token(header(headers, "X-Gitlab-Token"), secret)
        }
        ForgeKind::Github => {
            github::webhook::verify_signature(header(headers, "X-Hub-Signature-256"), body, secret)
        }
    }
}

/// Parses a verified delivery into an [`Event`], dispatching on `X-Gitlab-Event` /
/// `X-GitHub-Event` (missing: [`IntakeError::Malformed`]).
pub fn parse(
    forge: ForgeKind,
    headers: &dyn HeaderSource,
    body: &[u8],
) -> Result<Parsed, IntakeError> {
    match forge {
        ForgeKind::Gitlab => {
            gitlab::webhook::parse(required_header(headers, "X-Gitlab-Event")?, body)
        }
        ForgeKind::Github => {
            github::webhook::parse(required_header(headers, "X-GitHub-Event")?, body)
        }
    }
}

/// The kind of event a delivery's header announces (`X-Gitlab-Event`, `X-GitHub-Event`), in the
/// words of [`crate::service::intake::event_name`], for the metrics of deliveries that were not
/// parsed (refused, ignored); `unknown` for anything else, so the label stays small.
pub fn header_event_name(forge: ForgeKind, headers: &dyn HeaderSource) -> &'static str {
    match forge {
        ForgeKind::Gitlab => match header(headers, "X-Gitlab-Event") {
            Some("Push Hook") => "push",
            Some("Tag Push Hook") => "tag_push",
            Some("Merge Request Hook") => "merge_request",
            Some("Note Hook") => "comment",
            Some(_) | None => "unknown",
        },
        ForgeKind::Github => match header(headers, "X-GitHub-Event") {
            Some("push") => "push",
            Some("pull_request") => "merge_request",
            Some("issue_comment") => "comment",
            Some("check_run" | "check_suite") => "rerequested",
            Some("ping") => "ping",
            Some(_) | None => "unknown",
        },
    }
}

/// A header's trimmed value; empty counts as absent.
pub(crate) fn header<'h>(headers: &'h dyn HeaderSource, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn required_header<'h>(headers: &'h dyn HeaderSource, name: &str) -> Result<&'h str, IntakeError> {
    header(headers, name).ok_or_else(|| IntakeError::Malformed(format!("missing header {name}")))
}

/// Deserializes `body` as `T`, mapping failures to [`IntakeError::Malformed`] (serde_json's
/// message names the field and position, never the body's content).
pub(crate) fn from_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, IntakeError> {
    serde_json::from_slice(body).map_err(|err| IntakeError::Malformed(err.to_string()))
}

/// `deserialize_with` helper: `null` (as well as a missing field, with `#[serde(default)]`)
/// becomes `T::default()`.
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Whether a SHA is Git's "no object" (all zeros), which forges send for created/deleted refs.
pub(crate) fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|byte| byte == b'0')
}

/// `Some(sha)` unless it is empty or all zeros.
pub(crate) fn real_sha(sha: &str) -> Option<String> {
    (!sha.is_empty() && !is_zero_sha(sha)).then(|| sha.to_owned())
}

/// Builds a [`RepoIdentity`] from a name and candidate URLs, keeping the non-empty URLs once each,
/// in order.
pub(crate) fn identity<'a>(
    full_name: String,
    urls: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<RepoIdentity, IntakeError> {
    if full_name.is_empty() {
        return Err(IntakeError::Malformed(
            "repository name is empty".to_owned(),
        ));
    }
    let mut unique: Vec<String> = Vec::new();
    for url in urls.into_iter().flatten().map(str::trim) {
        if !url.is_empty() && !unique.iter().any(|seen| seen == url) {
            unique.push(url.to_owned());
        }
    }
    Ok(RepoIdentity {
        full_name,
        urls: unique,
    })
}
