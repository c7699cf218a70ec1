"""``kvmharness run`` and ``info`` from the outside: exit codes, output, nothing half-written."""

from __future__ import annotations

import json

import pytest

from kvmharness.cli import main


@pytest.mark.parametrize("command", ["run", "bisect"])
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--vcpus", "0"], "--vcpus takes a comma list of counts from 1 to"),
        (["--vcpus", "x"], "--vcpus takes a comma list"),
        (["-s", "nope"], "unknown scenario 'nope'"),
        (["-s", ""], "empty selection"),
        (["-s", " , "], "empty selection"),
        (["--contend-ms", "0"], "--contend-ms must be 20 to"),
        (["--contend-ms", "1"], "too little run-queue waiting"),
        (["--contend-ms", "999999"], "--contend-ms must be 20 to"),
        (["--downtime-ms", "-1"], "--downtime-ms must be"),
        (["--budget-s", "nan"], "--budget-s"),
        (["--json", "/nonexistent-dir/out.json"], "does not exist"),
        (["--json", "/tmp"], "is a directory"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_usage_aborts_a_bisect(command, argv, message, capsys):
    """run and bisect are run by `git bisect run`, which reads 2 as "bad commit":
    bad usage exits 128 (abort) with one line naming the problem."""
    with pytest.raises(SystemExit) as info:
        rc = main([command, *argv])
        raise SystemExit(rc)
    assert info.value.code == 128
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_bad_usage_of_other_commands_exits_2(capsys):
    assert main(["info", "--bogus"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["procstat", "--interval"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "fault, code, message",
    [
        ("untestable", 125, "cannot test"),
        ("kvm-missing", 125, "cannot test"),
        ("harness", 128, "harness fault"),
    ],
)
def test_environment_faults_are_never_1(monkeypatch, capsys, fault, code, message):
    """Causes simulated where host facts are read and where errors are classified."""
    import kvmharness.cli.run as run_cmd
    from kvmharness.errors import KvmUnavailable
    from kvmharness.exitcodes import Untestable

    def precheck(**_):
        if fault == "untestable":
            raise Untestable("run_delay does not move")
        if fault == "kvm-missing":
            raise KvmUnavailable("/dev/kvm: no such file")
        raise RuntimeError("a bug in the harness")

    monkeypatch.setattr(run_cmd, "precheck", precheck)
    assert main(["bisect", "-q"]) == code
    assert message in capsys.readouterr().err


def test_exit_code_classification():
    from types import SimpleNamespace as NS

    from kvmharness.cli.run import exit_code
    from kvmharness.scenarios.base import (
        BROKEN,
        CHARACTERIZE,
        CHARACTERIZED,
        ERROR,
        HOLDS,
        PROMISE,
        UNTESTABLE,
    )

    def r(kind, verdict):
        return NS(variant=NS(kind=kind), verdict=verdict)

    assert exit_code([r(PROMISE, HOLDS), r(CHARACTERIZE, CHARACTERIZED)]) == 0
    assert exit_code([r(PROMISE, HOLDS), r(PROMISE, BROKEN)]) == 1
    assert exit_code([r(PROMISE, UNTESTABLE), r(PROMISE, HOLDS)]) == 125
    assert exit_code([r(PROMISE, BROKEN), r(PROMISE, UNTESTABLE)]) == 1
    assert exit_code([r(PROMISE, BROKEN), r(PROMISE, ERROR)]) == 128


def _r(family, name, verdict, kind=None):
    from types import SimpleNamespace as NS

    from kvmharness.scenarios.base import Kind

    return NS(family=family, variant=NS(name=name, kind=kind or Kind.PROMISE), verdict=verdict)


def test_not_supported_is_left_out_unless_named_or_alone():
    """A host without a master clock (every clock promise not supported) must
    not make a steal bisect skip every commit; what the user named, or a run
    where nothing could be tested, is 125."""
    from kvmharness.cli.run import exit_code, verdict_of
    from kvmharness.scenarios.base import Kind, Verdict

    ns, held, broke = Verdict.NOT_SUPPORTED, Verdict.HOLDS, Verdict.BROKEN
    no_master_clock = [
        _r("steal", "fresh-vm/main-thread", held),
        _r("postcopy", "stream", held),
        _r("clock", "warp", ns),
        _r("clock", "restore/downtime", ns),
    ]
    assert exit_code(no_master_clock) == 0
    no_master_clock[0].verdict = broke
    assert exit_code(no_master_clock) == 1, "a broken steal promise still fails"
    # nothing tested at all
    assert exit_code([_r("clock", "warp", ns), _r("clock", "tsc/offset", ns)]) == 125
    # only characterizations ran while every promise was unsupported: no verdict
    only_char = [
        _r("clock", "warp", ns),
        _r("clock", "new-vm/start", Verdict.CHARACTERIZED, Kind.CHARACTERIZE),
    ]
    assert exit_code(only_char) == 125
    # named explicitly: bisect --scenario clock/tsc/offset where it is not supported
    offset = [_r("clock", "tsc/offset", ns), _r("clock", "tsc/msr", held)]
    named = [("clock/tsc/offset", [("clock", "tsc/offset")])]
    code, why = verdict_of(offset, None, named)
    assert code == 125 and "'clock/tsc/offset', which you named, is not supported" in why
    # a family named: what of it can be tested is judged, the rest is shown
    assert (
        exit_code(offset, None, [("clock", [("clock", "tsc/offset"), ("clock", "tsc/msr")])]) == 0
    )
    # a name whose scenarios never ran (e.g. beyond the family's vCPUs)
    assert exit_code(offset, None, [("postcopy", [("postcopy", "stream")])]) == 125


def test_an_untestable_characterization_does_not_skip_the_commit():
    from kvmharness.cli.run import exit_code
    from kvmharness.scenarios.base import Kind, Verdict

    rs = [
        _r("steal", "fresh-vm/main-thread", Verdict.HOLDS),
        _r("steal", "same-vm/new-thread", Verdict.UNTESTABLE, Kind.CHARACTERIZE),
    ]
    assert exit_code(rs) == 0
    named = [("same-vm/new-thread", [("steal", "same-vm/new-thread")])]
    assert exit_code(rs, None, named) == 125, "unless the user named it"


def test_summary_line_counts_each_result_once():
    from types import SimpleNamespace as NS

    from kvmharness.cli.run import summary_line
    from kvmharness.known import Status
    from kvmharness.scenarios.base import Kind, Verdict

    rs = [
        _r("clock", "warp", Verdict.HOLDS),
        _r("clock", "tsc/msr", Verdict.BROKEN),
        _r("clock", "tsc/offset", Verdict.BROKEN),
        _r("clock", "monotonic", Verdict.HOLDS),
        _r("clock", "new-vm/start", Verdict.CHARACTERIZED, Kind.CHARACTERIZE),
        _r("clock", "restore/frozen", Verdict.UNTESTABLE),
        _r("clock", "frequency", Verdict.NOT_SUPPORTED),
    ]
    known = [None, NS(status=Status.KNOWN_BROKEN), None, NS(status=Status.FIXED), None, None, None]
    assert summary_line(rs, known, 1.25) == (
        "7 scenarios in 1.2 s: 1 holds, 1 broken, 1 characterized, 1 untestable, "
        "1 not supported, 1 known-broken, 1 fixed?"
    )


def test_scenario_errors_are_classified():
    from kvmharness.errors import GuestError, IoctlError, KvmUnavailable
    from kvmharness.guest.build import GuestBuildError
    from kvmharness.scenarios.base import blame_of

    assert blame_of(IoctlError("KVM_SET_MSRS", "vcpu0", 22)) == "kernel"
    assert blame_of(GuestError("unexpected exit")) == "kernel"
    assert blame_of(KvmUnavailable("no /dev/kvm")) == "untestable"
    assert blame_of(GuestBuildError("gcc not found")) == "harness"
    assert blame_of(PermissionError(13, "cache")) == "harness"
    assert blame_of(KeyError("x")) == "harness"


def test_list_variants(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    assert "fresh-vm/main-thread" in out and "characterize" in out and "promise" in out


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_run_prints_table_writes_json_and_exits_0(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc = main(
        [
            "run",
            "-s",
            "cancelled-save,same-vm/new-thread",
            "--vcpus",
            "1",
            "--contend-ms",
            "80",
            "--json",
            str(out_json),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.out
    assert "cancelled-save" in captured.out and "holds" in captured.out
    assert "characterized" in captured.out
    assert "[1/2] steal/cancelled-save" in captured.err, "progress on stderr"
    data = json.loads(out_json.read_text())
    assert data["exit_code"] == 0
    assert [r["variant"] for r in data["results"]] == ["cancelled-save", "same-vm/new-thread"]
    assert data["results"][0]["records"][0]["events"]["t_ns"], "samples are in the JSON"
    assert data["host"]["kvm_backend"] in ("vmx", "svm", "pvm", "unknown")


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_run_exits_1_when_a_promise_breaks(monkeypatch, capsys):
    import kvmharness.snapshot.state as state

    real = state.restore_vm

    def lossy(k, st):
        from kvmharness.guest.build import load_program

        vm = real(k, st)
        vm.write(load_program("steal").symbols["steal_areas"].value, bytes(64))
        return vm

    monkeypatch.setattr(state, "restore_vm", lossy)
    rc = main(["run", "-s", "fresh-vm/vcpu-thread", "--vcpus", "1", "--contend-ms", "80", "-q"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "broken fresh-vm/vcpu-thread" in out and "decrease" in out


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_bisect_prints_one_verdict_line_and_json(tmp_path, capsys):
    out_json = tmp_path / "b.json"
    rc = main(
        ["bisect", "-s", "cancelled-save", "--contend-ms", "60", "-q", "--json", str(out_json)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.splitlines()[0].startswith("kvmharness bisect: good: every promise held (exit 0")
    data = json.loads(out_json.read_text())
    assert data["command"] == "bisect" and data["exit_code"] == 0
    assert [(r["variant"], r["config"]["vcpus"]) for r in data["results"]] == [
        ("cancelled-save", 2)
    ]


@pytest.mark.kvm
def test_info_json(capsys):
    assert main(["info", "--json", "--no-probe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["api_version"] == 12
    assert data["steal_time"] is True
    assert data["kvm_backend"] in ("vmx", "svm", "pvm")


def test_info_table_without_kvm_does_not_crash(monkeypatch, capsys):
    import kvmharness.hostinfo as hostinfo

    info = hostinfo.gather(path="/nonexistent/kvm", probe_sched=False)
    assert info.dev_kvm == "missing"
    assert any(k == "/dev/kvm" and v == "missing" for k, v in info.rows())


def test_selection_by_family_variant_prefix_and_qualified_name():
    from kvmharness.cli.run import select

    def names(items, bisect=False):
        return [(f.name, v) for f, vs in select(items, bisect=bisect) for v in vs]

    assert names(["steal/cross-process"]) == [
        ("steal", "cross-process/vcpu-thread"),
        ("steal", "cross-process/main-thread"),
    ]
    assert ("steal", "fresh-vm/main-thread") in names(["fresh-vm"])
    bisect_steal = names(["steal"], bisect=True)
    assert bisect_steal and all(f == "steal" for f, _ in bisect_steal)
    assert ("steal", "same-vm/new-thread") not in bisect_steal, "bisect runs promises only"
    with pytest.raises(Exception, match="unknown scenario 'steal/nope'"):
        select(["steal/nope"], bisect=False)


def test_every_variant_is_named_family_slash_variant_and_bare_where_unique():
    """Issue 21 item 9: clock's variants had no family in their name and
    postcopy's had it twice, so `-s stream` failed and `-s postcopy/postcopy/stream`
    worked.  Today every variant is `family/variant`, and a bare name works
    where one family has it."""
    from kvmharness.cli.run import select

    def names(items):
        return [(f.name, v) for f, vs in select(items, bisect=False) for v in vs]

    assert names(["postcopy/stream"]) == names(["stream"]) == [("postcopy", "stream")]
    assert names(["clock/monotonic"]) == names(["monotonic"]) == [("clock", "monotonic")]
    assert names(["steal/cancelled-save"]) == [("steal", "cancelled-save")]
    assert names(["clock/restore/cross-process"]) == [
        ("clock", "restore/cross-process/vcpu-thread"),
        ("clock", "restore/cross-process/main-thread"),
    ]


def test_a_bare_name_two_families_have_is_refused_naming_both(monkeypatch):
    import dataclasses

    import kvmharness.scenarios.base as base
    from kvmharness.cli.run import select
    from kvmharness.exitcodes import UsageError

    steal, clock = base.family("steal"), base.family("clock")
    twin = dataclasses.replace(
        clock, variants={**clock.variants, "cancelled-save": clock.variants["monotonic"]}
    )
    monkeypatch.setattr(base, "families", lambda: [steal, twin])
    with pytest.raises(UsageError, match="'clock/cancelled-save' or 'steal/cancelled-save'"):
        select(["cancelled-save"], bisect=False)
    assert [
        (f.name, v) for f, vs in select(["clock/cancelled-save"], bisect=False) for v in vs
    ] == [("clock", "cancelled-save")]


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("monotnic", "'clock/monotonic'"),
        ("postcopy/strem", "'postcopy/stream'"),
        ("fresh-vm/vcpu-thred", "'steal/fresh-vm/vcpu-thread'"),
    ],
)
def test_a_typo_gets_did_you_mean_not_every_name(typo, meant, capsys):
    assert main(["run", "-s", typo]) == 128
    err = capsys.readouterr().err
    assert f"unknown scenario {typo!r}; did you mean {meant}" in err
    assert len(err) < 300, "not a list of every variant"
    assert "restore/cross-process/main-thread" not in err


@pytest.mark.parametrize("flag", ["--variant", "--scenario", "--strategy", "-s"])
def test_variant_is_the_option_and_the_old_names_still_work(flag):
    from kvmharness.cli import build_parser

    args = build_parser().parse_args(["run", flag, "stream"])
    assert args.variant == ["stream"]


def test_a_vcpu_count_beyond_a_family_is_refused_not_run(monkeypatch):
    from kvmharness.cli.run import run_matrix
    from kvmharness.exitcodes import UsageError
    from kvmharness.scenarios.base import RunOptions, family

    small = family("steal")
    import dataclasses

    small = dataclasses.replace(small, max_vcpus=4)
    with pytest.raises(UsageError, match="more than the chosen families support"):
        run_matrix([(small, ["cancelled-save"])], [8], RunOptions())


def test_bisect_quick_profiles_are_promises_of_their_family():
    from kvmharness.cli.run import select
    from kvmharness.scenarios.base import Kind, families

    for f in families():
        assert all(f.variants[v].kind is Kind.PROMISE for v in f.quick_profile()), f.name
    plan = {f.name: vs for f, vs in select(None, bisect=True)}
    assert "fresh-vm/main-thread" in plan["steal"], "the 2015 bug's scenario is in the profile"
    assert "same-vm/new-thread" not in plan["steal"]


def _fake_run(monkeypatch, results):
    import kvmharness.cli.run as run_cmd

    monkeypatch.setattr(
        run_cmd,
        "precheck",
        lambda *a, **k: {
            "kvm_backend": "svm",
            "kernel_release": "6.1.0-57-amd64",
            "cpu_model": "x",
        },
    )
    monkeypatch.setattr(run_cmd, "run_matrix", lambda *a, **k: results)
    monkeypatch.setattr("kvmharness.report.tables", lambda rs, width=90: "<table>")


def _result(family, name, verdict):
    from types import SimpleNamespace as NS

    from kvmharness.scenarios.base import Kind

    return NS(
        family=family,
        variant=NS(name=name, kind=Kind.PROMISE),
        verdict=verdict,
        vcpus=2,
        observed="not supported: KVM_HAS_DEVICE_ATTR says no KVM_VCPU_TSC_OFFSET",
        violations=[],
        wall_s=0.0,
        to_json=lambda: {"family": family, "variant": name, "verdict": str(verdict)},
    )


def test_a_named_scenario_that_is_not_supported_cannot_be_tested(monkeypatch, capsys, tmp_path):
    from kvmharness.judges import SCHEMA_VERSION
    from kvmharness.scenarios.base import Verdict

    _fake_run(monkeypatch, [_result("clock", "tsc/offset", Verdict.NOT_SUPPORTED)])
    out_json = tmp_path / "b.json"
    rc = main(["bisect", "--scenario", "clock/tsc/offset", "-q", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 125, out
    assert out.startswith("kvmharness bisect: cannot test: 'clock/tsc/offset', which you named")
    assert "1 not supported" in out and "not supported tsc/offset (2 vCPUs)" in out
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == SCHEMA_VERSION and doc["exit_code"] == 125
    assert doc["selection"] == [
        {"item": "clock/tsc/offset", "scenarios": [["clock", "tsc/offset"]]}
    ]
    # the same result beside a tested promise, not named: shown, left out
    _fake_run(
        monkeypatch,
        [
            _result("clock", "tsc/offset", Verdict.NOT_SUPPORTED),
            _result("steal", "fresh-vm/main-thread", Verdict.HOLDS),
        ],
    )
    assert main(["bisect", "-q"]) == 0


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_run_names_frequency_explicitly(capsys):
    """clock/frequency needs KVM_CAP_TSC_CONTROL: named alone where it is not
    supported (kvm_pvm) the run cannot test; where it is, it is judged."""
    from kvmharness.ffi import lib
    from kvmharness.kvm import Kvm

    with Kvm() as kvm:
        supported = bool(kvm.check_extension(lib.KVM_CAP_TSC_CONTROL))
    rc = main(["run", "-s", "clock/frequency", "-q"])
    out = capsys.readouterr().out
    if supported:
        assert rc in (0, 1) and "not supported" not in out, out
    else:
        assert rc == 125 and "1 not supported" in out, out


def test_run_options_own_every_default_and_bound():
    """One RunOptions: the CLI's defaults are its defaults, each family's config
    defaults to them, and every config is checked by its one set of rules
    (steal and clock took any budget, postcopy and the CLI at most 3600 s)."""
    from kvmharness.cli import build_parser
    from kvmharness.scenarios.base import DEFAULTS, OptionError
    from kvmharness.scenarios.clock import ClockConfig
    from kvmharness.scenarios.postcopy import PostcopyConfig
    from kvmharness.scenarios.steal import StealConfig

    args = build_parser().parse_args(["run"])
    assert (args.contend_ms, args.downtime_ms, args.budget_s) == (
        DEFAULTS.contend_ms,
        DEFAULTS.downtime_ms,
        DEFAULTS.budget_s,
    )
    assert (args.latency_us, args.pages_per_vcpu) == (DEFAULTS.latency_us, DEFAULTS.pages_per_vcpu)
    pc = build_parser().parse_args(["postcopy"])
    assert (pc.latency_us, pc.pages_per_vcpu, pc.budget_s) == (
        DEFAULTS.latency_us,
        DEFAULTS.pages_per_vcpu,
        DEFAULTS.budget_s,
    )
    steal, clock, postcopy = (
        StealConfig("cancelled-save"),
        ClockConfig("monotonic"),
        PostcopyConfig("stream"),
    )
    assert steal.budget_s == clock.budget_s == postcopy.budget_s == DEFAULTS.budget_s
    assert steal.contend_ms == clock.phase_ms == DEFAULTS.contend_ms
    for cfg in (
        StealConfig("cancelled-save", budget_s=3601),
        ClockConfig("monotonic", budget_s=3601),
        PostcopyConfig("stream", budget_s=3601),
    ):
        with pytest.raises(
            OptionError, match=r"budget_s must be a number of seconds in \(0, 3600\]"
        ):
            cfg.validate()
    with pytest.raises(OptionError, match="phase_ms must be 20 to 10000"):
        ClockConfig("monotonic", phase_ms=5).validate()


def test_cli_run_names_no_family():
    """cli/run.py chooses, checks and runs through the family registry: it
    imports no family's module and names none in its code."""
    import ast
    from pathlib import Path

    import kvmharness.cli.run as run_cmd

    tree = ast.parse(Path(run_cmd.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    families = {"steal", "clock", "postcopy"}
    assert not {m for m in imported if m.rsplit(".", 1)[-1] in families}
    named = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in families
    }
    assert not named, f"cli/run.py names {named} in its code"
