"""Batches of a prepared split whose inputs are padded tensors: one generator for every task.

Tokenised tasks pad a whole split once to its longest member (``prepare``) and cut each batch
down to the longest member *of the batch*: :func:`trimmed_batches` does that cut for every one of
them (text classification and embedding probes, token classification, generation), on the side
where the split was padded.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np


def trimmed_batches(
    tensors: Mapping[str, Any], lengths: np.ndarray, indices: np.ndarray, batch_size: int, *, left: bool = False
) -> Iterator[tuple[np.ndarray, Any, dict[str, Any]]]:
    """Per batch of ``indices`` (in their order): the batch's indices (numpy), the same as a torch
    index, and the rows of every tensor in ``tensors`` cut to the batch's longest ``lengths``.

    ``tensors`` are (examples, width) and padded on the right (``left=False``: the first columns
    are kept) or on the left (``left=True``: the last columns, where every row ends).
    """
    import torch

    idx_all = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    for lo in range(0, len(indices), batch_size):
        chunk = indices[lo : lo + batch_size]
        width = int(lengths[chunk].max(initial=1))  # at least one column, even for empty texts
        idx = idx_all[lo : lo + batch_size]
        cols = slice(-width, None) if left else slice(None, width)
        yield chunk, idx, {k: t.index_select(0, idx)[:, cols] for k, t in tensors.items()}
