"""``kvmharness judge RUN.json``: re-judging a saved run, its exit codes, and the
files it refuses.

The pure tests use a toy family whose judge lives in a module put in
``sys.modules`` as ``kvmharness.judges.toy``: a series must never decrease.
The KVM tests judge the file of a real ``kvmharness run --json``.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
import types
from pathlib import Path

import pytest

from kvmharness.checks import Violation
from kvmharness.cli import main
from kvmharness.judges import SCHEMA_VERSION, Judgement, RecordError
from kvmharness.scenarios.base import Verdict

HOST = {"kvm_backend": "svm", "kernel_release": "6.1.0-57-amd64", "cpu_model": "AMD EPYC"}


def _toy_judge(record):
    if "value" not in record:
        raise RecordError("toy record without 'value'")
    vs = record["value"]
    if record.get("verdict_hint") == "not supported":
        return Judgement(Verdict.NOT_SUPPORTED, "not supported: no toy capability", [])
    bad = [
        Violation(record.get("bug_kind", "decrease"), "vcpu0", i, a, b, b - a, None, "went back")
        for i, (a, b) in enumerate(zip(vs, vs[1:], strict=False), start=1)
        if b < a
    ]
    if bad:
        return Judgement(Verdict.BROKEN, f"{bad[0].kind} x{len(bad)}", bad)
    return Judgement(Verdict.HOLDS, f"{len(vs)} readings", [])


@pytest.fixture
def toy(monkeypatch):
    mod = types.ModuleType("kvmharness.judges.toy")
    mod.judge = _toy_judge
    monkeypatch.setitem(sys.modules, "kvmharness.judges.toy", mod)
    return mod


def _record(variant="mono", value=(1, 2, 3), **extra):
    return {
        "schema": SCHEMA_VERSION,
        "family": "toy",
        "variant": variant,
        "kind": "promise",
        "vcpus": 2,
        "config": {"vcpus": 2},
        "value": list(value),
        "verdict": "holds",
        "wall_s": 0.5,
        **extra,
    }


def _run(*records, selection=None, exit_code=0):
    return {
        "schema": SCHEMA_VERSION,
        "kvmharness_version": "test",
        "command": "run",
        "host": HOST,
        "selection": selection,
        "exit_code": exit_code,
        "results": list(records),
    }


def _write(tmp_path, doc, name="run.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def test_a_holding_run_is_good_and_a_simulated_bug_is_broken(toy, tmp_path, capsys):
    good = _run(_record("mono"), _record("other", value=(5, 6)))
    assert main(["judge", _write(tmp_path, good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kvmharness judge: good: every promise held (exit 0; 2 records")
    assert "2 scenarios: 2 holds, 0 broken, 0 characterized" in out
    assert "toy" in out and "mono" in out, "the generic table shows the rows"

    bad = copy.deepcopy(good)
    bad["results"][1]["value"] = [6, 5]  # the kernel let a reading go back
    assert main(["judge", _write(tmp_path, bad)]) == 1
    out = capsys.readouterr().out
    assert "bad: a promise broke on this kernel (toy/other)" in out
    assert "decrease vcpu0[1]: went back" in out
    assert "toy/other@2: recorded holds, today broken" in out
    assert "the run exited 0; judged today it exits 1" in out


def test_known_issues_apply_for_the_runs_host_and_by_kind(toy, tmp_path, capsys):
    known = tmp_path / "k.toml"
    known.write_text(
        '[[issue]]\nid = "toy-decrease"\nscenario = "toy/mono"\nkinds = ["decrease"]\n'
        'backend = "svm"\nkernel_below = "6.2"\nreason = "r"\nlink = "l"\n'
    )
    run = _write(tmp_path, _run(_record(value=(3, 2))))
    assert main(["judge", run, "--known", str(known)]) == 0
    out = capsys.readouterr().out
    assert "1 known-broken" in out and "0 broken" in out
    other_kind = _write(tmp_path, _run(_record(value=(3, 2), bug_kind="decode-mismatch")))
    assert main(["judge", other_kind, "--known", str(known)]) == 1
    assert "not excused: decode-mismatch (known issue toy-decrease" in capsys.readouterr().out
    elsewhere = _run(_record(value=(3, 2)))
    elsewhere["host"] = {**HOST, "kvm_backend": "vmx"}
    assert main(["judge", _write(tmp_path, elsewhere), "--known", str(known)]) == 1


def test_not_supported_and_named_scenarios(toy, tmp_path, capsys):
    unsupported = _record("cap", verdict_hint="not supported")
    doc = _run(_record("mono"), unsupported)
    assert main(["judge", _write(tmp_path, doc)]) == 0
    assert "1 not supported" in capsys.readouterr().out
    doc["selection"] = [{"item": "toy/cap", "scenarios": [["toy", "cap"]]}]
    assert main(["judge", _write(tmp_path, doc)]) == 125
    assert "'toy/cap', which you named, is not supported" in capsys.readouterr().out


def test_a_record_that_never_ran_keeps_its_recorded_verdict(toy, tmp_path, capsys):
    failed = {k: v for k, v in _record("mono").items() if k != "value"}
    failed.update(verdict="untestable", error="host too loaded", observed="could not run")
    assert main(["judge", _write(tmp_path, _run(failed, _record("other")))]) == 125
    assert "as recorded (not re-judged)" in capsys.readouterr().out
    # without data, a recorded "holds" has nothing behind it
    failed.update(verdict="holds")
    assert main(["judge", _write(tmp_path, _run(failed))]) == 2
    assert "no data behind it" in capsys.readouterr().err


def test_json_out_is_a_run_judge_reads_again_and_gzip_is_read(toy, tmp_path, capsys):
    src = _write(tmp_path, _run(_record(value=(1, 0))))
    out = tmp_path / "judged.json"
    assert main(["judge", src, "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA_VERSION and doc["command"] == "judge"
    assert doc["exit_code"] == 1 and doc["judged"]["exit_code"] == 0
    assert doc["results"][0]["verdict"] == "broken"
    assert doc["results"][0]["violations"][0]["kind"] == "decrease"
    assert main(["judge", str(out)]) == 1
    gz = tmp_path / "run.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(_run(_record())).encode()))
    assert main(["judge", str(gz)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not JSON"),
        (b"{nope", "not JSON (Expecting property name"),
        (b"\xff\xfe", "not JSON (not UTF-8"),
        (b"[1, 2]", "not a kvmharness run (a JSON list"),
        (b'{"schema": 2}', "not a kvmharness run (no results[]"),
        (json.dumps({"results": []}).encode(), "has no schema (written before"),
        (json.dumps({"schema": 1, "results": []}).encode(), "has schema 1; this kvmharness"),
        (json.dumps({"schema": SCHEMA_VERSION, "results": [1]}).encode(), "not a record"),
        (json.dumps({"schema": SCHEMA_VERSION, "results": []}).encode(), "no host facts"),
        (json.dumps(_run({"schema": SCHEMA_VERSION})).encode(), "no usable 'family'"),
        (
            json.dumps(_run({"schema": SCHEMA_VERSION, "family": "nosuch"})).encode(),
            "no judge for family 'nosuch'",
        ),
        (json.dumps(_run({**_record(), "schema": 1})).encode(), "has schema 1"),
        (json.dumps(_run({**_record(), "value": None})).encode(), "its judge cannot read"),
        (b"\x1f\x8b garbage", "a damaged gzip file"),
    ],
)
def test_a_file_that_cannot_be_judged_exits_2_with_one_line(
    toy, tmp_path, capsys, content, message
):
    p = tmp_path / "x.json"
    p.write_bytes(content)
    assert main(["judge", str(p)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_bad_known_exit_2(tmp_path, capsys):
    assert main(["judge", str(tmp_path / "none.json")]) == 2
    assert "No such file" in capsys.readouterr().err
    bad = tmp_path / "k.toml"
    bad.write_text("[[issue]]\n")
    assert main(["judge", _write(tmp_path, _run()), "--known", str(bad)]) == 2
    assert "--known" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["judge"])
    assert info.value.code == 2


# ---------------------------------------------------------------- real runs


def _no_vcpu_named_the_faults(record):
    """postcopy: the kernel names a thread that is no vCPU's in every fault."""
    record["faults"]["tid"] = [1] * len(record["faults"]["tid"])


