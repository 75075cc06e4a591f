//! GPU suite (needs `--features cuda` and a CUDA device; ignored elsewhere):
//!
//!     cargo test --release --features cuda -p wmtp-host --test host gpu:: -- --ignored
//!
//! Every fused kernel against the plain candle path ON THE GPU (forward and backward, f32 and bf16 where the
//! kernel has both), at shapes that exercise partial tiles and grouped-query heads; and 20 training steps of
//! the embedded default on CUDA f32 against the CPU (1e-5), bf16 against f32 within bf16 tolerance. With
//! `--features nccl`, NCCL on one rank. Device sampling draws what its CPU twin draws.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor, Var};
use wmtp_host::kernels::{self, attention, cross_entropy, rms_norm, rope, swiglu};

fn cuda() -> Device {
    wmtp_host::model::DeviceSpec::Cuda(0)
        .open()
        .expect("a CUDA device")
}

/// max |a − b| / max(1, max |b|).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let d: f32 = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let s: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    d / s.max(1.0)
}

/// Forward and gradients of `f` (fused) and `g` (plain) on the same inputs, compared with `tol`.
fn compare(
    name: &str,
    inputs: &[Tensor],
    tol: f32,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    g: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (f(&ts)?, g(&ts)?);
    let fw = rel(&a, &b);
    let dy = Tensor::randn(0f32, 1.0, a.shape(), a.device())?;
    let ga = (a.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
    let gb = (b.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
    let mut worst = 0f32;
    for t in &ts {
        let (p, q) = (ga.get(t), gb.get(t));
        if let (Some(p), Some(q)) = (p, q) {
            worst = worst.max(rel(p, q));
        }
    }
    println!("{name}: forward {fw:.2e}, backward {worst:.2e} (tolerance {tol:.0e})");
    assert!(fw <= tol, "{name}: forward differs by {fw}");
    assert!(worst <= tol * 4.0, "{name}: backward differs by {worst}");
    Ok(())
}

fn randn(shape: &[usize], dt: DType, dev: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dt)
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_rms_norm_rope_swiglu_cross_entropy_match_the_plain_path() -> Result<()> {
    let dev = cuda();
    // shapes of the model, then shapes that take the vectorised kernels' other paths: rows of a width
    // that is not a multiple of 8, pair and element counts that are not (element by element)
    let shapes: [([usize; 3], [usize; 4], [usize; 2]); 2] = [
        ([3, 77, 2048], [2, 77, 4, 128], [5, 1000]),
        ([3, 7, 100], [1, 3, 1, 6], [5, 1001]),
    ];
    for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
        for (norm, rope_shape, glu) in shapes {
            let x = randn(&norm, dt, &dev)?;
            let w = (Tensor::randn(0f32, 0.1, norm[2], &dev)? + 1.0)?;
            compare(
                &format!("rms_norm {norm:?} {dt:?}"),
                &[x, w],
                tol,
                |t| rms_norm(&t[0], &t[1], 1e-5),
                |t| rms_norm::rms_norm_plain(&t[0], &t[1], 1e-5),
            )?;
            let [_, t_len, _, hd] = rope_shape;
            let table = wmtp_host::model::rope::Rope::new(hd, 1e4, 0, t_len, &dev)?;
            let (c, s) = table.tables();
            compare(
                &format!("rope {rope_shape:?} {dt:?}"),
                &[randn(&rope_shape, dt, &dev)?],
                tol,
                |t| rope(&t[0], c, s),
                |t| table.apply_plain(&t[0]),
            )?;
            let (a, b) = (randn(&glu, dt, &dev)?, randn(&glu, dt, &dev)?);
            compare(
                &format!("swiglu {glu:?} {dt:?}"),
                &[(a * 3.0)?, b],
                tol * 2.0,
                |t| swiglu(&t[0], &t[1]),
                |t| swiglu::swiglu_plain(&t[0], &t[1]),
            )?;
        }
        let z = (randn(&[37, 32000], dt, &dev)? * 4.0)?;
        let tg: Vec<u32> = (0..37u32).map(|i| (i * 7919) % 32000).collect();
        let tg = Tensor::new(tg.as_slice(), &dev)?;
        compare(
            &format!("cross_entropy {dt:?}"),
            &[z],
            tol,
            |t| cross_entropy::cross_entropy_rows(&t[0], &tg),
            |t| cross_entropy::cross_entropy_rows_plain(&t[0], &tg),
        )?;
        // sums, also of inputs that start off a 16-byte boundary
        let long = randn(&[4 * 2048 + 1], dt, &dev)?;
        let (a, b) = (long.narrow(0, 1, 4 * 2048)?, randn(&[4 * 2048], dt, &dev)?);
        let (c, d) = (randn(&[1001], dt, &dev)?, randn(&[1001], dt, &dev)?);
        for (a, b) in [(&a, &b), (&b, &b), (&c, &d)] {
            assert_eq!(
                rel(&kernels::add(kernels::Kernels::Fused, a, b)?, &(a + b)?),
                0.0,
                "add {dt:?}"
            );
        }
        // the residual gradient added in the RMSNorm backward's epilogue, on both widths' paths
        for dim in [2048, 100] {
            let (x, dy, res) = (
                randn(&[2, 9, dim], dt, &dev)?,
                randn(&[2, 9, dim], dt, &dev)?,
                randn(&[2, 9, dim], dt, &dev)?,
            );
            let w = (Tensor::randn(0f32, 0.1, dim, &dev)? + 1.0)?;
            let (dx, dw) =
                rms_norm::rms_norm_backward(kernels::Kernels::Fused, &x, &w, &dy, 1e-5, true)?;
            let (dxr, dwr) = rms_norm::rms_norm_backward_add(
                kernels::Kernels::Fused,
                &x,
                &w,
                &dy,
                1e-5,
                true,
                Some(&res),
            )?;
            let want = (dx.to_dtype(DType::F32)? + res.to_dtype(DType::F32)?)?;
            let e = rel(&dxr, &want);
            assert!(e <= tol, "rms_norm_backward_add {dt:?} width {dim}: {e}");
            // dw: the same sums, in an order the blocks' atomics decide
            let e = rel(&dwr.expect("dw"), &dw.expect("dw"));
            assert!(
                e <= 1e-5,
                "rms_norm_backward_add {dt:?} width {dim}: dw differs by {e}"
            );
        }
        // acc + a·bᵀ and acc + a·b with the sum in cuBLAS's epilogue (bf16), against the plain sum in f32
        let (acc, a) = (randn(&[300, 2048], dt, &dev)?, randn(&[300, 8], dt, &dev)?);
        let (bt, b) = (randn(&[2048, 8], dt, &dev)?, randn(&[8, 2048], dt, &dev)?);
        let f32s = |t: &Tensor| t.to_dtype(DType::F32);
        for (m, transposed) in [(&bt, true), (&b, false)] {
            let want = (f32s(&acc)?
                + f32s(&a)?.matmul(&if transposed { f32s(m)?.t()? } else { f32s(m)? })?)?;
            let got = kernels::matmul_acc(kernels::Kernels::Fused, acc.copy()?, &a, m, transposed)?;
            let e = rel(&got, &want);
            println!("matmul_acc {dt:?} transposed {transposed}: {e:.2e}");
            assert!(e <= tol, "matmul_acc {dt:?} transposed {transposed}: {e}");
        }
    }
    for dt in [DType::F32, DType::BF16] {
        let src = randn(&[300, 2048], dt, &dev)?;
        let idx: Vec<u32> = (0..300u32).map(|i| (i * 11) % 301).collect(); // unique: gcd(11, 301) = 1
        let idx = Tensor::new(idx.as_slice(), &dev)?;
        let a = kernels::scatter_rows(kernels::Kernels::Fused, &src, &idx, 301)?;
        let b = Tensor::zeros((301, 2048), dt, &dev)?.index_add(&idx, &src, 0)?;
        assert_eq!(rel(&a, &b), 0.0, "scatter_rows {dt:?}");
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_dropout_masks_equal_the_cpu_ones() -> Result<()> {
    let dev = cuda();
    for dt in [DType::F32, DType::BF16] {
        for (shape, key, p) in [((7usize, 333usize), 1u64, 0.05f32), ((64, 576), 99, 0.5)] {
            let g =
                kernels::dropout::dropout_mask(kernels::Kernels::Fused, shape, dt, &dev, key, p)?;
            let c = kernels::dropout::dropout_mask(
                kernels::Kernels::Fused,
                shape,
                dt,
                &Device::Cpu,
                key,
                p,
            )?;
            let g = g.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let c = c.to_dtype(DType::F32)?;
            assert_eq!(
                g.flatten_all()?.to_vec1::<f32>()?,
                c.flatten_all()?.to_vec1::<f32>()?,
                "{dt:?} {shape:?} p={p}"
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_flash_attention_matches_the_plain_path() -> Result<()> {
    let dev = cuda();
    // partial tiles (T not a multiple of 64), grouped-query heads, both head sizes
    for (b, t, nh, nkv, d) in [(2, 200, 8, 2, 128), (1, 129, 4, 4, 64), (2, 64, 2, 1, 128)] {
        let q = randn(&[b, t, nh, d], DType::BF16, &dev)?;
        let k = randn(&[b, t, nkv, d], DType::BF16, &dev)?;
        let v = randn(&[b, t, nkv, d], DType::BF16, &dev)?;
        compare(
            &format!("attention b{b} t{t} nh{nh} nkv{nkv} d{d}"),
            &[q, k, v],
            2e-2,
            |x| kernels::attention(&x[0], &x[1], &x[2]),
            |x| attention::attention_plain(&x[0], &x[1], &x[2]),
        )?;
    }
    Ok(())
}

/// Device sampling against its CPU twin: logits shaped like a language model's (49,152 tokens, spread
/// 3), f32 and bf16, four cuts; each row's uniform is put at the middle of the interval of a token the
/// twin draws for that row, so the kernel's f32 sums cannot move it across a boundary: every id must
/// be the twin's, and the twin's is the token whose interval holds it.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_sampling_draws_what_the_cpu_twin_draws() -> Result<()> {
    use kernels::sample::{kept_tokens, sample_row, sample_rows, Cut};
    let dev = cuda();
    let (b, v) = (48usize, 49_152usize);
    let cuts = [
        (0.8, 0.95, 0),
        (1.0, 1.0, 0),
        (0.7, 1.0, 50),
        (1.2, 0.9, 20),
    ];
    for dt in [DType::F32, DType::BF16] {
        let z = (Tensor::randn(0f32, 3.0, (b, v), &Device::Cpu)?).to_dtype(dt)?;
        let rows: Vec<Vec<f32>> = z.to_dtype(DType::F32)?.to_vec2()?;
        for (t, p, k) in cuts {
            let cut = Cut {
                temperature: t,
                top_p: p,
                top_k: k,
            };
            let mut us = Vec::with_capacity(b);
            let mut want = Vec::with_capacity(b);
            for (r, row) in rows.iter().enumerate() {
                let kept = kept_tokens(row, cut);
                let mass: f64 = kept.iter().map(|x| x.1).sum();
                // a token drawn by weight, or the heaviest kept one where the drawn token's interval
                // is under 1e-3 of the mass: the kernel's f32 sums are good to ~1e-6 of it, so a narrower
                // interval can be missed by rounding (seen on an H100: one of 48 rows at T 1, bf16, took
                // the neighbouring token of a token this small)
                let u0 = (r as f32 * 0.618_034).fract();
                let pick = sample_row(row, u0, cut);
                let mut j = kept
                    .iter()
                    .position(|x| x.0 == pick)
                    .expect("drawn from the kept set");
                if kept[j].1 < 1e-3 * mass {
                    j = (0..kept.len())
                        .max_by(|&a, &b| kept[a].1.total_cmp(&kept[b].1))
                        .expect("a kept token");
                }
                let before: f64 = kept[..j].iter().map(|x| x.1).sum();
                let u = ((before + kept[j].1 / 2.0) / mass) as f32;
                assert_eq!(
                    sample_row(row, u, cut),
                    kept[j].0,
                    "the twin's own quantile"
                );
                us.push(u);
                want.push(kept[j].0);
            }
            let u = Tensor::new(us.as_slice(), &dev)?;
            let got: Vec<u32> = sample_rows(&z.to_device(&dev)?, &u, cut)?.to_vec1()?;
            println!("sampling {dt:?} T {t} top_p {p} top_k {k}: {b} rows");
            assert_eq!(got, want, "{dt:?} T {t} top_p {p} top_k {k}");
        }
    }
    Ok(())
}

fn default_run(device: &str, dtype: &str, dir: &std::path::Path) -> anyhow::Result<Vec<f64>> {
    let plugin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/baseline.wasm");
    let r = wmtp_host::run::run(&wmtp_host::run::RunOptions {
        pipeline: Some(plugin),
        set: vec![
            format!("model.device={device}"),
            format!("model.dtype={dtype}"),
            "training.steps=20".into(),
            "runtime.eval_every=0".into(),
            format!("checkpoint.dir={}", dir.display()),
        ],
        quiet: true,
        ..Default::default()
    })?;
    Ok(r.losses)
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_embedded_default_matches_the_cpu_for_20_steps() -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("wmtp-gpu-test-{}", std::process::id()));
    let cpu = default_run("cpu", "f32", &tmp.join("cpu"))?;
    let gpu = default_run("cuda", "f32", &tmp.join("cuda"))?;
    let bf = default_run("cuda", "bf16", &tmp.join("bf16"))?;
    for (i, ((c, g), b)) in cpu.iter().zip(&gpu).zip(&bf).enumerate() {
        println!(
            "step {:2}: cpu f32 {c:.6}  cuda f32 {g:.6}  cuda bf16 {b:.6}",
            i + 1
        );
    }
    for (c, g) in cpu.iter().zip(&gpu) {
        assert!(
            (c - g).abs() <= 1e-5 * c.abs().max(1.0),
            "CUDA f32 {g} vs CPU f32 {c}"
        );
    }
    for (c, b) in cpu.iter().zip(&bf) {
        assert!(
            (c - b).abs() <= 3e-2 * c.abs().max(1.0),
            "CUDA bf16 {b} vs f32 {c}"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// NCCL on one GPU (world size 1: every collective is the identity, through NCCL): f32, bf16, f64,
/// tensors on the GPU and on the CPU.
#[cfg(feature = "nccl")]
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_nccl_collectives_on_one_rank_are_the_identity() -> anyhow::Result<()> {
    use wmtp_host::parallel::{nccl::NcclComm, tcp::TcpComm, Communicator};
    let dev = cuda();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let rendezvous = TcpComm::connect(
        0,
        1,
        &format!("127.0.0.1:{port}"),
        std::time::Duration::from_secs(30),
    )?;
    let c = NcclComm::connect(&rendezvous, &dev)?;
    for dt in [DType::F32, DType::BF16, DType::F64] {
        for d in [dev.clone(), Device::Cpu] {
            let x = Tensor::arange(0f32, 12.0, &d)?.to_dtype(dt)?;
            for (what, y) in [
                ("all_reduce", c.all_reduce_sum(&x)?),
                ("all_gather", c.all_gather(&x)?),
                ("reduce_scatter", c.reduce_scatter_sum(&x)?),
                ("broadcast", c.broadcast(&x, 0)?),
            ] {
                assert_eq!(y.device().location(), d.location(), "{what} {dt:?}");
                assert_eq!(rel(&y, &x), 0.0, "{what} {dt:?} on {d:?}");
            }
        }
    }
    c.barrier()?;
    Ok(())
}

/// Steps in each half of the memory-over-steps runs below.
const MEM_HALF: u64 = 10;

/// The GPU pool's high-water mark (`mem.peak_used_gib`) and the host RSS after each step of a 2N-step
/// CUDA run of `pipeline` on the embedded default.
fn cuda_memory_per_step(pipeline: &str, lora: bool) -> Vec<(u64, f64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let plugin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../plugins/{pipeline}.wasm"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .arg("run")
        .arg("--pipeline")
        .arg(&plugin)
        .args(["--set", "model.device=\"cuda\""])
        .args(["--set", &format!("training.steps={}", 2 * MEM_HALF)])
        .args(["--set", &format!("training.use_lora={lora}")])
        .args([
            "--set",
            "runtime.eval_every=0",
            "--set",
            "reference.baseline_steps=2",
        ])
        .args([
            "--set",
            &format!("checkpoint.dir={:?}", run_dir.display().to_string()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((
                v["step"].as_u64()?,
                v["mem.peak_used_gib"].as_f64()?,
                v["mem.host_rss_mib"].as_f64()?,
            ))
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_memory_does_not_grow_over_steps() {
    for pipeline in ["baseline", "critic", "verifiable", "rho1"] {
        for lora in [false, true] {
            let rows = cuda_memory_per_step(pipeline, lora);
            let at = |s: u64| *rows.iter().find(|r| r.0 == s).unwrap();
            let floor = |end: u64| {
                rows.iter()
                    .filter(|r| r.0 + 5 > end && r.0 <= end)
                    .map(|r| r.2)
                    .fold(f64::INFINITY, f64::min)
            };
            let (mid, end) = (at(MEM_HALF), at(2 * MEM_HALF));
            println!(
                "{pipeline} lora={lora}: GPU peak {:.4} → {:.4} GiB, host {:.1} → {:.1} MiB",
                mid.1,
                end.1,
                floor(MEM_HALF),
                floor(2 * MEM_HALF)
            );
            assert!(
                end.1 - mid.1 <= (0.05 * mid.1).max(0.05),
                "{pipeline}: {rows:?}"
            );
            assert!(
                floor(2 * MEM_HALF) - floor(MEM_HALF) <= (0.05 * floor(MEM_HALF)).max(6.0),
                "{pipeline}: {rows:?}"
            );
        }
    }
}
