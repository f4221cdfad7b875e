//! The runs list (`GET /`): newest first, filtered by project, pipeline, branch, merge request and
//! state, one page of [`PAGE`] runs at a time, each with its state badge.

use std::fmt::Write as _;

use ferry_engine::pipeline::EventKind;
use ferry_engine::service::summary::duration;
use ferry_engine::store::{Run, RunFilter, RunId, RunState, UnixMillis};
use serde::Deserialize;

use super::html::{Esc, ago, url_encode, utc};

/// Runs per page.
pub const PAGE: u32 = 50;

/// Every run state, in the order the filter offers them.
const STATES: [RunState; 7] = [
    RunState::Queued,
    RunState::Waiting,
    RunState::Submitted,
    RunState::Running,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
];

/// The list's query string, as typed (empty fields mean "any").
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Only this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Only this pipeline.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Only this branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// Only this merge request (a number).
    #[serde(default)]
    pub mr: Option<String>,
    /// Only this state.
    #[serde(default)]
    pub state: Option<String>,
    /// Runs older than this id (the next page).
    #[serde(default)]
    pub before: Option<String>,
}

/// A non-empty, trimmed value.
fn given(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl ListQuery {
    /// The store filter and the page start, or a message naming the field that is wrong.
    pub fn parse(&self) -> Result<(RunFilter, Option<RunId>), String> {
        let mr = match given(self.mr.as_ref()) {
            Some(text) => Some(
                text.trim_start_matches(['!', '#'])
                    .parse::<i64>()
                    .map_err(|_| format!("mr: `{text}` is not a merge request number"))?,
            ),
            None => None,
        };
        let state = match given(self.state.as_ref()) {
            Some(word) => Some(RunState::parse(&word).ok_or_else(|| {
                let all: Vec<&str> = STATES.iter().map(|s| s.as_str()).collect();
                format!("state: `{word}` is not a run state ({})", all.join(", "))
            })?),
            None => None,
        };
        let before = match given(self.before.as_ref()) {
            Some(text) => Some(
                text.parse::<i64>()
                    .ok()
                    .and_then(RunId::new)
                    .ok_or_else(|| format!("before: `{text}` is not a run id"))?,
            ),
            None => None,
        };
        let filter = RunFilter {
            project: given(self.project.as_ref()),
            pipeline: given(self.pipeline.as_ref()),
            branch: given(self.branch.as_ref()),
            mr,
            state,
            ..RunFilter::default()
        };
        Ok((filter, before))
    }

    /// The query string of these filters with another `before` (for the next page).
    fn with_before(&self, before: RunId) -> String {
        let mut out = String::new();
        for (key, value) in [
            ("project", &self.project),
            ("pipeline", &self.pipeline),
            ("branch", &self.branch),
            ("mr", &self.mr),
            ("state", &self.state),
        ] {
            if let Some(v) = given(value.as_ref()) {
                let _ = write!(out, "{key}={}&", url_encode(&v));
            }
        }
        let _ = write!(out, "before={before}");
        out
    }
}

/// What the list shows.
pub struct ListView<'a> {
    /// The filters as typed.
    pub query: &'a ListQuery,
    /// The configured projects (the project filter's choices).
    pub projects: Vec<&'a str>,
    /// The runs of this page.
    pub runs: &'a [Run],
    /// The next page's start, when there are more.
    pub next: Option<RunId>,
    /// A problem with the filters, shown instead of runs.
    pub error: Option<String>,
    /// The time ages are measured to.
    pub now: UnixMillis,
    /// Webhook deliveries whose planning failed: (retrying, given up).
    pub troubled: (i64, i64),
}

/// A state badge.
pub fn badge(state: &str) -> String {
    format!("<span class=\"badge state-{state}\">{state}</span>")
}

/// The ref column: branch, tag or merge request.
pub fn ref_text(run: &Run) -> String {
    match (&run.tag, &run.branch, run.mr) {
        (Some(tag), _, _) => format!("tag {tag}"),
        (None, Some(branch), Some(mr)) => format!("!{mr} {branch}"),
        (None, None, Some(mr)) => format!("!{mr}"),
        (None, Some(branch), None) => branch.clone(),
        (None, None, None) => run.git_ref.clone(),
    }
}

/// The word the API and the store use for a trigger.
pub fn trigger_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Push => "push",
        EventKind::Tag => "tag",
        EventKind::MergeRequest => "merge_request",
        EventKind::Manual => "manual",
        EventKind::Comment => "comment",
    }
}

/// The run's wall time so far (or in all), when it started.
pub fn run_duration(run: &Run, now: UnixMillis) -> String {
    run.started_at
        .map(|s| duration(run.finished_at.unwrap_or(now) - s))
        .unwrap_or_else(|| "—".to_owned())
}

