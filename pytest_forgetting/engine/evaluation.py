"""Prepare-and-run stage: inputs, the evaluation of one model, its caches, and alignment.

:class:`Evaluation` prepares a task's inputs once per (task, split, tokenizer) in a process and on
disk across runs, evaluates one model on the session's subsample (one ``EvaluationError`` naming the
model, the task and the batch; CUDA out of memory halves the batch size under
``--forgetting-batch-size auto``), and memoises and caches every evaluation: the base's and a tuned
model's alike, on disk under a lock per key (``engine.keys``), so a rerun or another xdist worker
reuses them. :func:`align` puts a tuned evaluation in the base's example order (by id, never by
position). ``where_weights_moved`` adds the drift table of a pair to a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .. import progress
from ..cache import EvalCache
from ..checks import Check
from ..errors import EvaluationError, ForgettingError, TaskError
from ..escape import terminal
from ..evaluate import BatchFailure, NonFiniteOutputs, describe_error, is_oom, run_model
from ..options import Settings
from ..tasks.base import EvalResult, ModelMeta, Task, hash_arrays
from .keys import BaseEvalKey, EvalParts, PreparedKey, TunedEvalKey
from .models import Models, ModelSlot, TunedRegression


class Evaluation:
    """One model's outputs on a task's subsample: prepared inputs, the run, the memo and the disk cache."""

    def __init__(self, settings: Settings, cache: EvalCache, models: Models) -> None:
        self.settings = settings
        self.cache = cache
        self.models = models
        #: the batch size of every run (halved on CUDA out of memory under ``auto``); part of the cache key
        self.batch_size = 64 if settings.batch_size == "auto" else int(settings.batch_size)
        #: evaluates on every rank of a torch.distributed group (set by the session), or None
        self.remote: Callable[[ModelSlot, Task, str, np.ndarray], EvalResult] | None = None
        self._prepared: dict[tuple[str, str, str], Any] = {}
        self._results: dict[tuple[str, str, str, str], tuple[EvalResult, str]] = {}
        self._drift_tables: dict[tuple[str, ...], Any] = {}

    def indices(self, task: Task, split: str) -> np.ndarray:
        n = task.size(split)
        if n == 0:
            raise TaskError(f"task {task.name!r} split {split!r} has no examples")
        limit = self.settings.limit
        if limit is None or limit >= n:
            return np.arange(n)
        rng = np.random.default_rng(self.settings.seed)
        return np.sort(rng.choice(n, size=limit, replace=False))

    def prepare(self, task: Task, split: str, meta: ModelMeta) -> Any:
        """Inputs prepared once per (task, split, tokenizer) in a process, and across runs on disk."""
        key = (task.name, split, task.prepare_key(meta))
        if key not in self._prepared:
            if task.cache_prepared and meta.tokenizer_cache_id:
                disk_key = PreparedKey.of(task, split, meta).to_dict()
                prepared = self.cache.load_prepared(disk_key, n_examples=task.size(split))
                if prepared is None:
                    prepared = task.prepare(split, meta)
                    self.cache.store_prepared(disk_key, prepared)
            else:
                prepared = task.prepare(split, meta)
            self._prepared[key] = prepared
        return self._prepared[key]

    def run(self, slot: ModelSlot, task: Task, split: str, idx: np.ndarray, *, local: bool = False) -> EvalResult:
        """Evaluate one model on ``idx`` of a split. An exception of the model's forward (or of the
        task around it) is one EvaluationError naming the model, the task and the batch; CUDA out
        of memory halves the batch size under ``--forgetting-batch-size auto``. Under
        torch.distributed every rank evaluates a shard (``remote``; ``local``: this process's shard)."""
        if not local and self.remote is not None:
            return self.remote(slot, task, split, idx)
        loaded = self.models.load(slot, pair=False)  # run_check compared it with its base already
        try:
            meta = self.models.meta(loaded)
            from ..mismatch import check_fit

            check_fit(
                slot.label, slot.ref, task, meta, loaded.model
            )  # headless encoder, images for a text model, no tokenizer
            task.check_model(meta)  # a label map that cannot fit the task: one clear line, before any batch
            whole = task.evaluate_model(
                loaded.model,
                meta,
                split,
                idx,
                device=self.models.device,
                dtype=self.settings.dtype,
                batch_size=self.settings.batch_size if self.settings.batch_size == "auto" else self.batch_size,
            )
            if whole is not None:  # the task ran the model itself (lm-eval)
                return whole
            prepared = self.prepare(task, split, meta)
        except ForgettingError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a checkpoint's tokenizer that crashes on the texts
            raise EvaluationError(
                f"{slot.label} failed preparing task '{terminal(task.name, 80)}' (its tokenizer, the task's inputs): "
                f"{describe_error(exc)}"
            ) from None
        while True:
            try:
                with progress.evaluation(slot.label, task.name, len(idx)) as tick:
                    return run_model(
                        task,
                        loaded.model,
                        prepared,
                        idx,
                        task.ids(split),
                        device=self.models.device,
                        dtype=self.settings.dtype,
                        batch_size=self.batch_size,
                        static=task.static_outputs(split),
                        progress=tick,
                    )
            except NonFiniteOutputs:
                raise
            except BatchFailure as exc:
                raise EvaluationError(f"{slot.label} {exc}") from None
            except Exception as exc:  # noqa: BLE001 - collecting outputs, moving them: still one line
                if isinstance(exc, RuntimeError) and is_oom(exc):
                    if self.settings.batch_size == "auto" and self.batch_size > 1:
                        self.batch_size //= 2
                        _empty_cuda_cache()
                        continue
                    raise EvaluationError(
                        f"out of memory evaluating {slot.label} on task '{terminal(task.name, 80)}' "
                        f"at batch size {self.batch_size}; "
                        "try --forgetting-batch-size auto or a smaller N"
                    ) from None
                raise EvaluationError(
                    f"{slot.label} failed on task '{terminal(task.name, 80)}': {describe_error(exc)}"
                ) from None

    def in_chunks(self, slot: ModelSlot, task: Task, split: str, chunks: Iterable[np.ndarray]) -> Iterator[EvalResult]:
        """``run`` on each chunk of split indices, one at a time, as the caller asks for them (early
        stopping stops asking); NaN/Inf outputs are a broken tuned model (never cached)."""
        for idx in chunks:
            try:
                yield self.run(slot, task, split, idx)
            except NonFiniteOutputs as exc:
                raise TunedRegression(f"tuned model produces NaN/Inf: {exc}") from None

    def evaluate_reuse(
        self, slot: ModelSlot, task: Task, split: str, *, base: ModelSlot | None = None
    ) -> tuple[EvalResult, str]:
        """(result, reuse kind): ``"computed"`` now, ``"memory"`` (earlier in this process) or ``"cache"``.

        Base and tuned evaluations alike go through the on-disk cache, keyed by the model's content
        fingerprint (:meth:`key`), so another xdist worker, or a rerun, reuses them; every
        evaluation is memoised in the process. ``base`` is the base a tuned model is compared with
        (default: the session's): a PEFT adapter's outputs, or a module's borrowed tokenizer, depend on it.
        """
        idx = self.indices(task, split)
        fp = self.models.fingerprint(slot)
        memo = (fp, task.name, split, hash_arrays(idx))
        if memo in self._results:  # evaluated earlier in this process: reused, not recomputed
            return self._results[memo][0], "memory"
        key = self.key(slot, fp, task, split, idx, base=base)
        static = {k: np.asarray(v)[idx] for k, v in task.static_outputs(split).items()}

        def computes(outputs: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
            # every metric that could be computed from the fresh outputs can be from the entry
            return set(meta.get("metrics", [])) <= set(_computable_metrics(task, outputs))

        with self.cache.lock(key) if key is not None else _no_lock():
            cached = (
                self.cache.load(key, ids=task.ids(split)[idx], static=static, validate=computes)
                if key is not None
                else None
            )
            if cached is not None:
                out = (cached, "cache")
            else:
                try:
                    result = self.run(slot, task, split, idx)
                except NonFiniteOutputs as exc:  # never stored: a broken model is evaluated (and refused) every run
                    if slot.role == "base":
                        raise EvaluationError(f"base model produces NaN/Inf: {exc}") from None
                    raise TunedRegression(f"tuned model produces NaN/Inf: {exc}") from None
                if key is not None:
                    self.cache.store(key, result, meta={"metrics": _computable_metrics(task, result.outputs)})
                out = (result, "computed")
        self._results[memo] = out
        return out

    def key(
        self, slot: ModelSlot, fp: str, task: Task, split: str, idx: np.ndarray, *, base: ModelSlot | None = None
    ) -> dict[str, Any] | None:
        """The cache key of an evaluation (``engine.keys``), or None: not cached.

        A base's key is a :class:`BaseEvalKey`, a tuned model's a :class:`TunedEvalKey` (with the
        fingerprint of the base it is paired with). An in-memory module's key also names its
        tokenizer (its fingerprint covers the weights only); an exotic tokenizer means no key.
        """
        parts = EvalParts.of(
            slot.ref, task, split, idx, settings=self.settings, device=self.models.device, batch_size=self.batch_size
        )
        pair_fp = None
        if slot.role != "base":
            pair = base if base is not None else self.models.base
            try:
                pair_fp = self.models.fingerprint(pair) if pair is not None else None
            except Exception:  # noqa: BLE001 - the base's own problem is reported where the base is used
                return None
        tokenizer = None
        if not isinstance(slot.ref, str):
            if slot.loaded is None:
                return None
            try:
                meta = self.models.meta(slot.loaded)
            except Exception:  # noqa: BLE001 - a tokenizer that crashes is reported by run, naming the model
                return None
            if meta.tokenizer is not None and meta.tokenizer_cache_id is None:
                return None  # an exotic tokenizer: no disk cache rather than a wrong one
            tokenizer = (meta.tokenizer_fingerprint, meta.tokenizer_cache_id)
        if slot.role == "base":
            return BaseEvalKey(fp, parts, tokenizer).to_dict()
        return TunedEvalKey(fp, parts, pair_fp, tokenizer).to_dict()

    def where_weights_moved(
        self,
        check: Check,
        task: Task,
        base: ModelSlot,
        tuned: ModelSlot,
        base_fp: str,
        tuned_fp: str,
        row: dict[str, Any],
    ) -> None:
        """``row["weight_drift"]``: the per-block drift table of the pair (``drift.py``), computed once per
        pair from the models in memory (None when one of them was never loaded: both outputs cached);
        with ``--forgetting-representation-drift`` also ``row["representation_cka"]`` per layer."""
        from .. import drift

        memo = self._drift_tables
        key = (base_fp, tuned_fp)
        if key not in memo:
            b = base.loaded.model if base.loaded is not None else None
            t = tuned.loaded.model if tuned.loaded is not None else (b if tuned_fp == base_fp else None)
            b = b if b is not None or tuned_fp != base_fp else t
            table = None
            if b is not None and t is not None:
                try:
                    table = drift.drift_table(b, t).to_rows()
                except Exception:  # noqa: BLE001 - meta / offloaded parameters: no table rather than an ERROR
                    table = None
            memo[key] = table
        row["weight_drift"] = memo[key]
        if self.settings.representation_drift and base.loaded is not None and tuned.loaded is not None:
            ckey = (base_fp, tuned_fp, task.name, check.split)
            if ckey not in memo:
                try:
                    meta = self.models.meta(base.loaded)
                    prepared = self.prepare(task, check.split, meta)
                    idx = self.indices(task, check.split)[:512]
                    batches = list(task.batches(prepared, idx, self.batch_size))
                    memo[ckey] = drift.representation_cka(
                        base.loaded.model, tuned.loaded.model, batches, device=self.models.device
                    )
                except Exception:  # noqa: BLE001 - a model without hidden_states (not a Hugging Face one)
                    memo[ckey] = None
            row["representation_cka"] = memo[ckey]


def align(base: EvalResult, tuned: EvalResult, task: str) -> EvalResult:
    """Reorder ``tuned`` to ``base``'s ids; alignment is by id, never by position."""
    for name, res in (("base", base), ("tuned", tuned)):
        uniq, counts = np.unique(res.ids, return_counts=True)
        if (counts > 1).any():
            raise TaskError(
                f"task {task!r}: duplicate example ids in the {name} evaluation: {uniq[counts > 1][:3].tolist()}"
            )
    if len(base.ids) == len(tuned.ids) and np.array_equal(base.ids, tuned.ids):
        return tuned
    missing = np.setdiff1d(base.ids, tuned.ids)
    extra = np.setdiff1d(tuned.ids, base.ids)
    if len(missing) or len(extra):
        raise TaskError(
            f"task {task!r}: base and tuned evaluations cover different examples "
            f"(missing in tuned: {missing[:3].tolist()}, only in tuned: {extra[:3].tolist()})"
        )
    order = np.argsort(tuned.ids)
    pos = order[np.searchsorted(tuned.ids[order], base.ids)]
    return EvalResult(ids=base.ids, outputs={k: v[pos] for k, v in tuned.outputs.items()}, seconds=tuned.seconds)


def _computable_metrics(task: Task, outputs: dict[str, np.ndarray]) -> list[str]:
    """Names of the task's metrics that compute (to a number) from these outputs."""
    ok = []
    for name, metric in task.metrics.items():
        try:
            with np.errstate(all="ignore"):
                float(metric.value(outputs))
        except Exception:  # noqa: BLE001, S112 - a missing key, a wrong shape: that metric cannot be computed
            continue
        ok.append(name)
    return sorted(ok)


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
