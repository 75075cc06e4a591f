//! Fuzz target `adapter_config`: see `wmtp_host::fuzzing::adapter_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::adapter_config(data);
});
