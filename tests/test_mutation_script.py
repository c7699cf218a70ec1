"""scripts/mutation.py: the per-module score table and the list of equivalent survivors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts/mutation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RESULTS = """\
    kvmharness.checks.x_check_rate__mutmut_1: killed
    kvmharness.checks.x_check_rate__mutmut_2: survived
    kvmharness.checks.xǁViolationǁto_dict__mutmut_1: timeout
    kvmharness.checks.x_format_ns__mutmut_3: survived
    kvmharness.judges.steal.x_judge__mutmut_1: killed
    kvmharness.judges.steal.x_judge__mutmut_2: not checked
    kvmharness.judges.steal.x_judge__mutmut_3: no tests
some unrelated line: survived
"""


def test_scores_count_timeouts_as_kills_and_listed_equivalents_apart(mutation):
    results = mutation.parse_results(RESULTS)
    assert len(results) == 7
    eq = {"kvmharness.checks.x_format_ns__mutmut_3": "only the text of a figure"}
    rows = {r["module"]: r for r in mutation.score_table(results, eq)}
    assert rows["kvmharness.checks"] == {
        "module": "kvmharness.checks",
        "killed": 2,
        "survived": 1,
        "no tests": 0,
        "equivalent": 1,
        "not checked": 0,
        "score %": 66.7,
    }
    # a mutant no test reaches is a gap, counted against the score
    assert rows["kvmharness.judges.steal"]["score %"] == 50.0
    assert rows["kvmharness.judges.steal"]["no tests"] == 1
    assert rows["kvmharness.judges.steal"]["not checked"] == 1


def test_an_equivalent_without_a_reason_is_refused(mutation, tmp_path):
    f = tmp_path / "survivors.txt"
    f.write_text(
        "# comment\nkvmharness.checks.x_a__mutmut_1: a reason\nkvmharness.checks.x_b__mutmut_2\n"
    )
    with pytest.raises(SystemExit, match="gives no reason"):
        mutation.load_equivalents(f)
    f.write_text("kvmharness.checks.x_a__mutmut_1: a reason\n")
    assert mutation.load_equivalents(f) == {"kvmharness.checks.x_a__mutmut_1": "a reason"}


def test_a_module_is_run_by_the_glob_of_its_mutants_names(mutation):
    assert mutation.module_glob("kvmharness/judges/clock.py") == "kvmharness.judges.clock.x*"
    assert mutation.module_glob("kvmharness.checks") == "kvmharness.checks.x*"
    # a package's __init__ names its mutants after the package
    glob = mutation.module_glob("kvmharness/judges/__init__.py")
    assert glob == "kvmharness.judges.x*"
    assert mutation.module_of(glob) == "kvmharness.judges"
    import fnmatch

    assert fnmatch.fnmatch("kvmharness.judges.x_deltas__mutmut_1", glob)
    assert fnmatch.fnmatch(
        "kvmharness.judges.clock.xǁFoundǁexcuse__mutmut_2", "kvmharness.judges.clock.x*"
    )
    assert not fnmatch.fnmatch(
        "kvmharness.judges.clock.x_judge__mutmut_1", "kvmharness.judges.steal.x*"
    )


def test_the_order_plugin_puts_the_fastest_tests_first(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "mutation_plugin", ROOT / "scripts/mutation_plugin.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    items = [Item("t::slow"), Item("t::new"), Item("t::fast")]
    monkeypatch.chdir(tmp_path)
    mod.pytest_collection_modifyitems(items)  # no stats yet: order left alone
    assert [i.nodeid for i in items] == ["t::slow", "t::new", "t::fast"]
    (tmp_path / "mutmut-stats.json").write_text(
        '{"duration_by_test": {"t::slow": 3.0, "t::fast": 0.1}}'
    )
    mod.pytest_collection_modifyitems(items)
    assert [i.nodeid for i in items] == ["t::new", "t::fast", "t::slow"]


def test_sync_copies_only_the_files_mutmut_does_not_mutate(mutation, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mutmut]\nsource_paths = ["kvmharness/judges/", "kvmharness/checks.py"]\n'
    )
    pkg = tmp_path / "kvmharness"
    (pkg / "judges").mkdir(parents=True)
    (pkg / "judges" / "steal.py").write_text("judged = 1\n")
    (pkg / "checks.py").write_text("checked = 1\n")
    (pkg / "cli.py").write_text("cli = 1\n")
    mutated = tmp_path / "mutants" / "kvmharness" / "checks.py"
    mutated.parent.mkdir(parents=True)
    mutated.write_text("# mutmut's mutants\n")
    assert mutation.sync_unmutated(tmp_path) == 1
    assert (tmp_path / "mutants/kvmharness/cli.py").read_text() == "cli = 1\n"
    assert mutated.read_text() == "# mutmut's mutants\n"
    assert not (tmp_path / "mutants/kvmharness/judges").exists()
    assert mutation.sync_unmutated(tmp_path) == 0  # unchanged: nothing copied again


def test_fast_mode_finds_a_modules_source_and_its_meta(mutation):
    """--fast reads and writes mutmut's ``mutants/<source>.meta`` of the module."""
    assert mutation.module_path("kvmharness/judges/clock.py") == Path("kvmharness/judges/clock.py")
    assert mutation.module_path("kvmharness.checks") == Path("kvmharness/checks.py")
    assert mutation.module_path("kvmharness/judges/__init__.py") == Path(
        "kvmharness/judges/__init__.py"
    )