def _host_decode_one_ns_off(record):
    """clock: the host's pvclock arithmetic 1 ns away from the guest's on every
    reading both decoded (the measured hole: 150 decode-mismatch on tsc/msr)."""
    n = 0
    for v in record["vcpu_records"]:
        v["decode"] = [[i, g, h + 1] for i, g, h in v["decode"]]
        n += len(v["decode"])
    assert n, "the record holds decoded readings to change"


def _steal_lost_at_the_restore(record):
    """steal: the restore gives back less steal than was saved, so the first
    reading after it is 1 ms below the last one before (every reading from the
    boundary on, as the guest and the host read the area).  A fixed 1 ms loss
    is not enough: a new vCPU's first update adds its thread's whole
    run_delay, and a loss within the 10% "alive" allowance of that holds."""
    from dataclasses import replace

    from kvmharness.judges import steal as js

    recs = js.records_of(record)
    for r in recs:
        b = r.boundary
        lost = r.guest[b].value - r.guest[b - 1].value + 1_000_000
        r.guest[b:] = [replace(x, value=x.value - lost) for x in r.guest[b:]]
        r.host[b:] = [replace(x, value=x.value - lost) for x in r.host[b:]]
    record["records"] = [r.to_json() for r in recs]


SIMULATED_BUGS = {
    "steal": ("fresh-vm/main-thread", _steal_lost_at_the_restore),
    "postcopy": ("stream", _no_vcpu_named_the_faults),
    "clock": ("monotonic", _host_decode_one_ns_off),
}


