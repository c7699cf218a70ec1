#!/usr/bin/env python3
"""kvmclock reading costs: the guest's cost per kvmclock read against a read of
the raw TSC, in the same guest in the same run, and the warp scenario's reads
per second per vCPU at several vCPU counts.

Guest cost: one vCPU of the clock guest reads in batches of CLOCK_BATCH_MAX;
the guest timestamps each batch with an ordered rdtsc before and after, so
ns per read = batch ticks / reads / (KVM's TSC kHz / 1e6), with no exit in
it.  Modes alternate round by round: raw TSC (lfence; rdtsc; store),
kvmclock (version protocol, rdtsc, pvclock scale), and the warp scenario's
reading (kvmclock + vCPU 0's area + two shared-value compare-exchanges).
Each figure is the median over rounds; ratios are against raw TSC.

Warp throughput: the ``warp`` scenario at each vCPU count (default 1, 4, 16,
capped at GUEST_MAX_VCPUS, which the table says) for --phase-ms; reads/s
per vCPU counts time inside KVM_RUN (``in-guest``) and wall time of the
phase (``wall``).  This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tabulate import tabulate  # noqa: E402

from kvmharness.ffi import lib  # noqa: E402
from kvmharness.guest.machine import GuestVm  # noqa: E402
from kvmharness.kvm import Kvm  # noqa: E402
from kvmharness.scenarios.clock import ClockConfig, run_scenario  # noqa: E402
from kvmharness.scenarios.clock_reader import set_mode  # noqa: E402

MODES = {
    "raw TSC": lib.CLOCK_MODE_RAW_TSC,
    "kvmclock": 0,
    "kvmclock + warp/vDSO": lib.CLOCK_MODE_WARP | lib.CLOCK_MODE_VDSO,
}


def guest_costs(kvm: Kvm, rounds: int, batches: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {m: [] for m in MODES}
    with GuestVm(kvm, "clock", vcpus=1) as gvm:
        vcpu = gvm.vcpus[0]
        khz = vcpu.get_tsc_khz()
        set_mode(gvm, 0, lib.CLOCK_BATCH_MAX)
        gvm.expect(vcpu, lib.UCALL_SYNC)  # kvmclock enabled
        for r in range(rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for name in order:
                set_mode(gvm, MODES[name], lib.CLOCK_BATCH_MAX)
                gvm.expect(vcpu, lib.UCALL_SYNC)  # the first batch may straddle the change
                per = []
                for _ in range(batches):
                    args = gvm.expect(vcpu, lib.UCALL_SYNC).args
                    per.append((args[7] - args[6]) / args[1] / (khz / 1e6))
                out[name].append(statistics.median(per))
    med = {m: statistics.median(v) for m, v in out.items()}
    return {
        "tsc_khz": khz,
        "reads_per_batch": lib.CLOCK_BATCH_MAX,
        "rounds": rounds,
        "batches_per_round": batches,
        "ns_per_read": {
            m: {"median": med[m], "min": min(out[m]), "max": max(out[m])} for m in MODES
        },
        "ratio_over_raw_tsc": {m: med[m] / med["raw TSC"] for m in MODES},
    }


def warp_rates(kvm: Kvm, counts: list[int], phase_ms: int) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        res = run_scenario(ClockConfig("warp", n, phase_ms=phase_ms), kvm)
        reads = [len(r.samples) for r in res.records]
        rows.append(
            {
                "vcpus": n,
                "verdict": str(res.verdict),
                "reads": sum(reads),
                "in_guest_reads_per_s_per_vcpu": res.reads_per_s(),
                "wall_reads_per_s_per_vcpu": sum(reads) / n / (phase_ms / 1000),
                "warps": res.warps()[0],
                "largest_warp_ns": res.warps()[1],
                "vdso_warps": res.warps()[2],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=10, help="batches per mode per round")
    p.add_argument("--vcpus", default="1,4,16", help="vCPU counts for the warp rate")
    p.add_argument("--phase-ms", type=int, default=300)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-': stdout)")
    args = p.parse_args(argv)
    wanted = [int(x) for x in args.vcpus.split(",") if x.strip()]
    counts = sorted({min(n, lib.GUEST_MAX_VCPUS) for n in wanted})
    capped = [n for n in wanted if n > lib.GUEST_MAX_VCPUS]
    with Kvm() as kvm:
        costs = guest_costs(kvm, args.rounds, args.batches)
        rates = warp_rates(kvm, counts, args.phase_ms)
    print(
        f"guest cost per read (TSC {costs['tsc_khz']} kHz, batches of "
        f"{costs['reads_per_batch']}, median of {args.rounds} rounds)"
    )
    print(
        tabulate(
            [
                [
                    m,
                    f"{f['median']:.0f}",
                    f"{f['min']:.0f}",
                    f"{f['max']:.0f}",
                    f"{costs['ratio_over_raw_tsc'][m]:.2f}",
                ]
                for m, f in costs["ns_per_read"].items()
            ],
            headers=["read", "ns/read", "min", "max", "x raw TSC"],
        )
    )
    print()
    print(
        f"warp scenario, {args.phase_ms} ms phase"
        + (f" (asked for {capped}: GUEST_MAX_VCPUS is {lib.GUEST_MAX_VCPUS})" if capped else "")
    )
    print(
        tabulate(
            [
                [
                    r["vcpus"],
                    r["reads"],
                    f"{r['in_guest_reads_per_s_per_vcpu'] or 0:.0f}",
                    f"{r['wall_reads_per_s_per_vcpu']:.0f}",
                    r["warps"],
                    r["vdso_warps"],
                    r["verdict"],
                ]
                for r in rates
            ],
            headers=[
                "vCPUs",
                "reads",
                "reads/s/vCPU in-guest",
                "reads/s/vCPU wall",
                "warps",
                "vDSO warps",
                "verdict",
            ],
        )
    )
    result = {
        "kernel": platform.release(),
        "guest_cost": costs,
        "warp": rates,
        "guest_max_vcpus": lib.GUEST_MAX_VCPUS,
        "capped": capped,
    }
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
