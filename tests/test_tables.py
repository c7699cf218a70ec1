"""Tables that fit: the output of ``kvmharness judge`` on saved runs of the
corpus at 80 columns, at 120 and with ``--wide``, held as golden files.

A change of layout or wording shows here as a diff; when it is meant,
regenerate the files and read them before committing::

    KVMHARNESS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_tables.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kvmharness.cli import main

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden"
#: a good run of this project's host: every family, characterizations, two known-broken
PVM_RUN = HERE / "corpus" / "stock" / "pvm-6.18.44-fc-v1252-run.json.gz"
#: a run in which every steal promise broke
BROKEN_RUN = HERE / "corpus" / "mutants" / "steal-version-odd-at-end.steal.json.gz"

CASES = {
    "pvm-run-80": (PVM_RUN, ["80"], 0),
    "pvm-run-120": (PVM_RUN, ["120"], 0),
    "pvm-run-wide": (PVM_RUN, ["80", "--wide"], 0),
    "steal-broken-80": (BROKEN_RUN, ["80"], 1),
}


def _judge(path: Path, how: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("COLUMNS", how[0])
    rc = main(["judge", str(path), *how[1:]])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, monkeypatch, capsys):
    path, how, code = CASES[name]
    rc, out = _judge(path, how, monkeypatch, capsys)
    assert rc == code
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("KVMHARNESS_UPDATE_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text(), f"{golden} differs (see this module's docstring)"


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("path", [PVM_RUN, BROKEN_RUN])
def test_every_line_fits_and_no_verdict_is_cut(path, columns, monkeypatch, capsys):
    _rc, out = _judge(path, [str(columns)], monkeypatch, capsys)
    too_long = [line for line in out.splitlines() if len(line) > columns]
    assert not too_long, too_long
    assert "..." not in out, "a verdict was cut"
    # the verdict column is last: every row's verdict, its wrapped lines joined,
    # is the whole verdict the wide table shows on one line
    _rc, wide = _judge(path, [str(columns), "--wide"], monkeypatch, capsys)
    whole = {_squash(v) for v in _verdicts(wide)}
    fitted = {_squash(v) for v in _verdicts(out)}
    assert fitted == whole


def test_a_narrow_table_leaves_out_context_before_key_figures(monkeypatch, capsys):
    _rc, out = _judge(PVM_RUN, ["80"], monkeypatch, capsys)
    heads = [line for line in out.splitlines() if line.startswith(("steal ", "clock "))]
    assert heads[0].split()[:3] == ["steal", "variant", "vCPUs"], heads
    assert "largest" in heads[0] and "warps" in heads[1], heads
    assert "left out at 80 columns: MSR written by" in out.replace("\n", " ")


def _verdicts(out: str) -> list[str]:
    """Each row's verdict (lines of a row after the first are its wrapped
    verdict) from the tables in ``out``."""
    found: list[str] = []
    start = None
    for block in out.split("\n\n"):
        lines = block.splitlines()
        dash = next((i for i, ln in enumerate(lines) if re.fullmatch(r"[- ]+", ln)), None)
        if dash is None:
            continue
        start = lines[dash].rfind(" ") + 1
        for ln in lines[dash + 1 :]:
            if ln.startswith("("):
                break
            if ln[:start].strip():
                found.append(ln[start:].strip())
            elif found:
                found[-1] += " " + ln[start:].strip()
    return found


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_every_column_of_every_family_has_a_legend_entry():
    """`run --legend` says what each figure is: a new column needs its line
    (and its rank: without one it would leave a narrow table first)."""
    import importlib

    from kvmharness.scenarios.base import FAMILY_MODULES
    from kvmharness.table import LEGEND, legend_text

    for fam in FAMILY_MODULES:
        view = importlib.import_module(f"kvmharness.scenarios.{fam}_view")
        assert list(LEGEND[fam]) == list(view.HEADERS), fam
    text = legend_text(80)
    assert all(len(line) <= 80 for line in text.splitlines())
    for word in ("holds", "broken", "known-broken", "untestable", "not supported"):
        assert f"  {word} " in text
