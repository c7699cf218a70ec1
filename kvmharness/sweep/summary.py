"""Per-kernel records of a sweep and what changed from one kernel to the next.

Pure: from a run document (``kvmharness bisect --json`` written inside a
booted kernel) to one history record, and over records sorted by kernel
version, the first kernel where each scenario's verdict or normalized
figure changed.

Normalized figures are figures of the kernel, not of the host's load:

- steal: per vCPU, whether the boundary charged the runner thread's whole
  run_delay (``+rd``: a new vCPU starts from 0), or steal became the
  runner's run_delay (``=rd``: a thread hop, or a vCPU that only ever ran on
  its thread), exactly, from the runner's run_delay before and after the
  KVM_RUN that produced the reading; and whether steal fell;
- clock: whether any reading went back (warps), and whether the master
  clock (KVM_CLOCK_TSC_STABLE) survived the boundary;
- postcopy: none (its promises are exact: the verdict says it all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

SCHEMA = "kvmharness-sweep/1"

#: a steal ratio "changed" when it moved by more than this (in shares of the
#: runner's run_delay): 0 -> 1 is a kernel charging a thread's run_delay again,
#: while load moves a good kernel's ratio by a few tenths
RATIO_STEP = 0.5

#: outcomes of one kernel (the column's headline)
TESTED = "tested"
CANNOT_TEST = "cannot test"
FAULT = "harness fault"


def status_of(result: dict[str, Any]) -> str:
    """What a cell says: the verdict (today's word, whatever the run file's
    age), or known-broken / fixed? where a known issue matched."""
    from kvmharness.scenarios.base import state_word

    known = result.get("known") or {}
    if known.get("status") in ("known-broken", "fixed?"):
        return str(known["status"])
    return state_word(str(result.get("verdict") or "harness error"))


def refresh(record: dict[str, Any]) -> dict[str, Any]:
    """A saved per-kernel record with its cells computed again from its whole
    run document where that is still kept (today's figures and words), else
    as saved with today's words."""
    import gzip
    import json

    path = record.get("run_json")
    if path and record.get("outcome") == TESTED:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                record = {**record, "scenarios": scenarios_of(json.load(f))}
        except (OSError, ValueError):
            pass
    return normalize(record)


def normalize(record: dict[str, Any]) -> dict[str, Any]:
    """A per-kernel record of any age with today's state words in its cells."""
    from kvmharness.scenarios.base import state_word

    for s in record.get("scenarios") or []:
        s["status"] = state_word(str(s.get("status")))
    return record


def scenario_id(result: dict[str, Any]) -> str:
    return f"{result.get('family')}/{result.get('variant')}@{result.get('vcpus')}"


#: what a steal boundary did, per vCPU, exactly (load cannot move it): the
#: first reading after the boundary is compared with the area as the host read
#: it just before, and with the runner's run_delay before and after the
#: KVM_RUN that produced that reading (KVM charges at entry, in between)
CHARGES_RD = "+rd"
"""the boundary charged the runner's whole run_delay (a new vCPU: last_steal 0)"""
STEAL_IS_RD = "=rd"
"""steal became the runner's run_delay (a vCPU that only ever ran on that
thread, or a thread hop: steal + (new run_delay - old run_delay))"""
OTHER = "other"

STEAL_WORDS = {
    CHARGES_RD: "charged the runner's whole run_delay",
    STEAL_IS_RD: "steal = the runner's run_delay",
    OTHER: "neither",
}


def steal_kinds(before: int, after: int, pre_ns: int, post_ns: int) -> list[str]:
    """Every kind the reading fits: both where steal was 0 before (charging the
    whole run_delay and becoming it are then the same thing)."""
    out = []
    if pre_ns <= after - before <= post_ns:
        out.append(CHARGES_RD)
    if pre_ns <= after <= post_ns:
        out.append(STEAL_IS_RD)
    return out or [OTHER]


def steal_figure(result: dict[str, Any]) -> dict[str, Any] | None:
    from kvmharness.judges import RecordError
    from kvmharness.judges.steal import records_of

    try:
        records = records_of(result)
    except RecordError:
        return None
    per_vcpu, fell = [], False
    for r in records:
        b = r.boundary
        if not 0 < b < min(len(r.guest), len(r.host), len(r.ctx)):
            return None
        before, after = r.host[b - 1].value, r.guest[b].value
        per_vcpu.append(steal_kinds(before, after, r.ctx[b].pre_ns, r.ctx[b].post_ns))
        fell |= after < before
    # shown: what the vCPUs that can be told apart did (all of them, if none can)
    told = [k for k in per_vcpu if len(k) == 1] or per_vcpu
    shown = sorted({x for k in told for x in k})
    return {
        "ratio": None,
        "shape": "/".join(shown),
        "kinds": per_vcpu,
        "fell": fell,
        "text": ("steal fell; " if fell else "") + ", ".join(STEAL_WORDS[k] for k in shown),
    }


def clock_figure(result: dict[str, Any]) -> dict[str, Any] | None:
    warps = result.get("warps")
    if not isinstance(warps, int):
        return None
    stab = ((result.get("notes") or {}).get("stability")) or {}
    parts = ["warps" if warps else "no warps"]
    if stab.get("stable_at_save") is not None:
        parts.append("master clock lost" if stab.get("lost_at_boundary") else "master clock kept")
    shape = ", ".join(parts)
    text = shape if not warps else f"{warps} warps" + shape[len("warps") :]
    return {"ratio": None, "shape": shape, "text": text}


def figure_of(result: dict[str, Any]) -> dict[str, Any] | None:
    """The scenario's normalized figure (None where nothing was measured)."""
    if result.get("error") or status_of(result) in ("untestable", "not supported", "harness error"):
        return None
    fam = result.get("family")
    if fam == "steal":
        return steal_figure(result)
    if fam == "clock":
        return clock_figure(result)
    return None


def scenarios_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of one kernel's column, from its run document."""
    out = []
    for r in doc.get("results") or []:
        known = r.get("known") or None
        out.append(
            {
                "id": scenario_id(r),
                "family": r.get("family"),
                "variant": r.get("variant"),
                "vcpus": r.get("vcpus"),
                "kind": r.get("kind"),
                "status": status_of(r),
                "observed": str(r.get("observed") or "")[:300],
                "known": known.get("id") if known else None,
                "figure": figure_of(r),
            }
        )
    return out


def kernel_record(
    kernel: dict[str, Any],
    *,
    exit_code: int,
    why: str,
    doc: dict[str, Any] | None,
    timing: dict[str, Any] | None,
    date: str,
    harness: dict[str, Any],
    profile: Sequence[str],
    run_json: str | None,
) -> dict[str, Any]:
    """One line of the sweep's history: one kernel, what it said and why."""
    host = (doc or {}).get("host") or {}
    if doc is not None:
        outcome = TESTED
    elif exit_code == 125:
        outcome = CANNOT_TEST
    else:
        outcome = FAULT
    return {
        "schema": SCHEMA,
        "date": date,
        "kernel": kernel,
        "outcome": outcome,
        "exit_code": exit_code,
        "why": why,
        "verdict": (doc or {}).get("verdict"),
        "backend": host.get("kvm_backend"),
        "timing": timing,
        "harness": harness,
        "profile": list(profile),
        "run_json": run_json,
        "scenarios": scenarios_of(doc) if doc is not None else [],
    }


@dataclasses.dataclass(frozen=True)
class Change:
    scenario: str
    kernel: str
    """the label of the first kernel where it changed"""
    previous: str
    """the label of the kernel before it"""
    before: str
    after: str


def _cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "not run"
    fig = s.get("figure") or {}
    return f"{s['status']}: {fig['text']}" if fig.get("text") else str(s["status"])


def figure_changed(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two normalized figures differ: another shape, or a ratio moved by more
    than :data:`RATIO_STEP`.  Nothing measured on either side is no change."""
    if not a or not b:
        return False
    ka, kb = a.get("kinds"), b.get("kinds")
    if isinstance(ka, list) and isinstance(kb, list) and len(ka) == len(kb):
        # per vCPU: changed only where no kind fits both (steal 0 before fits two)
        return any(not set(x) & set(y) for x, y in zip(ka, kb, strict=True)) or (
            a.get("fell") != b.get("fell")
        )
    if a.get("shape") != b.get("shape"):
        return True
    ra, rb = a.get("ratio"), b.get("ratio")
    return isinstance(ra, int | float) and isinstance(rb, int | float) and abs(ra - rb) > RATIO_STEP


def first_changes(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[Change]]:
    """Over kernels in version order: every scenario id (in first-seen order)
    and, per scenario, the first kernel where its status or normalized figure
    differs from the previous kernel that ran it.  Kernels that were not
    tested (no boot, no KVM) are skipped: they say nothing about a scenario."""
    ids: list[str] = []
    for rec in records:
        for s in rec.get("scenarios") or []:
            if s["id"] not in ids:
                ids.append(s["id"])
    changes = []
    for sid in ids:
        prev: tuple[str, dict[str, Any]] | None = None
        for rec in records:
            if rec.get("outcome") != TESTED:
                continue
            s = next((x for x in rec["scenarios"] if x["id"] == sid), None)
            if s is None:
                continue
            label = rec["kernel"]["label"]
            if prev is not None:
                p = prev[1]
                if p["status"] != s["status"] or figure_changed(p.get("figure"), s.get("figure")):
                    changes.append(Change(sid, label, prev[0], _cell(p), _cell(s)))
                    break
            prev = (label, s)
    return ids, changes
