//! Log tails of local runs: the end of `logs/<step>.log` from its latest attempt's header on
//! and, for a step with several nodes, the end of each `logs/<step>.node<R>.log`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::EnvSource;
use super::env::secret_var;
use super::step::log_path;
use crate::executor::tail_lines;
use crate::pipeline::Pipeline;

/// The start of the line ferry writes before each attempt (`step::Running::note`).
const ATTEMPT_HEADER: &str = "--- ferry: step `";

/// The values of the step's `secret_env` entries as this executor hands them out.
pub(super) fn secret_values(pipeline: &Pipeline, step: &str, env: &EnvSource) -> Vec<String> {
    pipeline
        .steps
        .iter()
        .filter(|s| s.name == step)
        .flat_map(|s| s.secret_env.values())
        .filter_map(|secret| env.get(&secret_var(secret)))
        .filter(|v| !v.is_empty())
        .collect()
}

/// The tail of `step`'s logs under `logs`; `None` when it has none.
pub(super) fn step_tail(
    logs: &Path,
    step: &str,
    lines: u32,
    bytes: usize,
) -> std::io::Result<Option<String>> {
    // Enough of each file's end for the lines asked for, never the whole file of a chatty step.
    let read = u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(2);
    let mut parts = Vec::new();
    if let Some(main) = read_end(&log_path(logs, step, None), read)? {
        let latest = main
            .rfind(ATTEMPT_HEADER)
            .map_or(main.as_str(), |i| &main[i..]);
        parts.push(latest.trim_end().to_owned());
    }
    for node in 0.. {
        match read_end(&log_path(logs, step, Some(node)), read)? {
            Some(text) => parts.push(format!(
                "--- node {node} ---\n{}",
                tail_lines(&text, lines, bytes)
            )),
            None => break,
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(tail_lines(&parts.join("\n"), lines, bytes)))
}

/// The last `read` bytes of a file (from a line start when cut), or `None` when it does not
/// exist.
fn read_end(path: &Path, read: u64) -> std::io::Result<Option<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(read);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if let (true, Some(i)) = (start > 0, text.find('\n')) {
        text.drain(..=i);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::step_tail;

    #[test]
    fn the_tail_starts_at_the_latest_attempt() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("train.log"),
            "--- ferry: step `train`, attempt 1 of 2 ---\nold error\nferry: attempt 1 failed: x\n\
             --- ferry: step `train`, attempt 2 of 2 ---\nepoch 1\nTraceback\nOOM\n",
        )
        .expect("write");
        let tail = step_tail(dir.path(), "train", 10, 4096)
            .expect("read")
            .expect("a log");
        assert_eq!(
            tail,
            "--- ferry: step `train`, attempt 2 of 2 ---\nepoch 1\nTraceback\nOOM"
        );
        assert_eq!(
            step_tail(dir.path(), "train", 2, 4096)
                .expect("read")
                .expect("a log"),
            "Traceback\nOOM"
        );
        assert_eq!(step_tail(dir.path(), "other", 2, 4096).expect("read"), None);
    }

    #[test]
    fn several_nodes_show_each_node() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("t.log"),
            "--- ferry: step `t`, attempt 1 of 1 ---\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("t.node0.log"), "rank0 ok\n").expect("write");
        std::fs::write(dir.path().join("t.node1.log"), "rank1 boom\n").expect("write");
        let tail = step_tail(dir.path(), "t", 20, 4096)
            .expect("read")
            .expect("a log");
        assert_eq!(
            tail,
            "--- ferry: step `t`, attempt 1 of 1 ---\n--- node 0 ---\nrank0 ok\n--- node 1 ---\nrank1 boom"
        );
    }
}
