"""``kvmharness sweep`` without booting anything: argument parsing, version
order, first-change detection, the per-kernel cache, the report from saved
per-kernel records (tests/corpus/stock), exit codes and SIGTERM.  The kernel
boot is tests/sweep/fake_bisect_kernel.py, which answers as bisect-kernel
does from the corpus's real run documents."""

from __future__ import annotations

import copy
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kvmharness.cli import main
from kvmharness.exitcodes import UsageError
from kvmharness.sweep import kernels, runner, summary
from kvmharness.sweep.report import html_report, text_report

ROOT = Path(__file__).resolve().parent.parent
STOCK = ROOT / "tests" / "corpus" / "stock"
DOC_61 = STOCK / "svm-6.1.0-57-amd64-bisect.json.gz"
DOC_612 = STOCK / "svm-6.12.118+deb12-amd64-bisect.json.gz"
FAKE = f"{sys.executable} {ROOT / 'tests' / 'sweep' / 'fake_bisect_kernel.py'}"


def load(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def fake_kernel(root: Path, release: str, version: str | None = None) -> Path:
    """An unpacked 'package': boot/vmlinuz-R with an x86 setup header naming R."""
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    s = f"{release} (debian-kernel@lists.debian.org) #1 SMP".encode() + b"\0"
    head[0x400 : 0x400 + len(s)] = s
    struct.pack_into("<H", head, 0x20E, 0x200)
    d = root / f"linux-image-{release}"
    (d / "boot").mkdir(parents=True)
    (d / "boot" / f"vmlinuz-{release}").write_bytes(bytes(head))
    if version:
        doc = d / "usr" / "share" / "doc" / f"linux-image-{release}"
        doc.mkdir(parents=True)
        with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
            f.write(f"linux ({version}-1) bookworm-security; urgency=high\n")
    return d


def record(label: str, doc: dict[str, Any] | None, code: int = 0) -> dict[str, Any]:
    return summary.kernel_record(
        {"release": label + "-amd64", "version": None, "label": label, "image": "x", "source": ""},
        exit_code=code,
        why="good" if doc else "the kernel did not reach user space",
        doc=doc,
        timing={"total_s": 300.0},
        date="2026-12-03T22:00:00+00:00",
        harness={"version": "0.1.0", "revision": None},
        profile=[],
        run_json=None,
    )


# -- inputs and order ---------------------------------------------------------


def test_version_key_orders_debian_releases_as_people_read_them():
    names = ["6.12.118+deb12-amd64", "6.1.0-57-amd64", "6.1.0-9-amd64", "6.1.0-47-amd64"]
    assert sorted(names, key=kernels.version_key) == [
        "6.1.0-9-amd64",
        "6.1.0-47-amd64",
        "6.1.0-57-amd64",
        "6.12.118+deb12-amd64",
    ]
    # a plain string sort would put 6.12 before 6.1.0-9 and -47 before -9
    assert sorted(names) != sorted(names, key=kernels.version_key)
    assert kernels.version_key("6.13~rc1") < kernels.version_key("6.13")


def test_inputs_resolve_to_kernels_sorted_by_package_version(tmp_path):
    a = fake_kernel(tmp_path, "6.1.0-50-amd64", "6.1.176")
    b = fake_kernel(tmp_path, "6.12.118+deb12-amd64", "6.12.118")
    c = fake_kernel(tmp_path, "6.1.0-47-amd64", "6.1.170")
    image = c / "boot" / "vmlinuz-6.1.0-47-amd64"
    ks = kernels.resolve_all([str(b), str(a), str(image), str(c)], tmp_path / "cache")
    assert [k.release for k in ks] == ["6.1.0-47-amd64", "6.1.0-50-amd64", "6.12.118+deb12-amd64"]
    assert ks[0].version == "6.1.170" and ks[0].label == "6.1.0-47 (6.1.170)"
    assert ks[2].label == "6.12.118+deb12"  # the version says nothing more


def test_bad_inputs_are_usage_errors(tmp_path):
    (tmp_path / "notakernel").write_bytes(b"\0" * 4096)
    with pytest.raises(UsageError, match="setup header"):
        kernels.resolve(str(tmp_path / "notakernel"), tmp_path)
    with pytest.raises(UsageError, match="no boot/vmlinuz"):
        kernels.resolve(str(tmp_path), tmp_path)
    with pytest.raises(UsageError, match="not a Debian package name"):
        kernels.resolve("/no/such/dir", tmp_path)
    with pytest.raises(UsageError, match="at least one kernel"):
        kernels.resolve_all([], tmp_path)


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["sweep", "/no/such/kernel", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/no/such/kernel" in err[0]
    assert main(["sweep", "--cache", str(tmp_path)]) == 2


def test_default_profile_names_only_selectable_scenarios():
    from kvmharness.cli.run import select_named
    from kvmharness.cli.sweep import default_profile

    plan, named = select_named([default_profile()[1]], bisect=True)
    chosen = {(f.name, v) for f, vs in plan for v in vs}
    assert ("steal", "same-vm/new-thread") in chosen  # the thread hop finding
    assert ("steal", "fresh-vm/reused-thread") in chosen  # the reused thread finding
    assert ("clock", "tsc/msr") in chosen  # the TSC skew finding
    assert all(hits for _, hits in named)


# -- what changed from kernel to kernel ---------------------------------------


def test_first_change_names_the_kernel_and_the_scenario():
    good = load(DOC_61)
    bad = copy.deepcopy(good)
    r = next(x for x in bad["results"] if x["variant"] == "cancelled-save")
    r["verdict"] = "broken"
    recs = [record("6.1.0-47", good), record("6.1.0-50", good), record("6.1.0-53", bad)]
    recs.append(record("6.1.0-54", bad))
    _, changes = summary.first_changes(recs)
    assert [(c.scenario, c.previous, c.kernel) for c in changes] == [
        ("steal/cancelled-save@2", "6.1.0-50", "6.1.0-53")
    ]
    assert changes[0].before.startswith("holds") and changes[0].after.startswith("broken")


def test_first_change_skips_kernels_that_could_not_be_tested():
    good = load(DOC_61)
    recs = [record("6.1.0-47", good), record("6.1.0-50", None, 125), record("6.1.0-53", good)]
    assert summary.first_changes(recs)[1] == []


def test_a_figure_change_is_a_change_the_same_verdict_hides():
    """A kernel that stops charging a reused thread's whole run_delay still
    'characterizes'; its steal figure changes kind."""
    a = {"ratio": None, "shape": "+rd"}
    assert summary.figure_changed(a, {"ratio": None, "shape": "other"})
    assert not summary.figure_changed(a, {"ratio": None, "shape": "+rd"})
    assert not summary.figure_changed(a, None)


def test_steal_kind_is_exact_physics():
    # charged at entry, between the runner's run_delay before and after KVM_RUN
    assert summary.steal_kinds(100, 150, 50, 60) == [summary.CHARGES_RD]
    assert summary.steal_kinds(100, 55, 50, 60) == [summary.STEAL_IS_RD]  # a hop
    assert summary.steal_kinds(100, 120, 50, 60) == [summary.OTHER]  # 20 charged: a part
    assert summary.steal_kinds(0, 55, 50, 60) == [summary.CHARGES_RD, summary.STEAL_IS_RD]


def test_a_vcpu_with_no_steal_before_fits_either_kind():
    """6.1.0-57's thread hop: vCPU 1 had no steal before the hop, so '+rd' and
    '=rd' are the same reading there; that is no change from a kernel whose
    vCPU 1 had some."""
    a = {"shape": "=rd", "kinds": [["=rd"], ["=rd"]], "fell": True}
    b = {"shape": "=rd", "kinds": [["=rd"], ["+rd", "=rd"]], "fell": True}
    assert not summary.figure_changed(a, b)
    assert summary.figure_changed(a, {**b, "kinds": [["=rd"], ["+rd"]]})
    assert summary.figure_changed(a, {**a, "fell": False})


def test_real_records_6_1_to_6_12_master_clock_lost_at_cross_process_restore():
    """The stock 6.1.0-57 and 6.12.118 records: every promise holds on both,
    and the one difference is that 6.12 loses the master clock across the
    cross-process restore (KVM_CLOCK_TSC_STABLE gone after it)."""
    recs = [record("6.1.0-57", load(DOC_61)), record("6.12.118", load(DOC_612))]
    _, changes = summary.first_changes(recs)
    assert [(c.scenario, c.kernel) for c in changes] == [
        ("clock/restore/cross-process/main-thread@2", "6.12.118")
    ]
    assert "master clock lost" in changes[0].after and "kept" in changes[0].before


def test_steal_figures_of_real_records():
    """On the stock records: a new vCPU charges its runner's whole run_delay,
    a vCPU restored in place keeps steal = its thread's run_delay, and the
    thread hop makes steal the new thread's run_delay, falling."""
    doc = load(DOC_61)
    fig = {r["variant"]: summary.figure_of(r) for r in doc["results"] if r["family"] == "steal"}
    assert fig["fresh-vm/vcpu-thread"]["shape"] == "+rd"
    assert fig["cancelled-save"]["shape"] == "=rd"
    pvm = load(STOCK / "pvm-6.18.44-fc-v1252-run.json.gz")
    hop = next(
        r for r in pvm["results"] if r["variant"] == "same-vm/new-thread" and r["vcpus"] == 2
    )
    fig = summary.figure_of(hop)
    assert (fig["shape"], fig["fell"]) == ("=rd", True)
    assert fig["text"] == "steal fell; steal = the runner's run_delay"
    # a simulated kernel that charges only the growth since the restore: 'other'
    reused = copy.deepcopy(
        next(r for r in pvm["results"] if r["variant"] == "fresh-vm/reused-thread")
    )
    ev = reused["records"][0]["events"]
    b = reused["records"][0]["boundary"]
    assert summary.figure_of(reused)["shape"] == "+rd"
    k = _event_at(reused["records"][0], b)
    ev["guest_value"][k] -= 50_000_000  # 50 ms less charged at the boundary
    ev["guest_value"][k + 1] += 50_000_000 if k + 1 < len(ev["guest_value"]) else 0
    assert summary.figure_of(reused)["shape"] != "+rd"


def _event_at(rec: dict[str, Any], index: int) -> int:
    """The event column position of reading ``index`` (quiet readings are not events)."""
    i = -1
    for k, q in enumerate(rec["events"]["quiet_before"]):
        i += q + 1
        if i == index:
            return k
    raise AssertionError(f"reading {index} is not an event")


# -- the report ---------------------------------------------------------------


def test_report_has_kernels_as_columns_and_says_why_one_could_not_boot(tmp_path):
    recs = [record("6.1.0-47", load(DOC_61)), record("6.1.0-50", None, 125)]
    recs.append(record("6.12.118", load(DOC_612)))
    text = text_report(recs)
    head = text.splitlines()[2]
    assert head.index("6.1.0-47") < head.index("6.1.0-50") < head.index("6.12.118")
    assert "6.1.0-50: cannot test: the kernel did not reach user space" in text
    page = html_report(recs)
    for label in ("6.1.0-47", "6.1.0-50", "6.12.118"):
        assert f">{label}<br>" in page
    assert "cannot test: the kernel did not reach user space" in page
    assert "class='holds changed'" in page  # the 6.12 master-clock change is framed


def test_render_from_history_sorts_by_version_and_exits_by_cells(tmp_path):
    good, bad = load(DOC_61), load(DOC_61)
    # a run file of before the words were unified: BROKEN is read as broken
    next(x for x in bad["results"] if x["family"] == "clock")["verdict"] = "BROKEN"
    hist = tmp_path / "h.jsonl"
    recs = [record("6.12.118", load(DOC_612)), record("6.1.0-9", good)]
    hist.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    assert main(["sweep", "--render", str(hist), "--out", str(out)]) == 0
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["kernel"]["label"] for x in lines] == ["6.1.0-9", "6.12.118"]
    assert (out / "index.html").read_text().startswith("<!DOCTYPE html>")
    hist.write_text(json.dumps(record("6.1.0-9", bad)) + "\n")
    assert main(["sweep", "--render", str(hist), "--out", str(out)]) == 1
    old = record("6.1.0-9", good)  # a history written before the words were unified
    old["scenarios"][0]["status"] = "BROKEN"
    hist.write_text(json.dumps(old) + "\n")
    assert main(["sweep", "--render", str(hist), "--out", str(out)]) == 1
    hist.write_text(json.dumps(record("6.1.0-9", None, 125)) + "\n")
    assert main(["sweep", "--render", str(hist), "--out", str(out)]) == 125
    hist.write_text("{not json\n")
    assert main(["sweep", "--render", str(hist), "--out", str(out)]) == 2


def test_progress_line_says_kernel_step_time_so_far_and_left():
    p = runner.Progress(total=3, default_kernel_s=300.0, started=0.0)
    p.begin(2, "6.1.0-50")
    p.kernel_started = 60.0
    p.durations = [240.0]
    line = p.line("booting", now=120.0)
    # 2 min so far; the current kernel has 240 - 60 s left, then one more of 240 s
    assert line == "sweep: [2/3] 6.1.0-50: booting; 2.0 min so far, about 7.0 min left"


def test_step_of_reads_bisect_kernel_log_lines():
    assert runner.step_of("bisect-kernel: booting 6.1.0-57-amd64 (x) under QEMU TCG") == "booting"
    assert runner.step_of("bisect-kernel: KVM loaded after 40.1 s") == "running the scenarios"
    assert runner.step_of("steal fresh-vm ...") is None
    line = "[3/18] steal/fresh-vm/reused-thread, 2 vCPU(s) ... characterized (35.42 s)"
    assert runner.step_of(line) == "scenario 3 of 18 done (steal/fresh-vm/reused-thread)"


# -- the whole command, with the fake boot ------------------------------------


def _env(tmp_path: Path, docs: dict[str, Path], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FAKE_SWEEP_DOCS"] = json.dumps({k: str(v) for k, v in docs.items()})
    env["FAKE_SWEEP_CALLS"] = str(tmp_path / "calls")
    env.update(extra)
    return env


def _sweep(tmp_path: Path, kernels_: list[Path], env: dict[str, str], **kw: Any):
    cmd = [sys.executable, "-m", "kvmharness.cli", "sweep", *map(str, kernels_)]
    cmd += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    cmd += ["--bisect-kernel", FAKE]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **kw)


def test_cache_reuse_extending_a_sweep_boots_only_the_new_kernel(tmp_path):
    k57 = fake_kernel(tmp_path, "6.1.0-57-amd64")
    k612 = fake_kernel(tmp_path, "6.12.118+deb12-amd64")
    k9 = fake_kernel(tmp_path, "6.1.0-9-amd64")  # not in the map: does not boot
    env = _env(tmp_path, {"6.1.0-57-amd64": DOC_61, "6.12.118+deb12-amd64": DOC_612})
    r = _sweep(tmp_path, [k57, k9], env)
    assert r.returncode == 0, r.stderr
    assert "sweep: [1/2] 6.1.0-9: booting;" in r.stderr
    assert "min so far, about" in r.stderr
    r = _sweep(tmp_path, [k57, k9, k612], env)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls").read_text().split()
    # in version order; 6.1.0-57 booted once, the kernel that could not be tested again
    assert calls == ["6.1.0-9-amd64", "6.1.0-57-amd64", "6.1.0-9-amd64", "6.12.118+deb12-amd64"]
    assert "6.1.0-57: cached result" in r.stderr
    hist = [json.loads(x) for x in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    assert [h["kernel"]["label"] for h in hist] == ["6.1.0-9", "6.1.0-57", "6.12.118+deb12"]
    assert [h["outcome"] for h in hist] == ["cannot test", "tested", "tested"]
    assert "clock/restore/cross-process/main-thread@2: 6.1.0-57 -> 6.12.118+deb12" in r.stdout
    run_json = Path(hist[1]["run_json"])
    with gzip.open(run_json, "rt") as f:
        assert json.load(f)["results"]  # the whole run document is kept
    # --rerun boots it again
    r = _sweep(tmp_path, [k57, "--rerun"], env)  # type: ignore[list-item]
    assert (tmp_path / "calls").read_text().split().count("6.1.0-57-amd64") == 2


def test_no_kernel_testable_exits_125(tmp_path):
    r = _sweep(tmp_path, [fake_kernel(tmp_path, "6.1.0-9-amd64")], _env(tmp_path, {}))
    assert r.returncode == 125, r.stderr
    assert "cannot test" in (tmp_path / "out" / "report.txt").read_text()


def test_sigterm_mid_sweep_leaves_no_child_and_no_half_written_report(tmp_path):
    k = fake_kernel(tmp_path, "6.1.0-57-amd64")
    pidfile = tmp_path / "child.pid"
    env = _env(
        tmp_path,
        {"6.1.0-57-amd64": DOC_61},
        FAKE_SWEEP_SLEEP="60",
        FAKE_SWEEP_PIDFILE=str(pidfile),
    )
    cmd = [sys.executable, "-m", "kvmharness.cli", "sweep", str(k)]
    cmd += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    cmd += ["--bisect-kernel", FAKE]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pidfile.exists(), "the fake boot never started"
        child = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # no report of a sweep that did not end
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_the_boot_command_is_named_or_found():
    assert runner.bisect_kernel_command("sh -c 'x y'") == ["sh", "-c", "x y"]
    found = runner.bisect_kernel_command()
    assert found[-1] in ("bisect-kernel", str(ROOT / "scripts" / "bisect-kernel"))


def test_render_recomputes_cells_from_the_kept_run_document(tmp_path):
    """A history written by an older sweep shows today's figures and words:
    its cells are computed again from the whole run document it names."""
    rec = record("6.1.0-57", load(DOC_61))
    rec["run_json"] = str(DOC_61)
    rec["scenarios"] = [dict(s, status="BROKEN", figure=None) for s in rec["scenarios"]]
    hist = tmp_path / "h.jsonl"
    hist.write_text(json.dumps(rec) + "\n")
    assert main(["sweep", "--render", str(hist), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.txt").read_text()
    assert "steal/cancelled-save@2" in text and "holds =rd" in text and "BROKEN" not in text


@pytest.mark.skipif(not Path("/usr/bin/apt-get").exists(), reason="no apt-get on this host")
def test_a_package_apt_cannot_find_is_bad_input(tmp_path, capsys):
    name = "linux-image-0.0.0-0-no-such-kernel-unsigned"
    assert main(["sweep", name, "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{name}: apt-get download failed" in err
    assert not list((tmp_path / "debs").glob("*.deb"))
