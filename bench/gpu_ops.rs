//! GPU micro-benchmark of one Transformer block's pieces at the `1b_mtp` shape (B·T = 8×2048 tokens, dim
//! 2048, 16 heads of 128, LoRA r = 8 on wq wk wv wo, bf16): forward and forward+backward time of each
//! piece, synchronised CUDA timings, median of 5. `bench/gpu/ops_reference.py` times the same pieces in
//! PyTorch (run both and compare the lines of the same name).
//!
//!     cargo bench --features cuda --bench gpu_ops        (needs a CUDA device)

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::{DType, Tensor, Var};
    use std::time::Instant;
    use wmtp_host::kernels;
    use wmtp_host::model::rope::Rope;
    use wmtp_host::model::{ForwardCtx, LoraConfig, ModelArgs, Transformer};

    let dev = wmtp_host::model::DeviceSpec::Cuda(0).open()?;
    let (b, t) = (
        std::env::var("B")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8usize),
        2048usize,
    );
    let time = |name: &str, f: &mut dyn FnMut() -> candle_core::Result<()>| -> anyhow::Result<()> {
        f()?;
        dev.synchronize()?;
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                let s = Instant::now();
                f().and_then(|_| dev.synchronize())
                    .map(|_| s.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<candle_core::Result<_>>()?;
        v.sort_by(|a, c| a.partial_cmp(c).unwrap());
        println!("{{\"op\": \"{name}\", \"ms\": {:.3}}}", v[2]);
        Ok(())
    };
    if std::env::var("ATTN_SWEEP").is_ok_and(|v| v == "1") {
        return attention_sweep(&dev, &time);
    }
    let bt = b * t;
    let x = Tensor::randn(0f32, 1.0, (b, t, 2048), &dev)?.to_dtype(DType::BF16)?;
    let w = (Tensor::randn(0f32, 0.02, (2048, 2048), &dev)?).to_dtype(DType::BF16)?;
    let w1 = (Tensor::randn(0f32, 0.02, (5632, 2048), &dev)?).to_dtype(DType::BF16)?;
    let dy = Tensor::randn(0f32, 1.0, (b, t, 2048), &dev)?.to_dtype(DType::BF16)?;
    let back = |y: &Tensor, g: &Tensor| -> candle_core::Result<()> {
        let s = (y.to_dtype(DType::F32)? * g.to_dtype(DType::F32)?)?.sum_all()?;
        s.backward().map(|_| ())
    };
    // matmuls
    time("linear 2048x2048 fwd", &mut || {
        wmtp_host::model::frozen_linear::frozen_linear(&x, &w).map(|_| ())
    })?;
    time("linear 2048x2048 fwd+bwd(dx)", &mut || {
        let xv = Var::from_tensor(&x)?;
        let y = wmtp_host::model::frozen_linear::frozen_linear(xv.as_tensor(), &w)?;
        back(&y, &dy)
    })?;
    time("linear 2048->5632 fwd", &mut || {
        wmtp_host::model::frozen_linear::frozen_linear(&x, &w1).map(|_| ())
    })?;
    // rms norm
    let gain = Tensor::ones(2048, DType::F32, &dev)?;
    for fused in [true, false] {
        let kn = kernels::Kernels::from_flag(fused);
        let tag = if fused { "fused" } else { "plain" };
        let norm = wmtp_host::model::norm::RmsNorm {
            weight: wmtp_host::model::Param::frozen(
                gain.clone(),
                wmtp_host::model::ParamGroup::Trunk,
            ),
            eps: 1e-5,
            kernels: kn,
        };
        time(&format!("rms_norm {tag} fwd+bwd"), &mut || {
            let xv = Var::from_tensor(&x)?;
            back(&norm.forward(xv.as_tensor())?, &dy)
        })?;
        let rope = Rope::new(128, 1e4, 0, t, &dev)?;
        let q = x.reshape((b, t, 16, 128))?;
        time(&format!("rope {tag} fwd+bwd"), &mut || {
            let qv = Var::from_tensor(&q)?;
            back(
                &rope.apply(kn, qv.as_tensor())?,
                &dy.reshape((b, t, 16, 128))?,
            )
        })?;
        let a = Tensor::randn(0f32, 1.0, (bt, 5632), &dev)?.to_dtype(DType::BF16)?;
        let g = Tensor::randn(0f32, 1.0, (bt, 5632), &dev)?.to_dtype(DType::BF16)?;
        time(&format!("swiglu {tag} fwd+bwd"), &mut || {
            let (av, gv) = (Var::from_tensor(&a)?, Var::from_tensor(&a)?);
            let y = if fused {
                kernels::swiglu(av.as_tensor(), gv.as_tensor())?
            } else {
                kernels::swiglu::swiglu_plain(av.as_tensor(), gv.as_tensor())?
            };
            back(&y, &g)
        })?;
        let (qa, ka, va) = (
            Tensor::randn(0f32, 1.0, (b, t, 16, 128), &dev)?.to_dtype(DType::BF16)?,
            Tensor::randn(0f32, 1.0, (b, t, 16, 128), &dev)?.to_dtype(DType::BF16)?,
            Tensor::randn(0f32, 1.0, (b, t, 16, 128), &dev)?.to_dtype(DType::BF16)?,
        );
        let attn = |q: &Tensor, k: &Tensor, v: &Tensor| {
            if fused {
                kernels::attention(q, k, v)
            } else {
                kernels::attention::attention_plain(q, k, v)
            }
        };
        time(&format!("attention {tag} fwd"), &mut || {
            attn(&qa, &ka, &va).map(|_| ())
        })?;
        time(&format!("attention {tag} fwd+bwd"), &mut || {
            let (q, k, v) = (
                Var::from_tensor(&qa)?,
                Var::from_tensor(&ka)?,
                Var::from_tensor(&va)?,
            );
            let o = attn(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
            back(&o, &dy.reshape((b, t, 16, 128))?)
        })?;
        // a whole LoRA block of the 1b_mtp model
        let args = ModelArgs::preset("1b_mtp").expect("preset");
        let mut small = args.clone();
        small.n_layers = args.n_future_tokens + 1; // one trunk block + the heads
        let mut m = Transformer::random(small, 0, DType::BF16, &dev)?;
        m.add_lora(&LoraConfig::default(), 0)?;
        let bi = m.block_inputs(t)?;
        let block = &m.layers[0];
        time(&format!("LoRA block {tag} fwd"), &mut || {
            block
                .forward(&x, &bi.rope, &bi.mask, &ForwardCtx::train(1))
                .map(|_| ())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
        time(&format!("LoRA block {tag} manual fwd+bwd"), &mut || {
            let ctx = ForwardCtx::train(1);
            let sv = block
                .forward_saved(&x, &bi.rope, &ctx)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            block
                .backward(&sv, &dy, &bi.rope, true, "layers.0.")
                .map(|_| ())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
        time(&format!("LoRA block {tag} autograd fwd+bwd"), &mut || {
            let xv = Var::from_tensor(&x)?;
            let y = block
                .forward(xv.as_tensor(), &bi.rope, &bi.mask, &ForwardCtx::train(1))
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            back(&y, &dy)
        })?;
    }
    Ok(())
}

/// Times a closure under a name (synchronised median of 5) and prints the JSON line.
#[cfg(feature = "cuda")]
type Timer<'a> =
    dyn Fn(&str, &mut dyn FnMut() -> candle_core::Result<()>) -> anyhow::Result<()> + 'a;

/// `ATTN_SWEEP=1`: the fused attention alone at 16,384 tokens × 2,048 features (B = 16384/T, heads =
/// 2048/D) for T ∈ {2048, 4096} and D ∈ {64, 128}, causal, bf16: the forward, and the backward alone
/// (from a kept forward), named as bench/gpu/ops_reference.py's `ATTN_SWEEP=1` names PyTorch's SDPA;
/// then a `check` line per case (one batch row of each, and three small cases with partial tiles and
/// grouped-query heads): max |fused − plain f32| / max |plain| of o, dq, dk and dv.
#[cfg(feature = "cuda")]
fn attention_sweep(dev: &candle_core::Device, time: &Timer<'_>) -> anyhow::Result<()> {
    use candle_core::{DType, Tensor};
    use wmtp_host::kernels::{self, attention};
    for t in [2048usize, 4096] {
        for d in [64usize, 128] {
            let (b, nh) = (16384 / t, 2048 / d);
            let r = || -> candle_core::Result<Tensor> {
                Tensor::randn(0f32, 1.0, (b, t, nh, d), dev)?.to_dtype(DType::BF16)
            };
            let (q, k, v, dout) = (r()?, r()?, r()?, r()?);
            let kn = kernels::Kernels::from_flag(true);
            time(&format!("attention T{t} D{d} fwd"), &mut || {
                attention::attention_forward(kn, &q, &k, &v).map(|_| ())
            })?;
            let (o, lse) = attention::attention_forward(kn, &q, &k, &v)?;
            time(&format!("attention T{t} D{d} bwd"), &mut || {
                attention::attention_backward(&q, &k, &v, &o, &dout, lse.as_ref()).map(|_| ())
            })?;
            let one = |x: &Tensor| x.narrow(0, 0, 1);
            let name = format!("attention T{t} D{d}");
            check_attention(&name, &one(&q)?, &one(&k)?, &one(&v)?, &one(&dout)?)?;
        }
    }
    // partial tiles (T not a multiple of 64) and grouped-query heads
    for (b, t, nh, nkv, d) in [(2, 200, 8, 2, 128), (1, 129, 4, 4, 64), (2, 64, 2, 1, 128)] {
        let r = |h: usize| -> candle_core::Result<Tensor> {
            Tensor::randn(0f32, 1.0, (b, t, h, d), dev)?.to_dtype(DType::BF16)
        };
        let name = format!("attention b{b} T{t} NH{nh} NKV{nkv} D{d}");
        check_attention(&name, &r(nh)?, &r(nkv)?, &r(nkv)?, &r(nh)?)?;
    }
    Ok(())
}

/// Prints a `check` line: max |fused − plain f32| / max |plain| of o, dq, dk and dv for these inputs.
#[cfg(feature = "cuda")]
fn check_attention(
    name: &str,
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
    dout: &candle_core::Tensor,
) -> anyhow::Result<()> {
    use candle_core::{DType, Tensor};
    use wmtp_host::kernels::{self, attention};
    let kn = kernels::Kernels::from_flag(true);
    let (o, lse) = attention::attention_forward(kn, q, k, v)?;
    let grads = attention::attention_backward(q, k, v, &o, dout, lse.as_ref())?;
    let (o_ref, g_ref) = plain_reference(q, k, v, dout)?;
    let err = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
        let b = b.to_dtype(DType::F32)?;
        let diff = (a.to_dtype(DType::F32)? - &b)?.abs()?.max_all()?;
        (diff / b.abs()?.max_all()?)?.to_scalar::<f32>()
    };
    println!(
        "{{\"check\": \"{name}\", \"max_rel_err\": {{\"o\": {:.4}, \"dq\": {:.4}, \"dk\": {:.4}, \"dv\": {:.4}}}}}",
        err(&o, &o_ref)?,
        err(&grads.0, &g_ref[0])?,
        err(&grads.1, &g_ref[1])?,
        err(&grads.2, &g_ref[2])?
    );
    Ok(())
}

/// The plain-path reference of one batch row: output and (dq, dk, dv) by candle autograd in f32 over
/// `attention_plain` (the path the fused kernels are tested against in tests/gpu.rs).
#[cfg(feature = "cuda")]
fn plain_reference(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
    dout: &candle_core::Tensor,
) -> candle_core::Result<(candle_core::Tensor, [candle_core::Tensor; 3])> {
    use candle_core::{DType, Var};
    let vars = [q, k, v].map(|x| x.to_dtype(DType::F32).and_then(|x| Var::from_tensor(&x)));
    let [qv, kv, vv] = vars;
    let (qv, kv, vv) = (qv?, kv?, vv?);
    let o = wmtp_host::kernels::attention::attention_plain(
        qv.as_tensor(),
        kv.as_tensor(),
        vv.as_tensor(),
    )?;
    let grads = (&o * dout.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
    let g = |x: &Var| {
        grads
            .get(x.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("attention reference: no gradient".into()))
    };
    Ok((o, [g(&qv)?, g(&kv)?, g(&vv)?]))
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu_ops needs --features cuda");
}
