"""Issue 14's acceptance scenario, scripted: the newcomer's path with a Hugging Face classifier and a CSV.

A MiniLM-style sentence classifier (the BERT architecture of all-MiniLM-L6-v2, tiny: 2 layers of
width 32, so that it trains in a second) is trained into a 5-way news-topic classifier and saved
with ``save_pretrained`` beside a real ``tokenizer.json`` built in tmp_path: the base. A copy
fine-tuned aggressively on one topic only is the tuned model. The eval set is a CSV with integer
labels (the model's label ids; its ``id2label`` has names). The project has no conftest and no task
code: the task is a ``[tool.pytest_forgetting.tasks.news]`` table of ``pyproject.toml``.

The same two checks (a tight margin the tuned model breaks, a loose one it keeps) are run three
ways: declared in ``[tool.pytest_forgetting]`` only, as markers, and with the fixture pattern of
the README (``forgetting.assert_retains(tuned_model, ...)``). Each run must give the values and
verdicts of a hand-written evaluation loop (transformers' own classes, a plain batch loop, and
``pf.compare_scores`` on the per-example correctness), and nothing the user did not ask for: no
loading bars, no warnings.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from text_helpers import bert_config, labelled, make_tokenizer

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
TOPIC_WORDS = {
    "business": ["market", "shares", "profit", "bank", "economy"],
    "entertainment": ["film", "music", "actor", "award", "show"],
    "politics": ["election", "minister", "party", "vote", "government"],
    "sport": ["match", "goal", "team", "coach", "league"],
    "tech": ["software", "phone", "internet", "computer", "chip"],
}
FILLER = ["the", "a", "said", "new", "year", "on", "in", "of", "today", "report", "after", "its"]
VOCAB = [w for words in TOPIC_WORDS.values() for w in words] + FILLER
CHECKS = (("keeps_news", 0.02), ("keeps_news_loosely", 0.9))  # (name, max_drop)


def _articles(n: int, seed: int, *, topics: list[int] | None = None) -> tuple[list[str], np.ndarray]:
    """Short headlines: two words of the topic among filler (and a word of another topic in some)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = topics[i % len(topics)] if topics else i % len(TOPICS)
        words = list(rng.choice(TOPIC_WORDS[TOPICS[y]], size=2)) + list(
            rng.choice(FILLER, size=int(rng.integers(2, 5)))
        )
        if rng.random() < 0.3:  # a distractor: the headline mentions another topic once
            other = TOPICS[(y + int(rng.integers(1, len(TOPICS)))) % len(TOPICS)]
            words.append(str(rng.choice(TOPIC_WORDS[other])))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return texts, np.asarray(labels)


def _train(model, tokenizer, texts, labels, *, steps: int, lr: float) -> None:
    import torch

    enc = tokenizer(texts, padding=True, return_tensors="pt")
    target = torch.as_tensor(labels, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**enc, labels=target).loss.backward()
        opt.step()
    model.eval()


