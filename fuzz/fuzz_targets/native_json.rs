//! Native JSON request bodies (`POST /v1/spans`) through the collector's parser.
#![no_main]

use std::sync::LazyLock;

use datatracing_collector::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| HARNESS.native_json(data));
