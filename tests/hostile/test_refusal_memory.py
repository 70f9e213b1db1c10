"""Hostile checkpoints that are refused: the refusal holds for every check of that checkpoint.

A tuned (or base) checkpoint refused once in a run (labels or vocabulary that differ from the
base, NaN weights, a load error) must get the same ERROR / FAIL on every later check of it: a
second check must never PASS on a model that the first one refused. Each project has two checks
of the hostile checkpoint and an unrelated test; every test asserts that the refusal repeats
(same kind, same message), that the unrelated test and the reports are unaffected, that the
message is one line saying what to do, and that nothing outside the cache was written.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
from _checkpoint_helpers import TEXT_CONFTEST  # the two text tasks of the hostile suites
from _helpers.project import linear_weights, save_weights

TWO_CHECKS = """
    import pytest

    @pytest.mark.retains(task="{a}", max_drop=0.2)
    def test_keeps_first():
        pass

    @pytest.mark.retains(task="{b}", max_drop=0.25)
    def test_keeps_second():
        pass

    def test_unrelated():
        assert sum([1, 2]) == 3
"""

#: what each refusal's line says to do
HINTS = {
    "id2label": "make id2label agree",
    "vocabulary": "ship the base tokenizer",
    "nan": "retrain it",
}


# -- helpers -----------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except bytecode caches."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Run:
    """One inner pytest run of a project with its JSON / Markdown reports and the files it wrote."""

    def __init__(self, pytester: pytest.Pytester, args: list[str]) -> None:
        root = pytester.path
        out = root / "out"
        before = _tree(root)
        self.result = pytester.runpytest(
            *args, f"--forgetting-cache-dir={root / 'cache'}", f"--forgetting-json={out / 'r.json'}",
            f"--forgetting-markdown={out / 'r.md'}", "-p", "no:cacheprovider",
        )  # fmt: skip
        after = _tree(root)
        self.written = sorted(k for k in after if after[k] != before.get(k))
        self.removed = sorted(k for k in before if k not in after)
        self.stdout = self.result.stdout.str()
        self.report = json.loads((out / "r.json").read_text())
        self.markdown = (out / "r.md").read_text()

    def rows(self, candidate: str | None = None) -> list[dict]:
        return [r for r in self.report["rows"] if candidate is None or r["candidate"] == candidate]

    def assert_clean(self) -> None:
        """Nothing written outside the cache (and the reports asked for), nothing removed, no traceback."""
        outside = [k for k in self.written if not k.startswith(("cache/", "out/"))]
        assert not outside and not self.removed, (outside, self.removed)
        assert "Traceback" not in self.stdout and "INTERNALERROR" not in self.stdout, self.stdout


def assert_refused_every_time(
    run: Run, verdict: str, needle: str, hint: str, *, candidate: str | None = None, n: int = 2
) -> str:
    """Every check (of ``candidate``) has ``verdict`` with the same one-line reason naming ``needle`` and ``hint``."""
    rows = run.rows(candidate)
    assert len(rows) == n, rows
    assert {r["verdict"] for r in rows} == {verdict}, [(r["test"], r["verdict"], r["reason"]) for r in rows]
    reasons = {r["reason"] for r in rows}
    assert len(reasons) == 1, reasons  # the same kind and message on every check
    reason = reasons.pop()
    assert needle in reason and hint in reason, reason
    assert "\n" not in reason and "\x1b" not in reason
    assert run.stdout.count(reason[:80]) >= n, run.stdout  # each check's failure shows it
    # the reports are written and say the same
    assert run.report["summary"][verdict] >= n
    assert run.markdown.startswith("### pytest-forgetting") and verdict.upper() in run.markdown
    run.assert_clean()
    return reason


@pytest.fixture
def text_project(pytester: pytest.Pytester):
    """A text-classification project (two tasks) with a tiny BERT base checkpoint folder."""
    import _helpers.checkpoint_models as tc

    pytester.makeconftest(TEXT_CONFTEST)
    pytester.makepyfile(test_contract=textwrap.dedent(TWO_CHECKS.format(a="words", b="words2")))
    base = pytester.path / "base"
    tc.save_bert(base)
    return pytester, base, tc


def _args(base: Path, *tuned: Path) -> list[str]:
    return [f"--base-ckpt={base}", *(f"--tuned-ckpt={t}" for t in tuned)]


# -- incompatible tuned checkpoints --------------------------------------------------------------


def test_control_identical_checkpoints_pass_both_checks(text_project):
    pytester, base, _ = text_project
    run = Run(pytester, _args(base, base))
    run.result.assert_outcomes(passed=3)
    assert [r["verdict"] for r in run.rows()] == ["pass", "pass"]
    run.assert_clean()


def test_id2label_in_another_order_errors_every_check(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    swapped = {0: "positive", 1: "neutral", 2: "negative"}
    tc.save_bert(tuned, id2label=swapped, label2id={v: k for k, v in swapped.items()})
    run = Run(pytester, _args(base, tuned))
    run.result.assert_outcomes(errors=2, passed=1)
    assert_refused_every_time(run, "error", "id2label", HINTS["id2label"])


def test_permuted_vocabulary_errors_every_check(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned, tokenizer=False)
    tc.make_tokenizer(words=tc.WORDS[::-1]).save_pretrained(tuned)
    run = Run(pytester, _args(base, tuned))
    run.result.assert_outcomes(errors=2, passed=1)
    assert_refused_every_time(run, "error", "different vocabularies", HINTS["vocabulary"])


def test_five_placeholder_labels_against_three_error_every_check(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    placeholders = {i: f"LABEL_{i}" for i in range(5)}
    tc.save_bert(tuned, num_labels=5, id2label=placeholders, label2id={v: k for k, v in placeholders.items()})
    run = Run(pytester, _args(base, tuned))
    run.result.assert_outcomes(errors=2, passed=1)
    reason = assert_refused_every_time(run, "error", "id2label", HINTS["id2label"])
    assert "'LABEL_0'" in reason  # the placeholder names are shown


def test_refusal_also_holds_when_the_base_outputs_come_from_the_cache(text_project):
    pytester, base, tc = text_project
    Run(pytester, _args(base, base)).result.assert_outcomes(passed=3)  # fills the cache
    tuned = pytester.path / "tuned"
    swapped = {0: "positive", 1: "neutral", 2: "negative"}
    tc.save_bert(tuned, id2label=swapped, label2id={v: k for k, v in swapped.items()})
    run = Run(pytester, _args(base, tuned))
    run.result.assert_outcomes(errors=2, passed=1)
    assert_refused_every_time(run, "error", "id2label", HINTS["id2label"])


def test_nan_in_one_embedding_row_fails_every_check(text_project):
    import torch

    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    model = tc.save_bert(tuned)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[7] = float("nan")
    model.save_pretrained(tuned)
    run = Run(pytester, _args(base, tuned))
    run.result.assert_outcomes(failed=2, passed=1)  # a broken tuned model is a FAIL, not an ERROR
    reason = assert_refused_every_time(run, "fail", "NaN/Inf weights", HINTS["nan"])
    assert "word_embeddings" in reason


def test_several_candidates_each_keep_their_own_verdict(text_project):
    pytester, base, tc = text_project
    good = pytester.path / "good"
    bad = pytester.path / "bad"
    tc.save_bert(good)
    swapped = {0: "positive", 1: "neutral", 2: "negative"}
    tc.save_bert(bad, id2label=swapped, label2id={v: k for k, v in swapped.items()})
    run = Run(pytester, _args(base, bad, good))  # the bad one first: its refusal must not leak into good's checks
    run.result.assert_outcomes(errors=2, passed=3)  # the unrelated test runs once, not once per candidate
    assert [r["verdict"] for r in run.rows("good")] == ["pass", "pass"]
    assert_refused_every_time(run, "error", "id2label", HINTS["id2label"], candidate="bad")
    assert run.report["summary"]["by_candidate"]["good"]["pass"] == 2


# -- load errors (tiny linear models, a model factory) ---------------------------------------------

FLAKY_FACTORY = '''
import os

import torch
from torch import nn

K = 4
CALLS = []


def build():
    """Fails on the call numbers listed in $FAIL_CALLS (1-based): a load error that a retry would hide."""
    CALLS.append(1)
    if str(len(CALLS)) in os.environ.get("FAIL_CALLS", "").split(","):
        raise RuntimeError("factory exploded\\nsecond line \\x1b[32mALL CHECKS PASSED\\x1b[0m")
    return nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))
'''

EXTRA_TASK = """

