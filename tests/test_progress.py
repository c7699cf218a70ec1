"""Progress: the matrix's expected time up front, what a long step waits for,
and a tick while a step runs long (issue 21: 20.9 s of silence)."""

from __future__ import annotations

import io
import time

import kvmharness.progress as pg
from kvmharness.cli.run import select_named
from kvmharness.scenarios.base import RunOptions


def test_the_matrix_says_its_size_and_time_up_front():
    plan, _ = select_named(None, bisect=False)
    line = pg.plan_line(plan, None, RunOptions(150, 50, 30.0))
    assert "34 scenarios (steal 16, clock 15, postcopy 3)" in line, line
    # the recorded default run of this host took 27.8 s (tests/corpus/stock/pvm-*-run)
    s = float(line.split("about ")[1].split(" s")[0])
    assert 20 <= s <= 40, line
    slow = pg.plan_line(plan, None, RunOptions(10000, 50, 30.0))
    assert "min" in slow and "--contend-ms 10000" in slow


def test_a_long_step_says_what_it_waits_for():
    long = RunOptions(10000, 50, 30.0)
    assert pg.step_note("steal", "fresh-vm/vcpu-thread", long).startswith(", about ")
    assert "contention 2 x 10 s, downtime 50 ms" in pg.step_note("steal", "cancelled-save", long)
    assert "a restoring child process" in pg.step_note("clock", "restore/cross-process/x", long)
    assert pg.step_note("steal", "fresh-vm/vcpu-thread", RunOptions(150, 50, 30.0)) == ""


def test_the_ticker_ticks_while_a_step_runs_and_stops(monkeypatch):
    monkeypatch.setattr(pg, "TICK_AFTER_S", 0.05)
    monkeypatch.setattr(pg, "TICK_EVERY_S", 0.05)
    out = io.StringIO()
    t = pg.Ticker(out)
    t.start()
    time.sleep(0.3)
    t.stop()
    ticks = out.getvalue()
    assert ticks.count("s...") >= 2, ticks
    time.sleep(0.15)
    assert out.getvalue() == ticks, "stopped: no tick after its step's result"
