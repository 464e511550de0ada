#!/usr/bin/env bash
# Benchmark command (README.md): boot figures of the probe guest under the release build.
# Prints, over N runs (default 20): the guest's boot time from the boot timer
# (Guest-boot-time, measured from the VMM's start to the guest's write), the wall time
# from exec to exit (boot, `hello` scenario, power-off) and the VMM's peak RSS.
# Then Palisade beside Firecracker (resources/compare_bench.py; Firecracker's column when
# FIRECRACKER_BIN is set), virtio-blk, vsock and snapshots (against Firecracker when FIRECRACKER_BIN is set) and virtio-net
# throughput and MMDS request latency (root: the network parts make namespaces).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
runs=${1:-20}
command -v /usr/bin/time >/dev/null || { apt-get update -q && apt-get install -y -q time; } >&2
cargo build --release --locked -q -p palisade -p palisade-jailer
# The VMM measured: the static-pie build (`cargo release-static`: no dynamic loader at exec)
# when this host links it, else the plain release build; the boot figures and
# compare_bench.py name it in their headers.
if cargo release-static -q 2>/dev/null; then
    bin=$root/target/x86_64-unknown-linux-gnu/release/palisade link=static-pie
else
    bin=$root/target/release/palisade link=dynamic
fi
probe=$(bash resources/probe/build.sh | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Every side-by-side benchmark writes its figures as JSON here; the last step prints them as
# one table (resources/bench_table.py).
out=${BENCH_OUT:-/tmp/palisade-bench}
mkdir -p "$out"
rm -f "$out"/*.json
cat >"$work/vm.json" <<JSON
{"boot-source": {"kernel_image_path": "$probe", "boot_args": "console=ttyS0 probe.run=hello"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
JSON

stats() { # name unit < values
    sort -n | awk -v name="$1" -v unit="$2" '{v[NR]=$1} END {
        printf "%-22s median %8.1f %s  min %8.1f  max %8.1f  (n=%d)\n",
               name, v[int((NR+1)/2)], unit, v[1], v[NR], NR }'
}

: >"$work/boot"; : >"$work/wall"; : >"$work/rss"
for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    /usr/bin/env time -f '%M' -o "$work/rss1" \
        "$bin" --no-api --boot-timer --config-file "$work/vm.json" >/dev/null 2>"$work/log" ||
        { cat "$work/log" >&2; exit 1; }
    end=$(date +%s%N)
    sed -n 's/.*Guest-boot-time = *\([0-9]*\) us.*/\1/p' "$work/log" | awk '{print $1/1000}' >>"$work/boot"
    echo $(( (end - start) / 1000 )) | awk '{print $1/1000}' >>"$work/wall"
    tail -n 1 "$work/rss1" | awk '{print $1/1024}' >>"$work/rss"
done
echo "probe guest, 1 vCPU, 128 MiB, release build ($link: $bin), $runs runs"
stats "guest boot time" ms <"$work/boot"
stats "exec to exit" ms <"$work/wall"
stats "VMM peak RSS" MiB <"$work/rss"

# Side by side with Firecracker (issue 16, figures 1-4 and 7; resources/compare_bench.py):
# API socket answering (wall, CPU), API-flow and config-file boot to the boot timer, exec to
# exit, memory outside guest RAM (idle, peak), 50 guests at once, the jailers' start to API
# socket; alternating, medians of BENCH_COMPARE_QUICK_RUNS (default 51) for the timings of
# one VMM, BENCH_COMPARE_RUNS (default 11) for memory and density. Palisade's column only
# without FIRECRACKER_BIN; FIRECRACKER_JAILER_BIN adds Firecracker's jailer. JSON to
# BENCH_COMPARE_JSON (default /tmp/palisade-compare-bench.json).
# Also the Linux test guest's exec to user space (built or taken from its cache by
# resources/guest/build.sh; BENCH_COMPARE_LINUX_RUNS rounds, default 11, ~13 s a boot here).
linux_guest=$(bash resources/guest/build.sh | tail -n 1)
python3 resources/compare_bench.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} \
    --runs "${BENCH_COMPARE_RUNS:-11}" --quick-runs "${BENCH_COMPARE_QUICK_RUNS:-51}" \
    --density "${BENCH_DENSITY:-50}" \
    --linux "$linux_guest" --linux-runs "${BENCH_COMPARE_LINUX_RUNS:-11}" \
    --palisade-jailer "$root/target/release/palisade-jailer" \
    ${FIRECRACKER_JAILER_BIN:+--firecracker-jailer "$FIRECRACKER_JAILER_BIN"} \
    --json "$out/compare.json"

