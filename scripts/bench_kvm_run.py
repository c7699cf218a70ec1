#!/usr/bin/env python3
"""Cost of one KVM_RUN round trip with a port-I/O exit: kvmharness vs plain C.

One GuestVm is built in Python (selftest program, MODE_IO_LOOP: the guest
does ``outb`` to port 0xe4 in a loop), so both sides run the same guest
code, memory and long-mode state on the same vCPU.  The C side is
scripts/bench/kvm_run_loop.c, built with gcc into a shared object (cached
under the kvmharness cache directory by a hash of its source and the gcc
version) and called through cffi's dlopen with the vCPU's fd and its
kvm_run mapping.  Its loop is ``ioctl(KVM_RUN)`` + a check of exit_reason
and io.port; the Python loop is ``vcpu.run()`` + the same checks.

Rounds alternate which side goes first; each side's figure is the median
of its per-round ns per exit, and the ratio is python/C of those medians
(target: 1.10).  After the measurements the guest must be exactly at its
DONE ucall, which proves no exit was lost or skipped.

The table is always printed; ``--json FILE`` also writes the figures as
JSON (``--json -`` prints them to stdout after the table).  This is a
measurement, not a test: nothing here passes or fails on timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cffi  # noqa: E402
from tabulate import tabulate  # noqa: E402

from kvmharness.errors import KvmError  # noqa: E402
from kvmharness.ffi import lib  # noqa: E402
from kvmharness.guest.build import cache_dir, compiler_version  # noqa: E402
from kvmharness.guest.machine import GuestVm  # noqa: E402
from kvmharness.kvm import Kvm, Vcpu  # noqa: E402

C_SOURCE = Path(__file__).resolve().parent / "bench" / "kvm_run_loop.c"
BENCH_PORT = 0xE4  # selftest.c BENCH_PORT
MODE_IO_LOOP = 6  # selftest.c MODE_IO_LOOP
TARGET_RATIO = 1.10
C_DECL = "long run_loop(int vcpu_fd, void *run, long n, unsigned int port);"


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# the C loop


def build_c_loop(cc: str = "gcc") -> Path:
    """Compile kvm_run_loop.c into a cached shared object; return its path."""
    source = C_SOURCE.read_bytes()
    flags = ["-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]
    digest = hashlib.sha256(
        source + " ".join(flags).encode() + compiler_version(cc).encode()
    ).hexdigest()[:16]
    out_dir = cache_dir().parent / "bench"
    out = out_dir / f"kvm_run_loop-{digest}.so"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(
        [cc, *flags, "-o", str(tmp), str(C_SOURCE)], capture_output=True, text=True
    )
    if proc.returncode:
        raise BenchError(f"building {C_SOURCE} failed:\n{proc.stderr}")
    tmp.replace(out)  # atomic: a concurrent run sees the old or the new file, whole
    return out


class CLoop:
    def __init__(self, so_path: Path) -> None:
        self.ffi = cffi.FFI()
        self.ffi.cdef(C_DECL)
        self.lib = self.ffi.dlopen(str(so_path))

    def run(self, vcpu: Vcpu, n: int) -> int:
        """n KVM_RUNs in C; returns elapsed ns."""
        run_ptr = self.ffi.cast("void *", int(self.ffi.cast("uintptr_t", vcpu.run_struct)))
        fd, run_loop = vcpu.fd, self.lib.run_loop
        t0 = time.perf_counter_ns()
        done = run_loop(fd, run_ptr, n, BENCH_PORT)
        elapsed = time.perf_counter_ns() - t0
        if done < 0:
            raise BenchError(f"C loop: KVM_RUN failed: {os.strerror(-done)}")
        if done != n:
            raise BenchError(f"C loop: unexpected exit after {done} of {n}: {vcpu.exit_info()}")
        return elapsed


# --------------------------------------------------------------------------
# the Python loop


def python_loop(vcpu: Vcpu, n: int) -> int:
    """n ``vcpu.run()`` calls with the same checks as the C loop; returns elapsed ns."""
    run_struct = vcpu.run_struct
    exit_io = lib.KVM_EXIT_IO
    port = BENCH_PORT
    done = 0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        if vcpu.run() != exit_io or run_struct.io.port != port:
            break
        done += 1
    elapsed = time.perf_counter_ns() - t0
    if done != n:
        raise BenchError(f"Python loop: unexpected exit after {done} of {n}: {vcpu.exit_info()}")
    return elapsed


# --------------------------------------------------------------------------


def summary(per_exit: list[float]) -> dict[str, Any]:
    return {
        "median_ns": statistics.median(per_exit),
        "min_ns": min(per_exit),
        "max_ns": max(per_exit),
        "rounds_ns": per_exit,
    }


def measure(exits: int, rounds: int, warmup: int) -> dict[str, Any]:
    so_path = build_c_loop()
    c_loop = CLoop(so_path)
    c_ns: list[float] = []
    py_ns: list[float] = []
    with Kvm() as kvm, GuestVm(kvm, "selftest", vcpus=1) as gvm:
        total = 2 * warmup + 2 * exits * rounds
        gvm.sym("test_mode", "uint64_t")[0] = MODE_IO_LOOP
        gvm.sym("io_loop_count", "uint64_t")[0] = total
        vcpu = gvm.vcpus[0]
        # Warm both paths (first entry, page faults, caches, cffi call setup).
        c_loop.run(vcpu, warmup)
        python_loop(vcpu, warmup)
        for r in range(rounds):
            order = ("c", "py") if r % 2 == 0 else ("py", "c")
            for side in order:
                if side == "c":
                    c_ns.append(c_loop.run(vcpu, exits) / exits)
                else:
                    py_ns.append(python_loop(vcpu, exits) / exits)
        uc = gvm.run_until_ucall(vcpu)
        if uc.cmd != lib.UCALL_DONE:
            raise BenchError(f"after {total} port writes the guest sent {uc.describe()}, not DONE")
        backend = _kvm_backend()
    c_sum, py_sum = summary(c_ns), summary(py_ns)
    ratio = py_sum["median_ns"] / c_sum["median_ns"]
    pinned = sorted(os.sched_getaffinity(0))
    return {
        "benchmark": "kvm_run_port_io_exit",
        "exits_per_round": exits,
        "rounds": rounds,
        "warmup_exits": warmup,
        "c": c_sum,
        "python": py_sum,
        "ratio_python_over_c": ratio,
        "ratio_of_min": py_sum["min_ns"] / c_sum["min_ns"],
        "overhead_ns_per_exit": py_sum["median_ns"] - c_sum["median_ns"],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "host": {
            "kernel": platform.release(),
            "kvm_backend": backend,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "cffi": cffi.__version__,
            "cpus": pinned,
            "c_loop": str(so_path),
        },
    }


def _kvm_backend() -> str:
    """The loaded kvm_* vendor modules (kvm_intel, kvm_amd, kvm_pvm), from /sys/module."""
    try:
        mods = sorted(p.name for p in Path("/sys/module").iterdir() if p.name.startswith("kvm_"))
    except OSError:
        mods = []
    return ",".join(mods) or "unknown"


def render(result: dict[str, Any]) -> str:
    rows = []
    for side in ("c", "python"):
        s = result[side]
        rows.append([side, f"{s['median_ns']:.0f}", f"{s['min_ns']:.0f}", f"{s['max_ns']:.0f}"])
    table = tabulate(
        rows,
        headers=["loop", "median ns/exit", "min", "max"],
        colalign=("left", "right", "right", "right"),
    )
    verdict = "meets" if result["meets_target"] else "misses"
    return (
        f"KVM_RUN + port-I/O exit, {result['rounds']} rounds x "
        f"{result['exits_per_round']} exits per side "
        f"(kernel {result['host']['kernel']}, {result['host']['kvm_backend']})\n"
        f"{table}\n"
        f"python/C ratio {result['ratio_python_over_c']:.3f} of medians "
        f"(+{result['overhead_ns_per_exit']:.0f} ns per exit; "
        f"{result['ratio_of_min']:.3f} of minimums); target "
        f"{result['target_ratio']:.2f}: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The table is always printed. JSON is written only with --json "
        "(FILE, or - for stdout after the table).",
    )
    parser.add_argument(
        "--exits", type=int, default=20000, help="KVM_RUN exits per side per round (default 20000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds, alternating which side goes first (default 5)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed exits per side before the rounds (default: min(2000, exits))",
    )
    parser.add_argument(
        "--cpu", type=int, default=None, help="pin this process (and so the vCPU) to one host CPU"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write the figures as JSON to FILE (- for stdout)"
    )
    args = parser.parse_args(argv)
    if args.exits < 1 or args.rounds < 1:
        parser.error("--exits and --rounds must be at least 1")
    warmup = min(2000, args.exits) if args.warmup is None else args.warmup
    if warmup < 0:
        parser.error("--warmup must not be negative")
    try:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        result = measure(args.exits, args.rounds, warmup)
    except (BenchError, KvmError, OSError) as exc:
        print(f"bench_kvm_run: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
