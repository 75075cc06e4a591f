//! `wmtp plot RUN_DIR`: a run's metrics (metrics.jsonl) as `plots.svg` and `plots.png` — two charts a
//! row: loss, cross-entropy per head (training lines, validation dots, one colour per head), learning
//! rate, tokens/s, gradient norm, seconds per step, memory, then a chart per remaining (plugin) metric.
//!
//! Text is measured (both files) and drawn (PNG) with an embedded font, `assets/plot-sans.ttf` (a subset
//! of DejaVu Sans; licence in `assets/plot-sans.LICENSE`), so the output does not depend on the fonts a
//! machine has.

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The embedded font, registered as plotters' "sans-serif".
static FONT: &[u8] = include_bytes!("../../assets/plot-sans.ttf");

/// Registers [`FONT`] once per process (every call reports whether that worked).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if !ok {
        bail!("the embedded plot font (assets/plot-sans.ttf) is not a valid TrueType font");
    }
    Ok(())
}

/// Series by metric name: (step, value) points.
pub type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Reads metrics.jsonl into series (non-numeric fields are skipped; bad lines name the line).
pub fn read_metrics(path: &Path) -> Result<Series> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out: Series = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(obj) = v.as_object() {
            for (k, x) in obj {
                if let (Some(x), false) = (x.as_f64(), k == "step") {
                    out.entry(k.clone()).or_default().push((step, x));
                }
            }
        }
    }
    if out.is_empty() {
        bail!("{}: no metrics", path.display());
    }
    Ok(out)
}

/// One curve of a chart: a training series drawn as a line, or a validation series drawn as dots
/// joined by a thin line, in the colour of index `color`.
struct Line<'a> {
    name: String,
    pts: &'a [(f64, f64)],
    color: usize,
    validation: bool,
}

/// One chart: a title and its curves.
struct Panel<'a> {
    title: String,
    lines: Vec<Line<'a>>,
}

fn chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()> {
    let pts = panel.lines.iter().flat_map(|l| l.pts.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|p| p.1.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9 + y1.abs() * 1e-3);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let mut c = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("step")
        .x_labels(6)
        .y_labels(6)
        .light_line_style(WHITE.mix(0.0))
        .y_label_formatter(&|y| short(*y))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for l in &panel.lines {
        let color = Palette99::pick(l.color).to_rgba();
        let width = if l.validation { 1 } else { 2 };
        let series = c
            .draw_series(LineSeries::new(
                l.pts.iter().copied().filter(|p| p.1.is_finite()),
                color.stroke_width(width),
            ))
            .map_err(|e| err(&e))?;
        if l.validation {
            if !l.name.is_empty() {
                series.label(l.name.as_str()).legend(move |(x, y)| {
                    EmptyElement::at((x + 8, y)) + Circle::new((0, 0), 4, color.filled())
                });
            }
            // dots with a dark rim, over the training line of the same colour
            for (r, style) in [(5, BLACK.mix(0.7).filled()), (4, color.filled())] {
                c.draw_series(
                    l.pts
                        .iter()
                        .filter(|p| p.1.is_finite())
                        .map(move |&p| Circle::new(p, r, style)),
                )
                .map_err(|e| err(&e))?;
            }
        } else {
            series.label(l.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        }
    }
    if panel.lines.len() > 1 {
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.85))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

/// A tick label of a few significant digits (1.2e-4, 0.035, 12.5, 31k).
fn short(y: f64) -> String {
    let a = y.abs();
    if a < 1e-12 {
        "0".into()
    } else if a >= 10_000.0 {
        format!("{:.0}k", y / 1000.0)
    } else if a >= 100.0 {
        format!("{y:.1}").trim_end_matches(".0").to_string()
    } else if a >= 0.01 {
        format!("{y:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{y:.1e}")
    }
}

/// The chart a metric shares with its kin: its name up to the first `_` after the last `.`, with that
/// `_` (`plugin.w_mean` → `plugin.w_`); the whole name when it has none.
fn stem(key: &str) -> String {
    let start = key.rfind('.').map_or(0, |i| i + 1);
    match key[start..].find('_') {
        Some(i) => key[..start + i + 1].to_string(),
        None => key.to_string(),
    }
}

/// Keys that are bookkeeping, not curves (or are drawn inside another panel).
const NOT_CURVES: [&str; 5] = [
    "tokens",
    "skipped",
    "skipped_steps",
    "time.first_step_done_s",
    "stage",
];

/// The charts of a run, in order: loss (training line, validation dots), cross-entropy per head
/// (training and validation in one colour per head), learning rate, tokens/s, gradient norm, seconds
/// per step (and its parts), memory, then one chart per remaining metric (a plugin's, with its
/// validation counterpart as dots). Series that never change (e.g. a step count that stays 0) are left
/// out.
fn panels(series: &Series) -> Vec<Panel<'_>> {
    let mut b = Panels {
        series,
        used: NOT_CURVES.iter().map(|s| s.to_string()).collect(),
        out: Vec::new(),
    };
    b.loss();
    b.heads();
    b.add("learning rate", &[("lr", "lr", 0, false)]);
    b.add("tokens/s", &[("tokens_per_s", "tokens/s", 0, false)]);
    b.add("gradient norm", &[("grad_norm", "grad norm", 0, false)]);
    b.add(
        "seconds per step",
        &[
            ("time.step_s", "step", 0, false),
            ("time.forward_s", "forward", 1, false),
            ("time.backward_s", "backward", 2, false),
            ("time.optimizer_s", "optimizer", 3, false),
            ("time.plugin_s", "plugin", 4, false),
        ],
    );
    b.add(
        "memory (GiB)",
        &[
            ("mem.peak_used_gib", "GPU peak used", 0, false),
            ("mem.peak_reserved_gib", "GPU peak reserved", 1, false),
        ],
    );
    b.add(
        "host memory (MiB RSS)",
        &[("mem.host_rss_mib", "host RSS", 0, false)],
    );
    b.plugin_metrics();
    b.leftover_validation();
    b.out
}

