//! Every validation rule with a failing case: exact message and position.

use super::*;
use crate::profile::Profile;

const PROFILE: &str = r#"
gpu_types:
  A100-80G: { resource: nvidia.com/gpu, node_selector: { gpu: a100 } }
  A100-shared: { resource: nvidia.com/gpu, vgpu: hami }
priorities: { low: ferry-low, high: ferry-high }
queues: [team-a, team-b]
node_groups: { training: { node_selector: { pool: training } } }
volumes: { datasets: { claim: share, mount: /share, read_only: true } }
environments: { pytorch-2.4: harbor.example.com/pytorch:2.4 }
limits: { max_gpus_per_step: 8, max_nodes: 4, max_timeout: 72h }
"#;

fn profile() -> Profile {
    Profile::from_yaml("profile.yaml", PROFILE).expect("test profile is valid")
}

/// Loads `text` as `p.yaml` and returns its problems, one string each.
fn problems(text: &str) -> Vec<String> {
    match load("p.yaml", text, Some(&profile())) {
        Ok(_) => Vec::new(),
        Err(Problems(ps)) => ps.iter().map(ToString::to_string).collect(),
    }
}

fn one(text: &str) -> String {
    let ps = problems(text);
    assert_eq!(ps.len(), 1, "expected one problem, got {ps:#?}");
    ps[0].clone()
}

const OK: &str = "version: 1
name: demo
defaults:
  image: img:1
steps:
  - name: train
    kind: train
    run: echo hi
";

#[test]
fn a_minimal_pipeline_is_valid() {
    let p = load("p.yaml", OK, Some(&profile())).expect("valid");
    assert_eq!(p.name, "demo");
    assert_eq!(p.steps[0].retries, 0);
    assert_eq!(p.steps[0].image, ImageRef::Image("img:1".into()));
}

#[test]
fn unknown_key_says_did_you_mean_with_position() {
    let text = OK.replace(
        "    run: echo hi",
        "    run: echo hi\n    resorces: { gpu: 1 }",
    );
    let p = one(&text);
    assert!(
        p.starts_with("p.yaml:9:5: steps[0].resorces: unknown field `resorces`"),
        "{p}"
    );
    assert!(p.ends_with("did you mean `resources`?"), "{p}");
    assert!(
        !p.contains(" at line "),
        "positions are printed once, in front: {p}"
    );
}

#[test]
fn bad_names() {
    assert_eq!(
        one(&OK.replace("name: demo", "name: Demo_1")),
        "p.yaml:2:7: name: `Demo_1` is not a valid name: use lower-case letters, digits and `-`, starting and ending with a letter or digit"
    );
    let long = "a".repeat(41);
    assert_eq!(
        one(&OK.replace("name: demo", &format!("name: {long}"))),
        format!("p.yaml:2:7: name: `{long}` is 41 characters long; the limit is 40")
    );
}

#[test]
fn version_must_be_one() {
    assert_eq!(
        one(&OK.replace("version: 1", "version: 2")),
        "p.yaml:1:10: version: unsupported version 2; this ferry reads version 1"
    );
}

#[test]
fn duplicate_steps_and_bad_needs() {
    let text = format!("{OK}  - name: train\n    kind: task\n    run: x\n    needs: [train]\n");
    assert_eq!(
        one(&text),
        "p.yaml:9:11: steps[1].name: step `train` is already defined at steps[0]"
    );
    let later = format!(
        "{OK}  - name: eval\n    kind: task\n    run: x\n    needs: [trian, report]\n  - name: report\n    kind: task\n    run: x\n"
    );
    assert_eq!(
        problems(&later),
        vec![
            "p.yaml:12:13: steps[1].needs[0]: `trian` is not an earlier step; did you mean `train`? (`needs` may name: `train`; steps can only need steps above them, so there are no cycles)".to_owned(),
            "p.yaml:12:20: steps[1].needs[1]: `report` is not an earlier step (`needs` may name: `train`; steps can only need steps above them, so there are no cycles)".to_owned(),
        ]
    );
    let cycle = OK.replace("    run: echo hi", "    run: echo hi\n    needs: [train]");
    assert_eq!(
        one(&cycle),
        "p.yaml:9:13: steps[0].needs[0]: step `train` cannot need itself (a cycle)"
    );
}

