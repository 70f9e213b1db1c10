"""Calibration benchmark: does every decision path keep its promise at every n?

For each path (how a marker is decided) x eval-set size n x scenario it measures

* the false-PASS and false-FAIL rate when the true drop equals the margin exactly (both are
  errors there; each must be at most alpha),
* the power: the PASS rate at a true drop of 0 (same churn, the negative flips lowered until the
  drop is 0; for the NFR budget: a true negative-flip rate of half the budget),
* which method decided (``Comparison.method`` as returned, or the budget function).

Paths whose verdict depends only on counts (0/1 absolute with Tango's interval, the per-class
budgets, the NFR budget) are computed by **exact enumeration** of the count distribution (SE 0);
the verdict is assumed monotone in the number of negative flips for a fixed number of positive
flips (it is for every interval used), which is what lets a threshold search replace the full
table. Everything else is simulated (seeded), with the standard error of each rate printed.
A rate is flagged ``OVER`` when it exceeds alpha + 3 SE (exact cells: alpha + 1e-9), where SE is the
larger of the observed rate's SE and sqrt(alpha (1 - alpha) / reps), the SE of a rate equal to alpha
(the flag names which one applied): with few reps the observed SE alone could not flag even 0.30.

Every verdict comes from the public functions the plugin itself calls:
``pytest_forgetting.stats`` (``compare_scores``, ``compare_statistic``, ``class_drops``,
``nfr_budget``, ``combine_verdicts``), ``pytest_forgetting.sequential`` and the metric
definitions of ``pytest_forgetting.metrics`` / ``pytest_forgetting.tasks.token`` (macro-F1,
entity F1, perplexity, WER), with the plugin's defaults (seed 0, 2000 bootstrap resamples).

Usage::

    python benchmarks/calibration.py                 # the full table (tens of minutes on 2 cores)
    python benchmarks/calibration.py --quick         # a smoke run: few reps, three sizes
    python benchmarks/calibration.py --paths nfr,sequential --reps 5000 --cell-seconds 60

Not collected by pytest (``benchmarks/`` is outside ``testpaths``); a fast seeded version of
these checks lives in the test suite.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pytest_forgetting import sequential, stats  # noqa: E402
from pytest_forgetting.metrics import F1_MACRO, PERPLEXITY, WER  # noqa: E402
from pytest_forgetting.tasks.token import TagTable, entity_metrics  # noqa: E402

ALPHA = 0.05
SIZES = (50, 100, 300, 1000, 5000)
SEED = 0  # the plugin's default --forgetting-seed
BATCH_SIZE = 64  # the plugin's default --forgetting-batch-size (sets the early-stop chunk)
EXACT_TOL = 1e-9


# =============================================================================================
# Result cells
# =============================================================================================


@dataclass
class Rate:
    p: float
    se: float  # 0 for exact
    reps: int  # 0 for exact

    def text(self) -> str:
        if self.reps == 0:
            return f"{self.p:.4f} (exact)"
        return f"{self.p:.3f} ({self.se:.3f})"

    def se_flag(self, alpha: float = ALPHA) -> tuple[float, str]:
        """The SE the flag rule uses: the larger of the observed rate's and the SE a rate equal to
        alpha would have at these reps, sqrt(alpha (1 - alpha) / reps). From the observed rate
        alone, a few dozen reps could not flag even a rate of 0.30 (its own SE is large too)."""
        at_alpha = math.sqrt(alpha * (1 - alpha) / self.reps)
        return (self.se, "observed") if self.se >= at_alpha else (at_alpha, "at alpha")

    def limit(self, alpha: float = ALPHA) -> float:
        if self.reps == 0:
            return alpha + EXACT_TOL
        return alpha + 3 * self.se_flag(alpha)[0]

    def over(self, alpha: float = ALPHA) -> bool:
        return self.p > self.limit(alpha)


def rate_of(hits: int, reps: int) -> Rate:
    p = hits / reps if reps else float("nan")
    # a 0/reps estimate still has an uncertainty; use the rule-of-three-like floor 1/reps for its SE
    se = math.sqrt(max(p * (1 - p), 1.0 / reps) / reps) if reps else float("nan")
    return Rate(p, se, reps)


@dataclass
class Cell:
    path: str
    scenario: str
    n: int
    false_pass: Rate
    false_fail: Rate
    power: Rate
    method: str
    note: str = ""
    seconds: float = 0.0

    def flags(self) -> list[str]:
        out = []
        for name, r in (("false PASS", self.false_pass), ("false FAIL", self.false_fail)):
            if r.over():
                why = "" if r.reps == 0 else f" > {r.limit():.3f} = alpha + 3 SE ({r.se_flag()[1]})"
                out.append(f"OVER: {name}{why}")
        return out


# =============================================================================================
# Small numerical helpers (no scipy)
# =============================================================================================

_LOGFACT = np.zeros(1)


def _logfact(n: int) -> np.ndarray:
    global _LOGFACT
    if _LOGFACT.size <= n:
        _LOGFACT = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    return _LOGFACT


def binom_pmf(n: int, p: float) -> np.ndarray:
    """P(X = k), k = 0..n, X ~ Binomial(n, p)."""
    k = np.arange(n + 1)
    if p <= 0.0:
        return (k == 0).astype(float)
    if p >= 1.0:
        return (k == n).astype(float)
    lf = _logfact(n)
    return np.exp(lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p))


def support(pmf: np.ndarray, eps: float = 1e-13) -> tuple[int, int]:
    """Smallest index range holding all but ``eps`` of the mass (each tail below eps / 2)."""
    c = np.cumsum(pmf)
    lo = int(np.searchsorted(c, eps / 2))
    hi = int(np.searchsorted(c, 1 - eps / 2))
    return lo, min(hi, pmf.size - 1)


def solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for an increasing f, by bisection."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# =============================================================================================
# Exact enumeration for count-only paths
# =============================================================================================


def paired_arrays(b: int, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 correctness with b negative flips, c positive flips, the rest agreeing (correct)."""
    base = np.ones(n)
    tuned = np.ones(n)
    tuned[:b] = 0.0
    base[b : b + c] = 0.0
    return base, tuned


