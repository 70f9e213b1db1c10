"""Load stage: the two models' slots, and everything that decides whether a checkpoint may be used.

:class:`Models` owns the session's :class:`ModelSlot` objects (the base, the tuned candidates, the
slots of references and modules the Python API passes) and what happens to a checkpoint before any
evaluation: its fingerprint (the identity every cache key names), loading on the session's device
and dtype (or placement by accelerate under ``--forgetting-device-map``), the NaN/Inf weight check,
the compatibility check of a tuned model with its base (label maps, vocabularies), and the memory
of refusals: a checkpoint refused once is refused again, with the same kind and message, by every
later use. ``Models.meta`` is what tasks need of a loaded checkpoint (tokenizer and its hashes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..cache import EvalCache
from ..errors import CheckpointError, ConfigError, ForgettingError
from ..escape import terminal
from ..evaluate import describe_error, is_dispatched, resolve_device
from ..options import Settings, candidate_name
from ..tasks.base import ModelMeta, hash_arrays


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
        if self.role == "base":
            return "base model"
        return f"{self.role} model '{terminal(self.name or self.display, 120)}'"


class Models:
    """The session's checkpoints: slots, fingerprints, loading, placement, refusals and metadata."""

    def __init__(self, settings: Settings, cache: EvalCache) -> None:
        self.settings = settings
        self.cache = cache
        self._device: tuple[str, str] | None = None
        self.base = ModelSlot("base", settings.base_ckpt) if settings.base_ckpt else None
        refs = settings.tuned_ckpts
        self.candidates: dict[str, ModelSlot] = {
            candidate_name(r, refs) if len(refs) > 1 else "": ModelSlot(
                "tuned", r, candidate_name(r, refs) if len(refs) > 1 else ""
            )
            for r in refs
        }
        self._digests: Any = None
        self._ref_slots: dict[tuple[str, str], ModelSlot] = {}

    # -- device --------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.settings.device)
        return self._device[0]

    @property
    def device_note(self) -> str:
        return self._device[1] if self._device else ""

    @property
    def device_label(self) -> str:
        """The device as a row shows it: ``cpu``, ``cuda:0 (why)``, plus the device map if any."""
        label = self.device + (f" ({self.device_note})" if self.device_note else "")
        if self.settings.device_map:
            label += f", device_map {self.settings.device_map}"
        return label

    # -- slots ---------------------------------------------------------------------------------
    def tuned_slot(self, candidate: str | None = None) -> ModelSlot:
        if not self.candidates:
            raise ConfigError(
                "no tuned checkpoint: pass --tuned-ckpt REF (or set $FORGETTING_TUNED_CKPT / ini forgetting_tuned_ckpt)"
            )
        if candidate is None:
            return next(iter(self.candidates.values()))
        if candidate not in self.candidates:
            raise ConfigError(
                f"no tuned candidate named {candidate!r}; the candidates are {', '.join(map(repr, self.candidates))}"
            )
        return self.candidates[candidate]

    def base_slot(self) -> ModelSlot:
        if self.base is None:
            raise ConfigError(
                "no base checkpoint: pass --base-ckpt REF (or set $FORGETTING_BASE_CKPT / ini forgetting_base_ckpt)"
            )
        return self.base

    def ref_slot(self, role: str, ref: str) -> ModelSlot:
        """The slot of a checkpoint reference (Python API): the session's own when it is the same
        checkpoint, else one per (role, ref) for the whole session, so a refusal is remembered."""
        if role == "base" and self.base is not None and self.base.ref == ref:
            return self.base
        if role == "tuned":
            for cand in self.candidates.values():
                if cand.ref == ref:
                    return cand
        slots = self._ref_slots
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
        from .. import checkpoints
        from ..evaluate import torch_dtype

        for known in (self.base, *self.candidates.values()):
            if known is not None and known.role == role and known.loaded is not None and known.loaded.model is module:
                return ModelSlot(
                    role, module, name=known.name, loaded=known.loaded, _fingerprint=checkpoints.fingerprint_ref(module)
                )
        slot = ModelSlot(role, module, name="")
        try:
            loaded = checkpoints.load_checkpoint(module, role=role)
            if loaded.tokenizer is None:
                loaded.tokenizer = self.base_tokenizer()
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

    # -- fingerprints --------------------------------------------------------------------------
    @property
    def digests(self) -> Any:
        """File hashes of unchanged checkpoint files, kept beside the evaluation cache."""
        if self._digests is None:
            from ..checkpoints import FileDigests

            # only in a cache folder that passed its checks (not a symbolic link, ours, not tracked by git)
            self._digests = FileDigests(self.cache.directory / "file-digests.json" if self.cache.usable() else None)
        return self._digests

    def fingerprint(self, slot: ModelSlot) -> str:
        from .. import checkpoints

        if slot._fingerprint is None:
            if slot.loaded is not None:
                slot._fingerprint = slot.loaded.fingerprint
            else:
                slot._fingerprint = checkpoints.fingerprint_ref(
                    slot.ref, rootdir=self.settings.rootdir, allow_pickle=self.settings.allow_pickle,
                    allow_download=self.settings.allow_download, digests=self.digests,
                )  # fmt: skip
        return slot._fingerprint

    def slot_fingerprint(self, slot: ModelSlot) -> str:
        """``fingerprint`` of a slot that raises its remembered refusal (and remembers a new one)."""
        if slot.refused is not None and slot._fingerprint is None and not issubclass(slot.refused[0], TunedRegression):
            raise _again(slot.refused)  # (NaN/Inf weights are a FAIL of the check, raised by load)
        try:
            return self.fingerprint(slot)
        except Exception as exc:  # noqa: BLE001
            slot.refused = _refusal(slot, exc, name_it=not str(exc).startswith(f"{slot.role} checkpoint"))
            raise _again(slot.refused) from None

    # -- loading, placement, refusals ------------------------------------------------------------
    def load(self, slot: ModelSlot, *, base: ModelSlot | None = None, pair: bool = True) -> Any:
        """The LoadedCheckpoint of a slot, on the session's device and dtype, in eval mode.

        With ``--forgetting-device-map`` a Hugging Face folder is loaded by accelerate straight onto
        the devices of the map (in the session's dtype) and left there: a dispatched model is
        never moved with ``.to()``, and its inputs go to its first device (``run_model``).

        A refusal (any load error, NaN/Inf weights, a base it cannot be compared with) is
        remembered on the slot: every later call raises it again, with the same kind and message,
        so no later check of that checkpoint can PASS. ``base`` is the base a tuned model is
        checked against (default: the session's); ``pair=False`` skips that check (``Evaluation.run``: the
        caller did it).
        """
        raise_refusal(slot)
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
        from .. import checkpoints
        from ..evaluate import torch_dtype

        base_loaded = None
        if slot.role == "tuned" and _is_adapter(slot.ref):
            if self.settings.device_map is not None:  # refused before the base is loaded for nothing
                raise CheckpointError(
                    f"tuned checkpoint {slot.display}: {checkpoints.DEVICE_MAP_NEEDS_HF_FOLDER}, not a PEFT adapter"
                )
            base_loaded = self.load(self.base_slot())
        from ..quiet import no_progress_bars, uses_transformers

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
                **self.placement(),
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
        from .. import checkpoints

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

    def placement(self) -> dict[str, Any]:
        """load_checkpoint's device_map / max_memory / offload_folder / dtype under --forgetting-device-map."""
        if self.settings.device_map is None:
            return {}
        from ..options import parse_device_map, parse_max_memory

        return {
            "device_map": parse_device_map(self.settings.device_map),
            "max_memory": parse_max_memory(self.settings.max_memory) if self.settings.max_memory else None,
            # one folder per model: base and tuned offload weights of the same names
            "offload_folder": _offload_dir(self.cache),
            "dtype": self.settings.dtype,
        }

    def base_tokenizer(self) -> Any:
        """The base checkpoint's tokenizer (read without building its model when it is not loaded), or None."""
        from .. import checkpoints

        base = self.base
        if base is None:
            return None
        if base.loaded is not None:
            return base.loaded.tokenizer
        if not isinstance(base.ref, str):
            return None
        if "_base_tokenizer_memo" not in self.__dict__:  # read once: API calls come once per test
            try:
                meta = checkpoints.load_metadata(
                    base.ref, rootdir=self.settings.rootdir, trust_remote_code=self.settings.trust_remote_code
                )
                self._base_tokenizer_memo = meta.tokenizer
            except ForgettingError:  # the base's own check reports what is wrong with it
                self._base_tokenizer_memo = None
        return self._base_tokenizer_memo

    # -- what tasks need of a checkpoint ---------------------------------------------------------
    def meta(self, loaded: Any) -> ModelMeta:
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
        return ModelMeta(
            tokenizer=tok,
            tokenizer_fingerprint=fp,
            config=getattr(loaded, "config", None),
            tokenizer_cache_id=_tokenizer_cache_id(tok),
        )


