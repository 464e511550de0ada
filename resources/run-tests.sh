#!/usr/bin/env bash
# The test command (README.md): builds the test guests (cached; the first Linux guest build
# takes ~10 minutes on 2 cores), then runs every test, including those that boot guests
# under real KVM. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Tools the tests use: curl as an API client under another uid (setpriv), ip for network
# namespaces and taps, unshare/dmesg (util-linux), debugfs (e2fsprogs), python3 for benches.
missing=()
for tool in curl setpriv unshare dmesg ip debugfs python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl util-linux iproute2 e2fsprogs \
        python3 >&2
fi

echo "== probe guest" >&2
PALISADE_PROBE=$(bash resources/probe/build.sh | tail -n 1)
echo "== Linux guest" >&2
PALISADE_GUEST_DIR=$(bash resources/guest/build.sh | tail -n 1)
export PALISADE_PROBE PALISADE_GUEST_DIR
echo "probe: $PALISADE_PROBE" >&2
echo "guest: $PALISADE_GUEST_DIR" >&2

echo "== format and lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests" >&2
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
# Every skipped test appends its `SKIPPED:` line here (tests/common/skip.rs); with
# PALISADE_NO_SKIP set (.ci/run sets it) a test that cannot run fails instead.
export PALISADE_SKIP_LOG=$skips
status=0
# --no-fail-fast: a failing test binary does not keep the ones after it from running (cargo
# still exits non-zero, naming every binary that failed).
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# The guest agent is its own crate (resources/guest/agent, not in the workspace): its unit
# tests, then its host client against the real binary (no VM). Skipped when arguments select
# particular tests. unittest's "Ran N tests" line joins the closing count.
if (($# == 0)); then
    echo "== guest agent" >&2
    (cd resources/guest/agent && cargo build --release --locked && cargo test --release --locked) \
        2>&1 | tee -a "$log" || status=1
    client_log=$(mktemp)
    client_status=0
    python3 resources/guest/agent/test_client.py 2>&1 | tee "$client_log" || client_status=$?
    ran=$(sed -n 's/^Ran \([0-9]*\) tests\?.*/\1/p' "$client_log")
    if ((client_status == 0)); then
        echo "test result: ok. ${ran:-0} passed; 0 failed (agent/test_client.py)" >>"$log"
    else
        status=1
        echo "test result: FAILED. 0 passed; ${ran:-1} failed (agent/test_client.py)" >>"$log"
    fi
    rm -f "$client_log"
fi

# Fuzz targets: a short smoke run of each over its seed corpus (resources/fuzz.sh; longer
# runs by hand). Skipped when arguments select particular tests.
fuzz_line=""
if (($# == 0)); then
    echo "== fuzz smoke run" >&2
    fuzz_log=$(mktemp)
    fuzz_status=0
    bash resources/fuzz.sh "${PALISADE_FUZZ_SECONDS:-15}" 2>&1 | tee "$fuzz_log" || fuzz_status=$?
    fuzz_line=$(grep '^fuzz: [0-9]* passed' "$fuzz_log" || true)
    if ((fuzz_status != 0)); then
        status=1
        # A fuzz run that died before its summary still counts as one failure.
        [[ -n $fuzz_line ]] || fuzz_line="fuzz: 0 passed, 1 failed"
    fi
    rm -f "$fuzz_log"
fi

# One closing line for the whole run (the last test binary may be a doc-test run of 0). A
# skipped test returns normally, so libtest counts it as passed: it moves to "skipped".
skipped=$(wc -l <"$skips")
if ((skipped > 0)); then
    echo "skipped tests:" >&2
    cat "$skips" >&2
fi
# A test binary that died (a signal, an abort) or did not build has no `test result:` line:
# each such binary counts as one failure, so a failed run never reads "0 failed".
awk -v s="$skipped" -v fz="$fuzz_line" -v st="$status" '
     /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1);
                                                   if ($(i) ~ /^failed/) f += $(i-1) } }
     /^test result: FAILED/ { failed_binaries++ }
     /^error: test failed, to rerun pass/ { died++ }
     /^error: could not compile/ { died++ }
     END { if (fz != "") { split(fz, w, " "); p += w[2]; f += w[4] }
           if (died > failed_binaries) f += died - failed_binaries
           if (st != 0 && f == 0) f = 1
           printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
exit "$status"
