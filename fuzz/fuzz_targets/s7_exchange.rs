//! A PLC's answer arrives in TPKT/COTP fragments the PLC chooses: the
//! reassembly holds at most the negotiated PDU plus its slack, whatever the
//! frames, and what it returns parses or is refused without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::plc::s7::codec::{self, Item};
use spb::plc::s7::{Reassembly, PDU_SLACK};
use spb::plc::s7::address::Area;

fuzz_target!(|data: &[u8]| {
    let Some((&pdu_sel, mut rest)) = data.split_first() else { return };
    let pdu = [240u16, 480, 960][usize::from(pdu_sel) % 3];
    let mut r = Reassembly::new(pdu);
    // Frames: 2 bytes length, then that many bytes.
    while let [hi, lo, tail @ ..] = rest {
        let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (frame, next) = tail.split_at(n);
        match r.push(frame) {
            Ok(Some(joined)) => {
                assert!(joined.len() <= usize::from(pdu) + PDU_SLACK);
                let items = [Item { area: Area::Db(1), start: 0, len: 4 }];
                let _ = codec::parse_read(&joined, 1, &items);
                let _ = codec::parse_write(&joined, 1);
                let _ = codec::parse_setup(&joined, 1);
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
        rest = next;
    }
});
