"""Log-likelihood scoring of token continuations, with lm-evaluation-harness's conventions.

Shared by ``MultipleChoiceTask`` (a context and each choice) and the rolling perplexity of
``LanguageModelingTask``, so that their numbers equal lm-eval's on the same documents:

- texts are encoded with the tokenizer's default special tokens, except a text that already
  starts with the prefix token's text; the *prefix token* is the BOS token, else the EOS token;
- a (context, continuation) pair moves the context's trailing whitespace to the continuation,
  encodes ``context + continuation`` as a whole and takes the continuation's tokens as what
  follows the context's own encoding; an empty context is the prefix token;
- a model sees at most ``max_length`` tokens (its ``n_positions`` / ``max_position_embeddings``
  / ``n_ctx``, else the tokenizer's ``model_max_length``, else 2048): longer inputs lose their
  left end; rolling windows score every token of a long text (the first window conditions on
  the prefix token, each next one on the tokens before it, up to ``max_length``);
- a continuation's log-likelihood is the sum of its tokens' log-softmax values, summed in the
  model's dtype per window and accumulated over windows in double precision.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import TaskError

DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1_000_000


def prefix_token_id(tok: Any) -> int:
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None:
        return int(bos)
    eos = getattr(tok, "eos_token_id", None)
    if eos is None:
        raise TaskError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")
    return int(eos)


def encode(tok: Any, text: str, *, special: bool | None = None) -> list[int]:
    """Token ids of ``text``: the tokenizer's default special tokens unless it already starts with the prefix token."""
    kwargs: dict[str, Any] = {}
    if special is not None:
        kwargs["add_special_tokens"] = special
    elif text.startswith(tok.decode(prefix_token_id(tok))):
        kwargs["add_special_tokens"] = False
    return list(tok.encode(text, **kwargs))


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of a causal LM request."""
    if context == "":
        cont = encode(tok, continuation, special=False)
        prefix = prefix_token_id(tok)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tok, context + continuation)
    ctx = encode(tok, context)
    return ctx, whole[len(ctx) :]


def padding_id(tok: Any) -> int:
    """The id that right-pads scored rows (causal: never attended to): the pad token, else EOS, else 0."""
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else (tok.eos_token_id or 0)
    return int(pad)


def model_max_length(config: Any, tok: Any) -> int:
    """The longest input the model takes (see the module docstring)."""
    for cfg in (getattr(config, "text_config", None), config):
        if cfg is None:
            continue
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    value = getattr(tok, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _TOKENIZER_INFINITY:
        return value
    return DEFAULT_MAX_LENGTH


def request_row(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], int]:
    """(model input, number of continuation tokens scored at its end) of one request."""
    if not continuation:
        raise TaskError("a continuation tokenises to nothing")
    if len(continuation) > max_length:
        raise TaskError(f"a continuation of {len(continuation)} tokens is longer than the model's {max_length}")
    return (context + continuation)[-(max_length + 1) :][:-1], len(continuation)


def rolling_rows(tokens: Sequence[int], prefix: int, max_length: int) -> Iterator[tuple[list[int], int]]:
    """Windows that score every token of ``tokens`` once: (model input, tokens scored at its end)."""
    full = [prefix, *tokens]
    done = 0
    while done < len(tokens):
        end = min(done + max_length, len(tokens))
        yield full[max(0, end - max_length) : end], end - done
        done = end


def score_rows(
    model: Any,
    rows: Sequence[tuple[Any, int]],
    targets: Sequence[Sequence[int]],
    pad_id: int,
    chunk: int,
    *,
    greedy: bool = False,
) -> tuple[Any, Any, Any]:
    """Per row: (sum of log-probabilities of its targets, all targets greedy, finite), as tensors
    (double, bool or None, bool).

    ``rows[i] = (input ids, n)``: the last ``n`` logits of the input predict ``targets[i]``.
    Right-padded in chunks of ``chunk`` rows (``batching.trimmed_batches``); no attention mask
    (causal: padding comes after).
    Only a row's scored positions reach the log-softmax (a view, no copy), so the scoring costs
    follow the real tokens, not the padding; ``greedy`` (every target the argmax) only when asked.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .batching import Ragged, trimmed_batches
    from .classification import logits_of

    device = (
        next((p.device for p in model.parameters()), torch.device("cpu"))
        if hasattr(model, "parameters")
        else torch.device("cpu")
    )
    lls: list[float] = []
    hits: list[bool] = []
    finite: list[bool] = []
    kwargs = {"use_cache": False} if hasattr(model, "config") else {}
    inputs = [ids for ids, _ in rows]
    lengths = np.fromiter((len(ids) for ids in inputs), dtype=np.int64, count=len(inputs))
    padded = {"input_ids": Ragged(inputs, fill=pad_id)}
    for part, _, batch in trimmed_batches(padded, lengths, np.arange(len(rows)), chunk):
        logits = logits_of(model(batch["input_ids"].to(device), **kwargs))
        for i, k in enumerate(part.tolist()):
            ids, n = rows[k]
            sel = logits[i, len(ids) - n : len(ids)]
            logp = F.log_softmax(sel if sel.dtype == torch.float64 else sel.float(), dim=-1)
            tgt = torch.as_tensor(list(targets[k]), dtype=torch.long, device=logp.device)
            lls.append(float(logp.gather(1, tgt[:, None]).sum()))
            # a log-probability is never +inf (at most 0 up to rounding; NaN propagates):
            # all are finite when the smallest is
            finite.append(n == 0 or bool(torch.isfinite(logp.min())))
            if greedy:
                hits.append(bool((logp.argmax(dim=-1) == tgt).all()))
    return (
        torch.tensor(lls, dtype=torch.float64),
        torch.tensor(hits, dtype=torch.bool) if greedy else None,
        torch.tensor(finite, dtype=torch.bool),
    )


def score_groups(
    model: Any, groups: Sequence[Sequence[tuple[Any, int, Sequence[int]]]], pad_id: int, chunk: int
) -> tuple[list[Any], Any]:
    """:func:`score_rows` over groups of ``(input ids, n, targets)`` requests (a text's windows, a
    question's choices), scored as one list: per group its rows' log-likelihoods (a slice of one
    double tensor), and per group whether all of them are finite (a bool tensor)."""
    import torch

    flat = [(inp, n) for rows in groups for inp, n, _ in rows]
    targets = [t for rows in groups for _, _, t in rows]
    lls, _, finite = score_rows(model, flat, targets, pad_id, chunk)
    per_group, ok = [], []
    pos = 0
    for rows in groups:
        per_group.append(lls[pos : pos + len(rows)])
        ok.append(bool(finite[pos : pos + len(rows)].all()))
        pos += len(rows)
    return per_group, torch.tensor(ok, dtype=torch.bool)
