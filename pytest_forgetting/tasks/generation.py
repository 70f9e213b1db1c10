"""Greedy-decoded exact match for causal language models: ``GenerationExactMatchTask``.

Short prompts, greedy decoding, and a 0/1 per example: does the normalised generation equal
one of the reference answers? Compared with the paired score interval for proportions. The
tokenizer comes from the checkpoint; base and tuned must share it (the loader refuses a pair
whose vocabularies differ), so prompts are tokenised once and reused for both models.

Also importable from ``pytest_forgetting.tasks.lm``, where it was defined first.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TaskError
from ..metrics import GENERATION_METRICS
from .base import ModelMeta, _build_splits, _paired_split, _SplitTask
from .batching import pad_rows, real_positions, trimmed_batches
from .classification import logits_of

_PUNCT = string.punctuation + "“”‘’«»…"


def normalize_answer(text: str) -> str:
    """Case-folded, accents kept, surrounding punctuation/quotes and repeated whitespace removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = " ".join(text.split())
    return text.strip(_PUNCT + " ")


@dataclass(frozen=True)
class _GenContext:
    """What decoding needs besides tensors; passed through the evaluator untouched."""

    tokenizer: Any
    eos_ids: frozenset[int]
    pad_id: int
    max_new_tokens: int
    stop: tuple[str, ...]
    match: str
    normalize: Callable[[str], str]


