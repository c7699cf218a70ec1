"""``kvmharness run`` and ``kvmharness bisect``: the scenario matrix, judged.

Both exit by the ``git bisect run`` convention (README, "Exit codes"), the
first that applies in this order:

* 0  every promise tested held (or broke as a known issue excuses: every
  violation of a kind its entry lists);
* 1  a promise broke on this kernel (a KVM ioctl failing on a promised
  path included), or a known issue looks fixed ("fixed?": the promise
  held where the known-issues file says it breaks); scenarios of kind
  characterize never change the exit code;
* 125  cannot test here: no usable /dev/kvm, KVM without steal time,
  run_delay not kept (sched_info off); a promise this run could not judge
  (untestable: e.g. the host too loaded); a scenario named with
  ``--variant`` that is not supported or untestable here; nothing selected
  could be tested.  A scenario *not supported* on this host (a capability
  absent, no master clock) that was not named is shown and left out;
* 128  a harness fault (a bug or broken environment: no verdict on the
  kernel), and bad usage, so a bisect script with a typo aborts rather than
  marking commits bad.

``bisect`` runs a quick profile of the promises and prints one verdict line
before the table; ``--variant`` chooses what "bad" means for this bisect.

Known issues (``--known FILE``, default the file the package ships; README,
"Known issues"): a broken promise an entry matches on this host,
with every violation of a kind the entry lists, is printed as
"known-broken" and left out of the exit code; any other kind stays broken.
``kvmharness judge RUN.json`` re-judges the JSON of a run; ``run --legend``
says what every column and state means.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from kvmharness import __version__
from kvmharness.exitcodes import (
    EXIT_BROKEN,
    EXIT_HARNESS,
    EXIT_OK,
    EXIT_UNTESTABLE,
    Untestable,
    UsageError,
)

log = logging.getLogger(__name__)

#: bisect's quick profile: the promises, each once, at 2 vCPUs.
BISECT_VCPUS = [2]
BISECT_CONTEND_MS = 100


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def check_output_path(path: str, what: str) -> None:
    """Refuse, before anything runs, an output path that cannot be written."""
    if path == "-":
        return
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory; give a file name")
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise UsageError(f"{what} {path}: directory {d} does not exist")
    if not os.access(d, os.W_OK):
        raise UsageError(f"{what} {path}: directory {d} is not writable")


def _word(r: Any, m: Any) -> str:
    """The state a row is in: its verdict, or known-broken where an entry excused it."""
    return str(m.status) if m is not None and m.excused else str(r.verdict)


def _kept_snapshots(args: Any) -> dict[str, Any]:
    """``--keep-snapshots``: the files kept, named in the run's JSON (what to attach with it)."""
    if not getattr(args, "keep_snapshots", None):
        return {}
    from kvmharness.scenarios import child

    return {
        "snapshots": {
            "dir": args.keep_snapshots,
            "files": [os.path.basename(k) for k in child.kept],
        }
    }


