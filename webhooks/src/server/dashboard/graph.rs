//! The step graph of a run as an SVG: one box per step coloured by its state, one arrow per
//! `needs` edge, laid out in columns by depth.
//!
//! **Layout.** A step's column is its depth: 0 without `needs`, else one more than the deepest
//! step it needs (the longest path from a root), so every arrow points right. Within a column,
//! steps are ordered by the mean row of the steps they need (ties keep pipeline order), which
//! keeps chains straight and crossings few for the small DAGs pipelines are; columns shorter than
//! the tallest are centred. Validation guarantees that `needs` name earlier steps, so one pass in
//! pipeline order computes depths; an index that does not point earlier is ignored rather than
//! trusted.
//!
//! Colours come from the stylesheet through `state-<state>` classes: the SVG has no `style`
//! attributes and no script, and every step name in it is escaped.

use std::fmt::Write as _;

use ferry_engine::store::StepState;

use super::html::{Esc, url_encode};

/// Box width, height and the gaps between boxes, in SVG user units (pixels at scale 1).
const BOX_W: usize = 168;
const BOX_H: usize = 46;
const GAP_X: usize = 56;
const GAP_Y: usize = 18;
const PAD: usize = 12;
/// Longest step name drawn in full; longer ones are cut with `…` (the tooltip has it all).
const NAME_CHARS: usize = 20;

/// One step to draw.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its state (its colour).
    pub state: StepState,
    /// Indices of the steps it needs (earlier in the list).
    pub needs: Vec<usize>,
    /// The second line: duration, GPUs (plain text; escaped when drawn).
    pub detail: String,
}

/// Where each step goes: `(column, row)` per step, and the grid's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `(column, row)` of each step, in the order given.
    pub cells: Vec<(usize, usize)>,
    /// Columns used.
    pub columns: usize,
    /// Rows of the tallest column.
    pub rows: usize,
}

