"""Judges: pure functions from a run record to a verdict.

A scenario run writes a **record**: the JSON a result's ``to_json`` gives,
with ``schema`` (:data:`SCHEMA_VERSION`), ``family``, ``variant``, ``vcpus``,
``config`` and every series the judge reads.  A family's judge lives in
``kvmharness.judges.<family>`` as ``judge(record) -> Judgement``.  The live
run judges its own record through that same function, so ``kvmharness judge
RUN.json`` on a saved run gives what the run gave, and a corpus of real
records (stock kernels, kernel mutants) tests every judge both ways.

Nothing here, or in a family's judge module, drives a VM: no import of
``kvmharness.kvm``, ``host`` or ``guest`` (``tests/test_layers.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmharness.checks import Violation
from kvmharness.scenarios.base import Verdict

#: Version of a run record.  1: records before judges were split out (no
#: ``schema`` key); 2: records a judge can re-judge alone.
SCHEMA_VERSION = 2


def deltas(xs: Sequence[int]) -> list[int]:
    """``[x0, x1 - x0, x2 - x1, ...]``: small numbers for a large, slowly moving
    series (how records keep timestamps and counters compact)."""
    out, prev = [], 0
    for x in xs:
        out.append(x - prev)
        prev = x
    return out


def undeltas(ds: Iterable[int]) -> list[int]:
    """The series :func:`deltas` encoded."""
    out, acc = [], 0
    for d in ds:
        acc += d
        out.append(acc)
    return out


class RecordError(ValueError):
    """A record a judge cannot read: wrong schema, missing field, unknown family."""


@dataclass
class Judgement:
    """What a judge concluded from a record."""

    verdict: Verdict
    observed: str
    violations: list[Violation]
    notes: dict[str, Any] = field(default_factory=dict)
    """Facts the judge derived that the table and JSON show (e.g. a clock that
    lost KVM_CLOCK_TSC_STABLE at a restore)."""


def read_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its variant named as today: kvmharness 0.1 wrote it also
    as ``strategy`` (the only name in some hand-made records), and postcopy's
    with the family in it (``postcopy/stream``, today ``stream``)."""
    fam = record.get("family")
    name = record.get("variant", record.get("strategy"))
    if isinstance(fam, str) and isinstance(name, str) and name.startswith(fam + "/"):
        name = name[len(fam) + 1 :]
    if name == record.get("variant"):
        return record
    return {**record, "variant": name}


def judge_record(record: dict[str, Any]) -> Judgement:
    """Judge one scenario record with today's rules."""
    record = read_record(record)
    fam = record.get("family")
    if not isinstance(fam, str) or not fam.isidentifier():
        raise RecordError(f"record has no usable 'family' (got {fam!r})")
    schema = record.get("schema")
    if schema != SCHEMA_VERSION:
        raise RecordError(
            f"record of {fam}/{record.get('variant')} has schema {schema!r}; "
            f"this kvmharness judges schema {SCHEMA_VERSION}"
        )
    if isinstance(record.get("hang"), dict):  # it never returned: the hang guard's threads
        return importlib.import_module("kvmharness.judges.hang").judge(record)  # type: ignore[no-any-return]
    try:
        mod = importlib.import_module(f"kvmharness.judges.{fam}")
    except ModuleNotFoundError as exc:
        raise RecordError(f"no judge for family {fam!r}") from exc
    return mod.judge(record)  # type: ignore[no-any-return]
