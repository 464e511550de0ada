#!/usr/bin/env bash
# Set-up and main job (README.md): installs what is missing, builds Palisade, its jailer and
# the test guests, then boots a jailed, firewalled guest: the probe guest runs inside
# palisade-jailer (chroot, namespaces, cgroups, Landlock, dropped privileges, seccomp) on a tap
# device in a network namespace of its own, sends honest and spoofed traffic, and the firewall
# in its virtio-net device drops and counts the spoofed frames. Then the Linux guest boots.
# Needs root and /dev/kvm. Cleans up after itself.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

need=()
for tool in ip curl setpriv python3; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 curl util-linux python3 >&2
fi
cargo build --release --locked -p palisade -p palisade-jailer
vmm=$root/target/release/palisade
jailer=$root/target/release/palisade-jailer
probe=$(bash resources/probe/build.sh | tail -n 1)
guest=$(bash resources/guest/build.sh | tail -n 1)

id=demo-$$
ns=palisade-demo-$$
base=$(mktemp -d /srv/palisade-demo.XXXXXX 2>/dev/null || mktemp -d)
jail=$base/palisade/$id/root
uid=10000
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$base"
}
trap cleanup EXIT

echo "== network namespace $ns: tap0 10.0.0.1/24 for the guest (10.0.0.2), owned by uid $uid" >&2
ip netns add "$ns"
ip netns exec "$ns" ip tuntap add dev tap0 mode tap user "$uid"
ip netns exec "$ns" ip addr add 10.0.0.1/24 dev tap0
ip netns exec "$ns" ip link set tap0 up

echo "== jail $jail" >&2
mkdir -p "$jail"
cp "$probe" "$jail/probe.elf"
for lib in $(ldd "$vmm" | grep -o '/[^ ]*'); do
    mkdir -p "$jail$(dirname "$lib")" && cp "$lib" "$jail$lib"
done
tsc_mhz=$(awk -F: '/cpu MHz/ {printf "%d", $2; exit}' /proc/cpuinfo)
cat >"$jail/vm.json" <<JSON
{
  "boot-source": {
    "kernel_image_path": "/probe.elf",
    "boot_args": "console=ttyS0 probe.run=hello,net-spoof probe.ip=10.0.0.2/24 probe.peer=10.0.0.1:7000 probe.count=5 probe.tsc_mhz=${tsc_mhz:-2000}"
  },
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
  "network-interfaces": [{
    "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:00:00:02",
    "firewall": {
      "allowed_ips": ["10.0.0.2/32"],
      "egress": [{"action": "allow", "proto": "udp", "cidr": "10.0.0.1/32", "ports": "7000"}],
      "default_egress": "deny", "default_ingress": "deny"
    }
  }]
}
JSON
chown -R "$uid:$uid" "$jail"

# The host side listens for the guest's datagrams (only inside the namespace).
ip netns exec "$ns" python3 - >"$base/received" <<'PY' &
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.0.0.1", 7000))
s.settimeout(20)
try:
    while True:
        data, peer = s.recvfrom(2048)
        print(peer[0], data[:40])
        if data.startswith(b"probe-end"):
            break
except socket.timeout:
    pass
PY
listener=$!
sleep 0.5

echo "== jailed, firewalled probe guest" >&2
"$jailer" --id "$id" --exec-file "$vmm" --uid "$uid" --gid "$uid" --chroot-base-dir "$base" \
    --netns "/run/netns/$ns" --new-pid-ns --cgroup pids.max=64 \
    -- --no-api --boot-timer --config-file /vm.json --metrics-path /metrics.jsonl
wait "$listener" || true
echo "== the host side received (spoofed frames never arrive):" >&2
cat "$base/received" >&2
python3 - "$jail/metrics.jsonl" <<'PY' >&2
import json, sys
totals = {}
for line in open(sys.argv[1]):
    for key, value in json.loads(line).get("net_eth0", {}).items():
        if key.startswith("fw_") and isinstance(value, int):
            totals[key] = totals.get(key, 0) + value
print("firewall drops by reason:", {k: v for k, v in sorted(totals.items()) if v})
PY

echo "== Linux guest (1 vCPU, 128 MiB; ~12 s on a host without VMX/SVM)" >&2
work=$base/linux
mkdir -p "$work"
cat >"$work/linux.json" <<JSON
{"boot-source": {"kernel_image_path": "$guest/vmlinux", "initrd_path": "$guest/initramfs.cpio",
                 "boot_args": "$(cat "$guest/boot_args") palisade.test=info"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
JSON
"$vmm" --no-api --boot-timer --config-file "$work/linux.json"
