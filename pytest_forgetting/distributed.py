"""Data-parallel evaluation over torch.distributed: every rank evaluates a shard, rank 0 decides.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment) or with
``--forgetting-distributed``, every rank runs the same pytest session (same tests, same order).
For each check:

- rank 0 runs the check as a single process would (cache look-ups, loading, deciding); each time
  it needs a model's outputs on examples ``idx`` it tells the other ranks (``run``), and every
  rank evaluates its shard of ``idx``: the examples are dealt round-robin in the order of their
  ids, so shards are deterministic and balanced whatever the ranks' order of arrival;
- the shards' outputs are gathered to rank 0, which puts them back in the order of ``idx``: the
  same ``EvalResult`` as one process (outputs per example do not depend on the batching);
- rank 0 alone writes the evaluation cache, the table and the reports; when it has decided it
  sends the result (``done``), and the other ranks' tests take rank 0's verdict, row and
  comparison as their own (or raise the same error), so every rank's pytest outcome agrees.

An error while evaluating a shard (NaN/Inf outputs, a failing batch) travels to rank 0 with the
outputs, so no rank waits forever on the others. Messages use torch.distributed's object
collectives over a gloo group (CPU tensors: results are numpy arrays); a process group that the
launcher or the user's code set up is used as it is (plus a gloo group beside an NCCL one), else
one is created from the launcher's environment (``env://``).

``torch.distributed`` is imported only when distributed evaluation is on.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from .errors import EvaluationError, ForgettingError

if TYPE_CHECKING:
    import numpy as np

_group: Group | None = None


def launched_world() -> int:
    """Processes the launcher started (``WORLD_SIZE``), 1 without a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def wanted(settings: Any) -> bool:
    return bool(getattr(settings, "distributed", False)) or launched_world() > 1


def rank() -> int:
    """This process's rank (0 without distributed evaluation); no torch import."""
    if _group is not None:
        return _group.rank
    if launched_world() > 1:
        try:
            return int(os.environ.get("RANK", "0") or 0)
        except ValueError:
            return 0
    return 0


def setup(settings: Any) -> Group | None:
    """The process group of this run (created once), or None for a single process."""
    global _group
    if _group is None and wanted(settings):
        _group = Group()
        if _group.world < 2:
            _group = None
    return _group


def reset() -> None:
    """Forget the group (tests); a process group created here is destroyed."""
    global _group
    if _group is not None and _group.owned:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _group = None


def shards(ids: np.ndarray, world: int) -> np.ndarray:
    """Owner rank of each example: dealt round-robin in the order of the ids (deterministic, balanced)."""
    import numpy as np

    order = np.argsort(np.asarray(ids).astype(str), kind="stable")
    owner = np.empty(len(order), dtype=np.int64)
    owner[order] = np.arange(len(order)) % world
    return owner


