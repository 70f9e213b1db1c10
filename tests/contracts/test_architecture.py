"""docs/ARCHITECTURE.md is the map of the package: it names every module, and each answer of its
"Where is ..." table is one file that exists (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_forgetting"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")

#: folders whose modules the map names as one pattern (``finetune/strategies/<name>.py``) and package
#: surfaces that only re-export
_BY_PATTERN = {"finetune/strategies"}
_SURFACES = {"engine/__init__.py", "tasks/__init__.py", "finetune/__init__.py", "checkpoints/loaders/__init__.py"}


_NAMED = set(re.findall(r"`([A-Za-z0-9_/<>]+\.py)`", DOC))


def _modules() -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


def test_every_module_is_on_the_map():
    missing = []
    for rel in _modules():
        if rel in _SURFACES or str(Path(rel).parent) in _BY_PATTERN:
            continue
        # a row names a module by its path, by the end of its path (`loaders/protocol.py`), or by its bare
        # name beside its folder's other modules (`finetune/data.py`, `blocks.py`, ...)
        if not any(rel == t or rel.endswith("/" + t) for t in _NAMED):
            missing.append(rel)
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {missing}"


def test_where_is_answers_name_existing_files():
    section = DOC.split("## Where is ...", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| where")]
    assert len(rows) == 5, rows
    for row in rows:
        answer = row.split("|")[2]
        first = re.search(r"`([^`]+\.py)`", answer)
        assert first, row
        path = first.group(1)
        if "<name>" in path:
            folder = PACKAGE / Path(path).parent
            assert folder.is_dir() and len(list(folder.glob("*.py"))) > 2, path
        else:
            assert (PACKAGE / path).is_file(), path


def test_strategy_modules_match_the_strategy_table():
    from pytest_forgetting.finetune.spec import STRATEGIES

    folder = PACKAGE / "finetune" / "strategies"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "base"}
    assert modules == set(STRATEGIES), (modules, STRATEGIES)
