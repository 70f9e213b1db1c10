"""Per-class *precision* budgets: ``retains(..., max_class_drop=B, class_metric="precision")``.

``max_class_drop`` budgets per-class recall by default (``stats.class_drops``: the examples of
label k, a paired proportion). With ``class_metric="precision"`` it budgets the precision of every
class instead: ``P_m(k) = P(label = k | model m predicts k)``, estimated as TP_k / predicted_k
(scikit-learn ``precision_score(average=None, zero_division=0)`` on the same predictions). The two
models predict k on different examples, so the drop ``d_k = P_base(k) - P_tuned(k)`` is not one
paired proportion; the bounds below are exact anyway.

Why they hold. The examples are i.i.d. draws. Conditional on the number m of examples a model
predicts as k, its true positives among them are Binomial(m, P(k)) (each predicted example is
right independently with probability P(k)), so the Clopper-Pearson bounds of TP_k / m cover P(k)
exactly at every m (m = 0 says nothing: [0, 1]). Likewise, conditional on the number of examples
the base predicts as k, how many of them the tuned model does *not* predict as k is Binomial with
``r_b = P(tuned != k | base = k)``; symmetrically ``r_t = P(base != k | tuned = k)``.

- **FAIL** (a proven drop beyond the budget): ``lower(P_base) - upper(P_tuned) > B`` for some class,
  each bound at ``fail_alpha / (2K)`` (Bonferroni over the two bounds and the K classes, the split of
  ``stats.class_drops``). If the class's true drop is at most B, this needs one of the two bounds to
  miss, so a false FAIL has probability <= fail_alpha over all classes together.
- **PASS** needs, for every class, an upper bound of the drop below B (an intersection: no
  correction over classes). The bound is the smaller of two exact ones:

  * unpaired: ``upper(P_base) - lower(P_tuned)``, each at ``0.45 alpha``;
  * paired (agreement): write each precision over the examples both models predict as k (precision
    q, shared by both models: same examples, same labels) and those only one of them does
    (precision s_b, s_t): ``P_b = (1 - r_b) q + r_b s_b``, ``P_t = (1 - r_t) q + r_t s_t``, so
    ``d = r_b (s_b - q) + r_t (q - s_t) <= r_b (1 - q) + r_t q <= max(r_b, r_t)``; the bound is
    ``max(upper(r_b), upper(r_t))``, each at ``0.05 alpha``.

  If the true drop exceeds B, a PASS needs one of these four bounds to miss: probability <=
  0.45 + 0.45 + 0.05 + 0.05 = 1 times alpha. The paired bound settles two models that agree on
  (almost) every prediction of k at a few dozen predictions per class (identical models: from
  ln(1 / (0.05 alpha)) / B, 60 at B = 0.1, alpha = 0.05), where the unpaired one needs hundreds;
  the unpaired one is tighter once the models disagree on more than a few percent, and giving it
  0.9 of alpha instead of all of it widens it by ~2 %. ``benchmarks/class_precision_calibration.py`` checks both
  error rates by simulation (``docs/class_precision_calibration.md``).

Pure numpy + the exact bounds of :mod:`pytest_forgetting.stats`; no scipy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import stats
from .stats import budgets as _budgets
from .stats import special as _special
from .stats import validation as _validation
from .stats import verdict as _verdict

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: what ``max_class_drop`` budgets per class (``class_metric=``); "recall" is per-class accuracy
CLASS_METRICS = ("recall", "precision")
#: share of alpha of each bound behind a PASS: (unpaired base, unpaired tuned, agreement base, agreement tuned)
PASS_SPLIT = (0.45, 0.45, 0.05, 0.05)


@dataclass(frozen=True)
class ClassPrecision:
    """The precision budget of one class: observed values, the bounds of the drop, the verdict.

    ``drop = base - tuned`` (positive = worse). ``ci_low`` backs a FAIL (at ``fail_alpha / 2K``),
    ``ci_high`` a PASS (at ``alpha``). ``n_base`` / ``n_tuned`` count the examples each model
    predicts as this class, ``tp_base`` / ``tp_tuned`` the right ones, ``shared`` the examples
    both models predict as it.
    """

    name: str
    base: float
    tuned: float
    drop: float
    ci_low: float
    ci_high: float
    limit: float
    verdict: str
    n_base: int
    n_tuned: int
    tp_base: int
    tp_tuned: int
    shared: int
    #: FAIL side: the lower bound of the base's precision and the upper bound of the tuned's
    base_low: float = 0.0
    tuned_high: float = 1.0

    def budget(self) -> stats.Budget:
        return stats.Budget(
            name=self.name,
            value=self.drop,
            ci_low=self.ci_low,
            ci_high=self.ci_high,
            limit=self.limit,
            verdict=self.verdict,
            n=self.n_base,
        )

    def row(self, gated: bool = True) -> dict[str, Any]:
        """The ``worst_classes`` entry of the JSON report (``drop`` and its bounds, plus both precisions)."""
        return {
            "name": self.name,
            "metric": "precision",
            "drop": self.drop,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "verdict": self.verdict if gated else "",
            "n": self.n_base,
            "n_tuned": self.n_tuned,
            "base": self.base,
            "tuned": self.tuned,
        }


@lru_cache(maxsize=1 << 16)
def _bound(k: int, n: int, a: float, upper: bool) -> float:
    """Exact one-sided Clopper-Pearson bound at ``a`` of k/n; n = 0 says nothing ([0, 1])."""
    if n == 0:
        return 1.0 if upper else 0.0
    return _special._cp_upper(float(k), float(n), a) if upper else _special._cp_lower(float(k), float(n), a)


def _lower(k: np.ndarray, n: np.ndarray, a: float) -> np.ndarray:
    return np.array([_bound(x, m, a, False) for x, m in zip(k.tolist(), n.tolist())], dtype=float)


def _upper(k: np.ndarray, n: np.ndarray, a: float) -> np.ndarray:
    return np.array([_bound(x, m, a, True) for x, m in zip(k.tolist(), n.tolist())], dtype=float)


def _as_codes(what: str, values: Any, size: int | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {arr.shape}")
    if size is not None and arr.size != size:
        raise ValueError(
            f"labels, base_pred and tuned_pred must be aligned: {what} has {arr.size} entries, labels {size}"
        )
    return _validation._as_labels(arr, arr.size) if arr.size else arr


def class_precision_drops(
    labels: Any,
    base_pred: Any,
    tuned_pred: Any,
    *,
    limit: float,
    alpha: float = 0.05,
    fail_alpha: float | None = None,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    paired: bool = True,
) -> list[ClassPrecision]:
    """Per-class precision drop budgets (see the module docstring), worst observed drop first.

    The classes are those in the labels or either model's predictions (scikit-learn's default
    label set); a class a model never predicts has precision 0 in the values and [0, 1] bounds.
    ``paired=False`` drops the agreement bound from the PASS side (the unpaired bound alone, each
    side at alpha / 2): the benchmark's comparison.
    """
    lim = _validation._check_margin(limit, "max_class_drop")
    a = _validation._check_alpha(alpha)
    af = _validation._check_fail_alpha(fail_alpha, a)
    y = _as_codes("labels", labels, None)
    if y.size == 0:
        raise ValueError("class precision needs at least one example")
    pb = _as_codes("base_pred", base_pred, y.size)
    pt = _as_codes("tuned_pred", tuned_pred, y.size)
    try:
        classes, codes = np.unique(np.concatenate([y, pb, pt]), return_inverse=True)
    except TypeError:
        raise ValueError("labels and predictions must be of one comparable kind (all ints or all strings)") from None
    codes = codes.reshape(-1)
    n, k = y.size, len(classes)
    cy, cb, ct = codes[:n], codes[n : 2 * n], codes[2 * n :]
    pred_b = np.bincount(cb, minlength=k)
    pred_t = np.bincount(ct, minlength=k)
    tp_b = np.bincount(cb[cb == cy], minlength=k)
    tp_t = np.bincount(ct[ct == cy], minlength=k)
    shared = np.bincount(cb[cb == ct], minlength=k)
    a_fail = af / (2.0 * k)
    s_ub, s_lt, s_rb, s_rt = (share * a for share in PASS_SPLIT) if paired else (a / 2, a / 2, 0.0, 0.0)
    base_low, tuned_high = _lower(tp_b, pred_b, a_fail), _upper(tp_t, pred_t, a_fail)
    lows = base_low - tuned_high
    unpaired = _upper(tp_b, pred_b, s_ub) - _lower(tp_t, pred_t, s_lt)
    agreement = (
        np.maximum(_upper(pred_b - shared, pred_b, s_rb), _upper(pred_t - shared, pred_t, s_rt)) if paired else 1.0
    )
    highs = np.minimum(unpaired, agreement)
    base = np.divide(tp_b, pred_b, out=np.zeros(k), where=pred_b > 0)  # scikit-learn's zero_division=0
    tuned = np.divide(tp_t, pred_t, out=np.zeros(k), where=pred_t > 0)
    out: list[ClassPrecision] = []
    for j in range(k):
        label = classes[j].item() if hasattr(classes[j], "item") else classes[j]
        low, high = float(lows[j]), float(highs[j])
        out.append(
            ClassPrecision(
                name=_budgets._class_name(label, class_names),
                base=float(base[j]),
                tuned=float(tuned[j]),
                drop=float(base[j] - tuned[j]),
                ci_low=low,
                ci_high=high,
                limit=lim,
                verdict=_verdict._decide(low, high, lim),
                n_base=int(pred_b[j]),
                n_tuned=int(pred_t[j]),
                tp_base=int(tp_b[j]),
                tp_tuned=int(tp_t[j]),
                shared=int(shared[j]),
                base_low=float(base_low[j]),
                tuned_high=float(tuned_high[j]),
            )
        )
    out.sort(key=lambda c: (-c.drop, -c.ci_low))
    return out


def describe(classes: Sequence[ClassPrecision], limit: float, top: int = 3) -> str:
    """The failure-message part of the classes whose precision budget did not pass."""
    broken = [c for c in classes if c.verdict != stats.PASS]
    if not broken:
        return ""

    def one(c: ClassPrecision) -> str:
        text = (
            f"{c.name} precision {c.base:.3f} -> {c.tuned:.3f} ({c.tp_base}/{c.n_base} -> {c.tp_tuned}/{c.n_tuned}), "
            f"drop {c.drop:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        )
        if c.verdict == stats.FAIL:
            return f"{text} fail: lower bound {c.ci_low:+.3f} = {c.base_low:.3f} - {c.tuned_high:.3f} > {limit:g}"
        return f"{text} {c.verdict}"

    more = f" (+{len(broken) - top} more)" if len(broken) > top else ""
    fails = sorted(broken, key=lambda c: (c.verdict != stats.FAIL, -c.ci_low))
    return f"class precision drop budget {limit:g}: " + "; ".join(one(c) for c in fails[:top]) + more


class PrecisionPart(NamedTuple):
    """What the check's decision takes from the precision budget (``engine.decision.decide``)."""

    rows: list[dict[str, Any]]
    budgets: list[stats.Budget]
    verdicts: list[str]
    reason: str


