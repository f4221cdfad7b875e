//! The Helm chart (`deploy/helm/ferry`) against ferry's own contracts: the `ferry.yaml` and
//! `profile.yaml` its ConfigMap renders are accepted by `Config::from_yaml` and
//! `Profile::from_yaml`, the Deployment's arguments by ferry's CLI, and every `*_env` a project
//! names reaches the pod. So the chart cannot drift from the config format.
//!
//! Rendering needs the real helm that `deploy/check.sh` caches (`FERRY_HELM`, else
//! `$FERRY_CI_CACHE/bin/helm`, else `~/.cache/ferry-ci/bin/helm`); without it those tests say
//! they are skipped. The Kueue and PriorityClass examples are checked against
//! `examples/profile.yaml` without helm.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use ferry_engine::config::{Config, ExecutorKind};
use ferry_engine::profile::Profile;
use ferry_tests::{TempDir, profile, read, workspace_root};
use serde_json::Value;

/// The cached helm, when there is one.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("FERRY_HELM")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("FERRY_CI_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ferry-ci"))
                })?;
            Some(cache.join("bin/helm"))
        })?;
    if path.is_file() {
        return Some(path);
    }
    eprintln!(
        "SKIPPED (helm): no helm at {}; `bash deploy/check.sh` fetches it",
        path.display()
    );
    None
}

/// `helm template` of the chart with these values files, as one JSON value per object.
fn template(helm: &Path, values: &[&Path]) -> Vec<Value> {
    let chart = workspace_root().join("deploy/helm/ferry");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "ferry"])
        .arg(&chart)
        .args(["--namespace", "ferry"]);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm template {values:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("helm's output is not YAML: {e}\n{stdout}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The one object of `kind`.
fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The ConfigMap's `ferry.yaml` and `profile.yaml`, parsed by ferry.
fn ferry_config(objects: &[Value], what: &str) -> (Config, Profile) {
    let data = &only(objects, "ConfigMap")["data"];
    let text = |key: &str| {
        data[key]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: the ConfigMap has no {key}"))
            .to_owned()
    };
    let config = Config::from_yaml("ferry.yaml", &text("ferry.yaml")).unwrap_or_else(|e| {
        panic!(
            "{what}: ferry rejects the chart's ferry.yaml:\n{e}\n---\n{}",
            text("ferry.yaml")
        )
    });
    let profile = Profile::from_yaml("profile.yaml", &text("profile.yaml")).unwrap_or_else(|e| {
        panic!(
            "{what}: ferry rejects the chart's profile.yaml:\n{e}\n---\n{}",
            text("profile.yaml")
        )
    });
    (config, profile)
}

/// The ferry container of the Deployment.
fn container(objects: &[Value]) -> &Value {
    &only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn full_values() -> PathBuf {
    workspace_root().join("deploy/helm/ferry/ci/full-values.yaml")
}

#[test]
fn default_values_give_a_config_ferry_accepts() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &[]);
    let (config, profile) = ferry_config(&objects, "default values");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.database_url, "sqlite:///var/lib/ferry/ferry.db");
    assert_eq!(config.data_dir, Path::new("/var/lib/ferry"));
    assert_eq!(config.executor, ExecutorKind::Argo);
    assert_eq!(config.argo.namespace.as_deref(), Some("ferry"));
    assert_eq!(config.profile_file, Some(PathBuf::from("profile.yaml")));
    assert!(config.projects.is_empty() && profile.gpu_types.is_empty());

    let c = container(&objects);
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "--config",
            "/etc/ferry/ferry.yaml",
            "--log-format",
            "json"
        ]
    );
    if let Err(e) = ferry::cli::Cli::try_parse_from(std::iter::once("ferry").chain(args)) {
        panic!("ferry's CLI refuses the Deployment's arguments: {e}");
    }
    let mounts: BTreeSet<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        mounts.contains("/etc/ferry") && mounts.contains("/var/lib/ferry"),
        "config and data_dir must be mounted: {mounts:?}"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
}

#[test]
fn full_values_give_a_config_ferry_accepts_with_every_secret_provided() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &[&full_values()]);
    let (config, profile) = ferry_config(&objects, "ci/full-values.yaml");
    assert!(config.database_url.starts_with("postgres://"));
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://ferry.example.com")
    );
    assert_eq!(config.argo.namespace.as_deref(), Some("ferry-runs"));
    assert_eq!(
        config.argo.ui_url.as_deref(),
        Some("https://argo.example.com")
    );
    assert!(config.dashboard_public);
    let names: Vec<&str> = config.projects.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["resnet", "llm-rl", "sandbox"]);
    assert_eq!(profile.service_account.as_deref(), Some("ferry-workflow"));
    assert_eq!(
        profile.gpu_types["A100-shared"].node_selector["gpu"], "on",
        "a quoted \"on\" must stay a string through helm's toYaml"
    );

    // Every variable a project names is set in the pod, from a Secret.
    let env: BTreeSet<&str> = container(&objects)["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
        .filter_map(|e| e["name"].as_str())
        .collect();
    for p in &config.projects {
        for var in [
            &p.webhook_secret_env,
            &p.token_env,
            &p.github_app_id_env,
            &p.github_app_key_env,
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                env.contains(var.as_str()),
                "{}: {var} is not set from a Secret",
                p.name
            );
        }
    }
    assert!(env.contains("FERRY_DATABASE_URL"));
}

