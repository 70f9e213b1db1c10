"""``wise_ft``: a ``full`` fine-tune, then the weights ``(1 - alpha) * base + alpha * tuned`` (WiSE-FT,
Wortsman et al. 2022).

``alpha="auto"`` picks the largest alpha of the grid ``alphas`` whose model still meets every
check in ``keep=[{"task": ..., "max_drop": ...}, {"task": ..., "min_gain": ...}]`` (decided by the
forgetting session's statistics) and attaches the curve as ``model.wise_ft_curve``; ``tuned=`` gives
the fine-tuned module instead of training one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...results import CheckKind, Verdict, gain_triple
from ..spec import FinetuneError, float_option
from .base import FinishContext, StrategyBase

if TYPE_CHECKING:
    from torch import nn


class WiseFT(StrategyBase):
    name = "wise_ft"

    def validate(self, session: Any) -> None:
        opts = self.options
        if opts.alpha != "auto":
            float_option("wise_ft", "alpha", opts.alpha, 0.0, 1.0)
        self._keep = _parse_keep(opts.keep)
        if opts.alpha == "auto":
            if not self._keep:
                raise FinetuneError(
                    "wise_ft(alpha='auto') needs keep=[{'task': ..., 'max_drop': ...}, ...] to search against"
                )
            if session is None:
                raise FinetuneError(
                    "wise_ft(alpha='auto') decides with a forgetting session: use the finetune fixture or pass session="
                )
            self._alphas = [float_option("wise_ft", "alphas[]", a, 0.0, 1.0) for a in opts.alphas]
            if not self._alphas:
                raise FinetuneError("wise_ft: alphas must not be empty")

    def pretrained(self, device: Any) -> nn.Module | None:
        import torch

        if self.options.tuned is None:
            return None
        return copy.deepcopy(self.options.tuned).to(device=device, dtype=torch.float32)

    def finish(self, start: nn.Module, tuned: nn.Module, ctx: FinishContext) -> nn.Module:
        info, session = ctx.info, ctx.session
        if self.options.alpha == "auto":
            base_slot = _base_slot_for(session, ctx.model)
            train = ctx.train
            track = train if isinstance(train, str) and "test" in session.task(train).split_names() else None
            alpha, curve = _wise_ft_search(
                start, tuned, keep=self._keep, alphas=self._alphas, session=session, base_slot=base_slot, track=track,
                progress=ctx.progress, dtype=ctx.dtype,
            )  # fmt: skip
            info.wise_ft_curve = curve
        else:
            alpha = float(self.options.alpha)
        info.wise_ft_alpha = alpha
        result: Any = interpolate(start, tuned, alpha)  # a module with two attributes of ours
        result.wise_ft_alpha = info.wise_ft_alpha
        result.wise_ft_curve = info.wise_ft_curve
        return result


def interpolate(base: nn.Module, tuned: nn.Module, alpha: float) -> nn.Module:
    """A new module with the weights ``(1 - alpha) * base + alpha * tuned`` (alpha 0 / 1 exactly)."""
    import torch

    out = copy.deepcopy(tuned)
    base_state = base.state_dict()
    with torch.no_grad():
        for name, t in out.state_dict().items():
            if name not in base_state:
                raise FinetuneError(
                    f"wise_ft: the tuned model has a weight {name!r} the base lacks; they must share an architecture"
                )
            b = base_state[name]
            if not t.is_floating_point():
                continue
            if alpha == 0.0:
                t.copy_(b)
            elif alpha != 1.0:
                t.copy_(torch.lerp(b.to(t.dtype), t, float(alpha)))
    return out


def _parse_keep(keep: Any) -> list[Any]:
    from ...checks import parse_check

    if isinstance(keep, Mapping):
        keep = [keep]
    checks = []
    for i, item in enumerate(keep or ()):
        where = f"wise_ft keep[{i}]"
        if not isinstance(item, Mapping):
            raise FinetuneError(f"{where}: expected a dict like {{'task': 'mnist', 'max_drop': 0.02}}, got {item!r}")
        kind = "improves" if "min_gain" in item else "retains"
        checks.append(parse_check(kind, dict(item), where))
    return checks


def _base_slot_for(session: Any, model: Any) -> Any:
    """The session's base slot when fine-tuning its base (evaluations cached), else a slot for a copy of ``model``."""
    base = getattr(session, "base", None)
    if base is not None and base.loaded is not None and base.loaded.model is model:
        return base
    return session.module_slot("base", copy.deepcopy(model))


