"""Where the weights moved: a per-block drift table of a base/tuned pair, and linear CKA.

:func:`drift_table` walks the two models' parameters once, pairwise by name, and keeps only
per-parameter sums (``||W_base||^2``, ``||W_tuned - W_base||^2``, ``<W_base, W_tuned>``): it
never copies either model (one parameter-sized temporary at a time). Parameters are grouped into
*blocks* by module depth (:func:`block_of`: up to the first numbered module, ``encoder.layer.11``,
or the top module, ``classifier``), and each block gets

- ``rel``: the relative L2 change ``||W_tuned - W_base|| / ||W_base||`` over the block's parameters;
- ``cosine``: the cosine between the block's base and tuned parameter vectors.

A PEFT adapter (LoRA, AdaLoRA) is read as what it does to each target module: its update
``delta W`` (``get_delta_weight``) gives the module's ``||delta W|| / ||W_base||`` (the adapter's
norm per target module), and modules the adapter trains in full (``modules_to_save``) are compared
like any parameter. Two identical models give a table of zeros (cosine 1), and a block that a
``freeze`` fine-tune did not train is exactly 0.

:func:`linear_cka` is linear centred kernel alignment (Kornblith et al. 2019) between two
matrices of hidden states of the same examples; :func:`representation_cka` computes it per layer
for Hugging Face models (``--forgetting-representation-drift``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pytest_forgetting import escape
from pytest_forgetting._util import atomic_write

#: prefixes a PEFT wrapper adds to the base model's parameter names
_PEFT_PREFIXES = ("base_model.model.",)
_NUMBERED = re.compile(r"^\d+$")


@dataclass(frozen=True)
class BlockDrift:
    block: str
    n_params: int  # parameters (scalars) compared
    rel: float  # ||W_tuned - W_base|| / ||W_base||
    cosine: float
    diff_norm: float
    base_norm: float
    adapter: bool = False  # the change comes from a PEFT adapter's update

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftTable:
    blocks: tuple[BlockDrift, ...]
    only_base: tuple[str, ...] = ()  # parameters without a counterpart (names, a few)
    only_tuned: tuple[str, ...] = ()

    def most_changed(self, k: int = 3) -> list[BlockDrift]:
        moved = [b for b in self.blocks if b.rel > 0 or math.isnan(b.rel)]
        return sorted(moved, key=lambda b: (-(b.rel if math.isfinite(b.rel) else math.inf), b.block))[:k]

    def to_rows(self) -> list[dict[str, Any]]:
        return [b.to_dict() for b in self.blocks]


def block_of(name: str) -> str:
    """The block of a parameter name: up to and including the first numbered module
    (``encoder.layer.11.attention.query.weight`` -> ``encoder.layer.11``, ``features.3.weight`` ->
    ``features.3``), else the module that holds it, at most two levels deep
    (``embeddings.word_embeddings.weight`` -> ``embeddings.word_embeddings``, ``classifier.weight`` ->
    ``classifier``)."""
    for prefix in _PEFT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _NUMBERED.match(part):
            return ".".join(parts[: i + 1])
    module = parts[:-1] or parts
    return ".".join(module[:2])


def _normalise(name: str) -> str:
    """A tuned (possibly PEFT-wrapped) parameter name as the base model names it."""
    for prefix in _PEFT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def _is_adapter_layer(module: Any) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "active_adapters")


def _tuned_tensors(tuned: Any) -> Iterator[tuple[str, Any, Any]]:
    """(base-style name, tuned tensor or None, adapter delta or None) per tuned parameter."""
    adapter_prefixes: list[str] = []
    for mname, module in tuned.named_modules():
        if _is_adapter_layer(module):
            adapter_prefixes.append(mname + ".")
            weight = getattr(module.base_layer, "weight", None)
            if weight is None:
                continue
            delta = None
            for adapter in module.active_adapters:
                if adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_E", {}):
                    d = module.get_delta_weight(adapter)
                    delta = d if delta is None else delta + d
            yield _normalise(mname + ".weight"), weight, delta
            bias = getattr(module.base_layer, "bias", None)
            if bias is not None:
                yield _normalise(mname + ".bias"), bias, None
    for pname, param in tuned.named_parameters():
        if any(pname.startswith(p) for p in adapter_prefixes):
            continue  # the layer's base weight and its adapter were read above
        if ".original_module." in pname:
            continue  # PEFT's untouched copy of a module it trains in full
        yield _normalise(pname), param, None


def drift_table(base: Any, tuned: Any) -> DriftTable:
    """The per-block drift of ``tuned`` from ``base`` (two torch modules; see the module doc)."""
    import torch

    base_params = dict(base.named_parameters())
    sums: dict[str, list[float]] = {}  # block -> [numel, base2, diff2, dot, tuned2, adapter]
    order: list[str] = []
    seen: set[str] = set()
    only_tuned: list[str] = []
    with torch.no_grad():
        for name, t, delta in _tuned_tensors(tuned):
            b = base_params.get(name)
            if b is None or tuple(b.shape) != tuple(t.shape) or not torch.is_floating_point(b):
                if b is None:
                    only_tuned.append(name)
                continue
            seen.add(name)
            bf = b.detach().to(torch.float64)
            tf = t.detach().to(device=bf.device, dtype=torch.float64)
            if delta is not None:
                tf = tf + delta.detach().to(device=bf.device, dtype=torch.float64)
            diff = tf - bf
            block = block_of(name)
            if block not in sums:
                sums[block] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
                order.append(block)
            acc = sums[block]
            acc[0] += bf.numel()
            acc[1] += float(torch.sum(bf * bf))
            acc[2] += float(torch.sum(diff * diff))
            acc[3] += float(torch.sum(bf * tf))
            acc[4] += float(torch.sum(tf * tf))
            acc[5] = max(acc[5], float(delta is not None))
            del bf, tf, diff
    first: dict[str, int] = {}
    for i, name in enumerate(base_params):  # blocks in the base model's order (adapter layers are read first)
        first.setdefault(block_of(name), i)
    order.sort(key=lambda blk: first.get(blk, len(first)))
    blocks = []
    for block in order:
        numel, b2, d2, dot, t2, adapter = sums[block]
        base_norm, diff_norm = math.sqrt(b2), math.sqrt(d2)
        rel = diff_norm / base_norm if base_norm > 0 else (0.0 if diff_norm == 0 else math.inf)
        cos = dot / math.sqrt(b2 * t2) if b2 > 0 and t2 > 0 else (1.0 if diff_norm == 0 else 0.0)
        if diff_norm == 0:
            cos = 1.0
        blocks.append(BlockDrift(block, int(numel), rel, min(1.0, max(-1.0, cos)), diff_norm, base_norm, bool(adapter)))
    only_base = [n for n in base_params if n not in seen]
    return DriftTable(tuple(blocks), tuple(only_base[:10]), tuple(only_tuned[:10]))


def percent(rel: float) -> str:
    if not math.isfinite(rel):
        return "new"
    pct = 100.0 * rel
    return f"+{pct:.0f} %" if pct >= 1 or pct == 0 else f"+{pct:.2g} %"


def most_change_text(rows: Sequence[dict[str, Any]], k: int = 3) -> str:
    """``layer.11 (+38 %), layer.10 (+22 %), classifier (+190 %)`` from a table's rows (JSON form)."""
    moved = [r for r in rows if isinstance(r, dict) and isinstance(r.get("rel"), (int, float)) and r["rel"] > 0]
    moved.sort(key=lambda r: (-r["rel"], str(r.get("block"))))
    if not moved:
        return "no block changed" if rows else ""
    return ", ".join(f"{r['block']} ({percent(float(r['rel']))})" for r in moved[:k])


