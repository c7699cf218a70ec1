#!/usr/bin/env python3
"""Soak: run the default matrix (or the test suite) N times, optionally under
background load, and count exit codes.  A good kernel must give 0 every time;
any other exit is printed with the verdicts that caused it.

    scripts/soak.py --runs 30 --load 2            # 30 matrices beside 2 busy processes
    scripts/soak.py --runs 3 --load 2 --pytest    # the test suite instead
    scripts/soak.py --runs 5 -- --vcpus 4         # extra arguments for kvmharness run

Prints a table and, with --json FILE, the same as JSON.  Not a pass/fail
test; its exit status is 0 when every run exited 0, else 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True: pass"


def start_load(n: int) -> list[subprocess.Popen[bytes]]:
    """n busy processes, free to run on any CPU (as other work on the host would)."""
    return [
        subprocess.Popen([sys.executable, "-S", "-c", BUSY], start_new_session=True)
        for _ in range(n)
    ]


def stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()


def one_matrix(extra: list[str], tmp: str, i: int) -> dict[str, object]:
    out = os.path.join(tmp, f"run{i}.json")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmharness.cli", "run", "-q", "--json", out, *extra],
        capture_output=True,
        text=True,
    )
    rec: dict[str, object] = {
        "run": i,
        "exit": proc.returncode,
        "wall_s": round(time.monotonic() - t0, 2),
        "failures": [],
    }
    if proc.returncode != 0:
        try:
            data = json.loads(Path(out).read_text())
            rec["failures"] = [
                f"{r['variant']} x{r['config']['vcpus']}: {r['verdict']}: {r['observed']}"
                for r in data["results"]
                if r["verdict"] not in ("holds", "characterized")
            ]
        except (OSError, ValueError, KeyError):
            rec["failures"] = [proc.stderr.strip()[-500:]]
    return rec


def one_pytest(extra: list[str], i: int) -> dict[str, object]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = proc.stdout.strip().splitlines()
    return {
        "run": i,
        "exit": proc.returncode,
        "wall_s": round(time.monotonic() - t0, 2),
        "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        + ([lines[-1]] if lines and proc.returncode else []),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--load", type=int, default=0, help="busy background processes")
    ap.add_argument("--pytest", action="store_true", help="soak the test suite instead")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("extra", nargs="*", help="arguments for kvmharness run (or pytest)")
    args = ap.parse_args()
    if args.runs < 1 or args.load < 0:
        ap.error("--runs must be >= 1 and --load >= 0")
    load = start_load(args.load)
    records = []
    try:
        with tempfile.TemporaryDirectory(prefix="kvmharness-soak-") as tmp:
            for i in range(args.runs):
                rec = one_pytest(args.extra, i) if args.pytest else one_matrix(args.extra, tmp, i)
                records.append(rec)
                print(
                    f"[{i + 1}/{args.runs}] exit {rec['exit']} ({rec['wall_s']} s)",
                    file=sys.stderr,
                    flush=True,
                )
                for f in rec["failures"]:  # type: ignore[union-attr]
                    print(f"    {f}", file=sys.stderr)
    finally:
        stop_load(load)
    counts = collections.Counter(r["exit"] for r in records)
    print(
        tabulate([[code, n] for code, n in sorted(counts.items())], headers=["exit code", "runs"])
    )
    print(
        f"\n{args.runs} {'pytest runs' if args.pytest else 'matrices'} with {args.load} "
        f"busy processes: {counts.get(0, 0)} exit 0, {args.runs - counts.get(0, 0)} not"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "load": args.load,
                    "pytest": args.pytest,
                    "exit_counts": dict(counts),
                    "records": records,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if set(counts) == {0} else 1


if __name__ == "__main__":
    sys.exit(main())
