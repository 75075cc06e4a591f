//! Fuzz target `gguf`: see `wmtp_host::fuzzing::gguf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::gguf(data);
});
