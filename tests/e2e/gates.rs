//! Gates in rendered workflows: which steps become DAG tasks, which are recorded as skipped, and
//! how `needs` and `if.metrics` turn into Argo `depends` and `when`.

use std::collections::BTreeSet;

use ferry_engine::pipeline::{EventKind, StepKind};
use ferry_tests::{Variant, examples, profile, render, templates, variant_context};
use serde_json::Value;

/// Every example in every variant: (what, pipeline, rendered).
fn all() -> Vec<(
    String,
    ferry_engine::pipeline::Pipeline,
    ferry_engine::render::Rendered,
)> {
    let profile = profile();
    let mut out = Vec::new();
    for ex in examples() {
        let pipeline = ex.load();
        for variant in Variant::ALL {
            let what = format!("{} [{variant}]", ex.stem);
            let ctx = variant_context(&pipeline, variant);
            let rendered = render(&pipeline, &profile, &ctx, &what);
            out.push((what, pipeline.clone(), rendered));
        }
    }
    out
}

fn dag_tasks(manifest: &Value) -> Vec<&Value> {
    templates(manifest)
        .iter()
        .flat_map(|t| {
            t["dag"]["tasks"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
        })
        .collect()
}

fn task<'a>(manifest: &'a Value, name: &str) -> Option<&'a Value> {
    dag_tasks(manifest).into_iter().find(|t| t["name"] == name)
}

#[test]
fn tasks_and_skipped_steps_partition_the_pipeline_and_skips_propagate() {
    let mut failures = Vec::new();
    let mut skipped_somewhere = 0;
    for (what, pipeline, rendered) in all() {
        let tasks: BTreeSet<String> = dag_tasks(&rendered.manifest)
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        let skipped: BTreeSet<String> = rendered.skipped.iter().map(|s| s.step.clone()).collect();
        let steps: BTreeSet<String> = pipeline.steps.iter().map(|s| s.name.clone()).collect();
        skipped_somewhere += skipped.len();
        if tasks.intersection(&skipped).next().is_some() {
            failures.push(format!(
                "{what}: steps both run and skipped: {:?}",
                tasks.intersection(&skipped).collect::<Vec<_>>()
            ));
        }
        if tasks.union(&skipped).cloned().collect::<BTreeSet<_>>() != steps {
            failures.push(format!(
                "{what}: tasks {tasks:?} + skipped {skipped:?} != steps {steps:?}"
            ));
        }
        for s in &rendered.skipped {
            if s.reason.trim().is_empty() {
                failures.push(format!("{what}: step {} skipped without a reason", s.step));
            }
        }
        for step in &pipeline.steps {
            for &need in &step.needs {
                let need = &pipeline.steps[need].name;
                if skipped.contains(need) && !skipped.contains(&step.name) {
                    failures.push(format!(
                        "{what}: {} needs skipped {need} but is not skipped",
                        step.name
                    ));
                }
                if let Some(t) = task(&rendered.manifest, &step.name) {
                    let depends = t["depends"].as_str().unwrap_or_default();
                    if !depends.contains(&format!("{need}.Succeeded")) {
                        failures.push(format!("{what}: task {} does not wait for {need} to succeed: depends {depends:?}", step.name));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        skipped_somewhere > 0,
        "no variant skipped any step: the gates were not exercised"
    );
}

#[test]
fn merge_requests_never_deploy_unless_the_pipeline_says_so() {
    let mut deploys = 0;
    for (what, pipeline, rendered) in all()
        .into_iter()
        .filter(|(w, _, _)| w.contains("merge request"))
    {
        for step in pipeline.steps.iter().filter(|s| s.kind == StepKind::Deploy) {
            deploys += 1;
            let allowed = step
                .gate
                .events
                .as_ref()
                .is_some_and(|e| e.contains(&EventKind::MergeRequest));
            let runs = task(&rendered.manifest, &step.name).is_some();
            assert!(
                allowed || !runs,
                "{what}: deploy step {} runs for a merge request",
                step.name
            );
        }
    }
    assert!(deploys > 0, "no example has a deploy step");
}

#[test]
fn metrics_gates_become_when_conditions_naming_their_metrics() {
    let mut gates = 0;
    for (what, pipeline, rendered) in all() {
        for step in &pipeline.steps {
            let Some(t) = task(&rendered.manifest, &step.name) else {
                continue;
            };
            let when = t["when"].as_str();
            match (&step.gate.metrics, when) {
                (None, None) => {}
                (None, Some(w)) => {
                    panic!("{what}: {} has no if.metrics but a when: {w}", step.name)
                }
                (Some(m), None) => panic!(
                    "{what}: {} has if.metrics `{}` but no when",
                    step.name, m.text
                ),
                (Some(m), Some(w)) => {
                    gates += 1;
                    let names = m
                        .text
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
                    for name in names {
                        let key = name.rsplit('.').next().unwrap_or(name);
                        assert!(
                            w.contains(&format!("'{key}' in ")),
                            "{what}: when of {} does not test for metric `{key}` (a missing key must make it false): {w}",
                            step.name
                        );
                    }
                }
            }
        }
    }
    assert!(gates > 0, "no example renders an if.metrics gate");
}
