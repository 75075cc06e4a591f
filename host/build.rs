//! With the `cuda` feature, compiles `kernels/fused.cu` to PTX with nvcc (`$NVCC`, else `$CUDA_HOME/bin/nvcc`,
//! else `nvcc` on the PATH) for compute capability `$CUDA_COMPUTE_CAP` (default 90 — the PTX runs on that
//! capability and newer; nvcc 13.0 emits PTX ISA 9.0, which the CUDA 13.0 driver loads). Without the
//! feature nothing is compiled and the CPU build needs no CUDA toolkit.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    let nvcc = std::env::var("NVCC")
        .ok()
        .unwrap_or_else(|| match std::env::var("CUDA_HOME") {
            Ok(home) => format!("{home}/bin/nvcc"),
            Err(_) => "nvcc".into(),
        });
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            &format!("-arch=compute_{cap}"),
            "-O3",
            "-std=c++17",
            "-o",
        ])
        .arg(&out)
        .arg("kernels/fused.cu")
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC or CUDA_HOME): {e}"));
    assert!(status.success(), "{nvcc} failed on kernels/fused.cu");
}
