#!/usr/bin/env bash
# Boots the test guest under QEMU's microvm machine, each console line prefixed with
# the seconds since QEMU started: the reference to compare Palisade's boot against.
# Usage: qemu-boot.sh [GUEST_DIR] [extra kernel args...]   (GUEST_DIR: build.sh output)
# Env: MEM (MiB, default 128), TIMEOUT (s, default 120).
# Needs qemu-system-x86 (apt-get install -y qemu-system-x86).
set -euo pipefail

dir=${1:-$("$(dirname "${BASH_SOURCE[0]}")/build.sh" | tail -n 1)}
shift || true
args="$(cat "$dir/boot_args") $*"
# -cpu host minus arch-capabilities: QEMU 7.2 cannot set MSR 0x10a on the dev host.
# -device i8042: reboot=k resets through it, which makes QEMU (-no-reboot) exit.
timeout "${TIMEOUT:-120}" qemu-system-x86_64 \
    -M microvm,x-option-roms=off,rtc=off,isa-serial=on -enable-kvm \
    -cpu host,-arch-capabilities -m "${MEM:-128}" -device i8042 \
    -kernel "$dir/vmlinux" -initrd "$dir/initramfs.cpio" -append "${args% }" \
    -nographic -no-reboot </dev/null 2>&1 |
    perl -MTime::HiRes=time -e '$t0 = time; $| = 1;
        while (<STDIN>) { printf "[%7.3f] %s", time - $t0, $_ }
        printf "[%7.3f] (qemu exited)\n", time - $t0'
