"""The unit tier: pure tests that never import torch.

Run alone (``pytest tests/unit``), the tier checks that promise: a test after which torch is in sys.modules gets
an error at teardown (once per process), and the session ends with exit status 1 if torch was imported during collection or a run.
FORGETTING_UNIT_REPORT=<path> writes the modules seen at the end of the session (used by tests/contracts).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from _helpers.pytester_modules import keep_heavy_modules

keep_heavy_modules()  # in-process pytester runs keep installed libraries (torch-free itself)

_UNIT = Path(__file__).resolve().parent
_WATCHED = ("torch", "safetensors", "transformers")
_ONLY_UNIT = pytest.StashKey[bool]()


def _in_unit(item: pytest.Item) -> bool:
    return _UNIT in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_ONLY_UNIT] = bool(items) and all(_in_unit(item) for item in items)


_REPORTED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _torch_stays_out(request: pytest.FixtureRequest):
    yield
    config = request.config
    if config.stash.get(_ONLY_UNIT, False) and "torch" in sys.modules and not config.stash.get(_REPORTED, False):
        config.stash[_REPORTED] = True  # once per process: the first test that sees it names the culprit
        pytest.fail(f"torch was imported in the unit tier (by {request.node.nodeid} or before it)", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    only_unit = session.config.stash.get(_ONLY_UNIT, False)
    seen = [name for name in _WATCHED if name in sys.modules]
    report = os.environ.get("FORGETTING_UNIT_REPORT")
    if report and only_unit:
        Path(report).write_text(json.dumps({"items": len(session.items), "heavy_modules": seen}))
    if only_unit and "torch" in seen and session.exitstatus == 0:
        sys.stderr.write("tests/unit imported torch: the unit tier must stay torch-free\n")
        session.exitstatus = 1
