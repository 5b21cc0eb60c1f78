//! STATE payloads from the broker: parse or refuse, never panic; what
//! parses encodes back to what parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::state::HostState;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = HostState::parse(data) {
        assert_eq!(HostState::parse(&s.to_json()).ok(), Some(s));
    }
});
