"""The statistical decision core of pytest-forgetting (pure: numpy and the standard library, no I/O,
no torch, no scipy).

The question every marker asks is *non-inferiority on paired data*: did the fine-tuned model
lose more than ``margin`` of a metric its base model had, measured on the **same** examples?
Every verdict is made from two one-sided confidence bounds of the drop:

* PASS          -- the upper bound at level ``alpha`` is below the margin;
* FAIL          -- the lower bound at level ``fail_alpha`` (``alpha`` unless the caller splits
                   it over several FAIL claims of one check) is above the margin;
* INCONCLUSIVE  -- neither, or no method here is valid at this n; the message says which, and
                   how many examples would settle it with probability 0.8 under the observed rates.

A bound that equals the margin within floating-point tolerance proves nothing.

Which bound, per path (the README section "How a verdict is decided" states the guarantees):

* 0/1 scores, absolute drop: Tango's (1998) score bounds for a difference of paired
  proportions with a continuity correction of one count on each side, and at least the exact
  Clopper-Pearson bound of the negative-flip rate when no example flipped the other way (so
  "no flips at all" passes only where it is exactly safe: ``min_n_to_pass``); mirrored on the
  FAIL side. Exact enumeration keeps both error rates <= alpha (see ``_CC_FAIL``).
* 0/1 scores, relative drop: the score interval for the ratio of paired proportions
  (Nam and Blackwelder 2002; Tang, Tang and Chan 2003), restricted maximum likelihood under the
  null solved exactly (KKT conditions, zero cells included); a continuity correction on the
  FAIL side and an exact bound when nothing flipped.
* means of continuous scores (absolute or relative), ratio statistics (perplexity = exp(sum NLL /
  sum tokens), WER = errors / words, entity F1) and macro averages of ratios (macro-F1, balanced
  accuracy): a seeded paired *studentised* bootstrap (bootstrap-t) whose standard error in
  every resample is the delta-method (linearised) one. Never decided on a resample
  distribution with no spread, below 100 examples, or (macro averages) with a class seen
  fewer than 10 times; bounded aggregates also follow ``min_n_to_pass``. From 50,000 examples
  (``_ANALYTIC_MIN_N``), where the resamples would draw an index per example (scores that rarely
  repeat), the interval the bootstrap-t approximates, computed from its one-term Edgeworth
  expansion instead (:func:`_edgeworth_bounds`, method "edgeworth-t"; Hall 1992).
* any other aggregate statistic (a bare callable): a seeded paired BCa bootstrap (Efron 1987),
  acceleration from a (grouped) jackknife.
* bounded aggregates given a :class:`Sensitivity` (macro-F1, balanced accuracy, macro
  precision / recall, AUC, ECE): when no example changed, or when every stratum's examples are
  identical (a bootstrap without spread, e.g. a collapsed head), exact bounds from the
  stratified no-change rule (:func:`_stratified_upper`), conditional on the class supports.

Budgets: per-class drops FAIL on exact bounds (Clopper-Pearson of both flip rates, Bonferroni
over classes); the negative-flip-rate budget uses Clopper-Pearson bounds. The beta quantiles
are computed here (continued fraction of the regularised incomplete beta, then bisection) and
checked against scipy in the tests.

References: T. Tango (1998), Statistics in Medicine 17, 891-908. J. Nam and W. C. Blackwelder
(2002), Statistics in Medicine 21, 689-699. N.-S. Tang, M.-L. Tang and I. S. F. Chan (2003),
Biometrics 59, 1030-1037. C. J. Clopper and E. S. Pearson (1934), Biometrika 26, 404-413.
B. Efron (1987), JASA 82, 171-185. P. Hall (1992), The Bootstrap and Edgeworth Expansion, Springer.

Layout (each module one concept; this package re-exports every name they define, private ones
included, so ``from pytest_forgetting.stats import X`` and ``stats.X`` keep working):
``verdict`` (PASS / FAIL / INCONCLUSIVE, the records, the three-way rule, reasons),
``validation`` (argument checks), ``special`` (normal and beta quantiles, Clopper-Pearson),
``paired`` (Tango, the paired ratio score interval, Wilson, the no-change bound, ``min_n_to_pass``),
``settle`` (n_needed), ``bootstrap`` (resampling, bootstrap-t, Edgeworth, BCa), ``ratio`` (the
:class:`Ratio` arrays), ``no_change`` (exact no-change and :class:`Sensitivity` rules),
``refusals`` (the sample-size floors), ``scores`` (:func:`compare_scores`), ``statistic``
(:func:`compare_statistic`), ``budgets`` (:func:`class_drops`, :func:`nfr_budget`). A constant is
read in the module that defines it: to change one (a test's monkeypatch), set it there
(``stats.bootstrap._ANALYTIC_MIN_N``, ``stats.refusals._MIN_UNBOUNDED_N``), not on this package.
"""

