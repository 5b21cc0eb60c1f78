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

/// `spb-uplink --check-config` (the unit's ExecStartPre): the shipped
/// example is valid; a mistyped key and a bad connection string are named
/// with their place; TLS files that would fail the first connect are found
/// before the start, and certificates from make-certs.sh pass.
#[cfg(feature = "uplink")]
#[test]
fn uplink_check_config_finds_what_would_fail_at_start() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = |path: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
            .arg("--check-config")
            .arg("--config")
            .arg(path)
            .output()
            .expect("run spb-uplink");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let example = root.join("config/uplink.example.toml");
    let (code, text) = check(&example);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("valid (1 MQTT server, PostgreSQL database)"), "{text}");

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("uplink.toml");
    let shipped = std::fs::read_to_string(&example).expect("example");
    std::fs::write(&file, shipped.replace("host_id = ", "hostid = ")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("uplink.toml:6:1: host.hostid: unknown key"), "{text}");
    std::fs::write(
        &file,
        shipped.replace(
            "url = \"host=127.0.0.1 user=spb dbname=plant\"",
            "url = \"host=127.0.0.1 usr=spb\"",
        ),
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("database.url: not a PostgreSQL connection string"),
        "{text}"
    );

    // The uplink's certificate from make-certs.sh, then one missing file.
    let pki = dir.path().join("pki");
    let o = Command::new(root.join("certs-example/make-certs.sh"))
        .arg(&pki)
        .output()
        .expect("make-certs.sh");
    assert!(o.status.success());
    let u = pki.join("uplink");
    let tls = format!(
        "# [mqtt.servers.tls]\n[mqtt.servers.tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/client.pem\"\nkey = \"{0}/client.key\"\n",
        u.display()
    );
    let with_tls = shipped.replacen("# [mqtt.servers.tls]", &tls, 1);
    assert_ne!(with_tls, shipped, "the example has a [mqtt.servers.tls] comment");
    std::fs::write(&file, &with_tls).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(0), "{text}");
    std::fs::remove_file(u.join("client.key")).expect("rm");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("mqtt.servers[0].tls.key: cannot read"), "{text}");
    assert!(text.contains("1 error that would stop or fail the uplink"), "{text}");

    // The command API's HTTPS files are read as at start.
    let https = format!(
        "https_listen = \"127.0.0.1:9443\"\nhttps_cert = \"{0}/client.pem\"\nhttps_key = \"{0}/gone.key\"\nhttps_client_ca = \"{0}/ca.pem\"\n",
        u.display()
    );
    std::fs::write(
        &file,
        shipped.replacen("timeout = \"5s\"", &format!("timeout = \"5s\"\n{https}"), 1),
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("commands: commands.https_key: cannot read"), "{text}");

    // TLS to the database: a verifying sslmode without its CA, and a CA
    // file that is not there, fail the check with the key that says so; a
    // remote server reached without verification is a warning.
    let db_url = |url: &str| {
        shipped.replace(
            "url = \"host=127.0.0.1 user=spb dbname=plant\"",
            &format!("url = \"{url}\""),
        )
    };
    std::fs::write(&file, db_url("host=db.plant user=spb sslmode=verify-full")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("database.url: sslmode=verify-full checks the server's certificate: set sslrootcert"),
        "{text}"
    );
    std::fs::write(
        &file,
        db_url("host=db.plant user=spb sslmode=verify-full sslrootcert=/nonexistent/db-ca.pem"),
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("/nonexistent/db-ca.pem"), "{text}");
    std::fs::write(
        &file,
        db_url(&format!(
            "host=db.plant user=spb sslmode=verify-full sslrootcert={}/ca.pem",
            u.display()
        )),
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("warning: database.url"), "{text}");
    std::fs::write(&file, db_url("host=db.plant user=spb sslmode=require")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: database.url: the server's certificate is not verified"),
        "{text}"
    );
    // [retention] as the technician may mistype it.
    std::fs::write(&file, shipped.replace("raw = \"90d\"", "raw = \"12h\"")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("retention.raw: at least 1d"), "{text}");
    // [scale] as the technician may mistype it.
    let no_subscriptions = shipped.replace("subscriptions = [\"spBv1.0/#\"]", "");
    let scale = "\n[scale]\ninstance = \"a\"\ngroups = [\"P1\", \"P1\", \"STATE\", \"a/b\"]\nlease_ttl = \"500ms\"\n";
    std::fs::write(&file, format!("{no_subscriptions}{scale}")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    for e in [
        "scale.groups: 'P1' is listed twice",
        "scale.groups: STATE is the host's topic",
        "scale.groups: group id",
        "scale.lease_ttl: between 1s and 5m",
    ] {
        assert!(text.contains(e), "{e}: {text}");
    }
    std::fs::write(&file, format!("{shipped}\n[scale]\ngroups = [\"P1\"]\n")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("remove host.subscriptions"), "{text}");
    let mssql = no_subscriptions.replace("backend = \"postgres\"", "backend = \"mssql\"");
    std::fs::write(&file, format!("{mssql}\n[scale]\ngroups = [\"P1\"]\n")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("scale-out keeps its leases on PostgreSQL"), "{text}");
    std::fs::write(
        &file,
        format!("{no_subscriptions}\n[scale]\ngroups = [\"P1\", \"P2\"]\n"),
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(0), "{text}");
    // README's [scale] example, as shown.
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("### Several uplinks").expect("README section")..];
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README's [scale] example");
    assert!(block.starts_with("[scale]"), "{block}");
    std::fs::write(&file, format!("{no_subscriptions}\n{block}")).expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, Some(0), "{text}");
}