# -- representations ----------------------------------------------------------------------------


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA between x (n, d1) and y (n, d2), rows the same examples: 1 for representations
    equal up to rotation and isotropic scaling, 0 for unrelated ones."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs two (n, d) matrices of the same n, got {x.shape} and {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / den) if den > 0 else float("nan")


def _pooled_hidden_states(model: Any, batches: Iterable[dict[str, Any]], device: str) -> list[np.ndarray]:
    import torch

    layers: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch, output_hidden_states=True)
            hidden = getattr(out, "hidden_states", None)
            if hidden is None:
                raise ValueError("the model returns no hidden_states")
            mask = batch.get("attention_mask")
            for i, h in enumerate(hidden):
                h = h.float()
                if mask is not None:
                    m = mask[:, :, None].to(h.dtype)
                    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
                else:
                    pooled = h.mean(1)
                if len(layers) <= i:
                    layers.append([])
                layers[i].append(pooled.cpu().numpy())
    return [np.concatenate(parts) for parts in layers]


def representation_cka(
    base: Any, tuned: Any, batches: Sequence[dict[str, Any]], device: str = "cpu"
) -> list[dict[str, Any]]:
    """Linear CKA per layer (embeddings = layer 0) between the mean-pooled hidden states of both
    models on the same batches: [{"layer": i, "cka": value}, ...]."""
    hb = _pooled_hidden_states(base, batches, device)
    ht = _pooled_hidden_states(tuned, batches, device)
    return [{"layer": i, "cka": linear_cka(a, b)} for i, (a, b) in enumerate(zip(hb, ht))]


def write_drift_plot(path: str, rows: Sequence[dict[str, Any]]) -> bool:
    """A PNG beside the report plot: per check with a drift table, the relative change per block
    (bars) and, where computed, the CKA per layer. Returns False when there is nothing to draw."""
    tables = [
        (str(r.get("test") or ""), r["weight_drift"], r.get("representation_cka"))
        for r in rows
        if isinstance(r.get("weight_drift"), list) and r["weight_drift"]
    ]
    seen: dict[str, Any] = {}
    for test, table, cka in tables:  # one panel per distinct table (checks of one pair share it)
        key = repr([(b.get("block"), b.get("rel")) for b in table])
        seen.setdefault(key, (test, table, cka))
    if not seen:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(seen.values())[:6]
    fig = Figure(figsize=(9, 2.6 * len(panels) + 0.6))
    FigureCanvasAgg(fig)
    for i, (test, table, cka) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        names = [escape.plot(b.get("block"), 60) for b in table]  # parameter names come from the checkpoint
        rel = [100.0 * float(b.get("rel") or 0.0) if math.isfinite(float(b.get("rel") or 0.0)) else 0.0 for b in table]
        ax.bar(range(len(names)), rel, color=["#c0392b" if v > 0 else "#95a5a6" for v in rel])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("rel. change %")
        ax.set_title(f"weight drift: {escape.plot(test[-70:])}", fontsize=9)
        if cka:
            ax2 = ax.twinx()
            ax2.plot([c["layer"] for c in cka], [c["cka"] for c in cka], "o-", color="#2c3e50", ms=3)
            ax2.set_ylabel("CKA", fontsize=8)
            ax2.set_ylim(0, 1.05)
    fig.tight_layout()
    # like the report plot: a temporary file renamed over the target, never written through a link
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, metadata={"Software": None}), chmod=0o644)
    return True
