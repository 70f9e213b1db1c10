"""Which ways of fine-tuning on the new domain keep MNIST? Asked with the `finetune` fixture.

These tests need only the base checkpoint (`--base-ckpt checkpoints/base.safetensors`): they
fine-tune it themselves on `digits-28` (deterministically, seeded) and gate the result with the
same statistics as the markers in test_retention.py. The property test lets Hypothesis search
over the gentle recipes; if one broke the contract, the failure would show the shrunk
configuration (the least aggressive one that still forgets) under the verdict.
"""

from hypothesis import given, settings

import pytest_forgetting.strategies as fs


def test_lora_keeps_mnist_and_learns_digits(finetune, forgetting):
    tuned = finetune(train="digits-28", strategy="lora", r=4, lr=1e-3, epochs=2, batch_size=32, seed=0)
    # LoRA loses about one point here: with 1,000 MNIST test images a 2-point margin cannot be
    # settled (INCONCLUSIVE, ~1,100 examples needed); 3 points can. `freeze` passes at 2 points.
    forgetting.assert_retains(tuned, task="mnist", max_drop=0.03)
    forgetting.assert_improves(tuned, task="digits-28", min_gain=0.05)


def test_wise_ft_finds_the_largest_safe_interpolation(finetune, forgetting):
    tuned = finetune(
        train="digits-28", strategy="wise_ft", alpha="auto", keep=[{"task": "mnist", "max_drop": 0.02}],
        lr=1e-3, epochs=2, batch_size=32, seed=0,
    )  # fmt: skip
    assert 0 < tuned.wise_ft_alpha < 1  # tuned.wise_ft_curve holds every alpha's verdicts
    forgetting.assert_improves(tuned, task="digits-28", min_gain=0.10)


@settings(max_examples=6, deadline=None)
@given(
    cfg=fs.finetune_configs(
        strategies=["freeze", "ewc", "replay"],
        lr=(1e-4, 1e-3),
        steps=(20, 80),
        retain="mnist",
        # narrower than the defaults: only the recipes this repo would actually ship
        options={"ewc": {"penalty": fs.log_uniform(1.0, 10.0, shrink_towards="high")},
                 "replay": {"fraction": fs.log_uniform(0.25, 0.5, shrink_towards="high")}},
    )
)
def test_no_gentle_recipe_forgets_mnist(finetune, forgetting, cfg):
    forgetting.assert_retains(finetune(train="digits-28", **cfg), task="mnist", max_drop=0.05)
