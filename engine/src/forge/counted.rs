//! Forge calls counted for `/metrics`: every client [`crate::forge::clients::Forges`] hands out
//! is wrapped in [`Counted`], so the reporter's and the planner's calls alike are counted once,
//! here, whatever the forge.
//!
//! - `ferry_forge_calls_total{forge, outcome}`: `ok`, `rejected` (refused for good),
//!   `unavailable` (try again later) or `rate_limited` (try again after the wait the forge asked
//!   for: `429`, `Retry-After`, GitHub's rate-limit `403`);
//! - `ferry_forge_rate_limit_waits_total{forge}`: answers whose rate-limit headers make ferry wait
//!   before its next call (a `rate_limited` call, or a successful one that used the limit up).

use std::sync::Arc;
use std::time::SystemTime;

use crate::event::Actor;
use crate::forge::report::{
    Access, BoxFuture, CheckRunReport, Forge, ForgeError, MergeRequestHead, Reaction, StatusReport,
};
use crate::metrics::Metrics;

/// A forge client whose calls are counted.
pub struct Counted {
    inner: Arc<dyn Forge>,
    metrics: Arc<Metrics>,
}

impl Counted {
    /// Counts the calls of `inner` in `metrics`.
    pub fn new(inner: Arc<dyn Forge>, metrics: Arc<Metrics>) -> Counted {
        Counted { inner, metrics }
    }

    /// Counts one call's outcome and passes its result on.
    fn count<T>(&self, result: Result<T, ForgeError>) -> Result<T, ForgeError> {
        let forge = self.inner.kind();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ForgeError::Unavailable {
                retry_after: Some(_),
                ..
            }) => "rate_limited",
            Err(ForgeError::Unavailable { .. }) => "unavailable",
            Err(ForgeError::Rejected { .. } | ForgeError::Setup(_)) => "rejected",
        };
        self.metrics.inc(
            "ferry_forge_calls_total",
            "Forge API calls (statuses, notes, check runs, reactions, access and MR lookups) by outcome.",
            &[("forge", forge), ("outcome", outcome)],
        );
        let paused = self
            .inner
            .paused_until()
            .is_some_and(|t| t > SystemTime::now());
        if outcome == "rate_limited" || paused {
            self.metrics.inc(
                "ferry_forge_rate_limit_waits_total",
                "Forge answers whose rate-limit headers (429, Retry-After, limit used up) made ferry wait.",
                &[("forge", forge)],
            );
        }
        result
    }
}

impl Forge for Counted {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn set_status<'a>(&'a self, status: &'a StatusReport) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move { self.count(self.inner.set_status(status).await) })
    }

    fn find_note<'a>(
        &'a self,
        mr: u64,
        marker: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>> {
        Box::pin(async move { self.count(self.inner.find_note(mr, marker).await) })
    }

    fn create_note<'a>(&'a self, mr: u64, body: &'a str) -> BoxFuture<'a, Result<i64, ForgeError>> {
        Box::pin(async move { self.count(self.inner.create_note(mr, body).await) })
    }

    fn edit_note<'a>(
        &'a self,
        mr: u64,
        id: i64,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move { self.count(self.inner.edit_note(mr, id, body).await) })
    }

    fn access<'a>(&'a self, user: &'a Actor) -> BoxFuture<'a, Result<Access, ForgeError>> {
        Box::pin(async move { self.count(self.inner.access(user).await) })
    }

    fn merge_request_head<'a>(
        &'a self,
        mr: u64,
    ) -> BoxFuture<'a, Result<MergeRequestHead, ForgeError>> {
        Box::pin(async move { self.count(self.inner.merge_request_head(mr).await) })
    }

    fn react<'a>(
        &'a self,
        mr: u64,
        comment: u64,
        reaction: Reaction,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move { self.count(self.inner.react(mr, comment, reaction).await) })
    }

    fn uses_check_runs(&self) -> bool {
        self.inner.uses_check_runs()
    }

    fn find_check_run<'a>(
        &'a self,
        sha: &'a str,
        name: &'a str,
        external_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, ForgeError>> {
        Box::pin(async move { self.count(self.inner.find_check_run(sha, name, external_id).await) })
    }

    fn create_check_run<'a>(
        &'a self,
        check: &'a CheckRunReport,
    ) -> BoxFuture<'a, Result<i64, ForgeError>> {
        Box::pin(async move { self.count(self.inner.create_check_run(check).await) })
    }

    fn update_check_run<'a>(
        &'a self,
        id: i64,
        check: &'a CheckRunReport,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move { self.count(self.inner.update_check_run(id, check).await) })
    }

    fn paused_until(&self) -> Option<SystemTime> {
        self.inner.paused_until()
    }
}
