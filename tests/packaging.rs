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

/// `tools/make-deb.sh PACKAGE ARCH BINARY OUTDIR`, returning the .deb.
fn make_deb(package: &str, arch: &str, binary: &Path, out: &Path) -> std::path::PathBuf {
    let o = std::process::Command::new(root().join("tools/make-deb.sh"))
        .args([package, arch])
        .arg(binary)
        .arg(out)
        .output()
        .expect("tools/make-deb.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> String {
    let o = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (make deps installs it)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A file of the package, extracted.
fn deb_file(deb: &Path, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    run("dpkg-deb", &["-x".as_ref(), deb.as_os_str(), dir.path().as_os_str()]);
    std::fs::read(dir.path().join(path)).unwrap_or_else(|e| panic!("{path} in {}: {e}", deb.display()))
}

fn check_deb(deb: &Path, package: &str, arch: &str, config: &str) {
    let field = |f: &str| {
        run("dpkg-deb", &["-f".as_ref(), deb.as_os_str(), f.as_ref()])
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), package);
    assert_eq!(field("Architecture"), arch);
    let version = cargo_version(&std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml"));
    assert_eq!(field("Version"), format!("{version}-1"));
    let depends = field("Depends");
    assert!(
        depends.starts_with("libc6 (>= 2.") && depends.contains("adduser"),
        "{depends}"
    );
    // Contents and modes: the program, the unit, the configuration
    // (a conffile, not world-readable: it holds credentials), the docs.
    let list = run("dpkg-deb", &["-c".as_ref(), deb.as_os_str()]);
    let mode = |path: &str| {
        list.lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} not in {}:\n{list}", deb.display()))
            .split_whitespace()
            .next()
            .expect("mode")
            .to_string()
    };
    assert_eq!(mode(&format!("usr/bin/{package}")), "-rwxr-xr-x");
    assert_eq!(mode(&format!("lib/systemd/system/{package}.service")), "-rw-r--r--");
    assert_eq!(mode(&format!("etc/{package}/config.toml")), "-rw-r-----");
    mode(&format!("usr/share/doc/{package}/copyright"));
    let unit = deb_file(deb, &format!("lib/systemd/system/{package}.service"));
    assert_eq!(
        unit,
        std::fs::read(root().join(format!("systemd/{package}.service"))).expect("unit")
    );
    let conf = deb_file(deb, &format!("etc/{package}/config.toml"));
    assert_eq!(conf, std::fs::read(root().join(config)).expect("config"));
    // The maintainer scripts: valid sh; the user, the group on the
    // configuration, the unit enabled.
    let ctl = tempfile::tempdir().expect("tmp");
    run("dpkg-deb", &["-e".as_ref(), deb.as_os_str(), ctl.path().as_os_str()]);
    assert_eq!(
        std::fs::read_to_string(ctl.path().join("conffiles")).expect("conffiles"),
        format!("/etc/{package}/config.toml\n")
    );
    for script in ["postinst", "prerm", "postrm"] {
        run("sh", &["-n".as_ref(), ctl.path().join(script).as_os_str()]);
    }
    let postinst = std::fs::read_to_string(ctl.path().join("postinst")).expect("postinst");
    for needle in [
        "adduser --system",
        &format!("chown root:{package} /etc/{package} /etc/{package}/config.toml"),
        &format!("deb-systemd-helper enable {package}.service"),
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle:?}:\n{postinst}");
    }
    // An independent check of the whole package: Debian's lintian, with
    // only the overrides the package ships (each explained there).
    let o = std::process::Command::new("lintian")
        .arg(deb)
        .output()
        .expect("lintian (make deps installs it)");
    let said: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
        .filter(|l| !l.contains("running with root privileges"))
        .map(str::to_string)
        .collect();
    assert!(
        o.status.success() && said.is_empty(),
        "lintian {}:\n{}",
        deb.display(),
        said.join("\n")
    );
}

/// The board's binary (`make aarch64`, run by `make test` before the tests).
fn aarch64_binary() -> std::path::PathBuf {
    let p = root().join("target/aarch64-unknown-linux-gnu/release/spb-gateway");
    assert!(p.exists(), "{} is missing: `make aarch64` builds it", p.display());
    p
}

#[test]
fn debian_packages_of_the_gateway_for_arm64_and_amd64_hold_what_a_box_needs() {
    let out = tempfile::tempdir().expect("tmp");
    let amd64 = make_deb(
        "spb-gateway",
        "amd64",
        Path::new(env!("CARGO_BIN_EXE_spb-gateway")),
        out.path(),
    );
    check_deb(&amd64, "spb-gateway", "amd64", "config/default.toml");
    let arm64 = make_deb("spb-gateway", "arm64", &aarch64_binary(), out.path());
    check_deb(&arm64, "spb-gateway", "arm64", "config/default.toml");
    // A binary of the other architecture is refused, not packaged.
    let o = std::process::Command::new(root().join("tools/make-deb.sh"))
        .args(["spb-gateway", "arm64", env!("CARGO_BIN_EXE_spb-gateway")])
        .arg(out.path())
        .output()
        .expect("make-deb.sh");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not an arm64 program"));
}

#[cfg(feature = "uplink")]
#[test]
fn a_debian_package_of_the_uplink_holds_its_unit_and_configuration() {
    let out = tempfile::tempdir().expect("tmp");
    let deb = make_deb(
        "spb-uplink",
        "amd64",
        Path::new(env!("CARGO_BIN_EXE_spb-uplink")),
        out.path(),
    );
    check_deb(&deb, "spb-uplink", "amd64", "config/uplink.example.toml");
}

