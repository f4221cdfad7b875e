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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
    /// Several replicas on one PostgreSQL database: claim leases and polling.
    #[serde(default)]
    pub replicas: ReplicasConfig,
    /// How runs are reported on the forge.
    #[serde(default)]
    pub report: ReportConfig,
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
            replicas: ReplicasConfig::default(),
            report: ReportConfig::default(),
            dashboard_public: false,
            profile_file: None,
            profile: None,
            projects: Vec::new(),
        }
    }
}

/// Executors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Local processes (the embedded default).
    #[default]
    Local,
    /// Argo Workflows on Kubernetes.
    Argo,
}

/// `local:`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// GPUs the local executor may hand out (default: detected).
    #[serde(default)]
    pub gpus: Option<u32>,
}

/// `argo:`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
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

/// `replicas:`: how replicas sharing one PostgreSQL database divide the work (`store::claims`).
/// Ignored on SQLite (one process).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicasConfig {
    /// How long a replica's claim on a project, a queued run or a run's report lasts without
    /// renewal: after a replica dies, its work waits this long before another takes it over.
    /// Must exceed the longest forge call (the reporter renews before each).
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// How often an idle replica looks in the database for work other replicas stored
    /// (deliveries, queued runs, outbox rows, runs to follow), in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_lease_seconds() -> u64 {
    30
}

fn default_poll_ms() -> u64 {
    1000
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        ReplicasConfig {
            lease_seconds: default_lease_seconds(),
            poll_ms: default_poll_ms(),
        }
    }
}

impl ReplicasConfig {
    /// The claim lease.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds)
    }

    /// The idle poll interval.
    pub fn poll(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_ms)
    }

    /// The longest a worker (planner, submitter, reporter) may sleep when nothing wakes it: on
    /// PostgreSQL other replicas store work this process is not told about, so [`Self::poll`];
    /// SQLite is one process, so no limit.
    pub fn idle_poll(&self, backend: crate::store::Backend) -> std::time::Duration {
        match backend {
            crate::store::Backend::Postgres => self.poll(),
            crate::store::Backend::Sqlite => std::time::Duration::MAX,
        }
    }
}

/// `report:`: how runs are reported on the forge (`service::report`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// How long a run may be queued (or submitted and not yet running) before the forge is told
    /// it is `pending`, in milliseconds. A run that starts sooner goes straight to `running` and
    /// saves a call; a run waiting for quota or approval is reported at once, with its reason.
    #[serde(default = "default_pending_after_ms")]
    pub pending_after_ms: u64,
}

fn default_pending_after_ms() -> u64 {
    10_000
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            pending_after_ms: default_pending_after_ms(),
        }
    }
}

/// Which forge a project is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
        let config: Config = yaml::parse_all(file, text)?;
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
        if self.replicas.lease_seconds < 5 {
            out.push((
                "replicas.lease_seconds".into(),
                format!(
                    "{} s is too short: a lease must outlive a forge call and a git fetch (use 5 or more)",
                    self.replicas.lease_seconds
                ),
            ));
        }
        if !(10..=60_000).contains(&self.replicas.poll_ms) {
            out.push((
                "replicas.poll_ms".into(),
                format!("{} ms: use 10 to 60000", self.replicas.poll_ms),
            ));
        }
        if self.report.pending_after_ms > 600_000 {
            out.push((
                "report.pending_after_ms".into(),
                format!(
                    "{} ms: use 0 (report every queued run at once) to 600000",
                    self.report.pending_after_ms
                ),
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
    fn every_shape_problem_of_a_config_is_reported_at_once() {
        let text = "listn: 127.0.0.1:9000
executor: locl
replicas: { lease_seconds: [30] }
projects:
  - { name: a, repo: x, forge: gitlab, webhook_secret: S }
";
        let err = Config::from_yaml("ferry.yaml", text)
            .expect_err("invalid")
            .to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            vec![
                "ferry.yaml:1:1: listn: unknown field `listn`, expected one of `argo`, `dashboard_public`, `data_dir`, `database_url`, `executor`, `listen`, `local`, `profile`, `profile_file`, `projects`, `public_url`, `replicas`, `report`; did you mean `listen`?",
                "ferry.yaml:2:11: executor: unknown variant `locl`, expected one of `local`, `argo`; did you mean `local`?",
                "ferry.yaml:3:28: replicas.lease_seconds: expected an integer, found a list",
                "ferry.yaml:5:40: projects[0].webhook_secret: unknown field `webhook_secret`, expected one of `default_branch`, `forge`, `forge_url`, `github_app_id_env`, `github_app_key_env`, `max_concurrent_runs`, `max_gpus`, `name`, `namespace`, `repo`, `token_env`, `webhook_secret_env`; did you mean `webhook_secret_env`?",
            ],
            "{err}"
        );
    }

    #[test]
    fn the_shape_walk_accepts_the_documented_config() {
        let admin = include_str!("../../docs/ADMIN.md");
        let start = admin.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let block = &admin[start..start + admin[start..].find("```").expect("its end")];
        assert!(block.contains("projects:"), "{block}");
        assert_eq!(yaml::shape_problems::<Config>("ferry.yaml", block), vec![]);
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
    fn replicas_have_a_lease_and_a_poll_interval() {
        let c = Config::from_yaml("ferry.yaml", "projects: []\n").expect("valid");
        assert_eq!(c.replicas.lease(), std::time::Duration::from_secs(30));
        assert_eq!(c.replicas.poll(), std::time::Duration::from_secs(1));
        let text = "replicas: { lease_seconds: 60, poll_ms: 250 }\n";
        let c = Config::from_yaml("ferry.yaml", text).expect("valid");
        assert_eq!(c.replicas.lease_seconds, 60);
        assert_eq!(c.replicas.poll_ms, 250);
        let err = Config::from_yaml("ferry.yaml", "replicas: { lease_seconds: 1, poll_ms: 0 }\n")
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("replicas.lease_seconds: 1 s is too short"),
            "{err}"
        );
        assert!(err.contains("replicas.poll_ms: 0 ms"), "{err}");
        let typo = Config::from_yaml("ferry.yaml", "replicas: { lease: 3 }\n")
            .expect_err("typo")
            .to_string();
        assert!(typo.contains("lease_seconds"), "{typo}");
    }

    #[test]
    fn a_queued_run_is_reported_pending_after_a_grace() {
        let c = Config::from_yaml("ferry.yaml", "projects: []\n").expect("valid");
        assert_eq!(c.report.pending_after_ms, 10_000);
        let c =
            Config::from_yaml("ferry.yaml", "report: { pending_after_ms: 0 }\n").expect("valid");
        assert_eq!(c.report.pending_after_ms, 0);
        let err = Config::from_yaml("ferry.yaml", "report: { pending_after_ms: 3600000 }\n")
            .expect_err("too long")
            .to_string();
        assert!(err.contains("report.pending_after_ms: 3600000 ms"), "{err}");
        let typo = Config::from_yaml("ferry.yaml", "report: { pending_after: 5 }\n")
            .expect_err("typo")
            .to_string();
        assert!(typo.contains("pending_after_ms"), "{typo}");
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
