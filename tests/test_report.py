"""Report rendering from synthetic results (no KVM needed)."""

from __future__ import annotations

import os
import stat
import struct

import pytest

from kvmharness.checks import Sample
from kvmharness.judges.steal import RunCtx
from kvmharness.scenarios.steal import VARIANTS, StealConfig, StealResult, VcpuRecord
from kvmharness.scenarios.steal_view import plot_steal, steal_table


def _result(verdict: str = "holds") -> StealResult:
    guest = [Sample(i * 1_000_000, i * 400_000, 2 * i) for i in range(10)]
    rec = VcpuRecord(
        0,
        guest=guest,
        host=list(guest),
        ctx=[RunCtx(1, 0, i * 500_000, i * 500_000 + 100_000) for i in range(10)],
        boundary=5,
        phases=[(0, 4, 5_000_000), (5, 9, 5_000_000)],
    )
    return StealResult(
        StealConfig("fresh-vm/vcpu-thread"),
        VARIANTS["fresh-vm/vcpu-thread"],
        [rec],
        [],
        verdict,
        "steal monotonic",
        0.5,
        0.05,
    )


def test_table_has_boundary_values_and_verdict():
    text = steal_table([_result()])
    assert "fresh-vm/vcpu-thread" in text
    assert "1.6 ms" in text and "2 ms" in text  # samples 4 and 5: 1.6 ms -> 2.0 ms
    assert "holds" in text


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "steal.png"
    plot_steal([_result(), _result("broken")], str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 200 and height > 200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kvmharness-")]


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077], ids=oct)
@pytest.mark.parametrize("kind", ["json", "png"])
def test_output_files_get_the_umask_permissions(tmp_path, umask, mask, kind):
    # (snapshot files stay 0600 whatever the umask: they hold guest memory,
    # see test_snapshot_format.py)
    from kvmharness.report import write_json

    umask(mask)
    out = tmp_path / f"out.{kind}"
    if kind == "json":
        write_json(str(out), {"a": 1})
    else:
        plot_steal([_result()], str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left


def test_write_json_is_compact_and_reads_back_exactly(tmp_path):
    """A run file keeps every integer exactly, one result per line, and holds no
    indentation inside a result (a default run: 0.45 MB instead of 1.7 MB)."""
    import json

    from kvmharness.files import write_json

    payload = {
        "schema": 2,
        "host": {"kernel_release": "6.1.0-57-amd64", "capabilities": {"MAX_VCPUS": 4096}},
        "results": [
            {"family": "steal", "records": [{"guest": [1, 2**63 + 5, -3]}]},
            {"family": "clock", "error": None, "violations": []},
        ],
        "empty": [],
    }
    path = tmp_path / "run.json"
    write_json(str(path), payload)
    text = path.read_text()
    assert json.loads(text) == payload
    lines = text.splitlines()
    assert len(lines) == len(payload) + 2 + len(payload["results"]) + 1
    assert all("  " not in line.strip() for line in lines)
    assert sum(line.lstrip().startswith('{"family"') for line in lines) == 2
