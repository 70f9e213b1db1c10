"""Secondary budgets on 0/1 correctness: per-class recall drops (:func:`class_drops`, exact bounds,
Bonferroni over the classes on the FAIL side) and the negative-flip rate (:func:`nfr_budget`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .paired import _paired_high_arr
from .special import _cp_lower, _cp_lower_arr, _cp_upper, _cp_upper_arr
from .validation import _as_correct, _as_labels, _check_alpha, _check_fail_alpha, _check_margin
from .verdict import Budget, _decide


def _class_name(label: Any, class_names: Mapping[Any, str] | Sequence[str] | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    try:
        i = int(label)
    except (TypeError, ValueError):
        return str(label)
    if i == label and 0 <= i < len(class_names):
        return str(class_names[i])
    return str(label)


def class_drops(
    base_correct: Any,
    tuned_correct: Any,
    labels: Any,
    *,
    limit: float,
    alpha: float = 0.05,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    fail_alpha: float | None = None,
    worst: int | None = None,
) -> list[Budget]:
    """Per-true-class recall drop budgets, worst (largest observed drop) first.

    ``worst=k`` keeps only the k classes with the largest observed drops and computes the bounds
    of those alone (plus any class tied with the k-th, whose lower bound breaks the tie): what a
    report of the worst classes needs when no class budget gates the check. The bounds are the
    same as without it (the Bonferroni split still counts every class).

    Each class is a paired 0/1 comparison on its own examples. PASS needs the upper bound of
    :func:`compare_scores`'s 0/1 path at ``alpha`` below ``limit`` for every class
    (intersection-union: no correction). FAIL needs an *exact* lower bound above ``limit``:
    the Clopper-Pearson lower bound of the negative-flip rate minus the upper bound of the
    positive-flip rate, each at ``fail_alpha / (2K)`` (Bonferroni over the K classes and the
    two rates), because "at least one class collapsed" would otherwise be found by chance
    among many small classes.
    """
    lim = _check_margin(limit, "max_class_drop")
    a = _check_alpha(alpha)
    af = _check_fail_alpha(fail_alpha, a)
    bc = _as_correct(base_correct, "base_correct")
    tc = _as_correct(tuned_correct, "tuned_correct")
    if bc.size != tc.size:
        raise ValueError(
            f"base_correct, tuned_correct and labels must be aligned: "
            f"got lengths {bc.size}, {tc.size} and {np.size(labels)}"
        )
    lab = _as_labels(labels, bc.size)
    # one pass of counts, then every class's bounds at once (element-wise versions of the
    # scalar bounds, same results)
    if lab.dtype.kind in "iu" and lab.size and 0 <= lab.min() and lab.max() < 4 * lab.size:
        # small non-negative integer labels: np.unique's classes and codes by one bincount (no sort)
        seen = np.bincount(lab)
        classes = np.flatnonzero(seen).astype(lab.dtype)
        lookup = np.cumsum(seen > 0) - 1
        codes = lookup[lab]
    else:
        classes, codes = np.unique(lab, return_inverse=True)
        codes = codes.reshape(-1)
    k = len(classes)
    a_each = af / (2.0 * k)
    sizes = np.bincount(codes, minlength=k)
    neg = np.bincount(codes[bc & ~tc], minlength=k)
    pos = np.bincount(codes[~bc & tc], minlength=k)
    if worst is not None:
        if isinstance(worst, bool) or not isinstance(worst, (int, np.integer)) or worst < 1:
            raise ValueError(f"worst must be a positive number of classes, got {worst!r}")
        if worst < k:
            values = (neg - pos) / sizes
            kth = np.partition(values, k - worst)[k - worst]  # the worst-th largest drop
            keep = np.flatnonzero(values >= kth)
            classes, sizes, neg, pos = classes[keep], sizes[keep], neg[keep], pos[keep]
    highs = _paired_high_arr(neg, pos, sizes, a)
    lows = _cp_lower_arr(neg, sizes, a_each) - _cp_upper_arr(pos, sizes, a_each)
    out: list[Budget] = []
    for cls, nk, b, c, low, high in zip(
        classes, sizes.tolist(), neg.tolist(), pos.tolist(), lows.tolist(), highs.tolist()
    ):
        label = cls.item() if hasattr(cls, "item") else cls
        out.append(
            Budget(
                name=_class_name(label, class_names),
                value=(b - c) / nk,
                ci_low=low,
                ci_high=high,
                limit=lim,
                verdict=_decide(low, high, lim),
                n=nk,
            )
        )
    out.sort(key=lambda bud: (-bud.value, -bud.ci_low))
    return out if worst is None else out[:worst]


def nfr_budget(
    base_correct: Any, tuned_correct: Any, *, limit: float, alpha: float = 0.05, fail_alpha: float | None = None
) -> Budget:
    """Budget on the negative-flip rate: the share of examples the base got right and the tuned
    model now gets wrong. Even with no accuracy drop, many flips mean users see new errors.
    Exact Clopper-Pearson bounds on b / n (upper at ``alpha``, lower at ``fail_alpha``), the
    same three-way rule as every other verdict.
    """
    lim = _check_margin(limit, "max_nfr")
    a = _check_alpha(alpha)
    af = _check_fail_alpha(fail_alpha, a)
    bc = _as_correct(base_correct, "base_correct")
    tc = _as_correct(tuned_correct, "tuned_correct")
    if bc.size != tc.size:
        raise ValueError(f"base_correct and tuned_correct must be aligned: got lengths {bc.size} and {tc.size}")
    n = int(bc.size)
    b = int(np.count_nonzero(bc & ~tc))
    low, high = _cp_lower(b, n, af), _cp_upper(b, n, a)
    return Budget(name="nfr", value=b / n, ci_low=low, ci_high=high, limit=lim, verdict=_decide(low, high, lim), n=n)
