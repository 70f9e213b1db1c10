"""Multiple-choice questions scored by log-likelihood, as lm-evaluation-harness scores them.

``MultipleChoiceTask``: per example a context, its choices and the index of the right one. Each
choice is scored as the continuation ``target_delimiter + choice`` of the context (summed token
log-probabilities, lm-eval's conventions: see ``tasks.loglik``); ``acc`` is 1 when the most
likely choice is the gold one, ``acc_norm`` when it is so after dividing each log-likelihood by
the choice's length in characters. Both are 0/1 per example (the paired score interval decides);
the class of an example (``label``) is its gold position, so ``max_class_drop`` and ``slices=``
work as for classification. No lm-eval needed; the numbers equal lm-eval's ``multiple_choice``
output type on the same documents and prompts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TaskError
from ..metrics import Metric, PerExampleMetric
from .base import ModelMeta, Task, lookup_column, normalize_ids

MC_METRICS: dict[str, Metric] = {
    "acc": PerExampleMetric("acc", True, True, lambda o: np.asarray(o["acc"], dtype=np.float64),
                  description="the most likely choice is the gold one (per example 0/1)"),
    "acc_norm": PerExampleMetric("acc_norm", True, True, lambda o: np.asarray(o["acc_norm"], dtype=np.float64),
                       description="the most likely choice per character is the gold one (per example 0/1)"),
}  # fmt: skip


class MultipleChoiceTask(Task):
    """Contexts, choices and gold indices (or gold choice strings); one split per name.

    ``MultipleChoiceTask(contexts, choices, gold, ids=None, target_delimiter=" ")`` or
    ``splits={"test": (contexts, choices, gold[, ids[, columns]])}``; ``max_length`` caps the model
    input (default: the model's own maximum, as lm-eval resolves it).
    """

    label_key = "label"  # the gold choice's index (static_outputs)
    pred_key = None

    metrics = MC_METRICS
    default_metric = "acc"
    cache_prepared = True

    def __init__(
        self,
        contexts: Sequence[str] | None = None,
        choices: Sequence[Sequence[str]] | None = None,
        gold: Sequence[int | str] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        target_delimiter: str = " ",
        max_length: int | None = None,
        splits: Mapping[str, tuple] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        if splits is None:
            if contexts is None or choices is None or gold is None:
                raise TaskError("MultipleChoiceTask needs contexts, choices and gold (or splits={...})")
            splits = {"test": (contexts, choices, gold, ids, columns)}
        if not splits:
            raise TaskError("MultipleChoiceTask needs at least one split")
        self.target_delimiter = str(target_delimiter)
        self.max_length = max_length
        self._splits: dict[str, dict[str, Any]] = {}  # split name -> its record (a dict)
        for name, spec in splits.items():
            ctx, ch, gd, split_ids, cols = (tuple(spec) + (None, None))[:5]
            ctx = [str(c) for c in ctx]
            ch = [[str(x) for x in c] for c in ch]
            if not (len(ctx) == len(ch) == len(gd)):
                raise TaskError(
                    f"MultipleChoiceTask split {name!r}: {len(ctx)} contexts, {len(ch)} choice lists, "
                    f"{len(gd)} gold answers"
                )
            golds = []
            for i, (options, g) in enumerate(zip(ch, gd)):
                if len(options) < 2:
                    raise TaskError(
                        f"MultipleChoiceTask split {name!r} example {i}: needs at least two choices, got {options!r}"
                    )
                if isinstance(g, str) and not g.strip().lstrip("-").isdigit():
                    if g not in options:
                        raise TaskError(
                            f"MultipleChoiceTask split {name!r} example {i}: gold answer {g!r} "
                            f"is not among the choices {options!r}"
                        )
                    g = options.index(g)
                g = int(g)
                if not 0 <= g < len(options):
                    raise TaskError(
                        f"MultipleChoiceTask split {name!r} example {i}: gold index {g} outside 0..{len(options) - 1}"
                    )
                golds.append(g)
            columns_ = {k: np.asarray(v) for k, v in (cols or {}).items()}
            self._splits[name] = {
                "ids": normalize_ids(split_ids, len(ctx), f"{name}/"), "contexts": ctx, "choices": ch,
                "gold": np.asarray(golds, dtype=np.int64), "columns": columns_,
            }  # fmt: skip

    # -- loaders -------------------------------------------------------------------------------
    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        *,
        context: str = "question",
        choices: str | Sequence[str] = "choices",
        gold: str = "answer",
        id: str | None = None,
        split_column: str | None = None,
        **kwargs: Any,
    ) -> MultipleChoiceTask:
        """From dict rows.

        ``choices`` names one column holding a list (or a JSON list, or ``a|b|c``) or several columns.
        """
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in records:
            groups.setdefault(str(r[split_column]) if split_column else "test", []).append(r)
        splits = {}
        for name, rows in groups.items():
            try:
                ctx = [r[context] for r in rows]
                if isinstance(choices, str):
                    opts = [_as_list(r[choices]) for r in rows]
                else:
                    opts = [[r[c] for c in choices] for r in rows]
                gd = [r[gold] for r in rows]
            except KeyError as exc:
                raise TaskError(f"MultipleChoiceTask: no column {exc.args[0]!r}; columns: {sorted(rows[0])}") from None
            splits[name] = (ctx, opts, gd, [r[id] for r in rows] if id else None)
        return cls(splits=splits, **kwargs)

    @classmethod
    def from_jsonl(cls, path: str | Path, **kwargs: Any) -> MultipleChoiceTask:
        rows = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TaskError(f"{path}:{n}: not JSON ({exc.msg})") from None
        return cls.from_records(rows, **kwargs)

    @classmethod
    def from_csv(cls, path: str | Path, *, delimiter: str = ",", **kwargs: Any) -> MultipleChoiceTask:
        import csv

        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=delimiter))
        return cls.from_records(rows, **kwargs)

    @classmethod
    def from_hf_dataset(cls, dataset: Any, *, split: str | None = None, **kwargs: Any) -> MultipleChoiceTask:
        """From a ``datasets.Dataset`` / ``DatasetDict`` or a folder saved with ``save_to_disk``."""
        if isinstance(dataset, (str, Path)):
            import datasets

            dataset = datasets.load_from_disk(str(dataset))
        if (
            hasattr(dataset, "keys")
            and not hasattr(dataset, "column_names")
            or isinstance(getattr(dataset, "column_names", None), dict)
        ):
            names = [split] if split else list(dataset.keys())
            parts = {n: cls.from_records(list(dataset[n]), **kwargs)._splits["test"] for n in names}
            task = cls.__new__(cls)
            task.target_delimiter = str(kwargs.get("target_delimiter", " "))
            task.max_length = kwargs.get("max_length")
            task._splits = parts
            return task
        return cls.from_records(list(dataset), **kwargs)

    # -- data ----------------------------------------------------------------------------------
    def ids(self, split: str) -> np.ndarray:
        return self.split(split)["ids"]

    def contexts(self, split: str) -> list[str]:
        return self.split(split)["contexts"]

    def choices(self, split: str) -> list[list[str]]:
        return self.split(split)["choices"]

    def class_names(self) -> list[str]:
        k = max((max(len(c) for c in d["choices"]) for d in self._splits.values() if d["choices"]), default=0)
        return [f"choice {i}" for i in range(k)]

    def static_outputs(self, split: str) -> dict[str, np.ndarray]:
        return {"label": self.split(split)["gold"]}

    def slice_column(self, split: str, column: str) -> np.ndarray:
        return lookup_column(self.name, self.split(split)["columns"], column)

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        d = self.split(split)
        return d["ids"], d["gold"], d["contexts"], d["choices"], self.target_delimiter, self.max_length

    # -- running a model -------------------------------------------------------------------------
    def prepare_key(self, meta: ModelMeta) -> str:
        return f"{meta.tokenizer_fingerprint}|{self._max_length(meta)}"

    def _max_length(self, meta: ModelMeta) -> int:
        from .loglik import model_max_length

        return int(self.max_length) if self.max_length else model_max_length(meta.config, meta.tokenizer)

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        from .loglik import encode_pair, padding_id, request_row

        tok = meta.tokenizer
        if tok is None:
            raise TaskError(f"task {self.name!r} needs a tokenizer, and the checkpoint has none")
        d = self.split(split)
        max_length = self._max_length(meta)
        k_max = max(len(c) for c in d["choices"])
        requests = []
        for context, options in zip(d["contexts"], d["choices"]):
            rows = []
            for option in options:
                ctx, cont = encode_pair(tok, context, f"{self.target_delimiter}{option}")
                rows.append((*request_row(ctx, cont, max_length), cont))
            requests.append(rows)
        lengths = np.ones((len(requests), k_max))  # padding choices have ll -inf: never chosen
        for i, options in enumerate(d["choices"]):
            lengths[i, : len(options)] = [float(len(o)) for o in options]
        return {"requests": requests, "lengths": lengths, "gold": d["gold"], "k_max": k_max, "pad": padding_id(tok)}

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        for lo in range(0, len(indices), batch_size):
            chunk = [int(i) for i in indices[lo : lo + batch_size]]
            yield {
                "requests": [prepared["requests"][i] for i in chunk],
                "lengths": prepared["lengths"][chunk],
                "gold": prepared["gold"][chunk],
                "k_max": prepared["k_max"],
                "pad": prepared["pad"],
                "chunk": batch_size,
            }

    def lengths(self, prepared: Any) -> np.ndarray:
        """The longest (context + choice) input of each example: length-bucketed batches (causal right padding)."""
        return np.array([max((len(r[0]) for r in reqs), default=0) for reqs in prepared["requests"]], dtype=np.int64)

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        import torch

        from .loglik import score_groups

        lls, ok = score_groups(model, batch["requests"], batch["pad"], chunk=max(1, batch["chunk"] * 2))
        b, k = len(batch["requests"]), batch["k_max"]
        ll = torch.full((b, k), float("-inf"), dtype=torch.float64)
        for i, choices in enumerate(lls):
            ll[i, : len(choices)] = choices
        ll_np = ll.numpy()
        gold = np.asarray(batch["gold"])
        pred = ll_np.argmax(axis=1)
        pred_norm = (ll_np / np.asarray(batch["lengths"])).argmax(axis=1)
        return {
            "ll": ll,
            "pred_choice": torch.from_numpy(pred),
            "pred_norm_choice": torch.from_numpy(pred_norm),
            "acc": torch.from_numpy((pred == gold).astype(np.float64)),
            "acc_norm": torch.from_numpy((pred_norm == gold).astype(np.float64)),
            "finite": ok,
        }


def _as_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except json.JSONDecodeError:
            pass
    return [p for p in text.split("|")]
