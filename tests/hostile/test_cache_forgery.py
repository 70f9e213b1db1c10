"""Forged and damaged cache entries: a pull request cannot supply the base model's numbers.

The attack of issue 12: a pull request ships ``.forgetting_cache/<key>.npz`` holding the tuned model's
outputs as the "base", which turned a FAIL into a PASS. Every project here has two checks (one FAILs,
one PASSes honestly) and an unrelated test; each test asserts SAFE (the verdicts are the honest ones,
the unrelated test passes, no crash) and CLEAR (at most one warning line saying what to do).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _cache_helpers import (
    HONEST,
    assert_honest,
    base_cached,
    entries,
    forged_entry,
    read_entry,
    run,
    setup,
    verdicts,
    warning_count,
    write_entry,
)


def _git(cwd: Path, *argv: str) -> None:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="pr",
        GIT_AUTHOR_EMAIL="pr@example.org",
        GIT_COMMITTER_NAME="pr",
        GIT_COMMITTER_EMAIL="pr@example.org",
    )
    subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *argv], cwd=cwd, env=env, check=True, capture_output=True, timeout=60
    )


def _checkout_with_forged_cache(p, tuned, tmp_path) -> Path:
    """The pull request's tree: the project, committed with a forged ``.forgetting_cache`` entry."""
    name, forged = forged_entry(p, tuned, tmp_path)
    shipped = p.path / ".forgetting_cache"
    shipped.mkdir()
    write_entry(shipped / name, forged)
    _git(p.path, "init", "-q")
    _git(p.path, "add", "-A")
    _git(p.path, "commit", "-q", "-m", "PR")
    return shipped


def test_a_forged_entry_is_potent_where_the_cache_is_trusted(make_project, tmp_path):
    """The fixture's forgery is real: copied into the user's own private cache folder it does flip the
    FAIL. This is why the defence is *where* the cache lives and who owns it (README "Cache")."""
    p, tuned = setup(make_project)
    name, forged = forged_entry(p, tuned, tmp_path)
    private = tmp_path / "private-cache"
    run(p, tuned, private)  # an honest entry first: the folder exists and is ours
    write_entry(private / name, forged)
    result, rows = run(p, tuned, private)
    assert verdicts(rows) == ["pass", "pass"] and base_cached(rows)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_forged_entry_committed_to_the_checkout_is_not_read_by_default(make_project, tmp_path, monkeypatch):
    p, tuned = setup(make_project)
    shipped = _checkout_with_forged_cache(p, tuned, tmp_path)
    before = {f.name: f.read_bytes() for f in shipped.iterdir()}
    user_cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))
    result, rows = run(p, tuned, None)  # no cache option: the default, outside the checkout
    assert_honest(result, rows)
    assert not base_cached(rows)
    assert warning_count(result) == 0
    assert {f.name: f.read_bytes() for f in shipped.iterdir()} == before  # the checkout's copy is untouched
    assert entries(user_cache / "pytest-forgetting")  # the honest entry went to the user cache folder
    result, rows = run(p, tuned, None)
    assert_honest(result, rows)
    assert base_cached(rows)  # and serves the next run


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("how", ["ini", "cli", "cli-through-a-link"])
def test_tracked_cache_folder_is_refused_with_one_line(make_project, tmp_path, how):
    """A pull request can also point the cache at its own folder (an ini file it adds): refused."""
    p, tuned = setup(make_project)
    shipped = _checkout_with_forged_cache(p, tuned, tmp_path)
    extra: list[str] = []
    if how == "ini":
        p.pytester.makeini("[pytest]\nforgetting_cache_dir = .forgetting_cache\n")
    elif how == "cli":
        extra.append(f"--forgetting-cache-dir={shipped}")
    else:  # the same folder named through a link from outside the checkout
        alias = tmp_path / "alias"
        alias.symlink_to(p.path, target_is_directory=True)
        extra.append(f"--forgetting-cache-dir={alias / '.forgetting_cache'}")
    before = sorted(f.name for f in shipped.iterdir())
    result, rows = run(p, tuned, None, *extra)
    assert_honest(result, rows)
    assert not base_cached(rows)
    assert warning_count(result) == 1
    result.stdout.fnmatch_lines(
        [
            "*pytest-forgetting: cache folder *.forgetting_cache holds 1 file(s) tracked by git*use the default user cache folder*"
        ]
    )
    assert sorted(f.name for f in shipped.iterdir()) == before  # nothing written into it


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_check_runs_no_program_of_the_repository(make_project, tmp_path):
    """``core.fsmonitor`` in the repository's config names a program git would run: it is not run."""
    p, tuned = setup(make_project)
    shipped = _checkout_with_forged_cache(p, tuned, tmp_path)
    marker = tmp_path / "fsmonitor-ran"
    hook = p.path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    _git(p.path, "config", "core.fsmonitor", str(hook))
    result, rows = run(p, tuned, shipped)
    assert_honest(result, rows)
    assert warning_count(result) == 1 and "tracked by git" in result.stdout.str()
    assert not marker.exists()


