#!/usr/bin/env python3
"""Kernel-level time breakdown from an Nsight Compute CSV (one metric, gpu__time_duration.sum):

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file k.csv  wmtp run …
    python3 bench/gpu/ncu_summary.py k.csv [top]

Groups launches by kernel name (template arguments cut), prints total ms, launches and share, largest first.
"""
import csv
import re
import sys
from collections import defaultdict


def main():
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
    lines = open(path, errors="replace").read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    total, count = defaultdict(float), defaultdict(int)
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"<.*", "", row["Kernel Name"]).strip()
        v = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        scale = {"ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "nsecond": 1e-6}.get(unit, 1e-6)
        total[name] += v * scale
        count[name] += 1
    all_ms = sum(total.values())
    print(f"{sum(count.values())} launches, {all_ms:.1f} ms of kernel time")
    print("| kernel | ms | launches | share |\n|---|---|---|---|")
    for name, ms in sorted(total.items(), key=lambda x: -x[1])[:top]:
        print(f"| {name[:60]} | {ms:.1f} | {count[name]} | {100*ms/all_ms:.1f}% |")


if __name__ == "__main__":
    main()
