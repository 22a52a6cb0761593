//! `ledger report run <id> --html FILE`: one self-contained HTML page about a run, for
//! people who would rather look than read: loss and learning-rate curves (from every
//! MetricsLogged point), eval scores per checkpoint, and the lineage graph, all as inline
//! SVG. No scripts, no external assets: the file can be mailed or archived as is.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::context::Context;
use anyhow::{anyhow, Context as _, Result};
use foundry_events::{Event, EventType, MetricPoint};
use foundry_projections::lineage::{lineage, TreeNode};
use foundry_projections::{resolve, CheckpointView, RunView, ViewKind, ViewRead};

/// `ledger report …`.
#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// A training run: curves, evals per checkpoint, lineage.
    Run(RunReportArgs),
}

/// Options of `ledger report run`.
#[derive(clap::Args)]
pub struct RunReportArgs {
    /// The run's id (or a unique prefix).
    id: String,
    /// Where to write the HTML page.
    #[arg(long, value_name = "FILE")]
    html: PathBuf,
}

/// Runs `ledger report`.
pub fn run(ctx: &Context, c: ReportCommand) -> Result<()> {
    match c {
        ReportCommand::Run(a) => run_report(ctx, a),
    }
}

fn run_report(ctx: &Context, a: RunReportArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let store = ctx.views(&ledger)?;
    let v: &dyn ViewRead = &store;
    let id = resolve(v, ViewKind::Runs, &a.id)?;
    let run = v.run(&id)?.ok_or_else(|| anyhow!("run {id} vanished"))?;
    let checkpoints: Vec<CheckpointView> = run
        .checkpoints
        .iter()
        .filter_map(|c| v.checkpoint(c).ok().flatten())
        .collect();
    let tree = lineage(v, ViewKind::Runs, &id)?;
    let stream = format!("run/{id}");
    let mut points = Vec::new();
    for rec in ledger.read_stream(&stream, 1)? {
        if rec.event_type == EventType::MetricsLogged.as_str() {
            match rec.decode_event() {
                Ok(Event::MetricsLogged(m)) => points.extend(m.points),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("event seq {} of {stream}: {e}", rec.seq)),
            }
        }
    }
    points.sort_by_key(|p| p.step);
    let html = render_run(&run, &points, &checkpoints, &tree, v.as_of());
    std::fs::write(&a.html, html).with_context(|| format!("writing {}", a.html.display()))?;
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "run_id": id,
            "html": a.html,
            "metric_points": points.len(),
            "checkpoints": checkpoints.len(),
            "as_of_seq": v.as_of(),
        }))
    } else {
        println!(
            "wrote {} (run {id}: {} metric points, {} checkpoints, as of seq {})",
            a.html.display(),
            points.len(),
            checkpoints.len(),
            v.as_of()
        );
        Ok(())
    }
}

/// Escapes text for HTML and SVG content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn short(id: &str) -> &str {
    foundry_projections::lineage::short(id)
}

/// One series of a line chart.
pub struct Series<'a> {
    /// Legend name.
    pub name: &'a str,
    /// Stroke colour (CSS).
    pub color: &'a str,
    /// Points (x, y); non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
    /// Optional (low, high) interval per point, drawn as error bars.
    pub bars: Vec<Option<(f64, f64)>>,
}

