"""Decide stage: pure. A check, its task and metric, and the two evaluations -> the comparison and the row.

Nothing here runs a model or reads a setting: the session passes ``alpha`` and ``seed``. The row is
a plain dict drafted by :func:`row_skeleton` and filled step by step, then frozen into the
:class:`CheckResult`'s :class:`~pytest_forgetting.results.CheckRow` (``CheckRow.from_dict``).

Two paths share the main comparison's and the negative flips' entries in the row
(:func:`_record_comparison`, :func:`_record_flips`):

* fixed n (:func:`decide`): every example of both models; the main comparison (per-example scores or
  an aggregate statistic), then the budgets of the check (per-class or per-slice drops, the
  negative-flip rate, the slice gap), the FAIL side's alpha split over the parts that can FAIL;
* sequential (:func:`decide_early`, ``--forgetting-early-stop``): the tuned model's results arrive
  chunk by chunk in a seeded random order (:class:`SequentialPlan`); an anytime-valid confidence
  sequence stops asking for more as soon as the verdict is settled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .. import stats
from ..checks import Check
from ..errors import ConfigError
from ..metrics import AggregateMetric, Metric, PerExampleMetric
from ..results import CheckKind, CheckRow, Verdict, draft_row
from ..tasks.base import EvalResult, Task

N_FLIPPED_IDS = 5
N_WORST_CLASSES = 3


@dataclass
class CheckResult:
    """A decided check: its ``Comparison`` (None when the tuned model is broken) and its frozen row.

    The pipeline fills a plain dict while it runs the check (:func:`row_skeleton` and the steps
    after it) and freezes it into a :class:`~pytest_forgetting.results.CheckRow` (a dict given
    here is frozen too).
    """

    check: Check
    comparison: stats.Comparison | None
    row: CheckRow
    budgets: list[stats.Budget] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.row = CheckRow.from_dict(self.row)

    @property
    def verdict(self) -> str:
        return self.row["verdict"]


def row_skeleton(check: Check, metric: Metric, test: str, candidate: str) -> dict[str, Any]:
    """The draft of a check's row (``results.draft_row`` with the pipeline's optional fields), frozen by
    ``CheckResult``."""
    row = draft_row(check, test=test, candidate=candidate, metric=metric.name, higher_is_better=metric.higher_is_better)
    row.update(
        base_reuse="",
        tuned_reuse="",
        bounded=metric.bounded,
        max_class_drop=check.max_class_drop,
        max_nfr=check.max_nfr,
        slices=check.slices,
        max_gap_increase=check.max_gap_increase,
    )
    return row


def chance(check: Check, task: Task, metric: Metric) -> Any:
    """``row["_chance"]``: the level of a classifier that guesses, for ``retains`` checks (warned at the end)."""
    from ..mismatch import chance_level

    return chance_level(task, check.split, metric.name) if check.kind == CheckKind.RETAINS else None


def tuned_broken(check: Check, metric: Metric, b: EvalResult, row: dict[str, Any], exc: BaseException) -> CheckResult:
    """A tuned model that is itself broken (NaN/Inf weights or outputs): a FAIL, without a comparison."""
    row.update(verdict="fail", reason=str(exc), n=len(b), base=metric.value(b.outputs))
    return CheckResult(check, None, CheckRow.from_dict(row))


def _record_comparison(row: dict[str, Any], cmp: stats.Comparison) -> None:
    """The main comparison's numbers in the row (the verdict is set by the caller: it may combine budgets)."""
    row.update(
        n=cmp.n,
        base=cmp.base,
        tuned=cmp.tuned,
        drop=cmp.drop,
        ci_low=cmp.ci_low,
        ci_high=cmp.ci_high,
        n_needed=cmp.n_needed,
    )


def _record_flips(row: dict[str, Any], ids: np.ndarray, base_right: np.ndarray, tuned_right: np.ndarray) -> None:
    """Negative flips (right for the base, wrong for the tuned model): their rate and the first few ids."""
    flips = base_right & ~tuned_right
    row["nfr"] = float(np.mean(flips))
    row["flipped_ids"] = ids[flips][:N_FLIPPED_IDS].tolist()


