"""The progress line (issue 18, point 3): shown for a slow evaluation, not for a fast one, with
and without pytest-xdist; never in a test's captured output; the summary table unchanged.

The delay before a line is shown is lowered to 0.2 s (``FORGETTING_PROGRESS_DELAY``) so that a
model sleeping 50 ms per batch is "slow" without slowing the suite.
"""

from __future__ import annotations

import re

import pytest

from pytest_forgetting import progress

SLOW = """
import time
from torch import nn
import tinymodels


class Slow(nn.Sequential):
    def forward(self, x):
        time.sleep(0.05)
        return super().forward(x)


def build():
    return Slow(*tinymodels.build())
"""

TESTS = """
import pytest


@pytest.mark.retains("synth", max_drop=0.3)
def test_fails_and_prints():
    print("hello from the test body")
    assert False
"""

LINE = re.compile(r"forgetting: (base|tuned) model.* on task 'synth': \d+/400 examples")


@pytest.fixture
def project(make_project, monkeypatch):
    monkeypatch.setenv("FORGETTING_PROGRESS_DELAY", "0.2")
    monkeypatch.setenv("FORGETTING_PROGRESS_INTERVAL", "30")
    proj = make_project(n=400, trap=40)
    proj.pytester.makepyfile(slowmodels=SLOW, test_progress_demo=TESTS)
    tuned = proj.tuned(trap_weight=10.0)

    def args(slow: bool, *extra: str) -> list[str]:
        out = proj.args(tuned, "--forgetting-no-cache", "--forgetting-device=cpu", "--forgetting-batch-size=32", *extra)
        if slow:
            out[out.index("tinymodels:build")] = "slowmodels:build"
        return out

    proj.make_args = args
    return proj


def _summary(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "forgetting summary" in line)
    return [line for line in lines[start:] if not line.startswith("=")][:6]


def _captured(text: str) -> str:
    """The failure report's captured-output sections."""
    return "\n".join(re.findall(r"-+ Captured .*?(?=\n[-=_]{5,}|\Z)", text, flags=re.S))


def test_slow_evaluation_shows_a_line_fast_one_none_and_captured_output_is_unchanged(project):
    pt = project.pytester
    slow = pt.runpytest(*project.make_args(True))
    out = slow.stdout.str()
    assert slow.ret == 1
    assert LINE.search(out), out
    assert re.search(r"forgetting: base model on task 'synth': 400/400 examples in ", out), out
    captured = _captured(out)
    assert "hello from the test body" in captured and "forgetting: " not in captured

    quiet_off = pt.runpytest(*project.make_args(True, "--forgetting-progress=off"))
    assert not LINE.search(quiet_off.stdout.str())
    assert _summary(quiet_off.stdout.str()) == _summary(out)  # the table is the same with or without progress
    assert _captured(quiet_off.stdout.str()) == captured

    fast = pt.runpytest(*project.make_args(False))
    assert fast.ret == 1
    assert not LINE.search(fast.stdout.str())
    assert _summary(fast.stdout.str()) == _summary(out)


def test_quiet_runs_show_no_line_unless_on(project):
    pt = project.pytester
    assert not LINE.search(pt.runpytest("-q", *project.make_args(True)).stdout.str())
    assert LINE.search(pt.runpytest("-q", *project.make_args(True, "--forgetting-progress=on")).stdout.str())


def test_with_two_xdist_workers(project):
    pytest.importorskip("xdist")
    pt = project.pytester
    slow = pt.runpytest_subprocess("-n", "2", "-p", "no:randomly", *project.make_args(True))
    text = slow.stdout.str() + "\n" + slow.stderr.str()
    assert slow.ret == 1
    assert re.search(r"\[gw\d\] forgetting: (base|tuned) model.* on task 'synth': \d+/400 examples", text), text
    assert "forgetting summary" in slow.stdout.str()
    fast = pt.runpytest_subprocess("-n", "2", "-p", "no:randomly", *project.make_args(False))
    assert not LINE.search(fast.stdout.str() + fast.stderr.str())
    assert _summary(fast.stdout.str()) == _summary(slow.stdout.str())


def test_line_format():
    line = progress.format_line("tuned model 'a'", "mnist", 2500, 10000, 5.0)
    assert line == "forgetting: tuned model 'a' on task 'mnist': 2500/10000 examples (25%), 500 ex/s, ETA 15 s"
    assert progress._seconds(75) == "1 min 15 s" and progress._seconds(7300) == "2 h 01 min"


def test_no_reporter_no_callback():
    previous = progress._reporter
    progress._reporter = None
    try:
        with progress.evaluation("base model", "t", 10) as tick:
            assert tick is None
    finally:
        progress._reporter = previous
