"""Models too large for one device: ``--forgetting-device-map`` loads Hugging Face folders through
accelerate (split over devices, offloaded to the CPU or the disk) and evaluates them unmoved.

Everything runs on the CPU with a 2-layer config-built BERT: the placements differ (plain, ``auto``,
an explicit map with layers on ``cpu`` and on ``disk``, ``auto`` squeezed onto the disk by
``max_memory``) and the evaluations must not.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
from text_helpers import labelled, make_tokenizer, save, sentiment_texts, session, tiny_bert

from pytest_forgetting.checkpoints import load_checkpoint, nonfinite_params
from pytest_forgetting.errors import CheckpointError, ConfigError
from pytest_forgetting.evaluate import input_device, is_dispatched
from pytest_forgetting.options import OPTIONS, parse_max_memory, resolve
from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.tasks.classification import TextClassificationTask

THREE = ["one", "two", "three"]
N = 200
# layers 0 and the embeddings in memory, the rest on the disk
SPLIT_MAP = {
    "bert.embeddings": "cpu", "bert.encoder.layer.0": "cpu", "bert.encoder.layer.1": "disk",
    "bert.pooler": "disk", "classifier": "disk",
}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 2-layer BERT sequence classifier saved as an HF folder, its head sharpened so predictions spread."""
    import torch

    texts, _ = sentiment_texts(N, 5)
    model = tiny_bert(num_hidden_layers=2, **labelled(THREE))
    enc = make_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**enc).pooler_output
        model.classifier.weight.mul_(1000.0)
        model.classifier.bias.copy_(-(pooled @ model.classifier.weight.T).median(dim=0).values)
        logits = model(**enc).logits
    assert len(logits.argmax(1).unique()) >= 2, "the head should use several classes"
    return save(model, tmp_path_factory.mktemp("dm") / "bert")


@pytest.fixture
def task_name():
    texts, labels = sentiment_texts(N, 5)
    task = TextClassificationTask(texts, labels, class_names=THREE)
    with REGISTRY.temporary("tiny-device-map", lambda: task, origin="test_device_map") as name:
        yield name


def _map_file(tmp_path, mapping=SPLIT_MAP, name="map.json"):
    path = tmp_path / name
    path.write_text(json.dumps(mapping))
    return path


def test_placements_evaluate_identically(folder, task_name, tmp_path):
    from text_helpers import check

    placements = {
        "plain": {},
        "auto": {"device_map": "auto"},
        "split": {"device_map": str(_map_file(tmp_path))},
        "disk": {"device_map": "auto", "max_memory": "cpu=20KB"},  # too little memory: all on the disk
    }
    preds, rows, maps = {}, {}, {}
    for name, settings in placements.items():
        sess = session(folder, folder, tmp_path, no_cache=True, **settings)
        model = sess.load(sess.base_slot()).model
        maps[name] = getattr(model, "hf_device_map", None)
        result, _ = sess.evaluate(sess.base_slot(), sess.task(task_name), "test")
        preds[name] = result.outputs["pred"]
        row = sess.run_check(check(task_name, max_drop=0.05), test="t").row
        rows[name] = (row["base"], row["tuned"], row["verdict"])
    assert maps["plain"] is None and maps["auto"] is None  # all of it fits on the CPU: not dispatched
    assert maps["split"] == SPLIT_MAP  # really dispatched: some modules in memory, the rest on the disk
    assert maps["disk"] == {"": "disk"}
    assert len(np.unique(preds["plain"])) >= 2
    for name in placements:
        np.testing.assert_array_equal(preds[name], preds["plain"], err_msg=name)
        assert rows[name] == rows["plain"], name
    assert rows["plain"][2] == "pass" and 0.0 < rows["plain"][0] < 1.0


