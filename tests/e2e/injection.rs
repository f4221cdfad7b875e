//! Hostile git context and parameter values stay data: a manifest rendered for a hostile value has
//! exactly the structure of the one for a plain value, and differs only where the value is carried
//! (`spec.arguments.parameters[*].value`, and the `ferry.dev/ref` annotation for refs).

use std::collections::BTreeMap;

use ferry_engine::pipeline::{EventKind, Pipeline};
use ferry_engine::profile::{Distributed, Profile};
use ferry_engine::render::{Renderer, RunContext};
use ferry_tests::{
    Diff, JsonPath, Seg, arguments, branch_context, clip, diffs, example, profile_with, shape,
    strings, strip_arg_expressions, tag_context, templates,
};
use serde_json::Value;

/// Hostile fragments: (label, text). Each is appended to a plain value.
fn corpus() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("handlebars", "{{x}}"),
        ("handlebars-triple", "{{{x}}}"),
        ("closing-braces", "}}"),
        ("argo-parameter", "{{workflow.parameters.ferry-repo}}"),
        ("argo-expression", "{{=sprig.env('HOME')}}"),
        ("double-quote", "\""),
        ("single-quote", "'"),
        ("json-breakout", "\"},{\"name\":\"x\",\"value\":\""),
        ("toJson-breakout", "'])}}{{=toJson(workflow.parameters['x"),
        ("newline", "a\nb"),
        ("crlf", "a\r\nb"),
        ("yaml-document", "\n---\napiVersion: v1\nkind: Pod\n"),
        ("shell-rm", "; rm -rf /"),
        ("shell-subst", "$(reboot)"),
        ("backticks", "`reboot`"),
        ("yaml-anchors", "&a *a"),
        ("hash", " # comment"),
        ("cjk", "中文分支"),
        ("emoji", "🚀🔥"),
        ("backslash", "\\"),
        ("backslash-quote", "\\\"\\"),
        ("line-separator", "\u{2028}\u{2029}"),
        ("placeholder", "\u{1}ferry-arg:ferry-repo"),
        ("control", "\u{1b}[31m\u{7}"),
        ("spec-example", "\";$(reboot)#{{x}}"),
    ]
    .into_iter()
    .map(|(l, t)| (l.to_owned(), t.to_owned()))
    .collect();
    out.push(("very-long".into(), "{{x}}\"'$(reboot)".repeat(6_000)));
    out.push((
        "long-mixed".into(),
        format!("{}\n---\n{}", "中".repeat(20_000), "a".repeat(40_000)),
    ));
    out
}

/// What one comparison allows to differ.
struct Allowed {
    /// Argument name -> its expected (verbatim) value in the hostile run.
    params: BTreeMap<String, String>,
    /// The expected `ferry.dev/ref` annotation of the hostile run, when the ref differs.
    ref_annotation: Option<String>,
}

/// Where a diff is, if allowed: the parameter name or the annotation.
fn allowed_place(path: &JsonPath, hostile: &Value) -> Option<String> {
    if path.is(&[
        Some("spec"),
        Some("arguments"),
        Some("parameters"),
        None,
        Some("value"),
    ]) {
        let i = path.index_at(3)?;
        return hostile["spec"]["arguments"]["parameters"][i]["name"]
            .as_str()
            .map(|n| format!("param:{n}"));
    }
    if path.is(&[Some("metadata"), Some("annotations"), Some("ferry.dev/ref")]) {
        return Some("annotation:ferry.dev/ref".into());
    }
    None
}

