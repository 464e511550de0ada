#!/usr/bin/env bash
# Builds Palisade's Linux test guest from Debian packages only (see README.md here):
# a slim 6.1 kernel (tinyconfig + config-fragment + patches/), a busybox initramfs and
# ext4 root, and the boot arguments this host needs. Output:
#   $HOME/.cache/palisade/guest/<inputs hash>/{vmlinux,bzImage,initramfs.cpio,
#   rootfs.ext4,boot_args,manifest.json}
# An existing output with a manifest is reused. Progress goes to stderr; the last line
# on stdout is the output directory. The agent (agent/, Rust) is built static with the
# installed toolchain (cargo, x86_64-unknown-linux-gnu, Debian's libc6-dev static libs). Env: PALISADE_CACHE (default ~/.cache/palisade),
# PALISADE_JOBS (default 2).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${PALISADE_CACHE:-$HOME/.cache/palisade}
jobs=${PALISADE_JOBS:-2}
log() { printf 'guest-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- 1. Packages -------------------------------------------------------------------
packages=(linux-source-6.1 busybox-static build-essential bc bison flex libelf-dev
          libssl-dev cpio e2fsprogs lz4 libc6-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
linux_pkg=$(dpkg-query -W -f='${Version}' linux-source-6.1)
busybox_pkg=$(dpkg-query -W -f='${Version}' busybox-static)
libc_pkg=$(dpkg-query -W -f='${Version}' libc6-dev)
command -v cargo >/dev/null || die "cargo not found: the agent (agent/) is Rust"
rustc_version=$(rustc -V)

# --- 2. Inputs hash: reuse a finished output -----------------------------------------
sums=$(cd "$here" && sha256sum build.sh config-fragment boot_args init fstab patches/*.patch \
       checks/* agent/Cargo.toml agent/Cargo.lock agent/src/*.rs)
hash=$(printf '%s\nlinux-source-6.1 %s busybox-static %s libc6-dev %s %s\n' "$sums" \
       "$linux_pkg" "$busybox_pkg" "$libc_pkg" "$rustc_version" | sha256sum | cut -c1-16)
out=$cache/guest/$hash
# One build at a time per cache (tests may call this script in parallel).
mkdir -p "$cache/build"
exec 9>"$cache/guest-build.lock"
flock 9
if [[ -s $out/manifest.json ]]; then
    log "up to date"
    echo "$out"
    exit 0
fi
start=$SECONDS

# --- 2b. The agent: static, no ELF interpreter (the guest has no dynamic loader) -------
# relocation-model=static: a non-PIE static ELF (46 KiB smaller, no self-relocation at
# start). Static glibc is ~800 KiB of the ~1.2 MiB; the initramfs unpack copies each byte
# in emulated kernel code on the dev host.
agent_target=$cache/build/agent-target
log "building the agent (agent/, log: $agent_target.log)"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" nice -n 10 cargo build --release --locked \
    --manifest-path "$here/agent/Cargo.toml" --target x86_64-unknown-linux-gnu \
    --target-dir "$agent_target" >"$agent_target.log" 2>&1 ||
    { tail -n 40 "$agent_target.log" >&2; die "agent build failed"; }
agent=$agent_target/x86_64-unknown-linux-gnu/release/palisade-agent
if LC_ALL=C readelf -l "$agent" | grep -q 'INTERP'; then
    die "$agent is dynamically linked"
fi

# --- 3. Kernel tree: unpacked and patched once per (package, patch set) ------------
patches_hash=$(cat "$here"/patches/*.patch | sha256sum | cut -c1-12)
src=$cache/build/linux-$linux_pkg-$patches_hash
buildlog=$src.log
if [[ ! -e $src/.palisade-patched ]]; then
    log "unpacking linux-source-6.1 $linux_pkg into $src"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$src.tmp" --strip-components=1
    for p in "$here"/patches/*.patch; do
        log "applying patches/${p##*/}"
        patch -d "$src.tmp" -p1 --forward --quiet < "$p"
    done
    touch "$src.tmp/.palisade-patched"
    mv "$src.tmp" "$src"
fi

kmake() {
    nice -n 10 make -C "$src" ARCH=x86_64 -j"$jobs" "$@" >>"$buildlog" 2>&1 ||
        { tail -n 40 "$buildlog" >&2; die "make $* failed (log: $buildlog)"; }
}

# --- 4. Config: tinyconfig + fragment; every fragment line must survive -------------
: >"$buildlog"
log "configuring (log: $buildlog)"
kmake tinyconfig
(cd "$src" && scripts/kconfig/merge_config.sh -m .config "$here/config-fragment") \
    >>"$buildlog" 2>&1 || die "merge_config.sh failed (log: $buildlog)"
kmake olddefconfig
lost=()
while IFS= read -r line; do
    case $line in
        CONFIG_*=*)
            grep -qxF -- "$line" "$src/.config" || lost+=("$line") ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if grep -q "^$opt=" "$src/.config"; then lost+=("$line"); fi ;;
    esac
done <"$here/config-fragment"
((${#lost[@]} == 0)) || die "config lines that did not survive olddefconfig: ${lost[*]}"

# --- 5. Kernel -----------------------------------------------------------------------
log "building vmlinux and bzImage with make -j$jobs (several minutes on a cold tree)"
kmake vmlinux bzImage
release=$(make -s -C "$src" ARCH=x86_64 kernelrelease)

tmp=$out.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$src/vmlinux" "$tmp/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$src/.config" "$tmp/config"

# --- 6. Initramfs (uncompressed newc cpio) and ext4 root from busybox-static --------
log "building initramfs.cpio and rootfs.ext4"
gcc -O2 -o "$tmp/gen_init_cpio" "$src/usr/gen_init_cpio.c"
# busybox's shell runs its applets without links (standalone shell): only /bin/sh.
# Few entries: unpacking each one is emulated kernel work on the dev host.
cat >"$tmp/initramfs.list" <<EOF
dir /bin 755 0 0
dir /sbin 755 0 0
dir /etc 755 0 0
dir /dev 755 0 0
dir /proc 755 0 0
dir /sys 755 0 0
dir /tmp 1777 0 0
dir /root 700 0 0
nod /dev/console 600 0 0 c 5 1
file /bin/busybox /bin/busybox 755 0 0
file /bin/palisade-agent $agent 755 0 0
slink /bin/sh busybox 777 0 0
file /etc/fstab $here/fstab 644 0 0
file /init $here/init 755 0 0
dir /lib 755 0 0
dir /lib/palisade 755 0 0
dir /lib/palisade/checks 755 0 0
EOF
for c in "$here"/checks/*; do
    printf 'file /lib/palisade/checks/%s %s 644 0 0\n' "${c##*/}" "$c" >>"$tmp/initramfs.list"
done
"$tmp/gen_init_cpio" -t 0 "$tmp/initramfs.list" >"$tmp/initramfs.cpio"
rm "$tmp/gen_init_cpio" "$tmp/initramfs.list"

root=$tmp/rootfs
mkdir -p "$root"/{bin,sbin,etc,dev,proc,sys,tmp,root}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
cp "$agent" "$root/bin/palisade-agent"
ln -s busybox "$root/bin/sh"
cp "$here/init" "$root/sbin/init"
cp "$here/fstab" "$root/etc/fstab"
mkdir -p "$root/lib/palisade/checks"
cp "$here"/checks/* "$root/lib/palisade/checks/"
# Root on /dev/vda: the kernel mounts devtmpfs on /dev itself (DEVTMPFS_MOUNT).
mkfs.ext4 -q -F -L palisade-root -d "$root" "$tmp/rootfs.ext4" 32M >/dev/null
rm -rf "$root"

# --- 7. Boot args and manifest -------------------------------------------------------
boot_args=$(grep -v '^[[:space:]]*\(#\|$\)' "$here/boot_args" | tr '\n' ' ')
boot_args=${boot_args% }
printf '%s\n' "$boot_args" >"$tmp/boot_args"

files=(vmlinux bzImage initramfs.cpio rootfs.ext4 boot_args config)
{
    printf '{\n  "kernel_release": "%s",\n' "$release"
    printf '  "linux_source_package": "linux-source-6.1 %s",\n' "$linux_pkg"
    printf '  "busybox_package": "busybox-static %s",\n' "$busybox_pkg"
    printf '  "agent": {"rustc": "%s", "libc6_dev": "%s", "size": %d},\n' \
        "$rustc_version" "$libc_pkg" "$(stat -c %s "$agent")"
    printf '  "inputs_hash": "%s",\n' "$hash"
    printf '  "config_sha256": "%s",\n' "$(sha256sum <"$tmp/config" | cut -d' ' -f1)"
    printf '  "boot_args": "%s",\n' "$boot_args"
    printf '  "build_seconds": %d,\n  "files": {\n' $((SECONDS - start))
    sep=,
    for f in "${files[@]}"; do
        [[ $f == "${files[-1]}" ]] && sep=
        printf '    "%s": {"size": %d, "sha256": "%s"}%s\n' "$f" "$(stat -c %s "$tmp/$f")" \
            "$(sha256sum <"$tmp/$f" | cut -d' ' -f1)" "$sep"
    done
    printf '  }\n}\n'
} >"$tmp/manifest.json.part"
mv "$tmp/manifest.json.part" "$tmp/manifest.json"
rm -rf "$out"
mv "$tmp" "$out"
log "done in $((SECONDS - start)) s: linux $release"
echo "$out"
