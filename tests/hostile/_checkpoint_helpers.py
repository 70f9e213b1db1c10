"""Shared by the checkpoint-file and resource-limit attack suites: projects, runs, and what SAFE and CLEAR means.

A project has two checks of the hostile candidate and an unrelated test. A run is SAFE when nothing
ran (no marker file), nothing outside the cache and the reports was written or removed, and no
planted secret (a fake token in ``.git/config`` and in the environment, outside every checkpoint)
appears in the terminal output, the JSON report or the Markdown summary; CLEAR when every check of
the candidate has the same one-line reason naming the problem and what to do, and the unrelated
test still passes.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

#: a fake CI token planted outside every checkpoint (``.git/config``, the environment)
SECRET = "ghp_FAKEforgettingSECRET0123456789abcdef"
SECRET_ENV = "FORGETTING_TEST_FAKE_TOKEN"

TEXT_CONFTEST = """
import pytest_forgetting as pf

WORDS = [f"w{i}" for i in range(40)]


def _texts(n, shift):
    return [" ".join(WORDS[(i * shift + j) % len(WORDS)] for j in range(4)) for i in range(n)]


@pf.task("words")
def words():
    return pf.TextClassificationTask(_texts(300, 1), [i % 3 for i in range(300)], class_names=["negative", "neutral", "positive"])


@pf.task("words2")
def words2():
    return pf.TextClassificationTask(_texts(300, 3), [(i // 2) % 3 for i in range(300)], class_names=["negative", "neutral", "positive"])
"""

TEXT_CHECKS = """
    import pytest

    @pytest.mark.retains(task="words", max_drop=0.2)
    def test_keeps_first():
        pass

    @pytest.mark.retains(task="words2", max_drop=0.25)
    def test_keeps_second():
        pass

    def test_unrelated():
        assert sum([1, 2]) == 3
"""

SYNTH_CHECKS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.05)
    def test_keeps_synth():
        pass

    @pytest.mark.retains(task="synth-small", max_drop=0.3)
    def test_keeps_synth_small():
        pass

    def test_unrelated():
        assert sum([1, 2, 3]) == 6
"""


def plant_secret(root: Path) -> Path:
    """A fake repository config holding a token, next to (outside) the checkpoints."""
    git = root / ".git"
    git.mkdir(exist_ok=True)
    config = git / "config"
    config.write_text(f'[remote "origin"]\n\turl = https://x-access-token:{SECRET}@github.com/org/repo\n')
    return config


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except bytecode caches (links are not followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.is_symlink() or not path.is_file():
            continue
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def report_args(root: Path) -> list[str]:
    out = root / "out"
    return [f"--forgetting-cache-dir={root / 'cache'}", f"--forgetting-json={out / 'r.json'}",
            f"--forgetting-markdown={out / 'r.md'}", "--forgetting-device=cpu", "-p", "no:cacheprovider"]  # fmt: skip


class Outcome:
    """What one inner run left: its output, reports and the files it wrote."""

    def __init__(self, root: Path, stdout: str, before: dict[str, str]) -> None:
        self.root = root
        self.stdout = stdout
        after = tree(root)
        self.written = sorted(k for k in after if after[k] != before.get(k))
        self.removed = sorted(k for k in before if k not in after)
        report = root / "out" / "r.json"
        self.report = json.loads(report.read_text()) if report.is_file() else None
        markdown = root / "out" / "r.md"
        self.markdown = markdown.read_text() if markdown.is_file() else ""

    def rows(self) -> list[dict[str, Any]]:
        assert self.report is not None, self.stdout[-3000:]
        return self.report["rows"]


def assert_safe_and_clear(
    run: Outcome, needle: str, hint: str, *, n: int = 2, secret_values: tuple[str, ...] = ()
) -> str:
    """Every check ERRORs with one and the same one-line reason naming ``needle`` and ``hint``; SAFE."""
    rows = run.rows()
    assert len(rows) == n, rows
    assert {r["verdict"] for r in rows} == {"error"}, [(r["test"], r["verdict"], r["reason"]) for r in rows]
    reasons = {r["reason"] for r in rows}
    assert len(reasons) == 1, reasons
    reason = reasons.pop()
    assert needle in reason and hint in reason, reason
    assert "\n" not in reason and "\x1b" not in reason and len(reason) < 1200, reason
    assert run.stdout.count(reason[:80]) >= n, run.stdout[-4000:]
    assert_safe(run, secret_values)
    return reason


def assert_safe(run: Outcome, secret_values: tuple[str, ...] = ()) -> None:
    """No secret in any output; nothing ran; nothing written outside the cache and the reports."""
    outputs = {"terminal": run.stdout, "json": json.dumps(run.report), "markdown": run.markdown}
    for where, text in outputs.items():
        for secret in (SECRET, *secret_values):
            assert secret not in text, (where, secret)
        assert "\x1b[" not in text or where == "terminal", where
    assert "Traceback" not in run.stdout and "INTERNALERROR" not in run.stdout, run.stdout[-4000:]
    assert not (run.root / "pwned").exists()
    outside = [k for k in run.written if not k.startswith(("cache/", "out/"))]
    assert not outside and not run.removed, (outside, run.removed)


def unrelated_passed(run: Outcome) -> bool:
    return "test_unrelated PASSED" in run.stdout or "1 passed" in run.stdout


def dedent(text: str) -> str:
    return textwrap.dedent(text)
