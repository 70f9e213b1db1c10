"""A newcomer's path with a Hugging Face text model and their own data (issue 14).

Each test drives pytest the way the README tells a user to: a tiny BERT-style classifier saved
with ``save_pretrained`` next to a real ``tokenizer.json``, checks written with the fixtures,
data given as CSV / JSONL files without Python.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from text_helpers import labelled, make_tokenizer, save, sentiment_texts, tiny_bert

try:  # at collection, before any in-process pytester run: one that first imports it loses six.moves on restore
    import matplotlib.axes  # noqa: F401
except ImportError:  # test_report_details skips
    pass

POLARITY = ["neg", "pos"]


def _spread(model, texts):
    """Centre and sharpen a random head so its predictions use both classes."""
    import torch

    enc = make_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**enc).pooler_output
        model.classifier.weight.mul_(1000.0)
        model.classifier.bias.copy_(-(pooled @ model.classifier.weight.T).median(dim=0).values)
    return model


def _predict(model, texts):
    import torch

    enc = make_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.argmax(dim=1).numpy()


@pytest.fixture(scope="module")
def hf_project(tmp_path_factory):
    """A base classifier, a copy with swapped head rows (every prediction flips), and agreement data.

    The labels are the base's own predictions, so the base is right on every text and the swapped
    copy wrong on every one: the verdicts are certain.
    """
    import torch

    root = tmp_path_factory.mktemp("hf")
    texts, _ = sentiment_texts(120, 5)
    base = _spread(tiny_bert(**labelled(POLARITY)), texts)
    swapped = _spread(tiny_bert(**labelled(POLARITY)), texts)
    swapped.load_state_dict(base.state_dict())
    with torch.no_grad():
        swapped.classifier.weight.copy_(swapped.classifier.weight[[1, 0]])
        swapped.classifier.bias.copy_(swapped.classifier.bias[[1, 0]])
    pred = _predict(base, texts)
    assert len(set(pred.tolist())) == 2
    assert (tokenizer_json := save(base, root / "base") / "tokenizer.json").is_file(), tokenizer_json
    save(swapped, root / "swapped")
    return {"root": root, "base": root / "base", "swapped": root / "swapped", "texts": texts, "pred": pred}


def _write_reviews(folder: Path, texts, labels, names=POLARITY) -> Path:
    path = folder / "reviews.jsonl"
    with path.open("w") as fh:
        for i, (t, y) in enumerate(zip(texts, labels)):
            fh.write(json.dumps({"id": f"r{i}", "text": t, "label": names[int(y)] if names else int(y)}) + "\n")
    return path


# -- 1. in-memory models carry their checkpoint's tokenizer ---------------------------------------


def test_fixture_pattern_on_a_hf_text_model(pytester, hf_project, tmp_path):
    """The README's fixture pattern: ``assert_retains(tuned_model, ...)`` and ``assert_retains(finetune(...))``."""
    texts, pred = hf_project["texts"], hf_project["pred"]
    _write_reviews(pytester.path, texts, pred)
    pytester.makeconftest(
        """
        import json
        import pytest_forgetting as pf

        @pf.task("reviews")
        def reviews():
            rows = [json.loads(line) for line in open("reviews.jsonl")]
            half = len(rows) // 2
            split = lambda rs: ([r["text"] for r in rs], [r["label"] for r in rs], [r["id"] for r in rs])
            return pf.TextClassificationTask(splits={"train": split(rows[:half]), "test": split(rows[half:])},
                                             class_names=["neg", "pos"])
        """
    )
    pytester.makepyfile(
        """
        def test_tuned_keeps_reviews(forgetting, tuned_model):
            forgetting.assert_retains(tuned_model, task="reviews", max_drop=0.05)

        def test_base_against_itself(forgetting, base_model):
            forgetting.assert_retains(base_model, task="reviews", max_drop=0.05)

        def test_gentle_finetune_keeps_reviews(forgetting, finetune):
            tuned = finetune(train="reviews", strategy="freeze", train_last=1, lr=1e-6, max_steps=1, seed=0)
            forgetting.assert_retains(tuned, task="reviews", max_drop=0.5)

        def test_a_finetune_of_the_tuned_model_keeps_its_tokenizer(forgetting, finetune, tuned_model):
            tuned = finetune(tuned_model, train="reviews", strategy="full", lr=1e-6, max_steps=1, seed=0)
            again = finetune(tuned, train="reviews", strategy="freeze", train_last=1, lr=1e-6, max_steps=1, seed=0)
            assert forgetting.compare("reviews", tuned=again).n == 60

        def test_an_api_error_is_a_row(forgetting, tuned_model):
            forgetting.assert_retains(tuned_model, task="reviews", split="validation", max_drop=0.05)
        """
    )
    result = pytester.runpytest(
        f"--base-ckpt={hf_project['base']}", f"--tuned-ckpt={hf_project['swapped']}", "--forgetting-device=cpu",
        f"--forgetting-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider",
    )  # fmt: skip
    out = result.stdout.str()
    assert "needs a tokenizer" not in out, out
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines([  # rows in test-name order
        "forgetting: 4 checks, 2 passed, 1 failed, 1 error*",
        "test_an_api_error_is_a_row *reviews/validation*ERROR",
        "test_base_against_itself *reviews*accuracy*60*100.0%*100.0%*PASS",
        "test_gentle_finetune_keeps_reviews *reviews*accuracy*60*100.0%*PASS",
        "test_tuned_keeps_reviews *reviews*accuracy*60*100.0%*0.0%*FAIL",
    ])  # fmt: skip
    assert "forgetting.assert_retains: forgetting.assert_retains" not in out

    several = pytester.runpytest(  # with two candidates, the fixture's rows belong to its candidate
        f"--base-ckpt={hf_project['base']}", f"--tuned-ckpt={hf_project['swapped']}", f"--tuned-ckpt={hf_project['base']}",
        "--forgetting-device=cpu", f"--forgetting-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider", "-k", "tuned_keeps",
    )  # fmt: skip
    several.assert_outcomes(passed=1, failed=1)
    several.stdout.fnmatch_lines([
        "forgetting: 2 checks on 2 candidates, 1 passed, 1 failed*",
        "candidate base:", "test_tuned_keeps_reviews?base? *100.0%*100.0%*PASS",
        "candidate swapped:", "test_tuned_keeps_reviews?swapped? *100.0%*0.0%*FAIL",
    ])  # fmt: skip


