//! The `ferry` binary as a user runs it: `validate`, `schema`, `render`.
//!
//! The binary is cargo's `ferry-under-test`: the real `webhooks/src/main.rs`, built for this package.

use crate::ferry;
use ferry_engine::pipeline::{self, EventKind};
use ferry_engine::render::RunContext;
use ferry_tests::{
    SHA, TempDir, clip, default_params, diffs, example, examples, git, profile, render,
    schema_errors, workspace_root, yaml_to_json,
};
use serde_json::Value;

const PROFILE: &str = "examples/profile.yaml";

/// The train-eval-deploy example with `resources:` of its first step misspelt; returns the text
/// and the 1-based (line, column) of the misspelt key.
fn misspelt_pipeline() -> (String, usize, usize) {
    let text = example("train-eval-deploy").text;
    let steps_at = text.find("\nsteps:").expect("the example has steps");
    let key_at = steps_at
        + text[steps_at..]
            .find("resources:")
            .expect("its first step has resources");
    let broken = format!(
        "{}resorces:{}",
        &text[..key_at],
        &text[key_at + "resources:".len()..]
    );
    let line = broken[..key_at].matches('\n').count() + 1;
    let column = key_at - broken[..key_at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (broken, line, column)
}

#[test]
fn validate_accepts_the_examples_with_the_profile() {
    let run = ferry(
        &workspace_root(),
        &["validate", "examples/pipelines", "--profile", PROFILE],
    );
    assert_eq!(run.code, 0, "{run}");
    for ex in examples() {
        assert!(
            !run.stdout.contains(&format!("{}:", ex.file)),
            "a problem was reported for {}:\n{run}",
            ex.file
        );
    }
}

#[test]
fn validate_reports_a_misspelt_key_with_file_line_column_path_and_suggestion() {
    let dir = TempDir::new("validate");
    let (broken, line, column) = misspelt_pipeline();
    dir.write(".ferry/resnet.yaml", &broken);
    dir.write(".ferry/other.yml", &example("rtx4090d-single").text);
    let profile = workspace_root().join(PROFILE);
    let profile = profile.to_str().expect("utf-8 path");
    for args in [
        vec!["validate", ".ferry", "--profile", profile],
        vec!["validate", ".ferry"],
    ] {
        let run = ferry(dir.path(), &args);
        assert_eq!(run.code, 1, "{run}");
        let prefix = format!(
            ".ferry/resnet.yaml:{line}:{column}: steps[0].resorces: unknown field `resorces`"
        );
        let hit = run.stdout.lines().find(|l| l.starts_with(&prefix));
        let hit = hit.unwrap_or_else(|| panic!("no line starting with `{prefix}`:\n{run}"));
        assert!(
            hit.ends_with("; did you mean `resources`?"),
            "no suggestion in `{hit}`"
        );
        assert!(
            !run.stdout.contains(".ferry/other.yml:"),
            "the valid file got a problem:\n{run}"
        );
    }
}

#[test]
fn validate_of_a_repository_root_reads_its_ferry_directory() {
    let dir = TempDir::new("validate-root");
    let (broken, line, column) = misspelt_pipeline();
    dir.write(".ferry/nested/resnet.yaml", &broken);
    dir.write("not-a-pipeline.yaml", "this: is not scanned\n");
    let run = ferry(dir.path(), &["validate"]);
    assert_eq!(run.code, 1, "{run}");
    let expected =
        format!("resnet.yaml:{line}:{column}: steps[0].resorces: unknown field `resorces`");
    assert!(
        run.stdout.lines().any(|l| l.contains(&expected)),
        "no `{expected}` line:\n{run}"
    );
    assert!(
        !run.stdout.contains("not-a-pipeline.yaml"),
        "a file outside .ferry was read:\n{run}"
    );
}

#[test]
fn schema_accepts_every_example_and_rejects_a_misspelt_key() {
    let run = ferry(&workspace_root(), &["schema"]);
    assert_eq!(run.code, 0, "{run}");
    let schema: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
    assert_eq!(
        schema,
        pipeline::json_schema(),
        "`ferry schema` differs from pipeline::json_schema()"
    );
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("not a usable JSON Schema: {e}"));
    for ex in examples() {
        let doc = yaml_to_json(&ex.file, &ex.text);
        let errors = schema_errors(&validator, &doc);
        assert!(
            errors.is_empty(),
            "{} fails `ferry schema`:\n{}",
            ex.file,
            errors.join("\n")
        );
    }
    let (broken, _, _) = misspelt_pipeline();
    let errors = schema_errors(&validator, &yaml_to_json("misspelt", &broken));
    assert!(
        errors.iter().any(|e| e.contains("resorces")),
        "`ferry schema` accepts a step with `resorces`: {errors:?}"
    );
    let mut wrong_type = yaml_to_json("train-eval-deploy", &example("train-eval-deploy").text);
    wrong_type["steps"][0]["resources"]["gpu"] = Value::String("four".into());
    let errors = schema_errors(&validator, &wrong_type);
    assert!(
        errors.iter().any(|e| e.starts_with("/steps/0/resources")),
        "`ferry schema` accepts gpu: \"four\": {errors:?}"
    );
}

