"""Tests of checkpoint loading: every loading rule, and hostile or broken files.

Every model, tokenizer and file is built here, in temporary folders; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from pytest_forgetting.checkpoints import (
    LoadedCheckpoint,
    check_compatible,
    fingerprint_ref,
    load_checkpoint,
    nonfinite_params,
    resolve_factory,
)
from pytest_forgetting.errors import CheckpointError

transformers = pytest.importorskip("transformers")

# the builders the hostile and contract suites share live in tests/_helpers/checkpoint_models.py
from _helpers.checkpoint_models import (  # noqa: E402
    LABELS,
    WORDS,
    bert_inputs,
    make_adapter,
    make_tokenizer,
    save_bert,
    save_bert_config,
    spy_on_checkpoint_reads,
    tiny_bert_config,
)

# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


def build_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


FACTORY_SOURCE = """
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))

def builder_of_numbers():
    return 42

def broken():
    raise RuntimeError("boom")

VALUE = 3
"""


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny sequence classifier with named labels and a tokenizer. Read-only: copy to change."""
    folder = tmp_path_factory.mktemp("bert") / "bert"
    save_bert(folder)
    return folder


@pytest.fixture(scope="module")
def bert_base(bert_dir) -> LoadedCheckpoint:
    return load_checkpoint(bert_dir, role="base")


@pytest.fixture
def bert_copy(bert_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bert_dir, tmp_path / "bert"))


@pytest.fixture
def cnn_file(tmp_path):
    torch.manual_seed(1)
    model = build_cnn().eval()
    path = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model


@pytest.fixture
def factory_module(tmp_path, monkeypatch, request) -> str:
    """A factory module in tmp_path with a unique name; sys.path is restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"factory_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    return name


# --------------------------------------------------------------------------------------
# Import cost
# --------------------------------------------------------------------------------------


def test_module_imports_without_torch_transformers_safetensors_peft():
    code = textwrap.dedent(
        """
        import sys
        for name in ("torch", "transformers", "safetensors", "peft", "huggingface_hub"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import pytest_forgetting.checkpoints as c
        assert c.load_checkpoint and c.fingerprint_ref
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------
# The loader seam: one table from format to loader, private copies, a frozen context
# --------------------------------------------------------------------------------------


def test_one_table_from_checkpoint_format_to_loader(bert_dir, cnn_file, tmp_path):
    from pytest_forgetting.checkpoints.loaders import LOADERS, loader_kind
    from pytest_forgetting.checkpoints.refs import _describe

    def kind(ref, allow_pickle=False):
        return loader_kind(_describe(ref, None, allow_pickle=allow_pickle, allow_download=False))

    assert sorted(LOADERS) == ["gguf", "hf", "peft", "state_dict"]
    assert all(name == loader.name for name, loader in LOADERS.items())
    assert kind(bert_dir) == "hf" and kind(cnn_file[0]) == "state_dict"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(bert_dir / "config.json", pickled)
    torch.save(load_checkpoint(bert_dir).model.state_dict(), pickled / "pytorch_model.bin")
    assert kind(pickled, allow_pickle=True) == "hf"  # a pickled Hugging Face folder: the same loader
    single = tmp_path / "single"
    single.mkdir()
    torch.save(cnn_file[1].state_dict(), single / "weights.pt")
    assert kind(single, allow_pickle=True) == "state_dict"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    save_file({"w": torch.zeros(1)}, str(adapter / "adapter_model.safetensors"))
    assert kind(adapter) == "peft"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert kind(tmp_path / "m.gguf") == "gguf"


def test_a_loader_sees_only_private_copies_and_a_frozen_context(cnn_file, monkeypatch):
    """load.py refuses on the user's files, then hands the loader verified copies that are gone afterwards."""
    import dataclasses

    from pytest_forgetting.checkpoints import loaders

    path, model = cnn_file
    seen: dict = {}

    class Recorder:
        name = "state_dict"

        def places(self, target):
            return False

        def refuse(self, target, ctx):
            seen["refuse"] = target.path

        def load(self, target, ctx):
            seen.update(load=target.path, data=[p.read_bytes() for p in target.files], ctx=ctx)
            return build_cnn(), None, None, None

    monkeypatch.setitem(loaders.LOADERS, "state_dict", Recorder())
    loaded = load_checkpoint(path, model_factory=build_cnn)
    assert seen["refuse"] == path.resolve()
    assert seen["load"] != seen["refuse"] and not seen["load"].exists()  # a private copy, removed once loaded
    assert seen["data"] == [path.read_bytes()] and loaded.fingerprint == fingerprint_ref(path)
    assert seen["ctx"].factory is not None and seen["ctx"].placement is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen["ctx"].trust_remote_code = True


# --------------------------------------------------------------------------------------
# 1. Hugging Face folders
# --------------------------------------------------------------------------------------


def test_hf_folder_loads_strictly_with_tokenizer_labels_and_fingerprint(bert_dir, bert_base):
    ckpt = bert_base
    assert ckpt.kind == "hf-folder"
    assert ckpt.resolved == str(bert_dir.resolve())
    assert ckpt.ref == str(bert_dir)
    assert isinstance(ckpt.model, transformers.BertForSequenceClassification)
    assert not ckpt.model.training
    assert next(ckpt.model.parameters()).dtype == torch.get_default_dtype()
    assert next(ckpt.model.parameters()).device.type == "cpu"
    assert ckpt.label_map == LABELS
    assert ckpt.tokenizer is not None and ckpt.tokenizer.get_vocab()["w0"] == 5
    assert ckpt.fingerprint.startswith("sha256:") and ckpt.fingerprint == fingerprint_ref(bert_dir)
    torch.manual_seed(0)
    original = transformers.BertForSequenceClassification(tiny_bert_config()).eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(**bert_inputs()).logits, original(**bert_inputs()).logits)


