//! The process's resident host memory, logged every step as `mem.host_rss_mib` so that a run (and the
//! memory-over-steps tests, tests/memory_over_steps.rs) can see host memory grow across steps.

/// Resident set size of this process in MiB, read from `/proc/self/statm` (resident pages × page size);
/// None where that file does not exist (not Linux) or cannot be parsed.
pub fn host_rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn rss_grows_by_what_is_touched() {
        let before = host_rss_mib().expect("statm on Linux");
        let mut block = vec![0u8; 64 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        let after = host_rss_mib().unwrap();
        std::hint::black_box(&block);
        assert!(after - before > 48.0, "{before} → {after} MiB");
    }
}
