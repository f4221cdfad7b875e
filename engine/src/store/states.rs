//! The state machines of runs, steps and stored events.
//!
//! The words are the ones DESIGN.md fixes for the API and the dashboard, and the ones stored in the
//! database. Each transition table is an exhaustive `match` (no catch-all arm), so adding a state
//! forces a decision about every edge. The store checks [`RunState::can_go_to`] and
//! [`StepState::can_go_to`] *before* writing anything: an illegal transition is rejected, never
//! written. Their serde form (for the API) is the same word as [`RunState::as_str`].

use std::fmt;

/// The state of a run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, not yet submitted.
    Queued,
    /// Held back by quota or by a missing approval (`/ferry ok-to-test`).
    Waiting,
    /// Handed to the executor (an Argo Workflow exists, or local processes were started).
    Submitted,
    /// The executor reports it running.
    Running,
    /// Finished successfully (terminal).
    Succeeded,
    /// Finished with a failure, or never started because the pipeline is invalid (terminal).
    Failed,
    /// Cancelled by a user or superseded by a newer run (terminal).
    Cancelled,
}

impl RunState {
    /// Every run state, in lifecycle order.
    pub const ALL: [RunState; 7] = [
        RunState::Queued,
        RunState::Waiting,
        RunState::Submitted,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The word used in the database, the API and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Waiting => "waiting",
            RunState::Submitted => "submitted",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Parses the word written by [`RunState::as_str`].
    pub fn parse(word: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|s| s.as_str() == word)
    }

    /// Whether the run is finished (no transition leaves this state).
    pub fn is_terminal(self) -> bool {
        match self {
            RunState::Queued | RunState::Waiting | RunState::Submitted | RunState::Running => false,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled => true,
        }
    }

    /// Whether a run may move from `self` to `to`.
    ///
    /// queued -> waiting, submitted, failed, cancelled; waiting -> queued, submitted, cancelled,
    /// failed; submitted -> running, succeeded, failed, cancelled; running -> succeeded, failed,
    /// cancelled; terminal states go nowhere. A state never moves to itself.
    pub fn can_go_to(self, to: RunState) -> bool {
        use RunState::*;
        match self {
            Queued => match to {
                Waiting | Submitted | Failed | Cancelled => true,
                Queued | Running | Succeeded => false,
            },
            Waiting => match to {
                Queued | Submitted | Cancelled | Failed => true,
                Waiting | Running | Succeeded => false,
            },
            Submitted => match to {
                Running | Succeeded | Failed | Cancelled => true,
                Queued | Waiting | Submitted => false,
            },
            Running => match to {
                Succeeded | Failed | Cancelled => true,
                Queued | Waiting | Submitted | Running => false,
            },
            Succeeded | Failed | Cancelled => false,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one step of a run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started (an attempt is in progress).
    Running,
    /// Finished successfully (terminal).
    Succeeded,
    /// Finished with a failure, after its last attempt (terminal).
    Failed,
    /// Not run, because of a condition or an earlier failure (terminal).
    Skipped,
    /// Cancelled with its run (terminal).
    Cancelled,
}

impl StepState {
    /// Every step state, in lifecycle order.
    pub const ALL: [StepState; 6] = [
        StepState::Pending,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Skipped,
        StepState::Cancelled,
    ];

    /// The word used in the database, the API and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    /// Parses the word written by [`StepState::as_str`].
    pub fn parse(word: &str) -> Option<StepState> {
        StepState::ALL.into_iter().find(|s| s.as_str() == word)
    }

    /// Whether the step is finished (no transition leaves this state).
    pub fn is_terminal(self) -> bool {
        match self {
            StepState::Pending | StepState::Running => false,
            StepState::Succeeded
            | StepState::Failed
            | StepState::Skipped
            | StepState::Cancelled => true,
        }
    }

    /// Whether a step may move from `self` to `to`.
    ///
    /// pending -> running, skipped, cancelled, failed; running -> succeeded, failed, cancelled,
    /// and running -> running: a **retry attempt**. Executors retry a failed attempt (Argo
    /// `retryStrategy`) without the step ever being failed as a whole, so a new attempt is the
    /// edge running -> running, which increments the step's `attempts`; `failed` is written only
    /// once the last attempt failed, and stays terminal. Terminal states go nowhere.
    pub fn can_go_to(self, to: StepState) -> bool {
        use StepState::*;
        match self {
            Pending => match to {
                Running | Skipped | Cancelled | Failed => true,
                Pending | Succeeded => false,
            },
            Running => match to {
                Running | Succeeded | Failed | Cancelled => true,
                Pending | Skipped => false,
            },
            Succeeded | Failed | Skipped | Cancelled => false,
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a stored delivery (event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventState {
    /// Stored, not yet planned (possibly after failed attempts, waiting for a retry).
    Pending,
    /// Planned: its runs (if any) exist.
    Planned,
    /// Planning failed too many times; kept for inspection, not retried.
    Failed,
}

impl EventState {
    /// The word used in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Planned => "planned",
            EventState::Failed => "failed",
        }
    }

    /// Parses the word written by [`EventState::as_str`].
    pub fn parse(word: &str) -> Option<EventState> {
        [EventState::Pending, EventState::Planned, EventState::Failed]
            .into_iter()
            .find(|s| s.as_str() == word)
    }
}

impl fmt::Display for EventState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_words_round_trip() {
        let words: Vec<_> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "queued",
                "waiting",
                "submitted",
                "running",
                "succeeded",
                "failed",
                "cancelled"
            ]
        );
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunState::parse("Queued"), None);
        assert_eq!(RunState::parse("done"), None);
    }

