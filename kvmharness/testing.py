"""Everything a KVM test of your own needs, in one public module.

A test is a guest C file plus a pytest file beside it (see ``examples/``)::

    # my_guest.c
    #include "runtime.h"
    volatile uint64_t ticks;
    void guest_main(uint32_t cpu)
    {
        for (int i = 0; i < 3; i++)
            GUEST_SYNC(++ticks, cpu);
        GUEST_ASSERT(ticks == 3, ticks);
    }                                  /* returning from guest_main sends DONE */

    # test_my_guest.py
    import pytest
    from kvmharness.testing import read_symbol, run_until_done

    @pytest.mark.kvm
    def test_ticks(make_guest):
        gvm = make_guest(source="my_guest.c")        # found next to this file
        syncs = run_until_done(gvm, gvm.vcpus[0])    # a GUEST_ASSERT raises GuestFailure
        assert [uc.args for uc in syncs] == [[1, 0], [2, 0], [3, 0]]
        assert read_symbol(gvm, "ticks") == 3

The fixtures come from the pytest plugin that installing kvmharness registers:
``kvm`` (the /dev/kvm system object), ``make_guest(program | source=PATH, vcpus=N,
...)``, ``guest_vm``/``vcpu`` (the built-in selftest guest) and ``characterize``;
the ``kvm`` marker skips a test where /dev/kvm is unusable (fails instead under
``KVMHARNESS_REQUIRE_KVM=1``).

What is here, by task:

* **the guest and its channel**: :class:`GuestVm` (``.symbol``, ``.sym``,
  ``.run_until_ucall``, ``.expect``, ``.run_all``, ``.stop``, ``.adopt``), the
  ucall commands :data:`SYNC`, :data:`DONE`, :data:`ASSERT`, :data:`EXCEPTION`,
  :class:`Ucall`, and the exceptions :class:`GuestFailure` (a failed
  ``GUEST_ASSERT`` or an unexpected guest exception: file, line, condition and
  values in its message), :class:`GuestStopped`, :class:`GuestError`,
  :class:`GuestBuildError` (gcc's message, naming your file and line);
* **reading and writing guest variables**: :func:`read_symbol`,
  :func:`write_symbol`, :func:`symbol_address`;
* **the SYNC/DONE/ASSERT loop**: :func:`run_until_done`, :func:`expect_sync`;
* **a vCPU on its own host thread** (KVM charges steal to the thread that issues
  ``KVM_RUN``): :class:`VcpuThread`, :func:`pin_current_thread`, :func:`current_tid`,
  :func:`usable_cpus`;
* **contention**: :class:`Stealer` (a busy process pinned to a CPU) and
  :func:`run_delay_ns` (a thread's run-queue wait, what KVM adds to steal);
* **snapshots**: :func:`capture`, :func:`restore`, :func:`restore_guest`,
  :func:`write_snapshot`, :func:`load_state_file`, :class:`VmState`;
* **the checks** over sample series: :class:`Sample`, :class:`RunDelay`,
  :class:`Violation`, the ``check_*`` functions and :func:`assert_no_violations`;
* **a scenario's verdict**: :func:`assert_holds` (raises :class:`PromiseBroken`,
  carrying the violation kinds, for a broken promise: under
  ``@pytest.mark.kvm_scenario("family/variant")`` a known issue excuses the
  failure only if it lists every kind).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from kvmharness.checks import (
    RunDelay,
    Sample,
    Violation,
    check_alive,
    check_bounded,
    check_follows_run_delay,
    check_monotonic,
    check_rate,
    check_series,
    check_versions,
)
from kvmharness.errors import GuestError
from kvmharness.ffi import lib
from kvmharness.guest.build import GuestBuildError
from kvmharness.guest.elf import ElfImage
from kvmharness.guest.machine import GuestFailure, GuestStopped, GuestVm, Ucall
from kvmharness.host.contention import Stealer, run_delay_ns
from kvmharness.host.threads import VcpuThread, current_tid, pin_current_thread
from kvmharness.known import PromiseBroken, kinds_of, scenario_id
from kvmharness.kvm import Kvm, Vcpu
from kvmharness.scenarios.base import Verdict
from kvmharness.snapshot import write_snapshot
from kvmharness.snapshot.state import VmState, capture, load_state_file, restore

__all__ = [
    "ASSERT",
    "DONE",
    "EXCEPTION",
    "SYNC",
    "GuestBuildError",
    "GuestError",
    "GuestFailure",
    "GuestStopped",
    "GuestVm",
    "Kvm",
    "PromiseBroken",
    "RunDelay",
    "Sample",
    "Stealer",
    "Ucall",
    "VcpuThread",
    "Violation",
    "VmState",
    "assert_holds",
    "assert_no_violations",
    "capture",
    "check_alive",
    "check_bounded",
    "check_follows_run_delay",
    "check_monotonic",
    "check_rate",
    "check_series",
    "check_versions",
    "current_tid",
    "expect_sync",
    "load_state_file",
    "pin_current_thread",
    "read_symbol",
    "restore",
    "restore_guest",
    "run_delay_ns",
    "run_until_done",
    "symbol_address",
    "usable_cpus",
    "write_snapshot",
    "write_symbol",
]

#: ``GUEST_SYNC(...)``: the guest reports up to 8 values and waits to be resumed.
SYNC: int = lib.UCALL_SYNC
#: ``guest_main`` returned.
DONE: int = lib.UCALL_DONE
#: A ``GUEST_ASSERT`` failed (raised as :class:`GuestFailure` unless ``check=False``).
ASSERT: int = lib.UCALL_ASSERT
#: An unexpected guest exception (#PF, #GP, #UD...), raised as :class:`GuestFailure`.
EXCEPTION: int = lib.UCALL_EXCEPTION


# ---- guest variables


def symbol_address(gvm: GuestVm, name: str) -> int:
    """The guest-physical (= virtual) address of a global of the guest program."""
    return gvm.symbol(name)


def read_symbol(gvm: GuestVm, name: str, ctype: str = "uint64_t") -> Any:
    """The value of a guest global, e.g. ``read_symbol(gvm, "ticks")``.

    ``ctype`` is any C type of ``cdefs/guest_abi.h`` or a scalar: for a struct
    (``"struct kvm_steal_time"``) the result is a cffi view into guest memory,
    read field by field (``.steal``, ``.version``)."""
    ptr = gvm.sym(name, ctype)
    return ptr[0] if not ctype.startswith(("struct ", "union ")) else ptr


def write_symbol(gvm: GuestVm, name: str, value: int, ctype: str = "uint64_t") -> None:
    """Set a guest global (usually before the first run, to pick a mode or a size)."""
    gvm.sym(name, ctype)[0] = value


# ---- the SYNC/DONE/ASSERT loop


def expect_sync(gvm: GuestVm, vcpu: Vcpu) -> list[int]:
    """Run ``vcpu`` to its next ``GUEST_SYNC`` and return the values it sent.
    Anything else (DONE, a failed assertion, an exception) raises."""
    return gvm.expect(vcpu, SYNC).args


def run_until_done(
    gvm: GuestVm,
    vcpu: Vcpu,
    *,
    on_sync: Callable[[Ucall], None] | None = None,
    max_syncs: int = 100_000,
) -> list[Ucall]:
    """Run ``vcpu`` until its ``guest_main`` returns (DONE) and return its SYNCs.

    ``on_sync(ucall)`` is called at each SYNC while the vCPU is stopped (read or
    write guest memory, capture state...).  A failed ``GUEST_ASSERT`` or a guest
    exception raises :class:`GuestFailure` with the guest's file, line and values.
    More than ``max_syncs`` SYNCs raise :class:`GuestError` (a guest that never ends).
    """
    syncs: list[Ucall] = []
    while True:
        uc = gvm.run_until_ucall(vcpu)
        if uc.cmd == DONE:
            return syncs
        if uc.cmd != SYNC:
            raise GuestError(f"vcpu{vcpu.index}: unexpected {uc.describe()}")
        syncs.append(uc)
        if len(syncs) > max_syncs:
            raise GuestError(f"vcpu{vcpu.index}: more than {max_syncs} SYNCs without DONE")
        if on_sync is not None:
            on_sync(uc)


# ---- threads and CPUs


def usable_cpus() -> list[int]:
    """The host CPUs this process may run on, in order (pick one to pin a vCPU
    thread and a :class:`Stealer` together)."""
    return sorted(os.sched_getaffinity(0))


# ---- snapshots


def restore_guest(
    kvm: Kvm, state: VmState, program: str | os.PathLike[str] | ElfImage | None = None
) -> GuestVm:
    """A new VM from captured ``state`` (memory, vCPUs, kvmclock), wrapped as a
    :class:`GuestVm` so symbols and the ucall loop work on it.  ``program`` names the
    guest program for its symbols; by default the one recorded in the state, so
    ``capture(gvm.vm, program=gvm.program)`` round-trips.  Close it (``with``) when done."""
    prog = program if program is not None else state.program
    if not prog:
        raise ValueError(
            "the state records no program: capture(vm, program=gvm.program), or pass program="
        )
    vm = restore(kvm, state)
    try:
        return GuestVm.adopt(kvm, vm, prog)
    except BaseException:
        vm.close()
        raise


# ---- checks


def assert_no_violations(violations: Sequence[Violation], what: str = "") -> None:
    """Fail (AssertionError) listing each violation's kind, place and sentence."""
    if violations:
        lines = [f"{v.kind} in {v.series}[{v.index}]: {v.detail}" for v in violations]
        head = f"{what}: " if what else ""
        raise AssertionError(f"{head}{len(violations)} violation(s):\n  " + "\n  ".join(lines))


def assert_holds(result: Any, what: str = "") -> None:
    """Fail unless a scenario result (``run_scenario``'s, any family) held.

    A broken result raises :class:`PromiseBroken` naming its scenario and its
    violation kinds (``kernel-error`` when it broke without one), with the
    observation and the first violations in the message; so the pytest plugin
    can apply the known issues of a ``kvm_scenario`` test by kind.  Any other
    verdict (untestable, not supported, error, characterized) raises a plain
    AssertionError, which no known issue excuses."""
    verdict = result.verdict
    if verdict == Verdict.HOLDS:
        return
    name = scenario_id(result.family, result.variant.name)
    violations = list(getattr(result, "violations", None) or [])
    lines = [f"{what + ': ' if what else ''}{name} {verdict}: {result.observed}"]
    lines += [f"  {v.kind} {v.series}[{v.index}] {v.detail}" for v in violations[:10]]
    if len(violations) > 10:
        lines.append(f"  ... {len(violations) - 10} more")
    if verdict == Verdict.BROKEN:
        kinds = kinds_of(result)
        lines.insert(1, f"  kinds: {', '.join(kinds)}")
        raise PromiseBroken("\n".join(lines), kinds, scenario=name)
    raise AssertionError("\n".join(lines))
