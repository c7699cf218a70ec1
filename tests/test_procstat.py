"""``kvmharness procstat`` on /proc/stat texts built here, one per anomaly."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from kvmharness import procstat
from kvmharness.cli import main

BTIME = 1_700_000_000
U64 = 1 << 64
TICK_NS = 10_000_000


def vals(user=0, system=0, idle=0, steal=0, *, nice=0, iowait=0, irq=0, softirq=0, guest=0):
    """The 10 cpu columns in kernel order."""
    return [user, nice, system, idle, iowait, irq, softirq, steal, guest, 0]


def stat_text(
    cpus: dict[int, list[int]],
    *,
    columns: int = 10,
    header: str | None = None,
    btime: int | None = BTIME,
    processes: int = 4000,
    intr_entries: int = 60,
    aggregate: list[int] | None = None,
) -> str:
    """A /proc/stat text as the kernel prints it."""
    if aggregate is None:
        aggregate = [sum(col) for col in zip(*cpus.values(), strict=True)]
    lines = [header] if header else []
    lines.append("cpu  " + " ".join(map(str, aggregate[:columns])))
    for n, v in cpus.items():
        lines.append(f"cpu{n} " + " ".join(map(str, v[:columns])))
    lines.append("intr 123456 " + " ".join(str(i % 7) for i in range(intr_entries)))
    lines.append("ctxt 987654")
    if btime is not None:
        lines.append(f"btime {btime}")
    lines += [f"processes {processes}", "procs_running 2", "procs_blocked 0"]
    lines.append("softirq 5555 1 2 3 4 5 6 7 8 9 10")
    return "\n".join(lines) + "\n"


def timed(t_s: float, cpus: dict[int, list[int]], **kw) -> str:
    return stat_text(cpus, header=f"# time: {t_s}", **kw)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["procstat", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    rc, out, _ = run(capsys, *argv, "--json", "-")
    return rc, json.loads(out)


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def key(f: dict) -> tuple:
    return (f["series"], f["counter"], f["kind"], f["before"], f["after"], f["delta"])


# -- clean inputs ----------------------------------------------------------------


def clean_series():
    """Three snapshots, 10 s apart, two vCPUs with modest steal; migrated after the second
    (btime moves by a second, as after a clock correction)."""
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_200, 340)}
    s2 = {0: vals(1300, 500, 50_570, 365), 1: vals(1100, 400, 50_800, 340)}
    s3 = {0: vals(1600, 600, 51_100, 405), 1: vals(1300, 450, 51_350, 390)}
    return s1, s2, s3


def test_clean_migration_exits_0(tmp_path, capsys):
    s1, s2, s3 = clean_series()
    t0 = BTIME + 1000
    files = [
        write(tmp_path, "a", timed(t0, s1)),
        write(tmp_path, "b", timed(t0 + 10, s2)),
        write(tmp_path, "c", timed(t0 + 20, s3, btime=BTIME + 1)),
    ]
    rc, out, err = run(capsys, *files)
    assert rc == 0, out
    assert "verdict: clean" in out
    assert "snapshot times" in out and "uptime from btime" in out
    rc, doc = run_json(capsys, *files)
    assert rc == 0
    assert doc["snapshots"] == 3
    assert doc["cpus"] == ["cpu", "cpu0", "cpu1"]
    assert doc["findings"] == [] and doc["verdict"] == "clean"
    assert [iv["bound"] for iv in doc["intervals"]] == ["snapshot times"] * 2
    assert [iv["elapsed_ns"] for iv in doc["intervals"]] == [10 * 10**9] * 2


# -- the historical anomalies ------------------------------------------------------


def test_xen_2017_steal_decrease(tmp_path, capsys):
    before = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 335)}
    after = {0: vals(1100, 450, 50_900, 312), 1: vals(1000, 350, 51_000, 312)}
    f = write(tmp_path, "xen", timed(BTIME + 500, before) + timed(BTIME + 510, after))
    rc, doc = run_json(capsys, f)
    assert rc == 1
    assert doc["verdict"] == "anomaly"
    assert [key(x) for x in doc["findings"]] == [
        ("cpu", "steal", "decrease", 670, 624, -46),
        ("cpu0", "steal", "decrease", 335, 312, -23),
        ("cpu1", "steal", "decrease", 335, 312, -23),
    ]
    first = doc["findings"][1]
    assert (first["snapshot_before"], first["snapshot_after"], first["index"]) == (1, 2, 2)
    assert first["wall_ns"] == 10 * 10**9
    assert doc["summary"]["anomalies"] == {"decrease": 3}
    assert doc["summary"]["steal"]["cpu"]["grown_ns"] == 0, "a decrease is not growth"
    rc, out, _ = run(capsys, f)
    assert rc == 1
    for col in ("CPU", "counter", "before", "after", "delta", "kind", "bound / detail"):
        assert col in out
    assert "335" in out and "312" in out and "-23" in out


def test_kvm_2015_wrap_in_ticks(tmp_path, capsys):
    """A negative ns delta stored as u64, shown in 100 Hz ticks (~1.8e12)."""
    wrapped = (U64 - 10**9) // 10**7  # steal of 2**64 - 1 s, in ticks
    assert 1.8e12 < wrapped < 1.9e12
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 340)}
    s2 = {0: vals(1100, 450, 50_900, 335 + wrapped), 1: vals(1000, 350, 51_000, 360)}
    f = write(tmp_path, "kvm", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    rc, doc = run_json(capsys, f)
    assert rc == 1
    kinds = {(x["series"], x["kind"]) for x in doc["findings"]}
    assert kinds == {
        ("cpu", "u64-wrap"),
        ("cpu", "implausible"),
        ("cpu0", "u64-wrap"),
        ("cpu0", "implausible"),
    }
    wrap = next(x for x in doc["findings"] if x["series"] == "cpu0" and x["kind"] == "u64-wrap")
    assert (wrap["before"], wrap["after"], wrap["delta"]) == (335, 335 + wrapped, wrapped)
    assert "u64 wrap" in wrap["detail"]
    impl = next(x for x in doc["findings"] if x["series"] == "cpu0" and x["kind"] == "implausible")
    assert impl["bound"] == "uptime from btime"
    assert impl["snapshot_before"] is None and impl["snapshot_after"] == 2
    assert "uptime from btime" in impl["detail"]
    # the wrap is not reported a second time as too-fast
    assert not any(x["kind"] == "too-fast" for x in doc["findings"])


def test_kvm_2015_large_steal_too_fast_and_beyond_uptime(tmp_path, capsys):
    """~1e11 ticks (bug 1's figure, README): below 2**63 ns, caught by the time bounds."""
    s1 = {0: vals(1000, 400, 50_000, 335)}
    s2 = {0: vals(1100, 450, 50_900, 10**11)}
    f = write(tmp_path, "kvm", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    rc, doc = run_json(capsys, f)
    assert rc == 1
    cpu0 = [x for x in doc["findings"] if x["series"] == "cpu0"]
    assert [(x["kind"], x["bound"]) for x in cpu0] == [
        ("too-fast", "snapshot times"),
        ("implausible", "uptime from btime"),
    ]
    assert cpu0[0]["delta"] == 10**11 - 335
    assert cpu0[0]["wall_ns"] == 10 * 10**9


def test_uptime_bound_without_snapshot_time_uses_now_minus_btime(tmp_path, capsys):
    text = stat_text({0: vals(100, 100, 5000, 10**11)})
    rc, doc = run_json(capsys, write(tmp_path, "one", text))
    assert rc == 1
    assert [(x["series"], x["kind"], x["bound"]) for x in doc["findings"]] == [
        ("cpu", "implausible", "uptime <= now - btime x 1 CPU"),
        ("cpu0", "implausible", "uptime <= now - btime"),
    ]
    assert any("fewer than 2 CPUs" in m or "now - btime" in m for m in doc["messages"])


def test_stalled_user_system_while_steal_grows(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 340)}
    s2 = {0: vals(1000, 400, 50_010, 1300), 1: vals(1200, 400, 50_700, 350)}
    f = write(tmp_path, "stall", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    rc, doc = run_json(capsys, f)
    assert rc == 1
    assert [key(x) for x in doc["findings"]] == [
        ("cpu0", "user+system", "stalled", 1400, 1400, 0),
    ]
    assert "steal grew by 965" in doc["findings"][0]["detail"]


def test_idle_cpu_with_little_steal_is_not_stalled(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335)}
    s2 = {0: vals(1000, 400, 50_990, 345)}
    f = write(tmp_path, "idle", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    rc, doc = run_json(capsys, f)
    assert rc == 0, doc["findings"]


def test_other_counter_backwards(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 340)}
    s2 = {0: vals(1100, 380, 50_900, 345), 1: vals(1000, 350, 51_000, 350)}
    f = write(tmp_path, "sys", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    rc, doc = run_json(capsys, f)
    assert rc == 1
    assert [key(x) for x in doc["findings"]] == [
        ("cpu0", "system", "decrease", 400, 380, -20),
    ]  # the aggregate system still grew (700 -> 730)


def test_iowait_going_back_is_a_note_not_an_anomaly(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335, iowait=90)}
    s2 = {0: vals(1100, 450, 50_900, 345, iowait=85)}
    f = write(tmp_path, "iowait", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    rc, doc = run_json(capsys, f)
    assert rc == 0
    assert doc["findings"] == []
    assert {(x["series"], x["counter"], x["kind"]) for x in doc["notes"]} == {
        ("cpu", "iowait", "decrease"),
        ("cpu0", "iowait", "decrease"),
    }
    rc, out, _ = run(capsys, f)
    assert rc == 0 and "Notes" in out and "proc.rst" in out


# -- kernels and machines ------------------------------------------------------------


@pytest.mark.parametrize("columns", [4, 7, 8, 9, 10])
def test_column_counts_of_kernel_ages(tmp_path, capsys, columns):
    s1, s2, _ = clean_series()
    f = write(
        tmp_path,
        "k",
        timed(BTIME + 600, s1, columns=columns) + timed(BTIME + 610, s2, columns=columns),
    )
    rc, doc = run_json(capsys, f)
    assert rc == 0, doc["findings"]
    no_steal = [m for m in doc["messages"] if "steal not checked" in m]
    assert bool(no_steal) == (columns < 8)
    if no_steal:
        assert f"{columns} columns" in no_steal[0]


def test_old_kernel_decrease_still_found(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000)}
    s2 = {0: vals(990, 450, 50_900)}
    f = write(tmp_path, "k4", timed(BTIME + 600, s1, columns=4) + timed(BTIME + 610, s2, columns=4))
    rc, doc = run_json(capsys, f)
    assert rc == 1
    assert [key(x) for x in doc["findings"]] == [
        ("cpu", "user", "decrease", 1000, 990, -10),
        ("cpu0", "user", "decrease", 1000, 990, -10),
    ]


def test_cpu_hot_unplug_and_plug(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 340)}
    s2 = {0: vals(1100, 450, 50_900, 345)}  # cpu1 offline
    # cpu1 back: its idle restarted from the tick-based value (lower): a note
    s3 = {0: vals(1200, 500, 51_800, 355), 1: vals(950, 320, 49_000, 350)}
    # the aggregate keeps counting offline CPUs, as the kernel's possible-CPU sum does
    agg2 = [a + b for a, b in zip(s2[0], s1[1], strict=True)]
    text = timed(BTIME + 600, s1) + timed(BTIME + 610, s2, aggregate=agg2) + timed(BTIME + 620, s3)
    rc, doc = run_json(capsys, write(tmp_path, "hp", text))
    assert rc == 0, doc["findings"]
    assert doc["cpus"] == ["cpu", "cpu0", "cpu1"]
    assert any("cpu1 absent from snapshot(s) 2" in m for m in doc["messages"])
    assert {(x["series"], x["counter"]) for x in doc["notes"]} == {
        ("cpu", "idle"),
        ("cpu1", "idle"),
    }
    cpu1 = next(x for x in doc["notes"] if x["series"] == "cpu1")
    assert (cpu1["snapshot_before"], cpu1["snapshot_after"]) == (1, 3)
    assert cpu1["wall_ns"] == 20 * 10**9