def test_the_python_api_keeps_the_checkpoint_tokenizer(hf_project):
    import pytest_forgetting as pf

    loaded = pf.load_checkpoint(str(hf_project["base"]))
    assert loaded.model.forgetting_tokenizer is loaded.tokenizer is not None
    task = pf.TextClassificationTask(hf_project["texts"], hf_project["pred"], class_names=POLARITY)
    from pytest_forgetting.evaluate import evaluate

    assert evaluate(task, loaded.model, split="test").outputs["pred"].tolist() == hf_project["pred"].tolist()
    again = pf.load_checkpoint(loaded.model)  # a module: its carried tokenizer, not none
    assert again.tokenizer is loaded.tokenizer


# -- 2. label mapping: integer labels index the logits, names map by name ------------------------

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]


@pytest.fixture(scope="module")
def topic_model(tmp_path_factory):
    """A 5-class classifier with named labels and its predictions on 300 texts (agreement data)."""
    root = tmp_path_factory.mktemp("topics")
    texts, _ = sentiment_texts(300, 11)
    model = _spread(tiny_bert(seed=3, **labelled(TOPICS)), texts)
    pred = _predict(model, texts)
    assert len(set(pred.tolist())) >= 3
    return {"folder": save(model, root / "model"), "texts": texts, "pred": pred}


def _csv(path: Path, rows) -> Path:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows(rows)
    return path


