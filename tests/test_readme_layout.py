"""README's Layout table against the tree: every module and folder a
newcomer meets is in the table, and every file the table names exists."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the folders whose every entry (module, data file, sub-folder) the table names
LISTED = (
    "kvmharness",
    "kvmharness/scenarios",
    "kvmharness/host",
    "kvmharness/judges",
    "kvmharness/tools",
    "scripts",
)
SKIP = {"__init__.py", "__main__.py", "__pycache__"}


def layout_table(readme: str) -> str:
    """The rows of README's '## Layout' table."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no Layout table in README"
    return "\n".join(rows)


def missing_from(table: str) -> list[str]:
    """Entries of the :data:`LISTED` folders the table does not name."""
    named = set(re.findall(r"`([^`]+)`", table))
    words = {Path(n.rstrip("/")).name for n in named} | {
        w for n in named for w in re.split(r"[,\s]+", n)
    }
    out = []
    for folder in LISTED:
        for entry in sorted((ROOT / folder).iterdir()):
            name = entry.name
            if name in SKIP or name.startswith("."):
                continue
            stem = name[:-3] if name.endswith(".py") else name
            globbed = any(fnmatch(name, w) for w in words if "*" in w)
            if name not in words and stem not in words and f"{name}/" not in named and not globbed:
                out.append(f"{folder}/{name}")
    return out


def absent_in_tree(table: str) -> list[str]:
    """Files the table names (``x.py``, ``x.sh``, ``x.toml``) that no folder holds."""
    names = set(re.findall(r"`([\w./-]+\.(?:py|sh|toml))`", table))
    have = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts}
    return sorted(n for n in names if Path(n).name not in have)


def test_the_layout_table_names_every_module_and_folder() -> None:
    table = layout_table((ROOT / "README.md").read_text())
    assert missing_from(table) == []
    assert absent_in_tree(table) == []


def test_the_layout_check_sees_a_missing_row_and_a_stale_name() -> None:
    """Negative control: the table without its scenarios row misses the
    scenario modules; a name of a file that is gone is reported."""
    table = layout_table((ROOT / "README.md").read_text())
    without = "\n".join(
        r for r in table.splitlines() if not r.startswith("| `kvmharness/scenarios/`")
    )
    assert "kvmharness/scenarios/lifecycle.py" in missing_from(without)
    assert absent_in_tree(table + "\n| `gone_module.py` | x |") == ["gone_module.py"]
    unglobbed = table.replace("`*_view.py`", "views")
    assert "kvmharness/scenarios/steal_view.py" in missing_from(unglobbed)
