#!/usr/bin/env bash
# Builds a Debian package of spb-gateway or spb-uplink from a built binary,
# with dpkg-deb alone: the binary, the systemd unit, the configuration file as
# a conffile, the system user and the state directory made by the maintainer
# scripts, the documentation. For Debian-based boxes (Siemens IOT2050,
# Revolution Pi, Moxa UC-8100: arm64) and servers (amd64).
#
# usage: tools/make-deb.sh spb-gateway|spb-uplink amd64|arm64 BINARY OUTDIR
#   `make deb` builds both packages for both architectures.
set -euo pipefail
usage="usage: tools/make-deb.sh spb-gateway|spb-uplink amd64|arm64 BINARY OUTDIR"
pkg=${1:?$usage} arch=${2:?$usage} bin=${3:?$usage} out=${4:?$usage}
root=$(cd "$(dirname "$0")/.." && pwd)
case $pkg in spb-gateway | spb-uplink) ;; *) echo "$usage" >&2; exit 2 ;; esac
case $arch in
    amd64) want="x86-64" ;;
    arm64) want="ARM aarch64" ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
file -b "$bin" | grep -q "$want" || { echo "make-deb.sh: $bin is not an $arch program: $(file -b "$bin")" >&2; exit 1; }
# Who answers for the package: set DEB_MAINTAINER to your team's address.
maintainer=${DEB_MAINTAINER:-spb-gateway maintainers <spb-gateway@example.com>}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
debver="$version-1"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
d=$stage/pkg
doc=$d/usr/share/doc/$pkg
install -d -m 0755 "$d/DEBIAN" "$d/usr/bin" "$d/lib/systemd/system" "$doc" "$d/etc/$pkg"
install -m 0755 "$bin" "$d/usr/bin/$pkg"
# Symbols are of no use on the box (the release profile strips them; a
# debug build is stripped here).
strip=strip
[ "$arch" = amd64 ] || strip=aarch64-linux-gnu-strip
"$strip" --strip-all "$d/usr/bin/$pkg"
install -m 0644 "$root/systemd/$pkg.service" "$d/lib/systemd/system/"
install -m 0644 "$root/README.md" "$doc/"
if [ "$pkg" = spb-gateway ]; then
    install -m 0640 "$root/config/default.toml" "$d/etc/$pkg/config.toml"
    install -m 0644 "$root/config/example.toml" "$doc/example.toml"
    summary="Sparkplug B 3.0 edge gateway for Siemens S7 and Allen-Bradley Logix PLCs"
    long=" Polls PLCs and publishes Sparkplug B over MQTT with mTLS, storing data on
 disk while the broker or the Primary Host is away and replaying it after.
 Runs under systemd (Type=notify, watchdog). The configuration installed in
 /etc/spb-gateway/config.toml is valid: the gateway waits, publishing
 nothing, until its identity and broker are filled in."
    state=yes
else
    install -m 0640 "$root/config/uplink.example.toml" "$d/etc/$pkg/config.toml"
    summary="Sparkplug B Primary Host storing plant data in PostgreSQL or SQL Server"
    long=" Subscribes to a Sparkplug B broker as the Primary Host and writes raw
 events, metric facts, node and device state and rollups to PostgreSQL or
 SQL Server. Runs under systemd (Type=notify). Edit
 /etc/spb-uplink/config.toml (broker, database) and run
 spb-uplink --check-config before starting it."
    state=no
fi
# What lintian reports and we mean (each with its reason).
install -d -m 0755 "$d/usr/share/lintian/overrides"
cat > "$d/usr/share/lintian/overrides/$pkg" <<EOF
# The configuration holds broker and database credentials: root and the service's group only.
$pkg: non-standard-file-perm 0640 != 0644 [etc/$pkg/config.toml]
# Each subcommand answers --help; README.md is in /usr/share/doc/$pkg.
$pkg: no-manual-page [usr/bin/$pkg]
# Built for a plant's own repository, not uploaded to Debian: no bug to close.
$pkg: initial-upload-closes-no-bugs [usr/share/doc/$pkg/changelog.Debian.gz:1]
EOF
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: spb-gateway

