//! `argo:` settings of the executor: namespaces, retries, back-off, time limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::store::Run;

/// Resolves the namespace of a stored run (from its project's configuration).
pub type NamespaceOf = Arc<dyn Fn(&Run) -> String + Send + Sync>;

/// Capped exponential back-off: `first`, twice that, and so on up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl BackoffPolicy {
    /// The delay before retry number `attempt` (counted from 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// How the Argo executor talks to the cluster.
#[derive(Clone)]
pub struct ArgoSettings {
    /// The namespace of runs whose context names none, and of `ping`.
    pub namespace: String,
    /// The namespace of a stored run (reconcile); by default [`ArgoSettings::namespace`].
    pub namespace_of: NamespaceOf,
    /// Retries of a transient failure inside one call (after the first try).
    pub retries: u32,
    /// The back-off between those retries.
    pub retry_backoff: BackoffPolicy,
    /// The longest `Retry-After` waited for inside a call; a longer one ends the call as
    /// unavailable (the service submits again later).
    pub max_retry_after: Duration,
    /// The time limit of one API request (watches excepted).
    pub request_timeout: Duration,
    /// The back-off of a watcher after an error.
    pub watch_backoff: BackoffPolicy,
    /// How long the server keeps one watch request open before the watcher re-watches.
    pub watch_timeout_secs: u32,
    /// Objects per page of a list (the watcher's relists and reconcile). A page is read whole
    /// before it is parsed, and a rendered workflow with its status is some 30 KiB of JSON, so
    /// this bounds the memory a relist of thousands of workflows takes at once.
    pub list_page_size: u32,
}

impl std::fmt::Debug for ArgoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgoSettings")
            .field("namespace", &self.namespace)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("request_timeout", &self.request_timeout)
            .field("watch_backoff", &self.watch_backoff)
            .field("watch_timeout_secs", &self.watch_timeout_secs)
            .field("list_page_size", &self.list_page_size)
            .finish_non_exhaustive()
    }
}

impl ArgoSettings {
    /// Defaults, with every run in `namespace`: 3 retries from 250 ms up to 4 s, `Retry-After` up
    /// to 30 s, 20 s per request; watchers back off from 800 ms up to 30 s (client-go's figures)
    /// and re-watch every 290 s; lists in pages of 100 (about 3 MiB of JSON).
    pub fn new(namespace: impl Into<String>) -> ArgoSettings {
        let namespace = namespace.into();
        let default = namespace.clone();
        ArgoSettings {
            namespace,
            namespace_of: Arc::new(move |_| default.clone()),
            retries: 3,
            retry_backoff: BackoffPolicy {
                first: Duration::from_millis(250),
                max: Duration::from_secs(4),
            },
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            watch_backoff: BackoffPolicy {
                first: Duration::from_millis(800),
                max: Duration::from_secs(30),
            },
            watch_timeout_secs: 290,
            list_page_size: 100,
        }
    }

    /// Defaults for a server configuration: the default namespace is `argo.namespace`, else the
    /// client's (`kube::Client::default_namespace`: its kubeconfig context's, or `default`); a
    /// run's namespace is its project's `namespace`, else the default.
    pub fn for_config(config: &Config, client_namespace: &str) -> ArgoSettings {
        let default = config
            .argo
            .namespace
            .clone()
            .unwrap_or_else(|| client_namespace.to_owned());
        let by_project: BTreeMap<String, String> = config
            .projects
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.namespace.clone()?)))
            .collect();
        let fallback = default.clone();
        ArgoSettings {
            namespace_of: Arc::new(move |run: &Run| {
                by_project
                    .get(&run.project)
                    .cloned()
                    .unwrap_or_else(|| fallback.clone())
            }),
            ..ArgoSettings::new(default)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = BackoffPolicy {
            first: Duration::from_millis(250),
            max: Duration::from_secs(4),
        };
        let delays: Vec<u128> = (0..7).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(4));
    }

    fn run_of(project: &str) -> Run {
        Run {
            id: crate::store::RunId::new(1).expect("positive"),
            project: project.into(),
            pipeline: "demo".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            trigger: crate::pipeline::EventKind::Push,
            event_id: None,
            rerun_of: None,
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            mr: None,
            params: BTreeMap::new(),
            pipeline_path: ".ferry/demo.yaml".into(),
            pipeline_yaml: String::new(),
            state: crate::store::RunState::Submitted,
            problems: Vec::new(),
            dedup_key: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            message: None,
            triggered_by: None,
        }
    }

    #[test]
    fn namespaces_come_from_the_project_then_argo_then_the_kubeconfig() {
        let text = "executor: argo\nprojects:\n  - { name: resnet, repo: r, forge: none, namespace: ml-team }\n  - { name: bert, repo: b, forge: none }\n";
        let mut config = Config::from_yaml("ferry.yaml", text).expect("valid");
        let s = ArgoSettings::for_config(&config, "from-context");
        assert_eq!(s.namespace, "from-context");
        assert_eq!((s.namespace_of)(&run_of("resnet")), "ml-team");
        assert_eq!((s.namespace_of)(&run_of("bert")), "from-context");
        config.argo.namespace = Some("ferry-runs".into());
        let s = ArgoSettings::for_config(&config, "from-context");
        assert_eq!(s.namespace, "ferry-runs");
        assert_eq!((s.namespace_of)(&run_of("bert")), "ferry-runs");
        assert_eq!((s.namespace_of)(&run_of("resnet")), "ml-team");
    }
}