def test_hf_folder_in_bfloat16_loads_in_default_dtype(tmp_path):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(tiny_bert_config()).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    ckpt = load_checkpoint(tmp_path / "m")
    assert {p.dtype for p in ckpt.model.parameters()} == {torch.get_default_dtype()}
    assert ckpt.tokenizer is None


def test_sharded_hf_folder_loads(tmp_path):
    original = transformers.BertForSequenceClassification(tiny_bert_config()).eval()
    original.save_pretrained(tmp_path / "sharded", max_shard_size="10KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ckpt = load_checkpoint(tmp_path / "sharded")
    assert ckpt.kind == "hf-folder"
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(**bert_inputs()).logits, original(**bert_inputs()).logits)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", ["2 missing (classifier.bias, classifier.weight)"]),  # a headless checkpoint: never a random head
        ("unexpected", ["unexpected", "classifier.weight"]),
        ("mismatched", ["shape-mismatched", "classifier.weight"]),
    ],
)
def test_hf_folder_with_weights_that_do_not_fit_is_refused(tmp_path, case, expected):
    folder = tmp_path / case
    if case == "missing":
        save_bert(folder, model_cls=transformers.BertModel)
        edit_json(folder / "config.json", architectures=["BertForSequenceClassification"])
    elif case == "unexpected":
        save_bert(folder)
        edit_json(folder / "config.json", architectures=["BertModel"])
    else:
        save_bert(folder)
        edit_json(folder / "config.json", id2label={str(i): f"c{i}" for i in range(5)},
                  label2id={f"c{i}": i for i in range(5)})  # fmt: skip
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    message = one_line(info)
    for fragment in expected:
        assert fragment in message
    assert "randomly initialised" in message