#[test]
fn evaluate_needs_metrics() {
    let text = OK.replace("kind: train", "kind: evaluate");
    assert_eq!(
        one(&text),
        "p.yaml:6:5: steps[0]: an `evaluate` step must declare `metrics` (the JSON file it writes)"
    );
}

const GATED: &str = "version: 1
name: demo
defaults: { image: img:1 }
steps:
  - { name: train, kind: train, run: x, metrics: m.json }
  - { name: eval, kind: evaluate, run: x, metrics: /workspace/e.json, needs: [train] }
  - { name: other, kind: task, run: x }
  - name: deploy
    kind: deploy
    needs: [eval, other]
    run: x
    if: { metrics: \"COND\" }
";

#[test]
fn if_metrics_must_name_an_ancestor_metric() {
    assert_eq!(
        one(&GATED.replace("COND", "accuracy >= 0.9")),
        "p.yaml:12:20: steps[3].if.metrics: `accuracy` is ambiguous: several earlier steps declare metrics; write one of `train.accuracy`, `eval.accuracy`"
    );
    assert_eq!(
        one(&GATED.replace("COND", "other.accuracy >= 0.9")),
        "p.yaml:12:20: steps[3].if.metrics: `other.accuracy`: `other` is not an earlier step (through `needs`) that declares `metrics` (those are: `train`, `eval`)"
    );
    assert!(problems(&GATED.replace("COND", "eval.accuracy >= 0.9 && train.loss < 1")).is_empty());
    assert_eq!(
        one(&GATED.replace("COND", "eval.accuracy >=")),
        "p.yaml:12:20: steps[3].if.metrics: expected a number after \">=\" (at character 17)"
    );
    let lone = "version: 1\nname: d\ndefaults: { image: i }\nsteps:\n  - { name: a, kind: task, run: x, if: { metrics: \"x > 1\" } }\n";
    assert_eq!(
        one(lone),
        "p.yaml:5:51: steps[0].if.metrics: `x`: no step this one needs (directly or indirectly) declares `metrics`"
    );
}

#[test]
fn vgpu_fields_need_a_vgpu_type() {
    let text = OK.replace(
        "    run: echo hi",
        "    run: echo hi\n    resources: { gpu: 1, gpu_type: A100-80G, gpu_memory: 10Gi }",
    );
    assert_eq!(
        one(&text),
        "p.yaml:9:58: steps[0].resources.gpu_memory: GPU type `A100-80G` is not a vGPU type; `gpu_memory` needs one with `vgpu: hami` (`A100-shared`)"
    );
    let ok = OK.replace("    run: echo hi", "    run: echo hi\n    resources: { gpu: 1, gpu_type: A100-shared, gpu_memory: 10Gi, gpu_cores: 30 }");
    assert!(problems(&ok).is_empty());
}

#[test]
fn profile_names_list_what_is_allowed() {
    let text = OK.replace("    run: echo hi", "    run: echo hi\n    resources: { gpu: 1, gpu_type: A100-80GB }\n    queue: team-c\n    priority: urgent\n    node_group: gpu\n    environment: pytorch-2.5\n    image: null");
    let ps = problems(&text);
    assert_eq!(
        ps,
        vec![
            "p.yaml:9:36: steps[0].resources.gpu_type: unknown GPU type `A100-80GB`; did you mean `A100-80G`? (the profile allows: `A100-80G`, `A100-shared`)",
            "p.yaml:10:12: steps[0].queue: unknown queue `team-c`; did you mean `team-a`? (the profile allows: `team-a`, `team-b`)",
            "p.yaml:11:15: steps[0].priority: unknown priority `urgent` (the profile allows: `high`, `low`)",
            "p.yaml:12:17: steps[0].node_group: unknown node group `gpu` (the profile allows: `training`)",
            "p.yaml:13:18: steps[0].environment: unknown environment `pytorch-2.5`; did you mean `pytorch-2.4`? (the profile allows: `pytorch-2.4`)",
        ]
    );
    let preset = OK.replace(
        "    run: echo hi",
        "    run: echo hi\n    volumes: [{ preset: dataset }]",
    );
    assert_eq!(
        one(&preset),
        "p.yaml:9:25: steps[0].volumes[0].preset: unknown volume preset `dataset`; did you mean `datasets`? (the profile allows: `datasets`)"
    );
}

#[test]
fn limits_are_enforced_never_clamped() {
    let text = OK.replace("    run: echo hi", "    run: echo hi\n    resources: { gpu: 16, gpu_type: A100-80G }\n    nodes: 5\n    timeout: 80h");
    assert_eq!(
        problems(&text),
        vec![
            "p.yaml:9:23: steps[0].resources.gpu: 16 GPUs is over the profile's limit of 8 per step (limits.max_gpus_per_step)",
            "p.yaml:10:12: steps[0].nodes: 5 nodes is over the profile's limit of 4 (limits.max_nodes)",
            "p.yaml:11:14: steps[0].timeout: `80h` is over the profile's limit of 72h (limits.max_timeout)",
        ]
    );
}

#[test]
fn values_are_checked() {
    let text = OK.replace(
        "    run: echo hi",
        "    run: echo hi\n    resources: { memory: 12GB }\n    timeout: 12 hours",
    );
    let ps = problems(&text);
    assert_eq!(ps.len(), 2, "{ps:#?}");
    assert!(
        ps[0].starts_with(
            "p.yaml:9:26: steps[0].resources.memory: \"12GB\" is not a Kubernetes quantity"
        ),
        "{}",
        ps[0]
    );
    assert!(
        ps[1].starts_with("p.yaml:10:14: steps[0].timeout: \"12 hours\" is not a duration"),
        "{}",
        ps[1]
    );
}

#[test]
fn no_image_anywhere_is_an_error() {
    let text = OK.replace("defaults:\n  image: img:1\n", "");
    assert_eq!(
        one(&text),
        "p.yaml:4:5: steps[0]: no image: set `image` or `environment` on the step or in `defaults`"
    );
}

#[test]
fn gpu_needs_a_type_and_reserved_names_are_refused() {
    let text = OK.replace(
        "    run: echo hi",
        "    run: echo hi\n    resources: { gpu: 2 }\n    env: { FERRY_SHA: x }",
    );
    assert_eq!(
        problems(&text),
        vec![
            "p.yaml:9:23: steps[0].resources.gpu: `gpu` needs `gpu_type` (a GPU type from the profile)",
            "p.yaml:10:12: steps[0].env.FERRY_SHA: `FERRY_SHA`: names starting with FERRY_ are set by ferry",
        ]
    );
}

#[test]
fn params_names_and_manual_overrides() {
    assert_eq!(
        one(&OK.replace("defaults:", "params: { Lr: 1 }\ndefaults:")),
        "p.yaml:3:11: params.Lr: `Lr` is not a valid parameter name: use `[a-z][a-z0-9_]*`"
    );
    let p = load(
        "p.yaml",
        &OK.replace("defaults:", "params: { lr: 0.001, epochs: 10 }\ndefaults:"),
        None,
    )
    .expect("valid");
    assert_eq!(p.params.get("lr").map(String::as_str), Some("0.001"));
    let over = p
        .resolve_params(&[("epochs".into(), "3".into())])
        .expect("declared");
    assert_eq!(over.get("epochs").map(String::as_str), Some("3"));
    let err = p
        .resolve_params(&[("batch".into(), "3".into())])
        .expect_err("undeclared");
    assert_eq!(
        err[0].to_string(),
        "parameter `batch` is not declared by pipeline `demo` (declared: `epochs`, `lr`)"
    );
}

#[test]
fn volumes_and_secrets() {
    let text = OK.replace(
        "    run: echo hi",
        "    run: echo hi\n    volumes: [{ claim: data }, { claim: x, mount: /src }]\n    secret_env: { TOKEN: nokey }",
    );
    assert_eq!(
        problems(&text),
        vec![
            "p.yaml:9:15: steps[0].volumes[0]: a `claim` volume needs `mount`",
            "p.yaml:9:51: steps[0].volumes[1].mount: `/src` is used by ferry (/src, /workspace, /dev/shm, /scratch)",
            "p.yaml:10:26: steps[0].secret_env.TOKEN: `nokey` is not `secret-name/key`",
        ]
    );
}

#[test]
fn wrong_type_points_at_the_value() {
    let text = OK.replace("    run: echo hi", "    run: echo hi\n    retries: many");
    let p = one(&text);
    assert!(p.starts_with("p.yaml:9:14: steps[0].retries: "), "{p}");
}

#[test]
fn duplicate_names_across_files_are_both_errors() {
    let files = vec![
        ("a.yaml".to_owned(), OK.as_bytes().to_vec()),
        ("b.yaml".to_owned(), OK.as_bytes().to_vec()),
    ];
    let loaded = load_files(&files, None);
    assert!(loaded.pipelines.is_empty());
    let ps: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        ps,
        vec![
            "a.yaml:1:1: name: pipeline name `demo` is also used by b.yaml",
            "b.yaml:1:1: name: pipeline name `demo` is also used by a.yaml"
        ]
    );
}

