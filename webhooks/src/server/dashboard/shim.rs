//! TEMPORARY stand-in for what branch `d` adds to the engine (`service::operations::run_detail`
//! and `Store::authenticate_token`), with the same names and shapes, so that the dashboard builds
//! before `d` is merged. SWAP at merge: delete this file and its `mod shim;`, and import
//! `ferry_engine::service::operations::{MetricComparison, RunDetail, Verdict, run_detail}`
//! instead; `token_valid` becomes `store.authenticate_token(token).await?.is_some()`.

use std::collections::BTreeMap;

use ferry_engine::config::Config;
use ferry_engine::service::summary::{Links, lower_is_better};
use ferry_engine::store::{Run, RunId, Step, Store, StoreError};
use serde_json::Value;

/// Better, worse or the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It improved.
    Better,
    /// It got worse.
    Worse,
    /// It did not change.
    Same,
}

impl Verdict {
    /// The word.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Same => "same",
        }
    }
}

/// One metric next to the baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricComparison {
    /// The step that published it.
    pub step: String,
    /// The metric's name.
    pub name: String,
    /// This run's value.
    pub value: f64,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// Whether lower is better.
    pub lower_is_better: bool,
    /// The verdict, with a baseline value.
    pub verdict: Option<Verdict>,
}

/// A run in full.
#[derive(Debug, Clone)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Its steps.
    pub steps: Vec<Step>,
    /// The branch its metrics are compared on.
    pub baseline_branch: Option<String>,
    /// The baseline run.
    pub baseline: Option<Run>,
    /// Its metrics with the baseline's.
    pub metrics: Vec<MetricComparison>,
    /// Links.
    pub links: Links,
}

fn numeric(steps: &[Step]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for step in steps {
        if let Some(Value::Object(map)) = &step.metrics {
            for (name, value) in map {
                if let Some(v) = value.as_f64() {
                    out.insert((step.name.clone(), name.clone()), v);
                }
            }
        }
    }
    out
}

/// Run `id` in full (branch runs only: the baseline branch is the run's own).
pub async fn run_detail(
    store: &Store,
    config: &Config,
    id: RunId,
) -> Result<Option<RunDetail>, StoreError> {
    let Some(run) = store.get_run(id).await? else {
        return Ok(None);
    };
    let steps = store.steps(id).await?;
    let baseline_branch = run.branch.clone();
    let baseline = match &baseline_branch {
        Some(b) => {
            store
                .baseline_run(&run.project, &run.pipeline, b, run.id)
                .await?
        }
        None => None,
    };
    let base = match &baseline {
        Some(b) => numeric(&store.steps(b.id).await?),
        None => BTreeMap::new(),
    };
    let metrics = numeric(&steps)
        .into_iter()
        .map(|((step, name), value)| {
            let b = base.get(&(step.clone(), name.clone())).copied();
            let lower = lower_is_better(&name);
            let verdict = b.map(|b| match value - b {
                d if d == 0.0 => Verdict::Same,
                d if (d < 0.0) == lower => Verdict::Better,
                _ => Verdict::Worse,
            });
            MetricComparison {
                step,
                name,
                value,
                baseline: b,
                lower_is_better: lower,
                verdict,
            }
        })
        .collect();
    let links = Links::new(config.public_url.as_deref(), None, "default", run.id);
    Ok(Some(RunDetail {
        run,
        steps,
        baseline_branch,
        baseline,
        metrics,
        links,
    }))
}

/// Whether `token` is a valid API token: none is, until the token store of branch `d` exists.
pub async fn token_valid(_store: &Store, _token: &str) -> Result<bool, StoreError> {
    Ok(false)
}
