"""VM state capture/restore: in process, through a file in another process, and refusal
of bad files without leaving a half-restored VM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvmharness.ffi import lib
from kvmharness.guest.machine import GuestVm
from kvmharness.snapshot import SnapshotFormatError, dumps, loads, write_snapshot
from kvmharness.snapshot.state import VmState, capture, load_state_file, restore

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(60)]
MSR_KVM_STEAL_TIME = lib.MSR_KVM_STEAL_TIME


def _advance(gvm, n=5):
    seqs = []
    for v in gvm.vcpus:
        for _ in range(n):
            uc = gvm.expect(v, lib.UCALL_SYNC)
        seqs.append(uc.args[0])
    return seqs


def test_capture_restore_in_process_continues_the_guest(kvm, make_guest):
    gvm = make_guest("steal", vcpus=2)
    assert _advance(gvm) == [4, 4]
    state = capture(gvm.vm, program="steal")
    assert MSR_KVM_STEAL_TIME in state.vcpus[0].msrs
    assert state.vcpus[1].msrs[MSR_KVM_STEAL_TIME] == gvm.symbol("steal_areas") + 64 | 1
    again = VmState.from_snapshot(loads(dumps(*state.to_snapshot())))
    with GuestVm.adopt(kvm, restore(kvm, again), again.program) as g2:
        assert [g2.expect(v, lib.UCALL_SYNC).args[0] for v in g2.vcpus] == [5, 5]
        assert g2.vcpus[1].get_msr(MSR_KVM_STEAL_TIME) == gvm.symbol("steal_areas") + 64 | 1


RESTORE_CHILD = r"""
import sys
from kvmharness.ffi import lib
from kvmharness.kvm import Kvm
from kvmharness.guest.machine import GuestVm
from kvmharness.snapshot.state import load_state_file, restore
st = load_state_file(sys.argv[1])
with Kvm() as kvm, GuestVm.adopt(kvm, restore(kvm, st), st.program) as g:
    print(g.expect(g.vcpus[0], lib.UCALL_SYNC).args[0])
"""


def test_snapshot_file_restores_in_another_process(make_guest, tmp_path):
    gvm = make_guest("steal")
    _advance(gvm, 7)
    meta, sections = capture(gvm.vm, program="steal").to_snapshot()
    path = tmp_path / "vm.snap"
    write_snapshot(path, meta, sections)
    proc = subprocess.run(
        [sys.executable, "-c", RESTORE_CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"


def _vm_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "kvm-vm" in os.readlink(f"/proc/self/fd/{fd}"):
                n += 1
        except OSError:
            pass
    return n


@pytest.mark.parametrize("damage", ["truncate", "flip", "wrong-kind", "missing-section"])
def test_bad_snapshot_is_refused_before_any_vm_exists(make_guest, tmp_path, damage):
    gvm = make_guest("steal")
    _advance(gvm, 2)
    meta, sections = capture(gvm.vm, program="steal").to_snapshot()
    path = tmp_path / "vm.snap"
    if damage == "wrong-kind":
        meta["kind"] = "something-else"
    if damage == "missing-section":
        del sections["vcpu0/sregs"]
    write_snapshot(path, meta, sections)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    if damage == "flip":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    before = _vm_fds()
    with pytest.raises(SnapshotFormatError) as info:
        load_state_file(str(path))
    assert info.value.path == str(path), "the exception names the file in its field"
    assert info.value.problem and str(path) not in info.value.problem
    assert str(info.value) == f"{path}: {info.value.problem}"
    if damage == "wrong-kind":
        assert info.value.problem.startswith("not restorable VM state: meta kind")
    assert _vm_fds() == before, "no VM was created for a bad file"


def test_restore_order_is_one_table_with_reasons():
    """Every vCPU struct is captured, validated and restored from one table."""
    from kvmharness.snapshot.state import VCPU_STATE, VCPU_STRUCTS

    names = [p.name for p in VCPU_STATE]
    assert names[0] == "cpuid" and names[-1] == "msrs"
    assert names.index("sregs") < names.index("regs") < names.index("events")
    assert names.index("xsave") < names.index("xcrs")
    assert set(VCPU_STRUCTS) == {"sregs", "regs", "fpu", "xsave", "xcrs", "debugregs", "events"}
    assert all(p.why for p in VCPU_STATE)


def test_restore_needs_no_guest_build(kvm, make_guest, monkeypatch):
    """State restore works at the VM level: with the guest build made to fail,
    a captured VM still restores and its vCPU keeps running."""
    import kvmharness.guest.build as build

    gvm = make_guest("steal")
    _advance(gvm, 3)
    state = capture(gvm.vm, program="steal")
    image = gvm.image

    def no_build(*a, **k):
        raise AssertionError("restore built a guest program")

    monkeypatch.setattr(build, "build", no_build)
    monkeypatch.setattr(build, "load_program", no_build)
    with GuestVm.adopt(kvm, restore(kvm, state), image) as g2:
        assert g2.expect(g2.vcpus[0], lib.UCALL_SYNC).args[0] == 3


def test_snapshot_inspect_lists_a_real_vm_state(make_guest, tmp_path, capsys):
    from kvmharness.cli import main

    gvm = make_guest("steal", vcpus=2)
    _advance(gvm, 2)
    path = tmp_path / "vm.snap"
    write_snapshot(path, *capture(gvm.vm, program="steal").to_snapshot())
    assert main(["snapshot", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for name in ("mem/slot0", "vcpu0/regs", "vcpu1/xsave", "kvmharness-vm-state"):
        assert name in out
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["snapshot", "inspect", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
