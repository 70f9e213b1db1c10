"""The forgetting session: loads checkpoints lazily, evaluates tasks (base cached), decides checks.

One ``ForgettingSession`` lives per pytest process (controller or xdist worker). It is the
only place that knows about both models; the plugin hooks and fixtures hand off to it, and
the Python API (``forgetting.compare`` and friends) uses it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats
from .cache import EvalCache
from .checks import Check
from .errors import CheckpointError, ConfigError, EvaluationError, ForgettingError, TaskError
from .escape import terminal
from . import progress
from .evaluate import BatchFailure, NonFiniteOutputs, describe_error, is_dispatched, is_oom, resolve_device, run_model
from .metrics import Metric, PerExampleMetric
from .options import Settings, candidate_name
from .registry import REGISTRY
from .results import CheckRow
from .tasks.base import EvalResult, ModelMeta, Task, hash_arrays

# every cache key is built in engine.keys (re-exported: the old names of the key parts)
from .engine.keys import BaseEvalKey, EvalParts, PreparedKey, TunedEvalKey  # noqa: E402, I001
from .engine.keys import _KEY_LIBRARIES, _MAX_SOURCE_BYTES, library_versions as _library_versions  # noqa: E402, F401
from .engine.keys import model_code as _model_code, module_source_hash as _module_source_hash  # noqa: E402, F401

N_FLIPPED_IDS = 5
N_WORST_CLASSES = 3


class TunedRegression(Exception):
    """The tuned model itself is broken (NaN/Inf): a FAIL of the check, not an ERROR."""


@dataclass
class ModelSlot:
    """A checkpoint reference (or module) that is fingerprinted and loaded on first use."""

    role: str
    ref: Any
    name: str = ""
    loaded: Any = None
    _fingerprint: str | None = None
    #: why this checkpoint was refused (exception class, message): every later use raises it again
    refused: tuple[type, str] | None = field(default=None, repr=False)
    #: compatibility with each base it was checked against: base fingerprint -> refusal or None
    _pairs: dict[str, tuple[type, str] | None] = field(default_factory=dict, repr=False)

    @property
    def display(self) -> str:
        return self.ref if isinstance(self.ref, str) else f"<in-memory {type(self.ref).__name__}>"

    @property
    def label(self) -> str:
        """How evaluation errors name the model: ``base model``, ``tuned model 'name'``."""
        from .escape import terminal

        if self.role == "base":
            return "base model"
        return f"{self.role} model '{terminal(self.name or self.display, 120)}'"


@dataclass
class CheckResult:
    """A decided check: its ``Comparison`` (None when the tuned model is broken) and its frozen row.

    The session fills a plain dict while it runs the check (``_row_skeleton`` and the steps after
    it); the result freezes it into a :class:`~pytest_forgetting.results.CheckRow`.
    """

    check: Check
    comparison: stats.Comparison | None
    row: CheckRow
    budgets: list[stats.Budget] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.row = CheckRow.from_dict(self.row)

    @property
    def verdict(self) -> str:
        return self.row["verdict"]


class ForgettingSession:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        from .options import default_cache_dir

        self.cache = EvalCache(settings.cache_dir or default_cache_dir(), enabled=not settings.no_cache, rootdir=settings.rootdir)
        self._device: tuple[str, str] | None = None
        self.base = ModelSlot("base", settings.base_ckpt) if settings.base_ckpt else None
        refs = settings.tuned_ckpts
        self.candidates: dict[str, ModelSlot] = {
            candidate_name(r, refs) if len(refs) > 1 else "": ModelSlot("tuned", r, candidate_name(r, refs) if len(refs) > 1 else "")
            for r in refs
        }
        self._prepared: dict[tuple[str, str, str], Any] = {}
        self._results: dict[tuple[str, str, str, str], tuple[EvalResult, bool]] = {}
        self.batch_size = 64 if settings.batch_size == "auto" else int(settings.batch_size)
        self.rows: list[dict[str, Any]] = []
        self._digests: Any = None
        from .tasks import lm_eval as lm_eval_source  # standard library only: lm-eval is imported by its tasks

        lm_eval_source.configure(settings)  # --forgetting-lm-eval-include / -fewshot for lm-eval:NAME tasks

    # -- device and models -------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.settings.device)
        return self._device[0]

    @property
    def device_note(self) -> str:
        return self._device[1] if self._device else ""

    def tuned_slot(self, candidate: str | None = None) -> ModelSlot:
        if not self.candidates:
            raise ConfigError(
                "no tuned checkpoint: pass --tuned-ckpt REF (or set $FORGETTING_TUNED_CKPT / ini forgetting_tuned_ckpt)"
            )
        if candidate is None:
            return next(iter(self.candidates.values()))
        if candidate not in self.candidates:
            raise ConfigError(f"no tuned candidate named {candidate!r}; the candidates are {', '.join(map(repr, self.candidates))}")
        return self.candidates[candidate]

    def base_slot(self) -> ModelSlot:
        if self.base is None:
            raise ConfigError("no base checkpoint: pass --base-ckpt REF (or set $FORGETTING_BASE_CKPT / ini forgetting_base_ckpt)")
        return self.base

    @property
    def digests(self) -> Any:
        """File hashes of unchanged checkpoint files, kept beside the evaluation cache."""
        if self._digests is None:
            from .checkpoints import FileDigests

            # only in a cache folder that passed its checks (not a symbolic link, ours, not tracked by git)
            self._digests = FileDigests(self.cache.directory / "file-digests.json" if self.cache.usable() else None)
        return self._digests

    def fingerprint(self, slot: ModelSlot) -> str:
        from . import checkpoints

        if slot._fingerprint is None:
            if slot.loaded is not None:
                slot._fingerprint = slot.loaded.fingerprint
            else:
                slot._fingerprint = checkpoints.fingerprint_ref(
                    slot.ref, rootdir=self.settings.rootdir, allow_pickle=self.settings.allow_pickle,
                    allow_download=self.settings.allow_download, digests=self.digests,
                )  # fmt: skip
        return slot._fingerprint

    def load(self, slot: ModelSlot, *, base: ModelSlot | None = None, pair: bool = True) -> Any:
        """The LoadedCheckpoint of a slot, on the session's device and dtype, in eval mode.

        With ``--forgetting-device-map`` a Hugging Face folder is loaded by accelerate straight onto
        the devices of the map (in the session's dtype) and left there: a dispatched model is
        never moved with ``.to()``, and its inputs go to its first device (``run_model``).

        A refusal (any load error, NaN/Inf weights, a base it cannot be compared with) is
        remembered on the slot: every later call raises it again, with the same kind and message,
        so no later check of that checkpoint can PASS. ``base`` is the base a tuned model is
        checked against (default: the session's); ``pair=False`` skips that check (``_run``: the
        caller did it).
        """
        _raise_refusal(slot)
        if slot.loaded is None:
            try:
                loaded = self._load_new(slot)
            except Exception as exc:  # noqa: BLE001 - remembered, then raised as one clean line
                raise self._refuse(slot, exc) from None
            slot.loaded = loaded  # only a checkpoint that passed every check is kept
        if pair and slot.role == "tuned":
            self._check_pair(base if base is not None else self.base, slot)
        return slot.loaded

    def _load_new(self, slot: ModelSlot) -> Any:
        """Load, place and check (NaN/Inf weights) a slot's checkpoint; the caller stores it."""
        from . import checkpoints
        from .evaluate import torch_dtype

        base_loaded = None
        if slot.role == "tuned" and _is_adapter(slot.ref):
            if self.settings.device_map is not None:  # refused before the base is loaded for nothing
                raise CheckpointError(f"tuned checkpoint {slot.display}: {checkpoints.DEVICE_MAP_NEEDS_HF_FOLDER}, not a PEFT adapter")
            base_loaded = self.load(self.base_slot())
        from .quiet import no_progress_bars, uses_transformers

        with no_progress_bars(uses_transformers(slot.ref)):  # no "Loading weights" bars in every test's stderr
            loaded = checkpoints.load_checkpoint(
                slot.ref,
                role=slot.role,
                model_factory=self.settings.model_factory,
                allow_pickle=self.settings.allow_pickle,
                trust_remote_code=self.settings.trust_remote_code,
                allow_download=self.settings.allow_download,
                rootdir=self.settings.rootdir,
                base=base_loaded,
                digests=self.digests,
                **self._placement(),
            )
        if not is_dispatched(loaded.model):  # accelerate placed a dispatched one; .to() would raise
            loaded.model.to(device=self.device, dtype=torch_dtype(self.settings.dtype))
        loaded.model.eval()
        _refuse_nonfinite(slot, loaded.model)
        return loaded

    def _refuse(self, slot: ModelSlot, exc: Exception) -> Exception:
        """Remember why ``slot`` is refused and return the exception to raise (now and on every later use)."""
        slot.refused = _refusal(slot, exc)
        return _again(slot.refused)

    def _check_pair(self, base: ModelSlot | None, tuned: ModelSlot) -> None:
        """Refuse a tuned model whose labels or vocabulary differ from ``base`` (remembered per base)."""
        from . import checkpoints

        if base is None or tuned.loaded is None:
            return
        try:
            key = self.fingerprint(base)
        except Exception:  # noqa: BLE001 - the base's own problem is reported where the base is used
            return
        if key not in tuned._pairs:
            try:
                base_meta = base.loaded or checkpoints.load_metadata(
                    base.ref, rootdir=self.settings.rootdir, trust_remote_code=self.settings.trust_remote_code
                )
                checkpoints.check_compatible(base_meta, tuned.loaded)
                tuned._pairs[key] = None
            except Exception as exc:  # noqa: BLE001
                tuned._pairs[key] = _refusal(tuned, exc, name_it=True)
        refusal = tuned._pairs[key]
        if refusal is not None:
            raise _again(refusal)

    def _slot_fingerprint(self, slot: ModelSlot) -> str:
        """``fingerprint`` of a slot that raises its remembered refusal (and remembers a new one)."""
        if slot.refused is not None and slot._fingerprint is None and not issubclass(slot.refused[0], TunedRegression):
            raise _again(slot.refused)  # (NaN/Inf weights are a FAIL of the check, raised by load)
        try:
            return self.fingerprint(slot)
        except Exception as exc:  # noqa: BLE001
            slot.refused = _refusal(slot, exc, name_it=not str(exc).startswith(f"{slot.role} checkpoint"))
            raise _again(slot.refused) from None

    def ref_slot(self, role: str, ref: str) -> ModelSlot:
        """The slot of a checkpoint reference (Python API): the session's own when it is the same
        checkpoint, else one per (role, ref) for the whole session, so a refusal is remembered."""
        if role == "base" and self.base is not None and self.base.ref == ref:
            return self.base
        if role == "tuned":
            for cand in self.candidates.values():
                if cand.ref == ref:
                    return cand
        slots = self.__dict__.setdefault("_ref_slots", {})
        if (role, ref) not in slots:
            slots[(role, ref)] = ModelSlot(role, ref)
        return slots[(role, ref)]

    def module_slot(self, role: str, module: Any) -> ModelSlot:
        """Wrap an in-memory nn.Module (Python API) as a slot, reusing the checkpoint machinery.

        A module this session loaded (the ``base_model`` / ``tuned_model`` fixtures) keeps its
        checkpoint's tokenizer and candidate name, fingerprinted by its current weights (a test may
        have changed them in place). Another module keeps the tokenizer it carries
        (``tasks.base.attach_tokenizer``: checkpoint loading and ``finetune`` attach one) and is
        otherwise fed with the base checkpoint's.
        """
        from . import checkpoints

        for known in (self.base, *self.candidates.values()):
            if known is not None and known.role == role and known.loaded is not None and known.loaded.model is module:
                return ModelSlot(role, module, name=known.name, loaded=known.loaded, _fingerprint=checkpoints.fingerprint_ref(module))
        slot = ModelSlot(role, module, name="")
        from .evaluate import torch_dtype

        try:
            loaded = checkpoints.load_checkpoint(module, role=role)
            if loaded.tokenizer is None:
                loaded.tokenizer = self._base_tokenizer()
            if not is_dispatched(loaded.model):  # a module the caller dispatched with accelerate stays put
                loaded.model.to(device=self.device, dtype=torch_dtype(self.settings.dtype))
            loaded.model.eval()
            slot._fingerprint = loaded.fingerprint
            _refuse_nonfinite(slot, loaded.model)
        except Exception as exc:  # noqa: BLE001 - raised where the slot is used: an ERROR (a FAIL for NaN/Inf weights)
            slot.refused = _refusal(slot, exc)
            return slot
        slot.loaded = loaded
        return slot

    def _base_tokenizer(self) -> Any:
        """The base checkpoint's tokenizer (read without building its model when it is not loaded), or None."""
        from . import checkpoints
        from .errors import ForgettingError

        base = self.base
        if base is None:
            return None
        if base.loaded is not None:
            return base.loaded.tokenizer
        if not isinstance(base.ref, str):
            return None
        if "_base_tokenizer_memo" not in self.__dict__:  # read once: API calls come once per test
            try:
                meta = checkpoints.load_metadata(base.ref, rootdir=self.settings.rootdir, trust_remote_code=self.settings.trust_remote_code)
                self._base_tokenizer_memo = meta.tokenizer
            except ForgettingError:  # the base's own check reports what is wrong with it
                self._base_tokenizer_memo = None
        return self._base_tokenizer_memo

    def _placement(self) -> dict[str, Any]:
        """load_checkpoint's device_map / max_memory / offload_folder / dtype under --forgetting-device-map."""
        if self.settings.device_map is None:
            return {}
        from .options import parse_device_map, parse_max_memory

        return {
            "device_map": parse_device_map(self.settings.device_map),
            "max_memory": parse_max_memory(self.settings.max_memory) if self.settings.max_memory else None,
            # one folder per model: base and tuned offload weights of the same names
            "offload_folder": _offload_dir(self.cache),
            "dtype": self.settings.dtype,
        }

    # -- tasks and evaluation ----------------------------------------------------------------
    def task(self, name: str) -> Task:
        return REGISTRY.get(name)

    def indices(self, task: Task, split: str) -> np.ndarray:
        n = task.size(split)
        if n == 0:
            raise TaskError(f"task {task.name!r} split {split!r} has no examples")
        limit = self.settings.limit
        if limit is None or limit >= n:
            return np.arange(n)
        rng = np.random.default_rng(self.settings.seed)
        return np.sort(rng.choice(n, size=limit, replace=False))

    def _meta(self, loaded: Any) -> ModelMeta:
        """What tasks need of a checkpoint (memoised: hashing a large vocabulary is not free)."""
        meta = getattr(loaded, "_forgetting_meta", None)
        if meta is None:
            meta = self._compute_meta(loaded)
            try:
                loaded._forgetting_meta = meta
            except AttributeError:  # a slotted object: recompute next time
                pass
        return meta

    def _compute_meta(self, loaded: Any) -> ModelMeta:
        tok = getattr(loaded, "tokenizer", None)
        if tok is None:
            return ModelMeta(config=getattr(loaded, "config", None))
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        joined = "\n".join(f"{token}\t{index}" for token, index in sorted(vocab.items()))
        fp = hash_arrays(type(tok).__name__, joined, getattr(tok, "model_max_length", None))
        return ModelMeta(tokenizer=tok, tokenizer_fingerprint=fp, config=getattr(loaded, "config", None), tokenizer_cache_id=_tokenizer_cache_id(tok))

    def _prepare(self, task: Task, split: str, meta: ModelMeta) -> Any:
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

    def _run(self, slot: ModelSlot, task: Task, split: str, idx: np.ndarray, *, local: bool = False) -> EvalResult:
        """Evaluate one model on ``idx`` of a split. An exception of the model's forward (or of the
        task around it) is one EvaluationError naming the model, the task and the batch; CUDA out
        of memory halves the batch size under ``--forgetting-batch-size auto``. Under
        torch.distributed every rank evaluates a shard (``local``: this process's shard)."""
        if not local and getattr(self, "_distributed", None) is not None:
            return self._distributed.evaluate(self, slot, task, split, idx)
        loaded = self.load(slot, pair=False)  # run_check compared it with its base already
        try:
            meta = self._meta(loaded)
            from .mismatch import check_fit

            check_fit(slot.label, slot.ref, task, meta, loaded.model)  # headless encoder, images for a text model, no tokenizer
            task.check_model(meta)  # a label map that cannot fit the task: one clear line, before any batch
            whole = task.evaluate_model(loaded.model, meta, split, idx, device=self.device, dtype=self.settings.dtype,
                                        batch_size=self.settings.batch_size if self.settings.batch_size == "auto" else self.batch_size)
            if whole is not None:  # the task ran the model itself (lm-eval)
                return whole
            prepared = self._prepare(task, split, meta)
        except ForgettingError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a checkpoint's tokenizer that crashes on the texts
            raise EvaluationError(
                f"{slot.label} failed preparing task '{terminal(task.name, 80)}' (its tokenizer, the task's inputs): {describe_error(exc)}"
            ) from None
        while True:
            try:
                with progress.evaluation(slot.label, task.name, len(idx)) as tick:
                    return run_model(
                        task, loaded.model, prepared, idx, task.ids(split),
                        device=self.device, dtype=self.settings.dtype, batch_size=self.batch_size,
                        static=task.static_outputs(split), progress=tick,
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
                        f"out of memory evaluating {slot.label} on task '{terminal(task.name, 80)}' at batch size {self.batch_size}; "
                        "try --forgetting-batch-size auto or a smaller N"
                    ) from None
                raise EvaluationError(f"{slot.label} failed on task '{terminal(task.name, 80)}': {describe_error(exc)}") from None

    def evaluate(self, slot: ModelSlot, task: Task, split: str) -> tuple[EvalResult, bool]:
        """(result, reused): :meth:`evaluate_reuse` with its reuse kind as a bool (True: not computed now)."""
        result, reuse = self.evaluate_reuse(slot, task, split)
        return result, reuse != "computed"

    def evaluate_reuse(self, slot: ModelSlot, task: Task, split: str, *, base: ModelSlot | None = None) -> tuple[EvalResult, str]:
        """(result, reuse kind): ``"computed"`` now, ``"memory"`` (earlier in this process) or ``"cache"``.

        Base and tuned evaluations alike go through the on-disk cache, keyed by the model's content
        fingerprint (:meth:`_eval_key`), so another xdist worker, or a rerun, reuses them; every
        evaluation is memoised in the process. ``base`` is the base a tuned model is compared with
        (default: the session's): a PEFT adapter's outputs, or a module's borrowed tokenizer, depend on it.
        """
        idx = self.indices(task, split)
        fp = self.fingerprint(slot)
        memo = (fp, task.name, split, hash_arrays(idx))
        if memo in self._results:  # evaluated earlier in this process: reused, not recomputed
            return self._results[memo][0], "memory"
        key = self._eval_key(slot, fp, task, split, idx, base=base)
        static = {k: np.asarray(v)[idx] for k, v in task.static_outputs(split).items()}

        def computes(outputs: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
            # every metric that could be computed from the fresh outputs can be from the entry
            return set(meta.get("metrics", [])) <= set(_computable_metrics(task, outputs))

        with self.cache.lock(key) if key is not None else _no_lock():
            cached = self.cache.load(key, ids=task.ids(split)[idx], static=static, validate=computes) if key is not None else None
            if cached is not None:
                out = (cached, "cache")
            else:
                try:
                    result = self._run(slot, task, split, idx)
                except NonFiniteOutputs as exc:  # never stored: a broken model is evaluated (and refused) every run
                    if slot.role == "base":
                        raise EvaluationError(f"base model produces NaN/Inf: {exc}") from None
                    raise TunedRegression(f"tuned model produces NaN/Inf: {exc}") from None
                if key is not None:
                    self.cache.store(key, result, meta={"metrics": _computable_metrics(task, result.outputs)})
                out = (result, "computed")
        self._results[memo] = out
        return out

    def _eval_key(self, slot: ModelSlot, fp: str, task: Task, split: str, idx: np.ndarray, *,
                  base: ModelSlot | None = None) -> dict[str, Any] | None:
        """The cache key of an evaluation (``engine.keys``), or None: not cached.

        A base's key is a :class:`BaseEvalKey`, a tuned model's a :class:`TunedEvalKey` (with the
        fingerprint of the base it is paired with). An in-memory module's key also names its
        tokenizer (its fingerprint covers the weights only); an exotic tokenizer means no key.
        """
        parts = EvalParts.of(slot.ref, task, split, idx, settings=self.settings, device=self.device,
                             batch_size=self.batch_size)
        pair_fp = None
        if slot.role != "base":
            pair = base if base is not None else self.base
            try:
                pair_fp = self.fingerprint(pair) if pair is not None else None
            except Exception:  # noqa: BLE001 - the base's own problem is reported where the base is used
                return None
        tokenizer = None
        if not isinstance(slot.ref, str):
            if slot.loaded is None:
                return None
            try:
                meta = self._meta(slot.loaded)
            except Exception:  # noqa: BLE001 - a tokenizer that crashes is reported by _run, naming the model
                return None
            if meta.tokenizer is not None and meta.tokenizer_cache_id is None:
                return None  # an exotic tokenizer: no disk cache rather than a wrong one
            tokenizer = (meta.tokenizer_fingerprint, meta.tokenizer_cache_id)
        if slot.role == "base":
            return BaseEvalKey(fp, parts, tokenizer).to_dict()
        return TunedEvalKey(fp, parts, pair_fp, tokenizer).to_dict()

    # -- deciding ----------------------------------------------------------------------------
    def run_check(self, check: Check, *, test: str, base: ModelSlot | None = None, tuned: ModelSlot | None = None, candidate: str | None = None) -> CheckResult:
        """Evaluate both models on the check's task and decide. Raises ForgettingError for ERRORs.

        Under torch.distributed (``distributed.py``) rank 0 decides, every rank evaluates a shard
        and the other ranks return rank 0's result."""
        group = self.distributed
        if group is not None:
            return group.run_check(self, self._run_check, check, test=test, base=base, tuned=tuned, candidate=candidate)
        return self._run_check(check, test=test, base=base, tuned=tuned, candidate=candidate)

    @property
    def distributed(self) -> Any:
        """The torch.distributed group of a data-parallel run, or None (created at the first check)."""
        if not hasattr(self, "_distributed"):
            from . import distributed

            self._distributed = distributed.setup(self.settings)
            if self._distributed is not None and self._distributed.rank != 0:
                self.cache.enabled = False  # rank 0 alone reads and writes the cache
        return self._distributed

    def _run_check(self, check: Check, *, test: str, base: ModelSlot | None = None, tuned: ModelSlot | None = None, candidate: str | None = None) -> CheckResult:
        task = self.task(check.task)
        metric_name = check.metric or task.default_metric
        metric = task.check_metric(metric_name)
        base = base or self.base_slot()
        tuned = tuned or self.tuned_slot(candidate)
        row = self._row_skeleton(check, metric, test, tuned)
        from .mismatch import chance_level

        row["_chance"] = chance_level(task, check.split, metric.name) if check.kind == "retains" else None  # warned at the end
        row["_device"] = self.device + (f" ({self.device_note})" if self.device_note else "")
        if self.settings.device_map:
            row["_device"] += f", device_map {self.settings.device_map}"
        base_fp, tuned_fp = self._slot_fingerprint(base), self._slot_fingerprint(tuned)
        row["_fingerprints"] = {base.display: base_fp, tuned.display: tuned_fp}
        _raise_refusal(base)  # a base refused once errors every check, even one whose base outputs are cached
        base_res, base_reuse = self.evaluate_reuse(base, task, check.split)
        # reused: read from the cache or evaluated earlier in this process (base_reuse says which)
        row["base_reuse"] = base_reuse
        row["base_cached"] = base_reuse != "computed"
        row["base_eval_s"] = round(base_res.seconds, 4) if base_reuse == "computed" else 0.0
        try:
            if tuned_fp != base_fp or tuned.refused is not None:  # (the same files: the base's outputs are reused)
                self.load(tuned, base=base)  # a refusal (remembered): ERROR, or FAIL for NaN/Inf weights
            if self._early_stoppable(check, metric):
                row["tuned_reuse"] = "computed"  # chunk by chunk, never cached
                return self._decide_early(check, task, metric, base_res, tuned, row)
            tuned_res, tuned_reuse = self.evaluate_reuse(tuned, task, check.split, base=base)
        except TunedRegression as exc:
            row.update(verdict="fail", reason=str(exc), n=len(base_res), base=metric.value(base_res.outputs))
            return CheckResult(check, None, row)
        row["tuned_reuse"] = tuned_reuse
        row["tuned_eval_s"] = round(tuned_res.seconds, 4) if tuned_reuse == "computed" else 0.0
        tuned_res = align(base_res, tuned_res, task.name)
        self._where_weights_moved(check, task, base, tuned, base_fp, tuned_fp, row)
        return self._decide(check, task, metric, base_res, tuned_res, row)

    def _where_weights_moved(self, check: Check, task: Task, base: ModelSlot, tuned: ModelSlot, base_fp: str, tuned_fp: str,
                             row: dict[str, Any]) -> None:
        """``row["weight_drift"]``: the per-block drift table of the pair (``drift.py``), computed once per
        pair from the models in memory (None when one of them was never loaded: both outputs cached);
        with ``--forgetting-representation-drift`` also ``row["representation_cka"]`` per layer."""
        from . import drift

        memo = self.__dict__.setdefault("_drift_tables", {})
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
                    meta = self._meta(base.loaded)
                    prepared = self._prepare(task, check.split, meta)
                    idx = self.indices(task, check.split)[:512]
                    batches = list(task.batches(prepared, idx, self.batch_size))
                    memo[ckey] = drift.representation_cka(base.loaded.model, tuned.loaded.model, batches, device=self.device)
                except Exception:  # noqa: BLE001 - a model without hidden_states (not a Hugging Face one)
                    memo[ckey] = None
            row["representation_cka"] = memo[ckey]

    def _early_stoppable(self, check: Check, metric: Metric) -> bool:
        """Early stopping covers the main comparison of bounded per-example metrics (absolute drops)."""
        return (self.settings.early_stop and isinstance(metric, PerExampleMetric) and metric.bounded and not check.relative
                and check.max_class_drop is None and check.max_nfr is None and check.max_gap_increase is None)

    def _decide_early(self, check: Check, task: Task, metric: Metric, b: EvalResult, tuned: ModelSlot, row: dict[str, Any]) -> CheckResult:
        """Evaluate the tuned model chunk by chunk in seeded random order; stop when the verdict is settled."""
        from .sequential import chunk_looks, sequential_decide

        rng = np.random.default_rng(self.settings.seed)
        order = rng.permutation(len(b))
        split_ids = task.ids(check.split)
        pos = {i: k for k, i in enumerate(split_ids.tolist())}
        split_idx = np.array([pos[i] for i in b.ids[order].tolist()], dtype=np.int64)
        base_scores = metric.per_example(b.outputs)[order]
        chunk = max(self.batch_size, len(b) // 20)
        looks = chunk_looks(len(b), chunk)
        parts: list[np.ndarray] = []
        seconds = 0.0
        for lo in range(0, len(b), chunk):
            try:
                res = self._run(tuned, task, check.split, split_idx[lo : lo + chunk])
            except NonFiniteOutputs as exc:
                raise TunedRegression(f"tuned model produces NaN/Inf: {exc}") from None
            seconds += res.seconds
            parts.append(metric.per_example(res.outputs))
            seq = sequential_decide(base_scores, np.concatenate(parts), max_drop=check.margin, alpha=self.settings.alpha,
                                    higher_is_better=metric.higher_is_better, looks=looks,
                                    score_range=check.score_range or metric.score_range or (0.0, 1.0))
            if seq.done:
                break
        used = b.ids[order][: seq.n_used]
        verb = {"pass": "upper bound of the drop {hi:.3f} < margin {m:.3f}", "fail": "lower bound of the drop {lo:.3f} > margin {m:.3f} (proven regression)",
                "inconclusive": "confidence sequence [{lo:.3f}, {hi:.3f}] still contains the margin {m:.3f} after every example"}[seq.verdict]
        row.update(
            n=seq.n_used, base=seq.base, tuned=seq.tuned, drop=seq.drop, ci_low=seq.ci_low, ci_high=seq.ci_high,
            verdict=seq.verdict, tuned_eval_s=round(seconds, 4), fraction_used=seq.fraction_used,
            reason=verb.format(lo=seq.ci_low, hi=seq.ci_high, m=check.margin)
            + f" (early stop: {seq.n_used} of {seq.n_total} examples, {seq.fraction_used:.0%})",
        )
        bs, ts = base_scores[: seq.n_used], np.concatenate(parts)[: seq.n_used]
        good = 1 if metric.higher_is_better else 0
        if np.isin(bs, (0, 1)).all():
            flips = (bs == good) & (ts != good)
            row["nfr"] = float(np.mean(flips))
            row["flipped_ids"] = used[flips][:N_FLIPPED_IDS].tolist()
        cmp = stats.Comparison(
            verdict=seq.verdict, n=seq.n_used, base=seq.base, tuned=seq.tuned, drop=seq.drop, ci_low=seq.ci_low,
            ci_high=seq.ci_high, margin=check.margin, relative=False, alpha=self.settings.alpha,
            higher_is_better=metric.higher_is_better, method="sequential", nfr=row["nfr"], pfr=None, n_needed=None,
            reason=row["reason"],
        )
        return CheckResult(check, cmp, row)

    def _row_skeleton(self, check: Check, metric: Metric, test: str, tuned: ModelSlot) -> dict[str, Any]:
        """The draft of a check's row (every key a ``results.CheckRow`` field), frozen by ``CheckResult``."""
        return {
            "test": test, "task": check.task, "split": check.split, "metric": metric.name, "kind": check.kind,
            "candidate": tuned.name, "n": 0, "base": None, "tuned": None, "drop": None, "ci_low": None, "ci_high": None,
            "margin": check.margin, "relative": check.relative, "nfr": None, "verdict": "error", "reason": "",
            "n_needed": None, "worst_classes": [], "flipped_ids": [], "base_cached": False, "base_eval_s": 0.0,
            "tuned_eval_s": 0.0, "base_reuse": "", "tuned_reuse": "", "higher_is_better": metric.higher_is_better, "bounded": metric.bounded,
            "max_class_drop": check.max_class_drop, "max_nfr": check.max_nfr, "slices": check.slices, "outcome": "",
            "max_gap_increase": check.max_gap_increase,
        }

    def _decide(self, check: Check, task: Task, metric: Metric, b: EvalResult, t: EvalResult, row: dict[str, Any]) -> CheckResult:
        alpha, seed = self.settings.alpha, self.settings.seed
        # The check FAILs when any of its parts proves a regression (a union of claims), so the FAIL
        # side's alpha is split over those parts; each PASS bound keeps the full alpha (every part
        # must pass: an intersection, which needs no correction).
        gates_nfr = check.max_nfr is not None and check.kind == "retains"
        fail_alpha = alpha / (1 + (check.max_class_drop is not None) + gates_nfr
                              + (check.max_gap_increase is not None and check.kind == "retains"))  # the slice-gap part (issue 17)
        common = dict(max_drop=check.margin, relative=check.relative, alpha=alpha, higher_is_better=metric.higher_is_better, seed=seed,
                      fail_alpha=fail_alpha)
        if isinstance(metric, PerExampleMetric):
            cmp = stats.compare_scores(metric.per_example(b.outputs), metric.per_example(t.outputs),
                                       score_range=check.score_range or metric.score_range, **common)
        else:
            from .metrics import ratio_of

            agg = metric.aggregate
            cmp = stats.compare_statistic(lambda idx: (agg(b.outputs, idx), agg(t.outputs, idx)), len(b), ratio=ratio_of(metric, b.outputs, t.outputs),
                                          bounded=metric.bounded, sensitivity=metric.sensitivity(b.outputs, t.outputs) if metric.sensitivity else None,
                                          **common)
        verdicts = [cmp.verdict]
        reasons = [cmp.reason]
        budgets: list[stats.Budget] = []
        row.update(n=cmp.n, base=cmp.base, tuned=cmp.tuned, drop=cmp.drop, ci_low=cmp.ci_low, ci_high=cmp.ci_high, n_needed=cmp.n_needed)
        bc, tc = _correctness(task, metric, b, t)
        labels = task.class_labels(b.outputs)
        if bc is not None:
            row["nfr"] = float(np.mean(bc & ~tc))
            row["flipped_ids"] = b.ids[bc & ~tc][:N_FLIPPED_IDS].tolist()
            if check.kind == "retains" and labels is not None:
                names = task.class_names()
                groups, group_names = labels, names
                if check.slices:
                    groups, group_names = _encode_groups(task.slice_column(check.split, check.slices), b.ids, task.ids(check.split))
                if check.class_metric == "precision":  # max_class_drop budgets per-class precision (class_budget.py)
                    from .class_budget import precision_part

                    part = precision_part(b.outputs, t.outputs, limit=check.max_class_drop, alpha=alpha, fail_alpha=fail_alpha,
                                          class_names=names, top=N_WORST_CLASSES, task=task.name,
                                          label_key=task.label_key or "label", pred_key=task.pred_key)
                    row["worst_classes"], row["class_metric"] = part.rows, "precision"
                    budgets.extend(part.budgets)
                    verdicts.extend(part.verdicts)
                    reasons.append(part.reason)
                else:
                    limit = check.max_class_drop if check.max_class_drop is not None else 1.0
                    # without a class budget only the shown classes need their bounds
                    per_class = stats.class_drops(bc.astype(float), tc.astype(float), groups, limit=limit, alpha=alpha, class_names=group_names,
                                                  fail_alpha=fail_alpha if check.max_class_drop is not None else None,
                                                  worst=None if check.max_class_drop is not None else N_WORST_CLASSES)
                    gated = check.max_class_drop is not None
                    row["worst_classes"] = [  # a class verdict is shown only when a class budget gates it
                        {"name": c.name, "drop": c.value, "ci_low": c.ci_low, "ci_high": c.ci_high, "verdict": c.verdict if gated else "", "n": c.n}
                        for c in per_class[:N_WORST_CLASSES]
                    ]
                    if check.max_class_drop is not None:
                        budgets.extend(per_class)
                        broken = [c for c in per_class if c.verdict != "pass"]
                        if broken:
                            what = "slice" if check.slices else "class"
                            reasons.append(
                                f"{what} drop budget {check.max_class_drop:g}: "
                                + ", ".join(f"{c.name} {c.value:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] {c.verdict}" for c in broken[:3])
                            )
                        verdicts.extend(c.verdict for c in per_class)
            elif check.max_class_drop is not None:
                raise ConfigError(f"max_class_drop needs class labels; task {task.name!r} has none (use slices= with a column)")
            if gates_nfr:
                nb = stats.nfr_budget(bc.astype(float), tc.astype(float), limit=check.max_nfr, alpha=alpha, fail_alpha=fail_alpha)
                budgets.append(nb)
                verdicts.append(nb.verdict)
                if nb.verdict != "pass":
                    reasons.append(f"negative-flip rate {nb.value:.3f} [{nb.ci_low:.3f}, {nb.ci_high:.3f}] vs budget {check.max_nfr:g}: {nb.verdict}")
        has_groups = bc is not None and labels is not None
        if check.slices and not has_groups:
            raise ConfigError(f"slices={check.slices!r} needs per-example right/wrong outcomes; task {task.name!r} metric {metric.name!r} has none")
        if bc is None and (check.max_class_drop is not None or check.max_nfr is not None):
            raise ConfigError(f"max_class_drop / max_nfr need per-example right/wrong outcomes; task {task.name!r} metric {metric.name!r} has none")
        if check.max_gap_increase is not None and check.kind == "retains":
            verdicts.append(self._decide_gap(check, task, metric, b, t, bc, tc, row, budgets, reasons, fail_alpha))
        row["verdict"] = stats.combine_verdicts(*verdicts)
        row["reason"] = "; ".join(r for r in reasons if r)
        return CheckResult(check, cmp, row, budgets)

    def _decide_gap(self, check: Check, task: Task, metric: Metric, b: EvalResult, t: EvalResult, bc: Any, tc: Any,
                    row: dict[str, Any], budgets: list[stats.Budget], reasons: list[str], fail_alpha: float) -> str:
        """``max_gap_increase``: the best-minus-worst slice (or class) gap of the metric's per-example
        scores (right/wrong for aggregate metrics) may widen by at most the budget (``gap.compare_gap``)."""
        from .gap import compare_gap, describe

        if isinstance(metric, PerExampleMetric):
            sb, st = metric.per_example(b.outputs), metric.per_example(t.outputs)
        elif bc is not None:
            sb, st = bc.astype(float), tc.astype(float)
        else:
            raise ConfigError(f"max_gap_increase needs per-example scores; task {task.name!r} metric {metric.name!r} has none")
        if check.slices:
            groups, names = _encode_groups(task.slice_column(check.split, check.slices), b.ids, task.ids(check.split))
        elif (labels := task.class_labels(b.outputs)) is not None:
            groups, names = labels, task.class_names()
        else:
            raise ConfigError(f"max_gap_increase without slices= needs class labels; task {task.name!r} has none (use slices= with a column)")
        gap = compare_gap(sb, st, groups, margin=check.max_gap_increase, alpha=self.settings.alpha, fail_alpha=fail_alpha, names=names,
                          seed=self.settings.seed)
        what = "slice" if check.slices else "class"
        row["gap"] = {"best": gap.best, "worst": gap.worst, "base": gap.base_gap, "tuned": gap.tuned_gap, "increase": gap.increase,
                      "ci_low": gap.ci_low, "ci_high": gap.ci_high, "margin": gap.margin, "verdict": gap.verdict, "method": gap.method, "of": what}
        budgets.append(stats.Budget(f"{what} gap {gap.best} vs {gap.worst}", gap.increase, gap.ci_low, gap.ci_high, gap.margin, gap.verdict, gap.n))
        if gap.verdict != "pass":
            reasons.append(describe(gap, what))
        return gap.verdict


def _correctness(task: Task, metric: Metric, b: EvalResult, t: EvalResult) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-example right/wrong of both models (for flips, NFR and class drops), when the task has it:
    its declared predictions against its declared labels, else a 0/1 per-example metric."""
    pb, pt = task.predictions(b.outputs), task.predictions(t.outputs)
    if pb is not None and pt is not None:
        return pb == task.class_labels(b.outputs), pt == task.class_labels(t.outputs)
    if isinstance(metric, PerExampleMetric):
        sb, st = metric.per_example(b.outputs), metric.per_example(t.outputs)
        if np.isin(sb, (0, 1)).all() and np.isin(st, (0, 1)).all():
            good = 1 if metric.higher_is_better else 0
            return sb == good, st == good
    return None, None


def align(base: EvalResult, tuned: EvalResult, task: str) -> EvalResult:
    """Reorder ``tuned`` to ``base``'s ids; alignment is by id, never by position."""
    for name, res in (("base", base), ("tuned", tuned)):
        uniq, counts = np.unique(res.ids, return_counts=True)
        if (counts > 1).any():
            raise TaskError(f"task {task!r}: duplicate example ids in the {name} evaluation: {uniq[counts > 1][:3].tolist()}")
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


def _encode_groups(column: np.ndarray, eval_ids: np.ndarray, split_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    pos = {i: k for k, i in enumerate(split_ids.tolist())}
    values = np.asarray([str(column[pos[i]]) for i in eval_ids.tolist()])
    names = sorted(set(values.tolist()))
    index = {n: k for k, n in enumerate(names)}
    return np.array([index[v] for v in values.tolist()], dtype=np.int64), names


def _offload_dir(cache: EvalCache | str | None) -> str:
    """A fresh folder for accelerate's disk offload, removed at exit.

    Under ``<cache>/offload`` when the cache folder passed its checks (a real folder of this user,
    not a symbolic link, not tracked by git), else in the system's temporary folder; either way
    created by ``mkdtemp`` (an unpredictable name, mode 0700), so no write follows a planted link.
    """
    import atexit
    import shutil
    import tempfile

    if isinstance(cache, str):
        cache = EvalCache(cache)
    folder = None
    parent = cache.offload_parent() if cache is not None else None
    if parent is not None:
        try:
            folder = tempfile.mkdtemp(prefix="run-", dir=parent)
        except OSError:
            folder = None
    if folder is None:
        folder = tempfile.mkdtemp(prefix="forgetting-offload-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


#: torch's own advice in a weights_only refusal ("Re-running torch.load with weights_only set to
#: False will likely succeed"): this plugin never does that, so a refusal must not suggest it
_TORCH_ADVICE = re.compile(
    r"\s*(?:This file can still be loaded[^.)]*\.+"
    r"|(?:\(\d\)\s*)?In PyTorch \d+\.\d+, we changed the default(?:torch\.load|[^.)])*\.+"
    r"|Re-running `?torch\.load`? with `?weights_only`? set to `?False`?[^.)]*\.+"
    r"|Do it only if you[^.)]*\.*)",
    re.IGNORECASE,
)
_REFUSAL_LIMIT = 2000


def _clean_message(text: str) -> str:
    """One escaped line, without torch's advice to load with ``weights_only=False``."""
    from .escape import terminal

    text = _TORCH_ADVICE.sub("", text)
    text = re.sub(r"[ \t]+", " ", text).strip()
    return terminal(text, _REFUSAL_LIMIT)


def _refusal(slot: ModelSlot, exc: BaseException, *, name_it: bool = False) -> tuple[type, str]:
    """(kind, message) of a refusal: the plugin's own errors keep their kind; anything else is a
    CheckpointError naming the checkpoint. ``name_it`` prefixes the checkpoint (compatibility)."""
    from .evaluate import describe_error

    if isinstance(exc, (ForgettingError, TunedRegression)):
        kind: type = type(exc)
        msg = str(exc)
        if name_it and msg.startswith("checkpoint ") and slot.display in msg:
            msg = f"{slot.role} {msg}"  # "tuned checkpoint not found: nothing at PATH", the path once
        elif name_it:
            msg = f"{slot.role} checkpoint {slot.display}: {msg}"
    else:
        kind = CheckpointError
        msg = f"{slot.role} checkpoint {slot.display}: could not load: {describe_error(exc)}"
    return kind, _clean_message(msg)


def _again(refusal: tuple[type, str]) -> Exception:
    """A fresh exception of a remembered refusal (same kind and message, no stale traceback)."""
    kind, msg = refusal
    try:
        return kind(msg)
    except Exception:  # noqa: BLE001 - a kind whose constructor wants more than a message
        return CheckpointError(msg)


def _raise_refusal(slot: ModelSlot) -> None:
    if slot.refused is not None:
        raise _again(slot.refused)


def _refuse_nonfinite(slot: ModelSlot, model: Any) -> None:
    """NaN/Inf weights: an ERROR for the base, a FAIL (TunedRegression) for a tuned model."""
    from . import checkpoints

    bad = checkpoints.nonfinite_params(model)
    if not bad:
        return
    msg = f"{slot.role} checkpoint {slot.display} has NaN/Inf weights in {', '.join(bad[:3])}"
    if slot.role == "base":
        raise CheckpointError(f"{msg}; the base must be a working checkpoint: check what --base-ckpt points at")
    raise TunedRegression(f"{msg}; the fine-tune diverged: retrain it (e.g. a lower learning rate, gradient clipping) or pass the last finite checkpoint")


def _is_adapter(ref: Any) -> bool:
    from pathlib import Path

    return isinstance(ref, str) and (Path(ref) / "adapter_config.json").is_file()


def _torch_version() -> str:
    import torch

    return torch.__version__


def _computable_metrics(task: Task, outputs: dict[str, np.ndarray]) -> list[str]:
    """Names of the task's metrics that compute (to a number) from these outputs."""
    ok = []
    for name, metric in task.metrics.items():
        try:
            with np.errstate(all="ignore"):
                float(metric.value(outputs))
        except Exception:  # noqa: BLE001 - a missing key, a wrong shape: that metric cannot be computed
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


#: tokenizer attributes that name where it was loaded from, not how it tokenises
_TOKENIZER_PLACE_KWARGS = frozenset({"name_or_path", "is_local", "local_files_only", "vocab_file", "merges_file", "tokenizer_file", "cache_dir", "_commit_hash"})


def _tokenizer_cache_id(tok: Any) -> str | None:
    """Hash of everything that decides a fast tokenizer's output, or None for other tokenizers."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    try:
        kwargs = {k: repr(v) for k, v in sorted(getattr(tok, "init_kwargs", {}).items()) if k not in _TOKENIZER_PLACE_KWARGS}
        return hash_arrays(
            type(tok).__qualname__, backend.to_str(), kwargs, getattr(tok, "padding_side", None),
            getattr(tok, "truncation_side", None), getattr(tok, "model_max_length", None),
        )  # fmt: skip
    except Exception:  # an exotic tokenizer: no disk cache rather than a wrong one
        return None
