"""The PNG of base vs tuned per check (:func:`write_plot`), with the weight-drift plot beside it.

matplotlib is imported inside :func:`write_plot` only (importing the reports stays cheap).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, cast

from pytest_forgetting import escape
from pytest_forgetting._util import atomic_write
from pytest_forgetting.errors import ConfigError
from pytest_forgetting.results import CheckRow, Verdict

from .format import (
    LABELS,
    REPORT_MODE,
    VERDICTS,
    Row,
    as_row,
    candidates,
    ci_percent,
    counts_phrase,
    drop_cell,
    finite,
    margin_cell,
    short_names,
    sort_rows,
    trim_zeros,
    truncate_left,
    verdict_of,
    without_candidate,
)

__all__ = ["write_plot"]

_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#ef8f00", "error": "#757575"}
_ALLOWED = "#66bb6a"


def _tuned_from_drop(row: CheckRow, drop: float) -> float:
    """The tuned value that a given drop means, for this row's direction and scale."""
    base = float(row.base)
    scale = abs(base) if row.relative else 1.0
    sign = -1.0 if row.higher_is_better else 1.0
    return base + sign * drop * scale


def _plot_geometry(row: CheckRow) -> dict[str, float] | None:
    if not (finite(row.base) and finite(row.drop)):
        return None
    geo = {"base": float(row.base)}
    tuned = row.tuned
    geo["tuned"] = float(tuned) if finite(tuned) else _tuned_from_drop(row, float(row.drop))
    ends = [_tuned_from_drop(row, float(v)) for v in (row.ci_low, row.ci_high) if finite(v)]
    if len(ends) == 2:
        geo["lo"], geo["hi"] = min(ends), max(ends)
    if finite(row.margin):
        geo["threshold"] = _tuned_from_drop(row, float(row.margin))
    low, high = _metric_range(row)
    return {k: min(max(v, low), high) for k, v in geo.items()}  # an interval never leaves the metric's range


def _metric_range(row: CheckRow) -> tuple[float, float]:
    """Where the metric's values can lie: [0, 1] for bounded metrics, [0, inf) for losses and perplexities."""
    if row.is_bounded:
        return 0.0, 1.0
    values = [float(v) for v in (row.base, row.tuned) if finite(v)]
    if not row.higher_is_better and values and min(values) >= 0:
        return 0.0, math.inf
    return -math.inf, math.inf


