"""The ``adalora`` fine-tuning strategy: adaptive rank budget through peft, a reloadable adapter folder."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from pytest_forgetting.finetune import STRATEGIES, STRATEGY_OPTIONS, FinetuneError, finetune  # noqa: E402


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    ).eval()


def _data(n: int = 192, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 4)).astype(np.float32)
    y = (x.reshape(n, -1)[:, :3].argmax(1)).astype(np.int64)
    return torch.from_numpy(x[:, None]), torch.from_numpy(y)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_adalora_is_a_strategy_with_its_rank_budget_options():
    assert "adalora" in STRATEGIES
    opts = STRATEGY_OPTIONS["adalora"]
    assert {"init_r", "target_r", "tinit", "tfinal", "delta_t", "beta1", "beta2", "orth_reg_weight"} <= set(opts)


def test_adalora_prunes_to_the_budget_keeps_the_base_and_reloads(tmp_path):
    from pytest_forgetting.checkpoints import load_checkpoint

    base = _mlp()
    x, y = _data()
    folder = tmp_path / "adalora"
    kw = dict(strategy="adalora", init_r=6, target_r=2, lr=0.02, max_steps=30, batch_size=16, seed=0)
    tuned = finetune(base, (x, y), save_to=folder, **kw)
    assert isinstance(tuned, peft.PeftModel)
    assert tuned.peft_config["default"].peft_type == peft.PeftType.ADALORA
    pattern = tuned.peft_config["default"].rank_pattern
    assert pattern, "the budget was allocated"
    kept = [sum(v) for v in pattern.values()]
    assert sum(kept) == 2 * len(kept), pattern  # on average target_r of init_r ranks per module
    unloaded = copy.deepcopy(tuned).unload()
    assert all(torch.equal(a, b) for a, b in zip(_state(unloaded).values(), _state(base).values())), (
        "base weights unchanged"
    )
    with torch.no_grad():
        expected = tuned(x)
        assert not torch.allclose(expected, base(x)), "the adapters trained"
        loaded = load_checkpoint(str(folder), base=load_checkpoint(copy.deepcopy(base), role="base"))
        torch.testing.assert_close(loaded.model(x), expected, rtol=1e-5, atol=1e-5)
    again = finetune(base, (x, y), **kw)  # deterministic
    with torch.no_grad():
        assert torch.equal(again(x), expected)


def test_adalora_option_errors():
    base = _mlp()
    x, y = _data(32)
    with pytest.raises(FinetuneError, match="target_r"):
        finetune(base, (x, y), strategy="adalora", init_r=2, target_r=4, max_steps=4, batch_size=16)
    with pytest.raises(FinetuneError, match="budgeting phase"):
        finetune(base, (x, y), strategy="adalora", tinit=3, tfinal=2, max_steps=4, batch_size=16)
    with pytest.raises(FinetuneError, match="did you mean"):
        finetune(base, (x, y), strategy="adalora", init_rank=4, max_steps=4, batch_size=16)


def test_adalora_drift_reads_the_adapter_per_target_module():
    from pytest_forgetting import drift

    base = _mlp()
    x, y = _data()
    tuned = finetune(
        base, (x, y), strategy="adalora", init_r=4, target_r=2, lr=0.02, max_steps=12, batch_size=16, seed=0
    )
    table = {b.block: b for b in drift.drift_table(base, tuned).blocks}
    assert set(table) == {"1", "3"} and all(b.adapter and b.rel > 0 for b in table.values()), table
