"""Whether two checkpoints can be compared example by example: label maps and vocabularies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from .records import LoadedCheckpoint
from .util import _describe_exc, _excerpt, _few


def check_compatible(base: LoadedCheckpoint, tuned: LoadedCheckpoint) -> None:
    """Refuse a pair whose outputs cannot be compared example by example.

    Raises :class:`CheckpointError` when both define label names (``id2label``) and they
    differ, or both have a tokenizer and the vocabularies differ.
    """
    base_labels, tuned_labels = _id2label(base), _id2label(tuned)
    if base_labels is not None and tuned_labels is not None and base_labels != tuned_labels:
        diffs = []
        for key in sorted(base_labels.keys() | tuned_labels.keys()):
            b, t = base_labels.get(key), tuned_labels.get(key)
            if b != t:
                diffs.append(
                    f"{key}: {'missing' if b is None else _excerpt(b)} vs {'missing' if t is None else _excerpt(t)}"
                )
        raise CheckpointError(
            f"base and tuned label maps (id2label) differ: {_few(diffs, 3)} (base vs tuned); paired "
            "comparison needs the same class ids, so make id2label agree in both config.json files"
        )
    if base.tokenizer is None or tuned.tokenizer is None:
        return
    try:
        base_vocab = dict(base.tokenizer.get_vocab())  # type: ignore[attr-defined]
        tuned_vocab = dict(tuned.tokenizer.get_vocab())  # type: ignore[attr-defined]
    except Exception as exc:
        raise CheckpointError(f"cannot read the tokenizers' vocabularies: {_describe_exc(exc)}") from exc
    if base_vocab == tuned_vocab:
        return
    only_base = sorted(base_vocab.keys() - tuned_vocab.keys())
    only_tuned = sorted(tuned_vocab.keys() - base_vocab.keys())
    moved = sorted(t for t in base_vocab.keys() & tuned_vocab.keys() if base_vocab[t] != tuned_vocab[t])
    # tokens are file content: a few short, escaped excerpts only (never whole lines of a vocabulary file)
    parts = [f"base has {len(base_vocab)} tokens, tuned {len(tuned_vocab)}"]
    if only_base:
        parts.append(f"only in base: {_few([_excerpt(t) for t in only_base], 3)}")
    if only_tuned:
        parts.append(f"only in tuned: {_few([_excerpt(t) for t in only_tuned], 3)}")
    if moved:
        parts.append(
            f"different ids: {_few([f'{_excerpt(t)} ({base_vocab[t]} vs {tuned_vocab[t]})' for t in moved], 3)}"
        )
    raise CheckpointError(
        "base and tuned tokenizers have different vocabularies (" + "; ".join(parts) + "); the two models "
        "would see different inputs, so ship the base tokenizer with the tuned checkpoint"
    )


def _label_map(config: Any) -> dict[int, str] | None:
    id2label = getattr(config, "id2label", None)
    return _label_map_from_dict(id2label) if isinstance(id2label, dict) else None


def _label_map_from_dict(id2label: dict[Any, Any]) -> dict[int, str] | None:
    """{int: name}, or None for transformers' placeholder names (LABEL_0, LABEL_1, ...)."""
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if not labels or placeholder_labels(labels):
        return None
    return labels


def placeholder_labels(labels: Mapping[int, str]) -> bool:
    """Whether label names are transformers' placeholders (LABEL_0, LABEL_1, ...; an empty map too).

    The one rule for "the names say nothing": such a map is not compared by name, and tasks read
    the outputs of such a model in order.
    """
    return all(v == f"LABEL_{k}" for k, v in labels.items())


def _id2label(ckpt: LoadedCheckpoint) -> dict[int, str] | None:
    """Label names to compare: the meaningful map, else the config's placeholder one."""
    if ckpt.label_map is not None:
        return ckpt.label_map
    id2label = getattr(ckpt.config, "id2label", None)
    if isinstance(id2label, dict) and id2label:
        try:
            return {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            return None
    return None
