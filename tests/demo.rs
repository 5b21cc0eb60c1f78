//! `make demo` shows what README says it shows: the script itself
//! (tools/demo.sh) runs for 40 s with the binaries this test suite built,
//! and its output has the births, a device's death and rebirth, the
//! filler's live OEE beside the traffic, what the uplink's tables say of the
//! devices (the oven offline, its metrics STALE), the shift report and the node's
//! death at the end.
#![cfg(feature = "uplink")]

use std::path::Path;
use std::process::Command;

#[test]
fn make_demo_shows_the_traffic_the_live_oee_and_the_shift_report() {
    let bin = Path::new(env!("CARGO_BIN_EXE_spb-gateway"))
        .parent()
        .expect("the binaries' directory");
    assert!(bin.join("spb-uplink").exists(), "spb-uplink beside spb-gateway");
    let out = Command::new("tools/demo.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DEMO_SECONDS", "40")
        .env("SPB_DEMO_BIN", bin)
        .output()
        .expect("tools/demo.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{text}\n{err}");
    for want in [
        "NBIRTH Demo Plant/gw-demo bdSeq 0",
        "DBIRTH Demo Plant/gw-demo/press",
        "DBIRTH Demo Plant/gw-demo/filler, 4 metrics",
        "DDEATH Demo Plant/gw-demo/oven",
        // The uplink's tables say the same: device state, and STALE last values.
        "== sp_device_state: filler online; oven online; press online",
        "(DDEATH), 2 metrics STALE",
        "Count (alias",
        "NDEATH Demo Plant/gw-demo",
        "== the filler's shift so far (spb-uplink oee --machine filler --shift):",
        "top downtime reasons:",
        "demo stopped",
    ] {
        assert!(text.contains(want), "{want:?} not in the demo's output:\n{text}\n{err}");
    }
    // The live view: one line every 5 s once the first hour is computed,
    // each with figures between 0 and 100 % and a growing cycle count.
    let live: Vec<(Vec<f64>, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("== OEE filler, shift "))
        .map(|l| {
            let figures = l
                .split_whitespace()
                .filter_map(|w| w.strip_suffix('%'))
                .map(|v| v.parse::<f64>().expect("a percentage"))
                .collect::<Vec<_>>();
            let cycles = l
                .rsplit_once("cycles ")
                .and_then(|(_, n)| n.trim().parse().ok())
                .expect("cycles");
            (figures, cycles)
        })
        .collect();
    assert!(live.len() >= 4, "live OEE lines:\n{text}");
    for (figures, _) in &live {
        assert_eq!(figures.len(), 4, "OEE, A, P and Q:\n{text}");
        assert!(figures.iter().all(|v| (0.0..=100.0).contains(v)), "{figures:?}");
    }
    assert!(live.windows(2).all(|w| w[0].1 <= w[1].1), "cycles only grow:\n{text}");
    assert!(live.last().expect("a line").1 >= 20, "a cycle a second:\n{text}");
    // The report: the filler's faults carry the codes of demo-uplink.toml.
    assert!(
        text.contains("Bottle jam (breakdown") || text.contains("Starved of caps (starved"),
        "a named downtime reason:\n{text}"
    );
}