#[test]
fn schemas_of_the_profile_and_the_config_accept_the_documented_files_and_reject_typos() {
    let root = workspace_root();
    let admin = std::fs::read_to_string(root.join("docs/ADMIN.md")).expect("ADMIN.md");
    let start = admin.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let config = &admin[start..start + admin[start..].find("```").expect("its end")];
    let profile = std::fs::read_to_string(root.join("examples/profile.yaml")).expect("profile");
    for (kind, text, typo, misspelt) in [
        ("config", config, "listen:", "listn:"),
        ("profile", profile.as_str(), "max_nodes:", "max_node:"),
    ] {
        let run = ferry(&root, &["schema", kind]);
        assert_eq!(run.code, 0, "{run}");
        let schema: Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("{kind}: not a usable JSON Schema: {e}"));
        let errors = schema_errors(&validator, &yaml_to_json(kind, text));
        assert!(errors.is_empty(), "{kind}: {errors:?}");
        assert!(text.contains(typo), "{kind}: {typo}");
        let broken = yaml_to_json(kind, &text.replacen(typo, misspelt, 1));
        let errors = schema_errors(&validator, &broken);
        assert!(
            errors
                .iter()
                .any(|e| e.contains(misspelt.trim_end_matches(':'))),
            "{kind}: `ferry schema {kind}` accepts `{misspelt}`: {errors:?}"
        );
    }
}

/// The context `ferry render` builds from `--sha SHA --repo URL` and the given ref/event.
fn cli_context(
    pipeline: &pipeline::Pipeline,
    event: EventKind,
    git_ref: &str,
    branch: Option<&str>,
    tag: Option<&str>,
) -> RunContext {
    RunContext {
        run_id: 1,
        project: "local".into(),
        repo_url: "https://x/y.git".into(),
        sha: SHA.into(),
        git_ref: git_ref.into(),
        branch: branch.map(str::to_owned),
        tag: tag.map(str::to_owned),
        merge_request: None,
        event,
        params: default_params(pipeline),
        namespace: None,
        dashboard_url: None,
    }
}

fn render_cli(file: &str, extra: &[&str]) -> ferry_tests::Run {
    let mut args = vec![
        "render",
        file,
        "--profile",
        PROFILE,
        "--sha",
        SHA,
        "--repo",
        "https://x/y.git",
    ];
    args.extend_from_slice(extra);
    ferry(&workspace_root(), &args)
}