def test_steal_going_back_across_hotplug_is_an_anomaly(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 340)}
    s2 = {0: vals(1100, 450, 50_900, 345)}
    s3 = {0: vals(1200, 500, 51_800, 355), 1: vals(950, 320, 50_900, 12)}
    text = stat_text(s1) + stat_text(s2) + stat_text(s3)
    rc, doc = run_json(capsys, write(tmp_path, "hp", text))
    assert rc == 1
    found = [x for x in doc["findings"] if x["series"] == "cpu1"]
    assert [key(x) for x in found] == [("cpu1", "steal", "decrease", 340, 12, -328)]
    assert (found[0]["snapshot_before"], found[0]["snapshot_after"]) == (1, 3)


def test_huge_intr_line(tmp_path, capsys):
    s1, s2, _ = clean_series()
    text = timed(BTIME + 600, s1, intr_entries=20_000) + timed(BTIME + 610, s2, intr_entries=20_000)
    assert max(len(line) for line in text.splitlines()) > 40_000
    rc, doc = run_json(capsys, write(tmp_path, "intr", text))
    assert rc == 0 and doc["snapshots"] == 2


def _mail(text: str, width: int = 40, indent: str = "    ", quote: str = "> ") -> str:
    """Wrap every long line at ``width`` on a space, indent continuations, quote it."""
    out = ["Hi, here is /proc/stat before and after the migration:", ""]
    for line in text.splitlines():
        first = True
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            if cut <= 0:
                break
            out.append(quote + ("" if first else indent) + line[:cut])
            line, first = line[cut + 1 :], False
        out.append(quote + ("" if first else indent) + line)
    out += ["", "Thanks,", "A user"]
    return "\n".join(out) + "\n"


