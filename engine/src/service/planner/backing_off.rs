//! The planner's memory of which projects are backing off, so that a burst of deliveries does not
//! cost a store query per wake.
//!
//! Events are planned strictly in order per project, and only a planning attempt (at or after
//! its `next_attempt_at`) changes a project's oldest pending event. So once a planner has seen
//! that oldest event backing off until `T`, the project has nothing to plan before `T`, however
//! many deliveries arrive behind it: the wakes until then need not ask the store.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::store::UnixMillis;

/// Per project, until when its oldest pending event is known to be backing off.
#[derive(Debug, Default)]
pub(super) struct BackingOff(Mutex<HashMap<String, UnixMillis>>);

impl BackingOff {
    /// When `project`'s oldest pending event falls due, if it is known to be later than `now`.
    pub(super) fn until(&self, project: &str, now: UnixMillis) -> Option<UnixMillis> {
        let known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(project).copied().filter(|at| *at > now)
    }

    /// Records what the store said: `project`'s oldest pending event is due at `due` (`None`:
    /// it has none). Only a time after `now` is remembered.
    pub(super) fn note(&self, project: &str, due: Option<UnixMillis>, now: UnixMillis) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match due {
            Some(at) if at > now => {
                known.insert(project.to_owned(), at);
            }
            _ => {
                known.remove(project);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_a_due_time_in_the_future() {
        let b = BackingOff::default();
        b.note("p", Some(2_000), 1_000);
        assert_eq!(b.until("p", 1_500), Some(2_000));
        assert_eq!(b.until("p", 2_000), None, "due now: ask the store");
        assert_eq!(b.until("q", 1_500), None);
        b.note("p", Some(900), 1_000);
        assert_eq!(b.until("p", 0), None, "a due event replaces what was known");
        b.note("p", Some(5_000), 1_000);
        b.note("p", None, 1_000);
        assert_eq!(b.until("p", 0), None);
    }
}
