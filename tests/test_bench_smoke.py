"""scripts/bench_kvm_run.py runs end to end and writes sane JSON.

A smoke test only: it asserts that both loops were measured, never how fast
they were (timing thresholds on a shared host would be flaky).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_kvm_run.py"


@pytest.mark.kvm
def test_bench_kvm_run_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--exits", "200", "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "python/C ratio" in proc.stdout  # the table was printed too
    result = json.loads(out.read_text())
    assert result["exits_per_round"] == 200
    assert result["rounds"] == 1
    for side in ("c", "python"):
        fig = result[side]
        assert len(fig["rounds_ns"]) == 1
        for key in ("median_ns", "min_ns", "max_ns"):
            assert fig[key] > 0, (side, key, fig)
    assert result["ratio_python_over_c"] > 0
    assert result["target_ratio"] == pytest.approx(1.10)
    assert isinstance(result["meets_target"], bool)