fn filters(out: &mut String, view: &ListView<'_>) {
    let q = view.query;
    let text = |v: &Option<String>| given(v.as_ref()).unwrap_or_default();
    out.push_str("<form class=\"filters\" method=\"get\" action=\"/\">");
    out.push_str("<label>project <select name=\"project\"><option value=\"\">any</option>");
    let chosen = text(&q.project);
    for p in &view.projects {
        let selected = if *p == chosen { " selected" } else { "" };
        let _ = write!(out, "<option{selected}>{}</option>", Esc(*p));
    }
    out.push_str("</select></label>");
    for (name, value, hint) in [
        ("pipeline", &q.pipeline, "any"),
        ("branch", &q.branch, "any"),
        ("mr", &q.mr, "number"),
    ] {
        let _ = write!(
            out,
            "<label>{name} <input name=\"{name}\" value=\"{}\" placeholder=\"{hint}\"></label>",
            Esc(&text(value))
        );
    }
    out.push_str("<label>state <select name=\"state\"><option value=\"\">any</option>");
    let chosen = text(&q.state);
    for s in STATES {
        let selected = if s.as_str() == chosen {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{selected}>{}</option>", s.as_str());
    }
    out.push_str("</select></label><button type=\"submit\">filter</button>");
    out.push_str("<a class=\"clear\" href=\"/\">clear</a></form>");
}

fn row(out: &mut String, run: &Run, now: UnixMillis) {
    let short: String = run.sha.chars().take(8).collect();
    let _ = write!(
        out,
        "<tr data-run=\"{id}\" data-state=\"{state}\"><td><a href=\"/runs/{id}\">#{id}</a></td>\
         <td>{badge}</td><td>{project}</td><td><a href=\"/runs/{id}\">{pipeline}</a></td>\
         <td class=\"ref\">{reference}</td><td><code>{short}</code></td><td>{trigger}</td>\
         <td><time datetime=\"{created}\" title=\"{created}\">{age}</time></td>\
         <td>{took}</td></tr>",
        id = run.id,
        state = run.state.as_str(),
        badge = badge(run.state.as_str()),
        project = Esc(&run.project),
        pipeline = Esc(&run.pipeline),
        reference = Esc(&ref_text(run)),
        short = Esc(&short),
        trigger = trigger_word(run.trigger),
        created = utc(run.created_at),
        age = ago(run.created_at, now),
        took = run_duration(run, now),
    );
}

/// A notice when webhook deliveries could not be planned: their pushes have no runs yet (or
/// will have none), which the list of runs alone would not show.
fn troubled(out: &mut String, (retrying, failed): (i64, i64)) {
    let plural = |n: i64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut parts = Vec::new();
    if retrying > 0 {
        parts.push(plural(
            retrying,
            "webhook delivery could not be planned yet and is retried (an outage of the forge, git or the database?)",
            "webhook deliveries could not be planned yet and are retried (an outage of the forge, git or the database?)",
        ));
    }
    if failed > 0 {
        parts.push(plural(
            failed,
            "delivery was given up on (its commit is gone, or its project was removed)",
            "deliveries were given up on (their commits are gone, or their projects were removed)",
        ));
    }
    if parts.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<p class=\"error\" role=\"status\" id=\"troubled\">{}. <code>ferry events list</code> \
         shows them with their errors; <code>ferry events retry ID</code> puts a given-up one back \
         in line.</p>",
        parts.join("; ")
    );
}

