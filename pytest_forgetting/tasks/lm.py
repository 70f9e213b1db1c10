"""Causal language-model tasks: held-out text likelihood (here) and greedy-decoded exact match
(``tasks.generation``, re-exported here).

- ``LanguageModelingTask``: per example (a text), the summed negative log-likelihood of all its
  tokens (rolling windows, lm-eval's convention) and how many tokens, words and bytes it has.
  The ``perplexity`` (per token), ``nll``, ``word_perplexity``, ``byte_perplexity`` and
  ``bits_per_byte`` metrics pool those over examples (e.g. exp of total NLL / total tokens), so a
  paired bootstrap over texts gives the interval. Lower is better; ``max_drop`` is in the
  metric's units (or relative).
- ``GenerationExactMatchTask`` (defined in ``tasks.generation``): short prompts, greedy
  decoding, and a 0/1 per example: does the normalised generation equal one of the reference
  answers? Compared with the paired score interval for proportions.

Both take the tokenizer from the checkpoint; base and tuned must share it (the loader refuses
a pair whose vocabularies differ), so inputs are tokenised once and reused for both models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TaskError
from ..metrics import LM_METRICS
from .base import ModelMeta, SplitRecord, _build_splits, _SplitTask
from .generation import (
    GenerationExactMatchTask,
    answer_matches,
    decode_generation,
    greedy_decode,
    normalize_answer,
)

__all__ = [
    "GenerationExactMatchTask", "LanguageModelingTask", "SplitRecord", "answer_matches", "decode_generation",
    "greedy_decode", "normalize_answer", "python_docs", "split_text",
]  # fmt: skip


# -- held-out text likelihood ---------------------------------------------------------------


class LanguageModelingTask(_SplitTask):
    """Held-out texts scored by a causal LM: per text, the summed NLL of *every* token.

    Scoring follows lm-evaluation-harness's ``loglikelihood_rolling`` (``tasks.loglik``): each
    text is encoded with the tokenizer's default special tokens, the first token is predicted
    from the prefix token (BOS, else EOS), and a text longer than the window is scored in
    rolling windows of ``max_length`` tokens (default: the model's maximum length, as lm-eval
    resolves it), each token once, conditioned on up to ``max_length`` tokens before it. Per
    text the outputs are the NLL sum, the scored tokens, words (whitespace-separated, lm-eval's
    count) and UTF-8 bytes, so ``perplexity`` (per token), ``word_perplexity``,
    ``byte_perplexity`` and ``bits_per_byte`` are lm-eval's numbers on the same texts.

    ``truncate=True`` scores only the first ``max_length`` tokens of each text (cheaper, not
    comparable with lm-eval); the number of texts cut is warned about when the split is
    prepared and is in the ``truncated`` output.
    """

    metrics = LM_METRICS
    default_metric = "perplexity"

    def __init__(
        self,
        texts: Sequence[str] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        max_length: int | None = None,
        truncate: bool = False,
        splits: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        super().__init__()
        if splits is None:
            if texts is None:
                raise TaskError("LanguageModelingTask needs texts (or splits={...})")
            splits = {"test": (list(texts), ids, columns)}
        if max_length is not None and max_length < 1:
            raise TaskError(f"max_length={max_length} leaves no token to score (need at least 1)")
        if truncate and max_length is None:
            raise TaskError("truncate=True needs max_length= (the number of tokens scored per text)")
        self.max_length = None if max_length is None else int(max_length)
        self.truncate = bool(truncate)
        for name, (split_ids, items, cols) in _build_splits(splits, "LanguageModelingTask").items():
            texts_list = [str(t) for t in items]
            empty = [str(i) for i, t in zip(split_ids, texts_list) if not t.strip()]
            if empty:
                raise TaskError(f"LanguageModelingTask split {name!r}: empty texts (ids {empty[:3]})")
            self._add_split(name, split_ids, cols, texts=texts_list)

    @classmethod
    def from_text_file(
        cls,
        path: str | Path,
        *,
        by: str = "paragraph",
        min_chars: int = 40,
        test_fraction: float | None = None,
        seed: int = 0,
        max_length: int | None = None,
        truncate: bool = False,
    ) -> LanguageModelingTask:
        """Examples from a UTF-8 text file: one per paragraph (blank-line separated) or per line.

        Pieces shorter than ``min_chars`` are dropped; ids are ``<file name>:<piece number>``.
        With ``test_fraction`` the pieces are split (seeded) into ``train`` / ``test``.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskError(f"cannot read text file {path}: {exc}") from None
        pieces = split_text(text, by=by, min_chars=min_chars)
        if not pieces:
            raise TaskError(f"{path}: no {by} of at least {min_chars} characters")
        ids = [f"{path.name}:{i}" for i in range(len(pieces))]
        if test_fraction is None:
            return cls(pieces, ids, max_length=max_length, truncate=truncate)
        order = np.random.default_rng(seed).permutation(len(pieces))
        n_test = max(1, int(round(test_fraction * len(pieces))))
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
        return cls(
            max_length=max_length,
            truncate=truncate,
            splits={
                "train": ([pieces[i] for i in train], [ids[i] for i in train]),
                "test": ([pieces[i] for i in test], [ids[i] for i in test]),
            },
        )

    def texts(self, split: str) -> list[str]:
        return self._field(split, "texts")

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        return self.ids(split), self.max_length, "truncate" if self.truncate else "rolling", self.texts(split)

    def _window(self, meta: ModelMeta) -> int:
        from .loglik import model_max_length

        return self.max_length if self.max_length is not None else model_max_length(meta.config, meta.tokenizer)

    def prepare_key(self, meta: ModelMeta) -> str:
        return f"{meta.tokenizer_fingerprint}|{self._window(meta)}"

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        import warnings

        from .loglik import encode, padding_id, prefix_token_id, rolling_rows

        tok = meta.tokenizer
        if tok is None:
            raise TaskError(f"task {self.name!r} needs a tokenizer, and the checkpoint folder has none")
        window = self._window(meta)
        prefix = prefix_token_id(tok)
        texts = self.texts(split)
        rows, ntok, cut = [], [], []
        for text in texts:
            tokens = encode(tok, text)
            cut.append(self.truncate and len(tokens) > window)
            if self.truncate:
                tokens = tokens[:window]
            if not tokens:
                raise TaskError(f"task {self.name!r}: a text tokenises to nothing")
            rows.append(
                [
                    (inp, n, tokens[done : done + n])
                    for (inp, n), done in _with_offsets(rolling_rows(tokens, prefix, window))
                ]
            )
            ntok.append(len(tokens))
        n_cut = int(sum(cut))
        if n_cut:
            warnings.warn(
                f"task {self.name!r}: {n_cut} of {len(texts)} texts are longer than max_length={window} tokens "
                "and were cut (truncate=True); only their first tokens are scored",
                stacklevel=2,
            )
        return {
            "rows": rows, "ntok": np.asarray(ntok, dtype=np.int64), "pad": padding_id(tok),
            "truncated": np.asarray(cut, dtype=bool),
            "nwords": np.asarray([len(re.split(r"\s+", t)) for t in texts], dtype=np.int64),
            "nbytes": np.asarray([len(t.encode("utf-8")) for t in texts], dtype=np.int64),
        }  # fmt: skip

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        import torch

        for lo in range(0, len(indices), batch_size):
            chunk = [int(i) for i in indices[lo : lo + batch_size]]
            yield {
                "rows": [prepared["rows"][i] for i in chunk], "pad": prepared["pad"], "chunk": batch_size,
                **{k: torch.from_numpy(prepared[k][chunk]) for k in ("ntok", "nwords", "nbytes", "truncated")},
            }  # fmt: skip

    def lengths(self, prepared: Any) -> np.ndarray:
        """Each text's longest window (causal right padding): length-bucketed batches."""
        return np.array([max((len(r[0]) for r in rows), default=0) for rows in prepared["rows"]], dtype=np.int64)

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        import torch

        from .loglik import score_groups

        lls, ok = score_groups(model, batch["rows"], batch["pad"], chunk=max(1, batch["chunk"]))
        nll = torch.zeros(len(batch["rows"]), dtype=torch.float64)
        for i, windows in enumerate(lls):
            nll[i] = -sum(float(v) for v in windows)  # windows add up in double, as lm-eval's do
        device = batch["ntok"].device
        return {"nll": nll.to(device), "ntok": batch["ntok"], "nwords": batch["nwords"], "nbytes": batch["nbytes"],
                "truncated": batch["truncated"], "finite": ok.to(device)}  # fmt: skip


