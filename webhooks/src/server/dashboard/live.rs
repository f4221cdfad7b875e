//! Live updates: `GET /events`, a stream of server-sent events that says when runs changed.
//!
//! **Where changes come from.** Every run or step state change writes an outbox row in its own
//! transaction, so [`Store::change_mark`] (the newest outbox id, plus a count that catches late
//! commits) moves with every change, made by this process or another replica. One poller per
//! server reads it every [`POLL`] while at least one browser listens, and shares it through a
//! `watch` channel; each `/events` stream sends `event: change` with the mark whenever it moves.
//! [`Store::outbox_notify`] is not used: it holds a single permit that belongs to the reporter (a
//! second waiter would take wakes from it), and it never sees other replicas' changes.
//!
//! **What the browser does.** Each page carries the mark it was made at (`data-mark`); when an
//! event brings another mark, the script fetches the page again and swaps its `#live` part. When
//! `EventSource` is missing or the stream fails for good, it polls the page every 2 s instead.
//!
//! **Shutdown.** A stream is a response that never ends by itself, and a graceful shutdown waits
//! for responses; [`Live::close`] (called when shutdown starts) ends every stream.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use ferry_engine::store::{ChangeMark, Store};
use futures_util::stream::{self, Stream};
use tokio::sync::watch;

/// How often the poller reads the change mark while someone listens.
pub const POLL: Duration = Duration::from_secs(1);
/// What the browser waits before reconnecting a dropped stream.
const RETRY: Duration = Duration::from_secs(2);

/// The live-update feed shared by every `/events` stream. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    /// The latest mark read (`None` before the first read).
    marks: watch::Sender<Option<ChangeMark>>,
    /// Whether the poller runs; held while subscribing so that it never stops under a new
    /// subscriber.
    polling: Mutex<bool>,
    /// Set when the server shuts down.
    closing: watch::Sender<bool>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            inner: Arc::new(Inner {
                marks: watch::Sender::new(None),
                polling: Mutex::new(false),
                closing: watch::Sender::new(false),
            }),
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("mark", &*self.inner.marks.borrow())
            .field("listeners", &self.inner.marks.receiver_count())
            .finish()
    }
}

impl Live {
    /// Ends every open stream, now and for streams opened later (call it when shutdown starts).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// A receiver of marks; starts the poller if it is not running.
    fn subscribe(&self, store: &Store) -> watch::Receiver<Option<ChangeMark>> {
        let mut polling = self.inner.polling.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.inner.marks.subscribe();
        if !*polling {
            *polling = true;
            tokio::spawn(poll(Arc::clone(&self.inner), store.clone()));
        }
        rx
    }

    /// The `/events` response: the current mark first, then each new one, until shutdown.
    pub fn events(
        &self,
        store: &Store,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let marks = self.subscribe(store);
        let closing = self.inner.closing.subscribe();
        let events = stream::unfold(
            (marks, closing, true),
            |(mut marks, mut closing, first)| async move {
                let next = async {
                    if first {
                        marks.wait_for(Option::is_some).await.ok()?;
                    } else {
                        marks.changed().await.ok()?;
                    }
                    let mark = (*marks.borrow_and_update())?;
                    Some(mark)
                };
                let mark = tokio::select! {
                    mark = next => mark?,
                    _ = closing.wait_for(|c| *c) => return None,
                };
                let mut event = Event::default().event("change").data(mark.to_string());
                if first {
                    event = event.retry(RETRY);
                }
                Some((Ok(event), (marks, closing, false)))
            },
        );
        Sse::new(events).keep_alive(KeepAlive::default())
    }
}

/// Reads the mark every [`POLL`] while anyone listens (and the server is not closing).
async fn poll(inner: Arc<Inner>, store: Store) {
    let mut closing = inner.closing.subscribe();
    let mut failing = false;
    loop {
        {
            let mut polling = inner.polling.lock().unwrap_or_else(|e| e.into_inner());
            if inner.marks.receiver_count() == 0 || *closing.borrow() {
                *polling = false;
                return;
            }
        }
        match store.change_mark().await {
            Ok(mark) => {
                failing = false;
                inner.marks.send_if_modified(|current| {
                    let changed = *current != Some(mark);
                    *current = Some(mark);
                    changed
                });
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "dashboard: cannot read the change mark; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = closing.wait_for(|c| *c) => {}
        }
    }
}