class Group:
    def __init__(self) -> None:
        import torch.distributed as dist

        self.owned = False
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", init_method="env://")
            self.owned = True
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.objects = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        #: examples this rank evaluated (by task), for the tests and the README's promise
        self.evaluated: dict[str, int] = {}

    # -- messages ----------------------------------------------------------------------------
    def send(self, message: Any) -> Any:
        """Rank 0's ``message`` to every rank (the others pass None and get it)."""
        import torch.distributed as dist

        box = [message if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def gather(self, part: Any) -> list[Any] | None:
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(part, out, dst=0, group=self.objects)
        return out

    # -- a check -----------------------------------------------------------------------------
    def run_check(self, session: Any, inner: Any, check: Any, **kwargs: Any) -> Any:
        """Rank 0: ``inner(check, **kwargs)``, then its result to the others; other ranks: serve."""
        if self.rank != 0:
            return self._serve(session, check, **kwargs)
        try:
            result = inner(check, **kwargs)
        except BaseException as exc:
            self.send(("done", None, _portable(exc)))
            raise
        self.send(("done", _result_parts(result), None))
        return result

    def _serve(
        self, session: Any, check: Any, *, test: str, base: Any = None, tuned: Any = None, candidate: str | None = None
    ) -> Any:
        from .session import CheckResult

        slots: dict[str, Any] = {}
        while True:
            message = self.send(None)
            if message[0] == "done":
                _, parts, error = message
                if error is not None:
                    raise _rebuild(error)
                comparison, row, budgets = parts
                return CheckResult(check, comparison, row, budgets)
            _, role, task_name, split, idx = message
            if role not in slots:
                slots[role] = (
                    (base or session.base_slot()) if role == "base" else (tuned or session.tuned_slot(candidate))
                )
            task = session.task(task_name)
            self.gather(self._local(session, slots[role], task, split, idx))

    # -- an evaluation -----------------------------------------------------------------------
    def evaluate(self, session: Any, slot: Any, task: Any, split: str, idx: np.ndarray) -> Any:
        """Rank 0: the outputs of ``slot`` on ``idx``, evaluated shard by shard on every rank."""
        import numpy as np

        from .evaluate import NonFiniteOutputs
        from .tasks.base import EvalResult

        start = time.perf_counter()
        idx = np.asarray(idx, dtype=np.int64)
        self.send(("run", slot.role, task.name, split, idx))
        parts = self.gather(self._local(session, slot, task, split, idx))
        assert parts is not None
        ids = task.ids(split)
        owner = shards(ids[idx], self.world)
        errors = [(r, p[1]) for r, p in enumerate(parts) if p is not None and p[0] == "error"]
        if errors:
            if all(e[0] == "NonFiniteOutputs" for _, e in errors):  # one message, as one process words it
                bad = sorted((pos for _, e in errors for pos in e[3]))
                count = sum(e[4] for _, e in errors)
                names = ids[idx[bad]].tolist()
                raise NonFiniteOutputs(
                    f"NaN/Inf outputs on {count} of {len(idx)} examples (e.g. {', '.join(names[:3])})", names[:10]
                )
            raise _rebuild(errors[0][1])
        outputs: dict[str, np.ndarray] = {}
        for r, part in enumerate(parts):
            if part is None:
                continue
            where = np.flatnonzero(owner == r)
            for key, value in part[1].items():
                value = np.asarray(value)
                if key not in outputs:
                    outputs[key] = np.zeros((len(idx), *value.shape[1:]), dtype=value.dtype)
                outputs[key][where] = value
        return EvalResult(ids=ids[idx], outputs=outputs, seconds=time.perf_counter() - start)

    def _local(self, session: Any, slot: Any, task: Any, split: str, idx: np.ndarray) -> Any:
        """This rank's shard: ("ok", outputs), ("error", portable error) or None (an empty shard)."""
        from .evaluate import NonFiniteOutputs

        ids = task.ids(split)
        mine = idx[shards(ids[idx], self.world) == self.rank]
        if len(mine) == 0:
            return None
        self.evaluated[task.name] = self.evaluated.get(task.name, 0) + len(mine)
        try:
            result = session._run(slot, task, split, mine, local=True)
        except NonFiniteOutputs as exc:
            pos = {i: k for k, i in enumerate(ids[idx].tolist())}
            bad = [pos[i] for i in exc.ids if i in pos]
            match = re.search(r"on (\d+) of", str(exc))
            return ("error", ("NonFiniteOutputs", str(exc), "", bad, int(match.group(1)) if match else len(bad)))
        except Exception as exc:  # noqa: BLE001 - every error reaches rank 0, which raises it for the check
            return ("error", _portable(exc))
        return ("ok", result.outputs)


def _result_parts(result: Any) -> Any:
    return (result.comparison, result.row, list(result.budgets))


def _portable(exc: BaseException) -> tuple[str, str, str, list[int], int]:
    """(class name, message, module, -, -) of an exception: rebuilt on the other ranks by :func:`_rebuild`."""
    return (type(exc).__name__, str(exc), type(exc).__module__, [], 0)


def _rebuild(error: tuple[str, str, str, list[int], int]) -> BaseException:
    from . import errors

    name, message, module, _, _ = error
    if name == "NonFiniteOutputs":
        from .evaluate import NonFiniteOutputs

        return NonFiniteOutputs(message, [])
    if name == "TunedRegression":
        from .session import TunedRegression

        return TunedRegression(message)
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ForgettingError):
        return cls(message)
    return EvaluationError(f"{name}: {message}" if message else name)
