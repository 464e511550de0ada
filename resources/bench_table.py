#!/usr/bin/env python3
"""One table of every side-by-side figure (issue 16), from the JSON files the benchmarks write
(resources/compare_bench.py's `figures`, and the `rows` of net_compare.py, blk_compare.py,
vsock_bench.py and snapshot_bench.py; resources/benchlib.py has the row format). Stdlib only.

    bench_table.py JSON... [--markdown]

Prints figure, Palisade median [min-max], Firecracker's, the ratio P/F and whether Palisade
is ahead (below 1 for times, CPU and memory; above 1 for throughput), behind, or level (the
ratio within 5 %). Files that are missing
are named and skipped (a benchmark that did not run), never filled in.
"""
import argparse
import json
import os
import sys


def fmt(s, unit):
    if not s:
        return "-"
    big = max(abs(s["median"]), abs(s["max"]))
    d = 0 if big >= 1000 else 1 if big >= 10 else 2
    return f"{s['median']:.{d}f} [{s['min']:.{d}f}-{s['max']:.{d}f}]" + (f" {unit}" if unit else "")


def rows_of(report):
    if "rows" in report:
        return report["rows"]
    # compare_bench.py: {"figures": {key: {figure, label, unit, palisade, firecracker, ratio}}}
    return [dict(v, better="lower") for v in report.get("figures", {}).values()]


def verdict(r):
    """ahead / behind for Palisade, or level within 5 % (the medians' noise here is wider)."""
    if r.get("ratio") is None:
        return ""
    if 0.95 <= r["ratio"] <= 1.05:
        return "level"
    ahead = r["ratio"] < 1 if r.get("better", "lower") == "lower" else r["ratio"] > 1
    return "ahead" if ahead else "behind"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--markdown", action="store_true", help="a README table")
    a = ap.parse_args()
    rows, heads, reports = [], [], []
    for path in a.json:
        if not os.path.exists(path):
            print(f"(no {path}: that benchmark did not run)", file=sys.stderr)
            continue
        with open(path) as f:
            report = json.load(f)
        reports.append(report)
        load = report.get("load")
        if isinstance(load, list):
            load = max(float(x) for x in load) if load else None
        heads.append(f"{os.path.basename(path)}: {report.get('date', '?')}, commit "
                     f"{report.get('commit', '?')}" +
                     (f", load {float(load):.1f}" if load is not None else ""))
        rows += rows_of(report)
    host = next((r["host"] for r in reports if r.get("host")), None)
    if host:
        print(f"host: {host['cpus']} CPUs ({host['cpu']}), {host['kvm']}, "
              f"Linux {host['kernel']}")
    for h in heads:
        print(h)
    if a.markdown:
        print("\n| fig | figure | Palisade | Firecracker | P/F | |\n|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        cells = [r["figure"], r["label"], fmt(r["palisade"], r["unit"]),
                 fmt(r["firecracker"], r["unit"]), ratio, verdict(r)]
        if a.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:4}{cells[1][:44]:45}{cells[2]:>28}{cells[3]:>28}{cells[4]:>6} "
                  f"{cells[5]}")


if __name__ == "__main__":
    main()
