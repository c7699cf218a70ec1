"""What every family's run shares, below the families.

A family supplies its variants, its boundary functions and its judge; this
module holds the rest of a scenario's life:

* :func:`check_variant`, :func:`check_vcpus`: the variants and vCPU counts
  a family can take (its knobs: :meth:`RunOptions.validate`);
* :func:`sleep_until`: the phase clock (a boundary waits out its downtime
  from the moment the state was captured);
* :func:`guarded_run`: run one variant, blame what stopped it
  (:func:`~kvmharness.scenarios.base.blame_of`), time it, and hand the family
  what to build its record from (:func:`on_kvm`: on the run's /dev/kvm handle
  or one of its own);
* :class:`Phases`, :func:`run_phases`: the run of a variant with a phase
  before its boundary and one after (the steal and clock families): the VM
  and its vCPU threads made, the first phase, the boundary (in this process,
  :func:`restore_in_new_vm` or the family's own, or across processes), the
  second phase, everything closed; the family supplies the hooks;
* :func:`cross_process`: the save child, the downtime and the restore child,
  with the snapshot in a memfd the parent owns
  (:mod:`kvmharness.scenarios.child`), and :func:`child_main`, the children's
  side of it;
* :class:`RunMeter`: a vCPU thread's wall clock, CPU time and run_delay
  around each KVM_RUN, so a vCPU the watchdog stopped there becomes the
  :class:`~kvmharness.judges.stopped.Stopped` its judge reads.

The knobs, their defaults and bounds are :class:`~kvmharness.scenarios.base.RunOptions`;
a family's config is a :class:`ScenarioConfig`, a view of them: the
variant, the vCPU count and the knobs it uses, under the names its record's
``config`` gives them.  A vCPU the watchdog stopped is judged by
:mod:`kvmharness.judges.stopped`.
"""

from __future__ import annotations

import abc
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Generic, Self, TypeVar

