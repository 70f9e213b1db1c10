"""Determinism and progress lines of one ``finetune`` call."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .info import FinetuneInfo

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def deterministic(seed: int, device: torch.device) -> Iterator[None]:
    """Seeded RNG (forked: the caller's is untouched) and deterministic kernels for one call."""
    import torch

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn
    cudnn_state = (cudnn.deterministic, cudnn.benchmark)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        cudnn.deterministic, cudnn.benchmark = True, False
        try:
            with torch.enable_grad():
                yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=was_warn)
            cudnn.deterministic, cudnn.benchmark = cudnn_state


class _Progress:
    """Progress lines at most every ``every_steps`` steps (or every ``every_s`` seconds) and a final one."""

    def __init__(
        self, write: Callable[[str], None] | None, label: str, every_steps: int | None, every_s: float = 5.0
    ) -> None:
        self.write, self.label, self.every_steps, self.every_s = write, label, every_steps, every_s
        self.start = self.last = time.perf_counter()
        self.printed = False

    def step(self, step: int, total: int, epoch: int, loss: float, lr: float) -> None:
        if self.write is None:
            return
        now = time.perf_counter()
        due = (step % self.every_steps == 0) if self.every_steps else (now - self.last >= self.every_s)
        if due:
            self.last, self.printed = now, True
            self.write(
                f"{self.label} step {step}/{total} epoch {epoch + 1} loss {loss:.4f} lr {lr:.2e} "
                f"({now - self.start:.1f}s)"
            )

    def done(self, info: FinetuneInfo) -> None:
        if self.write is not None and self.printed:
            loss = f", final loss {info.final_loss:.4f}" if info.final_loss is not None else ""
            self.write(f"{self.label} done: {info.steps} steps in {info.seconds:.1f}s ({info.stopped}){loss}")
