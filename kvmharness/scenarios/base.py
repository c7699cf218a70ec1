"""What every scenario family shares: kinds, verdicts, variants as data, the
classification of failures, and the registry ``run`` and the tests iterate.

A *family* (steal, clock, postcopy) declares its variants as
data: a name, a :class:`Kind` with the reason, and the typed facts of what
happens at the boundary.  It runs one variant with :meth:`Family.run_one`
and returns a :class:`ScenarioResult`; the report and the CLI need nothing
else of it.  Adding a family is a module with a :class:`Family` named
``FAMILY``, listed in :data:`FAMILY_MODULES`.
"""

from __future__ import annotations

import enum
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Kind(enum.StrEnum):
    PROMISE = "promise"
    """KVM promises the property: a failure is a kernel or restore-path regression."""
    CHARACTERIZE = "characterize"
    """KVM does not promise it: the scenario reports what it measured and never fails."""


class Verdict(enum.StrEnum):
    """A scenario's state, one word each, the same in the progress line, the
    table, the summary, the JSON, the nightly and README.  (A broken promise a
    known issue excuses is shown as "known-broken": :mod:`kvmharness.known`.)"""

    HOLDS = "holds"
    BROKEN = "broken"
    CHARACTERIZED = "characterized"
    ERROR = "harness error"
    """The harness or its environment failed: no verdict on the kernel."""
    UNTESTABLE = "untestable"
    """This run could not judge the scenario (e.g. the host was too loaded)."""
    NOT_SUPPORTED = "not supported"
    """A lasting property of this host or kernel rules the scenario out (a
    capability absent, no master clock): shown, left out of the verdict
    unless the user named the scenario explicitly."""

    @classmethod
    def _missing_(cls, value: object) -> Verdict | None:
        # run files written before the words were unified say BROKEN / ERROR
        return OLD_VERDICT_WORDS.get(str(value))


#: The words runs used to write, read as today's (``Verdict("BROKEN")`` is BROKEN).
OLD_VERDICT_WORDS = {"BROKEN": Verdict.BROKEN, "ERROR": Verdict.ERROR}


def state_word(text: str) -> str:
    """A state word as a run file of any age spells it, in today's spelling."""
    old = OLD_VERDICT_WORDS.get(text)
    return str(old) if old is not None else text


# Module-level names kept for callers that predate the enums.
PROMISE, CHARACTERIZE = Kind.PROMISE, Kind.CHARACTERIZE
HOLDS, BROKEN, CHARACTERIZED = Verdict.HOLDS, Verdict.BROKEN, Verdict.CHARACTERIZED
ERROR, UNTESTABLE = Verdict.ERROR, Verdict.UNTESTABLE


class Boundary(enum.StrEnum):
    """Where a variant's boundary takes the vCPUs."""

    NONE = "-"
    IN_PROCESS = "new VM, same process"
    CROSS_PROCESS = "new process"


class Writer(enum.StrEnum):
    """Which host thread puts the vCPU state (MSR_KVM_STEAL_TIME, kvmclock, the
    TSC among it) at the boundary."""

    VCPU_THREAD = "vcpu thread"
    MAIN_THREAD = "main thread"
    NONE = "-"


class Blame(enum.StrEnum):
    """Whose fault a scenario that could not finish is."""

    KERNEL = "kernel"  # KVM failed on the path under test
    UNTESTABLE = "untestable"  # this run cannot judge it
    NOT_SUPPORTED = "not supported"  # a lasting property of the host rules it out
    HARNESS = "harness"  # a bug or a broken environment


def blame_of(exc: BaseException) -> Blame:
    from kvmharness.errors import KvmError, KvmUnavailable
    from kvmharness.exitcodes import Untestable

    if isinstance(exc, ScenarioFailed):
        return exc.blame
    if isinstance(exc, KvmUnavailable | Untestable):
        return Blame.UNTESTABLE
    if isinstance(exc, KvmError):
        return Blame.KERNEL
    return Blame.HARNESS


