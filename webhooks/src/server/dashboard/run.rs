//! The run page (`GET /runs/{id}`): what ran, how it went and what it cost.
//!
//! From top to bottom: the run's facts (ref, commit, trigger, times, parameters, message) and the
//! rerun / cancel buttons; the step graph ([`super::graph`]); the steps with their durations and
//! GPU usage (GPU type × count per step, GPU-hours, the run's total); the metrics next to the
//! baseline's with the change marked better or worse (the rule of `summary::lower_is_better`);
//! and the tail of one step's log. An invalid pipeline shows its problems instead of steps.

use std::fmt::Write as _;

use ferry_engine::pipeline::{Pipeline, StepKind};
use ferry_engine::service::operations::{MetricComparison, RunDetail};
use ferry_engine::service::summary::{change, duration, gpu_hours, number, step_gpus, step_millis};
use ferry_engine::store::{Run, Step, StepState, UnixMillis};

use super::graph::{self, Node};
use super::html::{Esc, utc};
use super::list::{badge, ref_text, run_duration, trigger_word};

/// The log tail shown on the page.
#[derive(Debug, Clone, Default)]
pub struct LogView {
    /// The step whose log it is (none when no step started).
    pub step: Option<String>,
    /// Its last lines; `None` when the executor has no log for it.
    pub lines: Option<Vec<String>>,
}

/// What the run page shows.
pub struct RunView<'a> {
    /// The run, its steps, baseline and metrics.
    pub detail: &'a RunDetail,
    /// Its pipeline, parsed from the file stored with the run (`None` if it does not parse).
    pub pipeline: Option<&'a Pipeline>,
    /// The log tail.
    pub log: &'a LogView,
    /// The time running steps are measured to.
    pub now: UnixMillis,
}

/// The step whose log the page shows when none is asked for: the first failed one, else the
/// last one that started.
pub fn default_log_step(steps: &[Step]) -> Option<&str> {
    steps
        .iter()
        .find(|s| s.state == StepState::Failed)
        .or_else(|| steps.iter().rev().find(|s| s.started_at.is_some()))
        .map(|s| s.name.as_str())
}

fn kind_word(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Train => "train",
        StepKind::Evaluate => "evaluate",
        StepKind::Deploy => "deploy",
        StepKind::Task => "task",
    }
}

/// A step's GPUs as `2 × A100-80G` (`—` without GPUs), and their count.
fn gpu_text(pipeline: Option<&Pipeline>, step: &str) -> (u32, String) {
    let Some(s) = pipeline.and_then(|p| p.step(step)) else {
        return (0, "—".to_owned());
    };
    let gpus = step_gpus(s);
    let text = match (gpus, &s.resources.gpu_type) {
        (0, _) => "—".to_owned(),
        (n, Some(t)) => format!("{n} × {t}"),
        (n, None) => n.to_string(),
    };
    (gpus, text)
}

fn facts(out: &mut String, view: &RunView<'_>) {
    let run = &view.detail.run;
    let short: String = run.sha.chars().take(12).collect();
    out.push_str("<dl class=\"facts\">");
    let mut fact = |name: &str, html: String| {
        let _ = write!(out, "<div><dt>{name}</dt><dd>{html}</dd></div>");
    };
    fact("ref", Esc(&ref_text(run)).to_string());
    fact(
        "commit",
        format!("<code title=\"{}\">{}</code>", Esc(&run.sha), Esc(&short)),
    );
    fact("trigger", trigger_word(run.trigger).to_owned());
    let actor = view.detail.origin.as_ref().and_then(|o| o.actor.as_ref());
    if let Some(who) = run
        .triggered_by
        .as_deref()
        .or(actor.map(|a| a.login.as_str()))
    {
        fact("by", Esc(who).to_string());
    }
    if let Some(of) = run.rerun_of {
        fact("rerun of", format!("<a href=\"/runs/{of}\">#{of}</a>"));
    }
    fact("created", utc(run.created_at));
    if let Some(at) = run.started_at {
        fact("started", utc(at));
    }
    if let Some(at) = run.finished_at {
        fact("finished", utc(at));
    }
    fact("duration", run_duration(run, view.now));
    let hours: f64 = view
        .detail
        .steps
        .iter()
        .filter_map(|s| {
            let gpus = gpu_text(view.pipeline, &s.name).0;
            step_millis(s, view.now).map(|ms| gpu_hours(gpus, ms))
        })
        .sum();
    fact("GPU-hours", format!("{hours:.2}"));
    if let Some(url) = &view.detail.links.argo {
        fact("Argo", format!("<a href=\"{}\">workflow</a>", Esc(url)));
    }
    out.push_str("</dl>");
}

