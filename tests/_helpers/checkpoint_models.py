"""Checkpoint builders shared by tests/engine/test_checkpoints.py and the hostile and contract suites.

Tiny BERT classifiers, tokenizers and LoRA adapters built in temporary folders; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
WORDS = [f"w{i}" for i in range(40)]


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


def tiny_bert_config(**overrides):
    kwargs = dict(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def make_tokenizer(words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip


def save_bert(folder: Path, *, seed=0, tokenizer=True, model_cls=None, **config_overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = (model_cls or transformers.BertForSequenceClassification)(tiny_bert_config(**config_overrides)).eval()
    model.save_pretrained(folder)
    if tokenizer:
        make_tokenizer().save_pretrained(folder)
    return model


def save_bert_config(folder: Path) -> None:
    tiny_bert_config(architectures=["BertForSequenceClassification"]).save_pretrained(folder)


def bert_inputs():
    return {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}


def make_adapter(bert_dir: Path, folder: Path) -> torch.Tensor:
    """Save a LoRA adapter (with a retrained head) for bert_dir; returns its logits on bert_inputs()."""
    peft = pytest.importorskip("peft")
    model = transformers.BertForSequenceClassification.from_pretrained(bert_dir)
    config = peft.LoraConfig(
        r=2, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS"
    )
    adapted = peft.get_peft_model(model, config)
    torch.manual_seed(3)
    for name, param in adapted.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            nn.init.normal_(param, std=0.5)  # LoRA B starts at zero: make the adapter change something
    adapted.save_pretrained(folder)
    with torch.no_grad():
        return adapted.eval()(**bert_inputs()).logits


def spy_on_checkpoint_reads(monkeypatch, spy) -> None:
    """Route every ``open`` of the pytest_forgetting.checkpoints package (each module's own global) through ``spy``."""
    import importlib
    import pkgutil

    from pytest_forgetting import checkpoints

    for info in pkgutil.walk_packages(checkpoints.__path__, checkpoints.__name__ + "."):
        monkeypatch.setattr(importlib.import_module(info.name), "open", spy, raising=False)
