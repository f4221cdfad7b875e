//! Watch streams: newline-delimited `{"type", "object"}` events, as the API server sends them
//! for `?watch=true`.
//!
//! A watch starts, under the store's lock, with either the synthetic `ADDED` events of the
//! current objects (`resourceVersion` unset or `0`; with `sendInitialEvents=true` followed by the
//! `k8s.io/initial-events-end` bookmark) or the replay of every change after the requested
//! version; it then subscribes, in the same critical section, to live changes. A version older
//! than retained history gets a single `ERROR` event (a `410 Expired` Status) and the stream
//! ends. Selectors apply to transitions as on a real server: an object modified into the
//! selector arrives as `ADDED`, one modified out of it as `DELETED`. The stream ends cleanly
//! after `timeoutSeconds` and is cut off with an error (the connection is reset) when a test
//! drops watches.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::api_error::ApiError;
use super::selector::Selectors;
use super::store::{API_VERSION, Change, ChangeKind, KIND, Store, WatchMsg, metadata_mut};

/// How long a watch without `timeoutSeconds` stays open (the API server's minimum request timeout).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What a watch request asks for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// The namespace, or `None` for all namespaces.
    pub namespace: Option<String>,
    /// Label and field selectors.
    pub selectors: Selectors,
    /// `resourceVersion` (`None` when absent).
    pub resource_version: Option<String>,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
}

impl WatchRequest {
    fn event_for(&self, change: &Change) -> Option<Value> {
        if self
            .namespace
            .as_deref()
            .is_some_and(|ns| change.object["metadata"]["namespace"].as_str() != Some(ns))
        {
            return None;
        }
        let now = self.selectors.matches(&change.object);
        let before = change
            .prev
            .as_ref()
            .is_some_and(|p| self.selectors.matches(p));
        match (change.kind, before, now) {
            (ChangeKind::Added, _, true) | (ChangeKind::Modified, false, true) => {
                Some(event("ADDED", change.object.clone()))
            }
            (ChangeKind::Modified, true, true) => Some(event("MODIFIED", change.object.clone())),
            (ChangeKind::Deleted, true, _) => Some(event("DELETED", change.object.clone())),
            (ChangeKind::Modified, true, false) => {
                let mut last = change.prev.clone().unwrap_or_default();
                metadata_mut(&mut last)
                    .insert("resourceVersion".into(), change.rv.to_string().into());
                Some(event("DELETED", last))
            }
            _ => None,
        }
    }

    fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.selectors.matches(object)
    }
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// A `BOOKMARK` event at `rv`.
fn bookmark(rv: u64, initial_events_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event(
        "BOOKMARK",
        json!({"kind": KIND, "apiVersion": API_VERSION, "metadata": meta}),
    )
}

/// Starts a watch: the first events and, unless the version expired, a live subscription.
/// Runs under the store's lock.
pub fn start(
    store: &mut Store,
    req: &WatchRequest,
) -> Result<(Vec<Value>, Option<mpsc::UnboundedReceiver<WatchMsg>>), ApiError> {
    let since = req
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0" && !req.send_initial_events);
    let first: Vec<Value> = match since {
        None => {
            let mut first: Vec<Value> = store
                .all()
                .into_iter()
                .filter(|o| req.matches(o))
                .map(|o| event("ADDED", o))
                .collect();
            if req.send_initial_events {
                first.push(bookmark(store.resource_version(), true));
            }
            first
        }
        Some(rv) => {
            let rv: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{rv}\"")))?;
            match store.changes_since(rv) {
                Ok(changes) => changes.iter().filter_map(|c| req.event_for(c)).collect(),
                // An expired version is one ERROR event, then the end of the stream.
                Err(gone) => return Ok((vec![event("ERROR", gone.to_status())], None)),
            }
        }
    };
    Ok((first, Some(store.subscribe())))
}

/// The state of one open watch stream.
struct Stream {
    req: WatchRequest,
    pending: VecDeque<Value>,
    rx: Option<mpsc::UnboundedReceiver<WatchMsg>>,
    deadline: Instant,
    shared: Arc<Shared>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Close the subscription first so `open_watches` no longer counts it when woken.
        self.rx = None;
        self.shared.changed.notify_waiters();
    }
}

/// The response body of a watch.
pub fn body(
    shared: Arc<Shared>,
    req: WatchRequest,
    first: Vec<Value>,
    rx: Option<mpsc::UnboundedReceiver<WatchMsg>>,
) -> Body {
    let deadline = Instant::now() + req.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let stream = Stream {
        req,
        pending: first.into(),
        rx,
        deadline,
        shared,
    };
    Body::from_stream(futures_util::stream::unfold(stream, next_line))
}

/// The next line of a watch stream: a pending event, or one from the subscription.
async fn next_line(mut st: Stream) -> Option<(Result<Bytes, std::io::Error>, Stream)> {
    loop {
        if let Some(event) = st.pending.pop_front() {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            return Some((Ok(Bytes::from(line)), st));
        }
        let rx = st.rx.as_mut()?;
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            () = tokio::time::sleep_until(st.deadline) => None,
        };
        match msg {
            None => return None,
            Some(WatchMsg::Drop) => {
                st.rx = None;
                let reset = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "watch connection dropped by the test",
                );
                return Some((Err(reset), st));
            }
            Some(WatchMsg::Change(change)) => st.pending.extend(st.req.event_for(&change)),
            Some(WatchMsg::Bookmark(rv)) if st.req.bookmarks => {
                st.pending.push_back(bookmark(rv, false));
            }
            Some(WatchMsg::Bookmark(_)) => {}
        }
    }
}
