"""Steal judge details that mutation testing found untested (scripts/mutation.py).

Each test pins one rule of :meth:`VcpuRecord.run_delays` that the corpus
replay does not reach, on a small hand-made vCPU whose numbers make the rule
matter.  No KVM needed."""

from __future__ import annotations

from kvmharness import checks
from kvmharness.checks import Sample
from kvmharness.judges import steal as js


def _vcpu(versions: list[int], values: list[int], run_delay: list[int]) -> js.VcpuRecord:
    """One vCPU life on one thread; ``run_delay[i]`` is the thread's run_delay
    after reading i's KVM_RUN (and before the next)."""
    n = len(versions)
    guest = [
        Sample(1_000 * i, v, ver) for i, (v, ver) in enumerate(zip(values, versions, strict=True))
    ]
    host = [
        Sample(1_000 * i + 500, v, ver)
        for i, (v, ver) in enumerate(zip(values, versions, strict=True))
    ]
    ctx = [js.RunCtx(7, 0, run_delay[i - 1] if i else 0, run_delay[i]) for i in range(n)]
    return js.VcpuRecord(0, guest, host, ctx)


def test_a_new_vcpu_is_fresh_until_its_area_first_changes_from_zero():
    """A new vCPU's area starts at version 0; KVM's first update (here at
    reading 2: the guest enabled steal time late) may charge the thread's whole
    run_delay, and the guest may see it one reading later, so readings 0-3 are
    fresh, 4 on are not.  (Counting from any other starting version, or from
    the area's last version, makes only readings 0-1 fresh.)"""
    r = _vcpu([0, 0, 2, 4, 6, 8], [0, 0, 900, 950, 1_000, 1_050], [100, 200, 300, 400, 500, 600])
    rds = r.run_delays()
    assert [rd.fresh for rd in rds] == [True, True, True, True, False, False]
    assert [rd.start for rd in rds] == [True, False, False, False, False, False]


def test_a_new_vcpus_whole_run_delay_is_counted_from_zero():
    """The first stretch of a new vCPU counts its whole-run_delay charge from
    the area's value 0: steal 1 ns over run_delay + slack at the first update
    is over the run_delay, exactly at it is not."""
    rds = _vcpu([2, 4], [0, 0], [1_000, 1_000]).run_delays()
    assert rds[0].base == 0 and rds[0].zero_start
    slack = 10
    for extra, caught in ((0, False), (1, True)):
        samples = [Sample(0, 1_000 + slack + extra, 2), Sample(1_000, 1_000 + slack + extra, 4)]
        found = checks.check_follows_run_delay(
            "vcpu0", samples, rds, slack_ns=slack, alive_fraction=0.0
        )
        assert bool(found) is caught, found
        if caught:
            assert found[0].kind == checks.KIND_OVER_RUN_DELAY and found[0].index == 0
