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
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def write_rows(path, source, rows, **meta):
    """The rows of one benchmark, with when, where and under what load they were taken."""
    report = {"source": source,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": commit(), "load": os.getloadavg()[0], "rows": rows}
    report.update(meta)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