from kvmharness.ffi import lib
from kvmharness.guest.build import load_program
from kvmharness.guest.machine import GuestStopped, GuestVm, mem_size_for
from kvmharness.host.pager import thread_cpu_ns
from kvmharness.host.sched import SchedStat
from kvmharness.host.threads import VcpuThread, close_threads, new_threads
from kvmharness.judges.stopped import Stopped
from kvmharness.kvm import Kvm
from kvmharness.scenarios.base import (
    Blame,
    Family,
    OptionError,
    RunOptions,
    ScenarioFailed,
    blame_of,
    family,
)
from kvmharness.scenarios.child import (
    child_entry,
    keep_snapshot,
    run_child,
    snapshot_path,
    write_snapshot_fd,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def check_variant(family: Family, variant: str) -> None:
    """ValueError unless ``family`` has a variant named ``variant``."""
    if variant not in family.variants:
        known = ", ".join(family.variants)
        raise ValueError(f"unknown {family.name} variant {variant!r} (known: {known})")


def check_vcpus(family: Family, vcpus: int) -> None:
    """ValueError unless ``family`` runs at ``vcpus`` vCPUs."""
    limit = min(family.max_vcpus, lib.GUEST_MAX_VCPUS)
    if not (isinstance(vcpus, int) and 1 <= vcpus <= limit):
        raise ValueError(f"vcpus must be 1 to {limit} for {family.name}, got {vcpus}")


class ScenarioConfig:
    """What a family's config is: one scenario's ``variant`` and ``vcpus``, and
    the :class:`RunOptions` knobs the family uses as its own dataclass fields
    (their defaults RunOptions' own), named as its record's ``config`` names
    them.  The checks and the conversions are here, once.

    A family's config is a dataclass subclass that sets :attr:`family` and,
    where its record spells a knob otherwise, :attr:`renamed`."""

    family: ClassVar[str]
    renamed: ClassVar[Mapping[str, str]] = {}
    """RunOptions' name -> this config's (clock: ``contend_ms`` -> ``phase_ms``)."""
    variant: str
    vcpus: int

    @classmethod
    def _knobs(cls) -> list[tuple[str, str]]:
        """(RunOptions' name, this config's) for every knob the config has."""
        mine = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        pairs = [(f.name, cls.renamed.get(f.name, f.name)) for f in fields(RunOptions)]
        return [(opt, name) for opt, name in pairs if name in mine]

    @classmethod
    def of(cls, variant: str, vcpus: int, options: RunOptions) -> Self:
        """The config of ``variant`` at ``vcpus`` with the run's ``options``."""
        knobs = {name: getattr(options, opt) for opt, name in cls._knobs()}
        return cls(variant=variant, vcpus=vcpus, **knobs)  # type: ignore[call-arg]

    def options(self) -> RunOptions:
        """The knobs as RunOptions (the ones the family does not use: defaults)."""
        return RunOptions(**{opt: getattr(self, name) for opt, name in self._knobs()})

    def validate(self) -> None:
        """The variant and the vCPU count by the family, the knobs by
        :meth:`RunOptions.validate`; ValueError (:class:`OptionError` for a
        knob) names the field as this config does."""
        fam = family(self.family)
        check_variant(fam, self.variant)
        check_vcpus(fam, self.vcpus)
        try:
            self.options().validate()
        except OptionError as exc:
            raise OptionError(self.renamed.get(exc.field, exc.field), exc.text) from None


def start_vm(
    kvm: Kvm,
    program: str,
    threads: list[VcpuThread],
    before_vcpus: Callable[[GuestVm], None] | None = None,
) -> GuestVm:
    """A fresh guest of ``program`` with one vCPU per thread, each created and
    set up by its own thread (the thread that will run it); ``before_vcpus``
    sets the guest's variables first.  Nothing is left open if one fails."""
    image = load_program(program)
    gvm = GuestVm(kvm, image, vcpus=0, mem_size=mem_size_for(image.end, len(threads)))
    try:
        if before_vcpus is not None:
            before_vcpus(gvm)
        for i, t in enumerate(threads):
            t.call(gvm.add_vcpu, i)
    except BaseException:
        gvm.close()
        raise
    return gvm


def sleep_until(deadline_ns: int) -> None:
    """Sleep until CLOCK_MONOTONIC reads ``deadline_ns`` (at once if it passed)."""
    left = deadline_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


@dataclass
class Outcome(Generic[T]):
    """What :func:`guarded_run` leaves the family to build its record from."""

    value: T | None
    """What the run returned (None: it raised)."""
    wall_s: float
    blame: Blame | None = None
    error: str | None = None


def on_kvm(kvm: Kvm | None, body: Callable[[Kvm], T]) -> T:
    """``body(kvm)``, or on a /dev/kvm handle of its own when ``kvm`` is None."""
    if kvm is not None:
        return body(kvm)
    with Kvm() as k:
        return body(k)


def guarded_run(what: str, body: Callable[[], T]) -> Outcome[T]:
    """Run ``body()``, timed; an exception becomes its blame and text, never a
    traceback: the family builds the record of what ran (or of nothing), and
    its judge gives the verdict."""
    t0 = time.monotonic()
    try:
        value = body()
    except Exception as exc:
        blame = blame_of(exc)
        log.info("%s failed to run (%s)", what, blame, exc_info=True)
        return Outcome(None, time.monotonic() - t0, blame, str(exc))
    return Outcome(value, time.monotonic() - t0)


@dataclass
class Saved:
    """What the save child reported, and when it was done."""

    payload: dict[str, Any]
    done_ns: int


def cross_process(
    module: str,
    config: dict[str, Any],
    timeout_s: float,
    *,
    stopped: Callable[[dict[str, Any]], bool],
    downtime_from: Callable[[Saved], int],
    downtime_ms: int,
    keep: tuple[str, str, int],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """savevm/loadvm in two processes: ``module``'s save child runs and writes
    the snapshot into a memfd this process owns; unless ``stopped(payload)``
    (a vCPU the watchdog stopped: nothing to restore), the downtime passes from
    ``downtime_from(saved)`` (CLOCK_MONOTONIC ns, system-wide) and the restore
    child runs from the snapshot.  (save payload, restore payload or None).
    ``keep``: (family, variant, vcpus) the snapshot is kept as when the user
    asked to keep snapshots."""
    snap_fd = os.memfd_create("kvmharness-snapshot", os.MFD_CLOEXEC)
    try:
        a = run_child(module, "save", config, snap_fd, timeout_s)
        saved = Saved(a, time.monotonic_ns())
        if stopped(a):
            return a, None
        if not os.fstat(snap_fd).st_size:
            raise ScenarioFailed(Blame.HARNESS, "save process wrote no snapshot")
        keep_snapshot(snap_fd, *keep)
        sleep_until(downtime_from(saved) + downtime_ms * 1_000_000)
        b = run_child(module, "restore", config, snap_fd, timeout_s)
    finally:
        os.close(snap_fd)
    return a, b


# --------------------------------------------------------------------------
# a variant's two phases around its boundary


@dataclass
class Live:
    """The VM a run is in and the host threads that run its vCPUs (a boundary
    may replace either)."""

    kvm: Kvm
    gvm: GuestVm
    threads: list[VcpuThread]
    life: int = 0
    """How many times the vCPUs were replaced by new ones in this process."""
    second: bool = False
    """The phase after the boundary is next (or running)."""
    start_ns: int = 0
    """CLOCK_MONOTONIC when the boundary began; in a restore child, when the
    save captured the state."""


class Phases(abc.ABC):
    """One run of a two-phase variant, as its family measures it: the hooks
    :func:`run_phases` drives, and what they measured (the family's records).

    ``captured_ns`` is set by a :meth:`capture` that timed the moment the
    downtime runs from (clock: its KVM_GET_CLOCK); left None, the downtime
    runs from the boundary's start (in one process) or from the save child's
    end (across two)."""

    captured_ns: int | None = None
    boundary_s: float = 0.0
    """How long the in-process boundary took (0: none ran)."""

    def __init__(self, cfg: ScenarioConfig) -> None:
        self.cfg = cfg
        opts = cfg.options()
        self.vcpus = cfg.vcpus
        self.phase_ms, self.downtime_ms, self.budget_s = (
            opts.contend_ms,
            opts.downtime_ms,
            opts.budget_s,
        )

    @abc.abstractmethod
    def start(self, kvm: Kvm, threads: list[VcpuThread]) -> GuestVm:
        """A new VM with its vCPUs made on ``threads``, ready for the first phase
        (closed again by this method if it fails)."""

    @abc.abstractmethod
    def phase(self, live: Live) -> None:
        """Run one measured phase on every vCPU (``live.second``: the one after
        the boundary).  A vCPU the watchdog stops is recorded, not raised."""

    @abc.abstractmethod
    def stuck(self) -> bool:
        """A vCPU was stopped by the watchdog: no boundary, no second phase."""

    @abc.abstractmethod
    def mark_boundary(self) -> None:
        """Note in each vCPU's record where the boundary falls."""

    @abc.abstractmethod
    def capture(self, live: Live) -> Any:
        """The VM's state (a :class:`~kvmharness.snapshot.state.VmState`),
        with whatever the restore needs in its ``meta_extra``."""

    @abc.abstractmethod
    def restore(self, kvm: Kvm, threads: list[VcpuThread], state: Any, downtime_ns: int) -> GuestVm:
        """A new VM from ``state``, its vCPUs put as the variant says
        (``downtime_ns``: the time since the boundary began or the state was
        captured)."""

    # ---- across processes

    def config(self) -> dict[str, Any]:
        """What the save and restore children build this run from (JSON)."""
        return asdict(self.cfg)  # type: ignore[call-overload]

    @abc.abstractmethod
    def payload(self) -> dict[str, Any]:
        """What a child reports of its phase (JSON)."""

    @abc.abstractmethod
    def join(self, save: dict[str, Any], restore: dict[str, Any] | None) -> None:
        """Take the children's payloads as this run's (``restore``: None when
        the save child's vCPUs were stopped)."""

    def adopt(self, state: Any) -> None:
        """In the restore child: learn from ``state`` what the save knew (by
        default nothing beyond the state itself)."""
        return None

    def sleep_out_downtime(self, live: Live) -> None:
        """Wait until the downtime has passed since the state was captured (or
        the boundary began)."""
        sleep_until((self.captured_ns or live.start_ns) + self.downtime_ms * 1_000_000)


def _started(sc: Phases, kvm: Kvm, name: str) -> Live:
    threads = new_threads(sc.vcpus, name)
    try:
        return Live(kvm, sc.start(kvm, threads), threads)
    except BaseException:
        close_threads(threads)
        raise


def _close(live: Live) -> None:
    live.gvm.close()
    close_threads(live.threads)


def in_process(kvm: Kvm, sc: Phases, boundary: Callable[[Live], None] | None) -> None:
    """The first phase, ``boundary`` (None: there is none), the second phase,
    all in this process; the VM and threads closed however it ends."""
    live = _started(sc, kvm, "a")
    try:
        sc.phase(live)
        if boundary is None or sc.stuck():
            return
        sc.mark_boundary()
        live.start_ns = time.monotonic_ns()
        boundary(live)
        sc.boundary_s = (time.monotonic_ns() - live.start_ns) / 1e9
        live.second = True
        sc.phase(live)
    finally:
        _close(live)


def restore_in_new_vm(sc: Phases, live: Live, *, new_vcpu_threads: bool = True) -> None:
    """The boundary of a save/restore in one process: capture, close the VM
    (and its threads), wait out the downtime, restore into a new VM (run by
    new threads)."""
    state = sc.capture(live)
    live.gvm.close()
    if new_vcpu_threads:
        close_threads(live.threads)
    sc.sleep_out_downtime(live)
    if new_vcpu_threads:
        live.threads = new_threads(sc.vcpus, "b")
    live.gvm = sc.restore(live.kvm, live.threads, state, time.monotonic_ns() - live.start_ns)
    live.life += 1


def child_main(argv: list[str], make: Callable[[dict[str, Any]], Phases]) -> int:
    """A family module's ``__main__``: ``python -P -m MODULE save|restore CONFIG
    SNAP_FD OUT_FD PARENT`` runs ``make(CONFIG)``'s first or second phase."""
    return child_entry(argv, lambda role, cfg, fd: _child_phase(role, make(cfg), fd))


def _child_phase(role: str, sc: Phases, snap_fd: int) -> dict[str, Any]:
    from kvmharness.snapshot.state import load_state_file

    with Kvm() as kvm:
        if role == "save":
            live = _started(sc, kvm, "a")
            try:
                sc.phase(live)
                if not sc.stuck():
                    write_snapshot_fd(snap_fd, *sc.capture(live).to_snapshot())
            finally:
                _close(live)
        else:
            state = load_state_file(snapshot_path(snap_fd))
            # CLOCK_MONOTONIC is system-wide: the downtime since the save's capture
            down = time.monotonic_ns() - state.captured_ns
            sc.adopt(state)
            threads = new_threads(sc.vcpus, "b")
            try:
                gvm = sc.restore(kvm, threads, state, down)
            except BaseException:
                close_threads(threads)
                raise
            live = Live(kvm, gvm, threads, second=True, start_ns=state.captured_ns)
            try:
                sc.phase(live)
            finally:
                _close(live)
    return {"run": sc.payload(), "stopped": sc.stuck(), "captured_ns": sc.captured_ns}


def across_processes(sc: Phases) -> None:
    """The first phase in a save child, the downtime, the second phase in a
    restore child (``type(sc)``'s module run as :func:`child_main`).  A child
    that outlives both phases and its budget by two minutes is a harness fault."""
    cfg = sc.cfg
    a, b = cross_process(
        type(sc).__module__,
        sc.config(),
        2 * sc.phase_ms / 1000 + sc.budget_s + 120,
        stopped=lambda a: bool(a["stopped"]),
        downtime_from=lambda saved: saved.payload["captured_ns"] or saved.done_ns,
        downtime_ms=sc.downtime_ms,
        keep=(cfg.family, cfg.variant, cfg.vcpus),
    )
    sc.join(a["run"], b["run"] if b is not None else None)


RunT = TypeVar("RunT", bound=Phases)


def run_phases(
    what: str,
    sc: RunT,
    kvm: Kvm | None,
    *,
    boundary: Callable[[Live], None] | None,
    cross: bool,
) -> Outcome[RunT]:
    """:func:`guarded_run` of ``sc``: across processes when ``cross``, else in
    this process (on ``kvm`` or a handle of its own) with ``boundary``."""

    def body() -> RunT:
        if cross:
            across_processes(sc)
        else:
            on_kvm(kvm, lambda k: in_process(k, sc, boundary))
        return sc

    return guarded_run(what, body)


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a thread: CLOCK_MONOTONIC, its CPU time and run_delay (ns)."""

    t_ns: int
    cpu_ns: int
    run_delay_ns: int


class RunMeter:
    """The calling (vCPU) thread's clock, CPU time and run_delay around a KVM_RUN.

    :meth:`begin` just before the KVM_RUN; :meth:`stopped` when the watchdog
    stopped it (:class:`~kvmharness.guest.machine.GuestStopped`): how long it
    waited there and how its thread spent the wait, for
    :func:`~kvmharness.judges.stopped.judge_stopped`.  The CPU time and
    run_delay readings enclose the wall-clock ones (read before the start,
    after the end), so a thread is never counted as asleep for time it ran or
    queued.  ``exact_cpu``: CPU time from the thread's CPU clock (to the ns,
    the running slice included) rather than schedstat's (one read for both,
    lagging a running thread by up to a tick).
    """

    def __init__(self, exact_cpu: bool = False) -> None:
        self.st = SchedStat()
        self.tid = self.st.tid
        self._exact = exact_cpu
        self.start = Reading(0, 0, 0)

    def _sched(self) -> tuple[int, int]:
        cpu, delay = self.st.read()
        return (thread_cpu_ns(self.tid) if self._exact else cpu), delay

    def run_delay(self) -> int:
        """The thread's run_delay now (ns)."""
        return self.st.read()[1]

    def begin(self) -> Reading:
        """Read the thread just before a KVM_RUN; kept as :attr:`start`."""
        cpu, delay = self._sched()
        self.start = Reading(time.monotonic_ns(), cpu, delay)
        return self.start

    def end(self) -> Reading:
        """The growth of each reading since :meth:`begin` (``t_ns``: the wall time)."""
        t = time.monotonic_ns()
        cpu, delay = self._sched()
        s = self.start
        return Reading(t - s.t_ns, cpu - s.cpu_ns, delay - s.run_delay_ns)

    def stopped(self, exc: GuestStopped, d: Reading | None = None) -> Stopped:
        """What the thread did since :meth:`begin` in the KVM_RUN the watchdog
        stopped (``d``: the :meth:`end` already read for it)."""
        d = d or self.end()
        return Stopped(exc.rip, d.t_ns, d.cpu_ns, d.run_delay_ns)

    def close(self) -> None:
        self.st.close()

    def __enter__(self) -> RunMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
