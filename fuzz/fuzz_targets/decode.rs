//! Decodes arbitrary bytes as a stream of MQTT packets in each protocol
//! version, re-encodes every packet decoded and checks it decodes back the
//! same; see `roost_core::codec::fuzz_decode` for the full list of checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    roost_core::codec::fuzz_decode(data);
});
