"""kvmharness nightly: the history (crash- and concurrency-safe appends, readers that
skip torn lines), records from run documents, the changes between runs, the
exit code, the HTML/text report, KCIDB output (validated by kcidb-io itself),
merging hosts, and one real run on this host's KVM plus one through a stand-in
for kvmharness bisect-kernel (no QEMU)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvmharness.exitcodes import UsageError
from kvmharness.tools.nightly import (
    changes,
    cli,
    history,
    kcidb,
    processes,
    records,
)
from kvmharness.tools.nightly import page as html_page
from kvmharness.tools.nightly import text as textrep

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

KNOWN = {
    "status": "known-broken",
    "id": "pvm-tsc-not-applied",
    "reason": "TSC writes ignored",
    "link": "issue 9",
}


# ---------------------------------------------------------------- synthetic documents


def steal(
    variant: str, vcpus: int, jump: int, verdict: str = "holds", kind: str = "promise"
) -> dict[str, Any]:
    return {
        "scenario": "steal",
        "strategy": variant,
        "kind": kind,
        "verdict": verdict,
        "observed": f"{variant} observed",
        "config": {"vcpus": vcpus},
        "wall_s": 0.5,
        "largest_jump_ns": jump,
        "steal_before_ns": 100,
        "steal_after_ns": 100 + jump,
        "known": None,
    }


def clock(
    variant: str,
    jumps: list[int],
    warps: int = 0,
    verdict: str = "holds",
    known: dict[str, Any] | None = None,
    not_supported: bool = False,
) -> dict[str, Any]:
    return {
        "scenario": "clock",
        "strategy": variant,
        "kind": "promise",
        "verdict": verdict,
        "observed": "",
        "config": {"vcpus": 2},
        "wall_s": 0.3,
        "warps": warps,
        "largest_warp_ns": 0,
        "reads": 100,
        "not_supported": not_supported,
        "boundary_jumps": [
            {"vcpu": i, "kvmclock_ns": j, "tsc_ticks": 0} for i, j in enumerate(jumps)
        ],
        "known": known,
    }


def postcopy(variant: str, blocked: list[int], verdict: str = "holds") -> dict[str, Any]:
    return {
        "scenario": "postcopy",
        "strategy": f"postcopy/{variant}",
        "kind": "promise",
        "verdict": verdict,
        "observed": "",
        "config": {"vcpus": len(blocked)},
        "wall_s": 0.2,
        "blocktime": {"blocked_ns": blocked, "all_blocked_ns": min(blocked)},
        "known": None,
    }


def doc(results: list[dict[str, Any]], code: int = 0, wall: float = 20.0) -> dict[str, Any]:
    return {
        "kvmharness_version": "0.1.0",
        "command": "run",
        "total_wall_s": wall,
        "exit_code": code,
        "host": {
            "kernel_release": "6.18.44-fc",
            "kvm_backend": "pvm",
            "cpus": 2,
            "kvm_modules": ["kvm", "kvm_pvm"],
        },
        "results": results,
    }


def base_results(jump: int = 30_000_000, cancelled: str = "holds") -> list[dict[str, Any]]:
    return [
        steal("fresh-vm/vcpu-thread", 1, jump),
        steal("cancelled-save", 1, 40_000_000, verdict=cancelled),
        steal("same-vm/new-thread", 1, -112_000_000, verdict="characterized", kind="characterize"),
        clock("restore/frozen", [13_000_000, 4_000_000]),
        clock("tsc/msr", [99_000_000], verdict="BROKEN", known=KNOWN),
        clock("frequency", [], verdict="untestable", not_supported=True),
        postcopy("stream", [14_000_000, 15_000_000]),
    ]


def record(
    results: list[dict[str, Any]],
    *,
    host: str = "hostA",
    date: str = "2025-01-01",
    run_rc: int = 0,
    pytest_rc: int | None = 0,
    wall: float = 20.0,
    ratios: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A history record of these results.  The synthetic results carry no
    readings, so a steal ratio (steal over run_delay) is ``ratios[id]``; 1.0
    unless given."""
    collected = {
        "run_doc": doc(results, run_rc, wall),
        "run_rc": run_rc,
        "pytest_rc": pytest_rc,
        "cpu_model": "Test CPU",
        "cores": 2,
        "pytest_args": ["-m", "kvm"],
        "run_args": [],
    }
    rec = records.make_record(
        collected,
        host_name=host,
        date=f"{date}T03:00:00Z",
        revision=("a" * 40, False),
        exit_code=records.combine(run_rc, pytest_rc),
    )
    for sc in rec["scenarios"]:
        if sc["family"] == "steal":
            sc["figures"]["steal_ratio"] = (ratios or {}).get(sc["id"], 1.0)
    return rec


# ---------------------------------------------------------------- the history file


def test_append_writes_one_complete_line_per_record(tmp_path: Path) -> None:
    h = tmp_path / "h.jsonl"
    recs = [record(base_results(), date=f"2025-01-0{i}") for i in range(1, 4)]
    for r in recs:
        history.append_record(h, r)
    data = h.read_bytes()
    assert data.count(b"\n") == 3 and data.endswith(b"\n")
    back, problems = history.read_history(h)
    assert problems == []
    assert [r["run_id"] for r in back] == [r["run_id"] for r in recs]
    assert back[0]["host"] == {
        "name": "hostA",
        "kernel_release": "6.18.44-fc",
        "backend": "pvm",
        "kvm_modules": ["kvm", "kvm_pvm"],
        "cpu_model": "Test CPU",
        "cores": 2,
        "facts": None,  # a document without capabilities: nothing known, nothing lost
    }


