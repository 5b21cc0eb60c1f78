#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for `make test` and `make demo`.
# Idempotent: checks each tool first and calls apt-get only for what is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have cc || need+=(build-essential)
have c++ || need+=(g++)
have pkg-config || need+=(pkg-config)
have python3 || need+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
python3 -m ensurepip --version >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
have mosquitto || need+=(mosquitto)
have mosquitto_sub || need+=(mosquitto-clients)
have openssl || need+=(openssl)
# node-snap7 (the second independent S7 server) is built by npm with node-gyp.
have node || need+=(nodejs)
have npm || need+=(npm)
have make || need+=(make)
# The full-disk tests mount a tmpfs in a user namespace.
have unshare || need+=(util-linux)
# systemd-analyze checks the shipped units (tests/systemd_units.rs).
have systemd-analyze || need+=(systemd)
# The power-cut tests (tests/power_cut.rs): a FUSE file system written with
# fusepy, which loads libfuse 2.
ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2 ' || need+=(libfuse2)
# The uplink tests: a PostgreSQL server on 127.0.0.1:5432 and its binaries (initdb, pg_ctl).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# The board build (make aarch64) and its check under qemu (make aarch64-check).
have aarch64-linux-gnu-gcc || need+=(gcc-aarch64-linux-gnu)
[ -d /usr/aarch64-linux-gnu/include ] || need+=(libc6-dev-arm64-cross)
have qemu-aarch64-static || need+=(qemu-user-static)
# The Debian packages (tools/make-deb.sh, tests/packaging.rs): lintian checks
# them, debootstrap makes the root they are installed on.
have dpkg-deb || need+=(dpkg)
have file || need+=(file)
have lintian || need+=(lintian)
have debootstrap || need+=(debootstrap)
# Shift calendars follow the plant's time zone (the IANA database).
[ -f /usr/share/zoneinfo/Europe/Berlin ] || need+=(tzdata)
# README's command API example is run as shown (tests/command_api.rs).
have curl || need+=(curl)

if ((${#need[@]})); then
    echo "install-deps: installing ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if have rustup; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
