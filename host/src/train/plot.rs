//! `wmtp plot RUN_DIR`: a run's metrics (metrics.jsonl) as `plots.svg` and `plots.png` — the loss and
//! cross-entropy curves (with validation points) first, then one small chart per plugin metric.
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

fn chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    lines: &[(&str, &[(f64, f64)])],
) -> Result<()> {
    let pts = lines.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, s)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    if lines.len() > 1 {
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// The metrics of the top chart.
const MAIN: [&str; 4] = ["loss", "ce", "val_ce", "val_loss"];

/// The metrics that get a chart of their own: all but the top chart's and the bookkeeping ones.
fn others(series: &Series) -> Vec<&String> {
    const SKIP: [&str; 3] = ["tokens", "tokens_per_s", "lr"];
    series
        .keys()
        .filter(|k| !MAIN.contains(&k.as_str()) && !SKIP.contains(&k.as_str()))
        .collect()
}

/// Charts per row below the top chart.
const COLS: usize = 3;

/// Pixel size of the figure for `charts` plugin metrics: a 1200-wide top chart and rows of [`COLS`].
fn figure_size(charts: usize) -> (u32, u32) {
    (1200, 320 * (1 + charts.div_ceil(COLS)) as u32)
}

/// Draws the figure on `root`: the loss/CE chart, then one chart per other metric.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, series: &Series) -> Result<()> {
    let main: Vec<&str> = MAIN
        .into_iter()
        .filter(|k| series.contains_key(*k))
        .collect();
    let others = others(series);
    let rows = 1 + others.len().div_ceil(COLS);
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, rest) = root.split_vertically(320);
    let lines: Vec<(&str, &[(f64, f64)])> =
        main.iter().map(|k| (*k, series[*k].as_slice())).collect();
    chart(&top, "loss and cross-entropy", &lines)?;
    if !others.is_empty() {
        let cells = rest.split_evenly((rows - 1, COLS));
        for (cell, k) in cells.iter().zip(&others) {
            chart(cell, k, &[(k.as_str(), series[*k].as_slice())])?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Writes `run_dir/plots.svg` and `run_dir/plots.png` (the same figure); returns their paths.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let series = read_metrics(&run_dir.join(crate::train::checkpoint::layout::METRICS))?;
    let size = figure_size(others(&series).len());
    let svg = run_dir.join("plots.svg");
    draw(SVGBackend::new(&svg, size).into_drawing_area(), &series)
        .with_context(|| format!("writing {}", svg.display()))?;
    let png = run_dir.join("plots.png");
    draw(BitMapBackend::new(&png, size).into_drawing_area(), &series)
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(vec![svg, png])
}
