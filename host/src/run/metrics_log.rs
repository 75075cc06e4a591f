//! Where a run's metrics go: one JSON line per step (and per validation) in `metrics.jsonl`, and with
//! `runtime.tensorboard = true` the same numbers as TensorBoard scalars (tag = the metrics key, e.g.
//! `loss`, `val_ce_h0`, `plugin.ce_h1`), in `RUN_DIR/tensorboard/events.out.tfevents.*` ([`super::tensorboard`]):
//! `tensorboard --logdir runs/` shows every run. Only rank 0 writes.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// The metrics sinks of a run.
pub struct MetricsLog {
    jsonl: Box<dyn Write>,
    tensorboard: Option<super::tensorboard::EventWriter>,
}

impl MetricsLog {
    /// Appends to `run_dir/metrics.jsonl` (and starts a TensorBoard event file when `tensorboard`) on
    /// rank 0; other ranks' lines go nowhere.
    pub fn open(run_dir: &Path, rank: usize, tensorboard: bool) -> Result<Self> {
        if rank != 0 {
            return Ok(MetricsLog {
                jsonl: Box::new(std::io::sink()),
                tensorboard: None,
            });
        }
        let path = run_dir.join(crate::checkpoint::layout::METRICS);
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let tensorboard = if tensorboard {
            Some(super::tensorboard::EventWriter::create(
                &run_dir.join("tensorboard"),
            )?)
        } else {
            None
        };
        Ok(MetricsLog {
            jsonl: Box::new(jsonl),
            tensorboard,
        })
    }

    /// Writes one metrics line (a JSON object with `step`); every other numeric key becomes a scalar.
    pub fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.jsonl, "{line}").context("writing metrics.jsonl")?;
        if let (Some(tb), Some(obj)) = (&mut self.tensorboard, line.as_object()) {
            let step = obj.get("step").and_then(|s| s.as_i64()).unwrap_or(0);
            let values: Vec<(&str, f32)> = obj
                .iter()
                .filter(|(k, _)| k.as_str() != "step")
                .filter_map(|(k, v)| {
                    let x = match v {
                        serde_json::Value::Number(n) => n.as_f64(),
                        serde_json::Value::Bool(b) => Some(*b as u8 as f64),
                        _ => None,
                    }?;
                    Some((k.as_str(), x as f32))
                })
                .collect();
            if !values.is_empty() {
                tb.scalars(step, &values)?;
            }
        }
        Ok(())
    }
}
