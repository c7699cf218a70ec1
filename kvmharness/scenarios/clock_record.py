"""What a clock run records, and its compact JSON form (the run record).

Pure data: no KVM, no guest.  The runner (:mod:`kvmharness.scenarios.clock`)
fills these classes; :meth:`ClockRecord.to_record` writes one vCPU's readings
as columnar, delta-encoded integers and :meth:`ClockRecord.from_record` reads
them back exactly, so the judge (:mod:`kvmharness.judges.clock`) and the view
see what the live run saw.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kvmharness.checks import Sample
from kvmharness.judges import deltas, undeltas
from kvmharness.judges.stopped import Stopped

#: PVCLOCK_TSC_STABLE_BIT in an area's flags: KVM's master clock was in use
#: when it wrote the area.
STABLE_BIT = 1


class ClockPut(enum.StrEnum):
    """How kvmclock is put at a restore (KVM_SET_CLOCK)."""

    NONE = "-"
    DOWNTIME = "saved + downtime"
    """clock = saved + the host-measured downtime: the guest sees the real time pass"""
    REALTIME = "KVM_CLOCK_REALTIME"
    """clock = saved, realtime = saved realtime: KVM adds the real time that passed"""
    FROZEN = "saved"
    """clock = saved: the downtime is hidden from the guest (the clock stood still)"""


class TscPut(enum.StrEnum):
    """How the TSC is put at the start and at a restore."""

    STATE = "as captured"  # the saved MSRs, MSR_IA32_TSC among them (not judged)
    MSR = "MSR_IA32_TSC"
    OFFSET = "KVM_VCPU_TSC_OFFSET"


# ---- delta encoding


def runs(xs: Sequence[int]) -> list[list[int]]:
    """``[[index, value], ...]`` where the value changes (the first always)."""
    return [[i, x] for i, x in enumerate(xs) if i == 0 or x != xs[i - 1]]


def unruns(rs: Sequence[Sequence[int]], n: int) -> list[int]:
    out: list[int] = []
    for k, (i, x) in enumerate(rs):
        end = rs[k + 1][0] if k + 1 < len(rs) else n
        out += [x] * (end - i)
    return out


# ---- records


@dataclass
class Batch:
    """One KVM_RUN that ended in a batch's SYNC."""

    t0_ns: int  # host CLOCK_MONOTONIC just before KVM_RUN
    t1_ns: int  # just after it returned
    first: int  # index of its first sample in the record
    n: int
    warps: int = 0
    max_warp_ns: int = 0
    vdso_warps: int = 0
    max_vdso_warp_ns: int = 0
    cpu: int = -1  # host CPU the thread was allowed on (-1: not pinned by the scenario)


@dataclass
class TscWrite:
    """A TSC put into a vCPU, and where the guest's next reading must lie.

    ``value``/``write_ns``/``earlier`` set (MSR_IA32_TSC written): the judge
    computes the range from the time since the write at the TSC rate measured
    in the run; otherwise ``lo``/``hi`` are the range itself (host TSC +
    offset read around the KVM_RUN)."""

    batch: int  # the first batch after the write
    lo: int
    hi: int
    what: str
    value: int | None = None
    write_ns: tuple[int, int] | None = None
    earlier: list[tuple[int, tuple[int, int]]] = field(default_factory=list)


@dataclass
class RateProbe:
    """The guest's TSC read by the host (KVM_GET_MSRS) between two host clock
    readings (CLOCK_MONOTONIC_RAW and CLOCK_MONOTONIC): two probes around a
    phase give the TSC rate that phase ran at, with its uncertainty."""

    raw_ns: tuple[int, int]
    mono_ns: tuple[int, int]
    tsc: int


