//! Per-project quotas: which queued runs the submitter may hand to the executor now.
//!
//! A project's `max_concurrent_runs` counts its runs the executor has (submitted or running);
//! `max_gpus` counts the GPUs they can hold: for each run, the most GPUs its steps can use at the
//! same time ([`run_gpus`]: steps ordered by `needs` never overlap; independent steps may), from
//! the pipeline the run holds. A quota is a guarantee, not an estimate: a run is counted at its
//! peak for as long as it runs. A project with neither limit admits every queued run
//! and costs no query.
//!
//! **In order.** The submitter calls [`Quota::admit`] once per pass. For each limited project it
//! reads the line ([`Store::quota_runs`]: the runs holding capacity, then the queued and the
//! capacity-waiting runs oldest first) and admits from the front while the limits allow. The
//! first run that does not fit is parked `waiting` ([`Store::park_run`]) with a message saying
//! what is in use, and every later run waits behind it, even one small enough to fit: a stream
//! of small runs never starves a large one. A parked run at the front is released
//! ([`Store::release_run`], for [`WaitReason::Quota`] only) once capacity frees; the dispatcher's
//! observer wakes the submitter whenever a run finishes. Runs waiting for an approval are not in
//! the line; once approved they join it at their place (by id).
//!
//! A run that alone needs more GPUs than `max_gpus` could never start: it is failed with a
//! message instead of waiting forever, and does not block the line.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::{Config, ProjectConfig};
use crate::pipeline;
use crate::profile::Profile;
use crate::store::{Run, RunId, RunState, Store, StoreError, WaitReason};

/// What the submitter does with the runs of one pass.
#[derive(Debug, Default)]
pub struct Admission {
    /// Runs to submit now, oldest first (all `queued` in the store).
    pub submit: Vec<Run>,
    /// Runs that can never fit, with the message to fail them with.
    pub fail: Vec<(Run, String)>,
}

/// Decides admissions against each project's limits.
pub struct Quota {
    store: Store,
    config: Arc<Config>,
    profile: Arc<Profile>,
    /// GPUs each run in a line requests, so a pass parses each pipeline once per run.
    gpus: Mutex<HashMap<RunId, u32>>,
}

/// A project's limits; `None` means no limit.
#[derive(Debug, Clone, Copy)]
struct Limits {
    runs: Option<u32>,
    gpus: Option<u32>,
}

impl Limits {
    fn of(project: &ProjectConfig) -> Option<Limits> {
        let limits = Limits {
            runs: project.max_concurrent_runs,
            gpus: project.max_gpus,
        };
        (limits.runs.is_some() || limits.gpus.is_some()).then_some(limits)
    }

    /// `Err` with what is in use when a run needing `need` GPUs does not fit beside `used`, and
    /// what the run itself adds to that.
    fn check(self, used: Usage, need: u32) -> Result<(), (String, String)> {
        if let Some(max) = self.runs
            && used.runs.saturating_add(1) > max
        {
            let in_use = format!("{} of {max} concurrent runs in use", used.runs);
            return Err((in_use, String::new()));
        }
        if let Some(max) = self.gpus
            && used.gpus.saturating_add(need) > max
        {
            let in_use = format!("{} of {max} GPUs in use", used.gpus);
            return Err((in_use, format!(", this run needs {need}")));
        }
        Ok(())
    }
}

/// Capacity in use.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    runs: u32,
    gpus: u32,
}

impl Usage {
    fn add(&mut self, gpus: u32) {
        self.runs = self.runs.saturating_add(1);
        self.gpus = self.gpus.saturating_add(gpus);
    }
}

/// Whether a run in this state holds capacity.
fn holds(state: RunState) -> bool {
    match state {
        RunState::Submitted | RunState::Running => true,
        RunState::Queued
        | RunState::Waiting
        | RunState::Succeeded
        | RunState::Failed
        | RunState::Cancelled => false,
    }
}

impl Quota {
    /// Quotas from `config`'s projects; GPUs are read from pipelines loaded against `profile`.
    pub fn new(store: Store, config: Arc<Config>, profile: Arc<Profile>) -> Quota {
        Quota {
            store,
            config,
            profile,
            gpus: Mutex::new(HashMap::new()),
        }
    }

