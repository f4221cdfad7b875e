//! The forge clients of every project, built on first use and shared by whoever talks to the
//! forge: the reporter (statuses, notes, answers) and the planner (who may use commands, a merge
//! request's head). Sharing one client per project also shares what it learnt about the rate
//! limit ([`Forge::paused_until`]).
//!
//! A client that cannot be built (the forge is down, the token is refused) is not built again
//! before a back-off has passed; until then asking for it returns the same error at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::ProjectConfig;
use crate::forge::counted::Counted;
use crate::forge::report::{Forge, ForgeCredentials, ForgeError, connect};
use crate::metrics::Metrics;

/// A project's client, or why there is none yet.
enum Slot {
    Ready(Arc<dyn Forge>),
    Failed {
        until: Instant,
        attempts: u32,
        error: ForgeError,
    },
}

/// Forge clients by project name.
pub struct Forges {
    credentials: HashMap<String, ForgeCredentials>,
    slots: Mutex<HashMap<String, Slot>>,
    min_backoff: Duration,
    max_backoff: Duration,
    /// Where calls are counted (every client is wrapped in [`Counted`]).
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Forges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forges")
            .field("projects", &self.credentials.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Forges {
    /// Clients for the projects whose credentials `credentials` holds by project name (read from
    /// the environment by the caller); a failed build is retried after 1 s doubling up to 10 min.
    pub fn new(credentials: HashMap<String, ForgeCredentials>) -> Forges {
        Forges {
            credentials,
            slots: Mutex::new(HashMap::new()),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            metrics: None,
        }
    }

    /// Counts every call of the clients it builds in `metrics` (see [`Counted`]).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Forges {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the back-off between attempts to build a client that failed.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Forges {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// The credentials of `project`, if any were given.
    pub fn credentials(&self, project: &str) -> Option<&ForgeCredentials> {
        self.credentials.get(project)
    }

    /// The exponential back-off after `attempts` failures.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        self.min_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff)
    }

    /// The client of `project`, built on first use; `None` for `forge: none`.
    pub async fn get(&self, project: &ProjectConfig) -> Result<Option<Arc<dyn Forge>>, ForgeError> {
        let mut slots = self.slots.lock().await;
        let attempts = match slots.get(&project.name) {
            Some(Slot::Ready(forge)) => return Ok(Some(Arc::clone(forge))),
            Some(Slot::Failed {
                until,
                attempts,
                error,
            }) => {
                if *until > Instant::now() {
                    return Err(error.clone());
                }
                *attempts
            }
            None => 0,
        };
        let none = ForgeCredentials::None;
        let credentials = self.credentials.get(&project.name).unwrap_or(&none);
        match connect(project, credentials).await {
            Ok(Some(forge)) => {
                let forge: Arc<dyn Forge> = match &self.metrics {
                    Some(metrics) => Arc::new(Counted::new(forge, metrics.clone())),
                    None => forge,
                };
                slots.insert(project.name.clone(), Slot::Ready(Arc::clone(&forge)));
                Ok(Some(forge))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                let wait = match &error {
                    ForgeError::Unavailable {
                        retry_after: Some(wait),
                        ..
                    } => *wait,
                    _ => self.backoff(i64::from(attempts)),
                };
                tracing::warn!(project = %project.name, error = %error, "cannot reach the forge");
                slots.insert(
                    project.name.clone(),
                    Slot::Failed {
                        until: Instant::now() + wait,
                        attempts: attempts + 1,
                        error: error.clone(),
                    },
                );
                Err(error)
            }
        }
    }
}
