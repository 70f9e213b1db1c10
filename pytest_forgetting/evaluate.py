"""Running a model over a task split: batched, deterministic, under ``torch.inference_mode()``.

Both models see exactly the same batches (same indices, batch size and padding), in eval
mode, in the same dtype and on the same device. The loop is kept as thin as a hand-written
one: per-example outputs stay on the device until the end, one copy back per output.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import ConfigError, EvaluationError, ForgettingError
from .tasks.base import EvalResult, ModelMeta, Task, tokenizer_of

DTYPES = ("float32", "bfloat16", "float16")
_END = object()


class NonFiniteOutputs(EvaluationError):
    """The model produced NaN/Inf outputs on some examples."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class BatchFailure(EvaluationError):
    """The task's batching or the model's forward raised on one batch.

    The message says where (``task 'x' batch 3 (examples 192-255, ids a..b)``) and what
    (``RuntimeError: ...``), escaped to one line; the session prefixes the model
    (``tuned model 'cand' failed on ...``). ``cause`` is the original exception.
    """

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


#: longest excerpt of a model's own exception message in an error line
ERROR_TEXT_LIMIT = 300


def describe_error(exc: BaseException, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``Type: message`` of an exception as one escaped line (no raw newline, ANSI or control character)."""
    from .escape import terminal

    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = ""
    name = type(exc).__name__
    return f"{name}: {terminal(text, limit)}" if text else name


def _batch_where(task: Task, number: int, lo: int, hi: int, ids: np.ndarray, indices: np.ndarray) -> str:
    from .escape import terminal

    where = f"task '{terminal(task.name, 80)}' batch {number}"
    if hi <= lo:  # a batch that yields no per-example outputs (e.g. fitting a probe)
        return where
    first, last = (terminal(ids[indices[k]], 40) for k in (lo, hi - 1))
    span = f"{first}" if hi - lo == 1 else f"{first}..{last}"
    return f"{where} (examples {lo}-{hi - 1}, ids {span})"


def resolve_device(spec: str) -> tuple[str, str]:
    """(device, note): ``auto`` picks CUDA when available; an unavailable CUDA is an error, never a skip."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            device, note = worker_device(torch.cuda.device_count())
            return device, f"auto -> {device}" + (f" ({note})" if note else "")
        return "cpu", "auto -> cpu (no CUDA device)"
    if spec == "cpu":
        return "cpu", ""
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--forgetting-device {spec}: CUDA is not available on this machine "
                f"(torch {torch.__version__}); use auto or cpu"
            )
        if spec == "cuda":
            return worker_device(torch.cuda.device_count())
        if ":" in spec:
            index = int(spec.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise ConfigError(f"--forgetting-device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return spec, ""
    raise ConfigError(f"--forgetting-device {spec!r}: expected auto, cpu, cuda or cuda:N")


def worker_device(count: int) -> tuple[str, str]:
    """Under pytest-xdist, worker k takes GPU k (mod the number of GPUs) so workers do not share one;
    under a torch.distributed launcher (torchrun sets ``LOCAL_RANK``), local rank k takes GPU k."""
    import os

    local = os.environ.get("LOCAL_RANK", "")
    if count > 1 and local.isdigit() and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        index = int(local) % count
        return f"cuda:{index}", f"local rank {local} -> cuda:{index}"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if count > 1 and worker.startswith("gw") and worker[2:].isdigit():
        index = int(worker[2:]) % count
        return f"cuda:{index}", f"xdist worker {worker} -> cuda:{index}"
    return "cuda", ""


def is_dispatched(model: Any) -> bool:
    """True for a model accelerate split over devices / offloaded (``from_pretrained(device_map=...)``).

    Such a model must not be moved with ``.to()`` (accelerate refuses for offloaded modules); its
    hooks move activations between the devices.
    """
    return bool(getattr(model, "hf_device_map", None))


def input_device(model: Any, default: str) -> str:
    """Where a batch goes: ``default`` (the session's device), or for a dispatched model the device
    accelerate executes its first modules on: the first entry of ``hf_device_map`` that is neither
    ``cpu`` nor ``disk`` (accelerate's main device; offloaded modules run there too), else the CPU.
    """
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return default
    for device in device_map.values():
        if isinstance(device, int):
            return f"cuda:{device}"
        if str(device) not in ("cpu", "disk", "meta"):
            return str(device)
    return "cpu"


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Seeded, deterministic kernels for the duration of an evaluation; the caller's state is restored."""
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = _fill_uninitialized(None)
    rng = torch.random.get_rng_state()
    set_deterministic(True, warn_only=True)
    # deterministic mode also fills every new tensor with NaN before use (torch.utils.deterministic.
    # fill_uninitialized_memory): a write of every activation that costs a few percent of a small
    # model's forward pass and changes no result of a correct kernel
    _fill_uninitialized(False)
    torch.manual_seed(0)
    try:
        yield
    finally:
        set_deterministic(was, warn_only=was_warn)
        _fill_uninitialized(was_fill)
        torch.random.set_rng_state(rng)


def _fill_uninitialized(mode: bool | None) -> bool | None:
    """Read (``mode=None``) or set torch's fill-uninitialized-memory flag; None where torch lacks it."""
    import torch

    getter = getattr(torch._C, "_get_deterministic_fill_uninitialized_memory", None)
    setter = getattr(torch._C, "_set_deterministic_fill_uninitialized_memory", None)
    if getter is None or setter is None:
        return None
    if mode is not None:
        setter(mode)
    return bool(getter())


def set_deterministic(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its import of ``torch._inductor.config``.

    That import pulls in torch._dynamo and sympy: seconds on a small machine, paid by every run of
    a plain-torch model. The inductor flag only matters to ``torch.compile``d models, and
    ``torch.compile`` imports ``torch._dynamo`` first; so while ``torch._dynamo`` is not loaded no
    compiled model can exist and the C-level switch alone is the same thing.
    """
    import sys

    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._dynamo" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def _to_device(batch: Any, device: Any, dtype: Any) -> Any:
    """Cast floating tensors to the evaluation dtype and copy to ``device``.

    On CUDA a CPU batch is first copied into page-locked (pinned) memory, so the host-to-device
    copy is truly asynchronous and overlaps with the previous batch's kernels; elsewhere
    ``non_blocking`` is a no-op.
    """
    import torch

    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            batch = batch.to(dtype)
        if device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, dtype) for v in batch)
    return batch


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_model(
    task: Task,
    model: Any,
    prepared: Any,
    indices: np.ndarray,
    ids: np.ndarray,
    *,
    device: str,
    dtype: str,
    batch_size: int,
    static: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``indices`` of a prepared split; raises NonFiniteOutputs on NaN/Inf.

    Where the task gives per-example lengths (:meth:`Task.lengths`: tokenised inputs), the
    requested examples run sorted by length (stable, so ties keep their order) and every output
    is put back in the requested order: batches carry little padding, and as the order depends on
    the inputs alone, both models see exactly the same batches. ``progress(done)`` is called after
    every batch with the number of examples done so far.
    """
    import torch

    tdtype = torch_dtype(dtype)
    dev = torch.device(input_device(model, device))
    collected: dict[str, list[Any]] = {}
    start = time.perf_counter()
    done = number = 0  # examples with outputs so far; batches so far
    requested = np.asarray(indices)
    order = bucket_order(task, prepared, requested)
    if order is not None:  # length-bucketed: batches of similar lengths, outputs put back in request order
        indices = requested[order]
    with deterministic(), torch.inference_mode():
        batches = iter(task.batches(prepared, indices, batch_size))
        while True:
            try:
                batch = next(batches, _END)
                if batch is _END:
                    break
                out = task.forward(model, _to_device(batch, dev, tdtype))
            except Exception as exc:  # noqa: BLE001 - one line naming the batch; OOM stays raw for the back-off
                if isinstance(exc, (NonFiniteOutputs, ForgettingError)) or is_oom(exc):
                    raise  # the plugin's own errors already say what is wrong; OOM stays raw for the back-off
                hi = min(done + batch_size, len(indices))
                raise BatchFailure(
                    f"failed on {_batch_where(task, number, done, hi, ids, indices)}: {describe_error(exc)}", exc
                ) from exc
            number += 1
            for key, value in out.items():
                collected.setdefault(key, []).append(value)
            first: Any = next(iter(out.values()), None)
            done += int(first.shape[0]) if getattr(first, "ndim", 0) else 0
            if progress is not None:
                progress(done)
    outputs: dict[str, np.ndarray] = {}
    for key, parts in collected.items():
        tensor = torch.cat([p.reshape(p.shape[0], *p.shape[1:]) for p in parts]) if parts else torch.empty(0)
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            tensor = tensor.float()
        outputs[key] = tensor.cpu().numpy()
    if order is not None:
        outputs = restore_order(outputs, order)
        indices = requested
    seconds = time.perf_counter() - start
    finite = outputs.pop(task.finite_key, None) if task.finite_key is not None else None
    if finite is not None and not bool(np.all(finite)):
        bad = ids[indices][~finite.astype(bool)]
        raise NonFiniteOutputs(
            f"NaN/Inf outputs on {len(bad)} of {len(indices)} examples (e.g. {', '.join(bad[:3].tolist())})",
            bad[:10].tolist(),
        )
    if static:
        for key, value in static.items():
            outputs.setdefault(key, value[indices])
    return EvalResult(ids=ids[indices], outputs=outputs, seconds=seconds)


def bucket_order(task: Task, prepared: Any, indices: np.ndarray) -> np.ndarray | None:
    """Positions of ``indices`` sorted by the task's per-example lengths (stable), or None when the
    task gives none (or the order would not change)."""
    if len(indices) < 2:
        return None
    lengths = task.lengths(prepared)
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.shape[0] <= int(indices.max(initial=0)):
        return None  # not one length per example of the split: run in the requested order
    order = np.argsort(lengths[indices], kind="stable")
    if bool(np.all(order == np.arange(len(order)))):
        return None
    return order


def restore_order(outputs: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs computed in ``order`` (positions of the request), back in the request's order."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {k: (v[inverse] if getattr(v, "ndim", 0) and v.shape[0] == len(order) else v) for k, v in outputs.items()}


def evaluate(
    task: Task,
    model: Any,
    *,
    split: str,
    meta: ModelMeta | None = None,
    indices: np.ndarray | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 64,
    prepared: Any = None,
) -> EvalResult:
    """One-shot evaluation (prepares the split itself unless ``prepared`` is given).

    Without ``meta``, the tokenizer is the one the module carries (a module from ``load_checkpoint``
    or ``finetune`` carries its checkpoint's).
    """
    ids = task.ids(split)
    if indices is None:
        indices = np.arange(len(ids))
    if prepared is None:
        if meta is None:
            meta = ModelMeta(tokenizer=tokenizer_of(model), config=getattr(model, "config", None))
        prepared = task.prepare(split, meta)
    return run_model(
        task,
        model,
        prepared,
        indices,
        ids,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        static=task.static_outputs(split),
    )
