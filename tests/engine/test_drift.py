"""Where the weights moved: the per-block drift table, adapters, linear CKA, and the FAIL message."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_forgetting import drift

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def _cnn():
    sys.path.insert(0, str(ROOT / "example_project"))
    try:
        from cnn import build_model
    finally:
        sys.path.remove(str(ROOT / "example_project"))
    torch.manual_seed(0)
    return build_model().eval()


def test_block_of_groups_by_module_depth():
    assert drift.block_of("bert.encoder.layer.11.attention.self.query.weight") == "bert.encoder.layer.11"
    assert drift.block_of("base_model.model.bert.encoder.layer.0.output.dense.weight") == "bert.encoder.layer.0"
    assert drift.block_of("classifier.weight") == "classifier"
    assert drift.block_of("bert.embeddings.word_embeddings.weight") == "bert.embeddings"
    assert drift.block_of("7.bias") == "7"
    assert drift.block_of("weight") == "weight"


def test_identical_pair_is_all_zeros():
    model = _cnn()
    table = drift.drift_table(model, copy.deepcopy(model))
    assert [b.block for b in table.blocks] == ["0", "3", "7", "9"]
    assert all(b.rel == 0.0 and b.diff_norm == 0.0 and b.cosine == 1.0 for b in table.blocks)
    assert table.most_changed() == [] and drift.most_change_text(table.to_rows()) == "no block changed"
    same = drift.drift_table(model, model)  # the very same object: no copy made, still zeros
    assert all(b.rel == 0.0 for b in same.blocks)


def test_relative_change_and_cosine_by_hand():
    a = torch.nn.Linear(3, 2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight.mul_(2.0)  # same direction, twice the norm; bias untouched
    table = drift.drift_table(torch.nn.Sequential(a), torch.nn.Sequential(b))
    (blk,) = table.blocks
    w, bias = a.weight.detach().double(), a.bias.detach().double()
    base2 = float((w**2).sum() + (bias**2).sum())
    assert blk.rel == pytest.approx(float((w**2).sum()) ** 0.5 / base2**0.5, rel=1e-12)
    tuned2 = float(4 * (w**2).sum() + (bias**2).sum())
    dot = float(2 * (w**2).sum() + (bias**2).sum())
    assert blk.cosine == pytest.approx(dot / (base2 * tuned2) ** 0.5, rel=1e-12)


def test_naive_finetune_versus_freeze_shows_frozen_blocks_at_exactly_zero():
    sys.path.insert(0, str(ROOT / "example_project"))
    try:
        from cnn import train
    finally:
        sys.path.remove(str(ROOT / "example_project"))
    from pytest_forgetting.finetune import finetune
    from pytest_forgetting.registry import REGISTRY

    mnist = REGISTRY.get("mnist").split("train")  # an MNIST base (one epoch), fine-tuned on digits-28
    base = train(_cnn(), torch.from_numpy(mnist.inputs), torch.from_numpy(mnist.labels), epochs=1, lr=2e-3, seed=0)
    common = dict(lr=1e-3, epochs=1, batch_size=64, seed=0)
    naive = finetune(copy.deepcopy(base), "digits-28", strategy="full", **common)
    frozen = finetune(copy.deepcopy(base), "digits-28", strategy="freeze", train_last=1, **common)
    t_naive = {b.block: b for b in drift.drift_table(base, naive).blocks}
    t_frozen = {b.block: b for b in drift.drift_table(base, frozen).blocks}
    assert all(b.rel > 0 for b in t_naive.values()), t_naive
    assert [k for k, b in t_frozen.items() if b.rel == 0.0] == ["0", "3", "7"]
    assert t_frozen["9"].rel > 0 and t_frozen["0"].cosine == 1.0
    text = drift.most_change_text(drift.drift_table(base, frozen).to_rows())
    assert text.startswith("9 (+") and "0 (" not in text


def test_lora_adapter_is_read_as_its_update_per_target_module():
    pytest.importorskip("peft")
    import peft

    sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: text_helpers
    from text_helpers import tiny_bert

    base = tiny_bert(num_labels=2)
    tuned = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False)
    )
    table = {b.block: b for b in drift.drift_table(base, tuned).blocks}
    layer = table["bert.encoder.layer.0"]
    assert layer.adapter and layer.rel > 0
    assert table["bert.embeddings"].rel == 0.0 and not table["bert.embeddings"].adapter
    # the same number as the merged model's
    merged = copy.deepcopy(tuned).merge_and_unload()
    ref = {b.block: b for b in drift.drift_table(base, merged).blocks}
    assert layer.rel == pytest.approx(ref["bert.encoder.layer.0"].rel, rel=1e-5)


def _cka_by_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: HSIC with Gram matrices and the centring matrix H (Gretton et al.)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_equals_an_independent_implementation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    for y in (rng.normal(size=(60, 5)), x @ rng.normal(size=(8, 8)) + 0.1 * rng.normal(size=(60, 8)), 3.0 * x):
        assert drift.linear_cka(x, y) == pytest.approx(_cka_by_hsic(x, y), abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert drift.linear_cka(x, 2.0 * x @ q) == pytest.approx(1.0, abs=1e-12)  # rotation and scale


def test_representation_cka_per_layer_on_hidden_states():
    sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: text_helpers
    from text_helpers import tiny_bert

    base = tiny_bert(num_labels=2, num_hidden_layers=2)
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = tuned.bert.encoder.layer[1].output.dense.weight
        w.add_(2.0 * torch.randn(w.shape, generator=gen))
    batch = {
        "input_ids": torch.randint(5, 30, (16, 7), generator=gen),
        "attention_mask": torch.ones(16, 7, dtype=torch.long),
    }
    cka = drift.representation_cka(base, tuned, [batch])
    assert [c["layer"] for c in cka] == [0, 1, 2]
    assert cka[0]["cka"] == pytest.approx(1.0) and cka[1]["cka"] == pytest.approx(1.0)
    assert cka[2]["cka"] < 0.999
    with torch.inference_mode():
        hb = base(**batch, output_hidden_states=True).hidden_states[2].mean(1).numpy()
        ht = tuned(**batch, output_hidden_states=True).hidden_states[2].mean(1).numpy()
    assert cka[2]["cka"] == pytest.approx(_cka_by_hsic(hb.astype(np.float64), ht.astype(np.float64)), abs=1e-9)


def test_fail_message_and_json_carry_the_most_changed_blocks(tmp_path):
    import pytest_forgetting as pf
    from pytest_forgetting import report
    from pytest_forgetting.checks import bind_task, parse_check
    from pytest_forgetting.options import Settings
    from pytest_forgetting.registry import REGISTRY
    from pytest_forgetting.session import ForgettingSession

    rng = np.random.default_rng(0)
    x = rng.random((300, 28, 28)).astype(np.float32)
    base = _cnn()
    with torch.no_grad():
        y = base(torch.from_numpy(x)[:, None]).argmax(1).numpy()
    REGISTRY.register("drift-msg", lambda: pf.ImageClassificationTask(images=x, labels=y), origin="test_drift")
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned[9].weight.mul_(-1.0)  # the head flips: a FAIL, and the head is where it moved
    sess = ForgettingSession(Settings(device="cpu", no_cache=True))
    check = bind_task(parse_check("retains", {"task": "drift-msg", "max_drop": 0.02}, "t"), "t", sess.task("drift-msg"))
    row = sess.run_check(
        check, test="t", base=sess.module_slot("base", base), tuned=sess.module_slot("tuned", tuned)
    ).row
    assert row["verdict"] == "fail"
    assert [b["block"] for b in row["weight_drift"]] == ["0", "3", "7", "9"]
    msg = report.failure_message(row)
    assert "weights:  most change: 9 (+199 %)" in msg, msg  # -W: ||2W|| / ||(W, bias)||
    doc = report.build_json({}, [row])
    assert doc["rows"][0]["weight_drift"][3]["rel"] == pytest.approx(1.99, abs=0.005)
    assert doc["rows"][0]["weight_drift"][0]["rel"] == 0.0
    pytest.importorskip("matplotlib")
    report.write_plot(tmp_path / "plot.png", [row], alpha=0.05)
    assert (tmp_path / "plot.drift.png").stat().st_size > 0


def test_representation_drift_option_adds_cka_per_layer_to_the_row(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: text_helpers
    from text_helpers import check, make_tokenizer, save, sentiment_texts, session, tiny_bert

    import pytest_forgetting as pf
    from pytest_forgetting.registry import REGISTRY

    texts, labels = sentiment_texts(40, seed=0)
    REGISTRY.register("drift-cka", lambda: pf.TextClassificationTask(texts, labels), origin="test_drift")
    base = save(tiny_bert(num_labels=2), tmp_path / "base", make_tokenizer())
    tuned_model = tiny_bert(num_labels=2)
    with torch.no_grad():
        tuned_model.bert.encoder.layer[0].output.dense.weight.mul_(3.0)
    tuned = save(tuned_model, tmp_path / "tuned", make_tokenizer())
    sess = session(base, tuned, tmp_path, representation_drift=True)
    row = sess.run_check(check("drift-cka", max_drop=0.5), test="t").row
    cka = row["representation_cka"]
    assert [c["layer"] for c in cka] == [0, 1] and cka[0]["cka"] == pytest.approx(1.0) and cka[1]["cka"] < 1.0
    assert {b["block"]: b["rel"] for b in row["weight_drift"]}["bert.embeddings"] == 0.0


def test_drift_plot_replaces_a_planted_link_and_draws_hostile_block_names(tmp_path):
    """The drift PNG is a report file: a link planted at its name (a PR can add one to the checkout)
    is replaced, never written through, and block names from the checkpoint cannot inject mathtext."""
    pytest.importorskip("matplotlib")
    from pytest_forgetting.drift import write_drift_plot

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "plot.drift.png"
    target.symlink_to(victim)
    rows = [
        {
            "test": "t $\\frac{",
            "weight_drift": [
                {"block": "a$\\sqrt{$", "rel": 0.5, "cos": 0.9},
                {"block": "b\x1b[31m", "rel": 0.0, "cos": 1.0},
            ],
        }
    ]
    assert write_drift_plot(str(target), rows) is True
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and target.read_bytes().startswith(b"\x89PNG")
    assert write_drift_plot(str(tmp_path / "none.png"), [{"test": "t"}]) is False