#[test]
fn defaults_merge_into_steps() {
    let text = "version: 1
name: demo
defaults:
  image: img:1
  env: { A: a, B: b }
  volumes: [{ claim: one, mount: /data }, { preset: datasets }]
  queue: team-a
steps:
  - name: train
    kind: train
    run: x
    image: img:2
    env: { B: own }
    volumes: [{ claim: two, mount: /data }]
    resources: { gpu: 1, gpu_type: A100-80G }
";
    let p = load("p.yaml", text, Some(&profile())).expect("valid");
    let s = &p.steps[0];
    assert_eq!(s.image, ImageRef::Image("img:2".into()));
    assert_eq!(s.env.get("A").map(String::as_str), Some("a"));
    assert_eq!(s.env.get("B").map(String::as_str), Some("own"));
    assert_eq!(s.queue.as_deref(), Some("team-a"));
    assert_eq!(s.retries, 1, "GPU steps default to one retry");
    assert_eq!(s.volumes.len(), 2);
    assert!(matches!(&s.volumes[1], VolumeRef::Claim { claim, .. } if claim == "two"));
}

#[test]
fn deploy_defaults_to_no_merge_requests() {
    let text = OK.replace("kind: train", "kind: deploy");
    let p = load("p.yaml", &text, None).expect("valid");
    assert_eq!(
        p.steps[0].gate.events,
        Some(vec![EventKind::Push, EventKind::Tag, EventKind::Manual])
    );
}