def _with_offsets(windows: Iterator[tuple[list[int], int]]) -> Iterator[tuple[tuple[list[int], int], int]]:
    done = 0
    for inp, n in windows:
        yield (inp, n), done
        done += n


def split_text(text: str, *, by: str = "paragraph", min_chars: int = 40) -> list[str]:
    """Pieces of a document: paragraphs (blank-line separated, inner whitespace collapsed) or lines."""
    if by == "paragraph":
        raw = re.split(r"\n\s*\n", text)
    elif by == "line":
        raw = text.splitlines()
    else:
        raise TaskError(f"by={by!r}: expected 'paragraph' or 'line'")
    pieces = [" ".join(p.split()) for p in raw]
    return [p for p in pieces if len(p) >= min_chars]


# -- built-in held-out text ----------------------------------------------------------------


def python_docs() -> LanguageModelingTask:
    """Built-in ``python-docs``: the prose paragraphs of Python's reference documentation.

    The text ships with every CPython (``pydoc_data.topics``, what ``help("if")`` shows), so
    it is always offline: about 370 English paragraphs of at least 200 characters, code
    examples and tables left out, every token scored in rolling windows of 128 tokens. The text (and so the data
    fingerprint) follows the Python version running the tests.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped-down Python builds
        raise TaskError("task 'python-docs' needs Python's pydoc_data module, missing from this Python build") from None
    texts, ids = [], []
    for topic in sorted(topics):
        for k, para in enumerate(re.split(r"\n\s*\n", topics[topic])):
            if any(line.startswith("   ") for line in para.splitlines()):
                continue  # indented: code, grammar productions, tables
            text = " ".join(para.split())
            if len(text) >= 200 and sum(c.isalpha() or c == " " for c in text) / len(text) > 0.9:
                texts.append(text)
                ids.append(f"{topic}:{k}")
    return LanguageModelingTask(texts, ids, max_length=128)
