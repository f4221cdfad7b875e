//! The log tail of one step, for the run page.
//!
//! Only names of the run's own steps are looked up (the name comes from the query string, and
//! step names are validated as `[a-z0-9-]`), so no request can name another file. Lines pass
//! through `summary::redact` with the secret values ferry holds for the project, then are
//! escaped like everything else on the page.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ferry_engine::config::ExecutorKind;
use ferry_engine::executor::local::{LocalExecutor, LocalSettings};
use ferry_engine::service::summary::redact;
use ferry_engine::store::Run;

use super::super::AppState;

/// Lines of log the page shows.
pub const LINES: usize = 200;
/// Bytes read from the end of a log file to find them.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last [`LINES`] lines of `step`'s log, or `None` when the executor has none to give.
pub async fn tail(state: &AppState, run: &Run, step: &str) -> Option<Vec<String>> {
    // SWAP when `Executor::log_tail(&run, step, lines)` lands (the log-tail branch): replace
    // everything from here to `redacted` with
    //     let text = state.executor.log_tail(run, step, LINES).await.ok().flatten()?;
    //     let lines = text.lines().map(str::to_owned).collect::<Vec<_>>();
    // (adapting to its exact return type), which also gives Argo runs their logs.
    if state.config.executor != ExecutorKind::Local {
        return None;
    }
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let paths = LocalExecutor::new(
        LocalSettings {
            gpus: Some(0),
            ..LocalSettings::new(&state.config.data_dir)
        },
        tx,
    );
    let path = paths.log_path(run.id, step, None);
    let lines = tokio::task::spawn_blocking(move || read_tail(&path, LINES))
        .await
        .ok()??;
    Some(redacted(state, &run.project, lines))
}

/// Lines with every secret value ferry holds for `project` replaced by `***`.
fn redacted(state: &AppState, project: &str, lines: Vec<String>) -> Vec<String> {
    let secrets: Vec<String> = state
        .secrets
        .get(project)
        .map(|s| String::from_utf8_lossy(s.expose()).into_owned())
        .into_iter()
        .collect();
    lines.into_iter().map(|l| redact(&l, &secrets)).collect()
}

/// The last `n` lines of the file at `path` (reading at most its last [`TAIL_BYTES`]).
pub fn read_tail(path: &Path, n: usize) -> Option<Vec<String>> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    Some(lines[skip..].iter().map(|l| (*l).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_of_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("train.log");
        assert_eq!(read_tail(&path, 3), None, "no file, no log");
        let text: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(
            read_tail(&path, 3).expect("log"),
            ["line 8", "line 9", "line 10"]
        );
        assert_eq!(read_tail(&path, 50).expect("log").len(), 10);
    }

    #[test]
    fn a_long_file_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("big.log");
        let line = "x".repeat(99);
        let text: String = (0..2000).map(|i| format!("{i:04}{line}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = read_tail(&path, 1000).expect("log");
        assert!(tail.len() < 700, "only the last 64 KiB: {}", tail.len());
        assert!(tail[0].starts_with(|c: char| c.is_ascii_digit()) && tail[0].len() == 103);
        assert!(tail.last().expect("last").starts_with("1999"));
    }
}