def test_mail_wrapped_and_quoted_text_parses_like_the_original(tmp_path, capsys):
    s1 = {0: vals(1000, 400, 50_000, 335), 1: vals(900, 300, 50_100, 335)}
    s2 = {0: vals(1100, 450, 50_900, 312), 1: vals(1000, 350, 51_000, 312)}
    original = timed(BTIME + 500, s1, intr_entries=300) + timed(BTIME + 510, s2, intr_entries=300)
    mailed = _mail(original)
    assert "> cpu0 1000 0 400 50000" in mailed.replace("\n>     ", " ")  # really wrapped
    assert any(line.startswith(">     ") for line in mailed.splitlines())
    a = procstat.parse_text(original)
    b = procstat.parse_text(mailed)
    assert [(s.cpus, s.btime, s.time_ns, s.processes) for s in a] == [
        (s.cpus, s.btime, s.time_ns, s.processes) for s in b
    ]
    rc, doc = run_json(capsys, write(tmp_path, "mail.txt", mailed))
    assert rc == 1
    assert [key(x) for x in doc["findings"]] == [
        ("cpu", "steal", "decrease", 670, 624, -46),
        ("cpu0", "steal", "decrease", 335, 312, -23),
        ("cpu1", "steal", "decrease", 335, 312, -23),
    ]


