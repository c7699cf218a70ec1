"""``kvmharness postcopy``: simulated postcopy migration on this kernel's KVM,
with userfaultfd, and its exact vCPU blocktime.

Runs the postcopy variants (``--variant``; default all of them) at one vCPU
count and one resolver latency, and prints the family table, then per
variant each vCPU's faults, blocktime, the guest's own stall on the same
pages with the slack it is judged with, steal and run_delay, and the log2
latency histogram.  Exit codes follow ``kvmharness run`` (``git bisect run``):
0 every promise held, 1 a promise broke, 125 cannot test here (no /dev/kvm, no
userfaultfd permission or no UFFD_FEATURE_THREAD_ID, no steal time, host too
loaded), 128 harness fault or bad usage.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from kvmharness import __version__
from kvmharness.exitcodes import EXIT_OK, Untestable, UsageError


def _variants(text: str | None) -> list[str]:
    from kvmharness.scenarios.postcopy import DEFAULT_VARIANTS, VARIANTS

    if text is None:
        return list(DEFAULT_VARIANTS)
    out = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        name = item.removeprefix("postcopy/")
        if name not in VARIANTS:
            raise UsageError(f"unknown variant {item!r}; known: " + ", ".join(VARIANTS))
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError(f"--variant {text!r} names no variant")
    return out


def run_cli(args: Any) -> int:
    from kvmharness.cli.run import check_output_path, exit_code, precheck
    from kvmharness.errors import KvmUnavailable
    from kvmharness.ffi import lib
    from kvmharness.host.uffd import Userfaultfd
    from kvmharness.kvm import Kvm
    from kvmharness.plots import check_plot_path
    from kvmharness.report import write_json
    from kvmharness.scenarios.postcopy import (
        MAX_LATENCY_US,
        MAX_TOUCHES,
        MAX_VCPUS,
        MIN_LATENCY_US,
        PostcopyConfig,
        run_scenario,
    )
    from kvmharness.scenarios.postcopy_view import (
        latency_table,
        plot_postcopy,
        postcopy_table,
        vcpu_table,
    )

    variants = _variants(args.variant)
    limit = min(MAX_VCPUS, lib.GUEST_MAX_VCPUS)
    if not 1 <= args.vcpus <= limit:
        raise UsageError(f"--vcpus must be 1 to {limit}, got {args.vcpus}")
    if not MIN_LATENCY_US <= args.latency_us <= MAX_LATENCY_US:
        raise UsageError(
            f"--latency-us must be {MIN_LATENCY_US} to {MAX_LATENCY_US}, got {args.latency_us}"
        )
    if not 2 <= args.pages_per_vcpu <= MAX_TOUCHES:
        raise UsageError(f"--pages-per-vcpu must be 2 to {MAX_TOUCHES}, got {args.pages_per_vcpu}")
    if not (math.isfinite(args.budget_s) and 0 < args.budget_s <= 3600):
        raise UsageError(f"--budget-s must be in (0, 3600], got {args.budget_s}")
    if args.json:
        check_output_path(args.json, "--json")
    if args.plot:
        check_plot_path(args.plot)
    try:
        host = precheck()
        Userfaultfd().close()  # permission and UFFD_FEATURE_THREAD_ID, before any VM
    except KvmUnavailable as exc:
        raise Untestable(str(exc)) from None

    results = []
    t0 = time.monotonic()
    with Kvm() as kvm:
        for name in variants:
            cfg = PostcopyConfig(
                name, args.vcpus, args.latency_us, args.pages_per_vcpu, args.budget_s
            )
            if not args.quiet:
                print(
                    f"{name}, {args.vcpus} vCPU(s), latency {args.latency_us} us ...",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            res = run_scenario(cfg, kvm)
            if not args.quiet:
                print(f" {res.verdict} ({res.wall_s:.2f} s)", file=sys.stderr, flush=True)
            results.append(res)
    total = time.monotonic() - t0
    code = exit_code(results)
    from kvmharness.table import terminal_width

    print(postcopy_table(results, width=0 if args.wide else terminal_width()))
    for r in results:
        print(f"\n{r.variant.name}: {r.verdict}: {r.observed}")
        for v in r.violations[:8]:
            print(f"  {v.kind} {v.series}[{v.index}]: {v.detail}")
        if r.report is not None:
            print(vcpu_table(r))
            print()
            print(latency_table(r))
    print(f"\n{len(results)} postcopy scenario(s) in {total:.1f} s, exit {code}")
    if args.json:
        write_json(
            args.json,
            {
                "kvmharness_version": __version__,
                "command": "postcopy",
                "host": host,
                "total_wall_s": total,
                "exit_code": code,
                "results": [r.to_json() for r in results],
            },
        )
    if args.plot:
        plot_postcopy(results, args.plot)
    return code if results else EXIT_OK


def register(sub: Any) -> None:
    from kvmharness.exitcodes import EXIT_HARNESS
    from kvmharness.scenarios.postcopy import (
        DEFAULT_BUDGET_S,
        DEFAULT_LATENCY_US,
        DEFAULT_PAGES_PER_VCPU,
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
    from kvmharness.scenarios.postcopy import MAX_LATENCY_US, MIN_LATENCY_US
    from kvmharness.scenarios.postcopy import MAX_TOUCHES as max_pages
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
        default=DEFAULT_LATENCY_US,
        help="how long after its request the resolver places a page, "
        f"{MIN_LATENCY_US} to {MAX_LATENCY_US} (default %(default)s)",
    )
    p.add_argument(
        "--variant", metavar="NAME[,NAME]", help="stream, shared-page, non-vcpu (default: all)"
    )
    p.add_argument(
        "--pages-per-vcpu",
        type=int,
        default=DEFAULT_PAGES_PER_VCPU,
        help=f"data pages each vCPU owns and touches, 2 to {max_pages} (default %(default)s)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
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
        "--wide",
        action="store_true",
        help="every column, unwrapped (default: fit COLUMNS or the terminal, the verdict wrapped)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
