//! Fuzz target `safetensors`: see `wmtp_host::fuzzing::safetensors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::safetensors(data);
});
