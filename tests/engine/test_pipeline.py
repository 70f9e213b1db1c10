"""The pipeline of ``ForgettingSession._run_check`` driven with fake stages (issue 15).

As pytest-xdist tests its scheduler with a ``MockNode``, these tests replace the session's two
stateful stages, ``session.models`` (load) and ``session.evaluation`` (run), with fakes that record
every call and hand back canned :class:`EvalResult` s, on a real session and a tiny registered task.
What they pin is the pipeline's contract: the order of the stages, the refusals, the reuse of the
base's outputs for the same files, a broken tuned model as a FAIL, the reuse fields of the row,
alignment by id, the decision equal to ``stats.compare_scores`` and the early-stopping path.
No model is built or loaded; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from pytest_forgetting import stats
from pytest_forgetting.checks import bind_task, parse_check
from pytest_forgetting.engine import decision
from pytest_forgetting.errors import CheckpointError
from pytest_forgetting.metrics import PerExampleMetric
from pytest_forgetting.options import Settings
from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.session import ForgettingSession, ModelSlot, TunedRegression
from pytest_forgetting.tasks.base import EvalResult, Task

TASK = "pipeline-fake"


# -- a tiny task: one split of ids; its outputs are pred / label arrays -----------------------------


@dataclass(frozen=True)
class _Split:
    ids: np.ndarray


class PredLabelTask(Task):
    """Accuracy of ``pred`` against ``label``; no data to run a model on (the fake evaluation never does)."""

    name = TASK
    default_metric = "accuracy"
    metrics = {
        "accuracy": PerExampleMetric("accuracy", True, True, lambda o: (o["pred"] == o["label"]).astype(np.float64))
    }

    def __init__(self, n: int) -> None:
        self._splits = {"test": _Split(np.array([f"ex{i:05d}" for i in range(n)]))}

    def class_names(self) -> list[str]:
        return ["c0", "c1"]


def outputs(labels: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
    """pred/label outputs whose per-example accuracy is ``right`` (two classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    return {"label": labels, "pred": np.where(right, labels, 1 - labels)}


# -- fake stages ---------------------------------------------------------------------------------


class FakeModels:
    """The load stage: slots, fingerprints by display name, loads that may raise; every call recorded."""

    device = "cpu"
    device_note = ""
    device_label = "fake-device"
    digests = None

    def __init__(
        self, calls: list[tuple], fps: dict[str, str], *, base: ModelSlot, tuned: ModelSlot, load_error=None
    ) -> None:
        self.calls, self.fps, self.load_error = calls, fps, load_error
        self.base, self.candidates = base, {"": tuned}

    def base_slot(self) -> ModelSlot:
        self.calls.append(("base_slot",))
        return self.base

    def tuned_slot(self, candidate: str | None = None) -> ModelSlot:
        self.calls.append(("tuned_slot", candidate))
        return self.candidates[candidate or ""]

    def slot_fingerprint(self, slot: ModelSlot) -> str:
        self.calls.append(("fingerprint", slot.role))
        return self.fps[slot.display]

    fingerprint = slot_fingerprint

    def load(self, slot: ModelSlot, *, base: ModelSlot | None = None, pair: bool = True) -> Any:
        self.calls.append(("load", slot.role, base.role if base is not None else None))
        if self.load_error is not None:
            raise self.load_error
        return object()


class FakeEvaluation:
    """The run stage: canned results (and reuse kinds) per role; chunks cut from the tuned outputs by split index."""

    batch_size = 8

    def __init__(
        self,
        calls: list[tuple],
        results: dict[str, tuple[EvalResult, str]],
        *,
        tuned_by_split: dict[str, np.ndarray] | None = None,
        error: dict[str, BaseException] | None = None,
    ) -> None:
        self.calls, self.results, self.tuned_by_split, self.error = calls, results, tuned_by_split, error or {}

    def evaluate_reuse(
        self, slot: ModelSlot, task: Task, split: str, *, base: ModelSlot | None = None
    ) -> tuple[EvalResult, str]:
        self.calls.append(("evaluate", slot.role, base.role if base is not None else None))
        if slot.role in self.error:
            raise self.error[slot.role]
        return self.results[slot.role]

    def where_weights_moved(self, check, task, base, tuned, base_fp, tuned_fp, row) -> None:
        self.calls.append(("where_weights_moved", base_fp, tuned_fp))

    def in_chunks(self, slot: ModelSlot, task: Task, split: str, chunks: Iterable[np.ndarray]) -> Iterator[EvalResult]:
        assert self.tuned_by_split is not None, "in_chunks used without early stopping"
        ids = task.ids(split)
        for idx in chunks:
            self.calls.append(("chunk", slot.role, len(idx)))
            if "chunk" in self.error:
                raise self.error["chunk"]
            yield EvalResult(ids[idx], {k: v[idx] for k, v in self.tuned_by_split.items()}, seconds=0.5)


@dataclass
class Rig:
    session: ForgettingSession
    task: PredLabelTask
    calls: list[tuple]
    base: ModelSlot
    tuned: ModelSlot

    def check(self, **kwargs: Any) -> Any:
        return bind_task(parse_check("retains", {"task": TASK, **kwargs}, "test"), "test", self.task)

    def run(self, **kwargs: Any) -> Any:
        return self.session.run_check(self.check(**kwargs), test="test_fake")


@pytest.fixture
def rig_factory():
    """``make(base_result, tuned_result, ...)``: a real session over a fake task (registered for the test) with
    fake models and evaluation."""
    with contextlib.ExitStack() as stack:

        def make(
            base: EvalResult,
            tuned: EvalResult | None,
            *,
            fps: tuple[str, str] = ("fp-base", "fp-tuned"),
            reuse: tuple[str, str] = ("computed", "computed"),
            load_error: BaseException | None = None,
            eval_error: dict[str, BaseException] | None = None,
            tuned_by_split: dict[str, np.ndarray] | None = None,
            base_refused: tuple[type, str] | None = None,
            tuned_refused: tuple[type, str] | None = None,
            **settings: Any,
        ) -> Rig:
            task = PredLabelTask(len(base))
            stack.enter_context(REGISTRY.temporary(TASK, lambda: task, origin="test_pipeline"))
            calls: list[tuple] = []
            session = ForgettingSession(Settings(device="cpu", no_cache=True, **settings))
            b_slot, t_slot = ModelSlot("base", "ckpt/base"), ModelSlot("tuned", "ckpt/tuned")
            b_slot.refused, t_slot.refused = base_refused, tuned_refused
            session.models = FakeModels(  # type: ignore[assignment]
                calls, {"ckpt/base": fps[0], "ckpt/tuned": fps[1]}, base=b_slot, tuned=t_slot, load_error=load_error
            )
            results = {"base": (base, reuse[0])}
            if tuned is not None:
                results["tuned"] = (tuned, reuse[1])
            session.evaluation = FakeEvaluation(  # type: ignore[assignment]
                calls, results, tuned_by_split=tuned_by_split, error=eval_error
            )
            return Rig(session, task, calls, b_slot, t_slot)

        yield make


def _pair(n: int, seed: int = 0, flip: float = 0.1) -> tuple[EvalResult, EvalResult, np.ndarray, np.ndarray]:
    """Base and tuned results on the same ids in split order, and their right/wrong arrays."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"ex{i:05d}" for i in range(n)])
    labels = rng.integers(0, 2, n)
    b_right = rng.random(n) < 0.8
    t_right = np.where(rng.random(n) < flip, ~b_right, b_right)
    base = EvalResult(ids, outputs(labels, b_right), seconds=1.23456)
    tuned = EvalResult(ids, outputs(labels, t_right), seconds=2.5)
    return base, tuned, b_right, t_right


# -- the order of the stages ----------------------------------------------------------------------


def test_stages_run_in_pipeline_order(rig_factory):
    base, tuned, _, _ = _pair(200)
    rig = rig_factory(base, tuned)
    rig.run(max_drop=0.1)
    assert rig.calls == [
        ("base_slot",),
        ("tuned_slot", None),
        ("fingerprint", "base"),
        ("fingerprint", "tuned"),
        ("evaluate", "base", None),
        ("load", "tuned", "base"),  # the tuned model is checked against the base before it runs
        ("evaluate", "tuned", "base"),
        ("where_weights_moved", "fp-base", "fp-tuned"),
    ]


def test_the_row_names_the_fingerprints_and_the_device(rig_factory):
    base, tuned, _, _ = _pair(200)
    row = rig_factory(base, tuned).run(max_drop=0.1).row
    assert row["_fingerprints"] == {"ckpt/base": "fp-base", "ckpt/tuned": "fp-tuned"}
    assert row["_device"] == "fake-device" and row["test"] == "test_fake" and row["task"] == TASK


def test_a_base_refused_earlier_raises_before_any_evaluation(rig_factory):
    base, tuned, _, _ = _pair(200)
    rig = rig_factory(base, tuned, base_refused=(CheckpointError, "base checkpoint ckpt/base: could not load"))
    with pytest.raises(CheckpointError, match="could not load"):
        rig.run(max_drop=0.1)
    assert not [c for c in rig.calls if c[0] in ("evaluate", "load", "chunk", "where_weights_moved")], rig.calls


# -- the same files: the base's outputs are reused, nothing is loaded again -------------------------


def test_tuned_files_with_the_base_fingerprint_are_not_loaded_again(rig_factory):
    base, _, _, _ = _pair(200)
    rig = rig_factory(base, base, fps=("fp-same", "fp-same"), reuse=("computed", "memory"))
    row = rig.run(max_drop=0.1).row
    assert not [c for c in rig.calls if c[0] == "load"], rig.calls
    assert ("evaluate", "tuned", "base") in rig.calls  # still through the evaluation (its memo gives the base's)
    assert row["verdict"] == "pass" and row["drop"] == 0.0 and row["tuned_reuse"] == "memory"


def test_the_same_files_with_a_remembered_refusal_are_loaded(rig_factory):
    """A tuned slot refused before goes through ``load`` (which raises the refusal) even with the base's files."""
    base, _, _, _ = _pair(200)
    rig = rig_factory(
        base,
        base,
        fps=("fp-same", "fp-same"),
        tuned_refused=(TunedRegression, "tuned checkpoint has NaN/Inf weights"),
        load_error=TunedRegression("tuned checkpoint has NaN/Inf weights"),
    )
    row = rig.run(max_drop=0.1).row
    assert ("load", "tuned", "base") in rig.calls
    assert row["verdict"] == "fail" and "NaN/Inf" in row["reason"]


# -- a broken tuned model is a FAIL, not an exception -----------------------------------------------


@pytest.mark.parametrize("where", ["load", "evaluate", "chunk"])
def test_a_tuned_regression_is_a_fail_row(rig_factory, where):
    base, tuned, b_right, _ = _pair(200)
    exc = TunedRegression(f"tuned model produces NaN/Inf ({where})")
    early = where == "chunk"
    rig = rig_factory(
        base,
        tuned,
        load_error=exc if where == "load" else None,
        eval_error={"tuned" if where == "evaluate" else "chunk": exc} if where != "load" else None,
        tuned_by_split=tuned.outputs if early else None,
        early_stop=early,
    )
    result = rig.run(max_drop=0.1)
    assert result.comparison is None
    assert result.row["verdict"] == "fail" and result.row["reason"] == str(exc)
    assert result.row["n"] == 200 and result.row["base"] == pytest.approx(b_right.mean())
    assert not [c for c in rig.calls if c[0] == "where_weights_moved"]
    if where == "load":
        assert ("evaluate", "tuned", "base") not in rig.calls  # never run after its load failed


# -- the reuse fields of the row come from the evaluation's reuse kinds ------------------------------


@pytest.mark.parametrize("base_reuse", ["computed", "memory", "cache"])
@pytest.mark.parametrize("tuned_reuse", ["computed", "memory", "cache"])
def test_reuse_fields_follow_the_reuse_kinds(rig_factory, base_reuse, tuned_reuse):
    base, tuned, _, _ = _pair(200)
    row = rig_factory(base, tuned, reuse=(base_reuse, tuned_reuse)).run(max_drop=0.1).row
    assert row["base_reuse"] == base_reuse and row["tuned_reuse"] == tuned_reuse
    assert row["base_cached"] is (base_reuse != "computed")
    assert row["base_eval_s"] == (1.2346 if base_reuse == "computed" else 0.0)
    assert row["tuned_eval_s"] == (2.5 if tuned_reuse == "computed" else 0.0)


# -- alignment by id, and the decision ---------------------------------------------------------------


def _expected(b_right: np.ndarray, t_right: np.ndarray, *, max_drop: float, alpha: float, seed: int) -> Any:
    return stats.compare_scores(
        b_right.astype(np.float64),
        t_right.astype(np.float64),
        max_drop=max_drop,
        alpha=alpha,
        higher_is_better=True,
        seed=seed,
        fail_alpha=alpha,
    )


FIELDS = ("n", "base", "tuned", "drop", "ci_low", "ci_high", "verdict")


def test_tuned_results_are_aligned_to_the_base_by_id(rig_factory):
    """Base right on the first half only and a tuned model identical to it, returned in another order: aligned
    by id there are no flips (PASS); paired by position half the examples would flip."""
    n = 400
    ids = np.array([f"ex{i:05d}" for i in range(n)])
    labels = np.arange(n) % 2
    right = np.arange(n) < n // 2
    base = EvalResult(ids, outputs(labels, right))
    perm = np.random.default_rng(1).permutation(n)
    tuned = EvalResult(ids[perm], {k: v[perm] for k, v in outputs(labels, right).items()})
    row = rig_factory(base, tuned).run(max_drop=0.05).row
    want = _expected(right, right, max_drop=0.05, alpha=0.05, seed=0)
    assert {k: row[k] for k in FIELDS} == {k: getattr(want, k) for k in FIELDS}
    assert row["verdict"] == "pass" and row["nfr"] == 0.0 and row["flipped_ids"] == []
    positional = _expected(right, right[perm], max_drop=0.05, alpha=0.05, seed=0)
    assert positional.verdict != "pass"  # the test would see a missing alignment


@pytest.mark.parametrize("seed, flip, max_drop", [(0, 0.1, 0.05), (3, 0.02, 0.05), (5, 0.3, 0.02)])
def test_the_decided_row_equals_compare_scores(rig_factory, seed, flip, max_drop):
    base, tuned, b_right, t_right = _pair(600, seed=seed, flip=flip)
    rig = rig_factory(base, tuned, alpha=0.1, seed=seed)
    result = rig.run(max_drop=max_drop)
    want = _expected(b_right, t_right, max_drop=max_drop, alpha=0.1, seed=seed)
    assert {k: result.row[k] for k in FIELDS} == {k: getattr(want, k) for k in FIELDS}
    assert result.comparison is not None and result.comparison.verdict == want.verdict
    flips = b_right & ~t_right
    assert result.row["nfr"] == pytest.approx(flips.mean())
    assert result.row["flipped_ids"] == base.ids[flips][: decision.N_FLIPPED_IDS].tolist()


# -- early stopping: the chunked path -----------------------------------------------------------------


def test_early_stop_decides_chunk_by_chunk(rig_factory):
    n = 2000
    base, _, b_right, _ = _pair(n, seed=2)
    rig = rig_factory(base, None, tuned_by_split=base.outputs, early_stop=True)  # the tuned model equals the base
    result = rig.run(max_drop=0.1)
    chunks = [c for c in rig.calls if c[0] == "chunk"]
    assert ("evaluate", "tuned", "base") not in rig.calls and chunks, rig.calls
    assert ("load", "tuned", "base") in rig.calls
    plan = decision.SequentialPlan.of(rig.task, "test", base, seed=0, batch_size=FakeEvaluation.batch_size)
    assert [c[2] for c in chunks] == [len(c) for c in list(plan.chunks())[: len(chunks)]]
    assert len(chunks) < len(list(plan.chunks()))  # settled early: the later chunks are never asked for
    row = result.row
    assert row["verdict"] == "pass" and row["tuned_reuse"] == "computed" and "early stop" in row["reason"]
    assert row["fraction_used"] < 1.0 and row["n"] == round(row["fraction_used"] * n)
    assert row["tuned_eval_s"] == 0.5 * len(chunks) and result.comparison.method == "sequential"


def test_without_early_stop_the_whole_evaluation_is_used(rig_factory):
    base, tuned, _, _ = _pair(2000, seed=2)
    rig = rig_factory(base, tuned, tuned_by_split=tuned.outputs, early_stop=False)
    row = rig.run(max_drop=0.1).row
    assert not [c for c in rig.calls if c[0] == "chunk"] and row["n"] == 2000 and row.get("fraction_used") is None
