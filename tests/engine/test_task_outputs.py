"""Tasks declare what their outputs mean (issue 15): ``label_key``, ``pred_key``, ``finite_key``.

The session (right/wrong per example, flips, per-class drops, class gaps, precision budgets), the
evaluator (the NaN/Inf flag) and the chance-level warning read a task's declarations, never a key
of their own choosing: a task that names its outputs otherwise gets the same verdicts and rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pytest_forgetting.errors import ConfigError
from pytest_forgetting.metrics import PerExampleMetric
from pytest_forgetting.tasks.base import ModelMeta, Task


def test_builtin_declarations():
    from pytest_forgetting.tasks.classification import ImageClassificationTask, TextClassificationTask
    from pytest_forgetting.tasks.embedding import EmbeddingProbeTask
    from pytest_forgetting.tasks.lm import GenerationExactMatchTask, LanguageModelingTask
    from pytest_forgetting.tasks.lm_eval import LmEvalTask
    from pytest_forgetting.tasks.multiple_choice import MultipleChoiceTask
    from pytest_forgetting.tasks.speech import SpeechRecognitionTask
    from pytest_forgetting.tasks.token import TokenClassificationTask

    declared = {
        cls: (cls.label_key, cls.pred_key, cls.finite_key)
        for cls in (
            Task,
            ImageClassificationTask,
            TextClassificationTask,
            EmbeddingProbeTask,
            LanguageModelingTask,
            GenerationExactMatchTask,
            SpeechRecognitionTask,
            TokenClassificationTask,
            MultipleChoiceTask,
            LmEvalTask,
        )
    }
    classify = ("label", "pred", "finite")
    assert declared == {
        Task: classify,
        ImageClassificationTask: classify,
        TextClassificationTask: classify,
        EmbeddingProbeTask: classify,
        LanguageModelingTask: (None, None, "finite"),
        GenerationExactMatchTask: (None, None, "finite"),
        SpeechRecognitionTask: (None, None, "finite"),
        TokenClassificationTask: (None, None, "finite"),
        MultipleChoiceTask: ("label", None, "finite"),
        LmEvalTask: ("label", None, None),
    }


class _Named(Task):
    label_key, pred_key = "gold", "guess"


def test_labels_and_predictions_follow_the_declaration():
    task = _Named()
    out = {
        "gold": np.array([0, 1, 2]),
        "guess": np.array([0, 2, 2]),
        "label": np.array([9, 9, 9]),
        "pred": np.array([9, 9, 9]),
    }
    assert task.class_labels(out).tolist() == [0, 1, 2] and task.predictions(out).tolist() == [0, 2, 2]
    assert task.predictions({**out, "guess": np.array([[0], [2], [2]])}) is None  # not one class per example
    assert (
        task.class_labels({**out, "gold": np.zeros((3, 2))}) is None
        and task.predictions({**out, "gold": np.zeros((3, 2))}) is None
    )
    assert task.class_labels({"label": out["label"]}) is None
    plain = Task()
    assert plain.class_labels(out).tolist() == [9, 9, 9] and plain.predictions(out).tolist() == [9, 9, 9]
    none = Task()
    none.label_key = None
    assert none.class_labels(out) is None and none.predictions(out) is None


class _Flags(Task):
    """Per example its own position and a finite flag under the declared key."""

    name = "flags"

    def __init__(self, finite_key: str | None, bad: set[int]) -> None:
        self.finite_key = finite_key
        self.bad = bad

    def ids(self, split: str) -> np.ndarray:
        return np.array([f"e{i}" for i in range(6)])

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        return None

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        import torch

        for lo in range(0, len(indices), batch_size):
            yield torch.as_tensor(indices[lo : lo + batch_size])

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        import torch

        ok = torch.tensor([int(i) not in self.bad for i in batch.tolist()])
        return {"pos": batch.clone(), "ok": ok, "finite": torch.zeros(len(batch), dtype=torch.bool)}


def test_the_evaluator_reads_the_declared_finite_flag():
    pytest.importorskip("torch")
    from pytest_forgetting.evaluate import NonFiniteOutputs, run_model

    idx = np.arange(6)
    task = _Flags("ok", set())
    res = run_model(task, None, None, idx, task.ids("test"), device="cpu", dtype="float32", batch_size=4)
    assert "ok" not in res.outputs and res.outputs["pos"].tolist() == idx.tolist()
    assert res.outputs["finite"].tolist() == [False] * 6  # an ordinary output of this task, not its flag
    task = _Flags("ok", {4})
    with pytest.raises(NonFiniteOutputs, match=r"NaN/Inf outputs on 1 of 6 examples \(e\.g\. e4\)"):
        run_model(task, None, None, idx, task.ids("test"), device="cpu", dtype="float32", batch_size=4)
    task = _Flags(None, {4})
    res = run_model(task, None, None, idx, task.ids("test"), device="cpu", dtype="float32", batch_size=4)
    assert res.outputs["ok"].tolist() == [i != 4 for i in range(6)]  # no flag declared: nothing refused


# -- end to end: a task that names its outputs otherwise --------------------------------------------


def _table(preds: np.ndarray, k: int) -> Any:
    import torch

    class Lookup(torch.nn.Module):
        """Preset logits for the example whose index the input holds."""

        def __init__(self) -> None:
            super().__init__()
            logits = torch.full((len(preds), k), -4.0)
            logits[torch.arange(len(preds)), torch.from_numpy(preds)] = 4.0
            self.register_buffer("table", logits)

        def forward(self, x: Any) -> Any:
            return self.table[x.flatten(1)[:, 0].round().long()]

    return Lookup().eval()


def _tasks(n: int, k: int) -> tuple[Any, Any, Any]:
    from pytest_forgetting.tasks.classification import ImageClassificationTask

    y = np.arange(n) % k
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1)
    names = [f"c{i}" for i in range(k)]

    class Renamed(ImageClassificationTask):
        label_key, pred_key, finite_key = "gold", "guess", "ok"
        metrics = {
            "accuracy": PerExampleMetric("accuracy", True, True, lambda o: (o["guess"] == o["gold"]).astype(np.float64))
        }

        def static_outputs(self, split: str) -> dict[str, np.ndarray]:
            return {"gold": self.split(split).labels}

        def forward(self, model: Any, batch: Any) -> dict[str, Any]:
            out = super().forward(model, batch)
            return {"guess": out["pred"], "ok": out["finite"]}

    class Unlabelled(ImageClassificationTask):
        label_key = None

    kw = dict(images=x, labels=y, class_names=names)
    return ImageClassificationTask(**kw), Renamed(**kw), Unlabelled(**kw)


def _row(task: Any, base: Any, tuned: Any, **kwargs: Any) -> Any:
    from pytest_forgetting.checks import bind_task, parse_check
    from pytest_forgetting.options import Settings
    from pytest_forgetting.registry import REGISTRY
    from pytest_forgetting.session import ForgettingSession

    with REGISTRY.temporary("outputs-e2e", lambda: task, origin="test_task_outputs") as name:
        sess = ForgettingSession(Settings(device="cpu", no_cache=True))
        check = bind_task(parse_check("retains", {"task": name, **kwargs}, "test"), "test", sess.task(name))
        return sess.run_check(
            check, test="test", base=sess.module_slot("base", base), tuned=sess.module_slot("tuned", tuned)
        ).row


KEYS = ("verdict", "n", "base", "tuned", "drop", "ci_low", "ci_high", "nfr", "flipped_ids", "worst_classes", "reason")


def test_a_task_naming_its_outputs_otherwise_gets_the_same_rows():
    pytest.importorskip("torch")
    n, k = 3000, 6
    plain, renamed, unlabelled = _tasks(n, k)
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    base_pred = np.where(rng.random(n) < 0.9, y, (y + 1) % k)
    tuned_pred = base_pred.copy()
    tuned_pred[(y == 2) & (rng.random(n) < 0.3)] = 0  # class 2 loses recall, class 0 precision
    base, tuned = _table(base_pred, k), _table(tuned_pred, k)
    for kwargs in (
        {"max_drop": 0.2},
        {"max_drop": 0.2, "max_class_drop": 0.1},
        {"max_drop": 0.2, "max_nfr": 0.02},
        {"max_drop": 0.2, "max_class_drop": 0.1, "class_metric": "precision"},
        {"max_drop": 0.2, "max_gap_increase": 0.05},
    ):
        want, got = _row(plain, base, tuned, **kwargs), _row(renamed, base, tuned, **kwargs)
        assert {key: got.get(key) for key in KEYS} == {key: want.get(key) for key in KEYS}, kwargs
        assert got.get("gap") == want.get("gap")
    assert _row(plain, base, tuned, max_drop=0.2, max_class_drop=0.1)["verdict"] == "fail"
    assert _row(renamed, base, tuned, max_drop=0.2)["worst_classes"][0]["name"] == "c2"
    # no declared labels: flips and NFR still (from the predictions), no per-class drops
    row = _row(unlabelled, base, tuned, max_drop=0.2)
    assert row["worst_classes"] == [] and row["nfr"] == _row(plain, base, tuned, max_drop=0.2)["nfr"]
    with pytest.raises(ConfigError, match="max_class_drop needs class labels"):
        _row(unlabelled, base, tuned, max_drop=0.2, max_class_drop=0.1)
