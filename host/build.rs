//! With the `cuda` feature, compiles `kernels/fused.cu` with nvcc (`$NVCC`, else `$CUDA_HOME/bin/nvcc`, else
//! `nvcc` on the PATH) for compute capability `$CUDA_COMPUTE_CAP` (default 90) into a fat binary holding
//! the machine code (SASS) for that capability and the PTX: a GPU of that capability loads the SASS as is,
//! a newer one JIT-compiles the PTX (nvcc 13.0 emits PTX ISA 9.0, which the CUDA 13.0 driver loads). When
//! that capability is 90, `kernels/attention_sm90.cu` (Hopper's warpgroup MMA) is compiled too, for
//! sm_90a, into a second fat binary; otherwise that one is left empty and the attention runs on fused.cu's
//! kernels. Without the feature nothing is compiled and the CPU build needs no CUDA toolkit.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC")
        .ok()
        .unwrap_or_else(|| match std::env::var("CUDA_HOME") {
            Ok(home) => format!("{home}/bin/nvcc"),
            Err(_) => "nvcc".into(),
        });
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    fatbin(
        &nvcc,
        &cap,
        "kernels/fused.cu",
        &out_dir.join("fused.fatbin"),
    );
    let sm90 = out_dir.join("attention_sm90.fatbin");
    if cap == "90" {
        fatbin(&nvcc, "90a", "kernels/attention_sm90.cu", &sm90);
    } else {
        std::fs::write(&sm90, "").expect("writing an empty attention_sm90.fatbin into OUT_DIR");
    }
}

/// Compiles `src` into a fat binary at `out` with SASS for sm_`cap` and PTX for compute_`cap`.
fn fatbin(nvcc: &str, cap: &str, src: &str, out: &Path) {
    let status = Command::new(nvcc)
        .args([
            "--fatbin",
            "-gencode",
            &format!("arch=compute_{cap},code=[sm_{cap},compute_{cap}]"),
            "-O3",
            "-std=c++17",
            "-o",
        ])
        .arg(out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC or CUDA_HOME): {e}"));
    assert!(status.success(), "{nvcc} failed on {src}");
}
