"""Steal time across save/restore and host-thread changes (BACKGROUND.md sections 1, 2).

Each scenario runs a VM of 1-4 vCPUs whose guest enables steal time and
samples its area with the version protocol.  Each vCPU's host thread is
pinned to a CPU shared with a busy process (:class:`Stealer`) for a
contended phase before the boundary and another after it, so steal is
real; the boundary is one of the strategies in :data:`STRATEGIES`.

KVM charges steal against the run_delay of whichever thread issues KVM_RUN
(``steal += run_delay - last_steal; last_steal = run_delay`` at guest entry),
and a new vCPU starts with ``last_steal = 0``.  The promise/characterize
split follows from that and from Documentation/virt/kvm/api.rst, which asks
that vCPU ioctls come from the thread that created the vCPU ("otherwise the
first ioctl after switching threads could see a performance impact"):

* Restores that follow the rules (vCPU state put by the thread that then
  runs it) are promises, and so is the main-thread restore of a *fresh* VM:
  since the 2015 fix, writing MSR_KVM_STEAL_TIME samples no thread's
  run_delay, so QEMU's restore pattern must keep steal monotonic.  That is
  exactly the regression BACKGROUND.md section 1 describes.
* A cancelled save must not count anything twice (section 2).
* Moving KVM_RUN of a live vCPU to another thread, or having another thread
  rewrite its MSR, breaks the API's thread rule; what KVM does then is
  characterized, not judged.  (Measured on Linux 6.18/kvm_pvm: moving
  KVM_RUN to a younger thread makes steal *decrease* to that thread's
  run_delay, because the delta is taken against the old thread's last_steal.)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kvmharness import checks
from kvmharness.checks import Sample, Violation
from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestVm
from kvmharness.host.contention import Stealer
from kvmharness.host.threads import VcpuThread
from kvmharness.kvm import Kvm, Vcpu
from kvmharness.scenarios.base import BROKEN, CHARACTERIZE, CHARACTERIZED, ERROR, HOLDS, PROMISE

log = logging.getLogger(__name__)

MSR_KVM_STEAL_TIME = 0x4B564D03
STEAL_AREA_SIZE = 64
PROGRAM = "steal"


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # PROMISE or CHARACTERIZE
    msr_writer: str  # which host thread wrote MSR_KVM_STEAL_TIME at the boundary
    runner: str  # which host thread runs the vCPU after the boundary
    why: str


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("fresh-vm/vcpu-thread", PROMISE, "vcpu thread", "new vcpu thread",
             "new VM restored by the threads that run it: the API's rules, steal must "
             "stay monotonic and bounded by wall time"),
    Strategy("fresh-vm/main-thread", PROMISE, "main thread", "new vcpu thread",
             "QEMU's 2015 restore pattern; since the fix, KVM_SET_MSRS samples no "
             "thread's run_delay, so steal must stay monotonic"),
    Strategy("cross-process/vcpu-thread", PROMISE, "vcpu thread", "new process",
             "savevm/loadvm through a snapshot file, state put by the vCPU threads"),
    Strategy("cross-process/main-thread", PROMISE, "main thread", "new process",
             "savevm/loadvm through a snapshot file, state put by the main thread"),
    Strategy("cancelled-save", PROMISE, "vcpu thread", "same vcpu thread",
             "state captured and put back, the VM resumes: nothing may count twice"),
    Strategy("same-vm/new-thread", CHARACTERIZE, "-", "new vcpu thread",
             "KVM_RUN of a live vCPU moves to another thread; api.rst asks for one "
             "thread per vCPU, so KVM promises nothing here"),
    Strategy("same-vm/msr-rewrite", CHARACTERIZE, "main thread", "same vcpu thread",
             "another thread rewrites a live vCPU's steal-time MSR: a vCPU ioctl off "
             "its thread, outside the API's rules"),
]}

DEFAULT_STRATEGIES = list(STRATEGIES)


@dataclass
class StealConfig:
    strategy: str
    vcpus: int = 1
    contend_ms: int = 150
    downtime_ms: int = 50
    min_alive_fraction: float = 0.10
    """Under contention steal must grow by at least this share of the contended
    time.  A fair scheduler gives a thread sharing a CPU with one busy process
    about half of it; 10% leaves room for GIL waits (sleeping, not runnable)
    with several vCPU threads, while a dead steal clock gives 0."""

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} "
                             f"(known: {', '.join(STRATEGIES)})")
        if self.vcpus not in (1, 2, 4):
            raise ValueError(f"vcpus must be 1, 2 or 4, got {self.vcpus}")
        if self.contend_ms <= 0 or self.downtime_ms < 0:
            raise ValueError("contend_ms must be > 0 and downtime_ms >= 0")


@dataclass
class VcpuRecord:
    """What one vCPU saw: guest readings and host readings of its area."""

    index: int
    guest: list[Sample] = field(default_factory=list)
    host: list[Sample] = field(default_factory=list)
    boundary: int = 0  # index of the first sample after the boundary
    max_run_ns: int = 0  # longest single KVM_RUN (staleness of a reading)
    phases: list[tuple[int, int, int]] = field(default_factory=list)
    """(first sample index, last sample index, contended ns) per contended phase"""
    tids: list[int] = field(default_factory=list)  # host thread per phase
    births: list[int] = field(default_factory=list)  # monotonic ns each phase's thread started

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "boundary": self.boundary, "max_run_ns": self.max_run_ns,
                "phases": self.phases, "tids": self.tids, "births": self.births,
                "guest": [[s.t_ns, s.value, s.version] for s in self.guest],
                "host": [[s.t_ns, s.value, s.version] for s in self.host]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VcpuRecord:
        return cls(index=d["index"], boundary=d["boundary"], max_run_ns=d["max_run_ns"],
                   phases=[tuple(p) for p in d["phases"]], tids=list(d["tids"]),
                   births=list(d["births"]),
                   guest=[Sample(*s) for s in d["guest"]],
                   host=[Sample(*s) for s in d["host"]])

    def extend(self, other: VcpuRecord) -> None:
        """Append a later phase's record (e.g. from the restoring process)."""
        offset = len(self.guest)
        self.guest += other.guest
        self.host += other.host
        self.max_run_ns = max(self.max_run_ns, other.max_run_ns)
        self.phases += [(a + offset, b + offset, c) for a, b, c in other.phases]
        self.tids += other.tids
        self.births += other.births


