//! Fuzz target `jsonl`: see `wmtp_host::fuzzing::jsonl`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wmtp_host::fuzzing::jsonl(data);
});
