#!/usr/bin/env bash
# MMDS request latency as the guest sees it: the probe guest's `mmds-bench` scenario (its own
# minimal TCP client, resources/probe/src/tcp_client.rs) against 169.254.169.254 on a tap in a
# network namespace made here (nothing leaves it), MMDS V2 on eth0. N token PUTs, then N GETs
# with a token, each a whole connection (SYN to the ACK of the guest's FIN), one at a time,
# timed in the guest with the TSC. Prints the medians and 99th percentiles, then the same as
# one JSON line. Needs root.
#   resources/mmds_bench.sh [PALISADE_BIN PROBE_ELF]   (default: build both, release)
# BENCH_MMDS_REQUESTS (default 200; PUTs and GETs: 2N connections). The VM's MMDS request
# rate limit is off here (`"rate_limiter": {}`): this measures the service's latency, not the
# limit (with the default limit, connections beyond its burst of 100 would wait for tokens).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ $# -ge 2 ]; then
    bin=$1 probe=$2
else
    cargo build --release --locked -q
    bin=$root/target/release/palisade
    probe=$(bash resources/probe/build.sh | tail -n 1)
fi
n=${BENCH_MMDS_REQUESTS:-200}
work=$(mktemp -d)
ns=palmmds$$
trap 'ip netns del "$ns" 2>/dev/null; rm -rf "$work"' EXIT
ip netns add "$ns"
ip netns exec "$ns" sh -c 'ip tuntap add dev tap0 mode tap && ip addr add 10.0.0.1/24 dev tap0 &&
    ip link set tap0 up && ip link set lo up'
tsc_mhz=$(awk -F: '/cpu MHz/ { printf "%d", $2; exit }' /proc/cpuinfo)
echo '{"latest": {"meta-data": {"instance-id": "i-bench"}}}' >"$work/metadata.json"
cat >"$work/mmds.json" <<JSON
{"boot-source": {"kernel_image_path": "$probe",
  "boot_args": "console=ttyS0 probe.run=mmds-bench probe.ip=10.0.0.2/24 probe.peer=169.254.169.254:80 probe.tsc_mhz=$tsc_mhz probe.count=$n"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
 "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
 "mmds-config": {"network_interfaces": ["eth0"], "rate_limiter": {}}}
JSON
ip netns exec "$ns" "$bin" --no-api --config-file "$work/mmds.json" --metadata "$work/metadata.json" \
    >"$work/mmds.out" 2>"$work/log" || { cat "$work/mmds.out" "$work/log" >&2; exit 1; }
line=$(grep "probe: mmds-bench ok" "$work/mmds.out") || { cat "$work/mmds.out" "$work/log" >&2; exit 1; }
case " $line " in
*" errors=0 "*) ;;
*) echo "mmds_bench: requests failed: $line" >&2; exit 1 ;;
esac
echo "$line" | awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "MMDS token PUT (connect+PUT+close)  median %6d us  p99 %6d us  (n=%d)\n", v["put_median_us"], v["put_p99_us"], v["n"]
    printf "MMDS GET with token (connect+GET+close)  median %6d us  p99 %6d us  (n=%d)\n", v["get_median_us"], v["get_p99_us"], v["n"]
    printf "{\"mmds\": {\"n\": %d, \"put_median_us\": %d, \"put_p99_us\": %d, \"get_median_us\": %d, \"get_p99_us\": %d, \"errors\": %d}}\n",
           v["n"], v["put_median_us"], v["put_p99_us"], v["get_median_us"], v["get_p99_us"], v["errors"] }'
