//! Helpers shared by the integration tests: the Python venv with the
//! independent peers, and hex. Tests that need a peer fail (never skip) when
//! it is missing, with the command that installs it.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The venv interpreter that has the peers from `tests/interop/requirements.txt`.
/// `SPB_PYTHON` overrides; `make venv` (run by `.ci/run`) creates the default.
pub fn python() -> PathBuf {
    let p = std::env::var_os("SPB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"));
    assert!(
        p.exists(),
        "the Python peers are not installed at {}: run `make venv` (the README test command does)",
        p.display()
    );
    p
}

/// Sends one JSON request to `tests/interop/pysparkplug_peer.py` and returns its answer.
pub fn pysparkplug(request: &serde_json::Value) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pysparkplug_peer.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the pysparkplug peer");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("peer runs");
    assert!(
        out.status.success(),
        "pysparkplug peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("peer answers JSON")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