def decide(
    check: Check,
    task: Task,
    metric: Metric,
    b: EvalResult,
    t: EvalResult,
    row: dict[str, Any],
    *,
    alpha: float,
    seed: int,
) -> CheckResult:
    """A fixed-n check: the main comparison of the metric, then its budgets (class or slice drops, the
    negative-flip rate, the slice gap); the verdict combines them (a FAIL of any part is a FAIL)."""
    # The check FAILs when any of its parts proves a regression (a union of claims), so the FAIL
    # side's alpha is split over those parts; each PASS bound keeps the full alpha (every part
    # must pass: an intersection, which needs no correction).
    gates_nfr = check.max_nfr is not None and check.kind == CheckKind.RETAINS
    fail_alpha = alpha / (
        1
        + (check.max_class_drop is not None)
        + gates_nfr
        + (check.max_gap_increase is not None and check.kind == CheckKind.RETAINS)
    )  # the slice-gap part (issue 17)
    common: dict[str, Any] = dict(
        max_drop=check.margin,
        relative=check.relative,
        alpha=alpha,
        higher_is_better=metric.higher_is_better,
        seed=seed,
        fail_alpha=fail_alpha,
    )
    if isinstance(metric, PerExampleMetric):
        cmp = stats.compare_scores(
            metric.per_example(b.outputs),
            metric.per_example(t.outputs),
            score_range=check.score_range or metric.score_range,
            **common,
        )
    else:
        from ..metrics import ratio_of

        metric = cast(AggregateMetric, metric)  # a metric is per-example or aggregate (metrics.py)
        agg = metric.aggregate
        cmp = stats.compare_statistic(
            lambda idx: (agg(b.outputs, idx), agg(t.outputs, idx)),
            len(b),
            ratio=ratio_of(metric, b.outputs, t.outputs),
            bounded=metric.bounded,
            sensitivity=metric.sensitivity(b.outputs, t.outputs) if metric.sensitivity else None,
            **common,
        )
    verdicts = [cmp.verdict]
    reasons = [cmp.reason]
    budgets: list[stats.Budget] = []
    _record_comparison(row, cmp)
    bc, tc = correctness(task, metric, b, t)
    labels = task.class_labels(b.outputs)
    if bc is not None:
        tc = cast(np.ndarray, tc)  # correctness() gives both or neither
        _record_flips(row, b.ids, bc, tc)
        if check.kind == CheckKind.RETAINS and labels is not None:
            names = task.class_names()
            groups, group_names = labels, names
            if check.slices:
                groups, group_names = _encode_groups(
                    task.slice_column(check.split, check.slices), b.ids, task.ids(check.split)
                )
            if check.class_metric == "precision":  # max_class_drop budgets per-class precision (class_budget.py)
                from ..class_budget import precision_part

                part = precision_part(
                    b.outputs,
                    t.outputs,
                    limit=check.max_class_drop,
                    alpha=alpha,
                    fail_alpha=fail_alpha,
                    class_names=names,
                    top=N_WORST_CLASSES,
                    task=task.name,
                    label_key=task.label_key or "label",
                    pred_key=task.pred_key,
                )
                row["worst_classes"], row["class_metric"] = part.rows, "precision"
                budgets.extend(part.budgets)
                verdicts.extend(part.verdicts)
                reasons.append(part.reason)
            else:
                limit = check.max_class_drop if check.max_class_drop is not None else 1.0
                # without a class budget only the shown classes need their bounds
                per_class = stats.class_drops(
                    bc.astype(float),
                    tc.astype(float),
                    groups,
                    limit=limit,
                    alpha=alpha,
                    class_names=group_names,
                    fail_alpha=fail_alpha if check.max_class_drop is not None else None,
                    worst=None if check.max_class_drop is not None else N_WORST_CLASSES,
                )
                gated = check.max_class_drop is not None
                row["worst_classes"] = [  # a class verdict is shown only when a class budget gates it
                    {
                        "name": c.name,
                        "drop": c.value,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "verdict": c.verdict if gated else "",
                        "n": c.n,
                    }
                    for c in per_class[:N_WORST_CLASSES]
                ]
                if check.max_class_drop is not None:
                    budgets.extend(per_class)
                    broken = [c for c in per_class if c.verdict != Verdict.PASS]
                    if broken:
                        what = "slice" if check.slices else "class"
                        reasons.append(
                            f"{what} drop budget {check.max_class_drop:g}: "
                            + ", ".join(
                                f"{c.name} {c.value:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] {c.verdict}"
                                for c in broken[:3]
                            )
                        )
                    verdicts.extend(c.verdict for c in per_class)
        elif check.max_class_drop is not None:
            raise ConfigError(
                f"max_class_drop needs class labels; task {task.name!r} has none (use slices= with a column)"
            )
        if gates_nfr:
            nb = stats.nfr_budget(
                bc.astype(float),
                tc.astype(float),
                limit=cast(float, check.max_nfr),  # gates_nfr: set
                alpha=alpha,
                fail_alpha=fail_alpha,
            )
            budgets.append(nb)
            verdicts.append(nb.verdict)
            if nb.verdict != Verdict.PASS:
                reasons.append(
                    f"negative-flip rate {nb.value:.3f} [{nb.ci_low:.3f}, {nb.ci_high:.3f}] "
                    f"vs budget {check.max_nfr:g}: {nb.verdict}"
                )
    has_groups = bc is not None and labels is not None
    if check.slices and not has_groups:
        raise ConfigError(
            f"slices={check.slices!r} needs per-example right/wrong outcomes; "
            f"task {task.name!r} metric {metric.name!r} has none"
        )
    if bc is None and (check.max_class_drop is not None or check.max_nfr is not None):
        raise ConfigError(
            "max_class_drop / max_nfr need per-example right/wrong outcomes; "
            f"task {task.name!r} metric {metric.name!r} has none"
        )
    if check.max_gap_increase is not None and check.kind == CheckKind.RETAINS:
        verdicts.append(
            _decide_gap(check, task, metric, b, t, bc, tc, row, budgets, reasons, fail_alpha, alpha=alpha, seed=seed)
        )
    row["verdict"] = stats.combine_verdicts(*verdicts)
    row["reason"] = "; ".join(r for r in reasons if r)
    return CheckResult(check, cmp, CheckRow.from_dict(row), budgets)


