"""Verdicts and the records of the decision core: PASS / FAIL / INCONCLUSIVE, :class:`Comparison`,
:class:`Budget`, the metric descriptions :class:`Ratio` and :class:`Sensitivity`, the signed drop,
the three-way rule with its tie tolerance, the reason text, and :func:`combine_verdicts`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict

import numpy as np

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"

#: Severity order used by :func:`combine_verdicts` (higher = worse).
_SEVERITY = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}

#: Beyond this many examples we stop pretending an eval set could be collected.
_N_NEEDED_CAP = 10**9

#: A bound within this (relative) distance of the margin is a tie: it proves nothing. Float
#: rounding alone makes mean(0.5) - mean(0.48) exceed 0.02.
_TIE_RTOL = 1e-9

#: The magnitude of the numbers the drop is computed from (the scale of its rounding error): 1 for
#: 0/1 scores and everything that does not say otherwise; :func:`compare_scores` sets the scores'
#: own, so that a metric of tiny scale with a tiny margin is decided and one of huge scale is not
#: decided by rounding.
_SCALE: ContextVar[float] = ContextVar("pytest_forgetting_tie_scale", default=1.0)


@contextmanager
def _tie_scale(scale: float) -> Iterator[None]:
    """Within the block, ties are judged at the data scale ``scale`` (instead of 1)."""
    token = _SCALE.set(float(scale) if math.isfinite(scale) and scale >= 0.0 else 1.0)
    try:
        yield
    finally:
        _SCALE.reset(token)


class _Common(TypedDict):
    """The arguments every decision path passes on to :func:`_result` as ``**common`` (a plain dict
    at run time)."""

    n: int
    base: float
    tuned: float
    margin: float
    relative: bool
    alpha: float
    fail_alpha: float
    hib: bool


class _CommonRates(_Common, total=False):
    """:class:`_Common` with the flip rates of 0/1 scores (None for other scores)."""

    nfr: float | None
    pfr: float | None


@dataclass(frozen=True)
class Comparison:
    """Outcome of one paired base-vs-tuned comparison.

    ``drop`` is signed so that positive always means *worse* (base - tuned for
    higher-is-better metrics, tuned - base for lower-is-better ones; divided by ``|base|``
    when ``relative``). ``ci_high`` is the one-sided upper bound at ``alpha`` (it backs a PASS),
    ``ci_low`` the one-sided lower bound at ``fail_alpha`` (it backs a FAIL); with equal alphas
    they are the ends of a two-sided ``1 - 2*alpha`` interval. ``margin`` is the largest
    tolerated drop (negative for "must improve by at least g"). ``n_needed`` is the eval-set
    size at which the same rates would settle the check with probability ``settle_prob``.
    """

    verdict: str
    n: int
    base: float
    tuned: float
    drop: float
    ci_low: float
    ci_high: float
    margin: float
    relative: bool
    alpha: float
    higher_is_better: bool
    method: str
    nfr: float | None
    pfr: float | None
    n_needed: int | None
    reason: str
    fail_alpha: float | None = None
    settle_prob: float | None = None


@dataclass(frozen=True)
class Budget:
    """One secondary budget (per-class recall drop, negative-flip rate) and its verdict.

    ``value`` is the observed quantity; ``ci_low``/``ci_high`` are the bounds the verdict was
    decided on. For :func:`class_drops` the lower bound is exact and Bonferroni-corrected over
    the classes (it backs a FAIL, and "some class regressed" is a union of K claims) while the
    upper bound is not corrected (a PASS needs every class to pass, an intersection).
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    limit: float
    verdict: str
    n: int


