"""Postcopy migration with userfaultfd on real KVM: nothing lost, exact blocktime.

A source VM runs ``guest/src/programs/postcopy.c``: each vCPU fills its share
of a data region (slot 1) with a pattern and reports FILLED.  The host
migrates there: the vCPU state and the low memory (slot 0: program, page
tables, stacks, the touch plans) go to a destination VM as they are; the
data region of the destination is private anonymous memory with no page in
it, registered with userfaultfd in MISSING mode with UFFD_FEATURE_THREAD_ID.
The destination's vCPUs then touch the pages of their plans:

* the **fault thread** (:class:`kvmharness.host.pager.Pager`) reads the
  userfaultfd messages, records each (time, page, the thread id the kernel
  named) and requests the page;
* the **resolver** places a requested page ``latency_us`` after its request
  with UFFDIO_COPY, EEXIST meaning the stream was first;
* the **background stream** pushes the other pages in address order, one per
  latency while the vCPUs touch, then all the rest;
* each vCPU waits at TOUCHED until every page is in place, then checksums
  every byte of its share and checks it against the pattern.

The run builds a record of what the kernel and the guest reported and
judges it with :func:`kvmharness.judges.postcopy.judge`, the function
``kvmharness judge RUN.json`` runs.  What the kernel promises, each judged
from measured quantities only (the latency applied, wall time, the threads'
run_delay from /proc/self/task/TID/schedstat and CPU time from their thread
CPU clocks, the guest's rdtsc):

* **nothing lost**: every qword the guest reads equals the pattern, its
  checksum of every byte (s1 += q, s2 += s1 over its share) equals the
  host's, and the destination memory equals the source byte for byte;
* **faults attributed**: every fault names the thread that took it: a vCPU
  fault names that vCPU's thread (a fault under any thread id that is no
  vCPU's, nor the helper thread's, is misattributed), on a page of its own
  plan; no fault comes from a page already in place once the vCPU checks
  its memory;
* **blocktime and the guest's stalls agree, both ways**: per vCPU, blocktime
  (replayed exactly from the recorded messages and placements) never
  exceeds the wall time of the KVM_RUN that touched, nor what the guest saw
  stalled on the same pages (the host interval, message read to page
  placed, lies inside the guest's) beyond the TSC conversion error; and the
  guest's stall over all its touches never exceeds blocktime by more than
  everything else that can stall it, each measured over that KVM_RUN: the
  vCPU thread's run_delay and CPU time, the CPU time and run_delay of every
  other thread of the process (the fault thread waking and taking the GIL,
  a lock holder preempted), two wake-ups per fault that schedstat does
  not see, and the TSC conversion error.  A vCPU asleep on a page nobody
  heard of (messages lost, or sent under the wrong thread) is so caught;
* **blocktime is not steal**: a thread asleep on a missing page is not
  runnable, so the guest's steal over the touching KVM_RUN grows by at most
  that thread's run_delay over it (exact: KVM adds run_delay deltas);
* **no vCPU hangs**: a vCPU the watchdog stops in KVM_RUN is judged by
  :func:`kvmharness.judges.stopped.judge_stopped`: asleep there (neither
  running nor queued) is a hang, broken; only run-queue wait is load.

How the kernel retries a fault is not a promise (duplicate messages are
counted and shown).
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvmharness.checks import Violation
from kvmharness.ffi import ffi, lib
from kvmharness.guest.build import load_program
from kvmharness.guest.elf import ElfImage
from kvmharness.guest.machine import LARGE_PAGE, PD_GPA, GuestStopped, GuestVm, mem_size_for
from kvmharness.host.pager import Pager, PagerPlan, others_since, process_sched, thread_cpu_ns
from kvmharness.host.sched import SchedStat
from kvmharness.host.threads import VcpuThread
from kvmharness.host.uffd import PAGE_SIZE, Userfaultfd, map_anonymous
from kvmharness.judges import Judgement, read_record
from kvmharness.judges import postcopy as pj
from kvmharness.judges.postcopy import (  # noqa: F401  (the kinds, for callers and tests)
    HEAD_QWORDS,
    KIND_LOST,
    KIND_MISATTRIBUTED,
    KIND_OVER_GUEST,
    KIND_OVER_WALL,
    KIND_SILENT_STALL,
    KIND_SPURIOUS,
    KIND_STEAL,
    KIND_UNDER_GUEST,
    U64,
    PostcopyRecord,
    VcpuRecord,
    head_value,
    page_qwords,
)
from kvmharness.judges.stopped import Stopped
from kvmharness.kvm import Kvm
from kvmharness.scenarios.base import (
    DEFAULTS,
    MAX_PAGES_PER_VCPU,
    Blame,
    Family,
    Kind,
    RunOptions,
    ScenarioFailed,
    Variant,
    Verdict,
    verdict_for,
)
from kvmharness.scenarios.lifecycle import check_vcpus, guarded_run, on_kvm

log = logging.getLogger(__name__)

PROGRAM = "postcopy"
DATA_SLOT = 1
#: The GIL switch interval while the destination runs: the longest another
#: harness thread may hold the GIL while the fault thread waits for it.
SWITCH_INTERVAL_S = 0.0002
#: How long the shared page waits for every vCPU to block on it.
SHARED_HOLD_S = 5.0

# the guest's layout (checked against its pc_abi at load)
PC_ABI = (3, 64, MAX_PAGES_PER_VCPU, 3, 8, 0xF111, 0x5EED, 0x7007, 0xC4EC)
(
    _,
    MAX_VCPUS,
    MAX_TOUCHES,
    TOUCH_WORDS,
    RESULT_WORDS,
    SYNC_FILLED,
    SYNC_READY,
    SYNC_TOUCHED,
    SYNC_VERIFIED,
) = PC_ABI
R_STEAL_BEFORE, R_STEAL_AFTER, R_TSC_START, R_TSC_END, R_CHECKSUM, R_BAD_GPA, R_CHECKSUM2 = range(7)


def page_bytes(base: int, seed: int) -> bytes:
    """The pattern of the page at guest-physical ``base`` (as postcopy.c writes it)."""
    return struct.pack("<512Q", *page_qwords(base, seed))


# --------------------------------------------------------------------------
# variants

# --------------------------------------------------------------------------
# variants


@dataclass(frozen=True)
class PostcopyVariant(Variant):
    stream_during: bool = True
    """The background stream runs while the vCPUs touch (else only after)."""
    shared_first: bool = False
    """Every vCPU touches page 0 first; it is placed only once all of them wait."""
    non_vcpu_touch: bool = False
    """A host thread that is no vCPU reads one missing page through the kernel."""


VARIANTS: dict[str, PostcopyVariant] = {
    v.name: v
    for v in [
        PostcopyVariant(
            "stream",
            Kind.PROMISE,
            "vCPUs fault on missing pages, each placed after the latency, while a background "
            "stream pushes the others in order: nothing lost, blocktime exact and not steal",
            stream_during=True,
        ),
        PostcopyVariant(
            "shared-page",
            Kind.PROMISE,
            "every vCPU blocks on one page before it is placed: several vCPUs on one address, "
            "time with all vCPUs blocked measured",
            stream_during=False,
            shared_first=True,
        ),
        PostcopyVariant(
            "non-vcpu",
            Kind.PROMISE,
            "a host thread that is no vCPU reads a missing page: the kernel must name that "
            "thread, and its wait is counted apart from vCPU blocktime",
            stream_during=True,
            non_vcpu_touch=True,
        ),
    ]
}
DEFAULT_VARIANTS = list(VARIANTS)


@dataclass
class PostcopyConfig:
    variant: str = "stream"
    vcpus: int = 2
    latency_us: int = DEFAULTS.latency_us
    pages_per_vcpu: int = DEFAULTS.pages_per_vcpu
    budget_s: float = DEFAULTS.budget_s
    seed: int = 0x5EED0F

    def validate(self) -> None:
        """The variant, the vCPU count, and the knobs by :meth:`RunOptions.validate`."""
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown postcopy variant {self.variant!r} (known: {', '.join(VARIANTS)})"
            )
        check_vcpus(FAMILY, self.vcpus)
        RunOptions(
            budget_s=self.budget_s, latency_us=self.latency_us, pages_per_vcpu=self.pages_per_vcpu
        ).validate()


# --------------------------------------------------------------------------
# the result


@dataclass
class PostcopyResult:
    config: PostcopyConfig
    variant: PostcopyVariant
    verdict: Verdict
    observed: str
    wall_s: float
    violations: list[Violation]
    record: dict[str, Any] | None = None
    """The run record the judge read (None: the scenario did not run)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What the judge derived: blocktime, the QEMU models, agreement figures."""
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    family = "postcopy"

    @property
    def vcpus(self) -> int:
        return self.config.vcpus

    @property
    def report(self) -> dict[str, Any] | None:
        """The exact accountant's figures (what ``kvmharness postcopy`` shows), if it ran."""
        return self.notes.get("blocktime")  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        base: dict[str, Any] = self.record or {
            "schema": pj.SCHEMA_VERSION,
            "family": "postcopy",
            "variant": self.variant.name,
            "kind": str(self.variant.kind),
            "vcpus": self.config.vcpus,
            "config": asdict(self.config),
        }
        return {
            **base,
            "why": self.variant.why,
            "verdict": str(self.verdict),
            "observed": self.observed,
            "error": self.error,
            "wall_s": self.wall_s,
            "violations": [v.to_dict() for v in self.violations],
            "blocktime": self.notes.get("blocktime"),
            "notes": {k: v for k, v in self.notes.items() if k != "blocktime"},
            "stats": self.stats,
        }


