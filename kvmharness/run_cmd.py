"""``kvmharness run``: the scenario matrix, as a table, JSON and an optional plot.

Exit 0 when every promise holds, 1 when one breaks (or a promise scenario
could not run: a restore path that fails is broken), 2 for bad usage or
input.  Characterizations never change the exit code.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from kvmharness import __version__

DEFAULT_VCPUS = [1, 2]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_writable(path: str, what: str) -> None:
    from kvmharness.cli import UsageError

    if path == "-":
        return
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise UsageError(f"{what} {path}: directory {d} does not exist")
    if not os.access(d, os.W_OK):
        raise UsageError(f"{what} {path}: directory {d} is not writable")


def run_cli(args: Any) -> int:
    from kvmharness.cli import EXIT_BROKEN, EXIT_OK, EXIT_USAGE, UsageError
    from kvmharness.errors import KvmUnavailable
    from kvmharness.report import plot_available, plot_steal, steal_table, write_json
    from kvmharness.scenarios.base import BROKEN, ERROR, PROMISE
    from kvmharness.scenarios.steal import DEFAULT_STRATEGIES, STRATEGIES, run_matrix

    if args.list:
        for s in STRATEGIES.values():
            print(f"{s.name:28} {s.kind:12} {s.why}")
        return EXIT_OK
    strategies = DEFAULT_STRATEGIES
    if args.strategy:
        strategies = []
        for item in args.strategy:
            for name in _csv(item):
                matches = [s for s in STRATEGIES if s == name or s.startswith(name + "/")]
                if not matches:
                    raise UsageError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
                strategies += [m for m in matches if m not in strategies]
    try:
        vcpus = [int(v) for v in _csv(args.vcpus)] if args.vcpus else DEFAULT_VCPUS
    except ValueError:
        raise UsageError(f"--vcpus takes a comma list of 1, 2, 4; got {args.vcpus!r}") from None
    bad = [v for v in vcpus if v not in (1, 2, 4)]
    if bad or not vcpus:
        raise UsageError(f"--vcpus takes a comma list of 1, 2, 4; got {args.vcpus!r}")
    if args.contend_ms <= 0 or args.downtime_ms < 0:
        raise UsageError("--contend-ms must be > 0 and --downtime-ms >= 0")
    if args.json:
        _check_writable(args.json, "--json")
    if args.plot:
        _check_writable(args.plot, "--plot")
        why = plot_available()
        if why:
            raise UsageError(f"--plot: {why}")

    def progress(i: int, n: int, cfg: Any, res: Any) -> None:
        if args.quiet:
            return
        if res is None:
            print(f"[{i + 1}/{n}] {cfg.strategy}, {cfg.vcpus} vCPU(s) ...", end="",
                  file=sys.stderr, flush=True)
        else:
            print(f" {res.verdict} ({res.wall_s:.2f} s)", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    try:
        results = run_matrix(strategies, vcpus, contend_ms=args.contend_ms,
                             downtime_ms=args.downtime_ms, progress=progress)
    except KvmUnavailable as exc:
        print(f"kvmharness run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    total = time.monotonic() - t0
    print(steal_table(results, width=0 if args.wide else 90))
    broken = [r for r in results if r.strategy.kind == PROMISE and r.verdict in (BROKEN, ERROR)]
    print(f"\n{len(results)} scenarios in {total:.1f} s: "
          f"{sum(r.verdict == 'holds' for r in results)} hold, {len(broken)} broken, "
          f"{sum(r.verdict == 'characterized' for r in results)} characterized")
    for r in broken:
        print(f"BROKEN {r.strategy.name} ({r.config.vcpus} vCPUs): {r.observed}")
        for v in r.violations[:5]:
            print(f"  {v.kind} {v.series}[{v.index}]: {v.detail}")
    if args.json:
        from kvmharness.hostinfo import gather

        write_json(args.json, {
            "kvmharness_version": __version__,
            "host": gather(probe_sched=False).to_dict(),
            "total_wall_s": total,
            "exit_code": EXIT_BROKEN if broken else EXIT_OK,
            "results": [r.to_json() for r in results],
        })
    if args.plot:
        plot_steal(results, args.plot)
    return EXIT_BROKEN if broken else EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run the steal-time scenario matrix (exit 0 holds, 1 broken, 2 usage)",
        description=__doc__)
    p.add_argument("--strategy", "-s", action="append", metavar="NAME[,NAME]",
                   help="strategies to run (a prefix such as 'fresh-vm' selects its "
                        "variants); default: all")
    p.add_argument("--vcpus", metavar="N[,N]", help="vCPU counts from 1,2,4 (default 1,2)")
    p.add_argument("--contend-ms", type=int, default=150,
                   help="contended time before and after the boundary (default 150)")
    p.add_argument("--downtime-ms", type=int, default=50, help="downtime at the boundary")
    p.add_argument("--json", metavar="FILE", help="write all results and samples as JSON "
                   "('-' for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="plot steal against time (matplotlib)")
    p.add_argument("--list", action="store_true", help="list strategies and exit")
    p.add_argument("--wide", action="store_true", help="do not shorten the verdict column")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_cli)