Files: *
Copyright: 2024-2026 the spb-gateway authors
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
printf '%s (%s) stable; urgency=medium\n\n  * Package built from the spb-gateway repository.\n\n -- %s  %s\n' \
    "$pkg" "$debver" "$maintainer" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n > "$doc/changelog.Debian.gz"

# The oldest glibc the binary runs on, from the symbol versions it needs.
glibc=$( (readelf --dyn-syms -W "$d/usr/bin/$pkg" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1) || true)
[ -n "$glibc" ] || { echo "make-deb.sh: cannot read the glibc version $bin needs" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
cat > "$d/DEBIAN/control" <<EOF
Package: $pkg
Version: $debver
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: libc6 (>= $glibc), adduser
Section: net
Priority: optional
Description: $summary
$long
EOF
echo "/etc/$pkg/config.toml" > "$d/DEBIAN/conffiles"

cat > "$d/DEBIAN/postinst" <<EOF
#!/bin/sh
# $pkg: the system user, the configuration's group, the unit enabled and
# (where systemd runs) started or restarted. The state directory is
# systemd's (StateDirectory=, mode 0700).
set -e
if [ "\$1" = configure ]; then
    if ! getent group $pkg >/dev/null; then
        addgroup --system --quiet $pkg
    fi
    if ! getent passwd $pkg >/dev/null; then
        adduser --system --quiet --ingroup $pkg --no-create-home \\
            --home /var/lib/$pkg --shell /usr/sbin/nologin --gecos "$pkg service" $pkg
    fi
    # The configuration holds broker and database credentials: root writes
    # it, the service reads it, nobody else.
    chown root:$pkg /etc/$pkg /etc/$pkg/config.toml
    chmod 0750 /etc/$pkg
    chmod 0640 /etc/$pkg/config.toml
fi
# The unit: what debhelper's dh_installsystemd writes.
if [ "\$1" = configure ] || [ "\$1" = abort-upgrade ] || [ "\$1" = abort-deconfigure ] || [ "\$1" = abort-remove ]; then
    # Only removes the mask made at package removal.
    deb-systemd-helper unmask $pkg.service >/dev/null || true
    # was-enabled is true without a record: a first install enables; an
    # administrator's disable is kept across upgrades.
    if deb-systemd-helper --quiet was-enabled $pkg.service; then
        deb-systemd-helper enable $pkg.service >/dev/null || true
    else
        deb-systemd-helper update-state $pkg.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "\$2" ]; then
            deb-systemd-invoke try-restart $pkg.service >/dev/null || true
        elif [ $state = yes ]; then
            # As installed it waits for setup (systemctl status says what to fill in).
            deb-systemd-invoke start $pkg.service >/dev/null || true
        fi
    fi
fi
exit 0
EOF
cat > "$d/DEBIAN/prerm" <<EOF
#!/bin/sh
# $pkg: stop the service before its files go (SIGTERM: a clean NDEATH).
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
    deb-systemd-invoke stop $pkg.service >/dev/null || true
fi
exit 0
EOF
cat > "$d/DEBIAN/postrm" <<EOF
#!/bin/sh
# $pkg: forget the unit; on purge also the state directory (data not yet
# delivered is lost then: purge is a decision to lose it). dpkg removes the
# conffile; certificates an administrator put in /etc/$pkg stay, and so does
# the system user, as Debian policy asks (files may still belong to it).
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "\$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask $pkg.service >/dev/null || true
fi
if [ "\$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge $pkg.service >/dev/null || true
        deb-systemd-helper unmask $pkg.service >/dev/null || true
    fi
    rm -rf /var/lib/$pkg
    rmdir --ignore-fail-on-non-empty /etc/$pkg 2>/dev/null || true
fi
exit 0
EOF
chmod 0755 "$d/DEBIAN/postinst" "$d/DEBIAN/prerm" "$d/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/${pkg}_${debver}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$d" "$deb" >/dev/null
echo "$deb"
