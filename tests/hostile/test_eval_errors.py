"""Hostile models that raise during evaluation, and runs that are interrupted.

An exception in a model's forward pass (a checkpoint whose code or weights make it crash) is
one ERROR line per check that names the model (base / tuned candidate), the task and the batch
(``tuned model 'bad' failed on task 'synth' batch 6 (examples 384-399, ids ex384..ex399):
RuntimeError: ...``), with the exception's text escaped: a newline or an ANSI sequence in it
cannot fake a line of the plugin's output. Each project has two checks and an unrelated test;
the unrelated test, the other candidate and the reports are unaffected, and nothing outside
the cache is written. An interrupted run writes reports that say so.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
from _helpers.project import linear_weights, save_weights

#: a forward pass that raises on the batch holding the last examples (fewer than 64 rows), but
#: only for a model whose 'armed' buffer is set: the base runs, the hostile tuned model crashes
CRASHING_MODELS = """
import torch
from torch import nn

K = 4
FAKE = "boom\\n\\x1b[32mPASSED: ALL CHECKS PASSED\\x1b[0m\\r\\u202e"


class Crashing(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))
        self.register_buffer("armed", torch.zeros(1))

    def forward(self, x):
        if bool(self.armed.item()) and x.shape[0] < 64:
            raise RuntimeError(FAKE)
        return self.body(x)


def build():
    return Crashing()
"""

EXTRA_TASK = """

@pf.task("synth2")
def synth2():
    x, y = _data(400, 0, 7)
    return pf.ImageClassificationTask(x, y, ids=[f"b{i}" for i in range(len(y))])
"""

TWO_CHECKS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.05)
    def test_keeps_first():
        pass

    @pytest.mark.retains(task="synth2", max_drop=0.1)
    def test_keeps_second():
        pass

    def test_unrelated():
        assert sum([1, 2]) == 3
"""


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _state(armed: bool) -> dict:
    import torch

    state = {k.replace("1.", "body.1.", 1): v for k, v in linear_weights().items()}
    state["armed"] = torch.ones(1) if armed else torch.zeros(1)
    return state


@pytest.fixture
def crash_project(make_project):
    p = make_project(n=400)
    p.pytester.makeconftest(p.path.joinpath("conftest.py").read_text() + EXTRA_TASK)
    p.pytester.makepyfile(crashing=CRASHING_MODELS)
    p.test_file(TWO_CHECKS)
    p.good = save_weights(p.path / "good.safetensors", _state(False))
    p.bad = save_weights(p.path / "bad.safetensors", _state(True))
    return p


def _run(p, base: Path, *tuned: Path, extra: tuple[str, ...] = ()):
    root = p.path
    before = _tree(root)
    result = p.pytester.runpytest(
        f"--base-ckpt={base}", *(f"--tuned-ckpt={t}" for t in tuned), "--model-factory=crashing:build",
        f"--forgetting-cache-dir={root / 'cache'}", f"--forgetting-json={root / 'out' / 'r.json'}",
        f"--forgetting-markdown={root / 'out' / 'r.md'}", "-p", "no:cacheprovider", *extra,
    )  # fmt: skip
    after = _tree(root)
    written = [k for k in after if after[k] != before.get(k) and not k.startswith(("cache/", "out/"))]
    assert not written and set(before) <= set(after), written  # nothing outside the cache and the reports
    out = result.stdout.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out
    return result, out, json.loads((root / "out" / "r.json").read_text())


def _assert_escaped(text: str) -> None:
    for raw in ("\x1b", "\r", "\u202e"):
        assert raw not in text, repr(text)


def test_tuned_forward_error_names_model_task_and_batch_on_every_check(crash_project):
    p = crash_project
    result, out, report = _run(p, p.good, p.bad)
    result.assert_outcomes(errors=2, passed=1)
    rows = report["rows"]
    assert [r["verdict"] for r in rows] == ["error", "error"]
    first, second = (r["reason"] for r in rows)
    # the model is named as its reference was written (relative or absolute, by where pytest runs;
    # a long path is cut to 120 characters with a count of what was cut)
    assert (
        first.startswith("tuned model '")
        and "' failed on task 'synth' batch 6 (examples 384-399, ids ex384..ex399): RuntimeError: boom" in first
    )
    assert (
        second.startswith("tuned model '")
        and "' failed on task 'synth2' batch 6 (examples 384-399, ids b384..b399): RuntimeError: boom" in second
    )
    for reason in (first, second):
        assert "\n" not in reason and "\\n" in reason and "\\x1b[32m" in reason and "\\u202e" in reason
    _assert_escaped(out)
    # no line of the output starts with the faked text: it stays inside the error line
    assert not any(line.lstrip().startswith(("PASSED", "[32m", "ALL CHECKS")) for line in out.splitlines())
    assert report["summary"]["error"] == 2 and "interrupted" in report and report["interrupted"] is False
    _assert_escaped((p.path / "out" / "r.md").read_text())


