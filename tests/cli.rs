//! The command line of the real binaries: every subcommand answers `--help`
//! with its own usage and exit 0, and a bad argument is named, with the
//! usage of its subcommand, and exit 2 (docs/CRATES.md, "Arguments").

use std::process::Command;

fn gateway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spb-gateway"))
        .args(args)
        .output()
        .expect("run spb-gateway")
}

#[test]
fn every_subcommand_of_the_gateway_answers_help_with_its_own_options() {
    for (args, says) in [
        (&["--help"][..], "--check-config"),
        (&["-h"][..], "--disable-plc"),
        (&["watch", "--help"][..], "--rebirth"),
        (&["decode", "--help"][..], "--hex"),
        (&["discover", "--help"][..], "--max-db"),
    ] {
        let out = gateway(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(says), "{args:?}:\n{text}");
    }
    let out = gateway(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("spb-gateway ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_argument_is_named_with_its_subcommands_usage_and_exit_2() {
    for (args, says, usage) in [
        (&["--brokr-host", "x"][..], "--brokr-host", "--broker-host HOST"),
        (&["watch", "--broker-port", "99999"][..], "99999", "spb-gateway watch"),
        (
            &["discover", "--driver", "s7", "--address", "10.0.0.1:"][..],
            "without a port",
            "spb-gateway discover",
        ),
    ] {
        let out = gateway(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.contains(usage), "{args:?}:\n{err}");
    }
}

#[cfg(feature = "uplink")]
#[test]
fn the_uplink_answers_help_and_names_a_bad_argument() {
    let uplink = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
            .args(args)
            .output()
            .expect("run spb-uplink")
    };
    let out = uplink(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--check-config"));
    let out = uplink(&["--dry-rn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-rn"));
}
