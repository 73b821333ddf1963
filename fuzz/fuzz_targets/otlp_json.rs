//! OTLP/JSON request bodies through the collector's bounded decode path. The first byte
//! says whether the rest is sent gzip (odd) or plain (even).
#![no_main]

use std::sync::LazyLock;

use datatracing_collector::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| {
    if let Some((&mode, body)) = data.split_first() {
        HARNESS.otlp(true, mode & 1 == 1, body);
    }
});