/// Compares a plain and a hostile manifest; returns every violation.
fn compare(plain: &Value, hostile: &Value, value: &str, allowed: &Allowed) -> Vec<String> {
    let mut bad = Vec::new();
    if shape(plain) != shape(hostile) {
        let shape_diffs: Vec<String> = diffs(&shape(plain), &shape(hostile))
            .iter()
            .take(10)
            .map(Diff::to_string)
            .collect();
        bad.push(format!(
            "structure differs:\n      {}",
            shape_diffs.join("\n      ")
        ));
        return bad;
    }
    for d in diffs(plain, hostile) {
        match allowed_place(&d.path, hostile) {
            Some(place)
                if place
                    .strip_prefix("param:")
                    .is_some_and(|n| allowed.params.contains_key(n)) => {}
            Some(place)
                if place == "annotation:ferry.dev/ref" && allowed.ref_annotation.is_some() => {}
            _ => bad.push(format!("unexpected difference at {d}")),
        }
    }
    // The value arrives verbatim where it should.
    let args = arguments(hostile);
    for (name, expected) in &allowed.params {
        match args.get(name) {
            Some(got) if got == expected => {}
            Some(got) => bad.push(format!(
                "argument {name} is {}, expected {}",
                clip(&format!("{got:?}")),
                clip(&format!("{expected:?}"))
            )),
            None => bad.push(format!("argument {name} is missing")),
        }
    }
    if let Some(expected) = &allowed.ref_annotation {
        let got = &hostile["metadata"]["annotations"]["ferry.dev/ref"];
        if got.as_str() != Some(expected) {
            bad.push(format!(
                "annotation ferry.dev/ref is {}, expected {}",
                clip(&got.to_string()),
                clip(&format!("{expected:?}"))
            ));
        }
    }
    // Nowhere else (commands, args, env, the inner manifests of resource steps...).
    for (path, s) in strings(hostile) {
        if s.contains(value) && allowed_place(&path, hostile).is_none() {
            bad.push(format!("the hostile value appears at {path}: {}", clip(s)));
        }
    }
    for t in templates(hostile) {
        for container in containers(t) {
            for key in ["command", "args"] {
                for s in container[key]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(Value::as_str)
                {
                    if s.contains(value) {
                        bad.push(format!(
                            "template {}: container {key} contains the hostile value",
                            t["name"]
                        ));
                    }
                }
            }
        }
    }
    // Resource steps refer to arguments by name only: their manifests are byte-identical.
    for (tp, th) in templates(plain).iter().zip(templates(hostile)) {
        if let (Some(mp), Some(mh)) = (
            tp["resource"]["manifest"].as_str(),
            th["resource"]["manifest"].as_str(),
        ) && mp != mh
        {
            bad.push(format!(
                "template {}: resource manifest differs between plain and hostile runs",
                th["name"]
            ));
        }
    }
    bad
}

/// The containers of a template, including those inside a resource step's inner manifest.
fn containers(template: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for key in ["container", "script"] {
        if let Some(c) = template.get(key) {
            out.push(c.clone());
        }
    }
    if let Some(text) = template["resource"]["manifest"].as_str() {
        let (stripped, _) = strip_arg_expressions(text);
        if let Ok(inner) = serde_json::from_str::<Value>(&stripped) {
            collect_containers(&inner, &mut out);
        }
    }
    out
}

