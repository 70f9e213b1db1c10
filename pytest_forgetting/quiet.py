"""Loading without transformers' progress bars ("Loading weights ..."), which every failing test's
captured stderr would otherwise carry. The user's own setting is restored afterwards."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def uses_transformers(ref: Any) -> bool:
    """Whether loading ``ref`` goes through transformers (a folder, a hub id, a GGUF file), not a factory's file."""
    if not isinstance(ref, str):
        return False
    return os.path.isdir(ref) or ref.lower().endswith(".gguf") or not os.path.exists(ref)


@contextlib.contextmanager
def no_progress_bars(load: bool = True) -> Iterator[None]:
    """transformers' and huggingface_hub's tqdm bars off inside the block.

    transformers is imported for it only when ``load`` says the block loads through it (importing it
    costs seconds); when it is imported already, its bars are silenced whatever ``load`` says.
    """
    tl: Any = sys.modules.get("transformers.utils.logging")
    if tl is None and not load:
        yield
        return
    if tl is None:
        try:
            import transformers.utils.logging as tl  # noqa: F811 - a checkpoint load imports it anyway
        except Exception:  # noqa: BLE001 - no transformers: nothing to silence
            yield
            return
    are_progress_bars_disabled: Any
    disable_progress_bars: Any
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    except Exception:  # noqa: BLE001
        are_progress_bars_disabled = disable_progress_bars = None
    was_on = tl.is_progress_bar_enabled()
    hub_off = bool(are_progress_bars_disabled()) if are_progress_bars_disabled is not None else False
    if was_on:
        tl.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            tl.enable_progress_bar()
            if hub_off and disable_progress_bars is not None:  # enable_progress_bar turned the hub's on too
                disable_progress_bars()
