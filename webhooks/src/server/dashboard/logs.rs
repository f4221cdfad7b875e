//! The log tail of one step, for the run page.
//!
//! Only names of the run's own steps are looked up (the name comes from the query string, and
//! step names are validated as `[a-z0-9-]`), so no request can name another file or pod. A tail
//! the dispatcher stored when the run failed is shown as stored (redacted then); otherwise the
//! executor is asked (the log file locally, the pod's log through the API server for Argo). Lines
//! pass through `summary::redact` with every secret value the step could see and the project's
//! webhook secret, then are escaped like everything else on the page.

use ferry_engine::executor::LogRequest;
use ferry_engine::pipeline;
use ferry_engine::service::summary::redact;
use ferry_engine::store::Run;

use super::super::AppState;

/// Lines of log the page shows.
pub const LINES: usize = 200;
/// Bytes of log the page shows at most.
const TAIL_BYTES: usize = 64 * 1024;

/// The last [`LINES`] lines of `step`'s log, or `None` when there is none to give.
pub async fn tail(state: &AppState, run: &Run, step: &str) -> Option<Vec<String>> {
    let mut secrets: Vec<String> = state
        .secrets
        .get(&run.project)
        .map(|s| String::from_utf8_lossy(s.expose()).into_owned())
        .into_iter()
        .collect();
    let stored = state.store.log_tails(run.id).await.unwrap_or_default();
    if let Some(t) = stored.into_iter().find(|t| t.step == step) {
        return Some(lines(&redact(&t.text, &secrets)));
    }
    let pipeline = pipeline::load(&run.pipeline_path, &run.pipeline_yaml, None).ok()?;
    let namespace = state
        .config
        .project(&run.project)
        .and_then(|p| p.namespace.as_deref());
    let request = LogRequest {
        run: run.id,
        namespace,
        pipeline: &pipeline,
        step,
        lines: u32::try_from(LINES).unwrap_or(u32::MAX),
        bytes: TAIL_BYTES,
    };
    let fetched = match state.executor.log_tail(request).await {
        Ok(Some(fetched)) => fetched,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(run = %run.id, step, error = %e, "reading a log for the dashboard failed");
            return None;
        }
    };
    secrets.extend(fetched.secrets);
    Some(lines(&redact(&fetched.text, &secrets)))
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn text_becomes_lines() {
        assert_eq!(lines("a\nb\r\nc"), ["a", "b", "c"]);
        assert!(lines("").is_empty());
    }
}
