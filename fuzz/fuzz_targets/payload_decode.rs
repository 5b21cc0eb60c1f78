//! Any bytes from the network: decoding never panics, and whatever decodes
//! re-encodes and decodes to the same payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::Payload;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Payload::decode(data) {
        let again = p.encode().expect("a decoded payload re-encodes");
        let back = Payload::decode(&again).expect("and decodes");
        // NaN never equals itself; compare the encodings instead.
        assert_eq!(back.encode().expect("re-encodes"), again);
    }
});
