"""The steal-time matrix on real KVM: promises hold, characterizations report figures,
and a deliberately broken restore is caught (the checks can fail on real data)."""

from __future__ import annotations

import pytest

from kvmharness import checks
from kvmharness.scenarios.base import BROKEN, CHARACTERIZED, HOLDS, PROMISE
from kvmharness.scenarios.steal import STRATEGIES, StealConfig, run_scenario

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(120)]

PROMISES = [s for s, v in STRATEGIES.items() if v.kind == PROMISE]
CHARACTERIZATIONS = [s for s, v in STRATEGIES.items() if v.kind != PROMISE]


def _explain(res) -> str:
    lines = [f"{res.strategy.name} {res.config.vcpus} vCPUs: {res.verdict}: {res.observed}"]
    lines += [f"  {v.kind} {v.series}[{v.index}] {v.detail}" for v in res.violations[:10]]
    return "\n".join(lines)


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("strategy", PROMISES)
def test_promise_holds(kvm, strategy, vcpus):
    res = run_scenario(StealConfig(strategy, vcpus), kvm)
    assert res.error is None, res.error
    assert res.verdict == HOLDS, _explain(res)
    for rec in res.records:
        assert 0 < rec.boundary < len(rec.guest), "samples on both sides of the boundary"
        assert rec.guest[-1].value > 0, "steal grew under contention"
        assert len(rec.phases) == 2


@pytest.mark.parametrize("strategy", CHARACTERIZATIONS)
def test_characterization_reports_what_it_measured(kvm, strategy, characterize):
    res = run_scenario(StealConfig(strategy, 2), kvm)
    assert res.error is None, res.error
    assert res.verdict == CHARACTERIZED
    before, after = res.steal_at_boundary()
    assert before is not None and after is not None
    # The report must match the data it came from.
    assert res.violations == _rejudge(res)
    characterize(f"{strategy}: steal {checks.format_ns(before)} -> {checks.format_ns(after)} "
                 f"across the boundary; {res.observed}")


def _rejudge(res):
    from kvmharness.scenarios.steal import judge

    return judge(res.config, res.records)


def test_four_vcpus_fresh_vm_main_thread(kvm):
    res = run_scenario(StealConfig("fresh-vm/main-thread", 4), kvm)
    assert res.verdict == HOLDS, _explain(res)
    assert len(res.records) == 4


def test_broken_restore_is_caught_on_real_kvm(kvm, monkeypatch):
    """Negative control: restore the steal area as zeros (a VMM that loses guest
    memory of the area); the promise check must call the result BROKEN."""
    import kvmharness.snapshot.state as state

    real_restore_vm = state.restore_vm

    def lossy_restore_vm(k, st):
        gvm = real_restore_vm(k, st)
        base = gvm.symbol("steal_areas")
        gvm.vm.write(base, bytes(64 * len(st.vcpus)))
        return gvm

    monkeypatch.setattr(state, "restore_vm", lossy_restore_vm)
    res = run_scenario(StealConfig("fresh-vm/vcpu-thread", 1, contend_ms=100), kvm)
    assert res.verdict == BROKEN, _explain(res)
    kinds = {v.kind for v in res.violations}
    assert checks.KIND_DECREASE in kinds
    boundary = res.records[0].boundary
    assert any(v.index == boundary and v.series.startswith("vcpu0") for v in res.violations)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        StealConfig("nope").validate()
    with pytest.raises(ValueError, match="vcpus must be 1, 2 or 4"):
        StealConfig("cancelled-save", 3).validate()
