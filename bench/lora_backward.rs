//! CPU micro-benchmark: backward cost of a LoRA model (frozen base weights through `frozen_linear`, no
//! weight gradients) vs full fine-tuning (every weight a `Var`), on the same model and batch, plus one
//! linear layer's backward through `frozen_linear` vs candle's plain matmul.
//!
//! Run: `cargo bench --bench lora_backward` (prints medians and ratios).

use candle_core::{DType, Device, Tensor, Var};
use std::time::Instant;
use wmtp_host::model::frozen_linear::{frozen_linear, trainable_linear};
use wmtp_host::model::{ForwardCtx, LoraConfig, ModelArgs, ParamGroup, Transformer};

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}

fn step(m: &Transformer, tokens: &Tensor) -> usize {
    let logits = m.forward(tokens, &ForwardCtx::train(0)).unwrap();
    let loss = logits
        .iter()
        .map(|l| l.sqr().unwrap().mean_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut n = 0;
    wmtp_host::model::VisitParams::visit(m, "", &mut |_, p| {
        n += grads.get(p.tensor()).is_some() as usize
    });
    n
}

fn main() {
    let dev = Device::Cpu;
    let reps = 7;
    // one linear layer, x [512, 1024] · Wᵀ, W [1024, 1024]
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (512, 1024), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (1024, 1024), &dev).unwrap()).unwrap();
    let plain = median_ms(reps * 3, || {
        trainable_linear(x.as_tensor(), w.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
    let frozen = median_ms(reps * 3, || {
        frozen_linear(x.as_tensor(), w.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
    println!("linear 512×1024 · 1024×1024, forward+backward:");
    println!("  candle matmul (dx and dW)     {plain:8.2} ms");
    println!(
        "  frozen_linear (dx only)       {frozen:8.2} ms   ratio {:.2}×",
        plain / frozen
    );

    let args = ModelArgs {
        dim: 768,
        n_layers: 4,
        n_heads: 12,
        n_kv_heads: Some(4),
        vocab_size: 4096,
        multiple_of: 64,
        max_seq_len: 256,
        n_future_tokens: 2,
        ..ModelArgs::preset("tiny").unwrap()
    };
    let base = Transformer::random(args, 1, DType::F32, &dev).unwrap();
    let tokens = Tensor::arange(0u32, 2 * 128, &dev)
        .unwrap()
        .reshape((2, 128))
        .unwrap();
    let mut full = base.clone();
    full.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])
        .unwrap();
    let mut lora = base.clone();
    lora.add_lora(&LoraConfig::default(), 1).unwrap();
    let (mut nf, mut nl) = (0, 0);
    let t_full = median_ms(reps, || nf = step(&full, &tokens));
    let t_lora = median_ms(reps, || nl = step(&lora, &tokens));
    println!("MTP model dim 768, 4 blocks (2 trunk + 2 heads), vocab 4096, batch 2×128, forward+backward:");
    println!(
        "  full fine-tuning   {t_full:8.1} ms   {nf} parameter gradients ({} trainable scalars)",
        full.param_counts().1
    );
    println!("  LoRA r=8 wq..wo    {t_lora:8.1} ms   {nl} parameter gradients ({} trainable scalars)   ratio {:.2}×", lora.param_counts().1, t_full / t_lora);
}