/// "Nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let mut out = Vec::new();
    for i in 0..50 {
        let t = (first + i as f64) * step;
        if t > hi + step * 1e-9 {
            break;
        }
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// An SVG line chart with axes, ticks and a legend. Returns a placeholder when there is
/// nothing to draw.
pub fn line_chart(
    title: &str,
    x_label: &str,
    series: &[Series<'_>],
    y_range: Option<(f64, f64)>,
) -> String {
    let (w, h) = (560.0, 260.0);
    let (ml, mr, mt, mb) = (64.0, 16.0, 28.0, 44.0);
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><text x="{ml}" y="18" class="title">{t}</text>"#,
        t = esc(title)
    );
    if all.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no data</text></svg>"#,
            w / 2.0 - 30.0,
            h / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (mut y0, mut y1) = match y_range {
        Some(r) => r,
        None => {
            let mut r = all
                .iter()
                .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
            for s in series {
                for (lo, hi) in s.bars.iter().flatten() {
                    r = (r.0.min(*lo), r.1.max(*hi));
                }
            }
            r
        }
    };
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 - y0 < 1e-12 {
        let d = if y0.abs() > 0.0 { y0.abs() * 0.1 } else { 1.0 };
        y0 -= d;
        y1 += d;
    }
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| mt + ph - (y - y0) / (y1 - y0) * ph;
    let _ = write!(
        svg,
        r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot"/>"#
    );
    for t in ticks(y0, y1, 5) {
        let y = sy(t);
        let _ = write!(
            svg,
            r#"<line x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            ml + pw,
            ml - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    for t in ticks(x0, x1, 6) {
        let x = sx(t);
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" class="axis"/><text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            mt + ph,
            mt + ph + 4.0,
            mt + ph + 18.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="label" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        h - 6.0,
        esc(x_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if pts.len() > 1 {
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2" class="series"/>"#,
                pts.join(" "),
                esc(s.color)
            );
        }
        for (j, &(x, y)) in s.points.iter().enumerate() {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            if let Some(Some((lo, hi))) = s.bars.get(j) {
                let _ = write!(
                    svg,
                    r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{c}" class="bar"/>"#,
                    sy(*lo),
                    sy(*hi),
                    x = sx(x),
                    c = esc(s.color)
                );
            }
            if s.points.len() <= 60 {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: x={} y={}</title></circle>"#,
                    sx(x),
                    sy(y),
                    esc(s.color),
                    esc(s.name),
                    fmt_tick(x),
                    y
                );
            }
        }
        let ly = mt + 14.0 + 16.0 * i as f64;
        let lx = ml + pw - 150.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}" class="legend">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            esc(s.name),
            c = esc(s.color)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The lineage tree drawn left to right as boxes and connectors.
pub fn lineage_svg(tree: &TreeNode) -> String {
    struct Placed<'a> {
        node: &'a TreeNode,
        depth: usize,
        row: f64,
        parent: Option<usize>,
    }
    fn place<'a>(
        n: &'a TreeNode,
        depth: usize,
        parent: Option<usize>,
        next_leaf: &mut f64,
        out: &mut Vec<Placed<'a>>,
    ) -> f64 {
        let idx = out.len();
        out.push(Placed {
            node: n,
            depth,
            row: 0.0,
            parent,
        });
        let row = if n.children.is_empty() {
            let r = *next_leaf;
            *next_leaf += 1.0;
            r
        } else {
            let rows: Vec<f64> = n
                .children
                .iter()
                .map(|c| place(c, depth + 1, Some(idx), next_leaf, out))
                .collect();
            (rows[0] + rows[rows.len() - 1]) / 2.0
        };
        out[idx].row = row;
        row
    }
    let mut placed = Vec::new();
    let mut leaves = 0.0;
    place(tree, 0, None, &mut leaves, &mut placed);
    let (col_w, box_w, row_h, box_h) = (250.0, 230.0, 30.0, 22.0);
    let depth = placed.iter().map(|p| p.depth).max().unwrap_or(0);
    let width = (depth + 1) as f64 * col_w + 10.0;
    let height = leaves.max(1.0) * row_h + 10.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="lineage graph">"#
    );
    let pos = |p: &Placed<'_>| (5.0 + p.depth as f64 * col_w, 5.0 + p.row * row_h);
    for p in &placed {
        if let Some(par) = p.parent {
            let (px, py) = pos(&placed[par]);
            let (cx, cy) = pos(p);
            let (x1, y1, x2, y2) = (px + box_w, py + box_h / 2.0, cx, cy + box_h / 2.0);
            let mx = (x1 + x2) / 2.0;
            let _ = write!(
                svg,
                r#"<path d="M{x1:.1},{y1:.1} C{mx:.1},{y1:.1} {mx:.1},{y2:.1} {x2:.1},{y2:.1}" class="edge"/>"#
            );
        }
    }
    for p in &placed {
        let (x, y) = pos(p);
        let label: String = p.node.label.chars().take(34).collect();
        let label = if p.node.label.chars().count() > 34 {
            format!("{label}…")
        } else {
            label
        };
        let _ = write!(
            svg,
            r#"<g class="node kind-{k}"><title>{full}</title><rect x="{x:.1}" y="{y:.1}" width="{box_w}" height="{box_h}" rx="4"/><text x="{tx:.1}" y="{ty:.1}">{l}</text></g>"#,
            k = esc(&p.node.kind),
            full = esc(&p.node.label),
            tx = x + 6.0,
            ty = y + 15.0,
            l = esc(&label)
        );
    }
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1f2328;background:#fff}\
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}code{font-family:ui-monospace,monospace;font-size:12px}.charts{display:flex;flex-wrap:wrap;gap:16px}\
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#1f2328}svg .title{font-size:13px;font-weight:600}\
svg .plot{fill:#fbfcfd;stroke:#d0d7de}svg .grid{stroke:#eaeef2}svg .axis{stroke:#8c959f}svg .empty{fill:#8c959f;font-size:14px}\
svg .bar{stroke-width:2}svg .edge{fill:none;stroke:#8c959f;stroke-width:1.2}svg .node rect{fill:#f6f8fa;stroke:#57606a}\
svg .kind-run rect{fill:#ddf4ff}svg .kind-adapter rect,svg .kind-checkpoint rect{fill:#dafbe1}svg .kind-eval rect{fill:#fff8c5}\
svg .kind-promotion rect{fill:#fbefff}.muted{color:#57606a}";

/// Colours of the eval metrics drawn per checkpoint.
const EVAL_SERIES: &[(&str, &str)] = &[
    ("field_exact_match", "#1a7f37"),
    ("doc_exact_match", "#8250df"),
    ("json_valid_rate", "#0969da"),
    ("anls", "#bf8700"),
];

/// The whole page.
pub fn render_run(
    run: &RunView,
    points: &[MetricPoint],
    checkpoints: &[CheckpointView],
    tree: &TreeNode,
    as_of: u64,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>run {id}</title><style>{STYLE}</style></head><body>",
        id = esc(&run.run_id)
    );
    let _ = write!(h, "<h1>run <code>{}</code></h1>", esc(&run.run_id));
    let opt = |s: &Option<String>| {
        s.as_deref()
            .map(|x| esc(short(x)))
            .unwrap_or_else(|| "-".into())
    };
    let _ = write!(
        h,
        "<table class=\"summary\"><tr><th>status</th><td>{}</td><th>recipe</th><td><code>{}</code></td><th>dataset</th><td><code>{}</code></td><th>model</th><td><code>{}</code></td></tr>\
         <tr><th>steps</th><td>{}</td><th>final loss</th><td>{}</td><th>checkpoints</th><td>{}</td><th>as of seq</th><td>{}</td></tr></table>",
        esc(&run.status),
        opt(&run.recipe_id),
        opt(&run.dataset_id),
        opt(&run.model_id),
        run.last_step.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        run.final_loss.or(run.metrics.last_loss.map(|s| s.value)).map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        checkpoints.len(),
        as_of
    );
    h.push_str("<h2>training</h2><div class=\"charts\">");
    let loss = Series {
        name: "loss",
        color: "#cf222e",
        points: points.iter().map(|p| (p.step as f64, p.loss)).collect(),
        bars: Vec::new(),
    };
    let ck_loss = Series {
        name: "checkpoint loss",
        color: "#1a7f37",
        points: checkpoints
            .iter()
            .filter_map(|c| c.loss.map(|l| (c.step as f64, l)))
            .collect(),
        bars: Vec::new(),
    };
    h.push_str(&line_chart("training loss", "step", &[loss, ck_loss], None));
    let lr = Series {
        name: "learning rate",
        color: "#0969da",
        points: points.iter().map(|p| (p.step as f64, p.lr)).collect(),
        bars: Vec::new(),
    };
    h.push_str(&line_chart("learning rate", "step", &[lr], None));
    h.push_str("</div>");

    h.push_str("<h2>evals per checkpoint</h2>");
    let mut series = Vec::new();
    for (name, color) in EVAL_SERIES {
        let mut pts = Vec::new();
        let mut bars = Vec::new();
        for c in checkpoints {
            for e in &c.evals {
                if let Some(m) = e.metrics.get(*name) {
                    pts.push((c.step as f64, m.value));
                    bars.push(m.ci_low.zip(m.ci_high));
                }
            }
        }
        if !pts.is_empty() {
            series.push(Series {
                name,
                color,
                points: pts,
                bars,
            });
        }
    }
    h.push_str(&line_chart(
        "eval scores (95% CI)",
        "checkpoint step",
        &series,
        Some((0.0, 1.0)),
    ));
    let evals: Vec<(&CheckpointView, &foundry_projections::EvalRef)> = checkpoints
        .iter()
        .flat_map(|c| c.evals.iter().map(move |e| (c, e)))
        .collect();
    if evals.is_empty() {
        h.push_str("<p class=\"muted\">no evals yet</p>");
    } else {
        h.push_str("<table class=\"evals\"><tr><th>step</th><th>checkpoint</th><th>eval</th><th>split</th><th>examples</th><th>metrics (95% CI)</th><th>serving</th></tr>");
        for (c, e) in evals {
            let metrics: Vec<String> = e
                .metrics
                .iter()
                .filter(|(k, _)| !k.contains('/'))
                .map(|(k, m)| match (m.ci_low, m.ci_high) {
                    (Some(lo), Some(hi)) => format!("{} {:.3} [{lo:.3}, {hi:.3}]", esc(k), m.value),
                    _ => format!("{} {:.3}", esc(k), m.value),
                })
                .collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.step,
                esc(short(&c.checkpoint_id)),
                esc(short(&e.eval_id)),
                esc(&e.split),
                e.examples,
                metrics.join("<br>"),
                esc(&c.channels.join(", "))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>lineage</h2>");
    h.push_str(&lineage_svg(tree));
    let _ = writeln!(
        h,
        "<p class=\"muted\">written by ledger {} from the event ledger as of seq {as_of}</p></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn ticks_are_nice_and_cover() {
        let t = ticks(0.0, 1.0, 5);
        assert_eq!(t.len(), 6);
        for (i, v) in t.iter().enumerate() {
            assert!((v - 0.2 * i as f64).abs() < 1e-12, "{t:?}");
        }
        let t = ticks(3.0, 117.0, 6);
        assert_eq!(t, vec![20.0, 40.0, 60.0, 80.0, 100.0]);
        assert!(ticks(1e-5, 3e-5, 5).len() >= 3);
        assert_eq!(fmt_tick(0.0001), "1.0e-4");
        assert_eq!(fmt_tick(0.25), "0.25");
    }

    #[test]
    fn chart_draws_series_and_handles_degenerate_input() {
        let s = Series {
            name: "loss <x>",
            color: "#f00",
            points: vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)],
            bars: vec![Some((1.5, 2.5)), None, None],
        };
        let svg = line_chart("t", "step", &[s], None);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("class=\"bar\"").count(), 1);
        assert!(svg.contains("loss &lt;x&gt;"));
        assert!(!svg.contains("NaN"));
        let empty = line_chart("t", "step", &[], None);
        assert!(empty.contains("no data"));
        let one = Series {
            name: "a",
            color: "#000",
            points: vec![(5.0, 5.0)],
            bars: vec![],
        };
        let svg = line_chart("t", "step", &[one], None);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn lineage_places_every_node() {
        let leaf = |k: &str, l: &str| TreeNode {
            kind: k.into(),
            id: l.into(),
            label: l.into(),
            children: vec![],
        };
        let tree = TreeNode {
            kind: "run".into(),
            id: "r".into(),
            label: "run r".into(),
            children: vec![
                leaf("recipe", "recipe x"),
                leaf("dataset", "dataset <y>"),
                leaf("model", "m"),
            ],
        };
        let svg = lineage_svg(&tree);
        assert_eq!(svg.matches("<rect").count(), 4);
        assert_eq!(svg.matches("class=\"edge\"").count(), 3);
        assert!(svg.contains("dataset &lt;y&gt;"));
        assert!(svg.contains("kind-run"));
    }
}
