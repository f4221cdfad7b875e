//! Claims: which replica works on what, when several `ferry serve` processes share one
//! PostgreSQL database.
//!
//! Any replica accepts webhooks (deliveries are stored once per key), but three kinds of work
//! must be done by exactly one replica at a time:
//! - **planning** a project's events ([`ClaimKind::Plan`], item: the project), so that they stay
//!   strictly in order;
//! - **submitting** a queued run ([`ClaimKind::Submit`], item: the run id);
//! - **reporting** a run's outbox rows ([`ClaimKind::Report`], item: the run id) and sending a
//!   comment's answer ([`ClaimKind::Answer`], item: the answer id), so that no forge call is made
//!   twice.
//!
//! A claim is a row of `claims` naming the replica ([`Replica::id`]) and a lease end. It is taken
//! in one transaction that locks the row with `SELECT ... FOR UPDATE SKIP LOCKED`: two replicas
//! racing for one item never wait on each other, one wins and the other moves on. A claim whose
//! lease ran out (its replica died or stalled) is free for anyone; a replica renews the leases it
//! still works under ([`Store::renew_claim`], which fails once someone else took the item, so the
//! work can stop: the reporter renews before every forge call, which fences its sends) and
//! deletes the row when done ([`Store::release_claim`]).
//!
//! SQLite is one process: every claim is trivially its own, and none of this touches the
//! database (no extra commit, no extra fsync).

use std::time::Duration;

use sqlx::PgConnection;

use super::runs::{run_from_row, select_runs};
use super::states::RunState;
use super::{Pools, Run, RunId, Store, StoreError, UnixMillis, now_millis, with_pool};

/// The default lease of a claim.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// What a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// Planning a project's events (item: the project name).
    Plan,
    /// Submitting a queued run (item: the run id).
    Submit,
    /// Reporting a run to the forge (item: the run id).
    Report,
    /// Sending the answer to a comment command (item: the answer id).
    Answer,
}

impl ClaimKind {
    /// The word stored in `claims.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Plan => "plan",
            ClaimKind::Submit => "submit",
            ClaimKind::Report => "report",
            ClaimKind::Answer => "answer",
        }
    }
}

/// This process as a claimer: its id (unique among the live replicas) and how long its claims
/// last without renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    id: String,
    lease: Duration,
}

impl Default for Replica {
    /// `local` with the default lease (one process: the id only shows in the claims table).
    fn default() -> Replica {
        Replica::new("local", DEFAULT_LEASE)
    }
}

impl Replica {
    /// A replica named `id` whose claims last `lease`.
    pub fn new(id: impl Into<String>, lease: Duration) -> Replica {
        Replica {
            id: id.into(),
            lease,
        }
    }

    /// A fresh id: `host` (the machine or pod name) and the process id, with random bytes so
    /// that a restarted process never inherits the claims of its predecessor.
    pub fn generate_id(host: &str) -> String {
        let mut bytes = [0u8; 4];
        // Without randomness the pid and the time still tell processes apart.
        if getrandom::fill(&mut bytes).is_err() {
            bytes = (now_millis() as u32).to_le_bytes();
        }
        format!("{host}-{}-{}", std::process::id(), hex::encode(bytes))
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long its claims last without renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// When a claim taken or renewed now ends.
    fn until(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_add(i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2))
    }
}

