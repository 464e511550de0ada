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
    ${FIRECRACKER_JAILER_BIN:+--firecracker-jailer "$FIRECRACKER_JAILER_BIN"}

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

# vsock: the probe guest's vsock-echo (20 host CONNECT -> OK round trips) then vsock-bench
# (BENCH_VSOCK_MIB each way, 16 KiB guest packets), Palisade without and with a policy (ports
# listed, per-connection and device rate limiters far above the traffic) and, when
# FIRECRACKER_BIN names a Firecracker binary, Firecracker in the same run, alternating; medians
# and the Palisade / Firecracker ratios (resources/vsock_bench.py).
python3 resources/vsock_bench.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} \
    --runs "${BENCH_VSOCK_RUNS:-5}" --mib "${BENCH_VSOCK_MIB:-256}"

# Snapshots: Full create and restore (load with resume_vm in a new process, and load to the
# guest running again) of the probe guest with all RAM written and of the Linux test guest at
# its shell, 128 MiB and 1 GiB; Palisade
# keyed (HMAC over state + memory size), keyed with hash_memory (SHA-256 of the memory file),
# and Firecracker when FIRECRACKER_BIN is set, alternating (resources/snapshot_bench.py).
# The Linux test guest too (built above).
python3 resources/snapshot_bench.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} \
    --runs "${BENCH_SNAPSHOT_RUNS:-5}" --mib 128 1024 --linux "$linux_guest"

# Network throughput: the probe guest on a tap in a network namespace made here (host side
# 10.0.0.1, guest 10.0.0.2; nothing leaves the namespace). Guest to host: net-tx, 1472-byte
# UDP payloads (1514-byte frames) to a closed port; host to guest: a Python sender in the
# namespace floods UDP port 5000 while net-rx counts. Firewall off (no guest_mac), on with
# 10 rules and on with 1,000 rules (the traffic matches the last one: a new flow scans them
# all, then its conntrack entry answers).
net_count=${BENCH_NET_FRAMES:-200000}
ns=palbench$$
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null; rm -rf "$work"' EXIT
ip netns exec "$ns" sh -c 'ip tuntap add dev tap0 mode tap && ip addr add 10.0.0.1/24 dev tap0 &&
    ip link set tap0 up && ip link set lo up'
tsc_mhz=$(awk -F: '/cpu MHz/ { printf "%d", $2; exit }' /proc/cpuinfo)
net_rules() { # count -> JSON rules: count-1 denies on other ports, then the allow
    python3 - "$1" <<'PY'
import json, sys
n = int(sys.argv[1])
rules = [{"action": "deny", "proto": "udp", "ports": str(10000 + i), "cidr": "10.0.0.0/24"} for i in range(n - 1)]
rules.append({"action": "allow", "proto": "udp", "cidr": "10.0.0.0/24"})
print(json.dumps(rules))
PY
}
net_run() { # name rules(0 = no firewall) scenario params
    local iface='"iface_id": "eth0", "host_dev_name": "tap0"'
    if [ "$2" -gt 0 ]; then
        local rules; rules=$(net_rules "$2")
        iface="$iface, \"guest_mac\": \"06:00:0a:00:00:02\", \"firewall\": {\"allowed_ips\": [\"10.0.0.2/32\"], \"egress\": $rules, \"ingress\": $rules, \"default_egress\": \"deny\"}"
    fi
    cat >"$work/net.json" <<JSON
{"boot-source": {"kernel_image_path": "$probe",
  "boot_args": "console=ttyS0 probe.run=$3 probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:9 probe.tsc_mhz=$tsc_mhz $4"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
 "network-interfaces": [{$iface}]}
JSON
    local sender=
    if [ "$3" = net-rx ]; then
        ip netns exec "$ns" python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 1472
end = time.time() + 25
while time.time() < end:
    try:
        for _ in range(1000):
            s.sendto(payload, ("10.0.0.2", 5000))
    except OSError:
        time.sleep(0.01)
' & sender=$!
    fi
    ip netns exec "$ns" "$bin" --no-api --config-file "$work/net.json" >"$work/net.out" 2>"$work/log" ||
        { cat "$work/net.out" "$work/log" >&2; exit 1; }
    [ -n "$sender" ] && { kill "$sender"; wait "$sender" 2>/dev/null || true; }
    local line; line=$(grep "probe: $3 ok" "$work/net.out") || { cat "$work/net.out" "$work/log" >&2; exit 1; }
    echo "$line" | awk -v name="$1" '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        n = ("sent" in v) ? v["sent"] : v["received"]
        printf "%-34s %9.0f frames/s  %7.1f Mbit/s  (%d frames)\n",
               name, n / (v["usecs"] / 1e6), n * 1514 * 8 / v["usecs"], n }'
}
echo "virtio-net, probe guest, 1514-byte frames, release build"
for rules in 0 10 1000; do
    label="firewall off"; [ "$rules" -gt 0 ] && label="firewall, $rules rules"
    net_run "guest->host, $label" "$rules" net-tx "probe.count=$net_count probe.size=1472"
    net_run "host->guest, $label" "$rules" net-rx "probe.count=$net_count probe.port=5000 probe.secs=15"
done

# Network side by side (resources/net_compare.py): 64/1514-byte frames both ways, firewall off/10/1,000/10,000 rules and Firecracker, VMM CPU per frame, ping RTT.
python3 resources/net_compare.py "$probe" "$bin" ${FIRECRACKER_BIN:+"$FIRECRACKER_BIN"} --runs "${BENCH_NET_RUNS:-11}" ${BENCH_NET_JSON:+--json "$BENCH_NET_JSON"}

# MMDS: request latency seen from the probe guest (token PUT, GET with a token; a whole
# connection each), resources/mmds_bench.sh in a namespace of its own.
echo "MMDS, probe guest, release build"
bash resources/mmds_bench.sh "$bin" "$probe"
