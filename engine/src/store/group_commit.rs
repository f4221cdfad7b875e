//! SQLite group commit of deliveries: many concurrent [`Store::insert_event`] calls, one
//! transaction and one fsync.
//!
//! Every delivery queues itself and waits for its answer. One writer task at a time (spawned by
//! the delivery that finds none running) takes the write lock, takes *everything* queued, stores
//! it with ONE statement in one transaction (`synchronous=FULL`: one fsync), answers each caller,
//! and repeats until the queue is empty. Nothing is answered before its commit; a failed commit
//! fails every delivery in it, and the forges redeliver.
//!
//! Why it looks like this (intake throughput, `docs/PERFORMANCE.md`): each statement sqlx sends to
//! a SQLite connection is a round trip to that connection's thread, so the cost per delivery is
//! the number of hand-offs, not SQLite's work. The batch is therefore one `INSERT ... SELECT FROM
//! json_each($1)` with a fixed text (prepared once, whatever the batch size), the writer keeps its
//! pooled connection while there is work (no acquire and release per batch), and the callers wait
//! on their answer only, not on the write lock.
//!
//! [`Store::insert_event`]: super::Store::insert_event

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Sqlite, SqlitePool};
use tokio::sync::oneshot;

use crate::event::ForgeKind;

use super::events::Inserted;
use super::{EventId, StoreError, UnixMillis};

/// One delivery to store.
#[derive(Debug, Serialize)]
pub(crate) struct EventRow {
    pub(crate) project: String,
    #[serde(serialize_with = "forge_word")]
    pub(crate) forge: ForgeKind,
    pub(crate) key: String,
    pub(crate) json: String,
    pub(crate) now: UnixMillis,
}

fn forge_word<S: serde::Serializer>(forge: &ForgeKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(forge.as_str())
}

/// Stores the rows of the JSON array `$1` (objects with the fields of [`EventRow`]) in array
/// order, skipping keys already stored (also repeats within the array), and returns the new rows'
/// ids. `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
const INSERT_BATCH: &str = "INSERT INTO events (project, forge, delivery_key, event_json, \
     received_at, state, attempts, next_attempt_at) \
     SELECT r.value ->> 'project', r.value ->> 'forge', r.value ->> 'key', r.value ->> 'json', \
     r.value ->> 'now', 'pending', 0, r.value ->> 'now' FROM json_each($1) AS r \
     WHERE true ORDER BY r.key \
     ON CONFLICT (delivery_key) DO NOTHING RETURNING id, delivery_key";

/// The ids of the keys in the JSON array `$1` (for deliveries that were already stored).
const EXISTING_IDS: &str =
    "SELECT id, delivery_key FROM events WHERE delivery_key IN (SELECT value FROM json_each($1))";

/// A delivery waiting for the next group commit, with where to send its result.
#[derive(Debug)]
struct PendingInsert {
    row: EventRow,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<PendingInsert>,
    /// A writer task is running; it takes everything queued before it stops.
    writing: bool,
}

/// The deliveries waiting to be stored (shared by every clone of one SQLite [`super::Store`]).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
}

impl GroupCommit {
    /// Nothing panics while holding the lock, so a poisoned queue is still consistent.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `row` and waits until the group commit holding it is done.
    pub(crate) async fn insert(
        self: &Arc<Self>,
        pool: &SqlitePool,
        write: &Arc<tokio::sync::Mutex<()>>,
        row: EventRow,
    ) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start_writer = {
            let mut queue = self.lock();
            queue.pending.push(PendingInsert { row, reply });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            // A task of its own: a caller that goes away (its client hung up) must not take the
            // batch it was committing with it.
            // The guard is made here, not in the task: a task dropped before it first runs (the
            // runtime shutting down) still fails what is queued instead of leaving it waiting.
            let guard = WriterGone {
                commits: Arc::clone(self),
                finished: false,
            };
            tokio::spawn(write_batches(guard, pool.clone(), Arc::clone(write)));
        }
        answer
            .await
            .map_err(|_| StoreError::GroupCommit("the writer stopped before answering".into()))?
    }

    /// Everything queued, or `None` (and the writer is done) when nothing is.
    fn take_batch(&self) -> Option<Vec<PendingInsert>> {
        let mut queue = self.lock();
        if queue.pending.is_empty() {
            queue.writing = false;
            None
        } else {
            Some(std::mem::take(&mut queue.pending))
        }
    }
}

