#!/usr/bin/env bash
# Runs every fuzz target (fuzz/Cargo.toml) over its committed seed corpus for SECONDS each
# (default 20; the test command runs 15), on a scratch copy of the corpus so the tree stays
# clean. Runs every target, then exits non-zero if any crashed; a crashing input is in
# fuzz/artifacts/<target>/ (fix it, then add the input to fuzz/corpus/<target>/). Longer runs:
#   bash resources/fuzz.sh 3600            # an hour per target
#   bash resources/fuzz.sh 600 http_request  # one target
# The stable toolchain is used with RUSTC_BOOTSTRAP=1 and without a sanitizer (none is
# shipped for it here): libFuzzer's coverage guidance and Rust's own checks (bounds, overflow
# in debug assertions) catch panics, hangs (-timeout) and runaway allocations (-rss_limit_mb).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-20}
shift || true

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --version 0.13.2 --locked >&2
fi
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
targets=("$@")
if ((${#targets[@]} == 0)); then
    listing=$(cargo fuzz list)
    mapfile -t targets <<<"$listing"
fi
if ((${#targets[@]} == 0)) || [[ -z ${targets[0]} ]]; then
    echo "fuzz: no targets" >&2
    exit 1
fi
cargo fuzz build -s none --debug-assertions >&2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    if [[ -d corpus/$target ]]; then
        cp -r "corpus/$target/." "$scratch/$target/"
    else
        echo "fuzz: $target has no seed corpus (fuzz/corpus/$target/)" >&2
    fi
    log="$scratch/$target.log"
    # Targets that need files (vsock_muxer's sockets) make them under TMPDIR: the scratch dir.
    mkdir -p "$scratch/tmp"
    if TMPDIR="$scratch/tmp" cargo fuzz run -s none --debug-assertions "$target" "$scratch/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -n 1 | awk '{print $2}' || true)
        echo "fuzz: $target ok: ${runs:-?} executions in ${seconds}s"
        passed=$((passed + 1))
    else
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/):"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|error' "$log" | head -n 10 || true
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
