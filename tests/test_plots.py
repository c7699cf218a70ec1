"""Pictures that show the verdict: every family's panel, drawn from a corpus
record (the dict the judge reads), shows the bound its judge holds it to and
a marker per violation; a stock record has no violation marker, a mutant's
every violation is marked where it happened (none left unplaced).

The drawings are checked through the figure objects: each artist carries a
``gid`` (``series:...``, ``bound:...``, ``violation:KIND``)."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from kvmharness import plots  # noqa: E402
from kvmharness.cli import main  # noqa: E402
from kvmharness.cli.judge import judge_run, read_run  # noqa: E402

CORPUS = Path(__file__).parent / "corpus"
STOCK_PVM = "stock/pvm-6.18.44-fc-v1252-run.json.gz"
REALTIME_MUTANT = "mutants/kvmclock-set-clock-ignores-realtime.clock.json.gz"
KWORKER_MUTANT = "mutants/postcopy-fault-from-kworker.postcopy.json.gz"
NOT_ACCOUNTED = "mutants/steal-not-accounted.steal.json.gz"


@functools.cache
def _judged(file: str) -> list:
    return judge_run(read_run(str(CORPUS / file)), file)


def _result(file: str, variant: str, vcpus: int = 2):
    for r in _judged(file):
        if f"{r.family}/{r.variant.name}" == variant and r.vcpus == vcpus:
            return r
    raise LookupError(f"{variant}@{vcpus} not in {file}")


def _axes(result):
    fig = plots.figure(plots.items_of([result]))
    return fig, fig.axes[0]


def _gids(ax) -> Counter:
    return Counter(str(a.get_gid()) for a in ax.findobj() if a.get_gid())


def _markers(ax) -> Counter:
    return Counter(
        g.split(":", 1)[1]
        for g, n in _gids(ax).items()
        for _ in range(n)
        if g.startswith("violation:") and g != "violation:unplaced"
    )


def _lines(ax, gid: str):
    return [ln for ln in ax.get_lines() if ln.get_gid() == gid]


def _decodes(fig, tmp_path) -> None:
    import matplotlib.image

    out = tmp_path / "p.png"
    plots.save(fig, str(out))
    img = matplotlib.image.imread(str(out))
    assert img.shape[0] > 100 and img.shape[1] > 100


# ---- steal


def _steal_and_ceiling(ax, vcpu: int):
    (series,) = _lines(ax, f"series:vcpu{vcpu}")
    ceilings = [ln for ln in _lines(ax, "bound:ceiling") if ln.get_color() == series.get_color()]
    (ceiling,) = ceilings
    return list(series.get_ydata()), list(ceiling.get_ydata())


def test_steal_stock_panel_has_its_bounds_and_no_violation(tmp_path):
    r = _result("mutants/control.steal.json.gz", "steal/fresh-vm/vcpu-thread")
    assert not r.violations
    fig, ax = _axes(r)
    g = _gids(ax)
    assert g["bound:ceiling"] == 2 and g["bound:alive-floor"] >= 2 and g["boundary"] == 2
    assert not _markers(ax) and "violation:unplaced" not in g
    # the drawn ceiling is the judge's: a good kernel's steal is under it at every reading
    for v in (0, 1):
        steal, ceiling = _steal_and_ceiling(ax, v)
        assert all(s <= c + 1e-9 for s, c in zip(steal, ceiling, strict=True) if c == c)
    _decodes(fig, tmp_path)


def test_steal_charged_twice_is_marked_where_steal_crosses_its_ceiling(tmp_path):
    r = _result("mutants/steal-run-delay-charged-twice.steal.json.gz", "steal/fresh-vm/vcpu-thread")
    assert r.violations and {v.kind for v in r.violations} == {"over-run-delay"}
    fig, ax = _axes(r)
    assert _markers(ax) == Counter(v.kind for v in r.violations)
    assert "violation:unplaced" not in _gids(ax)
    for v in r.violations:
        if v.series.endswith("/host"):
            continue
        steal, ceiling = _steal_and_ceiling(ax, int(v.series[4:]))
        assert steal[v.index] > ceiling[v.index]
    _decodes(fig, tmp_path)


def test_steal_not_accounted_ends_its_stretches_under_the_alive_floor():
    r = _result(NOT_ACCOUNTED, "steal/cross-process/vcpu-thread")
    assert {v.kind for v in r.violations} == {"not-alive"}
    _, ax = _axes(r)
    assert _markers(ax) == Counter(v.kind for v in r.violations)
    floor_ends = [ln.get_ydata()[0] for ln in _lines(ax, "bound:alive-floor-end")]
    marks = [ln.get_ydata()[0] for ln in _lines(ax, "violation:not-alive")]
    assert floor_ends and max(marks) < min(floor_ends)


# ---- clock


def test_clock_stock_panel_draws_the_allowed_jump_and_no_violation(tmp_path):
    r = _result("mutants/control.clock+postcopy.json.gz", "clock/restore/realtime")
    assert not r.violations
    fig, ax = _axes(r)
    g = _gids(ax)
    assert g["bound:jump"] == 2 and g["series:vcpu0"] == 1 and g["boundary"] == 2
    assert not _markers(ax)
    _decodes(fig, tmp_path)


def test_clock_short_jump_is_marked_outside_the_allowed_jump(tmp_path):
    r = _result(
        "mutants/kvmclock-set-clock-ignores-realtime.clock.json.gz", "clock/restore/realtime"
    )
    assert {v.kind for v in r.violations} == {"short-jump"}
    fig, ax = _axes(r)
    assert _markers(ax) == Counter(v.kind for v in r.violations)
    bars = {ln.get_xdata()[0]: sorted(ln.get_ydata()) for ln in _lines(ax, "bound:jump")}
    for m in _lines(ax, "violation:short-jump"):
        lo, _hi = bars[m.get_xdata()[0]]  # at the first reading after the boundary
        assert m.get_ydata()[0] < lo  # the clock did not move as far as it had to
    _decodes(fig, tmp_path)


@pytest.mark.parametrize(
    "file, variant",
    [
        ("mutants/kvmclock-version-odd-at-end.clock.json.gz", "clock/restore/downtime"),
        ("mutants/tsc-host-msr-write-dropped.clock.json.gz", "clock/tsc/msr"),
        (REALTIME_MUTANT, "clock/updates"),
    ],
)
def test_clock_mutant_violations_are_all_placed(file, variant):
    r = _result(file, variant)
    assert r.violations
    _, ax = _axes(r)
    assert _markers(ax) == Counter(v.kind for v in r.violations)
    assert "violation:unplaced" not in _gids(ax)


# ---- postcopy


def test_postcopy_stock_panel_draws_blocktime_against_the_stalls(tmp_path):
    r = _result("mutants/control.clock+postcopy.json.gz", "postcopy/stream")
    assert not r.violations
    fig, ax = _axes(r)
    g = _gids(ax)
    assert g["bound:over-guest"] == 2 and g["bound:under-guest"] == 2 and g["bound:over-wall"] == 2
    assert g["series:host blocktime"] == 2 and g["series:guest stall, every touch"] == 2
    assert not _markers(ax)
    _decodes(fig, tmp_path)


def test_postcopy_mutant_marks_misattributed_faults_and_silent_stalls(tmp_path):
    r = _result(KWORKER_MUTANT, "postcopy/shared-page")
    kinds = Counter(v.kind for v in r.violations)
    assert kinds["misattributed"] and kinds["stall-without-fault"]
    fig, ax = _axes(r)
    assert _markers(ax) == kinds
    # a silent stall sits at the end of the guest's stall bar, past its ceiling
    stall_ends = {
        round(p.get_y() + p.get_height() / 2, 6): p.get_width()
        for p in ax.patches
        if p.get_gid() == "series:guest stall, every touch"
    }
    for m in _lines(ax, "violation:stall-without-fault"):
        assert m.get_xdata()[0] == pytest.approx(stall_ends[round(m.get_ydata()[0], 6)])
    _decodes(fig, tmp_path)


# ---- the whole run, formats, the command line


def test_every_family_of_a_run_has_its_panel():
    doc = read_run(str(CORPUS / STOCK_PVM))
    results = judge_run(doc, STOCK_PVM)
    fig = plots.figure(plots.items_of(results))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == len(results) == 34
    assert {t.split("/")[0] for t in titles} == {"steal", "clock", "postcopy"}
    bounds = sum(
        1 for ax in fig.axes for a in ax.findobj() if str(a.get_gid()).startswith("bound:")
    )
    assert bounds > 34


@pytest.mark.parametrize(
    "suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")]
)
def test_the_format_follows_the_suffix(tmp_path, suffix, magic, capsys):
    out = tmp_path / f"run{suffix}"
    rc = main(
        ["judge", str(CORPUS / "mutants/steal-not-accounted.steal.json.gz"), "--plot", str(out)]
    )
    assert rc == 1  # the judge's verdict, plot or not
    data = out.read_bytes()
    assert data.startswith(magic)
    if suffix == ".svg":
        assert b'id="violation:not-alive' in data and b'id="bound:alive-floor' in data
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("name", ["run.jpg", "run", "run.png.txt"])
def test_an_unknown_suffix_is_refused_before_anything_is_written(tmp_path, capsys, name):
    out = tmp_path / name
    rc = main(["judge", str(CORPUS / STOCK_PVM), "--plot", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown suffix" in err and ".svg" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["run", "-s", "steal/fresh-vm", "--plot", str(out)]))
    assert info.value.code == 128  # bad usage of run aborts a git bisect run
    assert not list(tmp_path.iterdir())


def test_without_matplotlib_plot_is_refused_with_a_clear_message(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    rc = main(["judge", str(CORPUS / STOCK_PVM), "--plot", str(tmp_path / "p.png")])
    assert rc == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
    # and without --plot nothing needs it
    assert main(["judge", str(CORPUS / "mutants/control.steal.json.gz")]) == 0


@pytest.mark.kvm
@pytest.mark.timeout(180)
def test_a_live_run_plots_every_family_it_ran(tmp_path, capsys):
    """run --plot draws from the records the live run judged: one panel per
    scenario, every family (it drew the first family only), in the suffix's
    format (it wrote PNG whatever the suffix)."""
    out = tmp_path / "run.svg"
    rc = main(
        [
            "run",
            "-q",
            "-s",
            "steal/fresh-vm/vcpu-thread,clock/restore/downtime,postcopy/stream",
            "--vcpus",
            "2",
            "--contend-ms",
            "30",
            "--plot",
            str(out),
        ]
    )
    assert rc in (0, 1, 125), capsys.readouterr().out
    svg = out.read_text()
    assert svg.startswith("<?xml")
    for gid in ("bound:ceiling", "bound:alive-floor", "bound:jump", "bound:under-guest"):
        assert f'id="{gid}' in svg, gid
    for title in ("steal/fresh-vm/vcpu-thread", "clock/restore/downtime", "postcopy/stream"):
        assert title in svg