# --------------------------------------------------------------------------
# the run

# --------------------------------------------------------------------------
# the run


@dataclass
class Layout:
    vcpus: int
    pages: int
    mem_size: int
    data_gpa: int
    data_size: int
    plans: list[list[int]]
    helper_page: int | None


def make_layout(cfg: PostcopyConfig, variant: PostcopyVariant, image: ElfImage) -> Layout:
    n = cfg.vcpus
    pages = n * cfg.pages_per_vcpu + (1 if variant.non_vcpu_touch else 0)
    mem = mem_size_for(image.end, n)
    data_size = pages * PAGE_SIZE
    plans = []
    for v in range(n):
        own = [p for p in range(v, n * cfg.pages_per_vcpu, n)]
        if variant.shared_first:
            plan = [0] + [p for p in own if p != 0]
        else:
            plan = own[::-1]  # from the top down: the stream comes from the bottom up
        plans.append(plan[:MAX_TOUCHES])
    helper = pages - 1 if variant.non_vcpu_touch else None
    return Layout(n, pages, mem, mem, data_size, plans, helper)


def _map_data(vm_write: Any, lay: Layout) -> None:
    """Identity-map the data region with 2 MiB pages in the guest's page directory."""
    first = lay.data_gpa // LARGE_PAGE
    last = (lay.data_gpa + lay.data_size - 1) // LARGE_PAGE
    for i in range(first, last + 1):
        vm_write(PD_GPA + 8 * i, struct.pack("<Q", i * LARGE_PAGE | 0x83))