def test_relative_path_resolves_against_rootdir(bert_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ckpt = load_checkpoint("bert", rootdir=bert_dir.parent)
    assert ckpt.resolved == str(bert_dir.resolve()) and ckpt.ref == "bert"


def test_missing_path_names_absolute_path_cwd_and_rootdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("ckpts/tuned.safetensors", rootdir=tmp_path / "project")
    message = one_line(info)
    assert str(tmp_path / "ckpts" / "tuned.safetensors") in message
    assert str(tmp_path / "project" / "ckpts" / "tuned.safetensors") in message
    assert f"current working directory is {tmp_path}" in message
    assert "tuned checkpoint" in message
    with pytest.raises(CheckpointError, match="not found"):
        fingerprint_ref(tmp_path / "nope")


def test_unknown_reference_types_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a int"):
        load_checkpoint(42)  # type: ignore[arg-type]
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="don't know how to load"):
        load_checkpoint(tmp_path / "weights.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "empty")


# --------------------------------------------------------------------------------------
# 2. PEFT adapters
# --------------------------------------------------------------------------------------


def test_peft_adapter_is_merged_into_a_copy_of_the_base(bert_dir, tmp_path):
    base = load_checkpoint(bert_dir, role="base")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    expected = make_adapter(bert_dir, tmp_path / "adapter")
    tuned = load_checkpoint(tmp_path / "adapter", base=base)
    assert tuned.kind == "peft-adapter"
    assert tuned.model is not base.model
    assert isinstance(tuned.model, transformers.BertForSequenceClassification)  # merged and unloaded
    assert not tuned.model.training
    assert tuned.tokenizer is base.tokenizer and tuned.label_map == LABELS
    assert tuned.fingerprint == fingerprint_ref(tmp_path / "adapter") != base.fingerprint
    with torch.no_grad():
        torch.testing.assert_close(tuned.model(**bert_inputs()).logits, expected)
        base_logits = base.model(**bert_inputs()).logits
    assert not torch.allclose(base_logits, expected)
    after = base.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_peft_adapter_without_base_is_refused(bert_dir, tmp_path):
    make_adapter(bert_dir, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="a PEFT adapter needs a base checkpoint"):
        load_checkpoint(tmp_path / "adapter")


def test_peft_adapter_with_missing_weights_is_refused(bert_dir, bert_base, tmp_path):
    from safetensors.torch import load_file

    make_adapter(bert_dir, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    weights = {k: v for k, v in load_file(str(path)).items() if "value.lora_B" not in k}
    save_file(weights, str(path))  # peft alone would warn and evaluate a no-op LoRA B
    with pytest.raises(CheckpointError, match=r"does not fit the base model: 1 missing \(.*value\.lora_B"):
        load_checkpoint(tmp_path / "adapter", base=bert_base)


# --------------------------------------------------------------------------------------
# 3. Bare safetensors + model factory
# --------------------------------------------------------------------------------------


def test_safetensors_file_with_factory_callable_and_spec(cnn_file, tmp_path, factory_module):
    path, original = cnn_file
    ckpt = load_checkpoint(path, model_factory=build_cnn)
    assert ckpt.kind == "safetensors" and ckpt.resolved == str(path.resolve())
    assert not ckpt.model.training and ckpt.tokenizer is None and ckpt.label_map is None
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), original(x))
    by_spec = load_checkpoint(path, model_factory=f"{factory_module}:build", rootdir=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(by_spec.model(x), original(x))
    assert by_spec.fingerprint == ckpt.fingerprint == fingerprint_ref(path)


def test_safetensors_file_without_factory_says_how_to_pass_one(cnn_file):
    with pytest.raises(CheckpointError, match=r"--model-factory module:callable"):
        load_checkpoint(cnn_file[0])


def test_strict_loading_reports_missing_unexpected_and_mismatched_keys(tmp_path):
    weights = {f"extra{i}": torch.zeros(1) for i in range(7)}
    weights.update({"0.weight": torch.zeros(4, 1, 3, 3), "3.weight": torch.zeros(10, 99)})
    save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "w.safetensors", model_factory=build_cnn)
    message = one_line(info)
    assert "2 missing (0.bias, 3.bias)" in message
    assert "7 unexpected (extra0, extra1, extra2, extra3, extra4, ... (2 more))" in message
    assert "1 shape-mismatched (3.weight: file (10, 99) vs model (10, 144))" in message


def test_strict_loading_suggests_stripping_a_shared_prefix(tmp_path):
    weights = {f"module.{k}": v for k, v in build_cnn().state_dict().items()}  # saved from DataParallel
    save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"starts with 'module\.' and matches once stripped"):
        load_checkpoint(tmp_path / "w.safetensors", model_factory=build_cnn)


def test_resolve_factory_errors(tmp_path, factory_module):
    assert isinstance(resolve_factory(f"{factory_module}:build", rootdir=tmp_path)(), nn.Module)
    cases = {
        "no-colon-here": "is not of the form 'package.module:callable'",
        "no_such_module_xyz:build": "no module named 'no_such_module_xyz'",
        f"{factory_module}:biuld": "did you mean 'build'",
        f"{factory_module}:VALUE": "not a callable",
    }
    for spec, fragment in cases.items():
        with pytest.raises(CheckpointError, match=fragment):
            resolve_factory(spec, rootdir=tmp_path)
    with pytest.raises(CheckpointError, match="returned a int, not a torch.nn.Module"):
        resolve_factory(f"{factory_module}:builder_of_numbers", rootdir=tmp_path)()
    with pytest.raises(CheckpointError, match="raised RuntimeError: boom"):
        resolve_factory(f"{factory_module}:broken", rootdir=tmp_path)()