#[test]
fn schema_has_every_top_level_field() {
    let schema = json_schema();
    let props = schema["properties"].as_object().expect("properties");
    for key in [
        "version",
        "name",
        "on",
        "concurrency",
        "params",
        "defaults",
        "workspace",
        "steps",
    ] {
        assert!(props.contains_key(key), "{key}");
    }
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
}

#[test]
fn every_structural_problem_is_reported_at_once() {
    let text = "version: 1
name: demo
on:
  push:
    branchs: [main]
concurrency: { group: merge_requests }
steps:
  - name: train
    kind: trainn
    image: img:1
    run: python train.py
    needs: prepare
    resources:
      gpu: { type: A100-80G, count: 2 }
      memroy: 10Gi
      cpu: [4]
  - name: evaluate
    run: python eval.py
";
    assert_eq!(
        problems(text),
        vec![
            "p.yaml:5:5: on.push.branchs: unknown field `branchs`, expected one of `branches`, `paths`, `paths_ignore`, `tags`; did you mean `branches`?",
            "p.yaml:6:23: concurrency.group: unknown variant `merge_requests`, expected one of `merge_request`, `branch`, `pipeline`, `none`; did you mean `merge_request`?",
            "p.yaml:9:11: steps[0].kind: unknown variant `trainn`, expected one of `train`, `evaluate`, `deploy`, `task`; did you mean `train`?",
            "p.yaml:12:12: steps[0].needs: expected a list, found `prepare`",
            "p.yaml:14:12: steps[0].resources.gpu: expected an integer, found a mapping",
            "p.yaml:15:7: steps[0].resources.memroy: unknown field `memroy`, expected one of `cpu`, `gpu`, `gpu_cores`, `gpu_memory`, `gpu_type`, `memory`, `scratch`, `shm`; did you mean `memory`?",
            "p.yaml:16:12: steps[0].resources.cpu: expected a single value (a string, a number or true/false), found a list",
            "p.yaml:17:5: steps[1]: missing field `kind`",
        ]
    );
}

