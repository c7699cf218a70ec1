"""Corpus replay: today's judges over real recorded runs (``tests/corpus/``).

Every record in the corpus was taken by a real run on a real KVM: this
machine's kvm_pvm, stock Debian kernels booted by ``scripts/bisect-kernel``,
and every kernel mutant of ``tests/mutants/`` (``scripts/mutants --record``).
Each is re-judged with ``kvmharness judge``, the same judges the live runs
call, so a judge change is tested against data from several kernels both
ways, in seconds and without KVM:

* a stock record (a good kernel) must still exit 0: no false red;
* a mutant record must still be BROKEN in every column its patch's
  ``Must-catch`` names, and its run must exit 1: no false green;
* the unchanged build of the mutant runs (``control``) must exit 0.

``tests/corpus/README.md`` says where each file came from and how to refresh
the corpus.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from kvmharness.cli import main
from kvmharness.tools import mutants

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
STOCK = sorted((CORPUS / "stock").glob("*.json.gz"))
MUTANT_DIR = CORPUS / "mutants"
#: the same mutants built from linux-source-SERIES (their ports where the 6.1
#: patch does not apply), one folder per series: ``mutants-SERIES``
SERIES_DIRS = {d.name.removeprefix("mutants-"): d for d in sorted(CORPUS.glob("mutants-*"))}


#: ``BUILD.FAMILIES[-N].json.gz`` as ``scripts/mutants --record`` names them
MUTANT_RECORDS = sorted(
    [*MUTANT_DIR.glob("*.json.gz"), *(p for d in SERIES_DIRS.values() for p in d.glob("*.json.gz"))]
)

#: Mutants the harness does not catch yet where their header says it must, each
#: with the reason measured (README, "Detection power").  Their replay is a
#: strict xfail: it turns red the day a judge change catches them, so this
#: list is kept true.
KNOWN_GAPS: dict[str, str] = {}


#: Mutants with no record, and why.
NO_RECORD: dict[str, str] = {}


def _build(path: Path) -> str:
    return path.name.split(".", 1)[0]


def rejudge(path: Path, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """``kvmharness judge PATH --json OUT``: its exit code and the re-judged run."""
    out = tmp_path / "judged.json"
    code = main(["judge", str(path), "--json", str(out)])
    return code, json.loads(out.read_text())


def _column(result: dict[str, Any]) -> str:
    return f"{result['family']}:{result['variant']}"


def test_the_corpus_has_stock_and_mutant_records():
    """The replay below is only as good as its data: stock records of kvm_pvm
    and of both stock kernel generations, and a record of every mutant."""
    names = [p.name for p in STOCK]
    assert any(n.startswith("pvm-") for n in names), names
    assert any("6.1.0-" in n for n in names), names
    assert any("6.12." in n for n in names), names
    patches = {m.name for m in mutants.load_mutants()}
    for d in [MUTANT_DIR, *SERIES_DIRS.values()]:
        recorded = {_build(p) for p in d.glob("*.json.gz")}
        assert "control" in recorded, d.name
        missing = patches - recorded - set(NO_RECORD)
        assert not missing, (d.name, sorted(missing))


def test_a_multi_threaded_mutant_and_its_control_are_recorded_so():
    """A mutant whose header says Tcg-threads: multi is recorded as it boots
    (``.mttcg`` records only), and the control has a record of that platform
    too: a catch there is measured against a control that held there."""
    multi = [m for m in mutants.load_mutants() if m.tcg_threads == "multi"]
    assert multi, "no mutant boots multi-threaded: drop this test"
    for d in [MUTANT_DIR, *SERIES_DIRS.values()]:
        names = [p.name for p in d.glob("*.json.gz")]
        for m in multi:
            mine = [n for n in names if _build(Path(n)) == m.name]
            assert mine and all(".mttcg" in n for n in mine), (d.name, mine)
        assert any(n.startswith("control.") and ".mttcg" in n for n in names), d.name
    assert "6.12" in SERIES_DIRS and set(SERIES_DIRS) <= set(mutants.SERIES)


@pytest.mark.parametrize("path", STOCK, ids=[p.name for p in STOCK])
def test_a_stock_record_holds(path, tmp_path):
    code, doc = rejudge(path, tmp_path)
    broken = [
        f"{_column(r)}@{r['vcpus']}: {r['verdict']} {r.get('observed', '')}"
        for r in doc["results"]
        if r["verdict"] not in ("holds", "characterized", "not supported")
        and (r.get("known") or {}).get("status") != "known-broken"
    ]
    assert code == 0, broken
    assert not broken


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[_build(p)])
            if _build(p) in KNOWN_GAPS
            else (),
        )
        for p in MUTANT_RECORDS
    ],
    ids=[p.relative_to(CORPUS).as_posix() for p in MUTANT_RECORDS],
)
def test_a_mutant_record_is_caught_where_it_must_be(path, tmp_path):
    build = _build(path)
    code, doc = rejudge(path, tmp_path)
    if build == "control":
        assert code == 0, [
            (_column(r), r["verdict"])
            for r in doc["results"]
            if r["verdict"] not in ("holds", "not supported")
        ]
        return
    series = path.parent.name.removeprefix("mutants-") if path.parent != MUTANT_DIR else None
    mutant = next(m for m in mutants.load_mutants(series=series) if m.name == build)
    # a promise this host does not support (frequency under TCG) can catch nothing
    musts = [
        r
        for r in doc["results"]
        if r["kind"] == "promise" and mutant.must(_column(r)) and r["verdict"] != "not supported"
    ]
    assert musts, f"{path.name} holds no column {build}'s Must-catch names"
    missed = [
        f"{_column(r)}@{r['vcpus']}: {r['verdict']}" for r in musts if r["verdict"] != "broken"
    ]
    assert not missed, f"{build} no longer caught: {missed}"
    assert code == 1


def test_replay_notices_a_record_edited_to_a_broken_kernel(tmp_path):
    """The replay can fail: a stock steal record with 50 ms added to the guest's
    steal after its boundary (as a kernel that overcharges would write it)
    comes out BROKEN and exit 1."""
    path = next(p for p in STOCK if p.name.startswith("svm-6.1.0-57"))
    doc = json.loads(gzip.decompress(path.read_bytes()))
    from kvmharness.judges.steal import VcpuRecord

    edited = 0
    for r in doc["results"]:
        if r["family"] == "steal" and r["variant"].startswith("fresh-vm"):
            vcpus = [VcpuRecord.from_json(d) for d in r["records"]]
            for v in vcpus:
                v.guest[v.boundary :] = [
                    type(s)(s.t_ns, s.value + 50_000_000, s.version) for s in v.guest[v.boundary :]
                ]
                v.host[v.boundary :] = [
                    type(s)(s.t_ns, s.value + 50_000_000, s.version) for s in v.host[v.boundary :]
                ]
            r["records"] = [v.to_json() for v in vcpus]
            edited += 1
    assert edited
    bad = tmp_path / "edited.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(doc).encode()))
    code, judged = rejudge(bad, tmp_path)
    assert code == 1
    assert any(
        r["verdict"] == "broken" for r in judged["results"] if r["variant"].startswith("fresh-vm")
    )


def _as_today(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as today's release writes it: ``variant`` without its family,
    no ``strategy`` nor ``scenario`` key."""
    out = {k: v for k, v in record.items() if k not in ("strategy", "scenario")}
    out["variant"] = str(record["variant"]).removeprefix(f"{record['family']}/")
    return out