#: tokenizer attributes that name where it was loaded from, not how it tokenises
_TOKENIZER_PLACE_KWARGS = frozenset(
    {
        "name_or_path",
        "is_local",
        "local_files_only",
        "vocab_file",
        "merges_file",
        "tokenizer_file",
        "cache_dir",
        "_commit_hash",
    }
)


def _tokenizer_cache_id(tok: Any) -> str | None:
    """Hash of everything that decides a fast tokenizer's output, or None for other tokenizers."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    try:
        kwargs = {
            k: repr(v) for k, v in sorted(getattr(tok, "init_kwargs", {}).items()) if k not in _TOKENIZER_PLACE_KWARGS
        }
        return hash_arrays(
            type(tok).__qualname__, backend.to_str(), kwargs, getattr(tok, "padding_side", None),
            getattr(tok, "truncation_side", None), getattr(tok, "model_max_length", None),
        )  # fmt: skip
    except Exception:  # noqa: BLE001 - an exotic tokenizer: no disk cache rather than a wrong one
        return None


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
    text = _TORCH_ADVICE.sub("", text)
    text = re.sub(r"[ \t]+", " ", text).strip()
    return terminal(text, _REFUSAL_LIMIT)


def _refusal(slot: ModelSlot, exc: BaseException, *, name_it: bool = False) -> tuple[type, str]:
    """(kind, message) of a refusal: the plugin's own errors keep their kind; anything else is a
    CheckpointError naming the checkpoint. ``name_it`` prefixes the checkpoint (compatibility)."""
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


def raise_refusal(slot: ModelSlot) -> None:
    """Raise the refusal remembered on ``slot``, if any (again, a fresh exception)."""
    if slot.refused is not None:
        raise _again(slot.refused)


def _refuse_nonfinite(slot: ModelSlot, model: Any) -> None:
    """NaN/Inf weights: an ERROR for the base, a FAIL (TunedRegression) for a tuned model."""
    from .. import checkpoints

    bad = checkpoints.nonfinite_params(model)
    if not bad:
        return
    msg = f"{slot.role} checkpoint {slot.display} has NaN/Inf weights in {', '.join(bad[:3])}"
    if slot.role == "base":
        raise CheckpointError(f"{msg}; the base must be a working checkpoint: check what --base-ckpt points at")
    raise TunedRegression(
        f"{msg}; the fine-tune diverged: retrain it (e.g. a lower learning rate, gradient clipping) "
        "or pass the last finite checkpoint"
    )


def _is_adapter(ref: Any) -> bool:
    from pathlib import Path

    return isinstance(ref, str) and (Path(ref) / "adapter_config.json").is_file()
