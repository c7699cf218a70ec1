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
   exits at the first failure (killed), 0 when all passed (survived), 33 when
   no test reaches it; a child past its time limit is ended (36, timeout).
   The test that killed a function's last mutant is tried first for its next.

The exit codes are mutmut's own, so ``mutmut results`` and
``scripts/mutation.py --report-only`` read them once ``mutation.py`` has
written them into ``mutants/<module>.meta``.

Driven by environment variables set by ``scripts/mutation.py``:
``MUTATION_FAST_MUTANTS`` (a JSON list of mutant names) and
``MUTATION_FAST_OUT`` (where the {name: exit code} JSON goes).  Without them
the plugin does nothing.  The session runs in a copy of the tree where only
the module under test is mutmut's mutated file (``mutation.py`` makes it).
"""

from __future__ import annotations

import gc
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
#: A child's exit code 100 + k: killed by its k-th test.
_FAILED_AT = 100


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


def _check(name: str, items: list[Any], limit_s: int) -> tuple[int, int | None]:
    """Run ``items`` with mutant ``name`` active in a child: its exit code, and
    the index of the test that failed (None: none did, or not known)."""
    pid = os.fork()
    if pid == 0:  # child
        code = KILLED
        try:
            _quiet()
            from mutmut.mutation.trampoline import set_mutant_under_test

            set_mutant_under_test(name)
            # pytest's usual report of a failure parses the source of every
            # module in the traceback: the mutated one is mutmut's 50,000-line
            # file (9 s a kill here); the native traceback reads lines only
            for item in items:
                item.config.option.tbstyle = "native"
            signal.alarm(limit_s)
            code = SURVIVED
            prof = os.environ.get("MUTATION_FAST_PROFILE")
            if prof:
                import cProfile

                pr = cProfile.Profile()
                pr.enable()
            for k, item in enumerate(items):
                if not _run_item(item):
                    # which test killed it, in the exit code: tried first for the
                    # function's next mutant
                    code = _FAILED_AT + k if k < 255 - _FAILED_AT else KILLED
                    break
            if prof:
                pr.disable()
                pr.dump_stats(f"{prof}/{name}.prof")
        except BaseException:  # noqa: BLE001 - an error under the mutant is a kill
            code = KILLED
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return (TIMEOUT if os.WTERMSIG(status) == signal.SIGALRM else KILLED), None
    code = os.WEXITSTATUS(status)
    if code >= _FAILED_AT:
        return KILLED, code - _FAILED_AT
    return code, None


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
    # keep the children from copying the parent's heap: a child's garbage
    # collection would touch (and so copy on write) every object of the session
    gc.collect()
    gc.freeze()
    results: dict[str, int] = {}
    killer: dict[str, Any] = {}  # per function: the test that killed its last mutant
    t1 = time.monotonic()
    for n, name in enumerate(names, 1):
        func = _mangled(name)
        tests = sorted(reach.get(func, []), key=lambda x: x[0])
        items = [it for _, it in tests]
        if func in killer:  # mutants of one function mostly die by the same test
            items.remove(killer[func])
            items.insert(0, killer[func])
        if not items:
            results[name] = NO_TESTS
        else:
            limit = int(10 * sum(s for s, _ in tests)) + 30
            results[name], k = _check(name, items, limit)
            if k is not None:
                killer[func] = items[k]
        if n % 25 == 0 or n == len(names):
            killed = sum(1 for c in results.values() if c in (KILLED, TIMEOUT))
            print(
                f"mutation --fast: {n}/{len(names)} checked, {killed} killed, "
                f"{time.monotonic() - t1:.0f} s",
                file=sys.stderr,
            )
        Path(out_file).write_text(json.dumps(results))
    Path(out_file).write_text(json.dumps(results))
    return True