/// Takes the claim on (`kind`, `item`) in the transaction `tx`: free, expired or already ours.
async fn claim_in(
    tx: &mut PgConnection,
    replica: &Replica,
    kind: ClaimKind,
    item: &str,
    now: UnixMillis,
) -> Result<bool, StoreError> {
    let fresh: Option<(String,)> = sqlx::query_as(
        "INSERT INTO claims (kind, item, claimed_by, claim_until) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, item) DO NOTHING RETURNING item",
    )
    .bind(kind.as_str())
    .bind(item)
    .bind(&replica.id)
    .bind(replica.until(now))
    .fetch_optional(&mut *tx)
    .await?;
    if fresh.is_some() {
        return Ok(true);
    }
    // Locked by a replica taking or releasing it right now: skip it rather than wait.
    let held: Option<(String, i64)> = sqlx::query_as(
        "SELECT claimed_by, claim_until FROM claims WHERE kind = $1 AND item = $2 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(kind.as_str())
    .bind(item)
    .fetch_optional(&mut *tx)
    .await?;
    match held {
        Some((by, until)) if by == replica.id || until <= now => {
            sqlx::query(
                "UPDATE claims SET claimed_by = $3, claim_until = $4 WHERE kind = $1 AND item = $2",
            )
            .bind(kind.as_str())
            .bind(item)
            .bind(&replica.id)
            .bind(replica.until(now))
            .execute(&mut *tx)
            .await?;
            Ok(true)
        }
        Some(_) | None => Ok(false),
    }
}

impl Store {
    /// Takes the claim on (`kind`, `item`) for `replica`: `true` when it is now ours (it was free,
    /// its lease had run out, or it was ours already; the lease starts again), `false` when
    /// another live replica holds it. SQLite: always `true`.
    pub async fn claim(
        &self,
        replica: &Replica,
        kind: ClaimKind,
        item: &str,
    ) -> Result<bool, StoreError> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(true);
        };
        let mut tx = pool.begin().await?;
        let won = claim_in(&mut tx, replica, kind, item, now_millis()).await?;
        tx.commit().await?;
        Ok(won)
    }

    /// Extends `replica`'s claim on (`kind`, `item`) by a whole lease: `false` when the claim is
    /// no longer ours (another replica took it after our lease ran out, or it was released), and
    /// the work under it must stop. SQLite: always `true`.
    pub async fn renew_claim(
        &self,
        replica: &Replica,
        kind: ClaimKind,
        item: &str,
    ) -> Result<bool, StoreError> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(true);
        };
        let done = sqlx::query(
            "UPDATE claims SET claim_until = $4 WHERE kind = $1 AND item = $2 AND claimed_by = $3",
        )
        .bind(kind.as_str())
        .bind(item)
        .bind(&replica.id)
        .bind(replica.until(now_millis()))
        .execute(pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Lets go of `replica`'s claim on (`kind`, `item`), if it still holds it.
    pub async fn release_claim(
        &self,
        replica: &Replica,
        kind: ClaimKind,
        item: &str,
    ) -> Result<(), StoreError> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(());
        };
        sqlx::query("DELETE FROM claims WHERE kind = $1 AND item = $2 AND claimed_by = $3")
            .bind(kind.as_str())
            .bind(item)
            .bind(&replica.id)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` queued runs, oldest first, each now claimed by `replica` for submission
    /// ([`ClaimKind::Submit`]); runs another live replica holds are left out. The caller releases
    /// each claim once the run left `queued` (or its attempt failed). SQLite: the oldest queued
    /// runs.
    pub async fn claim_queued_runs(
        &self,
        replica: &Replica,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let Pools::Postgres(pool) = &self.pools else {
            return self.runs_in_state(RunState::Queued, limit).await;
        };
        let now = now_millis();
        let rows = sqlx::query(select_runs!(
            "WHERE state = 'queued' AND NOT EXISTS (SELECT 1 FROM claims c \
             WHERE c.kind = 'submit' AND c.item = CAST(runs.id AS TEXT) \
             AND c.claimed_by <> $1 AND c.claim_until > $2) ORDER BY id LIMIT $3"
        ))
        .bind(&replica.id)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        let candidates = rows
            .iter()
            .map(run_from_row)
            .collect::<Result<Vec<Run>, StoreError>>()?;
        let mut tx = pool.begin().await?;
        let mut won = Vec::with_capacity(candidates.len());
        for run in candidates {
            let item = run.id.to_string();
            if !claim_in(&mut tx, replica, ClaimKind::Submit, &item, now).await? {
                continue;
            }
            // Another replica may have submitted it (and let go) since the read above: a
            // replica moves the run on before it releases the claim, so this sees it.
            let state: Option<(String,)> = sqlx::query_as("SELECT state FROM runs WHERE id = $1")
                .bind(run.id.get())
                .fetch_optional(&mut *tx)
                .await?;
            if state.is_some_and(|(s,)| s == RunState::Queued.as_str()) {
                won.push(run);
            } else {
                sqlx::query("DELETE FROM claims WHERE kind = 'submit' AND item = $1")
                    .bind(&item)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(won)
    }

    /// The ids of every run the executor is running (`submitted` or `running`), oldest first: a
    /// replica follows the runs other replicas submitted too.
    pub async fn started_run_ids(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id FROM runs WHERE state IN ('submitted', 'running') ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id,)| RunId::new(id).ok_or_else(|| StoreError::Corrupt(format!("run id {id}"))))
            .collect()
    }

    /// Deletes claims whose lease ran out more than a lease of `replica` ago: left behind by
    /// replicas that died, on items nobody wants any more (a run submitted before the crash was
    /// recorded). Lapsed claims are free anyway; this only keeps the table small. Returns how many
    /// were deleted.
    pub async fn drop_lapsed_claims(&self, replica: &Replica) -> Result<u64, StoreError> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(0);
        };
        let before = now_millis() - (replica.until(0));
        Ok(sqlx::query("DELETE FROM claims WHERE claim_until <= $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }

    /// Who holds the claim on (`kind`, `item`) and until when, if anyone (for tests and
    /// operators; lapsed claims are listed too).
    pub async fn claim_holder(
        &self,
        kind: ClaimKind,
        item: &str,
    ) -> Result<Option<(String, UnixMillis)>, StoreError> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(None);
        };
        Ok(sqlx::query_as(
            "SELECT claimed_by, claim_until FROM claims WHERE kind = $1 AND item = $2",
        )
        .bind(kind.as_str())
        .bind(item)
        .fetch_optional(pool)
        .await?)
    }
}
