//! The summary's exact text for a success with a baseline, a failure with a log tail, and an
//! invalid pipeline; the better/worse rule; redaction and escaping.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::pipeline::EventKind;
use crate::problem::Problem;
use crate::store::RunId;

const PIPELINE: &str = "version: 1\nname: train\ndefaults: { image: img:1 }\nsteps:\n  - { name: prepare, kind: task, run: make data }\n  - { name: fit, kind: train, run: python fit.py, resources: { gpu: 2, gpu_type: a100 } }\n  - { name: eval, kind: evaluate, run: python eval.py, metrics: /workspace/metrics.json }\n";

const MIN: i64 = 60_000;

fn run(id: i64, state: RunState) -> Run {
    Run {
        id: RunId::new(id).expect("id"),
        project: "resnet".into(),
        pipeline: "train".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        trigger: EventKind::MergeRequest,
        event_id: None,
        rerun_of: None,
        git_ref: "refs/heads/feature".into(),
        branch: Some("feature".into()),
        tag: None,
        mr: Some(7),
        params: BTreeMap::new(),
        pipeline_path: ".ferry/train.yaml".into(),
        pipeline_yaml: PIPELINE.into(),
        state,
        problems: Vec::new(),
        dedup_key: None,
        created_at: 0,
        updated_at: 0,
        started_at: Some(0),
        finished_at: state.is_terminal().then_some(65 * MIN),
        message: None,
        triggered_by: None,
    }
}

fn step(name: &str, position: i64, state: StepState, minutes: (i64, i64)) -> Step {
    Step {
        run_id: RunId::new(1).expect("id"),
        name: name.into(),
        position,
        state,
        attempts: 1,
        message: None,
        metrics: None,
        started_at: Some(minutes.0 * MIN),
        finished_at: state.is_terminal().then_some(minutes.1 * MIN),
    }
}

fn links() -> Links {
    Links::new(
        Some("https://ferry.example.com/"),
        Some("https://argo.example.com"),
        "ml-team",
        RunId::new(9).expect("id"),
    )
}

