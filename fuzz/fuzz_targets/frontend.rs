//! Bytes a client could send: the startup phase, then tagged messages, each parsed as Warden parses them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warden_wire::fuzzing::decode_frontend(data);
});
