//! What turns the repository into something a board runs: the files the
//! build and packaging tools read must be where and what those tools expect.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cross` reads `Cross.toml` from the project root (its name is
/// case-sensitive): the customer's `cross build --target
/// aarch64-unknown-linux-gnu` must see the repository's settings.
#[test]
fn cross_finds_its_configuration_for_the_board_target() {
    let text = std::fs::read_to_string(root().join("Cross.toml"))
        .expect("Cross.toml at the project root (cross does not read cross.toml)");
    let doc = toml::de::DeTable::parse(&text).expect("Cross.toml is TOML");
    let target = doc
        .get_ref()
        .get("target")
        .and_then(|t| t.get_ref().as_table())
        .and_then(|t| t.get("aarch64-unknown-linux-gnu"));
    assert!(target.is_some(), "a [target.aarch64-unknown-linux-gnu] table");
    assert!(
        !root().join("cross.toml").exists(),
        "one configuration, under the name cross reads"
    );
}
