"""Known issues: broken promises recorded for a host, so a CI on a kernel with a
known bug stays usable without hiding the bug.

A known-issues file is TOML (read with :mod:`tomllib`)::

    [[issue]]
    id = "pvm-tsc-msr-not-applied"
    scenario = "clock/tsc/msr"      # fnmatch pattern over "family/variant"
    kinds = ["tsc-not-applied"]     # the violation kinds it excuses (required)
    backend = "pvm"                 # vmx, svm, pvm or "*" (default "*")
    kernel_min = "6.18"             # inclusive, optional
    kernel_below = "6.19"           # exclusive: the entry needs this ...
    recheck = 2027-06-30            # ... or a re-check date (TOML date or "YYYY-MM-DD")
    cpu_model = "QEMU TCG"          # substring of /proc/cpuinfo's model name, optional
    reason = "what is broken, with the measurement"
    link = "where it is documented, in this repository or a public tracker"

An entry excuses a *kind* of violation, never a scenario as a whole.  A
promise that breaks, where an entry matches its scenario and host and every
violation it found is of a kind the entry lists, is **known-broken**: printed
on every run, not counted in the exit code.  A violation of any other kind
leaves the promise broken, and the report names the kind the entry does not
excuse ("not excused").  A promise that broke with no violation at all (a KVM
ioctl failing on the promised path) has the kind :data:`KIND_KERNEL_ERROR`,
which an entry must list to excuse it.

Every entry is bounded: it names a kernel it stops at (``kernel_below``) or a
date by which someone re-checks it (``recheck``); a file with an entry that
has neither is refused.  Once the re-check date has passed the entry still
loads but excuses nothing: a promise it would excuse is broken, with a
message saying the entry is overdue (:data:`Status.OVERDUE`), and a promise
that holds there is still "fixed?".  So a forgotten entry fails the run that
meets its bug instead of hiding that bug for ever.

A promise that *holds* where an entry says it breaks is **fixed?**: the run
fails, so the file stays true.  Untestable, unsupported or errored results
match nothing.  The package ships ``known_issues.toml``; ``--known FILE``
(and the pytest option ``--kvmharness-known``) replace it.
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
import logging
import platform
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_FILE = "known_issues.toml"
_FIELDS = {
    "id",
    "scenario",
    "kinds",
    "backend",
    "kernel_min",
    "kernel_below",
    "recheck",
    "cpu_model",
    "reason",
    "link",
}
_STRINGS = _FIELDS - {"kinds", "recheck"}

KIND_KERNEL_ERROR = "kernel-error"
"""The kind of a broken promise that recorded no violation: a KVM ioctl failed,
or the guest exited unexpectedly, on the promised path."""


class KnownIssuesError(ValueError):
    """A known-issues file that cannot be used (the message names file and entry)."""


class Status(enum.StrEnum):
    KNOWN_BROKEN = "known-broken"
    """Broke, and an entry excuses every violation kind found: not counted."""
    FIXED = "fixed?"
    """Held where an entry says it breaks: fails the run."""
    NOT_EXCUSED = "not excused"
    """Broke with a violation kind the matching entry does not list: broken."""
    OVERDUE = "overdue"
    """Broke where an entry matches, but the entry's re-check date has passed: broken."""


