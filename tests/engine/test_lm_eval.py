"""lm-evaluation-harness tasks as retention checks (``task="lm-eval:NAME"``).

A tiny GPT-2 (kilobytes) learns sixteen made-up facts ("the capital of vel is orin"); local YAML
tasks over a JSONL file ask them as multiple choice and as generate-until with exact match. The
plugin's per-document numbers must equal ``lm_eval.simple_evaluate`` run directly on the same
model; identical models PASS, a degraded copy FAILs, a cached base is not evaluated again, a
group reports its subtasks as classes, and ``-n 2`` gives the same table. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")
# imported here, before any in-process pytester run (those restore sys.modules afterwards)
import lm_eval.evaluator  # noqa: E402,F401,F811
import lm_eval.models.huggingface  # noqa: E402,F401
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from pytest_forgetting.errors import ConfigError  # noqa: E402
from pytest_forgetting.tasks.base import ModelMeta  # noqa: E402
from pytest_forgetting.tasks.lm_eval import LmEvalTask  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_lm_tasks import CITIES, COUNTRIES, FACTS, fit, tiny_gpt2, word_tokenizer  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{text}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["</s>"]
  max_gen_toks: 2
  do_sample: false
metric_list:
  - metric: exact_match
"""

GROUP_YAML = """group: tiny_suite
task: [tiny_mc, tiny_mc_short]
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
"""


def write_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (country, city) in enumerate(zip(COUNTRIES, CITIES)):
        others = [c for c in CITIES if c != city]
        choices = [city, others[i % len(others)], others[(i + 5) % len(others)]]
        choices = choices[i % 3 :] + choices[: i % 3]
        rows.append({"q": f"the capital of {country} is", "short": f"capital of {country} is", "choices": choices,
                     "gold": choices.index(city), "answer": city})  # fmt: skip
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "mc.yaml").write_text(MC_YAML.format(name="tiny_mc", data=data, text="{{q}}"))
    (folder / "mc_short.yaml").write_text(MC_YAML.format(name="tiny_mc_short", data=data, text="{{short}}"))
    (folder / "gen.yaml").write_text(GEN_YAML.format(data=data))
    (folder / "suite.yaml").write_text(GROUP_YAML)
    return folder


