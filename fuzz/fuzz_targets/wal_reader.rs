//! The durable queue's reader on logs damaged as the input says: it must end, invent no
//! record and deliver every record none of whose bytes changed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| datatracing_collector::fuzzing::wal(data));
