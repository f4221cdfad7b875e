//! The server configuration (`ferry.yaml`): read once at the edge, typed, checked in one place.
//!
//! Secrets are never in this file: projects name the environment variables that hold them, and
//! the binary reads those variables (the engine reads no environment). Keys are a contract with
//! operators (DESIGN.md); unknown keys are errors with "did you mean".

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::event::ForgeKind;
use crate::problem::Problems;
use crate::profile::Profile;
use crate::yaml;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base of links in statuses and comments.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `sqlite://FILE` or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Git mirrors, local workspaces and logs.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where runs execute.
    #[serde(default)]
    pub executor: ExecutorKind,
    /// Local executor settings.
    #[serde(default)]
    pub local: LocalConfig,
    /// Argo settings.
    #[serde(default)]
    pub argo: ArgoConfig,
    /// Whether the dashboard is readable without a token.
    #[serde(default)]
    pub dashboard_public: bool,
    /// The cluster profile, as a file (relative to the config file).
    #[serde(default)]
    pub profile_file: Option<PathBuf>,
    /// The cluster profile, inline.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Repositories ferry serves.
    #[serde(default)]
    pub projects: Vec<ProjectConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_database_url() -> String {
    "sqlite://ferry.db".to_owned()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./ferry-data")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            public_url: None,
            database_url: default_database_url(),
            data_dir: default_data_dir(),
            executor: ExecutorKind::Local,
            local: LocalConfig::default(),
            argo: ArgoConfig::default(),
            dashboard_public: false,
            profile_file: None,
            profile: None,
            projects: Vec::new(),
        }
    }
}

/// Executors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Local processes (the embedded default).
    #[default]
    Local,
    /// Argo Workflows on Kubernetes.
    Argo,
}

/// `local:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// GPUs the local executor may hand out (default: detected).
    #[serde(default)]
    pub gpus: Option<u32>,
}

/// `argo:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgoConfig {
    /// Argo UI base URL, for links.
    #[serde(default)]
    pub ui_url: Option<String>,
    /// The kubeconfig to use (relative to the config file, like `profile_file`); without it, the
    /// configuration is inferred (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service
    /// account).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace of projects that name none (default: the kubeconfig context's, else
    /// `default`).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Which forge a project is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectForge {
    /// GitLab.
    Gitlab,
    /// GitHub.
    Github,
    /// No forge: manual runs only.
    None,
}

impl ProjectForge {
    /// The forge whose webhooks this project accepts.
    pub fn kind(self) -> Option<ForgeKind> {
        match self {
            ProjectForge::Gitlab => Some(ForgeKind::Gitlab),
            ProjectForge::Github => Some(ForgeKind::Github),
            ProjectForge::None => None,
        }
    }
}

/// One repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Project name (labels, URLs, the store).
    pub name: String,
    /// Clone URL, matched against the URLs in webhook payloads.
    pub repo: String,
    /// The forge.
    pub forge: ProjectForge,
    /// Forge API base URL.
    #[serde(default)]
    pub forge_url: Option<String>,
    /// Env var holding the forge token (also used to clone over https).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Env var holding the GitHub App id.
    #[serde(default)]
    pub github_app_id_env: Option<String>,
    /// Env var holding the GitHub App private key.
    #[serde(default)]
    pub github_app_key_env: Option<String>,
    /// Env var holding the webhook secret.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// Kubernetes namespace of the project's workflows.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Most runs executing at once.
    #[serde(default)]
    pub max_concurrent_runs: Option<u32>,
    /// Most GPUs in use at once.
    #[serde(default)]
    pub max_gpus: Option<u32>,
    /// Default branch, when payloads do not say (default `main`).
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// Canonical form of a repository URL for comparisons: no scheme, user, `.git` or trailing `/`,
/// lower case; `git@host:path` becomes `host/path`.
pub fn canonical_repo_url(url: &str) -> String {
    let mut s = url.trim().to_lowercase();
    for scheme in ["https://", "http://", "ssh://", "git://", "file://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest.to_owned();
        }
    }
    if let Some((user, rest)) = s.split_once('@')
        && !user.contains('/')
    {
        s = rest.to_owned();
    }
    if let Some((host, path)) = s.split_once(':')
        && !host.contains('/')
        && !path.starts_with(|c: char| c.is_ascii_digit())
    {
        s = format!("{host}/{path}");
    }
    let s = s.trim_end_matches('/');
    s.strip_suffix(".git").unwrap_or(s).to_owned()
}

/// The password in a URL's user info, if any.
pub(crate) fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password)
}

/// `url` with its password replaced by `***`, for logs and error messages (clone URLs, database
/// URLs): the one place ferry redacts URLs.
pub fn redact_url(url: &str) -> String {
    match url_password(url) {
        Some(password) if !password.is_empty() => {
            url.replacen(&format!(":{password}@"), ":***@", 1)
        }
        Some(_) | None => url.to_owned(),
    }
}

impl Config {
    /// Parses and checks a config file.
    pub fn from_yaml(file: &str, text: &str) -> Result<Config, Problems> {
        let config: Config = yaml::parse(file, text).map_err(|p| Problems(vec![p]))?;
        let problems = config.check();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(yaml::locate(file, text, problems))
    }

