#!/bin/sh
# Benchmarks uml-switch against vde_switch and direct socket pairs (the
# machine's floor) with the loadgen load generator, and writes the results.
#
#   benches/run.sh                 full suite: 5 reps, 2-second windows
#   benches/run.sh --quick         smoke run: 1 rep, 1-second windows
#   benches/run.sh --only headline,pingpong --reps 3
#
# Arguments are passed to loadgen (see: loadgen --help). Results: the
# markdown tables on stdout and in benches/results/ (report.md,
# samples.csv, frames_vs_size.svg, frames_vs_ports.svg) unless --out DIR.
# Installs Debian's vde2 if vde_switch is missing (needs root).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}

if ! command -v vde_switch >/dev/null 2>&1 && [ ! -x /usr/bin/vde_switch ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing vde2 (vde_switch)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y vde2 >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y vde2 >&2; }
    else
        echo "run.sh: vde_switch missing and cannot install vde2 (not root or no apt-get): it will be skipped" >&2
    fi
fi
vde=$(command -v vde_switch 2>/dev/null || echo /usr/bin/vde_switch)

cargo build --release -p uml-switch -p uml-switch-benches >&2

exec "$target_dir/release/loadgen" \
    --uml-switch "$target_dir/release/uml-switch" \
    --vde-switch "$vde" \
    "$@"