def check_keep_dir(path: str) -> str:
    """``--keep-snapshots DIR``: the directory, made if its parent exists,
    refused (before anything runs) if it cannot hold files."""
    d = os.path.abspath(path)
    if os.path.exists(d) and not os.path.isdir(d):
        raise UsageError(f"--keep-snapshots {path}: exists and is not a directory")
    if not os.path.isdir(d):
        parent = os.path.dirname(d)
        if not os.path.isdir(parent):
            raise UsageError(f"--keep-snapshots {path}: directory {parent} does not exist")
        try:
            os.mkdir(d)
        except OSError as exc:
            raise UsageError(f"--keep-snapshots {path}: {exc.strerror or exc}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"--keep-snapshots {path}: directory {d} is not writable")
    return d


Named = list[tuple[str, list[tuple[str, str]]]]
"""What the user named: per ``--variant`` item, the (family, variant) it chose."""


def select(items: list[str] | None, *, bisect: bool) -> list[tuple[Any, list[str]]]:
    """(family, variant names) chosen by ``--variant`` items.

    An item is a family name (its default variants; its promises for
    ``bisect``), a variant ``family/variant`` (``steal/fresh-vm/vcpu-thread``),
    or a prefix of variant names (``steal/fresh-vm``); the family may be left
    out where the name is one family's only (``fresh-vm``, ``stream``).  Comma
    lists are allowed.  Nothing chosen is a usage error: an empty shell
    variable must not read as "good".
    """
    return select_named(items, bisect=bisect)[0]


def _in_family(f: Any, name: str) -> list[str]:
    """``f``'s variants that ``name`` (a variant or a prefix of variants) names."""
    return [v for v in f.variants if v == name or v.startswith(name + "/")]


def _unknown(name: str, fams: list[Any]) -> UsageError:
    """Bad usage naming what the user may have meant (difflib), not every name."""
    from kvmharness.known import scenario_id

    # what a name may be (a family, family/variant, a bare variant) -> its full name
    full = {f.name: f.name for f in fams}
    for f in fams:
        for v in f.variants:
            full[v] = full[scenario_id(f.name, v)] = scenario_id(f.name, v)
    near = list(dict.fromkeys(full[n] for n in difflib.get_close_matches(name, full, 6, 0.6)))
    near = near[:3]
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return UsageError(
        f"unknown scenario {name!r}{hint} (families: {', '.join(f.name for f in fams)}; "
        "every variant: kvmharness run --list)"
    )


def resolve(name: str, fams: list[Any], *, bisect: bool) -> list[tuple[Any, str]]:
    """The (family, variant) pairs one item names (see :func:`select`)."""
    by_name = {f.name: f for f in fams}
    if name in by_name:
        f = by_name[name]
        return [(f, v) for v in (f.promises() if bisect else f.default)]
    fam, _, rest = name.partition("/")
    if fam in by_name and rest:
        hits = [(by_name[fam], v) for v in _in_family(by_name[fam], rest)]
    else:
        hits = [(f, v) for f in fams for v in _in_family(f, name)]
        owners = sorted({f.name for f, _ in hits})
        if len(owners) > 1:
            raise UsageError(
                f"{name!r} names variants of {' and '.join(owners)}: say which, "
                + " or ".join(repr(f"{o}/{name}") for o in owners)
            )
    if not hits:
        raise _unknown(name, fams)
    return hits


def select_named(
    items: list[str] | None, *, bisect: bool
) -> tuple[list[tuple[Any, list[str]]], Named]:
    """:func:`select`, and what each item named (empty without ``--variant``)."""
    from kvmharness.scenarios.base import families

    fams = families()
    if items is None:
        return [(f, f.quick_profile() if bisect else list(f.default)) for f in fams], []
    chosen: dict[str, list[str]] = {}
    named: Named = []
    for item in items:
        for name in _csv(item):
            hits = resolve(name, fams, bisect=bisect)
            named.append((name, [(f.name, v) for f, v in hits]))
            for f, v in hits:
                if v not in chosen.setdefault(f.name, []):
                    chosen[f.name].append(v)
    if not any(chosen.values()):
        raise UsageError(f"empty selection {items!r}: name at least one scenario (see --list)")
    by_name = {f.name: f for f in fams}
    return [(by_name[n], vs) for n, vs in chosen.items()], named


def parse_vcpus(text: str | None, default: list[int] | None) -> list[int] | None:
    from kvmharness.ffi import lib

    if text is None:
        return default
    limit = lib.GUEST_MAX_VCPUS
    what = f"--vcpus takes a comma list of counts from 1 to {limit}"
    items = [v.strip() for v in text.split(",")]
    if not text.strip() or "" in items:
        where = (
            "is empty" if not text.strip() else "has an empty item (two commas, or one at an end)"
        )
        raise UsageError(f"{what}; {text!r} {where}")
    for v in items:
        if not v.isdigit():
            raise UsageError(f"{what}; {v!r} in {text!r} is not a whole number")
        if not 1 <= int(v) <= limit:
            raise UsageError(f"{what}; {v} in {text!r} is out of that range")
    return [int(v) for v in items]


def options_of(args: Any) -> Any:
    """The run's :class:`~kvmharness.scenarios.base.RunOptions` from the command
    line, checked by its one set of rules (a bad one is bad usage, exit 128)."""
    from kvmharness.scenarios.base import DEFAULTS, OptionError, RunOptions

    options = RunOptions(
        args.contend_ms,
        args.downtime_ms,
        args.budget_s,
        getattr(args, "latency_us", DEFAULTS.latency_us),
        getattr(args, "pages_per_vcpu", DEFAULTS.pages_per_vcpu),
    )
    try:
        options.validate()
    except OptionError as exc:
        raise UsageError(f"{exc.option} {exc.text}") from None
    return options


def precheck(steal_time: bool = True) -> dict[str, Any]:
    """What makes this host untestable, as :class:`Untestable`; host facts otherwise.
    Steal time and run_delay are needed only when ``steal_time`` (a planned
    family's :attr:`~kvmharness.scenarios.base.Family.needs_steal_time`)."""
    from kvmharness.errors import KvmUnavailable
    from kvmharness.hostinfo import gather

    info = gather(probe_sched=True)
    if info.dev_kvm != "present":
        raise Untestable(f"/dev/kvm is {info.dev_kvm}")
    if info.api_version is None:
        raise KvmUnavailable("/dev/kvm did not answer KVM_GET_API_VERSION")
    if not steal_time:
        return info.to_dict()
    if not info.steal_time:
        raise Untestable(
            "this KVM does not offer KVM_FEATURE_STEAL_TIME in its "
            "supported CPUID (0x40000001 EAX bit 5)"
        )
    if info.sched_info_live is False:
        raise Untestable(
            "run_delay in /proc/self/task/TID/schedstat does not move: the "
            "kernel keeps no sched_info, so KVM publishes no steal time"
        )
    return info.to_dict()


def verdict_fields(
    code: int, why: str, known_file: str | None, results: list[Any], known: list[Any]
) -> dict[str, Any]:
    """The run document's verdict and results, as ``run``, ``bisect`` and
    ``judge`` write them: each result's record with the known issue it matched."""
    return {
        "exit_code": code,
        "verdict": why,
        "known_issues_file": known_file or "(shipped)",
        "results": [
            {**r.to_json(), "known": m.to_json() if m else None}
            for r, m in zip(results, known, strict=True)
        ],
    }


def verdict_of(
    results: list[Any], known: list[Any] | None = None, named: Named | None = None
) -> tuple[int, str]:
    """One verdict for the run, and why: the exit code and a line saying so.

    In this order:

    * 128 when a scenario errored (the harness or its environment failed);
    * 1 when a promise broke and no known issue excuses it (a violation kind
      the matching entry does not list, or an entry past its re-check date,
      excuse nothing), or when a known issue looks fixed;
    * 125 when a promise was asked for and this run could not judge it
      (``untestable``: e.g. the host too loaded to judge a stopped vCPU).  A
      bisect must not call a kernel good when a promise it asked for went
      unjudged; a run under less load tells;
    * 125 when an item the user named (``--variant``) tested nothing: every
      scenario it chose was untestable or not supported here;
    * 125 when nothing was tested at all: no promise held or broke (or, for a
      selection of characterizations only, none was characterized);
    * 0 otherwise.  A scenario *not supported* here (a lasting property of the
      host: a capability absent, no master clock) is shown and left out, as
      long as the user did not name it and something else was tested; an
      untestable characterization is shown and left out (it carries no verdict).

    ``known[i]`` (a :class:`kvmharness.known.Match` or None) marks result i.
    ``named``: per ``--variant`` item, the (family, variant) it chose.
    """
    from kvmharness.known import Status, scenario_id
    from kvmharness.scenarios.base import Kind, Verdict

    marks = known if known is not None else [None] * len(results)
    pairs = list(zip(results, marks, strict=True))
    tested = {Verdict.HOLDS, Verdict.BROKEN, Verdict.CHARACTERIZED}

    def sid(r: Any) -> str:
        return scenario_id(r.family, r.variant.name) if hasattr(r, "family") else "?"

    errors = [r for r in results if r.verdict == Verdict.ERROR]
    if errors:
        return EXIT_HARNESS, f"harness fault: no verdict on this kernel ({sid(errors[0])} errored)"
    broken = [
        r
        for r, m in pairs
        if r.variant.kind == Kind.PROMISE
        and r.verdict == Verdict.BROKEN
        and not (m is not None and m.status is Status.KNOWN_BROKEN)
    ]
    if broken:
        return EXIT_BROKEN, f"bad: a promise broke on this kernel ({sid(broken[0])})"
    fixed = [r for r, m in pairs if m is not None and m.status is Status.FIXED]
    if fixed:
        return EXIT_BROKEN, f"bad: a known issue looks fixed ({sid(fixed[0])} held)"
    untestable = [
        r for r in results if r.variant.kind == Kind.PROMISE and r.verdict == Verdict.UNTESTABLE
    ]
    if untestable:
        return EXIT_UNTESTABLE, (
            f"cannot test: this run could not judge {sid(untestable[0])} (see the untestable rows)"
        )
    for item, chose in named or []:
        mine = [r for r in results if (r.family, r.variant.name) in set(chose)]
        if not any(r.verdict in tested for r in mine):
            why = f"is {mine[0].verdict} here" if mine else "did not run (see the warnings)"
            return EXIT_UNTESTABLE, f"cannot test: {item!r}, which you named, {why}"
    promises = [r for r in results if r.variant.kind == Kind.PROMISE]
    judged = [r for r in (promises or results) if r.verdict in tested]
    if not judged:
        return EXIT_UNTESTABLE, "cannot test: nothing selected could be tested here"
    return EXIT_OK, "good: every promise held"


def exit_code(
    results: list[Any], known: list[Any] | None = None, named: Named | None = None
) -> int:
    """The exit code of :func:`verdict_of`."""
    return verdict_of(results, known, named)[0]


#: What ends a run whose scenario hung (set by :func:`run_cli` around its
#: :func:`run_matrix`, so a test may replace ``run_matrix`` with any callable).
_ON_HANG: list[Any] = []
#: What reports a SIGINT/SIGTERM the main thread cannot take (set by run_cli,
#: as :data:`_ON_HANG`; :class:`kvmharness.host.sigwatch.SignalWatch`).
_ON_STUCK_SIGNAL: list[Any] = []


def hung_result(
    f: Any,
    v: str,
    n: int,
    options: Any,
    threads: list[Any],
    window_ns: int,
    progress: dict[str, Any] | None = None,
) -> Any:
    """The result of scenario ``f``/``v`` at ``n`` vCPUs that never returned:
    its record keeps the threads the hang guard read, and the same judge
    ``kvmharness judge`` uses decides it (:mod:`kvmharness.judges.hang`)."""
    from kvmharness.host.hangguard import scenario_deadline_s
    from kvmharness.judges import SCHEMA_VERSION, judge_record
    from kvmharness.judges.hang import hang_record
    from kvmharness.report import RecordResult
    from kvmharness.scenarios.base import Verdict

    variant = f.variants[v]
    deadline = scenario_deadline_s(options.budget_s, options.contend_ms, options.downtime_ms)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "family": f.name,
        "variant": v,
        "kind": str(variant.kind),
        "why": variant.why,
        "vcpus": n,
        "config": {
            "budget_s": options.budget_s,
            "contend_ms": options.contend_ms,
            "downtime_ms": options.downtime_ms,
        },
        "wall_s": progress["elapsed_ns"] / 1e9 if progress else deadline,
        "hang": hang_record(threads, window_ns, deadline, progress),
    }
    j = judge_record(record)
    record["error"] = j.observed  # a judge without the hang rule still shows it as recorded
    record["blame"] = "untestable" if j.verdict == Verdict.UNTESTABLE else "kernel"
    return RecordResult(f.name, variant, n, j.verdict, j.observed, deadline, j.violations, record)


