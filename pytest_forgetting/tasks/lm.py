"""Causal language-model tasks: held-out text likelihood and greedy-decoded exact match.

- ``LanguageModelingTask``: per example (a text), the summed negative log-likelihood of all its
  tokens (rolling windows, lm-eval's convention) and how many tokens, words and bytes it has.
  The ``perplexity`` (per token), ``nll``, ``word_perplexity``, ``byte_perplexity`` and
  ``bits_per_byte`` metrics pool those over examples (e.g. exp of total NLL / total tokens), so a
  paired bootstrap over texts gives the interval. Lower is better; ``max_drop`` is in the
  metric's units (or relative).
- ``GenerationExactMatchTask``: short prompts, greedy decoding, and a 0/1 per example: does
  the normalised generation equal one of the reference answers? Compared with the paired
  score interval for proportions.

Both take the tokenizer from the checkpoint; base and tuned must share it (the loader refuses
a pair whose vocabularies differ), so inputs are tokenised once and reused for both models.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import TaskError
from ..metrics import GENERATION_METRICS, LM_METRICS
from .base import ModelMeta, normalize_ids, Task
from .batching import trimmed_batches
from .classification import logits_of


@dataclass
class _TextSplit:
    ids: np.ndarray
    texts: list[str]
    columns: dict[str, np.ndarray]


def _build_splits(
    splits: Mapping[str, Any], kind: str
) -> dict[str, tuple[np.ndarray, list[Any], dict[str, np.ndarray]]]:
    """Normalise ``{"name": (items, ids?, columns?)}`` (or bare item lists) into arrays."""
    if not splits:
        raise TaskError(f"{kind} needs at least one split")
    out = {}
    for name, spec in splits.items():
        if isinstance(spec, tuple):
            items, split_ids, cols = (spec + (None, None))[:3]
        else:
            items, split_ids, cols = spec, None, None
        items = list(items)
        columns = {k: np.asarray(v) for k, v in (cols or {}).items()}
        for col, values in columns.items():
            if len(values) != len(items):
                raise TaskError(f"{kind}: split {name!r} column {col!r} has {len(values)} values for {len(items)} examples")
        out[name] = (normalize_ids(split_ids, len(items), f"{name}/"), items, columns)
    return out


@dataclass(frozen=True)
class SplitRecord:
    """One split of a text or speech task: ids, slice columns and its per-example fields by name
    (``texts``; ``prompts`` and ``targets``; ``audio`` and ``transcripts``)."""

    ids: np.ndarray
    columns: dict[str, np.ndarray]
    fields: dict[str, list[Any]]


class _SplitTask(Task):
    """Shared bookkeeping: named splits (``Task._splits``, one :class:`SplitRecord` each) with ids,
    optional slice columns and per-example fields; ids, split names and slice columns come from
    the base class, as for every task."""

    label_key = None
    pred_key = None

    def __init__(self) -> None:
        self._splits: dict[str, SplitRecord] = {}

    def _add_split(self, name: str, ids: np.ndarray, columns: dict[str, np.ndarray], **fields: list[Any]) -> None:
        self._splits[name] = SplitRecord(ids, columns, fields)

    def _field(self, split: str, name: str) -> Any:
        return self.split(split).fields[name]



# -- held-out text likelihood ---------------------------------------------------------------


class LanguageModelingTask(_SplitTask):
    """Held-out texts scored by a causal LM: per text, the summed NLL of *every* token.

    Scoring follows lm-evaluation-harness's ``loglikelihood_rolling`` (``tasks.loglik``): each
    text is encoded with the tokenizer's default special tokens, the first token is predicted
    from the prefix token (BOS, else EOS), and a text longer than the window is scored in
    rolling windows of ``max_length`` tokens (default: the model's maximum length, as lm-eval
    resolves it), each token once, conditioned on up to ``max_length`` tokens before it. Per
    text the outputs are the NLL sum, the scored tokens, words (whitespace-separated, lm-eval's
    count) and UTF-8 bytes, so ``perplexity`` (per token), ``word_perplexity``,
    ``byte_perplexity`` and ``bits_per_byte`` are lm-eval's numbers on the same texts.

    ``truncate=True`` scores only the first ``max_length`` tokens of each text (cheaper, not
    comparable with lm-eval); the number of texts cut is warned about when the split is
    prepared and is in the ``truncated`` output.
    """

    metrics = LM_METRICS
    default_metric = "perplexity"

    def __init__(
        self,
        texts: Sequence[str] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        max_length: int | None = None,
        truncate: bool = False,
        splits: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        super().__init__()
        if splits is None:
            if texts is None:
                raise TaskError("LanguageModelingTask needs texts (or splits={...})")
            splits = {"test": (list(texts), ids, columns)}
        if max_length is not None and max_length < 1:
            raise TaskError(f"max_length={max_length} leaves no token to score (need at least 1)")
        if truncate and max_length is None:
            raise TaskError("truncate=True needs max_length= (the number of tokens scored per text)")
        self.max_length = None if max_length is None else int(max_length)
        self.truncate = bool(truncate)
        for name, (split_ids, items, cols) in _build_splits(splits, "LanguageModelingTask").items():
            texts_list = [str(t) for t in items]
            empty = [str(i) for i, t in zip(split_ids, texts_list) if not t.strip()]
            if empty:
                raise TaskError(f"LanguageModelingTask split {name!r}: empty texts (ids {empty[:3]})")
            self._add_split(name, split_ids, cols, texts=texts_list)

    @classmethod
    def from_text_file(
        cls,
        path: str | Path,
        *,
        by: str = "paragraph",
        min_chars: int = 40,
        test_fraction: float | None = None,
        seed: int = 0,
        max_length: int | None = None,
        truncate: bool = False,
    ) -> "LanguageModelingTask":
        """Examples from a UTF-8 text file: one per paragraph (blank-line separated) or per line.

        Pieces shorter than ``min_chars`` are dropped; ids are ``<file name>:<piece number>``.
        With ``test_fraction`` the pieces are split (seeded) into ``train`` / ``test``.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskError(f"cannot read text file {path}: {exc}") from None
        pieces = split_text(text, by=by, min_chars=min_chars)
        if not pieces:
            raise TaskError(f"{path}: no {by} of at least {min_chars} characters")
        ids = [f"{path.name}:{i}" for i in range(len(pieces))]
        if test_fraction is None:
            return cls(pieces, ids, max_length=max_length, truncate=truncate)
        order = np.random.default_rng(seed).permutation(len(pieces))
        n_test = max(1, int(round(test_fraction * len(pieces))))
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
        return cls(
            max_length=max_length,
            truncate=truncate,
            splits={
                "train": ([pieces[i] for i in train], [ids[i] for i in train]),
                "test": ([pieces[i] for i in test], [ids[i] for i in test]),
            },
        )

    def texts(self, split: str) -> list[str]:
        return self._field(split, "texts")

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        return self.ids(split), self.max_length, "truncate" if self.truncate else "rolling", self.texts(split)

    def _window(self, meta: ModelMeta) -> int:
        from .loglik import model_max_length

        return self.max_length if self.max_length is not None else model_max_length(meta.config, meta.tokenizer)

    def prepare_key(self, meta: ModelMeta) -> str:
        return f"{meta.tokenizer_fingerprint}|{self._window(meta)}"

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        import warnings

        from .loglik import encode, prefix_token_id, rolling_rows

        tok = meta.tokenizer
        if tok is None:
            raise TaskError(f"task {self.name!r} needs a tokenizer, and the checkpoint folder has none")
        window = self._window(meta)
        prefix = prefix_token_id(tok)
        texts = self.texts(split)
        rows, ntok, cut = [], [], []
        for text in texts:
            tokens = encode(tok, text)
            cut.append(self.truncate and len(tokens) > window)
            if self.truncate:
                tokens = tokens[:window]
            if not tokens:
                raise TaskError(f"task {self.name!r}: a text tokenises to nothing")
            rows.append([(inp, n, tokens[done : done + n]) for (inp, n), done in _with_offsets(rolling_rows(tokens, prefix, window))])
            ntok.append(len(tokens))
        n_cut = int(sum(cut))
        if n_cut:
            warnings.warn(f"task {self.name!r}: {n_cut} of {len(texts)} texts are longer than max_length={window} tokens and were cut "
                          "(truncate=True); only their first tokens are scored", stacklevel=2)  # fmt: skip
        pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else (tok.eos_token_id or 0)
        return {
            "rows": rows, "ntok": np.asarray(ntok, dtype=np.int64), "pad": int(pad), "truncated": np.asarray(cut, dtype=bool),
            "nwords": np.asarray([len(re.split(r"\s+", t)) for t in texts], dtype=np.int64),
            "nbytes": np.asarray([len(t.encode("utf-8")) for t in texts], dtype=np.int64),
        }  # fmt: skip

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        import torch

        for lo in range(0, len(indices), batch_size):
            chunk = [int(i) for i in indices[lo : lo + batch_size]]
            yield {
                "rows": [prepared["rows"][i] for i in chunk], "pad": prepared["pad"], "chunk": batch_size,
                **{k: torch.from_numpy(prepared[k][chunk]) for k in ("ntok", "nwords", "nbytes", "truncated")},
            }  # fmt: skip

    def lengths(self, prepared: Any) -> np.ndarray:
        """Each text's longest window (causal right padding): length-bucketed batches."""
        return np.array([max((len(r[0]) for r in rows), default=0) for rows in prepared["rows"]], dtype=np.int64)

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        import torch

        from .loglik import score_rows

        flat = [(inp, n) for rows in batch["rows"] for inp, n, _ in rows]
        targets = [t for rows in batch["rows"] for _, _, t in rows]
        lls, _, finite = score_rows(model, flat, targets, batch["pad"], chunk=max(1, batch["chunk"]))
        nll = torch.zeros(len(batch["rows"]), dtype=torch.float64)
        ok = torch.ones(len(batch["rows"]), dtype=torch.bool)
        pos = 0
        for i, rows in enumerate(batch["rows"]):
            nll[i] = -sum(float(v) for v in lls[pos : pos + len(rows)])  # windows add up in double, as lm-eval's do
            ok[i] = bool(finite[pos : pos + len(rows)].all())
            pos += len(rows)
        device = batch["ntok"].device
        return {"nll": nll.to(device), "ntok": batch["ntok"], "nwords": batch["nwords"], "nbytes": batch["nbytes"],
                "truncated": batch["truncated"], "finite": ok.to(device)}  # fmt: skip


