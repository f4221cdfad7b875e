//! Deliveries: stored once per delivery key at intake, then planned by a worker.
//!
//! Intake calls [`Store::insert_event`] and answers the forge only after it returned. A planning
//! worker takes each project's events oldest first ([`Store::first_pending_due_at`],
//! [`Store::first_pending_event`]; one backing off holds back its project's later ones), plans
//! each event, then calls
//! [`Store::mark_event_planned`], or [`Store::mark_event_failed_attempt`] with a retry time. An
//! event is given up on (`failed`, not retried) only when trying again cannot help
//! ([`Failure::Permanent`]: its commit is gone, its project removed) and it has failed
//! [`MAX_EVENT_ATTEMPTS`] times; through an outage of the forge, the network or the database
//! ([`Failure::Transient`]) it stays pending, however long the outage lasts.

use crate::event::{Event, ForgeKind};
use crate::store::Pools;

use super::group_commit::EventRow;

use super::states::EventState;
use super::{
    Columns, EventId, Store, StoreError, UnixMillis, now_millis, parse_word, with_pool, write_tx,
};

/// Whether trying a failed planning attempt again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An outage (the forge, the network, the database): retried until it works.
    Transient,
    /// Nothing will change by waiting (the commit is not in the repository, the project is no
    /// longer configured): retried [`MAX_EVENT_ATTEMPTS`] times in all, then `failed`.
    Permanent,
}

/// How many failed planning attempts turn an event `failed`, when the failure is permanent.
pub const MAX_EVENT_ATTEMPTS: i64 = 10;

/// What [`Store::insert_event`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The delivery is new and is now stored with this id.
    New(EventId),
    /// The delivery key was already stored (a redelivery); nothing changed.
    Duplicate(EventId),
}

impl Inserted {
    /// The event's id, new or not.
    pub fn id(self) -> EventId {
        match self {
            Inserted::New(id) | Inserted::Duplicate(id) => id,
        }
    }
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its id.
    pub id: EventId,
    /// The configured project it belongs to.
    pub project: String,
    /// The forge it came from.
    pub forge: ForgeKind,
    /// The delivery key it was stored under.
    pub delivery_key: String,
    /// The parsed event.
    pub event: Event,
    /// When intake stored it.
    pub received_at: UnixMillis,
    /// Where planning is.
    pub state: EventState,
    /// Failed planning attempts so far.
    pub attempts: i64,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Not planned again before this time.
    pub next_attempt_at: UnixMillis,
}

fn parse_forge(word: &str) -> Option<ForgeKind> {
    [ForgeKind::Gitlab, ForgeKind::Github]
        .into_iter()
        .find(|f| f.as_str() == word)
}

fn event_from_row(row: &impl Columns) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: EventId(row.int("id")?),
        project: row.text("project")?,
        forge: parse_word("forge", &row.text("forge")?, parse_forge)?,
        delivery_key: row.text("delivery_key")?,
        event: serde_json::from_str(&row.text("event_json")?)?,
        received_at: row.int("received_at")?,
        state: parse_word("event state", &row.text("state")?, EventState::parse)?,
        attempts: row.int("attempts")?,
        last_error: row.opt_text("last_error")?,
        next_attempt_at: row.int("next_attempt_at")?,
    })
}

/// Stores one delivery on PostgreSQL in its own transaction: new, or the id it already has.
/// (SQLite stores deliveries in batches, [`super::group_commit`].)
async fn insert_one(pool: &sqlx::PgPool, row: &EventRow) -> Result<Inserted, StoreError> {
    let mut tx = pool.begin().await?;
    let new: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO events (project, forge, delivery_key, event_json, received_at, state, \
         attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $5) \
         ON CONFLICT (delivery_key) DO NOTHING RETURNING id",
    )
    .bind(&row.project)
    .bind(row.forge.as_str())
    .bind(&row.key)
    .bind(&row.json)
    .bind(row.now)
    .fetch_optional(&mut *tx)
    .await?;
    let inserted = match new {
        Some((id,)) => Inserted::New(EventId(id)),
        // Only a redelivery costs the second statement.
        None => {
            let (id,): (i64,) = sqlx::query_as("SELECT id FROM events WHERE delivery_key = $1")
                .bind(&row.key)
                .fetch_one(&mut *tx)
                .await?;
            Inserted::Duplicate(EventId(id))
        }
    };
    tx.commit().await?;
    Ok(inserted)
}

