//! Rendered workflows against Argo's own schemas, in strict mode (unknown fields rejected).
//!
//! Needs `../shared/argo` (Argo v4.1.2 `api/jsonschema/schema.json` and the full CRD's
//! `openAPIV3Schema`); without it these tests print a SKIPPED line and pass.

use std::collections::BTreeSet;

use ferry_engine::pipeline;
use ferry_engine::profile::Distributed;
use ferry_engine::render::Renderer;
use ferry_tests::{
    ArgoSchemas, Variant, argo_schemas, argo_tags, arguments, examples, profile_with, read,
    schema_errors, shared_argo_dir, strings, strip_arg_expressions, substitute_arguments,
    templates, variant_context, yaml_to_json,
};
use serde_json::{Value, json};

/// One rendered manifest and how it was made.
struct Case {
    what: String,
    distributed: Distributed,
    manifest: Value,
}

/// Every example x {pytorchjob, jobset} x every variant; render failures go to `failures`.
fn render_all(failures: &mut Vec<String>) -> Vec<Case> {
    let mut cases = Vec::new();
    for ex in examples() {
        for distributed in [Distributed::Pytorchjob, Distributed::Jobset] {
            let profile = profile_with(distributed);
            let pipeline = match pipeline::load(&ex.file, &ex.text, Some(&profile)) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!(
                        "{} (distributed: {distributed:?}) does not validate:\n{e}",
                        ex.file
                    ));
                    continue;
                }
            };
            for variant in Variant::ALL {
                let what = format!("{} [{variant}, distributed: {distributed:?}]", ex.stem);
                let ctx = variant_context(&pipeline, variant);
                match Renderer::embedded().render(&pipeline, &profile, &ctx) {
                    Ok(r) => cases.push(Case {
                        what,
                        distributed,
                        manifest: r.manifest,
                    }),
                    Err(e) => failures.push(format!("{what}: render failed: {e}")),
                }
            }
        }
    }
    cases
}

fn fixture(dir: &std::path::Path) -> Value {
    let path = dir.join("fixtures/workflow-dag-gpu.valid.yaml");
    yaml_to_json("fixtures/workflow-dag-gpu.valid.yaml", &read(&path))
}

#[test]
fn harness_accepts_the_valid_fixture() {
    let Some(schemas) = argo_schemas() else {
        return;
    };
    let Some(dir) = shared_argo_dir() else { return };
    let fixture = fixture(&dir);
    let errors = schemas.errors(&fixture);
    assert!(
        errors.is_empty(),
        "the valid fixture fails the strict schemas:\n{}",
        errors.join("\n")
    );
}

#[test]
fn harness_rejects_an_unknown_field_in_a_template() {
    let Some(schemas) = argo_schemas() else {
        return;
    };
    let Some(dir) = shared_argo_dir() else { return };
    let mut broken = fixture(&dir);
    let template = broken["spec"]["templates"][1]
        .as_object_mut()
        .expect("fixture has spec.templates[1]");
    assert!(
        template.contains_key("container"),
        "fixture templates[1] should be a container template"
    );
    template.insert("containr".into(), json!({"image": "busybox"}));
    for (name, validator) in [
        ("schema.json", &schemas.schema_json),
        ("full CRD", &schemas.crd),
    ] {
        let errors = schema_errors(validator, &broken);
        assert!(
            !errors.is_empty(),
            "{name} (strict) accepted templates[1].containr"
        );
        assert!(
            errors.iter().any(|e| e.contains("containr")),
            "{name}: no error names `containr`:\n{}",
            errors.join("\n")
        );
    }
    // A wrong type somewhere else is caught too (the schemas are really being applied).
    let mut wrong = fixture(&dir);
    wrong["spec"]["templates"][1]["container"]["env"] = json!("not-a-list");
    for (name, validator) in [
        ("schema.json", &schemas.schema_json),
        ("full CRD", &schemas.crd),
    ] {
        assert!(
            !schema_errors(validator, &wrong).is_empty(),
            "{name} accepted a string as container.env"
        );
    }
}

