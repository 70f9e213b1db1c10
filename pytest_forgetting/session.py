"""The forgetting session: one check at a time, as a pipeline over the stages of :mod:`.engine`.

One ``ForgettingSession`` lives per pytest process (controller or xdist worker). It is the only
object that knows about both models; the plugin hooks and fixtures hand off to it, and the Python
API (``forgetting.compare`` and friends) uses it directly. ``run_check`` reads as the pipeline:

1. load (``engine.models``): the two slots, their fingerprints, the refusals remembered on them;
2. run the base (``engine.evaluation``): memoised in the process, cached on disk across runs;
3. run the tuned model (the same; chunk by chunk under ``--forgetting-early-stop``), aligned by id;
4. decide (``engine.decision``, pure): the comparison, the budgets, the row.

Every cache key is built in ``engine.keys``. The names other modules and tests import from here
(``CheckResult``, ``ModelSlot``, ``TunedRegression``, ``align``, ...) are re-exported below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cache import EvalCache
from .checks import Check
from .engine import decision
from .engine.decision import N_FLIPPED_IDS, N_WORST_CLASSES, CheckResult, _encode_groups
from .engine.decision import correctness as _correctness
from .engine.evaluation import Evaluation, _computable_metrics, _empty_cuda_cache, _no_lock, align
from .engine.keys import _KEY_LIBRARIES, _MAX_SOURCE_BYTES
from .engine.keys import library_versions as _library_versions
from .engine.keys import model_code as _model_code
from .engine.keys import module_source_hash as _module_source_hash
from .engine.models import (
    Models,
    ModelSlot,
    TunedRegression,
    _again,
    _clean_message,
    _is_adapter,
    _offload_dir,
    _refusal,
    _refuse_nonfinite,
    _tokenizer_cache_id,
)
from .engine.models import raise_refusal as _raise_refusal
from .metrics import Metric
from .options import Settings
from .registry import REGISTRY
from .tasks.base import EvalResult, ModelMeta, Task

#: The names other modules, tests and benchmarks import from here; the engine holds them. A test that
#: replaces one of them must patch it where it is read, in its ``engine`` module.
__all__ = [
    "N_FLIPPED_IDS", "N_WORST_CLASSES", "CheckResult", "ForgettingSession", "ModelSlot", "TunedRegression", "align",
    "_KEY_LIBRARIES", "_MAX_SOURCE_BYTES", "_again", "_clean_message", "_computable_metrics", "_correctness",
    "_empty_cuda_cache", "_encode_groups", "_is_adapter", "_library_versions", "_model_code", "_module_source_hash",
    "_no_lock", "_offload_dir", "_raise_refusal", "_refusal", "_refuse_nonfinite", "_tokenizer_cache_id",
]  # fmt: skip


class ForgettingSession:
    """The models (``self.models``), their evaluations (``self.evaluation``) and the checks decided with them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        from .options import default_cache_dir

        self.cache = EvalCache(
            settings.cache_dir or default_cache_dir(), enabled=not settings.no_cache, rootdir=settings.rootdir
        )
        self.models = Models(settings, self.cache)
        self.evaluation = Evaluation(settings, self.cache, self.models)
        self.rows: list[dict[str, Any]] = []
        from .tasks import (
            lm_eval as lm_eval_source,  # standard library only: lm-eval is imported by its tasks
        )

        lm_eval_source.configure(settings)  # --forgetting-lm-eval-include / -fewshot for lm-eval:NAME tasks

    # -- the pipeline ------------------------------------------------------------------------
    def run_check(
        self,
        check: Check,
        *,
        test: str,
        base: ModelSlot | None = None,
        tuned: ModelSlot | None = None,
        candidate: str | None = None,
    ) -> CheckResult:
        """Evaluate both models on the check's task and decide. Raises ForgettingError for ERRORs.

        Under torch.distributed (``distributed.py``) rank 0 runs the pipeline (:meth:`_run_check`),
        every rank evaluates a shard and the other ranks return rank 0's result."""
        group = self.distributed
        if group is not None:
            return group.run_check(self, self._run_check, check, test=test, base=base, tuned=tuned, candidate=candidate)
        return self._run_check(check, test=test, base=base, tuned=tuned, candidate=candidate)

    def _run_check(
        self,
        check: Check,
        *,
        test: str,
        base: ModelSlot | None = None,
        tuned: ModelSlot | None = None,
        candidate: str | None = None,
    ) -> CheckResult:
        """The pipeline: resolve the task and both slots, load, run the base, run the tuned model, decide."""
        task = self.task(check.task)
        metric = task.check_metric(check.metric or task.default_metric)
        base, tuned = base or self.base_slot(), tuned or self.tuned_slot(candidate)
        row = decision.row_skeleton(check, metric, test, tuned.name)
        row["_chance"], row["_device"] = decision.chance(check, task, metric), self.models.device_label
        # load: the fingerprints name every cached evaluation; a base refused once errors every check, cached or not
        base_fp, tuned_fp = self.models.slot_fingerprint(base), self.models.slot_fingerprint(tuned)
        row["_fingerprints"] = {base.display: base_fp, tuned.display: tuned_fp}
        _raise_refusal(base)
        # run the base: computed now, or reused from memory or the cache (base_reuse says which)
        base_res, base_reuse = self.evaluate_reuse(base, task, check.split)
        row.update(
            base_reuse=base_reuse,
            base_cached=base_reuse != "computed",
            base_eval_s=round(base_res.seconds, 4) if base_reuse == "computed" else 0.0,
        )
        # run the tuned model (a broken one is a FAIL); early stopping decides as its chunks arrive
        try:
            if tuned_fp != base_fp or tuned.refused is not None:  # (the same files: the base's outputs are reused)
                self.load(tuned, base=base)  # a refusal (remembered): ERROR, or FAIL for NaN/Inf weights
            if decision.early_stoppable(check, metric, early_stop=self.settings.early_stop):
                return self._decide_early(check, task, metric, base_res, tuned, row)
            tuned_res, tuned_reuse = self.evaluate_reuse(tuned, task, check.split, base=base)
        except TunedRegression as exc:
            return decision.tuned_broken(check, metric, base_res, row, exc)
        row.update(
            tuned_reuse=tuned_reuse, tuned_eval_s=round(tuned_res.seconds, 4) if tuned_reuse == "computed" else 0.0
        )
        tuned_res = align(base_res, tuned_res, task.name)
        self.evaluation.where_weights_moved(check, task, base, tuned, base_fp, tuned_fp, row)
        # decide (pure)
        return decision.decide(
            check, task, metric, base_res, tuned_res, row, alpha=self.settings.alpha, seed=self.settings.seed
        )

    def _decide_early(
        self, check: Check, task: Task, metric: Metric, b: EvalResult, tuned: ModelSlot, row: dict[str, Any]
    ) -> CheckResult:
        """The tuned model evaluated chunk by chunk in seeded random order until the verdict is settled."""
        row["tuned_reuse"] = "computed"  # chunk by chunk, never cached
        plan = decision.SequentialPlan.of(task, check.split, b, seed=self.settings.seed, batch_size=self.batch_size)
        chunks = self.evaluation.in_chunks(tuned, task, check.split, plan.chunks())
        return decision.decide_early(check, metric, b, plan, chunks, row, alpha=self.settings.alpha)

    @property
    def distributed(self) -> Any:
        """The torch.distributed group of a data-parallel run, or None (created at the first check)."""
        if not hasattr(self, "_distributed"):
            from . import distributed

            self._distributed = distributed.setup(self.settings)
            if self._distributed is not None:
                group = self._distributed
                # every evaluation runs shard by shard on every rank (each rank's shard: ``_run(local=True)``)
                self.evaluation.remote = lambda slot, task, split, idx: group.evaluate(self, slot, task, split, idx)
                if group.rank != 0:
                    self.cache.enabled = False  # rank 0 alone reads and writes the cache
        return self._distributed

    # -- models (``engine.models``) ------------------------------------------------------------
    @property
    def base(self) -> ModelSlot | None:
        return self.models.base

    @property
    def candidates(self) -> dict[str, ModelSlot]:
        return self.models.candidates

    @property
    def device(self) -> str:
        return self.models.device

    @property
    def device_note(self) -> str:
        return self.models.device_note

    @property
    def digests(self) -> Any:
        return self.models.digests

    def base_slot(self) -> ModelSlot:
        return self.models.base_slot()

    def tuned_slot(self, candidate: str | None = None) -> ModelSlot:
        return self.models.tuned_slot(candidate)

    def ref_slot(self, role: str, ref: str) -> ModelSlot:
        return self.models.ref_slot(role, ref)

    def module_slot(self, role: str, module: Any) -> ModelSlot:
        return self.models.module_slot(role, module)

    def fingerprint(self, slot: ModelSlot) -> str:
        return self.models.fingerprint(slot)

    def load(self, slot: ModelSlot, *, base: ModelSlot | None = None, pair: bool = True) -> Any:
        return self.models.load(slot, base=base, pair=pair)

    def _base_tokenizer(self) -> Any:
        return self.models.base_tokenizer()

    def _meta(self, loaded: Any) -> ModelMeta:
        return self.models.meta(loaded)

    # -- tasks and evaluations (``engine.evaluation``) ---------------------------------------------
    def task(self, name: str) -> Task:
        return REGISTRY.get(name)

    @property
    def batch_size(self) -> int:
        return self.evaluation.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.evaluation.batch_size = value

    @property
    def _prepared(self) -> dict[tuple[str, str, str], Any]:
        return self.evaluation._prepared

    @property
    def _results(self) -> dict[tuple[str, str, str, str], tuple[EvalResult, str]]:
        return self.evaluation._results

    def indices(self, task: Task, split: str) -> np.ndarray:
        return self.evaluation.indices(task, split)

    def _prepare(self, task: Task, split: str, meta: ModelMeta) -> Any:
        return self.evaluation.prepare(task, split, meta)

    def _run(self, slot: ModelSlot, task: Task, split: str, idx: np.ndarray, *, local: bool = False) -> EvalResult:
        """One model on ``idx`` of a split (``Evaluation.run``); ``distributed.py`` calls it for each rank's shard."""
        return self.evaluation.run(slot, task, split, idx, local=local)

    def evaluate(self, slot: ModelSlot, task: Task, split: str) -> tuple[EvalResult, bool]:
        """(result, reused): :meth:`evaluate_reuse` with its reuse kind as a bool (True: not computed now)."""
        result, reuse = self.evaluate_reuse(slot, task, split)
        return result, reuse != "computed"

    def evaluate_reuse(
        self, slot: ModelSlot, task: Task, split: str, *, base: ModelSlot | None = None
    ) -> tuple[EvalResult, str]:
        """(result, reuse kind): ``"computed"`` now, ``"memory"`` (earlier in this process) or ``"cache"``."""
        return self.evaluation.evaluate_reuse(slot, task, split, base=base)

    def _eval_key(
        self, slot: ModelSlot, fp: str, task: Task, split: str, idx: np.ndarray, *, base: ModelSlot | None = None
    ) -> dict[str, Any] | None:
        """The cache key of an evaluation (built by ``engine.keys``), or None: not cached."""
        return self.evaluation.key(slot, fp, task, split, idx, base=base)
