//! Pipeline files are hostile input: alias bombs, huge files and deep nesting are refused with a
//! message that says which limit was hit (never by running out of time or memory).

use ferry_engine::pipeline;
use ferry_engine::profile::Profile;
use ferry_engine::yaml::{MAX_DEPTH, MAX_FILE_BYTES};
use ferry_tests::{TempDir, example, profile};

use crate::ferry;

/// A valid pipeline to embed things in.
fn base() -> String {
    example("train-eval-deploy").text
}

/// "Billion laughs": 9 levels of 10 aliases each (10^9 strings if expanded), as one parameter
/// value, so that the deserializer has to look at the whole value.
fn billion_laughs() -> String {
    let mut levels = vec![r#"&l0 "lol""#.to_owned()];
    for level in 1..=9 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        levels.push(format!("&l{level} [{refs}]"));
    }
    format!(
        "version: 1\nname: lol\nparams:\n  lol: [{}]\nsteps:\n  - name: a\n    kind: task\n    image: busybox\n    run: echo hi\n",
        levels.join(",\n    ")
    )
}

fn one_message(result: Result<pipeline::Pipeline, ferry_engine::problem::Problems>) -> String {
    match result {
        Ok(p) => panic!("pipeline `{}` was accepted", p.name),
        Err(problems) => problems.to_string(),
    }
}

#[test]
fn billion_laughs_is_refused_by_the_alias_budget() {
    let text = billion_laughs();
    assert!(text.len() < 2_000, "the bomb itself is small");
    let msg = one_message(pipeline::load("lol.yaml", &text, Some(&profile())));
    let lower = msg.to_lowercase();
    assert!(
        lower.contains("alias") || lower.contains("budget"),
        "message names neither aliases nor a budget: {msg}"
    );
    assert!(
        msg.starts_with("lol.yaml:"),
        "message does not name the file: {msg}"
    );
}

#[test]
fn alias_bombs_anywhere_are_refused() {
    // The bomb's anchors, moved to other places of a pipeline and of the profile: whatever stops
    // it (the alias budget, or a type or unknown-field error before any expansion), it is an error.
    let bomb = billion_laughs();
    let start = bomb.find("[&l0").expect("bomb");
    let end = bomb.find("\nsteps:").expect("bomb");
    let value = &bomb[start..end];
    let step = "  - name: a\n    kind: task\n    image: busybox\n";
    let places = [
        format!("x: {value}\nversion: 1\nname: lol\nsteps:\n{step}    run: echo hi\n"),
        format!(
            "version: 1\nname: lol\ndefaults:\n  env:\n    LOL: {value}\nsteps:\n{step}    run: echo hi\n"
        ),
        format!("version: 1\nname: lol\nsteps:\n{step}    run: {value}\n"),
        format!("version: 1\nname: lol\nsteps:\n{step}    run: echo hi\n    needs: {value}\n"),
        format!(
            "version: 1\nname: lol\non:\n  push:\n    branches: {value}\nsteps:\n{step}    run: echo hi\n"
        ),
    ];
    for text in &places {
        let msg = one_message(pipeline::load("lol.yaml", text, Some(&profile())));
        assert!(
            msg.starts_with("lol.yaml:"),
            "message does not name the file: {msg}\n{text}"
        );
    }
    for key in ["environments", "priorities", "queues", "x"] {
        let text = format!("{key}: {value}\n");
        assert!(
            Profile::from_yaml("profile.yaml", &text).is_err(),
            "a profile with a bomb under `{key}` was accepted"
        );
    }
}

#[test]
fn a_few_aliases_are_still_fine() {
    // Anchors and aliases are legitimate YAML: the limit is about expansion, not about their use.
    let text = "version: 1\nname: anchors\ndefaults:\n  image: busybox\n  env: &common\n    A: \"1\"\n    B: \"2\"\n\
                steps:\n  - name: a\n    kind: task\n    run: echo a\n    env: *common\n\
                \x20 - name: b\n    kind: task\n    needs: [a]\n    run: echo b\n    env: *common\n";
    let p = pipeline::load("ok.yaml", text, Some(&profile()))
        .unwrap_or_else(|e| panic!("anchors refused:\n{e}\n{text}"));
    assert_eq!(p.name, "anchors");
    assert_eq!(p.steps.len(), 2);
}

