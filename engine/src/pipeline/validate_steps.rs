//! Step checks and the merge of `defaults` into steps (part of `validate`).

use std::collections::BTreeMap;

use super::*;

impl Checker<'_> {
    pub(super) fn steps(&mut self, specs: &[StepSpec], defaults: &StepDefaults) -> Vec<Step> {
        if specs.is_empty() {
            self.push("steps", "a pipeline needs at least one step");
        }
        if specs.len() > MAX_STEPS {
            self.push(
                "steps",
                format!("{} steps; the limit is {MAX_STEPS}", specs.len()),
            );
        }
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut steps = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("steps[{i}]");
            self.name(&format!("{at}.name"), &spec.name, 63);
            if let Some(first) = index.get(spec.name.as_str()) {
                self.push(
                    format!("{at}.name"),
                    format!("step `{}` is already defined at steps[{first}]", spec.name),
                );
            }
            let needs = self.needs(&at, spec, &index);
            index.entry(&spec.name).or_insert(i);
            steps.push(self.step(&at, spec, needs, defaults));
        }
        self.metric_gates(specs, &mut steps);
        steps
    }

    fn needs(&mut self, at: &str, spec: &StepSpec, earlier: &BTreeMap<&str, usize>) -> Vec<usize> {
        let mut out = Vec::new();
        for (j, need) in spec.needs.iter().flatten().enumerate() {
            let path = format!("{at}.needs[{j}]");
            match earlier.get(need.as_str()) {
                Some(k) if out.contains(k) => self.push(path, format!("`{need}` is listed twice")),
                Some(k) => out.push(*k),
                None if *need == spec.name => {
                    self.push(path, format!("step `{need}` cannot need itself (a cycle)"))
                }
                None => {
                    let names: Vec<&str> = earlier.keys().copied().collect();
                    let mut msg = format!("`{need}` is not an earlier step");
                    if let Some(best) = did_you_mean(need, names.iter().copied()) {
                        msg.push_str(&format!("; did you mean `{best}`?"));
                    }
                    msg.push_str(&format!(" (`needs` may name: {}; steps can only need steps above them, so there are no cycles)", allowed_list(names)));
                    self.push(path, msg);
                }
            }
        }
        out
    }

    fn step(&mut self, at: &str, s: &StepSpec, needs: Vec<usize>, d: &StepDefaults) -> Step {
        let own = StepDefaults {
            image: s.image.clone(),
            environment: s.environment.clone(),
            env: s.env.clone(),
            secret_env: s.secret_env.clone(),
            volumes: s.volumes.clone(),
            queue: s.queue.clone(),
            priority: s.priority.clone(),
            node_group: s.node_group.clone(),
        };
        self.shared_fields(at, &own);
        if s.run.trim().is_empty() {
            self.push(format!("{at}.run"), "`run` is empty");
        }
        if s.kind == StepKind::Evaluate && s.metrics.is_none() {
            self.push(
                at.to_owned(),
                "an `evaluate` step must declare `metrics` (the JSON file it writes)",
            );
        }
        if let Some(m) = &s.metrics {
            self.metrics_path(&format!("{at}.metrics"), m);
        }
        let image = self.image(at, s, d);
        let resources = self.resources(&format!("{at}.resources"), s.resources.as_ref());
        let nodes = self.nodes(at, s.nodes);
        let timeout_secs = s
            .timeout
            .as_ref()
            .and_then(|t| self.timeout(&format!("{at}.timeout"), t));
        let profile_defaults = self.profile.map(|p| p.defaults.clone()).unwrap_or_default();
        let node_group = s
            .node_group
            .clone()
            .or_else(|| d.node_group.clone())
            .or_else(|| {
                (s.kind == StepKind::Train)
                    .then(|| profile_defaults.train_node_group.clone())
                    .flatten()
            });
        Step {
            name: s.name.clone(),
            kind: s.kind,
            needs,
            run: s.run.clone(),
            image,
            env: merge_env(d.env.as_ref(), s.env.as_ref()),
            secret_env: merge_secrets(d.secret_env.as_ref(), s.secret_env.as_ref()),
            volumes: merge_volumes(d.volumes.as_deref(), s.volumes.as_deref(), self.profile),
            queue: s
                .queue
                .clone()
                .or_else(|| d.queue.clone())
                .or(profile_defaults.queue),
            priority: s
                .priority
                .clone()
                .or_else(|| d.priority.clone())
                .or(profile_defaults.priority),
            node_group,
            retries: s.retries.unwrap_or(u32::from(resources.gpu > 0)),
            resources,
            nodes,
            timeout_secs,
            metrics: s.metrics.clone(),
            gate: self.gate(&format!("{at}.if"), s),
        }
    }

    fn metrics_path(&mut self, path: &str, m: &str) {
        let bad = m.is_empty()
            || m.split('/').any(|seg| seg == "..")
            || (m.starts_with('/') && !m.starts_with("/workspace/"));
        if bad {
            self.push(
                path,
                format!("`{m}`: use a path relative to the checkout, or one under /workspace/"),
            );
        }
    }

    fn image(&mut self, at: &str, s: &StepSpec, d: &StepDefaults) -> ImageRef {
        let own = s
            .image
            .clone()
            .map(ImageRef::Image)
            .or_else(|| s.environment.clone().map(ImageRef::Environment));
        let inherited = d
            .image
            .clone()
            .map(ImageRef::Image)
            .or_else(|| d.environment.clone().map(ImageRef::Environment));
        match own.or(inherited) {
            Some(ImageRef::Image(i))
                if i.trim().is_empty()
                    || i.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}') =>
            {
                self.push(
                    format!("{at}.image"),
                    format!("`{i}` is not an image reference"),
                );
                ImageRef::Image(i)
            }
            Some(image) => image,
            None => {
                self.push(
                    at.to_owned(),
                    "no image: set `image` or `environment` on the step or in `defaults`",
                );
                ImageRef::Image(String::new())
            }
        }
    }

    fn nodes(&mut self, at: &str, nodes: Option<u32>) -> u32 {
        let n = nodes.unwrap_or(1);
        if n == 0 {
            self.push(format!("{at}.nodes"), "`nodes` must be at least 1");
        }
        if let Some(max) = self.profile.and_then(|p| p.limits.max_nodes)
            && n > max
        {
            self.push(
                format!("{at}.nodes"),
                format!("{n} nodes is over the profile's limit of {max} (limits.max_nodes)"),
            );
        }
        n
    }

    fn timeout(&mut self, path: &str, text: &str) -> Option<u64> {
        let secs = match parse_duration(text) {
            Ok(s) => s,
            Err(e) => {
                self.push(path, e);
                return None;
            }
        };
        let limit = self
            .profile
            .and_then(|p| Some((p.limits.max_timeout.clone()?, p.max_timeout_secs()?)));
        if let Some((text_max, max)) = limit
            && secs > max
        {
            self.push(
                path,
                format!("`{text}` is over the profile's limit of {text_max} (limits.max_timeout)"),
            );
        }
        Some(secs)
    }

    fn resources(&mut self, at: &str, r: Option<&ResourcesSpec>) -> Resources {
        let Some(r) = r else {
            return Resources::default();
        };
        let gpu = r.gpu.unwrap_or(u32::from(r.gpu_type.is_some()));
        let q = |c: &mut Self, field: &str, v: Option<&String>| {
            v.and_then(|v| c.quantity(&format!("{at}.{field}"), v))
        };
        let cpu_text = r.cpu.as_ref().map(ScalarText::to_text);
        let out = Resources {
            gpu,
            gpu_type: r.gpu_type.clone(),
            gpu_memory: q(self, "gpu_memory", r.gpu_memory.as_ref()),
            gpu_cores: r.gpu_cores,
            cpu: q(self, "cpu", cpu_text.as_ref()),
            memory: q(self, "memory", r.memory.as_ref()),
            shm: q(self, "shm", r.shm.as_ref()),
            scratch: q(self, "scratch", r.scratch.as_ref()),
        };
        self.gpu_rules(at, r, gpu);
        out
    }

    fn gpu_rules(&mut self, at: &str, r: &ResourcesSpec, gpu: u32) {
        if gpu > 0 && r.gpu_type.is_none() {
            self.push(
                format!("{at}.gpu"),
                "`gpu` needs `gpu_type` (a GPU type from the profile)",
            );
        }
        if let Some(max) = self.profile.and_then(|p| p.limits.max_gpus_per_step)
            && gpu > max
        {
            self.push(format!("{at}.gpu"), format!("{gpu} GPUs is over the profile's limit of {max} per step (limits.max_gpus_per_step)"));
        }
        if let Some(c) = r.gpu_cores
            && !(1..=100).contains(&c)
        {
            self.push(
                format!("{at}.gpu_cores"),
                format!("{c} is not a percentage between 1 and 100"),
            );
        }
        let vgpu_fields = r.gpu_memory.is_some() || r.gpu_cores.is_some();
        let Some(t) = &r.gpu_type else {
            if vgpu_fields {
                self.push(
                    at.to_owned(),
                    "`gpu_memory` / `gpu_cores` need a `gpu_type` with `vgpu: hami`",
                );
            }
            return;
        };
        self.lookup(&format!("{at}.gpu_type"), "GPU type", t, |p| {
            p.gpu_types.keys().map(String::as_str).collect()
        });
        let Some(ty) = self.profile.and_then(|p| p.gpu_types.get(t)) else {
            return;
        };
        if vgpu_fields && ty.vgpu.is_none() {
            let field = if r.gpu_memory.is_some() {
                "gpu_memory"
            } else {
                "gpu_cores"
            };
            let vgpu: Vec<&str> = self
                .profile
                .iter()
                .flat_map(|p| p.gpu_types.iter())
                .filter(|(_, t)| t.vgpu.is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            self.push(
                format!("{at}.{field}"),
                format!(
                    "GPU type `{t}` is not a vGPU type; `{field}` needs one with `vgpu: hami` ({})",
                    allowed_list(vgpu)
                ),
            );
        }
    }

    fn gate(&mut self, at: &str, s: &StepSpec) -> Gate {
        let spec = s.when.clone().unwrap_or_default();
        let default_events = (s.kind == StepKind::Deploy)
            .then(|| vec![EventKind::Push, EventKind::Tag, EventKind::Manual]);
        if let Some(events) = &spec.events
            && events.is_empty()
        {
            self.push(
                format!("{at}.events"),
                "an empty `events` list means the step never runs",
            );
        }
        Gate {
            branches: self.globs(&format!("{at}.branches"), spec.branches.as_ref()),
            tags: self.globs(&format!("{at}.tags"), spec.tags.as_ref()),
            events: spec.events.or(default_events),
            metrics: None,
        }
    }

    /// Parses every `if.metrics` and resolves its metrics to ancestor steps.
    fn metric_gates(&mut self, specs: &[StepSpec], steps: &mut [Step]) {
        for (i, spec) in specs.iter().enumerate() {
            let Some(text) = spec.when.as_ref().and_then(|w| w.metrics.clone()) else {
                continue;
            };
            let path = format!("steps[{i}].if.metrics");
            let expr = match expr::parse(&text) {
                Ok(e) => e,
                Err(e) => {
                    self.push(
                        path,
                        format!("{} (at character {})", e.message, e.offset + 1),
                    );
                    continue;
                }
            };
            let ancestors: Vec<(usize, &str, bool)> = super::super::model::ancestors(steps, i)
                .into_iter()
                .map(|a| (a, steps[a].name.as_str(), steps[a].metrics.is_some()))
                .collect();
            match metric_sources(&expr, &ancestors) {
                Ok(sources) => {
                    steps[i].gate.metrics = Some(MetricsGate {
                        text,
                        expr,
                        sources,
                    })
                }
                Err(e) => self.push(path, e),
            }
        }
    }
}

