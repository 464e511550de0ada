#!/usr/bin/env bash
# Builds the probe guest (release) and prints the absolute path of its ELF as the last line of
# stdout; progress goes to stderr. Then checks that the code reachable at CPL0 has none of the
# instructions this development host's KVM cannot emulate there (see GUEST.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
dir=$PWD

# A caller's flags (or those cargo sets for a build script that runs this) would replace the
# ones in .cargo/config.toml that make this a freestanding ELF.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET \
    CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR

cargo build --release --target-dir "$dir/target" >&2
elf="$dir/target/x86_64-unknown-linux-gnu/release/probe"

# CPL0 code: the .boot section plus every function reachable from the exception reporter.
check_cpl0_code() {
    local disassembly functions start end
    disassembly=$(objdump -d --no-show-raw-insn "$elf")
    functions=$(awk '
        /^[0-9a-f]+ <.*>:$/ { fn = substr($2, 2, length($2) - 3); next }
        fn != "" { body[fn] = body[fn] "\n" $0 }
        END {
            queue[1] = "probe_exception_report"; n = 1; seen["probe_exception_report"] = 1
            for (i = 1; i <= n; i++) {
                split(body[queue[i]], lines, "\n")
                for (j in lines) if (match(lines[j], /call +[0-9a-f]+ <[^>+]+>/)) {
                    target = substr(lines[j], RSTART, RLENGTH); sub(/.*</, "", target); sub(/>$/, "", target)
                    if (!(target in seen)) { seen[target] = 1; queue[++n] = target }
                }
            }
            for (f in seen) print f
        }' <<<"$disassembly")
    start=$(nm "$elf" | awk '$3 == "_start" { print "0x" $1 }')
    end=$(nm "$elf" | awk '$3 == "gdt" { print "0x" $1 }')   # the tables after it are data
    {
        objdump -d --no-show-raw-insn --start-address="$start" --stop-address="$end" "$elf"
        # int3 inside a Rust function's range is the padding after its last instruction.
        for f in $functions; do
            awk -v f="$f" '$0 ~ "^[0-9a-f]+ <" f ">:$" {p=1; next} /^$/ {p=0} p' <<<"$disassembly" |
                grep -v 'int3$'
        done
    } | grep -E 'xmm|ymm|zmm|popcnt|int3|fwait|xsave|xrstor|clac|stac|cmpxchg16b|vmcall|vmmcall' && {
        echo "build.sh: instructions that are not emulated at CPL0 here (see above)" >&2
        exit 1
    }
    return 0
}
if command -v objdump >/dev/null; then
    check_cpl0_code >&2
else
    echo "build.sh: objdump not found, CPL0 instruction check skipped" >&2
fi

echo "$elf"