def precision_part(
    base_outputs: Mapping[str, Any],
    tuned_outputs: Mapping[str, Any],
    *,
    limit: float | None,
    alpha: float,
    fail_alpha: float,
    class_names: Any,
    top: int,
    task: str,
    label_key: str = "label",
    pred_key: str | None = "pred",
) -> PrecisionPart:
    """Run the precision budget on two aligned evaluations (1-D labels and predictions in each,
    under the task's declared ``label_key`` / ``pred_key``)."""
    from .errors import ConfigError

    for out in (base_outputs, tuned_outputs):
        if (
            pred_key is None
            or pred_key not in out
            or np.ndim(out[pred_key]) != 1
            or np.shape(out[pred_key]) != np.shape(out[label_key])
        ):
            raise ConfigError(f"class_metric='precision' needs one predicted class per example; task {task!r} has none")
    assert pred_key is not None  # refused above
    gated = limit is not None
    classes = class_precision_drops(
        base_outputs[label_key],
        base_outputs[pred_key],
        tuned_outputs[pred_key],
        limit=limit if limit is not None else 1.0,
        alpha=alpha,
        fail_alpha=fail_alpha if gated else None,
        class_names=class_names,
    )
    rows = [c.row(gated) for c in classes[:top]]
    if limit is None:
        return PrecisionPart(rows, [], [], "")
    return PrecisionPart(rows, [c.budget() for c in classes], [c.verdict for c in classes], describe(classes, limit))


