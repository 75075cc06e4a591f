//! `data.pack` end to end on the tiny preset: packed sequences carry more tokens per step and still
//! train; pipelines that pair samples or use rewards, and a max_length beyond the model, refuse it.

use crate::common::{self, train};
use crate::train_pipelines::{assert_falls, mean};

/// Mean trained tokens per step in a run's metrics.jsonl.
fn tokens_per_step(run_dir: &std::path::Path) -> f64 {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let t: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("tokens").and_then(|x| x.as_f64()))
        .collect();
    mean(&t)
}

/// `data.pack`: the same batch size carries several samples per sequence (more tokens per step), the
/// model still learns; pipelines that pair samples or use rewards refuse it, and so does a
/// max_length beyond the model's context.
#[test]
fn packed_samples_train_more_tokens_per_step_and_pairing_pipelines_refuse_packing() {
    let (a, b) = (common::tempdir(), common::tempdir());
    // short {text} rows (~15 tokens): a sequence of 240 holds about fifteen
    let data = a.path().join("sums.jsonl");
    let rows: String = (0..96)
        .map(|i| format!("{{\"text\": \"{} + {} = {}\"}}\n", i, i % 7, i + i % 7))
        .collect();
    std::fs::write(&data, rows).unwrap();
    let train_set = format!("data.train=\"{}\"", data.display());
    let base = ["training.steps=12", "training.lr=0.01", train_set.as_str()];
    let plain = train("baseline", a.path(), &base).unwrap();
    let packed = train(
        "baseline",
        b.path(),
        &[base[0], base[1], base[2], "data.pack=true"],
    )
    .unwrap();
    let (tp, tk) = (
        tokens_per_step(&plain.run_dir),
        tokens_per_step(&packed.run_dir),
    );
    assert!(tk > 5.0 * tp, "packed {tk} vs plain {tp} tokens per step");
    assert_falls("baseline packed", &packed, &packed.ces);
    let c = common::tempdir();
    for (pipeline, extra, says) in [
        ("critic", "data.max_length=240", "pairs samples"),
        ("baseline", "data.max_length=4096", "max_seq_len"),
    ] {
        let e = format!(
            "{:#}",
            train(
                pipeline,
                c.path(),
                &["training.steps=2", "data.pack=true", extra]
            )
            .unwrap_err()
        );
        assert!(e.contains("data.pack") && e.contains(says), "{e}");
    }
}
