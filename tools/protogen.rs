//! `make proto`: regenerate `src/sparkplug/generated/` from `proto/sparkplug_b.proto`.

#[path = "protogen_lib.rs"]
mod protogen_lib;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = protogen_lib::generate(root)?;
    let dest = root.join(protogen_lib::GENERATED);
    std::fs::write(&dest, code)?;
    println!("wrote {}", dest.display());
    Ok(())
}
