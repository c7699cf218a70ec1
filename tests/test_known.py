"""Known issues: the file format, host matching, known-broken and fixed? in the
exit code, and the CLI's --known."""

from __future__ import annotations

import re
from types import SimpleNamespace as NS

import pytest

from kvmharness.known import Host, KnownIssuesError, Status, find, load, match_known, parse
from kvmharness.scenarios.base import CHARACTERIZE, PROMISE, Verdict

ENTRY = """
[[issue]]
id = "x"
scenario = "clock/tsc/*"
kinds = ["tsc-not-applied"]
backend = "pvm"
kernel_min = "6.10"
kernel_below = "7"
reason = "r"
link = "l"
"""
PVM = Host("pvm", "6.18.44-fc-v509")


def test_the_shipped_file_loads_and_has_the_pvm_tsc_entry():
    issues = load()
    msr = find(issues, "clock/tsc/msr", PVM)
    assert msr is not None and "does not apply" in msr.reason
    offset = find(issues, "clock/tsc/offset", PVM)
    assert offset is not None and offset is not msr
    assert offset.kinds == {"tsc-not-applied"}, "the offset is only ever not applied"
    assert find(issues, "clock/tsc/msr", Host("svm", "6.1.0-56-amd64")) is None
    assert find(issues, "clock/restore/downtime", PVM) is None
    assert find(issues, "clock/tsc/msr", Host("pvm", "6.19.1")) is None, "bounded above"


@pytest.mark.parametrize(
    "host, scenario, hit",
    [
        (PVM, "clock/tsc/msr", True),
        (Host("pvm", "6.9.1"), "clock/tsc/msr", False),  # below kernel_min
        (Host("pvm", "7.0.0"), "clock/tsc/msr", False),  # kernel_below is exclusive
        (Host("svm", "6.18.1"), "clock/tsc/msr", False),
        (PVM, "clock/warp", False),
        (Host("pvm", "weird"), "clock/tsc/msr", False),
    ],
)
def test_matching(host, scenario, hit):
    (k,) = parse(ENTRY)
    assert k.matches(scenario, host) is hit


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[issue]]\nid = 'a'\n", "missing scenario, kinds, reason, link"),
        (ENTRY.replace('kinds = ["tsc-not-applied"]\n', ""), "missing kinds"),
        (ENTRY.replace('kinds = ["tsc-not-applied"]', "kinds = []"), "missing kinds"),
        (ENTRY.replace('kinds = ["tsc-not-applied"]', 'kinds = "warp"'), "kinds is a list"),
        (ENTRY.replace('kernel_below = "7"\n', ""), "unbounded"),
        (ENTRY.replace('kernel_below = "7"', "recheck = 2027-13-01"), "not TOML"),
        (ENTRY.replace('kernel_below = "7"', 'recheck = "soon"'), "is not a date"),
        (ENTRY.replace('kernel_below = "7"', "recheck = 2027-01-01T10:00:00"), "not a date and"),
        ("nonsense = [", "not TOML"),
        ("[other]\n", "expected only"),
        (ENTRY + ENTRY, "duplicate id"),
        (ENTRY.replace('kernel_min = "6.10"', 'kernel_min = "new"'), "not a kernel release"),
        (ENTRY.replace('link = "l"', 'link = "l"\nextra = "e"'), "unknown field"),
    ],
)
def test_bad_files_are_named(text, message):
    with pytest.raises(KnownIssuesError, match=message):
        parse(text, "f.toml")


def _res(name, verdict, kind=PROMISE, family="clock", kinds=("tsc-not-applied",)):
    return NS(
        family=family,
        variant=NS(name=name, kind=kind),
        verdict=verdict,
        vcpus=2,
        observed="o",
        violations=[
            NS(kind=k, series="vcpu0", index=i, detail=f"{k} here") for i, k in enumerate(kinds)
        ]
        if verdict == Verdict.BROKEN
        else [],
        wall_s=0.1,
    )


