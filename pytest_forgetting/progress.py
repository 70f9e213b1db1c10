"""A progress line per evaluation: model, task, examples done / total, rate and ETA.

Shown only for an evaluation that runs longer than ``DELAY_S`` (2 s), and never inside a test's
captured output: the line is written to pytest's terminal with capturing suspended, as pytest's
live logging does. ``--forgetting-progress``:

- ``auto`` (default): not under ``-q``; on a terminal one line rewritten in place, otherwise
  (CI logs) a line every ``INTERVAL_S`` (30 s); on a pytest-xdist worker a line every
  ``INTERVAL_S`` prefixed with the worker's id, on the terminal the workers share (their stderr);
  under torch.distributed only rank 0 reports;
- ``on``: the same under ``-q`` too;
- ``off``: never.

The session (pytest-free) asks :func:`evaluation` for a callback; without a configured reporter
(the session used as a library) it gets None and nothing is printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

#: an evaluation shows progress only once it has run this long (seconds; $FORGETTING_PROGRESS_DELAY)
DELAY_S = 2.0
#: seconds between two lines where no line can be rewritten in place (CI logs, xdist workers;
#: $FORGETTING_PROGRESS_INTERVAL)
INTERVAL_S = 30.0
#: seconds between two rewrites of the line on a terminal
REFRESH_S = 0.25

_reporter: Reporter | None = None


def configure(config: Any, mode: str) -> Reporter | None:
    """Called once per pytest run (``state.configure``): where progress lines go, if anywhere.

    Returns the reporter it replaces (a pytest run inside another one, as pytester runs them)."""
    global _reporter
    previous, _reporter = _reporter, (Reporter(config, mode) if mode != "off" else None)
    return previous


def restore(previous: Reporter | None) -> Callable[[], None]:
    """A cleanup that puts ``previous`` back at the end of the run."""

    def put_back() -> None:
        global _reporter
        _reporter = previous

    return put_back


@contextlib.contextmanager
def evaluation(model: str, task: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """``with evaluation("tuned model 'x'", "mnist", 10000) as tick: ... tick(done)`` (tick may be None)."""
    rep = _reporter
    if rep is None or not rep.enabled() or total <= 0:
        yield None
        return
    line = _Line(rep, model, task, total)
    try:
        yield line.tick
    finally:
        line.close()


def format_line(model: str, task: str, done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    pct = 100.0 * done / total if total else 100.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    eta_text = _seconds(eta) if eta != float("inf") else "?"
    return (
        f"forgetting: {model} on task '{task}': {done}/{total} examples ({pct:.0f}%), {rate:,.0f} ex/s, ETA {eta_text}"
    )


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _seconds_from_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value >= 0 else default


class Reporter:
    def __init__(self, config: Any, mode: str) -> None:
        self.config = config
        self.mode = mode
        self.worker = getattr(config, "workerinput", {}).get("workerid") if hasattr(config, "workerinput") else None

    def enabled(self) -> bool:
        if self.mode == "off":
            return False
        from . import distributed

        if distributed.rank() > 0:  # rank 0 reports for all
            return False
        return self.mode == "on" or int(getattr(self.config.option, "verbose", 0)) >= 0

    def terminal(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def in_place(self) -> bool:
        tr = self.terminal()
        return self.worker is None and tr is not None and bool(getattr(tr, "isatty", False))

    @contextlib.contextmanager
    def uncaptured(self) -> Iterator[None]:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if capman is None:
            yield
            return
        with capman.global_and_fixture_disabled():
            yield

    def write(self, text: str, *, rewrite: bool, first: bool, last: bool) -> None:
        from .escape import terminal

        text = terminal(text, 300)
        with self.uncaptured():
            if self.worker is not None:  # the controller's terminal is the workers' stderr too
                sys.stderr.write(f"[{self.worker}] {text}\n")
                sys.stderr.flush()
                return
            tr = self.terminal()
            if tr is None:
                return
            if not rewrite:
                tr.ensure_newline()  # the next test result starts a fresh line with its file name
                tr.write_line(text)
            else:
                if first:
                    tr.ensure_newline()
                tr.rewrite(text, erase=True)
                if last:
                    tr.write("\n")
            tw = getattr(tr, "_tw", None)
            if tw is not None and hasattr(tw, "flush"):
                tw.flush()


class _Line:
    def __init__(self, rep: Reporter, model: str, task: str, total: int) -> None:
        self.rep, self.model, self.task, self.total = rep, model, task, total
        self.start = time.perf_counter()
        self.last: float | None = None
        self.done = 0
        self.rewrite = rep.in_place()
        self.delay = _seconds_from_env("FORGETTING_PROGRESS_DELAY", DELAY_S)
        self.interval = _seconds_from_env("FORGETTING_PROGRESS_INTERVAL", INTERVAL_S)

    def tick(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        elapsed = now - self.start
        if elapsed < self.delay:
            return
        gap = REFRESH_S if self.rewrite else self.interval
        if self.last is not None and now - self.last < gap:
            return
        self.rep.write(
            format_line(self.model, self.task, done, self.total, elapsed),
            rewrite=self.rewrite,
            first=self.last is None,
            last=False,
        )
        self.last = now

    def close(self) -> None:
        if self.last is None:
            return  # a fast evaluation: nothing was shown
        elapsed = time.perf_counter() - self.start
        text = (
            f"forgetting: {self.model} on task '{self.task}': {self.done}/{self.total} examples in {_seconds(elapsed)}"
        )
        self.rep.write(text, rewrite=self.rewrite, first=False, last=True)
