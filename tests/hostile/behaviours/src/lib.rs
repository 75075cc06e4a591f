//! A plugin that misbehaves in `weigh` in the way its cargo feature names (no feature: behaves;
//! `fs`, built for wasm32-wasip2, tries to read a host file through WASI).

use wmtp_sdk::*;

/// The hostile pipeline.
#[derive(Default)]
pub struct Hostile;

impl Pipeline for Hostile {
    type Settings = NoSettings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("hostile", "0.1.0")
            .describe("misbehaves on purpose")
            .trains(&[ParamGroup::Lora])
            .build()
    }

    #[allow(unreachable_code, unused_mut, unused_variables)]
    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let v = BatchView::new(batch)?;
        let (mut ce, loss) = weighted_ce(&v, |_, _, _| 1.0);
        #[cfg(feature = "spin")]
        {
            let mut x = 1u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(3));
            }
        }
        #[cfg(feature = "oom")]
        {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            for i in 0..64 {
                keep.push(vec![i as u8 + 1; 64 << 20]); // 64 × 64 MiB = 4 GiB
            }
            log(2, &format!("{}", keep.len()));
        }
        #[cfg(feature = "panic")]
        panic!("hostile plugin panics on purpose (code 42)");
        #[cfg(feature = "bad_len")]
        ce.pop();
        #[cfg(feature = "nan")]
        if let Some(i) = batch.ce_mask.iter().position(|&m| m != 0) {
            ce[i] = f32::NAN;
        }
        #[cfg(feature = "fs")]
        if let Err(e) = std::fs::read_to_string("/etc/passwd") {
            return Err(format!("cannot read /etc/passwd: {e}"));
        }
        #[cfg(feature = "flood")]
        for i in 0..10_000_000u64 {
            log(3, &format!("flood message {i}"));
        }
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics: vec![],
        })
    }
}

export_pipeline!(Hostile);
