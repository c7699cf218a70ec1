"""What every scenario result has in common: promise or characterization, and a verdict."""

from __future__ import annotations

PROMISE = "promise"
"""KVM promises the property: a failure is a kernel or restore-path regression."""
CHARACTERIZE = "characterize"
"""KVM does not promise it: the scenario reports what it measured and never fails."""

HOLDS = "holds"
BROKEN = "BROKEN"
CHARACTERIZED = "characterized"
ERROR = "ERROR"
"""The harness or its environment failed: no verdict on the kernel."""
UNTESTABLE = "untestable"
"""This host cannot run the scenario (or was too loaded to judge it)."""
