"""The ``finetune`` fixture's object: ``finetune(model=None, train=..., ...)`` inside a pytest session."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import ForgettingError
from ..tasks.base import tokenizer_of
from .run import finetune
from .spec import FinetuneError

if TYPE_CHECKING:
    from torch import nn


class Finetuner:
    """The ``finetune`` fixture: ``finetune(model=None, train=..., strategy=..., ...) -> nn.Module``.

    ``model=None`` fine-tunes (a copy of) the base checkpoint; the device is
    ``--forgetting-device``; progress goes to the pytest terminal; ``wise_ft(alpha="auto")``
    decides with the same session, statistics and cached base evaluations as ``forgetting``.
    """

    def __init__(self, run_state: Any, write: Callable[[str], None] | None = None) -> None:
        self._state = run_state
        self._write = write

    def __call__(self, model: Any = None, train: Any = None, **kwargs: Any) -> nn.Module:
        __tracebackhide__ = True
        try:
            return self._call(model, train, **kwargs)
        except ForgettingError as exc:
            from ..escape import terminal  # task and file names in the error: one visible line

            pytest.fail(terminal(f"finetune: {exc}"), pytrace=False)

    def _call(self, model: Any, train: Any, **kwargs: Any) -> nn.Module:
        if train is None:
            raise FinetuneError("finetune() needs train= (a task name such as 'digits-28', a Task or a Dataset)")
        session = self._state.session
        tokenizer = kwargs.pop("tokenizer", None)
        if model is None:
            loaded = session.load(session.base_slot())
            model, tokenizer = loaded.model, tokenizer if tokenizer is not None else loaded.tokenizer
        elif tokenizer is None and tokenizer_of(model) is None:  # a module of the user's: the base's tokenizer
            tokenizer = session._base_tokenizer()
        kwargs.setdefault("device", session.device)
        kwargs.setdefault("progress", self._write)
        return finetune(model, train, session=session, tokenizer=tokenizer, **kwargs)


def terminal_writer(config: Any) -> Callable[[str], None] | None:
    """Lines to the pytest terminal, around output capture (None on xdist workers or without a terminal)."""
    if hasattr(config, "workerinput"):
        return None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return None

    def write(line: str) -> None:
        ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        with ctx:
            reporter.ensure_newline()
            reporter.write_line(line)

    return write


def fixture(config: Any) -> Finetuner:
    """What the ``finetune`` fixture returns."""
    from ..state import state

    return Finetuner(state(config), terminal_writer(config))