def test_base_forward_error_names_the_base(crash_project):
    p = crash_project
    result, out, report = _run(p, p.bad, p.good)
    result.assert_outcomes(errors=2, passed=1)
    reasons = [r["reason"] for r in report["rows"]]
    assert reasons[0].startswith(
        "base model failed on task 'synth' batch 6 (examples 384-399, ids ex384..ex399): RuntimeError: boom"
    )
    assert reasons[1].startswith("base model failed on task 'synth2' batch 6")
    _assert_escaped(out)


def test_several_candidates_name_the_crashing_one(crash_project):
    p = crash_project
    other = save_weights(p.path / "other.safetensors", _state(False))
    result, out, report = _run(p, p.good, p.bad, other)
    result.assert_outcomes(errors=2, passed=3)  # other's two checks and the unrelated test
    bad_rows = [r for r in report["rows"] if r["candidate"] == "bad"]
    assert [r["verdict"] for r in bad_rows] == ["error", "error"]
    assert all(r["reason"].startswith("tuned model 'bad' failed on task 'synth") for r in bad_rows)
    assert [r["verdict"] for r in report["rows"] if r["candidate"] == "other"] == ["pass", "pass"]
    _assert_escaped(out)


def test_python_api_forward_error_names_the_model(crash_project):
    p = crash_project
    p.test_file(
        """
        import torch
        import crashing


        def armed():
            model = crashing.build()
            model.armed.fill_(1.0)
            return model


        def test_first(forgetting):
            forgetting.assert_retains(armed(), task="synth", max_drop=0.05)


        def test_second(forgetting):
            forgetting.assert_retains(armed(), task="synth2", max_drop=0.1)


        def test_unrelated():
            assert sum([1, 2]) == 3
        """
    )
    result, out, report = _run(p, p.good, p.good)
    result.assert_outcomes(failed=2, passed=1)
    reasons = [r["reason"] for r in report["rows"]]
    assert len(reasons) == 2
    assert all(r.startswith("tuned model '<in-memory Crashing>' failed on task 'synth") for r in reasons), reasons
    assert "batch 6 (examples 384-399" in reasons[0]
    _assert_escaped(out)


def test_evaluation_error_is_one_line_unit():
    """``run_model`` raises one BatchFailure line; an OOM stays raw so the batch size can back off."""
    import numpy as np
    import torch

    import pytest_forgetting as pf
    from pytest_forgetting.evaluate import BatchFailure, run_model
    from pytest_forgetting.tasks.base import ModelMeta

    task = pf.ImageClassificationTask(np.zeros((10, 1, 1, 3), dtype=np.float32), np.zeros(10, dtype=np.int64))
    task.name = "t\n\x1b[31mx"

    class Boom(torch.nn.Module):
        def __init__(self, error):
            super().__init__()
            self.error = error

        def forward(self, x):
            if x.shape[0] < 4:
                raise self.error
            return torch.zeros(x.shape[0], 2)

    prepared = task.prepare("test", ModelMeta())
    ids = task.ids("test")
    with pytest.raises(BatchFailure) as info:
        run_model(
            task,
            Boom(ValueError("bad\nline")),
            prepared,
            np.arange(10),
            ids,
            device="cpu",
            dtype="float32",
            batch_size=4,
        )
    message = str(info.value)
    assert message.startswith("failed on task 't\\n\\x1b[31mx' batch 2 (examples 8-9, ids "), message
    assert "\n" not in message and "\x1b" not in message and message.endswith("ValueError: bad\\nline")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_model(task, Boom(torch.cuda.OutOfMemoryError("CUDA out of memory")), prepared, np.arange(10), ids,
                  device="cpu", dtype="float32", batch_size=4)  # fmt: skip


# -- interrupted runs ---------------------------------------------------------------------------

INTERRUPTING_MODELS = '''
import os

import torch
from torch import nn

K = 4


class Interrupting(nn.Module):
    """Raises KeyboardInterrupt (Ctrl-C) on the task named in $INTERRUPT_TASK (its labels: 400 examples)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))

    def forward(self, x):
        marker = os.environ.get("INTERRUPT_AFTER", "")
        if marker and os.path.exists(marker):
            raise KeyboardInterrupt
        return self.body(x)


def build():
    return Interrupting()
'''