def test_entry_written_for_another_key_is_a_miss(make_project, tmp_path):
    """The tuned outputs renamed to the base's file name (keeping their own recorded key): a miss."""
    p, tuned = setup(make_project)
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    run(p, tuned, cache)
    run(p, tuned, scratch, base=tuned)
    (base_entry,) = entries(cache)
    (tuned_entry,) = entries(scratch)
    shutil.copyfile(tuned_entry, base_entry)
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert not base_cached(rows) and warning_count(result) == 0
    assert read_entry(base_entry)["__key__"] != read_entry(tuned_entry)["__key__"]  # replaced by the honest entry


def _damage(kind: str, path: Path, arrays: dict[str, np.ndarray]) -> None:
    a = dict(arrays)
    if kind == "missing-pred":
        del a["pred"]
    elif kind == "missing-pred-and-meta-says-so":  # consistent metadata: the metric check still refuses it
        del a["pred"]
        meta = json.loads(str(a["__meta__"]))
        del meta["outputs"]["pred"]
        a["__meta__"] = np.array(json.dumps(meta))
    elif kind == "wrong-shape":
        a["pred"] = a["pred"][:-7]
    elif kind == "2d-pred":
        a["pred"] = np.stack([a["pred"], a["pred"]], axis=1)
    elif kind == "wrong-dtype":
        a["pred"] = a["pred"].astype(np.float32)
    elif kind == "other-ids":
        a["__ids__"] = np.roll(a["__ids__"], 1)
    elif kind == "labels-changed":  # the ground truth is the task's, never the entry's
        a["label"] = (a["label"] + 1) % 4
    elif kind == "no-key":
        del a["__key__"]
    elif kind == "object-array":
        with open(path, "wb") as fh:
            np.savez(fh, **{**a, "pred": np.array([object()] * len(a["pred"]))})
        return
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "a-folder":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("x")
    elif kind == "a-fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        write_entry(path, a)


DAMAGES = ["missing-pred", "missing-pred-and-meta-says-so", "wrong-shape", "2d-pred", "wrong-dtype", "other-ids",
           "labels-changed", "no-key", "object-array", "truncated", "garbage", "empty", "a-folder", "a-fifo"]  # fmt: skip


def test_damaged_entries_are_misses(make_project, tmp_path):
    """Each damage is a cache miss: recomputed, the same verdicts, never "unexpected KeyError: 'pred'"."""
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    run(p, tuned, cache)
    (entry,) = entries(cache)
    pristine = read_entry(entry)
    for kind in DAMAGES:
        if kind == "a-fifo" and not hasattr(os, "mkfifo"):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        write_entry(entry, pristine)
        _damage(kind, entry, pristine)
        result, rows = run(p, tuned, cache)
        assert_honest(result, rows)
        assert not base_cached(rows), kind
        if kind != "a-folder":  # a folder in the way: not replaced, still never read
            assert warning_count(result) == 0, kind
            assert read_entry(entry)["__key__"] == pristine["__key__"], kind  # the honest entry is back


def test_changing_the_model_factory_source_invalidates_the_entry(make_project, tmp_path):
    """The same base weights built by different code are a different base (a stale entry gave a wrong FAIL)."""
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    result, rows = run(p, tuned, cache)
    assert base_cached(rows)
    # new factory code: the flag feature now pushes to class 1 in *every* model built by it
    source = (p.path / "tinymodels.py").read_text()
    p.pytester.makepyfile(
        tinymodels=source
        + """

class _Shift(nn.Module):
    def forward(self, logits):
        return logits + 0.0  # same outputs, different source: the entry must still be recomputed
"""
    )
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert not base_cached(rows)
    assert len(entries(cache)) == 2


def test_library_and_plugin_versions_are_in_the_key(make_project, tmp_path, monkeypatch):
    import pytest_forgetting
    from pytest_forgetting.engine import keys  # where the library versions of every key are read

    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    run(p, tuned, cache)
    (entry,) = entries(cache)
    key = json.loads(str(read_entry(entry)["__key__"]))
    # the whole key is in the entry: everything that decides the base's outputs
    for part in ("base", "model_code", "task", "task_class", "task_version", "data", "split", "indices", "device", "dtype",
                 "batch_size", "libraries", "plugin", "eval_version"):  # fmt: skip
        assert part in key, part
    assert key["model_code"]["factory"] == "tinymodels:build" and key["model_code"]["factory_source"].startswith(
        "sha256:"
    )
    assert {"torch", "transformers", "peft", "tokenizers"} <= set(key["libraries"])
    versions = keys.library_versions()
    for lib in ("transformers", "peft", "torch"):
        monkeypatch.setattr(keys, "_LIBRARY_VERSIONS", {**versions, lib: versions[lib] + ".other"})
        result, rows = run(p, tuned, cache)
        assert_honest(result, rows)
        assert not base_cached(rows), lib
    monkeypatch.setattr(keys, "_LIBRARY_VERSIONS", dict(versions))
    monkeypatch.setattr(pytest_forgetting, "__version__", pytest_forgetting.__version__ + ".dev1")
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert not base_cached(rows)
    assert len(entries(cache)) == 5
    assert verdicts(rows) == HONEST