# The modules in dependency order (each imports only modules above it), not sorted by name:
# ruff: noqa: I001
# fmt: off
from .verdict import (  # noqa: F401
    PASS, FAIL, INCONCLUSIVE, _SEVERITY, _N_NEEDED_CAP, _TIE_RTOL, Comparison, Budget, Ratio, Sensitivity,
    _drop_of, _tol, _below, _above, _ties, _decide, _fmt_pair, _Settle, _reason, combine_verdicts, _result,
    _degenerate,
)
from .validation import (  # noqa: F401
    _check_alpha, _check_fail_alpha, _check_margin, _min_boot, _check_n_boot, _as_scores, _as_pair, _is_binary,
    _as_correct, _as_labels, _check_common,
)
from .special import (  # noqa: F401
    _z, _phi, _log_beta, _beta_fraction, _betainc, _beta_quantile, _cp_upper, _cp_lower, clopper_pearson,
    _log_beta_arr, _beta_fraction_arr, _betainc_arr, _beta_quantile_arr, _cp_upper_arr, _cp_lower_arr,
    _per_distinct,
)
from .paired import (  # noqa: F401
    _Z_CLIP, _CC_FAIL, _CC_PASS, _CC_RATIO_PASS, _decreasing_root, _tango_score, _tango_lower, _tango_bound,
    _tango_lower_arr, _paired_high_arr, tango_interval, _check_counts, _paired_bounds, _tango_lower_vec,
    _paired_bounds_vec,
    _restricted_mle, _constrained_score, _ratio_cells_a, _ratio_bound, _ratio_bound_cached,
    ratio_score_interval, wilson_bounds, _no_change_upper, min_n_to_pass,
)
from .settle import (  # noqa: F401
    _SETTLE_PROB, _SETTLE_DRAWS, _Z_SETTLE, _normal_settle, _tango_settle, _scaled_settle,
)
from .bootstrap import (  # noqa: F401
    _CHUNK_ENTRIES, _MULTINOMIAL_RATIO, _ANALYTIC_MIN_N, _EDGEWORTH_MAX_SHIFT, _EDGEWORTH_MAX_SECOND,
    _index_chunks, _bootstrap_replicates, _distinct_rows, _too_many_groups, _group_sizes, _count_chunks,
    _weights, _order_bounds, _studentized_bounds, _SmoothMean, _edgeworth_terms, _edgeworth_bounds,
    _studentized_comparison, _bca_bounds, _jackknife,
)
from .ratio import (  # noqa: F401
    _UNSET, _RatioParts,
)
from .no_change import (  # noqa: F401
    _no_change, _stratified_upper, _Sens, _check_sensitivity, _sensitivity_comparison,
)
from .refusals import (  # noqa: F401
    _MIN_BOOTSTRAP_N, _MIN_UNBOUNDED_N, _refused, _unbounded_refusal, _bootstrap_refusal, _effective_size,
    _influence_refusal,
)
from .scores import (  # noqa: F401
    compare_scores, _moment_replicates, _mean_smooth, _moment_plan, _moment_draws, _ratio_comparison,
    _range_comparison,
)
from .statistic import (  # noqa: F401
    _MIN_COLUMN_MASS, compare_statistic,
)
from .budgets import (  # noqa: F401
    _class_name, class_drops, nfr_budget,
)
# fmt: on

__all__ = [
    "PASS",
    "FAIL",
    "INCONCLUSIVE",
    "Comparison",
    "Budget",
    "Ratio",
    "Sensitivity",
    "tango_interval",
    "ratio_score_interval",
    "wilson_bounds",
    "clopper_pearson",
    "min_n_to_pass",
    "compare_scores",
    "compare_statistic",
    "class_drops",
    "nfr_budget",
    "combine_verdicts",
]
