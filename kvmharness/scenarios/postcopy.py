"""Postcopy migration with userfaultfd on real KVM: nothing lost, exact blocktime.

A source VM runs ``guest/src/programs/postcopy.c``: each vCPU fills its share
of a data region (slot 1) with a pattern and reports FILLED.  The host
migrates there: the vCPU state and the low memory (slot 0: program, page
tables, stacks, the touch plans) go to a destination VM as they are; the
data region of the destination is private anonymous memory with no page in
it, registered with userfaultfd in MISSING mode with UFFD_FEATURE_THREAD_ID.
The destination's vCPUs then touch the pages of their plans:

* the **fault thread** (:class:`kvmharness.host.pager.Pager`) reads the
  userfaultfd messages, records each (time, page, the thread id the kernel
  named) and requests the page;
* the **resolver** places a requested page ``latency_us`` after its request
  with UFFDIO_COPY, EEXIST meaning the stream was first;
* the **background stream** pushes the other pages in address order, one per
  latency while the vCPUs touch, then all the rest;
* each vCPU waits at TOUCHED until every page is in place, then checksums
  every byte of its share and checks it against the pattern.

The run builds a record of what the kernel and the guest reported and
judges it with :func:`kvmharness.judges.postcopy.judge`, the function
``kvmharness judge RUN.json`` runs.  What the kernel promises, each judged
from measured quantities only (the latency applied, wall time, the threads'
run_delay from /proc/self/task/TID/schedstat and CPU time from their thread
CPU clocks, the guest's rdtsc):

* **nothing lost**: every qword the guest reads equals the pattern, its
  checksum of every byte (s1 += q, s2 += s1 over its share) equals the
  host's, and the destination memory equals the source byte for byte;
* **faults attributed**: every fault names the thread that took it: a vCPU
  fault names that vCPU's thread (a fault under any thread id that is no
  vCPU's, nor the helper thread's, is misattributed), on a page of its own
  plan; no fault comes from a page already in place once the vCPU checks
  its memory;
* **blocktime and the guest's stalls agree, both ways**: per vCPU, blocktime
  (replayed exactly from the recorded messages and placements) never
  exceeds the wall time of the KVM_RUN that touched, nor what the guest saw
  stalled on the same pages (the host interval, message read to page
  placed, lies inside the guest's) beyond the TSC conversion error; and the
  guest's stall over all its touches never exceeds blocktime by more than
  everything else that can stall it, each measured over that KVM_RUN: the
  vCPU thread's run_delay and CPU time, the CPU time and run_delay of every
  other thread of the process (the fault thread waking and taking the GIL,
  a lock holder preempted), two wake-ups per fault that schedstat does
  not see, and the TSC conversion error.  A vCPU asleep on a page nobody
  heard of (messages lost, or sent under the wrong thread) is so caught;
* **blocktime is not steal**: a thread asleep on a missing page is not
  runnable, so the guest's steal over the touching KVM_RUN grows by at most
  that thread's run_delay over it (exact: KVM adds run_delay deltas);
* **no vCPU hangs**: a vCPU the watchdog stops in KVM_RUN is judged by
  :func:`kvmharness.judges.stopped.judge_stopped`: asleep there (neither
  running nor queued) is a hang, broken; only run-queue wait is load.

How the kernel retries a fault is not a promise (duplicate messages are
counted and shown).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvmharness.checks import Violation
from kvmharness.guest.build import load_program
from kvmharness.judges import Judgement, read_record
from kvmharness.judges import postcopy as pj
from kvmharness.judges.postcopy import (  # noqa: F401  (the kinds, for callers and tests)
    HEAD_QWORDS,
    KIND_LOST,
    KIND_MISATTRIBUTED,
    KIND_OVER_GUEST,
    KIND_OVER_WALL,
    KIND_SILENT_STALL,
    KIND_SPURIOUS,
    KIND_STEAL,
    KIND_UNDER_GUEST,
    U64,
    PostcopyRecord,
    VcpuRecord,
    head_value,
    page_qwords,
)
from kvmharness.kvm import Kvm
from kvmharness.scenarios.base import (
    DEFAULTS,
    Blame,
    Family,
    Kind,
    RunOptions,
    Variant,
    Verdict,
    verdict_for,
)
from kvmharness.scenarios.lifecycle import ScenarioConfig, guarded_run, on_kvm
from kvmharness.scenarios.postcopy_migration import (  # noqa: F401  (the steps, for tests)
    MAX_VCPUS,
    PROGRAM,
    Destination,
    Layout,
    _migrate_source,
    build_record,
    make_layout,
    run_destination,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# variants


@dataclass(frozen=True)
class PostcopyVariant(Variant):
    stream_during: bool = True
    """The background stream runs while the vCPUs touch (else only after)."""
    shared_first: bool = False
    """Every vCPU touches page 0 first; it is placed only once all of them wait."""
    non_vcpu_touch: bool = False
    """A host thread that is no vCPU reads one missing page through the kernel."""


VARIANTS: dict[str, PostcopyVariant] = {
    v.name: v
    for v in [
        PostcopyVariant(
            "stream",
            Kind.PROMISE,
            "vCPUs fault on missing pages, each placed after the latency, while a background "
            "stream pushes the others in order: nothing lost, blocktime exact and not steal",
            stream_during=True,
        ),
        PostcopyVariant(
            "shared-page",
            Kind.PROMISE,
            "every vCPU blocks on one page before it is placed: several vCPUs on one address, "
            "time with all vCPUs blocked measured",
            stream_during=False,
            shared_first=True,
        ),
        PostcopyVariant(
            "non-vcpu",
            Kind.PROMISE,
            "a host thread that is no vCPU reads a missing page: the kernel must name that "
            "thread, and its wait is counted apart from vCPU blocktime",
            stream_during=True,
            non_vcpu_touch=True,
        ),
    ]
}
DEFAULT_VARIANTS = list(VARIANTS)


@dataclass
class PostcopyConfig(ScenarioConfig):
    """One postcopy scenario (the record's ``config``)."""

    family = "postcopy"
    variant: str = "stream"
    vcpus: int = 2
    latency_us: int = DEFAULTS.latency_us
    pages_per_vcpu: int = DEFAULTS.pages_per_vcpu
    budget_s: float = DEFAULTS.budget_s
    seed: int = 0x5EED0F


# --------------------------------------------------------------------------
# the result


@dataclass
class PostcopyResult:
    config: PostcopyConfig
    variant: PostcopyVariant
    verdict: Verdict
    observed: str
    wall_s: float
    violations: list[Violation]
    record: dict[str, Any] | None = None
    """The run record the judge read (None: the scenario did not run)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What the judge derived: blocktime, the QEMU models, agreement figures."""
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    family = "postcopy"

    @property
    def vcpus(self) -> int:
        return self.config.vcpus

    @property
    def report(self) -> dict[str, Any] | None:
        """The exact accountant's figures (what ``kvmharness postcopy`` shows), if it ran."""
        return self.notes.get("blocktime")  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        base: dict[str, Any] = self.record or {
            "schema": pj.SCHEMA_VERSION,
            "family": "postcopy",
            "variant": self.variant.name,
            "kind": str(self.variant.kind),
            "vcpus": self.config.vcpus,
            "config": asdict(self.config),
        }
        return {
            **base,
            "why": self.variant.why,
            "verdict": str(self.verdict),
            "observed": self.observed,
            "error": self.error,
            "wall_s": self.wall_s,
            "violations": [v.to_dict() for v in self.violations],
            "blocktime": self.notes.get("blocktime"),
            "notes": {k: v for k, v in self.notes.items() if k != "blocktime"},
            "stats": self.stats,
        }


def _run(kvm: Kvm, cfg: PostcopyConfig, variant: PostcopyVariant) -> tuple[Layout, Destination]:
    image = load_program(PROGRAM)
    lay = make_layout(cfg, variant, image)
    state, staging = _migrate_source(kvm, cfg, lay, image, cfg.budget_s)
    return lay, run_destination(kvm, cfg, variant, lay, image, state, staging)


def run_scenario(cfg: PostcopyConfig, kvm: Kvm | None = None) -> PostcopyResult:
    cfg.validate()
    variant = VARIANTS[cfg.variant]
    t0 = time.monotonic()
    out = guarded_run(
        f"postcopy {cfg.variant}", lambda: on_kvm(kvm, lambda k: _run(k, cfg, variant))
    )
    if out.value is None:
        blame = out.blame or Blame.HARNESS
        return PostcopyResult(
            cfg,
            variant,
            verdict_for(variant.kind, blame=blame),
            f"could not run ({blame}): {out.error}",
            out.wall_s,
            [],
            error=out.error,
        )
    lay, dst = out.value
    record = build_record(cfg, variant, lay, dst).to_dict()
    j: Judgement = pj.judge(record)  # the one judge `kvmharness judge` runs too
    pager = dst.pager
    span = pager.last_place_ns - pager.first_place_ns
    stats = {
        "pages": lay.pages,
        "placed_per_s": (pager.placed_count - 1) * 1e9 / span if span > 0 else None,
        "stream_unpaced_per_s": (pager.fast[2] - 1) * 1e9 / (pager.fast[1] - pager.fast[0])
        if pager.fast[2] > 1 and pager.fast[1] > pager.fast[0]
        else None,
    }
    return PostcopyResult(
        cfg,
        variant,
        j.verdict,
        j.observed,
        time.monotonic() - t0,
        j.violations,
        record,
        j.notes,
        stats,
    )


#: What ``PostcopyResult.to_json`` adds to the record the judge reads.
_DERIVED = frozenset(
    {
        "scenario",
        "strategy",
        "why",
        "verdict",
        "observed",
        "error",
        "wall_s",
        "violations",
        "blocktime",
        "notes",
        "stats",
        "known",
    }
)


def from_record(record: dict[str, Any], judgement: Judgement) -> PostcopyResult:
    """``kvmharness judge``'s hook: the result a saved record shows in the
    postcopy table, with today's judgement (its notes carry the blocktime,
    the QEMU models and the agreement figures the table reads)."""
    name = str(read_record(record)["variant"])
    variant = VARIANTS.get(name) or PostcopyVariant(
        name, Kind(record.get("kind", "promise")), str(record.get("why") or "")
    )
    c = record.get("config") or {}
    known = {f.name for f in fields(PostcopyConfig)}
    cfg = PostcopyConfig(**{k: v for k, v in c.items() if k in known})
    cfg.variant, cfg.vcpus = name, int(record.get("vcpus", cfg.vcpus))
    wall = record.get("wall_s")
    return PostcopyResult(
        cfg,
        variant,
        judgement.verdict,
        judgement.observed,
        float(wall) if isinstance(wall, int | float) else 0.0,
        list(judgement.violations),
        # the series the judge read; none for a scenario that never ran
        {k: v for k, v in record.items() if k not in _DERIVED} if "faults" in record else None,
        dict(judgement.notes),
        dict(record.get("stats") or {}),
        record.get("error"),
    )


def run_one(name: str, vcpus: int, options: RunOptions, kvm: Kvm | None = None) -> PostcopyResult:
    """For ``run``, ``bisect`` and ``postcopy``: a vCPU count this family
    cannot take is an ERROR row (bad usage, exit 128), not a traceback."""
    cfg = PostcopyConfig.of(name, vcpus, options)
    try:
        cfg.validate()
    except ValueError as exc:
        return PostcopyResult(
            cfg,
            VARIANTS.get(name, VARIANTS[DEFAULT_VARIANTS[0]]),
            Verdict.ERROR,
            f"not run: {exc}",
            0.0,
            [],
            error=str(exc),
        )
    return run_scenario(cfg, kvm)


FAMILY = Family(
    "postcopy",
    dict(VARIANTS),
    DEFAULT_VARIANTS,
    [2],
    run_one,
    "kvmharness.scenarios.postcopy_view",
    max_vcpus=MAX_VCPUS,
)
