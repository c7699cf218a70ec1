#!/usr/bin/env python3
"""Benchmark one scripts/bisect-kernel step: boot + KVM load + kvmharness bisect.

Not a pass/fail test.  The baseline, measured in the same run, is the same
kernel booted with a trivial inner command (``true``): boot, KVM load and
shutdown with nothing to test.  The ratio says how much of a bisect step the
harness itself costs over the bare boot.

    .venv/bin/python scripts/bench_bisect_kernel.py IMAGE [--modules DIR]
        [--timeout S] [--json FILE] [-- ARGS for kvmharness bisect]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

SCRIPT = Path(__file__).resolve().parent / "bisect-kernel"
PHASES = ("boot_s", "kvm_load_s", "inner_s", "total_s")


def run_step(
    image: str, extra: list[str], inner_cmd: str | None, inner_args: list[str]
) -> dict[str, float | int | None]:
    """One bisect-kernel run; its exit code and phase timings (its --timing-json)."""
    with tempfile.TemporaryDirectory(prefix="bench-bisect-kernel-") as d:
        timing = Path(d) / "timing.json"
        cmd = [str(SCRIPT), image, *extra, "--timing-json", str(timing)]
        if inner_cmd is not None:
            cmd += ["--inner-cmd", inner_cmd]
        cmd += ["--", *inner_args]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd)
        if timing.exists():
            result: dict[str, float | int | None] = json.loads(timing.read_text())
        else:
            result = dict.fromkeys(PHASES)
        result["exit"] = proc.returncode
        return result


def _s(x: float | int | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    inner_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, inner_args = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", metavar="IMAGE", help="kernel image (bzImage) to boot")
    p.add_argument("--modules", metavar="DIR", help="passed to bisect-kernel")
    p.add_argument("--timeout", type=float, default=1800.0, help="per step (default 1800)")
    p.add_argument(
        "--inner-cmd", metavar="CMD", help="the full step's command instead of `kvmharness bisect`"
    )
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-' = stdout)")
    args = p.parse_args(argv)

    extra = ["--timeout", str(args.timeout)]
    if args.modules:
        extra += ["--modules", args.modules]
    base = run_step(args.image, extra, "true", [])
    full = run_step(args.image, extra, args.inner_cmd, inner_args)

    rows = [
        [name, r["exit"], *(_s(r.get(k)) for k in PHASES)]
        for name, r in (("baseline (inner: true)", base), ("full step", full))
    ]
    ratio = None
    if base.get("total_s") and full.get("total_s"):
        ratio = float(full["total_s"]) / float(base["total_s"])  # type: ignore[arg-type]
        rows.append(["ratio full/baseline", "", "", "", "", f"{ratio:.2f}"])
    print(
        tabulate(
            rows,
            headers=["run", "exit", "boot s", "KVM load s", "inner s", "total s"],
            tablefmt="simple",
        )
    )
    payload = {
        "benchmark": "scripts/bisect-kernel step",
        "image": args.image,
        "modules": args.modules,
        "inner_cmd": args.inner_cmd or "kvmharness bisect",
        "inner_args": inner_args,
        "baseline": base,
        "full": full,
        "ratio_total_full_over_baseline": ratio,
    }
    text = json.dumps(payload, indent=2)
    if args.json in (None, "-"):
        print(text)
    else:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