@dataclass
class StealResult:
    config: StealConfig
    strategy: Strategy
    records: list[VcpuRecord]
    violations: list[Violation]
    verdict: str
    observed: str
    wall_s: float
    boundary_s: float
    error: str | None = None

    def steal_at_boundary(self) -> tuple[int | None, int | None]:
        """Sum over vCPUs of steal just before and just after the boundary (guest view)."""
        before = after = 0
        for r in self.records:
            if not r.guest or r.boundary <= 0 or r.boundary >= len(r.guest):
                return None, None
            before += r.guest[r.boundary - 1].value
            after += r.guest[r.boundary].value
        return before, after

    def largest_jump_ns(self) -> int | None:
        jumps = [b.value - a.value for r in self.records
                 for a, b in zip(r.guest, r.guest[1:], strict=False)]
        return max(jumps, key=abs) if jumps else None

    def to_json(self) -> dict[str, Any]:
        before, after = self.steal_at_boundary()
        return {
            "scenario": "steal", "strategy": self.strategy.name, "kind": self.strategy.kind,
            "why": self.strategy.why, "msr_writer": self.strategy.msr_writer,
            "runner": self.strategy.runner, "config": asdict(self.config),
            "verdict": self.verdict, "observed": self.observed, "error": self.error,
            "wall_s": self.wall_s, "boundary_s": self.boundary_s,
            "steal_before_ns": before, "steal_after_ns": after,
            "largest_jump_ns": self.largest_jump_ns(),
            "violations": [v.to_dict() for v in self.violations],
            "vcpus": [r.to_json() for r in self.records],
        }


# --------------------------------------------------------------------------
# running phases


def cpu_for(index: int) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    # vCPU 0 goes to the last CPU, leaving CPU 0 to the main thread where possible
    return cpus[(len(cpus) - 1 - index) % len(cpus)]