def test_a_dispatched_model_gives_the_same_logits_and_is_never_moved(folder, tmp_path):
    import torch

    texts, _ = sentiment_texts(16, 9)
    plain = load_checkpoint(str(folder)).model
    split = load_checkpoint(str(folder), device_map=SPLIT_MAP, offload_folder=tmp_path / "offload", dtype="float32")
    model = split.model
    assert is_dispatched(model) and split.kind == "hf-folder"
    assert {p.device.type for p in model.parameters()} == {"cpu", "meta"}  # the disk part is not in memory
    assert nonfinite_params(model) == []  # meta (offloaded) tensors are skipped, not read
    assert input_device(model, "cuda:3") == "cpu"  # accelerate's main device, not the session's
    enc = make_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**enc).logits, plain(**enc).logits)
    with torch.no_grad():  # a NaN in a layer that lives in memory is still found
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    assert nonfinite_params(model) == ["bert.encoder.layer.0.output.dense.weight"]


def test_input_device_follows_the_device_map():
    class Fake:
        hf_device_map = {"embed": "cpu", "layers.0": 1, "layers.1": "cuda:0", "head": "disk"}

    assert input_device(Fake(), "cpu") == "cuda:1"
    Fake.hf_device_map = {"embed": "disk", "head": "cpu"}
    assert input_device(Fake(), "cuda") == "cpu"
    Fake.hf_device_map = {}
    assert input_device(Fake(), "cuda:2") == "cuda:2"


def test_other_checkpoint_kinds_are_refused_in_one_line(folder, tmp_path):
    import torch

    from pytest_forgetting.finetune import FinetuneError, finetune

    weights = tmp_path / "linear.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, str(weights))
    with pytest.raises(
        CheckpointError, match=r"needs a Hugging Face model folder .* not a bare \.safetensors file"
    ) as info:
        load_checkpoint(str(weights), model_factory=lambda: torch.nn.Linear(3, 2), device_map="auto")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="needs a Hugging Face model folder"):
        load_checkpoint(torch.nn.Linear(3, 2), device_map="auto")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    sess = session(folder, adapter, tmp_path, device_map="auto")
    with pytest.raises(CheckpointError, match="not a PEFT adapter"):
        sess.load(sess.tuned_slot())
    assert sess.base.loaded is None  # refused before the base was loaded for nothing
    split = load_checkpoint(str(folder), device_map=SPLIT_MAP)
    with pytest.raises(FinetuneError, match="split over devices by accelerate"):
        finetune(split.model, "tiny-device-map")
    if torch.cuda.device_count() < 8:
        with pytest.raises(CheckpointError, match=r"puts '' on 'cuda:7' but this machine has \d CUDA device"):
            load_checkpoint(str(folder), device_map={"": "cuda:7"})


def _resolve(cli=None, env=None, ini=None, **where):
    cli, ini = cli or {}, ini or {}
    return resolve(lambda name: cli.get(name), lambda key: ini.get(key), environ=env or {}, **where)


def test_options_come_from_cli_env_or_ini(tmp_path):
    assert {o.cli: (o.ini, o.env) for o in OPTIONS}["--forgetting-device-map"] == (
        "forgetting_device_map",
        "FORGETTING_DEVICE_MAP",
    )
    assert _resolve().device_map is None
    s = _resolve({"forgetting_device_map": "Balanced", "forgetting_max_memory": "cpu=40MiB, 0=1.5GiB"})
    assert (s.device_map, s.sources["device_map"], s.max_memory) == ("balanced", "cli", "cpu=40MiB, 0=1.5GiB")
    assert parse_max_memory(s.max_memory) == {"cpu": 40 * 2**20, 0: 3 * 2**29}
    _map_file(tmp_path)
    s = _resolve(ini={"forgetting_device_map": "map.json"}, ini_dir=tmp_path, invocation_dir=tmp_path / "elsewhere")
    assert s.device_map == str(tmp_path / "map.json") and s.sources["device_map"] == "ini"
    s = _resolve(
        env={"FORGETTING_DEVICE_MAP": "sequential"}, ini={"forgetting_device_map": "map.json"}, ini_dir=tmp_path
    )
    assert (s.device_map, s.sources["device_map"]) == ("sequential", "env")