def _configure(gvm: GuestVm, cfg: PostcopyConfig, lay: Layout) -> None:
    abi = gvm.sym("pc_abi", "uint64_t")
    got = tuple(abi[i] for i in range(len(PC_ABI)))
    if got != PC_ABI:
        raise ScenarioFailed(
            Blame.HARNESS,
            f"guest postcopy ABI {got} differs from the "
            f"host's {PC_ABI}: rebuild (a stale guest cache?)",
        )
    for name, value in (
        ("pc_data_gpa", lay.data_gpa),
        ("pc_pages", lay.pages),
        ("pc_seed", cfg.seed),
        ("pc_vcpus", lay.vcpus),
        ("pc_head_qwords", HEAD_QWORDS),
    ):
        gvm.sym(name, "uint64_t")[0] = value
    plan = gvm.sym("pc_plan", "uint32_t")
    plen = gvm.sym("pc_plan_len", "uint32_t")
    for v, pl in enumerate(lay.plans):
        for k, p in enumerate(pl):
            plan[v * MAX_TOUCHES + k] = p
        plen[v] = len(pl)


def _migrate_source(
    kvm: Kvm, cfg: PostcopyConfig, lay: Layout, image: ElfImage, budget_s: float
) -> tuple[Any, Any]:
    """Run the source until every vCPU filled its share; returns (VM state, data bytes)."""
    from kvmharness.snapshot.state import capture, capture_vcpu

    threads = [VcpuThread(f"src-vcpu{i}") for i in range(lay.vcpus)]
    gvm = GuestVm(kvm, image, vcpus=0, mem_size=lay.mem_size)
    try:
        data = gvm.vm.add_memory(DATA_SLOT, lay.data_gpa, lay.data_size)
        _map_data(gvm.vm.write, lay)
        _configure(gvm, cfg, lay)

        def fill(i: int) -> Any:
            v = gvm.add_vcpu(i)
            uc = gvm.expect(v, lib.UCALL_SYNC)
            if uc.args[:1] != [SYNC_FILLED]:
                raise ScenarioFailed(Blame.HARNESS, f"source vcpu{i}: {uc.describe()}")
            return capture_vcpu(kvm, v)  # completes the pending port I/O first

        futures = [t.submit(fill, i) for i, t in enumerate(threads)]
        timer = threading.Timer(budget_s, lambda: [gvm.stop(i) for i in range(len(gvm.vcpus))])
        timer.daemon = True
        timer.start()
        try:
            states = [_result(f, budget_s + 10) for f in futures]
        finally:
            timer.cancel()
        staging = ffi.new("char[]", lay.data_size)
        ffi.buffer(staging)[:] = data.buffer()[:]
        return capture(gvm.vm, states, program=PROGRAM), staging
    finally:
        gvm.close()
        for t in threads:
            t.close()