class GenerationExactMatchTask(_SplitTask):
    """Prompts with reference answers; greedy decoding; 0/1 exact match per example.

    ``targets[i]`` is one answer or a list of accepted answers. The generation is decoded
    (special tokens skipped), cut at the first ``stop`` string, normalised (``normalize``:
    ``normalize_answer`` by default, ``None`` for none, or a callable) and compared with each
    normalised answer: ``match="exact"`` (equal), ``"prefix"`` (the generation starts with the
    answer as whole words) or ``"contains"`` (the answer occurs in it as whole words).
    With ``chat_template=True`` each prompt is wrapped as a user message (plus
    ``system_prompt``) with the tokenizer's chat template and a generation prompt.

    Decoding is greedy (argmax), batched with left padding and stops at the tokenizer's or the
    model's end-of-sequence tokens or after ``max_new_tokens``; no sampling settings of the
    checkpoint's generation config apply, so the two models are decoded identically.
    """

    metrics = GENERATION_METRICS
    default_metric = "exact_match"
    MATCHES = ("exact", "prefix", "contains")

    def __init__(
        self,
        prompts: Sequence[str] | None = None,
        targets: Sequence[str | Sequence[str]] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        max_new_tokens: int = 16,
        stop: Sequence[str] = ("\n",),
        match: str = "exact",
        normalize: Callable[[str], str] | None | str = "default",
        chat_template: bool = False,
        system_prompt: str | None = None,
        max_prompt_length: int = 512,
        splits: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        super().__init__()
        if splits is None:
            splits = _paired_split("GenerationExactMatchTask", prompts, targets, ids, columns,
                                   needs="prompts and targets", counts=("prompts", "targets"))  # fmt: skip
        if match not in self.MATCHES:
            raise TaskError(f"match={match!r}: expected one of {', '.join(self.MATCHES)}")
        if max_new_tokens < 1:
            raise TaskError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if normalize == "default":
            normalize = normalize_answer
        elif normalize is None:
            normalize = _identity
        elif not callable(normalize):
            raise TaskError(f"normalize={normalize!r}: expected a callable, None or 'default'")
        self.max_new_tokens = int(max_new_tokens)
        self.stop = tuple(str(s) for s in stop if s)
        self.match = match
        self.normalize = normalize
        self.chat_template = bool(chat_template)
        self.system_prompt = system_prompt
        self.max_prompt_length = int(max_prompt_length)
        for name, (split_ids, items, cols) in _build_splits(splits, "GenerationExactMatchTask").items():
            prompts_list, targets_list = [], []
            for item in items:
                try:
                    prompt, target = item
                except (TypeError, ValueError):
                    raise TaskError(
                        f"GenerationExactMatchTask split {name!r}: expected (prompt, answer) pairs, got {item!r}"
                    ) from None
                answers = (target,) if isinstance(target, str) else tuple(str(t) for t in target)
                if not answers:
                    raise TaskError(
                        f"GenerationExactMatchTask split {name!r}: prompt {prompt!r} has no reference answer"
                    )
                prompts_list.append(str(prompt))
                targets_list.append(answers)
            self._add_split(name, split_ids, cols, prompts=prompts_list, targets=targets_list)

    def prompts(self, split: str) -> list[str]:
        return self._field(split, "prompts")

    def targets(self, split: str) -> list[tuple[str, ...]]:
        return self._field(split, "targets")

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        settings = [self.max_new_tokens, list(self.stop), self.match, _callable_name(self.normalize),
                    self.chat_template, self.system_prompt, self.max_prompt_length]  # fmt: skip
        return self.ids(split), settings, self.prompts(split), [list(t) for t in self.targets(split)]

    def prepare_key(self, meta: ModelMeta) -> str:
        return meta.tokenizer_fingerprint

    def render_prompt(self, prompt: str, tokenizer: Any) -> str:
        """The exact text the model is conditioned on."""
        if not self.chat_template:
            return prompt
        if not getattr(tokenizer, "chat_template", None):
            raise TaskError(
                f"task {self.name!r} asks for chat_template=True but the checkpoint's tokenizer has no chat template"
            )
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        import torch

        tok = meta.tokenizer
        if tok is None:
            raise TaskError(f"task {self.name!r} needs a tokenizer, and the checkpoint has none")
        texts = [self.render_prompt(p, tok) for p in self.prompts(split)]
        # a chat template already spells out its special tokens
        enc = tok(texts, add_special_tokens=not self.chat_template, padding=False, truncation=False)
        seqs = [list(s)[-self.max_prompt_length :] for s in enc["input_ids"]]
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        if (lengths == 0).any():
            bad = self.ids(split)[lengths == 0][:3].tolist()
            raise TaskError(f"task {self.name!r}: prompts tokenise to nothing (ids {bad})")
        pad = _pad_id(tok)
        width = int(lengths.max(initial=1))
        # left padding: every prompt ends at the last column
        ids = pad_rows(seqs, lengths, width, fill=pad, left=True)
        mask = real_positions(lengths, width, left=True).astype(np.int64)
        eos = _as_id_set(getattr(tok, "eos_token_id", None))
        context = _GenContext(tok, frozenset(eos), pad, self.max_new_tokens, self.stop, self.match, self.normalize)
        return {
            "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "lengths": lengths,
            "targets": self.targets(split), "context": context,
        }  # fmt: skip

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        prompts = {k: prepared[k] for k in ("input_ids", "attention_mask")}  # padded on the left
        for chunk, _, inputs in trimmed_batches(prompts, prepared["lengths"], indices, batch_size, left=True):
            yield {
                **inputs,
                "targets": [prepared["targets"][int(i)] for i in chunk],
                "context": prepared["context"],
            }

    def lengths(self, prepared: Any) -> np.ndarray:
        return prepared["lengths"]  # prompt lengths (masked left padding): length-bucketed batches

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        import torch

        ctx: _GenContext = batch["context"]
        eos = set(ctx.eos_ids) | _as_id_set(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        tokens, finite = greedy_decode(
            model, batch["input_ids"], batch["attention_mask"], ctx.max_new_tokens, eos, ctx.pad_id
        )
        exact = []
        for row, answers in zip(tokens.tolist(), batch["targets"]):
            text = decode_generation(ctx.tokenizer, [t for t in row if t >= 0], ctx.stop)
            exact.append(answer_matches(text, answers, ctx.match, ctx.normalize))
        return {
            "exact": torch.tensor(exact, dtype=torch.bool, device=tokens.device),
            "generated": tokens,
            "finite": finite,
        }

    def generations(self, result: Any, tokenizer: Any) -> dict[str, str]:
        """Decoded generations of an ``EvalResult`` of this task, by example id (for reading, not scoring)."""
        rows = np.asarray(result.outputs["generated"])
        return {
            i: decode_generation(tokenizer, [t for t in row.tolist() if t >= 0], self.stop)
            for i, row in zip(result.ids.tolist(), rows)
        }


# its public path, the one cache keys record (``engine.keys.task_class``): the class was defined in
# ``tasks.lm`` until it moved here, and its cached results stay valid
GenerationExactMatchTask.__module__ = "pytest_forgetting.tasks.lm"


def greedy_decode(
    model: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int, eos_ids: set[int], pad_id: int
) -> tuple[Any, Any]:
    """Greedy continuation of left-padded prompts: ((batch, max_new_tokens) ids, -1 after the end; finite flags).

    A transformers model decodes through ``model.generate(do_sample=False, num_beams=1)`` with a
    fresh generation config (none of the checkpoint's own settings, such as a repetition penalty,
    apply: both models decode alike). Other modules run a plain loop that feeds the whole sequence
    again at every step.
    """
    import torch

    if hasattr(model, "config") and callable(getattr(model, "generate", None)):
        return _generate_greedy(model, input_ids, attention_mask, max_new_tokens, eos_ids, pad_id)
    batch = input_ids.shape[0]
    device = input_ids.device
    out = torch.full((batch, max_new_tokens), -1, dtype=torch.long, device=device)
    finite = torch.ones(batch, dtype=torch.bool, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device) if eos_ids else None
    is_hf = hasattr(model, "config")
    mask = attention_mask
    seq = input_ids
    past = None
    step_input = input_ids
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    for step in range(max_new_tokens):
        if is_hf:
            result = model(
                input_ids=step_input, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True
            )
            past = getattr(result, "past_key_values", None)
        else:
            result = model(seq)
        logits = logits_of(result)[:, -1, :]
        finite &= torch.isfinite(logits).all(dim=1) | done
        nxt = logits.float().argmax(dim=1)
        out[:, step] = torch.where(done, torch.full_like(nxt, -1), nxt)
        if eos is not None:
            done |= torch.isin(nxt, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        fed = torch.where(done, torch.full_like(nxt, pad_id), nxt)[:, None]
        seq = torch.cat([seq, fed], dim=1)
        mask = torch.cat([mask, torch.ones_like(fed)], dim=1)
        if past is None:  # no cache: feed the whole sequence again
            step_input, positions = seq, (mask.cumsum(dim=1) - 1).clamp(min=0)
        else:
            step_input, positions = fed, positions[:, -1:] + 1
    if eos is not None:  # keep the end token out of the text, and nothing after it
        ended = torch.isin(out, eos)
        after = ended.long().cumsum(dim=1) > 0
        out = torch.where(after, torch.full_like(out, -1), out)
    return out, finite


def _generate_greedy(
    model: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int, eos_ids: set[int], pad_id: int
) -> tuple[Any, Any]:
    """:func:`greedy_decode` through ``model.generate``: the same ids (-1 from the end token on) and finite flags."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=sorted(eos_ids) or None,
        pad_token_id=pad_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    saved = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()  # the checkpoint's defaults must not fill in what is unset
    try:
        result = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    finally:
        model.generation_config = saved
    new = result.sequences[:, input_ids.shape[1] :]
    batch, steps = new.shape
    out = torch.full((batch, max_new_tokens), -1, dtype=torch.long, device=input_ids.device)
    out[:, :steps] = new
    logits = (
        torch.stack(list(result.logits), dim=1)
        if result.logits
        else torch.zeros((batch, 0, 1), device=input_ids.device)
    )
    if eos_ids:
        eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=out.device)
        ended = torch.isin(out, eos)
        after = ended.long().cumsum(dim=1) > 0
        before = (after.long() - ended.long())[:, :steps] == 0  # steps up to and including each row's end token
        out = torch.where(after, torch.full_like(out, -1), out)
    else:
        before = torch.ones((batch, steps), dtype=torch.bool, device=out.device)
    finite = (torch.isfinite(logits).all(dim=2) | ~before[:, : logits.shape[1]]).all(dim=1)
    return out, finite


def decode_generation(tokenizer: Any, token_ids: list[int], stop: Sequence[str]) -> str:
    """The generated text up to the first stop string that follows its first non-blank character."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    body = len(text) - len(text.lstrip())  # a leading newline is formatting, not an empty answer
    for s in stop:
        pos = text.find(s, body)
        if pos >= 0:
            text = text[:pos]
    return text


def answer_matches(text: str, answers: Sequence[str], match: str, normalize: Callable[[str], str]) -> bool:
    got = normalize(text)
    for answer in answers:
        want = normalize(answer)
        if match == "exact":
            if got == want:
                return True
        else:
            pattern = r"(?<!\w)" + re.escape(want) + r"(?!\w)"
            found = re.match(pattern, got) if match == "prefix" else re.search(pattern, got)
            if want and found:
                return True
    return False


def _identity(text: str) -> str:
    return text


def _callable_name(fn: Callable[..., Any]) -> str:
    if fn is normalize_answer or fn is _identity:
        # the name they had in data fingerprints when defined in tasks.lm: moving them invalidates no cache
        return f"pytest_forgetting.tasks.lm.{fn.__qualname__}"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _pad_id(tok: Any) -> int:
    if getattr(tok, "pad_token_id", None) is not None:
        return int(tok.pad_token_id)
    eos = _as_id_set(getattr(tok, "eos_token_id", None))
    return min(eos) if eos else 0  # hidden by the attention mask either way


def _as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set, frozenset)):
        return {int(v) for v in value if v is not None}
    return {int(value)}
