#!/usr/bin/env bash
# Benchmark command (README.md): boot figures of the probe guest under the release build.
# Prints, over N runs (default 20): the guest's boot time from the boot timer
# (Guest-boot-time, measured from the VMM's start to the guest's write), the wall time
# from exec to exit (boot, `hello` scenario, power-off) and the VMM's peak RSS.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
runs=${1:-20}
command -v /usr/bin/time >/dev/null || { apt-get update -q && apt-get install -y -q time; } >&2
cargo build --release --locked -q
bin=$root/target/release/palisade
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
echo "probe guest, 1 vCPU, 128 MiB, release build, $runs runs"
stats "guest boot time" ms <"$work/boot"
stats "exec to exit" ms <"$work/wall"
stats "VMM peak RSS" MiB <"$work/rss"