fn collect_containers(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            for (k, item) in map {
                if k == "containers" || k == "initContainers" {
                    out.extend(item.as_array().cloned().unwrap_or_default());
                } else {
                    collect_containers(item, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_containers(i, out)),
        _ => {}
    }
}

struct Subject {
    name: &'static str,
    pipeline: Pipeline,
    profile: Profile,
    /// A declared parameter to override.
    param: String,
}

fn subjects() -> Vec<Subject> {
    let mut out = Vec::new();
    for (stem, distributed) in [
        ("train-eval-deploy", Distributed::Pytorchjob),
        ("torchrun-2node", Distributed::Pytorchjob),
        ("torchrun-2node", Distributed::Jobset),
    ] {
        let profile = profile_with(distributed);
        let ex = example(stem);
        let pipeline = ferry_engine::pipeline::load(&ex.file, &ex.text, Some(&profile))
            .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", ex.file));
        let param = pipeline
            .params
            .keys()
            .next()
            .unwrap_or_else(|| panic!("{stem} declares no params"))
            .clone();
        let name = match (stem, distributed) {
            ("train-eval-deploy", _) => "train-eval-deploy",
            (_, Distributed::Pytorchjob) => "torchrun-2node (pytorchjob)",
            _ => "torchrun-2node (jobset)",
        };
        out.push(Subject {
            name,
            pipeline,
            profile,
            param,
        });
    }
    out
}

fn render(s: &Subject, ctx: &RunContext) -> Result<Value, String> {
    Renderer::embedded()
        .render(&s.pipeline, &s.profile, ctx)
        .map(|r| r.manifest)
        .map_err(|e| e.to_string())
}

/// Renders plain and hostile contexts for every fragment and collects violations.
fn check_all(kind: &str, make: impl Fn(&Subject, &str) -> (RunContext, String, Allowed)) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for s in subjects() {
        let (plain_ctx, _, _) = make(&s, "");
        let plain = render(&s, &plain_ctx)
            .unwrap_or_else(|e| panic!("{}: plain {kind} does not render: {e}", s.name));
        assert!(
            templates(&plain)
                .iter()
                .any(|t| t.get("container").is_some() || t.get("resource").is_some()),
            "{}: the plain {kind} run has no step at all",
            s.name
        );
        for (label, fragment) in corpus() {
            let (ctx, value, allowed) = make(&s, &fragment);
            match render(&s, &ctx) {
                Ok(hostile) => {
                    checked += 1;
                    for b in compare(&plain, &hostile, &value, &allowed) {
                        failures.push(format!("{} / {kind} / {label}: {b}", s.name));
                    }
                }
                Err(e) => failures.push(format!(
                    "{} / {kind} / {label}: render failed: {}",
                    s.name,
                    clip(&e)
                )),
            }
        }
    }
    assert!(checked > 0);
    assert!(
        failures.is_empty(),
        "{} violation(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn hostile_branch_names_only_change_the_ref_arguments_and_annotation() {
    // A manual run on a branch no glob of these pipelines matches (`exp/...`), plain vs hostile.
    check_all("branch", |s, suffix| {
        let branch = format!("exp/a{suffix}");
        let ctx = branch_context(&s.pipeline, EventKind::Manual, &branch);
        let full = format!("refs/heads/{branch}");
        let allowed = Allowed {
            params: BTreeMap::from([
                ("ferry-branch".into(), branch.clone()),
                ("ferry-ref".into(), full.clone()),
            ]),
            ref_annotation: Some(full),
        };
        (ctx, branch, allowed)
    });
}

#[test]
fn hostile_tag_names_only_change_the_ref_arguments_and_annotation() {
    check_all("tag", |s, suffix| {
        let tag = format!("t-1{suffix}");
        let ctx = tag_context(&s.pipeline, &tag);
        let full = format!("refs/tags/{tag}");
        let allowed = Allowed {
            params: BTreeMap::from([
                ("ferry-tag".into(), tag.clone()),
                ("ferry-ref".into(), full.clone()),
            ]),
            ref_annotation: Some(full),
        };
        (ctx, tag, allowed)
    });
}

#[test]
fn hostile_parameter_values_only_change_that_argument() {
    check_all("parameter", |s, suffix| {
        let value = format!("0.5{suffix}");
        let overrides = vec![(s.param.clone(), value.clone())];
        let params = s
            .pipeline
            .resolve_params(&overrides)
            .unwrap_or_else(|e| panic!("override rejected: {e:?}"));
        let ctx = RunContext {
            params,
            ..branch_context(&s.pipeline, EventKind::Manual, "exp/a")
        };
        let allowed = Allowed {
            params: BTreeMap::from([(s.param.clone(), value.clone())]),
            ref_annotation: None,
        };
        (ctx, value, allowed)
    });
}

#[test]
fn merge_request_numbers_only_change_the_mr_variable() {
    // MR numbers are integers (u64), so they cannot carry text; a huge one must not change the
    // structure either, and must only show up as FERRY_MR.
    for s in subjects() {
        let ctx = |mr: u64| RunContext {
            merge_request: Some(mr),
            ..branch_context(&s.pipeline, EventKind::MergeRequest, "exp/a")
        };
        let plain = render(&s, &ctx(7)).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        let big = render(&s, &ctx(u64::MAX)).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert_eq!(
            shape(&plain),
            shape(&big),
            "{}: MR {} changes the structure",
            s.name,
            u64::MAX
        );
        for d in diffs(&plain, &big) {
            let is_mr_env = matches!(d.path.0.as_slice(), [.., Seg::Index(_), Seg::Key(v)] if v == "value")
                && matches!(
                    value_at_parent_name(&big, &d.path),
                    Some("FERRY_MR" | "ferry-mr")
                );
            let is_inner = matches!(d.path.0.last(), Some(Seg::Key(k)) if k == "manifest");
            assert!(
                is_mr_env || is_inner,
                "{}: unexpected difference for another MR number: {d}",
                s.name
            );
            if is_inner {
                let (a, _) = strip_arg_expressions(d.left.as_str().unwrap_or_default());
                let (b, _) = strip_arg_expressions(d.right.as_str().unwrap_or_default());
                let (a, b): (Value, Value) = (
                    serde_json::from_str(&a).expect("inner manifest is JSON"),
                    serde_json::from_str(&b).expect("inner manifest is JSON"),
                );
                assert_eq!(
                    shape(&a),
                    shape(&b),
                    "{}: inner manifest structure differs",
                    s.name
                );
                for inner in diffs(&a, &b) {
                    assert_eq!(
                        value_at_parent_name(&b, &inner.path),
                        Some("FERRY_MR"),
                        "{}: inner manifest differs outside FERRY_MR: {inner}",
                        s.name
                    );
                    assert_eq!(inner.right, Value::String(u64::MAX.to_string()));
                }
            } else {
                assert_eq!(
                    d.right,
                    Value::String(u64::MAX.to_string()),
                    "{}: FERRY_MR is {}",
                    s.name,
                    d.right
                );
            }
        }
    }
}

/// For a path ending in `.value`, the sibling `name` of that object.
fn value_at_parent_name<'a>(root: &'a Value, path: &JsonPath) -> Option<&'a str> {
    let mut v = root;
    for seg in &path.0[..path.0.len().checked_sub(1)?] {
        v = match seg {
            Seg::Key(k) => v.get(k)?,
            Seg::Index(i) => v.get(*i)?,
        };
    }
    v["name"].as_str()
}