def degrade(model, scale: float = 3.0, seed: int = 1):
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.transformer.h.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp(min=1e-3))
    return out.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, tokenizer, base model): base/ and degraded/ HF folders, tasks/ with the YAML tasks."""
    root = tmp_path_factory.mktemp("lmeval")
    tok = word_tokenizer()
    base = fit(tiny_gpt2(tok), tok, FACTS, steps=150, lr=1e-2)
    for name, model in (("base", base), ("degraded", degrade(base))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    write_tasks(root / "tasks")
    return root, tok, base


def direct(model, tok, name: str, include: Path, **kwargs):
    """lm-eval run by hand: its logged samples by doc_id."""
    res = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=8), tasks=[name],
        task_manager=TaskManager(include_path=str(include), include_defaults=False), log_samples=True, bootstrap_iters=0, **kwargs,
    )  # fmt: skip
    return res["samples"]


@pytest.mark.parametrize("name, metrics", [("tiny_mc", ("acc", "acc_norm")), ("tiny_gen", ("exact_match",))])
def test_per_document_numbers_equal_simple_evaluate(world, name, metrics):
    root, tok, base = world
    for model in (base, degrade(base)):
        task = LmEvalTask(name, include=[str(root / "tasks")])
        assert task.metrics.keys() >= set(metrics) and task.default_metric == metrics[0]
        got = task.evaluate_model(
            model,
            ModelMeta(tokenizer=tok),
            "test",
            np.arange(task.size("test")),
            device="cpu",
            dtype="float32",
            batch_size=8,
        )
        want = {s["doc_id"]: s for s in direct(model, tok, name, root / "tasks")[name]}
        assert got.ids.tolist() == [f"{name}:{i}" for i in range(len(COUNTRIES))]
        for metric in metrics:
            assert got.outputs[metric].tolist() == [float(want[i][metric]) for i in range(len(COUNTRIES))], metric
    # a subset (--forgetting-limit) is the same documents' numbers
    sub = task.evaluate_model(
        model, ModelMeta(tokenizer=tok), "test", np.array([1, 4, 9]), device="cpu", dtype="float32", batch_size=8
    )
    assert sub.ids.tolist() == [f"{name}:{i}" for i in (1, 4, 9)]
    assert sub.outputs[metrics[0]].tolist() == [float(want[i][metrics[0]]) for i in (1, 4, 9)]


def test_fewshot_and_fingerprint(world):
    root, tok, base = world
    include = [str(root / "tasks")]
    zero, two = LmEvalTask("tiny_mc", include=include), LmEvalTask("tiny_mc", include=include, num_fewshot=2)
    assert zero.data_fingerprint("test") != two.data_fingerprint("test")  # few-shot settings are in the cache key
    assert LmEvalTask("tiny_mc", include=include).data_fingerprint("test") == zero.data_fingerprint("test")
    got = two.evaluate_model(
        base, ModelMeta(tokenizer=tok), "test", np.arange(two.size("test")), device="cpu", dtype="float32", batch_size=4
    )
    want = {s["doc_id"]: s for s in direct(base, tok, "tiny_mc", root / "tasks", num_fewshot=2)["tiny_mc"]}
    assert got.outputs["acc_norm"].tolist() == [float(want[i]["acc_norm"]) for i in range(len(COUNTRIES))]
    with pytest.raises(ConfigError, match="unknown lm-eval task 'tiny_mcc'.*did you mean 'tiny_mc'"):
        LmEvalTask("tiny_mcc", include=include)
    group = LmEvalTask("tiny_suite", include=include)
    assert group.class_names() == ["tiny_mc", "tiny_mc_short"] and group.size("test") == 2 * len(COUNTRIES)
    assert group.static_outputs("test")["label"].tolist() == [0] * len(COUNTRIES) + [1] * len(COUNTRIES)


def test_missing_dataset_is_one_clear_line(tmp_path):
    (tmp_path / "hub.yaml").write_text("task: hub_only\ndataset_path: some-org/not-cached-anywhere\ntest_split: test\n"
                                       "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n")  # fmt: skip
    from pytest_forgetting.errors import TaskError

    with pytest.raises(TaskError) as exc:
        LmEvalTask("hub_only", include=[str(tmp_path)])
    msg = str(exc.value)
    assert "\n" not in msg and "hub_only" in msg and "load_dataset('some-org/not-cached-anywhere')" in msg, msg


TESTS = """
import pytest


@pytest.mark.retains(task="lm-eval:tiny_mc", max_drop=0.3)
def test_mc():
    pass


@pytest.mark.retains(task="lm-eval:tiny_gen", max_drop=0.3)
def test_gen():
    pass


@pytest.mark.retains(task="lm-eval:tiny_suite", metric="acc", max_drop=0.3, max_class_drop=0.5)
def test_suite():
    pass
