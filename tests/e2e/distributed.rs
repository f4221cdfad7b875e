//! Distributed steps (`nodes > 1`): what the pods of the inner PyTorchJob / JobSet get.
//!
//! PIPELINE-SPEC: "N pods that start together (one master, N-1 workers) with `MASTER_ADDR`,
//! `MASTER_PORT`, `WORLD_SIZE`, `NODE_RANK` and `NPROC_PER_NODE` set, so `torchrun` works
//! unchanged", and `FERRY_WORKSPACE` is the run's shared workspace on every executor.

use ferry_engine::profile::Distributed;
use ferry_tests::{
    Variant, examples, profile_with, render, substitute_arguments, templates, variant_context,
};
use serde_json::Value;

/// One pod spec of a distributed step.
struct Pod {
    what: String,
    spec: Value,
    /// The outer workflow has a `workspace` volume claim template.
    has_workspace: bool,
}

/// The pod specs inside every resource step of every example, for one backend.
fn pods(distributed: Distributed) -> Vec<Pod> {
    let profile = profile_with(distributed);
    let mut out = Vec::new();
    for ex in examples() {
        let pipeline = ex.load();
        let ctx = variant_context(&pipeline, Variant::PushMain);
        let manifest = render(&pipeline, &profile, &ctx, &ex.file).manifest;
        let has_workspace = manifest["spec"]["volumeClaimTemplates"]
            .as_array()
            .is_some_and(|v| v.iter().any(|c| c["metadata"]["name"] == "workspace"));
        for t in templates(&manifest) {
            let Some(text) = t["resource"]["manifest"].as_str() else {
                continue;
            };
            // As Argo will see it, with the run's arguments substituted.
            let substituted = substitute_arguments(text, &manifest);
            let inner: Value = serde_json::from_str(&substituted).expect("inner manifest is JSON");
            let mut specs = Vec::new();
            collect_pod_specs(&inner, &mut specs);
            assert!(
                !specs.is_empty(),
                "{}: {} has no pod spec",
                ex.file,
                t["name"]
            );
            for spec in specs {
                out.push(Pod {
                    what: format!("{} {} ({distributed:?})", ex.stem, t["name"]),
                    spec,
                    has_workspace,
                });
            }
        }
    }
    assert!(!out.is_empty(), "no example has a distributed step");
    out
}

fn collect_pod_specs(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) if map.contains_key("containers") => out.push(v.clone()),
        Value::Object(map) => map.values().for_each(|x| collect_pod_specs(x, out)),
        Value::Array(items) => items.iter().for_each(|x| collect_pod_specs(x, out)),
        _ => {}
    }
}

/// The main container (the one running the step's script).
fn main_container(pod: &Pod) -> &Value {
    pod.spec["containers"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|c| {
                c["env"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["name"] == "FERRY_SCRIPT"))
            })
        })
        .unwrap_or_else(|| panic!("{}: no container gets FERRY_SCRIPT", pod.what))
}

fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

fn command_text(container: &Value) -> String {
    container["command"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .chain(
            container["args"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pytorchjob_pods_get_nproc_per_node_and_node_rank() {
    // The training operator sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK itself.
    for pod in pods(Distributed::Pytorchjob) {
        let c = main_container(&pod);
        assert!(
            env_names(c).contains(&"NPROC_PER_NODE"),
            "{}: no NPROC_PER_NODE",
            pod.what
        );
        let cmd = command_text(c);
        assert!(
            cmd.contains("NODE_RANK=") && cmd.contains("RANK"),
            "{}: NODE_RANK is not derived from RANK:\n{cmd}",
            pod.what
        );
    }
}

#[test]
fn jobset_pods_get_the_torchrun_variables() {
    // JobSet (unlike the training operator) sets none of these: ferry has to.
    let mut missing = Vec::new();
    for pod in pods(Distributed::Jobset) {
        let c = main_container(&pod);
        let env = env_names(c);
        let cmd = command_text(c);
        let defined = |name: &str| env.contains(&name) || cmd.contains(&format!("export {name}="));
        for name in ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NPROC_PER_NODE"] {
            if !defined(name) {
                missing.push(format!("{}: {name} is not set", pod.what));
            }
        }
        let rank_from_index = cmd.contains("JOB_COMPLETION_INDEX")
            || c["env"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e["name"] == "NODE_RANK" && e.to_string().contains("job-completion-index")
                })
            });
        if !rank_from_index {
            missing.push(format!(
                "{}: NODE_RANK does not come from the job completion index",
                pod.what
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn distributed_pods_share_the_run_workspace() {
    let mut wrong = Vec::new();
    for distributed in [Distributed::Pytorchjob, Distributed::Jobset] {
        for pod in pods(distributed).into_iter().filter(|p| p.has_workspace) {
            let c = main_container(&pod);
            let mount = c["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["mountPath"] == "/workspace"))
                .unwrap_or_else(|| panic!("{}: nothing is mounted at /workspace", pod.what));
            let volume = pod.spec["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
                .unwrap_or_else(|| panic!("{}: volume {} is not defined", pod.what, mount["name"]));
            if volume["persistentVolumeClaim"]["claimName"] != "ferry-42-workspace" {
                wrong.push(format!(
                    "{}: /workspace is {volume}, not the run's workspace claim",
                    pod.what
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
