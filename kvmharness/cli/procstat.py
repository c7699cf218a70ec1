"""``kvmharness procstat``: steal checks over guest /proc/stat snapshots."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from kvmharness.procstat import register as register_procstat

    register_procstat(sub)