def write_plot(path: str | os.PathLike[str], rows: Iterable[Row], *, alpha: float) -> None:
    """A PNG of base vs tuned per check, grouped by task and metric.

    Each check is one line: base (black bar), tuned (dot coloured by verdict) with its
    interval, the worst tuned value the margin allows (dashed) and the allowed region
    (green). Rendered with the Agg canvas directly, so the user's pyplot backend and global
    state are left alone.
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
        from matplotlib.transforms import blended_transform_factory
    except ImportError:
        raise ConfigError("--forgetting-plot needs matplotlib: pip install 'pytest-forgetting[plot]'") from None

    given = sort_rows(rows)
    checks = [as_row(r) for r in given]
    several = len(candidates(checks)) > 1
    short = short_names(str(r.test or "") for r in checks)
    groups: dict[tuple[str, str, str], list[CheckRow]] = {}
    for row in checks:
        key = (str(row.task or "?"), str(row.split or ""), str(row.metric or "?"))
        groups.setdefault(key, []).append(row)
    groups = dict(sorted(groups.items()))
    if not groups:
        groups[("", "", "")] = []

    heights = [max(1, len(g)) * 0.55 + 0.35 for g in groups.values()]
    fig = Figure(figsize=(12, sum(heights) + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]

    for ax, ((task, split, metric), group) in zip(axes, groups.items()):
        if not group:
            ax.text(0.5, 0.5, "no checks", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        geos = [_plot_geometry(r) for r in group]
        xs = [v for g in geos if g for v in g.values()]
        if xs:
            lo, hi = min(xs), max(xs)
            pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.01)
            lo, hi = lo - pad, hi + pad
            if all(r.is_bounded for r in group):
                lo, hi = max(lo, -0.005), min(hi, 1.005)
        else:
            lo, hi = 0.0, 1.0
        ax.set_xlim(lo, hi)
        label_at = blended_transform_factory(ax.transAxes, ax.transData)

        for y, (row, geo) in enumerate(zip(group, geos)):
            verdict = verdict_of(row)
            colour = _COLOURS[verdict]
            if geo is None:
                reason = escape.plot(row.reason or "no values", 90)
                ax.text(
                    0.5, y, f"ERROR: {reason}", ha="center", va="center", color=colour, transform=label_at, fontsize=9
                )
            else:
                top, bottom = y - 0.38, y + 0.38
                if "threshold" in geo:
                    higher = row.higher_is_better
                    edge = hi if higher else lo
                    ax.fill_betweenx(
                        [top, bottom], geo["threshold"], edge, color=_ALLOWED, alpha=0.18, linewidth=0, zorder=1
                    )
                    ax.plot([geo["threshold"]] * 2, [top, bottom], color=_ALLOWED, ls="--", lw=1.5, zorder=2)
                ax.plot([geo["base"]] * 2, [top, bottom], color="black", lw=2.5, zorder=3)
                xerr = None
                if "lo" in geo:
                    xerr = [[max(0.0, geo["tuned"] - geo["lo"])], [max(0.0, geo["hi"] - geo["tuned"])]]
                ax.errorbar(
                    geo["tuned"],
                    y,
                    xerr=xerr,
                    fmt="o",
                    color=colour,
                    ms=8,
                    capsize=5,
                    elinewidth=2.2,
                    capthick=2.2,
                    zorder=4,
                )
            note = LABELS[verdict]
            if geo is not None:
                note += f"  {drop_cell(row)}, margin {margin_cell(row)}"
            ax.text(
                1.01,
                y,
                note,
                transform=label_at,
                va="center",
                ha="left",
                fontsize=9,
                color=colour,
                fontweight="bold" if verdict != Verdict.PASS else "normal",
            )

        labels = []
        for row in group:
            test = short.get(str(row.test or ""), "?")
            if several:  # "naive: test_x", not "naive: test_x[naive]"
                test = without_candidate(test, str(row.candidate or ""))
            label = escape.plot(truncate_left(test, 36))
            if several:
                candidate = row.candidate
                name = escape.plot(truncate_left(str(candidate), 36)) if candidate else "(unnamed)"
                label = f"{name}: {label}"
            labels.append(label)
        ax.set_yticks(range(len(group)), labels, fontsize=9)
        ax.set_ylim(len(group) - 0.5, -0.5)
        ax.tick_params(axis="y", length=0)
        direction = "higher" if group[0].higher_is_better else "lower"
        title = escape.plot(f"{task}/{split}" if split else task, 60)
        ax.set_title(
            f"{title}  ·  {escape.plot(metric, 40)} ({direction} is better)", loc="left", fontsize=10, fontweight="bold"
        )
        if all(r.is_bounded for r in group):
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: trim_zeros(f"{v * 100:.2f}") + "%"))
        ax.grid(axis="x", color="#dddddd", lw=0.8, zorder=0)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    present = [v for v in VERDICTS if any(verdict_of(r) == v for r in checks)]
    handles = [
        Line2D([], [], color="black", lw=2.5, marker="|", ms=14, ls="none", mew=2.5, label="base"),
        Line2D([], [], color="#555555", marker="o", ls="-", lw=2, label=f"tuned, {ci_percent(alpha)} interval"),
        Line2D([], [], color=_ALLOWED, ls="--", lw=1.5, label="worst tuned value the margin allows"),
        Patch(color=_ALLOWED, alpha=0.25, label="allowed"),
    ] + [Patch(color=_COLOURS[v], label=LABELS[v]) for v in present]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False)
    summary = counts_phrase(checks) if checks else "no checks"
    fig.suptitle(f"pytest-forgetting: base vs tuned — {summary} (alpha={alpha:g}, one-sided)", fontsize=12)

    atomic_write(
        path, lambda fh: fig.savefig(fh, format="png", dpi=110, metadata={"Software": None}), chmod=REPORT_MODE
    )
    # where the weights moved, beside it: PLOT.drift.png
    from pytest_forgetting.drift import write_drift_plot

    # write_drift_plot reads each row as a mapping only (.get / []): rows and CheckRows both are
    write_drift_plot(os.path.splitext(os.fspath(path))[0] + ".drift.png", cast("Sequence[dict[str, Any]]", given))
