"""kvmharness mutants without KVM, QEMU or a kernel source: the patch header format,
the cells a bisect JSON gives, and the kill-matrix rendering and verdict."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmharness.tools import mutants as ml

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

DIFF = """--- a/arch/x86/kvm/x86.c
+++ b/arch/x86/kvm/x86.c
@@ -1,3 +1,4 @@
 a
+b
 c
 d
"""

HEADER = """Mutant: demo
Seed-bug: the 2015 line,
  described in README bug 1
Puts-back: last_steal from the writer
Must-catch: steal:fresh-vm/main-thread, steal:cross-process
Note: a note

"""


def patch_text(header: str = HEADER, diff: str = DIFF) -> str:
    return header + diff


# ---------------------------------------------------------------- the header format


def test_parse_patch_reads_every_field_and_continuation_lines() -> None:
    m = ml.parse_patch(patch_text(), Path("demo.patch"))
    assert m.name == "demo"
    assert m.seed_bug == "the 2015 line, described in README bug 1"
    assert m.puts_back == "last_steal from the writer"
    assert [str(s) for s in m.must_catch] == ["steal:fresh-vm/main-thread", "steal:cross-process"]
    assert m.note == "a note"
    assert m.diff == DIFF
    assert m.files == ["arch/x86/kvm/x86.c"]
    assert m.tcg_threads == "single"
    multi = ml.parse_patch(patch_text(HEADER + "Tcg-threads: multi\n"))
    assert multi.tcg_threads == "multi" and multi.header()["tcg_threads"] == "multi"


def test_header_keys_are_case_insensitive_and_comments_skipped() -> None:
    text = "# a comment\n" + HEADER.replace("Must-catch:", "MUST-CATCH:")
    assert ml.parse_patch(patch_text(text)).must_catch[0].family == "steal"


@pytest.mark.parametrize(
    "header, message",
    [
        (HEADER.replace("Mutant: demo\n", ""), "lacks Mutant"),
        (
            HEADER.replace("Must-catch: steal:fresh-vm/main-thread, steal:cross-process\n", ""),
            "lacks Must-catch",
        ),
        (
            HEADER.replace(
                "Must-catch: steal:fresh-vm/main-thread, steal:cross-process", "Must-catch: ,"
            ),
            "names no scenario",
        ),
        (
            HEADER.replace("Must-catch: steal:fresh-vm/main-thread", "Must-catch: Steal time"),
            "bad Must-catch item",
        ),
        (HEADER.replace("Note:", "Notes:"), "expected one of"),
        (HEADER + "Note: again\n", "Note given twice"),
        ("  orphan continuation\n" + HEADER, "continuation line"),
        (HEADER.replace("Mutant: demo", "Mutant: control"), "not 'control'"),
        (HEADER.replace("Mutant: demo", "Mutant: Demo_1"), "lower-case"),
        (HEADER + "Tcg-threads: many\n", "Tcg-threads 'many': write one of single, multi"),
    ],
)
def test_bad_headers_are_refused_with_the_reason(header: str, message: str) -> None:
    with pytest.raises(ml.HeaderError, match=message):
        ml.parse_patch(patch_text(header))


def test_name_must_match_the_file_name() -> None:
    with pytest.raises(ml.HeaderError, match="differs from the file name"):
        ml.parse_patch(patch_text(), Path("other.patch"))


def test_a_header_without_a_diff_is_refused() -> None:
    with pytest.raises(ml.HeaderError, match="no unified diff"):
        ml.parse_patch(HEADER)
    with pytest.raises(ml.HeaderError, match="changes no file"):
        ml.parse_patch(HEADER + "--- a/arch/x86/kvm/x86.c\n")


def test_a_diff_outside_the_copied_directories_is_refused() -> None:
    with pytest.raises(ml.HeaderError, match="outside arch/x86/kvm and virt/kvm"):
        ml.parse_patch(patch_text(diff=DIFF.replace("arch/x86/kvm/x86.c", "kernel/sched/core.c")))


def test_selectors_match_families_variants_and_prefixes() -> None:
    fam = ml.Selector.parse("steal")
    pre = ml.Selector.parse("steal:fresh-vm")
    exact = ml.Selector.parse("clock:cross-process/main-thread")
    assert fam.matches("steal:cancelled-save") and not fam.matches("clock:warp")
    assert pre.matches("steal:fresh-vm/main-thread") and not pre.matches("steal:fresh-vmx")
    assert exact.matches("clock:cross-process/main-thread")
    assert not exact.matches("steal:cross-process/main-thread")  # same variant, other family


def test_every_shipped_patch_parses_and_names_a_seed_bug() -> None:
    mutants = ml.load_mutants()
    assert len(mutants) >= 2
    assert "steal-last-steal-from-writer" in {m.name for m in mutants}
    for m in mutants:
        assert m.seed_bug and m.puts_back and m.must_catch
        assert all(f.startswith(("arch/x86/kvm/", "virt/kvm/")) for f in m.files)


@pytest.mark.parametrize("name", sorted(ml.SERIES))
def test_shipped_patches_apply_to_the_kernel_source_if_present(name: str) -> None:
    """Where Debian's linux-source-SERIES is unpacked by scripts/mutants, each
    patch of that series (its port where there is one) applies cleanly, with no
    fuzz (a dry run, no build)."""
    series = ml.SERIES[name]
    pristine = ml.DEFAULT_WORK / series.name / "src" / series.top
    if not (pristine / "arch/x86/kvm/x86.c").exists():
        pytest.skip(f"scripts/mutants has not unpacked {series.source_pkg} here")
    for m in ml.load_mutants(series=name):
        r = subprocess.run(
            ["patch", "-p1", "--dry-run", "--batch", "--fuzz=0", "-d", str(pristine)],
            input=m.diff,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, (m.name, r.stdout + r.stderr)


def _patch_dir(tmp_path: Path, **files: str) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel.replace("__", "/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path


def test_a_port_stands_in_for_its_mutant_on_its_series_only(tmp_path: Path) -> None:
    ported = DIFF.replace("+b", "+ported")
    d = _patch_dir(
        tmp_path,
        **{
            "demo.patch": patch_text(),
            "other.patch": patch_text(HEADER.replace("demo", "other")),
            "6.12__demo.patch": patch_text(diff=ported),
        },
    )
    by_series = {s: {m.name: m for m in ml.load_mutants(d, s)} for s in (None, "6.1", "6.12")}
    assert by_series[None]["demo"].diff == DIFF
    assert by_series["6.1"]["demo"].diff == DIFF  # no 6.1 directory: the patches as they are
    demo = by_series["6.12"]["demo"]
    assert demo.diff == ported and demo.path == d / "6.12" / "demo.patch"
    assert by_series["6.12"]["other"].diff == DIFF  # not ported: the common patch


def test_a_port_must_put_the_same_bug_back(tmp_path: Path) -> None:
    d = _patch_dir(
        tmp_path,
        **{
            "demo.patch": patch_text(),
            "6.12__demo.patch": patch_text(HEADER.replace("steal:cross-process", "clock")),
        },
    )
    ml.load_mutants(d, "6.1")
    with pytest.raises(ml.HeaderError, match="Must-catch"):
        ml.load_mutants(d, "6.12")


def test_a_port_of_no_mutant_is_refused(tmp_path: Path) -> None:
    d = _patch_dir(
        tmp_path,
        **{
            "demo.patch": patch_text(),
            "6.12__other.patch": patch_text(HEADER.replace("demo", "other")),
        },
    )
    with pytest.raises(ml.HeaderError, match="other.patch"):
        ml.load_mutants(d, "6.12")


def test_the_shipped_ports_are_of_shipped_mutants_and_change_their_diff() -> None:
    """Every series directory under tests/mutants ports existing mutants (the
    loader refuses an orphan), and a port differs from the 6.1 patch (else it is
    not needed)."""
    common = {m.name: m for m in ml.load_mutants()}
    dirs = [d for d in ml.patches_dir().iterdir() if d.is_dir() and d.name != "__pycache__"]
    assert {d.name for d in dirs} <= set(ml.SERIES)
    for d in dirs:
        for m in ml.load_mutants(series=d.name):
            if m.path is not None and m.path.parent == d:
                assert m.diff != common[m.name].diff, m.name
                assert m.must_catch == common[m.name].must_catch


def test_main_loads_the_ports_of_the_source_series(tmp_path: Path, capsys) -> None:
    d = _patch_dir(
        tmp_path,
        **{
            "demo.patch": patch_text(),
            "6.12__demo.patch": patch_text(HEADER.replace("a note", "the 6.12 port")),
        },
    )
    assert ml.main(["--patches", str(d), "--source", "6.12", "--list"]) == 0
    assert "demo" in capsys.readouterr().out
    (d / "6.12" / "demo.patch").write_text(patch_text(HEADER.replace("steal:cross-process", "x")))
    assert ml.main(["--patches", str(d), "--source", "6.12", "--list"]) == ml.EXIT_USAGE
    assert ml.main(["--patches", str(d), "--source", "6.1", "--list"]) == 0


# ---------------------------------------------------------------- cells from bisect JSON


def bisect_doc(**verdicts: str) -> dict:
    results = []
    for key, verdict in verdicts.items():
        fam, var = key.split("__")
        results.append(
            {
                "scenario": fam,
                "strategy": var.replace("_", "/"),
                "kind": "promise",
                "verdict": verdict,
                "observed": f"{verdict} seen",
            }
        )
    results.append(
        {
            "scenario": "steal",
            "strategy": "same-vm/new-thread",
            "kind": "characterize",
            "verdict": "characterized",
        }
    )
    return {"results": results}


def test_cells_from_bisect_json_for_a_mutant_and_the_control() -> None:
    doc = bisect_doc(
        steal__fresh_main="broken", steal__fresh_vcpu="holds", clock__warp="untestable"
    )
    m = ml.cells_from_bisect(doc, control=False)
    assert list(m) == ["steal:fresh/main", "steal:fresh/vcpu", "clock:warp"]  # no characterize
    assert [c.state for c in m.values()] == [ml.CAUGHT, ml.MISSED, ml.UNTESTABLE]
    c = ml.cells_from_bisect(doc, control=True)
    assert [x.state for x in c.values()] == [ml.FALSE_ALARM, ml.HOLDS, ml.UNTESTABLE]
    assert ml.cells_from_bisect(None, control=False) == {}


def test_several_boots_merge_as_any_catch_counts() -> None:
    merged = ml.merge_cells([ml.Cell(ml.MISSED, "holds"), ml.Cell(ml.CAUGHT, "broken", hits=1)])
    assert (merged.state, merged.runs, merged.hits) == (ml.CAUGHT, 2, 1)
    assert ml.cell_text(merged, must=True) == "caught 1/2*"
    assert ml.merge_cells([ml.Cell(ml.ERROR), ml.Cell(ml.MISSED)]).state == ml.MISSED


# ---------------------------------------------------------------- the matrix


def rows():
    m = ml.parse_patch(patch_text(), Path("demo.patch"))
    cols = ["steal:fresh-vm/main-thread", "steal:cross-process/main-thread", "steal:cancelled-save"]
    control = ml.Row("control", {c: ml.Cell(ml.HOLDS, "holds") for c in cols}, [0])
    caught = ml.Row(
        "demo",
        {
            cols[0]: ml.Cell(ml.CAUGHT, "broken", hits=1),
            cols[1]: ml.Cell(ml.CAUGHT, "broken", hits=1),
            cols[2]: ml.Cell(ml.MISSED, "holds"),
        },
        [1],
        m,
    )
    return cols, control, caught, m


def test_matrix_renders_a_row_per_build_and_a_column_per_scenario() -> None:
    cols, control, caught, _ = rows()
    text = ml.render_matrix([control, caught])
    lines = text.splitlines()
    assert any(
        line.startswith("control") and line.count("holds") == 3 and line.rstrip().endswith("ok")
        for line in lines
    )
    demo = next(line for line in lines if line.startswith("demo"))
    assert demo.count("caught*") == 2 and " missed " in demo and demo.rstrip().endswith("ok")
    assert "cancelled-save" in text and "main-thread" in text
    assert ml.matrix_exit([control, caught]) == ml.EXIT_OK


def test_a_missed_must_catch_cell_is_a_gap_and_exit_1() -> None:
    cols, control, caught, m = rows()
    missed = ml.Row("demo", dict(caught.cells), [0], m)
    missed.cells[cols[1]] = ml.Cell(ml.MISSED, "holds")
    text = ml.render_matrix([control, missed])
    assert "MISSED*" in text
    assert "GAP: steal:cross-process/main-thread" in text
    assert ml.matrix_exit([control, missed]) == ml.EXIT_GAP


def test_a_red_control_row_is_not_green() -> None:
    cols, control, caught, _ = rows()
    control.cells[cols[2]] = ml.Cell(ml.FALSE_ALARM, "broken", hits=1)
    assert ml.render_matrix([control, caught]).count("NOT GREEN: steal:cancelled-save") == 1
    assert ml.matrix_exit([control, caught]) == ml.EXIT_GAP


def test_an_untestable_control_cell_is_no_false_alarm_but_no_kill_either() -> None:
    """frequency needs KVM_CAP_TSC_CONTROL, which TCG's SVM lacks: the control
    is green without it, and a mutant that must be caught there is a gap."""
    cols, control, caught, m = rows()
    control.cells[cols[2]] = ml.Cell(ml.UNTESTABLE, "untestable")
    assert control.status(cols) == "ok"
    assert cols[2] in ml.red_columns([control, caught], cols)
    caught.cells[cols[0]] = ml.Cell(ml.UNTESTABLE, "untestable")
    assert caught.status(cols).startswith("GAP: steal:fresh-vm/main-thread")
    assert ml.matrix_exit([control, caught]) == ml.EXIT_GAP
    caught.cells[cols[0]] = ml.Cell(ml.CAUGHT, "broken", hits=1)
    assert ml.matrix_exit([control, caught]) == ml.EXIT_OK


def test_an_error_cell_in_a_must_catch_column_is_a_gap_not_a_kill() -> None:
    cols, control, caught, m = rows()
    caught.cells[cols[0]] = ml.Cell(ml.ERROR, "untestable")
    assert caught.status(cols) == "GAP: steal:fresh-vm/main-thread"
    assert "error (untestable)*" in ml.render_matrix([control, caught])


def test_a_build_without_verdicts_is_exit_3() -> None:
    cols, control, caught, m = rows()
    broken = ml.Row("demo", {}, [125], m, error="no verdicts")
    assert ml.matrix_exit([control, broken]) == ml.EXIT_ERROR
    assert "error: no verdicts" in ml.render_matrix([control, broken], cols)


def test_matrix_json_round_trips_through_render(tmp_path: Path) -> None:
    cols, control, caught, m = rows()
    doc = ml.matrix_json([control, caught], {"release": "x"})
    assert doc["columns"] == cols and doc["exit"] == 0
    assert doc["rows"][1]["mutant"]["must_catch"] == [str(s) for s in m.must_catch]
    back = ml.rows_from_json(json.loads(json.dumps(doc)))
    assert ml.render_matrix(back, doc["columns"]) == ml.render_matrix([control, caught])


def test_cli_list_and_bad_patch_dir_need_no_kernel(tmp_path: Path) -> None:
    bad = tmp_path / "x.patch"
    bad.write_text("Mutant: x\n" + DIFF)
    r = subprocess.run(
        [str(SCRIPTS / "mutants"), "--patches", str(tmp_path), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == ml.EXIT_USAGE and "lacks Seed-bug" in r.stderr
    r = subprocess.run(
        [str(SCRIPTS / "mutants"), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "steal-last-steal-from-writer" in r.stdout


def test_focus_runs_a_mutants_families_and_the_control_their_union() -> None:
    steal = ml.parse_patch(patch_text(), Path("demo.patch"))
    clock = ml.parse_patch(
        patch_text(HEADER.replace("steal:fresh-vm/main-thread, steal:cross-process", "clock:warp"))
    )
    assert ml.focus_args(steal, [None, steal, clock], [], full=False) == ["--scenario", "steal"]
    assert ml.focus_args(None, [None, steal, clock], ["-q"], full=False) == [
        "-q",
        "--scenario",
        "clock,steal",
    ]
    assert ml.focus_args(steal, [steal], [], full=True) == []
    assert ml.focus_args(steal, [steal], ["--scenario", "clock"], full=False) == [
        "--scenario",
        "clock",
    ]


def test_a_multi_threaded_mutant_boots_so_and_the_control_again_with_its_families() -> None:
    """A mutant whose header says Tcg-threads: multi boots under multi-threaded
    TCG; the control boots single-threaded with every family and then
    multi-threaded with those mutants' families, so their cells have a control
    on the same platform; without such a mutant, the control boots once."""
    steal = ml.parse_patch(patch_text(), Path("demo.patch"))
    clock = ml.parse_patch(
        patch_text(
            HEADER.replace("steal:fresh-vm/main-thread, steal:cross-process", "clock:updates")
            + "Tcg-threads: multi\n"
        )
    )
    assert ml.boot_plans(clock, [None, steal, clock], [], full=False) == [
        (["--scenario", "clock"], "multi")
    ]
    assert ml.boot_plans(steal, [None, steal, clock], [], full=False) == [
        (["--scenario", "steal"], "single")
    ]
    assert ml.boot_plans(None, [None, steal, clock], ["-q"], full=False) == [
        (["-q", "--scenario", "clock,steal"], "single"),
        (["-q", "--scenario", "clock"], "multi"),
    ]
    assert ml.boot_plans(None, [None, steal], [], full=False) == [
        (["--scenario", "steal"], "single")
    ]
    assert ml.record_name("control", 1, 1, ["clock"], "multi") == "control.clock.mttcg.json.gz"
    assert ml.record_name("control", 2, 3, ["clock"], "multi") == "control.clock.mttcg-2.json.gz"
    assert ml.record_name("control", 1, 1, ["clock"]) == "control.clock.json.gz"


@pytest.mark.parametrize(
    "rc, mutant_state, control_state, verdict",
    [
        (0, "missed", "holds", "pass"),
        (1, "caught", "false alarm", "fail (1)"),
        (4, "error", "error", "skip"),
        (None, "error", "error", "timeout"),
        (-1, "error", "error", "exit -1"),
        (-9, "error", "error", "exit -9"),
        (254, "caught", "false alarm", "fail (254)"),
    ],
)
def test_selftest_exits_become_cells(rc, mutant_state, control_state, verdict) -> None:
    s = {"name": "steal_time", "exit": rc, "tail": "x"}
    assert (
        ml.selftest_cell(s, control=False).state,
        ml.selftest_cell(s, control=False).verdict,
    ) == (mutant_state, verdict)
    assert ml.selftest_cell(s, control=True).state == control_state
    cells = ml.cells_from_bisect({"results": [], "selftests": [s]}, control=False)
    assert list(cells) == ["selftest:steal_time"]


def test_run_child_ends_the_whole_group_on_timeout(tmp_path: Path) -> None:
    """A build or boot past its timeout leaves no process behind (here a shell
    whose own child would otherwise outlive it)."""
    pidfile = tmp_path / "pid"
    rc = ml.run_child(
        ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
        log_path=tmp_path / "log",
        timeout=1.0,
    )
    assert rc == -1
    assert "timeout after 1 s" in (tmp_path / "log").read_text()
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"sleep {pid} outlived run_child's timeout")


def test_sigterm_exits_143_and_ends_the_child(tmp_path: Path) -> None:
    """SIGTERM while a child runs: scripts/mutants exits 128+15 and the child is gone."""
    pidfile = tmp_path / "pid"
    code = (
        "import sys; from kvmharness.tools import mutants as ml\n"
        "from pathlib import Path\n"
        "try:\n"
        "    with ml.signals_raise():\n"
        f"        ml.run_child(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60'],\n"
        f"                     log_path=Path({str(tmp_path / 'log')!r}), timeout=60)\n"
        "except ml.Interrupted as exc:\n"
        "    sys.exit(128 + exc.signum)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert (
        not Path(f"/proc/{child}").exists()
        or Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z"
    )


def test_render_rescores_from_the_saved_bisect_json(tmp_path: Path) -> None:
    cols, control, caught, m = rows()
    stale = ml.Row("demo", {"selftest:steal_time": ml.Cell(ml.ERROR, "exit 254")}, [1], m)
    (tmp_path / "bisect-demo-1.json").write_text(
        json.dumps({"results": [], "selftests": [{"name": "steal_time", "exit": 254}]})
    )
    (tmp_path / "bisect-demo-extra-1.json").write_text("{}")  # another build's file
    fresh = ml.rescore(tmp_path, [control, stale])
    assert fresh[0] is control
    assert fresh[1].cells["selftest:steal_time"].state == ml.CAUGHT


def test_a_must_catch_scenario_that_did_not_run_is_a_gap() -> None:
    cols, control, caught, m = rows()
    only = {cols[0]: caught.cells[cols[0]]}
    row = ml.Row("demo", only, [1], m)
    assert row.status([cols[0]]) == "GAP: steal:cross-process (not run)"


def test_a_catch_where_the_control_broke_too_is_no_kill() -> None:
    cols, control, caught, _ = rows()
    control.cells[cols[0]] = ml.Cell(ml.FALSE_ALARM, "broken", hits=1)
    text = ml.render_matrix([control, caught])
    demo = next(line for line in text.splitlines() if line.startswith("demo"))
    assert "caught (ctl red)*" in demo
    assert (
        caught.status(cols, ml.red_columns([control, caught], cols))
        == "GAP: steal:fresh-vm/main-thread (control not green)"
    )
    assert ml.red_columns([caught], cols) == []  # no control row: nothing to compare


# ---------------------------------------------------------------- one Debian kernel version

POLICY = """linux-source-6.1:
  Installed: 6.1.192-2
  Candidate: 6.1.192-3
  Version table:
     6.1.192-3 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 6.1.192-2 100
        100 /var/lib/dpkg/status
