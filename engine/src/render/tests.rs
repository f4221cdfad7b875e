//! Renderer tests: each semantic of PIPELINE-SPEC.md, read off the manifest.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::pipeline::{self, EventKind};
use crate::profile::{Distributed, Profile};

const PROFILE: &str = r#"
gpu_types:
  A100-80G:
    resource: nvidia.com/gpu
    node_selector: { nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB }
    tolerations: [{ key: nvidia.com/gpu, operator: Exists, effect: NoSchedule }]
  A100-shared: { resource: nvidia.com/gpu, vgpu: hami }
  MI250X: { resource: amd.com/gpu }
priorities: { normal: ferry-normal, high: ferry-high }
queues: [team-a]
node_groups: { training: { node_selector: { pool: training } } }
volumes: { datasets: { claim: share, mount: /share, read_only: true } }
image_pull_secrets: [harbor-cred]
git_credentials_secret: ferry-git
scratch_storage_class: local-nvme
defaults: { queue: team-a, priority: normal, train_node_group: training }
"#;

const PIPELINE: &str = r#"
version: 1
name: demo
params: { lr: "0.001" }
defaults: { image: "img:1", env: { WANDB_MODE: offline }, secret_env: { WANDB_API_KEY: wandb/api-key } }
workspace: { size: 50Gi, storage_class: fast }
steps:
  - name: train
    kind: train
    run: python train.py --lr "$FERRY_PARAM_LR"
    resources: { gpu: 4, gpu_type: A100-80G, cpu: 16, memory: 64Gi, shm: 16Gi, scratch: 200Gi }
    volumes: [{ preset: datasets }]
    timeout: 12h
  - name: evaluate
    kind: evaluate
    needs: [train]
    run: python eval.py
    metrics: /workspace/metrics.json
    resources: { gpu: 1, gpu_type: A100-shared, gpu_memory: 10Gi, gpu_cores: 30 }
  - name: deploy
    kind: deploy
    needs: [evaluate]
    run: ./deploy.sh
    if: { branches: [main], metrics: "accuracy >= 0.92" }
"#;

fn profile() -> Profile {
    Profile::from_yaml("profile.yaml", PROFILE).expect("valid profile")
}

fn ctx(event: EventKind, branch: &str) -> RunContext {
    RunContext {
        run_id: 42,
        project: "ml/resnet".into(),
        repo_url: "https://gitlab.example.com/ml/resnet.git".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        git_ref: format!("refs/heads/{branch}"),
        branch: Some(branch.into()),
        tag: None,
        merge_request: (event == EventKind::MergeRequest).then_some(7),
        event,
        params: BTreeMap::from([("lr".to_owned(), "0.001".to_owned())]),
        namespace: Some("ml-team".into()),
        dashboard_url: Some("http://127.0.0.1:8080/runs/42".into()),
    }
}

fn render_with(text: &str, profile: &Profile, ctx: &RunContext) -> Rendered {
    let p = pipeline::load("demo.yaml", text, Some(profile)).expect("valid pipeline");
    Renderer::embedded()
        .render(&p, profile, ctx)
        .expect("renders")
}

fn template<'a>(wf: &'a Value, name: &str) -> &'a Value {
    wf["spec"]["templates"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .expect(name)
}

fn env<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["container"]["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .expect(name)
}

