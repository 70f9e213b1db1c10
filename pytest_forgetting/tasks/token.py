"""Token classification (named-entity recognition) with entity-level precision / recall / F1.

Data are word-level: each example is a sentence (a list of words) with one tag per word in a
BIO-style scheme (``B-``/``I-``/``O``, also ``E-``/``S-`` and the BILOU spellings ``L-``/``U-``).
A model sees the sentence tokenised by the checkpoint's (fast) tokenizer; the prediction for a
word is the model's label at the word's first subword. Words that lose all their subwords to
truncation are predicted ``O`` (both models alike), so the gold entities there count as missed.

Per-example outputs are 2-D: ``tag_pred`` and ``tag_gold`` hold task tag ids per word, padded
with -100 to the split's longest sentence. The metrics are *aggregate*: entity-level micro
precision / recall / F1 in the seqeval (conlleval) sense — an entity counts only when both its
span and its type are exact — plus per-type F1 and macro-F1 over types. The plugin compares
them with a seeded paired bootstrap over sentences. Per-sentence entity counts are computed once
per output array (vectorised) so each bootstrap replicate is a few sums.

A model's label ids are read through its ``config.id2label`` when the names mean something
(not transformers' ``LABEL_k`` placeholders): a tagger whose label order differs from the
task's is scored correctly, and a label the task does not know is an error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checkpoints.compat import placeholder_labels
from ..errors import TaskError
from ..metrics import AggregateMetric, Metric, Outputs
from .base import ModelMeta, Task, normalize_ids
from .batching import pad_encoding, trimmed_batches
from .classification import config_label_names, logits_of

PAD = -100
#: tag prefixes, BILOU spellings folded into BIOES
_PREFIX_CODES = {"O": 0, "B": 1, "I": 2, "E": 3, "S": 4, "L": 3, "U": 4}
_O, _B, _I, _E, _S = 0, 1, 2, 3, 4


# -- tag schemes ---------------------------------------------------------------------------


def parse_tag(tag: str) -> tuple[str, str]:
    """(prefix, entity type) of a tag: ``"B-geo-loc" -> ("B", "geo-loc")``, ``"O" -> ("O", "")``.

    Accepts ``B-X`` / ``I-X`` / ``E-X`` / ``S-X`` / ``L-X`` / ``U-X``, the suffix spelling ``X-B``
    is not supported. A bare prefix (``"B"``) is an entity of the empty type, as in seqeval.
    """
    tag = str(tag)
    if tag == "O" or tag == "":
        return "O", ""
    head, sep, rest = tag.partition("-")
    if head in _PREFIX_CODES and head != "O" and (sep or len(tag) == 1):
        return head, rest
    raise TaskError(f"tag {tag!r} is not a BIO tag (expected O, or B-/I-/E-/S-/L-/U- followed by the entity type)")


@dataclass(frozen=True)
class TagTable:
    """The task's tag vocabulary, parsed once: per tag id its prefix code and entity-type id."""

    tags: tuple[str, ...]
    types: tuple[str, ...]
    prefix: np.ndarray = field(repr=False)  # (n_tags,) prefix code per tag id
    type_id: np.ndarray = field(repr=False)  # (n_tags,) entity type id per tag id, -1 for O
    outside: int = 0  # id of the "O" tag

    @classmethod
    def from_tags(cls, tags: Sequence[str]) -> TagTable:
        tags = tuple(str(t) for t in tags)
        if len(set(tags)) != len(tags):
            dup = sorted({t for t in tags if tags.count(t) > 1})
            raise TaskError(f"tag names must be unique; duplicated: {dup}")
        if "O" not in tags:
            raise TaskError(f"the tag set needs an 'O' (outside) tag; got {list(tags)}")
        parsed = [parse_tag(t) for t in tags]
        types = tuple(sorted({ty for p, ty in parsed if p != "O"}))
        index = {t: i for i, t in enumerate(types)}
        prefix = np.array([_PREFIX_CODES[p] for p, _ in parsed], dtype=np.int8)
        type_id = np.array([index[ty] if p != "O" else -1 for p, ty in parsed], dtype=np.int64)
        return cls(tags, types, prefix, type_id, tags.index("O"))