/// A minimal Debian (debootstrap, bookworm) under target/, made once.
fn debian_root() -> std::path::PathBuf {
    let dir = root().join("target/debian-root");
    if !dir.join("usr/bin/deb-systemd-helper").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        run(
            "debootstrap",
            &[
                "--variant=minbase".as_ref(),
                "--include=adduser".as_ref(),
                "bookworm".as_ref(),
                dir.as_os_str(),
                "http://deb.debian.org/debian".as_ref(),
            ],
        );
    }
    dir
}

fn in_root(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("chroot")
        .arg(dir)
        .args(args)
        .output()
        .expect("chroot")
}

#[test]
#[ignore = "needs root (chroot) and debootstrap: `make test` runs it (make deb-check)"]
fn the_gateway_package_installs_upgrades_removes_and_purges_on_a_debian_root() {
    let dir = debian_root();
    let out = tempfile::tempdir().expect("tmp");
    let deb = make_deb(
        "spb-gateway",
        "amd64",
        Path::new(env!("CARGO_BIN_EXE_spb-gateway")),
        out.path(),
    );
    std::fs::copy(&deb, dir.join("tmp/spb-gateway.deb")).expect("copy");
    let ok = |args: &[&str]| {
        let o = in_root(&dir, args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // A root left by an earlier run starts clean.
    let _ = in_root(&dir, &["dpkg", "--purge", "spb-gateway"]);
    ok(&["dpkg", "-i", "/tmp/spb-gateway.deb"]);
    assert!(ok(&["getent", "passwd", "spb-gateway"]).contains(":/var/lib/spb-gateway:/usr/sbin/nologin"));
    assert_eq!(
        ok(&["stat", "-c", "%a %U %G", "/etc/spb-gateway"]).trim(),
        "750 root spb-gateway"
    );
    assert_eq!(
        ok(&["stat", "-c", "%a %U %G", "/etc/spb-gateway/config.toml"]).trim(),
        "640 root spb-gateway"
    );
    // (An absolute link into the root: read it, do not follow it.)
    let wants = dir.join("etc/systemd/system/multi-user.target.wants/spb-gateway.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("enabled"),
        Path::new("/lib/systemd/system/spb-gateway.service")
    );
    // As installed, the file is valid and the program says what to fill in.
    let check = ok(&["spb-gateway", "--check-config"]);
    assert!(check.contains("valid, but not set up"), "{check}");
    // README's "Deploy to a gateway": the node's certificate from
    // make-certs.sh installed with README's commands, the two sections
    // uncommented and filled in, and --check-config is content (it reads
    // the files: the key matches, the certificate is valid).
    let pki = tempfile::tempdir().expect("tmp");
    let o = std::process::Command::new(root().join("certs-example/make-certs.sh"))
        .arg(pki.path())
        .args(["--group", "Plant1", "--host", "scada", "gw-line4"])
        .output()
        .expect("make-certs.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(dir.join("tmp/gw-line4"));
    std::fs::create_dir_all(dir.join("tmp/gw-line4")).expect("dir");
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(pki.path().join("gw-line4").join(f), dir.join("tmp/gw-line4").join(f)).expect("copy");
    }
    ok(&[
        "sh",
        "-c",
        "cd /tmp/gw-line4 && install -m 0644 ca.pem client.pem /etc/spb-gateway/ && \
         install -m 0600 -o spb-gateway -g spb-gateway client.key /etc/spb-gateway/",
    ]);
    let conf = dir.join("etc/spb-gateway/config.toml");
    let text = std::fs::read_to_string(&conf).expect("conf");
    let mut edited = String::new();
    let mut uncomment = false;
    for line in text.lines() {
        // The technician removes the '# ' of the two FILL IN sections.
        if line.starts_with("# FILL IN") {
            uncomment = true;
        } else if line.is_empty() {
            uncomment = false;
        } else if uncomment && line.starts_with("# [") || uncomment && line.starts_with("# ") && line.contains(" = ") {
            let l = &line[2..];
            if !l.starts_with("primary_host_id") {
                edited.push_str(&l.replace("broker1.plant.local", "127.0.0.1"));
                edited.push('\n');
                continue;
            }
        }
        edited.push_str(line);
        edited.push('\n');
    }
    std::fs::write(&conf, &edited).expect("edit");
    let check = ok(&["spb-gateway", "--check-config"]);
    assert!(
        check.contains("valid (0 devices, 0 tags, 1 MQTT server)"),
        "{check}\n{edited}"
    );
    // The technician's edit survives an upgrade (a conffile).
    ok(&["dpkg", "-i", "/tmp/spb-gateway.deb"]);
    assert_eq!(std::fs::read_to_string(&conf).expect("conf"), edited);
    // Remove keeps the configuration; purge takes it and the state, not the user.
    std::fs::create_dir_all(dir.join("var/lib/spb-gateway/queue")).expect("state");
    ok(&["dpkg", "--remove", "spb-gateway"]);
    assert!(!dir.join("usr/bin/spb-gateway").exists());
    assert!(conf.exists(), "remove keeps the conffile");
    ok(&["dpkg", "--purge", "spb-gateway"]);
    assert!(!conf.exists() && !dir.join("var/lib/spb-gateway").exists());
    assert!(std::fs::symlink_metadata(&wants).is_err(), "purge disables the unit");
    ok(&["getent", "passwd", "spb-gateway"]);
}
