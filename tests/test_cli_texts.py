"""What a newcomer reads: --version, --help without reST markup, --list
aligned, --legend, and each limit's message naming the problem."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kvmharness import __version__
from kvmharness.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kvmharness {__version__}"


@pytest.mark.parametrize("module", ["kvmharness", "kvmharness.cli"])
def test_python_dash_m_is_the_command(module):
    """``python -m kvmharness`` (and ``.cli``) is the ``kvmharness`` command: its
    output and its exit codes (2 for a command it does not know)."""
    ok = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"kvmharness {__version__}")
    bad = subprocess.run([sys.executable, "-m", module, "bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'bogus'" in bad.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["run", "--help"], ["bisect", "--help"], ["judge", "--help"]]
    + [["postcopy", "--help"], ["procstat", "--help"], ["snapshot", "inspect", "--help"]],
)
def test_help_has_no_markup(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert "usage:" in out
    assert "``" not in out and not re.search(r":(mod|func|class|data|meth):`", out), out


def test_list_is_aligned(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["run", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = [m.start(1) for line in lines if (m := re.search(r"  (promise|characterize)  ", line))]
    assert len(kinds) > 20 and len(set(kinds)) == 1, "the kind column starts at one offset"
    assert all(len(line) <= 100 for line in lines)


def test_legend_names_every_state(capsys):
    assert main(["run", "--legend"]) == 0
    out = capsys.readouterr().out
    assert "first steal after" in out and "known-broken" in out and "blocktime (sum)" in out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--vcpus", "1,,2"], "'1,,2' has an empty item"),
        (["--vcpus", "2,"], "has an empty item"),
        (["--vcpus", "1,x"], "'x' in '1,x' is not a whole number"),
        (["--vcpus", "0"], "0 in '0' is out of that range"),
        (["--contend-ms", "99999"], "got 99999: too long"),
        (["--contend-ms", "5"], "got 5: too short"),
        (["--downtime-ms", "-1"], "got -1: negative"),
        (["--downtime-ms", "70000"], "longer than 60 s"),
        (["--budget-s", "0"], "more than 0"),
        (["--budget-s", "4000"], "more than an hour"),
    ],
)
def test_each_limit_says_what_is_wrong(args, says, capsys):
    """Refused before anything runs (no KVM needed), exit 128 (run's bad
    usage aborts a bisect), with the reason for the side it is out on."""
    assert main(["run", *args]) == 128
    err = capsys.readouterr().err
    assert says in err, err
    if "99999" in args:
        assert "shorter" not in err, "the reason for too short values, on a too long one"


def test_the_nightly_names_its_postcopy_figure_as_a_maximum():
    """run's table shows blocktime summed over vCPUs; the nightly's cell shows
    the largest one vCPU saw, and must say so (37.5 ms vs 21.1 ms read as a
    contradiction otherwise)."""
    from kvmharness.tools.nightly.text import cell_figure

    cell = {"family": "postcopy", "status": "holds", "figures": {"blocktime_max_ns": 21_100_000}}
    assert cell_figure(cell) == "max vCPU blocktime 21.1 ms"
