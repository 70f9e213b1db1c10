"""Bare weights (a ``.safetensors`` or, when allowed, a pickle file) loaded into the module of ``--model-factory``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ..compat import _label_map
from ..headers import _read_safetensors_header
from ..records import Target
from ..util import _describe_exc, _esc, _size
from .common import _key_problems, _prefix_hint, _torch_load_weights_only
from .protocol import Built, LoadContext

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _read_safetensors_header(path)
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{path} ({_size(path)} bytes) does not load as safetensors: {_describe_exc(exc)}"
        ) from exc


def _check_state_dict_fits(
    model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], source: Path, factory: Any
) -> None:
    """Strict-load pre-check with a readable report (torch's own error is one long blob).

    ``shapes`` are the file's tensor shapes (for safetensors: from the header, before any tensor is
    read), so a file that does not describe exactly the module built is refused before allocating.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v) for k, v in shapes.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if not (missing or unexpected or mismatched):
        return
    parts = _key_problems(missing, unexpected, [f"{k}: file {got[k]} vs model {expected[k]}" for k in mismatched])
    raise CheckpointError(
        f"{source} does not fit the model built by {factory}: "
        + "; ".join(parts)
        + _prefix_hint(set(expected), set(got))
    )


class StateDictLoader:
    """Bare weights (a file, or a folder holding just one) loaded strictly into the module ``ctx.factory`` builds."""

    name = "state_dict"

    def places(self, target: Target) -> bool:
        return False

    def refuse(self, target: Target, ctx: LoadContext) -> None:
        if ctx.factory is not None:
            return
        parent = target.files[0].parent
        if (parent / "config.json").is_file():  # a file of a Hugging Face folder: the folder is the checkpoint
            raise CheckpointError(
                f"a weights file inside the Hugging Face model folder {_esc(str(parent))} (config.json beside it): "
                "pass the folder, not a file inside it"
            )
        raise CheckpointError(
            f"{target.files[0]} holds bare weights without an architecture; pass --model-factory "
            "module:callable (a function returning the nn.Module to load them into)"
        )

    def load(self, target: Target, ctx: LoadContext) -> Built:
        weights_file = target.files[0]
        factory = ctx.factory
        assert factory is not None  # refused before copying anything
        if target.weights == "safetensors":
            shapes = {k: shape for k, (_dtype, shape) in _read_safetensors_header(weights_file).items()}
            model = factory()  # trusted code (the project's own); checked against the header before any tensor is read
            _check_state_dict_fits(model, shapes, weights_file, factory)
            state_dict = _load_safetensors(weights_file)
        else:
            state_dict = _torch_load_weights_only(weights_file)
            model = factory()
            _check_state_dict_fits(model, {k: tuple(v.shape) for k, v in state_dict.items()}, weights_file, factory)
        try:
            model.load_state_dict(state_dict, strict=True)
        except Exception as exc:
            raise CheckpointError(f"{weights_file}: load_state_dict failed: {_describe_exc(exc)}") from exc
        model.to("cpu")
        config = getattr(model, "config", None)
        return model, None, config, _label_map(config)
