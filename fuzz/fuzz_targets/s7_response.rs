//! S7 responses from a PLC are outside input: every parser must return an
//! error, never panic, whatever the bytes (src/plc/s7/codec.rs invariants),
//! and S7 addresses typed by a technician must parse or be refused cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::plc::s7::address::{Area, S7Address};
use spb::plc::s7::codec::{self, Item};
use spb::sparkplug::DataType;

fuzz_target!(|data: &[u8]| {
    let items: Vec<Item> = data
        .iter()
        .take(4)
        .map(|&b| Item {
            area: Area::Db(b as u16 + 1),
            start: 0,
            len: (b % 17) as usize + 1,
        })
        .collect();
    let _ = codec::frame_len(data);
    let _ = codec::s7_payload(data);
    let _ = codec::parse_connect_confirm(data);
    let _ = codec::parse_setup(data, 1);
    let _ = codec::parse_read(data, 1, &items);
    let _ = codec::parse_write(data, 1);
    if let Ok(text) = std::str::from_utf8(data) {
        for dt in [DataType::Float, DataType::Boolean, DataType::String, DataType::FloatArray] {
            if let Ok(a) = S7Address::parse(text, dt) {
                let bytes = vec![0x12; a.len()];
                let _ = a.decode(&bytes, dt);
            }
        }
    }
});