fn merge_env(
    d: Option<&BTreeMap<String, ScalarText>>,
    s: Option<&BTreeMap<String, ScalarText>>,
) -> BTreeMap<String, String> {
    d.into_iter()
        .chain(s)
        .flatten()
        .map(|(k, v)| (k.clone(), v.to_text()))
        .collect()
}

fn merge_secrets(
    d: Option<&BTreeMap<String, String>>,
    s: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, SecretRef> {
    d.into_iter()
        .chain(s)
        .flatten()
        .filter_map(|(k, v)| {
            let (name, key) = v.split_once('/')?;
            Some((
                k.clone(),
                SecretRef {
                    name: name.to_owned(),
                    key: key.to_owned(),
                },
            ))
        })
        .collect()
}

fn volume_ref(v: &VolumeSpec) -> Option<VolumeRef> {
    match (&v.preset, &v.claim) {
        (Some(name), None) => Some(VolumeRef::Preset {
            name: name.clone(),
            mount: v.mount.clone(),
            read_only: v.read_only,
        }),
        (None, Some(claim)) => Some(VolumeRef::Claim {
            claim: claim.clone(),
            mount: v.mount.clone()?,
            read_only: v.read_only.unwrap_or(false),
        }),
        _ => None,
    }
}

/// Concatenates volumes; a step volume replaces a default one with the same mount path.
fn merge_volumes(
    d: Option<&[VolumeSpec]>,
    s: Option<&[VolumeSpec]>,
    profile: Option<&Profile>,
) -> Vec<VolumeRef> {
    let mount = |v: &VolumeRef| -> Option<String> {
        match v {
            VolumeRef::Claim { mount, .. } => Some(mount.clone()),
            VolumeRef::Preset { mount: Some(m), .. } => Some(m.clone()),
            VolumeRef::Preset {
                name, mount: None, ..
            } => profile?.volumes.get(name).map(|p| p.mount.clone()),
        }
    };
    let own: Vec<VolumeRef> = s.into_iter().flatten().filter_map(volume_ref).collect();
    let own_mounts: Vec<Option<String>> = own.iter().map(mount).collect();
    let mut out: Vec<VolumeRef> = d
        .into_iter()
        .flatten()
        .filter_map(volume_ref)
        .filter(|v| mount(v).is_none() || !own_mounts.contains(&mount(v)))
        .collect();
    out.extend(own);
    out
}