def test_doubly_quoted_indented_with_crlf_and_unindented_continuation():
    text = (
        "> > cpu  10 0 20 300 0 0 0 5 0 0\r\n"
        "> >   cpu0 10 0 20\r\n"
        "> > 300 0 0 0 5\r\n"
        "> >     0 0\r\n"
        "> > btime 1700000000\r\n"
    )
    (snap,) = procstat.parse_text(text)
    assert snap.cpus == {"cpu": (10, 0, 20, 300, 0, 0, 0, 5, 0, 0), "cpu0": snap.cpus["cpu"]}
    assert snap.btime == BTIME


# -- snapshot times -------------------------------------------------------------------


def test_date_header_and_proc_uptime_lines(tmp_path, capsys):
    s1, s2, s3 = clean_series()
    text = (
        f"{BTIME + 600}\n1000.00 1900.00\n"
        + stat_text(s1)
        + f"{BTIME + 610}\n1010.00 1918.00\n"
        + stat_text(s2)
        + f"{BTIME + 620}.250000000\n1020.00 1936.00\n"
        + stat_text(s3)
    )
    snaps = procstat.parse_text(text)
    assert [s.time_ns for s in snaps] == [
        (BTIME + 600) * 10**9,
        (BTIME + 610) * 10**9,
        (BTIME + 620) * 10**9 + 250_000_000,
    ]
    assert [s.uptime_ns for s in snaps] == [1000 * 10**9, 1010 * 10**9, 1020 * 10**9]
    rc, doc = run_json(capsys, write(tmp_path, "t", text))
    assert rc == 0
    assert [iv["bound"] for iv in doc["intervals"]] == ["uptime (/proc/uptime)"] * 2


def test_trailing_time_markers_belong_to_the_snapshot_before():
    s1, s2, _ = clean_series()
    text = stat_text(s1) + "# time: 2023-11-14T22:23:20Z\n" + stat_text(s2) + f"{BTIME + 610}\n"
    a, b = procstat.parse_text(text)
    assert a.time_ns == (BTIME + 600) * 10**9
    assert b.time_ns == (BTIME + 610) * 10**9


def test_wrong_uptime_bound_is_caught(tmp_path, capsys):
    # steal of 2000 s on a machine up for 1000 s (from /proc/uptime)
    text = "# uptime: 1000.00\n" + stat_text({0: vals(100, 100, 90_000, 200_000)})
    rc, doc = run_json(capsys, write(tmp_path, "u", text))
    assert rc == 1
    assert [(x["series"], x["kind"], x["bound"]) for x in doc["findings"]] == [
        ("cpu", "implausible", "uptime (/proc/uptime) x 1 CPU"),
        ("cpu0", "implausible", "uptime (/proc/uptime)"),
    ]


