"""Padded batches of a prepared split: one padding routine and one batch generator for every task.

:func:`pad_rows` lays rows of different lengths into one array, on the right (each row from the
first column) or on the left (each row ending at the last column); :func:`pad_encoding` does it
for every field of a tokenizer's encoding. :func:`trimmed_batches` is the one generator of
batches: per batch of indices, each input cut to the longest member *of the batch*, either

- from a tensor padded once for the whole split (``prepare``; tokenised texts: text
  classification and embedding probes, token classification, generation), or
- from :class:`Ragged` rows padded per batch (float audio of speech recognition, the token
  windows of the log-likelihood scorer: language modelling and multiple choice), optionally with
  the batch's attention mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def real_positions(lengths: np.ndarray, width: int, *, left: bool = False) -> np.ndarray:
    """(rows, width) booleans: True where a row of ``lengths`` items stands once padded to ``width``."""
    cols = np.arange(width)[None, :]
    lengths = np.asarray(lengths)[:, None]
    return cols >= width - lengths if left else cols < lengths


def pad_rows(rows: Sequence[Any], lengths: np.ndarray, width: int, *, fill: Any = 0, dtype: Any = np.int64,
             left: bool = False) -> np.ndarray:  # fmt: skip
    """(len(rows), width) array of ``dtype``: each row's items (``lengths[i]`` of them) from the first
    column (``left=False``) or up to the last one (``left=True``), ``fill`` elsewhere."""
    out = np.full((len(rows), width), fill, dtype=dtype)
    if len(rows):  # row-major order of the True positions is each row's items in turn
        out[real_positions(lengths, width, left=left)] = np.concatenate([np.asarray(r, dtype=dtype) for r in rows])
    return out


def pad_encoding(encoding: Mapping[str, Sequence[Sequence[int]]], lengths: np.ndarray, pad_id: int) -> dict[str, Any]:
    """Every field of a tokenizer's (unpadded) encoding right-padded to the longest row, as int64
    tensors: ``pad_id`` in ``input_ids``, 0 elsewhere; plus the ``attention_mask`` when it has none."""
    import torch

    width = int(np.max(lengths, initial=1))
    tensors = {key: torch.from_numpy(pad_rows(encoding[key], lengths, width, fill=pad_id if key == "input_ids" else 0))
               for key in encoding.keys()}  # fmt: skip
    if "attention_mask" not in tensors:
        tensors["attention_mask"] = torch.from_numpy(real_positions(lengths, width).astype(np.int64))
    return tensors


@dataclass(frozen=True)
class Ragged:
    """Rows of different lengths (1-D arrays or lists), padded per batch with ``fill`` as ``dtype``
    instead of once for the split (long audio, scored token windows)."""

    rows: Sequence[Any]
    fill: Any = 0
    dtype: Any = np.int64


def trimmed_batches(
    tensors: Mapping[str, Any], lengths: np.ndarray, indices: np.ndarray, batch_size: int, *, left: bool = False,
    mask: str | None = None,
) -> Iterator[tuple[np.ndarray, Any, dict[str, Any]]]:  # fmt: skip
    """Per batch of ``indices`` (in their order): the batch's indices (numpy), the same as a torch
    index, and every input of ``tensors`` as the batch's rows, ``max(lengths[batch])`` columns wide
    (at least one).

    A tensor input is (examples, width), padded on the right (``left=False``: the first columns
    are kept) or on the left (``left=True``: the last columns, where every row ends). A
    :class:`Ragged` input is padded here, on the same side. ``mask`` names an extra int64 input:
    1 where a row's items stand, 0 on its padding.
    """
    import torch

    indices = np.asarray(indices, dtype=np.int64)
    lengths = np.asarray(lengths)
    idx_all = torch.from_numpy(indices)
    for lo in range(0, len(indices), batch_size):
        chunk = indices[lo : lo + batch_size]
        sizes = lengths[chunk]
        width = int(sizes.max(initial=1))  # at least one column, even for empty texts
        idx = idx_all[lo : lo + batch_size]
        cols = slice(-width, None) if left else slice(None, width)
        batch = {}
        for key, t in tensors.items():
            if isinstance(t, Ragged):
                rows = [t.rows[i] for i in chunk.tolist()]
                batch[key] = torch.from_numpy(pad_rows(rows, sizes, width, fill=t.fill, dtype=t.dtype, left=left))
            else:
                batch[key] = t.index_select(0, idx)[:, cols]
        if mask is not None:
            batch[mask] = torch.from_numpy(real_positions(sizes, width, left=left).astype(np.int64))
        yield chunk, idx, batch