@pytest.mark.parametrize(
    "cli, content, message",
    [
        (
            {"forgetting_device_map": "everywhere"},
            None,
            "--forgetting-device-map='everywhere': expected auto, balanced, balanced_low_0, sequential or a JSON file",
        ),
        ({"forgetting_device_map": "map.json"}, "{not json", "is not valid JSON: Expecting property name"),
        (
            {"forgetting_device_map": "map.json"},
            "[]",
            "must be a non-empty JSON object mapping module names to devices",
        ),
        ({"forgetting_device_map": "map.json"}, '{"bert": "gpu"}', "module 'bert' -> 'gpu' is not a device"),
        (
            {"forgetting_device_map": "auto", "forgetting_max_memory": "cpu:40GiB"},
            None,
            "--forgetting-max-memory='cpu:40GiB': 'cpu:40GiB': expected DEVICE=SIZE",
        ),
        ({"forgetting_device_map": "auto", "forgetting_max_memory": "tpu=1GiB"}, None, "unknown device 'tpu'"),
        ({"forgetting_device_map": "auto", "forgetting_max_memory": "cpu=lots"}, None, "expected DEVICE=SIZE"),
        ({"forgetting_max_memory": "cpu=1GiB"}, None, "only applies with --forgetting-device-map auto"),
        (
            {"forgetting_device_map": "map.json", "forgetting_max_memory": "cpu=1GiB"},
            '{"": "cpu"}',
            "an explicit JSON map already places every module",
        ),
    ],
)
def test_bad_values_are_one_line_config_errors(tmp_path, cli, content, message):
    if content is not None:
        (tmp_path / "map.json").write_text(content)
    with pytest.raises(ConfigError) as info:
        _resolve(cli, invocation_dir=tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_markers_run_with_a_device_map_from_the_ini(pytester, folder):
    """End to end through pytest: the map comes from the ini file (relative to it) and the run passes."""
    texts, labels = sentiment_texts(N, 5)
    pytester.makeconftest(f"""
        import pytest_forgetting as pf

        @pf.task("dm-texts")
        def dm_texts():
            return pf.TextClassificationTask({texts!r}, {labels.tolist()!r}, class_names={THREE!r})
    """)
    pytester.makefile(".json", map=json.dumps(SPLIT_MAP))
    pytester.makeini("[pytest]\nforgetting_device_map = map.json\n")
    pytester.makepyfile(
        textwrap.dedent("""
        import pytest

        @pytest.mark.retains(task="dm-texts", max_drop=0.05)
        def test_keeps_sentiment():
            pass
    """)
    )
    local = shutil.copytree(folder, pytester.path / "bert")  # checkpoints outside would move the rootdir (and ini) up
    report = pytester.path / "r.json"
    args = ["--base-ckpt", str(local), "--tuned-ckpt", str(local), "--forgetting-device", "cpu",
            "--forgetting-cache-dir", str(pytester.path / "cache"), "--forgetting-json", str(report)]  # fmt: skip
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"forgetting: device_map={pytester.path / 'map.json'} (ini)"])
    data = json.loads(report.read_text())
    assert (
        data["settings_sources"]["device_map"] == "ini"
        and data["device"] == f"cpu, device_map {pytester.path / 'map.json'}"
    )
    bad = pytester.runpytest(*args, "--forgetting-device-map", "everywhere")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in bad.stderr.lines if "forgetting-device-map" in line]
    assert errors == [
        "ERROR: pytest-forgetting: --forgetting-device-map='everywhere': expected auto, balanced, balanced_low_0, "
        "sequential or a JSON file mapping module names to devices; no such file " + str(pytester.path / "everywhere")
    ]
