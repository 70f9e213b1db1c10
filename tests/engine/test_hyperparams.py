"""Hypothesis search strategies over fine-tuning hyperparameters (``pytest_forgetting.hyperparams``): ranges,
shrinking, composition, validity; the old module name ``pytest_forgetting.strategies`` as an alias."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import pytest_forgetting as pf
import pytest_forgetting.hyperparams as hp
from pytest_forgetting.finetune import STRATEGIES, STRATEGY_OPTIONS, _check_common, _check_options


@pytest.mark.parametrize("name", ["hyperparams", "strategies", "finetune", "finetune.spec"])
def test_importing_the_hyperparams_does_not_import_torch(name):  # nor the finetune package or its spec
    code = f"import sys, pytest_forgetting.{name}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_old_module_name_is_the_same_module():
    import pytest_forgetting.strategies as old
    from pytest_forgetting.strategies import finetune_configs

    assert old is hp and pf.strategies is hp and pf.hyperparams is hp
    assert finetune_configs is hp.finetune_configs


@given(lr=hp.learning_rates(1e-4, 3e-3))
def test_learning_rates_stay_in_range_with_two_significant_digits(lr):
    assert 1e-4 <= lr <= 3e-3
    assert float(f"{lr:.2g}") == lr


def test_learning_rates_shrink_to_the_gentlest_and_reach_both_ends():
    rates = hp.learning_rates(1e-4, 1e-2)
    assert find(rates, lambda x: True) == 1e-4
    assert find(rates, lambda x: x >= 1e-2) == 1e-2
    assert 1e-3 <= find(rates, lambda x: x >= 1e-3) <= 1.05e-3, "shrinks to the boundary of the failing region"
    assert find(hp.log_uniform(0.01, 10.0, shrink_towards="high"), lambda x: True) == 10.0
    assert find(hp.log_uniform(2.0, 2.0), lambda x: True) == 2.0


@given(e=hp.epochs(1, 3), s=hp.steps(5, 50), b=hp.batch_sizes(8, 100))
def test_integer_ranges(e, s, b):
    assert 1 <= e <= 3 and 5 <= s <= 50
    assert b in (8, 16, 32, 64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: hp.learning_rates(0, 1e-3),
        lambda: hp.learning_rates(1e-2, 1e-3),
        lambda: hp.epochs(0, 2),
        lambda: hp.steps(5, 4),
        lambda: hp.batch_sizes(5, 7),
        lambda: hp.strategy_options("lorra"),
        lambda: hp.strategy_options("replay"),
        lambda: hp.finetune_configs(["ewc"]),
        lambda: hp.finetune_configs([]),
        lambda: hp.finetune_configs(["full"], options={"lorra": {}}),
    ],
)
def test_bad_arguments_are_invalid_argument(make):
    with pytest.raises(InvalidArgument):
        make()


@pytest.mark.parametrize("name", STRATEGIES)
@settings(max_examples=20)
@given(data=st.data())
def test_strategy_options_are_options_the_runner_knows(name, data):
    opts = data.draw(hp.strategy_options(name, retain="mnist"))
    assert set(opts) <= set(STRATEGY_OPTIONS[name])
    _check_options(name, opts)


def test_strategy_names_come_from_the_runners_spec():
    from pytest_forgetting.finetune import spec

    assert hp.STRATEGIES is spec.STRATEGIES is STRATEGIES
    needs_retain = tuple(n for n, o in STRATEGY_OPTIONS.items() if o.get("retain") is spec.REQUIRED)
    assert hp.NEEDS_RETAIN == needs_retain == ("ewc", "replay")
    for name in STRATEGIES:  # every strategy has a search space (the gentlest options first)
        hp.strategy_options(name, retain="mnist")


@settings(max_examples=200)
@given(cfg=hp.finetune_configs(retain="mnist", lr=(1e-5, 1e-1), epochs=(1, 5), batch_size=(4, 256), seed=(0, 9)))
def test_every_config_passes_the_runners_validation(cfg):
    cfg = dict(cfg)
    strategy = cfg.pop("strategy")
    common = {k: cfg.pop(k) for k in ("lr", "epochs", "batch_size", "seed")}
    assert strategy in STRATEGIES
    _check_options(strategy, cfg)
    _check_common(
        common["lr"], common["epochs"], None, common["batch_size"], 0.0, "constant", 0, "adamw", None, None, None
    )


@given(cfg=hp.finetune_configs(["full", "l2sp"], steps=(1, 20)))
def test_steps_replace_epochs(cfg):
    assert "epochs" not in cfg and 1 <= cfg["max_steps"] <= 20


def test_configs_shrink_to_the_gentlest_fine_tune():
    configs = hp.finetune_configs(["l2sp", "lora", "replay"], retain="mnist")
    assert find(configs, lambda c: True) == {
        "strategy": "l2sp",
        "lr": 1e-4,
        "epochs": 1,
        "batch_size": 32,
        "seed": 0,
        "penalty": 10.0,
    }
    replay = find(configs, lambda c: c["strategy"] == "replay")
    assert replay["fraction"] == 0.5 and replay["retain"] == "mnist"
    lora = find(configs, lambda c: c["strategy"] == "lora" and c["lr"] > 1e-3 and c["epochs"] > 1)
    assert lora["r"] == 2 and lora["epochs"] == 2 and 1e-3 < lora["lr"] <= 1.1e-3
    assert list(lora) == ["strategy", "lr", "epochs", "batch_size", "seed", "r"], "a stable, readable key order"


@given(
    cfg=st.one_of(
        hp.finetune_configs(
            ["lora", "wise_ft"],
            lr=st.sampled_from([1e-4, 1e-3]),
            options={
                "lora": {"r": st.just(4), "dropout": 0.1},
                "wise_ft": {"alpha": "auto", "keep": [{"task": "mnist", "max_drop": 0.02}]},
            },
            extra={"weight_decay": st.sampled_from([0.0, 0.01]), "lr_schedule": "cosine"},
        ),
        st.builds(dict, strategy=st.just("freeze"), lr=hp.learning_rates(), train_last=st.integers(1, 2)),
    ).filter(lambda c: c["lr"] < 5e-3)
)
def test_configs_compose_with_users_own_strategies(cfg):
    if cfg["strategy"] == "lora":
        assert (cfg["r"], cfg["dropout"], cfg["lr_schedule"]) == (4, 0.1, "cosine")
        assert cfg["lr"] in (1e-4, 1e-3) and cfg["weight_decay"] in (0.0, 0.01)
    elif cfg["strategy"] == "wise_ft":
        assert cfg["alpha"] == "auto" and cfg["keep"][0]["task"] == "mnist"
    else:
        assert cfg["strategy"] == "freeze" and cfg["train_last"] in (1, 2)


# -- the runner under @given, with the default health checks -------------------------------------


def _tiny_tasks():
    rng = np.random.default_rng(0)

    def split(n, shift):
        y = np.arange(n) % 3
        x = rng.normal(0, 0.3, size=(n, 1, 2, 4)).astype(np.float32)
        x.reshape(n, 8)[np.arange(n), y + shift] += 2.0
        return x, y

    old = pf.ImageClassificationTask(splits={"train": split(30, 0), "test": split(30, 0)})
    new = pf.ImageClassificationTask(splits={"train": split(30, 4), "test": split(30, 4)})
    old.name, new.name = "tiny-old", "tiny-new"
    return old, new


OLD, NEW = _tiny_tasks()


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


@settings(max_examples=6, deadline=None)
@given(cfg=hp.finetune_configs(list(STRATEGIES), lr=(1e-3, 1e-1), steps=(1, 3), batch_size=(4, 16), retain=OLD))
def test_finetune_runs_under_given(tiny_model, cfg):
    from pytest_forgetting.finetune import finetune

    before = [p.detach().clone() for p in tiny_model.parameters()]
    tuned = finetune(tiny_model, NEW, **cfg)
    assert tuned.finetune_info.steps == cfg["max_steps"] or cfg["strategy"] == "wise_ft"
    assert all(bool((a == b).all()) for a, b in zip(before, tiny_model.parameters()))
    assert math.isfinite(tuned.finetune_info.final_loss)
