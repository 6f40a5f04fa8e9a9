#!/usr/bin/env bash
# Runs the whole uml-switch test suite: formatting, lints and every test,
# including the end-to-end tests that boot real User-Mode-Linux guests.
#
# Meant for a fresh Debian machine, as root (the end-to-end tests create
# network namespaces and tap devices).  Missing Debian packages are installed
# first, and only if missing.  Extra arguments go to `cargo test`, e.g.
#
#     ./run-tests.sh -- --nocapture        # show boot and round-trip times
#
# UML_E2E_SWITCH=uml_switch runs the real-UML tests against the old uml_switch
# from uml-utilities instead of ours (to tell harness from switch problems).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

log() { printf 'run-tests: %s\n' "$*" >&2; }

# Whether Debian package $1 is installed.
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# The Debian packages the tests use: UML guests (user-mode-linux, with
# iproute2, iputils-ping and a static busybox inside them), vde2's tools as
# real clients, QEMU (whose test guest's initramfs needs the static
# busybox too; busybox-static replaces Debian's dynamic busybox), and
# tcpdump, which reads uml-plug's captures.
required=(
    user-mode-linux
    iproute2
    iputils-ping
    busybox-static
    vde2
    qemu-system-x86
    tcpdump
)

missing=()
for pkg in "${required[@]}"; do
    pkg_installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]}"
        log "run this script as root to install them (the tests need root anyway)"
        exit 1
    fi
    log "installing missing Debian packages: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
elif [[ $(id -u) -eq 0 ]] && ! compgen -G "/var/tmp/uml-switch-qemu-cache/linux-image-*" >/dev/null; then
    # The QEMU tests fetch a Debian cloud kernel once (apt-get download),
    # which needs current package lists.
    log "refreshing the package lists for the QEMU test kernel"
    apt-get update
fi

if [[ $(id -u) -ne 0 ]]; then
    log "warning: not root; the namespace, tap and User-Mode-Linux tests will fail"
elif [[ ! -c /dev/net/tun ]]; then
    # Minimal containers may lack the tun device node the tap tests need.
    log "creating /dev/net/tun"
    modprobe tun 2>/dev/null || true
    mkdir -p /dev/net
    mknod -m 0666 /dev/net/tun c 10 200
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install a Rust toolchain first"
    exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        log "installing rustfmt and clippy"
        rustup component add rustfmt clippy
    else
        log "cargo fmt and cargo clippy are needed (rustfmt and clippy components)"
        exit 1
    fi
fi

log "cargo fmt --all -- --check"
cargo fmt --all -- --check
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test --workspace $*"
cargo test --workspace "$@"
