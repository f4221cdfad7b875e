//! The renderer's self-check: a rendered Workflow must be structurally sound before it leaves.
//!
//! This catches template mistakes (including in a `--templates` override) before the API server
//! or Argo's controller would: names that Kubernetes or Argo reject, DAG tasks that name unknown
//! templates or tasks, and cycles. Schema validity is tested against Argo's own schemas in tests.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::pipeline::{is_dns_label, is_dns_subdomain};

/// Checks a rendered Workflow; the error says what is wrong and where.
pub fn check_workflow(wf: &Value) -> Result<(), String> {
    if wf["apiVersion"] != "argoproj.io/v1alpha1" || wf["kind"] != "Workflow" {
        return Err("not an argoproj.io/v1alpha1 Workflow".into());
    }
    let name = wf["metadata"]["name"]
        .as_str()
        .ok_or("metadata.name is missing")?;
    if !is_dns_subdomain(name) || name.len() > 63 {
        return Err(format!(
            "metadata.name `{name}` is not a valid workflow name"
        ));
    }
    check_labels(&wf["metadata"]["labels"], "metadata.labels")?;
    check_labels(
        &wf["spec"]["podMetadata"]["labels"],
        "spec.podMetadata.labels",
    )?;
    let templates = wf["spec"]["templates"]
        .as_array()
        .ok_or("spec.templates is missing")?;
    let mut names = BTreeSet::new();
    for (i, t) in templates.iter().enumerate() {
        let n = t["name"]
            .as_str()
            .ok_or_else(|| format!("spec.templates[{i}].name is missing"))?;
        if !is_dns_label(n) {
            return Err(format!("template name `{n}` is not valid"));
        }
        if !names.insert(n) {
            return Err(format!("template `{n}` is defined twice"));
        }
        check_labels(
            &t["metadata"]["labels"],
            &format!("spec.templates[{i}].metadata.labels"),
        )?;
    }
    let entry = wf["spec"]["entrypoint"]
        .as_str()
        .ok_or("spec.entrypoint is missing")?;
    let dag = templates
        .iter()
        .find(|t| t["name"] == entry)
        .ok_or_else(|| format!("entrypoint `{entry}` is not a template"))?;
    let tasks = dag["dag"]["tasks"]
        .as_array()
        .ok_or("the entrypoint is not a DAG")?;
    check_dag(tasks, &names)
}

fn check_dag(tasks: &[Value], templates: &BTreeSet<&str>) -> Result<(), String> {
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in tasks {
        let name = t["name"].as_str().ok_or("a DAG task has no name")?;
        if !is_dns_label(name) {
            return Err(format!("task name `{name}` is not valid"));
        }
        let template = t["template"].as_str().unwrap_or_default();
        if !templates.contains(template) {
            return Err(format!("task `{name}` uses unknown template `{template}`"));
        }
        let deps = t["depends"].as_str().map(depends_names).unwrap_or_default();
        if edges.insert(name, deps).is_some() {
            return Err(format!("task `{name}` is defined twice"));
        }
    }
    for (task, deps) in &edges {
        if let Some(d) = deps.iter().find(|d| !edges.contains_key(*d)) {
            return Err(format!("task `{task}` depends on unknown task `{d}`"));
        }
    }
    find_cycle(&edges).map_or(Ok(()), |t| {
        Err(format!("the DAG has a cycle through `{t}`"))
    })
}

/// Task names in a `depends` expression like `a.Succeeded && (b || c.Failed)`.
fn depends_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| c.is_whitespace() || "()&|!".contains(c))
        .filter(|w| !w.is_empty())
        .map(|w| w.split('.').next().unwrap_or(w))
        .collect()
}

