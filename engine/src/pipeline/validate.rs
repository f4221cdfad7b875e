//! Turns a raw [`PipelineSpec`] into a [`Pipeline`], reporting every problem at once.
//!
//! This is the one place where pipeline rules live (PIPELINE-SPEC.md's "must"s): names, `needs`,
//! metrics and `if.metrics`, value formats, profile references and limits. Problems are collected
//! as (field path, message) pairs; the caller turns paths into positions with a `SourceMap`.

use std::collections::{BTreeMap, BTreeSet};

use super::expr::{self, MetricRef};
use super::glob::Glob;
use super::model::*;
use super::spec::*;
use crate::problem::{allowed_list, did_you_mean};
use crate::profile::Profile;
use crate::quantity::{Quantity, parse_duration};

/// Most steps in one pipeline.
pub const MAX_STEPS: usize = 200;

/// A problem before positions are known: (field path, message).
pub type RawProblem = (String, String);

/// Collects problems while validating.
struct Checker<'a> {
    profile: Option<&'a Profile>,
    problems: Vec<RawProblem>,
}

/// Validates `spec` (read from `file`) against `profile` (when given).
pub fn validate(
    file: &str,
    spec: PipelineSpec,
    profile: Option<&Profile>,
) -> Result<Pipeline, Vec<RawProblem>> {
    let mut c = Checker {
        profile,
        problems: Vec::new(),
    };
    if spec.version != 1 {
        c.push(
            "version",
            format!(
                "unsupported version {}; this ferry reads version 1",
                spec.version
            ),
        );
    }
    c.name("name", &spec.name, 40);
    let params = c.params(&spec.params);
    let triggers = c.triggers(spec.on.as_ref());
    let concurrency = Concurrency {
        group: spec
            .concurrency
            .as_ref()
            .and_then(|c| c.group)
            .unwrap_or(ConcurrencyGroup::MergeRequest),
        cancel_in_progress: spec
            .concurrency
            .as_ref()
            .and_then(|c| c.cancel_in_progress)
            .unwrap_or(false),
    };
    let workspace = spec.workspace.as_ref().and_then(|w| {
        let size = c.quantity("workspace.size", &w.size)?;
        Some(Workspace {
            size,
            storage_class: w.storage_class.clone(),
            access_mode: w.access_mode.unwrap_or(AccessMode::ReadWriteOnce),
        })
    });
    let defaults = spec.defaults.clone().unwrap_or_default();
    c.defaults(&defaults);
    let steps = c.steps(&spec.steps, &defaults);
    if c.problems.is_empty() {
        let name = spec.name;
        Ok(Pipeline {
            name,
            file: file.to_owned(),
            fingerprint: 0,
            triggers,
            concurrency,
            params,
            workspace,
            steps,
        })
    } else {
        Err(c.problems)
    }
}

/// True for `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.iter().all(|c| ok(c) || *c == b'-')
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
}

fn is_param_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Mount paths ferry itself uses.
const RESERVED_MOUNTS: [&str; 4] = ["/src", "/workspace", "/dev/shm", "/scratch"];