def _strategy_only(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` naming its variant only as ``strategy`` (how 0.1 readers knew it)."""
    out = dict(record)
    out["strategy"] = out.pop("variant")
    return out


@pytest.mark.parametrize(
    "path", [*STOCK, MUTANT_DIR / "control.clock+postcopy.json.gz"], ids=lambda p: p.name
)
def test_a_run_file_of_the_previous_release_judges_as_today(path):
    """The corpus holds run files of kvmharness 0.1 ("strategy", postcopy's
    variants named postcopy/stream): each record is judged exactly as the same
    record written today, and as one that names its variant only "strategy"."""
    from kvmharness.judges import RecordError, judge_record

    doc = json.loads(gzip.open(path).read())
    judged = 0
    for record in doc["results"]:
        try:
            was = judge_record(record)
        except RecordError:
            continue  # a scenario that never ran (judged as recorded)
        for form in (_as_today(record), _strategy_only(record)):
            j = judge_record(form)
            assert (j.verdict, j.observed, j.violations) == (
                was.verdict,
                was.observed,
                was.violations,
            ), f"{record['family']}/{record['variant']}"
        judged += 1
    assert judged, "the file holds judgeable records"


def test_judge_reads_old_postcopy_names_in_a_run_files_selection(tmp_path, capsys):
    """A 0.1 run file that named `postcopy` selected postcopy/stream etc.: today's
    variants are `stream`, and the selection still finds them (not "did not run")."""
    path = MUTANT_DIR / "control.clock+postcopy.json.gz"
    doc = json.loads(gzip.open(path).read())
    assert ["postcopy", "postcopy/stream"] in doc["selection"][1]["scenarios"]
    code, judged = rejudge(path, tmp_path)
    assert code == doc["exit_code"] == 0, capsys.readouterr().out
    assert [r["variant"] for r in judged["results"] if r["family"] == "postcopy"] == [
        "stream",
        "shared-page",
        "non-vcpu",
    ]
