"""Root conftest of the test suite, torch-free: cache isolation, the Hypothesis profile, the shared fixtures.

The suite is in tiers: tests/unit (never imports torch), tests/engine, tests/plugin, tests/contracts,
tests/simulation and tests/hostile. The heavy pre-imports and the pytester patch that in-process runs need live in
_helpers/heavy.py, imported by the conftest of every tier but unit; the shared helpers live in tests/_helpers/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/ is importable by every tier: _helpers, table_model, text_helpers (prepend mode puts a rootless conftest's
# folder on sys.path as well; this states it)
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _helpers.project import Project  # noqa: E402

pytest_plugins = ["pytester"]

# The plugin's default cache folder is the user cache folder ($XDG_CACHE_HOME/pytest-forgetting):
# the suite, and every inner run it starts, must never write to the real one.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="forgetting-tests-xdg-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's inner runs get their own default cache folder (no cached base leaks between tests)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("FORGETTING_CACHE_DIR", raising=False)


# Property tests explore a fixed, seeded sequence of examples: CI must not turn red by chance.
# (Run with HYPOTHESIS_PROFILE=explore to search with fresh randomness.)
import hypothesis  # noqa: E402

hypothesis.settings.register_profile("forgetting-ci", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "forgetting-ci"))


@pytest.fixture
def make_project(pytester: pytest.Pytester):
    """A tiny linear model project inside pytester (_helpers/project.py); building it imports torch."""

    def make(**kw) -> Project:
        return Project(pytester, **kw)

    return make
