#!/usr/bin/env bash
# The hostile suite (issue 11), one command: attacks a running Palisade from inside its guests
# (the probe guest's blk-flood, virtio-hostile, chain-hostile, net-hostile, net-forge, net-flood,
# vsock-hostile, vsock-stall and vsock-many scenarios, and host clients stuck in their vsock
# CONNECT line; tests/hostile.rs), and hostile snapshot state files (a real state file sealed
# again without a key with one field changed per case, each loaded into a fresh VMM;
# tests/hostile/snapshot.rs) while measuring the API socket's latency, the VMM's memory and
# its metrics; then from its API socket (tests/api.rs: pipelining, header floods, oversized
# bodies, slowloris, 10,000 requests, refused uids, Pause/Resume storms) and on the jailer
# (jailer/tests/: planted links, FIFOs, symlinks, inherited descriptors, the jail probe's
# escape attempts). Prints one table:
#   attack | expected | observed | pass/fail
# Needs root (network namespaces, taps) and /dev/kvm; when either is missing it fails, it never
# passes. Builds the debug profile (what `cargo test` builds; latencies in release are lower).
# Exits non-zero when any attack was not held.
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

# Attacks from the API socket (tests/api.rs) and on the jailer (jailer/tests/): each test
# states in its name the behaviour it proves; its verdict becomes a row.
rows_from_tests() {
    local group=$1 log=$2
    sed -n 's/^test \([a-z0-9_]*\) \.\.\. \(ok\|FAILED\)$/\1 \2/p' "$log" |
        while read -r name verdict; do
            result=pass
            [[ $verdict == ok ]] || result=FAIL
            printf '%s: %s\tas the name says\ttest %s\t%s\n' "$group" "${name//_/ }" "$verdict" \
                "$result" >>"$table"
        done
}
api_log=$(mktemp)
jail_log=$(mktemp)
trap 'rm -f "$table" "$api_log" "$jail_log"' EXIT
PALISADE_NO_SKIP=1 PALISADE_PROBE="$probe" cargo test --test api -- \
    pipelined header_floods ambiguous_framing a_body_over_the_limit slowloris \
    ten_thousand_requests refused_uid_peers pause_resume_storms silent_and_half_sent \
    bad_requests a_thousand_sequential 2>&1 | tee "$api_log" || status=1
rows_from_tests api "$api_log"
PALISADE_NO_SKIP=1 cargo test -p palisade-jailer --test staged_paths --test jail_probe \
    --test boot_vmm 2>&1 | tee "$jail_log" || status=1
rows_from_tests jailer "$jail_log"

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