impl Checker<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push((path.into(), message.into()));
    }

    fn name(&mut self, path: &str, name: &str, max: usize) {
        if !is_dns_label(name) {
            let msg = format!(
                "`{name}` is not a valid name: use lower-case letters, digits and `-`, starting and ending with a letter or digit"
            );
            self.push(path, msg);
        } else if name.len() > max {
            self.push(
                path,
                format!(
                    "`{name}` is {} characters long; the limit is {max}",
                    name.len()
                ),
            );
        }
    }

    fn params(&mut self, params: &BTreeMap<String, ScalarText>) -> BTreeMap<String, String> {
        for name in params.keys() {
            if !is_param_name(name) {
                self.push(
                    format!("params.{name}@key"),
                    format!("`{name}` is not a valid parameter name: use `[a-z][a-z0-9_]*`"),
                );
            }
        }
        params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_text()))
            .collect()
    }

    fn globs(&mut self, path: &str, globs: Option<&Vec<String>>) -> Option<Vec<Glob>> {
        let globs = globs?;
        let mut out = Vec::with_capacity(globs.len());
        for (i, g) in globs.iter().enumerate() {
            match Glob::new(g) {
                Ok(g) => out.push(g),
                Err(e) => self.push(format!("{path}[{i}]"), e),
            }
        }
        Some(out)
    }

    fn path_filter(
        &mut self,
        path: &str,
        paths: Option<&Vec<String>>,
        ignore: Option<&Vec<String>>,
    ) -> PathFilter {
        PathFilter {
            include: self.globs(&format!("{path}.paths"), paths),
            exclude: self
                .globs(&format!("{path}.paths_ignore"), ignore)
                .unwrap_or_default(),
        }
    }

    fn triggers(&mut self, on: Option<&OnSpec>) -> Triggers {
        let Some(on) = on else {
            return Triggers::default();
        };
        let push = on.push.as_ref().map(|p| {
            let tags = self.globs("on.push.tags", p.tags.as_ref());
            let branches = match (&p.branches, &p.tags) {
                (None, Some(_)) => None,
                (None, None) => Some(vec![Glob::new("**").unwrap_or_else(|_| unreachable!())]),
                (Some(_), _) => self.globs("on.push.branches", p.branches.as_ref()),
            };
            let paths = self.path_filter("on.push", p.paths.as_ref(), p.paths_ignore.as_ref());
            PushRule {
                branches,
                tags,
                paths,
            }
        });
        let merge_request = on.merge_request.as_ref().map(|m| MergeRequestRule {
            target_branches: self.globs(
                "on.merge_request.target_branches",
                m.target_branches.as_ref(),
            ),
            paths: self.path_filter(
                "on.merge_request",
                m.paths.as_ref(),
                m.paths_ignore.as_ref(),
            ),
            drafts: m.drafts.unwrap_or(false),
        });
        Triggers {
            push,
            merge_request,
        }
    }

    fn quantity(&mut self, path: &str, text: &str) -> Option<Quantity> {
        match Quantity::parse(text) {
            Ok(q) => Some(q),
            Err(e) => {
                self.push(path, e);
                None
            }
        }
    }

    /// Checks a name against a profile table; skipped without a profile.
    fn lookup(
        &mut self,
        path: &str,
        what: &str,
        name: &str,
        allowed: impl Fn(&Profile) -> Vec<&str>,
    ) {
        let Some(profile) = self.profile else { return };
        let names = allowed(profile);
        if names.contains(&name) {
            return;
        }
        let mut msg = format!("unknown {what} `{name}`");
        if let Some(best) = did_you_mean(name, names.iter().copied()) {
            msg.push_str(&format!("; did you mean `{best}`?"));
        }
        msg.push_str(&format!(" (the profile allows: {})", allowed_list(names)));
        self.push(path, msg);
    }

    /// Checks the fields `defaults` and steps share, at `prefix`.
    fn shared_fields(&mut self, prefix: &str, d: &StepDefaults) {
        let at = |field: &str| {
            if prefix.is_empty() {
                field.to_owned()
            } else {
                format!("{prefix}.{field}")
            }
        };
        if d.image.is_some() && d.environment.is_some() {
            self.push(
                at("environment"),
                "`image` and `environment` are alternatives; give one",
            );
        }
        if let Some(e) = &d.environment {
            self.lookup(&at("environment"), "environment", e, |p| {
                p.environments.keys().map(String::as_str).collect()
            });
        }
        if let Some(q) = &d.queue {
            self.lookup(&at("queue"), "queue", q, |p| {
                p.queues.iter().map(String::as_str).collect()
            });
        }
        if let Some(q) = &d.priority {
            self.lookup(&at("priority"), "priority", q, |p| {
                p.priorities.keys().map(String::as_str).collect()
            });
        }
        if let Some(g) = &d.node_group {
            self.lookup(&at("node_group"), "node group", g, |p| {
                p.node_groups.keys().map(String::as_str).collect()
            });
        }
        for name in d
            .env
            .iter()
            .flat_map(|e| e.keys())
            .chain(d.secret_env.iter().flat_map(|e| e.keys()))
        {
            self.env_name(&at("env"), name);
        }
        for (name, value) in d.secret_env.iter().flatten() {
            self.secret_ref(&format!("{}.{name}", at("secret_env")), value);
        }
        for (i, v) in d.volumes.iter().flatten().enumerate() {
            self.volume(&format!("{}[{i}]", at("volumes")), v);
        }
        let mut mounts = BTreeSet::new();
        for (i, v) in d.volumes.iter().flatten().enumerate() {
            if let Some(m) = self.mount_of(v)
                && !mounts.insert(m.clone())
            {
                self.push(
                    format!("{}[{i}].mount", at("volumes")),
                    format!("mount path `{m}` is used twice"),
                );
            }
        }
    }

    fn defaults(&mut self, d: &StepDefaults) {
        self.shared_fields("defaults", d);
    }

    fn env_name(&mut self, path: &str, name: &str) {
        if !is_env_name(name) {
            self.push(
                format!("{path}.{name}@key"),
                format!("`{name}` is not a valid environment variable name"),
            );
        } else if name.starts_with("FERRY_") {
            self.push(
                format!("{path}.{name}@key"),
                format!("`{name}`: names starting with FERRY_ are set by ferry"),
            );
        }
    }

    fn secret_ref(&mut self, path: &str, value: &str) {
        let parsed = value.split_once('/').filter(|(n, k)| {
            is_dns_subdomain(n)
                && !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        });
        if parsed.is_none() {
            self.push(path, format!("`{value}` is not `secret-name/key`"));
        }
    }

    fn mount_of(&self, v: &VolumeSpec) -> Option<String> {
        if let Some(m) = &v.mount {
            return Some(m.clone());
        }
        let preset = v.preset.as_ref()?;
        self.profile?.volumes.get(preset).map(|p| p.mount.clone())
    }

    fn volume(&mut self, path: &str, v: &VolumeSpec) {
        match (&v.preset, &v.claim) {
            (Some(_), Some(_)) => self.push(path, "give either `preset` or `claim`, not both"),
            (None, None) => self.push(path, "a volume needs `preset` or `claim`"),
            (Some(p), None) => self.lookup(&format!("{path}.preset"), "volume preset", p, |pr| {
                pr.volumes.keys().map(String::as_str).collect()
            }),
            (None, Some(c)) => {
                if !is_dns_subdomain(c) {
                    self.push(
                        format!("{path}.claim"),
                        format!("`{c}` is not a valid claim name"),
                    );
                }
                if v.mount.is_none() {
                    self.push(path, "a `claim` volume needs `mount`");
                }
            }
        }
        if let Some(m) = &v.mount {
            if !m.starts_with('/')
                || m.contains("..")
                || m.chars()
                    .any(|c| c == ':' || c == '{' || c == '}' || c.is_control())
            {
                self.push(
                    format!("{path}.mount"),
                    format!("`{m}` is not an absolute path"),
                );
            } else if RESERVED_MOUNTS
                .iter()
                .any(|r| m == r || m.starts_with(&format!("{r}/")))
            {
                self.push(
                    format!("{path}.mount"),
                    format!("`{m}` is used by ferry ({})", RESERVED_MOUNTS.join(", ")),
                );
            }
        }
    }
}

