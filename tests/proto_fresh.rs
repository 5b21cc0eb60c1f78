//! The checked-in prost code must be exactly what `make proto` would generate
//! from `proto/sparkplug_b.proto` today: a schema edit without regeneration fails here.

#[path = "../tools/protogen_lib.rs"]
mod protogen_lib;

#[test]
fn checked_in_protobuf_code_matches_the_proto_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fresh = protogen_lib::generate(root).expect("protox/prost-build generation");
    let checked_in = std::fs::read_to_string(root.join(protogen_lib::GENERATED)).expect("generated file is checked in");
    assert!(
        fresh == checked_in,
        "{} is stale: run `make proto` and commit the result",
        protogen_lib::GENERATED
    );
}