# --------------------------------------------------------------------------------------
# 4. GGUF
# --------------------------------------------------------------------------------------


def test_gguf_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(CheckpointError, match="is not a GGUF file"):
        load_checkpoint(tmp_path / "model.gguf")
    with pytest.raises(CheckpointError, match="is not a GGUF file"):  # a folder holding just one .gguf
        load_checkpoint(tmp_path)


def write_tiny_llama_gguf(path: Path):
    """A one-layer Llama with a 32-token vocabulary, written with the gguf package."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    hidden, inter, vocab, heads = 16, 32, 32, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *[f"t{i}" for i in range(vocab - 3)]])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,), "output.weight": (vocab, hidden),
        "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
        **{f"blk.0.{n}.weight": (hidden, hidden) for n in ("attn_q", "attn_k", "attn_v", "attn_output")},
        "blk.0.ffn_gate.weight": (inter, hidden), "blk.0.ffn_up.weight": (inter, hidden),
        "blk.0.ffn_down.weight": (hidden, inter),
    }  # fmt: skip
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_gguf_file_loads_as_a_causal_lm_with_its_tokenizer(tmp_path):
    tensors = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    ckpt = load_checkpoint(tmp_path / "tiny.gguf")
    assert ckpt.kind == "gguf" and ckpt.resolved == str((tmp_path / "tiny.gguf").resolve())
    assert type(ckpt.model).__name__ == "LlamaForCausalLM" and not ckpt.model.training
    assert ckpt.model.dtype == torch.get_default_dtype()
    assert ckpt.tokenizer is not None and len(ckpt.tokenizer.get_vocab()) == 32
    embed = ckpt.model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(embed, torch.from_numpy(tensors["token_embd.weight"]))
    assert ckpt.fingerprint == fingerprint_ref(tmp_path / "tiny.gguf") == fingerprint_ref(tmp_path)


def test_gguf_without_the_gguf_package_says_what_to_install(tmp_path):
    try:
        import gguf  # noqa: F401

        pytest.skip("the gguf package is installed")
    except ImportError:
        pass
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    with pytest.raises(CheckpointError, match="pip install gguf"):
        load_checkpoint(tmp_path / "model.gguf")


# --------------------------------------------------------------------------------------
# 5. Hub ids
# --------------------------------------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import time otherwise
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("allow_download", [False, True])
def test_hub_id_not_in_cache_is_a_clear_error(hf_cache, allow_download):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("some-org/not-cached-model", allow_download=allow_download)
    assert "not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE / local_files_only)" in one_line(
        info
    )
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        fingerprint_ref("some-org/not-cached-model")


def test_hub_id_loads_from_the_local_cache(hf_cache, bert_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--tiny-org--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(bert_dir, repo / "snapshots" / commit)
    ckpt = load_checkpoint("tiny-org/tiny-bert")
    assert ckpt.kind == "hub" and ckpt.resolved == "tiny-org/tiny-bert"
    assert ckpt.label_map == LABELS and ckpt.tokenizer is not None
    assert ckpt.fingerprint == fingerprint_ref(bert_dir)  # same bytes, same fingerprint


# --------------------------------------------------------------------------------------
# 6. Pickles
# --------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a folder: stands in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickles_are_refused_by_default_with_a_conversion_command(tmp_path):
    torch.save(build_cnn().state_dict(), tmp_path / "cnn.pt")
    for ref in (tmp_path / "cnn.pt",):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(ref, model_factory=build_cnn)
        message = one_line(info)
        assert (
            "pickle checkpoints can run code when loaded; convert to safetensors: python -c 'import torch; " in message
        )
        assert (
            f'save_file(torch.load("{tmp_path / "cnn.pt"}", weights_only=True), "{tmp_path / "cnn.safetensors"}")'
            in message
        )
        assert "or pass --forgetting-allow-pickle" in message
        with pytest.raises(CheckpointError, match="pickle checkpoints can run code"):
            fingerprint_ref(ref)
    folder = tmp_path / "hf_bin"
    folder.mkdir()
    save_bert_config(folder)
    torch.save(
        transformers.BertForSequenceClassification(tiny_bert_config()).state_dict(), folder / "pytorch_model.bin"
    )
    with pytest.raises(CheckpointError, match="pickle checkpoints can run code"):
        load_checkpoint(folder)


def test_allow_pickle_loads_state_dicts_with_weights_only(tmp_path):
    torch.manual_seed(2)
    original = build_cnn().eval()
    torch.save({"state_dict": original.state_dict(), "epoch": 3}, tmp_path / "cnn.ckpt")  # Lightning-like
    ckpt = load_checkpoint(tmp_path / "cnn.ckpt", model_factory=build_cnn, allow_pickle=True)
    assert ckpt.kind == "pickle"
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), original(x))
    assert ckpt.fingerprint == fingerprint_ref(tmp_path / "cnn.ckpt", allow_pickle=True)

    folder = tmp_path / "hf_bin"
    folder.mkdir()
    save_bert_config(folder)
    bert = transformers.BertForSequenceClassification(tiny_bert_config()).eval()
    torch.save(bert.state_dict(), folder / "pytorch_model.bin")
    loaded = load_checkpoint(folder, allow_pickle=True)
    assert loaded.kind == "pickle" and loaded.label_map == LABELS
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**bert_inputs()).logits, bert(**bert_inputs()).logits)


def test_malicious_pickle_never_runs_even_with_allow_pickle(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt", model_factory=build_cnn, allow_pickle=True)
    message = one_line(info)
    assert "torch.load(weights_only=True) refused" in message
    assert "posix.mkdir" in message or "os.mkdir" in message
    assert not marker.exists()
    folder = tmp_path / "hf_evil"  # the same inside an HF folder and a PEFT adapter folder
    folder.mkdir()
    save_bert_config(folder)
    shutil.copy(tmp_path / "evil.pt", folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(folder, allow_pickle=True)
    adapter = tmp_path / "adapter_evil"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    shutil.copy(tmp_path / "evil.pt", adapter / "adapter_model.bin")
    base = load_checkpoint(build_cnn())
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(adapter, base=base, allow_pickle=True)
    assert not marker.exists()
    # Control: the payload is real, so the test above means something.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------
# 7. Remote code
# --------------------------------------------------------------------------------------


def test_checkpoints_carrying_code_need_trust(bert_dir, bert_copy, tmp_path):
    (bert_copy / "modeling_custom.py").write_text("import os\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bert_copy)
    message = one_line(info)
    assert "this checkpoint carries its own Python code (modeling_custom.py)" in message
    assert "pass --forgetting-trust-remote-code only if you trust its author" in message
    assert load_checkpoint(bert_copy, trust_remote_code=True).kind == "hf-folder"  # the file is not used

    (bert_copy / "modeling_custom.py").unlink()
    edit_json(bert_copy / "config.json", auto_map={"AutoModel": "modeling_custom.CustomModel"})
    with pytest.raises(CheckpointError, match=r"own Python code \(auto_map in config.json\)"):
        load_checkpoint(bert_copy)
    nested = Path(shutil.copytree(bert_dir, tmp_path / "nested"))  # code in a subfolder counts too
    (nested / "custom_generate").mkdir()
    (nested / "custom_generate" / "generate.py").write_text("")
    with pytest.raises(CheckpointError, match=r"custom_generate/generate\.py"):
        load_checkpoint(nested)


# --------------------------------------------------------------------------------------
# 8. Hostile and broken files
# --------------------------------------------------------------------------------------

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
)


def test_git_lfs_pointers_are_recognised(bert_copy, tmp_path):
    (bert_copy / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bert_copy)
    assert "model.safetensors is a Git LFS pointer, not weights; run `git lfs pull`" in one_line(info)
    (tmp_path / "w.safetensors").write_text(LFS_POINTER)
    for call in (lambda: load_checkpoint(tmp_path / "w.safetensors", model_factory=build_cnn),
                 lambda: fingerprint_ref(tmp_path / "w.safetensors")):  # fmt: skip
        with pytest.raises(CheckpointError, match="Git LFS pointer"):
            call()


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x01\x02", "shorter than the 8-byte header length"),
        (struct.pack("<Q", 10**6) + b"{}", "the header claims 1000000 bytes but only 2 follow"),
        (struct.pack("<Q", 5) + b"{nope", "the header is not JSON"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "the header is not JSON"),
        (_safetensors_bytes([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
        (_safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
         "lies outside the file"),
        (_safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)),
         "needs 16 bytes but its offsets span 8"),
        (_safetensors_bytes({"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
         "unknown dtype"),
        (_safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
         "invalid shape"),
        (_safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "overlap"),
        (struct.pack("<Q", 4000) + b"[" * 2000 + b"]" * 2000, "the header is not JSON"),  # RecursionError
    ],
    ids=["tiny", "header-too-long", "bad-json", "not-utf8", "not-object", "outside-file", "wrong-size",
         "unknown-dtype", "negative-shape", "overlap", "deep-nesting"],
)  # fmt: skip
def test_corrupt_safetensors_files_are_named_with_their_size(tmp_path, content, fragment):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model_factory=build_cnn)
    message = one_line(info)
    assert f"{path} ({len(content)} bytes) is not a valid safetensors file" in message
    assert fragment in message


def test_truncated_safetensors_inside_a_model_folder(bert_copy):
    weights = bert_copy / "model.safetensors"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match=rf"model\.safetensors \({len(content) // 2} bytes\) is not a valid"):
        load_checkpoint(bert_copy)


@pytest.mark.parametrize(
    "config_text, fragment",
    [
        ("{not json", "config.json is not valid JSON"),
        ("[1, 2, 3]", "must hold a JSON object, not a list"),
        ('{"model_type": "bert"}', "has no usable 'architectures' list"),
        ('{"architectures": "BertModel", "model_type": "bert"}', "has no usable 'architectures' list"),
        ('{"architectures": ["BertForSequenceClassification"], "model_type": "no-such-type"}',
         "is not a valid transformers config"),
    ],
    ids=["not-json", "a-list", "no-architectures", "architectures-not-list", "unknown-model-type"],
)  # fmt: skip
def test_invalid_config_json(bert_copy, config_text, fragment):
    (bert_copy / "config.json").write_text(config_text)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bert_copy)
    assert fragment in one_line(info)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"num_hidden_layers": 10**9}, "num_hidden_layers=1000000000 is implausible"),
        ({"num_hidden_layers": 3}, "the config does not belong to these weights"),
        ({"vocab_size": 10**10}, "the config does not belong to these weights"),
        ({"max_position_embeddings": 10**10}, "the config does not belong to these weights"),
    ],
    ids=["layers-1e9", "layers-3", "vocab-1e10", "positions-1e10"],
)
def test_absurd_configs_are_refused_before_allocating(bert_copy, change, fragment):
    edit_json(bert_copy / "config.json", **change)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(bert_copy)
    assert time.monotonic() - start < 10


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_instead_of_weights_never_hangs(bert_copy, tmp_path):
    (bert_copy / "model.safetensors").unlink()
    os.mkfifo(bert_copy / "model.safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(bert_copy)
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        fingerprint_ref(tmp_path / "pipe.safetensors")


def test_nonfinite_weights_load_and_are_reported(tmp_path):
    model = build_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
        model[3].bias[1] = float("inf")
    save_file(model.state_dict(), str(tmp_path / "nan.safetensors"))
    ckpt = load_checkpoint(tmp_path / "nan.safetensors", model_factory=build_cnn)  # not an error here
    assert nonfinite_params(ckpt.model) == ["0.weight", "3.bias"]
    assert nonfinite_params(ckpt.model, limit=1) == ["0.weight"]
    assert nonfinite_params(build_cnn()) == []


# --------------------------------------------------------------------------------------
# 9. Compatibility of base and tuned
# --------------------------------------------------------------------------------------


def test_check_compatible_accepts_the_same_labels_and_vocabulary(bert_base, tmp_path):
    save_bert(tmp_path / "tuned", seed=5)
    check_compatible(bert_base, load_checkpoint(tmp_path / "tuned"))
    cnn = load_checkpoint(build_cnn())
    check_compatible(cnn, load_checkpoint(build_cnn()))


def test_check_compatible_refuses_different_label_maps(bert_base, tmp_path):
    labels = {0: "negative", 1: "neutral", 2: "good"}
    save_bert(tmp_path / "tuned", id2label=labels, label2id={v: k for k, v in labels.items()})
    with pytest.raises(CheckpointError) as info:
        check_compatible(bert_base, load_checkpoint(tmp_path / "tuned"))
    message = one_line(info)
    assert "label maps (id2label) differ: 2: 'positive' vs 'good'" in message
    assert "negative" not in message


def test_check_compatible_refuses_different_vocabularies(bert_base, tmp_path):
    folder = tmp_path / "tuned"
    save_bert(folder, tokenizer=False)
    make_tokenizer([*WORDS[:-1], "brandnew", "second"]).save_pretrained(folder)
    with pytest.raises(CheckpointError) as info:
        check_compatible(bert_base, load_checkpoint(folder))
    message = one_line(info)
    assert "base has 45 tokens, tuned 46" in message
    assert "only in base: 'w39'" in message and "only in tuned: 'brandnew', 'second'" in message


# --------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------


def test_fingerprint_follows_content_not_location(bert_dir, tmp_path):
    copy = Path(shutil.copytree(bert_dir, tmp_path / "elsewhere"))
    assert fingerprint_ref(copy) == fingerprint_ref(bert_dir)
    (copy / "README.md").write_text("docs do not change the model")
    assert fingerprint_ref(copy) == fingerprint_ref(bert_dir)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert fingerprint_ref(copy) != fingerprint_ref(bert_dir)


class _OpenSpy:
    """Counts files opened by pytest_forgetting.checkpoints (the module-level ``open`` of each of its modules)."""

    def __init__(self):
        self.paths: list[str] = []

    def __call__(self, file, *args, **kwargs):
        self.paths.append(os.fspath(file))
        return open(file, *args, **kwargs)


def test_file_digests_are_remembered_only_for_settled_unchanged_files(bert_dir, tmp_path, monkeypatch):
    from pytest_forgetting import checkpoints

    copy = Path(shutil.copytree(bert_dir, tmp_path / "ckpt"))
    plain = fingerprint_ref(copy)
    store = tmp_path / "cache" / "file-digests.json"

    # files written just now are "racy" (a coarse clock could give a rewrite the same stat): never remembered
    fresh = checkpoints.FileDigests(store)
    assert fingerprint_ref(copy, digests=fresh) == plain
    assert not store.exists()

    monkeypatch.setattr(checkpoints.FileDigests, "RACY_NS", 0)  # as if the files were written long ago
    assert fingerprint_ref(copy, digests=checkpoints.FileDigests(store)) == plain
    remembered = json.loads(store.read_text())
    assert len(remembered) == len([p for p in copy.iterdir() if p.name != "README.md"]) and all(
        len(v) == 64 for v in remembered.values()
    )

    # a new process (fresh memo, same store): the same fingerprint without reading one weight byte
    spy = _OpenSpy()
    spy_on_checkpoint_reads(monkeypatch, spy)
    assert fingerprint_ref(copy, digests=checkpoints.FileDigests(store)) == plain
    assert not any(p.endswith(".safetensors") for p in spy.paths)

    # rewriting a file (same size, same name) changes its ctime: hashed again, new fingerprint
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    changed = fingerprint_ref(copy, digests=checkpoints.FileDigests(store))
    assert changed != plain and any(p.endswith("model.safetensors") for p in spy.paths)
    monkeypatch.undo()
    assert changed == fingerprint_ref(copy)  # what a process without any memo computes


def test_file_digest_store_damage_is_a_miss(bert_dir, tmp_path, monkeypatch):
    from pytest_forgetting import checkpoints

    store = tmp_path / "file-digests.json"
    for junk in ("not json", "[1, 2]", json.dumps({"x": 1})):
        store.write_text(junk)
        assert fingerprint_ref(bert_dir, digests=checkpoints.FileDigests(store)) == fingerprint_ref(bert_dir)


def test_one_placeholder_label_rule_for_checkpoints_and_tasks():
    """LABEL_0, LABEL_1, ... say nothing: not a label map of a checkpoint, read in order by both task types."""
    from types import SimpleNamespace

    from pytest_forgetting.checkpoints.compat import _label_map_from_dict, placeholder_labels
    from pytest_forgetting.tasks.classification import class_lookup
    from pytest_forgetting.tasks.token import TagTable, label_lookup

    placeholder, named = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, {0: "O", 1: "B-PER", 2: "I-PER"}
    assert placeholder_labels(placeholder) and placeholder_labels({}) and not placeholder_labels({0: "LABEL_0", 1: "x"})
    assert placeholder_labels({0: "LABEL_1", 1: "LABEL_0"}) is False  # names, even if they look like placeholders
    assert _label_map_from_dict(placeholder) is None and _label_map_from_dict(named) == named
    assert class_lookup(SimpleNamespace(id2label=placeholder), ["c", "b", "a"], "t", n_outputs=3) is None
    assert class_lookup(
        SimpleNamespace(id2label={0: "a", 1: "b", 2: "c"}), ["c", "b", "a"], "t", n_outputs=3
    ).tolist() == [2, 1, 0]
    table = TagTable.from_tags(["O", "I-PER", "B-PER"])
    model = SimpleNamespace(config=SimpleNamespace(id2label=placeholder))
    assert label_lookup(model, 3, table, "t").tolist() == [0, 1, 2]
    model.config.id2label = named
    assert label_lookup(model, 3, table, "t").tolist() == [0, 2, 1]


def test_fingerprint_of_modules(bert_base):
    a, b = build_cnn(), build_cnn()
    b.load_state_dict(a.state_dict())
    assert fingerprint_ref(a) == fingerprint_ref(b) == load_checkpoint(a).fingerprint
    with torch.no_grad():
        b[3].bias[0] += 1e-3
    assert fingerprint_ref(a) != fingerprint_ref(b)
    assert fingerprint_ref(a) != fingerprint_ref(a.to(torch.float64))
    loaded = load_checkpoint(bert_base.model)
    assert loaded.kind == "module" and loaded.resolved == "<in-memory BertForSequenceClassification>"
    assert loaded.label_map == LABELS


def test_fingerprint_streams_large_files(tmp_path):
    import hashlib

    size = 5 * (1 << 20) + 123
    weights = {"w": torch.arange(size // 4, dtype=torch.int32)}
    save_file(weights, str(tmp_path / "big.safetensors"))
    first = fingerprint_ref(tmp_path / "big.safetensors")
    data = (tmp_path / "big.safetensors").read_bytes()
    name = b"big.safetensors"
    expected = hashlib.sha256(b"pytest-forgetting/files/v2\0")
    expected.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", len(data)) + hashlib.sha256(data).digest())
    assert first == "sha256:" + expected.hexdigest()


# --------------------------------------------------------------------------------------
# 10. Fuzzing: only CheckpointError, and quickly
# --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
tensor_entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F4", "X9"]) | json_values,
        "shape": st.lists(st.integers(-2, 200), max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-10, 1000), min_size=2, max_size=2) | json_values,
    },
)
fuzz_settings = settings(
    max_examples=100, deadline=5000, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


def _only_checkpoint_errors(call) -> None:
    start = time.monotonic()
    try:
        call()
    except CheckpointError as exc:
        assert "\n" not in str(exc)
    assert time.monotonic() - start < 5


@st.composite
def safetensors_files(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "truncated":
        valid = _safetensors_bytes({"0.bias": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
        return valid[: draw(st.integers(0, len(valid) - 1))]
    header = draw(st.dictionaries(st.sampled_from(["0.bias", "3.bias", "x", "__metadata__"]), tensor_entries | json_values,
                                  max_size=3))  # fmt: skip
    raw = json.dumps(header).encode()
    claimed = draw(st.sampled_from([len(raw), len(raw) + 1, max(len(raw) - 1, 0), 2**63]))
    return struct.pack("<Q", claimed) + raw + bytes(draw(st.integers(0, 64)))


@fuzz_settings
@given(content=safetensors_files())
def test_fuzz_safetensors_files(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        path.write_bytes(content)
        _only_checkpoint_errors(lambda: load_checkpoint(path, model_factory=build_cnn))
        _only_checkpoint_errors(lambda: fingerprint_ref(path))


@fuzz_settings
@given(data=st.data())
def test_fuzz_config_json(bert_dir, data):
    valid = json.loads((bert_dir / "config.json").read_text())
    if data.draw(st.booleans()):
        config = data.draw(json_values)  # anything at all
    else:  # a real config with a few fields replaced: reaches transformers itself
        config = dict(valid)
        for key in data.draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=3)):
            config[key] = data.draw(json_values | st.integers(0, 10**6))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(bert_dir, Path(tmp) / "m"))
        (folder / "config.json").write_text(json.dumps(config))
        _only_checkpoint_errors(lambda: load_checkpoint(folder))
        _only_checkpoint_errors(lambda: fingerprint_ref(folder))
