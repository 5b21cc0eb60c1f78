//! Generates the prost code for `proto/sparkplug_b.proto` without `protoc`
//! (protox parses the schema in pure Rust). Shared by `make proto`
//! (`tools/protogen.rs`) and the staleness test (`tests/proto_fresh.rs`), so
//! both run exactly the same generation.

use std::path::Path;

/// Where the checked-in generated code lives, relative to the package root.
pub const GENERATED: &str = "src/sparkplug/generated/org.eclipse.tahu.protobuf.rs";

/// Runs protox + prost-build and returns the generated Rust source.
pub fn generate(root: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let fds = protox::compile([root.join("proto/sparkplug_b.proto")], [root.join("proto")])?;
    let out = tempfile::tempdir()?;
    prost_build::Config::new().out_dir(out.path()).compile_fds(fds)?;
    Ok(std::fs::read_to_string(
        out.path().join("org.eclipse.tahu.protobuf.rs"),
    )?)
}
