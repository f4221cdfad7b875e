//! The context of one step: its pod (image, env, resources, volumes, placement) and, for a
//! distributed step, the inner PyTorchJob or JobSet (part of `context`).

use serde_json::{Map, Value, json};

use super::*;

pub(in crate::render) fn step_context(
    p: &Pipeline,
    step: &Step,
    profile: &Profile,
) -> Result<(Value, Option<Value>), RenderError> {
    let distributed = is_distributed(step);
    let pod = pod_parts(p, step, profile, distributed)?;
    let deadline = step.timeout_secs.map(|s| s.to_string());
    let retries = (step.retries > 0).then(|| step.retries.to_string());
    let mut out = json!({
        "template": template_name(step),
        "pod_labels": pod.pod_labels,
        "deadline": deadline,
        "retries": retries,
        "resource": null,
    });
    if distributed {
        let job = job_context(step, profile, &pod);
        return Ok((out, Some(job)));
    }
    let fields = json!({
        "priority_class": pod.priority_class,
        "node_selector": (!pod.node_selector.is_empty()).then_some(&pod.node_selector),
        "tolerations": (!pod.tolerations.is_empty()).then_some(&pod.tolerations),
        "git": {"repo": arg_ref(ARG_REPO), "revision": arg_ref(ARG_SHA), "secret": profile.git_credentials_secret},
        "metrics": step.metrics.as_ref().map(|m| metrics_path(m)),
        "volumes": pod.volumes,
        "image": pod.image,
        "wrapper": WRAPPER,
        "env": pod.env,
        "resources": pod.resources,
        "mounts": pod.mounts,
    });
    if let (Value::Object(o), Value::Object(f)) = (&mut out, fields) {
        o.extend(f);
    }
    Ok((out, None))
}

/// A metrics path as the pod sees it: relative paths are under the checkout at `/src`.
fn metrics_path(m: &str) -> String {
    if m.starts_with('/') {
        m.to_owned()
    } else {
        format!("/src/{}", m.trim_start_matches("./"))
    }
}

/// A step's pod labels. The run's own labels (run id, sha, project) reach Argo's pods through
/// `spec.podMetadata`, which the run template sets.
fn pod_labels(p: &Pipeline, step: &Step) -> Value {
    let mut l = Map::new();
    l.insert("ferry.dev/pipeline".into(), p.name.clone().into());
    l.insert("ferry.dev/step".into(), step.name.clone().into());
    l.insert("ferry.dev/kind".into(), kind_word(step.kind).into());
    if let Some(q) = &step.queue {
        l.insert("kueue.x-k8s.io/queue-name".into(), q.clone().into());
    }
    Value::Object(l)
}

fn pod_parts(
    p: &Pipeline,
    step: &Step,
    profile: &Profile,
    distributed: bool,
) -> Result<PodParts, RenderError> {
    let pod_labels = pod_labels(p, step);
    let (mut node_selector, mut tolerations) = (std::collections::BTreeMap::new(), Vec::new());
    let mut resources = Map::new();
    let r = &step.resources;
    if let Some(type_name) = &r.gpu_type {
        let t = profile.gpu_types.get(type_name).ok_or_else(|| {
            RenderError::Profile(format!("GPU type `{type_name}` is not in the profile"))
        })?;
        if r.gpu > 0 {
            resources.insert(t.resource.clone(), r.gpu.to_string().into());
        }
        if let Some(m) = &r.gpu_memory {
            resources.insert(
                "nvidia.com/gpumem".into(),
                m.mebibytes_ceil().to_string().into(),
            );
        }
        if let Some(c) = r.gpu_cores {
            resources.insert("nvidia.com/gpucores".into(), c.to_string().into());
        }
        node_selector.extend(t.node_selector.clone());
        tolerations.extend(
            t.tolerations
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or(Value::Null)),
        );
    }
    if let Some(c) = &r.cpu {
        resources.insert("cpu".into(), c.as_str().into());
    }
    if let Some(m) = &r.memory {
        resources.insert("memory".into(), m.as_str().into());
    }
    if let Some(g) = &step.node_group {
        let group = profile.node_groups.get(g).ok_or_else(|| {
            RenderError::Profile(format!("node group `{g}` is not in the profile"))
        })?;
        node_selector.extend(group.node_selector.clone());
        tolerations.extend(
            group
                .tolerations
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or(Value::Null)),
        );
    }
    let priority_class = match &step.priority {
        Some(level) => Some(profile.priorities.get(level).cloned().ok_or_else(|| {
            RenderError::Profile(format!("priority `{level}` is not in the profile"))
        })?),
        None => None,
    };
    let (volumes, mounts) = volumes(p, step, profile, distributed)?;
    let jobset = distributed && distributed_kind(profile) == Distributed::Jobset;
    Ok(PodParts {
        image: image_of(step, profile)?,
        env: env(p, step, distributed, jobset),
        resources,
        volumes,
        mounts,
        node_selector,
        tolerations,
        priority_class,
        pod_labels,
    })
}

