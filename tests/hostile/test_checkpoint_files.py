"""Hostile files inside a checkpoint folder: links out of it, kernel files, FIFOs, oversize files, hub kernels.

The tuned checkpoint comes from the pull request, so each of its files may be a symbolic link to a
secret (``../.git/config``, ``/proc/self/environ``), a file that never ends (``/proc/self/pagemap``),
a FIFO, or absurdly large; its ``config.json`` may name a hub kernel as ``attn_implementation``
(code transformers downloads and imports). Each is refused before any loader (transformers,
tokenizers, peft) reads the folder, on every check of the candidate, with one line saying what to
do; no byte of a file outside the checkpoint reaches the terminal, the JSON or the Markdown report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from _checkpoint_helpers import (
    SECRET,
    TEXT_CHECKS,
    TEXT_CONFTEST,
    Outcome,
    assert_safe,
    assert_safe_and_clear,
    dedent,
    plant_secret,
    report_args,
    tree,
)

from pytest_forgetting.checkpoints import load_checkpoint
from pytest_forgetting.errors import CheckpointError

pytest.importorskip("transformers")

ON_LINUX = pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs /proc (Linux)")
OUTSIDE = "copy the file itself into the folder"
INTO_PROC = "replace the link with the real file"


@pytest.fixture
def text_project(pytester: pytest.Pytester):
    """A text-classification project (two checks, one unrelated test), a tiny BERT base, a secret outside."""
    import _helpers.checkpoint_models as tc

    pytester.makeconftest(TEXT_CONFTEST)
    pytester.makepyfile(test_contract=dedent(TEXT_CHECKS))
    base = pytester.path / "base"
    tc.save_bert(base)
    plant_secret(pytester.path)
    return pytester, base, tc


def run(pytester: pytest.Pytester, base: Path, tuned: Path, *extra: str) -> Outcome:
    before = tree(pytester.path)
    result = pytester.runpytest(f"--base-ckpt={base}", f"--tuned-ckpt={tuned}", *report_args(pytester.path), *extra)
    outcome = Outcome(pytester.path, result.stdout.str() + result.stderr.str(), before)
    outcome.result = result  # type: ignore[attr-defined]
    return outcome


def refused(outcome: Outcome, needle: str, hint: str, **kw) -> str:
    outcome.result.assert_outcomes(errors=2, passed=1)  # type: ignore[attr-defined]
    return assert_safe_and_clear(outcome, needle, hint, **kw)


def _environ_values() -> tuple[str, ...]:
    """Values in this process's /proc/self/environ long enough to be recognisable if printed."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return ()
    values = (entry.split(b"=", 1)[-1].decode("utf-8", "replace") for entry in raw.split(b"\0"))
    return tuple(v for v in values if len(v) >= 24 and "/" not in v)


# -- control -----------------------------------------------------------------------------------


def test_control_identical_folders_pass(text_project):
    pytester, base, _ = text_project
    outcome = run(pytester, base, base)
    outcome.result.assert_outcomes(passed=3)  # type: ignore[attr-defined]
    assert [r["verdict"] for r in outcome.rows()] == ["pass", "pass"]
    assert_safe(outcome)


# -- links out of the folder -------------------------------------------------------------------