def run_matrix(
    plan: list[tuple[Any, list[str]]],
    vcpus: list[int] | None,
    options: Any,
    progress: Any = None,
    on_hang: Any = None,
    on_stuck_signal: Any = None,
) -> list[Any]:
    """Run each chosen variant at each vCPU count (the family's default counts
    when ``vcpus`` is None), sharing one /dev/kvm handle.

    Each scenario runs under a :class:`~kvmharness.host.hangguard.HangGuard`:
    one that has not returned by its deadline has its threads judged, and
    ``on_hang(results)`` is called from the guard's thread with the results
    so far and the hung one last; it must end the process (the scenario's
    threads may sleep in the kernel for ever).  None: the one ``run_cli`` set
    (:data:`_ON_HANG`), else log and exit 128."""
    from kvmharness.host.hangguard import HangGuard, die, scenario_deadline_s
    from kvmharness.kvm import Kvm

    jobs = [
        (f, v, n)
        for f, vs in plan
        for v in vs
        for n in (vcpus or f.default_vcpus)
        if n <= f.max_vcpus
    ]
    for f, _ in plan:
        too_many = sorted({n for n in (vcpus or []) if n > f.max_vcpus})
        if too_many:
            log.warning(
                "%s: not run at %s vCPUs (the family supports at most %d)",
                f.name,
                ",".join(map(str, too_many)),
                f.max_vcpus,
            )
    if not jobs:
        raise UsageError(
            f"--vcpus {','.join(map(str, vcpus or []))}: more than the chosen "
            "families support (" + ", ".join(f"{f.name} {f.max_vcpus}" for f, _ in plan) + ")"
        )
    deadline = scenario_deadline_s(options.budget_s, options.contend_ms, options.downtime_ms)
    on_hang = on_hang or (_ON_HANG[-1] if _ON_HANG else None)

    def guard(f: Any, v: str, n: int) -> HangGuard:
        def hung(threads: list[Any], window_ns: int, progress: Any = None) -> None:
            res = hung_result(f, v, n, options, threads, window_ns, progress)
            if on_hang is None:
                log.error("%s/%s never returned: %s", f.name, v, res.observed)
                die(EXIT_HARNESS)
            on_hang([*results, res])

        return HangGuard(deadline, hung)

    from kvmharness.exitcodes import Terminated, signal_exit
    from kvmharness.host.sigwatch import SignalWatch
    from kvmharness.progress import step_note

    results: list[Any] = []
    on_stuck_signal = on_stuck_signal or (_ON_STUCK_SIGNAL[-1] if _ON_STUCK_SIGNAL else None)

    def stuck(signum: int) -> None:
        # SIGINT/SIGTERM the main thread cannot take (asleep in the kernel)
        if on_stuck_signal is None:
            die(signal_exit(signum))
        on_stuck_signal(RunInterrupted(list(results), signum, len(jobs)))

    try:
        with Kvm() as kvm, SignalWatch(stuck):
            for i, (f, v, n) in enumerate(jobs):
                if progress:
                    note = step_note(f.name, v, options)  # a long step says what it waits for
                    progress(i, len(jobs), f"{f.name}/{v}, {n} vCPU(s){note}", None)
                with guard(f, v, n):
                    res = f.run_one(v, n, options, kvm)
                results.append(res)
                if progress:
                    progress(i, len(jobs), f"{f.name}/{v}, {n} vCPU(s)", res)
    except KeyboardInterrupt:
        raise RunInterrupted(results, signal.SIGINT, len(jobs)) from None
    except Terminated:
        raise RunInterrupted(results, signal.SIGTERM, len(jobs)) from None
    return results


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM ended :func:`run_matrix`: the results that finished
    (the scenario it was in was unwound: its VMs closed, its children killed)."""

    def __init__(self, results: list[Any], signum: int, planned: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.results = results
        self.signum = signum
        self.planned = planned

    def describe(self) -> str:
        return (
            f"interrupted by {signal.Signals(self.signum).name} after "
            f"{len(self.results)} of {self.planned} scenarios"
        )


def list_variants() -> None:
    import textwrap

    from kvmharness.known import scenario_id
    from kvmharness.scenarios.base import families
    from kvmharness.table import terminal_width

    rows = [
        (scenario_id(f.name, v.name), str(v.kind), v.why)
        for f in families()
        for v in f.variants.values()
    ]
    w = max(len(r[0]) for r in rows)
    k = max(len(r[1]) for r in rows)
    indent = " " * (w + k + 4)
    why_w = max(terminal_width() - len(indent), 30)
    print(f"{'scenario':{w}}  {'kind':{k}}  why")
    for sid, kind, why in rows:
        lines = textwrap.wrap(why, why_w, break_on_hyphens=False) or [""]
        print(f"{sid:{w}}  {kind:{k}}  {lines[0]}")
        for line in lines[1:]:
            print(indent + line)
    print("\n(run --legend says what the tables' columns and the states mean)")


def mark_known(results: list[Any], known: list[Any]) -> None:
    """Say in each result's observed text what a known issue did to it."""
    from kvmharness.known import Status

    for r, m in zip(results, known, strict=True):
        if m is None:
            continue
        if m.status is Status.KNOWN_BROKEN:
            r.observed = f"known-broken ({m.issue.id}): {r.observed}"
        elif m.status in (Status.NOT_EXCUSED, Status.OVERDUE):
            r.observed = f"{m.explain()}; {r.observed}"


