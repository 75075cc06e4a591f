//! Fuzz target `pth`: see `wmtp_host::fuzzing::pth`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::pth(data);
});
