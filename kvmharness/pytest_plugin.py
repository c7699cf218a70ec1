"""pytest plugin: fixtures for KVM tests, the ``kvm`` marker, a host-facts header,
and a summary of characterizations (behaviour measured, not promised).

KVM tests skip with a reason where /dev/kvm is unusable, and fail instead
when ``KVMHARNESS_REQUIRE_KVM=1`` (CI on KVM hosts sets it), so a broken
KVM setup can never pass as a run of skips.

Known issues: a test marked ``@pytest.mark.kvm_scenario("clock/tsc/msr")``
(the "family/variant" it asserts holds) is judged as ``kvmharness run``
judges that promise, with the known-issues file (the shipped one, or
``--kvmharness-known FILE``):

* where an entry (not overdue) covers the scenario on this host, the test is
  a *strict* xfail, and stays one only if it fails with a
  :class:`kvmharness.known.PromiseBroken` (what
  :func:`kvmharness.testing.assert_holds` raises for a broken result) whose
  every violation kind an entry excuses.  A failure with another kind
  (``decode-mismatch`` where the entry excuses ``tsc-not-applied``), of
  another scenario, or any other exception (a plain ``assert``, a fixture
  error: no kinds to excuse) FAILS, with the reason in its report;
* if it passes there, the strict xfail fails the run, as ``run`` reports
  "fixed?"; so does a pass where only an overdue entry covers it (an
  overdue entry excuses nothing: a failure there fails as it is).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENV = "KVMHARNESS_REQUIRE_KVM"
_CHARACTERIZATIONS: list[tuple[str, str]] = []


def kvm_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "no", "false")


def _kvm_problem() -> str | None:
    """None when /dev/kvm can be used, else why not."""
    from kvmharness.errors import KvmError
    from kvmharness.kvm import Kvm

    try:
        Kvm().close()
    except KvmError as exc:
        return str(exc)
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kvmharness-known",
        metavar="FILE",
        default=None,
        help="kvmharness known-issues file (default: the one the package ships): "
        "tests marked kvm_scenario that it says break here are strict xfail",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kvm: needs /dev/kvm (skips without it; fails when KVMHARNESS_REQUIRE_KVM=1)"
    )
    config.addinivalue_line(
        "markers",
        "kvm_scenario(name): the test asserts promise 'family/variant' holds; "
        "strict xfail where a known issue says it breaks on this host",
    )
    config._kvmharness_problem = _kvm_problem()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from kvmharness.known import Host, find, load

    marked = [
        (item, m.args[0])
        for item in items
        if (m := item.get_closest_marker("kvm_scenario")) is not None and m.args
    ]
    if not marked:
        return
    issues = load(config.getoption("--kvmharness-known", default=None))
    host = Host.this()
    for item, scenario in marked:
        hits = [k for k in issues if k.matches(scenario, host)]
        if not hits:
            continue
        issue = find(hits, scenario, host)
        reason = ""
        if issue is not None:
            reason = (
                f"known-broken on {host.backend} {host.kernel_release}: {issue.describe()}; "
                f"excuses {', '.join(sorted(issue.kinds))}"
            )
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        item.stash[_KNOWN] = _Known(scenario, hits, reason)


@dataclass(frozen=True)
class _Known:
    """The known issues covering a kvm_scenario test on this host."""

    scenario: str
    hits: list[Any]  # KnownIssue
    reason: str  # the xfail reason ("" where every entry is overdue: no xfail)


_KNOWN = pytest.StashKey[_Known]()


def _not_excused(known: _Known, exc: BaseException) -> str | None:
    """Why a failure of a test its known issues xfail is not excused (None: it is)."""
    from kvmharness.known import PromiseBroken, match_broken

    if not isinstance(exc, PromiseBroken):
        return (
            f"not excused: the test failed with {type(exc).__name__}, which names no "
            f"violation kinds; a known issue excuses only a broken promise of the kinds "
            f"it lists (kvmharness.testing.assert_holds(result) raises PromiseBroken)"
        )
    if exc.scenario is not None and exc.scenario != known.scenario:
        return (
            f"not excused: {exc.scenario} broke, and the test is marked "
            f"kvm_scenario({known.scenario!r})"
        )
    m = match_broken(known.hits, exc.kinds)
    return None if m.excused else m.explain()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Runs after pytest's xfail handling: a kvm_scenario failure it made an
    xfail stays one only if a known issue excuses every violation kind; a pass
    where only an overdue entry covers the scenario is "fixed?"."""
    rep = yield
    known = item.stash.get(_KNOWN, None)
    if known is None or item.config.option.runxfail:
        return rep
    if (
        call.excinfo is not None
        and rep.skipped
        and getattr(rep, "wasxfail", None) == known.reason
        and not isinstance(call.excinfo.value, (pytest.skip.Exception, pytest.xfail.Exception))
    ):
        why = _not_excused(known, call.excinfo.value)
        if why is None:
            rep.wasxfail = f"{known.reason} (failed with excused kinds only)"
        else:
            rep.outcome = "failed"
            del rep.wasxfail
            rep.sections.append(("kvmharness known issues", why))
    elif not known.reason and call.when == "call" and rep.passed:
        rep.outcome = "failed"
        rep.longrepr = (
            f"[fixed?] the promise held, but known issue {known.hits[0].id} says it breaks "
            f"here (its re-check date {known.hits[0].recheck} has passed): update the "
            "known-issues file"
        )
    return rep


