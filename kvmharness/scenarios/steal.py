"""Steal time across save/restore and host-thread changes.

Modelled on two real failures: KVM's steal time jumping after a restore
whose main thread wrote MSR_KVM_STEAL_TIME for every vCPU (QEMU 2.1-2.3 on
Linux 3.16, 2015), and Xen's steal time going back after migration (2017).

Each scenario runs a VM of any number of vCPUs whose guest enables steal time and
samples its area with the version protocol.  Each vCPU's host thread is
pinned to a CPU shared with a busy process (:class:`Stealer`) for a
contended phase before the boundary and another after it, so steal is
real; the boundary is one of the variants in :data:`VARIANTS`.

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
  exactly the regression README bug 1 describes.
* A cancelled save must not count anything twice (section 2).
* Moving KVM_RUN of a live vCPU to another thread, or having another thread
  rewrite its MSR, breaks the API's thread rule; what KVM does then is
  characterized, not judged.  (Measured on Linux 6.18/kvm_pvm: moving
  KVM_RUN to a younger thread makes steal *decrease* to that thread's
  run_delay, because the delta is taken against the old thread's last_steal.)
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

from kvmharness import checks
from kvmharness.checks import Sample, Violation
from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestStopped, GuestVm
from kvmharness.host.contention import Stealer
from kvmharness.host.sched import SchedStat, Watchdog, cpu_for, wait_or_stop
from kvmharness.host.threads import VcpuThread, close_threads, new_threads
from kvmharness.judges import SCHEMA_VERSION
from kvmharness.judges import steal as steal_judge
from kvmharness.judges.steal import RunCtx, VcpuRecord
from kvmharness.kvm import Kvm, Vcpu
from kvmharness.scenarios.base import (
    DEFAULTS,
    Blame,
    Family,
    Kind,
    RunOptions,
    Variant,
    Verdict,
    Writer,
)
from kvmharness.scenarios.lifecycle import (
    Live,
    Phases,
    RunMeter,
    ScenarioConfig,
    child_main,
    restore_in_new_vm,
    run_phases,
    start_vm,
)

log = logging.getLogger(__name__)

MSR_KVM_STEAL_TIME = lib.MSR_KVM_STEAL_TIME
STEAL_AREA_SIZE = 64
PROGRAM = "steal"


class Runner(enum.StrEnum):
    """Which host thread runs the vCPU after the boundary."""

    NEW_THREAD = "new vcpu thread"
    SAME_THREAD = "same vcpu thread"
    NEW_PROCESS = "new process"


@dataclass(frozen=True)
class StealVariant(Variant):
    writer: Writer = Writer.NONE
    runner: Runner = Runner.SAME_THREAD
    boundary: Callable[[StealRun, Live], None] | None = None
    """The in-process boundary; None for a cross-process variant."""

    @property
    def cross_process(self) -> bool:
        return self.runner is Runner.NEW_PROCESS

    # display names kept for the table and JSON
    @property
    def msr_writer(self) -> str:
        return str(self.writer)


def fresh_vm(run: StealRun, live: Live) -> None:
    """Capture, destroy the VM, wait out the downtime, restore into a new VM
    (on new threads unless the variant reuses the old ones)."""
    restore_in_new_vm(run, live, new_vcpu_threads=run.variant.runner is Runner.NEW_THREAD)


def cancelled_save(run: StealRun, live: Live) -> None:
    """Capture and put the state back into the same vCPUs, from their threads, as
    on a cancelled migration.  Not the CPUID: no VMM re-sets it on a vCPU that
    has run, and since Linux 5.16 KVM refuses a changed table there."""
    from kvmharness.snapshot.state import load_vcpu_state

    state = run.capture(live)
    run.sleep_out_downtime(live)
    for i, t in enumerate(live.threads):
        t.call(load_vcpu_state, live.gvm.vcpus[i], state.vcpus[i], cpuid=False)


def move_to_new_threads(run: StealRun, live: Live) -> None:
    """The live vCPUs' KVM_RUN moves to new host threads."""
    close_threads(live.threads)
    run.sleep_out_downtime(live)
    live.threads = new_threads(run.vcpus, "b")