    /// Sorts one pass's `queued` runs (oldest first) into those to submit and those to fail,
    /// parking and releasing the runs of limited projects on the way (see the module docs).
    pub async fn admit(&self, queued: Vec<Run>) -> Result<Admission, StoreError> {
        let limited: Vec<(&ProjectConfig, Limits)> = self
            .config
            .projects
            .iter()
            .filter_map(|p| Limits::of(p).map(|l| (p, l)))
            .collect();
        let mut out = Admission {
            submit: queued
                .into_iter()
                .filter(|r| !limited.iter().any(|(p, _)| p.name == r.project))
                .collect(),
            fail: Vec::new(),
        };
        if limited.is_empty() {
            return Ok(out);
        }
        let mut seen = HashSet::new();
        for (project, limits) in limited {
            let line = self.store.quota_runs(&project.name).await?;
            seen.extend(line.iter().map(|r| r.id));
            self.admit_line(line, limits, &mut out).await?;
        }
        self.gpus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| seen.contains(id));
        out.submit.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Admits from the front of one project's line (oldest first) while `limits` allow.
    async fn admit_line(
        &self,
        line: Vec<Run>,
        limits: Limits,
        out: &mut Admission,
    ) -> Result<(), StoreError> {
        let mut used = Usage::default();
        for run in line.iter().filter(|r| holds(r.state)) {
            used.add(self.gpus_of(run, limits));
        }
        // The first run that did not fit, and what was in use then.
        let mut front: Option<(RunId, String)> = None;
        for mut run in line.into_iter().filter(|r| !holds(r.state)) {
            let need = self.gpus_of(&run, limits);
            if let Some(max) = limits.gpus
                && need > max
            {
                let message = format!(
                    "needs {need} GPUs, more than the project's max_gpus of {max}: it can never start"
                );
                out.fail.push((run, message));
                continue;
            }
            let verdict = match &front {
                Some((id, in_use)) => {
                    Err(format!("waiting for capacity: behind run {id} ({in_use})"))
                }
                None => limits.check(used, need).map_err(|(in_use, needs)| {
                    let message = format!("waiting for capacity: {in_use}{needs}");
                    front = Some((run.id, in_use));
                    message
                }),
            };
            match (verdict, run.state) {
                (Ok(()), RunState::Waiting) => {
                    used.add(need);
                    if self.store.release_run(run.id, WaitReason::Quota).await? {
                        tracing::info!(run = %run.id, project = %run.project, "capacity freed; run released");
                        run.state = RunState::Queued;
                        out.submit.push(run);
                    }
                }
                (Ok(()), RunState::Queued) => {
                    used.add(need);
                    out.submit.push(run);
                }
                (Err(message), RunState::Queued) => {
                    if self.store.park_run(run.id, &message).await? {
                        tracing::info!(run = %run.id, project = %run.project, %message, "run waits for capacity");
                    }
                }
                // Already waiting: it keeps the message it started waiting with.
                (Err(_), RunState::Waiting) => {}
                // Not in the waiting part of a line (`Store::quota_runs`, `holds`).
                (
                    _,
                    RunState::Submitted
                    | RunState::Running
                    | RunState::Succeeded
                    | RunState::Failed
                    | RunState::Cancelled,
                ) => {}
            }
        }
        Ok(())
    }

    /// The GPUs `run` requests (0 when the project has no GPU limit, or when its pipeline does not
    /// load: the submitter then fails it with the problems).
    fn gpus_of(&self, run: &Run, limits: Limits) -> u32 {
        if limits.gpus.is_none() {
            return 0;
        }
        let mut cache = self.gpus.lock().unwrap_or_else(|e| e.into_inner());
        *cache.entry(run.id).or_insert_with(|| {
            pipeline::load(&run.pipeline_path, &run.pipeline_yaml, Some(&self.profile))
                .map(|p| run_gpus(&p))
                .unwrap_or(0)
        })
    }
}

/// The GPUs a run of `pipeline` can hold at once: the largest total over steps that can run at
/// the same time (GPUs per node times nodes). Steps ordered by `needs`, directly or through
/// others, never overlap, so a train of 8 GPUs followed by an evaluation of 8 needs 8, while two
/// independent 4-GPU steps need 8. This is the maximum-weight antichain of the step order,
/// computed exactly as the total weight less a maximum flow (weighted Dilworth).
pub fn run_gpus(pipeline: &pipeline::Pipeline) -> u32 {
    let weights: Vec<u32> = pipeline
        .steps
        .iter()
        .map(|s| s.resources.gpu.saturating_mul(s.nodes.max(1)))
        .collect();
    let needs: Vec<&[usize]> = pipeline.steps.iter().map(|s| s.needs.as_slice()).collect();
    peak_weight(&weights, &needs)
}

