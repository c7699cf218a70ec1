"""What ``kvmharness run`` says while it runs: the matrix's expected time up
front, what a long scenario waits for, and a tick while a step takes long.

The estimates are a model of where a scenario's time goes, from the options
(the contended phases and the downtime it sleeps through) plus a measured
overhead per kind of scenario (this project's kvm_pvm host; a slower host
takes longer, and the tick says so as it happens).  They never judge anything.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from kvmharness.scenarios.base import MIN_CONTEND_MS

#: A step expected to take at least this long says what it waits for.
LONG_STEP_S = 3.0
#: The tick: first after this many seconds of one step, then every TICK_EVERY_S.
TICK_AFTER_S = 5.0
TICK_EVERY_S = 10.0

#: Overheads measured on kvm_pvm (s): VM set-up, guest build cache hit, judging.
_BASE_S = {"steal": 0.35, "clock": 0.1, "postcopy": 0.3}
#: Wall time per contended time: the two phases, the stealers' start and the
#: vCPUs' catch-up (measured: 10.8 s at --contend-ms 4000, 0.6 s at 150).
_STEAL_PER_CONTEND = 2.6
#: Wall time per kvmclock reading phase (measured: 5.1 s at 4 s phases).
_CLOCK_PER_PHASE = 1.25
#: A snapshot through a second process (its start and its own VM).
_CROSS_PROCESS_S = 1.5


def _boundary(family: str, variant: str) -> bool:
    """Whether the scenario crosses a save/restore (and so sleeps its downtime)."""
    if family == "steal":
        return not variant.startswith("same-vm/new-thread")
    if family == "clock":
        return variant.startswith(("restore/", "tsc/", "frequency"))
    return False


def waits(family: str, variant: str, options: Any) -> tuple[float, str]:
    """(expected seconds, what they go to) for one scenario."""
    c, d = options.contend_ms / 1000, options.downtime_ms / 1000
    parts = []
    if family == "steal":
        s = _BASE_S["steal"] + _STEAL_PER_CONTEND * c
        parts.append(f"contention 2 x {_ms(options.contend_ms)}")
    elif family == "clock":
        phase = max(options.contend_ms, MIN_CONTEND_MS) / 1000
        two = _boundary(family, variant)
        s = _BASE_S["clock"] + (2 if two else 1) * _CLOCK_PER_PHASE * phase
        parts.append(f"reading phases {'2 x ' if two else ''}{_ms(int(phase * 1000))}")
    else:
        s = _BASE_S.get(family, 0.3)
        parts.append("pages placed by the pager")
    if _boundary(family, variant):
        s += d
        parts.append(f"downtime {_ms(options.downtime_ms)}")
    if "cross-process" in variant:
        s += _CROSS_PROCESS_S
        parts.append("a restoring child process")
    return s, ", ".join(parts)


def _ms(ms: int) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms} ms"


def step_note(family: str, variant: str, options: Any) -> str:
    """What a progress line adds for a long step: ``, about 21 s: contention 2 x 10 s``."""
    s, why = waits(family, variant, options)
    return f", about {s:.0f} s: {why}" if s >= LONG_STEP_S else ""


def plan_line(plan: Sequence[tuple[Any, list[str]]], vcpus: list[int] | None, options: Any) -> str:
    """The matrix up front: how many scenarios per family and about how long."""
    counts: dict[str, int] = {}
    total = 0.0
    for f, vs in plan:
        for v in vs:
            for n in vcpus or f.default_vcpus:
                if n <= f.max_vcpus:
                    counts[f.name] = counts.get(f.name, 0) + 1
                    total += waits(f.name, v, options)[0]
    n = sum(counts.values())
    per = ", ".join(f"{k} {m}" for k, m in counts.items())
    return (
        f"kvmharness run: {n} scenarios ({per}), about {_duration(total)} "
        f"(--contend-ms {options.contend_ms}, --downtime-ms {options.downtime_ms})"
    )


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


class Ticker:
    """While one step runs: after :data:`TICK_AFTER_S`, and every
    :data:`TICK_EVERY_S` after that, append `` 15 s...`` to its progress line,
    so a long wait is never silent.  ``stop()`` before the step's result is
    printed (and on any way out: it is a daemon thread, never joined long)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop()
        self._stop = threading.Event()
        t0 = time.monotonic()
        stop = self._stop

        def tick() -> None:
            wait = TICK_AFTER_S
            while not stop.wait(wait):
                print(f" {time.monotonic() - t0:.0f} s...", end="", file=self.out, flush=True)
                wait = TICK_EVERY_S

        self._thread = threading.Thread(target=tick, name="kvmharness-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