class ThresholdTable:
    """For a verdict monotone in b (negative flips) at fixed c (positive flips) and n:
    PASS iff b <= pass_max(c), FAIL iff b >= fail_min(c). Found by galloping + bisection."""

    def __init__(self, verdict: Callable[[int, int], str], n: int) -> None:
        self.verdict = verdict
        self.n = n
        self._pass: dict[int, int] = {}
        self._fail: dict[int, int] = {}
        self.calls = 0

    def _v(self, b: int, c: int) -> str:
        self.calls += 1
        return self.verdict(b, c)

    def _search(self, c: int, good: Callable[[str], bool], start: int, first_true_above: bool) -> int:
        """Largest b with good (pass side, first_true_above False) or smallest b with good (fail side)."""
        top = self.n - c
        if not first_true_above:  # pass: good for b <= t; find t (-1 if none)
            if not good(self._v(0, c)):
                return -1
            lo, hi = 0, None  # good(lo) known
            step = 1
            probe = min(top, max(0, start))
            if probe > 0 and good(self._v(probe, c)):
                lo = probe
            else:
                hi = probe if probe > 0 else None
            while hi is None:
                probe = min(top, lo + step)
                if probe == lo:
                    return lo
                if good(self._v(probe, c)):
                    lo = probe
                    step *= 2
                else:
                    hi = probe
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if good(self._v(mid, c)):
                    lo = mid
                else:
                    hi = mid
            return lo
        # fail: good for b >= t; find t (top + 1 if none)
        if not good(self._v(top, c)):
            return top + 1
        hi, lo = top, None  # good(hi) known
        probe = min(top, max(0, start))
        if probe < top and good(self._v(probe, c)):
            hi = probe
        else:
            lo = probe if probe < top else None
        step = 1
        while lo is None:
            probe = max(0, hi - step)
            if probe == hi:
                return hi
            if good(self._v(probe, c)):
                hi = probe
                step *= 2
            else:
                lo = probe
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if good(self._v(mid, c)):
                hi = mid
            else:
                lo = mid
        return hi

    def pass_max(self, c: int, hint: int) -> int:
        if c not in self._pass:
            self._pass[c] = self._search(c, lambda v: v == stats.PASS, hint, False)
        return self._pass[c]

    def fail_min(self, c: int, hint: int) -> int:
        if c not in self._fail:
            self._fail[c] = self._search(c, lambda v: v == stats.FAIL, hint, True)
        return self._fail[c]


def exact_trinomial(table: ThresholdTable, n: int, p_neg: float, p_pos: float) -> tuple[float, float]:
    """(P(PASS), P(FAIL)) when (negative flips, positive flips) ~ multinomial(n; p_neg, p_pos)."""
    pc = binom_pmf(n, p_pos)
    c_lo, c_hi = support(pc)
    q = p_neg / (1.0 - p_pos) if p_pos < 1 else 0.0
    p_pass = p_fail = 0.0
    hint_p = hint_f = int(round(n * p_neg))
    for c in range(c_lo, c_hi + 1):
        pb = binom_pmf(n - c, q)
        cdf = np.cumsum(pb)
        t_pass = table.pass_max(c, hint_p)
        t_fail = table.fail_min(c, hint_f)
        if t_pass >= 0:
            p_pass += pc[c] * float(cdf[min(t_pass, n - c)])
            hint_p = max(t_pass, 1)
        if t_fail <= n - c:
            p_fail += pc[c] * float(1.0 - (cdf[t_fail - 1] if t_fail > 0 else 0.0))
            hint_f = t_fail
    return min(p_pass, 1.0), min(p_fail, 1.0)


# =============================================================================================
# The plugin's calls, as pytest_forgetting/session.py makes them
# =============================================================================================


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _fast(fn: Callable, kw: dict) -> dict:
    """``n_needed=False`` where supported: the sample-size estimate of an INCONCLUSIVE result is
    only a message and does not change the verdict, but it can cost more than the verdict."""
    if _accepts(fn, "n_needed"):
        kw = {**kw, "n_needed": False}
    return kw


def decide_scores(
    base: np.ndarray,
    tuned: np.ndarray,
    *,
    max_drop: float,
    relative: bool = False,
    higher_is_better: bool = True,
    fail_alpha: float | None = None,
) -> stats.Comparison:
    """``Session._decide`` for a per-example metric."""
    kw = {
        "max_drop": max_drop,
        "relative": relative,
        "alpha": ALPHA,
        "higher_is_better": higher_is_better,
        "seed": SEED,
    }
    if fail_alpha is not None and _accepts(stats.compare_scores, "fail_alpha"):
        kw["fail_alpha"] = fail_alpha
    return stats.compare_scores(base, tuned, **_fast(stats.compare_scores, kw))


def decide_aggregate(
    metric, ob: dict, ot: dict, n: int, *, max_drop: float, relative: bool = False
) -> stats.Comparison:
    """``Session._decide`` for an aggregate metric: the black-box statistic, plus its ratio form and
    the bounded flag where this version of the plugin has them."""
    agg = metric.aggregate
    kw = {
        "max_drop": max_drop,
        "relative": relative,
        "alpha": ALPHA,
        "higher_is_better": metric.higher_is_better,
        "seed": SEED,
    }
    if _accepts(stats.compare_statistic, "fail_alpha"):
        kw["fail_alpha"] = ALPHA  # a check with no budgets: the FAIL side keeps the whole alpha
    if _accepts(stats.compare_statistic, "ratio"):
        from pytest_forgetting import metrics as _metrics

        ratio_of = getattr(_metrics, "ratio_of", None)
        kw["ratio"] = ratio_of(metric, ob, ot) if ratio_of is not None else None
    if _accepts(stats.compare_statistic, "bounded"):
        kw["bounded"] = metric.bounded
    return stats.compare_statistic(lambda idx: (agg(ob, idx), agg(ot, idx)), n, **_fast(stats.compare_statistic, kw))


# =============================================================================================
# Paths
# =============================================================================================


@dataclass
class Scenario:
    name: str
    params: dict


@dataclass
class Path:
    key: str
    title: str
    margin_text: str
    scenarios: list[Scenario]
    exact: Callable[[int, Scenario], Cell] | None = None
    simulate: Callable[[np.random.Generator, int, Scenario, bool], tuple[str, str, str]] | None = None
    refused: Callable[[int], str] = field(default=lambda n: "")


# -- 0/1 paired data ---------------------------------------------------------------------------
BASE_ACC = 0.8


def paired_01(
    rng: np.random.Generator, n: int, p_neg: float, p_pos: float, acc: float = BASE_ACC
) -> tuple[np.ndarray, np.ndarray]:
    """Base correct w.p. acc; negative flips w.p. p_neg, positive flips w.p. p_pos (of all examples)."""
    base = rng.random(n) < acc
    u = rng.random(n)
    tuned = np.where(base, u >= p_neg / acc, u < p_pos / (1 - acc))
    return base.astype(float), tuned.astype(float)


def refused_01(margin: float) -> Callable[[int], str]:
    need = stats.min_n_to_pass(margin, ALPHA)

    def f(n: int) -> str:
        return f"refused at collection (n < {need})" if need is not None and n < need else ""

    return f


# -- path: 0/1 absolute ------------------------------------------------------------------------
M01 = 0.05
SCEN_01 = [
    Scenario("churn low", {"p_pos": 0.01}),
    Scenario("churn high", {"p_pos": 0.10}),
    Scenario("skewed: one-way flips", {"p_pos": 0.0}),
]
_tables: dict[tuple, ThresholdTable] = {}


def _table_01(n: int) -> ThresholdTable:
    key = ("01", n)
    if key not in _tables:

        def verdict(b: int, c: int) -> str:
            base, tuned = paired_arrays(b, c, n)
            return decide_scores(base, tuned, max_drop=M01).verdict

        _tables[key] = ThresholdTable(verdict, n)
    return _tables[key]


def exact_01(n: int, sc: Scenario) -> Cell:
    p_pos = sc.params["p_pos"]
    table = _table_01(n)
    fp, ff = exact_trinomial(table, n, p_pos + M01, p_pos)
    pw, _ = exact_trinomial(table, n, p_pos, p_pos)
    base, tuned = paired_arrays(1, 1, n)
    method = stats.compare_scores(base, tuned, max_drop=M01, alpha=ALPHA).method
    return Cell("0/1 absolute", sc.name, n, Rate(fp, 0, 0), Rate(ff, 0, 0), Rate(pw, 0, 0), method, refused_01(M01)(n))


