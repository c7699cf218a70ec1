"""Postcopy's migration, host side: the guest's layout and ABI, the source VM
that fills the data region, the destination whose data region starts empty
under userfaultfd with the pager (:mod:`kvmharness.host.pager`) placing pages,
and the record built from what both saw.  The variants, their results and
the family live in :mod:`kvmharness.scenarios.postcopy`; the judge in
:mod:`kvmharness.judges.postcopy`.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from kvmharness.ffi import ffi, lib
from kvmharness.guest.elf import ElfImage
from kvmharness.guest.machine import LARGE_PAGE, PD_GPA, GuestStopped, GuestVm, mem_size_for
from kvmharness.host.pager import Pager, PagerPlan, others_since, process_sched
from kvmharness.host.threads import VcpuThread
from kvmharness.host.uffd import PAGE_SIZE, Userfaultfd, map_anonymous
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
from kvmharness.kvm import Kvm
from kvmharness.scenarios.base import (
    MAX_PAGES_PER_VCPU,
    Blame,
    Kind,
    ScenarioFailed,
)
from kvmharness.scenarios.lifecycle import RunMeter


class PostcopyConfig(Protocol):
    """What the migration reads of a run's config
    (:class:`kvmharness.scenarios.postcopy.PostcopyConfig`)."""

    vcpus: int
    latency_us: int
    pages_per_vcpu: int
    budget_s: float
    seed: int


class PostcopyVariant(Protocol):
    """What the migration reads of a variant
    (:class:`kvmharness.scenarios.postcopy.PostcopyVariant`)."""

    name: str
    kind: Kind
    stream_during: bool
    shared_first: bool
    non_vcpu_touch: bool


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
    with RunMeter(exact_cpu=True) as meter:
        out.tid = meter.tid
        try:
            meter.begin()
            uc = gvm.expect(v, lib.UCALL_SYNC)
            if uc.args[:1] == [SYNC_FILLED]:  # the source's pending OUT was not completed
                uc = gvm.expect(v, lib.UCALL_SYNC)
            if uc.args[:1] != [SYNC_READY]:
                raise ScenarioFailed(Blame.HARNESS, f"vcpu{i}: expected READY, got {uc.describe()}")
            if i == 0:
                tsc_hz[0] = v.get_tsc_khz() * 1000
            o0 = process_sched()
            out.run_start_ns = meter.begin().t_ns
            uc = gvm.expect(v, lib.UCALL_SYNC)
            d = meter.end()
            out.run_end_ns = out.run_start_ns + d.t_ns
            out.others_ns = others_since(o0, meter.tid)
            out.cpu_ns, out.run_delay_ns = d.cpu_ns, d.run_delay_ns
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
            verify_ns[i] = meter.begin().t_ns
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
            out.state = "stopped"
            d = meter.end()
            out.stopped = meter.stopped(exc, d)
            if out.run_start_ns and not out.run_end_ns:
                out.run_end_ns = meter.start.t_ns + d.t_ns
                out.cpu_ns, out.run_delay_ns = d.cpu_ns, d.run_delay_ns


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