class Ratio(NamedTuple):
    """An aggregate metric written as a (macro average of) ratio(s) of per-example sums.

    For each model, ``value = transform(mean_k sum_i num[i, k] / sum_i den[i, k])`` over the
    columns k whose denominator is positive on the whole eval set. 1-D arrays are one column.
    Examples: perplexity (num = token NLL per example, den = tokens, transform "exp"), WER
    (num = word errors, den = reference words), entity F1 (num = 2 tp, den = predicted + gold
    entities, per model), macro-F1 (one column per class: num = 2 tp, den = support +
    predicted), balanced accuracy (num = hits, den = support). Passing it to
    :func:`compare_statistic` turns on the studentised bootstrap with a delta-method standard
    error in every resample.
    """

    num_base: Any
    den_base: Any
    num_tuned: Any
    den_tuned: Any
    transform: str = "identity"
    #: the denominators do not depend on the model (tokens, reference words, class support);
    #: False for F1, whose denominators count predictions. Used only to bound the metric when
    #: no example changed (a bound exact conditional on the eval set's denominators).
    den_fixed: bool = False


class Sensitivity(NamedTuple):
    """How far a bounded aggregate metric can move when some examples change (an exact rule).

    Examples are split into strata (``strata``: codes 0..S-1, e.g. the label). ``slope[s]`` is a
    Lipschitz constant: if a fraction g_s of stratum s's population changes its contribution
    for one model, that model's metric moves by at most ``sum_s slope[s] * g_s`` (plus
    ``gain_jump`` on the improving side only, for components that can jump, such as the
    precision of a class the base never predicts). ``base_key`` / ``tuned_key`` are (n, d)
    per-example contributions: an example *changed* when its rows differ. When none changed,
    the examples of stratum s are n_s independent draws, so ``P(no change) = prod (1 - g_s)^n_s``
    and the drop is at most the largest ``sum slope * g`` that keeps this >= alpha (exact,
    :func:`_stratified_upper`). When ``reference`` is True and every stratum's examples are
    identical (one row per stratum and model), the same rule bounds how far each model's
    population value can be from the sample's own value (both models: the slopes add).
    The guarantee is conditional on the strata's mix (the eval set's class supports).
    """

    strata: Any
    slope: Any
    base_key: Any
    tuned_key: Any
    slope_tuned: Any = None
    gain_jump: float = 0.0
    reference: bool = True


def _drop_of(base: Any, tuned: Any, relative: bool, higher_is_better: bool) -> Any:
    """The signed drop (positive = worse); works on scalars and on arrays of replicates."""
    diff = base - tuned if higher_is_better else tuned - base
    if relative:
        with np.errstate(divide="ignore", invalid="ignore"):
            return diff / np.abs(base)
    return diff


def _tol(limit: float) -> float:
    """How close to ``limit`` a bound is a tie: 1e-9 of the larger of the limit and the data scale
    (:func:`_tie_scale`; rounding errs in proportion to the numbers subtracted, not to the margin)."""
    return _TIE_RTOL * max(_SCALE.get(), abs(limit))


def _below(x: Any, limit: float) -> Any:
    return x < limit - _tol(limit)


def _above(x: Any, limit: float) -> Any:
    return x > limit + _tol(limit)


def _ties(x: float, limit: float) -> bool:
    return abs(x - limit) <= _tol(limit)


def _decide(low: float, high: float, limit: float) -> str:
    """Three-way rule; a bound equal to the limit (within float tolerance) proves nothing."""
    if _below(high, limit):
        return PASS
    if _above(low, limit):
        return FAIL
    return INCONCLUSIVE


def _fmt_pair(x: float, y: float) -> tuple[str, str]:
    """Format two numbers with enough decimals that they do not print as equal when unequal."""
    for digits in range(3, 10):
        sx, sy = f"{x:.{digits}f}", f"{y:.{digits}f}"
        distinct = sx != sy or x == y
        # "-0.000" for -0.0002 hides the sign that matters; add digits until it shows.
        visible = all(v == 0.0 or not math.isfinite(v) or float(s) != 0.0 for v, s in ((x, sx), (y, sy)))
        if distinct and visible:
            return sx, sy
    return f"{x:.3g}", f"{y:.3g}"