def _area_ptr(gvm: GuestVm, index: int) -> Any:
    return gvm.vm.pointer(gvm.symbol("steal_areas") + STEAL_AREA_SIZE * index,
                          "struct kvm_steal_time")


def sample_loop(gvm: GuestVm, vcpu: Vcpu, rec: VcpuRecord, duration_ns: int,
                born_ns: int) -> None:
    """Run ``vcpu`` on the calling thread for ``duration_ns``, recording each SYNC."""
    area = _area_ptr(gvm, vcpu.index)
    clock = time.monotonic_ns
    end = clock() + duration_ns
    first = len(rec.guest)
    rec.tids.append(threading.get_native_id())
    rec.births.append(born_ns)
    while True:
        t0 = clock()
        uc = gvm.expect(vcpu, lib.UCALL_SYNC)
        t1 = clock()
        rec.max_run_ns = max(rec.max_run_ns, t1 - t0)
        rec.guest.append(Sample(t1, uc.args[1], uc.args[2]))
        rec.host.append(Sample(t1, area.steal, area.version))
        if t1 >= end:
            break
    rec.phases.append((first, len(rec.guest) - 1, duration_ns))


def contended_phase(gvm: GuestVm, threads: list[VcpuThread], records: list[VcpuRecord],
                    duration_ns: int) -> None:
    """All vCPUs sample on their threads while a busy process shares each vCPU's CPU."""
    cpus = sorted({cpu_for(r.index) for r in records})
    stealers = [Stealer(c).start() for c in cpus]
    try:
        for s in stealers:
            s.spin(duration_ns / 1e9)
        futures = [t.submit(sample_loop, gvm, gvm.vcpus[r.index], r, duration_ns, t.born_ns)
                   for t, r in zip(threads, records, strict=True)]
        for f in futures:
            f.result()
    finally:
        for s in stealers:
            s.wait()
            s.close()


def new_threads(n: int, tag: str) -> list[VcpuThread]:
    return [VcpuThread(f"{tag}-vcpu{i}", cpu=cpu_for(i)) for i in range(n)]


def close_threads(threads: list[VcpuThread]) -> None:
    for t in threads:
        t.close()


def start_vm(kvm: Kvm, n: int, threads: list[VcpuThread]) -> GuestVm:
    """A fresh steal guest, each vCPU created and set up by its own thread."""
    gvm = GuestVm(kvm, PROGRAM, vcpus=0)
    try:
        for i, t in enumerate(threads):
            t.call(gvm.add_vcpu, i)
    except BaseException:
        gvm.close()
        raise
    return gvm


# --------------------------------------------------------------------------
# boundaries


def _capture(gvm: GuestVm, threads: list[VcpuThread]) -> Any:
    from kvmharness.snapshot.state import capture, capture_vcpu

    states = [t.call(capture_vcpu, gvm.kvm, gvm.vcpus[i]) for i, t in enumerate(threads)]
    return capture(gvm, states)


def _restore(kvm: Kvm, state: Any, threads: list[VcpuThread], writer: str,
             downtime_ns: int) -> GuestVm:
    from kvmharness.snapshot.state import restore

    return restore(kvm, state, downtime_ns=downtime_ns,
                   vcpu_threads=None if writer == "main thread" else threads)


def _sleep_until(deadline_ns: int) -> None:
    left = deadline_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


