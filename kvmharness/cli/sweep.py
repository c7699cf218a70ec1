"""``kvmharness sweep``: the scenario matrix across kernel images, one
report with the kernels as columns (see :mod:`kvmharness.sweep`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import threading
from pathlib import Path
from typing import Any

from kvmharness.exitcodes import (
    EXIT_BROKEN,
    EXIT_HARNESS,
    EXIT_OK,
    EXIT_UNTESTABLE,
    UsageError,
)
from kvmharness.sweep.runner import BUDGET_S, PROFILE

log = logging.getLogger(__name__)

#: a progress line at least this often while a kernel runs
TICK_S = 60.0

EPILOG = """\
exit codes (a sweep is not a bisect: one code for the whole sweep):
  0    every kernel that could be tested held every promise (a known issue
       aside); kernels that could not boot or load KVM are columns saying why,
       not a failure
  1    a promise broke on at least one kernel (its column says broken)
  2    bad input: a kernel that is no directory, image, .deb or package name,
       a package apt-get cannot fetch, a bad option
  125  no kernel could be tested at all
  128  a harness fault on some kernel (and no promise broke)
  128+N  killed by signal N (SIGTERM 143): the running VM is killed, no
       report or history is left half-written

Inputs: an unpacked kernel package (DIR/boot/vmlinuz-R beside
DIR/lib/modules/R), a kernel image, a .deb file, or a Debian package name
(apt-get download, dpkg-deb -x, into --cache). Each kernel is booted under
QEMU by bisect-kernel (`kvmharness bisect-kernel` or scripts/bisect-kernel),
which runs `kvmharness bisect --scenario {} --budget-s {}`
inside it (bisect's quick profile and the steal characterizations; the budget
keeps the hang guard from judging a slow emulated scenario). A tested kernel's
result is cached (per image digest and profile): run the sweep again with
more kernels and only the new ones boot. Writes DIR/report.txt
(and .md), DIR/index.html and DIR/history.jsonl (one record per kernel, sorted by
version) to --out.
""".format(",".join(PROFILE), BUDGET_S)


def default_cache() -> Path:
    base = os.environ.get("KVMHARNESS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kvmharness"
    )
    return Path(base) / "sweep"


def default_profile() -> list[str]:
    return ["--scenario", ",".join(PROFILE), "--budget-s", str(BUDGET_S)]


def read_history(path: Path) -> list[dict[str, Any]]:
    """Per-kernel records from a sweep's history (for ``--render``)."""
    from kvmharness.sweep import summary

    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"--render {path}: {exc.strerror}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"--render {path}:{n}: not JSON ({exc})") from exc
        if not isinstance(rec, dict) or "kernel" not in rec or "scenarios" not in rec:
            raise UsageError(f"--render {path}:{n}: not a sweep record")
        out.append(summary.refresh(rec))
    return out


