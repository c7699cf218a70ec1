#!/usr/bin/env python3
"""Cost of blocktime accounting, and pages placed per second on real KVM.

Part 1, pure: the accountant (kvmharness.blocktime.BlocktimeAccountant) at
1, 16, 256 and 1024 vCPUs against the naive per-vCPU scan baseline (one slot
per vCPU, every placement scans them all: QEMU's old design) and the model of
QEMU's 2025 hash design, in the same run.  A round is one fault per vCPU
(distinct addresses) then the placement of each: at most one outstanding
fault per vCPU, as on a real guest.  Each figure is ns per call, net of the
same loops calling a model that does nothing, the minimum of ``--repeat``
runs (the least disturbed: this host is shared), with the garbage collector
off.  Target: the accountant's cost per placement flat within 1.5x from 1 to
1024 vCPUs, while the scan grows with the vCPU count.

Part 2, on /dev/kvm: pages placed per second while a postcopy destination's
vCPUs fault (the postcopy/stream variant, latency 100 us, 2 vCPUs, 128 pages
each; from its first placement to its last), against a bare UFFDIO_COPY
loop over as many pages of plain memory with nobody faulting, in the same
run.

Prints a table; ``--json FILE`` writes the figures ('-' for stdout).  A
measurement, not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tabulate import tabulate  # noqa: E402

from kvmharness.blocktime import BlocktimeAccountant, QemuHashModel, SlotScanModel  # noqa: E402

VCPU_COUNTS = (1, 16, 256, 1024)
TARGET_FLAT = 1.5
PAGE = 4096


class NullModel:
    def __init__(self, vcpus: int) -> None:
        self.vcpus = vcpus

    def fault(self, addr: int, vcpu: int | None, t_ns: int) -> None:
        pass

    def placed(self, addr: int, t_ns: int) -> int:
        return 0


MODELS = {
    "accountant": BlocktimeAccountant,
    "qemu-2025 model": QemuHashModel,
    "per-vCPU scan": SlotScanModel,
}


def time_model(factory: Any, n: int, min_calls: int) -> tuple[float, float]:
    """ns per fault and ns per placement (gross) over enough rounds, GC off."""
    gc.disable()
    try:
        return _time_model(factory, n, min_calls)
    finally:
        gc.enable()


def _time_model(factory: Any, n: int, min_calls: int) -> tuple[float, float]:
    rounds = max(1, min_calls // n)
    m = factory(n)
    addrs = [0x1000 * (i + 1) for i in range(n)]
    pairs = list(zip(addrs, range(n), strict=True))
    fault_ns = place_ns = 0
    clock = time.perf_counter_ns
    t = 0
    for _ in range(rounds):
        fault, placed = m.fault, m.placed
        t0 = clock()
        for a, v in pairs:
            fault(a, v, t)
        t1 = clock()
        for a in addrs:
            placed(a, t + 5)
        t2 = clock()
        fault_ns += t1 - t0
        place_ns += t2 - t1
        t += 10
    calls = rounds * n
    return fault_ns / calls, place_ns / calls


def bench_accounting(repeat: int, min_calls: int) -> list[dict[str, Any]]:
    rows = []
    for n in VCPU_COUNTS:
        null = [time_model(NullModel, n, min_calls) for _ in range(repeat)]
        base_f = min(x[0] for x in null)
        base_p = min(x[1] for x in null)
        for name, factory in MODELS.items():
            runs = [time_model(factory, n, min_calls) for _ in range(repeat)]
            f = min(x[0] for x in runs) - base_f
            p = min(x[1] for x in runs) - base_p
            rows.append(
                {"model": name, "vcpus": n, "fault_ns": round(f, 1), "placement_ns": round(p, 1)}
            )
    for name in MODELS:
        first = next(r for r in rows if r["model"] == name and r["vcpus"] == VCPU_COUNTS[0])
        for r in rows:
            if r["model"] == name:
                r["placement_vs_1"] = round(r["placement_ns"] / max(first["placement_ns"], 1e-9), 2)
                r["fault_vs_1"] = round(r["fault_ns"] / max(first["fault_ns"], 1e-9), 2)
    return rows


def bench_bare_copy(pages: int, repeat: int) -> float:
    """Pages per second of a UFFDIO_COPY loop into registered memory nobody touches."""
    from kvmharness.ffi import ffi, lib
    from kvmharness.host.uffd import Userfaultfd, map_anonymous

    best = []
    src = ffi.new("char[]", pages * PAGE)
    srca = int(ffi.cast("uintptr_t", src))
    for _ in range(repeat):
        uffd = Userfaultfd()
        ptr, hva = map_anonymous(pages * PAGE)
        try:
            uffd.register(hva, pages * PAGE)
            copy = uffd.copy
            t0 = time.perf_counter_ns()
            for i in range(pages):
                copy(hva + i * PAGE, srca + i * PAGE)
            best.append(pages * 1e9 / (time.perf_counter_ns() - t0))
        finally:
            uffd.close()
            lib.munmap(ptr, pages * PAGE)
    return statistics.median(best)


def bench_kvm(repeat: int) -> tuple[list[float], list[float], int, list[str]]:
    from kvmharness.kvm import Kvm
    from kvmharness.scenarios.postcopy import PostcopyConfig, run_scenario

    rates, fast, verdicts = [], [], []
    pages = 0
    with Kvm() as kvm:
        for _ in range(repeat):
            res = run_scenario(PostcopyConfig("stream", 2, latency_us=100, pages_per_vcpu=128), kvm)
            verdicts.append(str(res.verdict))
            if res.stats.get("placed_per_s"):
                rates.append(res.stats["placed_per_s"])
                pages = res.stats["pages"]
            if res.stats.get("stream_unpaced_per_s"):
                fast.append(res.stats["stream_unpaced_per_s"])
    return rates, fast, pages, verdicts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--min-calls",
        type=int,
        default=20000,
        help="calls per model and vCPU count per repeat (default %(default)s)",
    )
    ap.add_argument("--no-kvm", action="store_true", help="only the pure accounting part")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)

    acc = bench_accounting(args.repeat, args.min_calls)
    print(
        tabulate(
            [
                [
                    r["model"],
                    r["vcpus"],
                    r["fault_ns"],
                    r["fault_vs_1"],
                    r["placement_ns"],
                    r["placement_vs_1"],
                ]
                for r in acc
            ],
            headers=["model", "vCPUs", "ns/fault", "x vs 1 vCPU", "ns/placement", "x vs 1 vCPU"],
            tablefmt="simple",
            floatfmt=".1f",
        )
    )
    mine = [r for r in acc if r["model"] == "accountant"]
    flat = max(r["placement_vs_1"] for r in mine)
    flat_fault = max(r["fault_vs_1"] for r in mine)
    print(
        f"\naccountant: placement cost at most {flat:.2f}x its 1-vCPU cost, fault cost at most "
        f"{flat_fault:.2f}x (target {TARGET_FLAT}x): "
        + ("flat" if max(flat, flat_fault) <= TARGET_FLAT else "NOT flat")
    )
    out: dict[str, Any] = {
        "host": {
            "kernel": platform.release(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "accounting": acc,
        "target_flat": TARGET_FLAT,
        "accountant_placement_max_ratio": flat,
        "accountant_fault_max_ratio": flat_fault,
    }
    if not args.no_kvm:
        rates, fast, pages, verdicts = bench_kvm(args.repeat)
        bare = bench_bare_copy(max(pages, 256), args.repeat)
        kvm_rate = statistics.median(rates) if rates else None
        fast_rate = statistics.median(fast) if fast else None

        def row(what: str, rate: float | None) -> list[str]:
            return [what, f"{rate:,.0f}" if rate else "-", f"{rate / bare:.2f}" if rate else "-"]

        print()
        print(
            tabulate(
                [
                    row("bare UFFDIO_COPY loop (nobody faulting)", bare),
                    row(
                        "KVM postcopy/stream, whole run (paced: 1 page/latency while touching)",
                        kvm_rate,
                    ),
                    row("KVM postcopy/stream, unpaced tail of the stream", fast_rate),
                ],
                headers=["pages placed", "pages/s (median)", "x bare"],
                tablefmt="simple",
            )
        )
        print(f"({pages} pages per KVM run, verdicts {', '.join(verdicts)})")
        out["kvm"] = {
            "pages": pages,
            "placed_per_s": rates,
            "median_placed_per_s": kvm_rate,
            "unpaced_per_s": fast,
            "median_unpaced_per_s": fast_rate,
            "bare_copy_per_s": bare,
            "verdicts": verdicts,
        }
    if args.json:
        text = json.dumps(out, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
