"""A :class:`Ratio` metric (a macro average of ratios of per-example sums) as validated arrays, with
its vectorised value, delta-method standard errors, resamples and smooth-function form."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .bootstrap import _count_chunks, _distinct_rows, _group_sizes, _SmoothMean, _too_many_groups
from .verdict import Ratio

#: "not computed yet" for lazily built attributes
_UNSET: Any = object()


class _RatioParts:
    """Validated :class:`Ratio` arrays as (n, K) floats, plus the vectorised statistic."""

    def __init__(self, ratio: Ratio, n: int) -> None:
        if ratio.transform not in ("identity", "exp"):
            raise ValueError(f"Ratio.transform must be 'identity' or 'exp', got {ratio.transform!r}")
        arrays = []
        for name in ("num_base", "den_base", "num_tuned", "den_tuned"):
            arr = np.asarray(getattr(ratio, name), dtype=float)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"Ratio.{name} must have one row per example ({n}), got shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"Ratio.{name} contains NaN/Inf")
            arrays.append(arr)
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"Ratio arrays must have one shape, got {sorted(shapes)}")
        self.yb, self.xb, self.yt, self.xt = arrays
        if (self.xb < 0).any() or (self.xt < 0).any():
            raise ValueError("Ratio denominators must be non-negative")
        self.n = n
        self.exp = ratio.transform == "exp"
        self.present_b = self.xb.sum(axis=0) > 0
        self.present_t = self.xt.sum(axis=0) > 0
        if not self.present_b.any() or not self.present_t.any():
            raise ValueError("Ratio denominators sum to 0 on the whole eval set: the metric is undefined")
        self.width = self.yb.shape[1]
        self.unchanged = bool(np.array_equal(self.yb, self.yt) and np.array_equal(self.xb, self.xt))
        self.den_fixed = bool(ratio.den_fixed)
        # the bootstrap resamples groups of identical examples when there are few of them
        self.sizes = None
        if not _too_many_groups(*arrays):
            codes, first = _distinct_rows(*arrays)
            self.sizes = _group_sizes(codes, first.size, n)
        self.grouped = tuple(a[first] for a in arrays) if self.sizes is not None else tuple(arrays)
        self._gram: Any = _UNSET

    @property
    def gram(self) -> Any:
        """Per-example resamples of a metric with one or two columns: the SE from a weighted Gram
        matrix of the centred per-example inputs, one (rows x n) product instead of several
        passes. Built at first use (the analytic large-n path never needs it); None otherwise."""
        if self._gram is _UNSET:
            self._gram = None
            if self.sizes is None and self.width <= 2:
                z = np.concatenate([self.yb, self.xb, self.yt, self.xt], axis=1)
                centre = z.mean(axis=0)
                u = z - centre
                iu, ju = np.triu_indices(z.shape[1])
                self._gram = (np.concatenate([z, u[:, iu] * u[:, ju]], axis=1), centre, iu, ju)
        return self._gram

    @gram.setter
    def gram(self, value: Any) -> None:
        self._gram = value

    def replicates(self, relative: bool, hib: bool, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Drops and SEs of the seeded resamples (group counts when few groups, else per example)."""
        grouped = self.sizes is not None
        chunks = [
            self.drop_and_se(w, relative, hib, grouped=grouped)
            for w in _count_chunks(self.sizes, self.n, n_boot, seed, self.width)
        ]
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def smooth(self, relative: bool, hib: bool) -> _SmoothMean:
        """The drop as a function of the means of z = (num_base, den_base, num_tuned, den_tuned),
        gradient from :meth:`_terms` (the linearisation the bootstrap-t's SE uses)."""
        z = np.concatenate([self.yb, self.xb, self.yt, self.xt], axis=1)
        kk = self.width
        sign = 1.0 if hib else -1.0

        def grad(m: np.ndarray) -> tuple[float, np.ndarray]:
            s = m[None, :] * self.n
            vb, ab, gb = self._terms(s[:, :kk], s[:, kk : 2 * kk], self.present_b)
            vt, at, gt = self._terms(s[:, 2 * kk : 3 * kk], s[:, 3 * kk :], self.present_t)
            # _terms' coefficients are per example of a sum over n: the gradient in the means
            drop = sign * (vb - vt)
            beta = sign * np.concatenate([ab, gb, -at, -gt], axis=1)
            if relative:
                own = np.concatenate([ab, gb, np.zeros_like(at), np.zeros_like(gt)], axis=1)
                drop = drop / np.abs(vb)
                beta = (beta - (drop * np.sign(vb))[:, None] * own) / np.abs(vb)[:, None]
            return float(drop[0]), beta[0]

        return _SmoothMean(z, grad)

    def _model(self, w: np.ndarray, y: np.ndarray, x: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, alpha, gamma = self._terms(w @ y, w @ x, present)
        return value, alpha @ y.T + gamma @ x.T

    def full_weights(self) -> np.ndarray:
        """The whole eval set as resample counts: 1 per example, or the group sizes."""
        return np.ones((1, self.n)) if self.sizes is None else self.sizes[None, :]

    def values(self) -> tuple[float, float]:
        w = self.full_weights()
        yb, xb, yt, xt = self.grouped
        vb, _ = self._model(w, yb, xb, self.present_b)
        vt, _ = self._model(w, yt, xt, self.present_t)
        return float(vb[0]), float(vt[0])

    def drop_and_se(
        self, w: np.ndarray, relative: bool, hib: bool, grouped: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Drops and delta-method SEs of resamples given as counts ``w`` per example, or per
        group of identical examples (``grouped``: the rows of ``self.grouped``); the same sums."""
        if not grouped and w.shape[0] > 1 and self.gram is not None:
            return self._drop_and_se_gram(w, relative, hib)
        yb, xb, yt, xt = self.grouped if grouped else (self.yb, self.xb, self.yt, self.xt)
        vb, ib = self._model(w, yb, xb, self.present_b)
        vt, it = self._model(w, yt, xt, self.present_t)
        sign = 1.0 if hib else -1.0
        drop = sign * (vb - vt)
        infl = sign * (ib - it)
        if relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                drop = drop / np.abs(vb)
                infl = (infl - (drop * np.sign(vb))[:, None] * ib) / np.abs(vb)[:, None]
        # A resample where the base value is 0 (relative drops) has an infinite influence, and
        # 0 * inf is NaN: that resample's standard error is undefined (it then counts against
        # both a PASS and a FAIL in _studentized_bounds), not a RuntimeWarning.
        with np.errstate(invalid="ignore", over="ignore"):
            var = np.sum(w * infl * infl, axis=1) / max(self.n - 1, 1)
        var = np.where(np.isfinite(var), var, np.nan)
        return drop, np.sqrt(var / self.n)

    def _terms(self, sy: np.ndarray, sx: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A model's value and the coefficients of its influence values, infl_i = alpha . y_i
        + gamma . x_i (the same linearisation as :meth:`_model`)."""
        k = float(present.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(sx > 0, sy / sx, 0.0) * present
            coef = np.where(sx > 0, present * self.n / (k * sx), 0.0)
        mean_r = r.sum(axis=1) / k
        value = np.exp(mean_r) if self.exp else mean_r
        slope = value if self.exp else np.ones_like(value)
        alpha = slope[:, None] * coef
        return value, alpha, -alpha * r

    def _drop_and_se_gram(self, w: np.ndarray, relative: bool, hib: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`drop_and_se` for per-example counts from one product with the per-example
        inputs z and the products of their centred values u = z - c: the influence of example i
        is z_i . beta, so sum_i w_i infl_i^2 = beta' G beta + 2 (c . beta) (beta . S) + n (c . beta)^2
        with G = sum w u u' and S = sum w u."""
        cols, centre, iu, ju = self.gram
        kk = self.width
        s = w @ cols
        m = 4 * kk
        sz = s[:, :m]
        vb, ab, gb = self._terms(sz[:, :kk], sz[:, kk : 2 * kk], self.present_b)
        vt, at, gt = self._terms(sz[:, 2 * kk : 3 * kk], sz[:, 3 * kk :], self.present_t)
        sign = 1.0 if hib else -1.0
        drop = sign * (vb - vt)
        beta = sign * np.concatenate([ab, gb, -at, -gt], axis=1)
        if relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                drop = drop / np.abs(vb)
                own = np.concatenate([ab, gb, np.zeros_like(at), np.zeros_like(gt)], axis=1)
                beta = (beta - (drop * np.sign(vb))[:, None] * own) / np.abs(vb)[:, None]
        gram = np.zeros((w.shape[0], m, m))
        gram[:, iu, ju] = s[:, m:]
        gram[:, ju, iu] = s[:, m:]
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            s_u = sz - total[:, None] * centre
            c_beta = beta @ centre
            quad = np.einsum("ri,rij,rj->r", beta, gram, beta)
            var = (quad + 2.0 * c_beta * np.sum(beta * s_u, axis=1) + total * c_beta * c_beta) / max(self.n - 1, 1)
        var = np.where(np.isfinite(var), np.maximum(var, 0.0), np.nan)
        return drop, np.sqrt(var / self.n)

    def influence(self, relative: bool, hib: bool) -> np.ndarray:
        """Per-example influence values of the drop on the whole eval set (the linearised terms
        whose spread is the delta-method SE of :meth:`drop_and_se`), for the tail rule."""
        w = np.ones((1, self.n))
        vb, ib = self._model(w, self.yb, self.xb, self.present_b)
        vt, it = self._model(w, self.yt, self.xt, self.present_t)
        sign = 1.0 if hib else -1.0
        infl = sign * (ib - it)
        if relative:
            drop = sign * (vb - vt) / np.abs(vb)
            infl = (infl - (drop * np.sign(vb))[:, None] * ib) / np.abs(vb)[:, None]
        return np.asarray(infl[0], dtype=float)

    def no_change_bound(self, relative: bool, hib: bool, bounded: bool) -> Callable[[float], float]:
        """Largest drop when a fraction f of the examples changes, used only when none did.

        A changed example moves a column ratio by at most its share of the denominator times
        the largest per-unit value (1 for a metric bounded in [0, 1] per unit; the sample's
        largest |num / den| otherwise), thrice that when the denominators move too (F1).

        What is exact: the shares are the eval set's own (the base model's denominators): the
        largest denominator of one example (summed over the averaged columns) and the smallest
        column total are the sample's. With ``bounded`` the bound (method "exact-no-change") is
        therefore exact *conditional on the eval set's denominators*, as the :class:`Sensitivity`
        rule is conditional on the class supports: f is bounded exactly, and turning f into a
        drop assumes that no example weighs more than the sample's heaviest and no column is
        rarer than the sample's rarest, which the sample does not prove (an example with a far
        larger denominator, absent from the sample, could move a column further). No cheap
        unconditional bound exists: a fraction f of the examples can carry any share of a
        column's total when the denominators are unbounded. Without ``bounded`` the per-unit
        value is the sample's too (method "no-change-sample-range")."""
        k = float(self.present_b.sum())
        share = self.xb.sum(axis=0)[self.present_b] / self.n
        per_example = float(self.xb[:, self.present_b].sum(axis=1).max())
        factor = 1.0 if self.den_fixed else 3.0
        if bounded:
            unit = 1.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                per_unit = np.abs(self.yb) / self.xb
            per_unit = per_unit[np.isfinite(per_unit)]
            unit = float(per_unit.max()) if per_unit.size else math.inf
        slope = factor * unit * per_example / (k * float(share.min()))
        vb, _ = self.values()

        def bound(f: float) -> float:
            move = slope * f
            if self.exp:  # exp(R + move) - exp(R), or its ratio to exp(R)
                return math.expm1(move) * (1.0 if relative else abs(vb))
            return move / (abs(vb) if relative else 1.0)

        return bound