def test_labels_map_by_index_or_by_name(pytester, topic_model, tmp_path):
    import datasets

    texts, pred = topic_model["texts"], topic_model["pred"]
    rows = [(f"t{i}", t, int(y)) for i, (t, y) in enumerate(zip(texts, pred))]
    _csv(pytester.path / "ints.csv", rows)  # integer labels: the model's label ids
    top2 = [int(c) for c in np.argsort(-np.bincount(pred, minlength=5))[:2]]
    _csv(
        pytester.path / "subset.csv", [(i, t, TOPICS[y]) for i, t, y in rows if y in top2]
    )  # 2 of the 5 classes, by name
    _csv(pytester.path / "too-many.csv", [*rows[:80], ("t-x", "the movie", 7)])
    _csv(pytester.path / "other-names.csv", [(i, t, TOPICS[y].upper()) for i, t, y in rows])
    reversed_names = TOPICS[::-1]  # a ClassLabel whose ids are not the model's: names decide
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=reversed_names)})
    data = datasets.Dataset.from_dict({"text": texts, "label": [4 - int(y) for y in pred]}, features=features)
    data.save_to_disk(str(pytester.path / "classlabel"))
    pytester.makeconftest(
        """
        import pytest_forgetting as pf

        for name in ("ints", "subset", "too-many", "other-names"):
            pf.task(name)(lambda name=name: pf.from_csv(f"{name}.csv", id="id"))

        @pf.task("classlabel")
        def classlabel():
            return pf.from_hf_dataset("classlabel")
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.retains(task="ints", max_drop=0.05)
        def test_integer_labels(): pass

        @pytest.mark.retains(task="subset", max_drop=0.1)
        def test_a_subset_of_the_classes(): pass

        @pytest.mark.retains(task="classlabel", max_drop=0.05)
        def test_classlabel_names(): pass

        @pytest.mark.retains(task="too-many", max_drop=0.05)
        def test_a_label_past_the_logits(): pass

        @pytest.mark.retains(task="other-names", max_drop=0.05)
        def test_names_that_disagree(): pass
        """
    )
    folder = topic_model["folder"]
    result = pytester.runpytest(
        f"--base-ckpt={folder}", f"--tuned-ckpt={folder}", "--forgetting-device=cpu",
        f"--forgetting-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider",
    )  # fmt: skip
    out = result.stdout.str()
    result.assert_outcomes(passed=3, errors=2)
    n_subset = int(np.isin(pred, top2).sum())
    assert "retains[too-many]: task 'too-many' has integer labels 0..7 but the model has 5 outputs" in out
    assert f"are not labels of the model, and labels match by name: rename them, or pass class_names={TOPICS!r}" in out
    result.stdout.fnmatch_lines([
        "test_a_subset_of_the_classes *subset *accuracy* %d *100.0%%*100.0%%*PASS" % n_subset,
        "test_classlabel_names *classlabel *accuracy* 300 *100.0%*100.0%*PASS",
        "test_integer_labels *ints *accuracy* 300 *100.0%*100.0%*PASS",
    ])  # fmt: skip
    assert "are not classes of the task" not in out


def test_finetune_trains_the_logits_the_labels_name():
    """A model that orders its labels differently from the task is trained on the right outputs."""
    from pytest_forgetting.finetune import FinetuneError, as_data
    from pytest_forgetting.tasks.classification import TextClassificationTask

    texts, y = sentiment_texts(20, 0)
    task = TextClassificationTask(splits={"train": (texts, [POLARITY[int(v)] for v in y])}, class_names=POLARITY)
    task.name = "polarity"
    reversed_model = tiny_bert(**labelled(POLARITY[::-1])).config  # id 0 is "pos"
    _, labels = as_data(task, tokenizer=make_tokenizer(), config=reversed_model).batch(np.arange(20))
    assert labels.tolist() == (1 - y).tolist()
    _, same = as_data(task, tokenizer=make_tokenizer(), config=tiny_bert(**labelled(POLARITY)).config).batch(
        np.arange(20)
    )
    assert same.tolist() == y.tolist()
    with pytest.raises(FinetuneError, match=r"classes \['neutral'\] that are not labels of the model"):
        wide = TextClassificationTask(
            splits={"train": (texts, ["neutral"] * 20)}, class_names=["neg", "neutral", "pos"]
        )
        as_data(wide, tokenizer=make_tokenizer(), config=reversed_model)