def rewrite_msr_from_main(run: StealRun, live: Live) -> None:
    """The main thread, after waiting on a run queue, rewrites each live vCPU's MSR."""
    run.sleep_out_downtime(live)
    rd = accumulate_run_delay(WRITER_RUN_DELAY_NS)
    for v, r in zip(live.gvm.vcpus, run.records, strict=True):
        v.set_msr(MSR_KVM_STEAL_TIME, v.get_msr(MSR_KVM_STEAL_TIME))
        r.writer_run_delay_ns = rd


VARIANTS: dict[str, StealVariant] = {
    s.name: s
    for s in [
        StealVariant(
            "fresh-vm/vcpu-thread",
            Kind.PROMISE,
            "new VM restored by the threads that run it: the API's rules, steal must "
            "stay monotonic and follow the runner's run_delay",
            Writer.VCPU_THREAD,
            Runner.NEW_THREAD,
            fresh_vm,
        ),
        StealVariant(
            "fresh-vm/main-thread",
            Kind.PROMISE,
            "QEMU's 2015 restore pattern; since the fix, KVM_SET_MSRS samples no "
            "thread's run_delay, so steal must stay monotonic",
            Writer.MAIN_THREAD,
            Runner.NEW_THREAD,
            fresh_vm,
        ),
        StealVariant(
            "cross-process/vcpu-thread",
            Kind.PROMISE,
            "savevm/loadvm through a snapshot file, state put by the vCPU threads",
            Writer.VCPU_THREAD,
            Runner.NEW_PROCESS,
        ),
        StealVariant(
            "cross-process/main-thread",
            Kind.PROMISE,
            "savevm/loadvm through a snapshot file, state put by the main thread",
            Writer.MAIN_THREAD,
            Runner.NEW_PROCESS,
        ),
        StealVariant(
            "cancelled-save",
            Kind.PROMISE,
            "state captured and put back, the VM resumes: nothing may count twice",
            Writer.VCPU_THREAD,
            Runner.SAME_THREAD,
            cancelled_save,
        ),
        StealVariant(
            "same-vm/new-thread",
            Kind.CHARACTERIZE,
            "KVM_RUN of a live vCPU moves to another thread; api.rst asks for one "
            "thread per vCPU, so KVM promises nothing here",
            Writer.NONE,
            Runner.NEW_THREAD,
            move_to_new_threads,
        ),
        StealVariant(
            "fresh-vm/reused-thread",
            Kind.CHARACTERIZE,
            "new VM restored onto the threads that ran the old one: a new vCPU starts "
            "from last_steal 0, so its thread's whole run_delay is charged again",
            Writer.VCPU_THREAD,
            Runner.SAME_THREAD,
            fresh_vm,
        ),
        StealVariant(
            "same-vm/msr-rewrite",
            Kind.CHARACTERIZE,
            "another thread rewrites a live vCPU's steal-time MSR: a vCPU ioctl off "
            "its thread, outside the API's rules",
            Writer.MAIN_THREAD,
            Runner.SAME_THREAD,
            rewrite_msr_from_main,
        ),
    ]
}

DEFAULT_VARIANTS = list(VARIANTS)


@dataclass
class StealConfig(ScenarioConfig):
    """One steal scenario (the record's ``config``)."""

    family = "steal"
    variant: str
    vcpus: int = 1
    contend_ms: int = DEFAULTS.contend_ms
    downtime_ms: int = DEFAULTS.downtime_ms
    budget_s: float = DEFAULTS.budget_s