fn actions(out: &mut String, run: &Run) {
    let active = !run.state.is_terminal();
    let _ = write!(
        out,
        "<div class=\"actions\" data-run=\"{}\">\
         <button type=\"button\" class=\"action\" data-action=\"rerun\" data-failed=\"false\" \
         disabled>rerun</button>\
         <button type=\"button\" class=\"action\" data-action=\"rerun\" data-failed=\"true\" \
         disabled>rerun failed</button>",
        run.id
    );
    if active {
        out.push_str(
            "<button type=\"button\" class=\"action danger\" data-action=\"cancel\" \
             disabled>cancel</button>",
        );
    }
    out.push_str("<span class=\"hint\">sign in to rerun or cancel</span></div>");
}

fn params(out: &mut String, run: &Run) {
    if run.params.is_empty() {
        return;
    }
    out.push_str("<h2>Parameters</h2><table class=\"params\"><tbody>");
    for (name, value) in &run.params {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = write!(
            out,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            Esc(name),
            Esc(&text)
        );
    }
    out.push_str("</tbody></table>");
}

fn problems(out: &mut String, run: &Run) {
    out.push_str("<h2>Invalid pipeline</h2><p>The pipeline file is not valid, so nothing ran:</p><ul class=\"problems\">");
    for p in &run.problems {
        let _ = write!(
            out,
            "<li><code>{}:{}:{}</code> {} {}</li>",
            Esc(&p.file),
            p.line,
            p.column,
            Esc(&p.path),
            Esc(&p.message)
        );
    }
    out.push_str("</ul>");
}

fn graph(out: &mut String, view: &RunView<'_>) {
    let steps = &view.detail.steps;
    let index = |name: &str| steps.iter().position(|s| s.name == name);
    let nodes: Vec<Node<'_>> = steps
        .iter()
        .map(|s| {
            let needs = view
                .pipeline
                .and_then(|p| p.step(&s.name))
                .map(|ps| {
                    ps.needs
                        .iter()
                        .filter_map(|&n| view.pipeline.and_then(|p| p.steps.get(n)))
                        .filter_map(|need| index(&need.name))
                        .collect()
                })
                .unwrap_or_default();
            let took = step_millis(s, view.now).map(duration);
            let gpus = gpu_text(view.pipeline, &s.name).1;
            let detail = match (took, gpus.as_str()) {
                (Some(t), "—") => format!("{} · {t}", s.state),
                (Some(t), g) => format!("{t} · {g}"),
                (None, "—") => s.state.as_str().to_owned(),
                (None, g) => format!("{} · {g}", s.state),
            };
            Node {
                name: &s.name,
                state: s.state,
                needs,
                detail,
            }
        })
        .collect();
    let run = view.detail.run.id.get();
    out.push_str("<div class=\"graph-box\">");
    out.push_str(&graph::svg(&nodes, |step| graph::step_link(run, step)));
    out.push_str("</div>");
}