def release_tuple(release: str) -> tuple[int, ...]:
    """The leading numeric part of a kernel release: ``6.18.44-fc`` -> (6, 18, 44)."""
    m = re.match(r"(\d+(?:\.\d+)*)", release.strip())
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def cpu_model_name() -> str:
    """The first ``model name`` of /proc/cpuinfo ("" if unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@dataclass(frozen=True)
class Host:
    backend: str  # vmx, svm, pvm, ...
    kernel_release: str
    cpu_model: str = ""

    @classmethod
    def this(cls) -> Host:
        from kvmharness.hostinfo import kvm_backend, kvm_modules

        return cls(kvm_backend(kvm_modules()), platform.release(), cpu_model_name())


@dataclass(frozen=True)
class KnownIssue:
    id: str
    scenario: str
    reason: str
    link: str
    kinds: frozenset[str]
    backend: str = "*"
    kernel_min: str | None = None
    kernel_below: str | None = None
    recheck: dt.date | None = None
    cpu_model: str | None = None

    def matches(self, scenario: str, host: Host) -> bool:
        """Whether this entry covers ``scenario`` ("family/variant") on ``host``
        (whatever the date and the violation kinds)."""
        if not fnmatch.fnmatchcase(scenario, self.scenario):
            return False
        if self.cpu_model is not None and self.cpu_model not in host.cpu_model:
            return False
        if self.backend != "*" and self.backend != host.backend:
            return False
        try:
            rel = release_tuple(host.kernel_release)
        except ValueError:
            return False
        if self.kernel_min is not None and rel < release_tuple(self.kernel_min):
            return False
        return not (self.kernel_below is not None and rel >= release_tuple(self.kernel_below))

    def overdue(self, today: dt.date | None = None) -> bool:
        """Whether the re-check date has passed (an entry without one never is)."""
        return self.recheck is not None and (today or today_utc()) > self.recheck

    def unexcused(self, kinds: Iterable[str]) -> list[str]:
        """The kinds among ``kinds`` this entry does not excuse, sorted."""
        return sorted(set(kinds) - self.kinds)

    def describe(self) -> str:
        return f"known issue {self.id}: {self.reason} ({self.link})"


def _parse_date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise KnownIssuesError(f"{where}: recheck is a date (YYYY-MM-DD), not a date and time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise KnownIssuesError(f"{where}: recheck {value!r} is not a date (YYYY-MM-DD)")


def parse(text: str, name: str = "<known issues>") -> list[KnownIssue]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnownIssuesError(f"{name}: not TOML: {exc}") from None
    entries = data.get("issue", [])
    extra = set(data) - {"issue"}
    if extra or not isinstance(entries, list):
        raise KnownIssuesError(
            f"{name}: expected only [[issue]] tables, found "
            f"{sorted(extra) or type(entries).__name__}"
        )
    out, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{name}: issue {i + 1}"
        if not isinstance(e, dict):
            raise KnownIssuesError(f"{where}: not a table")
        if isinstance(e.get("id"), str) and e["id"]:
            where += f" ({e['id']})"
        unknown = set(e) - _FIELDS
        if unknown:
            raise KnownIssuesError(f"{where}: unknown field(s) {sorted(unknown)}")
        missing = [k for k in ("id", "scenario", "kinds", "reason", "link") if not e.get(k)]
        if missing:
            raise KnownIssuesError(
                f"{where}: missing {', '.join(missing)}"
                + (
                    " (kinds: the violation kinds the entry excuses, e.g. "
                    '["tsc-not-applied"]; any other kind stays broken)'
                    if "kinds" in missing
                    else ""
                )
            )
        if not all(isinstance(e[k], str) for k in _STRINGS & set(e)):
            raise KnownIssuesError(f"{where}: every field but kinds and recheck is a string")
        kinds = e["kinds"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) and k for k in kinds):
            raise KnownIssuesError(f"{where}: kinds is a list of violation kinds (strings)")
        for k in ("kernel_min", "kernel_below"):
            if k in e:
                try:
                    release_tuple(e[k])
                except ValueError:
                    raise KnownIssuesError(
                        f"{where}: {k} {e[k]!r} is not a kernel release"
                    ) from None
        recheck = _parse_date(e["recheck"], where) if "recheck" in e else None
        if "kernel_below" not in e and recheck is None:
            raise KnownIssuesError(
                f"{where}: unbounded: give kernel_below (the first kernel it no longer "
                "covers) or recheck (a date by which it is re-checked), so that it "
                "cannot hide every later regression of its kinds"
            )
        if e["id"] in seen:
            raise KnownIssuesError(f"{where}: duplicate id {e['id']!r}")
        seen.add(e["id"])
        fields = {k: v for k, v in e.items() if k not in ("kinds", "recheck")}
        out.append(KnownIssue(**fields, kinds=frozenset(kinds), recheck=recheck))
    return out


def load(path: str | None = None, *, today: dt.date | None = None) -> list[KnownIssue]:
    """The issues in ``path``, or the file the package ships.  An entry whose
    re-check date has passed is loaded (it still makes a holding promise
    "fixed?") and logged as a warning: it excuses nothing any more."""
    if path is None:
        text = resources.files("kvmharness").joinpath(DEFAULT_FILE).read_text()
        issues = parse(text, f"kvmharness/{DEFAULT_FILE}")
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise KnownIssuesError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise KnownIssuesError(f"{path}: not UTF-8 text") from None
        issues = parse(text, path)
    for k in issues:
        if k.overdue(today):
            log.warning(
                "known issue %s: its re-check date %s has passed; it excuses nothing "
                "until someone re-checks it and moves the date",
                k.id,
                k.recheck,
            )
    return issues


def find(
    issues: Sequence[KnownIssue], scenario: str, host: Host, today: dt.date | None = None
) -> KnownIssue | None:
    """The first entry, not overdue, that covers ``scenario`` on ``host`` (the
    pytest plugin marks such a test xfail, then lets a failure stand as xfail
    only where :func:`match_broken` says its kinds are excused)."""
    return next((k for k in issues if k.matches(scenario, host) and not k.overdue(today)), None)


@dataclass(frozen=True)
class Match:
    status: Status
    issue: KnownIssue
    unexcused: tuple[str, ...] = ()
    """NOT_EXCUSED: the violation kinds found that the entry does not list."""

    @property
    def excused(self) -> bool:
        """Whether the result is left out of the exit code."""
        return self.status is Status.KNOWN_BROKEN

    def explain(self) -> str:
        """One line on what the entry did to the result."""
        if self.status is Status.NOT_EXCUSED:
            return (
                f"not excused: {', '.join(self.unexcused)} (known issue {self.issue.id} "
                f"excuses only {', '.join(sorted(self.issue.kinds))})"
            )
        if self.status is Status.OVERDUE:
            return (
                f"not excused: known issue {self.issue.id} was to be re-checked by "
                f"{self.issue.recheck}; re-check it and move the date"
            )
        if self.status is Status.FIXED:
            return (
                f"the promise held, but {self.issue.describe()} says it breaks on this "
                "host: update the known-issues file"
            )
        return self.issue.describe()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": str(self.status),
            "id": self.issue.id,
            "kinds": sorted(self.issue.kinds),
            "reason": self.issue.reason,
            "link": self.issue.link,
        }
        if self.unexcused:
            out["unexcused"] = list(self.unexcused)
        if self.issue.recheck is not None:
            out["recheck"] = self.issue.recheck.isoformat()
        return out


def kinds_of(result: Any) -> list[str]:
    """The violation kinds of a broken result (:data:`KIND_KERNEL_ERROR` when it
    broke without recording one)."""
    kinds = {str(v.kind) for v in getattr(result, "violations", None) or []}
    return sorted(kinds) or [KIND_KERNEL_ERROR]


def match_known(
    results: Sequence[Any],
    issues: Sequence[KnownIssue],
    host: Host,
    today: dt.date | None = None,
) -> list[Match | None]:
    """Per result: known-broken (a promise broke as an entry says, every
    violation of a kind it excuses), not excused (it broke with another kind),
    overdue (the entry's re-check date passed), fixed? (a promise held where an
    entry says it breaks), or None."""
    from kvmharness.scenarios.base import Kind, Verdict

    out: list[Match | None] = []
    for r in results:
        m = None
        if r.variant.kind is Kind.PROMISE and r.verdict in (Verdict.BROKEN, Verdict.HOLDS):
            sid = scenario_id(r.family, r.variant.name)
            hits = [k for k in issues if k.matches(sid, host)]
            if hits and r.verdict == Verdict.HOLDS:
                m = Match(Status.FIXED, hits[0])
            elif hits:
                m = match_broken(hits, kinds_of(r), today)
        out.append(m)
    return out


def match_broken(
    hits: Sequence[KnownIssue], kinds: Iterable[str], today: dt.date | None = None
) -> Match:
    """What the entries ``hits`` (each covering the scenario and host, at least
    one) make of a promise that broke with violations of ``kinds``:
    known-broken when one entry, not overdue, excuses every kind; else not
    excused (naming the kinds the closest entry leaves out), or overdue."""
    if not hits:
        raise ValueError("match_broken needs at least one matching entry")
    kinds = sorted(set(kinds)) or [KIND_KERNEL_ERROR]
    live = [k for k in hits if not k.overdue(today)]
    full = next((k for k in live if not k.unexcused(kinds)), None)
    if full is not None:
        return Match(Status.KNOWN_BROKEN, full)
    if live:
        # the entry that excuses the most of what was found names the rest
        best = min(live, key=lambda k: len(k.unexcused(kinds)))
        return Match(Status.NOT_EXCUSED, best, tuple(best.unexcused(kinds)))
    return Match(Status.OVERDUE, hits[0])


class PromiseBroken(AssertionError):
    """A test's promise broke, with the violation kinds it found.

    What :func:`kvmharness.testing.assert_holds` raises for a broken result (a
    test may raise it itself).  Under ``@pytest.mark.kvm_scenario`` the pytest
    plugin reads :attr:`kinds` to apply the known issues as ``run`` does: the
    test is xfail only where an entry excuses every kind; a failure with any
    other kind, or any other exception, fails."""

    def __init__(self, message: str, kinds: Iterable[str], scenario: str | None = None) -> None:
        super().__init__(message)
        self.kinds: tuple[str, ...] = tuple(sorted(set(kinds))) or (KIND_KERNEL_ERROR,)
        self.scenario = scenario
        """The "family/variant" that broke (None: the one the test is marked with)."""


def scenario_id(family: str, variant: str) -> str:
    """``family/variant``, without doubling a family prefix the variant already has
    (records of kvmharness 0.1 named postcopy's variants ``postcopy/stream``)."""
    return variant if variant.startswith(family + "/") else f"{family}/{variant}"