def _decide_gap(
    check: Check,
    task: Task,
    metric: Metric,
    b: EvalResult,
    t: EvalResult,
    bc: Any,
    tc: Any,
    row: dict[str, Any],
    budgets: list[stats.Budget],
    reasons: list[str],
    fail_alpha: float,
    *,
    alpha: float,
    seed: int,
) -> str:
    """``max_gap_increase``: the best-minus-worst slice (or class) gap of the metric's per-example
    scores (right/wrong for aggregate metrics) may widen by at most the budget (``gap.compare_gap``)."""
    from ..gap import compare_gap, describe

    if isinstance(metric, PerExampleMetric):
        sb, st = metric.per_example(b.outputs), metric.per_example(t.outputs)
    elif bc is not None:
        sb, st = bc.astype(float), tc.astype(float)
    else:
        raise ConfigError(
            f"max_gap_increase needs per-example scores; task {task.name!r} metric {metric.name!r} has none"
        )
    names: list[str] | None
    if check.slices:
        groups, names = _encode_groups(task.slice_column(check.split, check.slices), b.ids, task.ids(check.split))
    elif (labels := task.class_labels(b.outputs)) is not None:
        groups, names = labels, task.class_names()
    else:
        raise ConfigError(
            f"max_gap_increase without slices= needs class labels; task {task.name!r} has none "
            "(use slices= with a column)"
        )
    gap = compare_gap(
        sb,
        st,
        groups,
        margin=cast(float, check.max_gap_increase),  # the caller's condition
        alpha=alpha,
        fail_alpha=fail_alpha,
        names=names,
        seed=seed,
    )
    what = "slice" if check.slices else "class"
    row["gap"] = {
        "best": gap.best,
        "worst": gap.worst,
        "base": gap.base_gap,
        "tuned": gap.tuned_gap,
        "increase": gap.increase,
        "ci_low": gap.ci_low,
        "ci_high": gap.ci_high,
        "margin": gap.margin,
        "verdict": gap.verdict,
        "method": gap.method,
        "of": what,
    }
    budgets.append(
        stats.Budget(
            f"{what} gap {gap.best} vs {gap.worst}",
            gap.increase,
            gap.ci_low,
            gap.ci_high,
            gap.margin,
            gap.verdict,
            gap.n,
        )
    )
    if gap.verdict != Verdict.PASS:
        reasons.append(describe(gap, what))
    return gap.verdict


def early_stoppable(check: Check, metric: Metric, *, early_stop: bool) -> bool:
    """Early stopping covers the main comparison of bounded per-example metrics (absolute drops)."""
    return (
        early_stop
        and isinstance(metric, PerExampleMetric)
        and metric.bounded
        and not check.relative
        and check.max_class_drop is None
        and check.max_nfr is None
        and check.max_gap_increase is None
    )