fn steps_table(out: &mut String, view: &RunView<'_>) {
    out.push_str(
        "<table class=\"steps\"><thead><tr><th>step</th><th>kind</th><th>state</th>\
         <th>attempts</th><th>duration</th><th>GPUs</th><th>GPU-hours</th><th>message</th>\
         </tr></thead><tbody>",
    );
    let mut total = 0.0;
    for s in &view.detail.steps {
        let kind = view
            .pipeline
            .and_then(|p| p.step(&s.name))
            .map_or("", |ps| kind_word(ps.kind));
        let millis = step_millis(s, view.now);
        let (gpus, gpu) = gpu_text(view.pipeline, &s.name);
        let hours = match millis {
            Some(ms) if gpus > 0 => {
                let h = gpu_hours(gpus, ms);
                total += h;
                format!("{h:.2}")
            }
            Some(_) | None => "—".to_owned(),
        };
        let _ = write!(
            out,
            "<tr data-step=\"{name}\" data-state=\"{state}\"><td><a href=\"{link}\">{name}</a></td>\
             <td>{kind}</td><td>{badge}</td><td>{attempts}</td><td>{took}</td><td>{gpu}</td>\
             <td>{hours}</td><td class=\"message\">{message}</td></tr>",
            name = Esc(&s.name),
            link = Esc(&graph::step_link(view.detail.run.id.get(), &s.name)),
            state = s.state.as_str(),
            badge = badge(s.state.as_str()),
            attempts = s.attempts,
            took = millis.map_or_else(|| "—".to_owned(), duration),
            gpu = Esc(&gpu),
            message = Esc(s.message.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        out,
        "</tbody><tfoot><tr><th>total</th><td></td><td></td><td></td><td>{}</td><td></td>\
         <td>{total:.2}</td><td></td></tr></tfoot></table>",
        run_duration(&view.detail.run, view.now)
    );
}

fn verdict_cell(m: &MetricComparison) -> String {
    match (m.baseline, m.verdict) {
        (Some(base), Some(verdict)) => format!(
            "<td class=\"verdict {}\">{}</td>",
            verdict.as_str(),
            Esc(&change(&m.name, m.value, base))
        ),
        (None, _) | (_, None) => "<td>—</td>".to_owned(),
    }
}

fn metrics(out: &mut String, view: &RunView<'_>) {
    let d = view.detail;
    if d.metrics.is_empty() {
        return;
    }
    out.push_str("<section class=\"metrics\"><h2>Metrics</h2>");
    match (&d.baseline, &d.baseline_branch) {
        (Some(b), branch) => {
            let _ = write!(
                out,
                "<p>Baseline: <a href=\"/runs/{id}\">run #{id}</a> on <code>{}</code>.</p>",
                Esc(branch.as_deref().unwrap_or("?")),
                id = b.id
            );
        }
        (None, Some(branch)) => {
            let _ = write!(
                out,
                "<p>No baseline yet (no succeeded run on <code>{}</code>).</p>",
                Esc(branch)
            );
        }
        (None, None) => out.push_str("<p>No baseline (tag runs have none).</p>"),
    }
    out.push_str(
        "<table class=\"metrics\"><thead><tr><th>metric</th><th>step</th><th>value</th>\
         <th>baseline</th><th>change</th></tr></thead><tbody>",
    );
    for m in &d.metrics {
        let _ = write!(
            out,
            "<tr data-metric=\"{name}\"><td>{name}{lower}</td><td>{step}</td><td>{value}</td>\
             <td>{base}</td>{verdict}</tr>",
            name = Esc(&m.name),
            lower = if m.lower_is_better {
                " <span class=\"hint\">(lower is better)</span>"
            } else {
                ""
            },
            step = Esc(&m.step),
            value = number(m.value),
            base = m.baseline.map_or_else(|| "—".to_owned(), number),
            verdict = verdict_cell(m),
        );
    }
    out.push_str("</tbody></table></section>");
}

fn log(out: &mut String, view: &RunView<'_>) {
    let run = view.detail.run.id.get();
    out.push_str("<section id=\"log\" class=\"log\"><h2>Log</h2><nav class=\"log-steps\">");
    for s in &view.detail.steps {
        let current = view.log.step.as_deref() == Some(s.name.as_str());
        let _ = write!(
            out,
            "<a href=\"{}\"{}>{}</a>",
            Esc(&graph::step_link(run, &s.name)),
            if current {
                " class=\"current\" aria-current=\"true\""
            } else {
                ""
            },
            Esc(&s.name)
        );
    }
    out.push_str("</nav>");
    match (&view.log.step, &view.log.lines) {
        (None, _) => out.push_str("<p class=\"empty\">No step has started yet.</p>"),
        (Some(step), None) => {
            let _ = write!(
                out,
                "<p class=\"empty\" data-log=\"{}\">log not available</p>",
                Esc(step)
            );
        }
        (Some(step), Some(lines)) => {
            let _ = write!(out, "<pre class=\"log-tail\" data-log=\"{}\">", Esc(step));
            for line in lines {
                let _ = writeln!(out, "{}", Esc(line));
            }
            out.push_str("</pre>");
        }
    }
    out.push_str("</section>");
}

/// The run page's `<main>` content.
pub fn render(view: &RunView<'_>) -> String {
    let run = &view.detail.run;
    let mut out = String::new();
    let _ = write!(
        out,
        "<div id=\"live\"><section class=\"run-head\"><h1>Run #{id} {badge}</h1>\
         <p class=\"crumbs\"><a href=\"/?project={pq}\">{project}</a> / \
         <a href=\"/?project={pq}&amp;pipeline={plq}\">{pipeline}</a></p>",
        id = run.id,
        badge = badge(run.state.as_str()),
        project = Esc(&run.project),
        pipeline = Esc(&run.pipeline),
        pq = Esc(&super::html::url_encode(&run.project)),
        plq = Esc(&super::html::url_encode(&run.pipeline)),
    );
    facts(&mut out, view);
    actions(&mut out, run);
    out.push_str("</section>");
    if let Some(message) = &run.message {
        let _ = write!(
            out,
            "<p class=\"run-message state-{}\">{}</p>",
            run.state.as_str(),
            Esc(message)
        );
    }
    params(&mut out, run);
    if !run.problems.is_empty() {
        problems(&mut out, run);
        out.push_str("</div>");
        return out;
    }
    out.push_str("<section class=\"steps\"><h2>Steps</h2>");
    graph(&mut out, view);
    steps_table(&mut out, view);
    out.push_str("</section>");
    metrics(&mut out, view);
    log(&mut out, view);
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::problem::Problem;
    use ferry_engine::service::operations::{MetricComparison, RunDetail, Verdict};
    use ferry_engine::service::summary::Links;
    use ferry_engine::store::{RunId, RunState};

    const PIPELINE: &str = "version: 1
name: train
steps:
  - name: train
    kind: train
    image: pytorch
    run: python train.py
    resources: { gpu: 2, gpu_type: A100-80G }
    nodes: 2
  - name: evaluate
    kind: evaluate
    image: pytorch
    needs: [train]
    run: python eval.py
    metrics: metrics.json
";

    fn step(name: &str, state: StepState, started: Option<i64>, finished: Option<i64>) -> Step {
        Step {
            run_id: RunId::new(7).expect("id"),
            name: name.into(),
            position: 0,
            state,
            attempts: 1,
            message: None,
            metrics: None,
            started_at: started,
            finished_at: finished,
        }
    }

    fn detail(state: RunState) -> RunDetail {
        let mut run = super::super::list::tests::run(7, state, "main");
        run.triggered_by = Some("ci-<bot>".into());
        run.pipeline_yaml = PIPELINE.into();
        run.params.insert("lr".into(), "<0.1>".into());
        run.message = Some("boom <b>".into());
        let mut failed = step(
            "evaluate",
            StepState::Failed,
            Some(3_602_000),
            Some(3_605_000),
        );
        failed.message = Some("exit 3 <script>".into());
        RunDetail {
            steps: vec![
                step("train", StepState::Succeeded, Some(2_000), Some(3_602_000)),
                failed,
            ],
            baseline_branch: run.branch.clone(),
            baseline: Some(super::super::list::tests::run(
                3,
                RunState::Succeeded,
                "main",
            )),
            metrics: vec![
                MetricComparison {
                    step: "evaluate".into(),
                    name: "accuracy".into(),
                    value: 0.93,
                    baseline: Some(0.91),
                    change: Some(0.02),
                    lower_is_better: false,
                    verdict: Some(Verdict::Better),
                },
                MetricComparison {
                    step: "evaluate".into(),
                    name: "val_loss".into(),
                    value: 0.4,
                    baseline: Some(0.3),
                    change: Some(0.1),
                    lower_is_better: true,
                    verdict: Some(Verdict::Worse),
                },
            ],
            links: Links::default(),
            origin: None,
            run,
        }
    }

    fn page(detail: &RunDetail, log: &LogView) -> String {
        let pipeline = ferry_engine::pipeline::load(".ferry/train.yaml", PIPELINE, None).ok();
        assert!(pipeline.is_some(), "the test pipeline is valid");
        render(&RunView {
            detail,
            pipeline: pipeline.as_ref(),
            log,
            now: 4_000_000,
        })
    }

    #[test]
    fn the_page_shows_graph_gpus_metrics_and_log_escaped() {
        let d = detail(RunState::Failed);
        let log = LogView {
            step: Some("evaluate".into()),
            lines: Some(vec!["Traceback <module>".into(), "x & y".into()]),
        };
        let html = page(&d, &log);
        assert!(html.starts_with("<div id=\"live\">") && html.ends_with("</div>"));
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(html.contains("<h1>Run #7 <span class=\"badge state-failed\">failed</span></h1>"));
        // Graph: two boxes, one arrow, coloured by state.
        assert!(html.contains("class=\"node state-succeeded\" data-step=\"train\""));
        assert!(html.contains("class=\"node state-failed\" data-step=\"evaluate\""));
        assert!(html.contains("data-from=\"train\" data-to=\"evaluate\""));
        // GPUs: 2 per node on 2 nodes for an hour is 4 GPU-hours.
        assert!(
            html.contains("<td>1h 00m</td><td>4 × A100-80G</td><td>4.00</td>"),
            "{html}"
        );
        assert!(html.contains("<dt>GPU-hours</dt><dd>4.00</dd>"));
        // Metrics against the baseline, the rule of summary.rs.
        assert!(html.contains("Baseline: <a href=\"/runs/3\">run #3</a> on <code>main</code>"));
        assert!(
            html.contains("<td class=\"verdict better\">+0.02 (+2.2%) better</td>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"verdict worse\">+0.1 (+33.3%) worse</td>"));
        // Values users control are text.
        assert!(html.contains("<code>&lt;0.1&gt;</code>"));
        assert!(html.contains("boom &lt;b&gt;"));
        assert!(html.contains("<dt>by</dt><dd>ci-&lt;bot&gt;</dd>"));
        assert!(html.contains("exit 3 &lt;script&gt;"));
        assert!(html.contains("Traceback &lt;module&gt;\nx &amp; y\n</pre>"));
        // A finished run cannot be cancelled; buttons wait for a token.
        assert!(html.contains("data-action=\"rerun\" data-failed=\"false\" disabled"));
        assert!(!html.contains("data-action=\"cancel\""));
    }

    #[test]
    fn a_missing_log_says_so_and_active_runs_can_be_cancelled() {
        let d = detail(RunState::Running);
        let log = LogView {
            step: Some("train".into()),
            lines: None,
        };
        let html = page(&d, &log);
        assert!(html.contains("<p class=\"empty\" data-log=\"train\">log not available</p>"));
        assert!(html.contains("data-action=\"cancel\""));
        assert!(page(&d, &LogView::default()).contains("No step has started yet."));
    }

    #[test]
    fn an_invalid_pipeline_shows_its_problems() {
        let mut d = detail(RunState::Failed);
        d.run.problems = vec![Problem {
            file: ".ferry/train.yaml".into(),
            line: 3,
            column: 5,
            path: "steps[0].name".into(),
            message: "must match <pattern>".into(),
        }];
        let html = page(&d, &LogView::default());
        assert!(html.contains(
            "<code>.ferry/train.yaml:3:5</code> steps[0].name must match &lt;pattern&gt;"
        ));
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn the_default_log_is_the_first_failure_else_the_latest_start() {
        let steps = [
            step("a", StepState::Succeeded, Some(1), Some(2)),
            step("b", StepState::Running, Some(2), None),
            step("c", StepState::Pending, None, None),
        ];
        assert_eq!(default_log_step(&steps), Some("b"));
        let mut failed = steps.clone();
        failed[0].state = StepState::Failed;
        assert_eq!(default_log_step(&failed), Some("a"));
        assert_eq!(default_log_step(&steps[2..]), None);
    }
}
