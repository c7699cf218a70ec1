"""``kvmharness procstat``: steal checks over guest /proc/stat snapshots.

The command line of :mod:`kvmharness.procstat`: arguments, their validation,
and the exit code (:mod:`kvmharness.exitcodes`): 0 clean, 1 an anomaly was
found, 2 bad usage or bad input (a :class:`UsageError`, one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys

from kvmharness.exitcodes import EXIT_BROKEN, EXIT_OK, UsageError
from kvmharness.files import write_json
from kvmharness.procstat import (
    DEFAULT_USER_HZ,
    MAX_INTERVAL_S,
    MAX_USER_HZ,
    ProcStatError,
    ProcStatSnapshot,
    analyze,
    read_file,
    render_json,
    render_text,
    sample_live,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "procstat",
        help="find steal-time anomalies in guest /proc/stat snapshots",
        description=(
            "Check /proc/stat snapshots (in time order) for steal going down, wrapping or "
            "outrunning time, user+system stalling while steal grows, and other counters "
            "going back. Exit 0 clean, 1 anomaly found, 2 bad input."
        ),
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="/proc/stat snapshots ('-': stdin)")
    p.add_argument("--live", action="store_true", help="sample the local /proc/stat instead")
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between live samples (default 1)",
    )
    p.add_argument(
        "--count", type=int, default=5, metavar="N", help="number of live samples (default 5)"
    )
    p.add_argument(
        "--user-hz",
        type=int,
        default=DEFAULT_USER_HZ,
        help="ticks per second of the counters (default 100)",
    )
    p.add_argument("--json", metavar="FILE", help="write a JSON report to FILE ('-': stdout)")
    p.add_argument("--stat-path", default="/proc/stat", help=argparse.SUPPRESS)
    p.add_argument("--uptime-path", default="/proc/uptime", help=argparse.SUPPRESS)
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.live and args.files:
        raise UsageError("give FILE arguments or --live, not both")
    if not args.live and not args.files:
        raise UsageError("give /proc/stat FILE arguments, or --live")
    if not 0 < args.user_hz <= MAX_USER_HZ:  # beyond, a tick would be under 1 us
        raise UsageError(f"--user-hz must be 1 to {MAX_USER_HZ}, got {args.user_hz}")
    snaps: list[ProcStatSnapshot] = []
    if args.live:
        if args.count < 1:
            raise UsageError(f"--count must be at least 1, got {args.count}")
        if not 0 < args.interval <= MAX_INTERVAL_S:  # also refuses nan
            raise UsageError(
                f"--interval must be more than 0 and at most {MAX_INTERVAL_S} seconds "
                f"(one day), got {args.interval}"
            )

        def progress(i: int, n: int) -> None:
            print(f"kvmharness procstat: sample {i}/{n}", file=sys.stderr)

        try:
            snaps = sample_live(
                args.count,
                args.interval,
                stat_path=args.stat_path,
                uptime_path=args.uptime_path,
                progress=progress,
            )
        except OSError as exc:
            raise UsageError(f"{args.stat_path}: {exc.strerror or exc}") from exc
        except ProcStatError as exc:
            raise UsageError(f"{args.stat_path}: {exc}") from exc
    else:
        for path in args.files:
            name = "<stdin>" if path == "-" else path
            try:
                snaps += read_file(path)
            except OSError as exc:
                raise UsageError(f"{name}: {exc.strerror or exc}") from exc
            except ProcStatError as exc:
                raise UsageError(f"{name}: {exc}") from exc
    report = analyze(snaps, user_hz=args.user_hz)
    if args.json == "-":
        print(render_json(report))
    else:
        print(render_text(report))
        if args.json:
            try:
                write_json(args.json, report.to_dict())
            except OSError as exc:
                raise UsageError(f"{args.json}: {exc.strerror or exc}") from exc
    return EXIT_BROKEN if report.findings else EXIT_OK