#[test]
fn a_single_structural_problem_keeps_the_parsers_message() {
    // A scalar of the wrong type is the typed parse's to judge; the walk adds nothing.
    let text = OK.replace("    run: echo hi", "    run: echo hi\n    retries: -1");
    let p = one(&text);
    assert!(p.starts_with("p.yaml:9:14: steps[0].retries: "), "{p}");
    // A syntax error is the only problem of its file.
    let p = one("version: 1\nname: [demo\n");
    assert!(p.starts_with("p.yaml:"), "{p}");
}

#[test]
fn the_structural_walk_accepts_every_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = read_dir(&root.join("examples/pipelines")).expect("examples");
    files.extend(read_dir(&root.join("examples/demo")).expect("demo"));
    files.extend(read_dir(&root.join(".ferry")).unwrap_or_default());
    assert!(files.len() > 8, "{}", files.len());
    for (file, bytes) in files {
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        assert_eq!(
            crate::yaml::shape_problems::<spec::PipelineSpec>(&file, text),
            vec![],
            "{file}"
        );
    }
}

#[test]
fn every_misspelt_key_of_every_example_is_reported_alone_at_its_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let profile = Profile::from_yaml(
        "profile.yaml",
        &std::fs::read_to_string(root.join("examples/profile.yaml")).expect("profile"),
    )
    .expect("the example profile");
    let files = read_dir(&root.join("examples/pipelines")).expect("examples");
    let mut checked = 0;
    for (file, bytes) in files {
        let text = String::from_utf8(bytes).expect("utf-8");
        for (index, line) in text.lines().enumerate() {
            let body = line.trim_start().trim_start_matches("- ");
            let Some((key, _)) = body.split_once(':') else {
                continue;
            };
            if key.is_empty()
                || line.trim_start().starts_with('#')
                || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                continue;
            }
            let column = line.len() - body.len() + 1;
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines[index] = format!("{}{key}zz{}", &line[..column - 1], &body[key.len()..]);
            let mutated = lines.join("\n") + "\n";
            let Err(Problems(problems)) = load(&file, &mutated, Some(&profile)) else {
                // A key of a free-form mapping (`params`, `env`, `node_selector`): any name goes.
                continue;
            };
            let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert_eq!(
                problems.len(),
                1,
                "{file}:{}: `{key}zz`: {messages:#?}",
                index + 1
            );
            let p = &problems[0];
            assert_eq!(
                (p.line as usize, p.column as usize),
                (index + 1, column),
                "{}",
                messages[0]
            );
            assert!(
                p.message
                    .starts_with(&format!("unknown field `{key}zz`, expected one of "))
                    && p.message.ends_with(&format!("did you mean `{key}`?")),
                "{}",
                messages[0]
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} keys were checked");
}