def _result(fut: Any, timeout: float) -> Any:
    """A future's result, waiting in short slices so signals reach the main thread."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fut.result(timeout=0.2)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise ScenarioFailed(
                    Blame.HARNESS, "a vCPU thread did not finish after its stop"
                ) from None


def _vcpu_body(
    gvm: GuestVm,
    i: int,
    out: VcpuRecord,
    pager: Pager,
    tsc_hz: list[int],
    budget_s: float,
    verify_ns: list[int],
) -> None:
    v = gvm.vcpus[i]
    st = SchedStat()
    out.tid = st.tid
    c0 = r0 = run_t0 = 0
    o0: dict[int, int] = {}
    try:
        try:
            c0, r0 = thread_cpu_ns(st.tid), st.read()[1]
            run_t0 = time.monotonic_ns()
            uc = gvm.expect(v, lib.UCALL_SYNC)
            if uc.args[:1] == [SYNC_FILLED]:  # the source's pending OUT was not completed
                uc = gvm.expect(v, lib.UCALL_SYNC)
            if uc.args[:1] != [SYNC_READY]:
                raise ScenarioFailed(Blame.HARNESS, f"vcpu{i}: expected READY, got {uc.describe()}")
            if i == 0:
                tsc_hz[0] = v.get_tsc_khz() * 1000
            o0 = process_sched()
            c0, r0 = thread_cpu_ns(st.tid), st.read()[1]
            out.run_start_ns = run_t0 = time.monotonic_ns()
            uc = gvm.expect(v, lib.UCALL_SYNC)
            out.run_end_ns = time.monotonic_ns()
            c1, r1 = thread_cpu_ns(st.tid), st.read()[1]
            out.others_ns = others_since(o0, st.tid)
            out.cpu_ns, out.run_delay_ns = c1 - c0, r1 - r0
            if uc.args[:1] != [SYNC_TOUCHED]:
                raise ScenarioFailed(
                    Blame.HARNESS, f"vcpu{i}: expected TOUCHED, got {uc.describe()}"
                )
            pager.touched()
            deadline = time.monotonic() + budget_s
            while not pager.all_placed.wait(0.1):
                if pager.abort.is_set() or time.monotonic() > deadline:
                    out.state = "unplaced"
                    return
            c0, r0 = thread_cpu_ns(st.tid), st.read()[1]
            verify_ns[i] = run_t0 = time.monotonic_ns()
            uc = gvm.expect(v, lib.UCALL_SYNC)
            if uc.args[:1] != [SYNC_VERIFIED]:
                raise ScenarioFailed(
                    Blame.HARNESS, f"vcpu{i}: expected VERIFIED, got {uc.describe()}"
                )
            out.checksum, out.bad_gpa = uc.args[1], uc.args[2]
            gvm.expect(v, lib.UCALL_DONE)
            out.state = "done"
        except GuestStopped as exc:
            # stopped in KVM_RUN (the touching one or the checking one): where, and
            # how its thread spent the wait (ran, queued, or slept)
            t1 = time.monotonic_ns()
            c1, r1 = thread_cpu_ns(st.tid), st.read()[1]
            out.state = "stopped"
            out.stopped = Stopped(exc.rip, t1 - run_t0, c1 - c0, r1 - r0)
            if out.run_start_ns and not out.run_end_ns:
                out.run_end_ns = t1
                out.cpu_ns, out.run_delay_ns = c1 - c0, r1 - r0
    finally:
        st.close()


def _helper_touch(hva: int, out: dict[str, Any]) -> None:
    """A thread that is no vCPU reads a missing page the way a device model or
    the kernel on behalf of a syscall would: write(2) of it into a pipe, so the
    fault is taken by the kernel with the GIL released."""
    out["tid"] = threading.get_native_id()
    r, w = os.pipe()
    try:
        out["t0"] = time.monotonic_ns()
        os.write(w, ffi.buffer(ffi.cast("char *", hva), 8))
        out["t1"] = time.monotonic_ns()
        out["value"] = struct.unpack("<Q", os.read(r, 8))[0]
    finally:
        os.close(r)
        os.close(w)


@dataclass
class Destination:
    """What the destination run leaves for the record."""

    pager: Pager
    vcpus: list[VcpuRecord]
    helper: dict[str, Any] | None
    host_mismatch: list[int]
    watchdog: bool
    verify_ns: list[int]


def run_destination(
    kvm: Kvm,
    cfg: PostcopyConfig,
    variant: PostcopyVariant,
    lay: Layout,
    image: ElfImage,
    state: Any,
    staging: Any,
) -> Destination:
    from kvmharness.snapshot.state import restore

    n = lay.vcpus
    threads = [VcpuThread(f"dst-vcpu{i}") for i in range(n)]
    outcomes = [VcpuRecord(tid=0, state="error") for _ in range(n)]
    verify_ns = [0] * n
    info: dict[str, Any] = {"watchdog": False, "mismatch": []}
    uffd: Userfaultfd | None = None
    pager: Pager | None = None
    gvm: GuestVm | None = None
    old_switch = sys.getswitchinterval()
    watchdog: threading.Timer | None = None
    helper: dict[str, Any] = {}
    try:
        uffd = Userfaultfd()
        ptr, hva = map_anonymous(lay.data_size)
        try:
            uffd.register(hva, lay.data_size)
            vm = restore(kvm, state, vcpu_threads=threads)
        except BaseException:
            lib.munmap(ptr, lay.data_size)
            raise
        gvm = GuestVm.adopt(kvm, vm, image)
        vm.add_mapped_memory(DATA_SLOT, lay.data_gpa, ptr, lay.data_size)  # owns ptr now
        tids = {t.tid: i for i, t in enumerate(threads)}
        plan = PagerPlan(
            lay.pages,
            n,
            cfg.latency_us * 1000,
            variant.stream_during,
            variant.shared_first,
            lay.helper_page,
            SHARED_HOLD_S,
        )
        pager = Pager(uffd, hva, staging, plan, tids)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        pager.start()
        tsc_hz = [0]

        def on_budget() -> None:
            info["watchdog"] = True
            log.warning(
                "postcopy: past the %.0f s budget: stopping vCPUs, placing every page",
                cfg.budget_s,
            )
            for i in range(n):
                gvm.stop(i)
            pager.request_flush()

        watchdog = threading.Timer(cfg.budget_s, on_budget)
        watchdog.daemon = True
        watchdog.start()
        futures = [
            t.submit(_vcpu_body, gvm, i, outcomes[i], pager, tsc_hz, cfg.budget_s, verify_ns)
            for i, t in enumerate(threads)
        ]
        helper_thread = None
        if lay.helper_page is not None:
            helper_thread = threading.Thread(
                target=_helper_touch,
                args=(hva + lay.helper_page * PAGE_SIZE, helper),
                name="pc-helper",
                daemon=True,
            )
            helper_thread.start()
        for f in futures:
            _result(f, cfg.budget_s * 2 + 30)
        if helper_thread is not None:
            helper_thread.join(cfg.budget_s)
        if pager.errors:
            raise pager.errors[0]
        # the guest's own readings
        touch = gvm.sym("pc_touch", "uint64_t")
        res = gvm.sym("pc_result", "uint64_t")
        hz = tsc_hz[0] or 1
        for i, (o, pl) in enumerate(zip(outcomes, lay.plans, strict=True)):
            base = i * MAX_TOUCHES * TOUCH_WORDS
            for k in range(len(pl)):
                t_a, t_b, val = (touch[base + k * TOUCH_WORDS + j] for j in range(3))
                o.stall_ns.append(((t_b - t_a) & U64) * 10**9 // hz)
                o.value.append(val)
            r = i * RESULT_WORDS
            o.steal_before, o.steal_after = res[r + R_STEAL_BEFORE], res[r + R_STEAL_AFTER]
            o.guest_tsc_ns = ((res[r + R_TSC_END] - res[r + R_TSC_START]) & U64) * 10**9 // hz
            o.verify_ns = verify_ns[i]
            if o.state == "done":
                o.checksum2 = res[r + R_CHECKSUM2]
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if pager is not None:
            pager.abort.set()
            if gvm is not None and not pager.all_placed.is_set():
                for i in range(len(gvm.vcpus)):  # an unfinished run: stop every vCPU
                    gvm.stop(i)
            pager.close()
        if uffd is not None:
            # wakes any thread still asleep on a missing page (see host/uffd.py)
            if gvm is not None and pager is not None and DATA_SLOT in gvm.vm.slots:
                info["mismatch"] = _compare_memory(gvm, lay, staging, pager)
            uffd.close()
        if gvm is not None:
            for i in range(len(gvm.vcpus)):
                gvm.vcpus[i].kick()
        for t in threads:
            t.close(timeout=5)
        if gvm is not None:
            gvm.close()
        sys.setswitchinterval(old_switch)
    return Destination(
        pager, outcomes, helper or None, info["mismatch"], info["watchdog"], verify_ns
    )


def _compare_memory(gvm: GuestVm, lay: Layout, staging: Any, pager: Pager) -> list[int]:
    """Pages whose destination bytes differ from the source's (placed pages only:
    reading a missing page from this thread would block it on the userfaultfd)."""
    dst = gvm.vm.slots[DATA_SLOT].buffer()
    src = ffi.buffer(staging)
    return [
        p
        for p in range(lay.pages)
        if pager.received[p]
        and dst[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] != src[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
    ]


def build_record(
    cfg: PostcopyConfig, variant: PostcopyVariant, lay: Layout, dst: Destination
) -> PostcopyRecord:
    pager = dst.pager
    harness = [f"pager: {e!r}" for e in pager.errors]
    return PostcopyRecord(
        variant=variant.name,
        kind=variant.kind,
        vcpus=lay.vcpus,
        latency_us=cfg.latency_us,
        budget_s=cfg.budget_s,
        seed=cfg.seed,
        pages=lay.pages,
        data_gpa=lay.data_gpa,
        plans=lay.plans,
        helper_page=lay.helper_page,
        switch_interval_ns=int(SWITCH_INTERVAL_S * 1e9),
        faults=[pj.Fault(*f) for f in pager.faults],
        placements=[pj.Placement(*p) for p in pager.placements],
        vcpu=dst.vcpus,
        fault_thread=pager.ft_sched,
        helper=dst.helper,
        host_mismatch=dst.host_mismatch,
        eexist=pager.eexist,
        harness=harness,
        watchdog=dst.watchdog,
    )


def _run(kvm: Kvm, cfg: PostcopyConfig, variant: PostcopyVariant) -> tuple[Layout, Destination]:
    image = load_program(PROGRAM)
    lay = make_layout(cfg, variant, image)
    state, staging = _migrate_source(kvm, cfg, lay, image, cfg.budget_s)
    return lay, run_destination(kvm, cfg, variant, lay, image, state, staging)


def run_scenario(cfg: PostcopyConfig, kvm: Kvm | None = None) -> PostcopyResult:
    cfg.validate()
    variant = VARIANTS[cfg.variant]
    t0 = time.monotonic()
    out = guarded_run(
        f"postcopy {cfg.variant}", lambda: on_kvm(kvm, lambda k: _run(k, cfg, variant))
    )
    if out.value is None:
        blame = out.blame or Blame.HARNESS
        return PostcopyResult(
            cfg,
            variant,
            verdict_for(variant.kind, blame=blame),
            f"could not run ({blame}): {out.error}",
            out.wall_s,
            [],
            error=out.error,
        )
    lay, dst = out.value
    record = build_record(cfg, variant, lay, dst).to_dict()
    j: Judgement = pj.judge(record)  # the one judge `kvmharness judge` runs too
    pager = dst.pager
    span = pager.last_place_ns - pager.first_place_ns
    stats = {
        "pages": lay.pages,
        "placed_per_s": (pager.placed_count - 1) * 1e9 / span if span > 0 else None,
        "stream_unpaced_per_s": (pager.fast[2] - 1) * 1e9 / (pager.fast[1] - pager.fast[0])
        if pager.fast[2] > 1 and pager.fast[1] > pager.fast[0]
        else None,
    }
    return PostcopyResult(
        cfg,
        variant,
        j.verdict,
        j.observed,
        time.monotonic() - t0,
        j.violations,
        record,
        j.notes,
        stats,
    )


#: What ``PostcopyResult.to_json`` adds to the record the judge reads.
_DERIVED = frozenset(
    {
        "scenario",
        "strategy",
        "why",
        "verdict",
        "observed",
        "error",
        "wall_s",
        "violations",
        "blocktime",
        "notes",
        "stats",
        "known",
    }
)


def from_record(record: dict[str, Any], judgement: Judgement) -> PostcopyResult:
    """``kvmharness judge``'s hook: the result a saved record shows in the
    postcopy table, with today's judgement (its notes carry the blocktime,
    the QEMU models and the agreement figures the table reads)."""
    name = str(read_record(record)["variant"])
    variant = VARIANTS.get(name) or PostcopyVariant(
        name, Kind(record.get("kind", "promise")), str(record.get("why") or "")
    )
    c = record.get("config") or {}
    known = {f.name for f in fields(PostcopyConfig)}
    cfg = PostcopyConfig(**{k: v for k, v in c.items() if k in known})
    cfg.variant, cfg.vcpus = name, int(record.get("vcpus", cfg.vcpus))
    wall = record.get("wall_s")
    return PostcopyResult(
        cfg,
        variant,
        judgement.verdict,
        judgement.observed,
        float(wall) if isinstance(wall, int | float) else 0.0,
        list(judgement.violations),
        # the series the judge read; none for a scenario that never ran
        {k: v for k, v in record.items() if k not in _DERIVED} if "faults" in record else None,
        dict(judgement.notes),
        dict(record.get("stats") or {}),
        record.get("error"),
    )


def run_one(name: str, vcpus: int, options: RunOptions, kvm: Kvm | None = None) -> PostcopyResult:
    """For ``run``, ``bisect`` and ``postcopy``: a vCPU count this family
    cannot take is an ERROR row (bad usage, exit 128), not a traceback."""
    cfg = PostcopyConfig(name, vcpus, options.latency_us, options.pages_per_vcpu, options.budget_s)
    try:
        cfg.validate()
    except ValueError as exc:
        return PostcopyResult(
            cfg,
            VARIANTS.get(name, VARIANTS[DEFAULT_VARIANTS[0]]),
            Verdict.ERROR,
            f"not run: {exc}",
            0.0,
            [],
            error=str(exc),
        )
    return run_scenario(cfg, kvm)


FAMILY = Family(
    "postcopy",
    dict(VARIANTS),
    DEFAULT_VARIANTS,
    [2],
    run_one,
    "kvmharness.scenarios.postcopy_view",
    max_vcpus=MAX_VCPUS,
)