def run_in_process(kvm: Kvm, cfg: StealConfig) -> tuple[list[VcpuRecord], float]:
    """Phase A, the boundary, phase B, all in this process.  Returns records, boundary s."""
    strat = cfg.strategy
    n = cfg.vcpus
    dur = cfg.contend_ms * 1_000_000
    down = cfg.downtime_ms * 1_000_000
    records = [VcpuRecord(i) for i in range(n)]
    threads = new_threads(n, "a")
    gvm = start_vm(kvm, n, threads)
    try:
        contended_phase(gvm, threads, records, dur)
        for r in records:
            r.boundary = len(r.guest)
        b0 = time.monotonic_ns()
        if strat.startswith("fresh-vm/"):
            state = _capture(gvm, threads)
            gvm.close()
            close_threads(threads)
            _sleep_until(b0 + down)
            threads = new_threads(n, "b")
            writer = "main thread" if strat.endswith("main-thread") else "vcpu thread"
            gvm = _restore(kvm, state, threads, writer, time.monotonic_ns() - b0)
        elif strat == "cancelled-save":
            from kvmharness.snapshot.state import load_vcpu_state

            state = _capture(gvm, threads)
            _sleep_until(b0 + down)
            for i, t in enumerate(threads):  # the VMM puts back what it had captured
                t.call(load_vcpu_state, gvm.vcpus[i], state.vcpus[i])
        elif strat == "same-vm/new-thread":
            close_threads(threads)
            _sleep_until(b0 + down)
            threads = new_threads(n, "b")
        elif strat == "same-vm/msr-rewrite":
            _sleep_until(b0 + down)
            for v in gvm.vcpus:  # from this (main) thread, not the vCPU's
                v.set_msr(MSR_KVM_STEAL_TIME, v.get_msr(MSR_KVM_STEAL_TIME))
        else:
            raise ValueError(f"strategy {strat!r} does not run in one process")
        boundary_s = (time.monotonic_ns() - b0) / 1e9
        contended_phase(gvm, threads, records, dur)
        return records, boundary_s
    finally:
        gvm.close()
        close_threads(threads)


# ---- cross-process: one child saves and exits, another restores


def child_main(argv: list[str]) -> int:
    """``python -m kvmharness.scenarios.steal save|restore CONFIG_JSON SNAPSHOT OUT_JSON``."""
    from kvmharness.snapshot import write_snapshot
    from kvmharness.snapshot.state import load_state_file

    role, cfg_json, snap_path, out_path = argv
    cfg = StealConfig(**json.loads(cfg_json))
    n, dur = cfg.vcpus, cfg.contend_ms * 1_000_000
    records = [VcpuRecord(i) for i in range(n)]
    with Kvm() as kvm:
        if role == "save":
            threads = new_threads(n, "a")
            gvm = start_vm(kvm, n, threads)
            try:
                contended_phase(gvm, threads, records, dur)
                state = _capture(gvm, threads)
                meta, sections = state.to_snapshot()
                write_snapshot(snap_path, meta, sections)
            finally:
                gvm.close()
                close_threads(threads)
        else:
            state = load_state_file(snap_path)
            down = time.monotonic_ns() - state.captured_ns  # CLOCK_MONOTONIC is system-wide
            writer = "main thread" if cfg.strategy.endswith("main-thread") else "vcpu thread"
            threads = new_threads(n, "b")
            gvm = _restore(kvm, state, threads, writer, down)
            try:
                contended_phase(gvm, threads, records, dur)
            finally:
                gvm.close()
                close_threads(threads)
    with open(out_path, "w") as f:
        json.dump([r.to_json() for r in records], f)
    return 0


def run_cross_process(cfg: StealConfig) -> tuple[list[VcpuRecord], float]:
    with tempfile.TemporaryDirectory(prefix="kvmharness-steal-") as tmp:
        snap = os.path.join(tmp, "vm.snap")
        outs = [os.path.join(tmp, "a.json"), os.path.join(tmp, "b.json")]
        cfg_json = json.dumps(asdict(cfg))
        t_save_end = 0
        for role, out in zip(("save", "restore"), outs, strict=True):
            if role == "restore":
                _sleep_until(t_save_end + cfg.downtime_ms * 1_000_000)
            proc = subprocess.run(
                [sys.executable, "-m", "kvmharness.scenarios.steal", role, cfg_json, snap, out],
                capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{role} process failed (exit {proc.returncode}):\n"
                                   f"{proc.stderr.strip()[-2000:]}")
            if role == "save":
                t_save_end = time.monotonic_ns()
        parts = []
        for out in outs:
            with open(out) as f:
                parts.append([VcpuRecord.from_json(d) for d in json.load(f)])
    records = parts[0]
    for r, later in zip(records, parts[1], strict=True):
        r.boundary = len(r.guest)
        r.extend(later)
    b = [(r.guest[r.boundary].t_ns - r.guest[r.boundary - 1].t_ns) / 1e9 for r in records]
    return records, max(b)


