//! The fake API server's storage: Workflow objects by namespace and name, one resourceVersion
//! counter for the whole fake, the retained history of changes (for watch replay, consistent
//! list pages and `410 Expired`), and the open watches that live changes are pushed to.
//!
//! Everything here is synchronous and runs under the one lock in `FakeKube`; a change is
//! committed, recorded and sent to every watch in one step, so a watch that subscribes under the
//! same lock as its snapshot misses nothing and sees nothing twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::api_error::ApiError;
use super::selector::Selectors;
use super::validate;
use crate::ArgoSchemas;

/// `argoproj.io/v1alpha1`.
pub const API_VERSION: &str = "argoproj.io/v1alpha1";
/// `Workflow`.
pub const KIND: &str = "Workflow";

/// An object's place: (namespace, name). Ordered as etcd orders keys, so list pages are stable.
pub type Key = (String, String);

/// What a change did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

/// One committed change, as kept in history and sent to watches.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion it was committed at.
    pub rv: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for `Deleted`, its last state with `rv` as resourceVersion).
    pub object: Value,
    /// The object before the change (`None` for `Added`).
    pub prev: Option<Value>,
}

/// What the store sends to an open watch.
#[derive(Debug, Clone)]
pub enum WatchMsg {
    /// A committed change.
    Change(Arc<Change>),
    /// A bookmark at this resourceVersion (sent only to watches that allow them).
    Bookmark(u64),
    /// The connection is dropped, as a network failure would.
    Drop,
}

/// Preconditions of a delete (`DeleteOptions.preconditions`) or a patch (`metadata.resourceVersion`).
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// The object's uid must be this.
    pub uid: Option<String>,
    /// The object's resourceVersion must be this.
    pub resource_version: Option<String>,
}

/// The state of the fake.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Versions at or above this can be replayed; below it answer `410 Expired`.
    compacted: u64,
    history_limit: Option<usize>,
    watches: Vec<mpsc::UnboundedSender<WatchMsg>>,
    serial: u64,
    schemas: Option<&'static ArgoSchemas>,
}

impl Store {
    /// An empty store; `history_limit` caps the changes kept for replay (`None`: all of them).
    pub fn new(schemas: Option<&'static ArgoSchemas>, history_limit: Option<usize>) -> Store {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1,
            history_limit,
            watches: Vec::new(),
            serial: 0,
            schemas,
        }
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Whether bodies are checked against Argo's schemas.
    pub fn schema_checked(&self) -> bool {
        self.schemas.is_some()
    }