@pf.task("synth2")
def synth2():
    x, y = _data(400, 0, 7)
    return pf.ImageClassificationTask(x, y, ids=[f"b{i}" for i in range(len(y))])
"""


@pytest.fixture
def linear_project(make_project):
    p = make_project(n=400)
    p.pytester.makeconftest(p.path.joinpath("conftest.py").read_text() + EXTRA_TASK)
    p.pytester.makepyfile(flaky=FLAKY_FACTORY)
    p.test_file(TWO_CHECKS.format(a="synth", b="synth2"))
    return p


def _linear_args(p, tuned: Path, factory: str = "tinymodels:build") -> list[str]:
    return [f"--base-ckpt={p.base}", f"--tuned-ckpt={tuned}", f"--model-factory={factory}"]


def test_truncated_tuned_file_errors_every_check(linear_project):
    p = linear_project
    data = p.base.read_bytes()
    broken = p.path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    run = Run(p.pytester, _linear_args(p, broken))
    run.result.assert_outcomes(errors=2, passed=1)
    assert_refused_every_time(run, "error", "broken.safetensors", "safetensors")


def test_a_load_error_that_a_retry_would_hide_errors_every_check(linear_project, monkeypatch):
    p = linear_project
    tuned = p.tuned(trap_weight=0.0)
    monkeypatch.setenv("FAIL_CALLS", "2")  # call 1 builds the base, call 2 the tuned model
    run = Run(p.pytester, _linear_args(p, tuned, "flaky:build"))
    run.result.assert_outcomes(errors=2, passed=1)
    reason = assert_refused_every_time(run, "error", "factory exploded", "--model-factory flaky:build")
    assert reason.startswith("tuned checkpoint")
    assert "\x1b" not in run.stdout  # no raw escape sequence of the factory's message reaches the terminal


def test_base_load_error_errors_every_check_even_with_cached_base_outputs(linear_project, monkeypatch):
    p = linear_project
    tuned = p.tuned(trap_weight=0.0)
    # a first run caches the base outputs of the second task only
    p.test_file(TWO_CHECKS.format(a="synth2", b="synth2"))
    Run(p.pytester, _linear_args(p, tuned, "flaky:build")).result.assert_outcomes(passed=3)
    p.test_file(TWO_CHECKS.format(a="synth", b="synth2"))
    monkeypatch.setenv("FAIL_CALLS", "1")  # the base fails to build; a later build would succeed
    run = Run(p.pytester, _linear_args(p, tuned, "flaky:build"))
    run.result.assert_outcomes(errors=2, passed=1)
    reason = assert_refused_every_time(run, "error", "factory exploded", "--model-factory flaky:build")
    assert reason.startswith("base checkpoint")


def test_missing_base_checkpoint_is_one_usage_error(linear_project):
    """A base path with nothing there is a configuration error: exit 4, one line, before any check (issue 14.5)."""
    p = linear_project
    tuned = p.tuned()
    result = p.pytester.runpytest(f"--base-ckpt={p.path / 'no-such-base.safetensors'}", f"--tuned-ckpt={tuned}",
                                  "--model-factory=tinymodels:build", "-p", "no:cacheprovider")  # fmt: skip
    assert result.ret == 4
    lines = [ln for ln in result.stderr.lines if ln.strip()]
    assert len(lines) == 1 and "base checkpoint not found: nothing at" in lines[0], lines
    assert lines[0].count("no-such-base.safetensors") == 1, lines


def test_hub_id_typo_says_no_local_path_exists(linear_project, monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    p = linear_project
    run = Run(p.pytester, [f"--base-ckpt={p.base}", "--tuned-ckpt=org/modle", "--model-factory=tinymodels:build"])
    run.result.assert_outcomes(errors=2, passed=1)
    reason = assert_refused_every_time(run, "error", "no local path 'org/modle' exists", "fix the path")
    assert "--forgetting-allow-download" in reason


def test_allowed_pickle_refusal_does_not_quote_torchs_weights_only_false_advice(linear_project):
    import pickle

    p = linear_project
    marker = p.path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = p.path / "evil.pt"
    with evil.open("wb") as fh:
        pickle.dump({"1.weight": Payload()}, fh, protocol=4)
    run = Run(p.pytester, [*_linear_args(p, evil), "--forgetting-allow-pickle"])
    run.result.assert_outcomes(errors=2, passed=1)
    reason = assert_refused_every_time(run, "error", "evil.pt", "save only the state_dict")
    assert not marker.exists()
    for advice in ("set to `False`", "will likely succeed", "can still be loaded", "In PyTorch 2."):
        assert advice not in run.stdout and advice not in reason and advice not in run.markdown


# -- the Python API ------------------------------------------------------------------------------

API_TESTS = """
    import torch
    from torch import nn

    K = 4


    def broken():
        model = nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))
        with torch.no_grad():
            model[1].weight[0, 0] = float("nan")
        return model


    def test_first(forgetting):
        forgetting.assert_retains(broken(), task="synth", max_drop=0.05)


    def test_second(forgetting):
        forgetting.assert_retains(broken(), task="synth2", max_drop=0.05)


    def test_by_reference_first(forgetting):
        forgetting.assert_retains("{ref}", task="synth", max_drop=0.05)


    def test_by_reference_second(forgetting):
        forgetting.assert_retains("{ref}", task="synth2", max_drop=0.05)


    def test_unrelated():
        assert sum([1, 2]) == 3
"""


def test_python_api_refusals_repeat_for_modules_and_references(linear_project, monkeypatch):
    p = linear_project
    tuned = p.tuned()
    p.test_file(API_TESTS.replace("{ref}", str(p.path / "other.safetensors")))
    save_weights(p.path / "other.safetensors", linear_weights())
    monkeypatch.setenv("FAIL_CALLS", "2")  # call 1 builds the base, call 2 the reference: refused once, for good
    run = Run(p.pytester, _linear_args(p, tuned, "flaky:build"))
    run.result.assert_outcomes(failed=4, passed=1)
    nan_rows = [r for r in run.rows() if "NaN/Inf" in r["reason"]]
    ref_rows = [r for r in run.rows() if "factory exploded" in r["reason"]]
    assert len(nan_rows) == 2 and {r["verdict"] for r in nan_rows} == {"fail"}
    assert len({r["reason"] for r in nan_rows}) == 1 and "retrain it" in nan_rows[0]["reason"]
    assert len(ref_rows) == 2 and {r["verdict"] for r in ref_rows} == {"error"}
    assert len({r["reason"] for r in ref_rows}) == 1
    run.assert_clean()