def test_without_times_cpu_time_bound_catches_one_cpu_outrunning_the_others(tmp_path, capsys):
    s1 = {n: vals(1000, 400, 50_000, 335) for n in range(3)}
    s2 = {n: vals(1100, 450, 50_850, 335) for n in range(3)}  # each CPU: +1000 ticks
    s2[2] = vals(1100, 450, 50_850, 5335)  # +5000 ticks of steal in ~1000 ticks
    rc, doc = run_json(capsys, write(tmp_path, "n", stat_text(s1) + stat_text(s2)))
    assert rc == 1
    fast = [x for x in doc["findings"] if x["kind"] == "too-fast"]
    assert [(x["series"], x["delta"]) for x in fast] == [("cpu", 5000), ("cpu2", 5000)]
    assert fast[1]["bound"].startswith("CPU-time advance (lower median of 3 CPUs")
    assert fast[1]["wall_ns"] == 1000 * TICK_NS


def test_reboot_between_snapshots_is_not_an_anomaly(tmp_path, capsys):
    s1, s2, _ = clean_series()
    small = {0: vals(10, 20, 300, 1), 1: vals(10, 20, 300, 2)}
    text = (
        timed(BTIME + 600, s1)
        + timed(BTIME + 610, s2)
        + timed(BTIME + 700, small, btime=BTIME + 690, processes=120)
    )
    rc, doc = run_json(capsys, write(tmp_path, "r", text))
    assert rc == 0, doc["findings"]
    assert doc["intervals"][1]["reboot"] is True


# -- bad input -------------------------------------------------------------------------


def test_not_proc_stat_exits_2(tmp_path, capsys):
    f = write(tmp_path, "notes.txt", "hello\nthis is my cpu usage report\n1 2 3\n")
    rc, out, err = run(capsys, f)
    assert rc == 2
    assert f"kvmharness procstat: error: {f}: not /proc/stat" in err
    assert out == ""


def test_binary_input_exits_2(tmp_path, capsys):
    p = tmp_path / "bin"
    p.write_bytes(bytes(range(256)) * 4)
    rc, _, err = run(capsys, str(p))
    assert rc == 2 and "not /proc/stat" in err


def test_missing_file_exits_2(tmp_path, capsys):
    f = str(tmp_path / "nope")
    rc, _, err = run(capsys, f)
    assert rc == 2
    assert f"kvmharness procstat: error: {f}: No such file or directory" in err


@pytest.mark.parametrize(
    "line, message",
    [("cpu0 1 2 3", "has 3 values"), ("cpu0 1 2 x 4 5", "'x' is not a counter")],
)
def test_broken_cpu_line_exits_2(tmp_path, capsys, line, message):
    f = write(tmp_path, "bad", f"cpu  1 2 3 4 5 6 7 8\n{line}\n")
    rc, _, err = run(capsys, f)
    assert rc == 2 and message in err and "line 2" in err


