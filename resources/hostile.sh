#!/usr/bin/env bash
# The hostile suite (issue 11): attacks a running Palisade from inside its guests (the probe
# guest's blk-flood, virtio-hostile, net-hostile, net-forge and net-flood scenarios) while
# measuring the API socket's latency, the VMM's memory and its metrics, then prints one table:
#   attack | expected | observed | pass/fail
# Needs root (network namespaces, taps) and /dev/kvm; when either is missing it fails, it never
# passes. Builds the debug profile (what `cargo test` builds; latencies in release are lower).
# Exit status: that of `cargo test --test hostile`.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "hostile.sh: needs root (network namespaces and tap devices)" >&2
    exit 1
fi
if ! [[ -r /dev/kvm && -w /dev/kvm ]]; then
    echo "hostile.sh: needs a usable /dev/kvm" >&2
    exit 1
fi

probe=$(bash resources/probe/build.sh | tail -n 1) || {
    echo "hostile.sh: the probe guest did not build" >&2
    exit 1
}
table=$(mktemp /tmp/palisade-hostile.XXXXXX.tsv)
trap 'rm -f "$table"' EXIT

# A test that cannot run fails instead of printing SKIPPED.
PALISADE_NO_SKIP=1 PALISADE_PROBE="$probe" PALISADE_HOSTILE_TABLE="$table" \
    cargo test --test hostile -- --test-threads=1 --nocapture
status=$?

echo
echo "== Palisade hostile suite =="
{
    printf 'ATTACK\tEXPECTED\tOBSERVED\tRESULT\n'
    cat "$table"
} | column -t -s $'\t' -o ' | '
rows=$(wc -l <"$table")
failed=$(awk -F'\t' '$4 != "pass"' "$table" | wc -l)
echo "$rows attacks, $failed failed; cargo test exit status $status"
if [[ $rows -eq 0 ]]; then
    echo "hostile.sh: no attack ran" >&2
    exit 1
fi
exit "$status"
