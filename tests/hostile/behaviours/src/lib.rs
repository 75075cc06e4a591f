//! A plugin that misbehaves in `weigh` in the way its cargo feature names (no feature: behaves;
//! `fs` and `sleep`, built for wasm32-wasip2, read a host file / sleep an hour through WASI;
//! `bad_version` has a version with an escape sequence in its manifest).

use wmtp_sdk::*;

/// The hostile pipeline.
#[derive(Default)]
pub struct Hostile;

/// `bad_default`: one config key whose default is a multi-line TOML string holding a C1 CSI, a bidi
/// override and a forged output line; otherwise no keys.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct HostileSettings {}

impl Settings for HostileSettings {
    fn docs() -> Vec<(String, String)> {
        Vec::new()
    }
    #[cfg(feature = "bad_default")]
    fn keys() -> Vec<ConfigKey> {
        vec![ConfigKey {
            name: "motto".into(),
            default_value: "\"\"\"ok\u{9b}31m\u{202e}red\nFAKE line: training finished\n\"\"\""
                .into(),
            doc: "a default that tries to draw on the terminal".into(),
        }]
    }
}

impl Pipeline for Hostile {
    type Settings = HostileSettings;

    fn manifest() -> Manifest {
        #[cfg(not(feature = "bad_version"))]
        let version = "0.1.0";
        #[cfg(feature = "bad_version")]
        let version = "0.1.0+\x1b[31mred";
        #[allow(unused_mut)]
        let mut m = ManifestBuilder::new("hostile", version)
            .describe("misbehaves on purpose")
            .trains(&[ParamGroup::Lora])
            .build();
        // ten million entries (10 MB in the guest): refused before the host prints or keeps them
        #[cfg(feature = "many_trains")]
        m.trains.resize(10_000_000, ParamGroup::Lora);
        m
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
        // an hour when training, 50 ms in evaluation (a nap well inside any cap must still work)
        #[cfg(feature = "sleep")]
        std::thread::sleep(std::time::Duration::from_millis(if _train {
            3_600_000
        } else {
            50
        }));
        // a blocking read of stdin: the sandbox's stdin is empty, so it ends at once
        #[cfg(feature = "stdin")]
        {
            let mut buf = Vec::new();
            let n = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| e.to_string())?;
            log(2, &format!("read {n} bytes from stdin"));
        }
        let mut metrics = vec![];
        #[cfg(feature = "metric_escape")]
        metrics.push(("loss\x1b[2J\x1b]0;pwned\x07".to_string(), 1.0));
        #[cfg(feature = "spoof_metrics")]
        for k in ["loss", "grad_norm", "ce", "val_loss", "lr", "step"] {
            metrics.push((k.to_string(), -1.0));
        }
        // 200 names no other call uses: every call is within the cap, a step of 2 micro-batches is not
        #[cfg(feature = "fresh_metrics")]
        {
            static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let c = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for i in 0..200 {
                metrics.push((format!("c{c}_m{i}"), 1.0));
            }
        }
        #[cfg(feature = "many_metrics")]
        for i in 0..1_000_000 {
            metrics.push((format!("m{i}"), i as f64));
        }
        #[cfg(feature = "huge_error")]
        {
            let mut e = String::with_capacity((120 << 20) + 64);
            e.push_str("\x1b[2J\x1b]0;pwned\x07\u{202E}evil");
            for _ in 0..(120 << 20) / 64 {
                e.push_str("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
            }
            return Err(e);
        }
        #[cfg(feature = "big_all_reduce")]
        log(
            2,
            &format!("{}", all_reduce_sum(&vec![1.0; 4_000_000]).len()),
        );
        #[cfg(feature = "huge_coef")]
        if let Some(i) = batch.ce_mask.iter().position(|&m| m != 0) {
            ce[i] = 1e30;
        }
        #[cfg(feature = "max_coef")]
        if let Some(i) = batch.ce_mask.iter().position(|&m| m != 0) {
            ce[i] = f32::MAX;
        }
        #[cfg(feature = "flood")]
        for i in 0..10_000_000u64 {
            log(3, &format!("flood message {i}"));
        }
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics,
        })
    }
}

export_pipeline!(Hostile);
