"""The fine-tuning runner: determinism, each strategy's claim, saving, and the real forgetting scenario.

Unit tests use a tiny MLP on synthetic blobs (milliseconds per fine-tune). The scenario tests
train the example project's CNN on real MNIST once per session (with ``finetune`` itself) and
fine-tune it on upscaled scikit-learn digits, as ``benchmarks/finetune_strategies.py`` does.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pytest_forgetting as pf
from pytest_forgetting.finetune import (
    STRATEGIES,
    FinetuneError,
    _lr_factor,
    as_data,
    finetune,
    fisher_diagonal,
    interpolate,
    parameter_blocks,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads oversubscribe and run ~7x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- tiny fixtures ------------------------------------------------------------------------------

K = 3  # classes


def blobs(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, 4, 4) float32 images: class k lights up pixel k (plus a domain ``shift`` on pixel 8+k)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = rng.normal(0.0, 0.3, size=(n, 1, 4, 4)).astype(np.float32)
    flat = x.reshape(n, 16)
    flat[np.arange(n), y] += 2.0
    if shift:
        flat[np.arange(n), 8 + y] += shift
        flat[np.arange(n), y] -= 1.5  # the new domain weakens the old cue
    return x, y


def blob_task(shift: float = 0.0, n: int = 96, seed: int = 0) -> pf.ImageClassificationTask:
    xtr, ytr = blobs(n, seed, shift)
    xte, yte = blobs(60, seed + 100, shift)
    task = pf.ImageClassificationTask(splits={"train": (xtr, ytr), "test": (xte, yte)})
    task.name = f"blobs{shift:g}"
    return task


def mlp(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Dropout(dropout), nn.Linear(12, K)
    )


@pytest.fixture(scope="module")
def old_task():
    return blob_task(0.0)


@pytest.fixture(scope="module")
def new_task():
    return blob_task(2.5, seed=1)


@pytest.fixture(scope="module")
def tiny_base(old_task):
    """The tiny MLP trained on the old domain (full fine-tune from random init)."""
    return finetune(mlp(), old_task, lr=0.05, epochs=4, batch_size=16, seed=0)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def accuracy(model: nn.Module, task, split: str = "test") -> float:
    d = task.split(split)
    with torch.no_grad():
        return float((model(torch.from_numpy(d.inputs)).argmax(1).numpy() == d.labels).mean())


OPTIONS = {
    "ewc": {"retain": "OLD", "fisher_examples": 16},
    "replay": {"retain": "OLD", "fraction": 0.25},
    "lora": {"r": 2},
    "wise_ft": {"alpha": 0.5},
}


def options_for(strategy: str, old_task) -> dict:
    return {k: (old_task if v == "OLD" else v) for k, v in OPTIONS.get(strategy, {}).items()}


# -- determinism and isolation -------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["full", "lora", "replay"])
def test_same_arguments_give_bit_identical_weights(tiny_base, new_task, old_task, strategy):
    kw = dict(strategy=strategy, lr=0.02, epochs=2, batch_size=16, seed=3, **options_for(strategy, old_task))
    a, b = finetune(tiny_base, new_task, **kw), finetune(tiny_base, new_task, **kw)
    assert same(state(a), state(b))
    c = finetune(tiny_base, new_task, **{**kw, "seed": 4})
    assert not same(state(a), state(c)), "another seed must give another data order / dropout"


def test_global_state_is_restored(tiny_base, new_task):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torch.use_deterministic_algorithms(False)
    finetune(tiny_base, new_task, lr=0.01, max_steps=3, seed=9)
    assert torch.equal(torch.rand(3), expected), "the caller's RNG stream must be untouched"
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_base_model_is_never_mutated(tiny_base, new_task, old_task, strategy):
    before = state(tiny_base)
    flags = [p.requires_grad for p in tiny_base.parameters()]
    tiny_base.eval()
    tuned = finetune(
        tiny_base, new_task, strategy=strategy, lr=0.05, max_steps=4, batch_size=8, **options_for(strategy, old_task)
    )
    assert same(state(tiny_base), before)
    assert [p.requires_grad for p in tiny_base.parameters()] == flags
    assert not tiny_base.training
    assert tuned is not tiny_base and not tuned.training
    assert tuned.finetune_info.strategy == strategy


# -- strategies -------------------------------------------------------------------------------------


def test_parameter_blocks_follow_depth():
    assert [b for b, _ in parameter_blocks(mlp())] == ["1", "3", "6"]
    blocks = dict(
        parameter_blocks(nn.ModuleDict({"enc": nn.ModuleDict({"emb": nn.Embedding(3, 2)}), "head": nn.Linear(2, 2)}))
    )
    assert blocks == {"enc.emb": ["enc.emb.weight"], "head": ["head.weight", "head.bias"]}


def test_freeze_leaves_frozen_parameters_and_buffers_bit_identical(tiny_base, new_task):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K))
    before = state(model)
    tuned = finetune(model, new_task, strategy="freeze", train_last=1, lr=0.05, epochs=2, batch_size=16)
    after = state(tuned)
    frozen = [k for k in before if not k.startswith("4.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "frozen weights and BatchNorm statistics"
    assert not torch.equal(before["4.weight"], after["4.weight"]), "the head trains"

    by_pattern = finetune(
        tiny_base, new_task, strategy="freeze", freeze=["1.*", "3.weight"], lr=0.05, epochs=1, batch_size=16
    )
    b, a = state(tiny_base), state(by_pattern)
    assert torch.equal(b["1.weight"], a["1.weight"]) and torch.equal(b["3.weight"], a["3.weight"])
    assert not torch.equal(b["3.bias"], a["3.bias"]) and not torch.equal(b["6.weight"], a["6.weight"])
    assert all(p.requires_grad for p in by_pattern.parameters()), "the returned model's flags are the input's"
    with pytest.raises(FinetuneError, match="match no parameter"):
        finetune(tiny_base, new_task, strategy="freeze", freeze=["encoder.*"])


def test_gradual_unfreeze_adds_one_block_per_epoch_from_the_head(tiny_base, new_task):
    tuned = finetune(tiny_base, new_task, strategy="gradual_unfreeze", lr=0.05, epochs=2, batch_size=16)
    assert tuned.finetune_info.trainable_blocks_per_epoch == [1, 2]
    b, a = state(tiny_base), state(tuned)
    assert torch.equal(b["1.weight"], a["1.weight"]), "the deepest block never unfroze in 2 epochs"
    assert not torch.equal(b["3.weight"], a["3.weight"]) and not torch.equal(b["6.weight"], a["6.weight"])
    three = finetune(
        tiny_base, new_task, strategy="gradual_unfreeze", blocks_per_epoch=2, lr=0.05, epochs=3, batch_size=16
    )
    assert three.finetune_info.trainable_blocks_per_epoch == [2, 3, 3]


def test_layer_lr_decay_slows_the_deep_blocks(tiny_base, new_task):
    plain = finetune(tiny_base, new_task, lr=0.02, epochs=1, batch_size=16, optimizer="sgd")
    decayed = finetune(tiny_base, new_task, lr=0.02, epochs=1, batch_size=16, optimizer="sgd", layer_lr_decay=1e-3)
    b = state(tiny_base)

    def moved(model, key):
        return float((state(model)[key] - b[key]).abs().max())

    assert moved(decayed, "6.weight") > 0.5 * moved(plain, "6.weight")  # the head keeps (about) its lr
    assert moved(decayed, "1.weight") < 1e-2 * moved(plain, "1.weight")  # two blocks down: lr * 1e-6


def test_l2sp_pulls_towards_the_base(tiny_base, new_task):
    def distance(model):
        return math.sqrt(sum(float(((state(model)[k] - v) ** 2).sum()) for k, v in state(tiny_base).items()))

    kw = dict(lr=0.02, epochs=3, batch_size=16)
    full = distance(finetune(tiny_base, new_task, **kw))
    weak = distance(finetune(tiny_base, new_task, strategy="l2sp", penalty=1e-6, **kw))
    strong = distance(finetune(tiny_base, new_task, strategy="l2sp", penalty=1e4, **kw))
    assert weak == pytest.approx(full, rel=0.05)
    assert strong < 0.2 * full


def test_fisher_diagonal_is_the_mean_squared_per_example_gradient():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    data = as_data((x, y))
    fisher = fisher_diagonal(model, data, np.arange(5))
    with torch.no_grad():  # softmax regression: d(-log p_y)/dW = (p - onehot(y)) x^T
        p = torch.softmax(model(x), dim=1)
        g = p - torch.nn.functional.one_hot(y, 3).float()
        expected_w = torch.stack([torch.outer(g[i], x[i]) ** 2 for i in range(5)]).mean(0)
        expected_b = (g**2).mean(0)
    torch.testing.assert_close(fisher["weight"], expected_w)
    torch.testing.assert_close(fisher["bias"], expected_b)


def test_ewc_holds_the_weights_the_retained_task_needs_and_frees_the_others():
    """Pixels 8.. are always ~0 in the retained data, so their weights have ~zero Fisher and move freely."""
    torch.manual_seed(0)
    old_x, old_y = blobs(90, 0)
    old_x[:, :, 2:, :] = 0.0  # pixels 8..15 carry nothing in the old domain
    new_x, new_y = blobs(90, 1, shift=2.5)
    base = finetune(nn.Sequential(nn.Flatten(), nn.Linear(16, K)), (old_x, old_y), lr=0.05, epochs=3, batch_size=16)
    kw = dict(lr=0.02, epochs=3, batch_size=16)
    full = finetune(base, (new_x, new_y), **kw)
    ewc = finetune(base, (new_x, new_y), strategy="ewc", retain=(old_x, old_y), penalty=1e3, **kw)
    l2sp = finetune(base, (new_x, new_y), strategy="l2sp", penalty=1e3, **kw)
    w0 = base[1].weight.detach()

    def moved(model, cols):
        return float((model[1].weight.detach() - w0)[:, cols].abs().mean())

    old_cols, free_cols = slice(0, 8), slice(8, 16)
    assert moved(ewc, old_cols) < 0.25 * moved(full, old_cols), "high-Fisher weights held near the base"
    assert moved(ewc, free_cols) > 0.5 * moved(full, free_cols), "zero-Fisher weights learn the new cue"
    assert moved(l2sp, free_cols) < 0.25 * moved(full, free_cols), "L2-SP (uniform weights) holds everything"
    assert ewc.finetune_info.fisher_mean > 0


def test_replay_mixes_the_given_fraction_of_every_batch(tiny_base, new_task, old_task):
    tuned = finetune(
        tiny_base, new_task, strategy="replay", retain=old_task, fraction=0.3, lr=0.02, epochs=2, batch_size=10
    )
    info = tuned.finetune_info
    per_batch_replayed, per_batch_new = 3, 7
    assert info.steps == 2 * math.ceil(96 / per_batch_new)
    assert info.replayed_examples == per_batch_replayed * info.steps
    assert info.new_examples == 2 * 96, "every new example once per epoch"
    with pytest.raises(FinetuneError, match="needs retain="):
        finetune(tiny_base, new_task, strategy="replay")


def test_lora_keeps_the_base_weights_and_saves_a_reloadable_adapter(tiny_base, new_task, tmp_path):
    import peft

    from pytest_forgetting.checkpoints import load_checkpoint

    folder = tmp_path / "adapter"
    tuned = finetune(tiny_base, new_task, strategy="lora", r=2, lr=0.05, epochs=2, batch_size=16, save_to=folder)
    assert isinstance(tuned, peft.PeftModel)
    assert same(state(copy.deepcopy(tuned).unload()), state(tiny_base)), "non-adapter weights are the base's"
    lora = {k: v for k, v in state(tuned).items() if "lora_B" in k}
    assert lora and any(float(v.abs().max()) > 0 for v in lora.values()), "the adapters trained"
    assert tuned.finetune_info.trainable_params < tuned.finetune_info.total_params / 2
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()

    x = torch.from_numpy(new_task.split("test").inputs)
    with torch.no_grad():
        expected = tuned(x)
        reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_base), str(folder)).eval()
        torch.testing.assert_close(reloaded(x), expected)
        # the path --tuned-ckpt takes: base checkpoint + adapter folder, merged
        loaded = load_checkpoint(str(folder), base=load_checkpoint(copy.deepcopy(tiny_base), role="base"))
        torch.testing.assert_close(loaded.model(x), expected, rtol=1e-5, atol=1e-5)
    assert not any("lora" in k for k in state(tiny_base))


def test_save_to_safetensors_loads_strictly_with_a_model_factory(tiny_base, new_task, tmp_path):
    from pytest_forgetting.checkpoints import load_checkpoint

    path = tmp_path / "tuned.safetensors"
    tuned = finetune(tiny_base, new_task, lr=0.05, epochs=1, batch_size=16, save_to=path)
    loaded = load_checkpoint(str(path), model_factory=lambda: mlp(seed=5))
    assert same(state(loaded.model), state(tuned))
    assert tuned.finetune_info.saved_to == str(path)
    with pytest.raises(FinetuneError, match=".safetensors"):
        finetune(tiny_base, new_task, max_steps=1, save_to=tmp_path / "folder")


def test_wise_ft_endpoints_and_midpoint(tiny_base, new_task):
    kw = dict(lr=0.05, epochs=2, batch_size=16, seed=1)
    full = state(finetune(tiny_base, new_task, **kw))
    zero = finetune(tiny_base, new_task, strategy="wise_ft", alpha=0.0, **kw)
    one = finetune(tiny_base, new_task, strategy="wise_ft", alpha=1.0, **kw)
    half = finetune(tiny_base, new_task, strategy="wise_ft", alpha=0.5, **kw)
    assert same(state(zero), state(tiny_base))
    assert same(state(one), full)
    for k, v in state(half).items():
        torch.testing.assert_close(v, (state(tiny_base)[k] + full[k]) / 2)
    assert half.wise_ft_alpha == 0.5
    other = interpolate(tiny_base, one, 0.25)
    assert other is not one and other is not tiny_base


def test_wise_ft_auto_needs_keep_and_a_session(tiny_base, new_task):
    with pytest.raises(FinetuneError, match="needs keep="):
        finetune(tiny_base, new_task, strategy="wise_ft", alpha="auto")
    with pytest.raises(FinetuneError, match="session"):
        finetune(tiny_base, new_task, strategy="wise_ft", alpha="auto", keep=[{"task": "mnist", "max_drop": 0.02}])


def test_early_stopping_holds_out_a_validation_split_and_restores_the_best(tiny_base, new_task, old_task):
    tuned = finetune(
        tiny_base, new_task, lr=0.05, epochs=6, batch_size=16, early_stopping={"patience": 1, "val_fraction": 0.25}
    )
    info = tuned.finetune_info
    assert info.new_examples <= info.epochs * 72, "a quarter of the 96 examples is held out"
    assert info.validation[0]["step"] == 0 and len(info.validation) >= 2
    best = max(v["val_accuracy"] for v in info.validation)
    assert info.best_step == next(v["step"] for v in info.validation if v["val_accuracy"] == best)

    guarded = finetune(tiny_base, new_task, lr=0.2, epochs=3, batch_size=16,
                       early_stopping={"retain": old_task, "max_drop": 0.0, "every": 1})  # fmt: skip
    g = guarded.finetune_info
    assert g.stopped == "retain_drop"
    kept = next(v for v in g.validation if v["step"] == g.best_step)
    assert kept["retain_accuracy"] >= g.validation[0]["retain_accuracy"]


def test_budgets_schedules_and_progress(tiny_base, new_task):
    assert finetune(tiny_base, new_task, max_steps=3, epochs=5, batch_size=16).finetune_info.steps == 3
    assert finetune(tiny_base, new_task, max_steps=50, epochs=1, batch_size=16).finetune_info.steps == 6
    timed = finetune(tiny_base, new_task, epochs=50, batch_size=4, time_budget_s=1e-9)
    assert (timed.finetune_info.steps, timed.finetune_info.stopped) == (1, "time_budget")
    lines: list[str] = []
    finetune(tiny_base, new_task, max_steps=6, batch_size=16, progress=lines.append, log_every=2)
    assert [ln.split(" loss")[0] for ln in lines[:3]] == [f"finetune[full] step {s}/6 epoch 1" for s in (2, 4, 6)]
    assert lines[-1].startswith("finetune[full] done: 6 steps")

    assert [_lr_factor(s, 10, 2, "constant") for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert _lr_factor(2, 10, 2, "linear") == 1.0 and _lr_factor(9, 10, 0, "linear") == pytest.approx(0.1)
    assert _lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)
    for schedule in ("linear", "cosine"):
        finetune(tiny_base, new_task, max_steps=4, lr_schedule=schedule, warmup=0.5, batch_size=16)


def test_training_sources_task_dataset_and_arrays(tiny_base, new_task):
    x, y = blobs(40, 3, 2.5)
    kw = dict(lr=0.05, epochs=1, batch_size=8, seed=2)
    from_pair = finetune(tiny_base, (x, y), **kw)
    from_dataset = finetune(tiny_base, torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), **kw)
    assert same(state(from_pair), state(from_dataset))
    single = pf.ImageClassificationTask(x, y)  # one "test" split: never trained on silently
    with pytest.raises(FinetuneError, match="no split 'train'"):
        finetune(tiny_base, single)
    finetune(tiny_base, single, split="test", max_steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "lorra"}, "did you mean 'lora'"),
        ({"strategy": "lora", "rank": 4}, "has no option 'rank'"),
        ({"strategy": "ewc"}, "needs retain="),
        ({"lr": -1.0}, "lr=-1.0 must be a positive number"),
        ({"lr_schedule": "cosin"}, "did you mean 'cosine'"),
        ({"epochs": 0}, "epochs=0"),
        ({"warmup": 1.5}, "warmup=1.5"),
        ({"early_stopping": {"patiense": 2}}, "did you mean 'patience'"),
        ({"strategy": "wise_ft", "alpha": 1.5}, "alpha=1.5"),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny_base, new_task, kwargs, message):
    with pytest.raises(FinetuneError, match=message.replace("(", r"\(").replace(".", r"\.")):
        finetune(tiny_base, new_task, **kwargs)


def test_text_classification_trains_with_full_and_lora():
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] good great fine bad awful poor movie film the a was is".split()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    texts = ["the movie was good", "a great film", "fine film", "the film was bad", "awful movie", "a poor film"] * 4
    labels = [1, 1, 1, 0, 0, 0] * 4
    task = pf.TextClassificationTask(splits={"train": (texts, labels), "test": (texts[:6], labels[:6])})
    assert [b for b, _ in parameter_blocks(model)][1:3] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    for strategy in ("full", "lora"):
        a = finetune(model, task, strategy=strategy, lr=3e-3, epochs=2, batch_size=8, tokenizer=tokenizer, seed=0)
        b = finetune(model, task, strategy=strategy, lr=3e-3, epochs=2, batch_size=8, tokenizer=tokenizer, seed=0)
        assert same(state(a), state(b))
        assert a.finetune_info.steps == 6
    mixed = finetune(
        model, task, strategy="replay", retain=task, fraction=0.5, max_steps=2, batch_size=4, tokenizer=tokenizer
    )
    assert mixed.finetune_info.replayed_examples == 4
    with pytest.raises(FinetuneError, match="tokenizer"):
        finetune(model, task, max_steps=1)


# -- the real scenario: MNIST base, fine-tuned on upscaled scikit-learn digits ----------------------


@pytest.fixture(scope="module")
def scenario():
    """(session, base model, base slot): the example CNN trained on MNIST by the example's own recipe.

    The same base as ``benchmarks/finetune_strategies.py`` (4 epochs of Adam, seed 0, one thread).
    """
    sys.path.insert(0, str(ROOT / "example_project"))
    try:
        from cnn import build_model, train
    finally:
        sys.path.remove(str(ROOT / "example_project"))
    from pytest_forgetting.options import Settings
    from pytest_forgetting.registry import REGISTRY
    from pytest_forgetting.session import ForgettingSession

    data = REGISTRY.get("mnist").split("train")
    torch.manual_seed(0)
    base = train(build_model(), torch.from_numpy(data.inputs), torch.from_numpy(data.labels), epochs=4, lr=2e-3, seed=0)
    session = ForgettingSession(Settings(device="cpu", no_cache=True))
    return session, base, session.module_slot("base", base)


def decide(scenario, model, kind: str, task: str, margin: float) -> dict:
    from pytest_forgetting.checks import bind_task, parse_check

    session, _, base_slot = scenario
    check = parse_check(kind, {"task": task, ("max_drop" if kind == "retains" else "min_gain"): margin}, "test")
    check = bind_task(check, "test", session.task(task))
    return session.run_check(check, test="test", base=base_slot, tuned=session.module_slot("tuned", model)).row


COMMON = dict(lr=1e-3, epochs=2, batch_size=32, seed=0)


def test_scenario_naive_full_finetune_forgets_mnist(scenario):
    _, base, _ = scenario
    keep = decide(scenario, base, "retains", "mnist", 0.02)
    assert keep["base"] > 0.9, "the base must know MNIST"
    tuned = finetune(base, "digits-28", **COMMON)
    keep = decide(scenario, tuned, "retains", "mnist", 0.02)
    gain = decide(scenario, tuned, "improves", "digits-28", 0.05)
    assert keep["verdict"] == "fail" and keep["drop"] > 0.05, keep
    assert gain["verdict"] == "pass", gain


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("replay", {"retain": "mnist", "fraction": 0.25}),
        ("freeze", {"train_last": 1}),
        ("lora", {"r": 4}),
        ("ewc", {"retain": "mnist", "penalty": 1.0}),
    ],
)
def test_scenario_mitigations_keep_mnist_within_two_points_and_learn_digits(scenario, strategy, options):
    tuned = finetune(scenario[1], "digits-28", strategy=strategy, **COMMON, **options)
    keep = decide(scenario, tuned, "retains", "mnist", 0.02)
    gain = decide(scenario, tuned, "improves", "digits-28", 0.05)
    assert keep["drop"] <= 0.02, keep
    assert keep["verdict"] != "fail", keep
    assert gain["verdict"] == "pass", gain


def test_scenario_wise_ft_auto_picks_the_largest_alpha_that_keeps_mnist(scenario):
    session, base, _ = scenario
    lines: list[str] = []
    tuned = finetune(base, "digits-28", strategy="wise_ft", alpha="auto", keep=[{"task": "mnist", "max_drop": 0.02}],
                     session=session, progress=lines.append, **COMMON)  # fmt: skip
    curve = tuned.wise_ft_curve
    assert [p["alpha"] for p in curve] == [round(i / 10, 1) for i in range(11)]
    assert curve[0]["ok"] and not curve[-1]["ok"], "alpha 0 is the base; alpha 1 is the naive fine-tune"
    assert tuned.wise_ft_alpha == max(p["alpha"] for p in curve if p["ok"]) > 0
    assert all("gain" in p for p in curve), "the curve tracks the new task too"
    assert any(ln.startswith(" * alpha=") for ln in lines), "the curve is printed with the choice marked"
    keep = decide(scenario, tuned, "retains", "mnist", 0.02)
    gain = decide(scenario, tuned, "improves", "digits-28", 0.05)
    assert keep["verdict"] == "pass" and gain["verdict"] == "pass", (keep, gain)


# -- through pytest: the finetune + forgetting fixtures, save_to, then --tuned-ckpt ---------------

PROJECT_MODELS = """
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
"""

PROJECT_CONFTEST = '''
import numpy as np
import pytest_forgetting as pf


def _data(n, offset, seed, roll=0):
    """One-hot inputs: "old" lights features 0..3, "new" features 4..7; "swap" relabels old's inputs."""
    rng = np.random.default_rng(seed)
    j = rng.integers(0, 4, size=n)
    x = np.zeros((n, 1, 1, 8), dtype=np.float32)
    x[np.arange(n), 0, 0, offset + j] = 1.0
    return x, (j + roll) % 4


