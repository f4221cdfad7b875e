//! Manual runs: a person (API, CLI, dashboard, the demo) asks for one pipeline at a ref or commit.
//!
//! The pipeline is read from the project's mirror at that commit and validated against the profile
//! exactly as for a push; parameters must be declared by the pipeline. A manual run is never
//! deduplicated: asking twice runs twice.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::pipeline::{self, EventKind, UndeclaredParam};
use crate::problem::Problems;
use crate::service::concurrency;
use crate::service::mirror::{DEFAULT_REFSPECS, MirrorError};
use crate::service::planner::Planner;
use crate::store::{NewRun, RunId, RunState, StoreError};

/// A request for a manual run.
#[derive(Debug, Clone, Default)]
pub struct ManualRequest {
    /// The configured project.
    pub project: String,
    /// The pipeline's name (or its file stem).
    pub pipeline: String,
    /// A branch, a tag or a full ref; default: the project's default branch.
    pub git_ref: Option<String>,
    /// A commit; when given with `git_ref`, the ref only names the run's branch or tag.
    pub sha: Option<String>,
    /// Parameter overrides; each must be declared by the pipeline.
    pub params: Vec<(String, String)>,
    /// The run this one repeats, for reruns.
    pub rerun_of: Option<RunId>,
    /// What to record as the trigger ([`EventKind::Manual`] unless a comment asked).
    pub trigger: Option<EventKind>,
    /// Who asked (an API token's name), recorded with the run.
    pub triggered_by: Option<String>,
}

/// Why a manual run was not created.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    /// No such project in `ferry.yaml`.
    #[error("project `{0}` is not configured")]
    UnknownProject(String),
    /// The ref does not exist in the repository.
    #[error("ref `{0}` was not found in the repository")]
    UnknownRef(String),
    /// No pipeline of that name at the commit.
    #[error("no pipeline `{name}` at {sha} (pipelines: {available})")]
    UnknownPipeline {
        /// The name asked for.
        name: String,
        /// The commit.
        sha: String,
        /// The pipelines that exist there.
        available: String,
    },
    /// The pipeline file is invalid at that commit.
    #[error("the pipeline is invalid:\n{0}")]
    Invalid(Problems),
    /// Parameters the pipeline does not declare.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    UndeclaredParams(Vec<UndeclaredParam>),
    /// Reading the repository failed.
    #[error("git: {0}")]
    Git(#[from] MirrorError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl Planner {
    /// Creates a queued manual run (and wakes the dispatcher). Fetches the mirror first.
    pub async fn trigger(&self, req: &ManualRequest) -> Result<RunId, ManualError> {
        let project = self
            .config
            .project(&req.project)
            .ok_or_else(|| ManualError::UnknownProject(req.project.clone()))?
            .clone();
        let default_branch = project
            .default_branch
            .clone()
            .unwrap_or_else(|| "main".into());
        let wanted_ref = req
            .git_ref
            .clone()
            .unwrap_or_else(|| default_branch.clone());
        let (mirrors, creds, sha_given) = (
            self.mirrors.clone(),
            (self.credentials)(&project),
            req.sha.clone(),
        );
        let p = project.clone();
        let lookup = wanted_ref.clone();
        let (full_ref, sha, files) =
            tokio::task::spawn_blocking(move || -> Result<Resolved, ManualError> {
                let candidates = ref_candidates(&lookup);
                let sha = match sha_given {
                    Some(sha) => {
                        mirrors.ensure_commit(&p.name, &p.repo, &creds, &sha)?;
                        sha
                    }
                    None => {
                        mirrors.fetch(&p.name, &p.repo, &creds, &DEFAULT_REFSPECS)?;
                        let mut found = None;
                        for c in &candidates {
                            if let Some(sha) = mirrors.resolve(&p.name, c)? {
                                found = Some((c.clone(), sha));
                                break;
                            }
                        }
                        let (full, sha) =
                            found.ok_or_else(|| ManualError::UnknownRef(lookup.clone()))?;
                        let files = mirrors.pipeline_files(&p.name, &sha)?;
                        return Ok((full, sha, files));
                    }
                };
                let files = mirrors.pipeline_files(&p.name, &sha)?;
                let full = candidates.into_iter().next().unwrap_or_default();
                Ok((full, sha, files))
            })
            .await
            .map_err(|e| ManualError::Git(MirrorError::Internal(e.to_string())))??;

        let (file, text) = files
            .iter()
            .map(|(f, b)| (f.clone(), String::from_utf8_lossy(b).into_owned()))
            .find(|(f, text)| {
                let stem = Path::new(f).file_stem().and_then(|s| s.to_str());
                stem == Some(req.pipeline.as_str())
                    || pipeline::load(f, text, None).is_ok_and(|p| p.name == req.pipeline)
            })
            .ok_or_else(|| ManualError::UnknownPipeline {
                name: req.pipeline.clone(),
                sha: sha.clone(),
                available: crate::problem::allowed_list(
                    files
                        .iter()
                        .filter_map(|(f, _)| Path::new(f).file_stem().and_then(|s| s.to_str())),
                ),
            })?;
        let pipeline =
            pipeline::load(&file, &text, Some(&self.profile)).map_err(ManualError::Invalid)?;
        let params = pipeline
            .resolve_params(&req.params)
            .map_err(ManualError::UndeclaredParams)?;
        let (branch, tag) = if let Some(b) = full_ref.strip_prefix("refs/heads/") {
            (Some(b.to_owned()), None)
        } else if let Some(t) = full_ref.strip_prefix("refs/tags/") {
            (None, Some(t.to_owned()))
        } else {
            (None, None)
        };
        let run = NewRun {
            project: project.name.clone(),
            pipeline: pipeline.name.clone(),
            sha,
            trigger: req.trigger.unwrap_or(EventKind::Manual),
            event_id: None,
            rerun_of: req.rerun_of,
            git_ref: full_ref,
            branch,
            tag,
            mr: None,
            params: params
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect::<BTreeMap<_, _>>(),
            pipeline_path: file,
            pipeline_yaml: text,
            problems: Vec::new(),
            initial: RunState::Queued,
            dedup_scope: None,
            steps: pipeline.steps.iter().map(|s| s.name.clone()).collect(),
        };
        let (id, _) = self
            .store
            .create_run_by(&run, req.triggered_by.as_deref())
            .await?;
        concurrency::cancel_superseded_with(&self.store, id, &run, pipeline.concurrency).await?;
        tracing::info!(run = %id, project = %run.project, pipeline = %run.pipeline, sha = %run.sha,
            "manual run queued");
        if let Some(wake) = &self.runs_created {
            wake.notify_one();
        }
        Ok(id)
    }
}

/// What a manual request resolves to in the mirror: the full ref, the commit, and the pipeline
/// files at that commit.
type Resolved = (String, String, Vec<(String, Vec<u8>)>);

/// The full refs a name may mean, most likely first: a full ref as it is; otherwise the branch,
/// then the tag.
fn ref_candidates(name: &str) -> Vec<String> {
    if name.starts_with("refs/") {
        vec![name.to_owned()]
    } else {
        vec![format!("refs/heads/{name}"), format!("refs/tags/{name}")]
    }
}
