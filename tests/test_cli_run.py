"""``kvmharness run`` and ``info`` from the outside: exit codes, output, nothing half-written."""

from __future__ import annotations

import json

import pytest

from kvmharness.cli import main


@pytest.mark.parametrize("argv, message", [
    (["run", "--vcpus", "3"], "--vcpus takes a comma list of 1, 2, 4"),
    (["run", "--vcpus", "x"], "--vcpus takes a comma list"),
    (["run", "--strategy", "nope"], "unknown strategy 'nope'"),
    (["run", "--contend-ms", "0"], "--contend-ms must be > 0"),
    (["run", "--json", "/nonexistent-dir/out.json"], "does not exist"),
    (["run", "--bogus"], "unrecognized arguments"),
])
def test_bad_usage_exits_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        rc = main(argv)
        raise SystemExit(rc)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_list_strategies(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    assert "fresh-vm/main-thread" in out and "characterize" in out and "promise" in out


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_run_prints_table_writes_json_and_exits_0(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc = main(["run", "-s", "cancelled-save,same-vm/new-thread", "--vcpus", "1",
               "--contend-ms", "80", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out
    assert "cancelled-save" in captured.out and "holds" in captured.out
    assert "characterized" in captured.out
    assert "[1/2] cancelled-save" in captured.err, "progress on stderr"
    data = json.loads(out_json.read_text())
    assert data["exit_code"] == 0
    assert [r["strategy"] for r in data["results"]] == ["cancelled-save", "same-vm/new-thread"]
    assert data["results"][0]["vcpus"][0]["guest"], "samples are in the JSON"
    assert data["host"]["kvm_backend"] in ("vmx", "svm", "pvm", "unknown")


@pytest.mark.kvm
@pytest.mark.timeout(120)
def test_run_exits_1_when_a_promise_breaks(monkeypatch, capsys):
    import kvmharness.snapshot.state as state

    real = state.restore_vm

    def lossy(k, st):
        gvm = real(k, st)
        gvm.vm.write(gvm.symbol("steal_areas"), bytes(64))
        return gvm

    monkeypatch.setattr(state, "restore_vm", lossy)
    rc = main(["run", "-s", "fresh-vm/vcpu-thread", "--vcpus", "1", "--contend-ms", "80", "-q"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "BROKEN fresh-vm/vcpu-thread" in out and "decrease" in out


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