/// The maximum total weight of pairwise unordered elements of the order `needs` spans (`needs[i]`
/// names earlier elements `i` comes after).
fn peak_weight(weights: &[u32], needs: &[&[usize]]) -> u32 {
    let n = weights.len();
    let total = weights.iter().fold(0u32, |a, w| a.saturating_add(*w));
    // after[i][j]: j comes after i (transitively). `needs` name earlier steps, so one pass in
    // order closes it.
    let mut after = vec![vec![false; n]; n];
    for j in 0..n {
        for &i in needs[j] {
            if i < j {
                after[i][j] = true;
                for row in &mut after[..i] {
                    if row[i] {
                        row[j] = true;
                    }
                }
            }
        }
    }
    // Nodes: source 0, out-copies 1..=n, in-copies n+1..=2n, sink 2n+1.
    let (source, sink) = (0, 2 * n + 1);
    let mut cap = vec![vec![0u32; 2 * n + 2]; 2 * n + 2];
    for i in 0..n {
        cap[source][1 + i] = weights[i];
        cap[n + 1 + i][sink] = weights[i];
        for j in 0..n {
            if after[i][j] {
                cap[1 + i][n + 1 + j] = u32::MAX;
            }
        }
    }
    let mut flow = 0u32;
    loop {
        // Breadth-first search for an augmenting path.
        let mut prev = vec![usize::MAX; 2 * n + 2];
        prev[source] = source;
        let mut queue = std::collections::VecDeque::from([source]);
        while let Some(u) = queue.pop_front() {
            for v in 0..2 * n + 2 {
                if prev[v] == usize::MAX && cap[u][v] > 0 {
                    prev[v] = u;
                    queue.push_back(v);
                }
            }
        }
        if prev[sink] == usize::MAX {
            break;
        }
        let mut push = u32::MAX;
        let mut v = sink;
        while v != source {
            push = push.min(cap[prev[v]][v]);
            v = prev[v];
        }
        let mut v = sink;
        while v != source {
            let u = prev[v];
            cap[u][v] -= push;
            cap[v][u] = cap[v][u].saturating_add(push);
            v = u;
        }
        flow = flow.saturating_add(push);
    }
    total.saturating_sub(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_needs_the_gpus_of_the_steps_that_can_overlap() {
        // train(8) -> evaluate(8): never at once.
        assert_eq!(peak_weight(&[8, 8], &[&[], &[0]]), 8);
        // Two independent steps.
        assert_eq!(peak_weight(&[4, 4], &[&[], &[]]), 8);
        // a(2) -> b(6), a -> c(6), b, c -> d(2): b and c overlap.
        assert_eq!(peak_weight(&[2, 6, 6, 2], &[&[], &[0], &[0], &[1, 2]]), 12);
        // a(1) -> b(1) -> c(1), and d(5) beside them all.
        assert_eq!(peak_weight(&[1, 1, 1, 5], &[&[], &[0], &[1], &[]]), 6);
        // Order through a step without GPUs still orders: a(4) -> x(0) -> b(4).
        assert_eq!(peak_weight(&[4, 0, 4], &[&[], &[0], &[1]]), 4);
        assert_eq!(peak_weight(&[], &[]), 0);
    }

    #[test]
    fn limits_say_what_is_in_use() {
        let limits = Limits {
            runs: Some(2),
            gpus: Some(8),
        };
        let used = |runs, gpus| Usage { runs, gpus };
        assert_eq!(limits.check(used(1, 4), 4), Ok(()));
        assert_eq!(
            limits.check(used(2, 0), 0),
            Err(("2 of 2 concurrent runs in use".to_owned(), String::new()))
        );
        assert_eq!(
            limits.check(used(1, 6), 4),
            Err((
                "6 of 8 GPUs in use".to_owned(),
                ", this run needs 4".to_owned()
            ))
        );
        let runs_only = Limits {
            runs: Some(1),
            gpus: None,
        };
        assert_eq!(runs_only.check(used(0, 1000), 1000), Ok(()));
    }
}
