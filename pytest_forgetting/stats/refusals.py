"""Refusals: the sample sizes below which no method here is valid (bootstrap paths, scores or ratios
with no declared range), each answered INCONCLUSIVE with the n that would be needed."""

from __future__ import annotations

import math

import numpy as np

from .. import tail_rule as _tail
from .verdict import _N_NEEDED_CAP, INCONCLUSIVE, Comparison, _Common, _result, _Settle

#: The bootstrap paths decide only from this many examples. Below it a few examples that carry
#: the whole drop are too often absent from the sample: with 5 % of the examples forgotten badly,
#: the studentised bootstrap false-PASSes 0.076 at n = 50 and <= 0.053 from n = 100, and relative
#: perplexity 0.127 at n = 50 and 0.043 at n = 100 (1,000 simulations each).
_MIN_BOOTSTRAP_N = 100

#: Scores with no declared range (per-example NLL or log-loss, perplexity's token sums, any
#: unbounded metric) are decided by the bootstrap only from this many examples. No finite n makes
#: a test of an unbounded mean valid for every distribution (Bahadur and Savage 1956): a drop
#: carried by a few examples is missing from a sample of n with probability (1 - p)^n, and then
#: the rest of the sample looks like an improvement. From 1,000 examples the studentised bootstrap
#: keeps both error rates within alpha + 3 SE in every simulated case where the drop is carried by
#: at least 0.5 % of the examples (n p >= 5; docs/calibration.md: 0.5-2 % of the examples 4-16
#: nats worse or better, perplexity with long-tailed lengths); at 300 it reaches 0.14-0.26. A
#: declared ``score_range`` gives bounds valid at every n instead.
_MIN_UNBOUNDED_N = 1000


def _refused(n: int, need: int, drop: float, common: _Common, what: str = "") -> Comparison:
    note = what or (
        f"n={n:,} is below {need:,}, the smallest n at which a bounded aggregate metric can "
        f"be decided at a margin of {abs(common['margin']):g} and this alpha "
        "(no method here is valid below it)"
    )
    return _result(
        verdict=INCONCLUSIVE,
        drop=drop,
        low=-math.inf,
        high=math.inf,
        method="refused",
        settle=_Settle(n=need),
        note=note,
        **common,
    )


def _unbounded_refusal(
    n: int, drop: float, common: _Common, what: str = "scores", n_eff: float | None = None
) -> Comparison | None:
    """INCONCLUSIVE below _MIN_UNBOUNDED_N (effective) examples for a bootstrap of values with no
    known range. ``n_eff``: for a ratio of sums, Kish's effective size of its denominators,
    (sum den)^2 / sum den^2 -- a few long texts carry most of the tokens, and with them the drop."""
    eff = float(n) if n_eff is None else float(n_eff)
    if eff >= _MIN_UNBOUNDED_N:
        return None
    if n_eff is None:
        return _refused(
            n,
            _MIN_UNBOUNDED_N,
            drop,
            common,
            what=(
                f"n={n:,} is too small to bound a drop of {what} with no declared range: below "
                f"{_MIN_UNBOUNDED_N:,} examples a drop carried by a few of them is too often missing from the "
                "sample, so no method here is valid; declare score_range=(low, high) for a bound valid at "
                f"every n, or use at least {_MIN_UNBOUNDED_N:,} examples"
            ),
        )
    need = max(n + 1, int(math.ceil(n * _MIN_UNBOUNDED_N / max(eff, 1e-300))))
    return _refused(
        n,
        min(need, _N_NEEDED_CAP),
        drop,
        common,
        what=(
            f"the {n:,} examples weigh like {eff:,.0f} (effective size of the denominators, (sum)^2 / sum "
            f"of squares): below {_MIN_UNBOUNDED_N:,} a drop of {what} carried by a few examples is too "
            "often missing from the sample, so no method here is valid; use more examples"
        ),
    )


def _influence_refusal(infl: np.ndarray, drop: float, common: _Common, what: str, fix: str) -> Comparison | None:
    """INCONCLUSIVE when the effective size of the influence values ``infl`` (:mod:`..tail_rule`)
    is below its minimum: the change is carried by a few examples, or its variance is infinite,
    and no resampling interval is valid. No n_needed: no sample size is sure to cure it. The
    minimum is stated at the floor of 1,000 examples and moves with ``_MIN_UNBOUNDED_N`` (a test
    that lowers the floor to reach the bootstrap's arithmetic lowers both)."""
    minimum = _tail.MIN_INFLUENCE_SIZE * _MIN_UNBOUNDED_N / 1000.0
    n_inf = _tail.influence_size(infl)
    if not _tail.too_few(n_inf, minimum):
        return None
    return _result(
        verdict=INCONCLUSIVE,
        drop=drop,
        low=-math.inf,
        high=math.inf,
        method="refused",
        note=_tail.refusal_note(n_inf, what, fix, minimum),
        **common,
    )


def _bootstrap_refusal(n: int, drop: float, common: _Common, n_eff: float | None = None) -> Comparison | None:
    """INCONCLUSIVE below _MIN_BOOTSTRAP_N examples. ``n_eff``: for a ratio of sums (entity F1, WER,
    macro-F1), Kish's effective size of its denominators must reach it too: when a few sentences hold
    most of the entities or words, they carry the drop, and 100 sentences can weigh like 14."""
    eff = float(n) if n_eff is None else min(float(n), float(n_eff))
    if eff >= _MIN_BOOTSTRAP_N:
        return None
    if n < _MIN_BOOTSTRAP_N:
        return _refused(
            n,
            _MIN_BOOTSTRAP_N,
            drop,
            common,
            what=(
                f"n={n:,} is too small for a bootstrap bound: below {_MIN_BOOTSTRAP_N} examples a few "
                "examples that carry the drop are too often missing from the sample, so no method here "
                "is valid"
            ),
        )
    need = max(n + 1, int(math.ceil(n * _MIN_BOOTSTRAP_N / max(eff, 1e-300))))
    return _refused(
        n,
        min(need, _N_NEEDED_CAP),
        drop,
        common,
        what=(
            f"the {n:,} examples weigh like {eff:,.0f} (effective size of the denominators, (sum)^2 / sum "
            f"of squares): below {_MIN_BOOTSTRAP_N} a drop carried by the few examples that hold most of "
            "the weight is too often missing from the sample, so no method here is valid; use more examples"
        ),
    )


def _effective_size(*dens: np.ndarray) -> float:
    """Kish's effective sample size of per-example weights (the row sums of each denominator
    array), the smallest over the arrays: n when every example weighs the same."""
    out = math.inf
    for den in dens:
        w = den.sum(axis=1) if den.ndim == 2 else den
        out = min(out, _tail.kish_size(w))
    return out