@dataclass
class StealResult:
    config: StealConfig
    variant: StealVariant
    records: list[VcpuRecord]
    violations: list[Violation]
    verdict: Verdict
    observed: str
    wall_s: float
    boundary_s: float
    error: str | None = None
    blame: Blame | None = None

    family = "steal"

    @property
    def vcpus(self) -> int:
        return self.config.vcpus

    def steal_at_boundary(self) -> tuple[int | None, int | None]:
        """Sum over vCPUs of steal just before and just after the boundary (guest view)."""
        return steal_judge.steal_at_boundary(self.records)

    def largest_jump_ns(self) -> int | None:
        return steal_judge.largest_jump_ns(self.records)

    def to_json(self) -> dict[str, Any]:
        """The run record (what :func:`kvmharness.judges.steal.judge` reads),
        with the verdict it was given and the figures the nightly keeps."""
        before, after = self.steal_at_boundary()
        return {
            "schema": SCHEMA_VERSION,
            "family": self.family,
            "variant": self.variant.name,
            "vcpus": self.config.vcpus,
            "config": asdict(self.config),
            "kind": str(self.variant.kind),
            "why": self.variant.why,
            "msr_writer": str(self.variant.writer),
            "runner": str(self.variant.runner),
            "verdict": str(self.verdict),
            "observed": self.observed,
            "error": self.error,
            "blame": str(self.blame) if self.blame else None,
            "wall_s": self.wall_s,
            "boundary_s": self.boundary_s,
            "steal_before_ns": before,
            "steal_after_ns": after,
            "largest_jump_ns": self.largest_jump_ns(),
            "violations": [v.to_dict() for v in self.violations],
            "records": [r.to_json() for r in self.records],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> StealResult:
        """A result rebuilt from its record (a saved run), as it was recorded;
        re-judge it with :func:`rejudged`."""
        c = dict(record["config"])
        if "strategy" in c:  # kvmharness 0.1 called the variant a strategy
            c["variant"] = c.pop("strategy")
        cfg = StealConfig(**c)
        return cls(
            cfg,
            VARIANTS[record["variant"]],
            steal_judge.records_of(record),
            [Violation(**v) for v in record.get("violations") or []],
            Verdict(record["verdict"]),
            record.get("observed", ""),
            float(record.get("wall_s", 0.0)),
            float(record.get("boundary_s", 0.0)),
            error=record.get("error"),
            blame=Blame(record["blame"]) if record.get("blame") else None,
        )

    def rejudged(self) -> StealResult:
        """This result with the verdict today's judge gives its record."""
        j = steal_judge.judge(json.loads(json.dumps(self.to_json())))
        return replace(self, violations=j.violations, verdict=j.verdict, observed=j.observed)


def from_record(record: dict[str, Any], judgement: Any) -> StealResult:
    """``kvmharness judge``'s hook: the result a saved record shows, with today's judgement."""
    return replace(
        StealResult.from_json(record),
        violations=list(judgement.violations),
        verdict=judgement.verdict,
        observed=judgement.observed,
    )


# --------------------------------------------------------------------------
# running phases


def _area_ptr(gvm: GuestVm, index: int) -> Any:
    return gvm.vm.pointer(
        gvm.symbol("steal_areas") + STEAL_AREA_SIZE * index, "struct kvm_steal_time"
    )


#: A phase goes on past its contended time until the runner thread has waited
#: this long on a run queue (by its own schedstat), so "alive" can be judged:
#: twice what the check needs, since the first reading's own wait does not count.
PHASE_MIN_WAIT_NS = 2 * checks.ALIVE_MIN_RUN_DELAY_NS
#: ... but for at most this much longer; a stretch still short of it makes the
#: run untestable (never a pass).
PHASE_EXTEND_MAX_NS = 5_000_000_000


def sample_loop(
    gvm: GuestVm,
    vcpu: Vcpu,
    rec: VcpuRecord,
    duration_ns: int,
    life: int,
    extend_max_ns: int = PHASE_EXTEND_MAX_NS,
) -> None:
    """Run ``vcpu`` on the calling thread for ``duration_ns``, recording each SYNC
    with the thread's run_delay just before and just after its KVM_RUN; then on
    until the thread has waited :data:`PHASE_MIN_WAIT_NS` since the first reading
    and the judge can tell a live steal clock from a dead one over the phase
    (:meth:`VcpuRecord.alive_judgeable`: on a slow host, e.g. nested under
    TCG, a phase's first readings may all be fresh or wait inside KVM_RUN)."""
    area = _area_ptr(gvm, vcpu.index)
    clock = time.monotonic_ns
    with RunMeter() as meter:
        end = clock() + duration_ns
        hard_end = end + extend_max_ns
        first = len(rec.guest)
        first_post: int | None = None
        while True:
            start = meter.begin()
            pre = start.run_delay_ns
            try:
                uc = gvm.expect(vcpu, lib.UCALL_SYNC)
            except GuestStopped as exc:
                rec.stuck = meter.stopped(exc)
                break
            t1 = clock()
            post = meter.run_delay()
            rec.max_run_ns = max(rec.max_run_ns, t1 - start.t_ns)
            rec.guest.append(Sample(t1, uc.args[1], uc.args[2]))
            rec.host.append(Sample(t1, area.steal, area.version))
            rec.ctx.append(RunCtx(meter.tid, life, pre, post))
            if first_post is None:
                first_post = post
            waited = pre - first_post
            if t1 >= hard_end or (
                t1 >= end and waited >= PHASE_MIN_WAIT_NS and rec.alive_judgeable(first)
            ):
                break
        if len(rec.guest) > first:
            rec.phases.append((first, len(rec.guest) - 1, duration_ns))


def contended_phase(
    gvm: GuestVm,
    threads: list[VcpuThread],
    records: list[VcpuRecord],
    duration_ns: int,
    life: int,
    budget_s: float,
) -> None:
    """All vCPUs sample on their threads while a busy process shares each vCPU's CPU."""
    cpus = sorted({cpu_for(r.index) for r in records})
    # A healthy vCPU ends its phase well before the watchdog fires, so a vCPU
    # the watchdog stops was in one KVM_RUN for most of the budget.
    extend_ns = min(PHASE_EXTEND_MAX_NS, int(budget_s * 1e9) // 2)
    stealers: list[Stealer] = []
    try:
        stealers = [Stealer(c).start() for c in cpus]
        for s in stealers:  # killed as soon as every vCPU is done
            s.spin((duration_ns + extend_ns) / 1e9)
        with Watchdog(gvm.stop, [r.index for r in records], duration_ns / 1e9 + budget_s):
            futures = [
                t.submit(sample_loop, gvm, gvm.vcpus[r.index], r, duration_ns, life, extend_ns)
                for t, r in zip(threads, records, strict=True)
            ]
            wait_or_stop(futures, gvm.stop, [r.index for r in records])
    finally:
        for s in stealers:
            s.close(kill=True)


# --------------------------------------------------------------------------
# boundaries

#: run_delay the writer of MSR_KVM_STEAL_TIME gathers before a restore.  The
#: 2015 bug latched the writer's run_delay as last_steal; it shows only if the
#: writer waited longer than the runner has when it first enters the guest,
#: as QEMU's long-lived main thread had.
WRITER_RUN_DELAY_NS = 20_000_000


def accumulate_run_delay(target_ns: int, timeout_s: float = 5.0) -> int:
    """Make the calling thread wait ``target_ns`` on a run queue, behind a busy
    process on its CPU; returns its run_delay afterwards."""
    cpu = cpu_for(0)
    old = os.sched_getaffinity(0)
    st = SchedStat()
    try:
        start = st.read()[1]
        with Stealer(cpu, duration_s=timeout_s) as stealer:
            os.sched_setaffinity(0, {cpu})
            deadline = time.monotonic() + timeout_s
            while st.read()[1] - start < target_ns and time.monotonic() < deadline:
                pass
            stealer.close(kill=True)
        return st.read()[1]
    finally:
        os.sched_setaffinity(0, old)
        st.close()


def _capture(gvm: GuestVm, threads: list[VcpuThread]) -> Any:
    from kvmharness.snapshot.state import capture, capture_vcpu

    states = [t.call(capture_vcpu, gvm.kvm, gvm.vcpus[i]) for i, t in enumerate(threads)]
    return capture(gvm.vm, states, program=PROGRAM)


def _restore(
    kvm: Kvm,
    state: Any,
    threads: list[VcpuThread],
    records: list[VcpuRecord],
    writer: Writer,
    downtime_ns: int,
) -> GuestVm:
    from kvmharness.snapshot.state import restore

    if writer is Writer.MAIN_THREAD:
        rd = accumulate_run_delay(WRITER_RUN_DELAY_NS)
        for r in records:
            r.writer_run_delay_ns = rd
    vm = restore(
        kvm,
        state,
        downtime_ns=downtime_ns,
        vcpu_threads=None if writer is Writer.MAIN_THREAD else threads,
    )
    return GuestVm.adopt(kvm, vm, PROGRAM)


class StealRun(Phases):
    """One run of a steal variant: the hooks the lifecycle drives
    (:func:`~kvmharness.scenarios.lifecycle.run_phases`) and each vCPU's record."""

    def __init__(self, cfg: StealConfig) -> None:
        super().__init__(cfg)
        self.cfg: StealConfig = cfg
        self.variant = VARIANTS[cfg.variant]
        self.records = [VcpuRecord(i) for i in range(cfg.vcpus)]

    def start(self, kvm: Kvm, threads: list[VcpuThread]) -> GuestVm:
        return start_vm(kvm, PROGRAM, threads)

    def phase(self, live: Live) -> None:
        contended_phase(
            live.gvm,
            live.threads,
            self.records,
            self.cfg.contend_ms * 1_000_000,
            live.life,
            self.cfg.budget_s,
        )

    def stuck(self) -> bool:
        return any(r.stuck for r in self.records)

    def mark_boundary(self) -> None:
        for r in self.records:
            r.boundary = len(r.guest)

    def capture(self, live: Live) -> Any:
        return _capture(live.gvm, live.threads)

    def restore(self, kvm: Kvm, threads: list[VcpuThread], state: Any, downtime_ns: int) -> GuestVm:
        return _restore(kvm, state, threads, self.records, self.variant.writer, downtime_ns)

    def payload(self) -> dict[str, Any]:
        return {"records": [r.to_json() for r in self.records]}

    def join(self, save: dict[str, Any], restore: dict[str, Any] | None) -> None:
        """The save child's records, each extended by the restore child's;
        the boundary's length is the longest gap between a vCPU's readings."""
        self.records = [VcpuRecord.from_json(d) for d in save["records"]]
        if restore is None:
            return
        for r, d in zip(self.records, restore["records"], strict=True):
            r.boundary = len(r.guest)
            r.extend(VcpuRecord.from_json(d))
        gaps = [
            (r.guest[r.boundary].t_ns - r.guest[r.boundary - 1].t_ns) / 1e9
            for r in self.records
            if 0 < r.boundary < len(r.guest)
        ]
        self.boundary_s = max(gaps, default=0.0)


def run_scenario(cfg: StealConfig, kvm: Kvm | None = None) -> StealResult:
    """Run one variant, then judge the record it wrote with the family's judge."""
    cfg.validate()
    var = VARIANTS[cfg.variant]
    run = StealRun(cfg)
    out = run_phases(
        f"steal scenario {cfg.variant}",
        run,
        kvm,
        boundary=None if var.boundary is None else partial(var.boundary, run),
        cross=var.cross_process,
    )
    res = StealResult(
        cfg,
        var,
        run.records if out.value else [],
        [],
        Verdict.ERROR,
        "",
        out.wall_s,
        run.boundary_s if out.value else 0.0,
        error=out.error,
        blame=out.blame,
    )
    return res.rejudged()


def run_one(name: str, vcpus: int, options: RunOptions, kvm: Kvm | None = None) -> StealResult:
    return run_scenario(StealConfig.of(name, vcpus, options), kvm)


#: bisect's quick profile: the 2015 bug shows in both main-thread restores;
#: cross-process/vcpu-thread adds nothing they and fresh-vm/vcpu-thread miss.
QUICK = (
    "fresh-vm/vcpu-thread",
    "fresh-vm/main-thread",
    "cross-process/main-thread",
    "cancelled-save",
)

FAMILY = Family(
    "steal",
    dict(VARIANTS),
    DEFAULT_VARIANTS,
    [1, 2],
    run_one,
    "kvmharness.scenarios.steal_view",
    quick=QUICK,
    needs_steal_time=True,
)


if __name__ == "__main__":  # a save or restore child (lifecycle.across_processes)
    sys.exit(child_main(sys.argv[1:], lambda cfg: StealRun(StealConfig(**cfg))))
