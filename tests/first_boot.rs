//! The first boot of a box: the configuration file as the packages install
//! it (`config/default.toml`, printed by `--print-default-config`) is
//! valid, and the gateway started with it stays up, says what to fill in
//! (the journal, `/ready`, the unit's STATUS, `/metrics`), touches nothing
//! and starts as soon as a reload brings an identity and a broker.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, http_get, prom_value, Broker, Gateway, Peer};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_spb-gateway");

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")).expect("default.toml")
}

/// The shipped file with its listener on a free port (the rest untouched).
fn shipped_on(http: u16) -> String {
    let text = shipped();
    assert!(
        text.contains("listen = \"127.0.0.1:9102\""),
        "the shipped listener moved"
    );
    text.replace("127.0.0.1:9102", &format!("127.0.0.1:{http}"))
}

fn check_config(path: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(path)
        .output()
        .expect("run spb-gateway --check-config")
}

#[test]
fn print_default_config_prints_the_file_the_packages_install() {
    let out = Command::new(BIN).arg("--print-default-config").output().expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).expect("utf-8"), shipped());
}

#[test]
fn check_config_accepts_the_shipped_file_and_names_what_to_fill_in() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, shipped()).expect("write");
    for args in [&["--check-config"][..], &["--check-config", "--at-boot"][..]] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("valid, but not set up"), "{text}");
        assert!(text.contains("[node] group_id and node_id"), "{text}");
        assert!(text.contains("[[mqtt.servers]] host"), "{text}");
    }
}

#[test]
fn a_file_with_identity_but_no_broker_still_names_the_broker() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        shipped().replace(
            "# [node]\n# group_id = \"Plant1\"\n# node_id = \"gw-line4\"",
            "[node]\ngroup_id = \"P\"\nnode_id = \"n\"",
        ),
    )
    .expect("write");
    let out = check_config(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[[mqtt.servers]] host") && !text.contains("[node] group_id"),
        "{text}"
    );
    // Half a [node] is a mistake, not a first boot: an error with its place.
    std::fs::write(
        &path,
        shipped().replace("# [node]\n# group_id = \"Plant1\"", "[node]\ngroup_id = \"P\""),
    )
    .expect("write");
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("node.node_id: is required"), "{err}");
}

/// Reads notifications until one contains `needle`.
fn notified(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|m| m.contains(needle)) {
        assert!(Instant::now() < deadline, "never notified {needle:?}: {seen:?}");
        let n = sock.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[test]
fn a_first_boot_waits_says_what_is_missing_and_starts_when_a_reload_completes_it() {
    let http = free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut gw = Gateway::start_with_env(
        dir,
        &shipped_on(http),
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    );
    let state = gw.dir.path().join("state");
    let mut seen = Vec::new();
    notified(&sock, "READY=1", &mut seen);
    let ready = seen.iter().find(|m| m.contains("READY=1")).expect("READY");
    assert!(
        ready.contains("STATUS=waiting for setup: fill in [node] group_id/node_id and [[mqtt.servers]]"),
        "{ready}"
    );
    // Stays up and keeps systemd's watchdog content: no crash loop.
    for _ in 0..4 {
        seen.retain(|m| !m.contains("WATCHDOG=1"));
        notified(&sock, "WATCHDOG=1", &mut seen);
    }
    assert!(gw.child.try_wait().expect("wait").is_none(), "exited:\n{}", gw.log());
    let log = gw.wait_log("not set up:", Duration::from_secs(5));
    assert!(log.contains("needs [node] group_id and node_id"), "{log}");
    assert!(log.contains("needs [[mqtt.servers]] host"), "{log}");
    let body = http_get(http, "/ready");
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
    assert!(body.contains("not ready: waiting for setup"), "{body}");
    assert!(body.contains("  - [node] group_id and node_id"), "{body}");
    assert!(body.contains("  - [[mqtt.servers]] host"), "{body}");
    assert!(body.contains("store: not opened yet"), "{body}");
    assert!(http_get(http, "/health").starts_with("HTTP/1.1 200"));
    assert_eq!(prom_value(http, "spb_setup_incomplete"), Some(1.0));
    assert!(!state.exists(), "nothing is written while waiting");

    // A reload that breaks the file changes nothing and says why.
    let cfg_path = gw.dir.path().join("config.toml");
    std::fs::write(&cfg_path, format!("{}\n[node]\ngroup_id = \"a/b\"\n", shipped_on(http))).expect("write");
    gw.signal(Signal::SIGHUP);
    gw.wait_log("reload refused, still waiting for setup", Duration::from_secs(5));
    assert!(gw.log().contains("node.group_id"), "{}", gw.log());
    assert!(gw.child.try_wait().expect("wait").is_none());

    // Fill in what was asked for; the reload starts the gateway.
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let filled = shipped_on(http)
        .replace(
            "# [node]\n# group_id = \"Plant1\"\n# node_id = \"gw-line4\"",
            "[node]\ngroup_id = \"FB\"\nnode_id = \"box1\"",
        )
        .replace(
            "# [[mqtt.servers]]\n# host = \"broker1.plant.local\"",
            &format!("[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}", broker.port),
        );
    std::fs::write(&cfg_path, &filled).expect("write");
    let check = check_config(&cfg_path);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("valid (0 devices"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    gw.signal(Signal::SIGHUP);
    let nbirth = peer.wait_for("NBIRTH after the reload", Duration::from_secs(15), |m| {
        m["topic"] == "spBv1.0/FB/NBIRTH/box1"
    });
    assert_eq!(nbirth["seq"], 0, "{nbirth}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(http, "/ready").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "{}", http_get(http, "/ready"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(prom_value(http, "spb_setup_incomplete"), Some(0.0));
    assert!(state.join("bdseq").exists(), "the state directory is used once set up");
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(10)).success(), "{}", gw.log());
    peer.wait_for("NDEATH at SIGTERM", Duration::from_secs(10), |m| {
        m["topic"] == "spBv1.0/FB/NDEATH/box1"
    });
}

#[test]
fn sigterm_while_waiting_for_setup_exits_cleanly() {
    let http = free_port();
    let mut gw = Gateway::start(&shipped_on(http), &[]);
    gw.wait_log("waiting for setup", Duration::from_secs(10));
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(5)).success(), "{}", gw.log());
    assert!(gw.log().contains("stopped while waiting for setup"), "{}", gw.log());
}

#[test]
fn a_dry_run_without_an_identity_says_so_instead_of_waiting() {
    let http = free_port();
    let mut gw = Gateway::start(&shipped_on(http), &["--dry-run"]);
    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        gw.log().contains("a dry run needs [node] group_id and node_id"),
        "{}",
        gw.log()
    );
}
