"""``kvmharness nightly``: the command line (``--help`` for the options and exit codes)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import socket
import sys
from collections.abc import Sequence

from kvmharness.exitcodes import (
    EXIT_HARNESS,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
)
from kvmharness.procs import Interrupted, signals_raise
from kvmharness.tools.home import checkout_root
from kvmharness.tools.nightly.changes import capabilities_lost
from kvmharness.tools.nightly.figures import MOVE_FACTOR
from kvmharness.tools.nightly.history import (
    append_record,
    host_key,
    merge_histories,
    previous_of,
    read_history,
)
from kvmharness.tools.nightly.kcidb import kcidb
from kvmharness.tools.nightly.page import html_report
from kvmharness.tools.nightly.processes import DEFAULT_PYTEST_ARGS, collect, collect_in_kernel
from kvmharness.tools.nightly.records import (
    BREAK_ON_PURPOSE,
    break_on_purpose,
    break_pattern,
    combine,
    cpu_model,
    fail_for_lost,
    git_revision,
    make_record,
    scenarios_of,
)
from kvmharness.tools.nightly.text import text_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmharness nightly",
        description="Nightly hardware CI: run the KVM tests and the scenario matrix on this "
        "host's KVM (or inside --kernel IMAGE), append a record to a JSON-lines "
        "history, render the trend report. Exit 0 good, 1 a promise broke that no "
        "known issue covers, a known issue looks fixed or a KVM test failed, "
        "125 nothing could be tested, 128 harness fault, 2 bad usage.",
        epilog=f"Test-only: {BREAK_ON_PURPOSE} SCENARIO:YYYY-MM-DD (today's UTC date) turns "
        "the promises whose id starts with SCENARIO (e.g. steal/cancelled-save) into "
        "broken after the run, marked in the record and on the page; any other date is "
        "refused, so it cannot stay on in a cron line.",
    )
    p.add_argument(
        "--history",
        default="nightly-history.jsonl",
        metavar="FILE",
        help="JSON-lines history to append to and report from (default %(default)s)",
    )
    p.add_argument(
        "--out",
        default="nightly-report",
        metavar="DIR",
        help="where index.html, junit.xml and run.json go (default %(default)s)",
    )
    p.add_argument(
        "--kernel", metavar="IMAGE", help="run inside this kernel through kvmharness bisect-kernel"
    )
    p.add_argument("--modules", metavar="DIR", help="with --kernel: KVM modules to insmod")
    p.add_argument("--kcidb", metavar="FILE", help="also write this run as KCIDB I/O JSON")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="FILE",
        help="no run: merge these histories (keyed by host) into --history and render the report",
    )
    p.add_argument(
        "--last",
        type=int,
        default=10,
        metavar="N",
        help="runs per host in the report (default %(default)s)",
    )
    p.add_argument(
        "--move-factor",
        type=float,
        default=MOVE_FACTOR,
        metavar="K",
        help="a figure of the kernel (steal over run_delay, a kvmclock jump's distance "
        "from its bound, warps) moved when it changed since the previous run by more "
        "than K times what it moves between runs of one kernel on one host "
        "(default %(default)s)",
    )
    p.add_argument(
        "--host-name",
        default=None,
        help="the host key of the record (default: this machine's host name)",
    )
    p.add_argument(
        "--run-args",
        default="",
        metavar="ARGS",
        help="shell words appended to `kvmharness run` (e.g. '-s steal --vcpus 1')",
    )
    p.add_argument(
        "--pytest-args",
        default=None,
        metavar="ARGS",
        help=f"shell words for pytest instead of the default '{shlex.join(DEFAULT_PYTEST_ARGS)}'",
    )
    p.add_argument("--no-pytest", action="store_true", help="do not run pytest")
    p.add_argument(BREAK_ON_PURPOSE, metavar="SCENARIO:DATE", help=argparse.SUPPRESS)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)  # --inner's output (bisect-kernel moves it)
    p.add_argument("--bisect-kernel", help=argparse.SUPPRESS)  # tests: a stand-in without QEMU
    return p


def write_text(path: str, text: str) -> None:
    from kvmharness.files import atomic_write_text

    atomic_write_text(path, text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with signals_raise():  # unwinds: children are ended, temp files removed
            return _main(list(sys.argv[1:] if argv is None else argv))
    except Interrupted as exc:
        print(f"nightly: {exc}: children ended, temporary files removed", file=sys.stderr)
        return exc.exit_code
    except UsageError as exc:
        print(f"nightly: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug of the nightly must not read as "a promise broke"
        import traceback

        traceback.print_exc()
        print(f"nightly: internal error (exit {EXIT_HARNESS})", file=sys.stderr)
        return EXIT_HARNESS


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        run_args = shlex.split(args.run_args)
        pytest_args = (
            None
            if args.no_pytest
            else shlex.split(args.pytest_args)
            if args.pytest_args is not None
            else list(DEFAULT_PYTEST_ARGS)
        )
    except ValueError as exc:
        raise UsageError(f"--run-args/--pytest-args: {exc}") from None
    if any(a in ("--json", "-h", "--help", "--list") or a.startswith("--json=") for a in run_args):
        raise UsageError(
            "--run-args: the nightly chooses --json itself; give a selection such as "
            "'-s steal --vcpus 1'"
        )
    if args.last < 1:
        raise UsageError("--last must be at least 1")
    if pytest_args is not None and args.pytest_args is None and checkout_root() is None:
        raise UsageError(
            "the KVM tests run from a checkout of kvmharness (its tests/), and this one is "
            "installed: give --no-pytest, or --pytest-args for tests of your own"
        )
    if args.inner:
        if not args.json:
            raise UsageError("--inner needs --json FILE")
        collected = collect(pytest_args, run_args)
        write_text(args.json, json.dumps(collected) + "\n")
        return combine(collected["run_rc"], collected["pytest_rc"])
    if args.modules and not args.kernel:
        raise UsageError("--modules needs --kernel")
    if args.merge:
        check_places(args)
        return merge_main(args)

    check_places(args)
    if args.break_on_purpose is not None:
        break_pattern(args.break_on_purpose)  # a stale date fails now, not after the run
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if args.kernel:
        if not os.path.isfile(args.kernel):
            raise UsageError(f"--kernel {args.kernel}: no such file")
        collected = collect_in_kernel(
            args.kernel, args.modules, pytest_args, run_args, bisect_kernel=args.bisect_kernel
        )
        collected["booted_on"] = {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "kernel_release": platform.release(),
        }
    else:
        collected = collect(pytest_args, run_args)
    scenarios = scenarios_of(collected.get("run_doc") or {})
    forced = break_on_purpose(scenarios, args.break_on_purpose)
    collected["scenarios"] = scenarios
    code = combine(collected.get("run_rc"), collected.get("pytest_rc"), forced_broken=bool(forced))
    note = ""
    if collected.get("run_error"):
        note = f"kvmharness run exited {collected.get('run_rc')}: {collected['run_error']}"
    rec = make_record(
        collected,
        host_name=args.host_name or socket.gethostname(),
        date=date,
        kernel_image=args.kernel,
        revision=git_revision(),
        exit_code=code,
        version=_version(),
        note=note,
        forced=forced,
    )
    lost = capabilities_lost(previous_of(args.history, host_key(rec)), rec)
    if lost:
        rec["exit_code"] = code = fail_for_lost(code)
        rec["note"] = "; ".join(
            filter(None, [note, f"{len(lost)} capability(ies) of the previous run lost"])
        )
        for what in lost:
            print(f"nightly: capability lost since the previous run: {what}", file=sys.stderr)
    append_record(args.history, rec)
    if collected.get("junit_xml"):
        write_text(os.path.join(args.out, "junit.xml"), collected["junit_xml"])
    if collected.get("run_doc"):
        write_text(
            os.path.join(args.out, "run.json"), json.dumps(collected["run_doc"], indent=1) + "\n"
        )
    if args.kcidb:
        write_text(args.kcidb, json.dumps(kcidb(rec, collected.get("junit_xml")), indent=1) + "\n")
    render(args, rec_host=host_key(rec))
    return code


def check_places(args: argparse.Namespace) -> None:
    """Refuse, before a run of minutes, a history or report place that cannot be written."""
    d = os.path.dirname(os.path.abspath(args.history))
    if not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise UsageError(f"--history {args.history}: directory {d} is missing or not writable")
    if os.path.isdir(args.history):
        raise UsageError(f"--history {args.history}: is a directory")
    for what, path in (("--out", args.out), ("--kcidb", args.kcidb)):
        if path and what == "--out":
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"--out {path}: {exc.strerror}") from None
            if not os.access(path, os.W_OK):
                raise UsageError(f"--out {path}: not writable")
        elif path:
            kd = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(kd) or os.path.isdir(path):
                raise UsageError(f"--kcidb {path}: not a file in an existing directory")


def _version() -> str:
    try:
        from kvmharness import __version__

        return str(__version__)
    except ImportError:
        return "?"


def render(args: argparse.Namespace, rec_host: str | None = None) -> None:
    records, problems = read_history(args.history)
    os.makedirs(args.out, exist_ok=True)
    page = os.path.join(args.out, "index.html")
    write_text(page, html_report(records, problems, args.last, args.move_factor))
    shown = records if rec_host is None else [r for r in records if host_key(r) == rec_host]
    sys.stdout.write(text_report(shown, problems, args.last, args.move_factor, html_path=page))


def merge_main(args: argparse.Namespace) -> int:
    merged, problems = merge_histories(args.merge)
    have, probs2 = read_history(args.history)
    known_ids = {str(r.get("run_id")) for r in have}
    for r in merged:
        if str(r.get("run_id")) not in known_ids:
            append_record(args.history, r)
    for p in problems + probs2:
        print(f"nightly: {p}", file=sys.stderr)
    render(args)
    return EXIT_OK
