"""Shared by the side-by-side benchmarks (resources/*_bench.py, *_compare.py): one row format
for every figure, so that resources/bench_table.py can print them as one table.

A row: {"figure": "8", "label": "...", "unit": "ms", "better": "lower" | "higher",
"palisade": summary, "firecracker": summary or None, "ratio": P/F median or None}, where a
summary is {"median", "min", "max", "n", "values"}. Ratios are always Palisade / Firecracker;
`better` says which side of 1 is Palisade's win.
"""
import datetime
import json
import os
import statistics
import subprocess


def summary(values):
    """Median, min, max and the values themselves; None when nothing was measured."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "values": values}


def row(figure, label, unit, palisade, firecracker, better="lower"):
    """One figure of both VMMs (lists of samples; Firecracker's may be empty)."""
    p, f = summary(palisade or []), summary(firecracker or [])
    ratio = p["median"] / f["median"] if p and f and f["median"] else None
    return {"figure": figure, "label": label, "unit": unit, "better": better,
            "palisade": p, "firecracker": f, "ratio": ratio}


def commit():
    """This tree's commit, `+dirty` when tracked files differ from it."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("+dirty" if dirty else "") if r.returncode == 0 else "?"


def host_info():
    """CPUs, CPU model, which KVM (kvm_pvm: without hardware virtualization), kernel."""
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                     "?")
    kvm = "kvm_pvm (no hardware virtualization)" if os.path.isdir("/sys/module/kvm_pvm") else (
        "kvm_intel" if os.path.isdir("/sys/module/kvm_intel") else
        "kvm_amd" if os.path.isdir("/sys/module/kvm_amd") else "kvm")
    return {"cpus": os.cpu_count(), "cpu": model, "kvm": kvm, "kernel": os.uname().release}


def version(binary):
    """The first line `BINARY --version` prints."""
    r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    out = (r.stdout or r.stderr).strip()
    return out.splitlines()[0] if out else "?"


def tsc_mhz():
    """The TSC rate the probe guest times with (`probe.tsc_mhz=`), from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]))
    raise RuntimeError("no cpu MHz in /proc/cpuinfo")


def write_rows(path, source, rows, **meta):
    """The rows of one benchmark, with when, where and under what load they were taken."""
    report = {"source": source,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": commit(), "host": host_info(), "load": os.getloadavg()[0],
              "rows": rows}
    report.update(meta)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
