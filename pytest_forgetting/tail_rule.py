"""When is a resampling interval of an unbounded statistic worth anything? The effective size of
its influence values.

A mean of per-example differences (per-example NLL, log-loss) or a ratio of sums (perplexity =
sum NLL / sum tokens) is, to first order, a mean of per-example *influence values* z_i: the
centred differences d_i - mean(d), or the linearised terms of the ratio that the delta-method
standard error uses. Their effective size

    n_inf = (sum z_i^2)^2 / sum z_i^4  =  n / kurtosis(z)

says how many examples carry the variance: n / 3 for normal z, Kish's effective size of the
weights z_i^2 in general, about n p when the change is carried by a fraction p of the examples,
and O(1) at every n when the variance is infinite (a Pareto tail of index below 2: the largest
few z_i hold most of sum z_i^2). The coverage error of a studentised (bootstrap-t) interval is,
after its skewness correction, of order (kurtosis + skewness^2) / n <= 2 / n_inf (Pearson's
inequality skewness^2 <= kurtosis - 1), so n_inf, not n, is the size that decides whether the
interval can be trusted. When it is small the sample's own spread understates what the examples
it barely contains (or lacks) can do, and no resampling interval is valid; no sample size is
guaranteed to cure it either (with an infinite variance n_inf stays small however many examples
there are: Bahadur and Savage 1956). The decision core refuses such samples (INCONCLUSIVE).

Pure: numpy and the standard library only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: The smallest effective size of the influence values at which the bootstrap-t of an unbounded
#: statistic (a mean with no declared range, an unbounded ratio of sums) decides. Chosen by
#: simulation (docs/calibration.md, benchmarks/calibration.py): every scenario of drops carried
#: by a few examples, heavy-tailed (Pareto, log-normal) change sizes and long-tailed text lengths
#: stays within alpha + 3 SE counting refusals as non-errors, while normal differences (n_inf
#: about n / 3) are never refused from 1,000 examples.
MIN_INFLUENCE_SIZE = 50.0


def influence_size(values: np.ndarray) -> float:
    """(sum z^2)^2 / sum z^4 of the centred ``values`` z = values - mean(values).

    Scale-free (computed on z / max |z|, so neither squares nor fourth powers overflow); n / 3
    in expectation for normal values, about the number of examples that differ when a few
    differ by the same amount among exact ties, 1 when one value differs from all others equal.
    0.0 when every value is the same (no spread: nothing to estimate)."""
    z = np.asarray(values, dtype=float).reshape(-1)
    if z.size == 0 or not np.isfinite(z).all():
        return 0.0
    z = z - z.mean()
    top = float(np.max(np.abs(z)))
    if top == 0.0:
        return 0.0
    z = z / top
    return kish_size(z * z)


def kish_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of 1-D ``weights``: n when every example
    weighs the same, 0.0 when every weight is 0. ``influence_size`` is this of the weights z^2; the
    decision core's floor for ratios of sums (``stats.refusals._effective_size``) is this of the
    denominators."""
    sq = float(np.dot(weights, weights))
    total = float(weights.sum())
    return total * total / sq if sq > 0.0 else 0.0


def mean_influence(base: np.ndarray, diff: np.ndarray, relative: bool) -> np.ndarray:
    """Influence values of a mean of paired differences ``diff`` (signed so that positive is
    worse): d_i - mean(d); of the relative drop mean(d) / |mean(base)|, its linearisation
    ((d_i - mean d) - r sign(mean b) (b_i - mean b)) / |mean b| with r the relative drop."""
    d = np.asarray(diff, dtype=float)
    if not relative:
        centred: NDArray[np.float64] = d - d.mean()
        return centred
    b = np.asarray(base, dtype=float)
    mb, md = float(b.mean()), float(d.mean())
    r = md / abs(mb)
    z: NDArray[np.float64] = ((d - md) - r * math.copysign(1.0, mb) * (b - mb)) / abs(mb)
    return z


def too_few(n_inf: float, minimum: float = MIN_INFLUENCE_SIZE) -> bool:
    """True when the influence values' effective size is below the minimum (refuse to decide)."""
    return not (math.isfinite(n_inf) and n_inf >= minimum)


def refusal_note(n_inf: float, what: str, fix: str, minimum: float = MIN_INFLUENCE_SIZE) -> str:
    """The one-line reason of the refusal, for the INCONCLUSIVE message.

    ``what``: the statistic ("the mean difference", "the ratio metric"); ``fix``: what can settle
    it instead (a declared ``score_range``, ...)."""
    return (
        f"the change of {what} is carried by a few examples (effective size of the change "
        f"{n_inf:,.1f} < {minimum:g}, (sum z^2)^2 / sum z^4 of the per-example influence values): "
        f"no resampling interval is valid, and more examples help only if those changes are not "
        f"heavy-tailed; {fix}"
    )
