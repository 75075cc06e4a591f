//! With the `cuda` feature, compiles `kernels/fused.cu` to PTX with nvcc (`$NVCC`, else `$CUDA_HOME/bin/nvcc`,
//! else `nvcc` on the PATH) for compute capability `$CUDA_COMPUTE_CAP` (default 90 — the PTX runs on that
//! capability and newer; nvcc 13.0 emits PTX ISA 9.0, which the CUDA 13.0 driver loads). When that
//! capability is 90, `kernels/attention_sm90.cu` (Hopper's warpgroup MMA) is compiled too, for compute_90a,
//! into a second PTX module; otherwise that module is left empty and the attention runs on fused.cu's
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
    ptx(
        &nvcc,
        &format!("compute_{cap}"),
        "kernels/fused.cu",
        &out_dir.join("fused.ptx"),
    );
    let sm90 = out_dir.join("attention_sm90.ptx");
    if cap == "90" {
        ptx(&nvcc, "compute_90a", "kernels/attention_sm90.cu", &sm90);
    } else {
        std::fs::write(&sm90, "").expect("writing an empty attention_sm90.ptx into OUT_DIR");
    }
}

/// Compiles `src` to PTX for virtual architecture `arch` at `out`.
fn ptx(nvcc: &str, arch: &str, src: &str, out: &Path) {
    let status = Command::new(nvcc)
        .args(["--ptx", &format!("-arch={arch}"), "-O3", "-std=c++17", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC or CUDA_HOME): {e}"));
    assert!(status.success(), "{nvcc} failed on {src}");
}
