//! Log tails of Argo runs, read through the API server: the pods of the run's workflow (label
//! `workflows.argoproj.io/workflow`), the one whose Argo node (annotation
//! `workflows.argoproj.io/node-name`) is the step's task or its latest retry attempt, and the
//! end of its `main` container's log. The values of the Kubernetes secrets the step's
//! `secret_env` names are read too, for the caller to redact; when they cannot be read the log is
//! withheld rather than shown unredacted.
//!
//! RBAC: `pods` list, `pods/log` get and `secrets` get in the run's namespace (the Helm chart's
//! `rbac.podLogs`).

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, LogParams};

use super::ArgoExecutor;
use super::client::{Failure, Verdict, retrying};
use super::workflow::workflow_name;
use crate::executor::{ExecError, FetchedLog, LogRequest, tail_lines};

/// The label Argo puts on every pod of a workflow.
const WORKFLOW_LABEL: &str = "workflows.argoproj.io/workflow";
/// The annotation naming a pod's node (`ferry-7.train`, `ferry-7.train(1)`).
const NODE_NAME_ANNOTATION: &str = "workflows.argoproj.io/node-name";
/// The container Argo runs a template's command in.
const MAIN_CONTAINER: &str = "main";

impl ArgoExecutor {
    pub(super) async fn fetch_log_tail(
        &self,
        request: LogRequest<'_>,
    ) -> Result<Option<FetchedLog>, ExecError> {
        let namespace = request.namespace.unwrap_or(&self.settings.namespace);
        let workflow = workflow_name(request.run);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().labels(&format!("{WORKFLOW_LABEL}={workflow}"));
        let list = retrying(&self.settings, "list pods", || async {
            pods.list(&params).await.map_err(Failure::from_kube)
        })
        .await
        .map_err(|f| ExecError(format!("listing the pods of {workflow}: {}", f.message)))?;
        let names = list.items.iter().filter_map(|pod| {
            let node = pod
                .metadata
                .annotations
                .as_ref()?
                .get(NODE_NAME_ANNOTATION)?;
            let attempt = step_attempt(node, &workflow, request.step)?;
            Some((attempt, pod.metadata.name.clone()?))
        });
        let Some((_, pod)) = names.max() else {
            return Ok(None);
        };

        let secrets = match self.secret_values(namespace, request).await {
            Ok(values) => values,
            Err(why) => {
                return Ok(Some(FetchedLog {
                    text: format!("(log tail withheld: {why}, so it could not be redacted)"),
                    secrets: Vec::new(),
                }));
            }
        };
        let log_params = LogParams {
            container: Some(MAIN_CONTAINER.to_owned()),
            tail_lines: Some(i64::from(request.lines)),
            limit_bytes: i64::try_from(request.bytes)
                .ok()
                .map(|b| b.saturating_mul(2)),
            ..LogParams::default()
        };
        let text = retrying(&self.settings, "read pod log", || async {
            pods.logs(&pod, &log_params)
                .await
                .map_err(Failure::from_kube)
        })
        .await;
        match text {
            Ok(text) => Ok(Some(FetchedLog {
                text: tail_lines(&text, request.lines, request.bytes),
                secrets,
            })),
            Err(f) if f.verdict == Verdict::NotFound => Ok(None),
            Err(f) => Err(ExecError(format!(
                "reading the log of pod {pod}: {}",
                f.message
            ))),
        }
    }

    /// The values of the secrets the step's `secret_env` names; an error says why one could
    /// not be read (a secret that does not exist could not have reached the pod either).
    async fn secret_values(
        &self,
        namespace: &str,
        request: LogRequest<'_>,
    ) -> Result<Vec<String>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let refs = request
            .pipeline
            .steps
            .iter()
            .filter(|s| s.name == request.step)
            .flat_map(|s| s.secret_env.values());
        let mut values = Vec::new();
        for secret in refs {
            let got = retrying(&self.settings, "read secret", || async {
                api.get(&secret.name).await.map_err(Failure::from_kube)
            })
            .await;
            match got {
                Ok(s) => values.extend(
                    s.data
                        .as_ref()
                        .and_then(|d| d.get(&secret.key))
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                        .into_iter()
                        .chain(
                            s.string_data
                                .as_ref()
                                .and_then(|d| d.get(&secret.key))
                                .cloned(),
                        )
                        .filter(|v| !v.is_empty()),
                ),
                Err(f) if f.verdict == Verdict::NotFound => {}
                Err(f) => {
                    return Err(format!(
                        "ferry cannot read secret `{}` ({})",
                        secret.name, f.message
                    ));
                }
            }
        }
        Ok(values)
    }
}

/// The attempt a pod's node name is of, for `step` of `workflow`: `Some(0)` for the task's own
/// node, `Some(n + 1)` for retry attempt `n`; `None` for other steps.
fn step_attempt(node: &str, workflow: &str, step: &str) -> Option<u64> {
    let rest = node.strip_prefix(workflow)?.strip_prefix('.')?;
    let rest = rest.strip_prefix(step)?;
    if rest.is_empty() {
        return Some(0);
    }
    let n = rest.strip_prefix('(')?.strip_suffix(')')?;
    n.parse::<u64>().ok().map(|n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::step_attempt;

    #[test]
    fn pods_are_matched_to_steps_by_their_node_names() {
        assert_eq!(step_attempt("ferry-7.train", "ferry-7", "train"), Some(0));
        assert_eq!(
            step_attempt("ferry-7.train(0)", "ferry-7", "train"),
            Some(1)
        );
        assert_eq!(
            step_attempt("ferry-7.train(12)", "ferry-7", "train"),
            Some(13)
        );
        assert_eq!(step_attempt("ferry-7.train-big", "ferry-7", "train"), None);
        assert_eq!(step_attempt("ferry-7.evaluate", "ferry-7", "train"), None);
        assert_eq!(step_attempt("ferry-70.train", "ferry-7", "train"), None);
        assert_eq!(step_attempt("ferry-7", "ferry-7", "train"), None);
    }
}