    #[test]
    fn serde_words_are_the_stored_words() {
        for s in RunState::ALL {
            let json = serde_json::to_value(s).expect("serialize");
            assert_eq!(json, serde_json::json!(s.as_str()));
            assert_eq!(serde_json::from_value::<RunState>(json).expect("back"), s);
        }
        for s in StepState::ALL {
            let json = serde_json::to_value(s).expect("serialize");
            assert_eq!(json, serde_json::json!(s.as_str()));
        }
    }

    #[test]
    fn step_words_round_trip() {
        let words: Vec<_> = StepState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "pending",
                "running",
                "succeeded",
                "failed",
                "skipped",
                "cancelled"
            ]
        );
        for s in StepState::ALL {
            assert_eq!(StepState::parse(s.as_str()), Some(s));
        }
        assert_eq!(StepState::parse(""), None);
    }

    #[test]
    fn event_words_round_trip() {
        for s in [EventState::Pending, EventState::Planned, EventState::Failed] {
            assert_eq!(EventState::parse(s.as_str()), Some(s));
        }
        assert_eq!(EventState::parse("done"), None);
    }

    #[test]
    fn run_transitions_are_exactly_the_table() {
        use RunState::*;
        let legal = [
            (Queued, Waiting),
            (Queued, Submitted),
            (Queued, Failed),
            (Queued, Cancelled),
            (Waiting, Queued),
            (Waiting, Submitted),
            (Waiting, Cancelled),
            (Waiting, Failed),
            (Submitted, Running),
            (Submitted, Succeeded),
            (Submitted, Failed),
            (Submitted, Cancelled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
        ];
        for (from, to) in legal {
            assert!(from.can_go_to(to), "{from} -> {to} must be legal");
        }
        // Everything else is illegal: check the full cross product.
        for from in RunState::ALL {
            for to in RunState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_go_to(to), expected, "{from} -> {to}");
            }
        }
        // A sample spelled out, for the reader.
        assert!(!Succeeded.can_go_to(Running));
        assert!(!Failed.can_go_to(Queued));
        assert!(!Cancelled.can_go_to(Cancelled));
        assert!(!Running.can_go_to(Queued));
        assert!(!Queued.can_go_to(Running));
        assert!(!Queued.can_go_to(Succeeded));
        assert!(!Submitted.can_go_to(Waiting));
    }

    #[test]
    fn run_terminal_states_go_nowhere() {
        for from in RunState::ALL {
            let any_exit = RunState::ALL.into_iter().any(|to| from.can_go_to(to));
            assert_eq!(from.is_terminal(), !any_exit, "{from}");
        }
    }

    #[test]
    fn step_transitions_are_exactly_the_table() {
        use StepState::*;
        let legal = [
            (Pending, Running),
            (Pending, Skipped),
            (Pending, Cancelled),
            (Pending, Failed),
            (Running, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
        ];
        for (from, to) in legal {
            assert!(from.can_go_to(to), "{from} -> {to} must be legal");
        }
        for from in StepState::ALL {
            for to in StepState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_go_to(to), expected, "{from} -> {to}");
            }
        }
        assert!(!Pending.can_go_to(Succeeded));
        assert!(!Running.can_go_to(Pending));
        assert!(!Running.can_go_to(Skipped));
        assert!(!Failed.can_go_to(Running));
        assert!(!Skipped.can_go_to(Pending));
    }

    #[test]
    fn step_terminal_states_go_nowhere() {
        for from in StepState::ALL {
            let any_exit = StepState::ALL.into_iter().any(|to| from.can_go_to(to));
            assert_eq!(from.is_terminal(), !any_exit, "{from}");
        }
    }
}
