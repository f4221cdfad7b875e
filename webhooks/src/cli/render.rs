//! `ferry render`: one pipeline to its Argo Workflow, with the run context from flags or git.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use ferry_engine::pipeline::{self, EventKind, Pipeline};
use ferry_engine::render::{Renderer, RunContext};

use super::repo;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Event {
    Push,
    Tag,
    /// Spelt as in pipeline files (`if.events`, `on.merge_request`); `merge-request` also works.
    #[value(name = "merge_request", alias = "merge-request")]
    MergeRequest,
    Manual,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

/// Arguments of `ferry render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// A pipeline file, or the name of a pipeline under `./.ferry`.
    pipeline: String,
    /// The cluster profile.
    #[arg(long)]
    profile: PathBuf,
    /// The event the run is for.
    #[arg(long, value_enum, default_value = "push")]
    event: Event,
    /// Branch or tag (`main`, `refs/heads/main`, `refs/tags/v1`); default: the current branch.
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Commit SHA; default: `HEAD` of the current repository.
    #[arg(long)]
    sha: Option<String>,
    /// Clone URL; default: the `origin` remote of the current repository.
    #[arg(long)]
    repo: Option<String>,
    /// Run id (the workflow is `ferry-<id>`).
    #[arg(long, default_value_t = 1)]
    run_id: u64,
    /// Merge request number (with `--event merge_request`).
    #[arg(long)]
    mr: Option<u64>,
    /// Project name for labels.
    #[arg(long, default_value = "local")]
    project: String,
    /// Kubernetes namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Parameter override `key=value` (repeatable; only declared parameters).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Directory of templates overriding the embedded ones.
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    output: Format,
}

pub fn render(args: RenderArgs) -> Result<ExitCode> {
    let profile = super::load_profile(&args.profile)?;
    let (file, text) = find_pipeline(&args.pipeline)?;
    let pipeline = match pipeline::load(&file, &text, Some(&profile)) {
        Ok(p) => p,
        Err(problems) => {
            println!("{problems}");
            return Ok(ExitCode::from(1));
        }
    };
    let ctx = context(&args, &pipeline)?;
    let renderer = match &args.templates {
        Some(dir) => Renderer::from_dir(dir)?,
        None => Renderer::embedded(),
    };
    let rendered = renderer.render(&pipeline, &profile, &ctx)?;
    for s in &rendered.skipped {
        eprintln!("skipped step {}: {}", s.step, s.reason);
    }
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rendered.manifest)?),
        Format::Yaml => print!("{}", super::yaml::to_yaml(&rendered.manifest)),
    }
    // The process ends here and the OS takes its memory back at once: dropping the manifest's
    // JSON tree, the compiled templates, the pipeline and the profile one node at a time was a
    // tenth of the command's instructions (docs/PERFORMANCE.md).
    std::mem::forget((rendered, renderer, pipeline, profile, ctx));
    Ok(ExitCode::SUCCESS)
}

/// A path to a file, or a pipeline name looked up under `./.ferry`.
pub(super) fn find_pipeline(arg: &str) -> Result<(String, String)> {
    let path = Path::new(arg);
    if path.is_file() {
        return Ok((arg.to_owned(), std::fs::read_to_string(path)?));
    }
    let files = pipeline::read_dir(Path::new(".ferry")).unwrap_or_default();
    for (file, bytes) in files {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let stem = Path::new(&file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if stem == arg || pipeline::load(&file, &text, None).is_ok_and(|p| p.name == arg) {
            return Ok((file, text));
        }
    }
    bail!("no pipeline file `{arg}`, and no pipeline named `{arg}` under ./.ferry")
}

fn context(args: &RenderArgs, pipeline: &Pipeline) -> Result<RunContext> {
    let (head_sha, head_ref) = repo::head(args.sha.is_none(), args.git_ref.is_none());
    let sha = match &args.sha {
        Some(s) => s.clone(),
        None => {
            head_sha.ok_or_else(|| anyhow!("not in a git repository with a commit: pass --sha"))?
        }
    };
    let repo_url = match &args.repo {
        Some(r) => r.clone(),
        None => repo::origin_url().ok_or_else(|| anyhow!("no `origin` remote: pass --repo"))?,
    };
    let event = match args.event {
        Event::Push => EventKind::Push,
        Event::Tag => EventKind::Tag,
        Event::MergeRequest => EventKind::MergeRequest,
        Event::Manual => EventKind::Manual,
    };
    let given = args
        .git_ref
        .clone()
        .or(head_ref)
        .unwrap_or_else(|| "refs/heads/main".into());
    let (git_ref, branch, tag) = split_ref(&given, event);
    let overrides = parse_params(&args.params)?;
    let params = pipeline.resolve_params(&overrides).map_err(|bad| {
        anyhow!(
            bad.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    Ok::<_, anyhow::Error>(RunContext {
        run_id: args.run_id,
        project: args.project.clone(),
        repo_url,
        sha,
        git_ref,
        branch,
        tag,
        merge_request: args.mr,
        event,
        params,
        namespace: args.namespace.clone(),
        dashboard_url: None,
    })
    .context("building the run context")
}

/// `--param key=value` flags as pairs.
pub(super) fn parse_params(flags: &[String]) -> Result<Vec<(String, String)>> {
    flags
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("--param `{kv}` is not key=value"))
        })
        .collect()
}

/// `main` / `refs/heads/main` / `refs/tags/v1` -> (full ref, branch, tag).
fn split_ref(given: &str, event: EventKind) -> (String, Option<String>, Option<String>) {
    if let Some(tag) = given.strip_prefix("refs/tags/") {
        return (given.to_owned(), None, Some(tag.to_owned()));
    }
    if let Some(branch) = given.strip_prefix("refs/heads/") {
        return (given.to_owned(), Some(branch.to_owned()), None);
    }
    if event == EventKind::Tag {
        return (format!("refs/tags/{given}"), None, Some(given.to_owned()));
    }
    (format!("refs/heads/{given}"), Some(given.to_owned()), None)
}