#: what the curve keeps of each check's row
_CURVE_KEYS = ("task", "kind", "metric", "base", "tuned", "drop", "ci_low", "ci_high", "margin", "verdict")


def _wise_ft_search(
    start: nn.Module,
    tuned: nn.Module,
    *,
    keep: list[Any],
    alphas: Sequence[float],
    session: Any,
    base_slot: Any,
    track: str | None,
    progress: Callable[[str], None] | None,
    dtype: Any,
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate every alpha of the grid against the keep checks; the largest all-PASS alpha wins."""
    from ...checks import bind_task, parse_check

    bound = [bind_task(c, "wise_ft keep", session.task(c.task)) for c in keep]
    if track is not None and not any(c.task == track for c in bound):
        tracked = parse_check("retains", {"task": track, "max_drop": 1.0}, "wise_ft")
        bound_track = bind_task(tracked, "wise_ft", session.task(track))
    else:
        bound_track = None
    curve: list[dict[str, Any]] = []
    for alpha in sorted(alphas):
        slot = session.module_slot("tuned", interpolate(start, tuned, alpha).to(dtype=dtype))
        point: dict[str, Any] = {"alpha": alpha, "checks": []}
        ok = True
        for check in bound:
            row = session.run_check(check, test="<finetune wise_ft>", base=base_slot, tuned=slot).row
            point["checks"].append({k: row.get(k) for k in _CURVE_KEYS})
            ok = ok and row["verdict"] == Verdict.PASS
        if bound_track is not None:
            row = session.run_check(bound_track, test="<finetune wise_ft>", base=base_slot, tuned=slot).row
            gain = None if row["drop"] is None else -row["drop"]
            point["gain"] = {"task": track, "base": row["base"], "tuned": row["tuned"], "gain": gain}
        point["ok"] = ok
        curve.append(point)
    passing = [p["alpha"] for p in curve if p["ok"]]
    chosen = max(passing) if passing else 0.0
    if progress is not None:
        for line in format_curve(curve, chosen):
            progress(line)
    return chosen, curve


def format_curve(curve: list[dict[str, Any]], chosen: float | None = None) -> list[str]:
    """The WiSE-FT curve as text lines: alpha, each check's drop [CI] and verdict, the new-task gain."""
    head = "wise_ft: largest alpha whose model meets every keep check"
    lines = [head + (f" -> alpha={chosen:g}" if chosen is not None else "")]
    for p in curve:
        parts = []
        for c in p["checks"]:
            if c["drop"] is None:
                parts.append(f"{c['task']} {c['verdict'].upper()}")
                continue
            if c["kind"] == CheckKind.RETAINS:
                sign, (value, lo, hi) = "drop", (c["drop"], c["ci_low"], c["ci_high"])
            else:  # an improves check: its gain and interval, as every report shows them (results.gain_triple)
                sign, (value, lo, hi) = "gain", gain_triple(c["drop"], c["ci_low"], c["ci_high"])
            parts.append(
                f"{c['task']} {sign} {100 * value:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] {c['verdict'].upper()}"
            )
        if "gain" in p and p["gain"]["gain"] is not None:
            parts.append(f"{p['gain']['task']} gain {100 * p['gain']['gain']:+.1f} pp")
        mark = "*" if chosen is not None and p["alpha"] == chosen else " "
        lines.append(f" {mark} alpha={p['alpha']:.2f}  " + "; ".join(parts))
    return lines
