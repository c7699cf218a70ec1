"""Known issues: broken promises recorded for a host, so a CI on a kernel with a
known bug stays usable without hiding the bug.

A known-issues file is TOML (read with :mod:`tomllib`)::

    [[issue]]
    id = "pvm-tsc-not-applied"
    scenario = "clock/tsc/*"        # fnmatch pattern over "family/variant"
    backend = "pvm"                 # vmx, svm, pvm or "*" (default "*")
    kernel_min = "6.0"              # inclusive, optional
    kernel_below = "7.0"            # exclusive, optional
    cpu_model = "QEMU TCG"          # substring of /proc/cpuinfo's model name, optional
    reason = "what is broken, with the measurement"
    link = "where it is tracked"

A promise that breaks and matches an entry is **known-broken**: printed on
every run, not counted in the exit code.  A promise that *holds* where an
entry says it breaks is **fixed?**: the run fails, so the file stays true.
Untestable or errored results match nothing.  The package ships
``known_issues.toml``; ``--known FILE`` (and the pytest option
``--kvmharness-known``) replace it.
"""

from __future__ import annotations

import enum
import fnmatch
import platform
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

DEFAULT_FILE = "known_issues.toml"
_FIELDS = {"id", "scenario", "backend", "kernel_min", "kernel_below", "cpu_model", "reason", "link"}


class KnownIssuesError(ValueError):
    """A known-issues file that cannot be used (the message names file and entry)."""


class Status(enum.StrEnum):
    KNOWN_BROKEN = "known-broken"
    FIXED = "fixed?"


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
    backend: str = "*"
    kernel_min: str | None = None
    kernel_below: str | None = None
    cpu_model: str | None = None

    def matches(self, scenario: str, host: Host) -> bool:
        """Whether this entry covers ``scenario`` ("family/variant") on ``host``."""
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

    def describe(self) -> str:
        return f"known issue {self.id}: {self.reason} ({self.link})"


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
        unknown = set(e) - _FIELDS
        if unknown:
            raise KnownIssuesError(f"{where}: unknown field(s) {sorted(unknown)}")
        missing = [k for k in ("id", "scenario", "reason", "link") if not e.get(k)]
        if missing:
            raise KnownIssuesError(f"{where}: missing {', '.join(missing)}")
        if not all(isinstance(v, str) for v in e.values()):
            raise KnownIssuesError(f"{where}: every field is a string")
        for k in ("kernel_min", "kernel_below"):
            if k in e:
                try:
                    release_tuple(e[k])
                except ValueError:
                    raise KnownIssuesError(
                        f"{where}: {k} {e[k]!r} is not a kernel release"
                    ) from None
        if e["id"] in seen:
            raise KnownIssuesError(f"{where}: duplicate id {e['id']!r}")
        seen.add(e["id"])
        out.append(KnownIssue(**e))
    return out


def load(path: str | None = None) -> list[KnownIssue]:
    """The issues in ``path``, or the file the package ships."""
    if path is None:
        text = resources.files("kvmharness").joinpath(DEFAULT_FILE).read_text()
        return parse(text, f"kvmharness/{DEFAULT_FILE}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise KnownIssuesError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KnownIssuesError(f"{path}: not UTF-8 text") from None
    return parse(text, path)


def find(issues: Sequence[KnownIssue], scenario: str, host: Host) -> KnownIssue | None:
    return next((k for k in issues if k.matches(scenario, host)), None)


@dataclass(frozen=True)
class Match:
    status: Status
    issue: KnownIssue

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "id": self.issue.id,
            "reason": self.issue.reason,
            "link": self.issue.link,
        }


def classify(
    results: Sequence[Any], issues: Sequence[KnownIssue], host: Host
) -> list[Match | None]:
    """Per result: known-broken (a promise broke as an entry says), fixed? (a
    promise held where an entry says it breaks), or None."""
    from kvmharness.scenarios.base import Kind, Verdict

    out: list[Match | None] = []
    for r in results:
        m = None
        if r.variant.kind is Kind.PROMISE:
            issue = find(issues, scenario_id(r.family, r.variant.name), host)
            if issue is not None and r.verdict == Verdict.BROKEN:
                m = Match(Status.KNOWN_BROKEN, issue)
            elif issue is not None and r.verdict == Verdict.HOLDS:
                m = Match(Status.FIXED, issue)
        out.append(m)
    return out


def scenario_id(family: str, variant: str) -> str:
    """``family/variant``, without doubling a family prefix the variant already has
    (postcopy's variants are named ``postcopy/stream``)."""
    return variant if variant.startswith(family + "/") else f"{family}/{variant}"