def _with_offsets(windows: Iterator[tuple[list[int], int]]) -> Iterator[tuple[tuple[list[int], int], int]]:
    done = 0
    for inp, n in windows:
        yield (inp, n), done
        done += n


def split_text(text: str, *, by: str = "paragraph", min_chars: int = 40) -> list[str]:
    """Pieces of a document: paragraphs (blank-line separated, inner whitespace collapsed) or lines."""
    if by == "paragraph":
        raw = re.split(r"\n\s*\n", text)
    elif by == "line":
        raw = text.splitlines()
    else:
        raise TaskError(f"by={by!r}: expected 'paragraph' or 'line'")
    pieces = [" ".join(p.split()) for p in raw]
    return [p for p in pieces if len(p) >= min_chars]


# -- greedy generation, exact match ---------------------------------------------------------


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
            if prompts is None or targets is None:
                raise TaskError("GenerationExactMatchTask needs prompts and targets (or splits={...})")
            prompts, targets = list(prompts), list(targets)
            if len(prompts) != len(targets):
                raise TaskError(f"GenerationExactMatchTask: {len(prompts)} prompts but {len(targets)} targets")
            splits = {"test": (list(zip(prompts, targets)), ids, columns)}
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
                    raise TaskError(f"GenerationExactMatchTask split {name!r}: expected (prompt, answer) pairs, got {item!r}") from None
                answers = (target,) if isinstance(target, str) else tuple(str(t) for t in target)
                if not answers:
                    raise TaskError(f"GenerationExactMatchTask split {name!r}: prompt {prompt!r} has no reference answer")
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
            raise TaskError(f"task {self.name!r} asks for chat_template=True but the checkpoint's tokenizer has no chat template")
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
        ids = np.full((len(seqs), width), pad, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):  # left padding: every prompt ends at the last column
            ids[i, width - len(s) :] = s
            mask[i, width - len(s) :] = 1
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
        tokens, finite = greedy_decode(model, batch["input_ids"], batch["attention_mask"], ctx.max_new_tokens, eos, ctx.pad_id)
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
        return {i: decode_generation(tokenizer, [t for t in row.tolist() if t >= 0], self.stop) for i, row in zip(result.ids.tolist(), rows)}


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
            result = model(input_ids=step_input, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
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
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=sorted(eos_ids) or None,
        pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
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
    logits = torch.stack(list(result.logits), dim=1) if result.logits else torch.zeros((batch, 0, 1), device=input_ids.device)
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


# -- built-in held-out text ----------------------------------------------------------------


def python_docs() -> LanguageModelingTask:
    """Built-in ``python-docs``: the prose paragraphs of Python's reference documentation.

    The text ships with every CPython (``pydoc_data.topics``, what ``help("if")`` shows), so
    it is always offline: about 370 English paragraphs of at least 200 characters, code
    examples and tables left out, every token scored in rolling windows of 128 tokens. The text (and so the data
    fingerprint) follows the Python version running the tests.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped-down Python builds
        raise TaskError("task 'python-docs' needs Python's pydoc_data module, missing from this Python build") from None
    texts, ids = [], []
    for topic in sorted(topics):
        for k, para in enumerate(re.split(r"\n\s*\n", topics[topic])):
            if any(line.startswith("   ") for line in para.splitlines()):
                continue  # indented: code, grammar productions, tables
            text = " ".join(para.split())
            if len(text) >= 200 and sum(c.isalpha() or c == " " for c in text) / len(text) > 0.9:
                texts.append(text)
                ids.append(f"{topic}:{k}")
    return LanguageModelingTask(texts, ids, max_length=128)
