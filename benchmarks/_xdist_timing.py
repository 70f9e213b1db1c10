"""A pytest plugin for benchmarks/xdist_bench.py: where each process of a run spends its CPU time.

Loaded with ``-p _xdist_timing`` (benchmarks/ on PYTHONPATH; pytest-xdist passes ``-p`` on to its
workers). Every process (the xdist controller, each worker, or the single process of ``-n 0``)
appends one JSON line to ``$XDIST_TIMING_LOG`` at exit: its CPU seconds (user + system, this
process only) at pytest_configure, once collection is done, spent inside test runs (setup, call and
teardown: where the models are loaded, evaluated and fine-tuned), at pytest_unconfigure and at exit,
and whether torch was imported. Measuring CPU rather than wall time makes the numbers comparable on
a machine whose load changes while the benchmark runs.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

import pytest

_STATE: dict = {"w": "main", "tests": 0.0, "n_tests": 0}


def _cpu() -> float:
    return time.process_time()


def _write() -> None:
    path = os.environ.get("XDIST_TIMING_LOG")
    if not path:
        return
    _STATE["exit"] = _cpu()
    _STATE["torch"] = "torch" in sys.modules
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_STATE) + "\n")


atexit.register(_write)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        _STATE["w"] = str(workerinput.get("workerid", "gw?"))
    elif config.getoption("numprocesses", None) and config.getoption("dist", "no") != "no":
        _STATE["w"] = "controller"
    _STATE["configure"] = _cpu()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    _STATE["collected"] = _cpu()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    start = _cpu()
    try:
        return (yield)
    finally:
        _STATE["tests"] += _cpu() - start
        _STATE["n_tests"] += 1


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    _STATE["unconfigure"] = _cpu()
