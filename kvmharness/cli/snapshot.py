"""``kvmharness snapshot inspect``: what a snapshot file holds."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from kvmharness.snapshot.inspect_cmd import register as register_snapshot

    register_snapshot(sub)
