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

const RECIPE_DIR: &str = "yocto/meta-spb-gateway/recipes-core/spb-gateway";

fn git(args: &[&str]) -> std::process::Output {
    std::process::Command::new("git")
        .arg("-C")
        .arg(root())
        .args(args)
        .output()
        .expect("git")
}

fn cargo_version(toml_text: &str) -> String {
    let doc = toml::de::DeTable::parse(toml_text).expect("Cargo.toml");
    let package = doc
        .get_ref()
        .get("package")
        .and_then(|p| p.get_ref().as_table())
        .expect("[package]");
    package
        .get("version")
        .and_then(|v| v.get_ref().as_str())
        .expect("version")
        .to_string()
}

/// The recipe (`spb-gateway_<version>.bb`) and the value of `SRCREV`.
fn recipe() -> (std::path::PathBuf, String, String) {
    let bb: Vec<_> = std::fs::read_dir(root().join(RECIPE_DIR))
        .expect("the recipe's directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bb"))
        .collect();
    assert_eq!(bb.len(), 1, "one recipe: {bb:?}");
    let name = bb[0].file_stem().expect("name").to_string_lossy().into_owned();
    let version = name
        .strip_prefix("spb-gateway_")
        .expect("spb-gateway_<version>.bb")
        .to_string();
    let text = std::fs::read_to_string(&bb[0]).expect("recipe");
    let srcrev = text
        .lines()
        .find_map(|l| l.strip_prefix("SRCREV = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a SRCREV = \"…\" line")
        .to_string();
    (bb[0].clone(), version, srcrev)
}

/// The crate list bitbake fetches must be the lock file's, or the build
/// fails offline (`cargo --frozen`) or builds other versions than we test.
#[test]
fn the_yocto_crate_list_is_generated_from_the_current_cargo_lock() {
    let out = std::process::Command::new("python3")
        .arg(root().join("tools/yocto-crates.py"))
        .arg("--check")
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inc = std::fs::read_to_string(root().join(RECIPE_DIR).join("spb-gateway-crates.inc")).expect("committed");
    assert!(inc.contains("crate://crates.io/tokio/"), "the list names the crates");
}

/// A reproducible build: the recipe names one commit, whose version, crate
/// list, license and installed files are the ones the recipe expects.
#[test]
fn the_yocto_recipe_pins_a_commit_of_this_repository_that_matches_it() {
    let (bb, version, srcrev) = recipe();
    assert_eq!(
        version,
        cargo_version(&std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml")),
        "{}: the file name carries Cargo.toml's version (make yocto-pin)",
        bb.display()
    );
    assert!(
        srcrev.len() == 40 && srcrev.bytes().all(|b| b.is_ascii_hexdigit()) && srcrev != "0".repeat(40),
        "SRCREV {srcrev:?} is not a pinned commit: run `make yocto-pin` on a committed tree"
    );
    let shallow = git(&["rev-parse", "--is-shallow-repository"]);
    assert!(
        shallow.status.success() && String::from_utf8_lossy(&shallow.stdout).trim() == "false",
        "this check needs the repository's full git history (a full clone, not a tarball or a shallow clone)"
    );
    assert!(
        git(&["merge-base", "--is-ancestor", &srcrev, "HEAD"]).status.success(),
        "SRCREV {srcrev} is not in this branch's history (the recipe fetches it with branch=main)"
    );
    let show = |path: &str| {
        let o = git(&["show", &format!("{srcrev}:{path}")]);
        assert!(
            o.status.success(),
            "{path} is missing at SRCREV {srcrev}, and the recipe installs it"
        );
        o.stdout
    };
    assert_eq!(cargo_version(&String::from_utf8_lossy(&show("Cargo.toml"))), version);
    for f in [
        "config/default.toml",
        "config/example.toml",
        "systemd/spb-gateway.service",
        "README.md",
    ] {
        show(f);
    }
    // The license file's checksum, as bitbake's LIC_FILES_CHKSUM computes it.
    let md5 = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(&show("LICENSE"))?;
            c.wait_with_output()
        })
        .expect("md5sum");
    let sum = String::from_utf8_lossy(&md5.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let text = std::fs::read_to_string(&bb).expect("recipe");
    assert!(
        text.contains(&format!("file://LICENSE;md5={sum}\"")),
        "LIC_FILES_CHKSUM is not md5 {sum}"
    );
    // The crate list is the pinned commit's lock file, too.
    let mut check = std::process::Command::new("python3")
        .arg(root().join("tools/yocto-crates.py"))
        .args(["--check", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(&show("Cargo.lock"))
            .expect("lock");
    }
    let out = check.wait_with_output().expect("check");
    assert!(
        out.status.success(),
        "Cargo.lock changed since SRCREV {srcrev}: commit, then `make yocto-pin` ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}