/// Clears `writing` and fails what is queued if the writer ends early (a panic, or the runtime
/// shutting down), so no later delivery waits for a writer that is gone.
///
/// It is disarmed once [`GroupCommit::take_batch`] has found the queue empty and handed
/// `writing` back: from then on `writing` and the queue belong to the next writer (a delivery
/// may already have queued itself and started one), and this guard must not touch them.
struct WriterGone {
    commits: Arc<GroupCommit>,
    finished: bool,
}

impl Drop for WriterGone {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self.commits.lock();
        if queue.writing {
            queue.writing = false;
            fail(
                std::mem::take(&mut queue.pending),
                "the writer stopped".into(),
            );
        }
    }
}

/// The writer: commits batches while deliveries are queued, under the store's write lock (which
/// serialises it with every other write of this process), on one pooled connection.
async fn write_batches(mut gone: WriterGone, pool: SqlitePool, write: Arc<tokio::sync::Mutex<()>>) {
    let commits = Arc::clone(&gone.commits);
    let mut conn: Option<PoolConnection<Sqlite>> = None;
    loop {
        let _write = write.lock().await;
        let Some(batch) = commits.take_batch() else {
            gone.finished = true;
            return;
        };
        let c = match &mut conn {
            Some(c) => c,
            None => match pool.acquire().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    fail(batch, e.to_string());
                    continue;
                }
            },
        };
        let rows: Vec<&EventRow> = batch.iter().map(|p| &p.row).collect();
        match store_batch(c, &rows).await {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(Ok(r));
                }
            }
            Err(e) => {
                // A fresh connection for the next batch, in case this one is what failed.
                conn = None;
                fail(batch, e.to_string());
            }
        }
    }
}

fn fail(batch: Vec<PendingInsert>, message: String) {
    for p in batch {
        let _ = p.reply.send(Err(StoreError::GroupCommit(message.clone())));
    }
}

