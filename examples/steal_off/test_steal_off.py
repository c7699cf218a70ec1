"""Steal time stops when the guest disables it, even while its vCPU thread waits.

Phase 1 (enabled) is the control: under the same contention steal grows, so
phase 2 (disabled) staying frozen means something.  The guest checks the
frozen area itself (a GUEST_ASSERT), the host checks it again from outside.
"""

from __future__ import annotations

import pytest

from kvmharness.testing import (
    Stealer,
    VcpuThread,
    expect_sync,
    read_symbol,
    run_delay_ns,
    run_until_done,
    usable_cpus,
    write_symbol,
)

PHASE_MS = 40  # wall time of each busy phase (the guest counts TSC cycles)


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_steal_time_stops_when_the_guest_disables_it(make_guest):
    gvm = make_guest(source="steal_off_guest.c")  # found next to this file
    vcpu = gvm.vcpus[0]
    write_symbol(gvm, "busy_cycles", vcpu.get_tsc_khz() * PHASE_MS)
    cpu = usable_cpus()[-1]

    # The vCPU runs on its own thread, pinned with a busy process on the same
    # CPU: that thread waits on the run queue, which KVM charges as steal.
    with VcpuThread("vcpu0", cpu=cpu) as runner, Stealer(cpu) as stealer:

        def contended_phase() -> tuple[list[int], int]:
            """Run to the next SYNC while the stealer competes; the runner's wait (ns)."""
            stealer.spin(PHASE_MS * 3 / 1000)
            before = run_delay_ns(runner.tid)
            args = runner.call(expect_sync, gvm, vcpu)
            waited = run_delay_ns(runner.tid) - before
            stealer.wait()
            return args, waited

        runner.call(expect_sync, gvm, vcpu)  # steal time enabled
        (steal_start, steal_end, _), waited_on = contended_phase()
        assert waited_on > 1_000_000, "the vCPU thread hardly waited: no contention"
        assert steal_end > steal_start, (
            f"control: steal did not grow while enabled (thread waited {waited_on} ns)"
        )

        off_steal, off_version = runner.call(expect_sync, gvm, vcpu)  # disabled now
        (steal_now, version_now), waited_off = contended_phase()  # GUEST_ASSERT inside
        assert waited_off > 1_000_000, "the vCPU thread hardly waited: no contention"
        assert (steal_now, version_now) == (off_steal, off_version)

        area = read_symbol(gvm, "area", "struct kvm_steal_time")
        assert (area.steal, area.version) == (off_steal, off_version)
        runner.call(run_until_done, gvm, vcpu)