#[test]
fn every_example_in_every_variant_validates_against_both_argo_schemas() {
    let Some(schemas) = argo_schemas() else {
        return;
    };
    let mut failures = Vec::new();
    let cases = render_all(&mut failures);
    assert_eq!(
        cases.len() + failures.len(),
        examples().len() * 2 * Variant::ALL.len()
    );
    for case in &cases {
        let errors = ArgoSchemas::errors(schemas, &case.manifest);
        if !errors.is_empty() {
            failures.push(format!(
                "{}: {} validation error(s):\n    {}",
                case.what,
                errors.len(),
                errors.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn resource_manifests_are_pytorchjobs_or_jobsets_that_reference_declared_arguments() {
    let mut failures = Vec::new();
    let cases = render_all(&mut failures);
    let mut seen = BTreeSet::new();
    for case in &cases {
        let declared = arguments(&case.manifest);
        for t in templates(&case.manifest) {
            let Some(resource) = t.get("resource") else {
                continue;
            };
            let tname = t["name"].as_str().unwrap_or("?");
            let Some(text) = resource["manifest"].as_str() else {
                failures.push(format!(
                    "{}: template {tname}: resource.manifest is not a string",
                    case.what
                ));
                continue;
            };
            let (stripped, names) = strip_arg_expressions(text);
            for n in names.iter().filter(|n| !declared.contains_key(*n)) {
                failures.push(format!(
                    "{}: template {tname}: toJson of undeclared argument `{n}`",
                    case.what
                ));
            }
            let inner: Value = match serde_json::from_str(&stripped) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{}: template {tname}: manifest is not JSON once arguments are blanked: {e}", case.what));
                    continue;
                }
            };
            let (kind, api) = match case.distributed {
                Distributed::Pytorchjob => ("PyTorchJob", "kubeflow.org/v1"),
                Distributed::Jobset => ("JobSet", "jobset.x-k8s.io/v1alpha2"),
            };
            if inner["kind"] != kind || inner["apiVersion"] != api {
                failures.push(format!(
                    "{}: template {tname}: inner object is {} {}, expected {api} {kind}",
                    case.what, inner["apiVersion"], inner["kind"]
                ));
            }
            let substituted: Value =
                serde_json::from_str(&substitute_arguments(text, &case.manifest))
                    .unwrap_or(Value::Null);
            let name = substituted["metadata"]["name"].as_str().unwrap_or_default();
            let run_id = case.manifest["metadata"]["labels"]["ferry.dev/run-id"]
                .as_str()
                .unwrap_or_default();
            if !name.starts_with(&format!("ferry-{run_id}-")) {
                failures.push(format!(
                    "{}: template {tname}: inner object has no metadata.name",
                    case.what
                ));
            }
            // Values only reach the inner object through toJson expressions: no other Argo tag.
            for (path, s) in strings(&inner) {
                if s.contains("{{") {
                    failures.push(format!(
                        "{}: template {tname}: inner {path} holds an Argo tag: {s}",
                        case.what
                    ));
                }
            }
            for key in ["successCondition", "failureCondition", "action"] {
                if resource[key].as_str().is_none_or(str::is_empty) {
                    failures.push(format!(
                        "{}: template {tname}: resource.{key} missing",
                        case.what
                    ));
                }
            }
            seen.insert(kind);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        seen,
        BTreeSet::from(["JobSet", "PyTorchJob"]),
        "expected the examples to exercise both PyTorchJob and JobSet resource steps"
    );
}

/// Task names in an Argo `depends` expression (`a.Succeeded && (b.Succeeded || c.Skipped)`).
fn depends_tasks(depends: &str) -> Vec<&str> {
    depends
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
        .filter_map(|word| word.split_once('.').map(|(task, _)| task))
        .collect()
}

/// Task names in `tasks['X']` of an expression.
fn expression_tasks(expr: &str) -> Vec<&str> {
    expr.split("tasks['")
        .skip(1)
        .filter_map(|rest| rest.split_once("']").map(|(name, _)| name))
        .collect()
}

#[test]
fn argo_references_in_every_manifest_resolve() {
    let mut failures = Vec::new();
    let cases = render_all(&mut failures);
    let mut gates = 0;
    for case in &cases {
        let declared = arguments(&case.manifest);
        let templates = templates(&case.manifest);
        let template_names: BTreeSet<&str> = templates
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        let entry = case.manifest["spec"]["entrypoint"]
            .as_str()
            .unwrap_or_default();
        if !template_names.contains(entry) {
            failures.push(format!(
                "{}: entrypoint `{entry}` is not a template",
                case.what
            ));
        }
        // The DAG: templates exist, `depends` names earlier tasks, `when` reads ancestors' outputs.
        let dag: Vec<&Value> = templates
            .iter()
            .flat_map(|t| {
                t["dag"]["tasks"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
            })
            .collect();
        if dag.is_empty() {
            failures.push(format!("{}: the DAG has no tasks", case.what));
        }
        let mut ancestors: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
        for task in &dag {
            let name = task["name"].as_str().unwrap_or_default();
            let target = task["template"].as_str().unwrap_or_default();
            if !template_names.contains(target) {
                failures.push(format!(
                    "{}: task {name} uses missing template `{target}`",
                    case.what
                ));
            }
            let mut mine = BTreeSet::new();
            for dep in depends_tasks(task["depends"].as_str().unwrap_or_default()) {
                match ancestors.get(dep) {
                    Some(theirs) => {
                        mine.insert(dep);
                        mine.extend(theirs.iter().copied());
                    }
                    None => failures.push(format!(
                        "{}: task {name} depends on `{dep}`, not an earlier task",
                        case.what
                    )),
                }
            }
            if let Some(when) = task.get("when") {
                gates += 1;
                let when = when.as_str().unwrap_or_default();
                for used in expression_tasks(when) {
                    if !mine.contains(used) {
                        failures.push(format!(
                            "{}: task {name}: `when` reads task `{used}`, which is not an ancestor",
                            case.what
                        ));
                    }
                }
            }
            ancestors.insert(name, mine);
        }
        // Everywhere else: {{workflow.parameters.X}} and toJson(...) name declared arguments only.
        for (path, s) in strings(&case.manifest) {
            if path.is(&[
                Some("spec"),
                Some("arguments"),
                Some("parameters"),
                None,
                Some("value"),
            ]) {
                continue; // values are data (scripts, env values), never interpreted by Argo
            }
            if path.is(&[
                Some("spec"),
                Some("templates"),
                None,
                Some("dag"),
                Some("tasks"),
                None,
                Some("when"),
            ]) {
                continue; // checked above
            }
            for tag in argo_tags(s) {
                let name = tag.strip_prefix("workflow.parameters.").or_else(|| {
                    tag.strip_prefix("=toJson(workflow.parameters['")
                        .and_then(|r| r.strip_suffix("'])"))
                });
                match name {
                    Some(name) if declared.contains_key(name) => {}
                    Some(_) => failures.push(format!(
                        "{}: {path}: {{{{{tag}}}}} names an undeclared argument",
                        case.what
                    )),
                    None => failures.push(format!(
                        "{}: {path}: unexpected Argo tag {{{{{}}}}}",
                        case.what,
                        ferry_tests::clip(tag)
                    )),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        gates > 0,
        "no example produced an `if.metrics` gate (`when`)"
    );
}