def test_known_broken_is_not_counted_and_fixed_fails():
    from kvmharness.cli.run import exit_code

    issues = parse(ENTRY)
    broken = [_res("tsc/msr", Verdict.BROKEN), _res("warp", Verdict.HOLDS)]
    marks = match_known(broken, issues, PVM)
    assert [m and m.status for m in marks] == [Status.KNOWN_BROKEN, None]
    assert exit_code(broken) == 1
    assert exit_code(broken, marks) == 0
    fixed = [_res("tsc/msr", Verdict.HOLDS)]
    marks = match_known(fixed, issues, PVM)
    assert marks[0].status is Status.FIXED
    assert exit_code(fixed, marks) == 1
    # untestable, errors and characterizations match nothing
    other = [
        _res("tsc/msr", Verdict.UNTESTABLE),
        _res("tsc/x", Verdict.CHARACTERIZED, CHARACTERIZE),
    ]
    assert match_known(other, issues, PVM) == [None, None]
    # an unrelated broken promise still fails the run
    both = [_res("tsc/msr", Verdict.BROKEN), _res("warp", Verdict.BROKEN)]
    assert exit_code(both, match_known(both, issues, PVM)) == 1


def test_a_variant_kvm_does_not_support_does_not_make_the_run_untestable():
    from kvmharness.cli.run import exit_code

    unsupported = _res("frequency", Verdict.NOT_SUPPORTED)
    assert exit_code([_res("warp", Verdict.HOLDS), unsupported]) == 0
    assert exit_code([_res("warp", Verdict.HOLDS), _res("x", Verdict.UNTESTABLE)]) == 125


def test_an_entry_excuses_only_the_kinds_it_names():
    """The measured hole: a host pvclock decode 1 ns wrong gave decode-mismatch
    violations on clock/tsc/msr, and the pvm entry (matching on scenario and
    verdict only) called the run good."""
    from kvmharness.cli.run import exit_code, mark_known

    issues = load()  # the shipped file: the pvm entries
    decode_bug = _res("tsc/msr", Verdict.BROKEN, kinds=("tsc-not-applied", "decode-mismatch"))
    marks = match_known([decode_bug], issues, PVM)
    assert marks[0].status is Status.NOT_EXCUSED
    assert marks[0].unexcused == ("decode-mismatch",)
    assert exit_code([decode_bug], marks) == 1
    mark_known([decode_bug], marks)
    assert decode_bug.observed.startswith("not excused: decode-mismatch (known issue pvm-tsc-msr")

    # alone, a kind the entry does not name is not excused either
    only = [_res("tsc/msr", Verdict.BROKEN, kinds=("decode-mismatch",))]
    assert exit_code(only, match_known(only, issues, PVM)) == 1
    # what kvm_pvm really shows is excused, and only there
    pvm = [
        _res("tsc/msr", Verdict.BROKEN, kinds=("tsc-not-applied", "over-long-jump")),
        _res("tsc/offset", Verdict.BROKEN, kinds=("tsc-not-applied",)),
    ]
    marks = match_known(pvm, issues, PVM)
    assert [m.status for m in marks] == [Status.KNOWN_BROKEN] * 2
    assert exit_code(pvm, marks) == 0
    # the offset entry does not excuse the msr entry's over-long jump
    jump = [_res("tsc/offset", Verdict.BROKEN, kinds=("tsc-not-applied", "over-long-jump"))]
    assert exit_code(jump, match_known(jump, issues, PVM)) == 1


def test_a_promise_broken_without_a_violation_is_excused_only_by_kernel_error():
    from kvmharness.known import KIND_KERNEL_ERROR

    failed = [_res("tsc/msr", Verdict.BROKEN, kinds=())]
    (m,) = match_known(failed, parse(ENTRY), PVM)
    assert m.status is Status.NOT_EXCUSED and m.unexcused == (KIND_KERNEL_ERROR,)
    listed = parse(ENTRY.replace('["tsc-not-applied"]', f'["{KIND_KERNEL_ERROR}"]'))
    assert match_known(failed, listed, PVM)[0].status is Status.KNOWN_BROKEN


def test_an_overdue_entry_excuses_nothing_and_is_warned_of(tmp_path, caplog):
    import datetime as dt

    from kvmharness.cli.run import exit_code

    text = ENTRY.replace('kernel_below = "7"', "recheck = 2026-06-30")
    (k,) = parse(text)
    assert k.recheck == dt.date(2026, 6, 30)
    assert parse(text.replace("2026-06-30", '"2026-06-30"'))[0].recheck == k.recheck
    before, after = dt.date(2026, 6, 30), dt.date(2026, 7, 1)
    broken = [_res("tsc/msr", Verdict.BROKEN)]
    assert match_known(broken, [k], PVM, today=before)[0].status is Status.KNOWN_BROKEN
    marks = match_known(broken, [k], PVM, today=after)
    assert marks[0].status is Status.OVERDUE and exit_code(broken, marks) == 1
    assert "re-checked by 2026-06-30" in marks[0].explain()
    held = [_res("tsc/msr", Verdict.HOLDS)]
    assert match_known(held, [k], PVM, today=after)[0].status is Status.FIXED
    assert find([k], "clock/tsc/msr", PVM, today=after) is None, "pytest: no xfail either"
    f = tmp_path / "k.toml"
    f.write_text(text)
    load(str(f), today=after)
    assert "re-check date 2026-06-30 has passed" in caplog.text