def default_tag_names(tag_lists: Sequence[Sequence[str]]) -> list[str]:
    """``O`` first, then per entity type (sorted) its prefixes in B, I, E, S order."""
    seen = {str(t) for tags in tag_lists for t in tags}
    seen.add("O")
    order = {"B": 0, "I": 1, "E": 2, "L": 2, "S": 3, "U": 3}

    def key(tag: str) -> tuple[int, str, int, str]:
        p, ty = parse_tag(tag)
        return (0, "", 0, "") if p == "O" else (1, ty, order[p], tag)

    return sorted(seen, key=key)


# -- entity extraction (conlleval / seqeval default semantics) ------------------------------


def extract_entities(tag_ids: np.ndarray, table: TagTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entities of a padded (N, W) array of tag ids: (row, start, end, type) arrays, end inclusive.

    Chunking follows conlleval, which seqeval's default mode reproduces: an entity ends where
    the previous tag closes it (``E``/``S``, a ``B``/``I`` followed by ``B``/``S``/``O``, or a type
    change) and starts at ``B``/``S``, at an ``I``/``E`` after ``O``/``E``/``S``, or on a type
    change. So ``O I-PER`` starts an entity (lenient IOB1 reading) and ``B-PER I-LOC`` is two.
    Padding (-100) behaves as ``O``; entities never cross sentences.
    """
    ids = np.asarray(tag_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise TaskError(f"tag arrays must be 2-D (sentences, words), got shape {ids.shape}")
    n, w = ids.shape
    valid = (ids >= 0) & (ids < len(table.tags))
    safe = np.where(valid, ids, table.outside)
    # one extra O column closes every entity at the end of its sentence
    cur_p = np.concatenate([table.prefix[safe], np.zeros((n, 1), np.int8)], axis=1).astype(np.int8)
    cur_t = np.concatenate([table.type_id[safe], np.full((n, 1), -1, np.int64)], axis=1)
    prev_p = np.concatenate([np.zeros((n, 1), np.int8), cur_p[:, :-1]], axis=1)
    prev_t = np.concatenate([np.full((n, 1), -1, np.int64), cur_t[:, :-1]], axis=1)

    prev_in = prev_p != _O
    cur_in = cur_p != _O
    type_change = prev_t != cur_t
    cur_opens = (cur_p == _B) | (cur_p == _S)
    cur_cont = (cur_p == _I) | (cur_p == _E)
    ends = (
        (prev_p == _E)
        | (prev_p == _S)
        | (((prev_p == _B) | (prev_p == _I)) & (cur_opens | (cur_p == _O)))
        | (prev_in & type_change)
    )
    starts = cur_opens | (cur_cont & ((prev_p == _O) | (prev_p == _E) | (prev_p == _S))) | (cur_in & type_change)
    starts[:, -1] = False  # the sentinel column opens nothing

    s_row, s_col = np.nonzero(starts)
    e_row, e_col = np.nonzero(ends)
    if len(s_row) != len(e_row):  # pragma: no cover - the rules above pair every start with one end
        raise AssertionError("unbalanced entity boundaries")
    return s_row, s_col, e_col - 1, cur_t[s_row, s_col]


@dataclass(frozen=True)
class EntityCounts:
    """Per-sentence, per-type counts: true positives, predicted and gold entities (N, n_types)."""

    tp: np.ndarray
    pred: np.ndarray
    gold: np.ndarray
    words_correct: np.ndarray  # (N,) words whose predicted tag equals the gold tag
    words: np.ndarray  # (N,) words per sentence


def _entity_keys(row: np.ndarray, start: np.ndarray, end: np.ndarray, typ: np.ndarray, w: int, k: int) -> np.ndarray:
    return ((row * (w + 1) + start) * (w + 1) + end) * max(k, 1) + typ


def _member(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``np.isin(keys, pool)`` by binary search in the sorted pool (the keys come row-major, so
    sorted already; numpy's hash-based isin takes ~2.5 s for 1.8M entities, this ~0.06 s)."""
    if pool.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    if pool.size > 1 and not bool(np.all(pool[1:] > pool[:-1])):
        pool = np.unique(pool)
    pos = np.minimum(np.searchsorted(pool, keys), pool.size - 1)
    return pool[pos] == keys


def entity_counts(pred: np.ndarray, gold: np.ndarray, table: TagTable) -> EntityCounts:
    """Exact-match (span and type) entity counts per sentence and type, plus word accuracy counts."""
    pred = np.asarray(pred, dtype=np.int64)
    gold = np.asarray(gold, dtype=np.int64)
    if pred.shape != gold.shape:
        raise TaskError(f"predicted tags {pred.shape} and gold tags {gold.shape} differ in shape")
    n, w = gold.shape
    k = len(table.types)
    pr, ps, pe, pt = extract_entities(pred, table)
    gr, gs, ge, gt = extract_entities(gold, table)
    hit = _member(_entity_keys(pr, ps, pe, pt, w, k), _entity_keys(gr, gs, ge, gt, w, k))

    def per_row_type(rows: np.ndarray, types: np.ndarray) -> np.ndarray:
        return (
            np.bincount(rows * k + types, minlength=n * k).reshape(n, k).astype(np.float64) if k else np.zeros((n, 0))
        )

    words = gold != PAD
    return EntityCounts(
        tp=per_row_type(pr[hit], pt[hit]),
        pred=per_row_type(pr, pt),
        gold=per_row_type(gr, gt),
        words_correct=((pred == gold) & words).sum(axis=1).astype(np.float64),
        words=words.sum(axis=1).astype(np.float64),
    )


class _CountsMemo:
    """Entity counts of an output pair, computed once per pair of arrays (bootstrap calls reuse them).

    Keyed by the arrays' identity; the entry keeps the arrays alive so an id is never reused
    while it is cached.
    """

    def __init__(self, size: int = 16) -> None:
        self._entries: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, EntityCounts]] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, o: Outputs, table: TagTable) -> EntityCounts:
        pred, gold = o["tag_pred"], o["tag_gold"]
        key = (id(pred), id(gold))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is pred and hit[1] is gold:
                return hit[2]
        counts = entity_counts(pred, gold, table)
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (pred, gold, counts)
        return counts


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def entity_scores(counts: EntityCounts, idx: np.ndarray | None = None) -> dict[str, float]:
    """precision / recall / f1 (micro over entities), f1_macro (over types seen) and per-type f1."""
    sel = slice(None) if idx is None else idx
    tp = counts.tp[sel].sum(axis=0)
    pred = counts.pred[sel].sum(axis=0)
    gold = counts.gold[sel].sum(axis=0)
    per_type = np.divide(2 * tp, pred + gold, out=np.zeros_like(tp), where=(pred + gold) > 0)
    present = (pred + gold) > 0
    return {
        "precision": _ratio(tp.sum(), pred.sum()),
        "recall": _ratio(tp.sum(), gold.sum()),
        "f1": _ratio(2 * tp.sum(), pred.sum() + gold.sum()),
        "f1_macro": float(per_type[present].mean()) if present.any() else 0.0,
        "per_type_f1": per_type,
    }