def summary_line(results: list[Any], known: list[Any], total_s: float | None) -> str:
    """``N scenarios [in S s]: N holds, N broken, N characterized[, N untestable]
    [, N not supported][, N harness error][, N known-broken][, N fixed?]``: each
    state in the one word the progress line, the tables and the JSON use; every
    result counted once (a known-broken promise as known-broken, not as broken)."""
    from kvmharness.known import Status
    from kvmharness.scenarios.base import Verdict

    counts = {v: sum(r.verdict == v for r in results) for v in Verdict}
    statuses = {s: sum(m is not None and m.status is s for m in known) for s in Status}
    counts[Verdict.BROKEN] -= statuses[Status.KNOWN_BROKEN]
    counts[Verdict.HOLDS] -= statuses[Status.FIXED]
    when = f" in {total_s:.1f} s" if total_s is not None else ""
    always = (Verdict.HOLDS, Verdict.BROKEN, Verdict.CHARACTERIZED)
    parts = [f"{counts[v]} {v}" for v in always]
    parts += [
        f"{counts[v]} {v}"
        for v in (Verdict.UNTESTABLE, Verdict.NOT_SUPPORTED, Verdict.ERROR)
        if counts[v]
    ]
    parts += [f"{statuses[s]} {s}" for s in (Status.KNOWN_BROKEN, Status.FIXED) if statuses[s]]
    return f"{len(results)} scenarios{when}: " + ", ".join(parts)