def test_a_torn_line_is_skipped_and_reported_and_the_next_append_is_whole(tmp_path: Path) -> None:
    h = tmp_path / "h.jsonl"
    first, second = record(base_results()), record(base_results(), date="2025-01-02")
    history.append_record(h, first)
    line = history.record_line(second)
    with open(h, "ab") as f:  # a writer that died half way through its line
        f.write(line[: len(line) // 2])
    recs, problems = history.read_history(h)
    assert [r["run_id"] for r in recs] == [first["run_id"]]
    assert len(problems) == 1 and "torn" in problems[0].why and problems[0].line == 2

    third = record(base_results(), date="2025-01-03")
    history.append_record(h, third)  # must not glue onto the torn tail
    recs, problems = history.read_history(h)
    assert [r["run_id"] for r in recs] == [first["run_id"], third["run_id"]]
    assert len(problems) == 1 and "garbled" in problems[0].why and problems[0].line == 2


CHILD_DIES_MID_WRITE = """
import os, signal, sys
from kvmharness.tools.nightly import history
real_write = os.write
def torn(fd, data):
    real_write(fd, bytes(data)[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)   # the crash, after half the line is on disk
os.write = torn
history.append_record({path!r}, {{"schema": history.SCHEMA, "run_id": "dies", "host": {{}},
                            "scenarios": [], "pad": "x" * 5000}})
"""


def test_a_writer_killed_mid_write_costs_only_its_own_line(tmp_path: Path) -> None:
    h = tmp_path / "h.jsonl"
    before = record(base_results())
    history.append_record(h, before)
    child = subprocess.run(
        [sys.executable, "-c", CHILD_DIES_MID_WRITE.format(path=str(h))],
        timeout=30,
    )
    assert child.returncode == -9
    assert not h.read_bytes().endswith(b"\n")  # the crash really left a torn tail
    after = record(base_results(), date="2025-01-02")
    history.append_record(h, after)
    recs, problems = history.read_history(h)
    assert [r["run_id"] for r in recs] == [before["run_id"], after["run_id"]]
    assert [p.line for p in problems] == [2]


APPENDER = """
import sys
from kvmharness.tools.nightly import history
w = int(sys.argv[1])
for i in range({n}):
    # 4 to 68 KiB: beyond PIPE_BUF and a page, so a line written in pieces would interleave
    pad = "x" * (4096 + (i * 7919 + w * 104729) % (64 * 1024))
    history.append_record({path!r}, {{"schema": history.SCHEMA, "run_id": f"{{w}}-{{i}}",
                                "host": {{"name": f"w{{w}}"}}, "scenarios": [], "pad": pad}})
"""


def test_concurrent_nightlies_append_every_line_whole(tmp_path: Path) -> None:
    h = tmp_path / "h.jsonl"
    writers, n = 4, 100
    code = APPENDER.format(path=str(h), n=n)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(writers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * writers
    recs, problems = history.read_history(h)
    assert problems == []
    ids = [r["run_id"] for r in recs]
    assert len(ids) == writers * n
    assert sorted(ids) == sorted(f"{w}-{i}" for w in range(writers) for i in range(n))
    assert h.read_bytes().count(b"\n") == writers * n


def test_the_reader_reports_interleaved_and_foreign_lines() -> None:
    """Negative control for the two tests above: what unsafe appenders produce
    (two lines spliced, a line cut short, foreign JSON) is seen and counted."""
    a = history.record_line(record(base_results())).decode()
    b = history.record_line(record(base_results(), date="2025-01-02")).decode()
    spliced = a[:50] + b + a[50:]
    data = (a + spliced + '{"x": 1}\n' + "[1, 2]\n" + "\n" + b[:-1]).encode()
    recs, problems = history.parse_history(data, "h")
    assert len(recs) == 1
    whys = [p.why.split(":")[0] for p in problems]
    assert whys == [
        "garbled",
        "garbled",
        "not a kvmharness-nightly/1 record",
        "not a kvmharness-nightly/1 record",
        "torn",
    ]
    assert [p.line for p in problems] == [2, 3, 4, 5, 7]


# ---------------------------------------------------------------- records and exit codes


def test_record_holds_each_scenario_with_its_status_and_key_figures() -> None:
    rec = record(base_results())
    by_id = {s["id"]: s for s in rec["scenarios"]}
    assert list(by_id) == [
        "steal/fresh-vm/vcpu-thread@1",
        "steal/cancelled-save@1",
        "steal/same-vm/new-thread@1",
        "clock/restore/frozen@2",
        "clock/tsc/msr@2",
        "clock/frequency@2",
        "postcopy/stream@2",
    ]
    assert by_id["steal/fresh-vm/vcpu-thread@1"]["figures"]["largest_jump_ns"] == 30_000_000
    assert by_id["clock/restore/frozen@2"]["figures"]["jump_margin_ns"] is None  # no readings
    assert by_id["clock/restore/frozen@2"]["figures"]["warps"] == 0
    assert by_id["postcopy/stream@2"]["figures"]["blocktime_ns"] == [14_000_000, 15_000_000]
    assert by_id["postcopy/stream@2"]["figures"]["blocktime_max_ns"] == 15_000_000
    assert [
        by_id[k]["status"]
        for k in ("clock/tsc/msr@2", "clock/frequency@2", "steal/same-vm/new-thread@1")
    ] == ["known-broken", "not supported", "characterized"]
    assert rec["known_issues"] == [{**KNOWN, "scenarios": ["clock/tsc/msr@2"]}]
    assert rec["harness"] == {"revision": "a" * 40, "dirty": False, "version": "0.1.0"}
    assert rec["run"]["total_wall_s"] == 20.0


def test_a_run_file_of_today_reads_as_one_of_the_previous_release() -> None:
    """Today's results name their family and variant (``family``, ``variant``:
    stream, not postcopy/stream); 0.1 wrote ``scenario`` and ``strategy``.  The
    nightly reads both the same: same ids, same figures."""

    def today(r: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in r.items() if k not in ("scenario", "strategy")}
        fam = r.get("family") or r["scenario"]
        out["family"] = fam
        out["variant"] = str(r.get("variant") or r["strategy"]).removeprefix(f"{fam}/")
        return out

    old = record(base_results())["scenarios"]
    new = record([today(r) for r in base_results()])["scenarios"]
    assert [(s["id"], s["figures"]) for s in new] == [(s["id"], s["figures"]) for s in old]
    assert "postcopy/stream@2" in [s["id"] for s in new]


@pytest.mark.parametrize(
    "run_rc, pytest_rc, forced, want",
    [
        (0, 0, False, 0),
        (0, None, False, 0),
        (1, 0, False, 1),  # a promise broke (or a known issue looks fixed: run says 1)
        (0, 1, False, 1),  # a KVM test failed
        (0, 0, True, 1),  # broken on purpose
        (125, 0, False, 125),  # nothing could be tested
        (125, 1, False, 1),  # broken beats cannot-test, as in kvmharness run
        (1, 2, False, 128),  # pytest interrupted/usage: harness fault beats broken
        (128, 0, False, 128),
        (143, 0, False, 128),
        (None, 0, False, 128),  # kvmharness run left no verdict
        (0, 5, False, 128),  # pytest collected nothing: a wrong selection, not "good"
    ],
)
def test_exit_code(run_rc: int | None, pytest_rc: int | None, forced: bool, want: int) -> None:
    assert records.combine(run_rc, pytest_rc, forced_broken=forced) == want


def test_break_on_purpose_needs_todays_date_and_marks_what_it_broke() -> None:
    today = dt.date(2025, 3, 4)
    scen = records.scenarios_of(doc(base_results()))
    with pytest.raises(UsageError, match="2025-03-04"):
        records.break_on_purpose(scen, "steal/cancelled-save:2025-03-03", today)  # yesterday's
    with pytest.raises(UsageError, match="2025-03-04"):
        records.break_on_purpose(scen, "steal/cancelled-save", today)
    with pytest.raises(UsageError, match="no promise"):
        records.break_on_purpose(scen, "steal/same-vm:2025-03-04", today)  # a characterization
    hit = records.break_on_purpose(scen, "steal/cancelled-save:2025-03-04", today)
    assert hit == ["steal/cancelled-save@1"]
    s = next(x for x in scen if x["id"] == hit[0])
    assert s["status"] == "broken" and s["observed"].startswith("broken on purpose")
    assert records.break_on_purpose(scen, None, today) == []


# ---------------------------------------------------------------- changes between runs


def test_changes_new_broken_fixed_and_known_issue_fixed() -> None:
    prev = record(base_results())
    res = base_results(cancelled="broken")
    res[4] = clock("tsc/msr", [1_000_000], verdict="holds", known={**KNOWN, "status": "fixed?"})
    cur = record(res, run_rc=1, date="2025-01-02")
    ch = changes.changes(prev, cur)
    assert [x.split(":")[0] for x in ch["new broken"]] == ["steal/cancelled-save@1"]
    assert "holds -> broken" in ch["new broken"][0]
    assert ch["fixed"] == ["clock/tsc/msr@2: known-broken -> fixed?"]
    assert ch["fixed?"][0].startswith("clock/tsc/msr@2: holds, but known issue pvm-tsc-not-applied")
    back = changes.changes(cur, record(base_results(), date="2025-01-03"))
    assert back["fixed"] == ["steal/cancelled-save@1: broken -> holds"]
    assert back["new broken"] == [] and back["new known-broken"] == [
        "clock/tsc/msr@2: fixed? -> known-broken"
    ]


@pytest.mark.parametrize(
    "new_ratio, flagged",
    [
        (1.0, False),
        (1.05, False),  # within twice the run-to-run spread (0.03)
        (1.07, True),  # steal counts 7% more than the runner waited
        (0.95, False),
        (0.93, True),
        (0.0, True),  # steal not accounted
    ],
)
def test_steal_moved_only_beyond_the_run_to_run_spread(new_ratio: float, flagged: bool) -> None:
    sid = "steal/fresh-vm/vcpu-thread@1"
    ch = changes.changes(
        record(base_results()), record(base_results(), date="2025-01-02", ratios={sid: new_ratio})
    )
    moved = [m for m in ch["figure moved"] if m.startswith(sid)]
    assert bool(moved) is flagged
    if flagged:
        assert f"steal / runner's run_delay 1.000 -> {new_ratio:.3f}" in moved[0]
    assert "2 times what it moves between runs" in changes.move_rule()
    assert "steal_ratio 0.030" in changes.move_rule()


def test_raw_steal_jumps_follow_the_load_and_never_move() -> None:
    """The issue's example: a steal jump of 8 ms, then 150 ms a minute later on
    the same kernel and host.  Raw steal follows the runner's run_delay, so it is
    no figure of the kernel; the old rule (doubled and over 10 ms) listed it."""
    a = record([steal("cancelled-save", 1, 8_010_000)])
    b = record([steal("cancelled-save", 1, 150_000_000)], date="2025-01-02")
    assert changes.changes(a, b)["figure moved"] == []
    c = record(
        [steal("cancelled-save", 1, 150_000_000)],
        date="2025-01-03",
        ratios={"steal/cancelled-save@1": 2.0},
    )
    assert len(changes.changes(b, c)["figure moved"]) == 1  # steal counted twice: moved


# ---------------------------------------------------------------- the report


def three_runs(tmp_path: Path) -> Path:
    h = tmp_path / "h.jsonl"
    history.append_record(h, record(base_results(), date="2025-01-01"))
    history.append_record(h, record(base_results(35_000_000), date="2025-01-02"))
    history.append_record(
        h,
        record(
            base_results(80_000_000, cancelled="broken"),
            run_rc=1,
            date="2025-01-03",
            ratios={"steal/fresh-vm/vcpu-thread@1": 1.5},
        ),
    )
    with open(h, "ab") as f:
        f.write(b'{"schema": "kvmharness-nightly/1", "run_id": "to')  # torn on purpose
    return h


def test_html_report_is_self_contained_with_table_plots_known_issues_and_changes(
    tmp_path: Path,
) -> None:
    recs, problems = history.read_history(three_runs(tmp_path))
    page = html_page.html_report(recs, problems, last=10)
    assert page.startswith("<!DOCTYPE html>")
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"""(src|href)=['"](?!data:)""", page)
    assert "<link" not in page and "<script" not in page
    pngs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(pngs) >= 3  # steal, clock, postcopy, wall time
    assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    # the table: a row per scenario, a column per run, verdict + key figure per cell
    rows = re.findall(r"<tr><td class='sid[^>]*>(.*?)</td>", page)
    assert rows[:2] == ["steal/fresh-vm/vcpu-thread@1", "steal/cancelled-save@1"]
    assert re.findall(r"<td class='sid changed'[^>]*>(.*?)</td>", page) == [
        "steal/cancelled-save@1"
    ]  # the row that changed since the previous run stands out
    row = page.split(">steal/cancelled-save@1</td>")[1].split("</tr>")[0]
    assert re.findall(r"<span class='st'>(.*?)</span>", row) == ["holds", "holds", "broken"]
    assert "jump 40 ms" in row
    assert "new broken" in page and "steal/cancelled-save@1: holds -&gt; broken" in page
    assert "figure moved" in page and "1.000 -&gt; 1.500" in page  # steal over run_delay
    assert "35 ms -&gt; 80 ms" not in page  # raw steal follows the load: never "moved"
    assert "pvm-tsc-not-applied" in page and "TSC writes ignored" in page
    assert "torn" in page  # the skipped line is reported, not fatal
    assert "2 times what it moves between runs of one kernel on one host" in page


def test_text_report_says_the_same_for_the_ci_log(tmp_path: Path) -> None:
    recs, problems = history.read_history(three_runs(tmp_path))
    text = textrep.text_report(recs, problems, last=2)
    assert "new broken: steal/cancelled-save@1: holds -> broken" in text
    assert (
        "figure moved: steal/fresh-vm/vcpu-thread@1: steal / runner's run_delay 1.000 -> 1.500"
        in text
    )
    line = next(x for x in text.splitlines() if x.startswith("steal/cancelled-save@1"))
    cell = ["jump", "40", "ms,", "1.000", "of", "run_delay"]
    assert line.split() == ["steal/cancelled-save@1", "holds", *cell, "broken", *cell]  # 2 runs
    assert "pvm-tsc-not-applied (known-broken): clock/tsc/msr@2" in text
    assert "skipped: torn" in text


def test_report_of_a_run_that_could_not_test() -> None:
    collected = {
        "run_doc": None,
        "run_rc": 125,
        "pytest_rc": 0,
        "run_error": "cannot test: /dev/kvm is missing",
    }
    rec = records.make_record(
        collected,
        host_name="h",
        date="2025-01-01T00:00:00Z",
        exit_code=records.combine(125, 0),
        note="kvmharness run exited 125",
    )
    assert rec["exit_code"] == 125 and rec["scenarios"] == []
    text = textrep.text_report([rec], [], last=5)
    assert "exit 125 (cannot test)" in text and "(no scenario ran)" in text
    assert "No scenario ran" in html_page.html_report([rec], [], last=5)


# ---------------------------------------------------------------- capabilities lost

#: the host facts of `kvmharness info --json` on kvm_pvm (6.18.44)
PVM_INFO = {
    "kernel_release": "6.18.44-fc",
    "kvm_backend": "pvm",
    "dev_kvm": "present",
    "capabilities": {"ADJUST_CLOCK": 14, "TSC_CONTROL": 0, "VCPU_ATTRIBUTES": 1, "MAX_VCPUS": 1024},
    "kvm_features": ["clocksource", "clocksource2", "steal_time", "clocksource_stable_bit"],
    "steal_time": True,
    "invariant_tsc": True,
    "tsc_offset_attr": True,
    "sched_info_live": True,
    "kvmclock_stable": True,
    "pvti_stable": True,
    "userfaultfd": "usable (with UFFD_FEATURE_THREAD_ID, features 0x1ffff)",
}


def test_host_facts_say_present_absent_or_nothing() -> None:
    facts = records.host_facts(PVM_INFO)
    assert facts["KVM_CAP_TSC_CONTROL"] is False and facts["KVM_CAP_VCPU_ATTRIBUTES"] is True
    assert facts["KVM_CAP_ADJUST_CLOCK KVM_CLOCK_REALTIME"] is True
    assert facts["KVM_CAP_ADJUST_CLOCK KVM_CLOCK_HOST_TSC"] is True
    assert not any("MAX_VCPUS" in k for k in facts), "a number, not a capability"
    assert facts["KVM_VCPU_TSC_OFFSET attribute"] is True
    assert facts["master clock (KVM_CLOCK_TSC_STABLE once a vCPU ran)"] is True
    assert facts["KVM PV feature steal_time"] is True
    assert facts["UFFD_FEATURE_THREAD_ID"] is True
    unprobed = records.host_facts(
        {**PVM_INFO, "kvmclock_stable": None, "userfaultfd": "unknown (x)"}
    )
    assert "master clock (KVM_CLOCK_TSC_STABLE once a vCPU ran)" not in unprobed
    assert "userfaultfd usable" not in unprobed
    assert records.host_facts(None) is None and records.host_facts({}) is None


def _with_facts(results: list[dict[str, Any]], info: dict[str, Any], **kw: Any) -> dict[str, Any]:
    rec = record(results, **kw)
    rec["host"]["facts"] = records.host_facts(info)
    return rec


@pytest.mark.parametrize(
    "change, lost",
    [
        ({"tsc_offset_attr": False}, "KVM_VCPU_TSC_OFFSET attribute: present in the previous"),
        ({"capabilities": {**PVM_INFO["capabilities"], "VCPU_ATTRIBUTES": 0}}, "VCPU_ATTRIBUTES"),
        ({"capabilities": {**PVM_INFO["capabilities"], "ADJUST_CLOCK": 10}}, "KVM_CLOCK_REALTIME"),
        ({"kvmclock_stable": False}, "master clock"),
        ({"kvm_features": ["clocksource2"], "steal_time": False}, "feature steal_time"),
        ({"userfaultfd": "usable (features 0x1)"}, "UFFD_FEATURE_THREAD_ID"),
        ({"sched_info_live": False}, "run_delay kept"),
    ],
)
def test_a_capability_the_host_had_is_a_change(change: dict[str, Any], lost: str) -> None:
    prev = _with_facts(base_results(), PVM_INFO, date="2025-01-01")
    cur = _with_facts(base_results(), {**PVM_INFO, **change}, date="2025-01-02")
    got = changes.capabilities_lost(prev, cur)
    assert len(got) == 1 and lost in got[0], got
    assert changes.changes(prev, cur)["capability lost"] == got
    # gained, unchanged or unknown now: no change
    assert changes.capabilities_lost(cur, prev) == [], "a capability gained is no loss"
    assert changes.capabilities_lost(prev, prev) == []
    unknown = _with_facts(base_results(), {**PVM_INFO, "tsc_offset_attr": None}, date="2025-01-03")
    assert changes.capabilities_lost(prev, unknown) == []


def test_a_scenario_that_went_from_a_verdict_to_not_supported_is_a_change() -> None:
    prev = record(base_results(), date="2025-01-01")
    res = base_results()
    res[4] = clock("tsc/msr", [], verdict="not supported")  # was known-broken
    res[3] = clock("restore/frozen", [], verdict="untestable")  # load: not a capability
    cur = record(res, date="2025-01-02")
    assert changes.capabilities_lost(prev, cur) == [
        "clock/tsc/msr@2: known-broken -> not supported: "
    ]
    # frequency was not supported before and still is: nothing lost
    assert not any("frequency" in x for x in changes.capabilities_lost(prev, cur))
    assert "capability lost: clock/tsc/msr@2" in textrep.text_report([prev, cur], [], last=5)


def test_a_lost_capability_fails_the_night(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hist, out = tmp_path / "h.jsonl", tmp_path / "out"
    history.append_record(hist, _with_facts(base_results(), PVM_INFO, host="n", date="2025-01-01"))
    history.append_record(
        hist, _with_facts(base_results(), PVM_INFO, host="other", date="2025-01-01")
    )

    def collected(info: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_doc": doc(base_results()),
            "run_rc": 0,
            "pytest_rc": None,
            "host_info": info,
            "cpu_model": "Test CPU",
            "cores": 2,
        }

    argv = ["--history", str(hist), "--out", str(out), "--host-name", "n", "--no-pytest"]
    monkeypatch.setattr(cli, "collect", lambda *a, **k: collected(PVM_INFO))
    assert cli.main(argv) == 0, capsys.readouterr()
    monkeypatch.setattr(
        cli, "collect", lambda *a, **k: collected({**PVM_INFO, "tsc_offset_attr": False})
    )
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert (
        "nightly: capability lost since the previous run: KVM_VCPU_TSC_OFFSET attribute"
        in captured.err
    )
    assert "capability lost: KVM_VCPU_TSC_OFFSET attribute" in captured.out
    recs, _ = history.read_history(hist)
    assert recs[-1]["exit_code"] == 1 and "capability(ies)" in recs[-1]["note"]
    # the next night on the same (reduced) host is no change
    assert cli.main(argv) == 0


# ---------------------------------------------------------------- KCIDB and merging


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest"
 errors="0" failures="1" skipped="1" tests="3" time="2.5"><testcase classname="tests.test_a"
 name="test_ok[x/y]" time="1.0"/><testcase classname="tests.test_a" name="test_bad"
 time="1.0"><failure message="boom">boom</failure></testcase><testcase
 classname="tests.test_b" name="test_skip" time="0.5"><skipped message="no"/></testcase>
</testsuite></testsuites>"""


def test_kcidb_output_passes_kcidb_io_validation() -> None:
    kcidb_io = pytest.importorskip("kcidb_io")  # the test extra installs it
    from jsonschema.exceptions import ValidationError

    rec = record(base_results(cancelled="broken"), run_rc=1)
    data = json.loads(json.dumps(kcidb.kcidb(rec, JUNIT)))
    kcidb_io.schema.LATEST.validate(data)
    assert kcidb_io.schema.LATEST.is_compatible_exactly(data)
    tests = {t["path"]: t for t in data["tests"]}
    assert len(data["tests"]) == len(rec["scenarios"]) + 3
    t = tests["kvmharness.steal.cancelled-save.vcpus_1"]
    assert t["status"] == "FAIL" and t["misc"]["figures"]["largest_jump_ns"] == 40_000_000
    assert t["number"] == {"value": 1.0}  # steal over the runner's run_delay
    assert (
        tests["kvmharness.clock.tsc.msr.vcpus_2"]["misc"]["known_issue"]["id"]
        == "pvm-tsc-not-applied"
    )
    assert tests["kvmharness.clock.frequency.vcpus_2"]["status"] == "SKIP"
    assert tests["kvmharness.steal.same-vm.new-thread.vcpus_1"]["status"] == "DONE"
    assert tests["kvmharness.pytest.tests.test_a.test_bad"]["status"] == "FAIL"
    assert tests["kvmharness.pytest.tests.test_a.test_ok_x_y"]["status"] == "PASS"
    assert {t["build_id"] for t in data["tests"]} == {data["builds"][0]["id"]}
    assert data["builds"][0]["checkout_id"] == data["checkouts"][0]["id"]
    # the validation has teeth: a status KCIDB does not know is refused
    data["tests"][0]["status"] = "BROKEN"
    with pytest.raises(ValidationError):
        kcidb_io.schema.LATEST.validate(data)


def test_merge_keys_runs_by_host_and_takes_each_run_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, merged = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "m.jsonl"
    for d in ("2025-01-01", "2025-01-03"):
        history.append_record(
            a, record([steal("cancelled-save", 1, 9_000_000)], host="alpha", date=d)
        )
    history.append_record(
        b,
        record(
            [steal("cancelled-save", 1, 9_000_000, verdict="broken")],
            host="beta",
            date="2025-01-02",
            run_rc=1,
        ),
    )
    out = tmp_path / "out"
    for _ in range(2):  # merging twice adds nothing
        assert (
            cli.main(["--merge", str(a), str(b), "--history", str(merged), "--out", str(out)]) == 0
        )
    stdout = capsys.readouterr().out
    recs, problems = history.read_history(merged)
    assert problems == [] and len(recs) == 3
    hosts = textrep.by_host(recs)
    assert [r["date"][:10] for r in hosts["alpha"]] == ["2025-01-01", "2025-01-03"]
    assert len(hosts["beta"]) == 1
    assert "== host alpha" in stdout and "== host beta" in stdout
    page = (out / "index.html").read_text()
    assert "<h2>Host alpha</h2>" in page and "<h2>Host beta</h2>" in page


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    hist = ["--history", str(tmp_path / "h")]
    for argv in (
        ["--merge", str(tmp_path / "missing.jsonl")],
        ["--last", "0"],
        ["--run-args", "--json x"],
        ["--modules", str(tmp_path)],
        ["--run-args", "'unclosed"],
        ["--kernel", str(tmp_path / "no-such-image")],
        ["--no-such-option"],
    ):
        assert cli.main(argv + hist + ["--out", str(tmp_path)]) == 2, argv
    # an unwritable history or report place is refused before anything runs
    assert cli.main(["--history", str(tmp_path / "no" / "h"), "--out", str(tmp_path)]) == 2
    (tmp_path / "file").write_text("")
    assert cli.main(hist + ["--out", str(tmp_path / "file")]) == 2
    stale = f"steal/cancelled-save:{dt.date(2000, 1, 1).isoformat()}"
    assert cli.main(hist + ["--out", str(tmp_path), "--break-on-purpose", stale]) == 2
    assert not (tmp_path / "h").exists()  # refused before any run


# ---------------------------------------------------------------- the real thing


TINY_PYTEST = "tests/test_known.py::test_the_shipped_file_loads_and_has_the_pvm_tsc_entry"
TINY_RUN = "-s steal/cancelled-save --vcpus 1 --contend-ms 50"


def nightly(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "nightly"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.kvm
def test_end_to_end_on_this_hosts_kvm(tmp_path: Path) -> None:
    hist, out = tmp_path / "h.jsonl", tmp_path / "out"
    r = nightly(
        "--history",
        str(hist),
        "--out",
        str(out),
        "--host-name",
        "e2e",
        "--kcidb",
        str(tmp_path / "kcidb.json"),
        "--pytest-args",
        TINY_PYTEST,
        "--run-args",
        TINY_RUN,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    recs, problems = history.read_history(hist)
    assert problems == [] and len(recs) == 1
    rec = recs[0]
    assert [(s["id"], s["status"]) for s in rec["scenarios"]] == [
        ("steal/cancelled-save@1", "holds")
    ]
    assert rec["scenarios"][0]["figures"]["largest_jump_ns"] > 0
    assert rec["host"]["kernel_release"] == os.uname().release
    assert rec["host"]["cpu_model"] and rec["host"]["cores"] >= 1 and rec["host"]["backend"]
    assert rec["pytest"]["tests"] == 1 and rec["pytest"]["exit_code"] == 0
    assert re.fullmatch(r"[0-9a-f]{40}", rec["harness"]["revision"] or "")
    assert (out / "junit.xml").read_text().count("<testcase") == 1
    assert json.loads((out / "run.json").read_text())["command"] == "run"
    assert "steal/cancelled-save@1  holds jump" in r.stdout
    assert "<span class='st'>holds</span>" in (out / "index.html").read_text()
    kcidb_io = pytest.importorskip("kcidb_io")
    kcidb_io.schema.LATEST.validate(json.loads((tmp_path / "kcidb.json").read_text()))


FAKE_BISECT_KERNEL = """
# A stand-in for scripts/bisect-kernel without QEMU: like it, run --inner-cmd with
# the ARGS after '--', --json FILE pointed at another directory and moved back.
import os, shlex, shutil, subprocess, sys, tempfile
argv = sys.argv[1:]
cut = argv.index("--")
own, inner = argv[:cut], argv[cut + 1:]
cmd = shlex.split(own[own.index("--inner-cmd") + 1])
assert own[0].endswith("bzImage"), own
dest = inner[inner.index("--json") + 1]
with tempfile.TemporaryDirectory() as guest:
    inner[inner.index("--json") + 1] = os.path.join(guest, "0-inner.json")
    rc = subprocess.run(cmd + inner).returncode
    if os.path.exists(os.path.join(guest, "0-inner.json")):
        shutil.move(os.path.join(guest, "0-inner.json"), dest)
sys.exit(rc if rc in (0, 1, 125) or rc >= 128 else 128)
"""


@pytest.mark.kvm
def test_kernel_mode_runs_itself_inside_and_breaks_on_purpose(tmp_path: Path) -> None:
    """--kernel through a stand-in for bisect-kernel: the inner nightly's JSON
    comes back, and the test-only switch gives a trend whose last row is new broken."""
    fake = tmp_path / "bisect-kernel"
    fake.write_text(FAKE_BISECT_KERNEL)
    image = tmp_path / "bzImage"
    image.write_bytes(b"not a kernel")
    hist, out = tmp_path / "h.jsonl", tmp_path / "out"
    # two earlier good runs of this host, synthetic
    for d in ("2025-01-01", "2025-01-02"):
        history.append_record(
            hist, record([steal("cancelled-save", 1, 30_000_000)], host="k", date=d)
        )
    today = dt.datetime.now(dt.UTC).date().isoformat()
    r = nightly(
        "--history",
        str(hist),
        "--out",
        str(out),
        "--host-name",
        "k",
        "--kernel",
        str(image),
        "--bisect-kernel",
        f"{sys.executable} {fake}",
        "--no-pytest",
        "--run-args",
        TINY_RUN,
        "--break-on-purpose",
        f"steal/cancelled-save:{today}",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    recs, _ = history.read_history(hist)
    assert len(recs) == 3 and recs[-1]["kernel_image"] == str(image)
    assert recs[-1]["broken_on_purpose"] == ["steal/cancelled-save@1"]
    assert recs[-1]["host"]["kernel_release"] == os.uname().release  # from inside
    assert recs[-1]["booted_on"]["cores"] == os.cpu_count()
    assert "new broken: steal/cancelled-save@1: holds -> broken" in r.stdout
    assert "TEST SWITCH" in r.stdout
    row = next(x for x in r.stdout.splitlines() if x.startswith("steal/cancelled-save@1"))
    assert row.split()[1::7] == ["holds", "holds", "broken"]  # verdict, jump X ms, R of run_delay


def test_kernel_command_hands_bisect_kernel_the_inner_run() -> None:
    cmd = processes.kernel_command(
        "/k/bzImage",
        "/k/mods",
        ["-m", "kvm"],
        ["-s", "steal"],
        "/tmp/x/inner.json",
    )
    me = [sys.executable, "-m", "kvmharness.cli"]  # this Python's kvmharness, in and out
    assert cmd[:5] == [*me, "bisect-kernel", "/k/bzImage"]
    assert cmd[cmd.index("--modules") + 1] == "/k/mods"
    inner = cmd[cmd.index("--inner-cmd") + 1]
    assert inner == (
        f"{sys.executable} -m kvmharness.cli nightly --inner --run-args '-s steal' "
        "--pytest-args '-m kvm'"
    )
    assert cmd[-3:] == ["--", "--json", "/tmp/x/inner.json"]  # the file bisect-kernel moves


def test_kernel_mode_without_a_result_file_takes_bisect_kernels_code(tmp_path: Path) -> None:
    fake = tmp_path / "bk"
    fake.write_text(
        "import sys; print('bisect-kernel: cannot test: no kvm.ko', "
        "file=sys.stderr); sys.exit(125)\n"
    )
    got = processes.collect_in_kernel(
        "/k/bzImage", None, None, [], bisect_kernel=f"{sys.executable} {fake}", log=lambda m: None
    )
    assert got["run_rc"] == 125 and "no kvm.ko" in got["run_error"]
    assert records.combine(got["run_rc"], got["pytest_rc"]) == 125


def test_script_help_documents_the_exit_codes_and_the_test_switch() -> None:
    r = nightly("--help", timeout=60)
    assert r.returncode == 0
    assert "125 nothing could be tested" in " ".join(r.stdout.split())
    assert "--break-on-purpose SCENARIO:YYYY-MM-DD" in r.stdout


# ---------------------------------------------------------------- figures of real runs

CORPUS = ROOT / "tests" / "corpus"


def corpus_record(path: Path, date: str = "2025-01-01") -> dict[str, Any]:
    """A nightly record of a real run (a `kvmharness run/bisect --json` of the corpus)."""
    import gzip

    run_doc = json.loads(gzip.decompress(path.read_bytes()))
    collected = {"run_doc": run_doc, "run_rc": 0, "pytest_rc": None}
    return records.make_record(collected, host_name="h", date=f"{date}T03:00:00Z")


def test_steal_over_run_delay_is_one_on_good_kernels_whatever_the_load() -> None:
    for name in ("stock/pvm-6.18.44-fc-v1252-run.json.gz", "mutants/control.steal.json.gz"):
        rec = corpus_record(CORPUS / name)
        ratios = {
            s["id"]: s["figures"]["steal_ratio"] for s in rec["scenarios"] if s["family"] == "steal"
        }
        assert ratios and all(abs(r - 1.0) <= 0.03 for r in ratios.values()), (name, ratios)


def test_one_host_and_kernel_under_other_load_shows_no_moved_figure() -> None:
    """The same pvm host and kernel, once idle and once beside two busy processes:
    nothing of the kernel moved.  Raw steal jumps did (the old rule listed them)."""
    idle = corpus_record(CORPUS / "stock/pvm-6.18.44-fc-v1252-run.json.gz")
    loaded = corpus_record(CORPUS / "stock/pvm-6.18.44-fc-v1252-run-load2.json.gz", "2025-01-02")
    assert changes.changes(idle, loaded)["figure moved"] == []
    raw = [
        (a["figures"]["largest_jump_ns"], b["figures"]["largest_jump_ns"])
        for a, b in zip(idle["scenarios"], loaded["scenarios"], strict=True)
        if a["family"] == "steal"
    ]
    assert any(max(x, y) > 2 * min(x, y) + 10_000_000 for x, y in raw)  # what once "moved"


@pytest.mark.parametrize(
    "mutant",
    [
        "steal-not-accounted",
        "steal-run-delay-charged-twice",
        "steal-reset-on-new-vcpu",
        "steal-last-steal-from-writer",
    ],
)
def test_a_steal_mutant_moves_steal_over_run_delay(mutant: str) -> None:
    control = corpus_record(CORPUS / "mutants/control.steal.json.gz")
    bad = corpus_record(CORPUS / f"mutants/{mutant}.steal.json.gz", "2025-01-02")
    moved = changes.changes(control, bad)["figure moved"]
    assert any("steal / runner's run_delay 1.000 ->" in m for m in moved), moved


def test_kvmclock_ignoring_realtime_moves_the_jump_from_its_bound() -> None:
    control = corpus_record(CORPUS / "mutants/control.clock+postcopy.json.gz")
    bad = corpus_record(
        CORPUS / "mutants/kvmclock-set-clock-ignores-realtime.clock.json.gz", "2025-01-02"
    )
    moved = changes.changes(control, bad)["figure moved"]
    assert any(m.startswith("clock/restore/realtime@2: kvmclock jump's distance") for m in moved)
    assert not any(m.startswith("clock/restore/frozen@2") for m in moved), moved