def entity_metrics(table: TagTable, memo: _CountsMemo | None = None) -> dict[str, Metric]:
    """The metric records of a token task: entity P/R/F1, macro-F1, per-type F1, word accuracy."""
    memo = memo or _CountsMemo()

    def summed(which: str):
        def fn(o: Outputs, idx: np.ndarray) -> float:
            c = memo.get(o, table)
            tp, pred, gold = c.tp[idx].sum(), c.pred[idx].sum(), c.gold[idx].sum()
            if which == "precision":
                return _ratio(tp, pred)
            if which == "recall":
                return _ratio(tp, gold)
            return _ratio(2 * tp, pred + gold)

        return fn

    def macro(o: Outputs, idx: np.ndarray) -> float:
        return entity_scores(memo.get(o, table), idx)["f1_macro"]

    def type_f1(t: int):
        def fn(o: Outputs, idx: np.ndarray) -> float:
            c = memo.get(o, table)
            tp, pred, gold = c.tp[idx, t].sum(), c.pred[idx, t].sum(), c.gold[idx, t].sum()
            return _ratio(2 * tp, pred + gold)

        return fn

    def word_accuracy(o: Outputs, idx: np.ndarray) -> float:
        c = memo.get(o, table)
        return _ratio(c.words_correct[idx].sum(), c.words[idx].sum())

    # The micro scores are ratios of per-sentence sums (F1 = 2 sum tp / (sum pred + sum gold)): the
    # same statistic on every set of sentences (0 when the denominator is 0, where ratio_of falls
    # back to the black box), so the decision core's Ratio machinery (bootstrap-t with a
    # delta-method SE, group counts) decides them instead of a Python call per resample.
    def parts(which: str, t: int | None = None):
        def fn(o: Outputs) -> tuple[np.ndarray, np.ndarray]:
            c = memo.get(o, table)
            if which == "words":
                return c.words_correct, c.words
            tp, pred, gold = (
                (c.tp, c.pred, c.gold)
                if t is None
                else (c.tp[:, t : t + 1], c.pred[:, t : t + 1], c.gold[:, t : t + 1])
            )
            tp, pred, gold = tp.sum(axis=1), pred.sum(axis=1), gold.sum(axis=1)
            if which == "precision":
                return tp, pred
            if which == "recall":
                return tp, gold
            return 2.0 * tp, pred + gold

        return fn

    # ratio_no_change=False: no exact no-change rule yet for entity counts (a sentence holds any number of entities)
    out: dict[str, Metric] = {
        "f1": AggregateMetric(
            "f1",
            True,
            True,
            summed("f1"),
            description="entity-level micro F1 (exact span and type, seqeval default)",
            ratio=parts("f1"),
            ratio_den_fixed=False,
            ratio_no_change=False,
        ),
        "precision": AggregateMetric(
            "precision",
            True,
            True,
            summed("precision"),
            description="entity-level micro precision",
            ratio=parts("precision"),
            ratio_den_fixed=False,
            ratio_no_change=False,
        ),
        "recall": AggregateMetric(
            "recall",
            True,
            True,
            summed("recall"),
            description="entity-level micro recall",
            ratio=parts("recall"),
            ratio_den_fixed=True,
            ratio_no_change=False,
        ),
        "f1_macro": AggregateMetric(
            "f1_macro", True, True, macro, description="mean of per-type entity F1 over the types present"
        ),
        "token_accuracy": AggregateMetric(
            "token_accuracy",
            True,
            True,
            word_accuracy,
            description="fraction of words with the exact gold tag",
            ratio=parts("words"),
            ratio_den_fixed=True,
            ratio_no_change=False,
        ),
    }
    for t, name in enumerate(table.types):
        key = f"f1:{name}"
        out[key] = AggregateMetric(
            key,
            True,
            True,
            type_f1(t),
            description=f"entity F1 of type {name!r}",
            ratio=parts("f1", t),
            ratio_den_fixed=False,
            ratio_no_change=False,
        )
    return out