def _hand_loop(folder: Path, texts: list[str], labels: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """What a user would write: load with transformers, tokenise, batch, argmax, compare with the labels."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    preds = []
    with torch.no_grad():
        for lo in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[lo : lo + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            preds.append(model(**enc).logits.argmax(dim=1).numpy())
    return (np.concatenate(preds) == labels).astype(float)  # integer labels are the model's label ids


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    import torch
    import transformers

    root = tmp_path_factory.mktemp("newcomer")
    tokenizer = make_tokenizer(VOCAB)
    torch.manual_seed(0)
    config = bert_config(vocab_size=len(tokenizer), num_hidden_layers=2, **labelled(TOPICS))
    config.architectures = ["BertForSequenceClassification"]
    model = transformers.BertForSequenceClassification(config)
    train_texts, train_labels = _articles(400, seed=1)
    _train(model, tokenizer, train_texts, train_labels, steps=60, lr=3e-3)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    sport = TOPICS.index("sport")
    sport_texts, sport_labels = _articles(100, seed=2, topics=[sport])
    _train(model, tokenizer, sport_texts, sport_labels, steps=30, lr=1e-2)  # aggressive, one topic only
    model.save_pretrained(root / "tuned")
    tokenizer.save_pretrained(root / "tuned")
    assert (root / "base" / "tokenizer.json").is_file() and (root / "tuned" / "tokenizer.json").is_file()

    texts, labels = _articles(300, seed=3)
    rng = np.random.default_rng(4)
    noisy = rng.random(len(labels)) < 0.08  # a few mislabelled rows, as in real data
    labels = np.where(noisy, rng.integers(0, len(TOPICS), len(labels)), labels)
    (root / "data").mkdir()
    with (root / "data" / "news_test.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows((f"n{i}", t, int(y)) for i, (t, y) in enumerate(zip(texts, labels)))

    import pytest_forgetting as pf

    base_ok, tuned_ok = _hand_loop(root / "base", texts, labels), _hand_loop(root / "tuned", texts, labels)
    expected = {}
    for _name, max_drop in CHECKS:
        cmp = pf.compare_scores(base_ok, tuned_ok, max_drop=max_drop, alpha=0.05)
        expected[max_drop] = {
            "n": len(labels),
            "base": float(base_ok.mean()),
            "tuned": float(tuned_ok.mean()),
            "verdict": cmp.verdict,
        }
    assert base_ok.mean() > 0.7 and tuned_ok.mean() < 0.5, (base_ok.mean(), tuned_ok.mean())  # a real forgetting case
    assert [expected[m]["verdict"] for _, m in CHECKS] == ["fail", "pass"], expected
    return {"root": root, "expected": expected}


PYPROJECT_TASK = """
[tool.pytest_forgetting.tasks.news]
path = "data/news_test.csv"
"""

PYPROJECT_CHECKS = (
    PYPROJECT_TASK
    + """
[tool.pytest_forgetting]
retains = [{ task = "news", max_drop = 0.02 }, { task = "news", max_drop = 0.9 }]
"""
)

MARKERS = """
import pytest

@pytest.mark.retains(task="news", max_drop=0.02)
def test_keeps_news():
    pass

@pytest.mark.retains(task="news", max_drop=0.9)
def test_keeps_news_loosely():
    pass
"""

FIXTURES = """
def test_keeps_news(forgetting, tuned_model):
    forgetting.assert_retains(tuned_model, task="news", max_drop=0.02)

def test_keeps_news_loosely(forgetting, tuned_model):
    forgetting.assert_retains(tuned_model, task="news", max_drop=0.9)
"""


@pytest.mark.parametrize("style", ["pyproject", "marker", "fixture"])
def test_newcomer_scenario(pytester, newcomer, tmp_path, style):
    root = newcomer["root"]
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "news_test.csv").write_bytes((root / "data" / "news_test.csv").read_bytes())
    pytester.makepyprojecttoml(textwrap.dedent(PYPROJECT_CHECKS if style == "pyproject" else PYPROJECT_TASK))
    if style != "pyproject":
        pytester.makepyfile(test_news=MARKERS if style == "marker" else FIXTURES)
    assert not (pytester.path / "conftest.py").exists()  # no Python for the data
    report = tmp_path / "report.json"
    result = pytester.runpytest(
        f"--base-ckpt={root / 'base'}", f"--tuned-ckpt={root / 'tuned'}", "--forgetting-device=cpu",
        f"--forgetting-cache-dir={tmp_path / 'cache'}", f"--forgetting-json={report}", "-p", "no:cacheprovider", "-rA",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "Loading weights" not in out and "forgetting: warning" not in out and "Traceback" not in out, out
    rows = json.loads(report.read_text())["rows"]
    assert len(rows) == 2, rows
    got = {}
    for row in rows:
        assert row["task"] == "news" and row["metric"] == "accuracy"
        got[row["margin"]] = {"n": row["n"], "base": row["base"], "tuned": row["tuned"], "verdict": row["verdict"]}
    expected = newcomer["expected"]
    assert set(got) == set(expected)
    for margin, want in expected.items():
        assert got[margin]["verdict"] == want["verdict"] and got[margin]["n"] == want["n"], (margin, got, want)
        assert got[margin]["base"] == pytest.approx(want["base"], abs=1e-9) and got[margin]["tuned"] == pytest.approx(
            want["tuned"], abs=1e-9
        )
    result.stdout.fnmatch_lines(["forgetting: 2 checks, 1 passed, 1 failed*"])