"""

KEYS = (
    "test",
    "task",
    "metric",
    "n",
    "base",
    "tuned",
    "drop",
    "ci_low",
    "ci_high",
    "verdict",
    "nfr",
    "worst_classes",
    "flipped_ids",
)


def run(pytester, root, tuned: str, *extra: str, subprocess_run: bool = False):
    report = pytester.path / f"report-{len(list(pytester.path.glob('report-*')))}.json"
    args = [
        f"--base-ckpt={root / 'base'}", f"--tuned-ckpt={root / tuned}", "--forgetting-device=cpu",
        f"--forgetting-lm-eval-include={root / 'tasks'}", f"--forgetting-json={report}", "-p", "no:cacheprovider", *extra,
    ]  # fmt: skip
    result = pytester.runpytest_subprocess(*args) if subprocess_run else pytester.runpytest(*args)
    data = json.loads(report.read_text())
    return result, {r["test"].rsplit("::", 1)[-1]: r for r in data["rows"]}


def test_identical_pass_degraded_fails_and_base_is_cached(pytester, world):
    root, _, _ = world
    pytester.makepyfile(test_llm=TESTS)
    cache = f"--forgetting-cache-dir={pytester.path / 'cache'}"
    result, rows = run(pytester, root, "base", cache)
    result.assert_outcomes(passed=3)
    assert {r["verdict"] for r in rows.values()} == {"pass"}
    assert (
        rows["test_mc"]["n"] == len(COUNTRIES)
        and rows["test_mc"]["metric"] == "acc"
        and rows["test_gen"]["metric"] == "exact_match"
    )
    result, rows = run(pytester, root, "degraded", cache)
    result.assert_outcomes(failed=3)
    assert all(r["base_cached"] and r["base_eval_s"] == 0.0 for r in rows.values()), rows  # only the tuned model ran
    mc = rows["test_mc"]
    assert mc["verdict"] == "fail" and mc["base"] >= 0.9 and mc["drop"] > 0.3, mc
    suite = rows["test_suite"]
    assert suite["n"] == 2 * len(COUNTRIES) and suite["verdict"] == "fail"
    assert sorted(c["name"] for c in suite["worst_classes"]) == ["tiny_mc", "tiny_mc_short"], suite  # a row per subtask
    assert all(
        c["n"] == len(COUNTRIES) and c["verdict"] in ("fail", "inconclusive", "pass") for c in suite["worst_classes"]
    )
    assert suite["flipped_ids"] and all(i.split(":")[0] in ("tiny_mc", "tiny_mc_short") for i in suite["flipped_ids"])


def test_xdist_gives_the_same_table(pytester, world):
    pytest.importorskip("xdist")
    root, _, _ = world
    pytester.makepyfile(test_llm=TESTS)
    _, plain = run(pytester, root, "degraded", "--forgetting-no-cache")
    result, spread = run(pytester, root, "degraded", "--forgetting-no-cache", "-n", "2", subprocess_run=True)
    result.assert_outcomes(failed=3)
    assert {k: {f: r[f] for f in KEYS} for k, r in spread.items()} == {
        k: {f: r[f] for f in KEYS} for k, r in plain.items()
    }


def test_declared_on_the_command_line(pytester, world):
    root, _, _ = world
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result, rows = run(pytester, root, "degraded", "--forgetting-no-cache", "--retains=lm-eval:tiny_mc:0.3,metric=acc_norm",
                       "--forgetting-lm-eval-fewshot=1")  # fmt: skip
    (row,) = rows.values()
    assert (
        row["task"] == "lm-eval:tiny_mc" and row["metric"] == "acc_norm" and row["verdict"] in ("fail", "inconclusive")
    ), row
    result.assert_outcomes(passed=1, failed=1)


def test_unknown_lm_eval_task_is_a_usage_error(pytester, world):
    root, _, _ = world
    pytester.makepyfile(
        test_bad='import pytest\n\n@pytest.mark.retains(task="lm-eval:tiny_mcq", max_drop=0.1)\ndef test_x():\n    pass\n'
    )
    result = pytester.runpytest(f"--forgetting-lm-eval-include={root / 'tasks'}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown lm-eval task 'tiny_mcq'*did you mean 'tiny_mc'*"])


def test_plugin_and_other_tasks_never_import_lm_eval(tmp_path):
    code = (
        "import sys\n"
        "import pytest_forgetting.plugin, pytest_forgetting\n"
        "from pytest_forgetting.options import Settings\n"
        "from pytest_forgetting.session import ForgettingSession\n"
        "from pytest_forgetting.registry import REGISTRY\n"
        "s = ForgettingSession(Settings(lm_eval_include=('x',)))\n"
        "assert 'lm-eval:anything' in REGISTRY\n"  # a name is accepted without importing lm-eval
        "s.task('digits')\n"
        "print(sorted(m for m in ('lm_eval', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