def test_vocab_linked_to_the_repository_config_is_refused_and_never_printed(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    (tuned / "vocab.txt").symlink_to(Path("..") / ".git" / "config")
    reason = refused(run(pytester, base, tuned), "vocab.txt", OUTSIDE)
    assert "leads outside the checkpoint folder" in reason and "x-access-token" not in reason


@ON_LINUX
def test_vocab_linked_to_proc_environ_is_refused(text_project, monkeypatch):
    pytester, base, tc = text_project
    monkeypatch.setenv("FORGETTING_TEST_FAKE_TOKEN", SECRET)
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    (tuned / "vocab.txt").symlink_to("/proc/self/environ")
    reason = refused(run(pytester, base, tuned), "vocab.txt", INTO_PROC, secret_values=_environ_values())
    assert "leads into /proc" in reason


@ON_LINUX
def test_config_linked_to_proc_pagemap_is_refused_without_reading(text_project):
    """/proc/self/pagemap is a 'regular' file of size 0 whose reads go on for gigabytes."""
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    (tuned / "config.json").unlink()
    (tuned / "config.json").symlink_to("/proc/self/pagemap")
    start = time.monotonic()
    reason = refused(run(pytester, base, tuned), "config.json", INTO_PROC)
    assert time.monotonic() - start < 30 and "leads into /proc" in reason


def test_weights_linked_outside_are_refused_before_hashing(text_project, tmp_path_factory):
    pytester, base, tc = text_project
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    shutil.move(str(tuned / "model.safetensors"), str(elsewhere / "model.safetensors"))
    (tuned / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    refused(run(pytester, base, tuned), "model.safetensors", OUTSIDE)


def test_tokenizer_config_naming_a_path_outside_is_never_followed(text_project):
    """transformers < 5 opened a vocab_file named in tokenizer_config.json verbatim: such keys are dropped."""
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    config = json.loads((tuned / "tokenizer_config.json").read_text())
    config.update(vocab_file="../.git/config", tokenizer_file=str(pytester.path / ".git" / "config"))
    (tuned / "tokenizer_config.json").write_text(json.dumps(config))
    outcome = run(pytester, base, tuned)
    outcome.result.assert_outcomes(passed=3)  # type: ignore[attr-defined]  # the folder's own tokenizer
    assert_safe(outcome)
    assert "vocab_file" in json.loads((tuned / "tokenizer_config.json").read_text())  # the checkpoint is untouched


# -- files that are not plain, plausible files -------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_tokenizer_never_hangs(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    (tuned / "tokenizer.json").unlink()
    os.mkfifo(tuned / "tokenizer.json")
    refused(run(pytester, base, tuned), "tokenizer.json", "is not a regular file")


def test_oversize_tokenizer_file_is_refused_before_reading(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    with open(tuned / "tokenizer.json", "r+b") as fh:  # sparse: 200 MiB claimed, nothing written
        fh.truncate(200 << 20)
    reason = refused(run(pytester, base, tuned), "tokenizer.json", "is it really part of this checkpoint?")
    assert "209,715,200 bytes" in reason and "128 MiB at most" in reason


# -- what messages may quote -------------------------------------------------------------------


def test_vocabulary_mismatch_quotes_short_escaped_excerpts_only(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned, tokenizer=False)
    hostile = ["\x1b[32mALL CHECKS PASSED\x1b[0m", f"token={SECRET}", "line\nbreak", *tc.WORDS[3:]]
    tc.make_tokenizer(words=hostile).save_pretrained(tuned)
    outcome = run(pytester, base, tuned)
    reason = refused(outcome, "different vocabularies", "ship the base tokenizer")
    assert "\\x1b[32mALL" in reason and "ALL CHECKS PASSED" not in reason  # escaped and shortened
    assert "ALL CHECKS PASSED" not in outcome.stdout
    assert SECRET[:24] not in reason  # a checkpoint's own long token is cut short


# -- attn_implementation naming a hub kernel ---------------------------------------------------


def test_attn_implementation_naming_a_hub_kernel_is_remote_code(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    config = json.loads((tuned / "config.json").read_text())
    config["attn_implementation"] = "kernels-community/evil-attention"
    (tuned / "config.json").write_text(json.dumps(config))
    reason = refused(
        run(pytester, base, tuned), "attn_implementation='kernels-community/evil-att", "--forgetting-trust-remote-code"
    )
    assert "own Python code" in reason


def test_builtin_attn_implementation_is_kept(text_project):
    pytester, base, tc = text_project
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    config = json.loads((tuned / "config.json").read_text())
    config["attn_implementation"] = "eager"
    (tuned / "config.json").write_text(json.dumps(config))
    outcome = run(pytester, base, tuned)
    outcome.result.assert_outcomes(passed=3)  # type: ignore[attr-defined]
    assert_safe(outcome)
    assert load_checkpoint(tuned).model.config._attn_implementation == "eager"


def test_attn_implementation_checks_sub_configs_and_dicts():
    from pytest_forgetting.checkpoints import _attn_kwarg, _unknown_attn_implementations

    assert (
        _unknown_attn_implementations({"attn_implementation": "sdpa", "text_config": {"attn_implementation": None}})
        == []
    )
    assert _unknown_attn_implementations({"text_config": {"_attn_implementation": "org/kernel"}}) == ["org/kernel"]
    assert _unknown_attn_implementations({"attn_implementation": {"": "eager", "vision_config": "org/k"}}) == ["org/k"]
    assert _attn_kwarg({"attn_implementation": "eager"}, False) == {"attn_implementation": "eager"}
    assert _attn_kwarg({}, False) == {"attn_implementation": None}  # transformers picks sdpa or eager
    assert _attn_kwarg({"attn_implementation": "org/kernel"}, True) == {}  # trusted: as the config says


# -- what stays allowed: links inside the folder, a Hugging Face cache snapshot ----------------


def test_links_inside_the_folder_and_hub_snapshots_load(tmp_path, monkeypatch):
    import _helpers.checkpoint_models as tc
    from huggingface_hub import constants

    folder = tmp_path / "bert"
    tc.save_bert(folder)
    (folder / "real").mkdir()
    shutil.move(str(folder / "tokenizer.json"), str(folder / "real" / "tokenizer.json"))
    (folder / "tokenizer.json").symlink_to(Path("real") / "tokenizer.json")
    assert load_checkpoint(folder).tokenizer is not None

    # the Hugging Face cache layout: snapshot files are links into ../../blobs
    cache = tmp_path / "hf_home" / "hub"
    repo = cache / "models--tiny-org--tiny-bert"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        blob = repo / "blobs" / f"blob-{path.name}"
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ckpt = load_checkpoint("tiny-org/tiny-bert")
    assert ckpt.kind == "hub" and ckpt.tokenizer is not None
    assert ckpt.model.config._name_or_path == "tiny-org/tiny-bert"  # not the private copy's name

    # ... but a snapshot link that leaves the repository's blobs is refused
    plant_secret(tmp_path)
    (snapshot / "vocab.txt").symlink_to(Path("..") / ".." / ".." / ".." / ".." / ".git" / "config")
    assert (snapshot / "vocab.txt").read_text().startswith("[remote")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("tiny-org/tiny-bert")
    assert "vocab.txt" in str(info.value) and OUTSIDE in str(info.value) and SECRET not in str(info.value)


def test_loaders_never_see_the_folder_itself(tmp_path):
    """What transformers reads is a private copy, deleted once the model is loaded."""
    import tempfile

    import _helpers.checkpoint_models as tc

    folder = tmp_path / "bert"
    tc.save_bert(folder)
    private = tmp_path / "private-tmp"
    private.mkdir()
    old = tempfile.tempdir
    tempfile.tempdir = str(private)
    try:
        ckpt = load_checkpoint(folder)
    finally:
        tempfile.tempdir = old
    assert ckpt.resolved == str(folder.resolve()) and ckpt.tokenizer is not None
    assert list(private.iterdir()) == []  # the copies are gone, the model still works
    assert ckpt.fingerprint == __import__("pytest_forgetting.checkpoints", fromlist=["x"]).fingerprint_ref(folder)


# -- adapter configs that make peft import code ------------------------------------------------


def test_adapter_config_naming_a_megatron_module_is_remote_code(text_project):
    """peft imports the module named by megatron_core when megatron_config is set: a module of the PR's tree."""
    pytest.importorskip("peft")
    pytester, base, tc = text_project
    pytester.makepyfile(evil_megatron="import pathlib\npathlib.Path('pwned').write_text('ran')\n")
    adapter = pytester.path / "adapter"
    tc.make_adapter(base, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(megatron_config={"tensor_model_parallel_size": 1}, megatron_core="evil_megatron")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    reason = refused(run(pytester, base, adapter), "megatron_config", "--forgetting-trust-remote-code")
    assert "megatron_core" in reason and not (pytester.path / "pwned").exists()
