"""Known issues: the file format, host matching, known-broken and fixed? in the
exit code, and the CLI's --known."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from kvmharness.known import Host, KnownIssuesError, Status, classify, find, load, parse
from kvmharness.scenarios.base import CHARACTERIZE, PROMISE, Verdict

ENTRY = """
[[issue]]
id = "x"
scenario = "clock/tsc/*"
backend = "pvm"
kernel_min = "6.10"
kernel_below = "7"
reason = "r"
link = "l"
"""
PVM = Host("pvm", "6.18.44-fc-v509")


def test_the_shipped_file_loads_and_has_the_pvm_tsc_entry():
    issues = load()
    pvm = find(issues, "clock/tsc/msr", PVM)
    assert pvm is not None and "applies neither" in pvm.reason
    assert find(issues, "clock/tsc/offset", PVM) is pvm
    assert find(issues, "clock/tsc/msr", Host("svm", "6.1.0-56-amd64")) is None
    assert find(issues, "clock/restore/downtime", PVM) is None


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
        ("[[issue]]\nid = 'a'\n", "missing scenario, reason, link"),
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


def _res(name, verdict, kind=PROMISE, family="clock"):
    return NS(
        family=family,
        variant=NS(name=name, kind=kind),
        verdict=verdict,
        vcpus=2,
        observed="o",
        violations=[],
        wall_s=0.1,
    )


def test_known_broken_is_not_counted_and_fixed_fails():
    from kvmharness.cli.run import exit_code

    issues = parse(ENTRY)
    broken = [_res("tsc/msr", Verdict.BROKEN), _res("warp", Verdict.HOLDS)]
    marks = classify(broken, issues, PVM)
    assert [m and m.status for m in marks] == [Status.KNOWN_BROKEN, None]
    assert exit_code(broken) == 1
    assert exit_code(broken, marks) == 0
    fixed = [_res("tsc/msr", Verdict.HOLDS)]
    marks = classify(fixed, issues, PVM)
    assert marks[0].status is Status.FIXED
    assert exit_code(fixed, marks) == 1
    # untestable, errors and characterizations match nothing
    other = [
        _res("tsc/msr", Verdict.UNTESTABLE),
        _res("tsc/x", Verdict.CHARACTERIZED, CHARACTERIZE),
    ]
    assert classify(other, issues, PVM) == [None, None]
    # an unrelated broken promise still fails the run
    both = [_res("tsc/msr", Verdict.BROKEN), _res("warp", Verdict.BROKEN)]
    assert exit_code(both, classify(both, issues, PVM)) == 1


def test_a_variant_kvm_does_not_support_does_not_make_the_run_untestable():
    from kvmharness.cli.run import exit_code

    unsupported = _res("frequency", Verdict.UNTESTABLE)
    unsupported.not_supported = True
    assert exit_code([_res("warp", Verdict.HOLDS), unsupported]) == 0
    assert exit_code([_res("warp", Verdict.HOLDS), _res("x", Verdict.UNTESTABLE)]) == 125


def _fake_run(monkeypatch, results):
    import kvmharness.cli.run as run_cmd

    monkeypatch.setattr(
        run_cmd,
        "precheck",
        lambda *a: {"kvm_backend": PVM.backend, "kernel_release": PVM.kernel_release},
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
