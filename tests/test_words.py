"""One word per state: holds, broken, known-broken, untestable, not supported,
characterized (and harness error), the same in the progress line, the table,
the summary, the JSON and the nightly; run files written with the old words
(BROKEN, ERROR) are still read, as today's words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvmharness.cli import main
from kvmharness.scenarios.base import Verdict, state_word

CORPUS = Path(__file__).parent / "corpus"
#: a run of this host's kernel in the old words: 2 promises "BROKEN" as known issues excuse
OLD_RUN = CORPUS / "stock" / "pvm-6.18.44-fc-v1252-run.json.gz"


def test_every_state_is_one_lower_case_word():
    assert [str(v) for v in Verdict] == [
        "holds",
        "broken",
        "characterized",
        "harness error",
        "untestable",
        "not supported",
    ]


def test_old_history_lines_are_read_in_todays_words():
    from kvmharness.tools.nightly import history, records

    line = {
        "schema": history.SCHEMA,
        "host": {"name": "h"},
        "scenarios": [{"id": "steal/x@1", "status": "BROKEN", "verdict": "BROKEN"}],
    }
    (rec,), problems = history.parse_history(json.dumps(line).encode() + b"\n")
    assert not problems and rec["scenarios"][0]["status"] == "broken"
    assert records.status_of({"verdict": "ERROR"}) == "harness error"


def test_old_words_are_read_as_todays():
    assert Verdict("BROKEN") is Verdict.BROKEN and Verdict("ERROR") is Verdict.ERROR
    assert state_word("BROKEN") == "broken" and state_word("holds") == "holds"
    with pytest.raises(ValueError):
        Verdict("Broken!")


def test_an_old_run_is_judged_in_todays_words_without_false_changes(tmp_path, capsys):
    raw = OLD_RUN.read_bytes()
    assert b'"BROKEN"' in __import__("gzip").decompress(raw), "the corpus file is in old words"
    out = tmp_path / "judged.json"
    assert main(["judge", str(OLD_RUN), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    # the old word BROKEN is not a change of verdict
    assert "differ from the ones recorded" not in text, text
    # nothing says broken (or BROKEN) for a run that exits 0: the excused ones are known-broken
    says_broken = [
        line for line in text.splitlines() if re.search(r"(?<!known-)(?<!0 )broken", line, re.I)
    ]
    assert not says_broken, says_broken
    assert "0 broken" in text
    assert "known-broken" in text
    doc = json.loads(out.read_text())
    words = {r["verdict"] for r in doc["results"]}
    assert words <= {str(v) for v in Verdict}, words
    assert "broken" in words, "the known issues' promises broke: the JSON says so in today's word"