def write_outputs(out: Path, records: list[dict[str, Any]]) -> str:
    """report.txt, index.html and history.jsonl, each written atomically."""
    from kvmharness.files import atomic_write_text
    from kvmharness.sweep.kernels import version_key
    from kvmharness.sweep.report import html_report, markdown_table, text_report

    records = sorted(
        records,
        key=lambda r: (
            version_key(r["kernel"].get("version") or r["kernel"]["release"]),
            version_key(r["kernel"]["release"]),
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / "index.html"
    text = text_report(records, str(html_path))
    atomic_write_text(str(out / "history.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(str(html_path), html_report(records))
    atomic_write_text(str(out / "report.txt"), text)
    atomic_write_text(str(out / "report.md"), markdown_table(records))
    return text


def exit_code(records: list[dict[str, Any]]) -> int:
    """The sweep's code, from its cells (not from each run's exit code: a run
    whose named scenario is not supported on that kernel exits 125, yet its
    other cells are judged)."""
    from kvmharness.sweep.summary import FAULT, TESTED

    statuses = {s["status"] for r in records for s in r.get("scenarios") or []}
    if statuses & {"broken", "fixed?"}:
        return EXIT_BROKEN
    if "harness error" in statuses or any(r["outcome"] == FAULT for r in records):
        return EXIT_HARNESS
    if not any(r["outcome"] == TESTED for r in records):
        return EXIT_UNTESTABLE
    return EXIT_OK


def _harness() -> dict[str, Any]:
    import subprocess

    from kvmharness import __version__
    from kvmharness.sweep.runner import checkout_root

    rev = None
    try:
        r = subprocess.run(
            ["git", "-C", str(checkout_root()), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        rev = r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": __version__, "revision": rev}


def run_cli(args: argparse.Namespace) -> int:
    from kvmharness.sweep import runner, summary
    from kvmharness.sweep.kernels import resolve_all

    out = Path(args.out)
    if args.render:
        records = read_history(Path(args.render))
        print(write_outputs(out, records), end="")
        return exit_code(records) if records else EXIT_UNTESTABLE
    cache = runner.Cache(Path(args.cache) if args.cache else default_cache())
    try:
        profile = shlex.split(args.inner_args) if args.inner_args is not None else None
        boot_args = shlex.split(args.boot_args or "")
    except ValueError as exc:
        raise UsageError(f"bad shell words: {exc}") from exc
    if profile is None:
        profile = ["--scenario", args.scenario] if args.scenario else default_profile()
    boot_args += ["--timeout", str(args.timeout)]
    kernels = resolve_all(args.kernels, cache.root)
    command = runner.bisect_kernel_command(args.bisect_kernel)
    harness = _harness()
    progress = runner.Progress(total=len(kernels))
    records: list[dict[str, Any]] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(TICK_S):
            if progress.label:
                progress.show(progress.step or "running")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        for i, k in enumerate(kernels, 1):
            key = cache.key(k, profile, boot_args)
            progress.begin(i, k.label)
            cached = None if args.rerun else cache.load(key)
            if cached is not None:
                progress.show("cached result")
                progress.done(None)
                records.append(cached)
                continue
            progress.show("starting")
            res = runner.run_kernel(
                k,
                command,
                profile,
                boot_args,
                cache.log_path(key),
                progress.show,
                echo=args.verbose > 0,
            )
            kernel = {
                "release": k.release,
                "version": k.version,
                "label": k.label,
                "image": str(k.image),
                "source": k.source,
            }
            rec = summary.kernel_record(
                kernel,
                exit_code=res.exit_code,
                why=res.why,
                doc=res.doc,
                timing=res.timing,
                date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                harness=harness,
                profile=profile,
                run_json=str(cache.run_path(key)) if res.doc is not None else None,
            )
            if res.exit_code > EXIT_HARNESS and res.doc is None:
                # the child was killed by a signal not ours: nothing to keep
                rec["outcome"] = summary.FAULT
            if rec["outcome"] == summary.TESTED:
                cache.store(key, rec, res.doc)
            progress.show(f"{rec['outcome']}, exit {res.exit_code}: {res.why}")
            # only a tested kernel's time predicts the next one's
            progress.done(
                (res.timing or {}).get("total_s") if rec["outcome"] == summary.TESTED else None
            )
            records.append(rec)
            write_outputs(out, records)
    finally:
        stop.set()
    print(write_outputs(out, records), end="")
    return exit_code(records)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="the scenario matrix across kernel images: one report, kernels as columns",
        description="Boot each kernel under QEMU (bisect-kernel), run the scenario matrix "
        "inside it, and report every kernel as a column, sorted by version, with the "
        "first kernel where each scenario changed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "kernels",
        nargs="*",
        metavar="KERNEL",
        help="unpacked package directory, kernel image, .deb or Debian package name",
    )
    p.add_argument(
        "--out", default="sweep-report", help="report directory (default ./sweep-report)"
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="fetched images and per-kernel results (default $KVMHARNESS_CACHE/sweep "
        "or ~/.cache/kvmharness/sweep)",
    )
    p.add_argument("--rerun", action="store_true", help="boot every kernel, cached or not")
    p.add_argument(
        "--scenario",
        metavar="LIST",
        help="run `kvmharness bisect --scenario LIST` in each kernel instead of the default",
    )
    p.add_argument(
        "--inner-args",
        metavar="ARGS",
        help="all of `kvmharness bisect`'s arguments (shell words; --json is added)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="seconds per kernel, boot included (default 1800)",
    )
    p.add_argument(
        "--boot-args",
        metavar="ARGS",
        help="more options for bisect-kernel (shell words), e.g. '--retries 2'",
    )
    p.add_argument(
        "--bisect-kernel",
        metavar="CMD",
        help="the kernel-boot command (shell words; default `kvmharness bisect-kernel` "
        "or the checkout's scripts/bisect-kernel)",
    )
    p.add_argument(
        "--render",
        metavar="HISTORY",
        help="boot nothing: render the report from a sweep's history.jsonl",
    )
    p.add_argument("--verbose", "-v", action="count", default=0, help="show bisect-kernel's log")
    p.set_defaults(func=run_cli)