def test_shipped_entries_are_bounded_and_cite_only_files_of_the_repository():
    """Every shipped link that names a file names one in this checkout, and a
    quoted section of it ('Known issues') is a heading there."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shipped = load()
    assert shipped
    for k in shipped:
        assert k.kernel_below or k.recheck, k.id
        files = re.findall(r"[\w./-]+\.(?:md|py|toml|txt|rst)\b", k.link)
        assert files, f"{k.id}: its link cites no file of the repository: {k.link}"
        for name in files:
            path = root / name
            assert path.is_file(), f"{k.id} cites {name}, which is not in the repository"
            for section in re.findall(r"'([^']+)'", k.link):
                assert re.search(rf"^#+ .*{re.escape(section)}", path.read_text(), re.M), (
                    k.id,
                    section,
                )


def _fake_run(monkeypatch, results):
    import kvmharness.cli.run as run_cmd

    monkeypatch.setattr(
        run_cmd,
        "precheck",
        lambda *a, **k: {"kvm_backend": PVM.backend, "kernel_release": PVM.kernel_release},
    )
    monkeypatch.setattr(run_cmd, "run_matrix", lambda *a, **k: results)
    monkeypatch.setattr("kvmharness.report.tables", lambda rs, width=90: "<table>")


def test_cli_known_broken_and_fixed(monkeypatch, capsys, tmp_path):
    from kvmharness.cli import main

    known = tmp_path / "k.toml"
    known.write_text(ENTRY)
    _fake_run(monkeypatch, [_res("tsc/msr", Verdict.BROKEN)])
    assert main(["run", "-s", "clock", "-q", "--known", str(known)]) == 0
    out = capsys.readouterr().out
    assert "known-broken tsc/msr" in out and "known issue x: r (l)" in out
    assert "1 known-broken" in out
    assert "0 broken" in out, "a known-broken promise is not counted twice"

    _fake_run(monkeypatch, [_res("tsc/msr", Verdict.HOLDS)])
    assert main(["run", "-s", "clock", "-q", "--known", str(known)]) == 1
    assert "fixed? tsc/msr" in capsys.readouterr().out


def test_cli_bad_known_file_aborts_a_bisect(tmp_path, capsys):
    from kvmharness.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[[issue]]\n")
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["bisect", "--known", str(bad)]))
    assert info.value.code == 128
    assert "--known" in capsys.readouterr().err


def test_an_entry_can_be_scoped_to_a_cpu_model_such_as_qemu_tcg():
    from kvmharness.known import Host, parse

    (issue,) = parse(
        '[[issue]]\nid = "x"\nscenario = "clock/restore/*"\nbackend = "svm"\n'
        'kinds = ["warp"]\nkernel_below = "6.2"\n'
        'cpu_model = "QEMU TCG"\nreason = "r"\nlink = "l"\n'
    )
    tcg = Host("svm", "6.1.0-56-amd64", "QEMU TCG CPU version 2.5+")
    metal = Host("svm", "6.1.0-56-amd64", "AMD EPYC 7B13 64-Core Processor")
    assert issue.matches("clock/restore/frozen", tcg)
    assert not issue.matches("clock/restore/frozen", metal), "real hardware is judged in full"
    assert not issue.matches("clock/restore/frozen", Host("svm", "6.1.0-56-amd64"))


def test_no_shipped_entry_excuses_a_stock_kernel():
    """The clock reds once filed for stock kernels under QEMU TCG were the
    harness's (state saved before the pending port I/O completed): nothing
    may excuse kvm_amd or kvm_intel there or on hardware."""
    from kvmharness.known import Host, load

    shipped = load(None)
    assert shipped, "the kvm_pvm entry is shipped"
    for backend in ("svm", "vmx"):
        for model in ("QEMU TCG CPU version 2.5+", "AMD EPYC", ""):
            host = Host(backend, "6.12.117+deb12-amd64", model)
            for name in ("clock/restore/frozen", "clock/tsc/msr", "steal/fresh-vm/main-thread"):
                assert not any(i.matches(name, host) for i in shipped), (backend, model, name)


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_a_decode_bug_under_a_known_issue_fails_the_bisect(monkeypatch, capsys):
    """The measured control, on real KVM: the host's pvclock decode made 1 ns
    wrong (decode-mismatch on every compared reading).  Where the shipped pvm
    entry matches clock/tsc/msr, the bisect must still say bad."""
    from kvmharness.cli import main
    from kvmharness.pvclock import Pvti

    real = Pvti.ns_at
    monkeypatch.setattr(Pvti, "ns_at", lambda self, tsc: real(self, tsc) + 1)
    rc = main(["bisect", "--scenario", "clock/tsc/msr", "-q"])
    out = capsys.readouterr().out
    assert "decode-mismatch" in out, out
    assert rc == 1, out
    assert out.splitlines()[0].startswith("kvmharness bisect: bad"), out


def test_a_known_broken_promise_is_never_called_broken_on_screen(monkeypatch, capsys, tmp_path):
    """Progress line, table and summary use one word: known-broken, not BROKEN,
    for a promise a known issue excuses (the run exits 0)."""
    import kvmharness.cli.run as run_cmd
    from kvmharness.cli import main
    from kvmharness.scenarios.base import verdict_text

    known = tmp_path / "k.toml"
    known.write_text(ENTRY)
    res = _res("tsc/msr", Verdict.BROKEN)

    def matrix(plan, vcpus, options, progress=None):
        progress(0, 1, "clock/tsc/msr, 2 vCPU(s)", None)
        progress(0, 1, "clock/tsc/msr, 2 vCPU(s)", res)
        return [res]

    _fake_run(monkeypatch, [])
    monkeypatch.setattr(run_cmd, "run_matrix", matrix)
    assert main(["run", "-s", "clock/tsc/msr", "--known", str(known)]) == 0
    captured = capsys.readouterr()
    assert "[1/1] clock/tsc/msr, 2 vCPU(s) ... known-broken (0.10 s)" in captured.err
    assert re.search(r"(?<!known-)broken", captured.err, re.I) is None
    assert verdict_text(res) == "known-broken (x): o"


def test_the_postcopy_command_goes_through_runs_plan_with_known_issues_and_no_steal_time(
    monkeypatch, capsys, tmp_path
):
    """Issue 19: `kvmharness postcopy` was a second door that demanded steal
    time (`run -s postcopy` does not) and ignored known issues.  It is run's
    plan now: the postcopy variants it names, run's precheck asked for steal
    time only when a family needs it, and a known issue excuses as in run."""
    import kvmharness.cli.run as run_cmd
    from kvmharness.cli import main

    asked: dict[str, object] = {}

    def precheck(steal_time=True):
        asked["steal_time"] = steal_time
        return {"kvm_backend": PVM.backend, "kernel_release": PVM.kernel_release}

    def run_matrix(plan, vcpus, options, *a, **k):
        asked["plan"] = [(f.name, vs) for f, vs in plan]
        asked["vcpus"], asked["options"] = vcpus, options
        return [_res("stream", Verdict.BROKEN, family="postcopy", kinds=("lost",))]

    monkeypatch.setattr(run_cmd, "precheck", precheck)
    monkeypatch.setattr(run_cmd, "run_matrix", run_matrix)
    monkeypatch.setattr("kvmharness.report.tables", lambda rs, width=90: "<table>")
    monkeypatch.setattr("kvmharness.cli.postcopy.probe_userfaultfd", lambda: None)
    known = tmp_path / "k.toml"
    known.write_text(
        ENTRY.replace("clock/tsc/*", "postcopy/stream").replace("tsc-not-applied", "lost")
    )

    argv = ["postcopy", "--variant", "stream", "--vcpus", "1", "--latency-us", "500", "-q"]
    assert main([*argv, "--known", str(known)]) == 0
    out = capsys.readouterr().out
    assert "known-broken stream" in out and "1 known-broken" in out
    assert asked["steal_time"] is False, "postcopy needs no steal time"
    assert asked["plan"] == [("postcopy", ["stream"])] and asked["vcpus"] == [1]
    assert asked["options"].latency_us == 500

    assert main(argv) == 1, "without the entry the broken promise fails the run"
    main(["run", "-s", "steal/cancelled-save", "-q"])
    assert asked["steal_time"] is True, "steal needs steal time"