/// The list's `<main>` content.
pub fn render(view: &ListView<'_>) -> String {
    let mut out = String::from("<h1>Runs</h1>");
    troubled(&mut out, view.troubled);
    filters(&mut out, view);
    out.push_str("<div id=\"live\">");
    if let Some(error) = &view.error {
        let _ = write!(
            out,
            "<p class=\"error\" role=\"alert\">{}</p></div>",
            Esc(error)
        );
        return out;
    }
    if view.runs.is_empty() {
        out.push_str("<p class=\"empty\">No runs match.</p></div>");
        return out;
    }
    out.push_str(
        "<table class=\"runs\"><thead><tr><th>run</th><th>state</th><th>project</th>\
         <th>pipeline</th><th>ref</th><th>commit</th><th>trigger</th><th>created</th>\
         <th>duration</th></tr></thead><tbody>",
    );
    for run in view.runs {
        row(&mut out, run, view.now);
    }
    out.push_str("</tbody></table>");
    if let Some(next) = view.next {
        let _ = write!(
            out,
            "<p class=\"more\"><a href=\"/?{}\">older runs →</a></p>",
            Esc(&view.query.with_before(next))
        );
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in super::super) fn run(id: i64, state: RunState, branch: &str) -> Run {
        Run {
            id: RunId::new(id).expect("positive"),
            project: "resnet".into(),
            pipeline: "train".into(),
            sha: "0123456789abcdef".repeat(2) + "01234567",
            trigger: EventKind::Push,
            event_id: None,
            rerun_of: None,
            git_ref: format!("refs/heads/{branch}"),
            branch: Some(branch.into()),
            tag: None,
            mr: None,
            params: Default::default(),
            pipeline_path: ".ferry/train.yaml".into(),
            pipeline_yaml: String::new(),
            state,
            problems: Vec::new(),
            dedup_key: None,
            created_at: 1_000,
            updated_at: 1_000,
            started_at: Some(2_000),
            finished_at: Some(65_000),
            message: None,
            triggered_by: None,
        }
    }

    #[test]
    fn filters_parse_and_name_the_wrong_field() {
        let q = ListQuery {
            project: Some("resnet".into()),
            branch: Some("  ".into()),
            mr: Some("!7".into()),
            state: Some("failed".into()),
            ..ListQuery::default()
        };
        let (filter, before) = q.parse().expect("valid");
        assert_eq!(filter.project.as_deref(), Some("resnet"));
        assert_eq!(filter.branch, None, "blank means any");
        assert_eq!((filter.mr, filter.state), (Some(7), Some(RunState::Failed)));
        assert_eq!(before, None);
        let bad = ListQuery {
            state: Some("done".into()),
            ..ListQuery::default()
        };
        assert_eq!(
            bad.parse().expect_err("bad state"),
            "state: `done` is not a run state (queued, waiting, submitted, running, succeeded, failed, cancelled)"
        );
        let bad = ListQuery {
            mr: Some("x".into()),
            ..ListQuery::default()
        };
        assert_eq!(
            bad.parse().expect_err("bad mr"),
            "mr: `x` is not a merge request number"
        );
        let bad = ListQuery {
            before: Some("0".into()),
            ..ListQuery::default()
        };
        assert_eq!(
            bad.parse().expect_err("bad before"),
            "before: `0` is not a run id"
        );
    }

    #[test]
    fn rows_escape_user_values_and_pages_keep_filters() {
        let hostile = "exp/<script>alert(1)</script>\"";
        let runs = [run(7, RunState::Failed, hostile)];
        let query = ListQuery {
            branch: Some(hostile.into()),
            ..ListQuery::default()
        };
        let html = render(&ListView {
            query: &query,
            projects: vec!["resnet", "<p>"],
            runs: &runs,
            next: RunId::new(7),
            error: None,
            now: 120_000,
            troubled: (0, 0),
        });
        assert!(
            !html.contains("id=\"troubled\""),
            "no notice when all is well"
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("exp/&lt;script&gt;alert(1)&lt;/script&gt;&quot;"));
        assert!(html.contains("<option>&lt;p&gt;</option>"));
        assert!(html.contains("<span class=\"badge state-failed\">failed</span>"));
        assert!(html.contains("<td>1m 03s</td>"), "{html}");
        assert!(html.contains("<time datetime=\"1970-01-01 00:00:01 UTC\""));
        assert!(html.contains(
            "href=\"/?branch=exp%2F%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22&amp;before=7\""
        ));
    }

    #[test]
    fn an_error_or_no_runs_say_so() {
        let query = ListQuery::default();
        let view = |error: Option<String>| ListView {
            query: &query,
            projects: Vec::new(),
            runs: &[],
            next: None,
            error,
            now: 0,
            troubled: (0, 0),
        };
        assert!(render(&view(None)).contains("No runs match."));
        let html = render(&view(Some(
            "mr: `<x>` is not a merge request number".into(),
        )));
        assert!(html.contains("mr: `&lt;x&gt;` is not a merge request number"));
    }

    #[test]
    fn deliveries_that_could_not_be_planned_are_pointed_out() {
        let query = ListQuery::default();
        let html = |troubled| {
            render(&ListView {
                query: &query,
                projects: Vec::new(),
                runs: &[],
                next: None,
                error: None,
                now: 0,
                troubled,
            })
        };
        let one = html((1, 0));
        assert!(
            one.contains(">1 webhook delivery could not be planned yet and is retried (an outage of the forge, git or the database?). <code>ferry events list</code>"),
            "{one}"
        );
        let both = html((2, 3));
        assert!(
            both.contains(">2 webhook deliveries could not be planned yet and are retried (an outage of the forge, git or the database?); 3 deliveries were given up on (their commits are gone, or their projects were removed). "),
            "{both}"
        );
        assert!(!html((0, 0)).contains("troubled"));
    }

    #[test]
    fn refs_read_naturally() {
        let mut r = run(1, RunState::Queued, "feature");
        assert_eq!(ref_text(&r), "feature");
        r.mr = Some(12);
        assert_eq!(ref_text(&r), "!12 feature");
        r.tag = Some("v1".into());
        assert_eq!(ref_text(&r), "tag v1");
    }
}