class ScenarioFailed(Exception):
    """A scenario could not finish, with the blame already decided (e.g. by a child)."""

    def __init__(self, blame: Blame | str, message: str) -> None:
        super().__init__(message)
        self.blame = Blame(blame)


class NotSupported(ScenarioFailed):
    """This KVM does not offer what the variant is about (a capability or an
    attribute it reports absent, no TSC-based host clock): a lasting property
    of the host, verdict NOT_SUPPORTED."""

    def __init__(self, message: str) -> None:
        super().__init__(Blame.NOT_SUPPORTED, message)


def verdict_for(kind: Kind, *, broken: bool = False, blame: Blame | None = None) -> Verdict:
    """The verdict of a run that found violations (``broken``) or failed with ``blame``."""
    if blame is Blame.HARNESS:
        return Verdict.ERROR
    if blame is Blame.UNTESTABLE:
        return Verdict.UNTESTABLE
    if blame is Blame.NOT_SUPPORTED:
        return Verdict.NOT_SUPPORTED
    if kind is Kind.CHARACTERIZE:
        return Verdict.CHARACTERIZED
    return Verdict.BROKEN if broken or blame is Blame.KERNEL else Verdict.HOLDS


#: The bounds of every knob: they keep a run sane and measurable (whether a
#: kernel holds is judged by the checks, never by these).
MIN_CONTEND_MS = 20
"""Shorter gives too little run-queue waiting to tell a live steal clock from a dead one."""
MAX_CONTEND_MS = 10_000
MAX_DOWNTIME_MS = 60_000
MAX_BUDGET_S = 3600.0
MIN_LATENCY_US = 100
MAX_LATENCY_US = 1_000_000
MIN_PAGES_PER_VCPU = 2
MAX_PAGES_PER_VCPU = 128
"""postcopy.c's MAX_TOUCHES (its pc_abi is checked against the host's at load)."""