#[test]
fn names_labels_and_annotations() {
    let wf = render_with(PIPELINE, &profile(), &ctx(EventKind::Push, "main")).manifest;
    assert_eq!(wf["metadata"]["name"], "ferry-42");
    assert_eq!(wf["metadata"]["namespace"], "ml-team");
    assert_eq!(wf["metadata"]["labels"]["ferry.dev/run-id"], "42");
    assert_eq!(wf["metadata"]["labels"]["ferry.dev/project"], "ml-resnet");
    assert_eq!(
        wf["metadata"]["labels"]["ferry.dev/sha"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        wf["metadata"]["annotations"]["ferry.dev/sha"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        wf["metadata"]["annotations"]["ferry.dev/ref"],
        "refs/heads/main"
    );
    assert_eq!(
        wf["metadata"]["annotations"]["ferry.dev/dashboard"],
        "http://127.0.0.1:8080/runs/42"
    );
    assert_eq!(
        wf["spec"]["imagePullSecrets"],
        json!([{"name": "harbor-cred"}])
    );
}

#[test]
fn a_sha256_commit_id_fits_the_label_and_stays_whole_in_the_annotation() {
    let sha = "0123456789abcdef".repeat(4);
    let mut c = ctx(EventKind::Push, "main");
    c.sha = sha.clone();
    let wf = render_with(PIPELINE, &profile(), &c).manifest;
    assert_eq!(wf["metadata"]["labels"]["ferry.dev/sha"], sha[..40]);
    assert_eq!(
        wf["spec"]["podMetadata"]["labels"]["ferry.dev/sha"],
        sha[..40]
    );
    assert_eq!(wf["metadata"]["annotations"]["ferry.dev/sha"], sha);
    let arg = wf["spec"]["arguments"]["parameters"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "ferry-sha"))
        .expect("the ferry-sha argument");
    assert_eq!(arg["value"], sha, "pods check out the whole commit id");
}

#[test]
fn gpu_resources_placement_and_volumes() {
    let wf = render_with(PIPELINE, &profile(), &ctx(EventKind::Push, "main")).manifest;
    let train = template(&wf, "step-train");
    let res = &train["container"]["resources"];
    assert_eq!(
        res["limits"],
        json!({"nvidia.com/gpu": "4", "cpu": "16", "memory": "64Gi"})
    );
    assert_eq!(res["requests"], res["limits"]);
    assert_eq!(
        train["nodeSelector"],
        json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "training"})
    );
    assert_eq!(
        train["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(train["priorityClassName"], "ferry-normal");
    assert_eq!(
        train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
        "team-a"
    );
    assert_eq!(
        train["retryStrategy"],
        json!({"limit": "1", "retryPolicy": "Always"})
    );
    assert_eq!(train["activeDeadlineSeconds"], "43200");
    let vols = train["volumes"].as_array().expect("volumes");
    assert!(
        vols.contains(
            &json!({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
        )
    );
    assert!(vols.iter().any(|v| v["name"] == "scratch"
        && v["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "local-nvme"));
    assert!(vols.contains(
        &json!({"name": "vol-0", "persistentVolumeClaim": {"claimName": "share", "readOnly": true}})
    ));
    assert_eq!(
        wf["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );
    let git = &train["inputs"]["artifacts"][0];
    assert_eq!(git["path"], "/src");
    assert_eq!(git["git"]["revision"], "{{workflow.parameters.ferry-sha}}");
    let args = wf["spec"]["arguments"]["parameters"]
        .as_array()
        .expect("arguments");
    assert!(args.contains(
        &json!({"name": "ferry-sha", "value": "0123456789abcdef0123456789abcdef01234567"})
    ));
    assert_eq!(
        git["git"]["passwordSecret"],
        json!({"name": "ferry-git", "key": "password"})
    );
}

#[test]
fn hami_slices_in_mebibytes() {
    let wf = render_with(PIPELINE, &profile(), &ctx(EventKind::Push, "main")).manifest;
    let eval = template(&wf, "step-evaluate");
    assert_eq!(
        eval["container"]["resources"]["limits"],
        json!({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "10240", "nvidia.com/gpucores": "30"})
    );
    assert_eq!(
        eval["outputs"]["parameters"][0],
        json!({"name": "metrics", "valueFrom": {"path": "/workspace/metrics.json", "default": "{}"}})
    );
}

#[test]
fn values_reach_steps_only_as_environment() {
    let wf = render_with(PIPELINE, &profile(), &ctx(EventKind::Push, "main")).manifest;
    let train = template(&wf, "step-train");
    assert_eq!(
        env(train, "FERRY_PARAM_LR")["value"],
        "{{workflow.parameters.lr}}"
    );
    assert_eq!(
        env(train, "FERRY_SCRIPT")["value"],
        "{{workflow.parameters.ferry-script-train}}"
    );
    assert_eq!(
        env(train, "WANDB_API_KEY")["valueFrom"],
        json!({"secretKeyRef": {"name": "wandb", "key": "api-key"}})
    );
    assert_eq!(
        env(train, "FERRY_RUN_ID")["value"],
        "{{workflow.parameters.ferry-run-id}}"
    );
    assert_eq!(
        wf["spec"]["podMetadata"]["labels"]["ferry.dev/run-id"], "42",
        "pods get the run's labels"
    );
    let args = wf["spec"]["arguments"]["parameters"]
        .as_array()
        .expect("arguments");
    assert!(args.contains(&json!({"name": "lr", "value": "0.001"})));
    assert!(args.contains(
        &json!({"name": "ferry-script-train", "value": "python train.py --lr \"$FERRY_PARAM_LR\""})
    ));
    let command = train["container"]["command"].to_string();
    assert!(
        !command.contains("train.py"),
        "the script is not pasted into the command"
    );
}

#[test]
fn dag_dependencies_and_metrics_gate() {
    let wf = render_with(PIPELINE, &profile(), &ctx(EventKind::Push, "main")).manifest;
    let tasks = &template(&wf, "pipeline")["dag"]["tasks"];
    assert_eq!(tasks[1]["depends"], "train.Succeeded");
    assert_eq!(
        tasks[2]["when"],
        "{{=('accuracy' in sprig.fromJson(tasks['evaluate'].outputs.parameters['metrics']) && sprig.fromJson(tasks['evaluate'].outputs.parameters['metrics'])['accuracy'] >= 0.92)}}"
    );
}

#[test]
fn branch_gates_and_merge_requests_skip_deploy() {
    let feature = render_with(PIPELINE, &profile(), &ctx(EventKind::Push, "feature/x"));
    assert_eq!(
        feature.skipped,
        vec![SkippedStep {
            step: "deploy".into(),
            reason: "`if.branches` does not match the branch".into()
        }]
    );
    assert_eq!(
        template(&feature.manifest, "pipeline")["dag"]["tasks"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let mr = render_with(PIPELINE, &profile(), &ctx(EventKind::MergeRequest, "main"));
    assert_eq!(
        mr.skipped[0].reason,
        "`if.events` does not include merge_request"
    );
    let chained = PIPELINE.replace("    if: { branches: [main], metrics: \"accuracy >= 0.92\" }", "").replace(
        "  - name: deploy\n",
        "  - name: gate\n    kind: task\n    run: x\n    if: { branches: [main] }\n  - name: deploy\n",
    ).replace("needs: [evaluate]\n    run: ./deploy.sh", "needs: [gate]\n    run: ./deploy.sh");
    let skipped = render_with(&chained, &profile(), &ctx(EventKind::Push, "dev")).skipped;
    assert_eq!(
        skipped[1],
        SkippedStep {
            step: "deploy".into(),
            reason: "needs `gate`, which is skipped".into()
        }
    );
}

#[test]
fn distributed_steps_become_pytorchjobs_or_jobsets() {
    let text = PIPELINE.replace("    timeout: 12h", "    timeout: 12h\n    nodes: 2");
    let wf = render_with(&text, &profile(), &ctx(EventKind::Push, "main")).manifest;
    let train = template(&wf, "step-train");
    assert_eq!(train["resource"]["action"], "create");
    assert_eq!(
        train["resource"]["successCondition"],
        "status.replicaStatuses.Master.succeeded > 0"
    );
    let manifest = train["resource"]["manifest"].as_str().expect("manifest");
    assert!(
        manifest.contains(r#""value":{{=toJson(workflow.parameters['lr'])}}"#),
        "{manifest}"
    );
    let parsed: Value =
        serde_json::from_str(&strip_tags(manifest)).expect("JSON once tags are replaced");
    assert_eq!(parsed["kind"], "PyTorchJob");
    assert_eq!(
        parsed["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"],
        1
    );
    assert_eq!(
        parsed["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"],
        "pytorch"
    );
    let mut jobset = profile();
    jobset.distributed = Distributed::Jobset;
    let wf = render_with(&text, &jobset, &ctx(EventKind::Push, "main")).manifest;
    let manifest = template(&wf, "step-train")["resource"]["manifest"]
        .as_str()
        .expect("manifest")
        .to_owned();
    let parsed: Value = serde_json::from_str(&strip_tags(&manifest)).expect("JSON");
    assert_eq!(parsed["kind"], "JobSet");
    assert_eq!(
        parsed["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"],
        2
    );
}

fn strip_tags(manifest: &str) -> String {
    let mut out = String::new();
    let mut rest = manifest;
    while let Some(i) = rest.find("{{=") {
        out.push_str(&rest[..i]);
        out.push_str("\"\"");
        let end = rest[i..].find("}}").map_or(rest.len(), |e| i + e + 2);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_skeleton_is_reused_and_runs_differ_only_in_their_own_parts() {
    let renderer = Renderer::embedded();
    let p = pipeline::load("demo.yaml", PIPELINE, Some(&profile())).expect("valid");
    let a = renderer
        .render(&p, &profile(), &ctx(EventKind::Push, "main"))
        .expect("renders")
        .manifest;
    let mut other = ctx(EventKind::Push, "main");
    other.run_id = 43;
    other.sha = "fedcba9876543210fedcba9876543210fedcba98".into();
    let b = renderer
        .render(&p, &profile(), &other)
        .expect("renders")
        .manifest;
    assert_eq!(
        renderer.skeletons.lock().expect("lock").len(),
        1,
        "one skeleton for both runs"
    );
    assert_eq!(b["metadata"]["name"], "ferry-43");
    assert_eq!(a["spec"]["templates"], b["spec"]["templates"]);
    assert_ne!(a["spec"]["arguments"], b["spec"]["arguments"]);
    // A run whose gates skip a step needs (and caches) another skeleton.
    renderer
        .render(&p, &profile(), &ctx(EventKind::Push, "dev"))
        .expect("renders");
    assert_eq!(renderer.skeletons.lock().expect("lock").len(), 2);
    // Same text, another profile: another skeleton.
    let mut jobset = profile();
    jobset.distributed = Distributed::Jobset;
    renderer
        .render(&p, &jobset, &ctx(EventKind::Push, "main"))
        .expect("renders");
    assert_eq!(renderer.skeletons.lock().expect("lock").len(), 3);
}

#[test]
fn undeclared_parameters_are_refused() {
    let p = pipeline::load("demo.yaml", PIPELINE, Some(&profile())).expect("valid");
    let mut c = ctx(EventKind::Manual, "main");
    c.params.insert("batch".into(), "1".into());
    let err = Renderer::embedded()
        .render(&p, &profile(), &c)
        .expect_err("undeclared");
    assert_eq!(
        err.to_string(),
        "invalid run context: parameter `batch` is not declared by pipeline `demo`"
    );
}

#[test]
fn bad_context_is_refused() {
    let mut c = ctx(EventKind::Push, "main");
    c.sha = "HEAD; rm -rf /".into();
    let p = pipeline::load("demo.yaml", PIPELINE, Some(&profile())).expect("valid");
    let err = Renderer::embedded()
        .render(&p, &profile(), &c)
        .expect_err("bad sha");
    assert_eq!(
        err.to_string(),
        "invalid run context: `HEAD; rm -rf /` is not a commit SHA"
    );
}

#[test]
fn template_overrides_are_self_checked() {
    let dir = std::env::temp_dir().join(format!("ferry-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let broken = include_str!("../../../templates/workflow.json.hbs").replace(
        r#""template": {{q template}}"#,
        r#""template": "step-nowhere""#,
    );
    std::fs::write(dir.join("workflow.json.hbs"), broken).expect("write");
    let renderer = Renderer::from_dir(&dir).expect("compiles");
    assert_eq!(
        renderer.templates.names(),
        ["workflow"],
        "an override is compiled at once, the others when needed"
    );
    let p = pipeline::load("demo.yaml", PIPELINE, Some(&profile())).expect("valid");
    let err = renderer
        .render(&p, &profile(), &ctx(EventKind::Push, "main"))
        .expect_err("self-check");
    assert_eq!(
        err.to_string(),
        "rendered manifest failed its self-check: task `train` uses unknown template `step-nowhere`"
    );
    std::fs::write(dir.join("workflow.json.hbs"), "{{q nothing_here}}").expect("write");
    let err = Renderer::from_dir(&dir)
        .expect("compiles")
        .render(&p, &profile(), &ctx(EventKind::Push, "main"))
        .expect_err("strict");
    assert!(err.to_string().contains("nothing_here"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The directory the embedded templates are made from.
fn template_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"))
}

#[test]
fn the_compacted_embedded_templates_render_what_the_files_do() {
    let embedded = Renderer::embedded();
    embedded
        .templates
        .compile_all()
        .expect("every embedded template compiles");
    let files = Renderer::from_dir(template_dir()).expect("the files compile");
    let distributed = PIPELINE.replace("    timeout: 12h", "    timeout: 12h\n    nodes: 2");
    let mut jobset = profile();
    jobset.distributed = Distributed::Jobset;
    for (text, profile) in [
        (PIPELINE.to_owned(), profile()),
        (distributed.clone(), profile()),
        (distributed, jobset),
    ] {
        let p = pipeline::load("demo.yaml", &text, Some(&profile)).expect("valid");
        for ctx in [
            ctx(EventKind::Push, "main"),
            ctx(EventKind::MergeRequest, "dev"),
        ] {
            let a = embedded.render(&p, &profile, &ctx).expect("renders");
            let b = files.render(&p, &profile, &ctx).expect("renders");
            assert_eq!(a.manifest, b.manifest);
        }
    }
}

#[test]
fn a_render_compiles_only_the_templates_it_needs() {
    let renderer = Renderer::embedded();
    assert!(renderer.templates.names().is_empty());
    let p = pipeline::load("demo.yaml", PIPELINE, Some(&profile())).expect("valid");
    renderer
        .render(&p, &profile(), &ctx(EventKind::Push, "main"))
        .expect("renders");
    assert_eq!(
        renderer.templates.names(),
        ["run", "step-container", "workflow"]
    );
    let text = PIPELINE.replace("    timeout: 12h", "    timeout: 12h\n    nodes: 2");
    let p = pipeline::load("demo.yaml", &text, Some(&profile())).expect("valid");
    renderer
        .render(&p, &profile(), &ctx(EventKind::Push, "main"))
        .expect("renders");
    assert_eq!(
        renderer.templates.names(),
        [
            "pytorchjob",
            "run",
            "step-container",
            "step-resource",
            "workflow"
        ]
    );
}

#[test]
fn a_broken_override_is_reported_before_any_render() {
    let dir = std::env::temp_dir().join(format!("ferry-broken-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // No pipeline here is distributed with JobSets; the broken template is an error all the same.
    std::fs::write(dir.join("jobset.json.hbs"), "{\n  {{#if deadline}}\n}\n").expect("write");
    let err = Renderer::from_dir(&dir).expect_err("does not compile");
    std::fs::remove_dir_all(&dir).ok();
    let message = err.to_string();
    assert!(message.starts_with("template jobset: "), "{message}");
    assert!(message.contains("line"), "{message}");
}