class _Settle(NamedTuple):
    """How many examples would settle an inconclusive check, and how surely."""

    n: int | None = None
    prob: float | None = None
    why: str = ""  # "tie", "cap", or a sentence when n is None


def _reason(
    verdict: str, low: float, high: float, margin: float, drop: float, settle: _Settle | None = None, note: str = ""
) -> str:
    if verdict == PASS:
        hs, ms = _fmt_pair(high, margin)
        return f"upper bound of the drop {hs} < margin {ms}"
    if verdict == FAIL:
        ls, ms = _fmt_pair(low, margin)
        return f"lower bound of the drop {ls} > margin {ms} (proven regression)"
    ls, hs = _fmt_pair(low, high)
    _, ms = _fmt_pair(drop, margin)
    head = f"interval [{ls}, {hs}] contains the margin {ms}"
    if note:
        head = f"{note}; {head}" if math.isfinite(low) or math.isfinite(high) else note
    settle = settle or _Settle()
    if settle.n is not None and settle.prob is None:
        return f"{head}; at least {settle.n:,} examples are needed before it can be decided"
    if settle.n is not None and settle.prob == 1.0:
        return f"{head}; {settle.n:,} examples would settle it if, as here, no example changes"
    if settle.n is not None:
        return (
            f"{head}; about {settle.n:,} examples would settle it with probability "
            f"{settle.prob:.2f} if the observed rates hold"
        )
    if settle.why == "tie":
        return f"{head}; the observed drop equals the margin, so no sample size would settle it"
    if settle.why == "cap":
        return f"{head}; more than {_N_NEEDED_CAP:,} examples would be needed to settle it"
    return f"{head}; {settle.why}" if settle.why else head


def combine_verdicts(*verdicts: str) -> str:
    """Combine component verdicts: fail > inconclusive > pass.

    PASS only when every component passes (an intersection-union test, which needs no
    multiplicity correction); any proven failure fails the whole -- a union of FAIL claims, so
    the caller splits ``fail_alpha`` over them (``engine.decision.decide`` does).
    """
    if not verdicts:
        raise ValueError("combine_verdicts needs at least one verdict")
    for v in verdicts:
        if v not in _SEVERITY:
            raise ValueError(f"unknown verdict {v!r}; expected one of {sorted(_SEVERITY)}")
    return max(verdicts, key=_SEVERITY.__getitem__)


def _result(
    *,
    verdict: str,
    n: int,
    base: float,
    tuned: float,
    drop: float,
    low: float,
    high: float,
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
    method: str,
    nfr: float | None = None,
    pfr: float | None = None,
    settle: _Settle | None = None,
    note: str = "",
) -> Comparison:
    settle = settle if verdict == INCONCLUSIVE else None
    return Comparison(
        verdict=verdict,
        n=n,
        base=float(base),
        tuned=float(tuned),
        drop=float(drop),
        ci_low=float(low),
        ci_high=float(high),
        margin=margin,
        relative=relative,
        alpha=alpha,
        higher_is_better=hib,
        method=method,
        nfr=nfr,
        pfr=pfr,
        n_needed=settle.n if settle else None,
        reason=_reason(verdict, low, high, margin, drop, settle, note),
        fail_alpha=fail_alpha,
        settle_prob=settle.prob if settle else None,
    )


def _degenerate(
    *,
    n: int,
    base: float,
    tuned: float,
    drop: float,
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
    method: str,
    why: str,
    nfr: float | None = None,
    pfr: float | None = None,
) -> Comparison:
    return _result(
        verdict=INCONCLUSIVE,
        n=n,
        base=base,
        tuned=tuned,
        drop=drop,
        low=-math.inf,
        high=math.inf,
        margin=margin,
        relative=relative,
        alpha=alpha,
        fail_alpha=fail_alpha,
        hib=hib,
        method=method,
        nfr=nfr,
        pfr=pfr,
        settle=_Settle(why="more examples that differ in different ways would be needed"),
        note=why,
    )