class OptionError(ValueError):
    """A knob out of its bounds: ``field`` and what is wrong with it."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(f"{field} {text}")
        self.field, self.text = field, text

    @property
    def option(self) -> str:
        """How the command line spells the field (``--contend-ms``)."""
        return "--" + self.field.replace("_", "-")


@dataclass(frozen=True)
class RunOptions:
    """The knobs of a run, their defaults and their bounds, for every family
    (a family ignores what it has no use for).  The one place they are
    defined: the CLI's defaults and checks and each family's config take them
    from here."""

    contend_ms: int = 150
    """Contended time before and after the boundary (clock: each phase's length)."""
    downtime_ms: int = 50
    """Time between the save and the restore."""
    budget_s: float = 30.0
    """How long past its contended time a phase may run before its vCPUs are
    stopped from another thread and judged (stuck, hung or host too loaded)."""
    latency_us: int = 2000
    """postcopy: how long after its request the resolver places a page."""
    pages_per_vcpu: int = 12
    """postcopy: data pages each vCPU owns and touches."""

    def validate(self) -> None:
        """:class:`OptionError` for the first knob out of its bounds."""
        c, d, b = self.contend_ms, self.downtime_ms, self.budget_s
        span = f"must be {MIN_CONTEND_MS} to {MAX_CONTEND_MS}, got {c}"
        if c < MIN_CONTEND_MS:
            raise OptionError(
                "contend_ms",
                f"{span}: too short; shorter gives too little run-queue waiting to tell a "
                "live steal clock from a dead one",
            )
        if c > MAX_CONTEND_MS:
            raise OptionError(
                "contend_ms",
                f"{span}: too long; a steal scenario contends for twice that "
                f"({2 * MAX_CONTEND_MS // 1000} s at the limit, per scenario), and longer "
                "judges nothing better",
            )
        if not 0 <= d <= MAX_DOWNTIME_MS:
            end = "negative" if d < 0 else f"longer than {MAX_DOWNTIME_MS // 1000} s"
            raise OptionError("downtime_ms", f"must be 0 to {MAX_DOWNTIME_MS}, got {d}: {end}")
        if not (math.isfinite(b) and 0 < b <= MAX_BUDGET_S):
            end = (
                "not a number"
                if not math.isfinite(b)
                else ("it must be more than 0" if b <= 0 else "more than an hour")
            )
            raise OptionError(
                "budget_s",
                f"must be a number of seconds in (0, {MAX_BUDGET_S:g}], got {b}: {end}",
            )
        lat, pages = self.latency_us, self.pages_per_vcpu
        if not (isinstance(lat, int) and MIN_LATENCY_US <= lat <= MAX_LATENCY_US):
            raise OptionError(
                "latency_us", f"must be {MIN_LATENCY_US} to {MAX_LATENCY_US}, got {lat}"
            )
        if not (isinstance(pages, int) and MIN_PAGES_PER_VCPU <= pages <= MAX_PAGES_PER_VCPU):
            raise OptionError(
                "pages_per_vcpu",
                f"must be {MIN_PAGES_PER_VCPU} to {MAX_PAGES_PER_VCPU}, got {pages}",
            )


DEFAULTS = RunOptions()


@dataclass(frozen=True)
class Variant:
    """One declared variant of a family."""

    name: str
    kind: Kind
    why: str


class ScenarioResult(Protocol):
    """What the report and the CLI read of a result, whatever the family."""

    family: str
    variant: Variant
    vcpus: int
    verdict: Verdict
    observed: str
    wall_s: float
    violations: list[Any]

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Family:
    """A scenario family: its variants, how to run one, and how to show results."""

    name: str
    variants: dict[str, Variant]
    default: list[str]
    default_vcpus: list[int]
    run_one: Callable[..., ScenarioResult]
    """``run_one(variant_name, vcpus, options, kvm)`` -> result"""
    view: str
    """The module that shows results: ``table(results, width)`` and ``plot(results,
    path)``.  Imported only when results are shown (it pulls in tabulate and
    matplotlib), never by a run."""
    max_vcpus: int = 1024
    """The most vCPUs the family's guest program supports."""
    needs_steal_time: bool = False
    """Its verdicts rest on steal time: a KVM without KVM_FEATURE_STEAL_TIME,
    or a kernel that keeps no run_delay, makes the run untestable."""
    quick: tuple[str, ...] = ()
    """bisect's default profile for this family (empty: every promise).  It
    must keep each promise's kernel mistake catchable, just with fewer
    scenarios that catch the same thing."""

    def quick_profile(self) -> list[str]:
        return list(self.quick) or self.promises()

    def promises(self) -> list[str]:
        return [n for n, v in self.variants.items() if v.kind is Kind.PROMISE]

    def table(self, results: Sequence[ScenarioResult], width: int) -> str:
        """The family's table (width 0: no shortening)."""
        return str(importlib.import_module(self.view).table(results, width))

    def plot(self, results: Sequence[ScenarioResult], path: str) -> None:
        importlib.import_module(self.view).plot(results, path)


def verdict_text(res: ScenarioResult, width: int = 0) -> str:
    """The verdict column: the verdict, and what was observed unless it held."""
    if res.verdict == Verdict.HOLDS:
        text = str(Verdict.HOLDS)
    elif res.verdict == Verdict.CHARACTERIZED:
        text = f"characterized: {res.observed}"
    elif res.observed.startswith((f"{res.verdict}:", "known-broken (")):
        text = res.observed  # it says its state already: "not supported: ...", known-broken
    else:
        text = f"{res.verdict}: {res.observed}"
    return text[: width - 3] + "..." if width and len(text) > width else text


FAMILY_MODULES = {
    "steal": "kvmharness.scenarios.steal",
    "clock": "kvmharness.scenarios.clock",
    "postcopy": "kvmharness.scenarios.postcopy",
}


def family(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise KeyError(f"unknown scenario family {name!r} (known: {', '.join(FAMILY_MODULES)})")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def families() -> list[Family]:
    return [family(n) for n in FAMILY_MODULES]
