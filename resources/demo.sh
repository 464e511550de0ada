#!/usr/bin/env bash
# Set-up and main job (README.md): installs what is missing, builds Palisade and the test
# guests, then boots the probe guest and the Linux guest under Palisade.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if ! command -v cargo >/dev/null; then
    echo "cargo is required (Rust toolchain)" >&2
    exit 1
fi
cargo build --release --locked
bin=$root/target/release/palisade
probe=$(bash resources/probe/build.sh | tail -n 1)
guest=$(bash resources/guest/build.sh | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/probe.json" <<JSON
{"boot-source": {"kernel_image_path": "$probe", "boot_args": "console=ttyS0 probe.run=hello,cpus,mem"},
 "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}}
JSON
echo "== probe guest (2 vCPUs, 256 MiB)" >&2
"$bin" --no-api --boot-timer --config-file "$work/probe.json"

cat >"$work/linux.json" <<JSON
{"boot-source": {"kernel_image_path": "$guest/vmlinux", "initrd_path": "$guest/initramfs.cpio",
                 "boot_args": "$(cat "$guest/boot_args")"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
JSON
echo "== Linux guest (1 vCPU, 128 MiB; ~30 s on a host without VMX/SVM)" >&2
"$bin" --no-api --boot-timer --config-file "$work/linux.json"
