"""Argument checks of the decision core: error rates, margins, resample counts, score arrays, labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _check_alpha(alpha: float, what: str = "alpha") -> float:
    """Reject error rates that make no sense for a one-sided bound (and NaN)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 0.5), got {alpha!r}") from None
    if not 0.0 < a < 0.5:
        raise ValueError(f"{what} must be in (0, 0.5), got {alpha!r}")
    return a


def _check_fail_alpha(fail_alpha: float | None, alpha: float) -> float:
    return alpha if fail_alpha is None else _check_alpha(fail_alpha, "fail_alpha")


def _check_margin(value: float, what: str) -> float:
    """Margins and limits must be finite numbers; NaN would silently make every test inconclusive."""
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(m):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return m


def _min_boot(alpha: float) -> int:
    """Fewest resamples for a one-sided bound at alpha: at least 5 replicates beyond it."""
    return max(100, math.ceil(5.0 / alpha - 1e-9))


def _check_n_boot(n_boot: Any, alphas: Sequence[float]) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    need = _min_boot(min(alphas))
    if n_boot < need:
        raise ValueError(
            f"n_boot={int(n_boot)} is too few resamples for a one-sided bound at "
            f"alpha={min(alphas):g}: use at least {need}"
        )
    return int(n_boot)


def _as_scores(x: Any, what: str) -> np.ndarray:
    """Turn per-example scores into a finite 1-D float array or say clearly why not."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} scores must be numeric, got {type(x).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} scores must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} scores are empty: nothing to compare")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} scores contain {int(bad.sum())} non-finite value(s) (NaN/Inf), first at index {first}"
        )
    return arr


def _as_pair(base: Any, tuned: Any) -> tuple[np.ndarray, np.ndarray]:
    b = _as_scores(base, "base")
    t = _as_scores(tuned, "tuned")
    if b.shape != t.shape:
        raise ValueError(
            f"base and tuned scores must be aligned (same examples, same order): got lengths {b.size} and {t.size}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(b - t).all() and np.isfinite(b.sum()) and np.isfinite(t.sum()))
    if not finite:
        raise ValueError(
            "score range is too large: differences or sums of the scores overflow to infinity (rescale the scores)"
        )
    return b, t


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0.0) | (x == 1.0)))


def _as_correct(x: Any, what: str) -> np.ndarray:
    """0/1 (or bool) correctness vector -> bool array."""
    arr = _as_scores(x, what)
    if not _is_binary(arr):
        raise ValueError(f"{what} must contain only 0/1 (correct/wrong) values")
    return arr.astype(bool)


def _as_labels(labels: Any, size: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {lab.shape}")
    if lab.size != size:
        raise ValueError(
            f"base_correct, tuned_correct and labels must be aligned: got lengths {size}, {size} and {lab.size}"
        )
    if lab.dtype.kind in "fc":
        bad = np.isnan(lab)
    elif lab.dtype.kind == "O":
        bad = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in lab.tolist()], dtype=bool)
    else:
        bad = np.zeros(lab.size, dtype=bool)
    if bad.any():
        raise ValueError(
            f"labels contain {int(bad.sum())} missing value(s) (NaN/None), first at index "
            f"{int(np.flatnonzero(bad)[0])}: every example needs a class"
        )
    return lab


def _check_common(
    max_drop: float, alpha: float, fail_alpha: float | None, n_boot: int
) -> tuple[float, float, float, int]:
    m = _check_margin(max_drop, "max_drop")
    a = _check_alpha(alpha)
    af = _check_fail_alpha(fail_alpha, a)
    return m, a, af, _check_n_boot(n_boot, (a, af))