    /// One object.
    pub fn get(&self, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))
    }

    /// Every object, in key order.
    pub fn all(&self) -> Vec<Value> {
        self.objects.values().cloned().collect()
    }

    /// Creates an object from a request body (checked like the API server does) and emits
    /// `ADDED`; with `dry_run` only checks it.
    pub fn create(&mut self, ns: &str, mut body: Value, dry_run: bool) -> Result<Value, ApiError> {
        validate::type_and_namespace(&body, ns)?;
        let name = self.name_for(ns, &body)?;
        let mut causes = validate::name(&name);
        causes.extend(validate::labels(&body));
        causes.extend(validate::schema(self.schemas, &body));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&name, causes));
        }
        if self.objects.contains_key(&key(ns, &name)) {
            return Err(ApiError::already_exists(&name));
        }
        self.serial += 1;
        let meta = metadata_mut(&mut body);
        meta.insert("name".into(), name.clone().into());
        meta.insert("namespace".into(), ns.into());
        meta.insert("uid".into(), uid(self.serial).into());
        meta.insert("creationTimestamp".into(), now().into());
        meta.insert("generation".into(), 1.into());
        meta.remove("deletionTimestamp");
        if dry_run {
            return Ok(body);
        }
        Ok(self.commit(ChangeKind::Added, key(ns, &name), body, None))
    }

    /// The name of a new object: `metadata.name`, or `metadata.generateName` plus five
    /// characters (never one in use).
    fn name_for(&mut self, ns: &str, body: &Value) -> Result<String, ApiError> {
        let meta = &body["metadata"];
        if let Some(name) = meta["name"].as_str().filter(|n| !n.is_empty()) {
            return Ok(name.to_owned());
        }
        let Some(prefix) = meta["generateName"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::invalid(
                "",
                vec![validate::Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        };
        loop {
            self.serial += 1;
            let name = format!("{prefix}{}", suffix(self.serial));
            if !self.objects.contains_key(&key(ns, &name)) {
                return Ok(name);
            }
        }
    }

    /// Applies a JSON merge patch (RFC 7386) and emits `MODIFIED` when anything changed.
    pub fn merge_patch(&mut self, ns: &str, name: &str, patch: &Value) -> Result<Value, ApiError> {
        let current = self.get(ns, name)?;
        let wanted = Preconditions {
            resource_version: patch["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
            uid: patch["metadata"]["uid"].as_str().map(str::to_owned),
        };
        check_preconditions(&current, &wanted, name)?;
        let mut next = current.clone();
        merge(&mut next, patch);
        if next["metadata"]["name"] != current["metadata"]["name"] {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                next["metadata"]["name"]
            )));
        }
        validate::type_and_namespace(&next, ns)?;
        let mut causes = validate::labels(&next);
        causes.extend(validate::schema(self.schemas, &next));
        if !causes.is_empty() {
            return Err(ApiError::invalid(name, causes));
        }
        self.update(ns, name, next)
    }

    /// Replaces an object with `next` (its name, namespace and server-owned metadata kept),
    /// emits `MODIFIED` unless nothing changed, or `DELETED` when it removed the last
    /// finalizer of an object being deleted.
    pub fn update(&mut self, ns: &str, name: &str, mut next: Value) -> Result<Value, ApiError> {
        let current = self.get(ns, name)?;
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
        ] {
            match current["metadata"].get(field) {
                Some(v) => metadata_mut(&mut next).insert(field.into(), v.clone()),
                None => metadata_mut(&mut next).remove(field),
            };
        }
        if next == current {
            return Ok(current);
        }
        if without_metadata(&next) != without_metadata(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            metadata_mut(&mut next).insert("generation".into(), generation.into());
        }
        // An update that removes the last finalizer of an object being deleted deletes it.
        let gone = next["metadata"].get("deletionTimestamp").is_some() && finalizers_empty(&next);
        let kind = if gone {
            ChangeKind::Deleted
        } else {
            ChangeKind::Modified
        };
        Ok(self.commit(kind, key(ns, name), next, Some(current)))
    }

    /// Deletes an object: at once when it has no finalizers (answering a `Success` Status, as
    /// for custom resources), else by setting `deletionTimestamp` (answering the object).
    pub fn delete(&mut self, ns: &str, name: &str, pre: &Preconditions) -> Result<Value, ApiError> {
        let current = self.get(ns, name)?;
        check_preconditions(&current, pre, name)?;
        if finalizers_empty(&current) {
            self.remove(ns, name)?;
            return Ok(ApiError::deleted_status(name, &current["metadata"]["uid"]));
        }
        if current["metadata"].get("deletionTimestamp").is_some() {
            return Ok(current);
        }
        let mut next = current.clone();
        metadata_mut(&mut next).insert("deletionTimestamp".into(), now().into());
        Ok(self.commit(ChangeKind::Modified, key(ns, name), next, Some(current)))
    }

    /// Removes an object at once, ignoring finalizers, and emits `DELETED`; returns its last state.
    pub fn remove(&mut self, ns: &str, name: &str) -> Result<Value, ApiError> {
        let current = self.get(ns, name)?;
        Ok(self.commit(
            ChangeKind::Deleted,
            key(ns, name),
            current.clone(),
            Some(current),
        ))
    }

    /// Commits one change at the next resourceVersion: stores it, records it, sends it.
    fn commit(
        &mut self,
        kind: ChangeKind,
        key: Key,
        mut object: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), self.rv.to_string().into());
        match kind {
            ChangeKind::Deleted => self.objects.remove(&key),
            ChangeKind::Added | ChangeKind::Modified => self.objects.insert(key, object.clone()),
        };
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            object: object.clone(),
            prev,
        });
        self.history.push_back(Arc::clone(&change));
        if let Some(limit) = self.history_limit {
            while self.history.len() > limit {
                if let Some(dropped) = self.history.pop_front() {
                    self.compacted = dropped.rv;
                }
            }
        }
        self.send(&WatchMsg::Change(change));
        object
    }

    /// Forgets all history: any version older than the current one now answers `410 Expired`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Drops every watch and moves past retained history in one step, as etcd compaction
    /// while clients are disconnected: every re-watch from a version they had gets `410`.
    pub fn expire(&mut self) {
        self.drop_watches();
        self.rv += 1;
        self.compact();
    }

    /// `410 Expired` when changes after `rv` are no longer all retained.
    fn retained_since(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted
            )));
        }
        Ok(())
    }

    /// The objects as they were at `rv` (rebuilt from history), or `410 Expired`.
    pub fn snapshot_at(&self, rv: u64) -> Result<BTreeMap<Key, Value>, ApiError> {
        self.retained_since(rv)?;
        let mut objects = self.objects.clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            let key = key_of(&change.object);
            match (&change.kind, &change.prev) {
                (ChangeKind::Added, _) | (_, None) => objects.remove(&key),
                (ChangeKind::Modified | ChangeKind::Deleted, Some(prev)) => {
                    objects.insert(key, prev.clone())
                }
            };
        }
        Ok(objects)
    }

    /// One page of a list: objects in `ns` (all namespaces for `None`) matching `sel`, at `rv`
    /// (the latest for `None`), after key `start`, at most `limit`; plus whether more remain and
    /// how many.
    pub fn page(
        &self,
        ns: Option<&str>,
        sel: &Selectors,
        at: Option<u64>,
        start: Option<&Key>,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let snapshot;
        let objects = match at {
            Some(rv) if rv != self.rv => {
                snapshot = self.snapshot_at(rv)?;
                &snapshot
            }
            _ => &self.objects,
        };
        let mut matching = objects
            .iter()
            .filter(|(k, _)| start.is_none_or(|s| *k > s))
            .filter(|(k, _)| ns.is_none_or(|ns| k.0 == ns))
            .filter(|(_, o)| sel.matches(o));
        let limit = limit.unwrap_or(usize::MAX);
        let items: Vec<Value> = matching
            .by_ref()
            .take(limit)
            .map(|(_, o)| o.clone())
            .collect();
        let remaining = matching.count();
        Ok(Page {
            rv: at.unwrap_or(self.rv),
            last: items.last().map(key_of),
            items,
            remaining,
        })
    }

    /// Registers a watch; every later change and bookmark is sent to it.
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<WatchMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watches.push(tx);
        rx
    }

    /// Changes after `rv`, oldest first, or `410 Expired` when history no longer holds them all.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        self.retained_since(rv)?;
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Sends a bookmark at the current version to every open watch.
    pub fn bookmark(&mut self) {
        self.send(&WatchMsg::Bookmark(self.rv));
    }

    /// Drops every open watch connection.
    pub fn drop_watches(&mut self) {
        self.send(&WatchMsg::Drop);
        self.watches.clear();
    }

    /// How many watches are open.
    pub fn open_watches(&mut self) -> usize {
        self.watches.retain(|tx| !tx.is_closed());
        self.watches.len()
    }

    fn send(&mut self, msg: &WatchMsg) {
        self.watches.retain(|tx| tx.send(msg.clone()).is_ok());
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    /// The version the page was read at.
    pub rv: u64,
    /// Its objects.
    pub items: Vec<Value>,
    /// The key of the last one, to continue after.
    pub last: Option<Key>,
    /// How many matching objects follow.
    pub remaining: usize,
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

/// The key of a stored object.
pub fn key_of(object: &Value) -> Key {
    let meta = &object["metadata"];
    key(
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default(),
    )
}

/// `metadata` as a mutable map, created (replacing a non-object) when needed.
pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn without_metadata(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Value::Object(map) = &mut copy {
        map.remove("metadata");
    }
    copy
}

fn finalizers_empty(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty)
}

fn check_preconditions(current: &Value, pre: &Preconditions, name: &str) -> Result<(), ApiError> {
    let meta = &current["metadata"];
    if let Some(uid) = &pre.uid
        && meta["uid"].as_str() != Some(uid)
    {
        return Err(ApiError::conflict(
            name,
            format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = &pre.resource_version
        && meta["resourceVersion"].as_str() != Some(rv)
    {
        return Err(ApiError::conflict(
            name,
            format!(
                "Operation cannot be fulfilled on workflows.argoproj.io \"{name}\": the object has \
                 been modified; please apply your changes to the latest version and try again"
            ),
        ));
    }
    Ok(())
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A uid in the UUID format, unique within the process.
fn uid(serial: u64) -> String {
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| u64::from(std::process::id()));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        process & 0xffff_ffff,
        (serial >> 48) & 0xffff,
        (serial >> 36) & 0xfff,
        (serial >> 24) & 0xfff,
        serial & 0xff_ffff_ffff
    )
}

/// Five characters from the API server's `generateName` alphabet.
fn suffix(serial: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = serial.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize];
            x /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}
