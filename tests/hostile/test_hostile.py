"""Hostile and broken inputs through the real CLI: one clear line on the affected test, nothing lost."""

from __future__ import annotations

import json

import pytest

RETAINS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.05)
    def test_keeps():
        pass
"""

FLAKY_MODELS = '''
import os
import torch
from torch import nn

K = 4


class OomAbove(nn.Module):
    """Raises CUDA's OOM error for batches larger than LIMIT (a fake OOM on any device)."""

    limit = int(os.environ.get("FAKE_OOM_LIMIT", "16"))

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        os.makedirs("batches", exist_ok=True)
        with open(os.path.join("batches", f"{os.getpid()}.log"), "a") as fh:
            fh.write(f"{x.shape[0]}\\n")
        return self.body(x)


class InterruptOnce(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))

    def forward(self, x):
        if os.environ.get("INTERRUPT_EVAL") == "1":
            raise KeyboardInterrupt
        return self.body(x)


def oom():
    return OomAbove()


def interrupting():
    return InterruptOnce()
'''


def _renamed(state: dict) -> dict:
    return {k.replace("1.", "body.1.", 1): v for k, v in state.items()}


def test_cuda_requested_without_cuda_is_an_error_not_a_skip(make_project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    p = make_project(n=400)
    p.test_file(RETAINS)
    result = p.pytester.runpytest(*p.args(p.base, "--forgetting-device", "cuda"))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--forgetting-device cuda: CUDA is not available on this machine*"])


def test_auto_device_says_cpu_in_header(make_project):
    import torch

    p = make_project(n=400)
    p.test_file(RETAINS)
    result = p.pytester.runpytest(*p.args(p.base))
    expected = "auto -> cuda" if torch.cuda.is_available() else "auto -> cpu (no CUDA device)"
    result.stdout.fnmatch_lines([f"forgetting: device={expected}*"])


def test_fake_oom_halves_batch_for_both_models(make_project, monkeypatch):
    from _helpers.project import linear_weights, save_weights

    p = make_project(n=400)
    p.pytester.makepyfile(flaky=FLAKY_MODELS)
    p.test_file(RETAINS)
    state = _renamed(linear_weights())
    base = save_weights(p.path / "b.safetensors", state)
    tuned = save_weights(p.path / "t.safetensors", state)
    monkeypatch.setenv("FAKE_OOM_LIMIT", "16")
    args = [
        "--base-ckpt",
        str(base),
        "--tuned-ckpt",
        str(tuned),
        "--model-factory",
        "flaky:oom",
        "--forgetting-no-cache",
    ]
    result = p.pytester.runpytest(*args, "--forgetting-batch-size", "auto")
    result.assert_outcomes(passed=1)
    sizes = [int(x) for f in (p.path / "batches").glob("*.log") for x in f.read_text().split()]
    assert max(sizes) == 16 and len(sizes) == 2 * 25  # both models ran 400 examples in batches of 16
    # a fixed batch size never backs off: the OOM is an ERROR naming the batch size
    result = p.pytester.runpytest(*args, "--forgetting-batch-size", "64")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*out of memory*batch size 64*"])
    # auto at batch size 1 still failing: ERROR, not a hang
    monkeypatch.setenv("FAKE_OOM_LIMIT", "0")
    result = p.pytester.runpytest(*args, "--forgetting-batch-size", "auto")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*out of memory*batch size 1*"])


def test_interrupted_base_evaluation_leaves_no_cache_entry(make_project, monkeypatch):
    from _helpers.project import linear_weights, save_weights

    p = make_project(n=400)
    p.pytester.makepyfile(flaky=FLAKY_MODELS)
    p.test_file(RETAINS)
    state = _renamed(linear_weights())
    base = save_weights(p.path / "b.safetensors", state)
    cache = p.path / "cache"
    js = p.path / "r.json"
    args = [
        "--base-ckpt",
        str(base),
        "--tuned-ckpt",
        str(base),
        "--model-factory",
        "flaky:interrupting",
        "--forgetting-cache-dir",
        str(cache),
        "--forgetting-json",
        str(js),
    ]
    monkeypatch.setenv("INTERRUPT_EVAL", "1")
    result = p.pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert not [f for f in cache.glob("*") if f.suffix in (".npz", ".tmp")] if cache.exists() else True
    monkeypatch.setenv("INTERRUPT_EVAL", "0")
    result = p.pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    assert json.loads(js.read_text())["rows"][0]["base_cached"] is False
    assert len(list(cache.glob("*.npz"))) == 1


def test_duplicate_ids_are_an_error_on_the_test(make_project):
    p = make_project(n=400)
    p.pytester.makeconftest(
        p.path.joinpath("conftest.py").read_text()
        + """

@pf.task("dups")
def dups():
    x, y = _data(200, 0, 0)
    return pf.ImageClassificationTask(x, y, ids=["same"] * 200)
"""
    )
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="dups", max_drop=0.05)
        def test_keeps():
            pass
    """)
    result = p.pytester.runpytest(*p.args(p.base))
    result.assert_outcomes(errors=1)
    assert "example ids must be unique; duplicated: ['same']" in result.stdout.str()
    assert "During handling" not in result.stdout.str()


def test_empty_eval_set_is_a_usage_error(make_project):
    p = make_project(n=400)
    p.pytester.makeconftest(
        p.path.joinpath("conftest.py").read_text()
        + """

@pf.task("empty")
def empty():
    return pf.ImageClassificationTask(np.zeros((0, 1, 1, K + 1), dtype=np.float32), np.zeros(0, dtype=np.int64))
"""
    )
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="empty", max_drop=0.05)
        def test_keeps():
            pass
    """)
    result = p.pytester.runpytest(*p.args(p.base))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "has no examples" in result.stderr.str()


def test_limit_too_small_is_a_usage_error_with_minimum(make_project):
    p = make_project(n=400)
    p.test_file(RETAINS)
    result = p.pytester.runpytest(*p.args(p.base, "--forgetting-limit", "20"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot PASS below n=59" in result.stderr.str()


def test_same_command_twice_gives_identical_json(make_project):
    p = make_project(n=400, trap=30)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.05, max_class_drop=0.2)
        def test_a():
            pass

        @pytest.mark.retains(task="synth", metric="f1_macro", max_drop=0.05)
        def test_b():
            pass
    """)
    tuned = p.tuned(trap_weight=10.0)
    texts = []
    for i in range(2):
        js = p.path / f"r{i}.json"
        p.pytester.runpytest(*p.args(tuned, "--forgetting-no-cache", "--forgetting-json", str(js)))
        data = json.loads(js.read_text())
        for row in data["rows"]:
            row.pop("base_eval_s"), row.pop("tuned_eval_s")
        texts.append(json.dumps(data, sort_keys=True))
    assert texts[0] == texts[1]


def test_report_write_failure_does_not_lose_results(make_project):
    p = make_project(n=400)
    p.test_file(RETAINS)
    blocker = p.path / "blocker"
    blocker.write_text("a file, not a directory")
    result = p.pytester.runpytest(*p.args(p.base, "--forgetting-json", str(blocker / "r.json")))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*synth*PASS*", "forgetting: could not write*"])


# -- checkpoints through the CLI ------------------------------------------------------------------


def _expect_error(result, *needles):
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    for needle in needles:
        assert needle in out, (needle, out)
    assert "Traceback" not in out and "INTERNALERROR" not in out
    return out


def test_git_lfs_pointer(make_project):
    p = make_project(n=400)
    p.test_file(RETAINS)
    pointer = p.path / "tuned.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 123456\n")
    _expect_error(p.pytester.runpytest(*p.args(pointer)), "Git LFS pointer", "git lfs pull")


def test_truncated_safetensors(make_project):
    p = make_project(n=400)
    p.test_file(RETAINS)
    data = p.base.read_bytes()
    broken = p.path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    _expect_error(p.pytester.runpytest(*p.args(broken)), "broken.safetensors", "bytes")


def test_pickle_refused_by_default_and_code_never_runs(make_project):
    import pickle

    import torch
    from _helpers.project import linear_weights

    p = make_project(n=400)
    p.test_file(RETAINS)
    plain = p.path / "tuned.pt"
    torch.save(linear_weights(), plain)
    out = _expect_error(p.pytester.runpytest(*p.args(plain)), "pickle", "safetensors", "--forgetting-allow-pickle")
    assert "save_file" in out
    # allowed: loaded with weights_only=True and evaluated
    p.pytester.runpytest(*p.args(plain, "--forgetting-allow-pickle")).assert_outcomes(passed=1)
    # a payload that would create a file is refused even when pickles are allowed
    marker = p.path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = p.path / "evil.pt"
    with evil.open("wb") as fh:
        pickle.dump({"1.weight": Payload()}, fh)
    _expect_error(p.pytester.runpytest(*p.args(evil, "--forgetting-allow-pickle")), "weights_only")
    assert not marker.exists()


def test_factory_key_mismatch_lists_keys(make_project):
    import torch
    from _helpers.project import save_weights

    p = make_project(n=400)
    p.test_file(RETAINS)
    wrong = save_weights(p.path / "wrong.safetensors", {"1.weight": torch.zeros(4, 5), "head.bias": torch.zeros(4)})
    _expect_error(p.pytester.runpytest(*p.args(wrong)), "1.bias", "head.bias")
    shape = save_weights(p.path / "shape.safetensors", {"1.weight": torch.zeros(3, 5), "1.bias": torch.zeros(3)})
    _expect_error(p.pytester.runpytest(*p.args(shape)), "1.weight", "(3, 5)")


TEXT_CONFTEST = """
import pytest_forgetting as pf
from _helpers.checkpoint_models import WORDS

@pf.task("words")
def words():
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(4)) for i in range(300)]
    return pf.TextClassificationTask(texts, [i % 3 for i in range(300)], class_names=["negative", "neutral", "positive"])
"""


@pytest.fixture
def text_project(pytester, request):
    import sys

    sys.path.insert(0, str(request.path.parent))
    from _helpers.checkpoint_models import save_bert

    pytester.makeconftest(TEXT_CONFTEST)
    pytester.makepyfile(
        test_words="""
        import pytest

        @pytest.mark.retains(task="words", max_drop=0.2)
        def test_keeps():
            pass
    """
    )
    base = pytester.path / "base"
    save_bert(base)
    yield pytester, base, save_bert
    sys.path.remove(str(request.path.parent))


def test_hf_folders_identical_pass(text_project):
    pytester, base, _ = text_project
    pytester.runpytest("--base-ckpt", str(base), "--tuned-ckpt", str(base)).assert_outcomes(passed=1)


def test_remote_code_refused(text_project):
    pytester, base, save_bert = text_project
    tuned = pytester.path / "tuned"
    save_bert(tuned)
    (tuned / "modeling_evil.py").write_text("import os\nos.system('touch pwned')\n")
    _expect_error(
        pytester.runpytest("--base-ckpt", str(base), "--tuned-ckpt", str(tuned)), "--forgetting-trust-remote-code"
    )
    assert not (pytester.path / "pwned").exists()


def test_label_map_difference(text_project):
    pytester, base, save_bert = text_project
    tuned = pytester.path / "tuned"
    save_bert(tuned, id2label={0: "neg", 1: "neutral", 2: "pos"}, label2id={"neg": 0, "neutral": 1, "pos": 2})
    args = ["--base-ckpt", str(base), "--tuned-ckpt", str(tuned), "--forgetting-cache-dir", str(pytester.path / "c")]
    _expect_error(pytester.runpytest(*args), "id2label")
    # also when the base evaluation comes from the cache and the base model is never loaded
    pytester.runpytest(
        "--base-ckpt", str(base), "--tuned-ckpt", str(base), "--forgetting-cache-dir", str(pytester.path / "c")
    )
    _expect_error(pytester.runpytest(*args), "id2label")


def test_vocabulary_difference(text_project):
    pytester, base, save_bert = text_project
    import _helpers.checkpoint_models as tc

    tuned = pytester.path / "tuned"
    save_bert(tuned, tokenizer=False)
    tc.make_tokenizer(words=tc.WORDS[::-1]).save_pretrained(tuned)
    _expect_error(pytester.runpytest("--base-ckpt", str(base), "--tuned-ckpt", str(tuned)), "different vocabularies")


def test_model_labels_that_are_not_task_classes(text_project):
    pytester, base, _ = text_project
    pytester.makeconftest(TEXT_CONFTEST.replace('"negative", "neutral", "positive"', '"spam", "ham", "eggs"'))
    _expect_error(
        pytester.runpytest("--base-ckpt", str(base), "--tuned-ckpt", str(base)), "are not labels of the model"
    )


def test_alignment_is_by_id_never_by_position():
    import numpy as np

    from pytest_forgetting.errors import TaskError
    from pytest_forgetting.session import align
    from pytest_forgetting.tasks.base import EvalResult

    base = EvalResult(np.array(["a", "b", "c"]), {"pred": np.array([0, 1, 2])})
    shuffled = EvalResult(np.array(["c", "a", "b"]), {"pred": np.array([2, 0, 1])})
    assert align(base, shuffled, "t").outputs["pred"].tolist() == [0, 1, 2]
    with pytest.raises(TaskError, match="cover different examples"):
        align(base, EvalResult(np.array(["a", "b", "x"]), {"pred": np.array([0, 1, 2])}), "t")
    with pytest.raises(TaskError, match="duplicate example ids in the tuned evaluation"):
        align(base, EvalResult(np.array(["a", "a", "b"]), {"pred": np.array([0, 1, 2])}), "t")


def test_xdist_workers_map_to_their_own_gpu(monkeypatch):
    from pytest_forgetting.evaluate import worker_device

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert worker_device(2)[0] == "cuda:1" and worker_device(1)[0] == "cuda"
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert worker_device(4)[0] == "cuda"