impl Store {
    /// Stores a delivery under its key, in one transaction, unless the key is already stored.
    ///
    /// Returns [`Inserted::New`] once the row is durably committed (answer `202`), or
    /// [`Inserted::Duplicate`] with the existing id for a redelivery (answer `200`), which changes
    /// nothing. Safe under any number of concurrent calls with one key: exactly one is `New`.
    /// Keys are unique across projects and forges; intake uses the forge's delivery id or the
    /// body's SHA-256.
    pub async fn insert_event(
        &self,
        project: &str,
        forge: ForgeKind,
        delivery_key: &str,
        event: &Event,
    ) -> Result<Inserted, StoreError> {
        let json = serde_json::to_string(event)?;
        let row = EventRow {
            project: project.to_owned(),
            forge,
            key: delivery_key.to_owned(),
            json,
            now: now_millis(),
        };
        match &self.pools {
            Pools::Sqlite { pool, write, queue } => queue.insert(pool, write, row).await,
            Pools::Postgres(pool) => insert_one(pool, &row).await,
        }
    }

    /// The stored event with this delivery key.
    pub async fn event_by_key(&self, key: &str) -> Result<Option<StoredEvent>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT id, project, forge, delivery_key, event_json, received_at, state, \
                 attempts, last_error, next_attempt_at FROM events WHERE delivery_key = $1",
            )
            .bind(key)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    /// The number of stored events (every state).
    pub async fn event_count(&self) -> Result<i64, StoreError> {
        with_pool!(self, |pool| {
            let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
                .fetch_one(pool)
                .await?;
            Ok(row.0)
        })
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// The stored event with this id.
    pub async fn event_by_id(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT id, project, forge, delivery_key, event_json, received_at, state, \
                 attempts, last_error, next_attempt_at FROM events WHERE id = $1",
            )
            .bind(id.0)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    /// Up to `limit` pending events of `project`, oldest first, due or not: events are planned in
    /// order, so a worker stops at the first one that is not due yet (it is backing off).
    pub async fn pending_events(
        &self,
        project: &str,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, project, forge, delivery_key, event_json, received_at, state, \
                 attempts, last_error, next_attempt_at FROM events \
                 WHERE state = 'pending' AND project = $1 ORDER BY id LIMIT $2",
            )
            .bind(project)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    /// When the oldest pending event of `project` is due, if it has one (a light query for a
    /// worker deciding whether, and how long, to wait).
    pub async fn first_pending_due_at(
        &self,
        project: &str,
    ) -> Result<Option<UnixMillis>, StoreError> {
        with_pool!(self, |pool| {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT next_attempt_at FROM events WHERE state = 'pending' AND project = $1 ORDER BY id LIMIT 1",
            )
            .bind(project)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(at,)| at))
        })
    }

    /// The oldest pending event of `project`, due or not: events are planned in order, so while it
    /// is backing off, the project's later events wait behind it.
    pub async fn first_pending_event(
        &self,
        project: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        Ok(self.pending_events(project, 1).await?.into_iter().next())
    }

    /// Up to `limit` events whose planning failed: `failed` ones and pending ones that failed at
    /// least once (retrying), newest first, only `project`'s when given, only `state` when given.
    pub async fn troubled_events(
        &self,
        project: Option<&str>,
        state: Option<EventState>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, project, forge, delivery_key, event_json, received_at, state, \
                 attempts, last_error, next_attempt_at FROM events \
                 WHERE (state = 'failed' OR (state = 'pending' AND attempts > 0)) \
                 AND ($1 IS NULL OR project = $1) AND ($2 IS NULL OR state = $2) \
                 ORDER BY id DESC LIMIT $3",
            )
            .bind(project)
            .bind(state.map(EventState::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    /// Puts a `failed` event back in line by hand: pending and due now, with one attempt left
    /// before the limit, so that a commit still missing fails it again at once (it does not hold
    /// its project's later events back for another round of back-off) while an outage keeps it
    /// pending as usual. [`StoreError::Conflict`] unless it is `failed`.
    pub async fn retry_event(&self, id: EventId) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE events SET state = 'pending', next_attempt_at = $2, \
                 attempts = CASE WHEN attempts >= $3 THEN $3 - 1 ELSE attempts END \
                 WHERE id = $1 AND state = 'failed'",
            )
            .bind(id.0)
            .bind(now_millis())
            .bind(MAX_EVENT_ATTEMPTS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                let state: Option<(String,)> =
                    sqlx::query_as("SELECT state FROM events WHERE id = $1")
                        .bind(id.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                return Err(match state {
                    None => not_found(id),
                    Some((s,)) => conflict(id, EventState::Failed, s),
                });
            }
        });
        Ok(())
    }

    /// Marks a pending event planned. Idempotent: an event already planned is left as it is.
    /// A `failed` event gives [`StoreError::Conflict`].
    pub async fn mark_event_planned(&self, id: EventId) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE events SET state = 'planned', next_attempt_at = $2 \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id.0)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                let state: Option<(String,)> =
                    sqlx::query_as("SELECT state FROM events WHERE id = $1")
                        .bind(id.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                match state {
                    None => return Err(not_found(id)),
                    Some((s,)) if s == EventState::Planned.as_str() => {}
                    Some((s,)) => return Err(conflict(id, EventState::Pending, s)),
                }
            }
        });
        Ok(())
    }

    /// Records a failed planning attempt: increments `attempts`, keeps `error`, and makes the
    /// event due again at `retry_at`. A [`Failure::Permanent`] attempt that is the
    /// [`MAX_EVENT_ATTEMPTS`]th makes the event `failed`; a [`Failure::Transient`] one never
    /// does. Returns the event's new state. Only a pending event can fail an attempt
    /// ([`StoreError::Conflict`] otherwise).
    pub async fn mark_event_failed_attempt(
        &self,
        id: EventId,
        error: &str,
        retry_at: UnixMillis,
        failure: Failure,
    ) -> Result<EventState, StoreError> {
        let limit = match failure {
            Failure::Permanent => MAX_EVENT_ATTEMPTS,
            Failure::Transient => i64::MAX,
        };
        let state = write_tx!(self, |tx| {
            let row: Option<(String,)> = sqlx::query_as(
                "UPDATE events SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, \
                 state = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END \
                 WHERE id = $1 AND state = 'pending' RETURNING state",
            )
            .bind(id.0)
            .bind(error)
            .bind(retry_at)
            .bind(limit)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some((s,)) => parse_word("event state", &s, EventState::parse)?,
                None => {
                    let state: Option<(String,)> =
                        sqlx::query_as("SELECT state FROM events WHERE id = $1")
                            .bind(id.0)
                            .fetch_optional(&mut *tx)
                            .await?;
                    return Err(match state {
                        None => not_found(id),
                        Some((s,)) => conflict(id, EventState::Pending, s),
                    });
                }
            }
        });
        Ok(state)
    }
}

fn not_found(id: EventId) -> StoreError {
    StoreError::NotFound {
        entity: "event",
        id: id.0.to_string(),
    }
}

fn conflict(id: EventId, expected: EventState, actual: String) -> StoreError {
    StoreError::Conflict {
        entity: "event",
        id: id.0.to_string(),
        expected: expected.as_str().to_string(),
        actual,
    }
}