# --------------------------------------------------------------------------
# judging


def judge(cfg: StealConfig, records: list[VcpuRecord]) -> list[Violation]:
    """Run the checks over each vCPU's guest and host series."""
    out: list[Violation] = []
    for r in records:
        # A reading can be as stale as the longest KVM_RUN: run_delay accrued
        # while preempted inside one run is charged at the next entry.
        slack = r.max_run_ns + checks.DEFAULT_SLACK_NS
        for name, series in ((f"vcpu{r.index}", r.guest), (f"vcpu{r.index}/host", r.host)):
            out += checks.check_monotonic(name, series)
            out += checks.check_versions(name, series)
            # Until KVM first publishes the area (version 0), the guest reads 0.
            # The first publication charges the vCPU thread's whole run_delay
            # (a new vCPU starts from last_steal = 0), so its bound is the time
            # since that thread was born, not since the previous reading.
            first_pub = next((i for i, s in enumerate(series) if s.version), None)
            if first_pub is None:
                continue
            if first_pub > 0 and r.births:
                prev = series[first_pub - 1]
                pair = [Sample(r.births[0], prev.value), series[first_pub]]
                out += [replace(v, index=first_pub) for v in
                        checks.check_rate(name, pair, slack_ns=slack)]
            out += [replace(v, index=v.index + first_pub) for v in
                    checks.check_rate(name, series[first_pub:], slack_ns=slack)]
        for first, last, contended in r.phases:
            out += checks.check_alive(
                f"vcpu{r.index}", r.guest[first], r.guest[last], contended_ns=contended,
                min_fraction=cfg.min_alive_fraction, index=last)
    return out


def describe(records: list[VcpuRecord], violations: list[Violation]) -> str:
    if not violations:
        parts = []
        for r in records:
            if r.guest and 0 < r.boundary < len(r.guest):
                a, b = r.guest[r.boundary - 1].value, r.guest[r.boundary].value
                parts.append(f"vcpu{r.index} {checks.format_ns(a)}->{checks.format_ns(b)}")
        return "steal monotonic and within wall time; " + ", ".join(parts)
    counts = checks.summarize(violations)
    worst = violations[0]
    return (", ".join(f"{k} x{v}" for k, v in counts.items())
            + f"; first: {worst.series}[{worst.index}] {worst.detail}")


def run_scenario(cfg: StealConfig, kvm: Kvm | None = None) -> StealResult:
    cfg.validate()
    strat = STRATEGIES[cfg.strategy]
    t0 = time.monotonic()
    records: list[VcpuRecord] = []
    boundary_s = 0.0
    try:
        if strat.name.startswith("cross-process/"):
            records, boundary_s = run_cross_process(cfg)
        else:
            own = kvm is None
            k = Kvm() if own else kvm
            try:
                records, boundary_s = run_in_process(k, cfg)
            finally:
                if own:
                    k.close()
    except Exception as exc:
        log.exception("steal scenario %s failed to run", cfg.strategy)
        return StealResult(cfg, strat, records, [], ERROR, f"could not run: {exc}",
                           time.monotonic() - t0, boundary_s, error=str(exc))
    violations = judge(cfg, records)
    if strat.kind == PROMISE:
        verdict = BROKEN if violations else HOLDS
    else:
        verdict = CHARACTERIZED
    return StealResult(cfg, strat, records, violations, verdict, describe(records, violations),
                       time.monotonic() - t0, boundary_s)


def run_matrix(strategies: list[str], vcpu_counts: list[int], *, contend_ms: int = 150,
               downtime_ms: int = 50,
               progress: Callable[[int, int, StealConfig, StealResult | None], None] | None = None
               ) -> list[StealResult]:
    configs = [StealConfig(s, n, contend_ms, downtime_ms)
               for s in strategies for n in vcpu_counts]
    for c in configs:
        c.validate()
    results = []
    with Kvm() as kvm:
        for i, cfg in enumerate(configs):
            if progress:
                progress(i, len(configs), cfg, None)
            res = run_scenario(cfg, kvm)
            results.append(res)
            if progress:
                progress(i, len(configs), cfg, res)
    return results


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