#[test]
fn a_success_with_a_baseline() {
    let pipeline = crate::pipeline::load(".ferry/train.yaml", PIPELINE, None).expect("valid");
    let current = run(9, RunState::Succeeded);
    let mut steps = vec![
        step("prepare", 0, StepState::Succeeded, (0, 2)),
        step("fit", 1, StepState::Succeeded, (2, 62)),
        step("eval", 2, StepState::Succeeded, (62, 65)),
    ];
    steps[2].metrics = Some(json!({"accuracy": 0.912, "val_loss": 0.31, "wer": 0.1}));
    let mut base = run(5, RunState::Succeeded);
    base.branch = Some("main".into());
    let mut base_steps = vec![step("eval", 2, StepState::Succeeded, (0, 1))];
    base_steps[0].metrics = Some(json!({"accuracy": 0.9, "val_loss": 0.35, "wer": 0.08}));
    let links = links();
    let input = SummaryInput {
        run: &current,
        steps: &steps,
        pipeline: Some(&pipeline),
        baseline: Some(Baseline {
            run: &base,
            steps: &base_steps,
        }),
        links: &links,
        log_tail: None,
        secrets: &[],
        now: 100 * MIN,
    };
    assert_eq!(
        render(&input),
        "<!-- ferry:run:9 -->
### ✅ ferry/train: succeeded (run #9)

Commit `01234567` on `feature` · [dashboard](https://ferry.example.com/runs/9) · [Argo](https://argo.example.com/workflows/ml-team/ferry-9)

| step | state | duration | GPUs | GPU-hours |
|---|---|---|---|---|
| prepare | succeeded | 2m 00s | — | — |
| fit | succeeded | 1h 00m | 2 × a100 | 2.00 |
| eval | succeeded | 3m 00s | — | — |
| **total** | | 1h 05m | | 2.00 |

#### Metrics

Baseline: run #5 on `main`.

| metric | step | value | baseline | change |
|---|---|---|---|---|
| accuracy | eval | 0.912 | 0.9 | +0.012 (+1.3%) better |
| val_loss | eval | 0.31 | 0.35 | −0.04 (−11.4%) better |
| wer | eval | 0.1 | 0.08 | +0.02 (+25.0%) worse |

Lower is better for metrics named with loss, error, perplexity, latency, wer or cer; higher for the others.
"
    );
    assert_eq!(run_description(&input), "succeeded in 1h 05m");
}

#[test]
fn a_failure_with_its_message_and_a_redacted_log_tail() {
    let mut current = run(9, RunState::Failed);
    current.message = Some("workflow failed | exit 1".into());
    let mut steps = vec![
        step("prepare", 0, StepState::Succeeded, (0, 2)),
        step("fit", 1, StepState::Failed, (2, 4)),
        step("eval", 2, StepState::Skipped, (0, 0)),
    ];
    steps[1].message = Some("OOM with token s3cr3t <!-- ferry:run:1 -->".into());
    steps[2].started_at = None;
    steps[2].message = Some("not run".into());
    let links = Links::default();
    let secrets = vec!["s3cr3t".to_owned()];
    let input = SummaryInput {
        run: &current,
        steps: &steps,
        pipeline: None,
        baseline: None,
        links: &links,
        log_tail: Some("loading s3cr3t\n```\nKilled"),
        secrets: &secrets,
        now: 100 * MIN,
    };
    assert_eq!(
        render(&input),
        "<!-- ferry:run:9 -->
### ❌ ferry/train: failed (run #9)

Commit `01234567` on `feature`

| step | state | duration | GPUs | GPU-hours |
|---|---|---|---|---|
| prepare | succeeded | 2m 00s | — | — |
| fit | failed | 2m 00s | — | — |
| eval | skipped | — | — | — |
| **total** | | 1h 05m | | 0.00 |

#### Failure

> workflow failed \\| exit 1

**fit** failed: OOM with token *** &lt;!-- ferry:run:1 --&gt;

<details><summary>Log tail</summary>

````text
loading ***
```
Killed
````

</details>
"
    );
    assert_eq!(
        run_description(&input),
        "failed: fit: OOM with token *** <!-- ferry:run:1 -->"
    );
    assert_eq!(step_description(&steps[2], &secrets, 0), "skipped: not run");
}

#[test]
fn an_invalid_pipeline_lists_every_problem() {
    let mut current = run(9, RunState::Failed);
    current.started_at = None;
    current.problems = vec![
        Problem {
            file: ".ferry/train.yaml".into(),
            line: 4,
            column: 5,
            path: "steps[0]".into(),
            message: "unknown field `resorces`".into(),
        },
        Problem {
            file: ".ferry/train.yaml".into(),
            line: 0,
            column: 0,
            path: String::new(),
            message: "no steps".into(),
        },
    ];
    let links = Links::default();
    let input = SummaryInput {
        run: &current,
        steps: &[],
        pipeline: None,
        baseline: None,
        links: &links,
        log_tail: None,
        secrets: &[],
        now: 0,
    };
    assert_eq!(
        render(&input),
        "<!-- ferry:run:9 -->
### ❌ ferry/train: invalid pipeline (run #9)

Commit `01234567` on `feature`

The pipeline file is not valid, so nothing ran:

- `.ferry/train.yaml:4:5` steps\\[0]: unknown field `resorces`
- `.ferry/train.yaml:0:0` no steps
"
    );
    assert_eq!(
        run_description(&input),
        "invalid pipeline: .ferry/train.yaml:4:5: steps[0]: unknown field `resorces` (and 1 more)"
    );
}

#[test]
fn lower_is_better_for_losses_errors_and_latencies() {
    for name in [
        "loss",
        "val_loss",
        "eval/errors",
        "p95_latency_ms",
        "test-wer",
        "CER",
        "perplexity",
    ] {
        assert!(lower_is_better(name), "{name}");
    }
    for name in [
        "accuracy",
        "f1",
        "bleu",
        "power",
        "cancer_recall",
        "tokens_per_s",
    ] {
        assert!(!lower_is_better(name), "{name}");
    }
}

#[test]
fn redaction_replaces_longest_secrets_first() {
    let secrets = vec!["abc".to_owned(), "abcdef".to_owned(), String::new()];
    assert_eq!(redact("x abcdef y abc", &secrets), "x *** y ***");
    assert_eq!(redact("nothing", &secrets), "nothing");
}

#[test]
fn durations_read_well() {
    assert_eq!(duration(12_000), "12s");
    assert_eq!(duration(185_000), "3m 05s");
    assert_eq!(duration(3_720_000), "1h 02m");
    assert_eq!(duration(-5), "0s");
}