@dataclass(frozen=True)
class SequentialPlan:
    """The order in which early stopping looks at the base's examples, and the chunk it evaluates at a time."""

    #: a seeded permutation of the base evaluation's positions
    order: np.ndarray
    #: the same examples as indices of the split (what the tuned model is evaluated on)
    split_idx: np.ndarray
    #: examples per look: the batch size, or a twentieth of the examples when that is more
    chunk: int

    @classmethod
    def of(cls, task: Task, split: str, b: EvalResult, *, seed: int | None, batch_size: int) -> SequentialPlan:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(b))
        split_ids = task.ids(split)
        pos = {i: k for k, i in enumerate(split_ids.tolist())}
        split_idx = np.array([pos[i] for i in b.ids[order].tolist()], dtype=np.int64)
        return cls(order=order, split_idx=split_idx, chunk=max(batch_size, len(b) // 20))

    def chunks(self) -> Iterator[np.ndarray]:
        """The split indices of each look, in order."""
        for lo in range(0, len(self.split_idx), self.chunk):
            yield self.split_idx[lo : lo + self.chunk]


def decide_early(
    check: Check,
    metric: Metric,
    b: EvalResult,
    plan: SequentialPlan,
    tuned_chunks: Iterable[EvalResult],
    row: dict[str, Any],
    *,
    alpha: float,
) -> CheckResult:
    """The sequential check: ``tuned_chunks`` gives the tuned model's results on ``plan.chunks()``, one
    chunk at a time (lazily: a chunk after the verdict is settled is never asked for, so never evaluated)."""
    from ..sequential import chunk_looks, sequential_decide

    metric = cast(PerExampleMetric, metric)  # early_stoppable(): a per-example metric
    base_scores = metric.per_example(b.outputs)[plan.order]
    looks = chunk_looks(len(b), plan.chunk)
    parts: list[np.ndarray] = []
    seconds = 0.0
    for res in tuned_chunks:
        seconds += res.seconds
        parts.append(metric.per_example(res.outputs))
        seq = sequential_decide(
            base_scores,
            np.concatenate(parts),
            max_drop=check.margin,
            alpha=alpha,
            higher_is_better=metric.higher_is_better,
            looks=looks,
            score_range=check.score_range or metric.score_range or (0.0, 1.0),
        )
        if seq.done:
            break
    used = b.ids[plan.order][: seq.n_used]
    verb = {"pass": "upper bound of the drop {hi:.3f} < margin {m:.3f}",
            "fail": "lower bound of the drop {lo:.3f} > margin {m:.3f} (proven regression)",
            "inconclusive": "confidence sequence [{lo:.3f}, {hi:.3f}] still contains the margin {m:.3f} "
                            "after every example",
            }[seq.verdict]  # fmt: skip
    row.update(
        verdict=seq.verdict,
        tuned_eval_s=round(seconds, 4),
        fraction_used=seq.fraction_used,
        reason=verb.format(lo=seq.ci_low, hi=seq.ci_high, m=check.margin)
        + f" (early stop: {seq.n_used} of {seq.n_total} examples, {seq.fraction_used:.0%})",
    )
    bs, ts = base_scores[: seq.n_used], np.concatenate(parts)[: seq.n_used]
    good = 1 if metric.higher_is_better else 0
    if np.isin(bs, (0, 1)).all():
        _record_flips(row, used, bs == good, ts == good)
    cmp = stats.Comparison(
        verdict=seq.verdict,
        n=seq.n_used,
        base=seq.base,
        tuned=seq.tuned,
        drop=seq.drop,
        ci_low=seq.ci_low,
        ci_high=seq.ci_high,
        margin=check.margin,
        relative=False,
        alpha=alpha,
        higher_is_better=metric.higher_is_better,
        method="sequential",
        nfr=row["nfr"],
        pfr=None,
        n_needed=None,
        reason=row["reason"],
    )
    _record_comparison(row, cmp)
    return CheckResult(check, cmp, CheckRow.from_dict(row))


def correctness(
    task: Task, metric: Metric, b: EvalResult, t: EvalResult
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-example right/wrong of both models (for flips, NFR and class drops), when the task has it:
    its declared predictions against its declared labels, else a 0/1 per-example metric."""
    pb, pt = task.predictions(b.outputs), task.predictions(t.outputs)
    if pb is not None and pt is not None:
        return pb == task.class_labels(b.outputs), pt == task.class_labels(t.outputs)
    if isinstance(metric, PerExampleMetric):
        sb, st = metric.per_example(b.outputs), metric.per_example(t.outputs)
        if np.isin(sb, (0, 1)).all() and np.isin(st, (0, 1)).all():
            good = 1 if metric.higher_is_better else 0
            return sb == good, st == good
    return None, None


def _encode_groups(column: np.ndarray, eval_ids: np.ndarray, split_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    pos = {i: k for k, i in enumerate(split_ids.tolist())}
    values = np.asarray([str(column[pos[i]]) for i in eval_ids.tolist()])
    names = sorted(set(values.tolist()))
    index = {n: k for k, n in enumerate(names)}
    return np.array([index[v] for v in values.tolist()], dtype=np.int64), names
