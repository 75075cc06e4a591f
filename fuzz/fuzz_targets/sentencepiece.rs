//! Fuzz target `sentencepiece`: see `wmtp_host::fuzzing::sentencepiece`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::sentencepiece(data);
});
