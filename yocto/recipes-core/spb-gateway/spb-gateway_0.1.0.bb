SUMMARY = "Sparkplug B 3.0 edge gateway for Siemens S7 and Allen-Bradley Logix PLCs"
DESCRIPTION = "Polls PLCs, publishes Sparkplug B over MQTT with mTLS, stores and \
forwards data while the broker or Primary Host is away. Runs under systemd \
(Type=notify, watchdog) and is configured by /etc/spb-gateway/config.toml."
HOMEPAGE = "${SPB_GATEWAY_HOMEPAGE}"
LICENSE = "Apache-2.0"
# The license line of Cargo.toml (the package states it there).
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=6;endline=6;md5=2507bd5f0713f05419cd2f22fa06fe62"

# Point SPB_GATEWAY_SRC_URI at the project's repository in local.conf, e.g.
#   SPB_GATEWAY_SRC_URI = "git://<your git server>/spb-gateway.git;protocol=ssh;branch=main"
SRC_URI = "${SPB_GATEWAY_SRC_URI}"
SRCREV = "${AUTOREV}"
S = "${WORKDIR}/git"

# Generated from Cargo.lock by `make yocto-crates` (or `bitbake -c update_crates spb-gateway`).
require spb-gateway-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# Only the edge binary: the uplink and its database drivers stay off the board.
CARGO_BUILD_FLAGS += "--bin spb-gateway"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system spb-gateway"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /var/lib/spb-gateway \
    --shell /sbin/nologin --gid spb-gateway spb-gateway"

SYSTEMD_SERVICE:${PN} = "spb-gateway.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${sysconfdir}/spb-gateway
    install -m 0640 ${S}/config/example.toml ${D}${sysconfdir}/spb-gateway/config.toml
    chgrp spb-gateway ${D}${sysconfdir}/spb-gateway/config.toml
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/spb-gateway.service ${D}${systemd_system_unitdir}/
    install -d ${D}${docdir}/${PN}
    install -m 0644 ${S}/README.md ${D}${docdir}/${PN}/
}

FILES:${PN} += "${systemd_system_unitdir}/spb-gateway.service"
CONFFILES:${PN} = "${sysconfdir}/spb-gateway/config.toml"
RDEPENDS:${PN} += "ca-certificates"