# -- 3. data tasks with zero Python ---------------------------------------------------------------


def _data_project(pytester, hf_project):
    """A project with only data files and pyproject.toml: no conftest, no task code."""
    import datasets

    texts, pred = hf_project["texts"], hf_project["pred"]
    data = pytester.path / "data"
    data.mkdir()
    _csv(data / "news_test.csv", [(f"n{i}", t, int(y)) for i, (t, y) in enumerate(zip(texts, pred))])  # default columns
    with (data / "tickets.csv").open("w") as fh:
        fh.write(
            "ticket,body,topic\n"
            + "".join(f"k{i},{t},{POLARITY[int(y)]}\n" for i, (t, y) in enumerate(zip(texts, pred)))
        )
    with (data / "reviews.jsonl").open("w") as fh:
        for i, (t, y) in enumerate(zip(texts, pred)):
            fh.write(json.dumps({"uid": f"r{i}", "review": t, "sentiment": int(y)}) + "\n")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=POLARITY)})
    datasets.Dataset.from_dict({"text": texts, "label": pred.tolist()}, features=features).save_to_disk(
        str(data / "saved")
    )
    pytester.makepyprojecttoml(
        """
        [tool.pytest_forgetting.tasks.feedback]
        path = "data/reviews.jsonl"
        text = "review"
        label = "sentiment"
        id = "uid"

        [tool.pytest_forgetting]
        retains = [{ task = "feedback", max_drop = 0.05 }]
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.retains(task="tickets", max_drop=0.05)
        def test_keeps_tickets(): pass
        """
    )


