//! Process groups: signalling them, recording them, and killing what a crashed ferry left.
//!
//! Every process a step starts leads its own process group, so a signal to the group reaches
//! whatever the script started (a `torchrun` and its workers, `sleep &` in a script). The groups
//! of a run are appended to its `pids` file as they start; after a restart,
//! [`kill_leftovers`] kills those that still exist, but only after checking in `/proc` that a
//! member of the group carries the run's workspace in its environment, so a group id reused by
//! an unrelated process (after a reboot, say) is left alone.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use rustix::process::{Pid, Signal, kill_process_group};

/// The file of a run directory listing its process groups, one id a line.
pub(super) const PIDS_FILE: &str = "pids";

/// Sends `signal` to each process group; groups that are gone are no error.
pub(super) fn signal_groups(groups: &[i32], signal: Signal) {
    for pid in groups.iter().filter_map(|g| Pid::from_raw(*g)) {
        // ESRCH (the group is gone) is the expected failure; there is nothing to do about others.
        let _ = kill_process_group(pid, signal);
    }
}

/// Appends a process group to the run's `pids` file.
pub(super) fn record(run_dir: &Path, group: i32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(PIDS_FILE))?;
    writeln!(file, "{group}")
}

/// Kills the recorded process groups of a run that still have a member whose environment holds
/// `marker` (`NAME=value`), then forgets them. Returns how many groups were killed.
pub(super) fn kill_leftovers(run_dir: &Path, marker: &str) -> usize {
    let path = run_dir.join(PIDS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return 0;
    };
    let recorded: BTreeSet<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let ours: Vec<i32> = live_groups_with(&recorded, marker).into_iter().collect();
    signal_groups(&ours, Signal::KILL);
    if !ours.is_empty() {
        tracing::warn!(
            run.dir = %run_dir.display(),
            groups = ours.len(),
            "killed processes left by an earlier ferry"
        );
    }
    // Best effort: a file that cannot be removed is read again at the next start, harmlessly.
    let _ = std::fs::remove_file(&path);
    ours.len()
}

/// The groups among `groups` that have a member (per `/proc`) whose environment holds `marker`.
fn live_groups_with(groups: &BTreeSet<i32>, marker: &str) -> BTreeSet<i32> {
    let mut found = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(group) = process_group_of(pid).filter(|g| groups.contains(g)) else {
            continue;
        };
        if !found.contains(&group) && environ_has(pid, marker) {
            found.insert(group);
        }
    }
    found
}

/// The process group of `pid`, from `/proc/<pid>/stat` (the fifth field; the second, the command
/// name in parentheses, may hold spaces and parentheses itself).
fn process_group_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

fn environ_has(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        .unwrap_or(false)
}