# -- path: 0/1 relative ------------------------------------------------------------------------
MREL = 0.05  # relative: 5 % of the base accuracy


def sim_rel(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    p_pos = sc.params["p_pos"]
    p_neg = p_pos + (MREL * BASE_ACC if at_margin else 0.0)
    base, tuned = paired_01(rng, n, p_neg, p_pos)
    r = decide_scores(base, tuned, max_drop=MREL, relative=True)
    return r.verdict, r.method, ""


# -- path: macro-F1 ----------------------------------------------------------------------------
MF1 = 0.05
K_F1 = 10


def _class_probs(kind: str, k: int) -> np.ndarray:
    if kind == "balanced":
        return np.full(k, 1.0 / k)
    w = 1.0 / np.arange(1, k + 1) ** 1.2  # Zipf-like: the largest class ~ 14x the smallest
    return w / w.sum()


def macro_f1_population(pi: np.ndarray, acc: float) -> float:
    """Population macro-F1 when each class is right w.p. acc, wrong predictions uniform over the other classes."""
    k = pi.size
    tp = pi * acc
    predicted = pi * acc + (1 - pi) * 0 + ((1 - acc) * (pi.sum() - pi)) / (k - 1)
    return float(np.mean(2 * tp / (pi + predicted)))


def _f1_setup(sc: Scenario, at_margin: bool) -> tuple[np.ndarray, float, float]:
    pi = _class_probs(sc.params["classes"], K_F1)
    q_pos = sc.params["q_pos"]
    target = macro_f1_population(pi, BASE_ACC) - (MF1 if at_margin else 0.0)
    # tuned accuracy a_t = acc (1 - q_neg) + (1 - acc) q_pos; macro-F1 increases with a_t
    a_t = solve_increasing(lambda a: macro_f1_population(pi, a), target, 0.0, 1.0)
    q_neg = (BASE_ACC + (1 - BASE_ACC) * q_pos - a_t) / BASE_ACC
    return pi, q_pos, q_neg


def sim_f1(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    pi, q_pos, q_neg = _f1_setup(sc, at_margin)
    k = pi.size
    y = rng.choice(k, size=n, p=pi)
    right_b = rng.random(n) < BASE_ACC
    wrong = (y + rng.integers(1, k, size=n)) % k  # uniform over the other classes
    pred_b = np.where(right_b, y, wrong)
    u = rng.random(n)
    right_t = np.where(right_b, u >= q_neg, u < q_pos)
    wrong_t = np.where(right_b, (y + rng.integers(1, k, size=n)) % k, pred_b)
    pred_t = np.where(right_t, y, wrong_t)
    ob, ot = {"label": y, "pred": pred_b}, {"label": y, "pred": pred_t}
    r = decide_aggregate(F1_MACRO, ob, ot, n, max_drop=MF1)
    return r.verdict, r.method, ""


# -- path: entity F1 ---------------------------------------------------------------------------
MENT = 0.05
WORDS = 12
RECALL_B, FP_RATE = 0.8, 0.02
_TABLE = TagTable.from_tags(["O", "B-X"])
_ENT_F1 = entity_metrics(_TABLE)["f1"]


def _entity_design(sc: Scenario) -> tuple[float, float]:
    """(expected gold entities, expected non-entity words) per sentence."""
    if sc.params["skewed"]:  # 20 % of sentences dense (60 % entity words), the rest sparse (2.5 %); lengths 1..12
        mean_len = (1 + WORDS) / 2
        return mean_len * (0.2 * 0.6 + 0.8 * 0.025), mean_len * (0.2 * 0.4 + 0.8 * 0.975)
    return WORDS * 0.15, WORDS * 0.85


def entity_f1_population(recall: float, eg: float, en: float) -> float:
    return 2 * recall * eg / (recall * eg + FP_RATE * en + eg)


def sim_entity(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    eg, en = _entity_design(sc)
    q_pos = sc.params["q_pos"]
    target = entity_f1_population(RECALL_B, eg, en) - (MENT if at_margin else 0.0)
    r_t = solve_increasing(lambda r: entity_f1_population(r, eg, en), target, 0.0, 1.0)
    q_neg = (RECALL_B + (1 - RECALL_B) * q_pos - r_t) / RECALL_B
    if sc.params["skewed"]:
        lengths = rng.integers(1, WORDS + 1, size=n)
        dense = rng.random(n) < 0.2
        g = np.where(dense, 0.6, 0.025)[:, None]
    else:
        lengths = np.full(n, WORDS)
        g = np.full((n, 1), 0.15)
    valid = np.arange(WORDS)[None, :] < lengths[:, None]
    gold_ent = (rng.random((n, WORDS)) < g) & valid
    hit_b = gold_ent & (rng.random((n, WORDS)) < RECALL_B)
    fp_b = ~gold_ent & valid & (rng.random((n, WORDS)) < FP_RATE)
    u = rng.random((n, WORDS))
    hit_t = gold_ent & np.where(hit_b, u >= q_neg, u < q_pos)
    # false positives churn too, at the same rate, keeping their frequency
    v = rng.random((n, WORDS))
    s = q_pos
    fp_t = ~gold_ent & valid & np.where(fp_b, v >= s, v < s * FP_RATE / (1 - FP_RATE))
    pad = np.where(valid, 0, -100)
    gold = np.where(gold_ent, 1, pad)
    pred_b = np.where(hit_b | fp_b, 1, pad)
    pred_t = np.where(hit_t | fp_t, 1, pad)
    ob, ot = {"tag_pred": pred_b, "tag_gold": gold}, {"tag_pred": pred_t, "tag_gold": gold}
    r = decide_aggregate(_ENT_F1, ob, ot, n, max_drop=MENT)
    return r.verdict, r.method, ""


# -- path: per-example NLL (continuous scores, compare_scores) ---------------------------------
MNLL = 0.1  # nats


def change_sizes(rng: np.random.Generator, n: int, big: float, params: dict) -> np.ndarray | float:
    """Sizes of the rare changes: ``big`` itself, or random with mean ``big``: ``"sizes":
    "pareto"`` (Pareto with tail index ``"tail"``: P(X > x) = (x_m / x)^tail, infinite variance
    below 2, infinite fourth moment below 4) or ``"lognormal"`` (log-sd ``"sigma"``)."""
    kind = params.get("sizes")
    if kind is None:
        return big
    if kind == "pareto":
        a = params["tail"]
        return big * (1.0 + rng.pareto(a, n)) * (a - 1.0) / a  # classic Pareto, x_m = 1, mean a / (a - 1)
    if kind == "lognormal":
        sg = params["sigma"]
        return big * np.exp(rng.normal(-0.5 * sg * sg, sg, n))
    raise ValueError(kind)


def noise_of(rng: np.random.Generator, n: int, s: float, params: dict) -> np.ndarray:
    """Normal noise of sd s, or Student t with ``"noise_df"`` degrees of freedom scaled to sd s."""
    df = params.get("noise_df")
    if df is None:
        return rng.normal(0, s, n)
    return s * rng.standard_t(df, n) / math.sqrt(df / (df - 2.0))


def sim_nll(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    s, p_bad, big = sc.params["noise"], sc.params.get("p_bad", 0.0), sc.params.get("big", 0.0)
    shift = (MNLL if at_margin else 0.0) - p_bad * big  # big: the mean size of a rare change
    base = 3.0 + rng.normal(0, 0.5, n)
    bad = rng.random(n) < p_bad
    noise = noise_of(rng, n, s, sc.params)
    tuned = base + shift + noise + np.where(bad, change_sizes(rng, n, big, sc.params), 0.0)
    r = decide_scores(base, tuned, max_drop=MNLL, higher_is_better=False)
    return r.verdict, r.method, ""


# -- path: per-example scores in a declared range (compare_scores(score_range=...)) -----------
MRANGE = 0.05
RANGE = (0.0, 1.0)


def sim_range(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    """Loss-like scores (lower is better) inside RANGE by construction, so the true drop is exact:
    base = c + 0.4 Beta(2, 2) (c = 0.1, or 0.45 when the rare change is an improvement), tuned =
    base + shift + uniform noise of half-width w + ``big`` on a fraction p_bad of the examples."""
    w, p_bad, big = sc.params["noise"], sc.params.get("p_bad", 0.0), sc.params.get("big", 0.0)
    rel = sc.params.get("relative", False)
    centre = 0.1 if big >= 0 else 0.45
    base = centre + 0.4 * rng.beta(2.0, 2.0, n)
    mean_b = centre + 0.2
    target = (MRANGE if at_margin else 0.0) * (mean_b if rel else 1.0)
    shift = target - p_bad * big
    bad = rng.random(n) < p_bad
    tuned = base + shift + rng.uniform(-w, w, n) + np.where(bad, big, 0.0)
    kw = {
        "max_drop": MRANGE,
        "relative": rel,
        "alpha": ALPHA,
        "higher_is_better": False,
        "seed": SEED,
        "score_range": RANGE,
    }
    r = stats.compare_scores(base, tuned, **_fast(stats.compare_scores, kw))
    return r.verdict, r.method, ""


# -- path: perplexity (ratio of sums, relative) ------------------------------------------------
MPPL = 0.05  # relative


def _lm_lengths(rng: np.random.Generator, n: int, skewed: bool, sd: float = 1.0) -> np.ndarray:
    """Tokens per text: log-normal (median 30, log-sd ``sd``) when skewed, else 2 + Poisson(30)."""
    if skewed:
        return np.maximum(2, np.round(np.exp(rng.normal(math.log(30), sd, n)))).astype(float)
    return (2 + rng.poisson(30, n)).astype(float)


def sim_ppl(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    s, p_bad, big = sc.params["noise"], sc.params.get("p_bad", 0.0), sc.params.get("big", 0.0)
    shift = (math.log1p(MPPL) if at_margin else 0.0) - p_bad * big
    ntok = _lm_lengths(rng, n, sc.params.get("skewed", False), sc.params.get("len_sd", 1.0))
    mu = 3.0 + rng.normal(0, 0.3, n)
    bad = rng.random(n) < p_bad
    nll_b = ntok * mu
    noise = rng.normal(0, s, n)
    nll_t = ntok * (mu + shift + noise + np.where(bad, change_sizes(rng, n, big, sc.params), 0.0))
    ob, ot = {"nll": nll_b, "ntok": ntok}, {"nll": nll_t, "ntok": ntok}
    r = decide_aggregate(PERPLEXITY, ob, ot, n, max_drop=MPPL, relative=True)
    return r.verdict, r.method, ""


# -- path: WER (errors / words) ----------------------------------------------------------------
MWER = 0.02
WER_B = 0.15


def sim_wer(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    q_pos = sc.params["q_pos"]
    q_neg = ((MWER if at_margin else 0.0) + WER_B * q_pos) / (1 - WER_B)
    if sc.params["skewed"]:
        words = np.maximum(1, np.round(np.exp(rng.normal(math.log(8), 1.0, n)))).astype(np.int64)
        w = rng.beta(0.5, 0.5 * (1 - WER_B) / WER_B, n)  # mean WER_B, many perfect, some terrible
    else:
        words = 1 + rng.poisson(11, n)
        w = np.full(n, WER_B)
    err_b = rng.binomial(words, w)
    new = rng.binomial(words - err_b, q_neg)
    fixed = rng.binomial(err_b, q_pos)
    err_t = err_b + new - fixed
    ob = {"word_errors": err_b.astype(float), "ref_words": words.astype(float)}
    ot = {"word_errors": err_t.astype(float), "ref_words": words.astype(float)}
    r = decide_aggregate(WER, ob, ot, n, max_drop=MWER)
    return r.verdict, r.method, ""


# -- path: per-class budgets (exact, class by class) -------------------------------------------
MCLASS = 0.10


def class_sizes(n: int, k: int, kind: str) -> np.ndarray:
    """Stratified class sizes summing to n (largest remainders); classes of size 0 are absent."""
    pi = _class_probs(kind, k)
    raw = pi * n
    sizes = np.floor(raw).astype(int)
    rest = n - sizes.sum()
    sizes[np.argsort(-(raw - sizes), kind="stable")[:rest]] += 1
    return sizes[sizes > 0]


class ClassVerdicts:
    """Verdict of one class as a function of (m, b, c) -- m examples, b negative and c positive
    flips -- with K classes present, batched: one ``class_drops`` call decides K different classes
    (of any sizes), since each class is decided on its own counts and the number of classes."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.cache: dict[tuple, object] = {}
        self.calls = 0

    def verdicts(self, triples: list[tuple[int, int, int]]) -> dict[tuple[int, int, int], str]:
        todo = list(dict.fromkeys(t for t in triples if t not in self.cache))
        pad = todo[-1] if todo else (1, 0, 0)
        for s in range(0, len(todo), self.k):
            batch = todo[s : s + self.k]
            batch = batch + [pad] * (self.k - len(batch))
            sizes = [m for m, _, _ in batch]
            total = sum(sizes)
            base, tuned = np.ones(total), np.ones(total)
            labels = np.repeat(np.arange(self.k), sizes)
            o = 0
            for m, b, c in batch:
                tuned[o : o + b] = 0.0
                base[o + b : o + b + c] = 0.0
                o += m
            res = stats.class_drops(base, tuned, labels, limit=MCLASS, alpha=ALPHA)
            self.calls += 1
            by_name = {r.name: r.verdict for r in res}
            for j, t in enumerate(batch):
                self.cache[t] = by_name[str(j)]
        return {t: self.cache[t] for t in triples}  # type: ignore[misc]

    def thresholds(self, mcs: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        """Per (m, c): (largest b that PASSes or -1, smallest b that FAILs or m - c + 1); bisection
        on b for all of them at once, K probes per ``class_drops`` call (the verdict is monotone in
        b at fixed m and c)."""
        todo = [mc for mc in dict.fromkeys(mcs) if ("thr", *mc) not in self.cache]
        state = {mc: [-1, mc[0] - mc[1] + 1, -1, mc[0] - mc[1] + 1] for mc in todo}  # pass lo/hi, fail lo/hi
        while True:
            probes = []
            for (m, c), (plo, phi, flo, fhi) in state.items():
                if phi - plo > 1:
                    probes.append(("p", (m, c), (m, (plo + phi) // 2, c)))
                if fhi - flo > 1:
                    probes.append(("f", (m, c), (m, (flo + fhi) // 2, c)))
            if not probes:
                break
            verdicts = self.verdicts([t for _, _, t in probes])
            for side, mc, t in probes:
                v, st = verdicts[t], state[mc]
                if side == "p":
                    st[0 if v == stats.PASS else 1] = t[1]
                else:
                    st[3 if v == stats.FAIL else 2] = t[1]
        for mc, (plo, _, _, fhi) in state.items():
            self.cache[("thr", *mc)] = (plo, fhi)
        return {mc: self.cache[("thr", *mc)] for mc in mcs}  # type: ignore[misc]

    @staticmethod
    def needed(m: int, p_pos: float) -> list[tuple[int, int]]:
        c_lo, c_hi = support(binom_pmf(m, p_pos))
        return [(m, c) for c in range(c_lo, c_hi + 1)]

    def probabilities(self, m: int, p_neg: float, p_pos: float) -> tuple[float, float]:
        """(P(class passes), P(class fails)) for a class of m examples, exactly."""
        pc = binom_pmf(m, p_pos)
        need = self.needed(m, p_pos)
        thr = self.thresholds(need)
        q = p_neg / (1 - p_pos)
        p_pass = p_fail = 0.0
        for _, c in need:
            cdf = np.cumsum(binom_pmf(m - c, q))
            t_pass, t_fail = thr[(m, c)]
            if t_pass >= 0:
                p_pass += pc[c] * float(cdf[t_pass])
            if t_fail <= m - c:
                p_fail += pc[c] * float(1.0 - (cdf[t_fail - 1] if t_fail > 0 else 0.0))
        return min(p_pass, 1.0), min(p_fail, 1.0)


_class_tables: dict[int, ClassVerdicts] = {}


def _class_check_separable(cv: ClassVerdicts) -> bool:
    """The batching assumes a class's verdict depends on its own counts and K only: spot-check it."""
    triples = [(30, 3, 0), (40, 5, 1), (30, 0, 0), (60, 8, 2)]
    first = ClassVerdicts(cv.k).verdicts(triples)
    second = ClassVerdicts(cv.k).verdicts(list(reversed(triples)) + [(20, 1, 1)])
    return all(first[t] == second[t] for t in triples)


def exact_classes(k: int) -> Callable[[int, Scenario], Cell]:
    def run(n: int, sc: Scenario) -> Cell:
        sizes = class_sizes(n, k, sc.params["classes"])
        kk = sizes.size  # classes present (Bonferroni counts these)
        cv = _class_tables.setdefault(kk, ClassVerdicts(kk))
        p_pos = sc.params["p_pos"]
        distinct = [int(m) for m in np.unique(sizes)]
        cv.thresholds([mc for m in distinct for mc in cv.needed(m, p_pos)])  # every size in one batched search
        fail_none = pass_all_zero = 1.0
        for m in distinct:
            count = int((sizes == m).sum())
            _, f_lim = cv.probabilities(m, p_pos + MCLASS, p_pos)
            p0, _ = cv.probabilities(m, p_pos, p_pos)
            fail_none *= (1 - f_lim) ** count
            pass_all_zero *= p0**count
        p_lim_pass, _ = cv.probabilities(int(sizes.max()), p_pos + MCLASS, p_pos)
        note = (
            f"{kk} classes present, sizes {sizes.min()}-{sizes.max()}; false PASS: the largest class at the budget, "
            "the others certain to pass; false FAIL: every class at the budget"
        )
        if not _class_check_separable(cv):
            note += "; WARNING: class verdicts not separable, exact batching invalid"
        return Cell(
            f"per-class budget, {k} classes",
            sc.name,
            n,
            Rate(p_lim_pass, 0, 0),
            Rate(1 - fail_none, 0, 0),
            Rate(pass_all_zero, 0, 0),
            "class_drops",
            note,
        )

    return run


SCEN_CLASS = [
    Scenario("churn low", {"p_pos": 0.01, "classes": "balanced"}),
    Scenario("churn high", {"p_pos": 0.10, "classes": "balanced"}),
    Scenario("skewed: Zipf class sizes", {"p_pos": 0.01, "classes": "zipf"}),
]


# -- path: NFR budget (exact) -------------------------------------------------------------------
def exact_nfr(n: int, sc: Scenario) -> Cell:
    limit = sc.params["limit"]

    def verdict(b: int) -> str:
        base, tuned = paired_arrays(b, 0, n)
        return stats.nfr_budget(base, tuned, limit=limit, alpha=ALPHA).verdict

    # PASS iff b <= t_pass, FAIL iff b >= t_fail (monotone in b): bisection over b in [0, n]
    def largest(pred: Callable[[int], bool]) -> int:
        if not pred(0):
            return -1
        lo, hi = 0, n + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if pred(mid) else (lo, mid)
        return lo

    def smallest(pred: Callable[[int], bool]) -> int:
        if not pred(n):
            return n + 1
        lo, hi = -1, n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if pred(mid) else (mid, hi)
        return hi

    t_pass = largest(lambda b: verdict(b) == stats.PASS)
    t_fail = smallest(lambda b: verdict(b) == stats.FAIL)

    def probs(p: float) -> tuple[float, float]:
        cdf = np.cumsum(binom_pmf(n, p))
        pp = float(cdf[t_pass]) if t_pass >= 0 else 0.0
        pf = float(1 - cdf[t_fail - 1]) if 0 < t_fail <= n else 0.0
        if t_fail == 0:
            pf = 1.0
        return min(pp, 1.0), max(pf, 0.0)

    fp, ff = probs(limit)
    pw, _ = probs(limit / 2)
    return Cell(
        "NFR budget",
        sc.name,
        n,
        Rate(fp, 0, 0),
        Rate(ff, 0, 0),
        Rate(pw, 0, 0),
        "nfr_budget",
        f"PASS iff flips <= {t_pass}, FAIL iff flips >= {t_fail}; power at NFR = {limit / 2:g}",
    )


SCEN_NFR = [
    Scenario("budget 0.01", {"limit": 0.01}),
    Scenario("budget 0.05", {"limit": 0.05}),
    Scenario("budget 0.20", {"limit": 0.20}),
]


# -- path: the combined check (main drop + class budget + NFR), as session._decide does it -------
COMB_K = 10


def decide_combined(
    base: np.ndarray, tuned: np.ndarray, labels: np.ndarray, *, margin: float, class_limit: float, nfr_limit: float
) -> tuple[str, str]:
    """Mirror of ``Session._decide`` for a 0/1 task with max_drop, max_class_drop and max_nfr: the
    FAIL side's alpha split over the check's three FAIL parts (where this version supports it),
    each PASS bound at the full alpha, verdicts combined fail > inconclusive > pass."""
    split = _accepts(stats.class_drops, "fail_alpha")
    fail_alpha = ALPHA / 3 if split else None
    cmp = decide_scores(base, tuned, max_drop=margin, fail_alpha=fail_alpha)
    verdicts = [cmp.verdict]
    bc, tc = base.astype(bool), tuned.astype(bool)
    extra = {"fail_alpha": fail_alpha} if split else {}
    per_class = stats.class_drops(bc.astype(float), tc.astype(float), labels, limit=class_limit, alpha=ALPHA, **extra)
    verdicts.extend(c.verdict for c in per_class)
    extra = {"fail_alpha": fail_alpha} if _accepts(stats.nfr_budget, "fail_alpha") and split else {}
    nb = stats.nfr_budget(bc.astype(float), tc.astype(float), limit=nfr_limit, alpha=ALPHA, **extra)
    verdicts.append(nb.verdict)
    return stats.combine_verdicts(*verdicts), cmp.method + (
        " + alpha/3 per FAIL part" if split else " + full alpha per part"
    )


SCEN_COMB = [
    # half the classes lose class_limit with p_neg = nfr + class_limit/2, the other half lose nothing; overall
    # drop = class_limit / 2 = margin, overall negative-flip rate = the NFR budget
    Scenario("churn low", {"nfr": 0.06, "classes": "balanced"}),
    Scenario("churn high", {"nfr": 0.20, "classes": "balanced"}),
    Scenario("skewed: Zipf class sizes", {"nfr": 0.08, "classes": "zipf"}),
]
COMB_CLASS_LIMIT = 0.10
COMB_MARGIN = 0.05


def sim_combined(rng: np.random.Generator, n: int, sc: Scenario, at_margin: bool) -> tuple[str, str, str]:
    nfr = sc.params["nfr"]
    sizes = class_sizes(n, COMB_K, sc.params["classes"])
    labels = np.repeat(np.arange(sizes.size), sizes)
    k = sizes.size
    # per-class drops: the even-numbered classes lose exactly the class budget, the others the
    # drop that brings the overall drop to the margin; a common churn level s sets the overall
    # negative-flip rate to the NFR budget. At drop 0: every class and the whole set drop 0.
    if at_margin:
        losing = np.arange(k) % 2 == 0
        share = float(sizes[losing].sum()) / n
        d_keep = (COMB_MARGIN - share * COMB_CLASS_LIMIT) / (1 - share)
        d = np.where(losing, COMB_CLASS_LIMIT, d_keep)[labels]
    else:
        d = np.zeros(n)
    level = nfr - float(np.mean(np.maximum(d, 0.0))) if at_margin else nfr / 2
    p_neg = level + np.maximum(d, 0.0)
    p_pos = level + np.maximum(-d, 0.0)
    u = rng.random(n)
    neg = u < p_neg
    pos = (u >= p_neg) & (u < p_neg + p_pos)
    base = np.where(neg, 1.0, np.where(pos, 0.0, (rng.random(n) < BASE_ACC).astype(float)))
    tuned = np.where(neg, 0.0, np.where(pos, 1.0, base))
    verdict, method = decide_combined(
        base, tuned, labels, margin=COMB_MARGIN, class_limit=COMB_CLASS_LIMIT, nfr_limit=nfr
    )
    return verdict, method, ""


# -- path: sequential (early stopping) ----------------------------------------------------------
def sequential_cell(n: int, sc: Scenario, reps: int, seed: int) -> Cell:
    """Vectorised with ``sequential.settle`` (the rule ``sequential_decide`` applies), cross-checked
    against ``sequential_decide`` on the first sequences."""
    p_pos = sc.params["p_pos"]
    chunk = max(BATCH_SIZE, n // 20)
    looks = np.asarray(sequential.chunk_looks(n, chunk))
    out = {}
    used_txt = ""
    for label, p_neg in (("margin", p_pos + M01), ("zero", p_pos)):
        rng = np.random.default_rng([seed, n, int(p_neg * 1e6), int(p_pos * 1e6)])
        codes, used = [], []
        done = 0
        while done < reps:
            k = min(max(1, 4_000_000 // n), reps - done)
            u = rng.random((k, n))
            d = np.where(u < p_neg, 1.0, np.where(u < p_neg + p_pos, -1.0, 0.0))
            first, code = sequential.settle(d, margin=M01, looks=looks, alpha=ALPHA)
            if done == 0:  # the public decision gives the same verdicts on the first sequences
                for i in range(min(20, k)):
                    base, tuned = (d[i] != -1).astype(float), (d[i] != 1).astype(float)
                    res = sequential.sequential_decide(base, tuned, max_drop=M01, alpha=ALPHA, looks=looks)
                    want = {1: "pass", -1: "fail", 0: "inconclusive"}[int(code[i])]
                    assert res.verdict == want, (res.verdict, want)
            codes.append(code)
            used.append(np.where(first >= 0, looks[np.maximum(first, 0)], n) / n)
            done += k
        c = np.concatenate(codes)
        out[label] = (int((c == 1).sum()), int((c == -1).sum()), c.size, float(np.concatenate(used).mean()))
    fp = rate_of(out["margin"][0], out["margin"][2])
    ff = rate_of(out["margin"][1], out["margin"][2])
    pw = rate_of(out["zero"][0], out["zero"][2])
    used_txt = f"mean share of the set used: {out['zero'][3]:.0%} at drop 0, {out['margin'][3]:.0%} at the margin; chunk {chunk}"
    refused = refused_01(M01)(n)
    return Cell(
        "sequential (early stop)", sc.name, n, fp, ff, pw, "betting CS", "; ".join(x for x in (refused, used_txt) if x)
    )


# =============================================================================================
# The table of paths
# =============================================================================================

SCEN_CHURN_Q = [
    Scenario("churn low", {"q_pos": 0.05, "classes": "balanced", "skewed": False}),
    Scenario("churn high", {"q_pos": 0.30, "classes": "balanced", "skewed": False}),
]

PATHS: list[Path] = [
    Path("abs01", "0/1 absolute", f"accuracy, max_drop {M01}", SCEN_01, exact=exact_01, refused=refused_01(M01)),
    Path("rel01", "0/1 relative", f"accuracy {BASE_ACC}, max_drop {MREL} relative", SCEN_01, simulate=sim_rel),
    Path(
        "macro_f1",
        "macro-F1",
        f"{K_F1} classes, accuracy {BASE_ACC}, max_drop {MF1}",
        SCEN_CHURN_Q + [Scenario("skewed: Zipf class sizes", {"q_pos": 0.05, "classes": "zipf", "skewed": False})],
        simulate=sim_f1,
    ),
    Path(
        "entity_f1",
        "entity F1",
        f"{WORDS} words/sentence, recall {RECALL_B}, max_drop {MENT}",
        SCEN_CHURN_Q
        + [Scenario("skewed: dense/sparse sentences", {"q_pos": 0.05, "classes": "balanced", "skewed": True})],
        simulate=sim_entity,
    ),
    Path(
        "nll",
        "per-example NLL",
        f"continuous, max_drop {MNLL} nats",
        [
            Scenario("churn low", {"noise": 0.2}),
            Scenario("churn high", {"noise": 1.0}),
            Scenario("skewed: few much worse", {"noise": 0.2, "p_bad": 0.02, "big": 4.0}),
            Scenario("skewed: few much better", {"noise": 0.2, "p_bad": 0.02, "big": -4.0}),
            Scenario("skewed: 0.5 % 8 nats worse", {"noise": 0.2, "p_bad": 0.005, "big": 8.0}),
            Scenario("skewed: 0.5 % 16 nats worse", {"noise": 0.2, "p_bad": 0.005, "big": 16.0}),
            Scenario("skewed: 0.5 % 8 nats better", {"noise": 0.2, "p_bad": 0.005, "big": -8.0}),
            Scenario("skewed: 1 % 8 nats worse, heavy noise", {"noise": 1.0, "p_bad": 0.01, "big": 8.0}),
            Scenario("light: t5 noise", {"noise": 0.5, "noise_df": 5}),
            Scenario(
                "heavy: 1 % worse by Pareto 1.5 amounts",
                {"noise": 0.2, "p_bad": 0.01, "big": 4.0, "sizes": "pareto", "tail": 1.5},
            ),
            Scenario(
                "heavy: 5 % worse by Pareto 1.5 amounts",
                {"noise": 0.2, "p_bad": 0.05, "big": 2.0, "sizes": "pareto", "tail": 1.5},
            ),
            Scenario(
                "heavy: 1 % better by Pareto 1.5 amounts",
                {"noise": 0.2, "p_bad": 0.01, "big": -4.0, "sizes": "pareto", "tail": 1.5},
            ),
            Scenario(
                "heavy: 1 % worse by Pareto 2.5 amounts",
                {"noise": 0.2, "p_bad": 0.01, "big": 4.0, "sizes": "pareto", "tail": 2.5},
            ),
            Scenario(
                "heavy: 5 % worse by Pareto 2.5 amounts",
                {"noise": 0.2, "p_bad": 0.05, "big": 2.0, "sizes": "pareto", "tail": 2.5},
            ),
            Scenario(
                "heavy: 2 % worse by log-normal amounts, sd 1",
                {"noise": 0.2, "p_bad": 0.02, "big": 4.0, "sizes": "lognormal", "sigma": 1.0},
            ),
            Scenario(
                "heavy: 1 % worse by log-normal amounts, sd 2",
                {"noise": 0.2, "p_bad": 0.01, "big": 8.0, "sizes": "lognormal", "sigma": 2.0},
            ),
        ],
        simulate=sim_nll,
    ),
    Path(
        "range",
        "scores in a declared range",
        f"score_range {RANGE}, loss-like, max_drop {MRANGE}",
        [
            Scenario("churn low", {"noise": 0.05}),
            Scenario("churn high", {"noise": 0.1}),
            Scenario("skewed: 2 % much worse", {"noise": 0.05, "p_bad": 0.02, "big": 0.4}),
            Scenario("skewed: 0.5 % much worse", {"noise": 0.05, "p_bad": 0.005, "big": 0.4}),
            Scenario("skewed: 2 % much better", {"noise": 0.05, "p_bad": 0.02, "big": -0.4}),
            Scenario("relative, skewed: 2 % much worse", {"noise": 0.05, "p_bad": 0.02, "big": 0.4, "relative": True}),
        ],
        simulate=sim_range,
    ),
    Path(
        "ppl",
        "perplexity",
        f"ratio of sums, max_drop {MPPL} relative",
        [
            Scenario("churn low", {"noise": 0.1}),
            Scenario("churn high", {"noise": 0.5}),
            Scenario(
                "skewed: few much worse, long-tailed lengths", {"noise": 0.1, "p_bad": 0.02, "big": 2.0, "skewed": True}
            ),
            Scenario(
                "skewed: 0.5 % 4 nats worse, long-tailed lengths",
                {"noise": 0.1, "p_bad": 0.005, "big": 4.0, "skewed": True},
            ),
            Scenario(
                "skewed: 2 % 2 nats better, long-tailed lengths",
                {"noise": 0.1, "p_bad": 0.02, "big": -2.0, "skewed": True},
            ),
            Scenario("light: long-tailed lengths (sd 1), no rare change", {"noise": 0.1, "skewed": True}),
            Scenario("light: lengths sd 1.5, no rare change", {"noise": 0.1, "skewed": True, "len_sd": 1.5}),
            Scenario(
                "skewed: 0.5 % 4 nats worse, lengths sd 1.5",
                {"noise": 0.1, "p_bad": 0.005, "big": 4.0, "skewed": True, "len_sd": 1.5},
            ),
            Scenario(
                "heavy: 1 % worse by Pareto 1.5 amounts",
                {"noise": 0.1, "p_bad": 0.01, "big": 2.0, "sizes": "pareto", "tail": 1.5},
            ),
            Scenario(
                "heavy: 2 % worse by Pareto 2.5 amounts, long-tailed lengths",
                {"noise": 0.1, "p_bad": 0.02, "big": 2.0, "skewed": True, "sizes": "pareto", "tail": 2.5},
            ),
        ],
        simulate=sim_ppl,
    ),
    Path(
        "wer",
        "WER",
        f"errors/words, WER {WER_B}, max_drop {MWER}",
        [
            Scenario("churn low", {"q_pos": 0.05, "skewed": False}),
            Scenario("churn high", {"q_pos": 0.30, "skewed": False}),
            Scenario("skewed: long-tailed lengths and WER", {"q_pos": 0.05, "skewed": True}),
        ],
        simulate=sim_wer,
    ),
    Path("class10", "per-class budget, 10 classes", f"max_class_drop {MCLASS}", SCEN_CLASS, exact=exact_classes(10)),
    Path("class100", "per-class budget, 100 classes", f"max_class_drop {MCLASS}", SCEN_CLASS, exact=exact_classes(100)),
    Path("nfr", "NFR budget", "max_nfr as in the scenario", SCEN_NFR, exact=exact_nfr),
    Path(
        "combined",
        "combined check",
        f"max_drop {COMB_MARGIN} + max_class_drop {COMB_CLASS_LIMIT} ({COMB_K} classes) + max_nfr",
        SCEN_COMB,
        simulate=sim_combined,
    ),
    Path("sequential", "sequential (early stop)", f"accuracy, max_drop {M01}, chunks of max(64, n/20)", SCEN_01),
]


# =============================================================================================
# Running
# =============================================================================================


#: --seed-offset: independent repetitions of cells (0, the default, keeps the table's own seeds)
SEED_OFFSET = 0
#: --min-reps given on the command line: the rate at drop 0 gets as many as the rate at the margin
MIN_REPS_GIVEN = False


def _cell_seed(path: str, scenario: str, n: int) -> list[int]:
    return [SEED, sum(map(ord, path)) * 7919 + sum(map(ord, scenario)), n] + ([SEED_OFFSET] if SEED_OFFSET else [])


def simulate_cell(path: Path, sc: Scenario, n: int, reps: int, cell_seconds: float, min_reps: int) -> Cell:
    t0 = time.perf_counter()
    methods: dict[str, int] = {}
    counts = {"margin": [0, 0, 0], "zero": [0, 0, 0]}  # pass, fail, reps
    budget = {"margin": 0.65 * cell_seconds, "zero": 0.35 * cell_seconds}
    for label, at_margin in (("margin", True), ("zero", False)):
        rng = np.random.default_rng(_cell_seed(path.key, sc.name, n) + [int(at_margin)])
        start = time.perf_counter()
        # --min-reps given: both rates get that many (fixed reps; with --reps equal to it, exactly that many)
        need = min_reps if label == "margin" or MIN_REPS_GIVEN else max(min_reps // 2, 1)
        while counts[label][2] < reps:
            if counts[label][2] >= need and time.perf_counter() - start > budget[label]:
                break
            verdict, method, _ = path.simulate(rng, n, sc, at_margin)
            methods[method] = methods.get(method, 0) + 1
            counts[label][0] += verdict == stats.PASS
            counts[label][1] += verdict == stats.FAIL
            counts[label][2] += 1
    m = counts["margin"]
    z = counts["zero"]
    method = ", ".join(
        f"{k}" if len(methods) == 1 else f"{k} {v / sum(methods.values()):.0%}"
        for k, v in sorted(methods.items(), key=lambda kv: -kv[1])
    )
    return Cell(
        path.title,
        sc.name,
        n,
        rate_of(m[0], m[2]),
        rate_of(m[1], m[2]),
        rate_of(z[0], z[2]),
        method,
        path.refused(n),
        time.perf_counter() - t0,
    )


def run_cell(args: tuple) -> Cell:
    key, sc_index, n, reps, cell_seconds, min_reps = args
    path = next(p for p in PATHS if p.key == key)
    sc = path.scenarios[sc_index]
    t0 = time.perf_counter()
    if key == "sequential":
        cell = sequential_cell(n, sc, max(2000, min(10_000, 10_000_000 // n)), SEED)
    elif path.exact is not None:
        cell = path.exact(n, sc)
    else:
        return simulate_cell(path, sc, n, reps, cell_seconds, min_reps)
    cell.seconds = time.perf_counter() - t0
    return cell


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, numpy {np.__version__}, {platform.platform()}"


def format_table(cells: list[Cell]) -> str:
    head = "| path | scenario | n | false PASS at margin (SE) | false FAIL at margin (SE) | PASS at drop 0 (SE) | reps | decided by | flags / notes |"
    rule = "|---|---|---:|---|---|---|---:|---|---|"
    rows = [head, rule]
    for c in cells:
        reps = "exact" if c.false_pass.reps == 0 else f"{c.false_pass.reps}/{c.power.reps}"
        flags = c.flags()
        notes = "; ".join(([f"**{f}**" for f in flags]) + ([c.note] if c.note else []))
        rows.append(
            f"| {c.path} | {c.scenario} | {c.n} | {c.false_pass.text()} | {c.false_fail.text()} | {c.power.text()} | {reps} | {c.method} | {notes} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: n in {50, 300, 1000}, at most 60 reps, 1 s a cell")
    ap.add_argument("--reps", type=int, default=2000, help="target repetitions per simulated rate (default 2000)")
    ap.add_argument(
        "--min-reps",
        type=int,
        default=None,
        help="at least this many per rate even past the time budget (default 30, and half of it at drop 0; "
        "given: this many for both rates, so --reps N --min-reps N fixes every simulated cell at N)",
    )
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=35.0,
        help="wall-clock budget shared by the simulated cells (default 35; exact cells are extra, seconds)",
    )
    ap.add_argument(
        "--cell-seconds",
        type=float,
        default=None,
        help="time budget of one simulated cell, both rates (default: the budget over the simulated cells)",
    )
    ap.add_argument("--paths", default="all", help="comma-separated subset of: " + ", ".join(p.key for p in PATHS))
    ap.add_argument("--sizes", default=None, help="comma-separated n values (default 50,100,300,1000,5000)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument(
        "--scenarios", default=None, help="comma-separated substrings: only scenarios whose name contains one"
    )
    ap.add_argument(
        "--seed-offset", type=int, default=0, help="independent repetitions with other seeds (default 0: the table's)"
    )
    args = ap.parse_args(argv)
    global SEED_OFFSET, MIN_REPS_GIVEN
    SEED_OFFSET = args.seed_offset
    MIN_REPS_GIVEN = args.min_reps is not None
    if args.min_reps is None:
        args.min_reps = 30
    sizes = SIZES
    if args.quick:
        sizes, args.reps, args.min_reps, args.cell_seconds = (50, 300, 1000), 60, 20, 1.0
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    keys = [p.key for p in PATHS] if args.paths == "all" else args.paths.split(",")
    unknown = [k for k in keys if k not in {p.key for p in PATHS}]
    if unknown:
        ap.error(f"unknown path(s) {unknown}; choose from {[p.key for p in PATHS]}")
    n_sim = sum(len(p.scenarios) * len(sizes) for p in PATHS if p.key in keys and p.simulate is not None)
    if args.cell_seconds is None:
        args.cell_seconds = max(1.0, 0.92 * args.budget_minutes * 60 * max(args.jobs, 1) / max(n_sim, 1))
    wanted = None if args.scenarios is None else [w.strip() for w in args.scenarios.split(",")]
    jobs = [
        (p.key, i, n, args.reps, args.cell_seconds, args.min_reps)
        for p in PATHS
        if p.key in keys
        for i in range(len(p.scenarios))
        for n in sizes
        if wanted is None or any(w in p.scenarios[i].name for w in wanted)
    ]
    t0 = time.perf_counter()
    print(f"# Calibration of every decision path (alpha = {ALPHA})\n")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(
        f"settings: reps target {args.reps}, at least {args.min_reps}, {args.cell_seconds:g} s per simulated cell, jobs {args.jobs}\n"
    )
    print("paths and margins:")
    for p in PATHS:
        if p.key in keys:
            print(
                f"- {p.title} [{p.key}]: {p.margin_text}; scenarios: "
                + "; ".join(f"{s.name} {s.params}" for s in p.scenarios)
            )
    print()
    sys.stdout.flush()
    cells: list[Cell] = []

    def emit(cell: Cell) -> None:  # progress (and the row, should the run be cut short) on stderr
        cells.append(cell)
        print(
            f"[{time.perf_counter() - t0:6.0f} s] {len(cells)}/{len(jobs)} " + format_table([cell]).split("\n", 2)[2],
            file=sys.stderr,
            flush=True,
        )

    # the slowest cells first (large n, exact enumeration), so the workers finish together
    order = sorted(range(len(jobs)), key=lambda i: (-jobs[i][2], jobs[i][0] not in ("abs01", "class10", "class100")))
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.jobs) as pool:
            for cell in pool.imap_unordered(run_cell, [jobs[i] for i in order]):
                emit(cell)
    else:
        for i in order:
            emit(run_cell(jobs[i]))
    rank = {
        (p.title, s.name, n): (pi, si, n)
        for pi, p in enumerate(PATHS)
        for si, s in enumerate(p.scenarios)
        for n in sizes
    }
    cells.sort(key=lambda c: rank[(c.path, c.scenario, c.n)])
    print(format_table(cells))
    over = [c for c in cells if c.flags()]
    print()
    print(
        f"{len(cells)} cells in {time.perf_counter() - t0:.0f} s; {len(over)} above alpha + 3 SE (exact: above alpha; "
        "SE: the larger of the observed rate's and sqrt(alpha (1 - alpha) / reps))"
    )
    for c in over:
        print(
            f"- {c.path} / {c.scenario} / n={c.n}: {', '.join(c.flags())} "
            f"(false PASS {c.false_pass.text()}, false FAIL {c.false_fail.text()})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