@dataclass
class ClockRecord:
    """What one vCPU saw."""

    index: int
    samples: list[tuple[int, int, int, int, int, int, int]] = field(default_factory=list)
    """(ns, tsc, vdso_ns, version, flags, vdso_used, tries) per reading"""
    batches: list[Batch] = field(default_factory=list)
    boundary: int = 0  # index of the first batch after the boundary (0: none)
    decode: list[tuple[int, int, int]] = field(default_factory=list)
    """(sample index, guest ns, host ns) where the host decoded the same area and TSC"""
    tsc_writes: list[TscWrite] = field(default_factory=list)
    stuck: Stopped | None = None

    def phases(self) -> list[tuple[int, int]]:
        """Batch ranges [lo, hi) before and after the boundary (one without)."""
        cut = self.boundary if 0 < self.boundary < len(self.batches) else len(self.batches)
        return [(0, cut), (cut, len(self.batches))] if cut < len(self.batches) else [(0, cut)]

    def sample_range(self, lo: int, hi: int) -> range:
        """Indices of the samples of batches [lo, hi)."""
        if lo >= hi or lo >= len(self.batches):
            return range(0)
        return range(self.batches[lo].first, self.batches[hi - 1].first + self.batches[hi - 1].n)

    def series(self, lo: int = 0, hi: int | None = None, *, vdso: bool = False) -> list[Sample]:
        """kvmclock readings of batches [lo, hi) as Samples (t_ns: the batch's end)."""
        out = []
        for b in self.batches[lo:hi]:
            for s in self.samples[b.first : b.first + b.n]:
                if vdso and not s[5]:
                    continue
                out.append(Sample(b.t1_ns, s[2] if vdso else s[0], None if vdso else s[3]))
        return out

    # -- the full form, between the processes of a cross-process run

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "boundary": self.boundary,
            "samples": self.samples,
            "batches": [asdict(b) for b in self.batches],
            "decode": self.decode,
            "tsc_writes": [asdict(w) for w in self.tsc_writes],
            "stuck": asdict(self.stuck) if self.stuck else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClockRecord:
        return cls(
            d["index"],
            [tuple(s) for s in d["samples"]],
            [Batch(**b) for b in d["batches"]],
            d["boundary"],
            [tuple(x) for x in d["decode"]],
            [_tsc_write(w) for w in d["tsc_writes"]],
            Stopped(**d["stuck"]) if d.get("stuck") else None,
        )

    def extend(self, other: ClockRecord) -> None:
        """Append a later process's record (its batches come after the boundary)."""
        s0, b0 = len(self.samples), len(self.batches)
        self.samples += other.samples
        for b in other.batches:
            self.batches.append(Batch(**{**asdict(b), "first": b.first + s0}))
        self.decode += [(i + s0, g, h) for i, g, h in other.decode]
        for w in other.tsc_writes:
            self.tsc_writes.append(TscWrite(**{**asdict(w), "batch": w.batch + b0}))
        self.stuck = self.stuck or other.stuck

    # -- the compact form, in the run record

    def to_record(self, khz: int) -> dict[str, Any]:
        """Columnar and delta-encoded; ``khz`` (any fixed figure) only makes the
        TSC column small: each TSC step is stored less the kvmclock step in
        ticks at ``khz``."""
        s = self.samples
        ns = [x[0] for x in s]
        tsc = [x[1] for x in s]
        used = [x[5] for x in s]
        b = self.batches
        return {
            "index": self.index,
            "boundary": self.boundary,
            "ns": deltas(ns),
            "tsc": _tsc_resid(ns, tsc, khz),
            "vdso": [x[2] - x[0] for x in s if x[5]],
            "vdso_used": runs(used),
            "version": deltas([x[3] for x in s]),
            "flags": runs([x[4] for x in s]),
            "batch_t0_ns": deltas([x.t0_ns for x in b]),
            "batch_run_ns": [x.t1_ns - x.t0_ns for x in b],
            "batch_n": runs([x.n for x in b]),
            "batch_cpu": runs([x.cpu for x in b]),
            "batch_warps": [
                [i, x.warps, x.max_warp_ns, x.vdso_warps, x.max_vdso_warp_ns]
                for i, x in enumerate(b)
                if x.warps or x.vdso_warps
            ],
            "decode": [[i, g - ns[i], h - g] for i, g, h in self.decode],
            "tsc_writes": [asdict(w) for w in self.tsc_writes],
            "stuck": asdict(self.stuck) if self.stuck else None,
        }

    @classmethod
    def from_record(cls, d: dict[str, Any], khz: int) -> ClockRecord:
        ns = undeltas(d["ns"])
        n = len(ns)
        tsc = _tsc_unresid(ns, d["tsc"], khz)
        used = unruns(d["vdso_used"], n)
        vdso_it = iter(d["vdso"])
        version = undeltas(d["version"])
        flags = unruns(d["flags"], n)
        samples = [
            (
                ns[i],
                tsc[i],
                ns[i] + next(vdso_it) if used[i] else 0,
                version[i],
                flags[i],
                used[i],
                0,
            )
            for i in range(n)
        ]
        t0 = undeltas(d["batch_t0_ns"])
        nb = len(t0)
        counts = unruns(d["batch_n"], nb)
        cpus = unruns(d["batch_cpu"], nb)
        firsts = [0] * nb
        for i in range(1, nb):
            firsts[i] = firsts[i - 1] + counts[i - 1]
        batches = [
            Batch(t0[i], t0[i] + d["batch_run_ns"][i], firsts[i], counts[i], cpu=cpus[i])
            for i in range(nb)
        ]
        for i, w, mw, vw, mvw in d["batch_warps"]:
            batches[i].warps, batches[i].max_warp_ns = w, mw
            batches[i].vdso_warps, batches[i].max_vdso_warp_ns = vw, mvw
        return cls(
            d["index"],
            samples,
            batches,
            d["boundary"],
            [(i, ns[i] + g, ns[i] + g + h) for i, g, h in d["decode"]],
            [_tsc_write(w) for w in d["tsc_writes"]],
            Stopped(**d["stuck"]) if d.get("stuck") else None,
        )