def test_interrupted_run_writes_reports_that_say_so(make_project, monkeypatch):
    p = make_project(n=400)
    p.pytester.makeconftest(p.path.joinpath("conftest.py").read_text() + EXTRA_TASK)
    p.pytester.makepyfile(interrupting=INTERRUPTING_MODELS)
    marker = p.path / "stop-now"
    p.test_file(
        f"""
        import pathlib
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.05)
        def test_keeps_first():
            pathlib.Path({str(marker)!r}).write_text("the next forward pass is interrupted")

        @pytest.mark.retains(task="synth2", max_drop=0.1)
        def test_keeps_second():
            pass

        def test_unrelated():
            assert sum([1, 2]) == 3
        """
    )
    state = {k.replace("1.", "body.1.", 1): v for k, v in linear_weights().items()}
    base = save_weights(p.path / "b.safetensors", state)
    js, md = p.path / "r.json", p.path / "r.md"
    monkeypatch.setenv("INTERRUPT_AFTER", str(marker))
    result = p.pytester.runpytest(
        f"--base-ckpt={base}", f"--tuned-ckpt={base}", "--model-factory=interrupting:build",
        f"--forgetting-cache-dir={p.path / 'cache'}", f"--forgetting-json={js}", f"--forgetting-markdown={md}",
        "-p", "no:cacheprovider", no_reraise_ctrlc=True,  # the inner run ends INTERRUPTED; this test goes on
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = json.loads(js.read_text())
    assert report["interrupted"] is True
    assert [r["verdict"] for r in report["rows"]] == ["pass", "error"]  # the check that finished is kept
    assert report["rows"][1]["reason"].startswith("interrupted while evaluating")
    assert "Interrupted" in md.read_text()
    result.stdout.fnmatch_lines(["forgetting: the run was interrupted: these results are partial*"])
    # a complete run says it was not interrupted
    marker.unlink()
    monkeypatch.delenv("INTERRUPT_AFTER")
    p.test_file(textwrap.dedent(TWO_CHECKS))
    p.pytester.runpytest(
        f"--base-ckpt={base}", f"--tuned-ckpt={base}", "--model-factory=interrupting:build",
        f"--forgetting-cache-dir={p.path / 'cache'}", f"--forgetting-json={js}", "-p", "no:cacheprovider",
    ).assert_outcomes(passed=3)  # fmt: skip
    assert json.loads(js.read_text())["interrupted"] is False


# -- a tokenizer that crashes while the task's inputs are prepared --------------------------------

TEXT_CONFTEST = """
import pytest_forgetting as pf

WORDS = [f"w{i}" for i in range(40)]


@pf.task("words")
def words():
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(4)) for i in range(300)]
    return pf.TextClassificationTask(texts, [i % 3 for i in range(300)], class_names=["negative", "neutral", "positive"])
"""


def test_crashing_tokenizer_names_the_model_and_the_task(pytester):
    import _helpers.checkpoint_models as tc

    pytester.makeconftest(TEXT_CONFTEST)
    base = pytester.path / "base"
    tc.save_bert(base)
    pytester.makepyfile(
        test_api="""
        import copy

        from pytest_forgetting.tasks.base import tokenizer_of


        class ExplodingTokenizer:
            '''The base's vocabulary (so the pair is compatible), but tokenising raises.'''

            def __init__(self, real):
                self.real = real

            def get_vocab(self):
                return self.real.get_vocab()

            def __call__(self, *args, **kwargs):
                raise ValueError("tokenizer exploded\\n\\x1b[32mALL CHECKS PASSED")

            def __getattr__(self, name):
                raise ValueError("tokenizer exploded\\n\\x1b[32mALL CHECKS PASSED")


        def hostile(model):
            model = copy.deepcopy(model)
            model.forgetting_tokenizer = ExplodingTokenizer(tokenizer_of(model))
            return model


        def test_first(forgetting, tuned_model):
            forgetting.assert_retains(hostile(tuned_model), task="words", max_drop=0.2)


        def test_second(forgetting, tuned_model):
            forgetting.assert_retains(hostile(tuned_model), task="words", max_drop=0.25)


        def test_unrelated():
            assert sum([1, 2]) == 3
        """
    )
    js = pytester.path / "out" / "r.json"
    result = pytester.runpytest(f"--base-ckpt={base}", f"--tuned-ckpt={base}", f"--forgetting-cache-dir={pytester.path / 'cache'}",
                                f"--forgetting-json={js}", "-p", "no:cacheprovider")  # fmt: skip
    result.assert_outcomes(failed=2, passed=1)
    reasons = [r["reason"] for r in json.loads(js.read_text())["rows"]]
    assert len(reasons) == 2 and len(set(reasons)) == 1, reasons
    assert reasons[0].startswith(
        "tuned model '<in-memory BertForSequenceClassification>' failed preparing task 'words'"
    ), reasons
    assert "ValueError: tokenizer exploded\\n\\x1b[32m" in reasons[0]
    out = result.stdout.str()
    _assert_escaped(out)
    assert "Traceback" not in out and "INTERNALERROR" not in out