#[test]
fn pipeline_strings_that_look_like_the_argument_marker_stay_data() {
    // Pipeline files are hostile too. The renderer marks argument slots of distributed steps with
    // "\u{1}ferry-arg:NAME" and swaps them for toJson expressions after rendering; a user string
    // with the same prefix (here the image) must not be swapped (or must be refused by validation).
    let profile = profile_with(Distributed::Pytorchjob);
    let ex = example("torchrun-2node");
    for image in [
        "\u{1}ferry-arg:ferry-repo",
        "\u{1}ferry-arg:x\"]),{\"a\":1}",
    ] {
        let yaml_image = serde_json::to_string(image).expect("json");
        let text = ex.text.replace(
            "  environment: pytorch-2.4",
            &format!("  image: {yaml_image}"),
        );
        assert!(text.contains("image: \""), "test setup: image not inserted");
        let Ok(pipeline) = ferry_engine::pipeline::load(&ex.file, &text, Some(&profile)) else {
            continue;
        };
        let ctx = branch_context(&pipeline, EventKind::Push, "main");
        let manifest = match Renderer::embedded().render(&pipeline, &profile, &ctx) {
            Ok(r) => r.manifest,
            Err(_) => continue, // refusing it is fine too
        };
        for t in templates(&manifest) {
            let Some(text) = t["resource"]["manifest"].as_str() else {
                continue;
            };
            let (stripped, _) = strip_arg_expressions(text);
            let inner: Value = serde_json::from_str(&stripped).unwrap_or_else(|e| {
                panic!(
                    "image {image:?}: inner manifest of {} is not JSON any more ({e}):\n{}",
                    t["name"],
                    clip(&stripped)
                )
            });
            let mut images = Vec::new();
            collect_containers(&inner, &mut images);
            assert!(
                images
                    .iter()
                    .filter(|c| c["name"] != "source")
                    .all(|c| c["image"] == image),
                "image {image:?} did not arrive verbatim in {}: {:?}",
                t["name"],
                images
                    .iter()
                    .map(|c| c["image"].clone())
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn the_comparison_catches_structure_and_value_changes() {
    // The checks above are only as good as `compare`: feed it manifests that are wrong on purpose.
    let s = subjects().into_iter().next().expect("a subject");
    let plain =
        render(&s, &branch_context(&s.pipeline, EventKind::Manual, "exp/a")).expect("renders");
    let allowed = || Allowed {
        params: BTreeMap::from([
            ("ferry-branch".into(), "exp/aX".into()),
            ("ferry-ref".into(), "refs/heads/exp/aX".into()),
        ]),
        ref_annotation: Some("refs/heads/exp/aX".into()),
    };
    let hostile = render(
        &s,
        &branch_context(&s.pipeline, EventKind::Manual, "exp/aX"),
    )
    .expect("renders");
    assert!(
        compare(&plain, &hostile, "exp/aX", &allowed()).is_empty(),
        "a clean pair is reported"
    );

    let mut extra_key = hostile.clone();
    extra_key["spec"]["templates"][1]["container"]["x"] = Value::String("exp/aX".into());
    assert!(
        compare(&plain, &extra_key, "exp/aX", &allowed())
            .iter()
            .any(|b| b.contains("structure"))
    );

    let mut in_command = hostile.clone();
    let cmd = &mut in_command["spec"]["templates"][1]["container"]["command"][2];
    *cmd = Value::String(format!("{} exp/aX", cmd.as_str().unwrap_or_default()));
    let bad = compare(&plain, &in_command, "exp/aX", &allowed());
    assert!(
        bad.iter().any(|b| b.contains("unexpected difference")),
        "{bad:?}"
    );
    assert!(
        bad.iter().any(|b| b.contains("container command")),
        "{bad:?}"
    );

    let mut not_verbatim = hostile;
    let Some(Value::Array(params)) = not_verbatim["spec"]["arguments"].get_mut("parameters") else {
        panic!("no parameters")
    };
    for p in params.iter_mut().filter(|p| p["name"] == "ferry-branch") {
        p["value"] = Value::String("exp/aY".into());
    }
    assert!(
        compare(&plain, &not_verbatim, "exp/aX", &allowed())
            .iter()
            .any(|b| b.contains("argument ferry-branch"))
    );
}