def print_report(
    results: list[Any], known: list[Any], *, wide: bool, total_s: float | None
) -> None:
    """The tables, the summary line, and a few lines on every result that did
    not simply hold: what ``run`` and ``judge`` print on stdout."""
    import textwrap

    from kvmharness.known import Status
    from kvmharness.report import tables
    from kvmharness.scenarios.base import Verdict
    from kvmharness.table import terminal_width

    width = 0 if wide else terminal_width()

    def say(text: str, indent: str = "") -> None:
        if not width:
            print(indent + text)
            return
        first, rest = indent, indent + "    "
        print(
            "\n".join(
                textwrap.wrap(
                    text,
                    width,
                    initial_indent=first,
                    subsequent_indent=rest,
                    break_on_hyphens=False,
                )
            )
        )

    print(tables(results, width=width))
    print()
    say(summary_line(results, known, total_s))
    for r, m in zip(results, known, strict=True):
        what = f"{r.variant.name} ({r.vcpus} vCPUs)"
        if m is not None and m.status is Status.FIXED:
            say(f"fixed? {what}: {m.explain()}")
        elif r.verdict == Verdict.NOT_SUPPORTED:
            say(f"not supported {what}: {r.observed.removeprefix('not supported: ')}")
        elif r.verdict in (Verdict.BROKEN, Verdict.ERROR, Verdict.UNTESTABLE):
            label = m.status if m is not None and m.excused else r.verdict
            say(f"{label} {what}: {r.observed}")
            if m is not None and m.excused:
                say(m.issue.describe(), "  ")
            for v in r.violations[:5]:
                say(f"{v.kind} {v.series}[{v.index}]: {v.detail}", "  ")


