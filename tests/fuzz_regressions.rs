//! The fuzz targets' corpora replayed on stable (the long coverage-guided runs are `fuzz/`, nightly;
//! docs/fuzzing.md): every seed in `fuzz/seeds/<target>/` reads without error (so each target reaches
//! the product's real reader), every file in `fuzz/regressions/<target>/` (inputs that once crashed)
//! returns without a panic, and a few hundred seeded mutations of every seed (bit flips, truncations,
//! splices, boundary integers) return without a panic.

use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use wmtp_host::fuzzing::{run_target, TARGETS};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `target` on `bytes`; a panic fails the test with the input's description.
fn no_panic(target: &str, bytes: &[u8], what: &str) -> anyhow::Result<()> {
    match catch_unwind(AssertUnwindSafe(|| run_target(target, bytes))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz target {target} panicked on {what}: {msg}");
        }
    }
}

#[test]
fn every_seed_reads_cleanly() {
    for t in TARGETS {
        let seeds = files(&fuzz_dir().join("seeds").join(t));
        assert!(
            !seeds.is_empty(),
            "no seeds for {t}: run python3 fuzz/make_seeds.py"
        );
        for s in seeds {
            let bytes = std::fs::read(&s).unwrap();
            no_panic(t, &bytes, &s.display().to_string())
                .unwrap_or_else(|e| panic!("seed {} does not read: {e:#}", s.display()));
        }
    }
}

#[test]
fn regressions_do_not_panic() {
    for t in TARGETS {
        for f in files(&fuzz_dir().join("regressions").join(t)) {
            let bytes = std::fs::read(&f).unwrap();
            let _ = no_panic(t, &bytes, &f.display().to_string());
        }
    }
}

/// One random mutation of `b`.
fn mutate(rng: &mut rand_chacha::ChaCha8Rng, b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    if v.is_empty() {
        return vec![rng.random()];
    }
    for _ in 0..rng.random_range(1..4) {
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..6) {
            0 => v[i] ^= 1 << rng.random_range(0..8),
            1 => v.truncate(i),
            2 => v[i] = [0x00, 0xff, 0x7f, 0x80][rng.random_range(0..4)],
            3 => {
                // a boundary integer over 4 or 8 bytes (lengths, counts, offsets)
                let n = if rng.random() { 4 } else { 8 };
                let fill = [0xffu8, 0x7f, 0x00][rng.random_range(0..3)];
                for x in v.iter_mut().skip(i).take(n) {
                    *x = fill;
                }
            }
            4 => {
                let j = rng.random_range(0..v.len());
                let chunk: Vec<u8> = v[j..v.len().min(j + 16)].to_vec();
                v.splice(i..i, chunk);
            }
            _ => {
                v.remove(i);
            }
        }
        if v.is_empty() {
            break;
        }
    }
    v
}

#[test]
fn seeded_mutations_of_every_seed_do_not_panic() {
    let n: usize = std::env::var("WMTP_FUZZ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    for t in TARGETS {
        for s in files(&fuzz_dir().join("seeds").join(t)) {
            let seed = std::fs::read(&s).unwrap();
            for k in 0..n {
                let m = mutate(&mut rng, &seed);
                let _ = no_panic(t, &m, &format!("mutation {k} of {}", s.display()));
            }
        }
    }
}