def pytest_report_header(config: pytest.Config) -> list[str]:
    from kvmharness.hostinfo import gather

    info = gather(probe_sched=False)
    feats = ",".join(info.kvm_features) or "-"
    return [
        f"kvmharness: kernel {info.kernel_release}, KVM backend {info.kvm_backend}, "
        f"/dev/kvm {info.dev_kvm}, API {info.api_version}",
        f"kvmharness: PV features {feats}; invariant TSC {info.invariant_tsc}; "
        f"TSC kHz {info.tsc_khz}; userfaultfd {info.userfaultfd}",
        f"kvmharness: {REQUIRE_ENV}={'1' if kvm_required() else '0'}",
    ]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is None:
        return
    problem = item.config._kvmharness_problem  # type: ignore[attr-defined]
    if problem is None:
        return
    if kvm_required():
        pytest.fail(f"KVM test cannot run and {REQUIRE_ENV}=1: {problem}", pytrace=False)
    pytest.skip(f"needs /dev/kvm: {problem}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _CHARACTERIZATIONS:
        return
    terminalreporter.section("kvmharness characterizations (measured, not promised by KVM)")
    for nodeid, text in _CHARACTERIZATIONS:
        terminalreporter.write_line(f"{nodeid}: {text}")


@pytest.fixture
def characterize(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record what a characterization measured: shown in the summary and the JUnit XML."""

    def record(text: str) -> None:
        _CHARACTERIZATIONS.append((request.node.nodeid, text))
        request.node.user_properties.append(("characterization", text))

    return record


@pytest.fixture(scope="session")
def kvm() -> Iterator[Any]:
    """The /dev/kvm system object (session-wide)."""
    from kvmharness.kvm import Kvm

    with Kvm() as k:
        yield k


def resolve_source(source: str | os.PathLike[str], test_path: Path) -> Path:
    """A guest C file named by a test: an absolute path as it is, a relative one
    next to the test module (``test_path``'s directory)."""
    path = Path(os.fspath(source))
    return path if path.is_absolute() else test_path.parent / path


@pytest.fixture
def make_guest(kvm: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Factory for GuestVms, each closed after the test.

    ``make_guest("selftest", vcpus=2)``: a built-in guest program;
    ``make_guest(source="my_guest.c")``: your own guest C file, a relative path
    taken from the requesting test module's directory (so a test and its guest
    sit side by side).  Other keywords go to :class:`kvmharness.guest.machine.GuestVm`.
    """
    from kvmharness.guest.build import is_source_path
    from kvmharness.guest.machine import GuestVm

    made: list[GuestVm] = []

    def factory(
        program: Any = None, *, source: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> GuestVm:
        if source is not None:
            source = resolve_source(source, request.path)
        elif program is None:
            program = "selftest"
        elif isinstance(program, str | os.PathLike) and is_source_path(program):
            program = resolve_source(program, request.path)
        gvm = GuestVm(kvm, program, source=source, **kwargs)
        made.append(gvm)
        return gvm

    yield factory
    for gvm in made:
        gvm.close()


@pytest.fixture
def guest_vm(make_guest: Callable[..., Any]) -> Any:
    """A fresh one-vCPU VM with the selftest guest program loaded."""
    return make_guest("selftest")


@pytest.fixture
def vcpu(guest_vm: Any) -> Any:
    """vCPU 0 of ``guest_vm``."""
    return guest_vm.vcpus[0]
