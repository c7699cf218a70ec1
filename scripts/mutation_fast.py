"""pytest plugin for ``scripts/mutation.py --fast``: every mutant of a module
checked in ONE pytest session, each in a forked child, without mutmut's own
per-mutant pytest start-up.

mutmut (3.x) starts pytest (and so collects and imports the tests) afresh for
every mutant; on this project that costs a second or more per mutant, half an
hour and more per judge module on a loaded two-core host.  Here the session
collects once, then (in ``pytest_runtestloop``, instead of the normal loop):

1. runs every collected test once, unmutated, each in a forked child under
   mutmut's ``stats`` trampoline mode, recording which mutated functions it
   reaches and how long it takes (a test that fails unmutated is left out and
   reported);
2. for each mutant, forks a child that makes it active (mutmut's
   ``set_mutant_under_test``: the trampolines in ``mutants/`` read it at every
   call), runs only the tests that reach its function, fastest first, and
   exits 1 at the first failure, 0 when all passed (survived), 33 when no test
   reaches it; a child past its time limit is ended (36, timeout).

The exit codes are mutmut's own, so ``mutmut results`` and
``scripts/mutation.py --report-only`` read them once ``mutation.py`` has
written them into ``mutants/<module>.meta``.

Driven by environment variables set by ``scripts/mutation.py``:
``MUTATION_FAST_MUTANTS`` (a JSON list of mutant names) and
``MUTATION_FAST_OUT`` (where the {name: exit code} JSON goes).  Without them
the plugin does nothing.  The session runs in ``mutants/``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: Exit codes, as mutmut's status_by_exit_code reads them.
SURVIVED, KILLED, NO_TESTS, TIMEOUT = 0, 1, 33, 36


def _run_item(item: Any) -> bool:
    """Run one test (setup, call, teardown) in this process: True if it passed."""
    from _pytest.runner import runtestprotocol

    reports = runtestprotocol(item, log=False, nextitem=None)
    return not any(r.failed for r in reports)


def _quiet() -> None:
    """A child's output goes nowhere: a failing test's traceback is the point."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _stats(items: list[Any]) -> list[tuple[Any, bool, set[str], float]]:
    """Run every test once, unmutated, in this process (so that the children
    forked later find every module imported): per test, whether it passed,
    the mutated functions it reached, and its seconds."""
    from mutmut.mutation import trampoline

    hits: set[str] = set()

    def record(name: str, caller: str | None = None) -> None:
        hits.add(name)

    # mutmut's own recorder inspects the stack at every call (a second per
    # call-heavy test on a loaded host); a set is all that is needed here
    trampoline.record_trampoline_hit = record  # type: ignore[assignment]
    trampoline.set_mutant_under_test("stats")
    out = []
    try:
        for item in items:
            hits.clear()
            t0 = time.monotonic()
            ok = _run_item(item)
            out.append((item, ok, set(hits), time.monotonic() - t0))
    finally:
        trampoline.set_mutant_under_test("")
    return out


def _check(name: str, items: list[Any], limit_s: int) -> int:
    """Run ``items`` with mutant ``name`` active in a child: its exit code."""
    pid = os.fork()
    if pid == 0:  # child
        code = KILLED
        try:
            _quiet()
            from mutmut.mutation.trampoline import set_mutant_under_test

            set_mutant_under_test(name)
            signal.alarm(limit_s)
            code = SURVIVED
            for item in items:
                if not _run_item(item):
                    code = KILLED
                    break
        except BaseException:  # noqa: BLE001 - an error under the mutant is a kill
            code = KILLED
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return TIMEOUT if os.WTERMSIG(status) == signal.SIGALRM else KILLED
    return os.WEXITSTATUS(status)


def _mangled(mutant: str) -> str:
    return mutant.partition("__mutmut_")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: Any) -> bool | None:
    names_file = os.environ.get("MUTATION_FAST_MUTANTS")
    out_file = os.environ.get("MUTATION_FAST_OUT")
    if not names_file or not out_file:
        return None
    names: list[str] = json.loads(Path(names_file).read_text())
    t0 = time.monotonic()
    reach: dict[str, list[tuple[float, Any]]] = {}
    bad = []
    took = []
    for item, ok, hits, secs in _stats(session.items):
        took.append((secs, item.nodeid))
        if not ok:
            bad.append(item.nodeid)
            continue
        for h in hits:
            reach.setdefault(h, []).append((secs, item))
    print(
        f"\nmutation --fast: {len(session.items)} tests run once in "
        f"{time.monotonic() - t0:.0f} s; {len(names)} mutants to check",
        file=sys.stderr,
    )
    for secs, nodeid in sorted(took, reverse=True)[:5]:
        print(f"mutation --fast: {secs:.2f} s {nodeid}", file=sys.stderr)
    for nodeid in bad:
        print(f"mutation --fast: left out, fails unmutated: {nodeid}", file=sys.stderr)
    results: dict[str, int] = {}
    t1 = time.monotonic()
    for n, name in enumerate(names, 1):
        tests = sorted(reach.get(_mangled(name), []), key=lambda x: x[0])
        if not tests:
            results[name] = NO_TESTS
        else:
            limit = int(10 * sum(s for s, _ in tests)) + 30
            results[name] = _check(name, [it for _, it in tests], limit)
        if n % 50 == 0 or n == len(names):
            killed = sum(1 for c in results.values() if c in (KILLED, TIMEOUT))
            print(
                f"mutation --fast: {n}/{len(names)} checked, {killed} killed, "
                f"{time.monotonic() - t1:.0f} s",
                file=sys.stderr,
            )
        Path(out_file).write_text(json.dumps(results))
    Path(out_file).write_text(json.dumps(results))
    return True
