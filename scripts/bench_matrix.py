#!/usr/bin/env python3
"""Benchmark the default ``kvmharness run``: total wall time and time per scenario.

Not a pass/fail test.  The baseline measured in the same run is the pure
contended sampling time every scenario must spend (2 x --contend-ms per
scenario, plus the downtime): the ratio says how much the harness adds
around the measurement itself (VM setup, capture/restore, process start).

    scripts/bench_matrix.py [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from tabulate import tabulate

from kvmharness.cli.run import run_matrix, select
from kvmharness.scenarios.base import RunOptions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1, help="run the matrix N times (default 1)")
    p.add_argument("--contend-ms", type=int, default=150)
    p.add_argument("--downtime-ms", type=int, default=50)
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-' = stdout)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")

    per: dict[tuple[str, int], list[float]] = {}
    totals = []
    for i in range(args.repeat):
        t0 = time.monotonic()
        results = run_matrix(
            select(None, bisect=False), None, RunOptions(args.contend_ms, args.downtime_ms)
        )
        totals.append(time.monotonic() - t0)
        for r in results:
            per.setdefault((r.variant.name, r.vcpus), []).append(r.wall_s)
        print(f"run {i + 1}/{args.repeat}: {totals[-1]:.2f} s", file=sys.stderr)
    floor_s = (2 * args.contend_ms + args.downtime_ms) / 1000
    rows = []
    for (name, n), walls in per.items():
        med = statistics.median(walls)
        rows.append([name, n, f"{med:.3f}", f"{floor_s:.3f}", f"{med / floor_s:.2f}"])
    total = statistics.median(totals)
    floor_total = floor_s * len(per)
    rows.append(["TOTAL", "", f"{total:.3f}", f"{floor_total:.3f}", f"{total / floor_total:.2f}"])
    print(
        tabulate(
            rows,
            headers=["scenario", "vCPUs", "wall s (median)", "contended floor s", "ratio"],
            tablefmt="simple",
        )
    )
    payload = {
        "benchmark": "kvmharness run (default matrix)",
        "repeat": args.repeat,
        "total_wall_s": total,
        "floor_s": floor_total,
        "ratio": total / floor_total,
        "scenarios": [
            {"strategy": k[0], "vcpus": k[1], "wall_s": statistics.median(v), "floor_s": floor_s}
            for k, v in per.items()
        ],
    }
    if args.json == "-":
        print(json.dumps(payload, indent=2))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
