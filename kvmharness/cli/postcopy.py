"""``kvmharness postcopy``: simulated postcopy migration on this kernel's KVM,
with userfaultfd, and its exact vCPU blocktime.

Runs the postcopy variants (``--variant``; default all of them) at one vCPU
count and one resolver latency, as ``kvmharness run -s postcopy`` does (the
same plan, options, known issues, report and exit code), then per variant
each vCPU's faults, blocktime, the guest's own stall on the same pages with
the slack it is judged with, steal and run_delay, and the log2 latency
histogram.  Exit codes follow ``kvmharness run`` (``git bisect run``): 0 every
promise held, 1 a promise broke, 125 cannot test here (no /dev/kvm, no
userfaultfd permission or no UFFD_FEATURE_THREAD_ID, host too loaded), 128
harness fault or bad usage.
"""

from __future__ import annotations

import argparse
from typing import Any


def _variants(text: str | None) -> list[str]:
    """``--variant`` items as ``run``'s selection: each a postcopy variant."""
    if text is None:
        return ["postcopy"]
    items = [v.strip() for v in text.split(",") if v.strip()]
    return [f"postcopy/{v.removeprefix('postcopy/')}" for v in items] or [text]


def show_details(results: list[Any]) -> None:
    """Per variant that ran: its vCPUs and its fault latencies."""
    from kvmharness.scenarios.postcopy_view import latency_table, vcpu_table

    for r in results:
        if getattr(r, "report", None) is not None:
            print(f"\n{r.variant.name}: {r.verdict}: {r.observed}")
            print(vcpu_table(r))
            print()
            print(latency_table(r))


def probe_userfaultfd() -> None:
    """userfaultfd's permission and UFFD_FEATURE_THREAD_ID, before any VM runs
    (their absence is :class:`~kvmharness.errors.KvmUnavailable`: cannot test)."""
    from kvmharness.host.uffd import Userfaultfd

    Userfaultfd().close()


def run_cli(args: Any) -> int:
    from kvmharness.cli.run import run_cli as run
    from kvmharness.scenarios.base import DEFAULTS

    plan = argparse.Namespace(
        command="postcopy",
        variant=_variants(args.variant),
        vcpus=str(args.vcpus),
        contend_ms=DEFAULTS.contend_ms,
        downtime_ms=DEFAULTS.downtime_ms,
        budget_s=args.budget_s,
        latency_us=args.latency_us,
        pages_per_vcpu=args.pages_per_vcpu,
        json=args.json,
        plot=args.plot,
        known=args.known,
        wide=args.wide,
        quiet=args.quiet,
        list=False,
        keep_snapshots=None,
        probe=probe_userfaultfd,
        after_report=show_details,
    )
    return run(plan)


def register(sub: Any) -> None:
    from kvmharness.exitcodes import EXIT_HARNESS
    from kvmharness.scenarios.base import (
        DEFAULTS,
        MAX_LATENCY_US,
        MAX_PAGES_PER_VCPU,
        MIN_LATENCY_US,
        MIN_PAGES_PER_VCPU,
    )

    p = sub.add_parser(
        "postcopy",
        help="simulated postcopy with userfaultfd: nothing lost, "
        "exact vCPU blocktime (exit 0 good, 1 broken, 125 cannot test, 128 "
        "harness fault or bad usage)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.usage_exit = EXIT_HARNESS  # type: ignore[attr-defined]
    p.set_defaults(usage_exit=EXIT_HARNESS, func=run_cli)
    from kvmharness.scenarios.postcopy import MAX_VCPUS as max_vcpus

    p.add_argument(
        "--vcpus",
        type=int,
        default=2,
        help=f"vCPUs, 1 to {max_vcpus} (the postcopy guest's layout; default %(default)s)",
    )
    p.add_argument(
        "--latency-us",
        type=int,
        default=DEFAULTS.latency_us,
        help="how long after its request the resolver places a page, "
        f"{MIN_LATENCY_US} to {MAX_LATENCY_US} (default %(default)s)",
    )
    p.add_argument(
        "--variant", metavar="NAME[,NAME]", help="stream, shared-page, non-vcpu (default: all)"
    )
    p.add_argument(
        "--pages-per-vcpu",
        type=int,
        default=DEFAULTS.pages_per_vcpu,
        help=f"data pages each vCPU owns and touches, {MIN_PAGES_PER_VCPU} to "
        f"{MAX_PAGES_PER_VCPU} (default %(default)s)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULTS.budget_s,
        help="how long the destination may run before its vCPUs are stopped (default %(default)s)",
    )
    p.add_argument("--json", metavar="FILE", help="write everything as JSON ('-' for stdout)")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="plot each vCPU's blocktime against the guest's stalls and their bounds "
        "(.png, .svg or .pdf; needs matplotlib)",
    )
    p.add_argument(
        "--known",
        metavar="FILE",
        help="known-issues file (TOML; default: the one kvmharness ships), as for run",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="every column, unwrapped (default: fit COLUMNS or the terminal, the verdict wrapped)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
