"""``finetune`` against an independent plain-torch implementation of each strategy, bit for bit.

The reference below is written from the documented algorithm (``pytest_forgetting/finetune/__init__.py``),
not from the runner's code: seeded data order (``torch.randperm`` with a generator seeded by ``seed``),
AdamW without weight decay at a constant rate, the L2-SP / EWC penalty, replayed examples drawn in
seeded passes over the retained data (generator ``seed + 2``), the EWC Fisher on a seeded sample
(``numpy`` generator ``seed + 1``), WiSE-FT as ``torch.lerp``. Both run on the CPU in one thread, so
the weights must be equal exactly; a reordering of the steps inside the runner (a penalty added at a
different point, a batch drawn from another generator, a parameter left out of the optimiser) fails
here. The package's shape is checked too: one class per strategy name, no strategy name in the loop.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_forgetting.finetune import STRATEGIES, finetune  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_forgetting" / "finetune"
SEED, LR, EPOCHS, BATCH = 3, 0.03, 2, 10


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(16, 12),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(12, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    ).eval()


def _data(n, seed, shift):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    y = x.reshape(n, -1)[:, shift : shift + 3].argmax(1).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


NEW, OLD = _data(80, 1, 0), _data(60, 2, 5)
BLOCKS = [["1.weight", "1.bias"], ["4.weight", "4.bias"], ["6.weight", "6.bias"]]  # Linear layers, input side first


def _reference(strategy, penalty=0.0, train_last=1, fraction=0.0, fisher_examples=0, alpha=None, sgd=None):
    """The documented algorithm, in plain torch. ``sgd``: SGD with momentum 0.9, weight decay on matrices,
    ``lr * decay**depth`` per block from the head, linear warm-up then cosine decay, gradient-norm clipping."""
    base = _model()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = copy.deepcopy(base).float()
        params = dict(model.named_parameters())
        anchor = {n: p.detach().clone() for n, p in params.items()}
        trainable = set(params)
        if strategy == "freeze":
            trainable = {n for names in BLOCKS[-train_last:] for n in names}
        elif strategy == "gradual_unfreeze":
            trainable = set(BLOCKS[-1])
        for n, p in params.items():
            p.requires_grad_(n in trainable)

        weights = None
        if strategy == "ewc":  # the mean squared per-example gradient on a seeded sample of the retained data
            idx = np.sort(np.random.default_rng(SEED + 1).choice(len(OLD[1]), size=fisher_examples, replace=False))
            fisher = {n: torch.zeros_like(p) for n, p in params.items()}
            model.eval()
            for i in idx:
                model.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(OLD[0][i : i + 1]), OLD[1][i : i + 1]).backward()
                for n, p in params.items():
                    fisher[n] += p.grad**2
            model.zero_grad(set_to_none=True)
            fisher = {n: f / len(idx) for n, f in fisher.items()}
            mean = float(torch.cat([f.reshape(-1) for f in fisher.values()]).mean())
            weights = {n: f / mean for n, f in fisher.items()}

        n_replay = min(max(1, round(fraction * BATCH)), BATCH - 1) if strategy == "replay" else 0
        n_new = BATCH - n_replay
        trained = [p for n, p in params.items() if strategy == "gradual_unfreeze" or n in trainable]
        if sgd is None:
            opt = torch.optim.AdamW(trained, lr=LR, weight_decay=0.0)
        else:
            depth = {n: len(BLOCKS) - 1 - i for i, names in enumerate(BLOCKS) for n in names}
            groups = [
                {"params": [p], "lr": LR * sgd["decay"] ** depth[n], "weight_decay": sgd["wd"] if p.ndim >= 2 else 0.0}
                for n, p in params.items()
            ]
            opt = torch.optim.SGD(groups, lr=LR, momentum=0.9)
            base_lrs = [g["lr"] for g in groups]
            total = EPOCHS * -(-len(NEW[1]) // BATCH)
            warm = round(sgd["warmup"] * total)
        step = 0
        order, replay_gen = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED + 2)
        replay_queue = []
        model.train()
        for epoch in range(EPOCHS):
            if strategy == "gradual_unfreeze":
                live = {n for names in BLOCKS[-(epoch + 1) :] for n in names}
                for n, p in params.items():
                    p.requires_grad_(n in live)
            perm = torch.randperm(len(NEW[1]), generator=order)
            for lo in range(0, len(perm), n_new):
                x, y = NEW[0][perm[lo : lo + n_new]], NEW[1][perm[lo : lo + n_new]]
                if n_replay:
                    while len(replay_queue) < n_replay:
                        replay_queue += torch.randperm(len(OLD[1]), generator=replay_gen).tolist()
                    ridx, replay_queue = replay_queue[:n_replay], replay_queue[n_replay:]
                    x, y = torch.cat([x, OLD[0][ridx]]), torch.cat([y, OLD[1][ridx]])
                if sgd is not None:  # warm-up, then cosine
                    factor = (
                        (step + 1) / warm
                        if step < warm
                        else 0.5 * (1 + math.cos(math.pi * min((step - warm) / (total - warm), 1.0)))
                    )
                    for g, lr in zip(opt.param_groups, base_lrs):
                        g["lr"] = lr * factor
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                if strategy in ("l2sp", "ewc"):
                    terms = [
                        ((p - anchor[n]) ** 2 * (weights[n] if weights else 1)).sum()
                        for n, p in params.items()
                        if p.requires_grad
                    ]
                    total = terms[0]
                    for t in terms[1:]:
                        total = total + t
                    loss = loss + 0.5 * penalty * total
                loss.backward()
                if sgd is not None:
                    torch.nn.utils.clip_grad_norm_(list(model.parameters()), sgd["clip"])
                opt.step()
                step += 1
        model.eval()
        if alpha is not None:
            start = copy.deepcopy(base).float().state_dict()
            with torch.no_grad():
                for n, t in model.state_dict().items():
                    t.copy_(torch.lerp(start[n], t, alpha))
    return model


CASES = {
    "full": ({}, {}),
    "freeze": ({"train_last": 2}, {"train_last": 2}),
    "gradual_unfreeze": ({}, {}),
    "l2sp": ({"penalty": 3.0}, {"penalty": 3.0}),
    "ewc": ({"retain": OLD, "penalty": 10.0, "fisher_examples": 20}, {"penalty": 10.0, "fisher_examples": 20}),
    "replay": ({"retain": OLD, "fraction": 0.3}, {"fraction": 0.3}),
    "wise_ft": ({"alpha": 0.3}, {"alpha": 0.3}),
    "full_sgd": (
        {
            "optimizer": "sgd",
            "lr_schedule": "cosine",
            "warmup": 0.25,
            "max_grad_norm": 0.5,
            "weight_decay": 0.01,
            "layer_lr_decay": 0.5,
        },
        {"sgd": {"decay": 0.5, "wd": 0.01, "warmup": 0.25, "clip": 0.5}},
    ),
}


@pytest.mark.parametrize("strategy", list(CASES))
def test_finetune_equals_the_reference_bit_for_bit(strategy):
    options, reference_options = CASES[strategy]
    base = _model()
    before = copy.deepcopy(base.state_dict())
    rng_before = torch.random.get_rng_state()
    name = strategy.split("_sgd")[0]
    tuned = finetune(base, NEW, strategy=name, lr=LR, epochs=EPOCHS, batch_size=BATCH, seed=SEED, **options)
    expected = _reference(name, **reference_options)
    got, want = tuned.state_dict(), expected.state_dict()
    assert list(got) == list(want)
    different = [n for n in want if not torch.equal(got[n], want[n])]
    assert not different, f"{strategy}: weights differ from the reference in {different}"
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items()), "the caller's model is unchanged"
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the caller's RNG is untouched"
    assert not tuned.training and all(p.requires_grad for p in tuned.parameters())


def test_the_reference_tells_the_strategies_apart():
    """The comparison above can fail: the reference gives different weights for different recipes."""
    full = _reference("full").state_dict()
    for strategy, (_, options) in CASES.items():
        if strategy != "full":
            other = _reference(strategy.split("_sgd")[0], **options).state_dict()
            assert any(not torch.equal(full[n], other[n]) for n in full), strategy


def test_one_strategy_class_per_name_and_no_strategy_name_in_the_loop():
    from pytest_forgetting.finetune import spec
    from pytest_forgetting.finetune.strategies import TABLE, make_strategy

    assert tuple(TABLE) == STRATEGIES == tuple(spec.OPTIONS)
    for name, cls in TABLE.items():
        assert cls.name == name and (PACKAGE / "strategies" / f"{name}.py").is_file()
        given = {"retain": "mnist"} if name in spec.NEEDS_RETAIN else {}
        strategy = make_strategy(name, spec.check_options(name, given))
        assert type(strategy.options) is spec.OPTIONS[name]
    names = re.compile("|".join(rf"[\"']{re.escape(n)}[\"']" for n in STRATEGIES))
    for module in ("loop.py", "data.py", "blocks.py", "watch.py", "progress.py"):
        assert not names.search((PACKAGE / module).read_text()), f"finetune/{module} names a strategy"
    run = (PACKAGE / "run.py").read_text()  # only the signature's default, strategy="full"
    assert [m.start() for m in names.finditer(run)] == [run.index('strategy: str = "full"') + len("strategy: str = ")]


def test_no_module_of_the_package_is_over_600_lines():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes and max(sizes.values()) <= 600, sizes