@pytest.mark.kvm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", sorted(SIMULATED_BUGS))
def test_judge_a_real_run_as_it_ran_and_with_a_simulated_bug(family, tmp_path, capsys):
    """A real `kvmharness run -s FAMILY --json` judged again gives the run's
    verdicts and exit code; the same file with one kernel behaviour changed in
    one record (a simulated bug) exits 1, and that record is BROKEN."""
    variant, simulate = SIMULATED_BUGS[family]
    run_json = tmp_path / "run.json"
    rc = main(["run", "-s", family, "-q", "--json", str(run_json)])
    ran = capsys.readouterr().out
    assert rc == 0, ran
    doc = json.loads(run_json.read_text())
    judged = tmp_path / "judged.json"
    assert main(["judge", str(run_json), "--json", str(judged)]) == rc
    out = capsys.readouterr().out
    assert "differ from the ones recorded" not in out, out
    # the family's own table, row for row as `run` printed it
    table = [line for line in ran.splitlines() if line.startswith(f"{family} ")]
    assert table and table == [line for line in out.splitlines() if line.startswith(f"{family} ")]
    again = json.loads(judged.read_text())
    assert [r["verdict"] for r in again["results"]] == [r["verdict"] for r in doc["results"]]

    target = next(r for r in doc["results"] if r["variant"] == variant)
    simulate(target)
    bugged = tmp_path / "bugged.json"
    bugged.write_text(json.dumps(doc))
    assert main(["judge", str(bugged), "--json", str(judged)]) == 1
    out = capsys.readouterr().out
    assert f"{variant}@{target['vcpus']}: recorded holds, today broken" in out, out
    today = [r["verdict"] for r in json.loads(judged.read_text())["results"]]
    changed = [
        (r["variant"], r["vcpus"], v)
        for r, v in zip(doc["results"], today, strict=True)
        if v != r["verdict"]
    ]
    assert changed == [(variant, target["vcpus"], "broken")], "only the edited record broke"


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_a_decode_bug_under_the_pvm_known_issue_is_broken_when_judged(tmp_path, capsys):
    """The measured control through judge: the decode 1 ns off in a real
    clock/tsc/msr record.  On kvm_pvm the shipped entry matches tsc/msr and
    excuses its TSC kinds, never decode-mismatch; elsewhere tsc/msr holds and
    the bug breaks it.  Either way: exit 1."""
    run_json = tmp_path / "run.json"
    rc = main(["bisect", "-s", "clock/tsc/msr", "-q", "--json", str(run_json)])
    assert rc == 0, capsys.readouterr().out
    capsys.readouterr()
    doc = json.loads(run_json.read_text())
    _host_decode_one_ns_off(doc["results"][0])
    bugged = tmp_path / "bugged.json"
    bugged.write_text(json.dumps(doc))
    assert main(["judge", str(bugged)]) == 1
    out = capsys.readouterr().out
    assert "decode-mismatch" in out
    if doc["results"][0]["known"]:  # the pvm entry matched the real run
        assert "not excused: decode-mismatch (known issue pvm-tsc-msr-not-applied" in out
        assert "clock/tsc/msr@2: recorded known-broken, today broken" in out


