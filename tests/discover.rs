//! `spb-gateway discover` against the independent simulators: S7 discovery
//! probes the DBs and areas of python-snap7's and node-snap7's servers and
//! prints a template the config accepts. Logix discovery needs the Symbol
//! Object, which cpppo does not implement (docs/PEERS.md), so against cpppo it
//! must fail with a clear message; the rendering of a listed tag set into
//! config is proven in `spb::plc::discover` unit tests (that the pasted
//! TOML loads).

mod common;

use std::process::Command;

use common::plc::{Cpppo, S7Impl, S7Server};

fn discover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spb-gateway"))
        .arg("discover")
        .args(args)
        .output()
        .expect("run spb-gateway discover")
}

fn s7_discovery_finds_every_db_and_area(kind: S7Impl, pdu: u16) {
    let server = S7Server::start(kind);
    let addr = format!("127.0.0.1:{}", server.port);
    let out = discover(&["--driver", "s7", "--address", &addr, "--max-db", "50"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        format!("PDU {pdu} bytes, 3 data blocks; M 256 bytes, I 64 bytes, Q 64 bytes."),
        "# DB1: 512 bytes".to_string(),
        "# DB2: 2048 bytes".to_string(),
        "# DB3: 64 bytes".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
    let cfg = format!("[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[[mqtt.servers]]\nhost = \"h\"\n{text}");
    spb::config::Config::parse("pasted.toml", &cfg).expect("the template is a valid config");
}

#[test]
fn s7_discovery_lists_every_db_with_its_size_on_python_snap7() {
    s7_discovery_finds_every_db_and_area(S7Impl::Python, 480);
}

#[test]
fn s7_discovery_lists_every_db_with_its_size_on_node_snap7() {
    s7_discovery_finds_every_db_and_area(S7Impl::Node, 960);
}

#[test]
fn logix_discovery_without_symbol_listing_fails_with_a_clear_message() {
    let plc = Cpppo::start(&["Counter=DINT"]);
    let addr = format!("127.0.0.1:{}", plc.port);
    let out = discover(&["--driver", "logix", "--address", &addr, "--timeout", "10"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("did not list its tags"), "{err}");
}

#[test]
fn discover_names_what_is_missing() {
    let out = discover(&["--address", "10.0.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--driver s7 or --driver logix"));
}
