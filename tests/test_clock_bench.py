"""scripts/bench_clock.py runs end to end and writes sane JSON (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_clock.py"


@pytest.mark.kvm
def test_bench_clock_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--rounds",
            "1",
            "--batches",
            "1",
            "--vcpus",
            "1,2",
            "--phase-ms",
            "30",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x raw TSC" in proc.stdout and "reads/s/vCPU" in proc.stdout
    data = json.loads(out.read_text())
    cost = data["guest_cost"]["ns_per_read"]
    assert set(cost) == {"raw TSC", "kvmclock", "kvmclock + warp/vDSO"}
    assert all(v["median"] > 0 for v in cost.values())
    assert [r["vcpus"] for r in data["warp"]] == [1, 2]
    assert all(r["reads"] > 0 for r in data["warp"])