# Block throughput: the probe guest's sequential read, then write, of a whole drive file
# (blk-bench, 1 MiB per request, one request in flight), without and with a rate limiter.
# The guest prints a line before and after each pass; the host timestamps the lines.
disk_mib=${BENCH_DISK_MIB:-256}
head -c "${disk_mib}M" /dev/urandom >"$work/disk.img"
blk_run() { # name rate_limiter_json
    cat >"$work/blk.json" <<JSON
{"boot-source": {"kernel_image_path": "$probe",
                 "boot_args": "console=ttyS0 probe.run=blk-bench probe.blk_chunk=1024"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
 "drives": [{"drive_id": "bench", "path_on_host": "$work/disk.img", "is_root_device": false,
             "is_read_only": false, "cache_type": "Writeback"$2}]}
JSON
    "$bin" --no-api --config-file "$work/blk.json" 2>"$work/log" |
        while IFS= read -r line; do echo "$(date +%s%N) $line"; done >"$work/blk.out" ||
        { cat "$work/log" >&2; exit 1; }
    grep -q 'probe: blk-bench ok' "$work/blk.out" || { cat "$work/blk.out" "$work/log" >&2; exit 1; }
    awk -v name="$1" -v mib="$disk_mib" '
        / blk-bench read-start/  { rs = $1 } / blk-bench read-done/  { rd = $1 }
        / blk-bench write-start/ { ws = $1 } / blk-bench write-done/ { wd = $1 }
        END { printf "%-34s read %8.1f MiB/s  write %8.1f MiB/s  (%d MiB)\n",
                     name, mib / ((rd - rs) / 1e9), mib / ((wd - ws) / 1e9), mib }' "$work/blk.out"
}
echo "virtio-blk, probe guest, sequential, 1 MiB requests, Writeback, release build"
blk_run "no limiter" ""
blk_run "limiter 100 MiB/s (10 MiB / 100 ms)" \
    ', "rate_limiter": {"bandwidth": {"size": 10485760, "refill_time": 100}}'
blk_run "limiter 20 MiB/s (2 MiB / 100 ms)" \
    ', "rate_limiter": {"bandwidth": {"size": 2097152, "refill_time": 100}}'
python3 resources/blk_compare.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} --runs "${BENCH_BLK_RUNS:-11}" --engines Sync Async --json "$out/blk.json" # figure 6

# vsock: the probe guest's vsock-echo (20 host CONNECT -> OK round trips) then vsock-bench
# (BENCH_VSOCK_MIB each way, 16 KiB guest packets), Palisade without and with a policy (ports
# listed, per-connection and device rate limiters far above the traffic) and, when
# FIRECRACKER_BIN names a Firecracker binary, Firecracker in the same run, alternating; medians
# and the Palisade / Firecracker ratios (resources/vsock_bench.py).
python3 resources/vsock_bench.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} \
    --runs "${BENCH_VSOCK_RUNS:-5}" --mib "${BENCH_VSOCK_MIB:-256}" --json "$out/vsock.json"

# Snapshots: Full create and restore (load with resume_vm in a new process, and load to the
# guest running again) of the probe guest with all RAM written and of the Linux test guest at
# its shell, 128 MiB and 1 GiB; Palisade
# keyed (HMAC over state + memory size), keyed with hash_memory (SHA-256 of the memory file),
# and Firecracker when FIRECRACKER_BIN is set, alternating (resources/snapshot_bench.py).
# The Linux test guest too (built above).
python3 resources/snapshot_bench.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} \
    --runs "${BENCH_SNAPSHOT_RUNS:-5}" --mib 128 1024 --linux "$linux_guest" \
    --json "$out/snapshot.json"

# Network (figure 5, resources/net_compare.py; root: it makes a namespace with a tap): the
# probe guest's frames/s and Mbit/s both ways, 64- and 1514-byte frames, firewall off / 10 /
# 1,000 / 10,000 rules and Firecracker, alternating; VMM CPU per frame, ping RTT.
python3 resources/net_compare.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} --runs "${BENCH_NET_RUNS:-11}" --json "$out/net.json"

# MMDS: request latency seen from the probe guest (token PUT, GET with a token; a whole
# connection each), resources/mmds_bench.sh in a namespace of its own.
echo "MMDS, probe guest, release build"
bash resources/mmds_bench.sh "$bin" "$probe"

# Every side-by-side figure in one table (the README's), from the JSON files above.
echo "All figures, Palisade beside Firecracker (JSON in $out)"
python3 resources/bench_table.py "$out"/compare.json "$out"/net.json "$out"/blk.json \
    "$out"/vsock.json "$out"/snapshot.json
