//! Pipeline files: read `.ferry/**/*.y{a,}ml`, parse within limits, validate into [`Pipeline`].
//!
//! Input arrives as (path, bytes) pairs, from a directory on disk ([`read_dir`]) or, later, from a
//! commit in a git mirror; [`load_files`] turns them into pipelines plus the problems of the files
//! that failed. A file that fails fails only its own pipeline.

pub mod expr;
pub mod glob;
mod model;
pub mod spec;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use model::*;
pub use validate::{is_dns_label, is_dns_subdomain};

use crate::problem::{Problem, Problems};
use crate::profile::Profile;
use crate::yaml;

/// Parses and validates one pipeline file.
///
/// Without a profile, checks that need one (GPU types, queues, limits, ...) are skipped.
pub fn load(file: &str, text: &str, profile: Option<&Profile>) -> Result<Pipeline, Problems> {
    let spec: spec::PipelineSpec = yaml::parse_all(file, text)?;
    let validated = validate::validate(file, spec, profile).map(|mut p| {
        p.fingerprint = crate::render::fingerprint(&format!("{file}\n{text}"));
        p
    });
    validated.map_err(|raw| yaml::locate(file, text, raw))
}

/// Pipelines read from a set of files, and the problems of those that failed.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid pipelines, in file order.
    pub pipelines: Vec<Pipeline>,
    /// Problems, grouped by file in file order.
    pub problems: Vec<Problem>,
}

/// Loads every file; two files declaring the same pipeline name are both errors.
pub fn load_files(files: &[(String, Vec<u8>)], profile: Option<&Profile>) -> Loaded {
    let mut out = Loaded::default();
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (file, bytes) in files {
        let Ok(text) = std::str::from_utf8(bytes) else {
            out.problems
                .push(whole_file(file, "file is not valid UTF-8"));
            continue;
        };
        match load(file, text, profile) {
            Ok(p) => {
                names.entry(p.name.clone()).or_default().push(file.clone());
                out.pipelines.push(p);
            }
            Err(Problems(ps)) => out.problems.extend(ps),
        }
    }
    for (name, files) in names.into_iter().filter(|(_, f)| f.len() > 1) {
        out.pipelines.retain(|p| p.name != name);
        for file in &files {
            let others: Vec<&str> = files
                .iter()
                .filter(|f| *f != file)
                .map(String::as_str)
                .collect();
            let mut p = whole_file(
                file,
                &format!(
                    "pipeline name `{name}` is also used by {}",
                    others.join(", ")
                ),
            );
            p.path = "name".into();
            (p.line, p.column) = (1, 1);
            out.problems.push(p);
        }
    }
    out
}

fn whole_file(file: &str, message: &str) -> Problem {
    Problem {
        file: file.to_owned(),
        line: 0,
        column: 0,
        path: String::new(),
        message: message.to_owned(),
    }
}

/// Reads pipeline files from disk: a file, a `.ferry` directory, or a repository root (whose
/// `.ferry/` is read). Paths in the result are relative to `path` as given.
pub fn read_dir(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    if path.is_file() {
        return Ok(vec![(path.display().to_string(), std::fs::read(path)?)]);
    }
    let dir = if path.join(".ferry").is_dir() {
        path.join(".ferry")
    } else {
        path.to_path_buf()
    };
    let mut files = Vec::new();
    collect(&dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|f| Ok((f.display().to_string(), std::fs::read(&f)?)))
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if kind.is_file() && is_pipeline_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// True for `*.yaml` and `*.yml`.
pub fn is_pipeline_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The JSON Schema of pipeline files, for editors (yaml-language-server).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(spec::PipelineSpec);
    schema.to_value()
}

/// A parameter override that the pipeline does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{name}` is not declared by pipeline `{pipeline}` (declared: {declared})")]
pub struct UndeclaredParam {
    /// The parameter given.
    pub name: String,
    /// The pipeline.
    pub pipeline: String,
    /// The declared names, formatted.
    pub declared: String,
}

impl Pipeline {
    /// The parameters of a run: declared defaults with `overrides` applied.
    ///
    /// Every override must name a declared parameter; all undeclared ones are reported.
    pub fn resolve_params(
        &self,
        overrides: &[(String, String)],
    ) -> Result<BTreeMap<String, String>, Vec<UndeclaredParam>> {
        let mut params = self.params.clone();
        let mut bad = Vec::new();
        for (name, value) in overrides {
            match params.get_mut(name) {
                Some(slot) => value.clone_into(slot),
                None => bad.push(UndeclaredParam {
                    name: name.clone(),
                    pipeline: self.name.clone(),
                    declared: crate::problem::allowed_list(self.params.keys().map(String::as_str)),
                }),
            }
        }
        if bad.is_empty() { Ok(params) } else { Err(bad) }
    }
}

#[cfg(test)]
mod tests;