/// Lays out steps whose `needs[i]` are indices of earlier steps (see the module doc).
pub fn layout(needs: &[Vec<usize>]) -> Layout {
    let mut depth = vec![0usize; needs.len()];
    for (i, list) in needs.iter().enumerate() {
        depth[i] = list
            .iter()
            .filter(|&&n| n < i)
            .map(|&n| depth[n] + 1)
            .max()
            .unwrap_or(0);
    }
    let columns = depth.iter().max().map_or(0, |d| d + 1);
    let mut cells = vec![(0, 0); needs.len()];
    let mut rows = 0;
    for column in 0..columns {
        let mut members: Vec<(f64, usize)> = (0..needs.len())
            .filter(|&i| depth[i] == column)
            .map(|i| {
                let parents: Vec<usize> = needs[i].iter().copied().filter(|&n| n < i).collect();
                let mean = if parents.is_empty() {
                    i as f64
                } else {
                    parents.iter().map(|&n| cells[n].1 as f64).sum::<f64>() / parents.len() as f64
                };
                (mean, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (row, (_, i)) in members.iter().enumerate() {
            cells[*i] = (column, row);
        }
        rows = rows.max(members.len());
    }
    Layout {
        cells,
        columns,
        rows,
    }
}

/// The top-left corner of each box, with short columns centred.
fn corners(layout: &Layout) -> Vec<(usize, usize)> {
    let mut heights = vec![0usize; layout.columns];
    for &(column, _) in &layout.cells {
        heights[column] += 1;
    }
    layout
        .cells
        .iter()
        .map(|&(column, row)| {
            let shift = (layout.rows - heights[column]) * (BOX_H + GAP_Y) / 2;
            (
                PAD + column * (BOX_W + GAP_X),
                PAD + shift + row * (BOX_H + GAP_Y),
            )
        })
        .collect()
}

fn short(name: &str) -> String {
    if name.chars().count() <= NAME_CHARS {
        return name.to_owned();
    }
    let mut cut: String = name.chars().take(NAME_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The SVG of `nodes`; `link` gives each step's href (escaped here).
pub fn svg(nodes: &[Node<'_>], link: impl Fn(&str) -> String) -> String {
    let needs: Vec<Vec<usize>> = nodes.iter().map(|n| n.needs.clone()).collect();
    let layout = layout(&needs);
    let at = corners(&layout);
    let width = 2 * PAD + layout.columns * BOX_W + layout.columns.saturating_sub(1) * GAP_X;
    let height = 2 * PAD + layout.rows * BOX_H + layout.rows.saturating_sub(1) * GAP_Y;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"step graph\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" \
         refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
         <path d=\"M 0 0 L 10 5 L 0 10 z\" class=\"arrowhead\"/></marker></defs>"
    );
    for (i, node) in nodes.iter().enumerate() {
        for &n in node.needs.iter().filter(|&&n| n < i) {
            let (x1, y1) = (at[n].0 + BOX_W, at[n].1 + BOX_H / 2);
            let (x2, y2) = (at[i].0, at[i].1 + BOX_H / 2);
            let bend = GAP_X / 2;
            let _ = write!(
                out,
                "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M {x1} {y1} C {} {y1}, \
                 {} {y2}, {x2} {y2}\" marker-end=\"url(#arrow)\"/>",
                Esc(nodes[n].name),
                Esc(node.name),
                x1 + bend,
                x2 - bend,
            );
        }
    }
    for (node, &(x, y)) in nodes.iter().zip(&at) {
        let state = node.state.as_str();
        let _ = write!(
            out,
            "<a href=\"{}\" class=\"node state-{state}\" data-step=\"{}\" data-state=\"{state}\">\
             <title>{}: {state}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\"/>\
             <text x=\"{}\" y=\"{}\" class=\"name\">{}</text>\
             <text x=\"{}\" y=\"{}\" class=\"detail\">{}</text></a>",
            Esc(&link(node.name)),
            Esc(node.name),
            Esc(node.name),
            x + 10,
            y + 19,
            Esc(&short(node.name)),
            x + 10,
            y + 36,
            Esc(&node.detail),
        );
    }
    out.push_str("</svg>");
    out
}

/// The link of a step on its run page: the page with that step's log.
pub fn step_link(run: i64, step: &str) -> String {
    format!("/runs/{run}?step={}#log", url_encode(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(name: &'a str, state: StepState, needs: &[usize]) -> Node<'a> {
        Node {
            name,
            state,
            needs: needs.to_vec(),
            detail: String::new(),
        }
    }

    #[test]
    fn columns_are_depths_and_rows_follow_parents() {
        // prepare -> train -> evaluate -> deploy, lint beside train, evaluate needs both.
        let needs = vec![vec![], vec![0], vec![0], vec![1, 2], vec![3]];
        let l = layout(&needs);
        assert_eq!(l.cells, [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]);
        assert_eq!((l.columns, l.rows), (4, 2));
    }

    #[test]
    fn depth_is_the_longest_path() {
        // a -> b -> c and a -> c: c goes after b, not beside it.
        let l = layout(&[vec![], vec![0], vec![0, 1]]);
        assert_eq!(l.cells, [(0, 0), (1, 0), (2, 0)]);
        // Independent roots share column 0, in pipeline order.
        let l = layout(&[vec![], vec![], vec![]]);
        assert_eq!(l.cells, [(0, 0), (0, 1), (0, 2)]);
        assert_eq!((l.columns, l.rows), (1, 3));
    }

    #[test]
    fn children_line_up_with_their_parents() {
        // Two chains a1 -> a2 and b1 -> b2, declared b2 first: b2 stays in b1's row.
        let l = layout(&[vec![], vec![], vec![1], vec![0]]);
        assert_eq!(l.cells, [(0, 0), (0, 1), (1, 1), (1, 0)]);
    }

    #[test]
    fn needs_that_do_not_point_back_are_ignored() {
        let l = layout(&[vec![1], vec![7], vec![0]]);
        assert_eq!(l.cells, [(0, 0), (0, 1), (1, 0)]);
        assert_eq!(layout(&[]).cells, []);
    }

    #[test]
    fn the_svg_has_a_box_per_step_an_arrow_per_need_and_state_classes() {
        let nodes = [
            node("train", StepState::Succeeded, &[]),
            node("lint", StepState::Failed, &[]),
            node("evaluate", StepState::Skipped, &[0, 1]),
        ];
        let svg = svg(&nodes, |s| step_link(7, s));
        assert!(svg.starts_with("<svg class=\"graph\""), "{svg}");
        assert_eq!(svg.matches("<rect ").count(), 3);
        assert_eq!(svg.matches("class=\"edge\"").count(), 2);
        assert!(svg.contains("class=\"node state-succeeded\" data-step=\"train\""));
        assert!(svg.contains("class=\"node state-failed\" data-step=\"lint\""));
        assert!(svg.contains("class=\"node state-skipped\" data-step=\"evaluate\""));
        assert!(svg.contains("data-from=\"train\" data-to=\"evaluate\""));
        assert!(svg.contains("href=\"/runs/7?step=evaluate#log\""));
        // Two columns, two rows: 12 + 168 + 56 + 168 + 12 wide, 12 + 46 + 18 + 46 + 12 high.
        assert!(svg.contains("width=\"416\" height=\"134\""), "{svg}");
        assert!(!svg.contains("style="), "colours come from classes");
    }

    #[test]
    fn step_names_and_details_are_escaped_and_long_names_cut() {
        let mut n = node("<b>x</b>", StepState::Running, &[]);
        n.detail = "2 × A100 \"80G\"".into();
        let long = node("a-very-long-step-name-indeed", StepState::Pending, &[0]);
        let svg = svg(&[n, long], |s| format!("?step={s}"));
        assert!(!svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(svg.contains("2 × A100 &quot;80G&quot;"));
        assert!(svg.contains(">a-very-long-step-na…</text>"), "{svg}");
        assert!(svg.contains("<title>a-very-long-step-name-indeed: pending</title>"));
        assert!(svg.contains("href=\"?step=&lt;b&gt;x&lt;/b&gt;\""));
    }
}
