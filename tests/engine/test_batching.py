"""One generator of trimmed padded batches (issue 15): text classification, embedding probes, token
classification and generation cut each batch of a padded split to its longest member with
``tasks.batching.trimmed_batches``; the batches equal those the tasks built each on their own."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_forgetting.tasks.batching import trimmed_batches  # noqa: E402
from pytest_forgetting.tasks.classification import padded_batches  # noqa: E402


def _padded(lengths: np.ndarray, left: bool, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    width = int(lengths.max(initial=1))
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    for i, n in enumerate(lengths):  # the reference layout, written out row by row
        row = rng.integers(1, 1000, n)
        if left:
            ids[i, width - n :] = row
        else:
            ids[i, :n] = row
    mask = (ids != 0).astype(np.int64)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def _reference(tensors, lengths, indices, batch_size, left):
    """What each task's own generator yielded before: rows index-selected, then cut to the batch's width."""
    out = []
    for lo in range(0, len(indices), batch_size):
        chunk = [int(i) for i in indices[lo : lo + batch_size]]
        width = max(max((int(lengths[i]) for i in chunk), default=1), 1)
        rows = {}
        for key, t in tensors.items():
            full = torch.stack([t[i] for i in chunk])
            rows[key] = full[:, t.shape[1] - width :] if left else full[:, :width]
        out.append((chunk, rows))
    return out


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
@pytest.mark.parametrize("order", ["contiguous", "shuffled", "sorted", "subset"])
def test_batches_equal_the_reference(left, batch_size, order):
    rng = np.random.default_rng(batch_size)
    lengths = rng.integers(0, 30, 41)  # an empty text among them: a batch keeps one column
    lengths[5] = 0
    tensors = _padded(lengths, left, seed=batch_size)
    indices = {
        "contiguous": np.arange(41),
        "shuffled": rng.permutation(41),
        "sorted": np.argsort(lengths, kind="stable"),
        "subset": np.array([40, 3, 5, 17, 5 + 1]),
    }[order]
    got = list(trimmed_batches(tensors, lengths, indices, batch_size, left=left))
    want = _reference(tensors, lengths, indices, batch_size, left)
    assert len(got) == len(want)
    for (chunk, idx, rows), (ref_chunk, ref_rows) in zip(got, want):
        assert chunk.tolist() == ref_chunk and idx.tolist() == ref_chunk
        assert rows.keys() == ref_rows.keys()
        for key in rows:
            assert rows[key].dtype == ref_rows[key].dtype and torch.equal(rows[key], ref_rows[key]), key
        if left:  # every non-empty prompt still ends at the last column
            assert rows["attention_mask"][:, -1].tolist() == [int(lengths[i] > 0) for i in chunk]
    if not left:
        prepared = {"tensors": tensors, "lengths": lengths}
        plain = list(padded_batches(prepared, indices, batch_size))
        assert len(plain) == len(got) and all(
            torch.equal(a["input_ids"], b[2]["input_ids"]) for a, b in zip(plain, got)
        )


def test_no_indices_no_batches():
    lengths = np.array([3, 1])
    assert list(trimmed_batches(_padded(lengths, False, 0), lengths, np.array([], dtype=np.int64), 4)) == []