def _task(offset, roll=0):
    return pf.ImageClassificationTask(splits={"train": _data(200, offset, 0, roll), "test": _data(400, offset, 1, roll)})


@pf.task("old")
def old():
    return _task(0)


@pf.task("new")
def new():
    return _task(4)


@pf.task("swap")
def swap():
    return _task(0, roll=1)
'''


def _plugin_args() -> list[str]:
    """The plugin module must import the ``finetune`` fixture; until it does, register fixtures.py directly."""
    import pytest_forgetting.plugin as plugin

    return [] if hasattr(plugin, "finetune") else ["-p", "pytest_forgetting.fixtures"]


@pytest.fixture
def project(pytester):
    from safetensors.torch import save_file

    pytester.makepyfile(projmodels=PROJECT_MODELS)
    pytester.makeconftest(PROJECT_CONFTEST)
    w = torch.zeros(4, 8)
    w[:, :4] = 5 * torch.eye(4)  # knows the old task, chance on the new one
    save_file({"1.weight": w, "1.bias": torch.zeros(4)}, str(pytester.path / "base.safetensors"))
    base = ["--base-ckpt", "base.safetensors", "--model-factory", "projmodels:build", "--forgetting-no-cache"]
    return pytester, base


def test_fixture_run_and_cli_run_of_the_saved_checkpoint_agree(project):
    pytester, base = project
    pytester.makepyfile(
        test_tune=textwrap.dedent("""
        def test_lora_keeps_old(finetune, forgetting, base_model):
            before = {k: v.clone() for k, v in base_model.state_dict().items()}
            tuned = finetune(train="new", strategy="lora", r=2, lr=0.05, epochs=3, batch_size=16, seed=0,
                             save_to="adapter", log_every=10)
            forgetting.assert_retains(tuned, task="old", max_drop=0.05)
            forgetting.assert_improves(tuned, task="new", min_gain=0.2)
            assert all((before[k] == v).all() for k, v in base_model.state_dict().items())

        def test_full_saved_as_safetensors(finetune):
            finetune(train="new", lr=0.05, epochs=2, batch_size=16, save_to="full.safetensors")
    """)
    )
    result = pytester.runpytest(*base, *_plugin_args(), "--forgetting-json", "fixture.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*finetune[[]lora[]] step 10/39 epoch*loss*"])
    rows = {r["task"]: r for r in json.loads((pytester.path / "fixture.json").read_text())["rows"]}

    pytester.makepyfile(
        test_tune="""
        import pytest

        @pytest.mark.retains(task="old", max_drop=0.05)
        def test_old(): pass

        @pytest.mark.improves(task="new", min_gain=0.2)
        def test_new(): pass
    """
    )
    for tuned in ("adapter", "full.safetensors"):
        result = pytester.runpytest(*base, "--tuned-ckpt", tuned, "--forgetting-json", "cli.json")
        result.assert_outcomes(passed=2)
        if tuned == "adapter":
            cli = {r["task"]: r for r in json.loads((pytester.path / "cli.json").read_text())["rows"]}
            for task in ("old", "new"):
                assert (
                    cli[task]["tuned"] == pytest.approx(rows[task]["tuned"])
                    and cli[task]["verdict"] == rows[task]["verdict"]
                )


def test_property_over_configs_runs_under_given_and_shows_the_shrunk_config(project):
    pytester, base = project
    pytester.makepyfile(
        test_property=textwrap.dedent("""
        from hypothesis import given, settings
        import pytest_forgetting.hyperparams as hp

        @settings(max_examples=4, deadline=None, derandomize=True)
        @given(cfg=hp.finetune_configs(strategies=["freeze", "lora", "replay"], lr=(1e-3, 1e-2), epochs=(1, 2),
                                       batch_size=16, retain="old"))
        def test_gentle_configs_keep_old(finetune, forgetting, cfg):
            forgetting.assert_retains(finetune(train="new", **cfg), task="old", max_drop=0.05)

        @settings(max_examples=10, deadline=None, database=None, derandomize=True)
        @given(cfg=hp.finetune_configs(strategies=["wise_ft"], lr=0.5, epochs=(1, 3), batch_size=16,
                                       extra={"weight_decay": 0.0}))
        def test_relabelling_forgets(finetune, forgetting, cfg):
            forgetting.assert_retains(finetune(train="swap", **cfg), task="old", max_drop=0.05)
    """)
    )
    result = pytester.runpytest(*base, *_plugin_args())
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "FailedHealthCheck" not in out
    failure = out[out.index("_ test_relabelling_forgets _") :]
    failure = failure[: failure.index("forgetting summary")]
    # the verdict and the shrunk configuration, in the failure itself ("Falsifying example" in older Hypothesis)
    assert "verdict:  FAIL" in failure and "margin 5.0 pp" in failure, failure
    assert re.search(r"(Failing test case|Falsifying example): test_relabelling_forgets\(", failure), failure
    assert re.search(
        r"cfg=\{'strategy': 'wise_ft', 'lr': 0\.5, 'epochs': [123], 'batch_size': 16, 'seed': 0, "
        r"'weight_decay': 0\.0, 'alpha': (0\.\d+|1\.0)\}",
        failure,
    ), failure


def test_the_plugin_registers_the_finetune_fixture():
    """``pytest_forgetting.plugin`` must import ``finetune`` from fixtures.py (pytest only sees the plugin's names)."""
    import pytest_forgetting.plugin as plugin

    assert hasattr(plugin, "finetune"), (
        "add `finetune` to the `from .fixtures import ...` line of pytest_forgetting/plugin.py"
    )