fn assert_same(what: &str, cli: &Value, in_process: &Value) {
    let d = diffs(in_process, cli);
    assert!(
        d.is_empty(),
        "{what}: `ferry render` differs from the in-process render at {} place(s):\n{}",
        d.len(),
        d.iter()
            .take(20)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn render_json_equals_the_in_process_render_for_every_example() {
    let profile = profile();
    for ex in examples() {
        let run = render_cli(&ex.file, &["--ref", "main", "-o", "json"]);
        assert_eq!(run.code, 0, "{run}");
        let cli: Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
        let pipeline = ex.load();
        let ctx = cli_context(
            &pipeline,
            EventKind::Push,
            "refs/heads/main",
            Some("main"),
            None,
        );
        assert_same(
            &ex.file,
            &cli,
            &render(&pipeline, &profile, &ctx, &ex.file).manifest,
        );
        // The YAML output (ferry's own emitter) reads back as the same manifest.
        let run = render_cli(&ex.file, &["--ref", "main"]);
        assert_eq!(run.code, 0, "{run}");
        let yaml = yaml_to_json("`ferry render` output", &run.stdout);
        assert_same(&format!("{} (yaml)", ex.file), &yaml, &cli);
    }
}

#[test]
fn render_tag_manual_and_param_flags_match_the_in_process_render() {
    let profile = profile();
    let ex = example("train-eval-deploy");
    let pipeline = ex.load();

    let run = render_cli(
        &ex.file,
        &["--event", "tag", "--ref", "v1.2.0", "-o", "json"],
    );
    assert_eq!(run.code, 0, "{run}");
    let cli: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
    let ctx = cli_context(
        &pipeline,
        EventKind::Tag,
        "refs/tags/v1.2.0",
        None,
        Some("v1.2.0"),
    );
    assert_same(
        "tag v1.2.0",
        &cli,
        &render(&pipeline, &profile, &ctx, "tag").manifest,
    );

    let run = render_cli(
        &ex.file,
        &[
            "--event",
            "manual",
            "--ref",
            "refs/heads/exp/a",
            "--param",
            "lr=0.05",
            "--param",
            "epochs=3",
            "-o",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{run}");
    let cli: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
    let mut ctx = cli_context(
        &pipeline,
        EventKind::Manual,
        "refs/heads/exp/a",
        Some("exp/a"),
        None,
    );
    ctx.params = pipeline
        .resolve_params(&[("lr".into(), "0.05".into()), ("epochs".into(), "3".into())])
        .expect("declared parameters");
    assert_same(
        "manual with --param",
        &cli,
        &render(&pipeline, &profile, &ctx, "manual").manifest,
    );
}

#[test]
fn render_merge_request_flags_match_the_in_process_render_in_either_spelling() {
    let profile = profile();
    let ex = example("train-eval-deploy");
    let pipeline = ex.load();
    let mut ctx = cli_context(
        &pipeline,
        EventKind::MergeRequest,
        "refs/heads/feature/x",
        Some("feature/x"),
        None,
    );
    ctx.merge_request = Some(42);
    let expected = render(&pipeline, &profile, &ctx, "merge request").manifest;
    // `merge_request` as pipeline files and DESIGN.md spell the event; `merge-request` too.
    for spelling in ["merge_request", "merge-request"] {
        let run = render_cli(
            &ex.file,
            &[
                "--event",
                spelling,
                "--mr",
                "42",
                "--ref",
                "feature/x",
                "-o",
                "json",
            ],
        );
        assert_eq!(run.code, 0, "{spelling}: {run}");
        let cli: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{spelling}: not JSON ({e}):\n{run}"));
        assert_same(&format!("--event {spelling}"), &cli, &expected);
    }
}

/// Without `--sha`, `--repo` and `--ref`, `ferry render` reads them from the repository of the
/// current directory (HEAD's commit, `origin`, HEAD's branch), as `git` would report them.
#[test]
fn render_takes_commit_origin_and_branch_from_the_current_repository() {
    let profile = profile();
    let ex = example("train-eval-deploy");
    let pipeline = ex.load();
    let repo = TempDir::new("render-defaults");
    git(repo.path(), &["init", "-q", "-b", "feat/x"]);
    git(
        repo.path(),
        &[
            "remote",
            "add",
            "origin",
            "https://gitlab.example.com/ml/r.git",
        ],
    );
    let root = workspace_root();
    let (file, profile_path) = (root.join(&ex.file), root.join(PROFILE));
    let args = [
        "render",
        file.to_str().expect("utf-8"),
        "--profile",
        profile_path.to_str().expect("utf-8"),
        "-o",
        "json",
    ];

    let run = ferry(repo.path(), &args);
    assert_eq!(
        run.code, 2,
        "no commit yet (an error, not a pipeline problem): {run}"
    );
    assert!(run.stderr.contains("pass --sha"), "{run}");

    git(
        repo.path(),
        &["commit", "-q", "--allow-empty", "-m", "first"],
    );
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    let run = ferry(repo.path(), &args);
    assert_eq!(run.code, 0, "{run}");
    let cli: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
    let mut ctx = cli_context(
        &pipeline,
        EventKind::Push,
        "refs/heads/feat/x",
        Some("feat/x"),
        None,
    );
    ctx.sha = sha;
    ctx.repo_url = "https://gitlab.example.com/ml/r.git".into();
    assert_same(
        "defaults from the repository",
        &cli,
        &render(&pipeline, &profile, &ctx, "defaults").manifest,
    );

    // Without an `origin` remote, `--repo` is needed; flags always win over the repository.
    git(repo.path(), &["remote", "remove", "origin"]);
    let run = ferry(repo.path(), &args);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("pass --repo"), "{run}");
    let mut with_flags = args.to_vec();
    with_flags.extend(["--repo", "https://x/y.git", "--sha", SHA, "--ref", "main"]);
    let run = ferry(repo.path(), &with_flags);
    assert_eq!(run.code, 0, "{run}");
    let cli: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"));
    let ctx = cli_context(
        &pipeline,
        EventKind::Push,
        "refs/heads/main",
        Some("main"),
        None,
    );
    assert_same(
        "flags over the repository",
        &cli,
        &render(&pipeline, &profile, &ctx, "flags").manifest,
    );
}

#[test]
fn render_yaml_output_reads_back_as_the_same_manifest_with_every_string_a_string() {
    // Values that YAML 1.1 readers (kubectl, sigs.k8s.io/yaml) would turn into booleans, numbers or
    // null when emitted without quotes, plus the spec's hostile ref.
    let profile = profile();
    let ex = example("train-eval-deploy");
    let pipeline = ex.load();
    let tricky = [
        ("arch", "yes"),
        ("lr", "0.1"),
        ("epochs", "010"),
        ("batch_size", "on"),
    ];
    let mut args = vec![
        "--event",
        "manual",
        "--ref",
        "exp/a\";$(reboot)#{{x}}",
        "-o",
        "yaml",
    ];
    let flags: Vec<String> = tricky.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for f in &flags {
        args.extend(["--param", f.as_str()]);
    }
    let run = render_cli(&ex.file, &args);
    assert_eq!(run.code, 0, "{run}");
    let cli = yaml_to_json("`ferry render -o yaml` output", &run.stdout);
    let branch = "exp/a\";$(reboot)#{{x}}";
    let mut ctx = cli_context(
        &pipeline,
        EventKind::Manual,
        &format!("refs/heads/{branch}"),
        Some(branch),
        None,
    );
    let overrides: Vec<(String, String)> = tricky
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ctx.params = pipeline
        .resolve_params(&overrides)
        .expect("declared parameters");
    assert_same(
        "-o yaml",
        &cli,
        &render(&pipeline, &profile, &ctx, "manual").manifest,
    );
    // YAML 1.1 plain scalars: a value emitted bare would change type for kubectl.
    for (_, v) in tricky {
        for line in run.stdout.lines() {
            let bare =
                line.trim_end().ends_with(&format!(": {v}")) || line.trim() == format!("- {v}");
            assert!(
                !bare,
                "`{v}` is emitted as a plain scalar, which YAML 1.1 readers retype: `{}`",
                clip(line)
            );
        }
    }
}

#[test]
fn render_refuses_an_undeclared_parameter_and_names_it() {
    let ex = example("train-eval-deploy");
    let run = render_cli(
        &ex.file,
        &["--ref", "main", "--param", "undeclared=1", "-o", "json"],
    );
    assert_ne!(run.code, 0, "{run}");
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("undeclared"),
        "the message does not name `undeclared`:\n{run}"
    );
    assert!(
        !run.stdout.contains("\"apiVersion\""),
        "a manifest was printed anyway:\n{run}"
    );

    let run = render_cli(&ex.file, &["--ref", "main", "--param", "lr", "-o", "json"]);
    assert_ne!(run.code, 0, "{run}");
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("lr"),
        "the message does not name `lr`:\n{run}"
    );
}

#[test]
fn render_with_a_templates_dir_checks_every_template_in_it_first() {
    let ex = example("train-eval-deploy");
    let default = render_cli(&ex.file, &["--ref", "main", "-o", "json"]);
    assert_eq!(default.code, 0, "{default}");
    let dir = TempDir::new("render-templates");
    let templates = dir.path().to_str().expect("utf-8 path").to_owned();
    // The files themselves (the binary embeds them compacted): the same manifest.
    for name in ["workflow", "step-container"] {
        let file = format!("{name}.json.hbs");
        dir.write(
            &file,
            &ferry_tests::read(&workspace_root().join("templates").join(&file)),
        );
    }
    let run = render_cli(
        &ex.file,
        &["--ref", "main", "-o", "json", "--templates", &templates],
    );
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.stdout, default.stdout);
    // This pipeline has no distributed step, so it would never use `jobset`: still an error.
    dir.write("jobset.json.hbs", "{\n  {{#if deadline}}\n}\n");
    let run = render_cli(
        &ex.file,
        &["--ref", "main", "-o", "json", "--templates", &templates],
    );
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("template jobset") && run.stderr.contains("line"),
        "the error does not name the template and its line:\n{run}"
    );
    assert!(
        run.stdout.is_empty(),
        "a manifest was printed anyway:\n{run}"
    );
}

