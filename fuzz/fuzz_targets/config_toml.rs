//! Fuzz target `config_toml`: see `wmtp_host::fuzzing::config_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::config_toml(data);
});
