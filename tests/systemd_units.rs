//! The shipped systemd units: `systemd-analyze verify` finds nothing to
//! say about them (it exits 0 even for an unknown key, so its output must
//! be empty), and `systemd-analyze security` scores each at 2.0 or below
//! (docs/DEPLOY.md). They need systemd's own parser: without
//! systemd-analyze they fail with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn analyze() -> PathBuf {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("systemd-analyze is not installed: run `make deps` (the README test command does)")
}

/// The unit `name` with its programs pointing at this build (verify checks
/// that they exist).
fn unit(dir: &Path, name: &str, programs: &[(&str, &str)]) -> PathBuf {
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name)).expect("the unit");
    for (installed, built) in programs {
        text = text.replace(installed, built);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the unit");
    path
}

fn check(unit: &Path, tool: &Path) {
    let out = Command::new(tool)
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{}:\n{said}",
        unit.display()
    );
    let out = Command::new(tool)
        .args(["security", "--offline=yes"])
        .arg(unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        score <= 2.0,
        "{}: exposure {score}, more than 2.0:\n{text}",
        unit.display()
    );
}

#[test]
fn the_gateway_unit_verifies_and_scores_ok_in_systemd_analyze_security() {
    let tool = analyze();
    let dir = tempfile::tempdir().expect("tmp");
    let gw = unit(
        dir.path(),
        "spb-gateway.service",
        &[("/usr/bin/spb-gateway", env!("CARGO_BIN_EXE_spb-gateway"))],
    );
    check(&gw, &tool);
}

#[cfg(feature = "uplink")]
#[test]
fn the_uplink_unit_verifies_and_scores_ok_in_systemd_analyze_security() {
    let tool = analyze();
    let dir = tempfile::tempdir().expect("tmp");
    let up = unit(
        dir.path(),
        "spb-uplink.service",
        &[("/usr/bin/spb-uplink", env!("CARGO_BIN_EXE_spb-uplink"))],
    );
    check(&up, &tool);
}

#[test]
fn a_mistyped_key_is_caught_by_the_check() {
    let tool = analyze();
    let dir = tempfile::tempdir().expect("tmp");
    let bad = unit(
        dir.path(),
        "spb-gateway.service",
        &[
            ("/usr/bin/spb-gateway", env!("CARGO_BIN_EXE_spb-gateway")),
            ("ProtectClock=yes", "ProtectClok=yes"),
        ],
    );
    let caught = std::panic::catch_unwind(|| check(&bad, &tool));
    assert!(caught.is_err(), "an unknown key must fail the check");
}