/// The charts being laid out, and the series already drawn (each series goes into one chart).
struct Panels<'a> {
    series: &'a Series,
    used: std::collections::BTreeSet<String>,
    out: Vec<Panel<'a>>,
}

/// One line of a chart: (series key, legend name, colour index, drawn as validation dots).
type LineSpec<'k> = (&'k str, &'k str, usize, bool);

impl<'a> Panels<'a> {
    fn get(&self, k: &str) -> Option<&'a [(f64, f64)]> {
        self.series.get(k).map(Vec::as_slice)
    }

    /// A chart of the given series that exist (none: no chart); marks them drawn.
    fn add(&mut self, title: &str, keys: &[LineSpec<'_>]) {
        let mut lines = Vec::new();
        for &(k, name, color, validation) in keys {
            self.used.insert(k.to_string());
            if let Some(pts) = self.get(k) {
                lines.push(Line {
                    name: name.to_string(),
                    pts,
                    color,
                    validation,
                });
            }
        }
        if !lines.is_empty() {
            self.out.push(Panel {
                title: title.to_string(),
                lines,
            });
        }
    }

    /// The run's loss; the mean CE too when the pipeline's loss is something else.
    fn loss(&mut self) {
        let same = match (self.get("loss"), self.get("ce")) {
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|(p, q)| (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(1.0))
            }
            _ => true,
        };
        let mut main = vec![
            ("loss", "loss", 0, false),
            ("val_loss", "validation loss", 0, true),
        ];
        if !same {
            main.extend([
                ("ce", "CE (mean over heads)", 1, false),
                ("val_ce", "validation CE", 1, true),
            ]);
        }
        self.used.extend(["ce".to_string(), "val_ce".to_string()]);
        self.add("loss and cross-entropy", &main);
    }

    /// Every head's training CE (lines) and validation CE (dots) in one chart, a colour per head.
    fn heads(&mut self) {
        let series = self.series;
        let heads = (0..)
            .take_while(|k| {
                series.contains_key(&format!("plugin.ce_h{k}"))
                    || series.contains_key(&format!("val_ce_h{k}"))
            })
            .count();
        let names: Vec<[String; 4]> = (0..heads)
            .map(|k| {
                [
                    format!("plugin.ce_h{k}"),
                    format!("head {k}"),
                    format!("val_ce_h{k}"),
                    format!("head {k} validation"),
                ]
            })
            .collect();
        let keys: Vec<LineSpec<'_>> = names
            .iter()
            .enumerate()
            .flat_map(|(k, [t, tn, v, vn])| {
                [
                    (t.as_str(), tn.as_str(), k, false),
                    (v.as_str(), vn.as_str(), k, true),
                ]
            })
            .collect();
        for [_, _, v, _] in &names {
            self.used.insert(format!("val_plugin.{}", &v[4..]));
        }
        self.add("cross-entropy per head (nats; dots: validation)", &keys);
    }

    /// Everything else (a plugin's metrics), grouped by name stem — `plugin.w_mean`, `plugin.w_max` …
    /// in one chart "plugin.w_*" — each with its validation counterpart as dots; series that never
    /// change and have no validation counterpart are left out.
    fn plugin_metrics(&mut self) {
        let series = self.series;
        let mut groups: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for k in series
            .keys()
            .filter(|k| !self.used.contains(*k) && !k.starts_with("val_"))
        {
            let flat = series[k].iter().all(|p| p.1 == series[k][0].1);
            if !flat || series.contains_key(&format!("val_{k}")) {
                groups.entry(stem(k)).or_default().push(k);
            }
        }
        for (title, keys) in &groups {
            // validation dots go unlabelled: the chart's title says what dots are
            let vals: Vec<String> = keys.iter().map(|k| format!("val_{k}")).collect();
            let mut lines = Vec::new();
            for (color, (k, v)) in keys.iter().zip(&vals).enumerate() {
                lines.push((k.as_str(), k.as_str(), color, false));
                lines.push((v.as_str(), "", color, true));
            }
            let has_val = keys
                .iter()
                .any(|k| series.contains_key(&format!("val_{k}")));
            let title = match (keys.len() > 1, has_val) {
                (true, true) => format!("{title}* (dots: validation)"),
                (true, false) => format!("{title}*"),
                (false, true) => format!("{} (dots: validation)", keys[0]),
                (false, false) => keys[0].to_string(),
            };
            self.add(&title, &lines);
        }
    }

    /// Validation series no chart has drawn, one chart each.
    fn leftover_validation(&mut self) {
        for (k, pts) in self
            .series
            .iter()
            .filter(|(k, _)| k.starts_with("val_") && !self.used.contains(*k))
        {
            self.out.push(Panel {
                title: k.clone(),
                lines: vec![Line {
                    name: k.clone(),
                    pts,
                    color: 0,
                    validation: true,
                }],
            });
        }
    }
}

/// Charts per row.
const COLS: usize = 2;
/// Pixel size of one chart.
const CELL: (u32, u32) = (600, 300);

/// Pixel size of the figure for `n` charts in rows of [`COLS`].
fn figure_size(n: usize) -> (u32, u32) {
    (
        CELL.0 * COLS as u32,
        CELL.1 * n.div_ceil(COLS).max(1) as u32,
    )
}

/// Draws the charts on `root`, [`COLS`] per row.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<()> {
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cells = root.split_evenly((panels.len().div_ceil(COLS).max(1), COLS));
    for (cell, p) in cells.iter().zip(panels) {
        chart(cell, p)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Writes `run_dir/plots.svg` and `run_dir/plots.png` (the same figure); returns their paths.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let series = read_metrics(&run_dir.join(crate::checkpoint::layout::METRICS))?;
    let panels = panels(&series);
    let size = figure_size(panels.len());
    let svg = run_dir.join("plots.svg");
    draw(SVGBackend::new(&svg, size).into_drawing_area(), &panels)
        .with_context(|| format!("writing {}", svg.display()))?;
    let png = run_dir.join("plots.png");
    draw(BitMapBackend::new(&png, size).into_drawing_area(), &panels)
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(vec![svg, png])
}
