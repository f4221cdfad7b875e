//! The demo project of the embedded defaults: with no `ferry.yaml`, `ferry serve` creates a small
//! git repository under `data_dir/demo` (the files of `examples/demo`, embedded in the binary),
//! configures it as project `demo` (no forge: manual runs only), and runs its pipeline once, so a
//! newcomer sees a pipeline go from queued to succeeded on this machine.
//!
//! An existing `data_dir/demo` repository is used as it is (a person may have changed and committed
//! it); its `main` branch is run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_engine::config::{Config, ProjectConfig};
use git2::{IndexAddOption, Repository, Signature};

/// The project name of the demo.
pub const PROJECT: &str = "demo";
/// The pipeline the demo runs.
pub const PIPELINE: &str = "demo";

/// The files of the demo repository: path, contents, executable.
const FILES: &[(&str, &str, bool)] = &[
    (
        ".ferry/demo.yaml",
        include_str!("../../../examples/demo/.ferry/demo.yaml"),
        false,
    ),
    (
        "train.sh",
        include_str!("../../../examples/demo/train.sh"),
        true,
    ),
    (
        "README.md",
        include_str!("../../../examples/demo/README.md"),
        false,
    ),
];

/// Creates (or reuses) the demo repository under `data_dir/demo` and adds project `demo` to
/// `config`. Returns the repository's path.
pub fn install(config: &mut Config) -> Result<PathBuf> {
    let dir = absolute(&config.data_dir.join("demo"))?;
    if Repository::open(&dir).is_err() {
        create(&dir).with_context(|| format!("creating the demo repository {}", dir.display()))?;
    }
    let mut project: ProjectConfig = serde_saphyr::from_str(&format!(
        "name: {PROJECT}\nrepo: \"file://{}\"\nforge: none\ndefault_branch: main\n",
        dir.display()
    ))
    .context("the demo project's configuration")?;
    project.name = PROJECT.to_owned();
    config.projects.retain(|p| p.name != PROJECT);
    config.projects.push(project);
    Ok(dir)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let repo = Repository::init(dir)?;
    for (path, text, executable) in FILES {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, text)?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let mut index = repo.index()?;
    index.add_all(["*"], IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let who = Signature::now("ferry demo", "demo@ferry.invalid")?;
    let commit = repo.commit(None, &who, &who, "The ferry demo pipeline", &tree, &[])?;
    repo.reference("refs/heads/main", commit, true, "demo")?;
    repo.set_head("refs/heads/main")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_repository_holds_a_valid_pipeline_and_an_executable_script() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: tmp.path().to_path_buf(),
            ..Config::default()
        };
        let dir = install(&mut config).expect("install");
        let repo = Repository::open(&dir).expect("repo");
        let head = repo.revparse_single("refs/heads/main").expect("main");
        let tree = head.peel_to_commit().expect("commit").tree().expect("tree");
        let entry = tree.get_path(Path::new("train.sh")).expect("train.sh");
        assert_eq!(entry.filemode(), 0o100_755, "train.sh is executable in git");
        let yaml = std::fs::read_to_string(dir.join(".ferry/demo.yaml")).expect("yaml");
        let pipeline =
            ferry_engine::pipeline::load(".ferry/demo.yaml", &yaml, None).expect("valid");
        assert_eq!(pipeline.name, PIPELINE);
        assert_eq!(config.projects.len(), 1);
        assert_eq!(config.projects[0].repo, format!("file://{}", dir.display()));
        // A second start reuses the repository and does not add the project twice.
        install(&mut config).expect("again");
        assert_eq!(config.projects.len(), 1);
    }
}
