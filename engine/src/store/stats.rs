//! Counts for `/metrics`, read when it is scraped: runs by state, unsent outbox rows, pending
//! events. Each is one indexed aggregate query.

use super::{RunState, Store, StoreError, parse_word, with_pool};

/// What the store holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Runs per state (every state listed, zero included).
    pub runs: Vec<(RunState, i64)>,
    /// Outbox rows not yet delivered to a forge.
    pub outbox_unsent: i64,
    /// Stored events not yet planned (waiting or backing off).
    pub events_pending: i64,
    /// Of those, events whose planning failed at least once (backing off: an outage, or a
    /// commit that cannot be found).
    pub events_retrying: i64,
    /// Events given up on (see [`super::Failure::Permanent`]).
    pub events_failed: i64,
}

/// Pending, retrying and failed events.
type EventCounts = (i64, i64, i64);

/// [`EventCounts`], from the `events_pending` index (`state` first).
const EVENT_COUNTS: &str = "SELECT COUNT(*) FILTER (WHERE state = 'pending'), \
     COUNT(*) FILTER (WHERE state = 'pending' AND attempts > 0), \
     COUNT(*) FILTER (WHERE state = 'failed') FROM events WHERE state IN ('pending', 'failed')";

impl Store {
    /// Deliveries whose planning failed: (retrying, given up). One indexed query, for the
    /// dashboard's notice.
    pub async fn troubled_event_counts(&self) -> Result<(i64, i64), StoreError> {
        let (_, retrying, failed): EventCounts =
            with_pool!(self, |pool| sqlx::query_as(EVENT_COUNTS)
                .fetch_one(pool)
                .await?);
        Ok((retrying, failed))
    }

    /// Runs by state, unsent outbox rows and pending events.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (by_state, outbox, events): (Vec<(String, i64)>, (i64,), EventCounts) =
            with_pool!(self, |pool| {
                let by_state = sqlx::query_as("SELECT state, COUNT(*) FROM runs GROUP BY state")
                    .fetch_all(pool)
                    .await?;
                let outbox = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
                    .fetch_one(pool)
                    .await?;
                let events = sqlx::query_as(EVENT_COUNTS).fetch_one(pool).await?;
                (by_state, outbox, events)
            });
        let mut runs: Vec<(RunState, i64)> = RunState::ALL.iter().map(|s| (*s, 0)).collect();
        for (word, n) in by_state {
            let state = parse_word("run state", &word, RunState::parse)?;
            if let Some(slot) = runs.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n;
            }
        }
        Ok(StoreStats {
            runs,
            outbox_unsent: outbox.0,
            events_pending: events.0,
            events_retrying: events.1,
            events_failed: events.2,
        })
    }
}