/// How a pod spec refers to a workflow argument. Inside a distributed step's manifest (a string
/// that Argo substitutes into), the value must arrive JSON-encoded, so it is a `toJson` expression
/// standing where a JSON value goes. Here it is an object `{"$ferry_arg": NAME}`, which no value
/// from a user can be (they are all strings); `render::write_manifest` writes it as the expression.
fn value_of(arg: &str, distributed: bool) -> Value {
    if distributed {
        json!({ super::super::ARG_KEY: arg })
    } else {
        Value::String(arg_ref(arg))
    }
}

fn env(p: &Pipeline, step: &Step, distributed: bool, jobset: bool) -> Vec<Value> {
    let plain = |name: &str, value: String| json!({"name": name, "value": value});
    let mut env = vec![
        json!({"name": "FERRY_REPO", "value": value_of(ARG_REPO, distributed)}),
        json!({"name": "FERRY_SHA", "value": value_of(ARG_SHA, distributed)}),
        json!({"name": "FERRY_REF", "value": value_of(ARG_REF, distributed)}),
        json!({"name": "FERRY_BRANCH", "value": value_of(ARG_BRANCH, distributed)}),
        json!({"name": "FERRY_TAG", "value": value_of(ARG_TAG, distributed)}),
        json!({"name": "FERRY_MR", "value": value_of(ARG_MR, distributed)}),
        json!({"name": "FERRY_EVENT", "value": value_of(ARG_EVENT, distributed)}),
        json!({"name": "FERRY_RUN_ID", "value": value_of(ARG_RUN_ID, distributed)}),
        plain("FERRY_PIPELINE", p.name.clone()),
        plain("FERRY_STEP", step.name.clone()),
        plain("FERRY_WORKSPACE", "/workspace".to_owned()),
        plain(
            "FERRY_SCRATCH",
            if step.resources.scratch.is_some() {
                "/scratch"
            } else {
                "/tmp"
            }
            .to_owned(),
        ),
        plain(
            "FERRY_METRICS_FILE",
            step.metrics
                .as_deref()
                .map(metrics_path)
                .unwrap_or_default(),
        ),
        json!({"name": "FERRY_SCRIPT", "value": value_of(&script_arg(step), distributed)}),
    ];
    for name in p.params.keys() {
        env.push(json!({"name": format!("FERRY_PARAM_{}", name.to_uppercase()), "value": value_of(name, distributed)}));
    }
    if distributed {
        env.push(plain(
            "NPROC_PER_NODE",
            step.resources.gpu.max(1).to_string(),
        ));
    }
    if jobset {
        // The training operator sets these for a PyTorchJob; a JobSet's pods get them from us.
        // NODE_RANK comes from JOB_COMPLETION_INDEX in the wrapper.
        env.push(json!({"name": "MASTER_ADDR", "value": value_of(&master_arg(step), true)}));
        env.push(plain("MASTER_PORT", "29500".to_owned()));
        env.push(plain("WORLD_SIZE", step.nodes.to_string()));
    }
    for key in step.env.keys() {
        env.push(json!({"name": key, "value": value_of(&env_arg(step, key), distributed)}));
    }
    for (key, s) in &step.secret_env {
        env.push(
            json!({"name": key, "valueFrom": {"secretKeyRef": {"name": s.name, "key": s.key}}}),
        );
    }
    env
}