def one_line_error(err: str, *parts: str) -> None:
    """``err`` is one ``kvmharness procstat: error:`` line holding every part: no traceback."""
    assert err.startswith("kvmharness procstat: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    for part in parts:
        assert part in err, (part, err)


# a cpu line's counters and the kept single values are u64; no u64 holds these
HUGE = "9" * 5000  # also past Python's 4300-digit limit on int conversion


@pytest.mark.parametrize(
    "text, line, problem",
    [
        (f"cpu  1 2 3 {HUGE} 5 6 7 8\n", "line 1", "'cpu' line: 99999999999999999999..."),
        (f"cpu  1 2 3 4 5 6 7 {U64}\n", "line 1", f"'cpu' line: {U64} is too big for a u64"),
        (f"cpu  1 2 3 4 5 6 7 {'0' * 5000}{U64}\n", "line 1", "too big for a u64"),
        (f"cpu  1 2 3 4\n5 6 7 {U64 + 1}\n", "line 2", "too big for a u64"),
        (f"cpu  1 2 3 4 5 6 7 8 9 10 {HUGE}\n", "line 1", "too big for a u64"),
        (f"cpu  1 2 3 4 5 6 7 8\nbtime {HUGE}\n", "line 2", "'btime' line"),
        (f"cpu  1 2 3 4 5 6 7 8\nprocesses {U64}\n", "line 2", "'processes' line"),
        (f"# uptime: {HUGE}\ncpu  1 2 3 4 5 6 7 8\n", "line 1", "uptime 9999"),
        ("cpu  1 2 3 4 5 6 7 8\n18446744073.8 5.0\n", "line 2", "uptime 18446744073.8 s"),
        ("# time: 1e999999999999\ncpu  1 2 3 4 5 6 7 8\n", "line 1", "time 1e999999999999"),
        ("# time: 9999-01-01T00:00:00Z\ncpu  1 2 3 4 5 6 7 8\n", "line 1", "out of range"),
    ],
    ids=[
        "5000-digit-counter", "2^64", "leading-zeros", "wrapped-continuation", "11th-column",
        "btime", "processes", "uptime-header", "proc-uptime-line", "time-overflow", "iso-date",
    ],
)  # fmt: skip
def test_numbers_out_of_range_are_bad_input_not_anomalies(tmp_path, capsys, text, line, problem):
    f = write(tmp_path, "huge", text)
    rc, out, err = run(capsys, f)
    assert rc == 2 and out == ""
    one_line_error(err, f"{f}: {line}: ", problem)
    assert len(err) < 300  # the 5000 digits are not echoed


def test_largest_u64_counter_is_still_read(tmp_path, capsys):
    # 2^64-1 fits a u64: a wrapped value (an anomaly), not bad input
    f = write(tmp_path, "max", f"cpu  1 2 3 4 5 6 7 {U64 - 1}\n")
    rc, doc = run_json(capsys, f)
    assert rc == 1
    assert [x["kind"] for x in doc["findings"]] == ["u64-wrap"]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_device_is_refused_without_reading_it(capsys, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    tracemalloc.start()
    try:
        rc, out, err = run(capsys, device)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 2 and out == ""
    one_line_error(err, f"{device}: is a character device, not a regular file")
    assert peak < 8 * 1024 * 1024


def test_directory_is_refused(tmp_path, capsys):
    rc, _, err = run(capsys, str(tmp_path))
    assert rc == 2
    one_line_error(err, f"{tmp_path}: is a directory")


@pytest.fixture()
def fifo(tmp_path):
    """A FIFO nobody writes to; a reader still stuck in open() after 5 s is released
    (with end of file), so a regression fails on the assertions instead of hanging."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    done = threading.Event()

    def release():
        done.wait(5)
        while not done.wait(0.2):
            try:  # fails (ENXIO) unless a reader is waiting
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=release, daemon=True).start()
    yield path
    done.set()


def test_fifo_is_refused_without_blocking(fifo, capsys):
    t0 = time.monotonic()
    rc, out, err = run(capsys, str(fifo))
    assert time.monotonic() - t0 < 4
    assert rc == 2 and out == ""
    one_line_error(err, f"{fifo}: is a FIFO, not a regular file")


def test_fifo_swapped_in_after_the_check_does_not_block(fifo, capsys, monkeypatch):
    """The race: the path was a regular file when checked, a FIFO when opened."""
    regular, real_stat = os.stat(__file__), os.stat

    def stat(path, *args, **kwargs):
        return regular if os.fspath(path) == str(fifo) else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(procstat.parse.os, "stat", stat)
    t0 = time.monotonic()
    rc, _, err = run(capsys, str(fifo))
    assert time.monotonic() - t0 < 4
    assert rc == 2
    one_line_error(err, f"{fifo}: is a FIFO, not a regular file")


def test_input_over_the_size_cap_is_refused_before_reading(tmp_path, capsys):
    big = tmp_path / "big"
    with open(big, "wb") as f:  # sparse: 200 MB of size, no disk
        f.truncate(200 * 1024 * 1024)
    rc, out, err = run(capsys, str(big))
    assert rc == 2 and out == ""
    one_line_error(err, f"{big}: 209715200 bytes (200.0 MiB), over the 16 MiB limit")


def test_file_saying_it_is_small_is_still_read_only_up_to_the_cap(tmp_path, capsys, monkeypatch):
    # procfs files say 0 bytes, and a file may grow after the check: the read is capped too
    f = write(tmp_path, "grows", "cpu  1 2 3 4 5 6 7 8\n" * 100)
    real_stat, real_fstat = os.stat, os.fstat

    def size_0(st: os.stat_result) -> os.stat_result:
        return os.stat_result((*st[:6], 0, *st[7:10]))

    monkeypatch.setattr(procstat.parse, "MAX_INPUT_BYTES", 1000)
    monkeypatch.setattr(procstat.parse.os, "stat", lambda *a, **k: size_0(real_stat(*a, **k)))
    monkeypatch.setattr(procstat.parse.os, "fstat", lambda fd: size_0(real_fstat(fd)))
    rc, _, err = run(capsys, f)
    assert rc == 2
    one_line_error(err, f"{f}: over the 1000 bytes limit for one input")


def stdin_bytes(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin_is_read(capsys, monkeypatch):
    s1, s2, _ = clean_series()
    stdin_bytes(monkeypatch, (timed(BTIME + 600, s1) + timed(BTIME + 610, s2)).encode())
    rc, out, _ = run(capsys, "-")
    assert rc == 0 and "2 snapshot(s)" in out


def test_stdin_over_the_size_cap_is_refused(capsys, monkeypatch):
    monkeypatch.setattr(procstat.parse, "MAX_INPUT_BYTES", 4096)
    stdin_bytes(monkeypatch, b"cpu  1 2 3 4 5 6 7 8\n" * 1000)
    rc, _, err = run(capsys, "-")
    assert rc == 2
    one_line_error(err, "<stdin>: over the 4096 bytes limit for one input")


@pytest.mark.parametrize(
    "text",
    [
        "cpu  1 2 3 4 5 6 7 8\nintr " + "1234 " * 120_000 + "\n",  # one huge line
        "cpu  1 2 3 4 5 6 7 8\nintr 1\n" + "1234 " * 120_000 + "\n",  # a wrapped one
        "cpu0 " + "1234 " * 120_000 + "\n",  # a cpu line with 120000 columns
        "1234 " * 120_000,  # numbers without a key
        "prose " * 100_000,
        "short line 1234\n" * 40_000,  # many short lines
    ],
    ids=["intr", "wrapped-intr", "wide-cpu", "numbers", "prose", "short-lines"],
)
def test_parse_memory_is_a_small_multiple_of_the_text(text):
    """Memory is linear in the input with a small factor, whatever its shape (the old
    parser kept a string per number of a line, its number-line regex a backtracking mark
    per number, and a string per line of the input: 4 to 40 times the text)."""
    tracemalloc.start()
    try:
        try:
            procstat.parse_text(text)
        except procstat.ProcStatError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(text), (peak, len(text))


def test_snapshot_and_cpu_line_caps(tmp_path, capsys, monkeypatch):
    """Analysis memory grows with cpu lines, which 16 MiB of bare ones would make 1.4M of."""
    monkeypatch.setattr(procstat.parse, "MAX_SNAPSHOTS", 3)
    f = write(tmp_path, "many", "cpu  1 2 3 4 5 6 7 8\n" * 4)
    rc, _, err = run(capsys, f)
    assert rc == 2
    one_line_error(err, f"{f}: line 4: more than 3 snapshots in one input")
    monkeypatch.setattr(procstat.parse, "MAX_CPU_LINES", 5)
    f = write(tmp_path, "wide", "".join(f"cpu{n} 1 2 3 4 5 6 7 8\n" for n in range(6)))
    rc, _, err = run(capsys, f)
    assert rc == 2
    one_line_error(err, f"{f}: line 6: more than 5 cpu lines in one input")


def test_no_arguments_is_usage_error(capsys):
    rc, _, err = run(capsys)
    assert rc == 2 and "--live" in err


def test_json_to_file_and_table_on_stdout(tmp_path, capsys):
    s1, s2, _ = clean_series()
    f = write(tmp_path, "s", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    out_json = tmp_path / "report.json"
    rc, out, _ = run(capsys, f, "--json", str(out_json))
    assert rc == 0 and "verdict: clean" in out
    doc = json.loads(out_json.read_text())
    assert set(doc) >= {"snapshots", "cpus", "findings", "verdict"}


def test_json_file_goes_through_the_atomic_writer(tmp_path, capsys, monkeypatch):
    """--json FILE is written by kvmharness.files: a failed write leaves the old file."""
    s1, s2, _ = clean_series()
    f = write(tmp_path, "s", timed(BTIME + 600, s1) + timed(BTIME + 610, s2))
    out_json = tmp_path / "report.json"
    out_json.write_text("old\n")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("kvmharness.files.os.replace", fail)
    rc, _, err = run(capsys, f, "--json", str(out_json))
    assert rc == 2
    one_line_error(err, f"{out_json}: No space left on device")
    assert out_json.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "s"]  # no temp file


def test_package_layout():
    """ProcStatSnapshot, not a second Snapshot; no _Parser; the package never imports the CLI."""
    import ast

    (snap,) = procstat.parse_text(stat_text({0: vals(1, 1, 1, 1)}))
    assert type(snap) is procstat.ProcStatSnapshot
    assert not hasattr(procstat, "Snapshot")
    for path in Path(procstat.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        assert not defined & {"Snapshot", "_Parser"}, path
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.startswith("kvmharness.cli")}, path


# -- live ---------------------------------------------------------------------------------


def test_live_with_a_fake_proc_stat(tmp_path, capsys):
    s1, _, _ = clean_series()
    stat = write(tmp_path, "stat", stat_text(s1))
    rc, out, err = run(
        capsys, "--live", "--count", "3", "--interval", "0.01", "--stat-path", stat,
        "--uptime-path", str(tmp_path / "none"),
    )  # fmt: skip
    assert rc == 0, out
    assert "sample 3/3" in err
    assert "3 snapshot(s)" in out and "snapshot times" in out


def test_live_on_this_machine(capsys):
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    rc, out, err = run(capsys, "--live", "--count", "2", "--interval", "0.05")
    assert rc in (0, 1), out  # whatever this host's kernel does, the command completes
    assert "sample 2/2" in err


@pytest.mark.parametrize("interval", ["nan", "inf", "-inf", "-1", "0", "86401", "1e300"])
def test_live_interval_out_of_range_is_usage_error(capsys, interval):
    rc, out, err = run(capsys, "--live", "--count", "2", f"--interval={interval}")
    assert rc == 2 and out == ""
    one_line_error(err, "--interval must be more than 0 and at most 86400 seconds")


@pytest.mark.parametrize("hz", ["0", "-100", "1000000001"])
def test_user_hz_out_of_range_is_usage_error(tmp_path, capsys, hz):
    f = write(tmp_path, "s", "cpu  1 2 3 4 5 6 7 8\n")
    rc, _, err = run(capsys, f"--user-hz={hz}", f)
    assert rc == 2
    one_line_error(err, "--user-hz must be 1 to 1000000")


def test_live_and_files_together_is_usage_error(tmp_path, capsys):
    rc, _, err = run(capsys, "--live", str(tmp_path / "x"))
    assert rc == 2 and "not both" in err


# -- parser properties ---------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_alphabet = st.sampled_from(list("cpu0123456789 \t\n>#.:-intrbeq") + ["cpu ", "cpu1 ", "\u00a0"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_alphabet, max_size=200).map("".join))
def test_property_parser_only_raises_procstat_error(text):
    try:
        snaps = procstat.parse_text(text)
    except procstat.ProcStatError:
        return
    assert snaps and all(s.cpus for s in snaps)
    for s in snaps:
        assert all(4 <= len(v) <= 10 for v in s.cpus.values())
    procstat.analyze(snaps, now_ns=(BTIME + 1000) * 10**9)  # and analysis never raises


counters = st.integers(0, 10**9)


@settings(max_examples=100, deadline=None)
@given(
    cpus=st.dictionaries(
        st.integers(0, 7), st.lists(counters, min_size=10, max_size=10), min_size=1
    ),
    columns=st.integers(4, 10),
    width=st.integers(12, 90),
    quote=st.sampled_from(["", "> ", ">> ", "> > "]),
    indent=st.sampled_from(["", "  ", "\t"]),
)
def test_property_mail_wrapping_does_not_change_the_parse(cpus, columns, width, quote, indent):
    original = stat_text(cpus, columns=columns, header=f"# time: {BTIME + 5}")
    mailed = _mail(original, width=width, indent=indent, quote=quote)
    a = procstat.parse_text(original)
    b = procstat.parse_text(mailed)
    assert [(s.cpus, s.btime, s.time_ns) for s in a] == [(s.cpus, s.btime, s.time_ns) for s in b]


def test_a_clean_verdict_says_what_steal_did(capsys, tmp_path):
    """'verdict: clean' with its steal figures: how much steal grew, over all
    CPUs and where it grew most, and as a share of the CPU time; the JSON
    summary holds them per cpu line (it was {} for a clean run)."""
    f = write(
        tmp_path,
        "stat.txt",
        "cpu  100 0 50 1000 0 0 0 10 0 0\ncpu0 50 0 25 500 0 0 0 2 0 0\n"
        "cpu1 50 0 25 500 0 0 0 8 0 0\n\n"
        "cpu  200 0 100 2000 0 0 0 60 0 0\ncpu0 100 0 50 1000 0 0 0 12 0 0\n"
        "cpu1 100 0 50 1000 0 0 0 48 0 0\n",
    )
    rc, doc = run_json(capsys, f)
    assert rc == 0 and doc["verdict"] == "clean"
    steal = doc["summary"]["steal"]
    assert steal["cpu"] == {
        "first_ns": 100_000_000,
        "last_ns": 600_000_000,
        "grown_ns": 500_000_000,
        "share": round(50 / 1200, 4),
    }
    assert steal["cpu1"]["grown_ns"] == 400_000_000
    rc, out, _ = run(capsys, f)
    assert "all CPUs: grew 500 ms (4.2% of the CPU time)" in out
    assert "most on cpu1: grew 400 ms" in out and out.rstrip().endswith("verdict: clean")
