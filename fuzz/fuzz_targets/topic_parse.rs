//! Any topic string from the network: parsing never panics, and a parsed
//! topic rebuilds to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::topic::Topic;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = Topic::parse(s) {
            assert_eq!(t.to_string(), s);
        }
    }
});
