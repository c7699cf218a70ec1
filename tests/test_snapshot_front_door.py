"""Snapshots have a front door: ``run --keep-snapshots DIR`` keeps the files a
cross-process scenario made, and ``snapshot inspect`` shows their vCPU state
(registers, system registers, MSRs) in its human view, not only in --json."""

from __future__ import annotations

import json
import os
import struct

import pytest

from kvmharness.cli import main
from kvmharness.snapshot import write_snapshot
from kvmharness.snapshot.state import STATE_KIND, STATE_VERSION
from kvmharness.snapshot.vmview import REGS, SREGS_SIZE

RIP = 0x100144
CR3 = 0x4000
STEAL_MSR = 0x4B564D03


def _vm_state_file(path, *, regs_size: int = REGS.size) -> str:
    regs = list(range(1, 19))
    regs[16] = RIP
    raw_regs = REGS.pack(*regs)[:regs_size]
    sregs = bytearray(SREGS_SIZE)
    # cr0 cr2 cr3 ... after 8 segments (24 bytes each) and 2 tables (16 each)
    struct.pack_into("<3Q", sregs, 8 * 24 + 2 * 16, 0x80010033, 0, CR3)
    meta = {
        "kind": STATE_KIND,
        "state_version": STATE_VERSION,
        "mem_size": 4096,
        "vcpus": [
            {
                "index": 0,
                "mp_state": 0,
                "tsc_khz": 2_000_000,
                "msrs": {"0x10": 12345, f"{STEAL_MSR:#x}": 0x102041},
                "cpuid": [],
            }
        ],
    }
    sections = {"mem/slot0": bytes(4096), "vcpu0/sregs": bytes(sregs), "vcpu0/regs": raw_regs}
    write_snapshot(str(path), meta, sections)
    return str(path)


def test_inspect_shows_registers_and_msrs_in_the_human_view(tmp_path, capsys):
    f = _vm_state_file(tmp_path / "s.kvmsnap")
    assert main(["snapshot", "inspect", f]) == 0
    out = capsys.readouterr().out
    assert f"rip {RIP:#018x}" in out
    assert "rax 0x0000000000000001" in out
    assert f"cr3 {CR3:#x}" in out
    assert "KVM_STEAL_TIME" in out and "area at gpa 0x102040, enabled" in out
    assert "IA32_TSC" in out and "0x3039" in out
    assert "[1 items]" not in out  # the vCPUs are shown, not summarized


def test_inspect_says_so_when_a_register_section_has_the_wrong_size(tmp_path, capsys):
    f = _vm_state_file(tmp_path / "s.kvmsnap", regs_size=100)
    assert main(["snapshot", "inspect", f]) == 0
    out = capsys.readouterr().out
    assert "regs section of 100 bytes, not 144" in out
    assert "rip" not in out.split("vCPU 0:")[1].split("MSRs")[0]


@pytest.mark.parametrize("content", [b"", b"not a snapshot\n", b"\x7fELF" + bytes(60)])
def test_inspect_of_a_non_snapshot_is_one_line_and_exit_2(tmp_path, capsys, content):
    f = tmp_path / "x.kvmsnap"
    f.write_bytes(content)
    assert main(["snapshot", "inspect", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(f) in err


def _run_rc(argv):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    return info.value.code


def test_keep_snapshots_refuses_a_dir_it_cannot_make_before_anything_runs(tmp_path, capsys):
    """Bad usage of run exits 128 (it aborts a git bisect run), one line, nothing made."""
    missing = tmp_path / "no" / "such"
    assert _run_rc(["run", "-s", "steal/cross-process", "--keep-snapshots", str(missing)]) == 128
    err = capsys.readouterr().err
    assert "--keep-snapshots" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert _run_rc(["run", "-s", "steal/cross-process", "--keep-snapshots", str(a_file)]) == 128
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no unwritable directory")
def test_keep_snapshots_refuses_an_unwritable_dir(tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    assert _run_rc(["run", "-s", "steal/cross-process", "--keep-snapshots", str(d)]) == 128
    assert "not writable" in capsys.readouterr().err


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_keep_snapshots_keeps_the_cross_process_snapshot_named_by_scenario(tmp_path, capsys):
    keep = tmp_path / "snaps"  # made by run: its parent exists
    rc = main(
        [
            "run",
            "-q",
            "-s",
            "steal/cross-process/vcpu-thread,clock/restore/cross-process/vcpu-thread",
            "--vcpus",
            "1",
            "--contend-ms",
            "20",
            "--keep-snapshots",
            str(keep),
            "--json",
            str(tmp_path / "run.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc in (0, 1, 125), out
    names = sorted(os.listdir(keep))
    assert names == [
        "clock-restore-cross-process-vcpu-thread-1vcpu.kvmsnap",
        "steal-cross-process-vcpu-thread-1vcpu.kvmsnap",
    ]
    assert "snapshots kept in" in out and names[1] in out
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["snapshots"]["dir"] == str(keep)
    assert sorted(doc["snapshots"]["files"]) == names
    assert main(["snapshot", "inspect", str(keep / names[1])]) == 0
    view = capsys.readouterr().out
    assert "vCPU 0:" in view and "KVM_STEAL_TIME" in view and "enabled" in view
    assert "rip 0x0000000000000000" not in view  # a vCPU that ran has left reset state
