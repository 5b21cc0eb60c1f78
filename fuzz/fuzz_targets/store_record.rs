//! The store's files are read back after crashes, power cuts and bit rot:
//! a record's bytes decode or are refused (never a panic), and a manifest
//! parses only when it is two ordered ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::queue::disk::{decode_record, parse_manifest};

fuzz_target!(|data: &[u8]| {
    let _ = decode_record(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((next, first)) = parse_manifest(text) {
            assert!(first <= next);
        }
    }
});
