#!/usr/bin/env bash
# Optional step of the benchmark (README "Benchmarks"): build Firecracker and its jailer from
# source, release profile, so that bench.sh can measure it beside Palisade in the same run.
#   bash resources/firecracker-build.sh [SRC_DIR]
# SRC_DIR: a Firecracker checkout to build (default: a shallow clone of
# https://github.com/firecracker-microvm/firecracker, tag $FIRECRACKER_REF or the default
# branch, into ~/.cache/palisade/firecracker). Installs cmake, clang and libseccomp-dev (Debian
# or Ubuntu) when missing. Builds with the toolchain on the PATH (Firecracker's
# rust-toolchain.toml would make rustup fetch another one); a few minutes on 2 cores.
# Prints the two lines to paste: export FIRECRACKER_BIN=... FIRECRACKER_JAILER_BIN=...
set -euo pipefail
src=${1:-}
if [ -z "$src" ]; then
    src=$HOME/.cache/palisade/firecracker
    if [ ! -d "$src/.git" ]; then
        rm -rf "$src"
        git clone -q --depth 1 ${FIRECRACKER_REF:+--branch "$FIRECRACKER_REF"} \
            https://github.com/firecracker-microvm/firecracker "$src"
    fi
fi
[ -f "$src/Cargo.toml" ] && [ -d "$src/src/firecracker" ] ||
    { echo "firecracker-build: $src is not a Firecracker source tree" >&2; exit 1; }
if ! command -v cmake >/dev/null || ! command -v clang >/dev/null ||
    [ ! -e /usr/include/seccomp.h ]; then
    apt-get update -q >&2 && apt-get install -y -q cmake clang libseccomp-dev >&2
fi
cd "$src"
# The host's toolchain instead of the pinned one (no rustup download); Firecracker's release
# profile otherwise as it is.
rm -f rust-toolchain.toml
nice -n 10 cargo build -q --release -p firecracker -p jailer >&2
bin=$src/build/cargo_target/release
[ -x "$bin/firecracker" ] && [ -x "$bin/jailer" ] ||
    { echo "firecracker-build: no binaries in $bin" >&2; exit 1; }
"$bin/firecracker" --version | head -n 1 >&2
echo "export FIRECRACKER_BIN=$bin/firecracker"
echo "export FIRECRACKER_JAILER_BIN=$bin/jailer"