    /// The project whose `repo` is one of `urls`.
    pub fn project_for(&self, forge: ForgeKind, urls: &[String]) -> Option<&ProjectConfig> {
        let wanted: Vec<String> = urls.iter().map(|u| canonical_repo_url(u)).collect();
        self.projects.iter().find(|p| {
            p.forge.kind() == Some(forge) && wanted.contains(&canonical_repo_url(&p.repo))
        })
    }

    /// A project by name.
    pub fn project(&self, name: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.name == name)
    }

    fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.profile.is_some() && self.profile_file.is_some() {
            out.push((
                "profile".to_owned(),
                "give `profile` or `profile_file`, not both".to_owned(),
            ));
        }
        let db = &self.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            out.push((
                "database_url".into(),
                format!("`{db}`: expected sqlite://FILE or postgres://USER@HOST/DB"),
            ));
        }
        if let Some(profile) = &self.profile {
            out.extend(
                profile
                    .check()
                    .into_iter()
                    .map(|(path, msg)| (format!("profile.{path}"), msg)),
            );
        }
        if let Some(ns) = &self.argo.namespace
            && !crate::pipeline::is_dns_label(ns)
        {
            out.push((
                "argo.namespace".into(),
                format!("`{ns}` is not a namespace name"),
            ));
        }
        if self
            .argo
            .kubeconfig
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            out.push((
                "argo.kubeconfig".into(),
                "`kubeconfig` is empty: give a path, or leave it out to infer the configuration"
                    .into(),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            let at = format!("projects[{i}]");
            if !crate::pipeline::is_dns_label(&p.name) {
                out.push((
                    format!("{at}.name"),
                    format!("`{}`: use lower-case letters, digits and `-`", p.name),
                ));
            }
            if !names.insert(p.name.as_str()) {
                out.push((
                    format!("{at}.name"),
                    format!("project `{}` is defined twice", p.name),
                ));
            }
            if p.repo.trim().is_empty() {
                out.push((format!("{at}.repo"), "`repo` is empty".into()));
            }
            if p.forge != ProjectForge::None && p.webhook_secret_env.is_none() {
                out.push((at.clone(), "a project on a forge needs `webhook_secret_env` (the env var holding the webhook secret)".into()));
            }
            if let Some(ns) = &p.namespace
                && !crate::pipeline::is_dns_label(ns)
            {
                out.push((
                    format!("{at}.namespace"),
                    format!("`{ns}` is not a namespace name"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_in_canonical_form() {
        let a = canonical_repo_url("https://GitLab.example.com/ml/resnet.git/");
        assert_eq!(a, "gitlab.example.com/ml/resnet");
        assert_eq!(
            canonical_repo_url("git@gitlab.example.com:ml/resnet.git"),
            a
        );
        assert_eq!(
            canonical_repo_url("ssh://git@gitlab.example.com/ml/resnet"),
            a
        );
        assert_eq!(
            canonical_repo_url("http://localhost:8080/ml/resnet.git"),
            "localhost:8080/ml/resnet"
        );
    }

    #[test]
    fn defaults_and_checks() {
        let c = Config::from_yaml("ferry.yaml", "projects: []\n").expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://ferry.db");
        let bad = "projects:\n  - { name: Res, repo: x, forge: gitlab }\n";
        let err = Config::from_yaml("ferry.yaml", bad)
            .expect_err("invalid")
            .to_string();
        assert_eq!(
            err,
            "ferry.yaml:2:5: projects[0]: a project on a forge needs `webhook_secret_env` (the env var holding the webhook secret)\nferry.yaml:2:13: projects[0].name: `Res`: use lower-case letters, digits and `-`"
        );
        let typo = Config::from_yaml("ferry.yaml", "listn: 1\n")
            .expect_err("typo")
            .to_string();
        assert!(typo.contains("did you mean `listen`?"), "{typo}");
    }

    #[test]
    fn argo_settings_are_checked() {
        let text = "executor: argo\nargo: { kubeconfig: kube/config, namespace: ml-team }\n";
        let c = Config::from_yaml("ferry.yaml", text).expect("valid");
        assert_eq!(c.argo.kubeconfig, Some(PathBuf::from("kube/config")));
        assert_eq!(c.argo.namespace.as_deref(), Some("ml-team"));
        let bad = "argo:\n  namespace: ML_Team\n  kubeconfig: \"\"\n";
        let err = Config::from_yaml("ferry.yaml", bad)
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("argo.namespace: `ML_Team` is not a namespace name"),
            "{err}"
        );
        assert!(
            err.contains("argo.kubeconfig: `kubeconfig` is empty"),
            "{err}"
        );
        let typo = Config::from_yaml("ferry.yaml", "argo: { namespce: x }\n")
            .expect_err("typo")
            .to_string();
        assert!(typo.contains("did you mean `namespace`?"), "{typo}");
    }

    #[test]
    fn projects_are_found_by_any_payload_url() {
        let text = "projects:\n  - { name: resnet, repo: https://gitlab.example.com/ml/resnet.git, forge: gitlab, webhook_secret_env: S }\n";
        let c = Config::from_yaml("ferry.yaml", text).expect("valid");
        let urls = vec!["git@gitlab.example.com:ml/resnet.git".to_owned()];
        assert_eq!(
            c.project_for(ForgeKind::Gitlab, &urls)
                .map(|p| p.name.as_str()),
            Some("resnet")
        );
        assert!(c.project_for(ForgeKind::Github, &urls).is_none());
    }
}