# -- the task ------------------------------------------------------------------------------


@dataclass
class TokenSplit:
    ids: np.ndarray
    tokens: list[list[str]]
    tags: np.ndarray  # (N, W) task tag ids, PAD-padded
    columns: dict[str, np.ndarray] = field(default_factory=dict)


class TokenClassificationTask(Task):
    """Sentences of words with one BIO tag per word; entity-level F1 (seqeval semantics).

    ``tokens``: a list of sentences, each a list of words. ``tags``: per sentence, one tag per
    word, as strings (``"B-PER"``) or as integer ids into ``tag_names``. ``tag_names`` is the
    tag vocabulary in the order of a model's logits when its config has no label names; by
    default ``O`` then each entity type's ``B-``/``I-`` tags, types sorted. ``splits`` maps split
    names to ``(tokens, tags, ids, columns)`` tuples; ``columns`` are per-sentence values kept
    for slicing.
    """

    #: 2: outputs carry ``tag_proba`` (per-word tag probabilities); older cached entries are not reused
    version = "2"

    default_metric = "f1"
    label_key = None  # per-word tags, not one label per example: no per-class drops
    pred_key = None  # tag_pred: per word

    def __init__(
        self,
        tokens: Sequence[Sequence[str]] | None = None,
        tags: Sequence[Sequence[Any]] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        tag_names: Sequence[str] | None = None,
        splits: Mapping[str, tuple] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
        max_length: int = 128,
    ) -> None:
        if splits is None:
            if tokens is None or tags is None:
                raise TaskError("TokenClassificationTask needs tokens and tags (or splits={...})")
            splits = {"test": (tokens, tags, ids, columns)}
        if not splits:
            raise TaskError("a task needs at least one split")
        specs = {name: (tuple(spec) + (None, None))[:4] for name, spec in splits.items()}
        if tag_names is None:
            all_tags = [list(t) for (_, y, _, _) in specs.values() for t in y]
            if any(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for t in all_tags for x in t):
                raise TaskError("integer tags need tag_names= (the tag of each id)")
            tag_names = default_tag_names([[str(x) for x in t] for t in all_tags])
        self.table = TagTable.from_tags(tag_names)
        self.max_length = int(max_length)
        self._splits: dict[str, TokenSplit] = {}
        for name, (x, y, split_ids, cols) in specs.items():
            self._splits[name] = self._build_split(name, x, y, split_ids, cols)
        self.metrics = entity_metrics(self.table)

    def _build_split(self, name: str, tokens: Any, tags: Any, ids: Any, cols: Any) -> TokenSplit:
        sentences = [[str(w) for w in s] for s in tokens]
        tag_lists = list(tags)
        if len(tag_lists) != len(sentences):
            raise TaskError(f"split {name!r}: {len(sentences)} sentences but {len(tag_lists)} tag sequences")
        index = {t: i for i, t in enumerate(self.table.tags)}
        width = max((len(s) for s in sentences), default=0)
        arr = np.full((len(sentences), max(width, 1)), PAD, dtype=np.int64)
        for i, (words, row) in enumerate(zip(sentences, tag_lists)):
            row = list(row)
            if len(row) != len(words):
                raise TaskError(f"split {name!r}, sentence {i}: {len(words)} words but {len(row)} tags")
            if not words:
                raise TaskError(f"split {name!r}, sentence {i} is empty")
            for j, t in enumerate(row):
                if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                    if not 0 <= int(t) < len(self.table.tags):
                        raise TaskError(
                            f"split {name!r}, sentence {i}: tag id {int(t)} is outside the "
                            f"{len(self.table.tags)} tag names"
                        )
                    arr[i, j] = int(t)
                else:
                    try:
                        arr[i, j] = index[str(t)]
                    except KeyError:
                        raise TaskError(
                            f"split {name!r}, sentence {i}: tag {str(t)!r} is not among the tag names "
                            f"{list(self.table.tags)}"
                        ) from None
        columns = {k: np.asarray(v) for k, v in (cols or {}).items()}
        for k, v in columns.items():
            if len(v) != len(sentences):
                raise TaskError(f"split {name!r}: column {k!r} has {len(v)} values for {len(sentences)} sentences")
        return TokenSplit(normalize_ids(ids, len(sentences), f"{name}/"), sentences, arr, columns)

    # -- data ------------------------------------------------------------------------------
    def split(self, split: str) -> TokenSplit:
        return super().split(split)

    def tokens(self, split: str) -> list[list[str]]:
        return self.split(split).tokens

    def tags(self, split: str) -> list[list[str]]:
        """Gold tags of a split as strings, one list per sentence."""
        d = self.split(split)
        return [[self.table.tags[t] for t in row[: len(words)]] for row, words in zip(d.tags, d.tokens)]

    def class_names(self) -> list[str]:
        """The entity types (not the tags)."""
        return list(self.table.types)

    def static_outputs(self, split: str) -> dict[str, np.ndarray]:
        return {"tag_gold": self.split(split).tags}

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        d = self.split(split)
        return self.max_length, list(self.table.tags), d.ids, d.tokens, d.tags

    # -- running a model ---------------------------------------------------------------------
    cache_prepared = True

    def prepare_key(self, meta: ModelMeta) -> str:
        return f"{meta.tokenizer_fingerprint}:{effective_max_length(meta, self.max_length)}"

    def prepare(self, split: str, meta: ModelMeta) -> dict[str, Any]:
        d = self.split(split)
        return tokenize_words(
            meta, d.tokens, effective_max_length(meta, self.max_length), self.name, width=d.tags.shape[1]
        )

    def batches(self, prepared: dict[str, Any], indices: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
        for _, idx, inputs in trimmed_batches(prepared["tensors"], prepared["lengths"], indices, batch_size):
            yield {
                "inputs": inputs,
                "first": prepared["first"].index_select(0, idx),
                "n_words": prepared["n_words"].index_select(0, idx),
            }

    def lengths(self, prepared: dict[str, Any]) -> np.ndarray:
        return prepared["lengths"]  # sub-word tokens (masked right padding): length-bucketed batches

    def forward(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        inputs = batch["inputs"]
        logits = logits_of(model(**inputs))
        if logits.ndim != 3:
            raise TaskError(
                f"task {self.name!r}: a token classifier must return logits of shape (batch, tokens, labels), "
                f"got {tuple(logits.shape)}"
            )
        lookup = label_lookup(model, logits.shape[-1], self.table, self.name).to(logits.device)
        first = batch["first"]
        words = torch.arange(first.shape[1], device=first.device)[None, :] < batch["n_words"][:, None]
        token_pred = logits.argmax(dim=-1)
        at_first = lookup[token_pred.gather(1, first.clamp(min=0))]
        pred = torch.where(first >= 0, at_first, torch.full_like(at_first, self.table.outside))
        pred = torch.where(words, pred, torch.full_like(pred, PAD))
        mask = inputs["attention_mask"].bool()
        finite = (torch.isfinite(logits).all(dim=-1) | ~mask).all(dim=1)
        # per word (its first sub-token) the softmax over the task's tags, float32; 0 on padding
        # and on words cut off by truncation
        proba = torch.softmax(logits.float(), dim=-1)
        proba = proba.gather(1, first.clamp(min=0)[:, :, None].expand(-1, -1, proba.shape[-1]))
        tags = torch.zeros(*proba.shape[:2], len(self.table.tags), dtype=proba.dtype, device=proba.device)
        tags.index_add_(2, lookup, proba)
        tags = tags * ((first >= 0) & words)[:, :, None]
        return {"tag_pred": pred, "tag_proba": tags, "finite": finite}


def label_lookup(model: Any, n_logits: int, table: TagTable, task_name: str) -> Any:
    """Tensor mapping the model's label ids to the task's tag ids (through ``config.id2label``)."""
    import torch

    names = config_label_names(getattr(model, "config", None))
    if placeholder_labels(names):
        names = {}
    if not names:
        if n_logits != len(table.tags):
            raise TaskError(
                f"task {task_name!r} has {len(table.tags)} tags but the model has {n_logits} labels and no label names "
                "(config.id2label) to map them; set id2label in the checkpoint's config.json"
            )
        return torch.arange(n_logits)
    index = {t: i for i, t in enumerate(table.tags)}
    unknown = sorted({v for v in names.values() if v not in index})
    if unknown:
        raise TaskError(
            f"task {task_name!r}: the model predicts labels that are not tags of the task: {unknown[:5]}; "
            f"task tags: {list(table.tags)}"
        )
    missing = [i for i in range(n_logits) if i not in names]
    if missing:
        raise TaskError(f"task {task_name!r}: the model's config.id2label has no name for label ids {missing[:5]}")
    return torch.tensor([index[names[i]] for i in range(n_logits)], dtype=torch.long)


#: model types whose position ids start after the padding index (two positions are reserved)
_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "bart": 2, "mbart": 2}


def effective_max_length(meta: ModelMeta, max_length: int) -> int:
    """``max_length`` capped at what the model can embed (``config.max_position_embeddings``).

    Without the cap a long text makes a small-context model fail inside its embedding layer
    with a shape error instead of being truncated.
    """
    limit = getattr(meta.config, "max_position_embeddings", None)
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        offset = _OFFSET_POSITIONS.get(str(getattr(meta.config, "model_type", "")), 0)
        return max(1, min(int(max_length), limit - offset))
    return int(max_length)


def tokenize_words(
    meta: ModelMeta, sentences: Sequence[Sequence[str]], max_length: int, task_name: str, width: int
) -> dict[str, Any]:
    """Tokenise pre-split sentences once, right-padded; record each word's first subword position.

    Returns ``{"tensors": {...} (N, T), "lengths": (N,), "first": (N, width) token index or -1,
    "n_words": (N,)}``.
    """
    import torch

    tok = meta.tokenizer
    if tok is None:
        raise TaskError(f"task {task_name!r} needs a tokenizer, and the checkpoint folder has none")
    if not getattr(tok, "is_fast", False):
        raise TaskError(
            f"task {task_name!r} aligns words with subwords, which needs a fast tokenizer (a tokenizer.json in the "
            f"checkpoint folder); {type(tok).__name__} is not one"
        )
    try:
        enc = tok(
            [list(s) for s in sentences],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=False,
        )
    except Exception as exc:  # e.g. a BPE tokenizer that needs add_prefix_space=True
        raise TaskError(
            f"task {task_name!r}: the tokenizer cannot encode pre-split words: {type(exc).__name__}: {exc}"
        ) from exc
    n = len(sentences)
    seqs = enc["input_ids"]
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
    tensors = pad_encoding(enc, lengths, tok.pad_token_id if tok.pad_token_id is not None else 0)
    first = np.full((n, max(width, 1)), -1, dtype=np.int64)
    for i in range(n):
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and first[i, w] < 0:
                first[i, w] = pos
    n_words = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=n)
    return {
        "tensors": tensors,
        "lengths": lengths,
        "first": torch.from_numpy(first),
        "n_words": torch.from_numpy(n_words),
    }