fn find_cycle<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<&'a str> {
    // Kahn's algorithm: whatever cannot be ordered is on or behind a cycle.
    let mut indegree: BTreeMap<&str, usize> = edges.iter().map(|(k, v)| (*k, v.len())).collect();
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(k, _)| *k)
        .collect();
    while let Some(done) = ready.pop() {
        for (task, deps) in edges {
            if deps.contains(&done) {
                let d = indegree.get_mut(task)?;
                *d -= 1;
                if *d == 0 {
                    ready.push(task);
                }
            }
        }
        indegree.remove(done);
    }
    indegree.keys().next().copied()
}

/// Label keys (optional DNS prefix, a name of at most 63) and values (at most 63, alphanumeric ends).
fn check_labels(labels: &Value, at: &str) -> Result<(), String> {
    let Some(map) = labels.as_object() else {
        return Ok(());
    };
    for (k, v) in map {
        let (prefix, name) = k
            .rsplit_once('/')
            .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
        let name_ok = !name.is_empty() && name.len() <= 63 && label_chars(name);
        if !name_ok || prefix.is_some_and(|p| !is_dns_subdomain(p)) {
            return Err(format!("{at}: `{k}` is not a valid label key"));
        }
        if is_argument(v) {
            continue;
        }
        let v = v
            .as_str()
            .ok_or_else(|| format!("{at}.{k}: label values are strings"))?;
        if v.len() > 63 || !(v.is_empty() || label_chars(v)) {
            return Err(format!("{at}.{k}: `{v}` is not a valid label value"));
        }
    }
    Ok(())
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// True for the `{"$ferry_arg": NAME}` objects that stand for a workflow argument in an inner
/// manifest (their values are checked where the run's arguments are made).
fn is_argument(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get(super::ARG_KEY).is_some_and(Value::is_string))
}

/// Checks the inner job of a distributed step.
pub fn check_job(job: &Value) -> Result<(), String> {
    let name = &job["metadata"]["name"];
    match name.as_str() {
        Some(n) if !is_dns_label(n) => return Err(format!("job name `{n}` is not valid")),
        Some(_) => {}
        None if is_argument(name) => {}
        None => return Err("job metadata.name is missing".into()),
    }
    check_labels(&job["metadata"]["labels"], "job metadata.labels")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wf(tasks: Value) -> Value {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "ferry-1"},
               "spec": {"entrypoint": "pipeline", "templates": [
                   {"name": "pipeline", "dag": {"tasks": tasks}}, {"name": "step-a"}, {"name": "step-b"}]}})
    }

    #[test]
    fn accepts_a_sound_dag() {
        let w = wf(
            json!([{"name": "a", "template": "step-a"}, {"name": "b", "template": "step-b", "depends": "a.Succeeded"}]),
        );
        assert_eq!(check_workflow(&w), Ok(()));
    }

    #[test]
    fn rejects_unknown_dependency_cycle_and_template() {
        let unknown = wf(json!([{"name": "a", "template": "step-a", "depends": "x.Succeeded"}]));
        assert_eq!(
            check_workflow(&unknown),
            Err("task `a` depends on unknown task `x`".into())
        );
        let cycle = wf(
            json!([{"name": "a", "template": "step-a", "depends": "b.Succeeded"},
                              {"name": "b", "template": "step-b", "depends": "a.Succeeded"}]),
        );
        assert_eq!(
            check_workflow(&cycle),
            Err("the DAG has a cycle through `a`".into())
        );
        let template = wf(json!([{"name": "a", "template": "step-z"}]));
        assert_eq!(
            check_workflow(&template),
            Err("task `a` uses unknown template `step-z`".into())
        );
    }

    #[test]
    fn rejects_bad_names_and_labels() {
        let mut w = wf(json!([]));
        w["metadata"]["name"] = json!("Ferry_1");
        assert_eq!(
            check_workflow(&w),
            Err("metadata.name `Ferry_1` is not a valid workflow name".into())
        );
        let mut w = wf(json!([]));
        w["metadata"]["labels"] = json!({"ferry.dev/ref": "a b"});
        assert_eq!(
            check_workflow(&w),
            Err("metadata.labels.ferry.dev/ref: `a b` is not a valid label value".into())
        );
    }
}
