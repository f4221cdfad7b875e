//! The live progress table of `ferry run`: one row per step with its state, attempt, elapsed time
//! and the last line of its log.
//!
//! [`Progress`] is fed the executor's [`Observation`]s and renders plain text; the caller decides
//! whether to redraw it in place (a terminal) or to print one line per change (a pipe or CI log).

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_engine::executor::{Observation, Phase};
use ferry_engine::store::StepState;

/// Widest log line shown in the table.
const LOG_WIDTH: usize = 60;

/// One step's row.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    state: StepState,
    attempts: u32,
    message: Option<String>,
    started: Option<Instant>,
    finished: Option<Instant>,
}

/// What `ferry run` shows while a run is under way.
#[derive(Debug)]
pub struct Progress {
    logs: PathBuf,
    rows: Vec<Row>,
    phase: Phase,
    message: Option<String>,
}

impl Progress {
    /// A table of `steps` (all pending) whose logs are under `logs/<step>.log`.
    pub fn new(steps: &[String], logs: PathBuf) -> Progress {
        Progress {
            logs,
            rows: steps
                .iter()
                .map(|name| Row {
                    name: name.clone(),
                    state: StepState::Pending,
                    attempts: 0,
                    message: None,
                    started: None,
                    finished: None,
                })
                .collect(),
            phase: Phase::Pending,
            message: None,
        }
    }

    /// The run's phase as last observed.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The run's message as last observed.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The first step (in pipeline order) that failed, if any.
    pub fn first_failed(&self) -> Option<&str> {
        self.rows
            .iter()
            .find(|r| r.state == StepState::Failed)
            .map(|r| r.name.as_str())
    }

    /// Applies an observation at `now`; returns one line per step whose state or attempt changed
    /// (for output that is not a terminal).
    pub fn observe(&mut self, obs: &Observation, now: Instant) -> Vec<String> {
        let mut changes = Vec::new();
        self.phase = obs.phase;
        self.message.clone_from(&obs.message);
        for seen in &obs.steps {
            let Some(row) = self.rows.iter_mut().find(|r| r.name == seen.name) else {
                continue;
            };
            if row.state == seen.state && row.attempts == seen.attempts {
                continue;
            }
            if seen.state == StepState::Running && row.started.is_none() {
                row.started = Some(now);
            }
            if seen.state.is_terminal() && row.finished.is_none() {
                row.finished = Some(now);
            }
            row.state = seen.state;
            row.attempts = seen.attempts;
            row.message.clone_from(&seen.message);
            let mut line = format!("{:<20} {}", row.name, row.state);
            if row.attempts > 1 {
                let _ = write!(line, " (attempt {})", row.attempts);
            }
            if let Some(elapsed) = elapsed(row, now).filter(|_| row.state.is_terminal()) {
                let _ = write!(line, " after {}", duration(elapsed));
            }
            if let Some(m) = &row.message
                && row.state.is_terminal()
                && row.state != StepState::Succeeded
            {
                let _ = write!(line, ": {m}");
            }
            changes.push(line);
        }
        changes
    }

    /// The whole table at `now`, one line per step, with a header.
    pub fn table(&self, now: Instant) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!(
            "{:<width$}  {:<9}  {:>7}  {:>8}  LAST LOG LINE\n",
            "STEP", "STATE", "ATTEMPT", "ELAPSED"
        );
        for row in &self.rows {
            let attempt = if row.attempts == 0 {
                "-".to_owned()
            } else {
                row.attempts.to_string()
            };
            let elapsed = elapsed(row, now)
                .map(duration)
                .unwrap_or_else(|| "-".into());
            let last = match (&row.message, row.state) {
                (Some(m), StepState::Failed | StepState::Skipped | StepState::Cancelled) => {
                    m.clone()
                }
                _ => last_line(&self.logs.join(format!("{}.log", row.name))).unwrap_or_default(),
            };
            let _ = writeln!(
                out,
                "{:<width$}  {:<9}  {:>7}  {:>8}  {}",
                row.name,
                row.state.as_str(),
                attempt,
                elapsed,
                clip(&last, LOG_WIDTH)
            );
        }
        out
    }
}

fn elapsed(row: &Row, now: Instant) -> Option<Duration> {
    let start = row.started?;
    Some(row.finished.unwrap_or(now).saturating_duration_since(start))
}

/// `4.2s`, `1m05s`, `2h03m`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// At most `width` characters of the line, control characters removed.
fn clip(line: &str, width: usize) -> String {
    let clean: String = line.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() <= width {
        return clean;
    }
    let mut out: String = clean.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The last non-empty line of a log file (read from its last 4 KiB).
fn last_line(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::executor::StepObservation;
    use ferry_engine::store::RunId;

    fn obs(phase: Phase, steps: &[(&str, StepState, u32, Option<&str>)]) -> Observation {
        Observation {
            run_id: RunId::new(7).expect("id"),
            phase,
            message: None,
            steps: steps
                .iter()
                .map(|(n, s, a, m)| StepObservation {
                    name: (*n).into(),
                    state: *s,
                    attempts: *a,
                    message: m.map(Into::into),
                    metrics: None,
                })
                .collect(),
        }
    }

    #[test]
    fn table_shows_states_attempts_elapsed_and_log_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("train.log"),
            "epoch 1\nepoch 2 loss=0.31\n\n",
        )
        .expect("log");
        let steps = [
            "train".to_owned(),
            "evaluate".to_owned(),
            "deploy".to_owned(),
        ];
        let mut p = Progress::new(&steps, dir.path().to_path_buf());
        let t0 = Instant::now();
        let lines = p.observe(
            &obs(Phase::Running, &[("train", StepState::Running, 1, None)]),
            t0,
        );
        assert_eq!(lines, ["train                running"]);
        let t1 = t0 + Duration::from_millis(4200);
        let lines = p.observe(
            &obs(
                Phase::Failed,
                &[
                    ("train", StepState::Succeeded, 2, None),
                    ("evaluate", StepState::Failed, 1, Some("exit code 3")),
                    (
                        "deploy",
                        StepState::Skipped,
                        0,
                        Some("needs `evaluate`, which failed"),
                    ),
                ],
            ),
            t1,
        );
        assert_eq!(
            lines,
            [
                "train                succeeded (attempt 2) after 4.2s",
                "evaluate             failed: exit code 3",
                "deploy               skipped: needs `evaluate`, which failed",
            ]
        );
        let table = p.table(t1);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(
            rows[0],
            "STEP      STATE      ATTEMPT   ELAPSED  LAST LOG LINE"
        );
        assert_eq!(
            rows[1],
            "train     succeeded        2      4.2s  epoch 2 loss=0.31"
        );
        assert_eq!(
            rows[2],
            "evaluate  failed           1         -  exit code 3"
        );
        assert_eq!(
            rows[3],
            "deploy    skipped          -         -  needs `evaluate`, which failed"
        );
        assert_eq!(p.phase(), Phase::Failed);
    }

    #[test]
    fn durations_and_clipping() {
        assert_eq!(duration(Duration::from_millis(999)), "1.0s");
        assert_eq!(duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h03m");
        assert_eq!(clip("a\u{1b}[2Jb", 10), "a[2Jb");
        assert_eq!(clip("abcdefghij", 5), "abcd…");
    }
}