def test_data_tasks_without_python(pytester, hf_project, tmp_path):
    _data_project(pytester, hf_project)
    folder = hf_project["base"]
    common = [f"--base-ckpt={folder}", f"--tuned-ckpt={folder}", "--forgetting-device=cpu",
              f"--forgetting-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]  # fmt: skip
    result = pytester.runpytest(
        *common, "--forgetting-task=tickets=csv:data/tickets.csv,text=body,label=topic,id=ticket",
        "--forgetting-task=saved=datasets:data/saved", "--retains=saved:0.05", "--retains=data/news_test.csv:0.05",
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([
        "forgetting: 4 checks, 4 passed*",
        "*retains*data/news_test.csv* data/news_test.csv *accuracy*120*100.0%*PASS",
        "*retains*feedback* feedback *accuracy*120*100.0%*PASS",
        "*retains*saved* saved *accuracy*120*100.0%*PASS",
        "test_keeps_tickets *tickets *accuracy*120*100.0%*PASS",
    ])  # fmt: skip

    listed = pytester.runpytest(
        "--forgetting-list-tasks",
        "--forgetting-task=tickets=data/tickets.csv,text=body,label=topic",
        "-p",
        "no:cacheprovider",
    )
    assert listed.ret == 0
    listed.stdout.fnmatch_lines([
        "forgetting: * tasks",
        "task * class * metrics (default first) * splits (examples) * from",
        "digits * ImageClassificationTask * accuracy, * train 1,257, test 540 * built-in",
        "feedback * TextClassificationTask * accuracy, * test 120 * pyproject.toml ?tool.pytest_forgetting.tasks.feedback?",
        "tickets * TextClassificationTask * accuracy, * test 120 * --forgetting-task*",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--forgetting-task=t=csv:data/nope.csv"],
            "*--forgetting-task 't=csv:data/nope.csv': data file */data/nope.csv does not exist*",
        ),
        (
            ["--forgetting-task=t=csv:data/tickets.csv,txt=body"],
            "*unknown key 'txt' for a csv task (did you mean 'text'?)*",
        ),
        (
            ["--forgetting-task=t=csv:data/tickets.csv,text=bdy,label=topic"],
            "*data/tickets.csv has no column 'bdy' (did you mean 'body'?)*name it with text=...*",
        ),
        (["--forgetting-task=t=cvs:data/tickets.csv"], "*unknown format 'cvs' (did you mean 'csv'?)*"),
        (["--retains=data/news_tset.csv:0.02"], "*task 'data/news_tset.csv' names a data file, but there is none*"),
    ],
)
def test_declared_task_mistakes_are_usage_errors(pytester, hf_project, args, message):
    _data_project(pytester, hf_project)
    result = pytester.runpytest(
        f"--base-ckpt={hf_project['base']}", f"--tuned-ckpt={hf_project['base']}", *args, "-p", "no:cacheprovider"
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines([message])
    assert len([ln for ln in result.stderr.lines if ln.strip()]) == 1, result.stderr.str()


# -- 4. a marker name close to retains / improves is a usage error --------------------------------


@pytest.mark.parametrize(
    ("mark", "meant"), [("retain", "retains"), ("retainss", "retains"), ("improve", "improves"), ("Retains", "retains")]
)
def test_marker_typo_is_a_usage_error(pytester, mark, meant):
    pytester.makepyfile(
        f"""
        import pytest

        def test_plain():
            pass

        @pytest.mark.{mark}(task="digits", max_drop=0.02)
        def test_keeps_digits():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == 4, result.stdout.str()
    result.stderr.fnmatch_lines([
        f"*test_marker_typo_is_a_usage_error.py::test_keeps_digits: unknown marker @pytest.mark.{mark} "
        f"(did you mean @pytest.mark.{meant}?)*"
    ])  # fmt: skip
    assert len([ln for ln in result.stderr.lines if ln.strip()]) == 1, result.stderr.str()


def test_a_registered_marker_of_a_close_name_is_left_alone(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    retain: another plugin's marker\n")
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.retain\ndef test_x():\n    pass\n\n@pytest.mark.remote\ndef test_y():\n    pass\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# -- 5. one actionable line for each mismatch -----------------------------------------------------


@pytest.fixture(scope="module")
def mismatch_models(hf_project, tmp_path_factory):
    """A headless encoder (BertModel) with its tokenizer, and the base classifier saved without one."""
    root = tmp_path_factory.mktemp("mismatch")
    save(tiny_bert("BertModel"), root / "encoder")
    tiny_bert(**labelled(POLARITY)).save_pretrained(root / "no-tokenizer")
    return {"encoder": root / "encoder", "no_tokenizer": root / "no-tokenizer", "base": hf_project["base"]}


TWO_MARKED = """
    import pytest

    @pytest.mark.retains(task="{task}", max_drop=0.05)
    def test_first():
        pass

    @pytest.mark.retains(task="{task}", max_drop=0.05)
    def test_second():
        pass
"""


def _mismatch_run(pytester, hf_project, tmp_path, base, tuned, task="reviews.csv"):
    _csv(
        pytester.path / "reviews.csv",
        [(f"r{i}", t, int(y)) for i, (t, y) in enumerate(zip(hf_project["texts"], hf_project["pred"]))],
    )
    pytester.makepyfile(test_mismatch=TWO_MARKED.format(task=task))
    args = [f"--base-ckpt={base}"] + ([f"--tuned-ckpt={tuned}"] if tuned else [])
    return pytester.runpytest(
        *args, "--forgetting-device=cpu", f"--forgetting-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"
    )


def test_a_headless_encoder_says_use_a_probe_or_save_the_classifier(pytester, hf_project, mismatch_models, tmp_path):
    enc = mismatch_models["encoder"]
    result = _mismatch_run(pytester, hf_project, tmp_path, enc, enc)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        f"retains[[]reviews.csv[]]: base model ({enc}) is a headless encoder (BertModel: it returns hidden states, not class scores), "
        "so it cannot score task 'reviews.csv'; use an embedding-probe task * or save the classifier: * (BertForSequenceClassification), "
        "with save_pretrained"
    ])  # fmt: skip
    assert "AttributeError" not in result.stdout.str()


def test_an_image_task_on_a_text_model_says_task_expects_images_model_takes_tokens(
    pytester, hf_project, mismatch_models, tmp_path
):
    base = mismatch_models["base"]
    result = _mismatch_run(pytester, hf_project, tmp_path, base, base, task="digits")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        f"retains[[]digits[]]: base model ({base}) cannot run task 'digits': task expects images, model takes tokens "
        "(BertForSequenceClassification); check this model on a text task, or give task 'digits' a checkpoint that takes images"
    ])  # fmt: skip


def test_a_tuned_folder_without_tokenizer_names_it_and_the_fix(pytester, hf_project, mismatch_models, tmp_path):
    folder = mismatch_models["no_tokenizer"]
    result = _mismatch_run(pytester, hf_project, tmp_path, mismatch_models["base"], folder)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        f"retains[[]reviews.csv[]]: tuned model '{folder}' has no tokenizer, and text task 'reviews.csv' needs one; "
        f"the folder has no tokenizer files *; save the tokenizer the model was trained with beside its weights: "
        f"tokenizer.save_pretrained('{folder}')"
    ])  # fmt: skip


@pytest.mark.parametrize("case", ["file in the folder", "missing path", "missing option"])
def test_configuration_errors_are_usage_errors_reported_once(pytester, hf_project, mismatch_models, tmp_path, case):
    base = mismatch_models["base"]
    tuned = {
        "file in the folder": base / "model.safetensors",
        "missing path": pytester.path / "tuned-nope",
        "missing option": None,
    }[case]
    result = _mismatch_run(pytester, hf_project, tmp_path, base, tuned)
    assert result.ret == 4, result.stdout.str()
    lines = [ln for ln in result.stderr.lines if ln.strip()]
    assert len(lines) == 1, lines  # once for the run, not once per test
    line = lines[0]
    if case == "file in the folder":
        assert (
            f"--tuned-ckpt: tuned checkpoint {tuned}: a weights file inside the Hugging Face model folder {base}"
            in line
        )
        assert line.endswith(f"pass the folder, {base}, not a file inside it"), line
    elif case == "missing path":
        assert (
            f"--tuned-ckpt: tuned checkpoint not found: nothing at {tuned};" in line and line.count("tuned-nope") == 1
        ), line
    else:
        assert (
            "no tuned checkpoint: pass --tuned-ckpt=REF" in line and "2 tests (test_mismatch.py::test_first" in line
        ), line


def test_deselected_checks_need_no_checkpoints(pytester):
    """The configuration check looks at the tests that will run: ``-k`` without the checked tests needs no checkpoint."""
    pytester.makepyfile(textwrap.dedent(TWO_MARKED.format(task="digits")) + "\n\ndef test_plain():\n    pass\n")
    pytester.runpytest("-k", "plain", "-p", "no:cacheprovider").assert_outcomes(passed=1, deselected=2)
    assert pytester.runpytest("-k", "first", "-p", "no:cacheprovider").ret == 4


# -- 7. report details --------------------------------------------------------------------------

PLOT_RECORDER = """
import json
import os

import matplotlib.axes

_errorbar, _set_yticks = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.set_yticks


def _record(entry):
    with open(os.path.join(os.path.dirname(__file__), "plot-calls.jsonl"), "a") as fh:
        fh.write(json.dumps(entry) + "\\n")


def errorbar(self, x, y, *args, xerr=None, **kwargs):
    below, above = (xerr[0][0], xerr[1][0]) if xerr is not None else (0.0, 0.0)
    _record({"lo": float(x) - float(below), "hi": float(x) + float(above)})
    return _errorbar(self, x, y, *args, xerr=xerr, **kwargs)


def set_yticks(self, ticks, labels=None, **kwargs):
    _record({"labels": [str(label) for label in (labels or [])]})
    return _set_yticks(self, ticks, labels, **kwargs)


matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.set_yticks = errorbar, set_yticks


def pytest_unconfigure(config):
    matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.set_yticks = _errorbar, _set_yticks
"""


def _plot_calls(path: Path) -> tuple[list[dict], list[str]]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    return [e for e in entries if "lo" in e], [label for e in entries for label in e.get("labels", [])]


def test_report_details(pytester, hf_project, tmp_path):
    """settings_sources, the plot (clipped intervals, short names), the ranking, quiet loading, warnings."""
    import shutil

    pytest.importorskip("matplotlib.axes")  # (imported at collection: see the top of this file)

    texts, pred = hf_project["texts"], hf_project["pred"]
    rows = [(f"r{i}", t, int(y)) for i, (t, y) in enumerate(zip(texts, pred))]
    _csv(pytester.path / "reviews.csv", rows)
    _csv(pytester.path / "flipped.csv", [(i, t, 1 - y) for i, t, y in rows])  # the base is wrong on every text
    pytester.makeconftest(PLOT_RECORDER)
    pytester.makepyprojecttoml(
        """
        [tool.pytest_forgetting]
        retains = [{ task = "reviews.csv", max_drop = 0.1 }, { task = "flipped.csv", max_drop = 0.1 }]
        """
    )
    twin = shutil.copytree(hf_project["base"], tmp_path / "twin")  # the base's files under another name
    common = [
        "--forgetting-device=cpu",
        f"--forgetting-cache-dir={tmp_path / 'cache'}",
        "-p",
        "no:cacheprovider",
        "-rA",
    ]
    report, plot = tmp_path / "r.json", tmp_path / "plot.png"
    result = pytester.runpytest(f"--base-ckpt={hf_project['base']}", f"--tuned-ckpt={twin}", f"--forgetting-json={report}",
                                f"--forgetting-plot={plot}", *common)  # fmt: skip
    result.assert_outcomes(passed=2)
    out = result.stdout.str() + result.stderr.str()
    assert "Loading weights" not in out  # transformers' bars are not in every test's captured stderr
    result.stdout.fnmatch_lines([
        "forgetting: warning: the tuned checkpoint is the same as the base (same content fingerprint *): every check "
        "compares the base with itself; check what --tuned-ckpt points at",
        "forgetting: warning: the base scores 0.0% accuracy on task 'flipped.csv', at or below chance (*): there is no "
        "capability to retain, so a PASS means nothing; *",
    ])  # fmt: skip
    assert "task 'reviews.csv', at or below chance" not in out
    data = json.loads(report.read_text())
    assert data["settings_sources"]["retains"] == "pyproject" and data["settings_sources"]["improves"] == "default"
    assert len(data["warnings"]) == 2
    bars, _ = _plot_calls(pytester.path / "plot-calls.jsonl")
    assert len(bars) == 2 and all(0.0 <= b["lo"] <= b["hi"] <= 1.0 for b in bars), bars  # 100% +- an interval: clipped

    # two candidates, both flipping every prediction: named once in the plot, and a ranking line without a winner
    shutil.copytree(hf_project["swapped"], tmp_path / "flipper")
    pytester.makepyprojecttoml("")
    pytester.makepyfile(
        test_reviews="import pytest\n\n@pytest.mark.retains(task='reviews.csv', max_drop=0.1)\ndef test_keeps_reviews():\n    pass\n"
    )
    result = pytester.runpytest(f"--base-ckpt={hf_project['base']}", f"--tuned-ckpt={hf_project['swapped']}",
                                f"--tuned-ckpt={tmp_path / 'flipper'}", f"--forgetting-plot={plot}", *common)  # fmt: skip
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["ranking:", "  reviews.csv: no candidate passes every check*",
                                 "  overall: no candidate passes every check; closest: flipper (1/1 not passed), swapped (1/1 not passed)"])  # fmt: skip
    _, labels = _plot_calls(pytester.path / "plot-calls.jsonl")
    assert sorted(labels) == ["flipper: test_keeps_reviews", "swapped: test_keeps_reviews"], labels


def test_improves_lines_speak_of_gains():
    """An improves INCONCLUSIVE (PASS, FAIL) line in gains, not in the decision core's signed drops."""
    from pytest_forgetting.report import failure_message

    row = dict(kind="improves", bounded=True, relative=False, drop=-0.134, ci_low=-0.221, ci_high=-0.047, margin=-0.1, base=0.5,
               tuned=0.634, n=200, verdict="inconclusive", metric="accuracy", task="fashion", test="t.py::test_x",
               reason="interval [-0.221, -0.047] contains the margin -0.100; about 2,565 examples would settle it")  # fmt: skip
    lines = failure_message(row).splitlines()
    assert (
        lines[1]
        == "  verdict:  INCONCLUSIVE - gain interval [+4.7 pp, +22.1 pp] contains the required +10.0 pp; about 2,565 examples would settle it"
    )
    assert "-0." not in "\n".join(lines), lines
    row.update(verdict="fail", margin=-0.3, reason="lower bound of the drop -0.015 > margin -0.300 (proven regression)")
    assert (
        failure_message(row).splitlines()[1]
        == "  verdict:  FAIL - upper bound of the gain +1.5 pp < required +30.0 pp (proven: it gains less)"
    )


def test_readme_options_table_lists_the_newcomer_options():
    """README "## Options": the data-task, task-list and early-stop options, and pytest-xdist for -n."""
    import pytest_forgetting

    readme = (Path(pytest_forgetting.__file__).resolve().parents[1] / "README.md").read_text()  # the checkout's
    section = readme[readme.index("\n## Options\n") : readme.index("\n## ", readme.index("\n## Options\n") + 5)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for flag, ini in (
        ("--forgetting-task=", ""),
        ("--forgetting-list-tasks", ""),
        ("--forgetting-early-stop", "`forgetting_early_stop`"),
    ):
        row = next((r for r in rows if r.startswith(f"| `{flag}")), None)
        assert row is not None, f"{flag} is not in the Options table"
        assert ini in row
    assert "`-n N` needs pytest-xdist" in " ".join(section.split())


# -- 6. the example's property tests are derandomised; fine-tuning tests are no candidate -----------

EXAMPLE = Path(__file__).resolve().parents[2] / "example_project"


def test_example_project_is_derandomised_and_counts_only_real_candidates(pytester, tmp_path):
    """The example's own tests, on random CNN weights (the verdicts do not matter here)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    for name in ("conftest.py", "cnn.py", "pyproject.toml"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    shutil.copytree(EXAMPLE / "tests", pytester.path / "tests")
    (pytester.path / "tests" / "test_profile.py").write_text(
        "from hypothesis import settings\n\n"
        "def test_hypothesis_profile_is_derandomised():\n"
        "    assert settings.default.derandomize is True and settings.default.database is None\n"
    )
    import sys

    sys.path.insert(0, str(EXAMPLE))
    try:
        from cnn import build_model
    finally:
        sys.path.remove(str(EXAMPLE))
    refs = {}
    for name, seed in (("base", 0), ("naive", 1), ("replay", 2)):
        torch.manual_seed(seed)
        refs[name] = pytester.path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in build_model().state_dict().items()}, str(refs[name]))
    result = pytester.runpytest_subprocess(
        f"--base-ckpt={refs['base']}", f"--tuned-ckpt={refs['naive']}", f"--tuned-ckpt={refs['replay']}",
        "--forgetting-device=cpu", f"--forgetting-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider",
        "-k", "profile or lora or learns_upscaled", "-v", "--forgetting-inconclusive=pass",
    )  # fmt: skip
    out = result.stdout.str()
    assert "test_hypothesis_profile_is_derandomised PASSED" in out, out
    assert (
        "test_lora_keeps_mnist_and_learns_digits PASSED" in out
        or "test_lora_keeps_mnist_and_learns_digits FAILED" in out
    )
    assert "test_lora_keeps_mnist_and_learns_digits[" not in out  # fine-tunes the base: once, not per candidate
    result.stdout.fnmatch_lines([
        "forgetting: 4 checks on 2 candidates, *",
        "models built by the tests (no candidate):",
        "test_lora_keeps_mnist_and_learns_digits *digits-28*",
        "test_lora_keeps_mnist_and_learns_digits *mnist*",
        "candidate naive:",
        "test_learns_upscaled_digits?naive? *digits-28*",
        "candidate replay:",
        "test_learns_upscaled_digits?replay? *digits-28*",
        "ranking:",
        "  digits-28: *",
    ])  # fmt: skip
    assert "(unnamed)" not in out