fn volumes(
    p: &Pipeline,
    step: &Step,
    profile: &Profile,
    distributed: bool,
) -> Result<(Vec<Value>, Vec<Value>), RenderError> {
    let mut vols = Vec::new();
    let mut mounts = Vec::new();
    match (&p.workspace, distributed) {
        // The pods of a distributed step are not Argo's: they mount the claim Argo made from the
        // `workspace` volumeClaimTemplate, which Argo names `<workflow name>-workspace`.
        (Some(_), true) => vols.push(json!({"name": "workspace", "persistentVolumeClaim": {"claimName": value_of(ARG_WORKSPACE_CLAIM, true)}})),
        (Some(_), false) => {}
        (None, _) => vols.push(json!({"name": "workspace", "emptyDir": {}})),
    }
    mounts.push(json!({"name": "workspace", "mountPath": "/workspace"}));
    if distributed {
        vols.push(json!({"name": "src", "emptyDir": {}}));
        mounts.push(json!({"name": "src", "mountPath": "/src"}));
    }
    if let Some(shm) = &step.resources.shm {
        vols.push(
            json!({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm.as_str()}}),
        );
        mounts.push(json!({"name": "dshm", "mountPath": "/dev/shm"}));
    }
    if let Some(scratch) = &step.resources.scratch {
        vols.push(scratch_volume(
            scratch.as_str(),
            profile.scratch_storage_class.as_deref(),
        ));
        mounts.push(json!({"name": "scratch", "mountPath": "/scratch"}));
    }
    for (i, v) in step.volumes.iter().enumerate() {
        let (claim, mount, read_only) = volume_preset(v, profile)?;
        let name = format!("vol-{i}");
        vols.push(json!({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}));
        mounts.push(json!({"name": name, "mountPath": mount, "readOnly": read_only}));
    }
    Ok((vols, mounts))
}

fn scratch_volume(size: &str, class: Option<&str>) -> Value {
    match class {
        Some(class) => json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": {"requests": {"storage": size}}
        }}}}),
        None => json!({"name": "scratch", "emptyDir": {"sizeLimit": size}}),
    }
}

/// The context of the inner job of a distributed step.
fn job_context(step: &Step, profile: &Profile, pod: &PodParts) -> Value {
    // Pods of the inner job are not Argo's: they carry the run id label themselves.
    let mut labels = pod.pod_labels.clone();
    if let Value::Object(l) = &mut labels {
        l.insert("ferry.dev/run-id".into(), value_of(ARG_RUN_ID, true));
    }
    let main = json!({
        "name": "pytorch",
        "image": pod.image,
        "command": ["sh", "-c", WRAPPER, "ferry-step"],
        "workingDir": "/src",
        "env": pod.env,
        "resources": {"requests": pod.resources, "limits": pod.resources},
        "volumeMounts": pod.mounts,
    });
    let clone = json!({
        "name": "source",
        "image": profile.git_image.clone().unwrap_or_else(|| crate::profile::DEFAULT_GIT_IMAGE.to_owned()),
        "command": ["sh", "-ec", CLONE],
        "env": git_env(profile),
        "volumeMounts": [{"name": "src", "mountPath": "/src"}],
    });
    let mut spec = Map::new();
    spec.insert("initContainers".into(), json!([clone]));
    spec.insert("containers".into(), json!([main]));
    spec.insert("volumes".into(), json!(pod.volumes));
    if !pod.node_selector.is_empty() {
        spec.insert("nodeSelector".into(), json!(pod.node_selector));
    }
    if !pod.tolerations.is_empty() {
        spec.insert("tolerations".into(), json!(pod.tolerations));
    }
    if let Some(pc) = &pod.priority_class {
        spec.insert("priorityClassName".into(), pc.clone().into());
    }
    if !profile.image_pull_secrets.is_empty() {
        let secrets: Vec<Value> = profile
            .image_pull_secrets
            .iter()
            .map(|s| json!({"name": s}))
            .collect();
        spec.insert("imagePullSecrets".into(), secrets.into());
    }
    json!({
        "name": value_of(&job_arg(step), true),
        "labels": labels,
        "deadline": step.timeout_secs.is_some(),
        "deadline_secs": step.timeout_secs,
        "nproc": step.resources.gpu.max(1).to_string(),
        "nodes": step.nodes,
        "workers": step.nodes - 1,
        "pod": {"metadata": {"labels": labels}, "spec": spec},
        "kind": match distributed_kind(profile) { Distributed::Pytorchjob => "pytorchjob", Distributed::Jobset => "jobset" },
    })
}

/// Clones the repository at the run's commit into `/src` (init container of distributed pods).
const CLONE: &str = r#"git config --global credential.helper '!f() { echo "username=${GIT_USERNAME:-}"; echo "password=${GIT_PASSWORD:-}"; }; f'
git init -q /src
git -C /src fetch -q --depth 1 "$FERRY_REPO" "$FERRY_SHA"
git -C /src checkout -q --detach FETCH_HEAD
"#;

fn git_env(profile: &Profile) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "FERRY_REPO", "value": value_of(ARG_REPO, true)}),
        json!({"name": "FERRY_SHA", "value": value_of(ARG_SHA, true)}),
    ];
    if let Some(secret) = &profile.git_credentials_secret {
        for (var, key) in [("GIT_USERNAME", "username"), ("GIT_PASSWORD", "password")] {
            env.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": true}}}));
        }
    }
    env
}
