"""A clock run's result: its record (what :func:`kvmharness.judges.clock.judge`
reads), the verdict it was given, and the figures the table and the nightly
show; rebuilt from a saved record by :meth:`ClockResult.from_json`.  Its
own reason to change: the record's format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kvmharness import checks
from kvmharness.checks import Violation
from kvmharness.ffi import lib
from kvmharness.scenarios.base import Kind, Verdict
from kvmharness.scenarios.clock_record import BoundaryFacts, ClockRecord, RateProbe

if TYPE_CHECKING:
    from kvmharness.scenarios.clock import ClockConfig, ClockVariant


@dataclass
class ClockResult:
    config: ClockConfig
    clock_variant: ClockVariant
    records: list[ClockRecord]
    violations: list[Violation]
    verdict: Verdict
    observed: str
    wall_s: float
    stable: bool | None = None  # KVM_GET_CLOCK's KVM_CLOCK_TSC_STABLE once the vCPUs ran
    stable_after: bool | None = None  # the same after the boundary (None: no boundary)
    facts: BoundaryFacts = field(default_factory=BoundaryFacts)
    pvti_areas: list[list[int]] = field(default_factory=list)
    error: str | None = None
    not_supported: bool = False
    """a lasting property of this host rules the variant out (verdict NOT_SUPPORTED)"""
    khz: int = 0
    probes: list[list[RateProbe]] = field(default_factory=list)
    storm: list[dict[str, int]] = field(default_factory=list)
    failure: dict[str, str] | None = None  # blame and text when the run could not finish
    notes: dict[str, Any] = field(default_factory=dict)

    family = "clock"

    @property
    def variant(self) -> ClockVariant:
        return self.clock_variant

    @property
    def vcpus(self) -> int:
        return self.config.vcpus

    def reads(self) -> int:
        return sum(len(r.samples) for r in self.records)

    def warps(self) -> tuple[int, int, int, int]:
        """(warps, largest ns, vDSO-style warps, largest ns) over every vCPU."""
        bs = [b for r in self.records for b in r.batches]
        return (
            sum(b.warps for b in bs),
            max((b.max_warp_ns for b in bs), default=0),
            sum(b.vdso_warps for b in bs),
            max((b.max_vdso_warp_ns for b in bs), default=0),
        )

    def reads_per_s(self) -> float | None:
        """Guest readings per second per vCPU (host time spent in the KVM_RUNs)."""
        rates = []
        for r in self.records:
            run_ns = sum(b.t1_ns - b.t0_ns for b in r.batches)
            if run_ns:
                rates.append(len(r.samples) / (run_ns / 1e9))
        return sum(rates) / len(rates) if rates else None

    def boundary_jumps(self) -> list[tuple[int, int, int]]:
        """(vCPU, kvmclock jump ns, TSC jump ticks) across the boundary, per vCPU."""
        out = []
        for r in self.records:
            if 0 < r.boundary < len(r.batches):
                a = r.batches[r.boundary - 1]
                b = r.batches[r.boundary]
                if a.n and b.n:
                    sa, sb = r.samples[a.first + a.n - 1], r.samples[b.first]
                    out.append((r.index, sb[0] - sa[0], sb[1] - sa[1]))
        return out

    def record(self) -> dict[str, Any]:
        """What the judge reads (the record without the verdict)."""
        from kvmharness.judges import SCHEMA_VERSION

        v = self.clock_variant
        return {
            "schema": SCHEMA_VERSION,
            "family": "clock",
            "variant": v.name,
            "kind": str(v.kind),
            "vcpus": self.config.vcpus,
            "config": {
                "phase_ms": self.config.phase_ms,
                "downtime_ms": self.config.downtime_ms,
                "budget_s": self.config.budget_s,
                "kind": str(v.kind),
                "boundary": str(v.boundary),
                "clock_put": str(v.clock),
                "tsc_put": str(v.tsc),
                "writer": str(v.writer),
                "hop": v.hop,
                "needs_stable": v.needs_stable,
                "warp": bool(v.mode & lib.CLOCK_MODE_WARP),
                "vdso": bool(v.mode & lib.CLOCK_MODE_VDSO),
                "area0": bool(v.mode & lib.CLOCK_MODE_AREA0),
                "pvti_check": v.pvti_check,
                "khz_ratio": v.khz_ratio,
                "storm": v.storm,
            },
            "failure": self.failure,
            "stable": {"before": self.stable, "after": self.stable_after},
            "tsc_khz": self.khz,
            "rate_probes": [
                [[*p.raw_ns, *p.mono_ns, p.tsc] for p in phase] for phase in self.probes
            ],
            "facts": asdict(self.facts),
            "pvti_areas": self.pvti_areas,
            "storm": self.storm,
            "vcpu_records": [r.to_record(self.khz) for r in self.records],
        }

    def to_json(self) -> dict[str, Any]:
        w = self.warps()
        return {
            **self.record(),
            "why": self.clock_variant.why,
            "verdict": str(self.verdict),
            "observed": self.observed,
            "error": self.error,
            "not_supported": self.not_supported,
            "wall_s": self.wall_s,
            "reads": self.reads(),
            "warps": w[0],
            "largest_warp_ns": w[1],
            "vdso_warps": w[2],
            "largest_vdso_warp_ns": w[3],
            "violations": [x.to_dict() for x in self.violations],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClockResult:
        """A result rebuilt from its record (the view needs nothing else); the
        verdict is the one recorded, or today's judge's when there is none."""
        from kvmharness.judges.clock import judge, run_of
        from kvmharness.scenarios.clock import VARIANTS, ClockConfig, ClockVariant

        c = d["config"]
        cfg = ClockConfig(d["variant"], d["vcpus"], c["phase_ms"], c["downtime_ms"], c["budget_s"])
        v = VARIANTS.get(d["variant"]) or ClockVariant(
            d["variant"], Kind(c["kind"]), d.get("why", "")
        )
        run = run_of(d)
        res = cls(
            cfg,
            v,
            run.records,
            [],
            Verdict(d.get("verdict", Verdict.ERROR)),
            d.get("observed", ""),
            d.get("wall_s", 0.0),
            stable=run.stable,
            stable_after=run.stable_after,
            facts=run.facts,
            pvti_areas=run.pvti_areas,
            error=d.get("error"),
            not_supported=d.get("not_supported", False),
            khz=run.khz,
            probes=run.probes,
            storm=run.storm,
            failure=d.get("failure"),
            notes=d.get("notes", {}),
        )
        if "verdict" not in d:
            res.apply(judge(d))
        else:
            res.violations = [checks.Violation(**x) for x in d.get("violations", [])]
        return res

    def apply(self, j: Any) -> None:
        """Take a judgement's verdict, text, violations and notes."""
        self.verdict, self.observed, self.violations, self.notes = (
            j.verdict,
            j.observed,
            j.violations,
            j.notes,
        )
        self.not_supported = j.verdict is Verdict.NOT_SUPPORTED
