//! The shipped configs parse and their `[plugin]` tables are accepted by their plugins; a LoRA run's
//! adapter reloads to the same validation CE through `wmtp eval`; `wmtp merge` gives a model with the same
//! predictions; `wmtp plot` writes an SVG.

use crate::common;

use std::sync::Arc;
use wmtp_host::checkpoint::evaluate::eval_checkpoint;
use wmtp_host::checkpoint::export::merge_checkpoint;
use wmtp_host::formats::load::{load_model, LoadOptions};
use wmtp_host::model::{ForwardCtx, VisitParams};
use wmtp_host::run::{run, RunOptions};
use wmtp_host::train::config::RunConfig;
use wmtp_plugin_host::{Plugin, PluginLimits, PluginRuntime};

#[test]
fn shipped_configs_are_valid_for_their_plugins() {
    let rt = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let mut n = 0;
    for e in std::fs::read_dir(common::root().join("configs")).unwrap() {
        let path = e.unwrap().path();
        let cfg = RunConfig::load(Some(&path), &[])
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let text = std::fs::read_to_string(&path).unwrap();
        let header = text.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(
            header.contains("wmtp run --pipeline plugins/"),
            "{}: header must give the command",
            path.display()
        );
        // the plugin the header's command names (`--pipeline plugins/NAME.wasm`)
        let plugin = header
            .split("--pipeline plugins/")
            .nth(1)
            .and_then(|r| r.split(".wasm").next())
            .unwrap()
            .to_string();
        let mut p =
            Plugin::load(&rt, &common::root().join(format!("plugins/{plugin}.wasm"))).unwrap();
        p.configure(&toml::to_string(&cfg.plugin).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        n += 1;
    }
    assert_eq!(n, 10);
}

#[test]
fn adapter_reload_eval_merge_and_plot() {
    let dir = common::tempdir();
    let set = vec![
        format!("checkpoint.dir={}", dir.path().display()),
        "training.use_lora=true".into(),
        "training.steps=6".into(),
        "training.lr=0.01".into(),
        "training.batch_size=4".into(),
        "runtime.eval_every=3".into(),
    ];
    let r = run(&RunOptions {
        pipeline: Some(common::root().join("plugins/baseline.wasm")),
        set,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let val_ce = r.val.unwrap().ce;
    let v = eval_checkpoint(&r.last_checkpoint, None, None).unwrap();
    let (ce, loss) = (v.ce, v.loss);
    // per-head CE: every head has tokens, and the mean over heads is near the batch-averaged `ce`
    assert_eq!(v.ce_heads.len(), 2);
    let mean = v.ce_heads.iter().sum::<f64>() / 2.0;
    assert!(v.ce_heads.iter().all(|c| c.is_finite() && *c > 0.0));
    assert!((mean - ce).abs() < 0.05 * ce, "{:?} vs {ce}", v.ce_heads);
    assert_eq!(
        ce, val_ce,
        "reloaded adapter must give the same validation CE"
    );
    assert!(
        (loss - ce).abs() < 1e-6,
        "baseline's weighted loss is the plain CE: {loss} vs {ce}"
    );

    assert!(dir
        .path()
        .join("checkpoints/best/adapter/adapter_model.safetensors")
        .exists());

    let merged = dir.path().join("merged");
    merge_checkpoint(&r.last_checkpoint, &merged, Default::default()).unwrap();
    let m = load_model(merged.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model;
    assert!(m.lora.is_none());
    let mut lora_model = load_model(
        "tiny",
        &LoadOptions {
            seed: 42,
            ..Default::default()
        },
    )
    .unwrap()
    .model;
    wmtp_host::formats::adapter::load_adapter(&r.last_checkpoint.join("adapter"), &mut lora_model)
        .unwrap();
    let tokens =
        candle_core::Tensor::new(&[[256u32, 72, 105, 33, 10, 257]], &candle_core::Device::Cpu)
            .unwrap();
    let a = m.forward(&tokens, &ForwardCtx::eval()).unwrap();
    let b = lora_model.forward(&tokens, &ForwardCtx::eval()).unwrap();
    let d = common::max_abs_diff(&a[0], &b[0]);
    assert!(d < 1e-4, "merged vs adapter logits differ by {d}");
    // `--model CHECKPOINT` (generate, eval --humaneval): the base with the adapter merged, byte tokenizer
    let inf = wmtp_host::formats::checkpoint::load_trained_for_inference(
        &r.last_checkpoint,
        "tiny",
        &LoadOptions {
            seed: 42,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(inf.tokenizer.is_some());
    let c = inf.model.forward(&tokens, &ForwardCtx::eval()).unwrap();
    for (k, (x, y)) in c.iter().zip(&b).enumerate() {
        let d = common::max_abs_diff(x, y);
        assert!(
            d < 1e-4,
            "head {k}: inference loader vs adapter differ by {d}"
        );
    }
    assert!(lora_model
        .named_params()
        .iter()
        .any(|(n, _)| n.contains("lora_B")));

    let files = wmtp_host::run::plot::plot_run(&r.run_dir).unwrap();
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.starts_with("<svg") && text.contains("loss and cross-entropy"));
    // the PNG: a 1200-pixel-wide image whose pixels are not all the white background (curves and text)
    let png = std::fs::read(&files[1]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1200);
    assert!(
        png.len() > 10_000,
        "a {}-byte PNG is too small to hold the charts",
        png.len()
    );
}

#[test]
fn a_checkpoint_is_scored_by_another_pipeline_on_that_pipelines_samples() {
    // a verifiable run (pairs of correct and incorrect samples, weighted loss), scored by baseline:
    // the baseline plugin's validation (correct samples only, loss = plain CE) of the trained weights
    let dir = common::tempdir();
    let r = run(&RunOptions {
        pipeline: Some(common::root().join("plugins/verifiable.wasm")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().display()),
            "training.use_lora=true".into(),
            "training.steps=3".into(),
            "training.lr=0.01".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let own = eval_checkpoint(&r.last_checkpoint, None, None).unwrap();
    let by_baseline = eval_checkpoint(
        &r.last_checkpoint,
        None,
        Some(common::root().join("plugins/baseline.wasm")),
    )
    .unwrap();
    assert!((by_baseline.loss - by_baseline.ce).abs() < 1e-9);
    assert!(
        (own.loss - own.ce).abs() > 1e-3,
        "verifiable weighs its loss"
    );
    // the trained weights are loaded: the untrained model (step 0 of a baseline run on the same data)
    // scores differently on the same samples
    let baseline_run = run(&RunOptions {
        pipeline: Some(common::root().join("plugins/baseline.wasm")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().join("b").display()),
            "training.use_lora=true".into(),
            "training.steps=1".into(),
            "runtime.eval_every=1".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let first = std::fs::read_to_string(baseline_run.run_dir.join("metrics.jsonl")).unwrap();
    let step0: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(step0["step"], 0);
    let fresh = step0["val_ce"].as_f64().unwrap();
    assert!(
        (fresh - by_baseline.ce).abs() > 1e-4,
        "trained {} vs untrained {fresh}",
        by_baseline.ce
    );
}

/// Reads a protobuf varint at `*pos`.
fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*pos];
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// The (field, varint or fixed value, bytes) of one protobuf message.
fn proto_fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let (mut pos, mut out) = (0, Vec::new());
    while pos < b.len() {
        let key = varint(b, &mut pos);
        match key & 7 {
            0 => out.push((key >> 3, varint(b, &mut pos), vec![])),
            1 => {
                out.push((key >> 3, 0, b[pos..pos + 8].to_vec()));
                pos += 8
            }
            5 => {
                out.push((key >> 3, 0, b[pos..pos + 4].to_vec()));
                pos += 4
            }
            2 => {
                let n = varint(b, &mut pos) as usize;
                out.push((key >> 3, 0, b[pos..pos + n].to_vec()));
                pos += n
            }
            w => panic!("wire type {w}"),
        }
    }
    out
}

/// TFRecord's masked CRC-32C.
fn masked_crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    let crc = !crc;
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[test]
fn tensorboard_events_hold_the_metrics() {
    let dir = common::tempdir();
    let r = run(&RunOptions {
        pipeline: Some(common::root().join("plugins/baseline.wasm")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().display()),
            "training.steps=3".into(),
            "runtime.eval_every=1".into(),
            "runtime.tensorboard=true".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let tb = r.run_dir.join("tensorboard");
    let files: Vec<_> = std::fs::read_dir(&tb)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("events.out.tfevents."));
    let bytes = std::fs::read(&files[0]).unwrap();
    // TFRecord framing: length, its CRC, the Event, its CRC
    let (mut pos, mut scalars) = (0, Vec::new());
    while pos < bytes.len() {
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(len_bytes));
        let data = &bytes[pos + 12..pos + 12 + len];
        let dcrc = u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
        assert_eq!(dcrc, masked_crc32c(data));
        pos += 16 + len;
        // Event { step = 2; summary = 5 { value = 1 { tag = 1; simple_value = 2 } } }
        let ev = proto_fields(data);
        let step = ev.iter().find(|f| f.0 == 2).map_or(0, |f| f.1);
        for (_, _, summary) in ev.iter().filter(|f| f.0 == 5) {
            for (_, _, value) in proto_fields(summary).iter().filter(|f| f.0 == 1) {
                let v = proto_fields(value);
                let tag =
                    String::from_utf8(v.iter().find(|f| f.0 == 1).unwrap().2.clone()).unwrap();
                let x = f32::from_le_bytes(
                    v.iter().find(|f| f.0 == 2).unwrap().2[..4]
                        .try_into()
                        .unwrap(),
                );
                scalars.push((step, tag, x));
            }
        }
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(r.run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for key in ["loss", "val_ce", "lr", "plugin.ce_h0"] {
        let want: Vec<(u64, f32)> = lines
            .iter()
            .filter_map(|l| Some((l["step"].as_u64()?, l.get(key)?.as_f64()? as f32)))
            .collect();
        let got: Vec<(u64, f32)> = scalars
            .iter()
            .filter(|s| s.1 == key)
            .map(|s| (s.0, s.2))
            .collect();
        assert!(!want.is_empty(), "{key}");
        assert_eq!(got, want, "{key}");
    }
}

/// `wmtp distill`: one answer row per distinct instruction of the dataset (with its task id), a file that
/// training then reads; an existing --out is not overwritten.
#[test]
fn distill_writes_the_models_answers_as_training_rows() {
    let dir = common::tempdir();
    let data = dir.path().join("in.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"add 2 and 3\", \"output\": \"5\", \"task_id\": \"p1\"}\n\
         {\"instruction\": \"add 4 and 4\", \"output\": \"8\", \"task_id\": \"p2\"}\n\
         {\"instruction\": \"add 2 and 3\", \"output\": \"five\", \"task_id\": \"p1\"}\n",
    )
    .unwrap();
    let out = dir.path().join("distilled.jsonl");
    let wmtp = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"))
            .args(args)
            .output()
            .unwrap()
    };
    let args = [
        "distill",
        "--model",
        "tiny",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--batch",
        "2",
    ];
    let r = wmtp(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
    for r in &rows {
        assert!(r["output"].is_string() && r["is_correct"] == true, "{r}");
    }
    // what it wrote is training data
    let train = run(&RunOptions {
        pipeline: Some(common::shipped_plugin("baseline")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().join("run").display()),
            format!("data.train={}", out.display()),
            "data.val_fraction=0".into(),
            "training.steps=2".into(),
            "training.batch_size=2".into(),
            "runtime.eval_every=0".into(),
        ],
        quiet: true,
        ..Default::default()
    });
    assert!(train.is_ok(), "{:#}", train.unwrap_err());
    let again = wmtp(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

/// What `wmtp` prints for a newcomer: the resolved config only with -v (it is saved anyway), and a CUDA
/// device asked of a CPU build says how to build with CUDA.
#[test]
fn console_output_is_short_and_a_cpu_build_says_how_to_get_cuda() {
    let dir = common::tempdir();
    let wmtp = common::wmtp;
    let plugin = common::shipped_plugin("baseline");
    for (verbose, run) in [(false, "a"), (true, "b")] {
        let ck = format!("checkpoint.dir={}", dir.path().join(run).display());
        let mut args = vec!["run", "--pipeline", plugin.to_str().unwrap(), "--set", &ck];
        args.extend(["--set", "training.steps=1", "--set", "runtime.eval_every=0"]);
        if verbose {
            args.insert(0, "-v");
        }
        let (ok, err) = wmtp(&args);
        assert!(ok, "{err}");
        assert_eq!(err.contains("[training]"), verbose, "-v {verbose}: {err}");
        assert!(dir.path().join(run).join("config.toml").exists());
    }
    #[cfg(not(feature = "cuda"))]
    {
        let (ok, err) = wmtp(&[
            "generate", "--model", "tiny", "--device", "cuda", "--prompt", "x",
        ]);
        assert!(!ok && err.contains("--features cuda"), "{err}");
    }
}

/// Off a terminal (here: stderr is a pipe) a run prints plain progress lines — every `runtime.log_every`
/// steps and at the last step, with loss, lr, grad norm, tokens/s and ETA — and each validation; with
/// both triggers off it prints none.
#[test]
fn off_a_terminal_a_run_prints_plain_progress_lines() {
    let dir = common::tempdir();
    let plugin = common::shipped_plugin("baseline");
    let run = |name: &str, log_every: &str| {
        let ck = format!("checkpoint.dir={}", dir.path().join(name).display());
        common::wmtp_ok(&[
            "run",
            "--pipeline",
            plugin.to_str().unwrap(),
            "--set",
            &ck,
            "--set",
            "training.steps=5",
            "--set",
            "runtime.eval_every=4",
            "--set",
            log_every,
            "--set",
            "runtime.log_every_s=0",
        ])
    };
    let err = run("a", "runtime.log_every=2");
    let steps: Vec<&str> = err.lines().filter(|l| l.starts_with("step ")).collect();
    // "step 2/5 (40%)  loss …" → "step 2/5 (40%)"; "step 4 validation: ce …" → "step 4 validation"
    let heads: Vec<&str> = steps
        .iter()
        .map(|l| l.split(": ").next().unwrap().split("  ").next().unwrap())
        .collect();
    assert_eq!(
        heads,
        [
            "step 0 validation",
            "step 2/5 (40%)",
            "step 4/5 (80%)",
            "step 4 validation",
            "step 5/5 (100%)"
        ],
        "{err}"
    );
    for l in steps.iter().filter(|l| l.contains('%')) {
        for part in ["loss ", "lr ", "grad norm ", "tok/s", "ETA "] {
            assert!(l.contains(part), "`{part}` missing from `{l}`");
        }
    }
    let quiet = run("b", "runtime.log_every=0");
    assert!(!quiet.lines().any(|l| l.starts_with("step ")), "{quiet}");
}

/// The end of a run tells the truth: the final validation counts for `best` (its trainer state holds
/// the lowest validation loss, the final one included) and is printed per head; resuming a finished run
/// says there is nothing to train (no `loss NaN → NaN`); a `training.steps` changed on resume is stated.
#[test]
fn best_includes_the_final_validation_and_resume_says_what_it_does() {
    let dir = common::tempdir();
    let plugin = common::shipped_plugin("baseline");
    let wmtp = common::wmtp_ok;
    let ck = format!("checkpoint.dir={}", dir.path().display());
    // validation at step 2 and at the end (step 5); the loss falls, so the final one is the best
    let err = wmtp(&[
        "run",
        "--pipeline",
        plugin.to_str().unwrap(),
        "--set",
        &ck,
        "--set",
        "training.steps=5",
        "--set",
        "runtime.eval_every=2",
    ]);
    assert!(err.contains("CE per head h0 "), "{err}");
    let vals: Vec<f64> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["val_loss"].as_f64())
        .collect();
    assert_eq!(vals.len(), 4, "steps 0, 2, 4 and the final 5: {vals:?}");
    let best: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("checkpoints/best/trainer_state.json")).unwrap(),
    )
    .unwrap();
    let lowest = vals[1..].iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(best["best_val"].as_f64(), Some(lowest), "{vals:?}");
    assert_eq!(
        best["step"].as_u64(),
        Some(5),
        "the final validation was the lowest: {vals:?}"
    );
    let run_dir = dir.path().to_str().unwrap();
    let again = wmtp(&["run", "--resume", run_dir]);
    assert!(
        again.contains("nothing to train") && !again.contains("NaN"),
        "{again}"
    );
    let longer = wmtp(&["run", "--resume", run_dir, "--set", "training.steps=6"]);
    assert!(
        longer.contains("training.steps is 6 now, 5 in the checkpoint"),
        "{longer}"
    );
}

/// Every file of a checkpoint and of a merged model is readable by others (0644), as `cp` or a
/// notebook on a shared cluster account expects — the safetensors writer alone creates them 0600.
#[cfg(unix)]
#[test]
fn checkpoints_and_merged_models_are_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::tempdir();
    let r = common::train("baseline", dir.path(), &["training.steps=1"]).unwrap();
    let merged = dir.path().join("merged");
    merge_checkpoint(&r.last_checkpoint, &merged, Default::default()).unwrap();
    let mut files = Vec::new();
    for d in [r.last_checkpoint.clone(), merged] {
        let mut stack = vec![d];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    }
    assert!(files
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "safetensors")));
    for p in files {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "{}: mode {mode:o}", p.display());
    }
}
