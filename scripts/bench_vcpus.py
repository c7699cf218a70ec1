#!/usr/bin/env python3
"""How the steal matrix's cost grows with the vCPU count.

One steal variant at fixed contention, run at 1, 4, 16 and 64 vCPUs (medians of
--repeat runs).  A scenario's wall time is the contended floor (two phases
plus the downtime) plus set-up and tear-down; the per-vCPU cost is
``(wall - floor) / vCPUs``.  The baseline is the 1-vCPU run measured in this
same benchmark.  The target: per-vCPU cost stays flat, within 1.5x of the
1-vCPU figure, from 1 to 64 vCPUs.  Prints a table and JSON; not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from tabulate import tabulate

from kvmharness.kvm import Kvm
from kvmharness.scenarios.steal import StealConfig, run_scenario


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="fresh-vm/vcpu-thread")
    p.add_argument("--vcpus", default="1,4,16,64")
    p.add_argument("--contend-ms", type=int, default=150)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-' = stdout)")
    args = p.parse_args(argv)
    counts = [int(v) for v in args.vcpus.split(",")]
    floor_s = (2 * args.contend_ms + 50) / 1000
    rows, figures = [], []
    with Kvm() as kvm:
        for n in counts:
            walls = []
            for _ in range(args.repeat):
                res = run_scenario(StealConfig(args.variant, n, args.contend_ms), kvm)
                if res.verdict not in ("holds", "characterized"):
                    print(f"{n} vCPUs: {res.verdict}: {res.observed}", file=sys.stderr)
                walls.append(res.wall_s)
            wall = statistics.median(walls)
            figures.append(
                {"vcpus": n, "wall_s": wall, "floor_s": floor_s, "per_vcpu_s": (wall - floor_s) / n}
            )
            print(f"{n} vCPUs: {wall:.3f} s", file=sys.stderr)
    base = figures[0]["per_vcpu_s"]
    prev = None
    for f in figures:
        f["per_vcpu_ratio"] = f["per_vcpu_s"] / base if base > 0 else None
        # marginal cost: what each added vCPU cost since the previous count
        f["marginal_ms"] = (
            None
            if prev is None
            else (f["wall_s"] - prev["wall_s"]) / (f["vcpus"] - prev["vcpus"]) * 1e3
        )
        prev = f
        rows.append(
            [
                f["vcpus"],
                f"{f['wall_s']:.3f}",
                f"{f['floor_s']:.3f}",
                f"{f['per_vcpu_s'] * 1e3:.1f}",
                "-" if f["per_vcpu_ratio"] is None else f"{f['per_vcpu_ratio']:.2f}",
                "-" if f["marginal_ms"] is None else f"{f['marginal_ms']:.1f}",
            ]
        )
    print(
        tabulate(
            rows,
            headers=[
                "vCPUs",
                "wall s (median)",
                "contended floor s",
                "per-vCPU ms",
                "per-vCPU ratio vs 1",
                "marginal ms per added vCPU",
            ],
            tablefmt="simple",
        )
    )
    payload = {
        "benchmark": "steal scenario cost per vCPU",
        "strategy": args.variant,
        "contend_ms": args.contend_ms,
        "repeat": args.repeat,
        "figures": figures,
        "target": "per-vCPU ratio <= 1.5 up to 64 vCPUs",
    }
    text = json.dumps(payload, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        from kvmharness.files import write_json

        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
