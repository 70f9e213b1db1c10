"""One actionable line for the mismatches a newcomer meets first (issue 14, point 5).

- configuration errors found at collection (no ``--tuned-ckpt``, a checkpoint path with nothing
  there): usage errors, reported once for the run, not once per test;
- a model that cannot score a task: a headless encoder on a classification task, a task whose
  inputs are not what the model takes (images for a model that takes tokens), a text task on a
  checkpoint without a tokenizer. Each names the checkpoint and says what to do.

Standard library only at import time (the collection-time check runs in every marked suite).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError, EvaluationError
from .results import CheckKind, Verdict

# -- configuration errors at collection -----------------------------------------------------------

_ROLES = {
    "base": ("base_ckpt", "--base-ckpt", "FORGETTING_BASE_CKPT", "forgetting_base_ckpt"),
    "tuned": ("tuned_ckpts", "--tuned-ckpt", "FORGETTING_TUNED_CKPT", "forgetting_tuned_ckpt"),
}


def _option_name(role: str, source: str) -> str:
    _, cli, env, ini = _ROLES[role]
    return {"env": f"${env}", "ini": f"ini key {ini}"}.get(source, cli)


def missing_checkpoints(settings: Any, needs: dict[str, list[str]]) -> str | None:
    """The first configuration error for the roles some tests need (role -> test ids), or None.

    A role nobody asked for is not checked (a suite may name only a base for its fixture tests).
    Local paths must exist; a hub id (``org/name``) is left to the loader.
    """
    from .escape import terminal

    for role in ("base", "tuned"):
        tests = needs.get(role) or []
        if not tests:
            continue
        attr, cli, env, ini = _ROLES[role]
        value = getattr(settings, attr)
        refs = [value] if isinstance(value, str) else list(value or ())
        if not refs:
            return terminal(
                f"no {role} checkpoint: pass {cli}=REF (or set ${env} / ini key {ini}); "
                f"{_tests(tests)} need{'s' if len(tests) == 1 else ''} it",
                600,
            )
        source = settings.sources.get(attr, "cli")
        for ref in refs:
            problem = _locate_problem(ref, settings.rootdir) or _file_of_a_folder(ref, settings)
            if problem:
                return terminal(f"{_option_name(role, source)}: {role} {problem}", 600)
    return None


def _file_of_a_folder(ref: str, settings: Any) -> str | None:
    """``--tuned-ckpt folder/model.safetensors`` for a Hugging Face folder (without --model-factory): pass the
    folder."""
    path = Path(ref)
    if settings.model_factory or not ref.lower().endswith(".safetensors") or not path.is_file():
        return None
    if not (path.parent / "config.json").is_file() or (path.parent / "adapter_config.json").is_file():
        return None
    return (f"checkpoint {path}: a weights file inside the Hugging Face model folder {path.parent} (config.json "
            f"beside it): pass the folder, {path.parent}, not a file inside it")  # fmt: skip


def _tests(tests: list[str]) -> str:
    shown = ", ".join(tests[:2])
    return f"{len(tests)} tests ({shown}{', ...' if len(tests) > 2 else ''})" if len(tests) > 1 else shown


def _locate_problem(ref: str, rootdir: Any) -> str | None:
    from . import checkpoints

    try:
        checkpoints._locate(ref, rootdir)
    except CheckpointError as exc:
        return str(exc)
    return None


# -- a model that cannot score a task -------------------------------------------------------------

_TOKEN_TASKS = {"TextClassificationTask", "TokenClassificationTask", "LanguageModelingTask", "GenerationExactMatchTask",
                "MultipleChoiceTask", "LmEvalTask"}  # fmt: skip
_IMAGE_TASKS = {"ImageClassificationTask"}
_AUDIO_TASKS = {"SpeechRecognitionTask"}
_INPUTS = {"input_ids": "tokens", "pixel_values": "images", "input_values": "audio", "input_features": "audio"}
_WANTS = {"tokens": "text", "images": "images", "audio": "audio"}  # what a task feeds
_TAKES = {"tokens": "tokens", "images": "images", "audio": "audio"}  # what a model's main input is
_A_TASK = {"tokens": "a text task", "images": "an image task", "audio": "an audio task"}
_HEADS = {"TextClassificationTask": "ForSequenceClassification", "ImageClassificationTask": "ForImageClassification",
          "TokenClassificationTask": "ForTokenClassification", "LanguageModelingTask": "ForCausalLM",
          "GenerationExactMatchTask": "ForCausalLM", "MultipleChoiceTask": "ForCausalLM"}  # fmt: skip


def _kinds(task: Any) -> set[str]:
    return {c.__name__ for c in type(task).__mro__}


def task_inputs(task: Any) -> str | None:
    kinds = _kinds(task)
    if "EmbeddingProbeTask" in kinds or kinds & _TOKEN_TASKS:
        return "tokens"
    if kinds & _IMAGE_TASKS:
        return "images"
    if kinds & _AUDIO_TASKS:
        return "audio"
    return None


def model_inputs(model: Any) -> str | None:
    """What a Hugging Face model takes (its ``main_input_name``); None for a plain nn.Module."""
    if getattr(model, "config", None) is None:
        return None
    return _INPUTS.get(str(getattr(model, "main_input_name", "") or ""))


def is_headless(model: Any) -> bool:
    """A transformers base model (``BertModel``): its own ``base_model``, outputs hidden states, no head."""
    if getattr(model, "config", None) is None or not isinstance(getattr(model, "base_model_prefix", None), str):
        return False
    try:
        return model.base_model is model
    except Exception:  # noqa: BLE001 - an odd module: not ours to judge
        return False


def check_fit(label: str, ref: Any, task: Any, meta: Any, model: Any) -> None:
    """Raise one EvaluationError line when ``model`` cannot score ``task``; say what to do."""
    from .escape import terminal

    name = terminal(getattr(task, "name", "?"), 80)
    where = "" if isinstance(ref, str) and ref in label else _where(ref)
    wants, takes = task_inputs(task), model_inputs(model)
    cls = type(model).__name__
    if wants and takes and wants != takes:
        raise EvaluationError(
            f"{label}{where} cannot run task '{name}': task expects {_WANTS[wants]}, model takes {_TAKES[takes]} "
            f"({cls}); check this model on {_A_TASK[takes]}, "
            f"or give task '{name}' a checkpoint that takes {_WANTS[wants]}"
        )
    kinds = _kinds(task)
    if "EmbeddingProbeTask" not in kinds and is_headless(model) and kinds & set(_HEADS):
        head = next(_HEADS[k] for k in _HEADS if k in kinds)
        stem = cls[: -len("Model")] if cls.endswith("Model") and len(cls) > len("Model") else cls
        what = "class scores" if head != "ForCausalLM" else "next-token logits"
        raise EvaluationError(
            f"{label}{where} is a headless encoder ({cls}: it returns hidden states, not {what}), so it cannot score "
            f"task '{name}'; use an embedding-probe task (pf.EmbeddingProbeTask, or a built-in *-probe task) or save "
            f"the classifier: the model with its trained head ({stem}{head}), with save_pretrained"
        )
    if wants == "tokens" and getattr(meta, "tokenizer", None) is None:
        raise EvaluationError(
            f"{label}{where} has no tokenizer, and text task '{name}' needs one; {_tokenizer_fix(ref)}"
        )


def _where(ref: Any) -> str:
    from .escape import terminal

    return f" ({terminal(ref, 200)})" if isinstance(ref, str) else ""


def _tokenizer_fix(ref: Any) -> str:
    from .escape import terminal

    if not isinstance(ref, (str, os.PathLike)):
        return ("the module carries none and the base checkpoint has none either; save the tokenizer in the base "
                "checkpoint's folder (tokenizer.save_pretrained(folder))")  # fmt: skip
    path = Path(ref)
    if path.is_dir():
        folder = terminal(str(path), 200)
        return ("the folder has no tokenizer files (tokenizer.json, tokenizer_config.json); "
                "save the tokenizer the model "
                f"was trained with beside its weights: tokenizer.save_pretrained('{folder}')")  # fmt: skip
    if path.is_file():
        return ("a single weights file carries no tokenizer: save the model as a folder with its tokenizer "
                "(model.save_pretrained(folder); tokenizer.save_pretrained(folder)) and pass the folder")  # fmt: skip
    return "the checkpoint ships no tokenizer files; add them (tokenizer.save_pretrained) where its config.json is"


def needs_of(items: Iterable[Any], has_checks: Any) -> dict[str, list[str]]:
    """Which tests need which checkpoint: marked / declared checks both, the fixtures their own."""
    needs: dict[str, list[str]] = {"base": [], "tuned": []}
    for item in items:
        names = set(getattr(item, "fixturenames", ()) or ())
        checked = has_checks(item)
        if checked or "base_model" in names:
            needs["base"].append(item.nodeid)
        if checked or "tuned_model" in names:
            needs["tuned"].append(item.nodeid)
    return needs


# -- a base at or below chance on a retained task -------------------------------------------------


def chance_level(task: Any, split: str, metric: str) -> tuple[float, str] | None:
    """(level, how) of a classifier that guesses, for ``accuracy`` / ``balanced_accuracy``; else None.

    Accuracy: the better of a uniform guess (1/K) and always answering the majority class;
    balanced accuracy: 1/K. K counts the task's classes (its class names, else its labels).
    """
    if (
        metric not in ("accuracy", "balanced_accuracy")
        or "ClassificationTask" not in _kinds(task)
        or "TokenClassificationTask" in _kinds(task)
    ):
        return None
    try:
        import numpy as np

        labels = task.class_labels(task.static_outputs(split))  # the task's declared label output
        if labels is None or labels.size == 0:
            return None
        names = task.class_names() or []
        _, counts = np.unique(labels, return_counts=True)
        k = max(len(names), len(counts))
    except Exception:  # noqa: BLE001 - a task without plain labels: no warning rather than a wrong one
        return None
    if k < 2:
        return None
    uniform = 1.0 / k
    majority = float(counts.max()) / float(labels.size)
    if metric == "accuracy" and majority > uniform:
        return majority, f"the majority-class rate, {majority:.1%}"
    return uniform, f"1/{k} classes, {uniform:.1%}"


def run_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per suspicious setup seen in the rows: a tuned checkpoint identical to the base, a base at chance."""
    from .escape import terminal

    out: list[str] = []
    seen: set[Any] = set()
    for row in rows:
        fps = row.get("_fingerprints") or {}
        values = [v for v in fps.values() if v]
        cand = str(row.get("candidate") or "")
        if values and len(set(values)) == 1 and ("same", cand) not in seen and row.get("verdict") != Verdict.ERROR:
            seen.add(("same", cand))
            who = f"tuned checkpoint '{terminal(cand, 80)}'" if cand else "the tuned checkpoint"
            out.append(f"{who} is the same as the base (same content fingerprint {values[0][:12]}): every check "
                       "compares the base with itself; check what --tuned-ckpt points at")  # fmt: skip
        chance = row.get("_chance")
        base = row.get("base")
        key = ("chance", row.get("task"), row.get("split"), row.get("metric"))
        if (
            chance
            and row.get("kind") == CheckKind.RETAINS
            and isinstance(base, (int, float))
            and base <= chance[0] + 1e-12
            and key not in seen
        ):
            seen.add(key)
            out.append(f"the base scores {base:.1%} {terminal(row.get('metric') or '?', 40)} on task "
                       f"'{terminal(row.get('task') or '?', 80)}', at or below chance ({chance[1]}): "
                       "there is no capability "
                       "to retain, so a PASS means nothing; "
                       "check the task's labels and the base checkpoint")  # fmt: skip
    return out