def run_cli(args: Any, *, bisect: bool = False) -> int:
    from kvmharness.errors import KvmUnavailable
    from kvmharness.known import Host, KnownIssuesError, cpu_model_name, load, match_known
    from kvmharness.progress import Ticker, plan_line
    from kvmharness.scenarios import child

    if args.list:
        list_variants()
        return EXIT_OK
    if getattr(args, "legend", False):
        from kvmharness.table import legend_text

        print(legend_text())
        return EXIT_OK
    try:
        issues = load(args.known)
    except KnownIssuesError as exc:
        raise UsageError(f"--known: {exc}") from None
    plan, named = select_named(args.variant, bisect=bisect)
    vcpus = parse_vcpus(args.vcpus, BISECT_VCPUS if bisect else None)
    options = options_of(args)
    if args.json:
        check_output_path(args.json, "--json")
    plot_path = getattr(args, "plot", None)
    if plot_path:
        from kvmharness.plots import check_plot_path

        check_plot_path(plot_path)

    try:
        host = precheck(steal_time=any(f.needs_steal_time for f, _ in plan))
        probe = getattr(args, "probe", None)
        if probe is not None:  # a command's own check of the host, before any VM
            probe()
    except KvmUnavailable as exc:
        raise Untestable(str(exc)) from None
    host.setdefault("cpu_model", cpu_model_name())
    kvm_max = host.get("capabilities", {}).get("MAX_VCPUS") or 0
    if vcpus and kvm_max and max(vcpus) > kvm_max:
        raise UsageError(
            f"--vcpus {max(vcpus)}: this KVM allows at most {kvm_max} vCPUs "
            "per VM (KVM_CAP_MAX_VCPUS)"
        )

    this_host = Host(host["kvm_backend"], host["kernel_release"], host["cpu_model"])

    ticker = Ticker()

    def progress(i: int, n: int, what: str, res: Any) -> None:
        if args.quiet:
            return
        if res is None:
            print(f"[{i + 1}/{n}] {what} ...", end="", file=sys.stderr, flush=True)
            ticker.start()  # a step past a few seconds ticks: never silent
        else:
            ticker.stop()
            # the word the table and the summary will use: known-broken is not broken
            (m,) = match_known([res], issues, this_host)
            word = m.status if m is not None and m.excused else res.verdict
            print(f" {word} ({res.wall_s:.2f} s)", file=sys.stderr, flush=True)

    keep = getattr(args, "keep_snapshots", None)
    if keep:
        child.keep_dir = check_keep_dir(keep)
        child.kept.clear()
    t0 = time.monotonic()

    def finish(results: list[Any], total: float, detail: str = "", interrupted: Any = None) -> int:
        """Judge the run, write --json, print the report; the exit code."""
        return _finish(
            args, bisect, host, named, issues, this_host, results, total, detail, interrupted
        )

    def on_hang(results: list[Any]) -> None:
        # a scenario's threads sleep in the kernel: report what we have, then a
        # fatal exit (they cannot be joined) that also kills its children
        from kvmharness.host.hangguard import die

        hung = results[-1]
        ticker.stop()
        if not args.quiet:
            print(f" {hung.verdict} (never returned)", file=sys.stderr, flush=True)
        try:
            code = finish(results, time.monotonic() - t0, f"; {hung.observed}")
        except BaseException:
            log.exception("writing the report of a hung run failed")
            code = EXIT_HARNESS
        die(code)

    if not args.quiet:
        print(plan_line(plan, vcpus, options), file=sys.stderr, flush=True)

    def on_stuck_signal(stop: RunInterrupted) -> None:
        # from the signal watch's thread: the main thread sleeps in the kernel
        # and cannot unwind; report what finished, then a fatal exit (die)
        from kvmharness.exitcodes import signal_exit
        from kvmharness.host.hangguard import die

        ticker.stop()
        if not args.quiet:
            print(
                " (the scenario's main thread sleeps in the kernel and cannot unwind; "
                "its children are killed)",
                end="",
                file=sys.stderr,
            )
        try:
            code = report_interrupted(stop, args, finish, time.monotonic() - t0)
        except BaseException:
            log.exception("writing the report of an interrupted run failed")
            code = signal_exit(stop.signum)
        die(code)

    try:
        _ON_HANG.append(on_hang)
        _ON_STUCK_SIGNAL.append(on_stuck_signal)
        results = run_matrix(plan, vcpus, options, progress)
    except KvmUnavailable as exc:
        raise Untestable(str(exc)) from None
    except RunInterrupted as stop:
        ticker.stop()
        return report_interrupted(stop, args, finish, time.monotonic() - t0)
    finally:
        ticker.stop()
        _ON_HANG.remove(on_hang)
        if on_stuck_signal in _ON_STUCK_SIGNAL:
            _ON_STUCK_SIGNAL.remove(on_stuck_signal)
        child.keep_dir = None
    return finish(results, time.monotonic() - t0)


