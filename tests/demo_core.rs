//! `make demo-core` (examples/sparkplug_demo.rs) shows what it says: the
//! node's births, its DDATA decoded by the host, the lost message, the
//! host's sequence error and rebirth request, the rebirth, and the NDEATH.
//! The example's source is compiled into this test, so it is always the
//! current one that is checked.

#[allow(dead_code)]
#[path = "../examples/sparkplug_demo.rs"]
mod demo;

#[test]
fn the_protocol_core_demo_shows_data_a_lost_message_a_rebirth_and_the_death() {
    let text = demo::run();
    let lines: Vec<&str> = text.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("the demo never says {needle:?}:\n{text}"))
    };
    let order = [
        at("→ spBv1.0/Plant1/NBIRTH/gw-01"),
        at("→ spBv1.0/Plant1/DBIRTH/gw-01/press"),
        at("→ spBv1.0/Plant1/DDATA/gw-01/press"),
        at("host: press seq 2: Temperature"),
        at("✗ lost: spBv1.0/Plant1/DDATA/gw-01/press"),
        at("host: expected seq 3, got 4"),
        at("← host publishes spBv1.0/Plant1/NCMD/gw-01"),
        at("host: rebirth requested"),
        at("→ spBv1.0/Plant1/NDEATH/gw-01"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "in this order: {order:?}\n{text}"
    );
    let ddata = lines
        .iter()
        .filter(|l| l.starts_with("→ spBv1.0/Plant1/DDATA/"))
        .count();
    assert_eq!(ddata, 4, "five changes, one lost:\n{text}");
}