def _tsc_write(w: dict[str, Any]) -> TscWrite:
    return TscWrite(
        **{
            **w,
            "write_ns": tuple(w["write_ns"]) if w.get("write_ns") else None,
            "earlier": [(v, tuple(t)) for v, t in w.get("earlier", [])],
        }
    )


def _tsc_resid(ns: Sequence[int], tsc: Sequence[int], khz: int) -> list[int]:
    out = []
    for i in range(len(ns)):
        if i == 0:
            out.append(tsc[0])
        else:
            out.append(tsc[i] - tsc[i - 1] - (ns[i] - ns[i - 1]) * khz // 1_000_000)
    return out


def _tsc_unresid(ns: Sequence[int], resid: Sequence[int], khz: int) -> list[int]:
    out: list[int] = []
    for i, r in enumerate(resid):
        out.append(r if i == 0 else out[-1] + r + (ns[i] - ns[i - 1]) * khz // 1_000_000)
    return out


@dataclass
class BoundaryFacts:
    """What the host measured at the boundary (all times CLOCK_MONOTONIC ns)."""

    get_clock_ns: tuple[int, int] = (0, 0)  # around KVM_GET_CLOCK
    set_clock_ns: tuple[int, int] = (0, 0)  # around KVM_SET_CLOCK
    saved_clock: list[int] = field(default_factory=list)  # clock_ns, flags, realtime, host_tsc
    put: str = "-"
    set_value_ns: int | None = None
    # when the destination's first MSR_IA32_TSC write began (the state load's,
    # or 0 when none): from then on the restored TSC may count (see tsc_msr_range)
    tsc_write_ns: int = 0
    khz_before: int = 0
    khz_after: int = 0
    pvti_scale_after: list[list[int]] = field(default_factory=list)  # (mul, shift) per vCPU

    @property
    def downtime_ns(self) -> int:
        return self.set_clock_ns[0] - self.get_clock_ns[1]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BoundaryFacts:
        return cls(
            **{
                k: tuple(v) if k.endswith("_ns") and isinstance(v, list) else v
                for k, v in d.items()
            }
        )


@dataclass
class Run:
    """What a clock run measured, over both phases (the result and the record
    are built from it)."""

    records: list[ClockRecord]
    stable: bool | None = None
    stable_after: bool | None = None  # KVM_GET_CLOCK's stable flag after the boundary
    facts: BoundaryFacts = field(default_factory=BoundaryFacts)
    pvti_areas: list[list[int]] = field(default_factory=list)
    khz: int = 0
    probes: list[list[RateProbe]] = field(default_factory=list)
    storm: list[dict[str, int]] = field(default_factory=list)
    """per phase of an "updates" run: KVM_SET_CLOCKs issued and the ns they added"""
