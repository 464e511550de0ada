#!/usr/bin/env python3
"""Figure 6 of the benchmark command (resources/bench.sh), side by side: the probe guest's
blk-iops scenario (4 KiB requests: sequential read, random read, sequential write, random
write, each pass timed by the guest's TSC) on one drive under Palisade and, when a Firecracker
binary is given, under Firecracker, for each --engines io_engine and each --qd queue depth
(requests in flight), alternating: every round boots each setup once per queue depth, in an
order that rotates from round to round. Stdlib only.

    blk_compare.py PROBE_ELF PALISADE_BIN [FIRECRACKER_BIN] [--runs N] [--ops OPS]
                   [--qd 1 32] [--engines Sync Async]
                   [--palisade-engines Sync] [--mib MIB] [--dir DIR] [--json OUT]

The drive is one file of MIB MiB of random bytes made in DIR (default: a temporary directory
under /var/tmp, on the host's disk; the file system is printed), shared by every boot and
opened with each VMM's default cache mode (`cache_type` Unsafe, no O_DIRECT: the host page
cache serves it; the page cache is not dropped between passes, so after the first boot the
file is cached for every setup alike). Random offsets come from the probe's fixed-seed PRNG:
the same sequence under both VMMs. Prints the median [min-max] of IOPS and MiB/s over N
rounds and the Palisade / Firecracker ratio per engine (above 1: Palisade faster);
--json (or BLK_COMPARE_JSON) names a file for the figure-6 rows (resources/benchlib.py: IOPS
per engine, pattern and queue depth; MiB/s is IOPS x 4 KiB) with every sample.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib  # noqa: E402
import net_compare  # noqa: E402  (Vmm's serial reader; puts probe/ on sys.path)
import vsock_peer  # noqa: E402

vsock_peer.TIMEOUT = 300
PASSES = ("seqread", "randread", "seqwrite", "randwrite")


class Vmm(net_compare.Vmm):
    """One VMM with the probe and the drive `disk`; the serial lines in `lines`."""

    def __init__(self, setup, elf, disk, boot_args, workdir):
        kind, _, binary, engine = setup
        config = {
            "boot-source": {"kernel_image_path": elf,
                            "boot_args": "console=ttyS0 reboot=k panic=1 "
                                         f"probe.tsc_mhz={benchlib.tsc_mhz()} " + boot_args},
            "drives": [{"drive_id": "bench", "path_on_host": disk, "is_root_device": False,
                        "is_read_only": False, "cache_type": "Unsafe", "io_engine": engine}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        }
        path = os.path.join(workdir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        cmd = [binary, "--no-api", "--config-file", path]
        if kind == "firecracker":
            cmd += ["--level", "Warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=workdir)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()


def one_boot(setup, elf, disk, ops, qd):
    """{PASS_iops: ...} of one boot at queue depth `qd`."""
    args = f"probe.run=blk-iops probe.count={ops} probe.blk_kib=4 probe.blk_qd={qd}"
    with tempfile.TemporaryDirectory() as d:
        vm = Vmm(setup, elf, disk, args, d)
        try:
            out = {}
            for p in PASSES:
                _, line = vm.wait_for(f"probe: blk-iops {p}-done")
                f = vsock_peer.fields(line)
                out[f"{p}_qd{qd}"] = int(f["ops"]) * 1e6 / max(int(f["usecs"]), 1)
            vm.wait_for("probe: blk-iops ok")
            return out
        except Exception:
            sys.stderr.write(f"{setup[1]}:\n" + "\n".join(x for x in vm.lines if x) + "\n")
            raise
        finally:
            vm.stop()


def fs_type(path):
    out = subprocess.run(["df", "--output=fstype", path], capture_output=True, text=True,
                         check=False).stdout.split()
    return out[-1] if out else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe")
    ap.add_argument("palisade")
    ap.add_argument("firecracker", nargs="?")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--qd", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--engines", nargs="+", default=["Sync", "Async"], choices=["Sync", "Async"])
    ap.add_argument("--palisade-engines", nargs="+", choices=["Sync", "Async"],
                    help="Palisade's engines when not those of --engines")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--json", default=os.environ.get("BLK_COMPARE_JSON"))
    a = ap.parse_args()
    elf = os.path.abspath(a.probe)
    setups = [("palisade", f"Palisade {e}", os.path.abspath(a.palisade), e) for e in a.palisade_engines or a.engines]
    if a.firecracker:
        setups += [("firecracker", f"Firecracker {e}", os.path.abspath(a.firecracker), e)
                   for e in a.engines]
    samples = {s[1]: {} for s in setups}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            for _ in range(a.mib):
                f.write(os.urandom(1 << 20))
        fs = fs_type(disk)
        for r in range(a.runs):
            order = setups[r % len(setups):] + setups[:r % len(setups)]
            for qd in a.qd:
                for s in order:
                    for k, v in one_boot(s, elf, disk, a.ops, qd).items():
                        samples[s[1]].setdefault(k, []).append(v)
            load.append(os.getloadavg()[0])
    report(a, setups, samples, load, fs)


def report(a, setups, samples, load, fs):
    names = [s[1] for s in setups]
    print(f"virtio-blk, probe guest blk-iops, 4 KiB requests, {a.ops} per pass, {a.mib} MiB "
          f"file on {fs} (host page cache, Unsafe), 1 vCPU, release builds, medians "
          f"[min-max] of {a.runs} alternating rounds, load average {min(load):.1f}-"
          f"{max(load):.1f}")
    fc_pairs = [(f"Palisade {e}", f"Firecracker {e}") for e in a.engines
                if f"Palisade {e}" in names and f"Firecracker {e}" in names]
    head = f"{'':22}" + "".join(f"{n:>26}" for n in names)
    head += "".join(f"{'P/F ' + p.split()[1]:>11}" for p, _ in fc_pairs)
    print(head)
    med = {n: {k: statistics.median(v) for k, v in samples[n].items()} for n in names}
    for qd in a.qd:
        for p in PASSES:
            key = f"{p}_qd{qd}"
            for unit, scale in (("kIOPS", 1e-3), ("MiB/s", 4 / 1024)):
                line = f"{p + ' qd' + str(qd) + ' ' + unit:22}"
                for n in names:
                    xs = samples[n][key]
                    line += (f"{med[n][key] * scale:10.1f} [{min(xs) * scale:6.1f}-"
                             f"{max(xs) * scale:6.1f}]")
                if unit == "kIOPS":
                    for pn, fn in fc_pairs:
                        line += f"{med[pn][key] / med[fn][key]:11.2f}"
                print(line)
    if fc_pairs:
        print("(P/F: Palisade / Firecracker with the same engine; above 1 is faster)")
    if a.json:
        rows = []
        for e in a.engines:
            p, f = samples.get(f"Palisade {e}"), samples.get(f"Firecracker {e}")
            if p is None:
                continue
            for qd in a.qd:
                for ps in PASSES:
                    key = f"{ps}_qd{qd}"
                    rows.append(benchlib.row(
                        "6", f"block {e} 4 KiB {ps} qd{qd}", "kIOPS",
                        [v / 1e3 for v in p[key]], [v / 1e3 for v in (f or {}).get(key, [])],
                        better="higher"))
        benchlib.write_rows(a.json, "blk_compare", rows, runs=a.runs, ops=a.ops, fs=fs,
                            load_range=[min(load), max(load)], samples=samples)


if __name__ == "__main__":
    main()
