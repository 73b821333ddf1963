//! Sampling-policy documents (YAML or JSON): parse, compile, write back, read again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        datatracing_collector::fuzzing::policy(text);
    }
});
