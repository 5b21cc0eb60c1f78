//! A technician's config file (gateway and uplink) and a sim signal
//! address: parse or give errors naming line:column, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = spb::config::Config::parse("fuzz.toml", text) {
        assert!(!e.to_string().is_empty());
    }
    let _ = spb::uplink::config::UplinkConfig::parse("fuzz.toml", text);
    let _ = spb::plc::sim::Signal::parse(text);
});
