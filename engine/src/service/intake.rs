//! Intake: one webhook delivery, verified and stored before it is acknowledged.
//!
//! Order matters: read only the repository identity from the body, find the project, verify the
//! delivery with that project's secret, and only then trust the rest. A valid delivery is
//! normalised into an [`Event`] and stored with its delivery key in one transaction; the caller
//! answers `202` only after that. A redelivery (same key) changes nothing.

use std::collections::HashMap;
use std::fmt;

use crate::config::Config;
use crate::event::ForgeKind;
use crate::forge::{self, HeaderSource, IntakeError, Parsed};
use crate::store::{Inserted, Store, StoreError};

/// A secret value that never prints.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The bytes, for verification only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Webhook secrets by project name, read from the environment at the edge.
pub type Secrets = HashMap<String, Secret>;

/// What became of a delivery; the server maps it to a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New and stored (`202`).
    Stored {
        /// Project.
        project: String,
        /// Kind of event, for logs and metrics.
        event: &'static str,
    },
    /// Already stored under the same delivery key (`200`).
    Duplicate {
        /// Project.
        project: String,
        /// Kind of event, for logs and metrics.
        event: &'static str,
    },
    /// Valid but nothing for ferry, or a repository ferry does not serve (`202`).
    Ignored {
        /// Why, for the log line.
        reason: String,
    },
    /// Wrong or missing secret or signature (`401`); nothing stored.
    Unauthorized,
    /// Not parseable (`400`); nothing stored.
    Malformed(String),
}

/// Verifies, normalises and stores one delivery.
pub async fn receive(
    store: &Store,
    config: &Config,
    secrets: &Secrets,
    forge_kind: ForgeKind,
    headers: &(dyn HeaderSource + Sync),
    body: &[u8],
) -> Result<Outcome, StoreError> {
    let identity = match forge::repo_identity(forge_kind, headers, body) {
        Ok(identity) => identity,
        // A GitHub App's ping names no repository: nothing to verify it against, nothing to do.
        Err(_)
            if forge_kind == ForgeKind::Github && headers.get("X-GitHub-Event") == Some("ping") =>
        {
            return Ok(Outcome::Ignored {
                reason: "GitHub App ping".into(),
            });
        }
        Err(e) => return Ok(rejected(e)),
    };
    let Some(project) = config.project_for(forge_kind, &identity.urls) else {
        return Ok(Outcome::Ignored {
            reason: format!("repository {} is not a ferry project", identity.full_name),
        });
    };
    let Some(secret) = secrets.get(&project.name) else {
        return Ok(Outcome::Unauthorized);
    };
    if let Err(e) = forge::verify(forge_kind, headers, body, secret.expose()) {
        return Ok(rejected(e));
    }
    let event = match forge::parse(forge_kind, headers, body) {
        Ok(Parsed::Event(event)) => event,
        Ok(Parsed::Ignored { reason }) => return Ok(Outcome::Ignored { reason }),
        Err(e) => return Ok(rejected(e)),
    };
    let key = forge::delivery_key(forge_kind, headers, body);
    let name = event_name(&event.kind);
    Ok(
        match store
            .insert_event(&project.name, forge_kind, &key, &event)
            .await?
        {
            Inserted::New(_) => Outcome::Stored {
                project: project.name.clone(),
                event: name,
            },
            Inserted::Duplicate(_) => Outcome::Duplicate {
                project: project.name.clone(),
                event: name,
            },
        },
    )
}

fn rejected(e: IntakeError) -> Outcome {
    match e {
        IntakeError::Unauthorized => Outcome::Unauthorized,
        IntakeError::Malformed(m) => Outcome::Malformed(m),
    }
}

/// A short name of an event kind, for logs and metric labels.
pub fn event_name(kind: &crate::event::EventKind) -> &'static str {
    use crate::event::EventKind;
    match kind {
        EventKind::BranchPush(_) => "push",
        EventKind::TagPush(_) => "tag_push",
        EventKind::MergeRequest(_) => "merge_request",
        EventKind::Comment(_) => "comment",
        EventKind::Rerequested(_) => "rerequested",
        EventKind::Ping => "ping",
    }
}