/// True for a DNS-1123 subdomain (Kubernetes object names).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_dns_label)
}

#[path = "validate_steps.rs"]
mod steps;

/// Checks `if.metrics` references: each must be published by exactly one ancestor.
pub(super) fn metric_sources(
    expr: &expr::Expr,
    ancestors: &[(usize, &str, bool)],
) -> Result<BTreeMap<MetricRef, usize>, String> {
    let publishers: Vec<&(usize, &str, bool)> = ancestors.iter().filter(|a| a.2).collect();
    let mut out = BTreeMap::new();
    for m in expr.metrics() {
        let source = match &m.step {
            Some(step) => publishers.iter().find(|a| a.1 == step).map(|a| a.0).ok_or_else(|| {
                let names: Vec<&str> = publishers.iter().map(|a| a.1).collect();
                format!("`{m}`: `{step}` is not an earlier step (through `needs`) that declares `metrics` (those are: {})", allowed_list(names))
            })?,
            None => match publishers.as_slice() {
                [only] => only.0,
                [] => return Err(format!("`{m}`: no step this one needs (directly or indirectly) declares `metrics`")),
                many => {
                    let names: Vec<String> = many.iter().map(|a| format!("`{}.{}`", a.1, m.name)).collect();
                    return Err(format!("`{m}` is ambiguous: several earlier steps declare metrics; write one of {}", names.join(", ")));
                }
            },
        };
        out.insert(m.clone(), source);
    }
    Ok(out)
}
