//! Bytes a PostgreSQL server (or something posing as one) could send, parsed as Warden parses them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warden_wire::fuzzing::decode_backend(data);
});
