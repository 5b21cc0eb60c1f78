# No HOMEPAGE or BUGTRACKER: the project has no public web page or tracker;
# its documentation ships in the package (see the layer's README, "Lint").
SUMMARY = "Sparkplug B 3.0 edge gateway for Siemens S7 and Allen-Bradley Logix PLCs"
DESCRIPTION = "Polls PLCs, publishes Sparkplug B over MQTT with mTLS, stores and \
               forwards data while the broker or Primary Host is away. Runs under systemd \
               (Type=notify, watchdog) and is configured by /etc/spb-gateway/config.toml."
SECTION = "net"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# Where the source comes from. By default the repository this layer is part
# of (a clone holds the pinned commit, so nothing is fetched from a network);
# an image build points it at the company's server in local.conf, e.g.
#   SPB_GATEWAY_GIT = "git://git.example.com/ot/spb-gateway.git;protocol=ssh"
SPB_GATEWAY_GIT ??= "git://${@os.path.normpath(d.getVar('THISDIR') + '/../../../..')};protocol=file"
SRC_URI = "${SPB_GATEWAY_GIT};branch=main"
# The released commit: set by `make yocto-pin` with the version in the file
# name (tests/packaging.rs checks that both agree with Cargo.toml and that the
# crate list below is that commit's Cargo.lock).
SRCREV = "b3bf26bd53a92f724b12fe3cc6fa1a5317b08b43"

# scarthgap unpacks into WORKDIR; later releases into UNPACKDIR.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/git"

# The crate list of Cargo.lock, written by `make yocto-crates`.
require spb-gateway-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# Only the edge binary: the uplink and its database drivers stay off the board.
CARGO_BUILD_FLAGS += "--bin spb-gateway"

CVE_PRODUCT = "spb-gateway"

# The code needs Rust 1.88 (Cargo.toml rust-version); scarthgap ships 1.75.
SPB_GATEWAY_RUST_MIN = "1.88"
python do_check_rust () {
    have = (d.getVar('RUSTVERSION') or '0').rstrip('%')
    want = d.getVar('SPB_GATEWAY_RUST_MIN')
    if bb.utils.vercmp_string(have, want) < 0:
        bb.fatal("spb-gateway needs Rust %s or newer, this build has %s: add meta-lts-mixins "
                 "(branch scarthgap/rust) or set RUSTVERSION (see the layer's README)" % (want, have))
}
do_check_rust[doc] = "Stops the build with what to do when the Rust toolchain is older than the code needs"
addtask check_rust before do_compile after do_configure

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system spb-gateway"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir ${localstatedir}/lib/spb-gateway \
                       --shell /sbin/nologin --gid spb-gateway spb-gateway"

SYSTEMD_SERVICE:${PN} = "spb-gateway.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    # The file as installed is valid without identity, broker or devices:
    # the gateway waits for them (`spb-gateway --print-default-config`).
    install -d -m 0750 ${D}${sysconfdir}/spb-gateway
    install -m 0640 ${S}/config/default.toml ${D}${sysconfdir}/spb-gateway/config.toml
    chown -R root:spb-gateway ${D}${sysconfdir}/spb-gateway
    # The state directory is systemd's (StateDirectory=, mode 0700).
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/spb-gateway.service ${D}${systemd_system_unitdir}/
    install -d ${D}${docdir}/${PN}
    install -m 0644 ${S}/README.md ${S}/config/example.toml ${D}${docdir}/${PN}/
}

FILES:${PN} += "${systemd_system_unitdir}/spb-gateway.service"
CONFFILES:${PN} = "${sysconfdir}/spb-gateway/config.toml"
RDEPENDS:${PN} += "ca-certificates"

# A service for the target image: no -native or nativesdk variant makes sense.
BBCLASSEXTEND = ""