/// Stores `rows` in one transaction and says, for each in order, whether it is new. Of several
/// rows with one key, the first is new (unless the key was stored before) and the rest are
/// duplicates with its id.
async fn store_batch(
    conn: &mut PoolConnection<Sqlite>,
    rows: &[&EventRow],
) -> Result<Vec<Inserted>, StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let new: Vec<(i64, String)> = sqlx::query_as(INSERT_BATCH)
        .bind(serde_json::to_string(rows)?)
        .fetch_all(&mut *tx)
        .await?;
    let mut new: HashMap<String, i64> = new.into_iter().map(|(id, key)| (key, id)).collect();
    let mut existing = HashMap::new();
    if new.len() < rows.len() {
        let keys: Vec<&str> = rows
            .iter()
            .map(|r| r.key.as_str())
            .filter(|k| !new.contains_key(*k))
            .collect();
        let found: Vec<(i64, String)> = sqlx::query_as(EXISTING_IDS)
            .bind(serde_json::to_string(&keys)?)
            .fetch_all(&mut *tx)
            .await?;
        existing.extend(found.into_iter().map(|(id, key)| (key, id)));
    }
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            if let Some(id) = new.remove(&r.key) {
                existing.insert(r.key.clone(), id);
                return Ok(Inserted::New(EventId(id)));
            }
            existing
                .get(&r.key)
                .map(|id| Inserted::Duplicate(EventId(*id)))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery key {:?} neither new nor stored", r.key))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{backends, push_event};
    use crate::store::{Backend, Pools};

    fn row(key: &str, message: &str) -> EventRow {
        let mut event = push_event(&"d".repeat(40));
        if let crate::event::EventKind::BranchPush(push) = &mut event.kind {
            push.head_message = Some(message.to_owned());
        }
        EventRow {
            project: "resnet".into(),
            forge: ForgeKind::Gitlab,
            key: key.into(),
            json: serde_json::to_string(&event).expect("json"),
            now: 1_000,
        }
    }

    /// Queues one delivery as `insert` does and returns where its answer arrives.
    fn queued(commits: &GroupCommit) -> oneshot::Receiver<Result<Inserted, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let mut queue = commits.lock();
        queue.pending.push(PendingInsert {
            row: row("k", "m"),
            reply,
        });
        queue.writing = true;
        answer
    }

    #[test]
    fn a_writer_dropped_before_it_ran_fails_what_is_queued() {
        let commits = Arc::new(GroupCommit::default());
        let mut answer = queued(&commits);
        drop(WriterGone {
            commits: Arc::clone(&commits),
            finished: false,
        });
        let got = answer.try_recv().expect("answered");
        assert!(
            matches!(&got, Err(StoreError::GroupCommit(m)) if m == "the writer stopped"),
            "{got:?}"
        );
        assert!(!commits.lock().writing, "the next delivery starts a writer");
    }

    #[test]
    fn a_finished_writer_leaves_the_next_writers_queue_alone() {
        let commits = Arc::new(GroupCommit::default());
        // The old writer found the queue empty (`take_batch` gave `writing` back) ...
        commits.lock().writing = true;
        assert!(commits.take_batch().is_none());
        // ... then a delivery queued itself and started the next writer, before the old one's
        // guard was dropped.
        let mut answer = queued(&commits);
        drop(WriterGone {
            commits: Arc::clone(&commits),
            finished: true,
        });
        assert!(
            answer.try_recv().is_err(),
            "still waiting for its own writer"
        );
        assert!(commits.lock().writing);
        assert_eq!(commits.lock().pending.len(), 1);
    }

    #[tokio::test]
    async fn a_batch_is_stored_in_order_exactly_once_per_key_and_byte_for_byte() {
        for db in backends("group_commit_batch").await {
            let Pools::Sqlite { pool, .. } = &db.store.pools else {
                assert_eq!(db.backend, Backend::Postgres);
                db.finish().await;
                continue;
            };
            let mut conn = pool.acquire().await.expect("connection");
            let odd = "quotes \" back\\slash\nnew line \u{1} tab\t ünïcödé 🚂 \u{2028}";
            let before = [row("k0", "stored before")];
            let before: Vec<&EventRow> = before.iter().collect();
            let first = store_batch(&mut conn, &before).await.expect("first batch");
            let rows = [
                row("k1", odd),
                row("k0", "again"),
                row("k2", "b"),
                row("k1", odd),
            ];
            let refs: Vec<&EventRow> = rows.iter().collect();
            let got = store_batch(&mut conn, &refs).await.expect("batch");
            let (Inserted::New(k1), Inserted::New(k2)) = (got[0], got[2]) else {
                panic!("k1 and k2 are new: {got:?}");
            };
            assert!(k1 < k2, "ids follow the order of the batch: {got:?}");
            assert_eq!(got[1], Inserted::Duplicate(first[0].id()), "stored before");
            assert_eq!(got[3], Inserted::Duplicate(k1), "a repeat within the batch");
            drop(conn);
            let stored = db
                .store
                .event_by_key("k1")
                .await
                .expect("read")
                .expect("k1");
            assert_eq!(
                serde_json::to_string(&stored.event).expect("json"),
                rows[0].json
            );
            assert_eq!((stored.received_at, stored.next_attempt_at), (1_000, 1_000));
            assert_eq!(stored.forge, ForgeKind::Gitlab);
            assert_eq!(db.store.event_count().await.expect("count"), 3);
            db.finish().await;
        }
    }

    /// One delivery at a time: each finds the previous writer finishing (or finished) and starts
    /// its own. The finishing writer must leave the new writer's queue alone (CI once saw "the
    /// writer stopped" here, when the old writer's guard failed the next delivery).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn back_to_back_deliveries_never_meet_a_stopping_writer() {
        for db in backends("group_commit_back_to_back").await {
            if db.backend != Backend::Sqlite {
                db.finish().await;
                continue;
            }
            let event = push_event(&"e".repeat(40));
            for k in 0..2_000 {
                let got = db
                    .store
                    .insert_event("resnet", ForgeKind::Gitlab, &format!("seq-{k}"), &event)
                    .await
                    .unwrap_or_else(|e| panic!("delivery {k}: {e}"));
                assert!(matches!(got, Inserted::New(_)), "delivery {k}: {got:?}");
            }
            assert_eq!(db.store.event_count().await.expect("count"), 2_000);
            db.finish().await;
        }
    }
}