#[test]
fn the_example_profile_survives_the_chart_unchanged() {
    let Some(helm) = helm() else { return };
    let path = workspace_root().join("examples/profile.yaml");
    let text = read(&path);
    let indented: String = text.lines().map(|l| format!("  {l}\n")).collect();
    let dir = TempDir::new("helm-profile");
    let values = dir.write("profile-values.yaml", &format!("profile:\n{indented}"));
    let objects = template(&helm, &[&values]);
    let (_, rendered) = ferry_config(&objects, "examples/profile.yaml as values");
    let json = |p: &Profile| serde_json::to_value(p).expect("a profile serializes");
    assert_eq!(
        json(&rendered),
        json(&profile()),
        "examples/profile.yaml changes on its way through the chart"
    );
}

/// Every object of a multi-document YAML file under `deploy/examples`.
fn example_objects(file: &str) -> Vec<Value> {
    let text = read(&workspace_root().join("deploy/examples").join(file));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("deploy/examples/{file} is not YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn names_of<'a>(objects: &'a [Value], kind: &str) -> BTreeSet<&'a str> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect()
}

#[test]
fn kueue_and_priority_examples_match_the_example_profile() {
    let profile = profile();
    let kueue = example_objects("kueue.yaml");
    let queues: BTreeSet<&str> = profile.queues.iter().map(String::as_str).collect();
    assert_eq!(
        names_of(&kueue, "LocalQueue"),
        queues,
        "a LocalQueue per profile queue"
    );
    assert_eq!(
        names_of(&kueue, "ClusterQueue"),
        queues,
        "a ClusterQueue per profile queue"
    );

    // Each GPU type has a flavor whose node labels include the type's node selector, and the
    // flavors' quotas are on resources that some GPU type (or HAMi, or the CPU side) uses.
    let flavors: Vec<&Value> = kueue
        .iter()
        .filter(|o| o["kind"] == "ResourceFlavor")
        .collect();
    for (name, gpu) in &profile.gpu_types {
        let covered = flavors.iter().any(|f| {
            gpu.node_selector
                .iter()
                .all(|(k, v)| f["spec"]["nodeLabels"][k].as_str() == Some(v))
        });
        assert!(
            covered,
            "no ResourceFlavor carries the node labels of GPU type {name}"
        );
    }
    let mut resources: BTreeSet<String> = profile
        .gpu_types
        .values()
        .map(|g| g.resource.clone())
        .collect();
    resources
        .extend(["cpu", "memory", "nvidia.com/gpumem", "nvidia.com/gpucores"].map(String::from));
    let flavor_names = names_of(&kueue, "ResourceFlavor");
    for cq in kueue.iter().filter(|o| o["kind"] == "ClusterQueue") {
        for group in cq["spec"]["resourceGroups"]
            .as_array()
            .expect("resourceGroups")
        {
            for r in group["coveredResources"]
                .as_array()
                .expect("coveredResources")
            {
                let r = r.as_str().expect("a resource name");
                assert!(
                    resources.contains(r),
                    "{}: `{r}` is no profile resource",
                    cq["metadata"]["name"]
                );
            }
            for f in group["flavors"].as_array().expect("flavors") {
                let f = f["name"].as_str().expect("a flavor name");
                assert!(
                    flavor_names.contains(f),
                    "{}: no ResourceFlavor `{f}`",
                    cq["metadata"]["name"]
                );
            }
        }
    }

    let classes = example_objects("priorityclasses.yaml");
    let wanted: BTreeSet<&str> = profile.priorities.values().map(String::as_str).collect();
    assert_eq!(
        names_of(&classes, "PriorityClass"),
        wanted,
        "a PriorityClass per profile level"
    );
    let value = |name: &str| {
        classes
            .iter()
            .find(|c| c["metadata"]["name"] == name)
            .and_then(|c| c["value"].as_i64())
            .unwrap_or_else(|| panic!("PriorityClass {name} has no value"))
    };
    let (low, normal, high) = (
        value(&profile.priorities["low"]),
        value(&profile.priorities["normal"]),
        value(&profile.priorities["high"]),
    );
    assert!(
        low < normal && normal < high,
        "low < normal < high: {low}, {normal}, {high}"
    );
}

#[test]
fn workflow_rbac_example_grants_what_argo_pods_need() {
    let objects = example_objects("workflow-rbac.yaml");
    let role = objects
        .iter()
        .find(|o| o["kind"] == "Role")
        .expect("a Role");
    let rules = role["rules"].as_array().expect("rules");
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && r["verbs"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|x| x == verb))
        })
    };
    for (resource, verb) in [
        ("workflowtaskresults", "create"),
        ("workflowtaskresults", "patch"),
        ("pytorchjobs", "create"),
        ("pytorchjobs", "get"),
        ("jobsets", "create"),
        ("jobsets", "get"),
    ] {
        assert!(
            grants(resource, verb),
            "the workflow Role lacks {verb} on {resource}"
        );
    }
    let account = names_of(&objects, "ServiceAccount");
    assert_eq!(account, BTreeSet::from(["ferry-workflow"]));
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "RoleBinding")
        .expect("a RoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "ferry-workflow");
}