def report_interrupted(stop: RunInterrupted, args: Any, finish: Any, total: float) -> int:
    """The report of the scenarios that finished before SIGINT/SIGTERM: the
    tables, and ``--json`` with ``interrupted`` set (a run file ``judge``
    reads); the exit code is 128+signal (130, 143) whatever they say.  A
    second signal while the report is written is ignored: the report is the
    work kept."""
    from kvmharness.exitcodes import signal_exit

    name = signal.Signals(stop.signum).name
    if not args.quiet:
        print(f" {name}: {stop.describe()}", file=sys.stderr)
    main = threading.current_thread() is threading.main_thread()
    sigs = (signal.SIGINT, signal.SIGTERM) if main else ()  # only the main thread may
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        finish(
            stop.results,
            total,
            "",
            {"signal": name, "finished": len(stop.results), "planned": stop.planned},
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    code = signal_exit(stop.signum)
    print(
        f"kvmharness: {stop.describe()}; the tables show those that finished"
        + (f", {args.json} has them" if args.json and args.json != "-" else "")
        + f" (exit {code})",
        file=sys.stderr,
    )
    return code


def _finish(
    args: Any,
    bisect: bool,
    host: dict[str, Any],
    named: Any,
    issues: Any,
    this_host: Any,
    results: list[Any],
    total: float,
    detail: str = "",
    interrupted: dict[str, Any] | None = None,
) -> int:
    from kvmharness.exitcodes import signal_exit
    from kvmharness.judges import SCHEMA_VERSION
    from kvmharness.known import Status, match_known
    from kvmharness.report import plot, write_json

    plot_path = getattr(args, "plot", None)
    known = match_known(results, issues, this_host)
    mark_known(results, known)
    code, why = verdict_of(results, known, named)
    why += detail
    if interrupted is not None:  # the process exits 128+signal, whatever they say
        code = signal_exit(signal.Signals[interrupted["signal"]])
        why = (
            f"interrupted by {interrupted['signal']} after {interrupted['finished']} of "
            f"{interrupted['planned']} scenarios; of those that finished: {why}"
        )
    # the JSON first: a fault while rendering must not lose the results
    if args.json:
        write_json(
            args.json,
            {
                "schema": SCHEMA_VERSION,
                "kvmharness_version": __version__,
                "command": getattr(args, "command", None) or ("bisect" if bisect else "run"),
                "host": host,
                "selection": [
                    {"item": item, "scenarios": [list(fv) for fv in chose]} for item, chose in named
                ]
                if args.variant is not None
                else None,
                "total_wall_s": total,
                "interrupted": interrupted,
                **_kept_snapshots(args),
                **verdict_fields(code, why, args.known, results, known),
            },
        )
    if bisect:
        n_known = sum(m is not None and m.status is Status.KNOWN_BROKEN for m in known)
        print(
            f"kvmharness bisect: {why}"
            + (f", {n_known} known-broken" if n_known else "")
            + f" (exit {code}; {len(results)} scenarios, {total:.1f} s, "
            f"kernel {host['kernel_release']})"
        )
    print_report(results, known, wide=args.wide, total_s=total)
    after = getattr(args, "after_report", None)
    if after is not None:  # a command's own detail (kvmharness postcopy's per-vCPU tables)
        after(results)
    if not bisect and code != EXIT_OK:
        print(f"exit {code}: {why}")
    if plot_path and results:  # (an interrupt may leave none)
        plot(results, plot_path, [_word(r, m) for r, m in zip(results, known, strict=True)])
        print(f"plot of {len(results)} scenario(s): {plot_path}")
    if getattr(args, "keep_snapshots", None):
        from kvmharness.scenarios import child

        names = ", ".join(os.path.basename(k) for k in child.kept)
        print(
            f"snapshots kept in {args.keep_snapshots}: {names}"
            if child.kept
            else "--keep-snapshots: no cross-process scenario ran, no snapshot kept"
        )
    return code


def _common(p: argparse.ArgumentParser, *, bisect: bool) -> None:
    from kvmharness.exitcodes import EXIT_HARNESS as usage_exit
    from kvmharness.scenarios.base import DEFAULTS

    # A bad command line in a bisect script must abort the bisect, not mark a commit bad.
    p.usage_exit = usage_exit  # type: ignore[attr-defined]
    p.set_defaults(usage_exit=usage_exit)
    p.add_argument(
        "--variant",
        "--scenario",
        "--strategy",
        "-s",
        dest="variant",
        action="append",
        metavar="NAME[,NAME]",
        help="what to run: a family ('steal'), a variant ('clock/warp', or 'warp' where "
        "one family has it), or a prefix such as 'steal/fresh-vm' (default: "
        + ("every promise" if bisect else "every family's default")
        + "); --scenario and --strategy are older names of this option",
    )
    p.add_argument(
        "--vcpus",
        metavar="N[,N]",
        help="vCPU counts (default " + ("2" if bisect else "each family's own") + ")",
    )
    p.add_argument(
        "--contend-ms",
        type=int,
        default=BISECT_CONTEND_MS if bisect else DEFAULTS.contend_ms,
        help="contended time before and after the boundary (default %(default)s)",
    )
    p.add_argument(
        "--downtime-ms",
        type=int,
        default=DEFAULTS.downtime_ms,
        help="downtime at the boundary (default %(default)s)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULTS.budget_s,
        help="how long past its contended time a phase may run before its vCPUs "
        "are stopped and judged stuck (default %(default)s)",
    )
    p.add_argument(
        "--latency-us",
        type=int,
        default=DEFAULTS.latency_us,
        help="postcopy: how long after its request the resolver places a page "
        "(default %(default)s)",
    )
    p.add_argument(
        "--pages-per-vcpu",
        type=int,
        default=DEFAULTS.pages_per_vcpu,
        help="postcopy: data pages each vCPU owns and touches (default %(default)s)",
    )
    p.add_argument(
        "--json", metavar="FILE", help="write all results and samples as JSON ('-' for stdout)"
    )
    p.add_argument("--list", action="store_true", help="list every family's variants and exit")
    p.add_argument(
        "--legend",
        action="store_true",
        help="say what every column of the tables and every state means, and exit",
    )
    p.add_argument(
        "--known",
        metavar="FILE",
        help="known-issues file (TOML; default: the one kvmharness ships): a broken "
        "promise it matches here is reported known-broken and not counted; "
        "one that holds is reported fixed? and fails the run",
    )
    p.add_argument(
        "--keep-snapshots",
        metavar="DIR",
        help="keep the snapshot file each cross-process scenario saved and restored, as "
        "DIR/FAMILY-VARIANT-NvCPU.kvmsnap (made if DIR's parent exists): attach it to a "
        "bug report with the --json file; `kvmharness snapshot inspect FILE` shows it",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="every column, unwrapped (default: fit COLUMNS or the terminal, the verdict wrapped)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


EXIT_HELP = (
    "exit 0 good, 1 a promise broke, 125 cannot test here, 128 harness fault or "
    "bad usage (aborts git bisect run)"
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the scenario matrix (" + EXIT_HELP + ")",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, bisect=False)
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="draw every scenario with the bound its judge holds it to and its violations "
        "(.png, .svg or .pdf, from the suffix; needs matplotlib)",
    )
    p.set_defaults(func=run_cli)
    b = sub.add_parser(
        "bisect",
        help="quick verdict on this kernel for git bisect run (" + EXIT_HELP + ")",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(b, bisect=True)
    b.set_defaults(func=lambda args: run_cli(args, bisect=True))
