""":func:`compare_statistic`: an aggregate metric, as a :class:`Ratio` (studentised bootstrap with a
delta-method SE, or its Edgeworth interval at large n), a bounded metric with a :class:`Sensitivity`
(exact rules), or a bare callable (BCa bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .bootstrap import _bca_bounds, _bootstrap_replicates, _jackknife, _studentized_comparison
from .no_change import _check_sensitivity, _no_change, _sensitivity_comparison
from .paired import min_n_to_pass
from .ratio import _RatioParts
from .refusals import _bootstrap_refusal, _effective_size, _influence_refusal, _refused, _unbounded_refusal
from .settle import _normal_settle
from .validation import _check_common
from .verdict import INCONCLUSIVE, Comparison, Ratio, Sensitivity, _Common, _decide, _degenerate, _drop_of, _result

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: A macro average (macro-F1, balanced accuracy) decides only when every class it averages has
#: at least this much denominator mass (F1: support + predictions) for both models: a class seen
#: a handful of times makes its ratio, and the delta-method error of the average, unreliable
#: (10 imbalanced classes with the rarest losing recall: false FAIL 0.125 at n = 100).
_MIN_COLUMN_MASS = 10.0


def compare_statistic(
    stat: Callable[[np.ndarray], tuple[float, float]] | None,
    n: int,
    *,
    max_drop: float,
    relative: bool = False,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
    fail_alpha: float | None = None,
    ratio: Ratio | None = None,
    bounded: bool = False,
    n_needed: bool = True,
    sensitivity: Sensitivity | None = None,
) -> Comparison:
    """Paired bootstrap comparison of an aggregate metric (macro-F1, perplexity, ...).

    ``stat(idx)`` returns ``(base_value, tuned_value)`` computed on examples ``idx`` (with
    repetition); each bootstrap replicate hands the *same* resampled ``idx`` to both models,
    which is what pairs the comparison. Given only ``stat`` the bounds are BCa.

    ``ratio`` describes the metric as (a macro average of) ratios of per-example sums (see
    :class:`Ratio`); then the bounds are bootstrap-t with a delta-method standard error per
    resample, vectorised (``stat`` may be None; when given, it must agree with ``ratio``).
    ``bounded=True`` (a metric in [0, 1] with an absolute margin) applies the smallest-n rule
    of the 0/1 path: below ``min_n_to_pass(|max_drop|)`` the answer is INCONCLUSIVE.
    ``sensitivity`` (absolute drops only) gives the exact rules of :class:`Sensitivity`: when no
    example changed, or when every stratum's examples are identical (a bootstrap without
    spread), the bounds come from it instead of the bootstrap.
    """
    m, a, af, n_boot = _check_common(max_drop, alpha, fail_alpha, n_boot)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of examples, got {n!r}")
    n = int(n)
    hib = bool(higher_is_better)
    rel = bool(relative)
    if stat is None and ratio is None:
        raise ValueError("compare_statistic needs stat or ratio")

    def call(idx: np.ndarray) -> tuple[float, float]:
        out = stat(idx)  # type: ignore[misc]
        try:
            bv, tv = out
            return float(bv), float(tv)
        except (TypeError, ValueError):
            raise ValueError(
                f"stat(idx) must return a (base_value, tuned_value) pair of numbers, got {out!r}"
            ) from None

    parts = _RatioParts(ratio, n) if ratio is not None else None
    if stat is not None:
        base_value, tuned_value = call(np.arange(n))
    else:
        base_value, tuned_value = parts.values()  # type: ignore[union-attr]
    if not (math.isfinite(base_value) and math.isfinite(tuned_value)):
        raise ValueError(f"statistic is not finite on the full eval set: base={base_value}, tuned={tuned_value}")
    if rel and base_value == 0.0:
        raise ValueError("relative drop is undefined: the base model's metric value is 0")
    if parts is not None and stat is not None:
        pb, pt = parts.values()
        if not (
            math.isclose(pb, base_value, rel_tol=1e-7, abs_tol=1e-9)
            and math.isclose(pt, tuned_value, rel_tol=1e-7, abs_tol=1e-9)
        ):
            raise ValueError(
                f"ratio parts give base={pb:.6g}, tuned={pt:.6g} but stat gives "
                f"base={base_value:.6g}, tuned={tuned_value:.6g}: they describe different metrics"
            )
    common = _Common(n=n, base=base_value, tuned=tuned_value, margin=m, relative=rel, alpha=a, fail_alpha=af, hib=hib)
    with np.errstate(over="ignore"):
        drop = float(_drop_of(base_value, tuned_value, rel, hib))
    if not math.isfinite(drop):
        raise ValueError(
            f"the drop overflows to infinity (base={base_value:.6g}, tuned={tuned_value:.6g}): rescale the statistic"
        )

    if bounded and not rel and m != 0.0:
        need = min_n_to_pass(abs(m), a if m > 0 else af)
        if need is not None and n < need:
            return _refused(n, need, drop, common)

    if sensitivity is not None and not rel:
        sp = _check_sensitivity(sensitivity, n)
        if not sp.changed or sp.homogeneous:
            return _sensitivity_comparison(sp, drop=drop, **common)
    if parts is not None and not bounded:
        # an unbounded ratio (perplexity, NLL per token): as for unbounded per-example scores
        refusal = _unbounded_refusal(
            n, drop, common, what="an unbounded ratio metric", n_eff=_effective_size(parts.xb, parts.xt)
        )
        if refusal is not None:
            return refusal
    if parts is not None and parts.unchanged:
        # "exact" (bounded): exact conditional on the eval set's denominators (_RatioParts.no_change_bound)
        return _no_change(bound=parts.no_change_bound(rel, hib, bounded), exact=bounded, **common)
    refusal = _bootstrap_refusal(n, drop, common, n_eff=None if parts is None else _effective_size(parts.xb, parts.xt))
    if refusal is not None:
        return refusal
    if parts is not None and not bounded:
        # a change carried by a few texts (long ones, or a heavy-tailed change): no interval is valid
        refusal = _influence_refusal(
            parts.influence(rel, hib),
            drop,
            common,
            what="an unbounded ratio metric",
            fix=(
                "no method here can decide it on this eval set (a per-example metric "
                "with a declared score_range=(low, high) can)"
            ),
        )
        if refusal is not None:
            return refusal
    if parts is not None and parts.width > 1:
        mass = min(
            float(parts.xb.sum(axis=0)[parts.present_b].min()), float(parts.xt.sum(axis=0)[parts.present_t].min())
        )
        if mass < _MIN_COLUMN_MASS:
            need = int(math.ceil(n * _MIN_COLUMN_MASS / max(mass, 1.0)))
            return _refused(
                n,
                max(need, n + 1),
                drop,
                common,
                what=(
                    f"the rarest class averaged here has only {mass:g} examples (support plus "
                    f"predictions); a macro average needs at least {_MIN_COLUMN_MASS:g} per class to be "
                    "decided, so no method here is valid at this n"
                ),
            )
    if parts is not None:
        grouped = parts.sizes is not None
        drop0, se0 = (float(v[0]) for v in parts.drop_and_se(parts.full_weights(), rel, hib, grouped=grouped))
        return _studentized_comparison(
            drop=drop0,
            se=se0,
            replicates=lambda: parts.replicates(rel, hib, n_boot, seed),
            smooth=None if grouped else (lambda: parts.smooth(rel, hib)),
            **common,
        )

    def batch_stat(idx: np.ndarray) -> np.ndarray:
        pairs = np.array([call(row) for row in idx], dtype=float).reshape(-1, 2)
        drops: NDArray[np.float64] = _drop_of(pairs[:, 0], pairs[:, 1], rel, hib)
        return drops

    reps = _bootstrap_replicates(n, n_boot, seed, batch_stat)
    finite = reps[np.isfinite(reps)]
    if finite.size == 0 or np.ptp(finite) == 0.0:
        return _degenerate(
            drop=drop,
            method="bca",
            why=("every resample gives the same drop, so the bootstrap has no spread and no bound is valid"),
            **common,
        )
    bounds = _bca_bounds(drop, reps, _jackknife(call, n, rel, hib, seed), a, af)
    if bounds is None:
        return _degenerate(
            drop=drop,
            method="bca",
            why=("every resample lies on one side of the estimate, so the bias correction is undefined"),
            **common,
        )
    low, high = bounds
    verdict = _decide(low, high, m)
    settle = _normal_settle(n, drop, low, high, m, a, af) if verdict == INCONCLUSIVE else None
    return _result(verdict=verdict, drop=drop, low=low, high=high, method="bca", settle=settle, **common)