#[test]
fn a_file_over_1_mib_is_refused_and_one_at_the_limit_is_read() {
    let text = base();
    let pad_line = "# padding padding padding padding padding padding padding padding padding\n";
    let mut at_limit = text.clone();
    while at_limit.len() + pad_line.len() <= MAX_FILE_BYTES {
        at_limit.push_str(pad_line);
    }
    at_limit.push_str(&"#".repeat(MAX_FILE_BYTES - at_limit.len()));
    assert_eq!(at_limit.len(), MAX_FILE_BYTES);
    pipeline::load("big.yaml", &at_limit, Some(&profile()))
        .unwrap_or_else(|e| panic!("a file of exactly {MAX_FILE_BYTES} bytes was refused:\n{e}"));

    let mut over = at_limit.clone();
    over.push('\n');
    let msg = one_message(pipeline::load("big.yaml", &over, Some(&profile())));
    assert!(msg.contains("1 MiB"), "one byte over the limit: {msg}");

    let mut huge = text;
    while huge.len() < 2 * 1024 * 1024 {
        huge.push_str(pad_line);
    }
    let msg = one_message(pipeline::load("huge.yaml", &huge, Some(&profile())));
    assert!(msg.contains("1 MiB"), "2 MiB file: {msg}");
    assert!(
        msg.starts_with("huge.yaml:"),
        "message does not name the file: {msg}"
    );
}

#[test]
fn deep_nesting_is_refused_mentioning_depth() {
    let depth = 200;
    assert!(depth > MAX_DEPTH);
    // Flow style: [[[[...]]]] as a parameter value.
    let flow = format!(
        "version: 1\nname: deep\nparams:\n  x: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    // Block style: 200 nested mappings.
    let mut block = String::from("version: 1\nname: deep\nparams:\n");
    for level in 0..depth {
        block.push_str(&format!("{}k{level}:\n", "  ".repeat(level + 1)));
    }
    block.push_str(&format!("{}end\n", "  ".repeat(depth + 1)));
    for (style, text) in [("flow", flow), ("block", block)] {
        let msg = one_message(pipeline::load("deep.yaml", &text, None));
        assert!(
            msg.to_lowercase().contains("depth"),
            "{style} nesting of {depth}: {msg}"
        );
    }
}

#[test]
fn a_second_yaml_document_is_refused() {
    // One file is one pipeline: a second document (which could hide a different pipeline from a
    // reader that only looks at the first) is an error, not silently ignored.
    let text = format!("{}\n---\n{}", example("rtx4090d-single").text, base());
    let msg = one_message(pipeline::load("two.yaml", &text, Some(&profile())));
    assert!(msg.to_lowercase().contains("document"), "{msg}");
}

#[test]
fn ferry_validate_reports_hostile_files_and_exits_1() {
    let dir = TempDir::new("hostile");
    dir.write(".ferry/lol.yaml", &billion_laughs());
    dir.write(
        ".ferry/deep.yaml",
        &format!(
            "version: 1\nname: deep\nx: {}{}\n",
            "[".repeat(200),
            "]".repeat(200)
        ),
    );
    dir.write(".ferry/good.yaml", &base());
    let run = ferry(dir.path(), &["validate", ".ferry"]);
    assert_eq!(run.code, 1, "{run}");
    for file in [".ferry/lol.yaml:", ".ferry/deep.yaml:"] {
        assert!(
            run.stdout.lines().any(|l| l.starts_with(file)),
            "no problem line for {file}\n{run}"
        );
    }
    assert!(
        !run.stdout.contains(".ferry/good.yaml:"),
        "the good file got a problem:\n{run}"
    );
}