"""

MADISON = """linux-headers-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security x
linux-headers-6.1.0-57-amd64 |  6.1.192-3 | http://deb.debian.org/debian-security x
linux-headers-6.1.0-57-cloud-amd64 |  6.1.192-3 | http://deb.debian.org/debian-security x
linux-headers-6.1.0-57-common |  6.1.192-3 | http://deb.debian.org/debian-security x
"""


class FakeApt(ml.Apt):
    def __init__(self, policy: str = POLICY, madison: str = MADISON) -> None:
        self.policy_text, self.madison_text = policy, madison

    def policy(self, pkg: str) -> tuple[str | None, str | None]:
        assert pkg == "linux-source-6.1"
        return ml.parse_policy(self.policy_text)

    def versions(self, prefix: str) -> dict[str, set[str]]:
        assert prefix == "linux-headers-6.1."
        return ml.parse_versions(self.madison_text)


def test_policy_gives_installed_and_candidate() -> None:
    assert ml.parse_policy(POLICY) == ("6.1.192-2", "6.1.192-3")
    assert ml.parse_policy("x:\n  Installed: (none)\n  Candidate: (none)\n") == (None, None)


def test_the_version_is_the_sources_candidate_and_the_release_its_headers() -> None:
    """The mirror's source is 6.1.192-3, so the headers (and image) are 6.1.0-57's,
    not the -56 that an older source went with, and not the cloud flavour."""
    k = ml.find_kernel_set(ml.SERIES["6.1"], apt=FakeApt())
    assert (k.version, k.release) == ("6.1.192-3", "6.1.0-57-amd64")
    assert k.headers_pkg == "linux-headers-6.1.0-57-amd64"
    assert k.image_pkg == "linux-image-6.1.0-57-amd64"
    assert "linux-source-6.1=6.1.192-3" in k.apt_packages()
    assert "linux-headers-6.1.0-57-amd64=6.1.192-3" in k.apt_packages()
    older = ml.find_kernel_set(ml.SERIES["6.1"], "6.1.192-2", apt=FakeApt())
    assert older.release == "6.1.0-56-amd64"


def test_a_source_version_without_its_headers_is_refused() -> None:
    """The mirror moved the source on (-4) before the headers: no guess of an ABI."""
    apt = FakeApt(policy=POLICY.replace("Candidate: 6.1.192-3", "Candidate: 6.1.192-4"))
    with pytest.raises(ml.VersionError, match="no headers package of version 6.1.192-4"):
        ml.find_kernel_set(ml.SERIES["6.1"], apt=apt)
    with pytest.raises(ml.VersionError, match="neither installed nor"):
        ml.find_kernel_set(ml.SERIES["6.1"], apt=FakeApt(policy="linux-source-6.1:\n"))


def test_the_6_12_series_finds_its_own_release() -> None:
    madison = (
        "linux-headers-6.12.117+deb12-amd64 | 6.12.117-1~deb12u1 | x\n"
        "linux-headers-6.12.118+deb12-amd64 | 6.12.118-1~deb12u1 | x\n"
    )
    versions = ml.parse_versions(madison)
    assert (
        ml.release_for(ml.SERIES["6.12"], "6.12.118-1~deb12u1", versions) == "6.12.118+deb12-amd64"
    )
    with pytest.raises(ml.VersionError):
        ml.release_for(ml.SERIES["6.1"], "6.12.118-1~deb12u1", versions)


KSET = ml.KernelSet(ml.SERIES["6.1"], "6.1.192-3", "6.1.0-57-amd64")


def test_parts_of_one_version_pass_and_a_mismatch_is_refused_naming_it() -> None:
    good = [
        ml.Found("source linux-source-6.1", "6.1.192-3"),
        ml.Found("headers tree", "6.1.192-3", "6.1.0-57-amd64"),
        ml.Found("image", "6.1.192-3", "6.1.0-57-amd64"),
    ]
    ml.check_kernel_set(KSET, good)
    # the case this replaces: 6.1.192-3 source built against 6.1.192-2 (-56) headers
    bad = [good[0], ml.Found("headers tree", "6.1.192-2", "6.1.0-56-amd64"), good[2]]
    with pytest.raises(ml.VersionError) as exc:
        ml.check_kernel_set(KSET, bad)
    text = str(exc.value)
    assert "headers tree: 6.1.0-56-amd64, Debian 6.1.192-2  <- differs" in text
    assert "image: 6.1.0-57-amd64, Debian 6.1.192-3\n" in text + "\n"
    assert "apt-get install linux-source-6.1=6.1.192-3" in text
    assert "linux-image-6.1.0-57-amd64=6.1.192-3 package is fetched" in text  # the image's fix
    # same Debian version, other release; and an unknown version
    with pytest.raises(ml.VersionError):
        ml.check_kernel_set(KSET, [ml.Found("image", "6.1.192-3", "6.1.0-57-cloud-amd64")])
    with pytest.raises(ml.VersionError, match="unknown"):
        ml.check_kernel_set(KSET, [ml.Found("source", None)])


def fake_bzimage(path: Path, version: str) -> Path:
    data = bytearray(0x4000)
    data[0x202:0x206] = b"HdrS"
    off = 0x3000
    data[0x20E:0x210] = (off - 0x200).to_bytes(2, "little")
    data[off : off + len(version) + 1] = version.encode() + b"\0"
    path.write_bytes(bytes(data))
    return path


def test_an_images_release_and_debian_version_come_from_its_setup_header(
    tmp_path: Path,
) -> None:
    img = fake_bzimage(
        tmp_path / "vmlinuz",
        "6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC "
        "Debian 6.1.192-3 (2026-11-26)",
    )
    assert ml.image_version(img) == ("6.1.0-57-amd64", "6.1.192-3")
    own = fake_bzimage(tmp_path / "own", "6.1.0-57-amd64 (me@host) #2 SMP")
    assert ml.image_version(own) == ("6.1.0-57-amd64", None)
    (tmp_path / "junk").write_bytes(b"\0" * 0x1000)
    assert ml.image_version(tmp_path / "junk") == (None, None)
    # find_image refuses an image of another version than the headers
    with pytest.raises(ml.VersionError, match="<- differs"):
        ml.find_image(tmp_path, own, KSET)
    assert ml.find_image(tmp_path, img, KSET) == img


def test_headers_tree_version_and_the_installed_parts_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kset = ml.KernelSet(ml.SERIES["6.1"], "6.1.192-3", "6.1.0-57-amd64", usr_src=tmp_path)
    gen = kset.headers / "include" / "generated"
    gen.mkdir(parents=True)
    (gen / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-57-amd64"\n')
    (gen / "package.h").write_text('#define LINUX_PACKAGE_ID " Debian 6.1.192-3"\n')
    assert ml.headers_version(kset.headers) == ("6.1.0-57-amd64", "6.1.192-3")
    versions = {"linux-source-6.1": "6.1.192-3", "linux-headers-6.1.0-57-amd64": "6.1.192-3"}
    monkeypatch.setattr(ml, "installed_version", versions.get)
    ml.check_build_parts(kset)
    versions["linux-source-6.1"] = "6.1.192-2"  # the source floated, the headers did not
    with pytest.raises(ml.VersionError, match="source linux-source-6.1: -, Debian 6.1.192-2"):
        ml.check_build_parts(kset)
    versions["linux-source-6.1"] = "6.1.192-3"
    (gen / "package.h").write_text('#define LINUX_PACKAGE_ID " Debian 6.1.192-2"\n')
    with pytest.raises(ml.VersionError, match="headers tree"):
        ml.check_build_parts(kset)


def test_source_makefile_version() -> None:
    mk = "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\n"
    assert ml.source_makefile_version(mk) == "6.1.192"
    assert ml.source_makefile_version("VERSION = 6\n") is None
    assert KSET.upstream == "6.1.192"


def test_main_refuses_a_mismatch_with_exit_3_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ml, "Apt", FakeApt)
    monkeypatch.setattr(ml, "ensure_packages", lambda kset: None)
    monkeypatch.setattr(
        ml,
        "installed_version",
        {"linux-source-6.1": "6.1.192-3", "linux-headers-6.1.0-57-amd64": "6.1.192-2"}.get,
    )
    built = []
    monkeypatch.setattr(ml, "build", lambda *a, **k: built.append(a))
    rc = ml.main(["--build-only", "--work", str(tmp_path)])
    assert rc == ml.EXIT_ERROR
    assert not built
    err = capsys.readouterr().err
    assert "refusing to build or boot" in err and "linux-headers-6.1.0-57-amd64" in err


# ---------------------------------------------------------------- --record


def test_record_writes_each_boots_bisect_json_gzipped_and_an_index(tmp_path: Path) -> None:
    import gzip

    doc = bisect_doc(steal__fresh_vm_main_thread="broken")
    clock_doc = {"results": [{"family": "clock", "variant": "updates", "verdict": "holds"}]}
    m = ml.parse_patch(patch_text(), Path("demo.patch"))
    boots = [
        ml.Boot(1, doc, 30.0, 80.0, tmp_path / "log"),
        ml.Boot(125, None, None, 10.0, tmp_path / "log"),
    ]
    dest = tmp_path / "corpus"
    assert ml.families_of(doc) == ["steal"]
    assert ml.record_name("demo", 1, 1, ["steal"]) == "demo.steal.json.gz"
    p1 = ml.record_boot(dest, "demo", 1, 2, boots[0])
    assert p1 == dest / "demo.steal-1.json.gz"
    assert json.loads(gzip.decompress(p1.read_bytes())) == doc
    first = p1.read_bytes()
    ml.record_boot(dest, "demo", 1, 2, boots[0])
    assert p1.read_bytes() == first  # the same record gives the same bytes
    assert ml.record_boot(dest, "demo", 2, 2, boots[1]) is None
    row = ml.row_from_boots("demo", m, boots, 12.0)
    ml.write_record_index(
        dest, [row], KSET, Path("/img"), {"demo": ["--scenario", "steal"]}, {"demo": [p1.name]}
    )
    index = json.loads((dest / "index.json").read_text())
    assert index["kernel"] == {
        "series": "6.1",
        "version": "6.1.192-3",
        "release": "6.1.0-57-amd64",
        "image": "/img",
    }
    (b,) = index["builds"]
    assert b["records"] == ["demo.steal-1.json.gz"]
    assert b["exit_codes"] == [1, 125]
    assert b["bisect_args"] == ["--scenario", "steal"]
    assert b["mutant"]["must_catch"] == ["steal:fresh-vm/main-thread", "steal:cross-process"]
    # the control booted for clock in one run and for steal in another: two
    # records, two entries, neither overwrites the other
    c1 = ml.record_boot(dest, ml.CONTROL, 1, 1, ml.Boot(0, clock_doc, 1.0, 2.0, tmp_path))
    c2 = ml.record_boot(dest, ml.CONTROL, 1, 1, boots[0])
    assert (c1.name, c2.name) == ("control.clock.json.gz", "control.steal.json.gz")
    ctl = ml.row_from_boots(ml.CONTROL, None, [boots[0]], 1.0)
    for args, rec in ((["-s", "clock"], c1.name), (["-s", "steal"], c2.name)):
        ml.write_record_index(
            dest, [ctl], KSET, Path("/img"), {ml.CONTROL: args}, {ml.CONTROL: [rec]}
        )
    builds = json.loads((dest / "index.json").read_text())["builds"]
    assert [(b["build"], b["records"]) for b in builds] == [
        ("demo", ["demo.steal-1.json.gz"]),
        (ml.CONTROL, ["control.clock.json.gz"]),
        (ml.CONTROL, ["control.steal.json.gz"]),
    ]
    # the same build with the same arguments replaces its entry
    ml.write_record_index(
        dest, [ctl], KSET, Path("/img"), {ml.CONTROL: ["-s", "steal"]}, {ml.CONTROL: []}
    )
    builds = json.loads((dest / "index.json").read_text())["builds"]
    assert [b["records"] for b in builds] == [
        ["demo.steal-1.json.gz"],
        ["control.clock.json.gz"],
        [],
    ]
    # an entry says when its build booted and at which commit, not when the
    # index was last rewritten (after every later boot of the run)
    early = {"harness_commit": "a" * 40, "taken": "2026-01-01T00:00:00Z"}
    ml.write_record_index(dest, [row, ctl], KSET, Path("/img"), {}, {}, {"demo": early})
    demo, control = json.loads((dest / "index.json").read_text())["builds"][-2:]
    assert (demo["build"], demo["harness_commit"], demo["taken"]) == (
        "demo",
        "a" * 40,
        "2026-01-01T00:00:00Z",
    )
    assert control["taken"] > early["taken"]  # no stamp: now
    assert set(ml.boot_stamp()) == {"harness_commit", "taken"}
    # an index of another kernel is replaced
    other = ml.KernelSet(ml.SERIES["6.1"], "6.1.192-4", "6.1.0-58-amd64")
    ml.write_record_index(dest, [ctl], other, Path("/img"), {}, {})
    assert [b["build"] for b in json.loads((dest / "index.json").read_text())["builds"]] == [
        ml.CONTROL
    ]


def test_schema_2_records_name_family_and_variant_and_not_supported_is_no_kill() -> None:
    """``kvmharness bisect --json`` of schema 2 says family/variant (not
    scenario/strategy) and may say "not supported"."""
    doc = {
        "results": [
            {"family": "clock", "variant": "updates", "kind": "promise", "verdict": v}
            for v in ("not supported",)
        ]
        + [
            {
                "family": "clock",
                "variant": "restore/downtime",
                "kind": "promise",
                "verdict": "holds",
            },
            {"family": "postcopy", "variant": "postcopy/stream", "verdict": "broken"},
        ]
    }
    assert ml.columns_of(doc["results"]) == [
        "clock:updates",
        "clock:restore/downtime",
        "postcopy:stream",
    ]
    ctl = ml.cells_from_bisect(doc, control=True)
    mut = ml.cells_from_bisect(doc, control=False)
    assert ctl["clock:updates"].state == ml.NOT_SUPPORTED
    assert mut["clock:updates"].state == ml.NOT_SUPPORTED
    assert mut["postcopy:stream"].state == ml.CAUGHT
    m = ml.parse_patch(
        patch_text(
            HEADER.replace("steal:fresh-vm/main-thread, steal:cross-process", "clock:updates")
        )
    )
    ctl["postcopy:stream"] = ml.Cell(ml.HOLDS, "holds")
    rows = [ml.Row(ml.CONTROL, ctl, [0]), ml.Row("demo", mut, [0], m)]
    cols = ml.matrix_columns(rows)
    assert rows[0].status(cols) == "ok"  # not supported on the control is no false alarm
    # but a mutant that turns its Must-catch promise "not supported" is not caught
    assert rows[1].status(cols).startswith("GAP: clock:updates")
    assert ml.matrix_exit(rows) == ml.EXIT_GAP


@pytest.mark.parametrize("tcg", ["single", "multi"])
def test_a_boot_passes_its_threading_to_bisect_kernel(tmp_path: Path, monkeypatch, tcg) -> None:
    """Under multi-threaded TCG a boot asks bisect-kernel for it and for retries
    of a frozen kernel; single-threaded it asks for neither (bisect-kernel's
    default), and the boot keeps its threading for the record's name."""
    seen: list[list[str]] = []

    def fake_run_child(cmd, **kw):
        seen.append(list(cmd))
        return 0

    monkeypatch.setattr(ml, "run_child", fake_run_child)
    b = ml.boot(
        tmp_path,
        tmp_path / "vmlinuz",
        "demo",
        tmp_path,
        timeout=60,
        bisect_args=["-q"],
        attempt=1,
        tcg_threads=tcg,
    )
    cmd = seen[0]
    assert b.tcg_threads == tcg and b.doc is None
    if tcg == "multi":
        i = cmd.index("--tcg-threads")
        assert cmd[i : i + 4] == ["--tcg-threads", "multi", "--retries", str(ml.MULTI_TCG_RETRIES)]
        assert cmd.index("--retries") < cmd.index("--")
    else:
        assert "--tcg-threads" not in cmd and "--retries" not in cmd


def test_the_image_folder_has_no_character_vng_refuses() -> None:
    name = ml.image_dir_name("linux-image-6.12.118+deb12-amd64", "6.12.118-1~deb12u1")
    assert name == "linux-image-6.12.118+deb12-amd64_6.12.118-1_deb12u1"
    assert ml.image_dir_name("linux-image-6.1.0-57-amd64", "6.1.192-3") == (
        "linux-image-6.1.0-57-amd64_6.1.192-3"
    )
    assert ml.image_dir_name("p", "1:2.0") == "p_1_2.0"