@pytest.fixture
def toy_family(toy, monkeypatch):
    """The toy family declared with a view and a from_record hook."""
    from types import SimpleNamespace as NS

    from kvmharness.scenarios import base

    mod = types.ModuleType("toy_family_for_judge")
    mod.FAMILY = base.Family(
        "toy",
        {"mono": base.Variant("mono", base.Kind.PROMISE, "never decreases")},
        ["mono"],
        [2],
        run_one=None,
        view="toy_family_for_judge",
    )
    mod.table = lambda results, width: "\n".join(f"TOYTABLE {r.verdict}" for r in results)

    def from_record(record):  # the one-argument form: the record's own verdict
        return NS(
            family="toy",
            variant=mod.FAMILY.variants[record["variant"]],
            vcpus=record["vcpus"],
            verdict=Verdict(record["verdict"]),
            observed=record.get("observed", ""),
            violations=[],
            wall_s=record["wall_s"],
        )

    mod.from_record = from_record
    monkeypatch.setitem(sys.modules, "toy_family_for_judge", mod)
    monkeypatch.setitem(base.FAMILY_MODULES, "toy", "toy_family_for_judge")
    return mod


def test_a_familys_own_table_shows_todays_verdict(toy_family, tmp_path, capsys):
    run = _write(tmp_path, _run(_record(value=(2, 1))))  # recorded "holds"
    assert main(["judge", run]) == 1
    out = capsys.readouterr().out
    assert "TOYTABLE broken" in out and "TOYTABLE holds" not in out
    assert "decrease vcpu0[1]: went back" in out

    def broken_hook(record):
        raise KeyError("a field this family's record lacked then")

    toy_family.from_record = broken_hook
    assert main(["judge", run]) == 1
    out = capsys.readouterr().out
    assert "TOYTABLE" not in out and "decrease x1" in out, "the generic row instead"


# ---------------------------------------------------------------- postcopy, saved


POSTCOPY_DATA = Path(__file__).parent / "data" / "postcopy"


def _postcopy_records():
    """The stored postcopy runs as `run --json` holds them (recorded as held)."""
    out = []
    for name in ("stream", "shared-page", "non-vcpu"):
        rec = json.loads((POSTCOPY_DATA / f"{name}.json").read_text())
        out.append({**rec, "verdict": "holds", "observed": "held", "wall_s": 1.25})
    return out


def test_judge_shows_saved_postcopy_runs_in_the_postcopy_table(tmp_path, capsys):
    """`judge` rebuilds postcopy results through postcopy's from_record, so a
    saved postcopy run prints the postcopy table `run` prints (latency, faults,
    blocktime, placements, the QEMU models), with today's verdict; a record
    whose faults name no vCPU's thread is broken there, and a record of a
    scenario that never ran keeps its row."""
    records = _postcopy_records()
    run = _write(tmp_path, _run(*records))
    assert main(["judge", run, "--wide"]) == 0
    out = capsys.readouterr().out
    for header in ("faults (vCPU/other)", "blocktime (sum)", "placed r/s/EEXIST", "QEMU models"):
        assert header in out, out
    rows = [line.split() for line in out.splitlines() if line.startswith("postcopy ")]
    assert [r[1] for r in rows] == ["stream", "shared-page", "non-vcpu"], out
    assert all(r[2:5] == ["2", "2000", "us"] and r[-3:] == ["1.25", "s", "holds"] for r in rows)
    assert rows[2][5] == "16/1", "non-vcpu: the helper thread's fault is counted apart"
    assert "differ from the ones recorded" not in out

    _no_vcpu_named_the_faults(records[0])
    never_ran = {
        **records[1],
        "verdict": "ERROR",
        "observed": "could not run (harness): no gcc",
        "error": "no gcc",
    }
    for k in ("faults", "placements", "vcpu", "threads", "helper", "host", "t0_ns"):
        del never_ran[k]
    run = _write(tmp_path, _run(records[0], records[2]))
    assert main(["judge", run, "--wide"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("postcopy ")}
    assert "faults (vCPU/other)" in out, out
    assert "broken" in rows["stream"] and "misattributed" in rows["stream"], out
    assert " 0/16 " in rows["stream"], "every fault counted as another thread's"
    assert rows["non-vcpu"].rstrip().endswith("holds"), out
    assert "postcopy/stream@2: recorded holds, today broken" in out

    assert main(["judge", _write(tmp_path, _run(never_ran)), "--wide"]) == 128
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("postcopy "))
    assert "faults (vCPU/other)" in out and "harness error" in row and "no gcc" in row, out