/// The binary is linked position-dependent unless `FERRY_PIE=1` (webhooks/build.rs): a PIE
/// `ferry` spends about 0.8 ms of every start relocating pointers, a sixth of a `ferry render`.
/// ELF `e_type` (bytes 16-17, little-endian): 2 is an executable, 3 a shared object (PIE).
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn the_binary_is_position_dependent_unless_built_with_ferry_pie() {
    let bytes = std::fs::read(env!("CARGO_BIN_EXE_ferry-under-test")).expect("read the binary");
    assert_eq!(&bytes[..4], b"\x7fELF", "an ELF file");
    let e_type = u16::from_le_bytes([bytes[16], bytes[17]]);
    let expected = if option_env!("FERRY_PIE") == Some("1") {
        3
    } else {
        2
    };
    assert_eq!(
        e_type,
        expected,
        "ELF type {e_type} (2: executable, 3: position-independent), FERRY_PIE={:?}",
        option_env!("FERRY_PIE")
    );
}

#[test]
fn serve_check_says_what_ferry_would_start_with_or_every_reason_it_would_not() {
    let dir = ferry_tests::TempDir::new("serve-check");
    let config = "executor: argo\nargo: { kubeconfig: kube/config }\n\
         database_url: postgres://ferry:hunter2@db.example.com/ferry\n\
         projects:\n\
         \x20 - { name: resnet, repo: \"https://gitlab.example.com/ml/resnet.git\", forge: gitlab, \
         webhook_secret_env: FERRY_CHECK_TEST_SECRET, token_env: FERRY_CHECK_TEST_TOKEN }\n";
    dir.write("ferry.yaml", config);
    let check = |secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-under-test"));
        command
            .args(["serve", "--check"])
            .current_dir(dir.path())
            .env_remove("FERRY_DATABASE_URL")
            .env_remove("FERRY_CHECK_TEST_SECRET")
            .env_remove("FERRY_CHECK_TEST_TOKEN");
        if let Some(secret) = secret {
            command.env("FERRY_CHECK_TEST_SECRET", secret);
        }
        let out = command.output().expect("ferry serve --check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Both reasons at once; the password never printed.
    let (code, stdout, stderr) = check(None);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("database    postgres://ferry:***@db.example.com/ferry\n"),
        "{stdout}"
    );
    assert!(stdout.contains("executor    argo\n"), "{stdout}");
    assert!(stdout.contains("projects    resnet\n"), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    assert_eq!(
        stderr,
        "warning: project `resnet`: environment variable FERRY_CHECK_TEST_TOKEN (token_env) is not set\n\
         error: project `resnet`: environment variable FERRY_CHECK_TEST_SECRET (webhook_secret_env) is not set\n\
         error: argo.kubeconfig kube/config is not a file\n\
         ferry serve would refuse to start\n"
    );

    // Fixed: it would start (the token is only a warning: ferry clones anonymously without it).
    dir.write("kube/config", "apiVersion: v1\nkind: Config\n");
    let (code, stdout, stderr) = check(Some("s3cret"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.ends_with("ok: ferry serve would start with this\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));

    // An invalid config: every problem, exit 1.
    dir.write("ferry.yaml", "listn: 1\nexecutor: argoo\n");
    let (code, stdout, stderr) = check(Some("s3cret"));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("ferry.yaml:1:1: listn: unknown field `listn`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ferry.yaml:2:11: executor: unknown variant `argoo`, expected one of `local`, `argo`; did you mean `argo`?"),
        "{stderr}"
    );
}