def check_class_metric(where: str, value: Any, *, max_class_drop: Any, slices: Any) -> str:
    """Validate ``class_metric=`` at collection (a ConfigError with "did you mean")."""
    from .errors import ConfigError
    from .registry import suggest

    if not isinstance(value, str) or value not in CLASS_METRICS:
        hint = suggest(value, CLASS_METRICS) if isinstance(value, str) else ""
        raise ConfigError(f"{where}: class_metric={value!r} is not one of {', '.join(CLASS_METRICS)}{hint}")
    if value == "precision":
        if max_class_drop is None:
            raise ConfigError(
                f"{where}: class_metric='precision' chooses what max_class_drop budgets; add max_class_drop="
            )
        if slices is not None:
            raise ConfigError(
                f"{where}: class_metric='precision' is per predicted class; slices= budgets each slice's "
                "accuracy (drop one of the two)"
            )
    return value


# -- simulation (benchmarks/class_precision_calibration.py, tests/test_class_budget.py) -------------


def _other(rng: np.random.Generator, k: int, avoid: np.ndarray) -> np.ndarray:
    """A uniform class different from ``avoid`` (per entry)."""
    r = rng.integers(0, k - 1, avoid.size)
    return r + (r >= avoid)


def _other_two(rng: np.random.Generator, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A uniform class different from both ``a`` and ``b`` (a != b entry-wise)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    r = rng.integers(0, k - 2, a.size)
    r = r + (r >= lo)
    out: NDArray[np.int64] = r + (r >= hi)
    return out


def sample_pair(
    rng: np.random.Generator, k: int, n: int, *, drops: np.ndarray, discord: float, shared_precision: float = 0.9
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One eval set of two paired classifiers with known per-class precisions.

    The base predicts a uniform class; the tuned model predicts the same class except, with
    probability ``discord``, a uniform other one (so each model predicts every class with
    probability 1/K and r_b = r_t = discord). Where they agree the label is the predicted class with
    probability ``shared_precision``; where they disagree (base k, tuned j) it is k with probability
    u_k, j with probability v_j, else a third class, with u = (1 + d/c) / 2 and v = (1 - d/c) / 2 for
    a class of drop d > 0 and u = v = (1 - max d / c) / 2 otherwise (so u_k + v_j <= 1). Then
    P_base(k) = (1 - c) q + c u_k and P_tuned(k) = (1 - c) q + c v_k: the drop of class k is exactly
    c (u_k - v_k) = d_k. Needs every d_k <= c; d_k = c is the least favourable case for the paired
    bound (u = 1, v = 0). Returns labels, base and tuned predictions and the two true precisions.
    """
    d = np.asarray(drops, dtype=float)
    c, q = float(discord), float(shared_precision)
    if k < 3 or d.shape != (k,) or not 0.0 <= c <= 1.0 or (d < 0).any() or (d > c + 1e-12).any():
        raise ValueError("sample_pair needs k >= 3, one drop per class in [0, discord] and discord in [0, 1]")
    ratio = d / c if c > 0 else np.zeros(k)  # c = 0: identical models (every drop is then 0)
    v0 = (1.0 - ratio.max()) / 2.0
    u = np.where(d > 0, (1.0 + ratio) / 2.0, v0)
    v = np.where(d > 0, (1.0 - ratio) / 2.0, v0)
    pb = rng.integers(0, k, n)
    moved = rng.random(n) < c
    pt = pb.copy()
    pt[moved] = _other(rng, k, pb[moved])
    y = np.empty(n, dtype=np.int64)
    agree = ~moved
    right = rng.random(n) < q
    y[agree & right] = pb[agree & right]
    wrong = agree & ~right
    y[wrong] = _other(rng, k, pb[wrong])
    idx = np.flatnonzero(moved)
    w = rng.random(idx.size)
    ub, vt = u[pb[idx]], v[pt[idx]]
    y[idx] = np.where(w < ub, pb[idx], np.where(w < ub + vt, pt[idx], _other_two(rng, k, pb[idx], pt[idx])))
    return y, pb, pt, (1 - c) * q + c * u, (1 - c) * q + c * v


def simulate(
    k: int,
    n: int,
    *,
    limit: float,
    drops: Any,
    discord: float,
    shared_precision: float = 0.9,
    reps: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    fail_alpha: float | None = None,
    paired: bool = True,
) -> dict[str, Any]:
    """Share of PASS / FAIL / INCONCLUSIVE verdicts of the whole budget (every class) over ``reps`` eval sets."""
    rng = np.random.default_rng(seed)
    d = np.broadcast_to(np.asarray(drops, dtype=float), (k,)).copy()
    counts = {stats.PASS: 0, stats.FAIL: 0, stats.INCONCLUSIVE: 0}
    true_drop = None
    for _ in range(reps):
        y, pb, pt, prec_b, prec_t = sample_pair(rng, k, n, drops=d, discord=discord, shared_precision=shared_precision)
        true_drop = prec_b - prec_t
        verdicts = [
            c.verdict
            for c in class_precision_drops(y, pb, pt, limit=limit, alpha=alpha, fail_alpha=fail_alpha, paired=paired)
        ]
        counts[stats.combine_verdicts(*verdicts)] += 1
    return {
        "k": k,
        "n": n,
        "reps": reps,
        "limit": limit,
        "discord": discord,
        "true_max_drop": float(np.max(true_drop)) if true_drop is not None else None,
        **{v: counts[v] / reps for v in counts},
    }
