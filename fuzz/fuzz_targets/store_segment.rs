//! A segment file of the store is read whole at open, after power cuts and
//! bit rot: whatever its bytes, the scan ends (no panic), every valid frame
//! it reports lies inside the file, damaged ranges are ordered and disjoint,
//! ids only grow, and a torn tail starts after the last valid frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::queue::disk::scan_segment;

fuzz_target!(|data: &[u8]| {
    let first = 1_000;
    let scan = scan_segment(data, first);
    assert!(scan.next_id >= first);
    assert!(scan.records <= data.len() as u64 / 16);
    let mut end = 0;
    for d in &scan.damaged {
        assert!(d.from >= end && d.from < d.to && d.to <= data.len(), "{d:?}");
        assert!(d.lost >= 1);
        end = d.to;
    }
    if let Some(tail) = scan.tail {
        assert!(tail >= end && tail < data.len());
    }
});
